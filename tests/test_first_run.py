"""What a new user meets first: README's commands, the data directory, checking a config.

Each test runs the real dashboard.py (or agent.py) as README shows it, on loopback.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import HERE, SECRET, Dashboard, free_port, server_entry

import agent
from sss import config, fleet, web
from sss.datafiles import JsonFile

# --- the data directory ----------------------------------------------------------------


def test_the_data_directory_is_data_beside_servers_json(make_dashboard: Any) -> None:
    """Before, history.db and traffic.json landed beside servers.json: in a checkout, in
    `git status`. Now data/ holds them (ignored by git), made for the dashboard alone."""
    dash: Dashboard = make_dashboard(history=True)
    with dash.agent("alpha") as agent:
        agent.send(json.dumps({"cpuInfo": {"percent": 1.0}}))
        dash.wait_for_log("agent connected: id=alpha")
    assert dash.stop() == 0
    assert sorted(p.name for p in dash.directory.iterdir()) == ["data", "servers.json"]
    assert stat.S_IMODE(dash.data.stat().st_mode) == 0o700
    assert {"history.db", "traffic.json"} <= {p.name for p in dash.data.iterdir()}
    assert "/data/" in (HERE / ".gitignore").read_text().split()


def test_files_of_an_earlier_dashboard_beside_servers_json_stay_in_use(
        make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False, history=True)
    (dash.directory / "traffic.json").write_text("{}")
    dash.start()
    line = dash.wait_for_log("from before data/ was the default data directory")
    assert str(dash.directory / "data") in line
    assert dash.stop() == 0
    assert not dash.data.exists() and (dash.directory / "history.db").exists()


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, caplog: Any) -> None:
    """A full disk: the temporary file is written to /dev/full. Before, a 0-byte
    sessions.json.tmp stayed behind."""
    saved = JsonFile(tmp_path / "sessions.json", "sessions", "sign-ins last until a restart")
    assert saved.save({"a": 1})
    (tmp_path / "sessions.json.tmp").symlink_to("/dev/full")
    assert not saved.save({"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions.json"]
    assert json.loads((tmp_path / "sessions.json").read_text()) == {"a": 1}
    assert "No space left on device" in caplog.text
    assert not saved.save({"x": float("inf")})  # never a value JSON cannot hold
    assert json.loads((tmp_path / "sessions.json").read_text()) == {"a": 1}


# --- the sub-commands -----------------------------------------------------------------


def test_the_dashboards_sub_commands_need_no_websockets(tmp_path: Path) -> None:
    """README shows them with Debian's own python3, which has no websockets: before, they
    exited 2 with "needs websockets"."""
    from test_alerts import Receiver
    hook = Receiver()
    try:
        config = tmp_path / "servers.json"
        config.write_text(json.dumps({"servers": [server_entry("alpha")], "notifiers": [
            {"name": "ops", "type": "webhook", "url": hook.url}]}))
        bare = [sys.executable, "-S", str(HERE / "dashboard.py"), "--config", str(config)]
        hashed = subprocess.run([*bare, "--hash-password"], input="correct horse battery\n",
                                capture_output=True, text=True, timeout=60)
        assert hashed.returncode == 0 and hashed.stdout.startswith("scrypt$"), hashed.stderr
        sent = subprocess.run([*bare, "--test-notify", "ops"], capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0 and sent.stdout.startswith("ok: sent"), sent.stdout
        assert "SimpleServerStatus test message" in hook.wait(1)[0][2]["text"]
        helped = subprocess.run([*bare, "--help"], capture_output=True, text=True, timeout=60)
        assert helped.returncode == 0 and "--hash-password" in helped.stdout
    finally:
        hook.close()


def run_dashboard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "dashboard.py"), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_check_config_checks_everything_and_starts_nothing(tmp_path: Path) -> None:
    """Before, the only check was a throwaway dashboard, which sent real webhooks."""
    from test_alerts import Receiver
    hook = Receiver()
    try:
        config = tmp_path / "servers.json"
        good = {"servers": [server_entry("alpha"), server_entry("beta")],
                "notifiers": [{"name": "ops", "type": "webhook", "url": hook.url}],
                "alerts": [{"name": "down", "metric": "offline", "notify": ["ops"]}]}
        config.write_text(json.dumps(good))
        bare = [sys.executable, "-S", str(HERE / "dashboard.py"), "--config", str(config),
                "--check-config"]  # -S: no websockets needed
        ok = subprocess.run(bare, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.splitlines()[-1] == (f"ok: 2 servers, 1 alert, 1 notifier; "
                                              f"data directory {tmp_path / 'data'}")
        assert not (tmp_path / "data").exists()  # nothing created

        config.write_text(json.dumps({**good, "servers": [
            server_entry("alpha", countryCode="Germany"), {"id": "x"}]}))
        (tmp_path / "data").mkdir()
        (tmp_path / "data/traffic.json").write_text(json.dumps({"web-1": {
            "current": {"start": 0, "end": 10, "received": "many", "sent": 0},
            "last_in": None, "last_out": None, "boot_time": None, "past": []}}))
        bad = subprocess.run(bare, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2
        lines = bad.stdout.splitlines()
        assert any('servers[0] (id \'alpha\'): field "countryCode"' in line for line in lines)
        assert any('servers[1]: field "id"' in line for line in lines)
        assert any("traffic.json: entry 'web-1': current.received" in line for line in lines)
        assert lines[-1] == "failed: 4 problems", lines
        assert hook.posts == []  # nothing sent
    finally:
        hook.close()



# --- the quick start --------------------------------------------------------------------


def test_an_agent_started_just_before_its_dashboard_warns_of_nothing(
        make_dashboard: Any, make_agent: Any) -> None:
    """README's quick start starts both at once; the agent is often first. Before, it
    logged "connection refused ... is the dashboard running?" on every first run."""
    dash: Dashboard = make_dashboard(start=False)
    dash.port = free_port()
    reporter = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                          "--secret", SECRET, "--interval", "2", "--log-level", "DEBUG")
    reporter.wait_for_log("the dashboard may be starting: retrying")  # refused, quietly
    dash.start()
    reporter.wait_for_log(r"connected to ws://")
    assert " WARNING " not in reporter.log_text(), reporter.log_text()


def test_a_dashboard_that_stays_away_is_still_named(make_agent: Any) -> None:
    port = free_port()
    reporter = make_agent("--server", f"ws://127.0.0.1:{port}/ws-report", "--id", "alpha",
                          "--secret", SECRET)
    started = time.monotonic()
    reporter.wait_for_log(r"WARNING connection refused by 127\.0\.0\.1: is the dashboard "
                          r"running\? check --server; retrying with backoff",
                          timeout=agent.STARTUP_WAIT + 5)
    assert time.monotonic() - started >= agent.STARTUP_WAIT - 1
    assert reporter.count_log("connection refused") == 1


# --- README names only what exists -------------------------------------------------------

README = (HERE / "README.md").read_text()
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
OTHER_TOOLS_FLAGS = {"--clear"}  # python3 -m venv --clear, in the two commands


def help_flags(*command: str) -> set[str]:
    result = subprocess.run([sys.executable, *command, "--help"], capture_output=True,
                            text=True, timeout=30, cwd=HERE, check=True)
    return set(FLAG.findall(result.stdout)) - {"--help"}


def test_readme_names_every_flag_of_both_scripts_and_no_other() -> None:
    """README's flags are those of `dashboard.py --help` and `agent.py --help`, all of
    them, plus those of install.sh and tools/bench.py where it shows them."""
    dashboard, agent_flags = help_flags("dashboard.py"), help_flags("agent.py")
    dashboard |= set().union(*(help_flags("dashboard.py", command)
                               for command in fleet.COMMANDS))
    named = set(FLAG.findall(README))
    assert dashboard - named == set(), "dashboard.py flags README does not name"
    assert agent_flags - named == set(), "agent.py flags README does not name"
    installer = set(FLAG.findall((HERE / "install.sh").read_text()))
    bench = set().union(*(help_flags("tools/bench.py", command) for command in
                          ("agent", "dashboard", "attack", "history")))
    unknown = named - dashboard - agent_flags - installer - bench - OTHER_TOOLS_FLAGS
    assert unknown == set(), "README names flags nothing takes"


def test_readme_names_endpoints_and_config_keys_that_exist() -> None:
    paths = {path for path in re.findall(r"`(/[a-z][a-z0-9_./-]*)", README)
             if not path.endswith("/")}  # `/api/*`: all of them
    served = set(web.ROUTES) | {"/ws-report", "/ws-frontend", "/ws-login"}
    assert {path for path in paths if path.startswith(("/api/", "/ws-"))
            or path in {"/healthz", "/metrics", "/login", "/logout"}} <= served
    source = Path(config.__file__).read_text()
    blocks = re.findall(r"```json\n(.*?)```", README, re.DOTALL)
    # Keys in the JSON blocks (lower camel case: not a webhook's header names).
    keys = {key for block in blocks for key in re.findall(r'"([a-z][A-Za-z]*)":', block)}
    keys |= set(re.findall(r"^\| `([a-zA-Z.]+)`", README, re.M)) & {
        key for block in blocks for key in re.findall(r'"([A-Za-z]+)"', block)}
    missing = {key for key in keys if f'"{key}"' not in source}
    assert missing == set(), "config keys README shows that config.py does not read"
    assert len(README.splitlines()) <= 450
