"""Per-address limits on failed attempts (pure: time comes in as `now`).

    >>> limiter = FailureLimiter(limit=2, window=60, ban=300)
    >>> limiter.fail("198.51.100.7", now=0.0), limiter.fail("198.51.100.7", now=1.0)
    (False, True)
    >>> limiter.banned_for("198.51.100.7", now=2.0)
    299.0

Agents' failed handshakes count here today; wrong sign-in passwords will count in the
same limiter, so guessing either costs the same.
"""

from __future__ import annotations

import collections

from timings import BAN_SECONDS, FAILED_HANDSHAKES_LIMIT, FAILED_HANDSHAKES_WINDOW

MAX_TRACKED_ADDRESSES = 10_000  # a flood of addresses cannot grow memory without bound


class FailureLimiter:
    """`limit` failures within `window` seconds from one address ban it for `ban` seconds."""

    def __init__(self, limit: int = FAILED_HANDSHAKES_LIMIT,
                 window: float = FAILED_HANDSHAKES_WINDOW, ban: float = BAN_SECONDS) -> None:
        self.limit, self.window, self.ban = limit, window, ban
        self.failures: dict[str, collections.deque[float]] = {}
        self.banned_until: dict[str, float] = {}

    def banned_for(self, address: str, now: float) -> float:
        """Seconds this address is still refused; 0 when it is not."""
        return max(self.banned_until.get(address, 0.0) - now, 0.0)

    def fail(self, address: str, now: float) -> bool:
        """Count one failure; True when it just earned the address a ban."""
        if address not in self.failures and len(self.failures) >= MAX_TRACKED_ADDRESSES:
            del self.failures[next(iter(self.failures))]  # the oldest tracked address
        recent = self.failures.setdefault(address, collections.deque(maxlen=self.limit))
        recent.append(now)
        if len(recent) == self.limit and now - recent[0] <= self.window:
            if len(self.banned_until) >= MAX_TRACKED_ADDRESSES:
                del self.banned_until[next(iter(self.banned_until))]
            self.banned_until[address] = now + self.ban
            del self.failures[address]
            return True
        return False

    def expire(self, now: float) -> None:
        """Forget failures older than the window and bans that ended."""
        for address in [a for a, times in self.failures.items() if now - times[-1] > self.window]:
            del self.failures[address]
        for address in [a for a, until in self.banned_until.items() if until <= now]:
            del self.banned_until[address]
