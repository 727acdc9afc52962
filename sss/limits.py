"""Limits on what one client, one address and everyone together may cost (pure: time
comes in as `now`, so every rule is tested with a fake clock).

    >>> limiter, nat = FailureLimiter(limit=2, window=60, ban=300), "198.51.100.7"
    >>> limiter.fail(nat, "id:web", now=0.0), limiter.fail(nat, "id:web", now=1.0)
    (None, 'id:web')
    >>> limiter.banned_for(nat, "id:web", now=2.0), limiter.banned_for(nat, "id:db", now=2.0)
    (299.0, 0.0)

- FailureLimiter: failed handshakes and sign-ins. A misconfigured agent bans only its own
  id from its address; guessing across ids bans the address; failures from everywhere
  together past a global budget let only addresses that signed in recently through.
- Burst: "this many events within that many seconds", the building block.
- TokenBucket: reports per agent connection.
- LogLimiter: one log line per key and minute, the next one saying how many were held back.
- Connections: handshakes in progress and viewers, per address and in total.

README's Security section lists the numbers and how to tune them.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Hashable

MAX_TRACKED_KEYS = 20_000  # a flood of addresses cannot grow any table without bound

# Failed handshakes and sign-ins: 10 of one id (or user) from one address within 60 s
# refuse that id there for 5 minutes; 50 of any ids refuse the address; 300 from
# everywhere within 60 s let only addresses that authenticated within a day through.
FAILED_HANDSHAKES_LIMIT = 10
FAILED_HANDSHAKES_WINDOW = 60.0
BAN_SECONDS = 300.0
ADDRESS_FAILURES_LIMIT = 50
GLOBAL_FAILURES_LIMIT = 300
RECENT_SUCCESS_SECONDS = 86400.0
# Handshakes in progress (connected, request headers not complete yet): each may hold up
# to MAX_REQUEST_BYTES until websockets' open timeout (10 s). Past the total, the oldest
# is dropped for the newcomer: a slow attacker's, most likely, not an agent's (agents
# finish theirs within a round trip).
HANDSHAKES_PER_ADDRESS = 16
HANDSHAKES_TOTAL = 512
# ...but only one older than this: younger ones are agents of a fleet reconnecting at once
# (a dashboard restart under 10,000 agents), and the newcomer is refused (503, retry later)
# rather than every handshake being dropped before it can finish.
HANDSHAKE_EVICT_AFTER = 2.0
# The request headers agents and browsers send: a browser's WebSocket handshake has about
# 15 headers, a proxy adds a few; one long line is a Cookie header.
MAX_HEADERS = 32
MAX_HEADER_LINE = 8192
MAX_REQUEST_BYTES = 16 * 1024
# Viewers (browsers on /ws-frontend).
VIEWERS_PER_ADDRESS = 16
VIEWERS_TOTAL = 1000
# The kernel's send buffer of a viewer's socket (Linux doubles it): without a cap it grows
# to 4 MiB for a viewer that never reads, memory outside the process but inside its cgroup.
VIEWER_SEND_BUFFER = 256 * 1024
VIEWER_BACKLOG_BYTES = 1024 * 1024  # one viewer's unsent bytes beyond a snapshot
# All viewers' unsent bytes together (--viewer-memory): by default 32 MiB, or room for ten
# viewers' snapshots and backlogs, when larger: a 10,000-server snapshot is about 11 MB, and
# ten browsers joining at once needed the flag before (viewer_memory_budget).
VIEWER_MEMORY_BUDGET = 32 * 1024 * 1024
VIEWER_SNAPSHOTS = 10
# Sign-in sockets (/ws-login): a browser opens one and sends a user name and password at
# once; idle ones are closed after LOGIN_IDLE s (handlers.py). One address held 1,014 of
# them for 10 s each, under an open-file limit of 1,024.
LOGINS_PER_ADDRESS = 4
LOGINS_TOTAL = 64
LOGIN_EVICT_AFTER = 1.0  # past the total, one waiting longer goes: a browser sends at once
# Passwords being checked (scrypt: 16 MiB and about 50 ms each, on SIGN_IN_WORKERS threads):
# one per address at a time, SIGN_IN_CHECKS in all, so that guesses sent together from
# many addresses queue fairly and a real sign-in waits at most about 32 x 50 ms / 2.
SIGN_IN_WORKERS = 2
SIGN_IN_CHECKS = 32
# History queries (/api/history): run on two threads of their own, eight at most
# (history.QUERIES_RUNNING), answers kept until the next step and shared by the requests
# that wait for the same one. Requests waiting, per address and in all:
QUERIES_PER_ADDRESS = 2
QUERIES_TOTAL = 256
# Plain HTTP answers a client has not read yet: each is counted whole until its connection
# closes (a client that never reads keeps it in the process and the kernel). Past the
# address's share the newcomer is refused (503); past the total the largest go first; an
# answer not taken within ANSWER_SECONDS is dropped. 3,000 requests for /api/servers that
# nobody read held 270 MB before. Both grow with the snapshot, like the viewers' budget.
ANSWERS_PER_ADDRESS = 4 * 1024 * 1024
ANSWERS_TOTAL = 32 * 1024 * 1024
ANSWER_SECONDS = 30.0
# Reports per agent connection: the agent's fastest pace is 1 s; a dashboard restart
# flushes its queue of up to 100, so a burst is allowed.
REPORTS_PER_SECOND = 10.0
REPORT_BURST = 100
# Frames from a viewer ("watch", "unwatch": a page sends one every 20 s, and one per view
# it opens): past this rate it is hung up on (1008).
VIEWER_FRAMES_PER_SECOND = 2.0
VIEWER_FRAME_BURST = 20
FLOOD_DROPS = 200  # dropped reports within FLOOD_WINDOW close the connection
FLOOD_WINDOW = 10.0
BAD_REPORTS_LIMIT = 5  # invalid reports within BAD_REPORTS_WINDOW close the connection
BAD_REPORTS_WINDOW = 60.0
LOG_EVERY = 60.0


def address_key(address: str) -> str:
    """What one client controls: an IPv4 address, or an IPv6 /64 (one customer's prefix,
    where every address is free to take)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def forget_oldest(table: dict, limit: int = MAX_TRACKED_KEYS) -> None:
    """Make room for one more key by dropping the oldest (dicts keep insertion order)."""
    while len(table) >= limit:
        del table[next(iter(table))]


class Burst:
    """`limit` events within `window` seconds, per key."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.times: dict[Hashable, collections.deque[float]] = {}

    def add(self, key: Hashable, now: float) -> bool:
        """Count one event; True when it completes a burst (the count starts over)."""
        times = self.times.get(key)
        if times is None:
            forget_oldest(self.times)
            times = self.times[key] = collections.deque(maxlen=self.limit)
        times.append(now)
        if len(times) == self.limit and now - times[0] <= self.window:
            del self.times[key]
            return True
        return False

    def take_back(self, key: Hashable) -> None:
        """Forget the last event counted for `key`."""
        times = self.times.get(key)
        if times:
            times.pop()
            if not times:
                del self.times[key]

    def expire(self, now: float) -> None:
        for key in [k for k, times in self.times.items() if now - times[-1] > self.window]:
            del self.times[key]


class FailureLimiter:
    """Failed attempts: per address and id (or user), per address, and in total.

    `limit` failures of one id from one address within `window` ban that id there for
    `ban` seconds (an agent with a wrong secret locks out itself, not its neighbours
    behind the same NAT); `address_limit` failures of any ids ban the address; past
    `global_limit` failures from everywhere within the window, only addresses that
    authenticated within `recent` seconds get through until the count falls again.
    """

    def __init__(self, limit: int = FAILED_HANDSHAKES_LIMIT,
                 window: float = FAILED_HANDSHAKES_WINDOW, ban: float = BAN_SECONDS,
                 address_limit: int = ADDRESS_FAILURES_LIMIT,
                 global_limit: int = GLOBAL_FAILURES_LIMIT,
                 recent: float = RECENT_SUCCESS_SECONDS) -> None:
        self.limit, self.window, self.ban, self.recent = limit, window, ban, recent
        self.by_who = Burst(limit, window)
        self.by_address = Burst(address_limit, window)
        self.everywhere: collections.deque[float] = collections.deque(maxlen=global_limit)
        self.banned_until: dict[tuple[str, str], float] = {}  # (address, who or "") -> until
        self.succeeded_at: dict[str, float] = {}

    def banned_for(self, address: str, who: str, now: float) -> float:
        """Seconds `who` from this address is still refused; 0 when it is not."""
        key = address_key(address)
        until = max(self.banned_until.get((key, who), 0.0), self.banned_until.get((key, ""), 0.0))
        return max(until - now, 0.0)

    def over_budget(self, address: str, now: float) -> bool:
        """The global budget is spent and this address has not authenticated recently."""
        everywhere = self.everywhere
        if len(everywhere) < (everywhere.maxlen or 0) or now - everywhere[0] > self.window:
            return False
        return now - self.succeeded_at.get(address_key(address), -self.recent) >= self.recent

    def fail(self, address: str, who: str, now: float) -> str | None:
        """Count one failure; returns what it just got banned (`who`, or "address"), if any."""
        key = address_key(address)
        self.everywhere.append(now)
        if self.by_address.add(key, now):
            self.ban_key((key, ""), now)
            return "address"
        if self.by_who.add((key, who), now):
            self.ban_key((key, who), now)
            return who
        return None

    def forgive(self, address: str, who: str, banned: str | None = None) -> None:
        """Take back a failure counted by fail() for an attempt that turned out right (a
        sign-in counted as it arrived), and what that failure banned."""
        key = address_key(address)
        if self.everywhere:
            self.everywhere.pop()
        for burst, counted in ((self.by_address, key), (self.by_who, (key, who))):
            burst.take_back(counted)
        if banned:
            self.banned_until.pop((key, "" if banned == "address" else banned), None)

    def ban_key(self, key: tuple[str, str], now: float) -> None:
        if key not in self.banned_until:
            forget_oldest(self.banned_until)
        self.banned_until[key] = now + self.ban

    def succeeded(self, address: str, now: float) -> None:
        """An address that authenticated gets through while the global budget is spent."""
        key = address_key(address)
        self.succeeded_at.pop(key, None)
        forget_oldest(self.succeeded_at)
        self.succeeded_at[key] = now

    def expire(self, now: float) -> None:
        """Forget failures older than the window, bans that ended, old successes."""
        for burst in (self.by_who, self.by_address):
            burst.expire(now)
        for key in [k for k, until in self.banned_until.items() if until <= now]:
            del self.banned_until[key]
        while self.succeeded_at:
            key, at = next(iter(self.succeeded_at.items()))
            if now - at < self.recent:
                break
            del self.succeeded_at[key]


class TokenBucket:
    """`rate` events a second on average, `burst` at once."""

    __slots__ = ("burst", "last", "rate", "tokens")  # one per agent connection

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class LogLimiter:
    """At most one log line per key (an agent and a reason, say) every `every` seconds.

        >>> quiet = LogLimiter(every=60)
        >>> [quiet.allow("web/too_large", now=t) for t in (0, 1, 2, 61)]
        [0, None, None, 2]
    """

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self.last: dict[Hashable, float] = {}
        self.held: collections.Counter[Hashable] = collections.Counter()

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: stay quiet; else how many lines for this key were held back before this."""
        last = self.last.get(key)
        if last is not None and now - last < self.every:
            self.held[key] += 1
            return None
        if last is None:
            forget_oldest(self.last)
        self.last[key] = now
        return self.held.pop(key, 0)


class Answers:
    """Plain HTTP answers not taken yet: counted whole from when they are written until
    their connection closes, per address and in total (pure: sizes and times come in).

        >>> answers = Answers()
        >>> answers.admit("a", "198.51.100.7", 300, 0.0, per_address=500, total=800)
        ('', [])
        >>> answers.admit("b", "198.51.100.7", 300, 1.0, per_address=500, total=800)[0]
        '500 bytes of answers not taken yet from this address'
        >>> answers.admit("c", "198.51.100.8", 450, 2.0, per_address=500, total=700)
        ('', ['a'])
        >>> answers.overdue(now=33.0, seconds=30.0)
        ['c']
    """

    def __init__(self) -> None:
        self.open: dict[Hashable, tuple[str, int, float]] = {}  # -> address key, size, since
        self.by_address: collections.Counter[str] = collections.Counter()
        self.total = 0

    def admit(self, answer: Hashable, address: str, size: int, now: float, per_address: int,
              total: int) -> tuple[str, list[Hashable]]:
        """Count an answer about to be written: (a reason to refuse it, or ""; the answers
        to drop for it, the largest first, when all together would pass `total`)."""
        key = address_key(address)
        if self.by_address[key] and self.by_address[key] + size > per_address:
            return f"{per_address} bytes of answers not taken yet from this address", []
        dropped = []
        for other in sorted(self.open, key=lambda a: self.open[a][1], reverse=True):
            if self.total + size <= total:
                break
            dropped.append(other)
            self.done(other)
        self.open[answer] = (key, size, now)
        self.by_address[key] += size
        self.total += size
        return "", dropped

    def done(self, answer: Hashable) -> None:
        """The answer's connection closed (taken, or dropped)."""
        found = self.open.pop(answer, None)
        if found is not None:
            key, size, _ = found
            self.by_address[key] -= size
            if self.by_address[key] <= 0:
                del self.by_address[key]
            self.total -= size

    def overdue(self, now: float, seconds: float = ANSWER_SECONDS) -> list[Hashable]:
        """Answers not taken within `seconds` (dicts keep insertion order: oldest first)."""
        late = []
        for answer, (_, _, since) in self.open.items():
            if now - since < seconds:
                break
            late.append(answer)
        return late


def answers_budget(largest: int) -> tuple[int, int]:
    """(per address, in total): ANSWERS_PER_ADDRESS and ANSWERS_TOTAL, or room for two and
    for ten of the `largest` answers (a snapshot, /api/servers), when those are more."""
    return (max(ANSWERS_PER_ADDRESS, 2 * largest),
            max(ANSWERS_TOTAL, VIEWER_SNAPSHOTS * largest))


def viewer_memory_budget(snapshot_bytes: int, configured: int | None = None) -> int:
    """All viewers' unsent bytes together: `configured` (--viewer-memory), or by default
    32 MiB or room for VIEWER_SNAPSHOTS snapshots of `snapshot_bytes` with their backlogs.

    >>> viewer_memory_budget(1_000_000) >> 20, viewer_memory_budget(11_000_000) >> 20
    (32, 114)
    >>> viewer_memory_budget(11_000_000, configured=8 << 20) >> 20
    8
    """
    if configured is not None:
        return configured
    return max(VIEWER_MEMORY_BUDGET, VIEWER_SNAPSHOTS * (snapshot_bytes + VIEWER_BACKLOG_BYTES))


def held_back(count: int) -> str:
    """The suffix of a rate-limited log line."""
    return f" ({count} more like this in the last minute)" if count else ""


class Pool:
    """Places of one kind, per address (an IPv6 /64) and in total: viewers, sign-in sockets,
    sign-ins being checked.

        >>> pool = Pool("sign-in sockets open", total=3, per_address=2)
        >>> [pool.add("198.51.100.7") for _ in range(3)]
        ['', '', '2 sign-in sockets open from this address']
        >>> pool.add("198.51.100.8"), pool.add("198.51.100.9")
        ('', '3 sign-in sockets open in total')
    """

    def __init__(self, what: str, total: int, per_address: int) -> None:
        self.what, self.total, self.per_address = what, total, per_address
        self.taken: collections.Counter[str] = collections.Counter()
        self.count = 0

    def add(self, address: str) -> str:
        """Take a place; a reason to refuse it, or ""."""
        if self.count >= self.total:
            return f"{self.total} {self.what} in total"
        key = address_key(address)
        if self.taken[key] >= self.per_address:
            return f"{self.per_address} {self.what} from this address"
        self.taken[key] += 1
        self.count += 1
        return ""

    def remove(self, address: str) -> None:
        """Give a place back (taken by add())."""
        release(self.taken, address_key(address))
        self.count -= 1


class Waiting:
    """Connections that have not said what they want yet (a request being read, a sign-in
    socket before its attempt), per address and in total. Past the total, the oldest one
    makes room if it waited longer than `evict_after` (a slow attacker's, most likely:
    browsers and agents say what they want within a round trip); else the newcomer is
    told to come back.

        >>> waiting = Waiting("sign-in sockets waiting", total=2, per_address=2, evict_after=1)
        >>> waiting.start("a", "198.51.100.7", 0.0), waiting.start("b", "198.51.100.8", 0.5)
        (('', None), ('', None))
        >>> waiting.start("c", "198.51.100.9", 0.8)
        ('2 sign-in sockets waiting', None)
        >>> waiting.start("c", "198.51.100.9", 1.5)  # "a" has waited too long: it goes
        ('', 'a')
    """

    def __init__(self, what: str, total: int, per_address: int, evict_after: float,
                 exempt: frozenset[str] = frozenset()) -> None:
        self.what, self.total, self.per_address = what, total, per_address
        self.evict_after, self.exempt = evict_after, exempt
        self.since: dict[Hashable, tuple[str, float]] = {}  # -> (address key, start), oldest first
        self.by_address: collections.Counter[str] = collections.Counter()

    def start(self, connection: Hashable, address: str,
              now: float) -> tuple[str, Hashable | None]:
        """Count a connection that waits: (a reason to refuse it, or ""; the oldest to drop
        for it when every place is taken, or None)."""
        key = address_key(address)
        if address not in self.exempt and self.by_address[key] >= self.per_address:
            return f"{self.per_address} {self.what} from this address", None
        oldest = None
        if len(self.since) >= self.total:
            oldest = next(iter(self.since))
            if now - self.since[oldest][1] < self.evict_after:
                return f"{self.total} {self.what}", None
            self.end(oldest)
        self.since[connection] = (key, now)
        self.by_address[key] += 1
        return "", oldest

    def end(self, connection: Hashable) -> None:
        """It said what it wants, or closed."""
        started = self.since.pop(connection, None)
        if started is not None:
            release(self.by_address, started[0])


class Connections:
    """Handshakes in progress, viewers and sign-in sockets, counted per address and in
    total.

    Handshakes are counted by the peer's address from the moment the TCP connection is
    made (before any header is read), so trusted proxies, which carry many clients, are
    exempt from the per-address cap; viewers and sign-in sockets by the client's address.
    """

    def __init__(self, viewers_total: int = VIEWERS_TOTAL,
                 viewers_per_address: int = VIEWERS_PER_ADDRESS,
                 handshakes_total: int = HANDSHAKES_TOTAL,
                 handshakes_per_address: int = HANDSHAKES_PER_ADDRESS,
                 exempt: frozenset[str] = frozenset()) -> None:
        self.handshakes = Waiting("handshakes in progress", handshakes_total,
                                  handshakes_per_address, HANDSHAKE_EVICT_AFTER, exempt)
        self.logins = Waiting("sign-in sockets waiting", LOGINS_TOTAL, LOGINS_PER_ADDRESS,
                              LOGIN_EVICT_AFTER)
        self.viewers = Pool("viewers connected", viewers_total, viewers_per_address)
        self.checks = Pool("sign-ins being checked", SIGN_IN_CHECKS, 1)
        self.queries = Pool("history queries waiting", QUERIES_TOTAL, QUERIES_PER_ADDRESS)


def release(counter: collections.Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
