"""History: every server's past in one SQLite file, history.db in the data directory.

    $ python3 dashboard.py --data /var/lib/sss-dashboard --history-resolution 60
    $ curl -s 'http://127.0.0.1:8900/api/history?id=web-1&range=1h' | head -c 120
    {"id":"web-1","range":"1h","step":60,"time":[1795748880,1795748940,...],"cpu":[3.1,null,...

Each accepted report folds into an in-memory bucket for its server and step (`fold`, a
few microseconds, on the event loop). Once per resolution step the closed buckets go to a
writer thread with its own connection, which adds them to their rows in one short
transaction (the closed step is at risk of a `kill -9` only until then), and afterwards,
in transactions of their own, writes the servers' last views, rolls completed hours up
into hourly rows (and those into six-hour rows) and applies retention. Queries run on a
read-only connection. Nothing here imports websockets; the pure parts (folding,
crediting, rows, plans, availability) take time as arguments and are tested without a
database.

Rows: one per server per step: `n` reports (metrics NULL without one, never zeros),
`online` and `watched` seconds, average and maximum of each metric, the last transfer
totals, and `seen`, the time of the step's last report. A row is only ever added to, never
replaced: a step written in parts (a restart within it, a report vouching for time before
a step that was written already, a wall clock set back) keeps what it had.

Availability is online / watched. Time is watched while the dashboard runs, and only
once its fate is known ("settled"): a report vouches for the time since the server's
previous one as online when it came within `offline_after` of it (a busy box is not a down
box), else for its own interval; time a known server spent without vouching reports is
offline; the dashboard's own downtime, and the few seconds before a restart whose fate a
report would have told, are watched by nobody. Durations come from the monotonic clock;
wall time only places them in steps, so a wall clock that jumps shifts where time lands,
never how much there is.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

from .datafiles import finite
from .reports import ReportError, validate_report
from .timings import DEFAULT_REPORT_INTERVAL, MAX_REPORT_INTERVAL, offline_after

log = logging.getLogger("sss.dashboard")

HOUR = 3600
# Tiers: fine rows (one per --history-resolution), hourly rows rolled up from them, and
# six-hour rows rolled up from those, so a year is 1,460 rows to read, not 8,760.
FINE, HOURLY, QUARTER_DAY = 0, 1, 2
ROLLUP_SECONDS = {HOURLY: HOUR, QUARTER_DAY: 6 * HOUR}
FINE_RETENTION = 48 * HOUR
DEFAULT_RESOLUTION = 60
DEFAULT_DAYS = 400
MAX_POINTS = 1500  # a range returns at most about this many points
LATEST_SECONDS = 600  # an online server's last view is written this often (views_due)
LATEST_PER_STEP = 1000
RETRY_STEPS = 10  # steps kept in memory while the database cannot be written
QUERY_THREADS = 2  # /api/history's queries run on these, never on the event loop
QUERIES_RUNNING = 8  # distinct queries at once; past that, "busy" (and requests share one)
CACHED_ANSWERS = 256  # answers kept until the next step: a page's six ranges, many viewers
RANGES = {"1h": HOUR, "6h": 6 * HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR,
          "30d": 30 * 24 * HOUR, "1y": 365 * 24 * HOUR}
# Tests only: seconds the writer holds its second transaction open (after the closed step
# is committed, before the rollups), so that a kill -9 can be timed into it.
TEST_STALL = float(os.environ.get("SSS_TEST_HISTORY_STALL", "0") or 0)


# --- what is kept of a report ---------------------------------------------------

# (API name, column): average and maximum are kept of each.
METRICS = (("cpu", "cpu"), ("memory", "memory"), ("swap", "swap"), ("disk", "disk"),
           ("load1", "load1"), ("netIn", "net_in"), ("netOut", "net_out"),
           ("diskRead", "disk_read"), ("diskWrite", "disk_write"), ("tcp", "tcp"),
           ("udp", "udp"), ("processes", "processes"), ("temperature", "temperature"))
EMPTY: dict[str, Any] = {}


def metric_values(record: dict[str, Any]) -> tuple[Any, ...]:
    """The metrics of one validated report, in METRICS order; None where absent."""
    get = record.get
    host = get("hostInfo", EMPTY)
    net = get("networkInfo", EMPTY)
    extra = get("extraInfo", EMPTY)
    return (get("cpuInfo", EMPTY).get("percent"),
            get("virtualMemoryInfo", EMPTY).get("usedPercent"),
            get("swapMemoryInfo", EMPTY).get("usedPercent"),
            get("diskInfo", EMPTY).get("usedPercent"),
            host.get("avgStat", EMPTY).get("load1"),
            net.get("netInSpeed"), net.get("netOutSpeed"),
            extra.get("diskReadSpeed"), extra.get("diskWriteSpeed"),
            extra.get("tcpConnections"), extra.get("udpConnections"), extra.get("processes"),
            hottest(extra.get("temperatures")))


def hottest(temperatures: list[dict[str, Any]] | None) -> float | None:
    """The hottest sensor of a report (°C), or None without sensors."""
    return max(t["celsius"] for t in temperatures) if temperatures else None


METRIC_COUNT = len(METRICS)
NONE_MISSING = (0,) * METRIC_COUNT  # shared by every bucket until a value is missing
NO_SUMS = array.array("d", [0.0] * METRIC_COUNT)
NO_MAXES = array.array("d", [-math.inf] * METRIC_COUNT)


class Bucket:
    """One server's reports and settled seconds within one resolution step.

    Slots, and the sums and maxima in arrays of doubles made at the first report: while
    a step is written every server holds two buckets, and with 24 float objects in two
    lists and a __dict__ a bucket took 870 bytes, against about 600 (5 MB less at 10,000
    servers, 10 MB during a step). A bucket that only holds seconds (a report's credit
    for an earlier step) has no arrays at all."""

    __slots__ = ("maxes", "missing", "n", "net_totals", "online", "probes", "seen", "start",
                 "sums", "watched")

    def __init__(self, start: int) -> None:
        self.start = start
        self.n = 0
        self.online = 0.0
        self.watched = 0.0
        self.sums: array.array | None = None
        self.maxes: array.array | None = None
        self.missing: list[int] | tuple[int, ...] = NONE_MISSING  # per metric, reports without
        self.net_totals: tuple[Any, Any] = (None, None)
        self.seen: float | None = None  # wall time of the last report
        # Latency probes, per target: [reports, sum of rtt, reports with an rtt, max rtt,
        # sum of loss]; None until a report carries probes.
        self.probes: dict[str, list[float]] | None = None

    def add_probes(self, probes: list[dict[str, Any]]) -> None:
        """The last probe round a report carried (extraInfo.probes)."""
        if self.probes is None:
            self.probes = {}
        for probe in probes:
            sums = self.probes.get(probe["name"])
            if sums is None:
                sums = self.probes[probe["name"]] = [0, 0.0, 0, -math.inf, 0.0]
            sums[0] += 1
            sums[4] += probe["loss"]
            rtt = probe.get("rtt")
            if rtt is not None:
                sums[1] += rtt
                sums[2] += 1
                sums[3] = max(sums[3], rtt)

    def add(self, values: tuple[Any, ...], net_totals: tuple[Any, Any], wall: float) -> None:
        """The hot path: plain loops, counting the rare missing value instead of each one."""
        self.n += 1
        self.net_totals = net_totals
        self.seen = wall
        sums, maxes = self.sums, self.maxes
        if sums is None or maxes is None:
            sums, maxes = self.sums, self.maxes = NO_SUMS[:], NO_MAXES[:]
        for i, value in enumerate(values):
            if value is None:
                if self.missing is NONE_MISSING:
                    self.missing = [0] * METRIC_COUNT
                self.missing[i] += 1  # type: ignore[index]
            else:
                sums[i] += value
                if value > maxes[i]:
                    maxes[i] = value

    def take(self, other: Bucket) -> None:
        """Add another bucket of the same step (a step that failed to write, kept for the
        next attempt, meets the reports that came meanwhile)."""
        self.online += other.online
        self.watched += other.watched
        if other.n:
            if self.sums is None or self.maxes is None:
                self.sums, self.maxes = NO_SUMS[:], NO_MAXES[:]
            for i in range(METRIC_COUNT):
                self.sums[i] += other.sums[i]  # type: ignore[index]
                self.maxes[i] = max(self.maxes[i], other.maxes[i])  # type: ignore[index]
            if other.missing is not NONE_MISSING or self.missing is not NONE_MISSING:
                self.missing = [a + b for a, b in zip(self.missing, other.missing)]
            if self.seen is None or (other.seen or 0) >= self.seen:
                self.net_totals, self.seen = other.net_totals, other.seen
            self.n += other.n
        for target, sums in (other.probes or EMPTY).items():
            if self.probes is None:
                self.probes = {}
            mine = self.probes.setdefault(target, [0, 0.0, 0, -math.inf, 0.0])
            mine[:3] = [a + b for a, b in zip(mine[:3], sums[:3])]
            mine[3], mine[4] = max(mine[3], sums[3]), mine[4] + sums[4]


# --- settling time (pure) -------------------------------------------------------


def vouched_seconds(since_report: float, interval: float) -> float:
    """Seconds a report vouches for as online, `since_report` seconds (monotonic) after
    the server's previous report (or the dashboard's start): all of them when it came
    within `offline_after` (a late report on a busy box is not downtime), else its own
    interval, which it describes.

    >>> vouched_seconds(5.0, 5), vouched_seconds(13.0, 5), vouched_seconds(100.0, 5)
    (5.0, 13.0, 5)
    """
    return since_report if since_report <= offline_after(interval) else interval


def step_pieces(wall: float, watched: float, online: float,
                resolution: int) -> Iterator[tuple[int, float, float]]:
    """(step start, watched, online) of the steps that `watched` seconds ending at `wall`
    fall in, newest first; the last `online` of them were online.

    >>> list(step_pieces(1000.0, 30.0, 10.0, 60))
    [(960, 30.0, 10.0)]
    >>> list(step_pieces(1000.0, 70.0, 50.0, 60))
    [(960, 40.0, 40.0), (900, 30.0, 10.0)]
    """
    end, first, online_from = wall, wall - watched, wall - online
    while end > first:
        start = int(end // resolution) * resolution
        if start >= end:  # `end` on a boundary: the step before it
            start -= resolution
        begin = max(start, first)
        yield start, end - begin, max(end - max(begin, online_from), 0.0)
        end = begin


# --- rows (pure) ---------------------------------------------------------------

COLUMNS = ("tier", "server", "t", "n", "online", "watched",
           *(c for _, col in METRICS for c in (col, f"{col}_max")),
           "net_in_total", "net_out_total", "seen")
METRIC_COLUMNS = COLUMNS[6:-3]
ROLLED_COLUMNS = COLUMNS[:-3]  # what a rollup computes (no transfer totals, no `seen`)


def bucket_row(tier: int, sid: str, bucket: Bucket) -> tuple[Any, ...]:
    """The row of one bucket."""
    metrics: list[Any] = []
    if bucket.n and bucket.sums is not None and bucket.maxes is not None:
        for total, missing, top in zip(bucket.sums, bucket.missing, bucket.maxes):
            count = bucket.n - missing
            metrics += [total / count, top] if count else [None, None]
    else:
        metrics = [None] * (2 * METRIC_COUNT)
    return (tier, sid, bucket.start, bucket.n, bucket.online, bucket.watched, *metrics,
            *bucket.net_totals, bucket.seen)


PROBE_COLUMNS = ("tier", "server", "target", "t", "n", "rtt", "rtt_max", "loss")


def probe_rows(tier: int, sid: str, bucket: Bucket) -> list[tuple[Any, ...]]:
    """One row per probe target of a bucket: mean and max round trip, mean loss."""
    return [(tier, sid, target, bucket.start, n, rtt_sum / rtt_n if rtt_n else None,
             rtt_max if rtt_n else None, loss_sum / n)
            for target, (n, rtt_sum, rtt_n, rtt_max, loss_sum) in (bucket.probes or EMPTY).items()]


def in_tier(row: tuple[Any, ...], tier: int, time_at: int) -> tuple[Any, ...]:
    """A fine row as a delta for a rolled-up tier (its period starting at `time_at`)."""
    return (tier, row[1], time_at, *row[3:6], *row[6:-3], None, None, None)


def weighted(column: str) -> str:
    """SQL for the average of an average column over rows weighted by their report count."""
    return f"SUM({column} * n) / SUM(CASE WHEN {column} IS NOT NULL THEN n END)"


def merged(column: str) -> str:
    """SQL setting an average column to the mean of the row's and a delta's, by reports."""
    return (f"{column} = CASE WHEN excluded.{column} IS NULL THEN {column} "
            f"WHEN {column} IS NULL THEN excluded.{column} "
            f"ELSE ({column} * n + excluded.{column} * excluded.n) / (n + excluded.n) END")


def larger(column: str) -> str:
    """SQL setting a column to the larger of the row's and a delta's (NULL: unknown)."""
    return (f"{column} = COALESCE(MAX({column}, excluded.{column}), {column}, "
            f"excluded.{column})")


AGGREGATES = ", ".join(
    ["SUM(n)", "SUM(online)", "SUM(watched)"]
    + [f"{weighted(col)}, MAX({col}_max)" for _, col in METRICS])
PROBE_AGGREGATES = f"SUM(n), {weighted('rtt')}, MAX(rtt_max), {weighted('loss')}"
# Adding a delta to a row: counts and seconds add up, averages by reports, maxima.
ADD_SAMPLE = (
    f"INSERT INTO samples ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (tier, server, t) DO UPDATE SET "
    + ", ".join([*(merged(col) for _, col in METRICS),
                 *(larger(f"{col}_max") for _, col in METRICS),
                 "net_in_total = COALESCE(excluded.net_in_total, net_in_total)",
                 "net_out_total = COALESCE(excluded.net_out_total, net_out_total)",
                 larger("seen"), "online = online + excluded.online",
                 "watched = watched + excluded.watched", "n = n + excluded.n"]))
ADD_PROBE = (
    f"INSERT INTO probe_samples ({', '.join(PROBE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(PROBE_COLUMNS))}) "
    "ON CONFLICT (tier, server, t, target) DO UPDATE SET "
    f"{merged('rtt')}, {larger('rtt_max')}, {merged('loss')}, n = n + excluded.n")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which rows answer a range, and how many seconds each point covers."""

    start: int
    end: int
    step: int
    tier: int


def plan(range_seconds: int, resolution: int, now: float) -> Plan:
    """Choose tier and step so a range returns at most about MAX_POINTS points."""
    if range_seconds <= FINE_RETENTION // 2:
        tier, base = FINE, resolution
    elif range_seconds <= 31 * 24 * HOUR:
        tier, base = HOURLY, HOUR
    else:
        tier, base = QUARTER_DAY, 6 * HOUR
    step = base * max(1, math.ceil(range_seconds / base / MAX_POINTS))
    end = int(now) // step * step + step
    return Plan(end - step * math.ceil(range_seconds / step), end, step, tier)


def columnar(sid: str, range_name: str, chosen: Plan, rows: list[tuple[Any, ...]],
             probes: list[tuple[Any, ...]] | None = None) -> str:
    """The /api/history answer: one array per field, a slot for every step, null in gaps."""
    by_slot = {row[0]: row for row in rows}
    slots = list(range(chosen.start, chosen.end, chosen.step))
    answer: dict[str, Any] = {"id": sid, "range": range_name, "step": chosen.step,
                              "time": slots}
    found = [by_slot.get(t) for t in slots]
    for i, (name, _) in enumerate(METRICS):
        answer[name] = [rounded(row[4 + 2 * i]) if row else None for row in found]
        if name == "cpu":
            answer["cpuMax"] = [rounded(row[5]) if row else None for row in found]
    answer["online"] = [share(row[2], row[3]) if row else None for row in found]
    if probes:
        answer["probes"] = probe_columns(slots, probes)
    return json.dumps(answer, separators=(",", ":"), allow_nan=False)


def probe_columns(slots: list[int], rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """{target: {"rtt": [...], "loss": [...]}} from (target, slot, n, rtt, rtt_max, loss)
    rows; loss as a ratio, null in gaps."""
    by_target: dict[str, dict[int, tuple[Any, ...]]] = {}
    for row in rows:
        by_target.setdefault(row[0], {})[row[1]] = row
    answer = {}
    for target, found in sorted(by_target.items()):
        answer[target] = {
            "rtt": [rounded(found[t][3]) if t in found else None for t in slots],
            "loss": [rounded(found[t][5], 4) if t in found else None for t in slots]}
    return answer


def rounded(value: Any, digits: int = 2) -> Any:
    """A value for JSON: floats rounded, and None for what JSON cannot carry (a damaged
    database can hold infinities).

    >>> rounded(3.14159), rounded(float("inf")), rounded(7), rounded(None)
    (3.14, None, 7, None)
    """
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value


def share(part: Any, whole: Any) -> float | None:
    """part / whole for JSON, rounded to 4 digits; None without a whole or when not finite."""
    return rounded(part / whole, 4) if whole else None


# --- availability ------------------------------------------------------------------


def availability(hours: dict[int, tuple[float, float]], month: tuple[float, float],
                 now: float) -> dict[str, Any]:
    """`availability` and `last24h` for a server view, from its hourly (online, watched).

    `hours` holds the last 24 hours (the current one included); `month` the sums over the
    completed hours of the 30 days before those.
    """
    current = int(now) // HOUR * HOUR
    last24 = [hours.get(current - HOUR * i) for i in range(23, -1, -1)]
    day = [h for h in last24 if h and h[1] > 0]
    online_day, watched_day = sum(h[0] for h in day), sum(h[1] for h in day)
    return {
        "availability": {"24h": percent(online_day, watched_day),
                         "30d": percent(online_day + month[0], watched_day + month[1])},
        "last24h": [percent(*h) if h else None for h in last24],
    }


def percent(online: float, watched: float) -> float | None:
    return round(min(online / watched, 1.0) * 100, 2) if watched > 0 else None


DAY_HOURS = 24  # the ledger's day: the current hour and the 23 before it
EMPTY_HOUR = -1.0


def empty_day() -> array.array:
    return array.array("d", [EMPTY_HOUR, 0.0, 0.0] * DAY_HOURS)


NO_DAY = empty_day()  # read, never written: the day of a server without hours


def hour_in(day: array.array, hour: int) -> tuple[float, float] | None:
    """(online, watched) of `hour` in a server's day, None when it holds nothing of it."""
    slot = hour // HOUR % DAY_HOURS * 3
    return (day[slot + 1], day[slot + 2]) if day[slot] == hour else None


class Ledger:
    """Per server: (online, watched) seconds of the last 24 hours, and sums of the month.

    A server's day is a ring of 24 slots (hour, online, watched) in one array of floats,
    each hour in the slot its number gives: 640 bytes. A dict of hours was 4.8 KiB a server
    once it held a day, 48 MB at 10,000 servers. The 23 completed hours of a server's day
    change once an hour, so their part of the view is kept and only the current hour is
    recomputed at each step.
    """

    def __init__(self) -> None:
        self.hours: dict[str, array.array] = {}
        self.month: dict[str, tuple[float, float]] = {}
        self.past: dict[str, tuple[int, str, float, float]] = {}  # hour, JSON, online, watched

    def add(self, sid: str, start: int, online: float, watched: float) -> None:
        day = self.hours.get(sid)
        if day is None:
            day = self.hours[sid] = empty_day()
        hour = start // HOUR * HOUR
        for slot in range(0, 3 * DAY_HOURS, 3):  # hours that leave the day go to the month
            if EMPTY_HOUR < day[slot] <= hour - DAY_HOURS * HOUR:
                self.to_month(sid, day[slot + 1], day[slot + 2])
                day[slot] = EMPTY_HOUR
        slot = hour // HOUR % DAY_HOURS * 3
        if day[slot] > hour:  # older than the day it holds (the clock went back): the month's
            self.to_month(sid, online, watched)
            return
        if day[slot] != hour:
            day[slot:slot + 3] = array.array("d", (hour, 0.0, 0.0))
        day[slot + 1] += online
        day[slot + 2] += watched
        if sid in self.past and hour < self.past[sid][0]:
            del self.past[sid]  # a completed hour changed after all

    def to_month(self, sid: str, online: float, watched: float) -> None:
        """Seconds that left the day stay in the month until it is recounted."""
        month = self.month.get(sid, (0.0, 0.0))
        self.month[sid] = (month[0] + online, month[1] + watched)

    def day(self, sid: str) -> dict[int, tuple[float, float]]:
        """A server's day as {hour: (online, watched)}, as availability() takes it."""
        day = self.hours.get(sid, NO_DAY)
        return {int(day[slot]): (day[slot + 1], day[slot + 2])
                for slot in range(0, len(day), 3) if day[slot] != EMPTY_HOUR}

    def json(self, sid: str, now: float) -> dict[str, str]:
        """The fields a server view gains, `availability` and `last24h`, encoded; the same
        as availability() gives (tested), computed cheaply."""
        current = int(now) // HOUR * HOUR
        day = self.hours.get(sid, NO_DAY)
        past = self.past.get(sid)
        if past is None or past[0] != current:
            values = [hour_in(day, current - HOUR * i) for i in range(23, 0, -1)]
            known = [h for h in values if h and h[1] > 0]
            past = (current, ",".join(json_number(percent(*h)) if h else "null" for h in values),
                    sum(h[0] for h in known), sum(h[1] for h in known))
            self.past[sid] = past
        this_hour = hour_in(day, current)
        now_online, now_watched = this_hour or (0.0, 0.0)
        online, watched = past[2] + now_online, past[3] + now_watched
        month = self.month.get(sid, (0.0, 0.0))
        hour_json = "null" if this_hour is None else json_number(percent(*this_hour))
        day_json = json_number(percent(online, watched))
        days30 = json_number(percent(online + month[0], watched + month[1]))
        return {"availability": f'{{"24h":{day_json},"30d":{days30}}}',
                "last24h": f"[{past[1]},{hour_json}]"}


def json_number(value: float | None) -> str:
    return "null" if value is None else repr(value)


# --- the store ------------------------------------------------------------------

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS samples (
    tier INTEGER NOT NULL, server TEXT NOT NULL, t INTEGER NOT NULL,
    n INTEGER NOT NULL, online REAL NOT NULL, watched REAL NOT NULL,
    {", ".join(f"{col} REAL, {col}_max REAL" for _, col in METRICS)},
    net_in_total INTEGER, net_out_total INTEGER, seen REAL,
    PRIMARY KEY (tier, server, t)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (tier, t);
-- The last server view of each server (already encoded for browsers: no JSON work here).
CREATE TABLE IF NOT EXISTS latest (
    server TEXT PRIMARY KEY, t INTEGER NOT NULL, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;
-- Latency probes: one row per server, target and bucket (mean and max rtt in ms, mean loss).
CREATE TABLE IF NOT EXISTS probe_samples (
    tier INTEGER NOT NULL, server TEXT NOT NULL, target TEXT NOT NULL, t INTEGER NOT NULL,
    n INTEGER NOT NULL, rtt REAL, rtt_max REAL, loss REAL,
    PRIMARY KEY (tier, server, t, target)) WITHOUT ROWID;
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a history.db of an earlier version up to SCHEMA: `seen` and metrics came later
    (rows from before hold NULL for them: no data, as for a report without them)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(samples)")}
    for column in ("seen", *(c for _, col in METRICS for c in (col, f"{col}_max"))):
        if column not in columns:
            db.execute(f"ALTER TABLE samples ADD COLUMN {column} REAL")


# What rows read back must hold to count (a damaged file can hold anything): seconds that a
# year of steps could add up to, times before the year 5000.
SANE_SECONDS = "online BETWEEN 0 AND 1e9 AND watched BETWEEN 0 AND 1e9"
SANE_TIME = 1e11


def history_problems(path: Path) -> list[str]:
    """What a start would find wrong with history.db, read-only: [] when it is fine or not
    there yet."""
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            views = db.execute("SELECT server, record FROM latest").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return [advice(path, exc)]
    problems = []
    for sid, view in views:
        try:
            validate_report(view)
        except (ReportError, TypeError) as exc:
            problems.append(f"{path}: the last view of {str(sid)[:60]!r} is damaged ({exc}); "
                            "a start drops it")
    return problems


def stored_interval(record: dict[str, Any]) -> float:
    """A restored record's reportInterval, if it is one a report could have carried."""
    interval = record.get("reportInterval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) \
            and 0 < interval <= MAX_REPORT_INTERVAL:
        return float(interval)
    return DEFAULT_REPORT_INTERVAL


def rolled_until(db: sqlite3.Connection, tier: int, default: int | None) -> int | None:
    """Where the rows of a rolled-up tier end: later periods are only in the tier below."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (f"rolled_until_{tier}",)).fetchone()
    return row[0] if row else default


def tier_sources(tier: int, ends: dict[int, int]) -> tuple[str, list[int]]:
    """SQL (and its arguments) for the rows that answer a tier: its own rows up to where
    they end, then each finer tier's rows from there, so the newest points are there too."""
    parts, args, since = [], [], None
    for level in range(tier, -1, -1):
        upper = ends.get(level)
        bounds = ([] if since is None else ["t >= ?"]) + ([] if upper is None else ["t < ?"])
        parts.append(" AND ".join([f"tier = {level}", *bounds]))
        args += ([] if since is None else [since]) + ([] if upper is None else [upper])
        since = upper
    return "(" + " OR ".join(f"({p})" for p in parts) + ")", args


def advice(path: Path, error: BaseException) -> str:
    """One line naming the file and what to do about the error."""
    text = str(error)
    if "readonly" in text or "unable to open" in text or isinstance(error, OSError):
        todo = ("make the data directory exist and be writable by the dashboard's user, "
                "or pass --data DIR")
    elif "full" in text:
        todo = "free disk space there"
    elif "not a database" in text or "malformed" in text:
        todo = "move the file aside; the dashboard then starts a new one"
    elif "locked" in text:
        todo = "another process holds it; stop that process"
    else:
        todo = "check the file and the data directory"
    return f"{path}: {text}; {todo} (live data goes on; history retries every step)"


Closed = list[tuple[int, dict[str, Bucket]]]  # (bucket start, sid -> bucket)


WRITER_SHARE = 0.3  # of the GIL, at most, while the writer thread works through a step
WRITER_SLICE = 0.005


def paced(items: Iterable[Any]) -> Iterator[Any]:
    """Yield `items`, pausing so that this thread holds the GIL at most WRITER_SHARE of
    the time. The writer's Python work for 10,000 servers takes the GIL for a few hundred
    milliseconds; unpaced, the event loop got half of it meanwhile and updates came
    late by a second, once a minute."""
    since = time.perf_counter()
    for item in items:
        yield item
        worked = time.perf_counter() - since
        if worked >= WRITER_SLICE:
            time.sleep(worked * (1 / WRITER_SHARE - 1))
            since = time.perf_counter()


class Writer:
    """The writer thread's side: its own connection and the ledger, used only there."""

    def __init__(self, path: Path, resolution: int, hourly_days: int) -> None:
        self.path = path
        self.resolution = resolution
        self.hourly_retention = hourly_days * 24 * HOUR
        self.db: sqlite3.Connection | None = None
        self.ledger = Ledger()
        self.known: set[str] = set()  # servers with rows: their views carry availability

    def connection(self) -> sqlite3.Connection:
        if self.db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # One thread at a time uses it (the writer thread; tests call it directly).
            db = sqlite3.connect(self.path, timeout=2, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
                migrate(db)
            except BaseException:
                db.close()
                raise
            self.db = db
        return self.db

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def restore(self, now: float) -> dict[str, tuple[float, dict[str, Any]]]:
        """At start: every server's last seen time and last record; the ledger from the
        stored rows. The last seen time is the newest row's (at most one step old after
        a kill -9): the last view itself is written only every few minutes. What the file
        holds is checked as a report is: a damaged view is dropped, logged."""
        db = self.connection()
        latest = {}
        for sid, t, view in db.execute("SELECT server, t, record FROM latest").fetchall():
            try:
                if not isinstance(view, str) or not finite(t) or not isinstance(sid, str):
                    raise ReportError("damaged", "not a server's view")
                record = validate_report(view)
            except ReportError as exc:
                log.error("history: %s: the last view of %r is damaged (%s); dropped",
                          self.path, str(sid)[:60], exc)
                continue
            seen = db.execute(f"SELECT MAX(seen) FROM samples WHERE tier = {FINE} AND "
                              "server = ? AND t >= ? AND seen < ?",
                              (sid, int(t) // self.resolution * self.resolution,
                               SANE_TIME)).fetchone()[0]
            latest[sid] = (max(float(t), seen or 0.0), record)
        self.known.update(latest)
        day_start = int(now) // HOUR * HOUR - 23 * HOUR
        for sid, hour, online, watched in db.execute(
                f"SELECT server, t / {HOUR} * {HOUR} AS hour, SUM(online), SUM(watched) "
                f"FROM samples WHERE tier = {FINE} AND t >= ? AND {SANE_SECONDS} "
                "GROUP BY server, hour", (day_start,)):
            self.ledger.add(sid, hour, online, watched)
            self.known.add(sid)
        self.ledger.month = self.month_sums(db, day_start)
        return latest

    def month_sums(self, db: sqlite3.Connection, day_start: int) -> dict[str, Any]:
        return {sid: (online, watched) for sid, online, watched in db.execute(
            f"SELECT server, SUM(online), SUM(watched) FROM samples WHERE tier = {HOURLY} "
            f"AND t >= ? AND t < ? AND {SANE_SECONDS} GROUP BY server",
            (day_start - 30 * 24 * HOUR, day_start))}

    def write_rows(self, closed: Closed) -> int:
        """The closed buckets, added to their rows in one transaction (the step's write
        window: until it commits, a kill -9 loses the closed step too). Rows of periods
        rolled up already are added to the rolled-up rows as well. Returns the rows."""
        rows = [bucket_row(FINE, sid, bucket)
                for _, buckets in closed for sid, bucket in paced(buckets.items())]
        probes = [row for _, buckets in closed for sid, bucket in buckets.items()
                  for row in probe_rows(FINE, sid, bucket)]
        db = self.connection()
        try:
            ends = {tier: rolled_until(db, tier, None) for tier in ROLLUP_SECONDS}
            late = [(tier, length) for tier, length in ROLLUP_SECONDS.items()
                    if ends[tier] is not None]
            db.execute("BEGIN IMMEDIATE")
            db.executemany(ADD_SAMPLE, rows)
            db.executemany(ADD_PROBE, probes)
            for tier, length in late:
                end = ends[tier]
                db.executemany(ADD_SAMPLE, [in_tier(row, tier, row[2] // length * length)
                                            for row in rows if row[2] < end])
                db.executemany(ADD_PROBE, [(tier, *row[1:3], row[3] // length * length,
                                            *row[4:]) for row in probes if row[3] < end])
            db.execute("COMMIT")
        except BaseException:
            self.abandon(db)
            raise
        for row in rows:
            self.ledger.add(row[1], row[2], row[4], row[5])
            self.known.add(row[1])
        return len(rows)

    def write_rest(self, latest: list[tuple[str, int, str]], now: float,
                   kept_since: float) -> None:
        """After the closed step: the servers' last views, rollups and retention, in a
        transaction of their own (a kill -9 meanwhile loses none of the step's rows)."""
        db = self.connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO latest VALUES (?, ?, ?)", latest)
            if TEST_STALL:
                log.info("history: holding the rollup transaction for %.1f s (test)",
                         TEST_STALL)
                time.sleep(TEST_STALL)
            self.roll_up(db, now, kept_since)
            db.execute("COMMIT")
        except BaseException:
            self.abandon(db)
            raise

    def abandon(self, db: sqlite3.Connection) -> None:
        """After a failed write: roll back, and reopen at the next step (the file may have
        been fixed meanwhile)."""
        if db.in_transaction:
            db.execute("ROLLBACK")
        self.close()

    def fields(self, servers: Iterable[str], now: float) -> dict[str, dict[str, str]]:
        """Each known server's history fields for its view."""
        return {sid: self.ledger.json(sid, now) for sid in paced(servers) if sid in self.known}

    def roll_up(self, db: sqlite3.Connection, now: float, kept_since: float) -> None:
        """Rows of each rolled-up tier for every completed period not rolled up yet."""
        rolled = False
        for tier, length in ROLLUP_SECONDS.items():
            current = int(now) // length * length
            done = rolled_until(db, tier, None)
            if done is None:  # a new file: from its first row on
                first = db.execute("SELECT MIN(t) FROM samples WHERE tier = ?",
                                   (tier - 1,)).fetchone()[0]
                done = current if first is None else min(first // length * length, current)
            if done < current:
                db.execute(
                    f"INSERT OR REPLACE INTO samples ({', '.join(ROLLED_COLUMNS)}) "
                    f"SELECT {tier}, server, t / {length} * {length}, {AGGREGATES} "
                    f"FROM samples WHERE tier = {tier - 1} AND t >= ? AND t < ? "
                    f"GROUP BY server, t / {length}", (done, current))
                db.execute(
                    f"INSERT OR REPLACE INTO probe_samples ({', '.join(PROBE_COLUMNS)}) "
                    f"SELECT {tier}, server, target, t / {length} * {length}, "
                    f"{PROBE_AGGREGATES} FROM probe_samples WHERE tier = {tier - 1} "
                    f"AND t >= ? AND t < ? GROUP BY server, target, t / {length}",
                    (done, current))
                rolled = True
            # Never back: a wall clock set back leaves the rolled-up periods as they are,
            # and rows written for them later are added to them (write_rows).
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       (f"rolled_until_{tier}", max(done, current)))
        if rolled:
            self.expire(db, kept_since)
            self.ledger.month = self.month_sums(db, int(now) // HOUR * HOUR - 23 * HOUR)

    def expire(self, db: sqlite3.Connection, kept_since: float) -> None:
        """Retention: fine rows for 48 hours, rolled-up rows for --history-days, counted
        back from `kept_since` (timings.WallWatch.steady: a wall clock that just jumped
        forward deletes nothing)."""
        for table in ("samples", "probe_samples"):
            db.execute(f"DELETE FROM {table} WHERE tier = ? AND t < ?",
                       (FINE, kept_since - FINE_RETENTION))
            db.execute(f"DELETE FROM {table} WHERE tier > ? AND t < ?",
                       (FINE, kept_since - self.hourly_retention))


class Busy(Exception):
    """No query may start now: QUERIES_RUNNING are running."""


class History:
    """The loop's side: buckets in memory, settling each server's time, handing closed
    steps to the writer, queries."""

    def __init__(self, data_dir: Path, resolution: int = DEFAULT_RESOLUTION,
                 days: int = DEFAULT_DAYS) -> None:
        self.path = data_dir / "history.db"
        self.resolution = resolution
        self.writer = Writer(self.path, resolution, days)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "sss-history")
        self.buckets: dict[int, dict[str, Bucket]] = {}  # bucket start -> sid -> bucket
        # Monotonic seconds: when watching began (the start), each server's last report
        # in this run, and up to when each server's time is settled into buckets.
        self.watching_since = 0.0
        self.last_report: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.intervals: dict[str, float] = {}  # each server's last reportInterval
        self.known: set[str] = set()  # reported at least once, ever: its silence is offline
        self.unwritten: set[str] = set()  # reported since their last view was written
        self.written: dict[str, float] = {}  # when each server's last view was written
        self.status = "ok"
        # Queries run on QUERY_THREADS threads of their own, each with its own read-only
        # connection; their answers are kept until the next step is written.
        self.queries = concurrent.futures.ThreadPoolExecutor(QUERY_THREADS, "sss-query")
        self.readers = threading.local()
        self.open_readers: list[sqlite3.Connection] = []
        # Answers until the next step, or the query that is working one out.
        self.answers: dict[tuple[str, str, int], str | asyncio.Future[str]] = {}
        self.step_seconds: list[float] = []  # the writer's time per step, for bench.py
        self.window_seconds: list[float] = []  # from a step's end until it is committed

    def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run on the writer thread and wait: for start and stop, not for the loop."""
        return self.executor.submit(function, *args).result()

    # --- on the loop ---

    def watch(self, now: float) -> None:
        """Watching begins (the dashboard's start, monotonic `now`): every server's time is
        settled from here; a first report within `offline_after` vouches back to here."""
        self.watching_since = now
        self.settled = dict.fromkeys(self.settled, now)
        self.last_report.clear()

    def fold(self, sid: str, record: dict[str, Any], now: float, wall: float) -> None:
        """Fold one accepted report into its server's bucket and settle the server's time
        up to it (the hot path: keep it small)."""
        start = int(wall) // self.resolution * self.resolution
        buckets = self.buckets.get(start)
        if buckets is None:
            buckets = self.buckets[start] = {}
        bucket = buckets.get(sid)
        if bucket is None:
            bucket = buckets[sid] = Bucket(start)
        interval = record.get("reportInterval", DEFAULT_REPORT_INTERVAL)
        since = self.settled.get(sid, self.watching_since)
        watched = now - since
        online = min(vouched_seconds(now - self.last_report.get(sid, self.watching_since),
                                     interval), watched)
        if sid not in self.known:  # a server's first report ever: its own interval, no more
            self.known.add(sid)
            watched = online = min(online, interval)
        if wall - watched >= start:
            bucket.online += online
            bucket.watched += watched
        else:  # the time reaches back into earlier steps
            self.credit(sid, wall, watched, online)
        self.settled[sid] = self.last_report[sid] = now
        self.intervals[sid] = interval
        net = record.get("networkInfo", EMPTY)
        bucket.add(metric_values(record), (net.get("netInTransfer"), net.get("netOutTransfer")),
                   wall)
        probes = record.get("extraInfo", EMPTY).get("probes")
        if probes:
            bucket.add_probes(probes)

    def credit(self, sid: str, wall: float, watched: float, online: float) -> None:
        """Put `watched` seconds of a server's time ending at `wall` (the last `online` of
        them online) into the buckets of the steps they fall in."""
        for start, seconds, up in step_pieces(wall, watched, online, self.resolution):
            buckets = self.buckets.setdefault(start, {})
            bucket = buckets.get(sid)
            if bucket is None:
                bucket = buckets[sid] = Bucket(start)
            bucket.watched += seconds
            bucket.online += up

    def settle(self, servers: Iterable[str], now: float, wall: float) -> None:
        """Settle the time of every known server whose silence is past `offline_after`
        (its next report could no longer vouch for it) as offline, up to `now`. The others
        wait for their next report, which settles theirs either way."""
        since_start = self.watching_since
        for sid in servers:
            if sid not in self.known:
                continue
            heard = self.last_report.get(sid, since_start)
            if now - heard <= offline_after(self.intervals.get(sid, DEFAULT_REPORT_INTERVAL)):
                continue
            watched = now - self.settled.get(sid, since_start)
            if watched > 0:
                self.credit(sid, wall, watched, 0.0)
                self.settled[sid] = now

    def take_closed(self, wall: float, everything: bool = False) -> Closed:
        """Every step but the one holding `wall` (all of them, at shutdown), oldest first:
        a step before it may have got seconds from a report since it was written (they are
        added to its row), one after it only when the wall clock went back."""
        current = int(wall) // self.resolution * self.resolution
        starts = sorted(s for s in self.buckets if everything or s != current)
        return [(start, self.buckets.pop(start)) for start in starts]

    def put_back(self, closed: Closed) -> None:
        """A step that could not be written waits for the next attempt (RETRY_STEPS at
        most; older ones are dropped, logged)."""
        for start, buckets in closed:
            mine = self.buckets.setdefault(start, {})
            for sid, bucket in buckets.items():
                if sid in mine:
                    bucket.take(mine[sid])
                mine[sid] = bucket
        starts = sorted(self.buckets)
        if len(starts) > RETRY_STEPS + 1:
            for start in starts[:-RETRY_STEPS - 1]:
                del self.buckets[start]
            log.warning("history: %d steps could not be written and were dropped",
                        len(starts) - RETRY_STEPS - 1)

    async def step(self, loop: Any, now: float, wall: float, servers: list[str],
                   records: Callable[[str], tuple[int, str] | None],
                   final: bool = False, online: Container[str] = (),
                   kept_since: float | None = None) -> dict[str, dict[str, str]] | None:
        """Write the closed steps on the writer thread; each server's view fields, or None
        when they could not be written (logged once per distinct problem). The final step,
        at a graceful stop, writes the open buckets too. `kept_since`: the wall time that
        retention counts back from (default `wall`)."""
        self.settle(servers, now, wall)
        closed = self.take_closed(wall, everything=final)
        for _, buckets in closed:
            self.unwritten.update(sid for sid, bucket in buckets.items() if bucket.n)
        started = loop.time()
        try:
            await loop.run_in_executor(self.executor, self.writer.write_rows, closed)
        except (sqlite3.Error, OSError) as exc:
            self.put_back(closed)
            self.problem(exc)
            return None
        self.window_seconds.append(loop.time() - started + wall % self.resolution)
        due = self.views_due(now, online, final)
        latest = [(sid, *found) for sid in due if (found := records(sid)) is not None]
        try:
            await loop.run_in_executor(self.executor, self.writer.write_rest, latest, wall,
                                       wall if kept_since is None else kept_since)
        except (sqlite3.Error, OSError) as exc:
            self.unwritten.update(due)
            self.problem(exc)
            return None
        fields = await loop.run_in_executor(self.executor, self.writer.fields, servers, wall)
        self.answers.clear()  # a new step is in: the rows changed
        self.step_seconds.append(loop.time() - started)
        del self.step_seconds[:-100], self.window_seconds[:-100]
        if self.status != "ok":
            log.info("history: writing to %s again", self.path)
            self.status = "ok"
        return fields

    def views_due(self, now: float, online: Container[str], final: bool) -> list[str]:
        """The servers whose last view is to be written now: once they are offline (the
        view a restart shows as "last seen"), at a graceful stop, and otherwise every
        LATEST_SECONDS; at most LATEST_PER_STEP a step but at a stop, offline servers and
        those never written first. At 10,000 agents writing every view every minute was
        14 MB a minute of SQLite writes; an agent that is online reports again right
        after a restart anyway, and its last seen time comes from its rows."""
        due = [sid for sid in self.unwritten if final or sid not in online
               or now - self.written.get(sid, -math.inf) >= LATEST_SECONDS]
        if not final and len(due) > LATEST_PER_STEP:
            due.sort(key=lambda sid: (sid in online, self.written.get(sid, -math.inf)))
            del due[LATEST_PER_STEP:]
        self.unwritten.difference_update(due)
        self.written.update(dict.fromkeys(due, now))
        return due

    def problem(self, exc: BaseException) -> None:
        message = advice(self.path, exc)
        if message != self.status:
            log.error("history: %s", message)
        self.status = message

    def restore(self, now: float, wall: float) -> dict[str, tuple[float, dict[str, Any]]]:
        """At start (monotonic `now`): watching begins; every server's last seen time and
        last record (empty when history cannot be read)."""
        self.watch(now)
        try:
            latest = self.in_thread(self.writer.restore, wall)
        except (sqlite3.Error, OSError, ValueError) as exc:
            self.problem(exc)
            self.in_thread(self.writer.close)
            return {}
        self.known.update(self.writer.known)
        self.intervals.update((sid, stored_interval(record))
                              for sid, (_, record) in latest.items())
        return latest

    def fields(self, servers: list[str], now: float) -> dict[str, dict[str, str]]:
        return self.in_thread(self.writer.fields, servers, now)

    def read(self) -> sqlite3.Connection:
        """This query thread's read-only connection."""
        db = getattr(self.readers, "db", None)
        if db is None:
            db = self.readers.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                                   timeout=1, check_same_thread=False)
            self.open_readers.append(db)
        return db

    async def answer(self, sid: str, range_name: str, now: float) -> str:
        """One server's range as columnar JSON, from a query thread (a year of rows is
        100 ms and more of work that the event loop does not wait for), or as answered
        before within this step, or by the query already running for it. Raises Busy when
        QUERIES_RUNNING other queries are running, sqlite3.Error when history cannot be
        read."""
        key = (sid, range_name, plan(RANGES[range_name], self.resolution, now).end)
        found = self.answers.get(key)
        if isinstance(found, str):
            return found
        if found is None:
            if sum(isinstance(a, asyncio.Future) for a in self.answers.values()) \
                    >= QUERIES_RUNNING:
                raise Busy(f"{QUERIES_RUNNING} history queries running")
            loop = asyncio.get_running_loop()
            found = loop.run_in_executor(self.queries, self.query, sid, range_name, now)
            if len(self.answers) >= CACHED_ANSWERS:
                del self.answers[next(iter(self.answers))]
            self.answers[key] = found
        try:
            text = await asyncio.shield(found)  # others may be waiting for it too
        except sqlite3.Error:
            if self.answers.get(key) is found:
                del self.answers[key]
            raise
        if self.answers.get(key) is found:
            self.answers[key] = text
        return text

    def query(self, sid: str, range_name: str, now: float) -> str:
        """One server's range as columnar JSON, on the calling thread; raises sqlite3.Error
        when unreadable.

        Longer ranges read rolled-up rows, and the finer rows of the periods not rolled up
        yet (tier_sources), so the newest points are there too.
        """
        chosen = plan(RANGES[range_name], self.resolution, now)
        try:
            db = self.read()
            ends = {tier: rolled_until(db, tier, chosen.end) for tier in ROLLUP_SECONDS
                    if tier <= chosen.tier}
            sources, args = tier_sources(chosen.tier, ends)
            rows = db.execute(
                f"SELECT t / {chosen.step} * {chosen.step} AS slot, {AGGREGATES} FROM samples "
                f"WHERE server = ? AND t >= ? AND t < ? AND {sources} GROUP BY slot",
                (sid, chosen.start, chosen.end, *args)).fetchall()
            probes = db.execute(
                f"SELECT target, t / {chosen.step} * {chosen.step} AS slot, "
                f"{PROBE_AGGREGATES} FROM probe_samples WHERE server = ? AND t >= ? "
                f"AND t < ? AND {sources} GROUP BY target, slot",
                (sid, chosen.start, chosen.end, *args)).fetchall()
        except sqlite3.Error:
            self.close_reader()
            raise
        return columnar(sid, range_name, chosen, rows, probes)

    def close_reader(self) -> None:
        """Drop this thread's connection (reopened at the next query: the file may be back)."""
        db = getattr(self.readers, "db", None)
        if db is not None:
            self.readers.db = None
            with contextlib.suppress(ValueError):
                self.open_readers.remove(db)
            db.close()

    def close(self) -> None:
        self.queries.shutdown()
        for db in self.open_readers:
            db.close()
        self.in_thread(self.writer.close)
        self.executor.shutdown()
