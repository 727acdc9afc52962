"""Every timing of the dashboard side, in one place, derived from each other; and its clocks.

PROTOCOL.md ("Timings") states the same numbers; test_dashboard.py ties them to
agent.py's own block (agent.MAX_INTERVAL, agent.PING_INTERVAL) so the two sides cannot
drift apart. The rules take the server's own `reportInterval` (what its agent says it
uses now), so an agent reporting every 70 s, or every hour, is neither closed nor shown
offline between two reports.

The clocks, at the end: every duration (an alert's `for`, a repeat, a grace, a server's
silence) is measured on the monotonic clock, which no one can set. Wall time says when:
the times stored in history, traffic periods and alerts, and shown on the page. When the
wall clock jumps (NTP stepping it, an operator's `date -s`, a virtual machine resumed),
`WallWatch` notices it within a tick and says so once; `WallWatch.steady` is a wall time
that never runs ahead of the monotonic clock, for deleting what is old (history's
retention, sessions' expiry), so a clock that just jumped forward deletes nothing. Pure:
the times come in as arguments.

    $ date -s '+3 days'    # under a running dashboard
    2026-12-04 17:02:11 WARNING wall clock jumped forward by 3d0h (durations are measured on
    the monotonic clock; nothing is deleted or expired for this jump until a restart)

    >>> watch = WallWatch(now=100.0, wall=1_800_000_000.0)
    >>> watch.observe(now=101.0, wall=1_800_000_001.0)  # a second passed on both
    0.0
    >>> watch.observe(now=102.0, wall=1_800_259_202.0)  # three days in one second
    259200.0
    >>> watch.steady(now=102.0)  # deleting goes on by the monotonic clock
    1800000002.0
"""

from __future__ import annotations

# What agents may say: PROTOCOL.md allows 0 < reportInterval <= 3600 s.
MAX_REPORT_INTERVAL = 3600.0
DEFAULT_REPORT_INTERVAL = 2.0  # assumed for agents (the Go one) that do not say

# Offline: no accepted report for two intervals plus a margin for the network. The
# agent's adaptive interval grows by at most ×1.2 per report, so two intervals cover it.
OFFLINE_MARGIN = 5.0

# Silent connections: a connection that sent no frame for this long is closed with 1008.
# Never sooner than the seed's 60 s, and never before the server went offline, so a slow
# agent is shown offline first and its connection closed later.
SILENT_CLOSE_FLOOR = 60.0

# Viewers: updates are coalesced so a page gets at most four a second. A page calls its
# socket stale when nothing came for the shortest `offlineAfter` of the online servers
# plus one coalescing window and one tick (index.html, staleLimit()).
COALESCE_SECONDS = 0.25

# How often the housekeeping tick runs (offline transitions, silent closes, old bans).
TICK_SECONDS = 1.0

# Reconnects after a restart: the dashboard tells each agent over how many seconds to spread
# its first retries (PROTOCOL.md, "Reconnect spread"), so the whole fleet comes back at
# about this many handshakes a second; a few agents need not wait long. At 10,000 agents,
# spreads of 10, 15 and 20 s kept the dashboard at a full core for 3-5 s alike (its
# agents' reports take half a core once back), but at 20 s some took over 30 s to return.
RECONNECTS_PER_SECOND = 650
MIN_RECONNECT_SPREAD = 2.0
MAX_RECONNECT_SPREAD = 30.0  # agent.py accepts up to 60 s


def offline_after(report_interval: float) -> float:
    """Seconds without an accepted report after which a server counts as offline."""
    return 2 * report_interval + OFFLINE_MARGIN


def silent_close_after(report_interval: float) -> float:
    """Seconds without any frame after which an agent's connection is closed."""
    return max(SILENT_CLOSE_FLOOR, 2 * offline_after(report_interval))


def reconnect_spread(servers: int) -> float:
    """Seconds over which the agents of a fleet of `servers` spread their first retries.

    >>> reconnect_spread(3), reconnect_spread(2000), reconnect_spread(10_000)
    (2.0, 3.1, 15.4)
    """
    spread = min(max(servers / RECONNECTS_PER_SECOND, MIN_RECONNECT_SPREAD), MAX_RECONNECT_SPREAD)
    return round(spread, 1)


UPDATES_PER_SECOND = 20  # agents fetching a new agent.py at once, on average
MIN_UPDATE_SPREAD, MAX_UPDATE_SPREAD = 1.0, 600.0


def update_spread(servers: int) -> float:
    """Seconds over which the agents of a fleet of `servers` spread fetching a new
    agent.py (PROTOCOL.md, "Agent updates").

    >>> update_spread(3), update_spread(2000), update_spread(100_000)
    (1.0, 100.0, 600.0)
    """
    spread = min(max(servers / UPDATES_PER_SECOND, MIN_UPDATE_SPREAD), MAX_UPDATE_SPREAD)
    return round(spread, 1)


# --- the clocks: monotonic for durations, wall time for what is shown and stored ---

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
