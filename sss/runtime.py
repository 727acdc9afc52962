"""Process tuning: garbage collections, glibc's heap, the open-file limit, accept errors.

    $ python3 dashboard.py
    2026-12-04 18:12:40 INFO open-file limit raised from 1024 to 524288

Each setting here answers a measurement (the comments give it): Python's full
collections walked a million objects for nothing at 10,000 agents; glibc kept the holes a
viewer flood left in its heap; systemd gives services 1,024 open files; an accept that
fails for want of a file descriptor logged a traceback per attempt. Nothing here knows
of websockets.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import errno
import functools
import gc
import logging
import math
import resource
import sys
import time
from typing import Any

log = logging.getLogger("sss.dashboard")

TRIM_SECONDS = 10
# Full garbage collections: Python's own run whenever the long-lived objects grew by a
# quarter, every 5 s at 10,000 agents (a report's record lives 5 s, long enough to count),
# and each walks a million objects for about a second while no report is read, to find
# nothing: the records are freed by reference counting. Cycles come from connections
# that close (a traceback, a transport), so the dashboard runs its own: after that many
# closed connections, at most every few seconds and never for more than a share of the
# time (a reconnecting fleet of 10,000 closes thousands while each collection takes
# most of a second), and every ten minutes regardless.
COLLECT_AFTER_CLOSED = 1000
COLLECT_AT_MOST_EVERY = 5.0
COLLECT_SHARE = 0.05
COLLECT_SECONDS = 600.0
# Young collections: Python's run one per 700 new containers (its default), and each moves
# what survives on to the middle generation, itself walked every ten of them. A report's
# record (a dozen dicts and lists, no cycles) lives one report interval: at 10,000 agents
# every record was walked twice on its way, for nothing (gc.callbacks in bench.py: 1,450
# young and 132 middle collections, 1.2 s; sized to the fleet 85 and 7, 0.9 s; about 4 µs
# a report). A young collection of 10,000 servers takes a few milliseconds.
YOUNG_DEFAULT = 700
YOUNG_PER_SERVER = 2
YOUNG_MOST = 20_000


def full_collection_due(closed: int, since: float, took: float = 0.0) -> bool:
    """Whether to run a full collection, `since` seconds after the last one, which took
    `took` seconds.

    >>> full_collection_due(closed=3, since=60), full_collection_due(closed=3, since=600)
    (False, True)
    >>> full_collection_due(closed=5000, since=1), full_collection_due(closed=5000, since=5)
    (False, True)
    >>> full_collection_due(closed=5000, since=5, took=0.8)  # 10,000 agents: every 16 s
    False
    """
    if since < max(COLLECT_AT_MOST_EVERY, took / COLLECT_SHARE):
        return False
    return closed >= COLLECT_AFTER_CLOSED or since >= COLLECT_SECONDS


class FullCollections:
    """The dashboard's own full collections (take_over_full_collections): when one is due
    by full_collection_due, and how long the last one took."""

    def __init__(self, now: float) -> None:
        self.collected = now  # the last full collection (monotonic)
        self.took = 0.0

    def run_if_due(self, closed: int, now: float) -> bool:
        """Collect when `closed` connections since the last one make it due; whether it ran."""
        if not full_collection_due(closed, now - self.collected, self.took):
            return False
        started = time.monotonic()
        gc.collect()
        self.collected, self.took = now, time.monotonic() - started
        return True


def young_threshold(servers: int) -> int:
    """New containers between two young collections, for a fleet of `servers`.

    >>> young_threshold(5), young_threshold(2000), young_threshold(10_000)
    (700, 4000, 20000)
    """
    return min(max(YOUNG_DEFAULT, YOUNG_PER_SERVER * servers), YOUNG_MOST)


def take_over_full_collections(servers: int) -> None:
    """Young collections are sized to the fleet (young_threshold); full ones are
    full_collection_due's. (From 3.14 the collector is incremental, with no long pauses:
    left as it is.)"""
    if sys.version_info < (3, 14):
        _, middle, _ = gc.get_threshold()
        gc.set_threshold(young_threshold(servers), middle, 1 << 30)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024


@functools.lru_cache(maxsize=1)
def glibc() -> Any:
    """glibc, or None (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def map_large_blocks() -> None:
    """Blocks of 128 KiB and more (a snapshot queued for one viewer, its frame) come from
    the system and go straight back when freed. glibc raises that threshold to the size
    of every such block freed, so that after the first few snapshots they are carved
    from the heap, where a flood of viewers leaves holes that RSS keeps."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def give_back_memory() -> None:
    """Return freed heap pages to the system. Connections come and go in bursts (a viewer
    flood, a reconnect storm); glibc keeps what they freed, in holes between live
    blocks, and RSS stays at the burst's peak. Trimming takes a few milliseconds."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


# --- open files ------------------------------------------------------------------------

VIEWER_MARGIN = 128  # open files kept for viewers, the history database, logs
FILE_LIMIT_CAP = 1 << 20  # when the hard limit is "unlimited"


def raise_file_limit(servers: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs do); log it, and warn
    when the fleet would not fit. systemd gives services 1,024 by default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FILE_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays at %d: cannot raise it (%s)", soft, exc)
    else:
        log.info("open-file limit: %d", soft)
    if soft != resource.RLIM_INFINITY and servers + VIEWER_MARGIN > soft:
        log.warning("open-file limit %d is below %d servers plus %d for viewers: agents past "
                    "it will be refused; raise LimitNOFILE= in the unit (or ulimit -n)",
                    soft, servers, VIEWER_MARGIN)
    return soft


class LoopErrors:
    """asyncio's handler for errors in callbacks, rate-limited. What a peer can cause (a
    connection gone before it was accepted, reset mid-write, a TLS handshake cut short) is
    one line a minute per kind, with a count, never a traceback; so is running out of file
    descriptors. Anything else is a bug of the dashboard's: asyncio's own report, in full."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.last: dict[str, float] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not isinstance(exc, OSError):
            loop.default_exception_handler(context)
            return
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            kind, line = "files", (f"open-file limit reached ({exc.strerror}): refused {{}} new "
                                   "connections in the last minute; the open ones are served. "
                                   "Raise LimitNOFILE= (README, Scale)")
        else:
            kind = type(exc).__name__
            line = (f"a connection failed ({kind}: {exc}); {{}} like this in the last minute, "
                    "each one a peer's doing")
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self.last.get(kind, -math.inf) >= self.every:
            log.error(line.format(self.counts.pop(kind)))
            self.last[kind] = now
