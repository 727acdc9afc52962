"""Inside the box (issue 34): temperatures, containers, top processes while watched. Each
source is parsed from files laid out as the kernel lays them out (tests/fixtures/sys), then
read end to end by a real agent, through a real dashboard, to /metrics, an alert's webhook,
history and the page."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socketserver
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    HERE,
    SECRET,
    Dashboard,
    card,
    go_report,
    server_entry,
    wait_until,
)
from test_alerts import Receiver
from websockets.exceptions import ConnectionClosed

import agent
from sss import alerts, history, limits, reports, watch

SYS_FIXTURES = HERE / "tests" / "fixtures" / "sys"


# --- temperatures: the sources --------------------------------------------------------


def test_hwmon_with_labels_numbers_repeats_and_ignores_thermal_zones() -> None:
    sensors = agent.find_temperature_sensors(SYS_FIXTURES / "intel-desktop")
    assert sensors == [
        ("acpitz", "class/hwmon/hwmon0/temp1_input"),  # no label: the chip's name
        ("Composite #1", "class/hwmon/hwmon1/temp1_input"),  # two NVMe drives
        ("Sensor 1", "class/hwmon/hwmon1/temp2_input"),
        # hwmon2 is a battery: no temperature. hwmon3 before hwmon10, temp3 before temp10.
        ("Package id 0", "class/hwmon/hwmon3/temp1_input"),
        ("Core 0", "class/hwmon/hwmon3/temp2_input"),
        ("Core 1", "class/hwmon/hwmon3/temp3_input"),
        ("Core 8", "class/hwmon/hwmon3/temp10_input"),
        ("Composite #2", "class/hwmon/hwmon10/temp1_input")]
    # thermal_zone* repeat hwmon's acpitz and package: not read where hwmon has sensors.


def test_hwmon_without_labels_old_drivers_and_unconnected_inputs() -> None:
    root = SYS_FIXTURES / "amd-server"
    sensors = agent.find_temperature_sensors(root)
    assert [name for name, _ in sensors] == [
        "Tctl", "Tccd1", "drivetemp #1", "drivetemp #2", "it8721 #1", "it8721 #2",
        "it8721 #3", "w83627hf"]
    thermometer = agent.Thermometer(root)
    # The Super I/O's unconnected inputs (-128 and 255 °C) are no readings.
    assert thermometer.read() == (("Tctl", 52.1), ("Tccd1", 48.5), ("drivetemp #1", 31.0),
                                  ("drivetemp #2", 33.0), ("it8721 #2", 36.0),
                                  ("w83627hf", 29.5))


def test_thermal_zones_where_hwmon_has_none_and_nothing_on_a_vps() -> None:
    thermometer = agent.Thermometer(SYS_FIXTURES / "arm-board")
    assert thermometer.read() == (("cpu-thermal", 48.7), ("gpu-thermal", 47.2))
    assert agent.Thermometer(SYS_FIXTURES / "vps").read() == ()
    assert agent.Thermometer(SYS_FIXTURES / "nowhere").read() == ()
    assert [agent.celsius(text) for text in ("45000\n", "-5500", "", "n/a", "-128000")] == [
        45.0, -5.5, None, None, None]


def test_the_thermometer_rereads_open_files_and_looks_up_sensors_again(tmp_path: Path) -> None:
    root = shutil.copytree(SYS_FIXTURES / "arm-board", tmp_path / "sys")
    thermometer = agent.Thermometer(root)
    assert thermometer.read()[0] == ("cpu-thermal", 48.7)
    (root / "class/thermal/thermal_zone0/temp").write_text("71250\n")  # the same file
    assert thermometer.read()[0] == ("cpu-thermal", 71.2)
    shutil.rmtree(root / "class/thermal/thermal_zone1")  # (sysfs: ENODEV, read as none)
    thermometer.looked -= agent.SENSORS_REFRESH  # a minute later the list is looked up
    assert thermometer.read() == (("cpu-thermal", 71.2),)
    assert len(thermometer.sensors) == 1


def test_this_machines_sensors_end_to_end() -> None:
    sensors = agent.find_temperature_sensors(Path("/sys"))
    if not sensors:
        pytest.skip("this machine has no temperature sensor in /sys/class/hwmon or "
                    "/sys/class/thermal (a VM or a container)")
    readings = agent.Thermometer(Path("/sys")).read()
    assert readings and all(-60 <= value <= 200 for _, value in readings)
    message = agent.one_message(agent.Settings(server="", server_id="here", secret="",
                                               once=True))
    assert reports.validate_report(json.dumps(message))["extraInfo"]["temperatures"]


def test_psutil_sensors_are_named_and_checked_the_same_way() -> None:
    class Reading:
        def __init__(self, label: str, current: float) -> None:
            self.label, self.current = label, current

    class FakePsutil:  # psutil's sensors_temperatures() shape, as on FreeBSD
        Error = OSError

        @staticmethod
        def sensors_temperatures() -> dict[str, list[Reading]]:
            return {"coretemp": [Reading("", 40.04), Reading("", 41.0)],
                    "acpitz": [Reading("", -128.0)]}

    collector = agent.PsutilCollector.__new__(agent.PsutilCollector)
    collector.psutil = FakePsutil()
    assert collector.temperatures() == (("coretemp #1", 40.0), ("coretemp #2", 41.0))


# --- temperatures: the dashboard ------------------------------------------------------


def test_temperatures_are_validated_and_the_hottest_is_kept() -> None:
    record = reports.validate_report(json.dumps(go_report(extraInfo={"temperatures": [
        {"name": "Core 0", "celsius": 43}, {"name": "Outside", "celsius": -12.5}]})))
    assert history.hottest(record["extraInfo"]["temperatures"]) == 43
    assert alerts.observed_values(record)["temperature"] == 43
    for temperatures, reason in (
            ([{"name": "x"}], "missing_field"), ([{"celsius": 40}], "missing_field"),
            ([{"name": "x", "celsius": -101}], "out_of_range"),
            ([{"name": "x", "celsius": 301}], "out_of_range"),
            ([{"name": "x", "celsius": True}], "wrong_type"),
            ([{"name": "x" * 65, "celsius": 1}], "string_too_long"),
            ([{"name": str(n), "celsius": 1} for n in range(33)], "too_many_items")):
        with pytest.raises(reports.ReportError) as refused:
            reports.validate_report(json.dumps(go_report(extraInfo={
                "temperatures": temperatures})))
        assert refused.value.reason == reason, temperatures
    assert alerts.metric_value("temperature", 85.04) == "85 °C"


def test_a_history_file_from_before_temperatures_gains_the_columns(
        make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False)
    dash.data.mkdir()
    old = [c for c in history.COLUMNS if not c.startswith("temperature")]
    db = sqlite3.connect(dash.data / "history.db")
    db.execute(f"CREATE TABLE samples ({', '.join(old)}, PRIMARY KEY (tier, server, t))")
    db.execute(f"INSERT INTO samples (tier, server, t, n, online, watched, cpu) "
               f"VALUES (0, 'alpha', {int(time.time()) // 60 * 60 - 120}, 1, 60, 60, 12.5)")
    db.commit()
    db.close()
    dash.start("--history-resolution", "60")
    answer = dash.get_json("/api/history?id=alpha&range=1h")
    assert 12.5 in answer["cpu"] and set(answer["temperature"]) == {None}


def reported(dash: Dashboard, count: int) -> dict[str, Any] | None:
    """The servers that reported, by id, once there are `count` of them."""
    servers = {s["id"]: s for s in dash.get_json("/api/servers") if s.get("cpuInfo")}
    return servers if len(servers) == count else None


def hot_sysfs(tmp_path: Path) -> Path:
    """The desktop's sysfs with its eighth core at 85 °C."""
    root = shutil.copytree(SYS_FIXTURES / "intel-desktop", tmp_path / "sys")
    (root / "class/hwmon/hwmon3/temp10_input").write_text("85000\n")
    return root


def test_temperatures_from_an_agent_to_metrics_alerts_history_and_the_page(
        make_dashboard: Any, make_agent: Any, page_on: Any, tmp_path: Path) -> None:
    hook = Receiver()
    try:
        dash: Dashboard = make_dashboard(
            [server_entry("alpha", name="Alpha"), server_entry("beta", name="Beta")],
            start=False,
            notifiers=[{"name": "ops", "type": "webhook", "url": hook.url + "/sss"}],
            alerts=[{"name": "hot", "metric": "temperature", "above": 80, "notify": ["ops"]}],
        ).start("--history-resolution", "1")
        common = ("--server", dash.url("/ws-report", "ws"), "--secret", SECRET,
                  "--interval", "1", "--min-interval", "1", "--no-adaptive")
        make_agent(*common, "--id", "alpha", "--sysfs", str(hot_sysfs(tmp_path)))
        make_agent(*common, "--id", "beta", env={"SSS_SYSFS": str(SYS_FIXTURES / "vps")})

        posted = hook.wait(1)[0][2]
        assert posted["metric"] == "temperature" and posted["value"] == 85.0
        assert posted["text"] == "🔥 Alpha temperature 85 °C (above 80 °C)"
        metrics = dash.get("/metrics")[2].decode()
        assert 'sss_temperature_celsius{id="alpha",name="Alpha",sensor="Core 8"} 85.0' in metrics
        assert 'sensor="Composite #2"} 35.9' in metrics and 'id="beta"' not in "".join(
            line for line in metrics.splitlines() if "temperature" in line)
        servers = wait_until(lambda: reported(dash, 2))
        assert len(servers["alpha"]["extraInfo"]["temperatures"]) == 8
        assert "temperatures" not in servers["beta"]["extraInfo"]  # a VPS sends nothing
        answer = wait_until(lambda: (a := dash.get_json("/api/history?id=alpha&range=1h"))
                            and 85.0 in a["temperature"] and a)
        assert set(answer["temperature"]) <= {None, 85.0}

        for width in (1280, 375):
            page = page_on(dash, viewport={"width": width, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            line = card(page, "alpha").locator(".inside .temp")
            line.wait_for(timeout=10_000)
            assert line.inner_text() == "🌡 85.0 °C Core 8"
            assert "bad" not in (line.get_attribute("class") or "")
            assert "warn" in (line.get_attribute("class") or "")
            assert "Composite #2 35.9 °C" in (line.get_attribute("title") or "")
            assert card(page, "beta").locator(".inside").is_hidden()
            card(page, "alpha").locator("button.more").click()
            details = card(page, "alpha").locator(".details")
            assert "Package id 0 45.0 °C · Core 0 43.0 °C" in details.inner_text()
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            page.goto(dash.url("/#/server/alpha"))
            titles = page.locator(".plot h3")
            titles.nth(7).wait_for(timeout=10_000)
            assert titles.all_inner_texts()[-1] == "Temperature"
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            page = page_on(dash, "/#/server/beta", viewport={"width": width, "height": 900})
            page.locator(".plot h3").nth(6).wait_for(timeout=10_000)  # drawn in one go
            assert "Temperature" not in page.locator(".plot h3").all_inner_texts()
            assert errors == [], errors
    finally:
        hook.close()


# --- containers: the sources ----------------------------------------------------------

DOCKER_A = "3f4e8a1c2b9d" + "0" * 52


def test_containers_are_found_by_their_cgroups() -> None:
    def found(machine: str) -> list[tuple[str, str]]:
        return agent.find_containers(SYS_FIXTURES / machine / "fs/cgroup")

    assert found("docker-host") == [  # the daemon and other services are no containers
        (f"system.slice/docker-{DOCKER_A}.scope", "3f4e8a1c2b9d"),
        (f"system.slice/docker-9b1c7d2e4f60{'1' * 52}.scope", "9b1c7d2e4f60")]
    assert found("docker-cgroupfs") == [(f"docker/77aa00bb11cc{'2' * 52}", "77aa00bb11cc")]
    assert [name for _, name in found("podman-rootless")] == ["c0ffee000001"]  # not conmon
    assert [name for _, name in found("systemd-host")] == ["db1", "build-box", "web-1"]
    assert found("vps") == [] and found("cgroup-v1") == []


def test_a_containers_cpu_memory_and_io_over_an_interval(tmp_path: Path) -> None:
    sysfs = shutil.copytree(SYS_FIXTURES / "docker-host", tmp_path / "sys")
    watch = agent.ContainerWatch(sysfs, sockets=())
    before = watch.read()
    assert [(c.name, c.cpu_usec, c.memory, c.io, c.net) for c in before] == [
        ("3f4e8a1c2b9d", 8123456, 52428800, (1097728, 40960), None),
        ("9b1c7d2e4f60", 120000, 7340032, (0, 0), None)]
    busy = sysfs / f"fs/cgroup/system.slice/docker-{DOCKER_A}.scope"
    (busy / "cpu.stat").write_text("usage_usec 9623456\nuser_usec 1\n")  # +1.5 s of CPU
    (busy / "io.stat").write_text("259:0 rbytes=1093632 wbytes=1089536\n"
                                  "8:0 rbytes=4096 wbytes=0\n")  # +1 MiB written
    after = watch.read()
    rows = agent.container_rows(before, after, 2.0)
    assert rows[0] == {"name": "3f4e8a1c2b9d", "cpu": 75.0, "memory": 52428800, "read": 0,
                       "write": 524288}  # percent of one CPU, as docker stats shows it
    assert rows[1]["cpu"] == 0.0 and "rx" not in rows[1]  # no process to read a network of
    # A container seen once waits for its second sample; one gone is simply not there.
    assert agent.container_rows((), after, 2.0) == []


def test_network_is_read_from_the_containers_own_namespace(tmp_path: Path) -> None:
    # This process's network namespace stands for "the host's": not counted.
    root = tmp_path / "sys/fs/cgroup"
    group = root / f"system.slice/docker-{DOCKER_A}.scope"
    group.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu io memory\n")
    (group / "cpu.stat").write_text("usage_usec 1\n")
    (group / "memory.current").write_text("1\n")
    (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    watch = agent.ContainerWatch(tmp_path / "sys", sockets=())
    assert watch.read()[0].net is None  # sharing the host's network
    assert agent.first_process(SYS_FIXTURES / "systemd-host/fs/cgroup/lxc.payload.db1") == \
        "4199700"  # an LXC guest's processes are in its own subgroups


def test_a_cgroup_v1_host_says_so_once_and_sends_nothing(caplog: Any) -> None:
    caplog.set_level("INFO", logger="sss.agent")
    watch = agent.ContainerWatch(SYS_FIXTURES / "cgroup-v1", sockets=())
    assert watch.read() == () and watch.read() == ()
    said = [r.message for r in caplog.records if "cgroup v1" in r.message]
    assert said == ["containers are read from cgroup v2; this host mounts cgroup v1: no "
                    "container figures"]
    caplog.clear()
    agent.ContainerWatch(SYS_FIXTURES / "vps", sockets=())  # no cgroup mounted: nothing said
    assert not caplog.records


class DockerAPI:
    """Docker's API on a unix socket, as dockerd serves it: GET /containers/json."""

    def __init__(self, path: Path, answer: bytes) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = answer if self.path == "/containers/json" else b"{}"
                self.send_response(200 if self.path == "/containers/json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def address_string(self) -> str:
                return "unix"

            def log_message(self, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_names_come_from_dockers_api_where_its_socket_is_readable(tmp_path: Path) -> None:
    answer = json.dumps([{"Id": DOCKER_A, "Names": ["/web<script>"], "Image": "nginx"},
                         {"Id": "x", "Names": "not a list"}, "junk"]).encode()
    api = DockerAPI(tmp_path / "docker.sock", answer)
    try:
        watch = agent.ContainerWatch(SYS_FIXTURES / "docker-host",
                                     sockets=(str(tmp_path / "docker.sock"),
                                              str(tmp_path / "missing.sock")))
        names = [c.name for c in watch.read()]
        assert names == ["web<script>", "9b1c7d2e4f60"]  # escaped where shown, not here
    finally:
        api.close()
    assert agent.docker_names(b"not json") == {} and agent.docker_names(b"{}") == {}


def test_this_machines_containers_end_to_end() -> None:
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("this machine mounts cgroup v1: containers are read from cgroup v2 only")
    groups = agent.find_containers(Path("/sys/fs/cgroup"))
    if not groups:
        pytest.skip("no Docker, Podman, LXC or nspawn container runs on this machine")
    readings = agent.ContainerWatch(Path("/sys")).read()
    assert readings and all(r.cpu_usec >= 0 and r.memory > 0 for r in readings)


# --- containers: the dashboard and the page ---------------------------------------------


def test_containers_from_an_agent_to_the_page(make_dashboard: Any, make_agent: Any,
                                              page_on: Any, tmp_path: Path) -> None:
    dash: Dashboard = make_dashboard([server_entry("alpha", name="Alpha"),
                                      server_entry("beta", name="Beta")])
    sysfs = shutil.copytree(SYS_FIXTURES / "systemd-host", tmp_path / "sys")
    common = ("--server", dash.url("/ws-report", "ws"), "--secret", SECRET,
              "--interval", "1", "--min-interval", "1", "--no-adaptive")
    make_agent(*common, "--id", "alpha", "--sysfs", str(sysfs))
    make_agent(*common, "--id", "beta", "--sysfs", str(SYS_FIXTURES / "vps"))
    servers = wait_until(lambda: reported(dash, 2))
    assert servers["alpha"]["extraInfo"]["containerCount"] == 3
    assert {c["name"] for c in servers["alpha"]["extraInfo"]["containers"]} == {
        "db1", "build-box", "web-1"}
    assert "containers" not in servers["beta"]["extraInfo"]
    for width in (1280, 375):
        page = page_on(dash, viewport={"width": width, "height": 900})
        boxes = card(page, "alpha").locator(".inside .boxes")
        boxes.wait_for(timeout=10_000)
        assert boxes.inner_text() == "📦 3 containers"
        assert card(page, "beta").locator(".inside").is_hidden()
        card(page, "alpha").locator("button.more").click()
        tables = card(page, "alpha").locator(".details table")
        assert tables.count() == 2
        names = tables.nth(1).locator("td:first-child").all_inner_texts()
        assert sorted(names) == ["build-box", "db1", "web-1"]
        assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_bad_container_and_sensor_lists_are_refused() -> None:
    for extra, reason in (
            ({"containers": [{"name": "x"}]}, "missing_field"),
            ({"containers": [{"name": "x", "cpu": -1}]}, "negative"),
            ({"containers": [{"name": "x", "cpu": 1}] * 65}, "too_many_items"),
            ({"containerCount": "3"}, "wrong_type")):
        with pytest.raises(reports.ReportError) as refused:
            reports.validate_report(json.dumps(go_report(extraInfo=extra)))
        assert refused.value.reason == reason, extra


# --- top processes, only while someone watches -----------------------------------------


def test_watches_open_renew_close_lapse_and_coalesce() -> None:
    w = watch.Watches()
    assert w.frames_due(0.0) == []  # nobody watches: nothing is asked
    assert w.watch("v1", "web", 0.0) and w.frames_due(0.0) == [("web", watch.AGENT_SECONDS)]
    assert w.watch("v2", "web", 1.0) and w.frames_due(1.0) == []  # two viewers, one agent
    w.forget("v1")  # the first leaves: the second still watches
    assert w.frames_due(5.0) == []
    w.watch("v2", "web", 15.0)  # the page renews; the agent is renewed every 20 s
    assert w.frames_due(19.0) == [] and w.frames_due(20.0) == [("web", watch.AGENT_SECONDS)]
    assert w.frames_due(40.0) == w.frames_due(60.0) == [("web", watch.AGENT_SECONDS)]
    # v2's page died without a word: its watch lapses 60 s after the last renewal.
    assert w.frames_due(74.0) == [] and w.frames_due(75.0) == [("web", 0.0)]
    assert w.frames_due(200.0) == [] and w.told == {}
    # However a viewer toggles, the agent hears once every MIN_GAP seconds at most.
    sent = []
    for n in range(100):
        now = 300 + n * 0.05
        if n % 2:
            w.unwatch("v3", "db")
        else:
            w.watch("v3", "db", now)
        sent += w.frames_due(now)
    assert len(sent) <= 5 * 1.0 / watch.MIN_GAP + 1
    # A viewer watches at most MAX_WATCHES servers; an agent that reconnects is told again.
    assert [w.watch("v4", f"s{n}", 400.0) for n in range(5)] == [True] * 4 + [False]
    w.frames_due(400.0)
    w.agent_connected("s0")
    assert w.frames_due(401.0) == [("s0", watch.AGENT_SECONDS)]
    # The page renews as often as the dashboard expects, well within a watch's life.
    page = (HERE / "index.html").read_text()
    assert f"const WATCH_RENEW_MS = {watch.RENEW_SECONDS * 1000:.0f};" in page
    assert 2 * watch.RENEW_SECONDS < watch.WATCH_SECONDS <= watch.AGENT_SECONDS
    assert watch.AGENT_SECONDS <= agent.MAX_WATCH_SECONDS
    assert watch.viewer_request('{"type": "watch", "id": "web"}') == ("watch", "web")
    for frame in ("", "[]", '{"type": "watch"}', '{"type": "run", "id": "web"}',
                  '{"type": "watch", "id": 5}'):
        assert watch.viewer_request(frame) is None


def test_top_processes_by_cpu_and_by_memory() -> None:
    now = {1: ("systemd", 5.0, 6000), 20: ("postgres", 7.0, 90000), 30: ("python3", 3.0, 5000),
           40: ("new one", 0.5, 10)}
    before = {1: 5.0, 20: 6.0, 30: 1.0}  # pid 40 started within the interval
    rows = agent.top_processes(before, now, seconds=2.0, top=2)
    assert rows == [
        {"pid": 30, "name": "python3", "cpu": 100.0, "memory": 5000},  # 2 s of CPU in 2 s
        {"pid": 20, "name": "postgres", "cpu": 50.0, "memory": 90000},
        {"pid": 1, "name": "systemd", "cpu": 0.0, "memory": 6000}]  # by memory
    assert agent.stat_fields("42 (tmux: server) S 1 42 42 0 -1 4194624 1 2 3 4 "
                             "170 31 0 0 20 0 1 0 99 1 2") == ("tmux: server", 201, 2)
    assert agent.parse_processes('{"type": "processes", "seconds": 60, "top": 10}') == (60.0, 10)
    assert agent.parse_processes('{"type": "processes", "seconds": 9999}') == (120.0, 10)
    for frame in ('{"type": "processes"}', '{"type": "processes", "seconds": -1}',
                  '{"type": "processes", "seconds": 60, "top": 1000}', '{"type": "probes"}'):
        assert agent.parse_processes(frame) is None


@pytest.mark.parametrize("use_psutil", [False, True], ids=["proc", "psutil"])
def test_processes_are_read_only_while_watched(use_psutil: bool) -> None:
    names = agent.ProcessWatch(with_args=False, use_psutil=use_psutil)
    assert names.read(time.monotonic()) is None and names.cpu == {}  # not watched: nothing
    names.asked(60.0, 10, time.monotonic())
    busy_until = time.monotonic() + 0.3
    while time.monotonic() < busy_until:
        pass  # this process is busy, so it is on top
    rows = names.read(time.monotonic())
    assert rows is not None and len(rows) <= 20
    mine = next(row for row in rows if row["pid"] == os.getpid())
    assert mine["cpu"] > 20 and mine["memory"] > 10 * 2**20
    assert mine["name"] == Path(sys.executable).name[:15] or mine["name"].startswith("python")
    names.asked(0.0, 10, time.monotonic())
    assert names.read(time.monotonic()) is None and names.cpu == {}
    everyone = agent.psutil_processes(psutil, with_args=True) if use_psutil else \
        agent.read_processes(agent.PROC, with_args=True)
    command = everyone[os.getpid()][0]
    assert Path(command.split()[0]).name.startswith("python") and " " in command
    assert len(command) <= 64


def processes_frames(agent_ws: Any, timeout: float) -> list[dict[str, Any]]:
    """The processes frames an agent connection gets within `timeout` s."""
    frames, deadline = [], time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(agent_ws.recv(timeout=left))
        except TimeoutError:
            break
        if message.get("type") == "processes":
            frames.append(message)
    return frames


def test_the_watch_protocol_between_viewers_dashboard_and_agent(make_dashboard: Any) -> None:
    from test_private import HASH, session_cookie

    dash: Dashboard = make_dashboard(
        [server_entry("alpha"), server_entry("vault", hidden=True)],
        viewers={"public": True, "users": {"alice": HASH}})
    with dash.agent("alpha") as alpha, dash.agent("vault") as vault, \
            dash.viewer() as one, dash.viewer() as two:
        one.send(json.dumps({"type": "watch", "id": "alpha"}))
        first = processes_frames(alpha, 3)
        assert first == [{"type": "processes", "seconds": 60.0, "top": 10}]
        alpha.send(json.dumps(go_report()))  # the Go agent ignores the frame and goes on
        wait_until(lambda: dash.metric("sss_reports_accepted_total") == 1)
        two.send(json.dumps({"type": "watch", "id": "alpha"}))  # a second viewer: no news
        one.send(json.dumps({"type": "unwatch", "id": "alpha"}))  # the other still watches
        assert processes_frames(alpha, 3) == []
        two.close()  # the last one leaves: stop
        assert processes_frames(alpha, 4) == [{"type": "processes", "seconds": 0.0, "top": 10}]
        # A hidden server is watched only by signed-in viewers.
        one.send(json.dumps({"type": "watch", "id": "vault"}))
        one.send(json.dumps({"type": "watch", "id": "nobody"}))
        assert processes_frames(vault, 3) == []
        cookie = session_cookie(dash)
        with dash.viewer(additional_headers={"Cookie": cookie}) as alice:
            alice.send(json.dumps({"type": "watch", "id": "vault"}))
            assert processes_frames(vault, 3)[0]["seconds"] == 60.0
        # A viewer that floods the dashboard with frames is hung up on.
        for _ in range(limits.VIEWER_FRAME_BURST + 5):
            one.send(json.dumps({"type": "watch", "id": "alpha"}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                one.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_top_processes_from_a_real_agent_to_the_page(make_dashboard: Any, make_agent: Any,
                                                     page_on: Any) -> None:
    dash: Dashboard = make_dashboard([server_entry("alpha", name="Alpha")])
    reporter = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                          "--secret", SECRET, "--interval", "1", "--min-interval", "1",
                          "--no-adaptive")
    wait_until(lambda: reported(dash, 1))
    assert "topProcesses" not in reported(dash, 1)["alpha"]["extraInfo"]  # nobody watches
    for width in (1280, 375):
        page = page_on(dash, "/#/server/alpha", viewport={"width": width, "height": 900})
        tops = page.locator("#tops .top-panel")
        tops.nth(1).wait_for(timeout=10_000)
        assert tops.locator("h3").all_inner_texts() == ["Top processes by CPU",
                                                        "Top processes by memory"]
        assert 1 <= tops.nth(0).locator("tr").count() - 1 <= 10
        server = reported(dash, 1)["alpha"]
        assert 1 <= len(server["extraInfo"]["topProcesses"]) <= 20
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.goto(dash.url("/#/"))  # the view closes: the agent is told to stop
        reporter.wait_for_log("nobody watches: no more top processes")
    wait_until(lambda: "topProcesses" not in reported(dash, 1)["alpha"]["extraInfo"])
