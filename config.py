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
import json
import re
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8900
MAX_NAME = 256
PLACEHOLDER_SECRET = "change-me-local-demo-secret"
SECRET_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{3,50}")
COUNTRY_PATTERN = re.compile(r"[A-Za-z]{2}")
TOP_LEVEL_KEYS = ("host", "port", "servers")
SERVER_KEYS = ("id", "name", "group", "secret", "countryCode")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    id: str
    name: str
    group: str
    secret: str
    country_code: str  # lower case, "" when not configured

    @property
    def uses_placeholder_secret(self) -> bool:
        """The README's demo secret: its agent is accepted from loopback only."""
        return self.secret == PLACEHOLDER_SECRET


@dataclasses.dataclass(frozen=True)
class Config:
    host: str
    port: int
    servers: dict[str, ServerConfig]


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
    if errors:
        raise ConfigError(errors)
    return Config(host, port, servers), warnings


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
    if len(errors) > first_error:
        return None
    return ServerConfig(server_id, name, group, secret, country.lower())
