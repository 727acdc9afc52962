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

from .timings import MAX_REPORT_INTERVAL

MAX_FRAME_BYTES = 64 * 1024  # a real report is ~2 KiB; 64 partitions fit easily
MAX_STRING = 256
MAX_ITEMS = 64
MAX_BYTES_VALUE = 2**64  # Go's uint64

# Leaf kinds of the report schema; dicts are objects, lists are arrays ([item] holds up to
# MAX_ITEMS, [item, n] up to n).
STR, BYTES, PERCENT, NUMBER, INTERVAL = "str", "bytes", "percent", "number", "interval"
NAME, RATIO, MILLISECONDS, CELSIUS = "name", "ratio", "milliseconds", "celsius"
STATUS, DAYS = "status", "days"
REQUIRED = "(required)"  # in an object's spec: the keys without which it is refused
MAX_PROBES = 16
MAX_TEMPERATURES = 32
TOP_PROCESSES = 10  # asked for by CPU and by memory (watch.py): at most 20 in a report
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
                  # The short SHA-256 of the agent.py that sent it ("Agent updates").
                  "agentVersion": NAME,
                  # The last round of latency probes (PROTOCOL.md, "Probes").
                  "probes": [{"name": NAME, "rtt": MILLISECONDS, "loss": RATIO,
                              # HTTP checks: the status (0: no answer), an https
                              # certificate's days left, what went wrong
                              "status": STATUS, "certDays": DAYS, "error": NAME,
                              REQUIRED: ("name", "loss")}, MAX_PROBES],
                  # Sensors of the box ("Temperatures"); none from a VPS.
                  "temperatures": [{"name": NAME, "celsius": CELSIUS,
                                    REQUIRED: ("name", "celsius")}, MAX_TEMPERATURES],
                  # Containers ("Containers"): the busiest 64, and how many there are.
                  "containers": [{"name": NAME, "cpu": NUMBER, "memory": BYTES, "rx": BYTES,
                                  "tx": BYTES, "read": BYTES, "write": BYTES,
                                  REQUIRED: ("name", "cpu")}],
                  "containerCount": NUMBER,
                  # Only while a viewer watches ("Top processes"): top 10 by CPU and by memory.
                  "topProcesses": [{"pid": NUMBER, "name": NAME, "cpu": NUMBER, "memory": BYTES,
                                    REQUIRED: ("pid", "name", "cpu", "memory")},
                                   2 * TOP_PROCESSES]},
}
# What a browser may see of a report: never ip, nor the agent's own name/group/id.
VIEW_FIELDS = ("hostInfo", "cpuInfo", "virtualMemoryInfo", "swapMemoryInfo", "diskInfo",
               "networkInfo", "reportInterval", "extraInfo")
# Checked (a report that gets them wrong is refused) but not kept: nothing reads them (the
# id and the name are servers.json's, the time the dashboard's), and 10,000 records
# holding them were 5 MB.
NOT_KEPT = frozenset({"name", "group", "id", "ip", "lastReportTime"})
PERCENT_SLACK = 0.01  # float rounding in gopsutil can give 100.000001


class ReportError(ValueError):
    """A report that is dropped; `reason` is the label counted in /metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def validate_report(frame: str | bytes) -> dict[str, Any]:
    """Parse one agent frame into a validated record holding only known fields."""
    try:
        data = DECODER.decode(frame if type(frame) is str else frame.decode())
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


# One decoder for every report: json.loads with an argument builds a new one per call.
DECODER = json.JSONDecoder(parse_constant=_reject_constant)


Check = Callable[[Any], Any]


def compile_schema(spec: Any, path: str) -> Check:
    """Turn the schema into one Python function, once: validating is the dashboard's hot
    path, and straight-line code with no call per field runs in half the time of a
    checker per field. (The way dataclasses and namedtuple build their methods.)

    The function returns its value cleaned (unknown keys and nulls dropped) or raises
    ReportError naming the field.

    >>> print(schema_source({"n": PERCENT}, "report"))  # doctest: +NORMALIZE_WHITESPACE
    def check(v0):
        if type(v0) is not dict:
            raise ReportError('wrong_type', 'report must be an object')
        c0 = {}
        v1 = v0.get('n')
        if v1 is not None:
            if not ((k := type(v1)) is float or k is int) or not 0 <= v1 <= 100.01:
                raise number_error(v1, 'report.n', 100.01, 0)
            if v1 > 100:
                v1 = 100
            c0['n'] = v1
        return c0
    """
    namespace = {"ReportError": ReportError, "number_error": number_error,
                 "intern": sys.intern}
    exec(schema_source(spec, path), namespace)  # our own schema's source, no input in it
    return namespace["check"]


def schema_source(spec: Any, path: str) -> str:
    """The source of compile_schema's function."""
    lines = ["def check(v0):"]
    names = iter(range(1, 1 << 16))

    def emit(depth: int, line: str) -> None:
        lines.append("    " * depth + line)

    def value(spec: Any, var: str, path: str, depth: int) -> str:
        """Lines checking `var` against `spec`; returns the name holding the clean value."""
        if isinstance(spec, dict):
            clean = f"c{var[1:]}"
            emit(depth, f"if type({var}) is not dict:")
            emit(depth + 1, f"raise ReportError('wrong_type', {path + ' must be an object'!r})")
            emit(depth, f"{clean} = {{}}")
            required = spec.get(REQUIRED, ())
            for key, sub in spec.items():
                if key == REQUIRED:
                    continue
                item = f"v{next(names)}"
                emit(depth, f"{item} = {var}.get({key!r})")
                if key in required:  # what reads a list's items counts on these
                    emit(depth, f"if {item} is None:")
                    emit(depth + 1, f"raise ReportError('missing_field', "
                                    f"{f'{path}.{key} is missing'!r})")
                emit(depth, f"if {item} is not None:")
                checked = value(sub, item, f"{path}.{key}", depth + 1)
                if not (depth == 1 and key in NOT_KEPT):
                    emit(depth + 1, f"{clean}[{key!r}] = {checked}")
            return clean
        if isinstance(spec, list):
            most = spec[1] if len(spec) > 1 else MAX_ITEMS
            clean, item = f"c{var[1:]}", f"v{next(names)}"
            emit(depth, f"if type({var}) is not list:")
            emit(depth + 1, f"raise ReportError('wrong_type', {path + ' must be a list'!r})")
            emit(depth, f"if len({var}) > {most}:")
            emit(depth + 1, f"raise ReportError('too_many_items', f'{path} has {{len({var})}} "
                            f"items, max {most}')")
            emit(depth, f"{clean} = []")
            emit(depth, f"for {item} in {var}:")
            emit(depth + 1, f"{clean}.append({value(spec[0], item, f'{path}[]', depth + 1)})")
            return clean
        if spec in (STR, NAME):
            longest = MAX_NAME if spec == NAME else MAX_STRING
            emit(depth, f"if type({var}) is not str:")
            emit(depth + 1, f"raise ReportError('wrong_type', {path + ' must be a string'!r})")
            emit(depth, f"if len({var}) > {longest}:")
            emit(depth + 1, f"raise ReportError('string_too_long', "
                            f"{f'{path} is over {longest} characters'!r})")
            # A fleet's kernels, platforms and mount points are a few values: one copy of
            # each for 10,000 records.
            return f"intern({var})"
        limit = NUMBER_LIMITS.get(spec, 1e15)
        low = NUMBER_LOWS.get(spec, 0)
        # One chained comparison passes every good number; NaN and inf fail it too.
        emit(depth, f"if not ((k := type({var})) is float or k is int) "
                    f"or not {low!r} <= {var} <= {limit!r}:")
        emit(depth + 1, f"raise number_error({var}, {path!r}, {limit!r}, {low!r})")
        if spec == PERCENT:
            emit(depth, f"if {var} > 100:")
            emit(depth + 1, f"{var} = 100")
        return var

    emit(1, f"return {value(spec, 'v0', path, 1)}")
    return "\n".join(lines)


NUMBER_LIMITS = {BYTES: MAX_BYTES_VALUE, PERCENT: 100 + PERCENT_SLACK,
                 INTERVAL: MAX_REPORT_INTERVAL, RATIO: 1.0, MILLISECONDS: MAX_RTT_MS,
                 CELSIUS: 300.0, STATUS: 999, DAYS: 36500.0}
# Numbers are 0 or more, but an interval of 0 is no interval, a sensor can be below 0, and
# a certificate can have expired days ago.
NUMBER_LOWS = {INTERVAL: math.ulp(0), CELSIUS: -100.0, DAYS: -36500.0}


def number_error(value: Any, path: str, limit: float, low: float = 0) -> ReportError:
    """Why a number was refused (the slow path, off the hot one)."""
    if type(value) not in (int, float):
        return ReportError("wrong_type", f"{path} must be a number")
    if type(value) is float and not math.isfinite(value):
        return ReportError("not_finite", f"{path} is not finite")
    if value < 0 <= low:
        return ReportError("negative", f"{path} is negative")
    # An int of any size compares fine; formatting it with :g would overflow.
    return ReportError("out_of_range", f"{path} is outside {low:g}-{limit:g}")


_check_report = compile_schema(REPORT_SCHEMA, "report")
