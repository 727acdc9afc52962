"""Adding, removing and listing servers from the command line: servers.json stays the
one source of truth, and a running dashboard is told to reload it.

    $ python3 dashboard.py add-server web-2 --name "Web 2" --group Frankfurt
    added web-2 to /opt/sss-dashboard/servers.json; the dashboard (pid 4242) reloaded it
    on web-2, as root:
    curl -fsSL https://status.example.com/install.sh | sh -s -- --id web-2 --secret 3N...

    $ python3 dashboard.py list-servers
    id      name    group      online  agent.py
    web-1   Web 1   Frankfurt  yes     3f2a9c41d0be
    web-2   Web 2   Frankfurt  no      -

servers.json is rewritten whole (a temporary file, flushed to disk, renamed over it: a
crash leaves the old file or the new one), keeping its mode, owner and every other key in
order. The running dashboard is found by dashboard.pid in the data directory; it is sent
SIGHUP, and the command waits until the dashboard says (in that file) that it runs with
the new servers.json. Each problem is one line, and exit 2. Secrets are printed only in
the install line, never listed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from .config import (
    COUNTRY_PATTERN,
    ID_PATTERN,
    ConfigError,
    config_sha256,
    parse_config,
)
from .datafiles import Running, read_pid_file, replace_file

COMMANDS = ("add-server", "remove-server", "rotate-secret", "list-servers")
RELOAD_WAIT = 5.0  # seconds a running dashboard has to say it reloaded
SECRET_BYTES = 24


class CommandError(Exception):
    """One line saying what went wrong and what to do; exit 2."""


# --- servers.json, edited (pure) -----------------------------------------------------


def server_index(document: dict[str, Any], sid: str) -> int:
    entries = document.get("servers")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and entry.get("id") == sid:
            return index
    known = ", ".join(str(e.get("id")) for e in entries if isinstance(e, dict)) \
        if isinstance(entries, list) else ""
    raise CommandError(f"no server with id {sid!r} (known: {known or 'none'}); "
                       "list-servers shows them")


def with_server(document: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """servers.json with one more server at the end (everything else as it was).

    >>> with_server({"port": 1, "servers": []}, {"id": "web-1"})
    {'port': 1, 'servers': [{'id': 'web-1'}]}
    """
    entries = document.get("servers")
    if any(isinstance(e, dict) and e.get("id") == entry["id"] for e in entries or []):
        raise CommandError(f"a server with id {entry['id']!r} exists already; pick another "
                           f"id, or rotate-secret {entry['id']}")
    return {**document, "servers": [*(entries or []), entry]}


def without_server(document: dict[str, Any], sid: str) -> dict[str, Any]:
    index = server_index(document, sid)
    return {**document, "servers": [e for i, e in enumerate(document["servers"])
                                    if i != index]}


def with_secret(document: dict[str, Any], sid: str, secret: str) -> dict[str, Any]:
    index = server_index(document, sid)
    servers = list(document["servers"])
    servers[index] = {**servers[index], "secret": secret}
    return {**document, "servers": servers}


def new_entry(args: argparse.Namespace, secret: str) -> dict[str, Any]:
    """The server add-server adds, in servers.json's own order of keys."""
    if not ID_PATTERN.fullmatch(args.id):
        raise CommandError(f"id {args.id!r}: use 3-50 characters of A-Z a-z 0-9 _ -")
    if args.country and not COUNTRY_PATTERN.fullmatch(args.country):
        raise CommandError(f"--country {args.country!r}: use two letters, such as de")
    entry: dict[str, Any] = {"id": args.id, "name": args.name or args.id}
    if args.group:
        entry["group"] = args.group
    if args.country:
        entry["countryCode"] = args.country.lower()
    entry["secret"] = secret
    if args.traffic_limit:
        entry["traffic"] = {"limit": args.traffic_limit}
    return entry


def install_line(public_url: str, flags: str) -> str:
    """What to run as root on a server: install.sh from this dashboard, with `flags`.

    >>> install_line("https://status.example.com/", "--id web-2 --secret s3cret")
    'curl -fsSL https://status.example.com/install.sh | sh -s -- --id web-2 --secret s3cret'
    """
    base = public_url.rstrip("/") if public_url else "http://DASHBOARD:8900"
    return f"curl -fsSL {base}/install.sh | sh -s -- {flags}"


def agent_flags(document: dict[str, Any], sid: str, secret: str) -> str:
    updates = " --auto-update" if document.get("agentUpdates") is True else ""
    return f"--id {sid} --secret {secret}{updates}"


# --- servers.json on disk, and the running dashboard ----------------------------------


def read_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"{path}: cannot read it ({exc.strerror}); pass --config") from None
    except ValueError as exc:
        raise CommandError(f"{path}: not valid JSON ({exc}); fix it first") from None
    if not isinstance(document, dict):
        raise CommandError(f'{path}: the top level must be an object like {{"servers": []}}')
    return document


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Checked as a start would check it, then written whole (a new file: mode 0600)."""
    try:
        parse_config(document, str(path))
    except ConfigError as exc:
        raise CommandError("; ".join(exc.problems)) from None
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        replace_file(path, text.encode(), 0o600)
    except OSError as exc:
        raise CommandError(f"{path}: cannot write it ({exc.strerror or exc}); run this as "
                           "the user that owns it (sudo -u ...)") from None


def reload_running(config: Path, data: Path) -> str:
    """Tell the dashboard running with `data` to reload and wait until it did; what to
    say. Raises CommandError when it is running and did not."""
    running = read_pid_file(data)
    if running is None:
        return (f"no dashboard is running with {data} (no live {data / 'dashboard.pid'}): "
                "it reads servers.json at start, or reload it: kill -HUP <pid>, or "
                "systemctl reload sss-dashboard")
    wanted = config_sha256(config)
    try:
        os.kill(running.pid, signal.SIGHUP)
    except OSError as exc:
        raise CommandError(f"the dashboard (pid {running.pid}) could not be told to reload "
                           f"({exc.strerror}); run this as its user, or systemctl reload "
                           "sss-dashboard") from None
    deadline = time.monotonic() + RELOAD_WAIT
    while time.monotonic() < deadline:
        now = read_pid_file(data)
        if now is not None and now.config_sha256 == wanted:
            return f"the dashboard (pid {running.pid}) reloaded it"
        time.sleep(0.1)
    raise CommandError(f"the dashboard (pid {running.pid}) did not reload within "
                       f"{RELOAD_WAIT:.0f} s; servers.json is saved: see the dashboard's log")


def fleet_state(running: Running | None, token: str) -> dict[str, tuple[str, str]]:
    """Per server id: (online, agent.py version) as the running dashboard's /metrics says;
    {} when it cannot be asked."""
    if running is None:
        return {}
    request = urllib.request.Request(f"{running.url}/metrics", headers={
        "Authorization": f"Bearer {token}"} if token else {})
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # itself, on loopback
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            text = response.read(16 << 20).decode()
    except (OSError, ValueError):
        return {}
    state: dict[str, tuple[str, str]] = {}
    for name, labels, value in METRIC.findall(text):
        found = dict(LABEL.findall(labels))
        sid = found.get("id", "")
        online, version = state.get(sid, ("", ""))
        if name == "sss_up":
            online = "yes" if value == "1" else "no"
        elif name == "sss_agent_info":
            version = found.get("version", "")
        elif name == "sss_agent_outdated" and value == "1":
            version += " (outdated)"
        state[sid] = (online, version)
    return state


METRIC = re.compile(r"^(sss_up|sss_agent_info|sss_agent_outdated)\{(.*)\} (\S+)$", re.M)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# --- the commands ------------------------------------------------------------------------


def public_url(args: argparse.Namespace, document: dict[str, Any]) -> str:
    found = args.public_url or document.get("publicUrl", "")
    return found if isinstance(found, str) else ""


def add_server(args: argparse.Namespace) -> list[str]:
    document = read_document(args.config)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    write_document(args.config, with_server(document, new_entry(args, secret)))
    said = reload_running(args.config, args.data)
    return [f"added {args.id} to {args.config}; {said}", f"on {args.id}, as root:",
            install_line(public_url(args, document), agent_flags(document, args.id, secret))]


def remove_server(args: argparse.Namespace) -> list[str]:
    document = read_document(args.config)
    write_document(args.config, without_server(document, args.id))
    return [f"removed {args.id} from {args.config}; "
            f"{reload_running(args.config, args.data)}",
            f"on {args.id}, as root: {install_line(public_url(args, document), '--uninstall')}"]


def rotate_secret(args: argparse.Namespace) -> list[str]:
    document = read_document(args.config)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    write_document(args.config, with_secret(document, args.id, secret))
    said = reload_running(args.config, args.data)
    return [f"new secret for {args.id} in {args.config}; {said}; its agent is refused "
            "until it has the new one", f"on {args.id}, as root:",
            install_line(public_url(args, document), agent_flags(document, args.id, secret))]


def list_servers(args: argparse.Namespace) -> list[str]:
    document = read_document(args.config)
    try:
        config, _ = parse_config(document, str(args.config))
    except ConfigError as exc:
        raise CommandError("; ".join(exc.problems)) from None
    state = fleet_state(read_pid_file(args.data), config.metrics_token)
    rows = [("id", "name", "group", "online", "agent.py")]
    rows += [(s.id, s.name, s.group, *(state.get(s.id) or ("?", "")))
             for s in config.servers.values()]
    rows = [(*row[:4], row[4] or "-") for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    if not state:
        lines.append("online: ? (no running dashboard answered; a private one needs "
                     "metricsToken in servers.json)")
    return lines


RUN: dict[str, Callable[[argparse.Namespace], list[str]]] = {
    "add-server": add_server, "remove-server": remove_server,
    "rotate-secret": rotate_secret, "list-servers": list_servers}


def parse_args(argv: list[str], default_config: Path,
               data_directory: Callable[[argparse.Namespace], Path]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dashboard.py", description="Change servers.json "
                                     "and tell the running dashboard.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("add-server", "add a server and print its agent's install line"),
                       ("remove-server", "remove a server"),
                       ("rotate-secret", "give a server a new secret; print the install line"),
                       ("list-servers", "ids, names, groups, online, agent.py version")):
        command = commands.add_parser(name, help=text, description=text)
        if name != "list-servers":
            command.add_argument("id", help="the server's id")
        command.add_argument("--config", type=Path, default=default_config,
                             help="servers.json to change")
        command.add_argument("--data", type=Path, metavar="DIR",
                             help="the running dashboard's data directory (default: data/ "
                                  "beside servers.json)")
        if name != "list-servers":
            command.add_argument("--public-url", default="",
                                 help="the dashboard's URL for the install line (default: "
                                      "servers.json's publicUrl)")
        if name == "add-server":
            command.add_argument("--name", help="shown on the page (default: the id)")
            command.add_argument("--group", help="section on the page")
            command.add_argument("--country", help="two letters, shown as a flag")
            command.add_argument("--traffic-limit", metavar="LIMIT",
                                 help='monthly traffic limit, such as "2 TiB"')
    args = parser.parse_args(argv)
    args.data = data_directory(args)
    return args


def main(argv: list[str], default_config: Path,
         data_directory: Callable[[argparse.Namespace], Path]) -> int:
    args = parse_args(argv, default_config, data_directory)
    try:
        lines = RUN[args.command](args)
    except CommandError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
