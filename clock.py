"""The dashboard's clocks: monotonic for durations, wall time for what is shown and stored.

    $ date -s '+3 days'    # under a running dashboard
    2026-12-04 17:02:11 WARNING wall clock jumped forward by 3d0h (durations are measured on
    the monotonic clock; nothing is deleted or expired for this jump until a restart)

Every duration (an alert's `for`, a repeat, a grace, a server's silence) is measured on
the monotonic clock, which no one can set. Wall time says when: the times stored in
history, traffic periods and alerts, and shown on the page. When the wall clock jumps
(NTP stepping it, an operator's `date -s`, a virtual machine resumed), `WallWatch`
notices it within a tick and says so once; `WallWatch.steady` is a wall time that never
runs ahead of the monotonic clock, for deleting what is old (history's retention,
sessions' expiry), so a clock that just jumped forward deletes nothing. Pure: the times
come in as arguments.

    >>> watch = WallWatch(now=100.0, wall=1_800_000_000.0)
    >>> watch.observe(now=101.0, wall=1_800_000_001.0)  # a second passed on both
    0.0
    >>> watch.observe(now=102.0, wall=1_800_259_202.0)  # three days in one second
    259200.0
    >>> watch.steady(now=102.0)  # deleting goes on by the monotonic clock
    1800000002.0
"""

from __future__ import annotations

JUMP_TOLERANCE = 5.0  # seconds the wall clock may move apart from the monotonic one per tick


class WallWatch:
    """Compares the wall clock with the monotonic one at every tick."""

    def __init__(self, now: float, wall: float) -> None:
        self.offset = wall - now  # wall minus monotonic at the last observation
        self.steady_offset = self.offset

    def observe(self, now: float, wall: float) -> float:
        """The wall clock's jump since the last observation in seconds (positive: forward),
        0.0 while it keeps within JUMP_TOLERANCE (NTP's gentle slewing, a late tick)."""
        offset = wall - now
        jump = offset - self.offset
        self.offset = offset
        # The steady clock follows the wall clock back, and forward only by small steps:
        # after a jump forward it stays behind by the jump until the dashboard restarts.
        if offset <= self.steady_offset + JUMP_TOLERANCE:
            self.steady_offset = offset
        return jump if abs(jump) > JUMP_TOLERANCE else 0.0

    def steady(self, now: float) -> float:
        """A wall time that never jumps forward: the wall clock, or behind it by what it
        jumped forward since the start."""
        return now + self.steady_offset


def jump_words(jump: float) -> str:
    """'forward by 3d0h', 'back by 1m0s': a jump for a log line.

    >>> jump_words(259200.0), jump_words(-60.0), jump_words(7.4)
    ('forward by 3d0h', 'back by 1m0s', 'forward by 7s')
    """
    seconds = abs(round(jump))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        amount = f"{days}d{hours}h"
    elif hours:
        amount = f"{hours}h{minutes}m"
    elif minutes:
        amount = f"{minutes}m{seconds}s"
    else:
        amount = f"{seconds}s"
    return f"{'forward' if jump > 0 else 'back'} by {amount}"
