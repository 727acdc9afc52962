"""Shared test helpers: a real dashboard process on 127.0.0.1, real clients.

Every test that needs a dashboard starts dashboard.py as its own process on
port 0 and talks to it over loopback with real HTTP and WebSocket frames.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

HERE = Path(__file__).resolve().parent.parent  # the checkout: dashboard.py, agent.py
SECRET = "test-secret-0123456789abcdef"
LISTENING = re.compile(r"listening on https?://[^:]+:(\d+)")


def go_report(**overrides: Any) -> dict[str, Any]:
    """A report shaped like the Go agent's ServerInfo: every Go field, no extensions."""
    report: dict[str, Any] = {
        "name": "ignored", "group": "ignored", "id": "ignored", "lastReportTime": 0,
        "hostInfo": {
            "kernelArch": "x86_64", "kernelVersion": "6.1.0-18-amd64",
            "virtualizationSystem": "kvm", "uptime": 86400, "bootTime": 1764000000,
            "os": "linux", "platform": "debian", "platformFamily": "debian",
            "platformVersion": "12.5", "avgStat": {"load1": 0.5, "load5": 0.4, "load15": 0.3},
        },
        "cpuInfo": {"percent": 12.5, "info": ["Intel Xeon E5-2680 v4 @ 2.40GHz x 2"]},
        "virtualMemoryInfo": {"total": 2 * 2**30, "used": 2**30, "usedPercent": 50.0},
        "swapMemoryInfo": {"total": 2**30, "used": 0, "free": 2**30, "usedPercent": 0.0},
        "diskInfo": {"total": 40 * 2**30, "used": 10 * 2**30, "usedPercent": 25.0,
                     "partitions": [{"mountPoint": "/", "fstype": "ext4", "total": 40 * 2**30,
                                     "free": 30 * 2**30, "used": 10 * 2**30,
                                     "usedPercent": 25.0}]},
        "networkInfo": {"netInSpeed": 1000, "netOutSpeed": 2000,
                        "netInTransfer": 10**9, "netOutTransfer": 2 * 10**9},
        "ip": "203.0.113.7", "loc": "",
    }
    report.update(overrides)
    return report


def free_port() -> int:
    """A loopback port nothing listens on (for a moment)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_tool(name: str, package: str) -> str:
    """Path of a system tool a test needs: skip without it, but fail under CI=true."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        missing = f"{name} is missing (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    return path


def require_system_websockets() -> Path:
    """Debian's own python3 with Debian's python3-websockets, which the installer's tests
    use (they reach no package index): skip without it, but fail under CI=true."""
    system = Path("/usr/bin/python3")
    if not system.exists() or subprocess.run([str(system), "-c", "import websockets"],
                                             capture_output=True).returncode:
        missing = "/usr/bin/python3 has no websockets (apt-get install python3-websockets)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    return system


def checkout_copy(where: Path) -> Path:
    """What a dashboard runs and serves, copied to `where`: its agent.py can change."""
    for name in ("dashboard.py", "index.html", "agent.py", "install.sh"):
        shutil.copy2(HERE / name, where / name)
    for folder in ("sss", "vendor", "deploy"):
        shutil.copytree(HERE / folder, where / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return where


def wait_accepted(agent: ClientConnection, timeout: float = 5) -> None:
    """Until the dashboard says it accepted a report of this connection (its first one:
    PROTOCOL.md, "Accepted")."""
    while json.loads(agent.recv(timeout=timeout)).get("type") != "accepted":
        pass


def wait_until(condition: Any, timeout: float = 20, poll: float = 0.1) -> Any:
    """Poll what no event announces (a counter in /metrics, rows in a file) until it
    holds; what it returned."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(poll)
    return value


def server_entry(sid: str, **fields: Any) -> dict[str, Any]:
    return {"id": sid, "secret": SECRET, **fields}


class LogNotFound(AssertionError):
    """wait_for_log() gave up: the line never came, or the process exited first."""

    def __init__(self, message: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LoggedProcess:
    """A child process whose stderr lines are collected for wait_for_log()."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.collected = threading.Event()  # every line of the current process is in

    def spawn(self, args: list[str], **popen: Any) -> int:
        """Start `args` in its own process group; where its lines begin in self.lines."""
        self.collected.clear()
        with self.changed:  # counted before it starts: on a busy machine its first lines
            mark = len(self.lines)  # can be in before this thread runs again
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True, **popen)
        threading.Thread(target=self._collect, args=(self.process,), daemon=True).start()
        return mark

    def _collect(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.collected.set()
            self.changed.notify_all()

    def wait_for_log(self, pattern: str | re.Pattern[str], after: int = 0,
                     timeout: float = 10) -> str:
        """The first log line from index `after` on that matches `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines[after:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None \
                    and self.collected.is_set()
                if remaining <= 0 or exited:
                    why = (f"exited with {self.process.returncode}" if exited  # type: ignore
                           else f"in {timeout} s")
                    raise LogNotFound(f"no log line matching {regex.pattern!r} ({why}); "
                                      "log:\n" + "\n".join(self.lines[-30:]),
                                      self.process.returncode if exited else None)  # type: ignore
                self.changed.wait(min(remaining, 0.2))

    def count_log(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self.changed:
            return sum(1 for line in self.lines if regex.search(line))

    def log_text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Kill it and whatever it started (nginx workers, a shell's child)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


class Dashboard(LoggedProcess):
    """dashboard.py as a child process on 127.0.0.1."""

    def __init__(self, directory: Path, config: dict[str, Any], history: bool = False,
                 checkout: Path = HERE) -> None:
        super().__init__()
        self.checkout = checkout  # where dashboard.py and what it serves are
        # History is off unless the test is about it (asks for it, or gives history flags).
        self.history = history
        self.directory = directory
        self.config_path = directory / "servers.json"
        self.write_config(config)
        self.port = 0

    @property
    def data(self) -> Path:
        """Its data directory: data/ beside servers.json, the default."""
        return self.directory / "data"

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else json.dumps(config)
        self.config_path.write_text(text)
        self.metrics_token = "" if isinstance(config, str) else config.get("metricsToken", "")

    def start(self, *extra: str, **popen: Any) -> Dashboard:
        """Start (or restart, on the same port) and wait until it listens.

        A dashboard that exits instead raises LogNotFound at once, with its exit code.
        """
        if {"--history-resolution", "--history-days"} & set(extra):
            self.history = True  # and on again after a restart without the flags
        if not self.history and "--no-history" not in extra:
            extra = ("--no-history", *extra)
        mark = self.spawn([sys.executable, str(self.checkout / "dashboard.py"), "--config",
                           str(self.config_path), "--host", "127.0.0.1", "--port",
                           str(self.port), *extra], **popen)
        line = self.wait_for_log(LISTENING, after=mark, timeout=15)
        self.port = int(LISTENING.search(line).group(1))  # type: ignore[union-attr]
        return self

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        """A real HTTP GET: status, headers, body (error statuses included)."""
        try:
            request = urllib.request.Request(self.url(path), headers=headers or {})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def get_json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def metric(self, name: str, labels: str = "") -> float:
        """One series' value from /metrics (0 when absent), e.g. metric("x", 'reason="y"')."""
        series = f"{name}{{{labels}}}" if labels else name
        token = {"Authorization": f"Bearer {self.metrics_token}"} if self.metrics_token else {}
        for line in self.get("/metrics", token)[2].decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    def refused(self, reason: str) -> int:
        """Connections refused before the upgrade for `reason` (sss_refused_total)."""
        return int(self.metric("sss_refused_total", f'reason="{reason}"'))

    @contextlib.contextmanager
    def agent(self, sid: str, secret: str = SECRET, headers: dict[str, str] | None = None,
              **kwargs: Any) -> Iterator[ClientConnection]:
        """An agent's connection (Go-style: the test reads what the dashboard says), with the
        reconnect frame that every agent but a checking one gets first already read."""
        headers = {"X-SERVER-ID": sid, "X-AUTH-SECRET": secret, **(headers or {})}
        with connect(self.url("/ws-report", "ws"), open_timeout=10,
                     additional_headers=headers, **kwargs) as ws:
            if headers.get("X-SSS-Check") != "1":
                assert json.loads(ws.recv(timeout=5))["type"] == "reconnect"
            yield ws

    def viewer(self, **kwargs: Any) -> ClientConnection:
        return connect(self.url("/ws-frontend", "ws"), open_timeout=10, **kwargs)


def tls_dashboard(make_dashboard: Any, tmp_path: Path,
                  name: str = "127.0.0.1") -> tuple[Any, Any]:
    """A dashboard serving https and wss with a certificate for `name` from a test CA
    (written to ca.pem); (dashboard, CA). Skips without trustme."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem"))
    return make_dashboard(start=False).start("--certfile", str(tmp_path / "server.pem")), ca


@pytest.fixture
def make_dashboard(tmp_path: Path):
    """Factory: make_dashboard(servers=[...]) starts a dashboard; all are killed after."""
    started: list[Dashboard] = []

    def make(servers: list[dict[str, Any]] | None = None, start: bool = True,
             history: bool = False, checkout: Path = HERE, **top: Any) -> Dashboard:
        if servers is None:
            servers = [server_entry("alpha", name="Alpha", group="Web", countryCode="DE"),
                       server_entry("beta", name="Beta"), server_entry("never")]
        directory = tmp_path / f"dashboard{len(started)}"
        directory.mkdir()
        dashboard = Dashboard(directory, {"servers": servers, **top}, history, checkout)
        started.append(dashboard)
        return dashboard.start() if start else dashboard

    yield make
    for dashboard in started:
        dashboard.kill()


# CI runs the agent tests again with agent.py under other interpreters (websockets 10.4,
# no psutil) and with SSS_USE_PSUTIL=1: agent processes follow SSS_AGENT_PYTHON.
AGENT_PYTHON = os.environ.get("SSS_AGENT_PYTHON", sys.executable)


@pytest.fixture
def make_agent():
    """Factory: make_agent(*args) runs agent.py with `args`; all are killed after."""
    started: list[LoggedProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> LoggedProcess:
        agent = LoggedProcess()
        agent.spawn([AGENT_PYTHON, str(HERE / "agent.py"), *args],
                    env={**os.environ, **(env or {})})
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.kill()


def recv_json(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    """The next message; for a viewer, as the page sees it: an update's entries come
    back as the whole servers they change (see `apply_change`)."""
    message = json.loads(ws.recv(timeout=timeout))
    if message.get("type") == "snapshot":
        ws.servers_seen = {s["id"]: s for s in message["servers"]}  # type: ignore[attr-defined]
    elif message.get("type") == "update":
        seen = ws.servers_seen  # type: ignore[attr-defined]
        message["changes"] = message["servers"]
        message["servers"] = [apply_change(seen, change) for change in message["servers"]]
    return message


def apply_change(servers: dict[str, dict[str, Any]], change: dict[str, Any]) -> dict[str, Any]:
    """PROTOCOL.md's rule for one update entry, as the page applies it."""
    server = copy.deepcopy(servers[change["id"]])  # messages seen before stay as they were
    for path, value in change["set"].items():
        *parents, leaf = path.split(".")
        target = server
        for key in parents:
            target = target[int(key) if type(target) is list else key]
        target[int(leaf) if type(target) is list else leaf] = value
    for field in change.get("unset", []):
        del server[field]
    servers[change["id"]] = server
    return server


def recv_until(ws: ClientConnection, predicate: Any, timeout: float = 5) -> dict[str, Any]:
    """Read viewer messages until one satisfies `predicate`; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        message = recv_json(ws, remaining)
        if predicate(message):
            return message
    raise AssertionError("no matching message within timeout")


def server_in(message: dict[str, Any], sid: str) -> dict[str, Any] | None:
    return next((s for s in message["servers"] if s["id"] == sid), None)


# --- the page, in a real browser -------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = HERE / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Any:
    require_tool(str(CHROMIUM), "chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture
def page_on(browser: Any) -> Any:
    """page_on(dash, **context) opens the dashboard's page; records requests and dialogs."""
    contexts = []

    def open_page(dash: Dashboard, path: str = "/", **context: Any) -> Any:
        ctx = browser.new_context(**context)
        contexts.append(ctx)
        page = ctx.new_page()
        page.requests = []  # type: ignore[attr-defined]
        page.dialogs = []  # type: ignore[attr-defined]
        page.on("request", lambda r: page.requests.append(r.url))
        page.on("websocket", lambda ws: page.requests.append(ws.url))
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.goto(dash.url(path))
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()


def card(page: Any, sid: str) -> Any:
    return page.locator(f'article.card[data-id="{sid}"]')


os.environ.setdefault("PYTHONUNBUFFERED", "1")
