"""Agent reports: parse and validate one frame into a clean record (pure).

    >>> validate_report('{"cpuInfo": {"percent": 12.5}, "surprise": 1}')
    {'cpuInfo': {'percent': 12.5}}

The schema is the original SimpleServerStatus ServerInfo plus our extensions
(PROTOCOL.md, "Report message"); it is compiled once into nested checkers, because
validating is the dashboard's hot path. Unknown fields and nulls are dropped; anything
else that does not fit raises ReportError with the reason counted in /metrics.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable

from timings import MAX_REPORT_INTERVAL

MAX_FRAME_BYTES = 64 * 1024  # a real report is ~2 KiB; 64 partitions fit easily
MAX_STRING = 256
MAX_ITEMS = 64
MAX_BYTES_VALUE = 2**64  # Go's uint64

# Leaf kinds of the report schema; dicts are objects, lists are arrays ([item] holds up to
# MAX_ITEMS, [item, n] up to n).
STR, BYTES, PERCENT, NUMBER, INTERVAL = "str", "bytes", "percent", "number", "interval"
NAME, RATIO, MILLISECONDS = "name", "ratio", "milliseconds"
MAX_PROBES = 16
MAX_NAME = 64
MAX_RTT_MS = 60_000.0

REPORT_SCHEMA: dict[str, Any] = {
    "name": STR, "group": STR, "id": STR, "ip": STR, "loc": STR, "lastReportTime": NUMBER,
    "hostInfo": {
        "kernelArch": STR, "kernelVersion": STR, "virtualizationSystem": STR,
        "uptime": NUMBER, "bootTime": NUMBER, "os": STR, "platform": STR,
        "platformFamily": STR, "platformVersion": STR,
        "avgStat": {"load1": NUMBER, "load5": NUMBER, "load15": NUMBER},
    },
    "cpuInfo": {"percent": PERCENT, "info": [STR]},
    "virtualMemoryInfo": {"total": BYTES, "used": BYTES, "usedPercent": PERCENT},
    "swapMemoryInfo": {"total": BYTES, "used": BYTES, "free": BYTES, "usedPercent": PERCENT},
    "diskInfo": {
        "total": BYTES, "used": BYTES, "usedPercent": PERCENT,
        "partitions": [{"mountPoint": STR, "fstype": STR, "total": BYTES, "free": BYTES,
                        "used": BYTES, "usedPercent": PERCENT}],
    },
    "networkInfo": {"netInSpeed": BYTES, "netOutSpeed": BYTES,
                    "netInTransfer": BYTES, "netOutTransfer": BYTES},
    # Our extensions (PROTOCOL.md); the Go agent sends neither.
    "reportInterval": INTERVAL,
    "extraInfo": {"tcpConnections": NUMBER, "udpConnections": NUMBER, "processes": NUMBER,
                  "diskReadSpeed": BYTES, "diskWriteSpeed": BYTES,
                  # The last round of latency probes (PROTOCOL.md, "Probes").
                  "probes": [{"name": NAME, "rtt": MILLISECONDS, "loss": RATIO}, MAX_PROBES]},
}
# What a browser may see of a report: never ip, nor the agent's own name/group/id.
VIEW_FIELDS = ("hostInfo", "cpuInfo", "virtualMemoryInfo", "swapMemoryInfo", "diskInfo",
               "networkInfo", "reportInterval", "extraInfo")
PERCENT_SLACK = 0.01  # float rounding in gopsutil can give 100.000001


class ReportError(ValueError):
    """A report that is dropped; `reason` is the label counted in /metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def validate_report(frame: str | bytes) -> dict[str, Any]:
    """Parse one agent frame into a validated record holding only known fields."""
    try:
        data = json.loads(frame, parse_constant=_reject_constant)
    except ReportError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ReportError("not_json", str(exc)[:80]) from None
    if type(data) is not dict:
        raise ReportError("not_object", f"top level is {type(data).__name__}")
    record = _check_report(data)
    if not record:
        raise ReportError("no_fields", "no known field; see PROTOCOL.md")
    return record


def _reject_constant(name: str) -> None:
    raise ReportError("not_finite", f"{name} is not a number")


Check = Callable[[Any], Any]


def compile_schema(spec: Any, path: str) -> Check:
    """Turn the schema into nested checkers, once: validating is the dashboard's hot path.

    Each checker returns its value cleaned (unknown keys and nulls dropped) or raises
    ReportError naming the field.
    """
    if isinstance(spec, dict):
        fields = tuple((key, compile_schema(sub, f"{path}.{key}")) for key, sub in spec.items())

        def check_object(value: Any) -> dict[str, Any]:
            if type(value) is not dict:
                raise ReportError("wrong_type", f"{path} must be an object")
            clean = {}
            for key, check in fields:
                item = value.get(key)
                if item is not None:
                    clean[key] = check(item)
            return clean
        return check_object
    if isinstance(spec, list):
        check_item = compile_schema(spec[0], f"{path}[]")
        max_items = spec[1] if len(spec) > 1 else MAX_ITEMS

        def check_list(value: Any) -> list[Any]:
            if type(value) is not list:
                raise ReportError("wrong_type", f"{path} must be a list")
            if len(value) > max_items:
                raise ReportError("too_many_items", f"{path} has {len(value)} items, "
                                                    f"max {max_items}")
            return [check_item(item) for item in value]
        return check_list
    if spec in (STR, NAME):
        longest = MAX_NAME if spec == NAME else MAX_STRING

        def check_string(value: Any) -> str:
            if type(value) is not str:
                raise ReportError("wrong_type", f"{path} must be a string")
            if len(value) > longest:
                raise ReportError("string_too_long", f"{path} is over {longest} characters")
            # A fleet's kernels, platforms and mount points are a few values: one copy of
            # each for 10,000 records.
            return sys.intern(value)
        return check_string
    limits = {BYTES: MAX_BYTES_VALUE, PERCENT: 100 + PERCENT_SLACK, INTERVAL: MAX_REPORT_INTERVAL,
              RATIO: 1.0, MILLISECONDS: MAX_RTT_MS}
    limit = limits.get(spec, 1e15)
    low = math.ulp(0) if spec == INTERVAL else 0  # an interval of 0 is no interval

    def check_number(value: Any) -> float:
        kind = type(value)
        # One chained comparison passes every good number; NaN and inf fail it too.
        if (kind is float or kind is int) and low <= value <= limit:
            return min(value, 100) if spec == PERCENT else value
        raise number_error(value, path, limit)
    return check_number


def number_error(value: Any, path: str, limit: float) -> ReportError:
    """Why a number was refused (the slow path, off the hot one)."""
    if type(value) not in (int, float):
        return ReportError("wrong_type", f"{path} must be a number")
    if type(value) is float and not math.isfinite(value):
        return ReportError("not_finite", f"{path} is not finite")
    if value < 0:
        return ReportError("negative", f"{path} is negative")
    # An int of any size compares fine; formatting it with :g would overflow.
    return ReportError("out_of_range", f"{path} is outside 0-{limit:g}")


_check_report = compile_schema(REPORT_SCHEMA, "report")
