"""History: every server's past in one SQLite file, history.db in the data directory.

    $ python3 dashboard.py --data /var/lib/sss-dashboard --history-resolution 60
    $ curl -s 'http://127.0.0.1:8900/api/history?id=web-1&range=1h' | head -c 120
    {"id":"web-1","range":"1h","step":60,"time":[1795748880,1795748940,...],"cpu":[3.1,null,...

Each accepted report folds into an in-memory bucket for its server (`fold`, a few
microseconds, on the event loop). Once per resolution step the closed buckets go to a
writer thread with its own connection, which writes them in one transaction, rolls
completed hours up into hourly rows (and those into six-hour rows), and applies
retention. Queries run on a read-only connection. Nothing here imports websockets; the
pure parts (folding, rows, plans, availability) take time as arguments and are tested
without a database.

Rows: one per server per bucket while the dashboard watches a server that has reported at
least once: `n` reports (0 while it is offline: metrics NULL, never zeros), `online` and
`watched` seconds (availability = online / watched, so the dashboard's own downtime is not
held against a server), average and maximum of each metric, and the last transfer totals.
"""

from __future__ import annotations

import array
import concurrent.futures
import dataclasses
import json
import logging
import math
import sqlite3
import time
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

from reports import VIEW_FIELDS
from timings import DEFAULT_REPORT_INTERVAL, offline_after

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
MAX_EMPTY_STEPS = 5  # steps without reports still counted as watched after a pause
LATEST_SECONDS = 600  # an online server's last view is written this often (views_due)
LATEST_PER_STEP = 1000
RANGES = {"1h": HOUR, "6h": 6 * HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR,
          "30d": 30 * 24 * HOUR, "1y": 365 * 24 * HOUR}


# --- what is kept of a report ---------------------------------------------------

# (API name, column): average and maximum are kept of each.
METRICS = (("cpu", "cpu"), ("memory", "memory"), ("swap", "swap"), ("disk", "disk"),
           ("load1", "load1"), ("netIn", "net_in"), ("netOut", "net_out"),
           ("diskRead", "disk_read"), ("diskWrite", "disk_write"), ("tcp", "tcp"),
           ("udp", "udp"), ("processes", "processes"))
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
            extra.get("tcpConnections"), extra.get("udpConnections"), extra.get("processes"))


METRIC_COUNT = len(METRICS)
NONE_MISSING = (0,) * METRIC_COUNT  # shared by every bucket until a value is missing
NO_SUMS = array.array("d", [0.0] * METRIC_COUNT)
NO_MAXES = array.array("d", [-math.inf] * METRIC_COUNT)


class Bucket:
    """One server's reports within one resolution step.

    Slots, and the sums and maxima in arrays of doubles: while a step is written every
    server holds two buckets, and with 24 float objects in two lists and a __dict__ a
    bucket took 870 bytes, against about 600 (5 MB less at 10,000 servers, 10 MB during
    a step)."""

    __slots__ = ("maxes", "missing", "n", "net_totals", "online", "probes", "start", "sums")

    def __init__(self, start: int, n: int = 0, online: float = 0.0,
                 sums: Iterable[float] = (), missing: Any = NONE_MISSING,
                 maxes: Iterable[float] = ()) -> None:
        self.start, self.n, self.online = start, n, online
        self.sums = array.array("d", sums) if sums else NO_SUMS[:]
        self.maxes = array.array("d", maxes) if maxes else NO_MAXES[:]
        self.missing: list[int] | tuple[int, ...] = missing  # per metric, reports without it
        self.net_totals: tuple[Any, Any] = (None, None)
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

    def add(self, values: tuple[Any, ...], online_seconds: float,
            net_totals: tuple[Any, Any]) -> None:
        """The hot path: plain loops, counting the rare missing value instead of each one."""
        self.n += 1
        self.online += online_seconds
        self.net_totals = net_totals
        sums, maxes = self.sums, self.maxes
        for i, value in enumerate(values):
            if value is None:
                if self.missing is NONE_MISSING:
                    self.missing = [0] * METRIC_COUNT
                self.missing[i] += 1  # type: ignore[index]
            else:
                sums[i] += value
                if value > maxes[i]:
                    maxes[i] = value


def online_seconds(wall: float, previous: float | None, interval: float) -> float:
    """Seconds a report vouches for: the time since the last report, if the hub counted the
    server online all along (a late report on a busy box is not downtime), else its interval.
    """
    if previous is None or wall <= previous:
        return interval
    gap = wall - previous
    return gap if gap <= offline_after(interval) else interval


# --- rows (pure) ---------------------------------------------------------------

COLUMNS = ("tier", "server", "t", "n", "online", "watched",
           *(c for _, col in METRICS for c in (col, f"{col}_max")),
           "net_in_total", "net_out_total")


def bucket_row(tier: int, sid: str, bucket: Bucket, length: float) -> tuple[Any, ...]:
    """The row of one bucket; the online time cannot exceed the bucket."""
    metrics: list[Any] = []
    for total, missing, top in zip(bucket.sums, bucket.missing, bucket.maxes):
        count = bucket.n - missing
        metrics += [total / count, top] if count else [None, None]
    return (tier, sid, bucket.start, bucket.n, min(bucket.online, length), length, *metrics,
            *bucket.net_totals)


PROBE_COLUMNS = ("tier", "server", "target", "t", "n", "rtt", "rtt_max", "loss")


def probe_rows(tier: int, sid: str, bucket: Bucket) -> list[tuple[Any, ...]]:
    """One row per probe target of a bucket: mean and max round trip, mean loss."""
    return [(tier, sid, target, bucket.start, n, rtt_sum / rtt_n if rtt_n else None,
             rtt_max if rtt_n else None, loss_sum / n)
            for target, (n, rtt_sum, rtt_n, rtt_max, loss_sum) in (bucket.probes or EMPTY).items()]


def watched_row(tier: int, sid: str, start: int, length: float,
                online: float = 0.0) -> tuple[Any, ...]:
    """A step in which a known server did not report: watched, no metrics (never zeros)."""
    return (tier, sid, start, 0, online, length, *([None] * (2 * len(METRICS) + 2)))


def weighted(column: str) -> str:
    """SQL for the average of an average column over rows weighted by their report count."""
    return f"SUM({column} * n) / SUM(CASE WHEN {column} IS NOT NULL THEN n END)"


AGGREGATES = ", ".join(
    ["SUM(n)", "SUM(online)", "SUM(watched)"]
    + [f"{weighted(col)}, MAX({col}_max)" for _, col in METRICS])
PROBE_AGGREGATES = f"SUM(n), {weighted('rtt')}, MAX(rtt_max), {weighted('loss')}"


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
    answer["online"] = [round(row[2] / row[3], 4) if row and row[3] else None for row in found]
    if probes:
        answer["probes"] = probe_columns(slots, probes)
    return json.dumps(answer, separators=(",", ":"))


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
            "loss": [round(found[t][5], 4) if t in found and found[t][5] is not None else None
                     for t in slots]}
    return answer


def rounded(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


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
    net_in_total INTEGER, net_out_total INTEGER,
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
INSERT = (f"INSERT OR REPLACE INTO samples ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(COLUMNS))})")
INSERT_PROBES = (f"INSERT OR REPLACE INTO probe_samples ({', '.join(PROBE_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(PROBE_COLUMNS))})")


def record_of(view: dict[str, Any]) -> dict[str, Any]:
    """A stored server view back into the record it was made from (its report's blocks)."""
    record = {key: view[key] for key in VIEW_FIELDS if key in view}
    if view.get("loc"):
        record["loc"] = view["loc"]
    return record


def rolled_until(db: sqlite3.Connection, tier: int, default: int) -> int:
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
        self.known: set[str] = set()  # servers that reported at least once

    def connection(self) -> sqlite3.Connection:
        if self.db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One thread at a time uses it (the writer thread; tests call it directly).
            db = sqlite3.connect(self.path, timeout=2, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
            except BaseException:
                db.close()
                raise
            self.db = db
        return self.db

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def restore(self, now: float) -> dict[str, tuple[int, dict[str, Any]]]:
        """At start: every server's last record; the ledger from the stored rows."""
        db = self.connection()
        latest = {sid: (t, record_of(json.loads(view)))
                  for sid, t, view in db.execute("SELECT server, t, record FROM latest")}
        self.known.update(latest)
        day_start = int(now) // HOUR * HOUR - 23 * HOUR
        for sid, hour, online, watched in db.execute(
                f"SELECT server, t / {HOUR} * {HOUR} AS hour, SUM(online), SUM(watched) "
                f"FROM samples WHERE tier = {FINE} AND t >= ? GROUP BY server, hour",
                (day_start,)):
            self.ledger.add(sid, hour, online, watched)
        self.ledger.month = self.month_sums(db, day_start)
        return latest

    def month_sums(self, db: sqlite3.Connection, day_start: int) -> dict[str, Any]:
        return {sid: (online, watched) for sid, online, watched in db.execute(
            f"SELECT server, SUM(online), SUM(watched) FROM samples WHERE tier = {HOURLY} "
            "AND t >= ? AND t < ? GROUP BY server", (day_start - 30 * 24 * HOUR, day_start))}

    def rows(self, closed: Closed, servers: list[str],
             online: Container[str] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows for the closed buckets, one at a time; the ledger follows.

        A known, configured server without a report in a closed step gets a watched row:
        online the whole step if the hub had it online (its reports only fell either side
        of the step), else offline, so its offline time counts against its availability.
        """
        length = self.resolution
        for start, buckets in closed:
            for sid, bucket in paced(buckets.items()):
                yield bucket_row(FINE, sid, bucket, length)
                self.ledger.add(sid, start, min(bucket.online, length), length)
            self.known.update(buckets)
            for sid in paced(servers):
                if sid in self.known and sid not in buckets:
                    seconds = float(length) if sid in online else 0.0
                    yield watched_row(FINE, sid, start, length, seconds)
                    self.ledger.add(sid, start, seconds, length)

    def step(self, closed: Closed, servers: list[str], latest: list[tuple[str, int, str]],
             now: float, online: Container[str] = ()) -> dict[str, dict[str, str]]:
        """One resolution step, in one transaction: the buckets, the last records, rollups
        and retention. Returns each known server's history fields for its view."""
        probes = [row for _, buckets in closed for sid, bucket in buckets.items()
                  for row in probe_rows(FINE, sid, bucket)]
        db = self.connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(INSERT, self.rows(closed, servers, online))  # one row at a time
            db.executemany(INSERT_PROBES, probes)
            db.executemany("INSERT OR REPLACE INTO latest VALUES (?, ?, ?)", latest)
            self.roll_up(db, now)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.close()  # reopen at the next step: the file may have been fixed
            raise
        return {sid: self.ledger.json(sid, now) for sid in paced(servers) if sid in self.known}

    def roll_up(self, db: sqlite3.Connection, now: float) -> None:
        """Rows of each rolled-up tier for every completed period not rolled up yet."""
        rolled = False
        for tier, length in ROLLUP_SECONDS.items():
            current = int(now) // length * length
            done = rolled_until(db, tier, current)
            if done < current:
                db.execute(
                    f"INSERT OR REPLACE INTO samples ({', '.join(COLUMNS[:-2])}) "
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
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"rolled_until_{tier}",
                                                                     current))
        if rolled:
            self.expire(db, now)
            self.ledger.month = self.month_sums(db, int(now) // HOUR * HOUR - 23 * HOUR)

    def expire(self, db: sqlite3.Connection, now: float) -> None:
        """Retention: fine rows for 48 hours, rolled-up rows for --history-days."""
        for table in ("samples", "probe_samples"):
            db.execute(f"DELETE FROM {table} WHERE tier = ? AND t < ?",
                       (FINE, now - FINE_RETENTION))
            db.execute(f"DELETE FROM {table} WHERE tier > ? AND t < ?",
                       (FINE, now - self.hourly_retention))


class History:
    """The loop's side: buckets in memory, handing them to the writer, queries."""

    def __init__(self, data_dir: Path, resolution: int = DEFAULT_RESOLUTION,
                 days: int = DEFAULT_DAYS) -> None:
        self.path = data_dir / "history.db"
        self.resolution = resolution
        self.writer = Writer(self.path, resolution, days)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "sss-history")
        self.buckets: dict[int, dict[str, Bucket]] = {}  # bucket start -> sid -> bucket
        self.next_start: int | None = None  # the first step not handed to the writer yet
        self.last_wall: dict[str, float] = {}
        self.unwritten: set[str] = set()  # reported since their last view was written
        self.written: dict[str, float] = {}  # when each server's last view was written
        self.status = "ok"
        self.reader: sqlite3.Connection | None = None
        self.step_seconds: list[float] = []  # the writer's time per step, for bench.py

    def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run on the writer thread and wait: for start and stop, not for the loop."""
        return self.executor.submit(function, *args).result()

    # --- on the loop ---

    def fold(self, sid: str, record: dict[str, Any], wall: float) -> None:
        """Fold one accepted report into its server's bucket (the hot path: keep it small)."""
        start = int(wall) // self.resolution * self.resolution
        buckets = self.buckets.get(start)
        if buckets is None:
            buckets = self.buckets[start] = {}
        bucket = buckets.get(sid)
        if bucket is None:
            bucket = buckets[sid] = Bucket(start)
        net = record.get("networkInfo", EMPTY)
        interval = record.get("reportInterval", DEFAULT_REPORT_INTERVAL)
        bucket.add(metric_values(record), online_seconds(wall, self.last_wall.get(sid), interval),
                   (net.get("netInTransfer"), net.get("netOutTransfer")))
        probes = record.get("extraInfo", EMPTY).get("probes")
        if probes:
            bucket.add_probes(probes)
        self.last_wall[sid] = wall

    def take_closed(self, now: float, everything: bool = False) -> Closed:
        """Every step that ended before `now` (or all, at shutdown), oldest first.

        Steps in which nobody reported are included (empty) while the dashboard was
        running, so known servers are counted as watched and offline then; a longer gap
        (the dashboard was stopped or suspended) is left out.
        """
        step = self.resolution
        current = int(now) // step * step
        first = self.next_start if self.next_start is not None else current
        first = max(first, current - MAX_EMPTY_STEPS * step)
        starts = set(range(first, current, step))
        starts.update(s for s in self.buckets if everything or s < current)
        self.next_start = max(current, self.next_start or current)
        return [(start, self.buckets.pop(start, {})) for start in sorted(starts)]

    async def step(self, loop: Any, now: float, servers: list[str],
                   records: Callable[[str], tuple[int, str] | None],
                   final: bool = False,
                   online: Container[str] = ()) -> dict[str, dict[str, str]] | None:
        """Write the closed buckets on the writer thread; each server's view fields, or None
        when the step could not be written (logged once per distinct problem). The final
        step, at a graceful stop, writes the open buckets too."""
        closed = self.take_closed(now, everything=final)
        for _, buckets in closed:
            self.unwritten.update(buckets)
        due = self.views_due(now, online, final)
        latest = [(sid, *found) for sid in due if (found := records(sid)) is not None]
        started = loop.time()
        try:
            fields = await loop.run_in_executor(self.executor, self.writer.step, closed,
                                                servers, latest, now, online)
        except (sqlite3.Error, OSError) as exc:
            self.unwritten.update(due)
            self.problem(exc)
            return None
        self.step_seconds.append(loop.time() - started)
        del self.step_seconds[:-100]
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
        after a restart anyway."""
        due = [sid for sid in self.unwritten if final or sid not in online
               or now - self.written.get(sid, 0.0) >= LATEST_SECONDS]
        if not final and len(due) > LATEST_PER_STEP:
            due.sort(key=lambda sid: (sid in online, self.written.get(sid, 0.0)))
            del due[LATEST_PER_STEP:]
        self.unwritten.difference_update(due)
        self.written.update(dict.fromkeys(due, now))
        return due

    def problem(self, exc: BaseException) -> None:
        message = advice(self.path, exc)
        if message != self.status:
            log.error("history: %s", message)
        self.status = message

    def restore(self, now: float) -> dict[str, tuple[int, dict[str, Any]]]:
        """At start: every server's last record (empty when history cannot be read)."""
        try:
            return self.in_thread(self.writer.restore, now)
        except (sqlite3.Error, OSError, ValueError) as exc:
            self.problem(exc)
            self.in_thread(self.writer.close)
            return {}

    def fields(self, servers: list[str], now: float) -> dict[str, dict[str, str]]:
        ledger, known = self.writer.ledger, self.writer.known
        return self.in_thread(lambda: {sid: ledger.json(sid, now) for sid in servers
                                       if sid in known})

    def read(self) -> sqlite3.Connection:
        if self.reader is None:
            self.reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)
        return self.reader

    def query(self, sid: str, range_name: str, now: float) -> str:
        """One server's range as columnar JSON; raises sqlite3.Error when unreadable.

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
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def close(self) -> None:
        self.close_reader()
        self.in_thread(self.writer.close)
        self.executor.shutdown()
