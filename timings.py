"""Every timing of the dashboard side, in one place, derived from each other.

PROTOCOL.md ("Timings") states the same numbers; test_dashboard.py ties them to
agent.py's own block (agent.MAX_INTERVAL, agent.PING_INTERVAL) so the two sides cannot
drift apart. The rules take the server's own `reportInterval` (what its agent says it
uses now), so an agent reporting every 70 s, or every hour, is neither closed nor shown
offline between two reports.
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

