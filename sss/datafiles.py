"""The small files in the data directory: alerts.json, traffic.json, sessions.json, and
the running dashboard's dashboard.pid.

Each is written whole and atomically (a crash leaves the old file or the new one, never
half of one); a problem writing or reading it is one log line per distinct problem, and
the dashboard goes on with what it has in memory. What is read back is as hostile as
what comes from the network: each module checks every entry (`whole`, `finite`), drops a
bad one with one line naming the file and the entry, and keeps the rest; nothing that
JSON cannot carry (1e400 reads as infinity) gets in.

    >>> whole(3), whole(-1), whole(True), whole(1e400), finite(2.5), finite(float("nan"))
    (True, False, False, False, True, False)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

log = logging.getLogger("sss.dashboard")


class JsonFile:
    """One file of the data directory; `what` names it in log lines, `meanwhile` says what
    happens while it cannot be written."""

    def __init__(self, path: Path, what: str, meanwhile: str, private: bool = False) -> None:
        self.path, self.what, self.meanwhile = path, what, meanwhile
        self.mode = 0o600 if private else 0o644
        self.problem = ""

    def save(self, data: Any) -> bool:
        """Write `data` whole (replace_file). A failed write (a full disk) leaves the old
        file, and no temporary one."""
        try:
            text = json.dumps(data, allow_nan=False)  # json.dump encodes in Python, 5x slower
            replace_file(self.path, text.encode(), self.mode, durable=False)
        except (OSError, ValueError) as exc:  # ValueError: a value JSON cannot hold (inf)
            problem = f"{self.path}: {getattr(exc, 'strerror', None) or exc}"
            if problem != self.problem:
                log.error("%s: cannot save %s; make the data directory writable (%s)",
                          self.what, problem, self.meanwhile)
            self.problem = problem
            return False
        self.problem = ""
        return True

    def read(self) -> tuple[Any, str]:
        """(the saved data, or None when there is none; "" or why it is unreadable)."""
        try:
            return json.loads(self.path.read_text()), ""
        except FileNotFoundError:
            return None, ""
        except (OSError, ValueError, RecursionError) as exc:
            return None, f"{self.path} is unreadable ({exc})"

    def load(self, fresh: str, checked: Callable[[Any], tuple[Any, list[str]]]) -> Any:
        """The saved data as `checked` keeps it (each entry it drops is one log line), or
        None when there is none or it is unreadable (`fresh` says what happens then)."""
        data, problem = self.read()
        if problem:
            log.error("%s: %s; %s", self.what, problem, fresh)
            return None
        if data is None:
            return None
        kept, problems = checked(data)
        for dropped in problems:
            log.error("%s: %s: %s", self.what, self.path, dropped)
        return kept


def replace_file(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: a crash
    leaves the old file or the new one, never half of one. An existing file keeps its mode
    and owner; a new one gets `mode`. `durable`: on disk before the rename (fsync), as for
    servers.json; the data directory's files are rewritten every minute anyway."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        existing = None
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 existing.st_mode & 0o7777 if existing else mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            if existing is not None:
                os.fchmod(file.fileno(), existing.st_mode & 0o7777)
                if os.geteuid() == 0 and (existing.st_uid, existing.st_gid) != (0, 0):
                    os.fchown(file.fileno(), existing.st_uid, existing.st_gid)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:  # the rename itself, on disk
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def whole(value: Any, low: int = 0) -> bool:
    """A JSON integer of at least `low`: no bool, no float (1e400 reads as infinity)."""
    return type(value) is int and value >= low


def finite(value: Any) -> bool:
    """A finite JSON number (no bool, no infinity, no NaN)."""
    return type(value) in (int, float) and math.isfinite(value)


def entries(data: Any, kind: type, check: Callable[[Any, Any], Any],
            what: str) -> tuple[Any, list[str]]:
    """Each entry of a saved object (by key) or list (by index) through `check`, which
    returns what to keep or raises ValueError saying why not: (kept, one problem for each
    entry dropped)."""
    if not isinstance(data, kind):
        return kind(), [f"holds no {what} (not a JSON {kind.__name__}); all of it dropped"]
    items = data.items() if isinstance(data, dict) else enumerate(data)
    kept: dict[Any, Any] = {}
    problems = []
    for key, value in items:
        try:
            kept[key] = check(key, value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            name = repr(key[:60]) if isinstance(key, str) else key
            problems.append(f"entry {name}: {exc}; dropped, the rest kept")
    return (kept if kind is dict else list(kept.values())), problems


# --- the running dashboard -----------------------------------------------------------------

PID_FILE = "dashboard.pid"
LOCAL_URL = re.compile(r"https?://(?:127\.0\.0\.1|\[::1\]|[A-Za-z0-9.-]{1,253}):\d{1,5}")
HEX64 = re.compile(r"[0-9a-f]{64}")


class Running(NamedTuple):
    """dashboard.pid: the running dashboard's process, where it answers on this machine,
    and the SHA-256 of the servers.json it runs with (what add-server waits for)."""

    pid: int
    url: str
    config_sha256: str


def write_pid_file(data: Path, running: Running) -> None:
    """Said once when it cannot be written: the server commands then ask for a reload by hand."""
    try:
        replace_file(data / PID_FILE, "".join(f"{v}\n" for v in running).encode(), 0o644,
                     durable=False)
    except OSError as exc:
        log.warning("%s: cannot write it (%s): add-server and the other server commands "
                    "will ask for a reload by hand", data / PID_FILE, exc.strerror or exc)


def read_pid_file(data: Path) -> Running | None:
    """The dashboard running with `data`, when its pid file holds what one writes and
    that process is alive; None otherwise."""
    try:
        pid, url, digest = (data / PID_FILE).read_text().split("\n")[:3]
        running = Running(int(pid), url, digest)
    except (OSError, ValueError):
        return None
    if running.pid <= 1 or not LOCAL_URL.fullmatch(url) or not HEX64.fullmatch(digest):
        return None
    try:
        os.kill(running.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return running


def remove_pid_file(data: Path) -> None:
    with contextlib.suppress(OSError):
        (data / PID_FILE).unlink()
