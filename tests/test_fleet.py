"""Servers added, removed, re-keyed and listed from the command line, against a running
dashboard: servers.json is never left half-written, and each problem is one line."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import HERE, SECRET, Dashboard, go_report, server_entry, wait_until
from websockets.exceptions import InvalidStatus

from sss import fleet

INSTALL_LINE = re.compile(r"^curl -fsSL (\S+)/install\.sh \| sh -s -- --id (\S+) --secret (\S+)"
                          r"( --auto-update)?$", re.M)


def command(dash: Dashboard, *args: str, config: Path | None = None,
            code: int = 0) -> str:
    """dashboard.py with a server command, as an operator runs it; its stdout (stderr when
    it fails, which must be one line)."""
    result = subprocess.run([sys.executable, str(HERE / "dashboard.py"), *args, "--config",
                             str(config or dash.config_path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == code, (result.stdout, result.stderr)
    if code:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr
    return result.stdout


def ids(dash: Dashboard) -> list[str]:
    return [s["id"] for s in dash.get_json("/api/servers")]


def test_add_rotate_list_and_remove_against_a_running_dashboard(
        make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(publicUrl="https://status.example.com/")
    os.chmod(dash.config_path, 0o640)
    out = command(dash, "add-server", "web-9", "--name", "Web 9", "--group", "Frankfurt",
                  "--country", "DE", "--traffic-limit", "2 TiB")
    assert re.search(rf"added web-9 to .*; the dashboard \(pid {dash.process.pid}\) reloaded it",
                     out), out
    url, sid, secret, updates = INSTALL_LINE.search(out).groups()
    assert (url, sid, updates) == ("https://status.example.com", "web-9", None)
    assert ids(dash)[-1] == "web-9"
    document = json.loads(dash.config_path.read_text())
    assert [s["id"] for s in document["servers"]] == ["alpha", "beta", "never", "web-9"]
    assert document["servers"][-1] == {"id": "web-9", "name": "Web 9", "group": "Frankfurt",
                                       "countryCode": "de", "secret": secret,
                                       "traffic": {"limit": "2 TiB"}}
    assert document["publicUrl"] == "https://status.example.com/"  # the rest as it was
    assert stat.S_IMODE(dash.config_path.stat().st_mode) == 0o640  # its mode kept
    with dash.agent("web-9", secret) as agent:  # the printed secret works
        agent.send(json.dumps(go_report()))
        wait_until(lambda: "yes" in command(dash, "list-servers").splitlines()[-1])
    listing = command(dash, "list-servers")
    assert re.search(r"^web-9\s+Web 9\s+Frankfurt\s+no\s+-$", listing, re.M), listing
    assert secret not in listing and SECRET not in listing

    out = command(dash, "rotate-secret", "web-9")
    rotated = INSTALL_LINE.search(out).group(3)
    assert rotated != secret and "reloaded it" in out
    with pytest.raises(InvalidStatus), dash.agent("web-9", secret):
        pass
    with dash.agent("web-9", rotated):
        pass

    out = command(dash, "remove-server", "web-9")
    assert "removed web-9" in out and "sh -s -- --uninstall" in out
    assert "web-9" not in ids(dash)
    log = dash.log_text()
    assert secret not in log and rotated not in log


def test_each_problem_is_one_line_and_exit_2(make_dashboard: Any, tmp_path: Path) -> None:
    dash: Dashboard = make_dashboard()
    before = dash.config_path.read_text()
    assert "exists already" in command(dash, "add-server", "alpha", code=2)
    assert "no server with id 'ghost'" in command(dash, "remove-server", "ghost", code=2)
    assert "no server with id 'ghost'" in command(dash, "rotate-secret", "ghost", code=2)
    assert "--country 'Germany'" in command(dash, "add-server", "web-9", "--country",
                                            "Germany", code=2)
    assert "id 'x'" in command(dash, "add-server", "x", code=2)
    assert 'traffic.limit' in command(dash, "add-server", "web-9", "--traffic-limit", "lots",
                                      code=2)
    # servers.json that cannot be written (its temporary file's place is taken).
    (dash.config_path.parent / "servers.json.tmp").mkdir()
    assert "cannot write it" in command(dash, "add-server", "web-9", code=2)
    (dash.config_path.parent / "servers.json.tmp").rmdir()
    assert dash.config_path.read_text() == before
    # A servers.json the running dashboard does not run with: it reloads its own, and the
    # command says it did not take this one.
    other = tmp_path / "other.json"
    other.write_text(before)
    problem = command(dash, "add-server", "web-9", "--data", str(dash.data), config=other,
                      code=2)
    assert f"the dashboard (pid {dash.process.pid}) did not reload" in problem
    assert "web-9" in other.read_text()  # saved all the same


def test_a_kill_between_write_and_rename_leaves_servers_json_whole(
        make_dashboard: Any) -> None:
    """The command is killed (SIGKILL) at the moment it would rename the new file over
    servers.json: the old file stays, whole; the next command works."""
    dash: Dashboard = make_dashboard(start=False)
    before = dash.config_path.read_text()
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal, sys
sys.path.insert(0, {str(HERE)!r})
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
import dashboard
dashboard.main(["add-server", "web-9", "--config", {str(dash.config_path)!r}])
"""], capture_output=True, text=True, timeout=30)
    assert killed.returncode == -9, killed.stderr
    assert dash.config_path.read_text() == before
    assert "web-9" in (dash.config_path.parent / "servers.json.tmp").read_text()  # not used
    out = command(dash, "add-server", "web-9")
    assert "no dashboard is running" in out and "reload it" in out
    assert json.loads(dash.config_path.read_text())["servers"][-1]["id"] == "web-9"
    assert not (dash.config_path.parent / "servers.json.tmp").exists()


def test_install_lines_say_what_the_dashboard_offers() -> None:
    document = {"servers": [server_entry("web-1")], "agentUpdates": True}
    assert fleet.agent_flags(document, "web-2", "s") == "--id web-2 --secret s --auto-update"
    assert fleet.install_line("", "--uninstall") == \
        "curl -fsSL http://DASHBOARD:8900/install.sh | sh -s -- --uninstall"
    with pytest.raises(fleet.CommandError, match="exists already"):
        fleet.with_server(document, {"id": "web-1"})
