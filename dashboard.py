#!/usr/bin/env python3
"""SimpleServerStatus dashboard: agents report over WebSocket, browsers watch live.

    $ python3 dashboard.py
    2026-11-26 05:29:09 WARNING /work/main/servers.json: servers[0] (id 'local') uses the pl...
    2026-11-26 05:29:09 INFO listening on http://0.0.0.0:8900 (1 servers configured)
    2026-11-26 05:29:10 INFO agent connected: id=local from 127.0.0.1
    2026-11-26 05:29:11 INFO viewer connected (1 watching)
    2026-11-26 05:29:14 INFO agent disconnected: id=local (1000 agent shutting down)

Agents connect to /ws-report with the headers X-SERVER-ID and X-AUTH-SECRET and
send one JSON report per interval; browsers connect to /ws-frontend and get a
snapshot, then coalesced updates. PROTOCOL.md describes every message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import re
import signal
import ssl
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response

__version__ = "0.1.0"

log = logging.getLogger("sss.dashboard")

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "servers.json"
DEFAULT_PORT = 8900

MAX_FRAME_BYTES = 64 * 1024  # a real report is ~2 KiB; 64 partitions fit easily
MAX_STRING = 256
MAX_ITEMS = 64
MAX_BYTES_VALUE = 2**64  # Go's uint64
BAD_REPORTS_BEFORE_CLOSE = 5
SILENT_CLOSE_SECONDS = 60.0  # the seed's timeout
DEFAULT_REPORT_INTERVAL = 2.0  # assumed for agents (the Go one) that do not say
OFFLINE_CAP_SECONDS = 65.0
COALESCE_SECONDS = 0.25  # at most four updates a second per viewer
VIEWER_BACKLOG_BYTES = 1024 * 1024  # allowed beyond one snapshot before a viewer is cut
FAILED_HANDSHAKES_LIMIT = 10
FAILED_HANDSHAKES_WINDOW = 60.0
BAN_SECONDS = 300.0
MAX_TRACKED_ADDRESSES = 10_000

PLACEHOLDER_SECRET = "change-me-local-demo-secret"
SECRET_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{3,50}")
COUNTRY_PATTERN = re.compile(r"[A-Za-z]{2}")
TOP_LEVEL_KEYS = ("host", "port", "servers")
SERVER_KEYS = ("id", "name", "group", "secret", "countryCode")


# --- configuration -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    id: str
    name: str
    group: str
    secret: str
    country_code: str  # lower case, "" when not configured


@dataclasses.dataclass(frozen=True)
class Config:
    host: str
    port: int
    servers: dict[str, ServerConfig]


class ConfigError(Exception):
    """A servers.json that cannot be used; the message names file, field and fix."""


def load_config(path: Path) -> tuple[Config, list[str]]:
    """Read and validate servers.json; return the config and its warnings."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror}); pass --config PATH") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); fix the syntax there") from exc
    return parse_config(data, str(path))


def parse_config(data: Any, source: str) -> tuple[Config, list[str]]:
    """Validate the decoded JSON of servers.json (pure: no I/O)."""
    if not isinstance(data, dict):
        raise ConfigError(f'{source}: the top level must be an object like {{"servers": [...]}}')
    warnings = [
        f"{source}: unknown key {key!r} ignored (known: {', '.join(TOP_LEVEL_KEYS)})"
        for key in data
        if key not in TOP_LEVEL_KEYS
    ]
    host = data.get("host", "0.0.0.0")
    if not isinstance(host, str) or not host:
        raise ConfigError(f'{source}: field "host" must be an address string such as "0.0.0.0"')
    port = data.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f'{source}: field "port" must be an integer 0-65535, such as 8900')
    entries = data.get("servers")
    if not isinstance(entries, list):
        raise ConfigError(f'{source}: field "servers" must be a list of server objects')
    servers: dict[str, ServerConfig] = {}
    for index, entry in enumerate(entries):
        server, entry_warnings = parse_server(entry, f"{source}: servers[{index}]")
        if server.id in servers:
            raise ConfigError(f"{source}: servers[{index}] (id {server.id!r}): field \"id\" "
                              "repeats an earlier server; give each server its own id")
        servers[server.id] = server
        warnings.extend(entry_warnings)
    return Config(host, port, servers), warnings


def parse_server(entry: Any, where: str) -> tuple[ServerConfig, list[str]]:
    """Validate one server object of servers.json."""
    if not isinstance(entry, dict):
        raise ConfigError(f'{where}: must be an object like {{"id": "web-1", "secret": "..."}}')
    server_id = entry.get("id")
    if not isinstance(server_id, str) or not ID_PATTERN.fullmatch(server_id):
        raise ConfigError(f'{where}: field "id" must be 3-50 characters of A-Z a-z 0-9 _ -, '
                          f"got {server_id!r}")
    where = f"{where} (id {server_id!r})"

    def text(field: str, default: str) -> str:
        value = entry.get(field, default)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_STRING:
            raise ConfigError(f'{where}: field "{field}" must be a non-empty string of at most '
                              f"{MAX_STRING} characters")
        return value

    secret = entry.get("secret")
    if not isinstance(secret, str) or not secret:
        raise ConfigError(f'{where}: field "secret" is missing; add one made with {SECRET_HINT}')
    country = entry.get("countryCode", "")
    if not isinstance(country, str) or (country and not COUNTRY_PATTERN.fullmatch(country)):
        raise ConfigError(f'{where}: field "countryCode" must be two letters such as "de", '
                          f"got {country!r}")
    warnings = [f"{where}: unknown key {key!r} ignored (known: {', '.join(SERVER_KEYS)})"
                for key in entry if key not in SERVER_KEYS]
    if secret == PLACEHOLDER_SECRET:
        warnings.append(f"{where} uses the placeholder secret; replace it with one made "
                        f"with {SECRET_HINT}")
    elif len(secret) < 16:
        warnings.append(f'{where}: field "secret" is shorter than 16 characters; make a '
                        f"stronger one with {SECRET_HINT}")
    server = ServerConfig(server_id, text("name", server_id), text("group", "Default"),
                          secret, country.lower())
    return server, warnings


# --- validating reports ------------------------------------------------------

# Leaf kinds of the report schema; dicts are objects, one-item lists are arrays.
STR, BYTES, PERCENT, NUMBER, INTERVAL = "str", "bytes", "percent", "number", "interval"

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
                  "diskReadSpeed": BYTES, "diskWriteSpeed": BYTES},
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
    return _check_report(data)


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

        def check_list(value: Any) -> list[Any]:
            if type(value) is not list:
                raise ReportError("wrong_type", f"{path} must be a list")
            if len(value) > MAX_ITEMS:
                raise ReportError("too_many_items", f"{path} has {len(value)} items, "
                                                    f"max {MAX_ITEMS}")
            return [check_item(item) for item in value]
        return check_list
    if spec == STR:
        def check_string(value: Any) -> str:
            if type(value) is not str:
                raise ReportError("wrong_type", f"{path} must be a string")
            if len(value) > MAX_STRING:
                raise ReportError("string_too_long", f"{path} is over {MAX_STRING} characters")
            return value
        return check_string
    limit = {BYTES: MAX_BYTES_VALUE, PERCENT: 100 + PERCENT_SLACK, INTERVAL: 3600}.get(spec, 1e15)
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
    if not math.isfinite(value):
        return ReportError("not_finite", f"{path} is not finite")
    if value < 0:
        return ReportError("negative", f"{path} is negative")
    return ReportError("out_of_range", f"{path}={value} is outside 0-{limit:g}")


_check_report = compile_schema(REPORT_SCHEMA, "report")


# --- server state, as browsers see it ------------------------------------------


def offline_after(report_interval: float) -> float:
    """Seconds of silence after which a server counts as offline."""
    return min(2 * report_interval + 5, OFFLINE_CAP_SECONDS)


def server_view(server: ServerConfig, record: dict[str, Any] | None,
                last_report: int, online: bool) -> dict[str, Any]:
    """The object a browser gets for one server: config names plus validated blocks."""
    loc = server.country_code
    if not loc and record and COUNTRY_PATTERN.fullmatch(record.get("loc", "")):
        loc = record["loc"].lower()
    view: dict[str, Any] = {"id": server.id, "name": server.name, "group": server.group,
                            "loc": loc, "online": online, "lastReportTime": last_report}
    if record:
        view.update((key, record[key]) for key in VIEW_FIELDS if key in record)
    return view


def browser_message(kind: str, now: float, server_views: list[str]) -> str:
    """Assemble a snapshot or update from per-server JSON encoded once each."""
    return f'{{"type":"{kind}","time":{now:.3f},"servers":[{",".join(server_views)}]}}'


@dataclasses.dataclass
class ServerState:
    config: ServerConfig
    record: dict[str, Any] | None = None
    last_report: int = 0  # Unix seconds, 0 = never
    last_report_mono: float = 0.0
    last_frame_mono: float = 0.0
    online: bool = False
    connection: ServerConnection | None = None
    view_json: str = ""

    @property
    def report_interval(self) -> float:
        record = self.record or {}
        return float(record.get("reportInterval", DEFAULT_REPORT_INTERVAL))

    def refresh_view(self) -> None:
        self.view_json = json.dumps(
            server_view(self.config, self.record, self.last_report, self.online),
            separators=(",", ":"))


# --- /metrics ----------------------------------------------------------------

# (name, help, type, path into the record)
SERVER_METRICS = (
    ("sss_cpu_percent", "CPU use in percent.", "gauge", ("cpuInfo", "percent")),
    ("sss_memory_used_bytes", "Memory used.", "gauge", ("virtualMemoryInfo", "used")),
    ("sss_memory_total_bytes", "Memory installed.", "gauge", ("virtualMemoryInfo", "total")),
    ("sss_swap_used_bytes", "Swap used.", "gauge", ("swapMemoryInfo", "used")),
    ("sss_swap_total_bytes", "Swap size.", "gauge", ("swapMemoryInfo", "total")),
    ("sss_disk_used_bytes", "Disk used over real filesystems.", "gauge", ("diskInfo", "used")),
    ("sss_disk_total_bytes", "Disk size over real filesystems.", "gauge", ("diskInfo", "total")),
    ("sss_load1", "Load average over 1 minute.", "gauge", ("hostInfo", "avgStat", "load1")),
    ("sss_load5", "Load average over 5 minutes.", "gauge", ("hostInfo", "avgStat", "load5")),
    ("sss_load15", "Load average over 15 minutes.", "gauge", ("hostInfo", "avgStat", "load15")),
    ("sss_network_receive_bytes_per_second", "Network receive speed.", "gauge",
     ("networkInfo", "netInSpeed")),
    ("sss_network_transmit_bytes_per_second", "Network transmit speed.", "gauge",
     ("networkInfo", "netOutSpeed")),
    ("sss_network_receive_bytes_total", "Bytes received since boot.", "counter",
     ("networkInfo", "netInTransfer")),
    ("sss_network_transmit_bytes_total", "Bytes sent since boot.", "counter",
     ("networkInfo", "netOutTransfer")),
    ("sss_uptime_seconds", "Seconds since boot.", "gauge", ("hostInfo", "uptime")),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _dig(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def render_metrics(states: list[ServerState], agents: int, viewers: int,
                   accepted: int, rejected: dict[str, int]) -> str:
    """Prometheus text exposition (format 0.0.4) of the fleet and the dashboard."""
    labels = {s.config.id: f'id="{_label(s.config.id)}",name="{_label(s.config.name)}",'
              f'group="{_label(s.config.group)}"' for s in states}
    lines = ["# HELP sss_up 1 when the server reports, 0 when offline or never seen.",
             "# TYPE sss_up gauge"]
    lines += [f"sss_up{{{labels[s.config.id]}}} {int(s.online)}" for s in states]
    reported = [s for s in states if s.record]
    for name, help_text, kind, path in SERVER_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for s in reported:
            value = _dig(s.record or {}, path)
            if value is not None:
                lines.append(f"sss_{name[4:]}{{{labels[s.config.id]}}} {value}")
    lines += ["# HELP sss_last_report_timestamp_seconds Unix time of the last accepted report.",
              "# TYPE sss_last_report_timestamp_seconds gauge"]
    lines += [f"sss_last_report_timestamp_seconds{{{labels[s.config.id]}}} {s.last_report}"
              for s in reported]
    lines += ["# HELP sss_agents_connected Agent connections open.",
              "# TYPE sss_agents_connected gauge", f"sss_agents_connected {agents}",
              "# HELP sss_viewers_connected Browser connections open.",
              "# TYPE sss_viewers_connected gauge", f"sss_viewers_connected {viewers}",
              "# HELP sss_reports_accepted_total Reports validated and applied.",
              "# TYPE sss_reports_accepted_total counter",
              f"sss_reports_accepted_total {accepted}",
              "# HELP sss_reports_rejected_total Reports dropped, by reason.",
              "# TYPE sss_reports_rejected_total counter"]
    lines += [f'sss_reports_rejected_total{{reason="{_label(reason)}"}} {count}'
              for reason, count in sorted(rejected.items())]
    return "\n".join(lines) + "\n"


# --- files served over HTTP ---------------------------------------------------

INSTALL_PLACEHOLDER = b"__SSS_DASHBOARD_URL__"
HOST_HEADER = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
SAFE_URL = re.compile(r"https?://[A-Za-z0-9.\[\]:-]+(?:/[A-Za-z0-9._~/-]*)?")


@dataclasses.dataclass(frozen=True)
class Files:
    """What the dashboard serves besides JSON, read once at start."""

    page: bytes | None
    agent: bytes | None
    installer: bytes | None
    agent_unit: bytes | None

    @classmethod
    def beside(cls, directory: Path) -> Files:
        def read(name: str) -> bytes | None:
            try:
                return (directory / name).read_bytes()
            except OSError:
                return None
        return cls(read("index.html"), read("agent.py"), read("install.sh"),
                   read("deploy/sss-agent.service"))


@dataclasses.dataclass(frozen=True)
class Options:
    """Command-line settings beyond servers.json."""

    public_url: str = ""
    tls: ssl.SSLContext | None = None
    viewer_compression: bool = False
    trusted_proxies: frozenset[str] = frozenset()


def client_address(peer: str, headers: Headers, trusted_proxies: frozenset[str]) -> str:
    """The agent's address: the peer, or what a trusted proxy says it forwarded for.

    Only the last X-Forwarded-For entry is the proxy's own; earlier ones are whatever the
    client claimed.
    """
    if peer in trusted_proxies:
        forwarded = ",".join(headers.get_all("X-Forwarded-For")).split(",")[-1].strip()
        if forwarded:
            return forwarded[:64]
    return peer


def dashboard_url(public_url: str, host_header: str | None, tls: bool) -> str | None:
    """This dashboard's URL as agents should see it, or None when it cannot be trusted.

    The Host header ends up inside a shell script that people run as root, so it is
    accepted only when it is a plain host name or address with an optional port.
    """
    if public_url:
        return public_url.rstrip("/")
    if host_header and HOST_HEADER.fullmatch(host_header):
        return f"{'https' if tls else 'http'}://{host_header}"
    return None


def installer_for(template: bytes, url: str) -> bytes:
    """install.sh with this dashboard's URL as its default."""
    return template.replace(INSTALL_PLACEHOLDER, url.encode(), 1)


def content_security_policy(html: str) -> str:
    """A CSP allowing only this page's own inline script and style, by hash."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in bodies)
    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def http_response(status: int, body: bytes, content_type: str,
                  extra: dict[str, str] | None = None) -> Response:
    """A complete HTTP response for process_request."""
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)),
                       "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
    headers.update(extra or {})
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              429: "Too Many Requests"}.get(status, "Error")
    return Response(status, reason, headers, body)


def text_response(status: int, text: str) -> Response:
    return http_response(status, text.encode() + b"\n", "text/plain; charset=utf-8")


def json_response(payload: str) -> Response:
    return http_response(200, payload.encode(), "application/json")


# --- the hub: state shared by both channels -----------------------------------


class Hub:
    """Servers, agents, viewers and counters; every method runs on the event loop."""

    def __init__(self, config: Config, config_path: Path, files: Files,
                 options: Options | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.files = files
        self.page_csp = content_security_policy(files.page.decode()) if files.page else ""
        self.options = options or Options()
        self.servers = {sid: self._new_state(cfg) for sid, cfg in config.servers.items()}
        self.viewers: set[ServerConnection] = set()
        self.dirty: set[str] = set()
        self.flush_handle: asyncio.TimerHandle | None = None
        self.snapshot_bytes = 0
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.failures: dict[str, collections.deque[float]] = {}
        self.banned_until: dict[str, float] = {}
        self.closing: set[asyncio.Future[None]] = set()  # closes in flight, kept referenced

    @staticmethod
    def _new_state(cfg: ServerConfig) -> ServerState:
        state = ServerState(cfg)
        state.refresh_view()
        return state

    # Agents.

    def check_agent(self, address: str, headers: Headers) -> tuple[int, str, str]:
        """Authenticate an agent's handshake: (status, reason, server id)."""
        now = time.monotonic()
        if self.banned_until.get(address, 0) > now:
            return 429, "too many failed attempts from this address; retry later", ""
        ids, secrets = headers.get_all("X-SERVER-ID"), headers.get_all("X-AUTH-SECRET")
        why = ""  # what the log says beyond what the client is told
        if len(ids) > 1 or len(secrets) > 1:
            status, reason, sid = 400, "X-SERVER-ID and X-AUTH-SECRET must be sent once each", ""
        elif not ids or not secrets:
            status, reason, sid = 401, "missing X-SERVER-ID or X-AUTH-SECRET header", ""
        else:
            sid, secret = ids[0], secrets[0]
            server = self.config.servers.get(sid)
            expected = server.secret if server else PLACEHOLDER_SECRET + "\0"
            if hmac.compare_digest(secret.encode(), expected.encode()) and server:
                return 200, "", sid
            status, reason = 401, "unknown server id or wrong secret"
            why = "wrong secret" if server else "id not in servers.json"
        log.warning("agent rejected: id=%.60r from %s: %s", sid, address, why or reason)
        self._count_failure(address, now)
        return status, reason, sid

    def _count_failure(self, address: str, now: float) -> None:
        if address not in self.failures and len(self.failures) >= MAX_TRACKED_ADDRESSES:
            del self.failures[next(iter(self.failures))]
        recent = self.failures.setdefault(
            address, collections.deque(maxlen=FAILED_HANDSHAKES_LIMIT))
        recent.append(now)
        if len(recent) == FAILED_HANDSHAKES_LIMIT and now - recent[0] <= FAILED_HANDSHAKES_WINDOW:
            self.banned_until[address] = now + BAN_SECONDS
            del self.failures[address]
            log.warning("address %s banned for %.0f s after %d failed handshakes within %.0f s",
                        address, BAN_SECONDS, FAILED_HANDSHAKES_LIMIT, FAILED_HANDSHAKES_WINDOW)

    def attach_agent(self, sid: str, ws: ServerConnection) -> ServerConnection | None:
        """Make `ws` the live connection of `sid`; return the one it replaces."""
        state = self.servers[sid]
        older, state.connection = state.connection, ws
        state.last_frame_mono = time.monotonic()
        return older

    def detach_agent(self, sid: str, ws: ServerConnection) -> bool:
        """Forget `ws`; False when it had been replaced or dropped by a reload already."""
        state = self.servers.get(sid)
        if state is None or state.connection is not ws:
            return False
        state.connection = None
        self._set_online(state, False)
        return True

    def close_later(self, ws: ServerConnection, code: int, reason: str) -> None:
        """Close without waiting for the peer's answer."""
        closing = asyncio.ensure_future(ws.close(code, reason))
        self.closing.add(closing)
        closing.add_done_callback(self.closing.discard)

    def accept_report(self, sid: str, record: dict[str, Any]) -> None:
        state = self.servers[sid]
        state.record = record
        state.last_report = int(time.time())
        state.last_report_mono = time.monotonic()
        state.online = True
        state.refresh_view()
        self.accepted += 1
        self.mark_dirty(sid)

    def reject_report(self, sid: str, error: ReportError) -> None:
        self.rejected[error.reason] += 1
        log.warning("report dropped: id=%s: %s", sid, error)

    def _set_online(self, state: ServerState, online: bool) -> None:
        if state.online != online:
            state.online = online
            state.refresh_view()
            self.mark_dirty(state.config.id)

    # Viewers.

    def snapshot(self) -> str:
        message = browser_message("snapshot", time.time(),
                                  [s.view_json for s in self.servers.values()])
        self.snapshot_bytes = len(message)
        return message

    def add_viewer(self, ws: ServerConnection) -> None:
        """Queue the snapshot, then updates; broadcast() keeps the two in order."""
        broadcast([ws], self.snapshot())
        self.viewers.add(ws)

    def mark_dirty(self, sid: str) -> None:
        self.dirty.add(sid)
        if self.flush_handle is None:
            loop = asyncio.get_running_loop()
            self.flush_handle = loop.call_later(COALESCE_SECONDS, self.flush)

    def flush(self) -> None:
        """Send one update holding every server that changed since the last one."""
        self.flush_handle = None
        changed = [self.servers[sid].view_json for sid in self.dirty if sid in self.servers]
        self.dirty.clear()
        if changed:
            self.push(browser_message("update", time.time(), changed))

    def push(self, message: str) -> None:
        """Send to every viewer that keeps up; cut the ones whose backlog overflows."""
        cap = VIEWER_BACKLOG_BYTES + self.snapshot_bytes
        keeping_up = []
        for ws in list(self.viewers):
            if ws.transport.get_write_buffer_size() > cap:
                log.warning("viewer disconnected: not reading (over %d bytes queued)", cap)
                self.viewers.discard(ws)
                ws.transport.abort()  # a close handshake would queue behind the backlog
            else:
                keeping_up.append(ws)
        broadcast(keeping_up, message)

    # Housekeeping.

    def tick(self) -> None:
        """Once a second: offline transitions, silent connections, old failures."""
        now = time.monotonic()
        for state in self.servers.values():
            if state.online and now - state.last_report_mono > offline_after(state.report_interval):
                log.info("server offline: id=%s (silent %.0f s)", state.config.id,
                         now - state.last_report_mono)
                self._set_online(state, False)
            ws = state.connection
            if ws is not None and now - state.last_frame_mono > SILENT_CLOSE_SECONDS:
                log.warning("agent closed: id=%s sent nothing for %.0f s", state.config.id,
                            SILENT_CLOSE_SECONDS)
                state.last_frame_mono = now  # close once
                self.close_later(ws, 1008, "no report for 60 s")
        for address in [a for a, t in self.failures.items()
                        if now - t[-1] > FAILED_HANDSHAKES_WINDOW]:
            del self.failures[address]
        for address in [a for a, t in self.banned_until.items() if t <= now]:
            del self.banned_until[address]

    def reload(self) -> None:
        """Apply a changed servers.json; keep the old config if the new one is broken."""
        try:
            config, warnings = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config reload failed, keeping the previous config: %s", exc)
            return
        for warning in warnings:
            log.warning("%s", warning)
        old = self.servers
        added = len(config.servers.keys() - old.keys())
        self.servers = {}
        for sid, cfg in config.servers.items():
            state = old.pop(sid, None) or self._new_state(cfg)
            if state.connection is not None and cfg.secret != state.config.secret:
                self._disconnect(state, "secret changed in servers.json")
            state.config = cfg
            state.refresh_view()
            self.servers[sid] = state
        for state in old.values():
            self._disconnect(state, "server removed from servers.json")
        if (config.host, config.port) != (self.config.host, self.config.port):
            log.warning("config reload: host and port changes apply after a restart")
        log.info("config reloaded: %d servers (%d added, %d removed)",
                 len(self.servers), added, len(old))
        self.config = config
        self.push(self.snapshot())

    def _disconnect(self, state: ServerState, reason: str) -> None:
        ws, state.connection = state.connection, None
        self._set_online(state, False)
        if ws is not None:
            log.info("agent disconnected: id=%s: %s", state.config.id, reason)
            self.close_later(ws, 1008, reason)

    def agents_connected(self) -> int:
        return sum(s.connection is not None for s in self.servers.values())

    def metrics(self) -> str:
        return render_metrics(list(self.servers.values()), self.agents_connected(),
                              len(self.viewers), self.accepted, self.rejected)

    def health(self) -> str:
        return json.dumps({"status": "ok", "servers": len(self.servers),
                           "agents": self.agents_connected(), "viewers": len(self.viewers)})

    def servers_json(self) -> str:
        return "[" + ",".join(s.view_json for s in self.servers.values()) + "]"


# --- transport ---------------------------------------------------------------

# --viewer-compression: each viewer compresses every update itself (deflate state is per
# connection), which at 20 viewers costs more CPU than handling the reports; off by default.
# zlib's fastest level still shrinks this JSON about fivefold.
VIEWER_COMPRESSION = ServerPerMessageDeflateFactory(
    server_max_window_bits=12, client_max_window_bits=12,
    compress_settings={"memLevel": 5, "level": 1})


def route_request(hub: Hub, connection: ServerConnection, request: Request) -> Response | None:
    """process_request: answer HTTP, authenticate agents, let WebSockets through."""
    path = urlsplit(request.path).path
    if path == "/ws-report":
        peer = connection.remote_address[0] if connection.remote_address else "?"
        address = client_address(peer, request.headers, hub.options.trusted_proxies)
        status, reason, _ = hub.check_agent(address, request.headers)
        if status != 200:
            return text_response(status, reason)
        # Never permessage-deflate for agents, even with --viewer-compression: its state
        # (~50 KiB a connection) would be most of the memory at a few thousand agents,
        # to save a few hundred bytes per report.
        connection.protocol.available_extensions = []
        return None
    if path == "/ws-frontend":
        return None
    if path in ("/", "/index.html"):
        if hub.files.page is None:
            return text_response(404, "index.html is missing beside dashboard.py")
        return http_response(200, hub.files.page, "text/html; charset=utf-8",
                             {"Content-Security-Policy": hub.page_csp})
    if path in ("/agent.py", "/sss-agent.service"):
        body = hub.files.agent if path == "/agent.py" else hub.files.agent_unit
        if body is None:
            return text_response(404, f"{path[1:]} is missing beside dashboard.py")
        return http_response(200, body, "text/plain; charset=utf-8")
    if path == "/install.sh":
        url = dashboard_url(hub.options.public_url, request.headers.get("Host"),
                            hub.options.tls is not None)
        if hub.files.installer is None:
            return text_response(404, "install.sh is missing beside dashboard.py")
        if url is None:
            return text_response(400, "unusable Host header; start the dashboard with "
                                      "--public-url")
        return http_response(200, installer_for(hub.files.installer, url),
                             "text/x-shellscript; charset=utf-8")
    if path == "/api/servers":
        return json_response(hub.servers_json())
    if path == "/healthz":
        return json_response(hub.health())
    if path == "/metrics":
        return http_response(200, hub.metrics().encode(), "text/plain; version=0.0.4")
    return text_response(404, "not found")


async def serve_agent(hub: Hub, ws: ServerConnection, sid: str) -> None:
    """Apply each report of one agent until it leaves or misbehaves."""
    older = hub.attach_agent(sid, ws)
    peer = ws.remote_address[0] if ws.remote_address else "?"
    address = client_address(peer, ws.request.headers, hub.options.trusted_proxies)
    if older is not None:
        log.info("agent replaced: id=%s by a new connection from %s", sid, address)
        hub.close_later(older, 1008, "replaced by a newer connection for this id")
    else:
        log.info("agent connected: id=%s from %s", sid, address)
    bad_in_a_row = 0
    try:
        async for frame in ws:
            state = hub.servers.get(sid)
            if state is None or state.connection is not ws:
                break  # removed or re-keyed by a reload
            state.last_frame_mono = time.monotonic()
            try:
                record = validate_report(frame)
            except ReportError as exc:
                hub.reject_report(sid, exc)
                bad_in_a_row += 1
                if bad_in_a_row >= BAD_REPORTS_BEFORE_CLOSE:
                    log.warning("agent closed: id=%s sent %d invalid reports in a row",
                                sid, bad_in_a_row)
                    await ws.close(1007, f"{bad_in_a_row} invalid reports in a row")
                    break
                continue
            bad_in_a_row = 0
            hub.accept_report(sid, record)
    except ConnectionClosed as exc:
        if exc.sent is not None and exc.sent.code == 1009:
            hub.reject_report(sid, ReportError("too_large", f"frame over {MAX_FRAME_BYTES} bytes"))
    finally:
        if hub.detach_agent(sid, ws):
            log.info("agent disconnected: id=%s (%s %s)", sid, ws.close_code, ws.close_reason)


async def serve_viewer(hub: Hub, ws: ServerConnection) -> None:
    """Send the snapshot, then updates, until the browser leaves."""
    hub.add_viewer(ws)
    log.info("viewer connected (%d watching)", len(hub.viewers))
    try:
        async for _ in ws:
            pass  # browsers have nothing to say; reading keeps pings answered
    except ConnectionClosed:
        pass
    finally:
        hub.viewers.discard(ws)
        log.info("viewer disconnected (%d watching)", len(hub.viewers))


async def handler(hub: Hub, ws: ServerConnection) -> None:
    """Dispatch a WebSocket connection by path; process_request vetted it already."""
    if urlsplit(ws.request.path).path == "/ws-report":
        await serve_agent(hub, ws, ws.request.headers["X-SERVER-ID"])
    else:
        await serve_viewer(hub, ws)


async def housekeeping(hub: Hub) -> None:
    while True:
        await asyncio.sleep(1)
        hub.tick()


async def run(config: Config, config_path: Path, options: Options) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads servers.json."""
    hub = Hub(config, config_path, Files.beside(HERE), options)
    tls = options.tls
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGHUP, hub.reload)

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        return route_request(hub, connection, request)

    async def handle(ws: ServerConnection) -> None:
        await handler(hub, ws)

    async with serve(handle, config.host, config.port, process_request=process_request,
                     max_size=MAX_FRAME_BYTES, server_header=f"sss-dashboard/{__version__}",
                     compression=None, ssl=tls,
                     extensions=[VIEWER_COMPRESSION] if options.viewer_compression else None,
                     ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        log.info("listening on %s://%s:%d (%d servers configured)", "https" if tls else "http",
                 config.host, port, len(config.servers))
        ticker = asyncio.ensure_future(housekeeping(hub))
        await stop
        log.info("shutting down")
        ticker.cancel()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 1.5)
        except asyncio.TimeoutError:
            for ws in server.connections:
                ws.transport.abort()  # peers that never answered the close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SimpleServerStatus dashboard.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="servers.json to use (default: the one beside dashboard.py)")
    parser.add_argument("--host", help="address to listen on (overrides the file's host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides the file's port)")
    parser.add_argument("--public-url", default="",
                        help="URL agents use to reach this dashboard, e.g. behind a proxy: "
                             "https://status.example.com/ (default: from each request)")
    parser.add_argument("--certfile", help="serve https and wss with this PEM certificate chain")
    parser.add_argument("--keyfile", help="private key for --certfile (default: in certfile)")
    parser.add_argument("--viewer-compression", action="store_true",
                        help="compress updates to browsers (permessage-deflate): ~5x less "
                             "traffic for slow links, more CPU per viewer")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                        help="a reverse proxy's address (repeatable): agents behind it are "
                             "known by its X-Forwarded-For, so one bad client cannot get "
                             "the proxy banned for everyone")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # we log what matters
    try:
        config, warnings = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    for warning in warnings:
        log.warning("%s", warning)
    config = dataclasses.replace(config, host=args.host or config.host,
                                 port=config.port if args.port is None else args.port)
    if args.public_url and not SAFE_URL.fullmatch(args.public_url):
        log.error("--public-url must look like https://status.example.com/ (letters, digits, "
                  ". - _ ~ / only), got %r", args.public_url)
        return 2
    tls = None
    if args.certfile:
        try:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.error("--certfile %s / --keyfile %s: cannot load: %s", args.certfile,
                      args.keyfile, exc)
            return 2
    try:
        options = Options(args.public_url, tls, args.viewer_compression,
                          frozenset(args.trusted_proxy))
        asyncio.run(run(config, args.config, options))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
