"""Monthly traffic quotas, counted on the dashboard from the agents' cumulative counters.

    >>> parse_size("2 TiB"), parse_size("500 GB"), parse_size(1024)
    (2199023255552, 500000000000, 1024)
    >>> from zoneinfo import ZoneInfo
    >>> period(1_800_000_000, 15, ZoneInfo("UTC"))  # 2027-01-15 08:00 UTC
    (1799971200, 1802649600)

Each report adds its counters' increase since the same server's previous report; a counter
that went down (a reboot, or other NICs counted) counts its new value from zero, and after
an offline gap the traffic of the gap is counted unless the server rebooted meanwhile (its
boot time changed). Periods start at 00:00 of the reset day in the dashboard's time zone.
The totals of the current and the last 12 periods are saved to `traffic.json` in the data
directory every minute and at a graceful stop. Pure functions take the time as arguments;
nothing here imports websockets.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime
import logging
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from .datafiles import JsonFile, entries, whole

Zone = datetime.tzinfo

log = logging.getLogger("sss.dashboard")

KEPT_PERIODS = 12
SAVE_SECONDS = 60.0  # a kill -9 loses at most this much counting
COUNT_MODES = ("sum", "out", "in", "max")
UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
         "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def zone(name: str) -> Zone:
    """The time zone of that IANA name; UTC needs no zoneinfo database."""
    return datetime.timezone.utc if name == "UTC" else ZoneInfo(name)


def parse_size(value: Any) -> int | None:
    """Bytes from 1024, "500 GB" (powers of 1000) or "2 TiB" (powers of 1024); None if bad."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and (match := SIZE.fullmatch(value.strip())):
        unit = UNITS.get(match[2] or "B")
        if unit is not None and float(match[1]) > 0:
            return int(float(match[1]) * unit)
    return None


# --- periods (pure) --------------------------------------------------------------------


def reset_moment(year: int, month: int, reset_day: int, zone: Zone) -> int:
    """Unix time of 00:00 on the reset day of a month (its last day if the month is shorter)."""
    while month > 12:
        year, month = year + 1, month - 12
    while month < 1:
        year, month = year - 1, month + 12
    day = min(reset_day, calendar.monthrange(year, month)[1])
    return int(datetime.datetime(year, month, day, tzinfo=zone).timestamp())


def period(now: float, reset_day: int, zone: Zone) -> tuple[int, int]:
    """(start, end) Unix times of the billing period holding `now`."""
    local = datetime.datetime.fromtimestamp(now, zone)
    start = reset_moment(local.year, local.month, reset_day, zone)
    if now < start:
        return reset_moment(local.year, local.month - 1, reset_day, zone), start
    return start, reset_moment(local.year, local.month + 1, reset_day, zone)


def used_bytes(received: int, sent: int, mode: str) -> int:
    """What counts against the limit, by the plan's `count` (config.py: sum, out, in, max)."""
    if mode == "sum":
        return received + sent
    if mode == "out":
        return sent
    if mode == "in":
        return received
    return max(received, sent)


def increase(before: int | None, after: int, rebooted: bool) -> int:
    """What a cumulative counter added since the last report; never negative."""
    if before is None:
        return 0  # the first report: its total is what came before we counted
    if rebooted or after < before:
        return after  # counted from zero again
    return after - before


# --- counting ----------------------------------------------------------------------


@dataclasses.dataclass
class Period:
    start: int
    end: int
    received: int = 0
    sent: int = 0


@dataclasses.dataclass
class Meter:
    """One server's counting: its last counters and its periods."""

    current: Period
    last_in: int | None = None
    last_out: int | None = None
    boot_time: int | None = None
    past: list[Period] = dataclasses.field(default_factory=list)  # newest first

    def roll(self, now: float, reset_day: int, zone: Zone) -> None:
        """Start a new period when `now` is past the current one's end. Never an earlier
        one: a wall clock set back keeps counting into the current period (which would
        otherwise start again at 0 B, its count moved to the past and out of the quota's
        sight); a changed reset day takes effect at the current period's end."""
        if now >= self.current.end:
            start, end = period(now, reset_day, zone)
            if start > self.current.start:
                self.past.insert(0, self.current)
                del self.past[KEPT_PERIODS:]
                self.current = Period(max(start, self.current.end), end)

    def count(self, received: int, sent: int, boot_time: int | None) -> None:
        rebooted = boot_time is not None and self.boot_time is not None \
            and abs(boot_time - self.boot_time) > 60  # clock adjustments move it a little
        self.current.received += increase(self.last_in, received, rebooted)
        self.current.sent += increase(self.last_out, sent, rebooted)
        self.last_in, self.last_out = received, sent
        if boot_time is not None:
            self.boot_time = boot_time


@dataclasses.dataclass(frozen=True)
class Plan:
    """A server's traffic settings from servers.json."""

    limit: int | None = None
    reset_day: int = 1
    count: str = "sum"


def traffic_json(view: dict[str, Any]) -> str:
    """A `traffic` field (Traffic.view) encoded; built at every report, so without the
    JSON encoder, which takes three times as long.

    >>> import json
    >>> view = {"in": 5, "out": 7.5, "used": 12, "limit": None, "periodStart": 1, "periodEnd": 2}
    >>> traffic_json(view) == json.dumps(view, separators=(",", ":"))
    True
    """
    # Counts are finite ints or floats (reports.py refuses the rest): their str() is JSON.
    limit = "null" if view["limit"] is None else view["limit"]
    return (f'{{"in":{view["in"]},"out":{view["out"]},"used":{view["used"]},'
            f'"limit":{limit},"periodStart":{view["periodStart"]},'
            f'"periodEnd":{view["periodEnd"]}}}')


class Traffic:
    """Every server's meter, saved in the data directory."""

    def __init__(self, path: Path, time_zone: Zone) -> None:
        self.path = path
        self.zone = time_zone
        self.meters: dict[str, Meter] = {}
        self.file = JsonFile(path, "traffic", "counting goes on in memory")

    def observe(self, sid: str, record: dict[str, Any], plan: Plan, now: float) -> None:
        """Count one report's increase (the hot path: a few dictionary reads)."""
        net = record.get("networkInfo")
        if not net or "netInTransfer" not in net or "netOutTransfer" not in net:
            return
        meter = self.meters.get(sid)
        if meter is None:
            meter = self.meters[sid] = Meter(Period(*period(now, plan.reset_day, self.zone)))
        else:
            meter.roll(now, plan.reset_day, self.zone)
        boot = record.get("hostInfo", {}).get("bootTime")
        meter.count(int(net["netInTransfer"]), int(net["netOutTransfer"]),
                    int(boot) if boot is not None else None)

    def view(self, sid: str, plan: Plan, now: float) -> dict[str, Any]:
        """`traffic` for a server view: this period's totals (zero before any report)."""
        meter = self.meters.get(sid)
        if meter is not None:
            meter.roll(now, plan.reset_day, self.zone)
            current = meter.current
        else:
            current = Period(*period(now, plan.reset_day, self.zone))
        return {"in": current.received, "out": current.sent,
                "used": used_bytes(current.received, current.sent, plan.count),
                "limit": plan.limit, "periodStart": current.start, "periodEnd": current.end}

    def periods(self, sid: str, plan: Plan, now: float) -> list[dict[str, Any]]:
        """/api/traffic: the current period, then up to 12 before it."""
        meter = self.meters.get(sid)
        if meter is None:
            return [self.view(sid, plan, now)]
        meter.roll(now, plan.reset_day, self.zone)
        return [{"in": p.received, "out": p.sent,
                 "used": used_bytes(p.received, p.sent, plan.count), "limit": plan.limit,
                 "periodStart": p.start, "periodEnd": p.end}
                for p in [meter.current, *meter.past]]

    # --- the file in the data directory ---

    def save(self) -> None:
        """Write the meters (a problem is one log line; counting goes on in memory)."""
        self.file.save({sid: meter_fields(meter) for sid, meter in self.meters.items()})

    def load(self) -> None:
        self.meters = self.file.load("counting starts afresh", meters_from) or {}


def meters_from(data: Any) -> tuple[dict[str, Meter], list[str]]:
    """The meters of traffic.json, each checked as strictly as a report: (meters, one
    problem for each dropped).

    >>> meters, problems = meters_from({"web-1": {"current": {"start": 0, "end": 10,
    ...     "received": "many", "sent": 0}, "last_in": None, "last_out": None,
    ...     "boot_time": None, "past": []}})
    >>> meters, problems[0][:60]
    ({}, "entry 'web-1': current.received must be a whole number, got ")
    """
    return entries(data, dict, meter_from, "meters")


def meter_from(sid: Any, fields: Any) -> Meter:
    """One saved meter, or ValueError saying what is wrong with it."""
    if not isinstance(sid, str) or not isinstance(fields, dict):
        raise ValueError("not a server id and an object")
    counters = [fields.get(name) for name in ("last_in", "last_out", "boot_time")]
    for name, value in zip(("last_in", "last_out", "boot_time"), counters):
        if value is not None and not whole(value):
            raise ValueError(f"{name} must be a whole number or null, got {value!r:.40}")
    past = fields.get("past")
    if not isinstance(past, list) or len(past) > KEPT_PERIODS:
        raise ValueError(f"past must be a list of at most {KEPT_PERIODS} periods")
    return Meter(period_from(fields.get("current"), "current"), *counters,
                 [period_from(p, f"past[{i}]") for i, p in enumerate(past)])


def period_from(fields: Any, name: str) -> Period:
    """One saved period: whole numbers, bytes not negative, its start before its end."""
    if not isinstance(fields, dict):
        raise ValueError(f"{name} must be an object")
    values = [fields.get(key) for key in ("start", "end", "received", "sent")]
    for key, value in zip(("start", "end", "received", "sent"), values):
        if not whole(value):
            raise ValueError(f"{name}.{key} must be a whole number, got {value!r:.40}")
    if values[0] >= values[1]:
        raise ValueError(f"{name} ends before it starts")
    return Period(*values)


def meter_fields(meter: Meter) -> dict[str, Any]:
    """A meter as the file holds it: dataclasses.asdict's answer, written out, because
    asdict deep-copies field by field (400 ms for 10,000 meters, on the event loop).

        >>> meter = Meter(Period(0, 10, 1, 2), 5, 6, 7, [Period(-10, 0)])
        >>> meter_fields(meter) == dataclasses.asdict(meter)
        True
    """
    return {"current": vars(meter.current).copy(), "last_in": meter.last_in,
            "last_out": meter.last_out, "boot_time": meter.boot_time,
            "past": [vars(p).copy() for p in meter.past]}


def days_left(expires: str, now: float, time_zone: Zone) -> int:
    """Whole days until the plan expires (negative once past)."""
    today = datetime.datetime.fromtimestamp(now, time_zone).date()
    return (datetime.date.fromisoformat(expires) - today).days
