"""servers.json → frozen dataclasses (pure, apart from reading the file).

    >>> config, warnings = parse_config({"servers": [{"id": "web-1", "secret": "x" * 20}]},
    ...                                 "servers.json")
    >>> config.servers["web-1"].group
    'Default'

Every problem is reported, not only the first: each message names the file, the item
(index and id), the field and the fix. `load_config` raises ConfigError holding all of
them; the dashboard exits 2 at start and keeps the running config on SIGHUP.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from .sessions import is_password_hash
from .traffic import COUNT_MODES, Plan, parse_size, zone

DEFAULT_PORT = 8900
MAX_NAME = 256
PLACEHOLDER_SECRET = "change-me-local-demo-secret"
# What install.sh refuses too: characters sh or systemd would not read literally from the
# agent's env file, even in single quotes.
UNSAFE_SECRET = re.compile(r"""[\s'"\\$`\x00-\x1f\x7f]""")
SECRET_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{3,50}")
# --public-url: it ends up in the install script, so plain characters only.
SAFE_URL = re.compile(r"https?://[A-Za-z0-9.\[\]:-]+(?:/[A-Za-z0-9._~/-]*)?")
COUNTRY_PATTERN = re.compile(r"[A-Za-z]{2}")
TOP_LEVEL_KEYS = ("host", "port", "servers", "notifiers", "alerts", "timezone", "viewers",
                  "metricsToken", "probes", "agentUpdates", "publicUrl")
SERVER_KEYS = ("id", "name", "group", "secret", "countryCode", "traffic", "expires", "price",
               "hidden", "probes")
PROBES_KEYS = ("interval", "targets")
PROBE_KEYS = ("name", "host", "port", "url", "expect")
PROBE_URL_PATTERN = re.compile(r"https?://[^\x00-\x20\x7f/?#@]+(?:[/?#][^\x00-\x20\x7f]*)?")
MAX_URL = 2048
MAX_PROBE_TARGETS = 16
PROBE_NAME_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
PROBE_HOST_PATTERN = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")
VIEWER_KEYS = ("public", "users", "sessionDays")
USER_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
TRAFFIC_KEYS = ("limit", "resetDay", "count")
MAX_PRICE = 40


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    id: str
    name: str
    group: str
    secret: str
    country_code: str  # lower case, "" when not configured
    traffic: Plan = dataclasses.field(default_factory=Plan)
    expires: str = ""  # YYYY-MM-DD, "" when not configured
    price: str = ""
    hidden: bool = False  # only signed-in viewers see it
    probes: tuple[str, ...] | None = None  # the probe targets it measures; None: all

    @property
    def uses_placeholder_secret(self) -> bool:
        """The README's demo secret: its agent is accepted from loopback only."""
        return self.secret == PLACEHOLDER_SECRET


@dataclasses.dataclass(frozen=True)
class NotifierConfig:
    """Where alerts go: a webhook, a Telegram chat, or an Apprise URL. Holds secrets."""

    name: str
    type: str  # webhook | telegram | apprise
    url: str = ""  # webhook, apprise
    headers: tuple[tuple[str, str], ...] = ()  # webhook
    token: str = dataclasses.field(default="", repr=False)  # telegram
    chat_id: str = ""  # telegram
    api_base: str = "https://api.telegram.org"  # telegram: a self-hosted Bot API server

    def __repr__(self) -> str:  # never a URL, header or token in a log line
        return f"NotifierConfig(name={self.name!r}, type={self.type!r})"


@dataclasses.dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    above: float | None
    below: float | None
    for_seconds: float
    servers: tuple[str, ...]  # ids and "group:NAME"; empty means every server
    repeat: float | None  # seconds between reminders while firing; None: never
    notify: tuple[str, ...]
    target: str | None = None  # PROBE_METRICS: one probe target (default: the worst)

    @property
    def value_key(self) -> str:
        """Which observed value the rule judges: the metric, or the metric of one target."""
        return f"{self.metric}:{self.target}" if self.target else self.metric

    def applies_to(self, server: ServerConfig) -> bool:
        return not self.servers or server.id in self.servers \
            or f"group:{server.group}" in self.servers


@dataclasses.dataclass(frozen=True)
class Viewers:
    """Who sees the page: everyone (public) or only signed-in users."""

    public: bool = True
    users: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)  # -> hash
    session_days: float = 30.0


@dataclasses.dataclass(frozen=True)
class ProbeTarget:
    """Where agents measure latency: ICMP echo, TCP connect time with `port`, or an HTTP(S)
    check of `url` (status, time to first byte, the certificate's days left)."""

    name: str
    host: str
    port: int | None = None
    url: str | None = None
    expect: int = 200  # an HTTP check passes with this status


@dataclasses.dataclass(frozen=True)
class Probes:
    interval: float = 30.0
    targets: tuple[ProbeTarget, ...] = ()

    def for_server(self, server: ServerConfig) -> tuple[ProbeTarget, ...]:
        """The targets one server measures: its own list, or all."""
        if server.probes is None:
            return self.targets
        return tuple(t for t in self.targets if t.name in server.probes)


@dataclasses.dataclass(frozen=True)
class Config:
    host: str
    port: int
    servers: dict[str, ServerConfig]
    notifiers: dict[str, NotifierConfig] = dataclasses.field(default_factory=dict)
    alerts: tuple[AlertRule, ...] = ()
    timezone: str = "UTC"  # IANA name: where traffic periods start at midnight
    viewers: Viewers = dataclasses.field(default_factory=Viewers)
    metrics_token: str = dataclasses.field(default="", repr=False)
    probes: Probes = dataclasses.field(default_factory=Probes)
    agent_updates: bool = False  # offer agents run with --auto-update the agent.py served
    public_url: str = ""  # where agents reach the dashboard; --public-url overrides it


class ConfigError(Exception):
    """A servers.json that cannot be used; one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: Path) -> tuple[Config, list[str]]:
    """Read and validate servers.json; return the config and its warnings."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read it ({exc.strerror}); pass --config PATH"]) \
            from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError([f"{path}: not valid JSON ({exc}); fix the syntax there"]) from exc
    return parse_config(data, str(path))


def config_sha256(path: Path) -> str:
    """The SHA-256 of servers.json as it is on disk ("" when unreadable)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def parse_config(data: Any, source: str) -> tuple[Config, list[str]]:
    """Validate the decoded JSON of servers.json; raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f'{source}: the top level must be an object like '
                           '{"servers": [...]}'])
    errors: list[str] = []
    warnings = [f"{source}: unknown key {key!r} ignored (known: {', '.join(TOP_LEVEL_KEYS)})"
                for key in data if key not in TOP_LEVEL_KEYS]
    host = data.get("host", "0.0.0.0")
    if not isinstance(host, str) or not host:
        errors.append(f'{source}: field "host" must be an address string such as "0.0.0.0"')
    port = data.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        errors.append(f'{source}: field "port" must be an integer 0-65535, such as 8900')
    entries = data.get("servers")
    servers: dict[str, ServerConfig] = {}
    if not isinstance(entries, list):
        errors.append(f'{source}: field "servers" must be a list of server objects')
        entries = []
    for index, entry in enumerate(entries):
        server = parse_server(entry, f"{source}: servers[{index}]", errors, warnings)
        if server is None:
            continue
        if server.id in servers:
            errors.append(f'{source}: servers[{index}] (id {server.id!r}): field "id" '
                          "repeats an earlier server; give each server its own id")
        servers[server.id] = server
    notifiers = parse_notifiers(data.get("notifiers", []), source, errors)
    alerts = parse_alerts(data.get("alerts", []), source, notifiers, errors)
    timezone = data.get("timezone", "UTC")
    if not is_zone(timezone):
        errors.append(f'{source}: field "timezone" must be an IANA time zone such as '
                      f'"Europe/Berlin" or "UTC", got {timezone!r}')
    viewers = parse_viewers(data.get("viewers", {}), source, errors)
    metrics_token = data.get("metricsToken", "")
    if not isinstance(metrics_token, str) or (metrics_token and len(metrics_token) < 16):
        errors.append(f'{source}: field "metricsToken" must be a string of at least 16 '
                      f"characters; make one with {SECRET_HINT}")
        metrics_token = ""
    if not viewers.public and not metrics_token:
        warnings.append(f'{source}: the dashboard is private and has no "metricsToken", so '
                        "/metrics answers 401 to everyone; for Prometheus, add one made with "
                        f"{SECRET_HINT}")
    probes = parse_probes(data.get("probes", {}), source, errors)
    known = {target.name for target in probes.targets}
    for index, server in enumerate(servers.values()):
        errors.extend(f'{source}: servers[{index}] (id {server.id!r}): field "probes" names '
                      f"{name!r}, which is not among the probe targets "
                      f"({', '.join(sorted(known)) or 'none are configured'})"
                      for name in server.probes or () if name not in known)
    errors.extend(f'{source}: alerts ({rule.name!r}): field "target" names {rule.target!r}, '
                  f"which is not among the probe targets "
                  f"({', '.join(sorted(known)) or 'none are configured'})"
                  for rule in alerts if rule.target and rule.target not in known)
    agent_updates = data.get("agentUpdates", False)
    if not isinstance(agent_updates, bool):
        errors.append(f'{source}: field "agentUpdates" must be true or false, got '
                      f"{agent_updates!r}")
    public_url = data.get("publicUrl", "")
    if not isinstance(public_url, str) or (public_url and not SAFE_URL.fullmatch(public_url)):
        errors.append(f'{source}: field "publicUrl" must look like '
                      f'"https://status.example.com/", got {public_url!r}')
        public_url = ""
    if errors:
        raise ConfigError(errors)
    return Config(host, port, servers, notifiers, alerts, timezone, viewers,
                  metrics_token, probes, agent_updates is True, public_url), warnings


def known_object(entry: Any, where: str, example: str, keys: tuple[str, ...],
                 errors: list[str]) -> bool:
    """A top-level section is an object; its unknown keys are named. False: not an object."""
    if not isinstance(entry, dict):
        errors.append(f'{where}" must be an object like {example}')
        return False
    errors.extend(f'{where}" has unknown key {key!r} (known: {", ".join(keys)})'
                  for key in entry if key not in keys)
    return True


def parse_probes(entry: Any, source: str, errors: list[str]) -> Probes:
    """"probes": {"interval": 30, "targets": [{"name", "host", "port"?}]}."""
    where = f'{source}: field "probes'
    if not known_object(entry, where, '{"interval": 30, "targets": [...]}', PROBES_KEYS,
                        errors):
        return Probes()
    interval = entry.get("interval", 30)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
            or not 5 <= interval <= 3600:
        errors.append(f'{where}.interval" must be 5-3600 seconds, got {interval!r}')
        interval = 30
    entries = entry.get("targets", [])
    if not isinstance(entries, list) or len(entries) > MAX_PROBE_TARGETS:
        errors.append(f'{where}.targets" must be a list of at most {MAX_PROBE_TARGETS} '
                      'targets like {"name": "Cloudflare", "host": "1.1.1.1"}')
        entries = []
    targets: dict[str, ProbeTarget] = {}
    for index, target in enumerate(entries):
        place = f'{where}.targets[{index}]"'
        if not isinstance(target, dict):
            errors.append(f'{place}: must be an object like {{"name": "Cloudflare", '
                          '"host": "1.1.1.1"}')
            continue
        errors.extend(f"{place}: unknown key {key!r} (known: {', '.join(PROBE_KEYS)})"
                      for key in target if key not in PROBE_KEYS)
        name, host, port = target.get("name"), target.get("host"), target.get("port")
        if not isinstance(name, str) or not PROBE_NAME_PATTERN.fullmatch(name):
            errors.append(f'{place}: field "name" must be 1-64 printable characters')
            continue
        if name in targets:
            errors.append(f'{place}: field "name" repeats {name!r}; name each target once')
        if "url" in target or "expect" in target:
            targets[name] = http_target(target, f"{place} ({name!r})", errors)
            continue
        if not isinstance(host, str) or not PROBE_HOST_PATTERN.fullmatch(host):
            errors.append(f'{place} ({name!r}): field "host" must be a host name or an IP '
                          f"address such as 1.1.1.1, got {host!r}")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            errors.append(f'{place} ({name!r}): field "port" must be 1-65535 (or left out '
                          f"for ICMP echo), got {port!r}")
        targets[name] = ProbeTarget(name, str(host), port)
    return Probes(float(interval), tuple(targets.values()))


def http_target(target: dict[str, Any], place: str, errors: list[str]) -> ProbeTarget:
    """{"name", "url", "expect"?}: an HTTP(S) check."""
    url, expect = target.get("url"), target.get("expect", 200)
    if not isinstance(url, str) or len(url) > MAX_URL or not PROBE_URL_PATTERN.fullmatch(url):
        errors.append(f'{place}: field "url" must be an http:// or https:// URL such as '
                      f'"https://example.com/health" (no spaces, no user:password@), got '
                      f"{str(url)[:80]!r}")
    if isinstance(expect, bool) or not isinstance(expect, int) or not 100 <= expect <= 599:
        errors.append(f'{place}: field "expect" must be the HTTP status that passes, '
                      f"100-599 (default 200), got {expect!r}")
    errors.extend(f'{place}: field "{key}" is for ICMP and TCP targets; an HTTP check has '
                  f'"url" (and "expect")' for key in ("host", "port") if key in target)
    return ProbeTarget(str(target["name"]), "", None, str(url),
                       expect if isinstance(expect, int) else 200)


def parse_viewers(entry: Any, source: str, errors: list[str]) -> Viewers:
    """"viewers": {"public": false, "users": {"alice": "scrypt$…"}, "sessionDays": 30}."""
    where = f'{source}: field "viewers'
    if not known_object(entry, where, '{"public": false, "users": {...}}', VIEWER_KEYS,
                        errors):
        return Viewers()
    public = entry.get("public", True)
    if not isinstance(public, bool):
        errors.append(f'{where}.public" must be true or false')
        public = True
    users = entry.get("users", {})
    if not isinstance(users, dict):
        errors.append(f'{where}.users" must be an object of user names to password hashes')
        users = {}
    for user, stored in users.items():
        if not USER_PATTERN.fullmatch(user):
            errors.append(f'{where}.users": user name {user[:64]!r} must be 1-64 characters of '
                          "A-Z a-z 0-9 _ . @ -")
        elif not isinstance(stored, str) or not is_password_hash(stored):
            errors.append(f'{where}.users.{user}" must be a password hash, not a password: '
                          "make one with python3 dashboard.py --hash-password")
    if not public and not users:
        errors.append(f'{where}.public" is false but no "users" can sign in; add one with '
                      "python3 dashboard.py --hash-password")
    days = entry.get("sessionDays", 30)
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= 3650:
        errors.append(f'{where}.sessionDays" must be a number of days, 1-3650')
        days = 30
    return Viewers(public, dict(users), float(days))


def is_zone(name: Any) -> bool:
    """An IANA time zone name that zoneinfo knows."""
    try:
        return isinstance(name, str) and bool(name) and zone(name) is not None
    except (ValueError, ZoneInfoNotFoundError):
        return False


def parse_server(entry: Any, where: str, errors: list[str],
                 warnings: list[str]) -> ServerConfig | None:
    """Validate one server object, appending to `errors` and `warnings`."""
    if not isinstance(entry, dict):
        errors.append(f'{where}: must be an object like {{"id": "web-1", "secret": "..."}}')
        return None
    first_error = len(errors)
    server_id = entry.get("id")
    if not isinstance(server_id, str) or not ID_PATTERN.fullmatch(server_id):
        errors.append(f'{where}: field "id" must be 3-50 characters of A-Z a-z 0-9 _ -, '
                      f"got {server_id!r}")
        server_id = str(server_id)
    else:
        where = f"{where} (id {server_id!r})"

    def text(field: str, default: str) -> str:
        value = entry.get(field, default)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
            errors.append(f'{where}: field "{field}" must be a non-empty string of at most '
                          f"{MAX_NAME} characters")
            return default
        return value

    secret = entry.get("secret")
    if not isinstance(secret, str) or not secret:
        errors.append(f'{where}: field "secret" is missing; add one made with {SECRET_HINT}')
        secret = ""
    elif UNSAFE_SECRET.search(secret):
        errors.append(f'{where}: field "secret" contains a quote, backslash, $, backtick, space '
                      "or control character, which the agent's env file (install.sh) cannot "
                      f"hold literally; make one with {SECRET_HINT}")
    country = entry.get("countryCode", "")
    if not isinstance(country, str) or (country and not COUNTRY_PATTERN.fullmatch(country)):
        errors.append(f'{where}: field "countryCode" must be two letters such as "de", '
                      f"got {country!r}")
        country = ""
    warnings.extend(f"{where}: unknown key {key!r} ignored (known: {', '.join(SERVER_KEYS)})"
                    for key in entry if key not in SERVER_KEYS)
    if secret == PLACEHOLDER_SECRET:
        warnings.append(f"{where} uses the placeholder secret, so its agent is accepted from "
                        f"this machine (loopback) only; replace it with one made with "
                        f"{SECRET_HINT}")
    elif secret and len(secret) < 16:
        warnings.append(f'{where}: field "secret" is shorter than 16 characters; make a '
                        f"stronger one with {SECRET_HINT}")
    name, group = text("name", server_id), text("group", "Default")
    plan = parse_traffic(entry.get("traffic"), where, errors)
    expires = entry.get("expires", "")
    try:
        if expires != "":
            datetime.date.fromisoformat(expires)
    except (TypeError, ValueError):
        errors.append(f'{where}: field "expires" must be a date like "2027-03-01", '
                      f"got {expires!r}")
    price = entry.get("price", "")
    if not isinstance(price, str) or len(price) > MAX_PRICE:
        errors.append(f'{where}: field "price" must be text of at most {MAX_PRICE} characters, '
                      'such as "4.50 EUR/month"')
    hidden = entry.get("hidden", False)
    if not isinstance(hidden, bool):
        errors.append(f'{where}: field "hidden" must be true or false')
    probes = entry.get("probes")
    if probes is not None and (not isinstance(probes, list)
                               or not all(isinstance(name, str) for name in probes)):
        errors.append(f'{where}: field "probes" must be a list of probe target names, '
                      'such as ["Cloudflare"]')
    if len(errors) > first_error:
        return None
    return ServerConfig(server_id, name, group, secret, country.lower(), plan, expires, price,
                        hidden is True, None if probes is None else tuple(probes))


def parse_traffic(entry: Any, where: str, errors: list[str]) -> Plan:
    """A server's "traffic": {"limit": "2 TiB", "resetDay": 15, "count": "sum"}."""
    if entry is None:
        return Plan()
    if not isinstance(entry, dict):
        errors.append(f'{where}: field "traffic" must be an object like {{"limit": "2 TiB", '
                      '"resetDay": 1}')
        return Plan()
    errors.extend(f'{where}: field "traffic" has unknown key {key!r} (known: '
                  f'{", ".join(TRAFFIC_KEYS)})' for key in entry if key not in TRAFFIC_KEYS)
    limit = None
    if "limit" in entry:
        limit = parse_size(entry["limit"])
        if limit is None:
            errors.append(f'{where}: field "traffic.limit" must be bytes or a number with a '
                          'unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), such as "2 TiB", '
                          f'got {entry["limit"]!r}')
    reset_day = entry.get("resetDay", 1)
    if isinstance(reset_day, bool) or not isinstance(reset_day, int) \
            or not 1 <= reset_day <= 31:
        errors.append(f'{where}: field "traffic.resetDay" must be a day of the month, 1-31 '
                      f"(31: the last day of shorter months), got {reset_day!r}")
        reset_day = 1
    count = entry.get("count", "sum")
    if count not in COUNT_MODES:
        errors.append(f'{where}: field "traffic.count" must be one of '
                      f'{", ".join(COUNT_MODES)}, got {count!r}')
        count = "sum"
    return Plan(limit, reset_day, count)


# --- notifiers and alerts ----------------------------------------------------------

NOTIFIER_TYPES = ("webhook", "telegram", "apprise")
# Metrics an alert can watch (PROTOCOL.md, "Alerts").
ALERT_METRICS = ("offline", "cpu", "memory", "swap", "disk", "load1", "load5", "netIn", "netOut",
                 "tcp", "udp", "processes", "traffic", "expiry", "latency", "loss",
                 "temperature", "http", "certificate")
# Of the probe targets: the worst, or "target". (latency ms, loss %, an HTTP check failing,
# its certificate's days left)
PROBE_METRICS = ("latency", "loss", "http", "certificate")
NO_THRESHOLD = ("offline", "http")  # these fire on a state, not on a number
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def parse_duration(value: Any) -> float | None:
    """Seconds from 90, "30s", "5m", "1h" or "2d"; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    if isinstance(value, str) and (match := DURATION.fullmatch(value.strip())):
        return float(match[1]) * DURATION_UNITS[match[2]]
    return None


def named_items(entries: list[Any], where: str, example: str,
                errors: list[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, name, item) for each item of a list of named objects; the ones that are no
    object or have no usable name are reported and skipped."""
    for index, entry in enumerate(entries):
        place = f"{where}[{index}]"
        if not isinstance(entry, dict):
            errors.append(f"{place}: must be an object like {example}")
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            errors.append(f'{place}: field "name" must be 1-40 characters of A-Z a-z 0-9 _ . -')
            continue
        yield f"{place} ({name!r})", name, entry


def parse_notifiers(entries: Any, source: str, errors: list[str]) -> dict[str, NotifierConfig]:
    """The notifiers list; each problem names the notifier (index and name) and the field."""
    if not isinstance(entries, list):
        errors.append(f'{source}: field "notifiers" must be a list of notifier objects')
        return {}
    notifiers: dict[str, NotifierConfig] = {}
    example = '{"name": "ops", "type": "webhook", "url": "https://..."}'
    for where, name, entry in named_items(entries, f"{source}: notifiers", example, errors):
        if name in notifiers:
            errors.append(f'{where}: field "name" repeats an earlier notifier; give each its own')
            continue
        kind = entry.get("type")
        first = len(errors)
        url = entry.get("url", "")
        if kind == "webhook":
            if not isinstance(url, str) or not re.match(r"https?://[^\s/]+", url):
                errors.append(f'{where}: field "url" must be an http:// or https:// URL')
            headers = entry.get("headers", {})
            if not isinstance(headers, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and "\n" not in k + v
                    for k, v in headers.items()):
                errors.append(f'{where}: field "headers" must be an object of header names to '
                              "string values")
                headers = {}
            notifier = NotifierConfig(name, kind, url=url, headers=tuple(headers.items()))
        elif kind == "telegram":
            token, chat = entry.get("token"), entry.get("chatId")
            api_base = entry.get("apiBase", NotifierConfig.api_base)
            if not isinstance(token, str) or not re.fullmatch(r"\d+:[A-Za-z0-9_-]+", token):
                errors.append(f'{where}: field "token" must be the bot token BotFather gave, '
                              'like "123456:ABC-def"')
            if isinstance(chat, int) and not isinstance(chat, bool):
                chat = str(chat)
            if not isinstance(chat, str) or not re.fullmatch(r"-?\d+|@[A-Za-z0-9_]{5,}", chat):
                errors.append(f'{where}: field "chatId" must be a chat id such as '
                              '"-1001234567890" (README, "Alerts", says how to find it)')
            if not isinstance(api_base, str) or not re.match(r"https?://[^\s/]+", api_base):
                errors.append(f'{where}: field "apiBase" must be an http:// or https:// URL')
            notifier = NotifierConfig(name, kind, token=str(token), chat_id=str(chat),
                                      api_base=str(api_base).rstrip("/"))
        elif kind == "apprise":
            if not isinstance(url, str) or "://" not in url:
                errors.append(f'{where}: field "url" must be an Apprise URL such as '
                              '"discord://webhook_id/webhook_token"')
            notifier = NotifierConfig(name, kind, url=str(url))
        else:
            errors.append(f'{where}: field "type" must be one of {", ".join(NOTIFIER_TYPES)}, '
                          f"got {kind!r}")
            continue
        if len(errors) == first:
            notifiers[name] = notifier
    return notifiers


def parse_alerts(entries: Any, source: str, notifiers: dict[str, NotifierConfig],
                 errors: list[str]) -> tuple[AlertRule, ...]:
    """The alerts list; each problem names the rule (index and name), the field and the fix."""
    if not isinstance(entries, list):
        errors.append(f'{source}: field "alerts" must be a list of alert rules')
        return ()
    rules: list[AlertRule] = []
    example = '{"name": "cpu", "metric": "cpu", "above": 90, "notify": ["ops"]}'
    for where, name, entry in named_items(entries, f"{source}: alerts", example, errors):
        if any(rule.name == name for rule in rules):
            errors.append(f'{where}: field "name" repeats an earlier rule; give each its own')
            continue
        first = len(errors)
        metric = entry.get("metric")
        if metric not in ALERT_METRICS:
            errors.append(f'{where}: field "metric" must be one of {", ".join(ALERT_METRICS)}, '
                          f"got {metric!r}")
        above, below = entry.get("above"), entry.get("below")
        for field, value in (("above", above), ("below", below)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                errors.append(f'{where}: field "{field}" must be a number')
        if metric not in NO_THRESHOLD and above is None and below is None:
            errors.append(f'{where}: a threshold is missing; add "above": N or "below": N')
        if metric in NO_THRESHOLD and (above is not None or below is not None):
            errors.append(f'{where}: "{metric}" takes no threshold; remove "above"/"below"')
        durations = {}
        for field, default in (("for", 0), ("repeat", None)):
            raw = entry.get(field, default)
            durations[field] = None if raw is None else parse_duration(raw)
            if raw is not None and durations[field] is None:
                errors.append(f'{where}: field "{field}" must be seconds or a duration such as '
                              f'"30s", "5m", "1h", got {raw!r}')
        selected = entry.get("servers", [])
        if not isinstance(selected, list) or not all(isinstance(s, str) for s in selected):
            errors.append(f'{where}: field "servers" must be a list of server ids and '
                          '"group:NAME" entries')
            selected = []
        notify = entry.get("notify", [])
        if not isinstance(notify, list) or not notify:
            errors.append(f'{where}: field "notify" must list at least one notifier name')
            notify = []
        for target in notify:
            if target not in notifiers:
                known = ", ".join(notifiers) or "none are configured"
                errors.append(f'{where}: field "notify" names {target!r}, which is not in '
                              f'"notifiers" (known: {known})')
        target = entry.get("target")
        if target is not None and (metric not in PROBE_METRICS or not isinstance(target, str)):
            errors.append(f'{where}: field "target" names a probe target, for the metrics '
                          f'{" and ".join(PROBE_METRICS)} only')
        if len(errors) == first:
            rules.append(AlertRule(name, metric, above, below, durations["for"] or 0.0,
                                   tuple(selected), durations["repeat"] or None, tuple(notify),
                                   target))
    return tuple(rules)
