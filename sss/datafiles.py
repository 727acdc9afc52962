"""The small JSON files in the data directory: alerts.json, traffic.json, sessions.json.

Each is written whole and atomically (a crash leaves the old file or the new one, never
half of one); a problem writing or reading it is one log line per distinct problem, and
the dashboard goes on with what it has in memory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("sss.dashboard")


class JsonFile:
    """One file of the data directory; `what` names it in log lines, `meanwhile` says what
    happens while it cannot be written."""

    def __init__(self, path: Path, what: str, meanwhile: str, private: bool = False) -> None:
        self.path, self.what, self.meanwhile = path, what, meanwhile
        self.mode = 0o600 if private else 0o644
        self.problem = ""

    def save(self, data: Any) -> bool:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.mode)
            with os.fdopen(fd, "w") as file:
                file.write(json.dumps(data))  # json.dump encodes in Python, 5x slower
            os.replace(temporary, self.path)
        except OSError as exc:
            problem = f"{self.path}: {exc.strerror or exc}"
            if problem != self.problem:
                log.error("%s: cannot save %s; make the data directory writable (%s)",
                          self.what, problem, self.meanwhile)
            self.problem = problem
            return False
        self.problem = ""
        return True

    def load(self, fresh: str) -> Any:
        """The saved data, or None when there is none or it is unreadable (`fresh` says what
        the dashboard does then)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("%s: %s is unreadable (%s); %s", self.what, self.path, exc, fresh)
            return None
