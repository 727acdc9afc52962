"""Top processes, only while someone watches: which viewers have which server's detail
view open, and what to tell each agent (pure; PROTOCOL.md, "Top processes").

    >>> watches = Watches()
    >>> watches.watch("viewer-1", "web-1", now=0.0)
    True
    >>> watches.frames_due(now=0.0)
    [('web-1', 60.0)]
    >>> watches.unwatch("viewer-1", "web-1")
    >>> watches.frames_due(now=1.0), watches.frames_due(now=2.0)
    ([], [('web-1', 0.0)])

A page sends "watch" when it opens a server's detail view and every RENEW_SECONDS while it
stays open, "unwatch" when it leaves; a watch not renewed lapses after WATCH_SECONDS. The
agent is told to collect for AGENT_SECONDS, again every RENEW_SECONDS while anyone watches,
and to stop when nobody does: an agent whose dashboard went away stops by itself. However a
viewer toggles, an agent gets at most one frame every MIN_GAP seconds (its own limit is
five a second, and it hangs up past 20 in 10 s). Nothing here imports websockets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable

from .reports import TOP_PROCESSES

WATCH_SECONDS = 60.0  # a viewer's watch lapses this long after its last renewal
RENEW_SECONDS = 20.0  # the page renews this often; the dashboard tells agents this often
AGENT_SECONDS = 60.0  # an agent collects this long after the last frame telling it to
MIN_GAP = 2.0  # at most one processes frame per agent this often
MAX_WATCHES = 4  # servers one viewer may watch at once (a page watches one)


class Watches:
    """Viewers' watches (viewer -> server id -> monotonic time it lapses) and what each
    agent was last told (server id -> (collecting, monotonic time told))."""

    def __init__(self) -> None:
        self.viewers: dict[Hashable, dict[str, float]] = {}
        self.told: dict[str, tuple[bool, float]] = {}

    def watch(self, viewer: Hashable, sid: str, now: float) -> bool:
        """A viewer opened (or still has open) a server's view; False past MAX_WATCHES."""
        mine = self.viewers.setdefault(viewer, {})
        if sid not in mine and len(mine) >= MAX_WATCHES:
            return False
        mine[sid] = now + WATCH_SECONDS
        return True

    def unwatch(self, viewer: Hashable, sid: str) -> None:
        self.viewers.get(viewer, {}).pop(sid, None)

    def forget(self, viewer: Hashable) -> None:
        """The viewer left: its watches end now."""
        self.viewers.pop(viewer, None)

    def agent_connected(self, sid: str) -> None:
        """A new connection of `sid` knows nothing yet: tell it again when watched."""
        self.told.pop(sid, None)

    def watched(self, now: float) -> set[str]:
        """Servers someone watches now; lapsed watches are dropped."""
        wanted: set[str] = set()
        for viewer in list(self.viewers):
            mine = self.viewers[viewer]
            for sid in [sid for sid, lapses in mine.items() if lapses <= now]:
                del mine[sid]
            if not mine:
                del self.viewers[viewer]
            wanted.update(mine)
        return wanted

    def frames_due(self, now: float) -> list[tuple[str, float]]:
        """(server id, seconds to collect; 0: stop) for each agent to be told now."""
        wanted = self.watched(now)
        due = []
        for sid in sorted(wanted | set(self.told)):
            collecting, told = self.told.get(sid, (False, -math.inf))
            if now - told < MIN_GAP:
                continue
            if sid in wanted and (not collecting or now - told >= RENEW_SECONDS):
                due.append((sid, AGENT_SECONDS))
                self.told[sid] = (True, now)
            elif sid not in wanted:
                if collecting:
                    due.append((sid, 0.0))
                    self.told[sid] = (False, now)
                else:
                    del self.told[sid]  # stopped at least MIN_GAP ago: nothing to keep
        return due


def processes_frame(seconds: float) -> str:
    """The frame telling an agent to send its top processes for `seconds` (0: stop)."""
    return json.dumps({"type": "processes", "seconds": seconds, "top": TOP_PROCESSES},
                      separators=(",", ":"))


def viewer_request(frame: str | bytes) -> tuple[str, str] | None:
    """("watch" or "unwatch", server id) from a viewer's frame; None for anything else."""
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("type") not in ("watch", "unwatch") \
            or not isinstance(message.get("id"), str):
        return None
    return message["type"], message["id"]
