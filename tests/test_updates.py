"""Agents that report their version and, where both sides ask, update from their own
dashboard: checked by hash, spread over the fleet, rolled back when the new file fails."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HERE,
    SECRET,
    Dashboard,
    LoggedProcess,
    card,
    checkout_copy,
    server_entry,
    wait_until,
)

import agent

SERVED = agent.AGENT_VERSION  # what this checkout's agent.py reports


def versions(dash: Dashboard) -> dict[str, str]:
    """Each online server's agentVersion, as the dashboard shows it."""
    return {s["id"]: s.get("extraInfo", {}).get("agentVersion", "")
            for s in dash.get_json("/api/servers") if s["online"]}


def updating_dashboard(make_dashboard: Any, tmp_path: Path, ids: list[str],
                       **top: Any) -> Dashboard:
    site = tmp_path / "site"
    site.mkdir()
    return make_dashboard([server_entry(sid) for sid in ids], checkout=checkout_copy(site),
                          **{"agentUpdates": True, **top})


def installed_agent(tmp_path: Path, name: str) -> Path:
    """agent.py copied where an agent runs from (its update folder goes beside it)."""
    home = tmp_path / name
    home.mkdir()
    shutil.copy2(HERE / "agent.py", home / "agent.py")
    return home / "agent.py"


def run_agent(path: Path, dash: Dashboard, sid: str, *extra: str,
              env: dict[str, str] | None = None, restart: bool = False) -> LoggedProcess:
    """agent.py at `path`, reporting every second; `restart`: started again whenever it
    exits, as systemd's Restart=always does."""
    args = [str(path), "--server", dash.url("/ws-report", "ws"), "--id", sid,
            "--interval", "1", "--min-interval", "1", *extra]
    command = [sys.executable, *args]
    if restart:
        command = ["sh", "-c", 'while :; do "$0" "$@"; sleep 0.2; done', sys.executable, *args]
    process = LoggedProcess()
    process.spawn(command, env={**os.environ, "SSS_SECRET": SECRET, **(env or {})})
    return process


@pytest.fixture
def agents() -> Any:
    started: list[LoggedProcess] = []
    yield started
    for process in started:
        process.kill()


def serve_new_agent(dash: Dashboard, text: str) -> str:
    """Put `text` in the dashboard's agent.py and reload it; the new short version."""
    (dash.checkout / "agent.py").write_text(text)
    mark = len(dash.lines)
    dash.signal(signal.SIGHUP)
    dash.wait_for_log("config reloaded", after=mark)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_twenty_agents_update_from_their_dashboard(make_dashboard: Any, tmp_path: Path,
                                                   agents: list[LoggedProcess]) -> None:
    ids = [f"agent-{n:02d}" for n in range(20)]
    dash = updating_dashboard(make_dashboard, tmp_path, ids)
    for sid in ids:
        agents.append(run_agent(installed_agent(tmp_path, sid), dash, sid, "--auto-update"))
    wait_until(lambda: versions(dash) == {sid: SERVED for sid in ids}, timeout=30)
    assert "sss_agent_outdated" in dash.get("/metrics")[2].decode()

    newer = (HERE / "agent.py").read_text() + "\n# a newer agent.py\n"
    new_version = serve_new_agent(dash, newer)
    dash.wait_for_log(rf"agent.py {new_version} offered to 20 agents that take updates")
    wait_until(lambda: versions(dash) == {sid: new_version for sid in ids}, timeout=60)
    for sid, process in zip(ids, agents):
        wait = re.search(rf"agent.py {new_version} offered: fetching it in ([\d.]+) s "
                         r"\(the fleet's spread: 1 s\)", process.log_text())
        assert wait and float(wait.group(1)) <= 1.0, process.log_text()  # within the spread
        process.wait_for_log(rf"agent.py {new_version} passed: its first report was accepted")
        folder = tmp_path / sid / agent.UPDATE_FOLDER
        assert (folder / "agent.py").read_text() == newer
        assert not (folder / "trial.json").exists()
        assert "Traceback" not in process.log_text()
    metrics = dash.get("/metrics")[2].decode()
    assert metrics.count('sss_agent_outdated{id="agent-') == 20
    assert " 1\n" not in "".join(line + "\n" for line in metrics.splitlines()
                                 if line.startswith("sss_agent_outdated{"))
    # /agent.py has a strong ETag: a fleet that has it gets 304.
    etag = f'"{hashlib.sha256(newer.encode()).hexdigest()}"'
    status, headers, body = dash.get("/agent.py")
    assert status == 200 and headers["ETag"] == etag and body == newer.encode()
    request = urllib.request.Request(dash.url("/agent.py"), headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as answer:  # urllib raises on 304
        urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 304


def test_a_broken_update_is_rolled_back_and_not_tried_again(
        make_dashboard: Any, tmp_path: Path, agents: list[LoggedProcess]) -> None:
    """A new agent.py that compiles but cannot start: the next start (systemd's restart)
    goes back to the file before it, and that version is refused for a day."""
    dash = updating_dashboard(make_dashboard, tmp_path, ["alpha"])
    installed = installed_agent(tmp_path, "alpha")
    reporter = run_agent(installed, dash, "alpha", "--auto-update", restart=True)
    agents.append(reporter)
    wait_until(lambda: versions(dash) == {"alpha": SERVED}, timeout=30)
    broken = "import sys\nsys.exit('this agent.py cannot start')\n"
    broken_version = serve_new_agent(dash, broken)
    reporter.wait_for_log(rf"updated to agent.py {broken_version}", timeout=30)
    reporter.wait_for_log(rf"agent.py {broken_version} did not get a report accepted: back "
                          "to the one before it", timeout=30)
    wait_until(lambda: versions(dash) == {"alpha": SERVED}, timeout=30)
    folder = installed.parent / agent.UPDATE_FOLDER
    refused = json.loads((folder / "refused.json").read_text())
    assert list(refused) == [hashlib.sha256(broken.encode()).hexdigest()]
    assert not (folder / "agent.py").exists() and not (folder / "trial.json").exists()
    # Offered again as it reconnected: refused, not fetched.
    reporter.wait_for_log(rf"agent.py {broken_version} offered: refused, it failed its trial")
    assert reporter.count_log(rf"updated to agent.py {broken_version}") == 1
    assert reporter.count_log(rf"agent.py {broken_version} offered: fetching") == 1


def test_updates_need_both_sides_and_a_safe_channel(make_dashboard: Any, tmp_path: Path,
                                                    agents: list[LoggedProcess],
                                                    page_on: Any) -> None:
    """No --auto-update: nothing fetched. An unwritable update folder: the agent goes on.
    A dashboard that does not offer updates: nothing fetched either."""
    dash = updating_dashboard(make_dashboard, tmp_path, ["alpha", "beta", "gamma"])
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    plain = run_agent(installed_agent(tmp_path, "alpha"), dash, "alpha")
    stuck = run_agent(installed_agent(tmp_path, "beta"), dash, "beta", "--auto-update",
                      env={"STATE_DIRECTORY": str(blocker / "state")})
    agents.extend([plain, stuck])
    wait_until(lambda: versions(dash) == {"alpha": SERVED, "beta": SERVED}, timeout=30)
    new_version = serve_new_agent(dash, (HERE / "agent.py").read_text() + "\n# newer\n")
    stuck.wait_for_log(rf"update to agent.py {new_version} failed: .*Not a directory", timeout=30)
    assert versions(dash) == {"alpha": SERVED, "beta": SERVED}  # both go on reporting
    assert "offered" not in plain.log_text()
    assert not (tmp_path / "alpha" / agent.UPDATE_FOLDER).exists()
    metrics = dash.get("/metrics")[2].decode()
    assert re.search(r'sss_agent_outdated\{id="alpha".*\} 1', metrics)
    page = page_on(dash)  # the details mark the agent that runs another agent.py
    card(page, "alpha").locator("button.more").click()
    outdated = card(page, "alpha").locator(".details dd.outdated")
    outdated.wait_for(timeout=10_000)
    assert outdated.inner_text() == f"{SERVED} (not {new_version}, the one served here)"

    quiet = make_dashboard([server_entry("gamma")])  # no "agentUpdates"
    asking = run_agent(installed_agent(tmp_path, "gamma"), quiet, "gamma", "--auto-update")
    agents.append(asking)
    wait_until(lambda: versions(quiet) == {"gamma": SERVED}, timeout=30)
    quiet.signal(signal.SIGHUP)
    quiet.wait_for_log("config reloaded")
    assert "offered" not in asking.log_text()


def test_no_updates_over_plain_ws_to_another_machine(make_dashboard: Any, tmp_path: Path,
                                                     agents: list[LoggedProcess]) -> None:
    assert agent.update_refusal("wss://status.example.com/ws-report") == ""
    assert agent.update_refusal("ws://127.0.0.1:8900/ws-report") == ""
    assert agent.update_refusal("ws://[::1]:8900/ws-report") == ""
    assert agent.update_refusal("ws://localhost:8900/ws-report") == ""
    assert "only over wss://" in agent.update_refusal("ws://192.0.2.7:8900/ws-report")
    assert agent.agent_url("wss://h.example/status/ws-report") == "https://h.example/status/agent.py"
    own = own_address()
    if own is None:
        pytest.skip("this machine has no address but loopback")
    dash = updating_dashboard(make_dashboard, tmp_path, ["alpha"], start=False)
    dash.start("--host", "0.0.0.0")
    reporter = LoggedProcess()
    reporter.spawn([sys.executable, str(installed_agent(tmp_path, "alpha")), "--server",
                    f"ws://{own}:{dash.port}/ws-report", "--id", "alpha", "--interval", "1",
                    "--min-interval", "1", "--auto-update"],
                   env={**os.environ, "SSS_SECRET": SECRET})
    agents.append(reporter)
    reporter.wait_for_log(r"--auto-update: updates come only over wss:// or from a dashboard "
                          r"on this machine")
    wait_until(lambda: versions(dash) == {"alpha": SERVED}, timeout=30)
    new_version = serve_new_agent(dash, (HERE / "agent.py").read_text() + "\n# newer\n")
    dash.wait_for_log(rf"agent.py {new_version} offered to 0 agents")  # it did not ask
    assert "fetching" not in reporter.log_text()


def own_address() -> str | None:
    """An address of this machine that is not loopback (the agent's rule is by address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_agent_unit_stays_as_strict(tmp_path: Path) -> None:
    """StateDirectory is the one place the agent may write; systemd-analyze security
    scores the unit as before (3.7: "OK")."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is missing: apt-get install systemd")
    unit = tmp_path / "sss-agent.service"
    unit.write_text((HERE / "deploy/sss-agent.service").read_text())
    result = subprocess.run([tool, "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for sss-agent.service: ([\d.]+)", result.stdout)
    assert score and float(score.group(1)) <= 3.7, result.stdout[-300:]
    assert "StateDirectory=sss-agent" in unit.read_text()
