#!/usr/bin/env python3
"""SimpleServerStatus dashboard: agents report over WebSocket, browsers watch live.

    $ python3 dashboard.py --port 8931
    2026-11-27 04:56:22 WARNING /work/main/servers.json: servers[0] (id 'local') uses the pl...
    2026-11-27 04:56:22 INFO open-file limit: 20000
    2026-11-27 04:56:22 INFO listening on http://0.0.0.0:8931 (1 servers configured)
    2026-11-27 04:56:23 INFO agent connected: id=local from 127.0.0.1
    2026-11-27 04:56:24 INFO viewer connected (1 watching)
    2026-11-27 04:56:27 INFO agent disconnected: id=local (1000 'agent shutting down')

Agents connect to /ws-report with the headers X-SERVER-ID and X-AUTH-SECRET and
send one JSON report per interval; browsers connect to /ws-frontend and get a
snapshot, then coalesced updates. PROTOCOL.md describes every message.

This file is the wiring: the command line, logging, signals, `serve()` and shutdown.
The modules are in sss/ (README, "Layout"): handlers.py serves agents, viewers and
sign-ins, transport.py is websockets as the dashboard uses it, web.py answers HTTP,
hub.py keeps the live state, and the features keep their files in the data directory.
The sub-commands that only read the config (--hash-password, --check-config,
--test-notify) need no websockets; add-server and the other server commands are fleet.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import importlib.metadata
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from sss import fleet, runtime
from sss.alerts import firing_from, missing_apprise
from sss.alerts import test_notify as alerts_test_notify
from sss.config import SAFE_URL, Config, ConfigError, config_sha256, load_config
from sss.datafiles import JsonFile, Running, remove_pid_file, write_pid_file
from sss.history import DEFAULT_DAYS, DEFAULT_RESOLUTION, History, history_problems
from sss.limits import (
    VIEWER_MEMORY_BUDGET,
    VIEWER_SNAPSHOTS,
    VIEWERS_PER_ADDRESS,
    VIEWERS_TOTAL,
)
from sss.sessions import hash_password, sessions_from
from sss.traffic import meters_from

__version__ = "0.2.0"

log = logging.getLogger("sss.dashboard")

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "servers.json"
SHUTDOWN_GRACE = 1.5  # seconds peers get to answer the close at a stop
DATA_FILES = ("history.db", "traffic.json", "alerts.json", "sessions.json")


def require_websockets() -> None:
    """One line naming what is missing and how to install it, instead of a traceback.
    (The version from the package's metadata: importing websockets now would read its
    header limits before transport.py sets them.)"""
    try:
        found = importlib.metadata.version("websockets")
        major = int(found.split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        found, major = "", 0
    if major < 15:
        print(f"dashboard.py needs websockets 15 or newer "
              f"({f'{found} found' if found else 'not installed'}): "
              "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
              file=sys.stderr)
        raise SystemExit(2)


# --- the sub-commands that exit at once ------------------------------------------------


def print_password_hash() -> int:
    """--hash-password: ask twice without echo (or read one line from a pipe), print a hash."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("the two passwords differ; nothing printed", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(first))
    return 0


def send_test_notification(config: Config, name: str) -> int:
    """--test-notify NAME: exit 0 when the message went out, 1 with the reason."""
    notifier = config.notifiers.get(name)
    if notifier is None:
        known = ", ".join(config.notifiers) or "none are configured"
        print(f"failed: no notifier named {name!r} in the config (known: {known})")
        return 1
    why = alerts_test_notify(notifier)
    if why:
        print(f"failed: notifier {name!r} ({notifier.type}): {why}")
        return 1
    print(f"ok: sent a test message through notifier {name!r} ({notifier.type})")
    return 0


# --- serving ----------------------------------------------------------------------------


async def run(config: Config, config_path: Path, args: argparse.Namespace,
              tls: ssl.SSLContext | None, history: History | None, data: Path) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads servers.json."""
    # Only now: the sub-commands above need no websockets, and transport.py sets its
    # header limits before websockets is imported (serve() comes through it).
    from sss import transport
    from sss.handlers import Dashboard
    from sss.web import Files, Options

    options = Options(args.public_url or config.public_url, tls, args.viewer_compression,
                      frozenset(args.trusted_proxy), args.max_viewers,
                      args.viewers_per_address,
                      None if args.viewer_memory is None else args.viewer_memory << 20)
    dashboard = Dashboard(config, config_path, options, history, data, Files.beside(HERE))
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(runtime.LoopErrors())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, dashboard.reload)
    transport.check_internals(os.environ.get(transport.SAFE_TRANSPORT, ""))
    transport.quiet_peer_errors()
    settings = transport.server_settings(dashboard.site, tls, args.viewer_compression,
                                         f"sss-dashboard/{__version__}")
    async with transport.serve(dashboard.handler, config.host, config.port,
                               process_request=dashboard.process_request, **settings) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        log.info("listening on %s://%s:%d (%d servers configured)", "https" if tls else "http",
                 config.host, port, len(config.servers))
        running = Running(os.getpid(), local_url(config.host, port, tls is not None),
                          config_sha256(config_path))
        write_pid_file(data, running)  # how add-server finds it, and sees it reloaded
        dashboard.reloaded = lambda: write_pid_file(
            data, running._replace(config_sha256=config_sha256(config_path)))
        tasks = [asyncio.ensure_future(dashboard.housekeeping()),
                 asyncio.ensure_future(dashboard.keep_traffic())]
        if history is not None:
            tasks.append(asyncio.ensure_future(dashboard.write_history(history)))
        await stop.wait()
        log.info("shutting down")
        for task in tasks:
            task.cancel()
        dashboard.alerting.delivery.stop()
        dashboard.traffic.save()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_GRACE)
        except asyncio.TimeoutError:
            for ws in list(dashboard.site.open):
                transport.hang_up(ws)  # peers that never answered the close
    if history is not None:  # nothing is lost on a graceful stop: the open bucket too
        await dashboard.history_step(history, final=True)
        history.close()
    remove_pid_file(data)


def local_url(host: str, port: int, tls: bool) -> str:
    """Where this machine reaches the dashboard (what dashboard.pid says).

    >>> local_url("0.0.0.0", 8900, False), local_url("::", 443, True)
    ('http://127.0.0.1:8900', 'https://[::1]:443')
    """
    address = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{'https' if tls else 'http'}://{address}:{port}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SimpleServerStatus dashboard.",
        epilog="Servers from the command line: dashboard.py add-server ID, remove-server ID, "
               "rotate-secret ID, list-servers (each with --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="servers.json to use")
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
    parser.add_argument("--max-viewers", type=int, default=VIEWERS_TOTAL, metavar="N",
                        help="browsers watching at once, in total")
    parser.add_argument("--viewers-per-address", type=int, default=VIEWERS_PER_ADDRESS,
                        metavar="N", help="browsers watching at once from one address "
                        "(an IPv6 /64); behind a proxy, by its X-Forwarded-For")
    parser.add_argument("--viewer-memory", type=int, metavar="MIB",
                        help="unsent bytes of all viewers together; past it the slowest "
                        f"viewers are disconnected (default: {VIEWER_MEMORY_BUDGET >> 20}, or "
                        f"room for {VIEWER_SNAPSHOTS} viewers' snapshots when that is more: "
                        "about 120 at 10,000 servers)")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="where the dashboard keeps what it remembers: history.db, "
                             "traffic.json, alerts.json, sessions.json (default: data/ in "
                             "the folder holding servers.json)")
    parser.add_argument("--no-history", action="store_true",
                        help="keep no history: live data only")
    parser.add_argument("--history-resolution", type=int, default=DEFAULT_RESOLUTION,
                        metavar="SECONDS", help="seconds per history row, 1-3600")
    parser.add_argument("--history-days", type=int, default=DEFAULT_DAYS, metavar="DAYS",
                        help="days to keep hourly history")
    parser.add_argument("--hash-password", action="store_true",
                        help="ask for a viewer's password and print its hash for servers.json")
    parser.add_argument("--check-config", action="store_true",
                        help="check servers.json and the data directory, print each problem "
                             "(or ok), start and send nothing; exit 0 or 2")
    parser.add_argument("--test-notify", metavar="NAME",
                        help="send a test message through one notifier and exit (0: sent)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if not 1 <= args.history_resolution <= 3600:
        parser.error("--history-resolution must be 1-3600 seconds")
    if min(args.max_viewers, args.viewers_per_address, args.viewer_memory or 1) < 1:
        parser.error("--max-viewers, --viewers-per-address and --viewer-memory must be 1 or more")
    if args.history_days < 3:
        parser.error("--history-days must be at least 3")
    return args


def data_directory(args: argparse.Namespace, create: bool = True) -> Path:
    """--data, or data/ beside servers.json (the checkout's is ignored by git), made 0700.
    Where the folder of servers.json holds the files of a dashboard from before data/ was
    the default, that folder goes on being used, and a line says how to move them."""
    if args.data is not None:
        data = args.data
    else:
        beside = args.config.resolve().parent
        data = beside / "data"
        earlier = [name for name in DATA_FILES if (beside / name).exists()]
        if earlier and not data.exists():
            log.warning("%s holds %s from before data/ was the default data directory: still "
                        "using that folder; move them into %s, or pass --data %s",
                        beside, ", ".join(earlier), data, beside)
            data = beside
    if create:
        try:
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.error("data directory %s: cannot create it (%s): history, traffic, alerts and "
                      "sessions are kept in memory only; make it writable or pass --data DIR",
                      data, exc.strerror or exc)
    return data


def check_config(args: argparse.Namespace) -> int:
    """--check-config: servers.json and the data directory checked as a start would check
    them, each problem printed; nothing is started, created or sent. 0, or 2."""
    errors: list[str] = []
    warnings: list[str] = []
    config = None
    try:
        config, warnings = load_config(args.config)
    except ConfigError as exc:
        errors += exc.problems
    if config is not None and (problem := missing_apprise(config)):
        errors.append(f"{args.config}: {problem}")
    data = data_directory(args, create=False)
    errors += data_problems(data)
    for line in [*(f"error: {e}" for e in errors), *(f"warning: {w}" for w in warnings)]:
        print(line)
    if errors or config is None:
        print(f"failed: {len(errors)} problem{'' if len(errors) == 1 else 's'}")
        return 2
    counts = ", ".join(f"{n} {name}{'' if n == 1 else 's'}" for n, name in (
        (len(config.servers), "server"), (len(config.alerts), "alert"),
        (len(config.notifiers), "notifier")))
    print(f"ok: {counts}; data directory {data}")
    return 0


def data_problems(data: Path) -> list[str]:
    """What keeps the dashboard from keeping its files in `data`, and every entry of them
    it would drop, each naming the file."""
    if data.exists() and not data.is_dir():
        return [f"data directory {data}: not a directory; pass --data DIR"]
    folder = data
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"data directory {data}: {folder} is not writable by this user; make it so "
                "for the user the dashboard runs as, or pass --data DIR"]
    problems = []
    for name, checked in (("traffic.json", meters_from), ("sessions.json", sessions_from),
                          ("alerts.json", lambda rows: firing_from(rows, 0.0, 0.0))):
        saved, unreadable = JsonFile(data / name, name, "").read()
        dropped = checked(saved)[1] if saved is not None else []
        problems += [unreadable] if unreadable else [f"{data / name}: {p}" for p in dropped]
    return problems + history_problems(data / "history.db")


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """--certfile/--keyfile, or None; exits 2 when they cannot be loaded."""
    if not args.certfile:
        return None
    try:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as exc:
        log.error("--certfile %s / --keyfile %s: cannot load: %s", args.certfile,
                  args.keyfile, exc)
        raise SystemExit(2) from None
    return tls


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in fleet.COMMANDS:  # add-server, remove-server, rotate-secret, ...
        return fleet.main(argv, DEFAULT_CONFIG, lambda a: data_directory(a, create=False))
    args = parse_args(argv)
    if args.hash_password:
        return print_password_hash()
    if args.check_config:
        return check_config(args)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    try:
        config, warnings = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    for warning in warnings:
        log.warning("%s", warning)
    problem = missing_apprise(config)
    if problem:
        log.error("%s: %s", args.config, problem)
        return 2
    if args.test_notify:
        return send_test_notification(config, args.test_notify)
    require_websockets()
    config = dataclasses.replace(config, host=args.host or config.host,
                                 port=config.port if args.port is None else args.port)
    if args.public_url and not SAFE_URL.fullmatch(args.public_url):
        log.error("--public-url must look like https://status.example.com/ (letters, digits, "
                  ". - _ ~ / only), got %r", args.public_url)
        return 2
    tls = tls_context(args)
    runtime.raise_file_limit(len(config.servers))
    runtime.take_over_full_collections(len(config.servers))
    runtime.map_large_blocks()
    data = data_directory(args)
    history = None
    if not args.no_history:
        history = History(data, args.history_resolution, args.history_days)
    try:
        asyncio.run(run(config, args.config, args, tls, history, data))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
