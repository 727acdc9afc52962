"""Tests for agent.py: the pure pieces directly, the transport against real servers."""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import bench
import psutil
import pytest
from conftest import (
    AGENT_PYTHON,
    HERE,
    SECRET,
    Dashboard,
    LoggedProcess,
    free_port,
    go_report,
    require_system_websockets,
    require_tool,
    server_entry,
    server_in,
    tls_dashboard,
    wait_until,
)
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.frames import Close
from websockets.sync.server import ServerConnection, serve

import agent
import dashboard
from sss import reports, timings

README = (HERE / "README.md").read_text()
SETTINGS = agent.Settings(server="ws://127.0.0.1:1/ws-report", server_id="web-1", secret=SECRET)
FACTS = agent.HostFacts("linux", "debian", "debian", "12", "6.1.0", "x86_64", "kvm",
                        ("Test CPU x 2 Virtual Core",))


def sample(at: float = 100.0, **fields: Any) -> agent.Sample:
    """A synthetic sample; fields override the defaults."""
    values: dict[str, Any] = dict(
        monotonic=at, wall=1_764_000_000 + at, cpu=(10.0, 100.0),
        memory=(2 * 2**30, 2**30, 50.0), swap=(2**30, 0, 2**30, 0.0),
        partitions=(agent.Partition("/dev/vda1", "/", "ext4", 100, 40, 60),),
        nic_bytes={"eth0": (1000, 2000)}, disk_io=(0, 0), load=(0.5, 0.25, 0.125),
        boot_time=1_764_000_000.0, tcp=3, udp=1, processes=42)
    values.update(fields)
    return agent.Sample(**values)


# --- the message ---------------------------------------------------------------


def assert_go_types(reference: Any, ours: Any, path: str = "report") -> None:
    """Every field the Go model has is present with a JSON type Go can decode."""
    if isinstance(reference, dict):
        assert isinstance(ours, dict), path
        for key, value in reference.items():
            assert key in ours, f"{path}.{key} missing"
            assert_go_types(value, ours[key], f"{path}.{key}")
    elif isinstance(reference, list):
        assert isinstance(ours, list), path
        for item in ours:
            assert_go_types(reference[0], item, f"{path}[]")
    elif isinstance(reference, (bool, str)):
        assert type(ours) is type(reference), path
    elif isinstance(reference, int):  # Go uint64/int64: a float would not decode
        assert type(ours) is int and ours >= 0, path
    else:
        assert type(ours) in (int, float), path


def test_message_from_this_machine_is_complete_and_valid() -> None:
    settings = agent.Settings(server="", server_id="web-1", secret="")
    collector = agent.Collector(settings)
    before = collector.sample()
    time.sleep(0.2)
    after = collector.sample()
    message = agent.build_message("web-1", agent.host_facts(), before, after, 5.0)
    assert_go_types(go_report(), message)
    record = reports.validate_report(agent.encode(message))
    assert set(record) >= set(reports.VIEW_FIELDS)
    # Plausible numbers, checked against psutil directly.
    memory = psutil.virtual_memory()
    assert message["virtualMemoryInfo"]["total"] == memory.total
    assert 0 <= message["cpuInfo"]["percent"] <= 100
    assert abs(message["hostInfo"]["uptime"] - (time.time() - psutil.boot_time())) < 5
    assert message["hostInfo"]["kernelVersion"] and message["hostInfo"]["platform"]
    assert message["diskInfo"]["total"] > 0 and message["diskInfo"]["partitions"]
    assert message["extraInfo"]["processes"] == pytest.approx(len(psutil.pids()), abs=20)
    assert message["reportInterval"] == 5.0
    assert message["id"] == "web-1" and message["ip"] == ""


def test_speeds_are_deltas_and_counter_resets_give_zero() -> None:
    before = sample(100.0, nic_bytes={"eth0": (1000, 2000), "eth1": (10, 10)},
                    disk_io=(5000, 5000), cpu=(10.0, 100.0))
    after = sample(102.0, nic_bytes={"eth0": (3000, 2500), "eth1": (5, 5), "eth2": (10**9, 1)},
                   disk_io=(9000, 1000), cpu=(15.0, 120.0))
    message = agent.build_message("web-1", FACTS, before, after, 5.0)
    # eth0: +2000/+500 over 2 s; eth1 went backwards: 0; eth2 appeared: 0.
    assert message["networkInfo"]["netInSpeed"] == 1000
    assert message["networkInfo"]["netOutSpeed"] == 250
    assert message["networkInfo"]["netInTransfer"] == 3000 + 5 + 10**9
    assert message["extraInfo"]["diskReadSpeed"] == 2000
    assert message["extraInfo"]["diskWriteSpeed"] == 0  # counter reset
    assert message["cpuInfo"]["percent"] == 25.0  # 5 busy of 20 seconds
    assert agent.cpu_percent((10.0, 100.0), (10.0, 100.0)) == 0.0  # no time passed
    assert agent.rate(10, 5, 1.0) == 0 and agent.rate(0, 10, 0) == 0


def tcp_udp(sample: agent.Sample) -> tuple[int, int]:
    assert sample.tcp is not None and sample.udp is not None
    return sample.tcp, sample.udp


def socket_counts_agree(quick: Callable[[], tuple[int, int]],
                        walk: Callable[[], tuple[int, int]], tolerance: int) -> bool:
    """Whether a walk of the socket tables (TCP, UDP) lands within `tolerance` of the quick
    counts read just before and just after it, on one of 20 tries.

    Earlier tests leave thousands of TIME_WAIT sockets that expire in batches, and parallel
    tests connect: a walk of a changing table is no snapshot (under churn, half of the walks
    fell outside such a bracket), so one quiet moment is what shows the counts agree."""
    for _ in range(20):
        before, walked, after = quick(), walk(), quick()
        if all(min(b, a) - tolerance <= w <= max(b, a) + tolerance
               for b, w, a in zip(before, walked, after)):
            return True
    return False


def test_socket_counts_match_proc_net_tables() -> None:
    text = ("sockets: used 15\nTCP: inuse 4 orphan 0 tw 42 alloc 4 mem 16\nUDP: inuse 2 mem 0\n"
            "UDPLITE: inuse 0\nTCP6: inuse 3\nUDP6: inuse 1\n")
    assert agent.socket_counts(text) == (4 + 3 + 42, 2 + 1)
    assert agent.socket_counts("") == (0, 0)

    def table_lines(kind: str) -> int:  # the slow way, for comparison
        return sum(len(Path(f"/proc/net/{kind}{v}").read_text().splitlines()) - 1
                   for v in ("", "6") if Path(f"/proc/net/{kind}{v}").exists())

    collector = agent.Collector(SETTINGS)
    assert socket_counts_agree(lambda: tcp_udp(collector.sample()),
                               lambda: (table_lines("tcp"), table_lines("udp")), tolerance=5)


def test_proc_readings_match_psutil() -> None:
    """Our one-read parsers of /proc agree with psutil's functions on this machine."""
    meminfo = agent.meminfo_bytes(Path("/proc/meminfo").read_text())
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    total, used, percent = agent.memory_from_meminfo(meminfo)
    assert total == memory.total
    assert abs(used - memory.used) < 64 * 2**20 and abs(percent - memory.percent) < 1
    swap_total, swap_used, swap_free, _ = agent.swap_from_meminfo(meminfo)
    assert swap_total == swap.total and abs(swap_free - swap.free) < 2**20
    assert swap_used == swap_total - swap_free
    small_swap = agent.meminfo_bytes("SwapTotal: 1000 kB\nSwapFree: 250 kB\n")
    assert agent.swap_from_meminfo(small_swap) == (1024000, 768000, 256000, 75.0)
    assert agent.memory_from_meminfo(agent.meminfo_bytes(
        "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\nBuffers: 50 kB\n"
        "Cached: 300 kB\nSReclaimable: 50 kB\n")) == (1024000, 409600, 40.0)

    assert agent.cpu_from_stat("cpu  100 0 50 800 50 0 0 0 20 0\n") == (150.0, 1000.0)
    _, total = agent.cpu_from_stat(Path("/proc/stat").read_text().splitlines()[0])
    times = psutil.cpu_times()
    psutil_total = sum(times) - times.guest - times.guest_nice
    assert abs(total / os.sysconf("SC_CLK_TCK") - psutil_total) < 5

    net_dev = Path("/proc/net/dev").read_text()
    ours = agent.nic_counters(net_dev, lambda name: True)
    assert set(ours) == set(psutil.net_io_counters(pernic=True))
    sample_dev = ("Inter-|   Receive\n face |bytes packets\n"
                  "  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n"
                  "    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n")
    assert agent.nic_counters(sample_dev, lambda n: n != "lo") == {"eth0": (1000, 2000)}

    collector = agent.Collector(SETTINGS)
    disks = agent.disk_bytes(Path("/proc/diskstats").read_text(), collector.is_disk)
    io = psutil.disk_io_counters()
    if io is not None:
        assert abs(disks[0] - io.read_bytes) < 2**24
        assert abs(disks[1] - io.write_bytes) < 2**26
    stats = ("   8       0 sda 10 0 100 0 20 0 200 0 0 0 0\n"
             "   8       1 sda1 5 0 60 0 10 0 150 0 0 0 0\n")
    assert agent.disk_bytes(stats, lambda name: name == "sda") == (100 * 512, 200 * 512)


def test_linux_readings_need_no_psutil() -> None:
    """Mounts, sizes, processes and boot time from /proc agree with psutil's."""
    mounts = agent.physical_mounts(Path("/proc/self/mounts").read_text(),
                                   Path("/proc/filesystems").read_text())
    assert {(m.device, m.mountpoint, m.fstype) for m in psutil.disk_partitions()} == set(mounts)
    sample_mounts = ("/dev/vda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n"
                     "/dev/vdb /mnt/my\\040disk xfs rw 0 0\ntank/home /home zfs rw 0 0\n")
    assert agent.physical_mounts(sample_mounts, "nodev\tproc\n\text4\n\txfs\nnodev\tzfs\n") == [
        ("/dev/vda1", "/", "ext4"), ("/dev/vdb", "/mnt/my disk", "xfs"),
        ("tank/home", "/home", "zfs")]
    fs = os.statvfs("/")
    usage = psutil.disk_usage("/")
    total, used, free = agent.statvfs_usage(fs.f_frsize, fs.f_blocks, fs.f_bfree, fs.f_bavail)
    assert total == usage.total and abs(used - usage.used) < 2**26
    assert abs(free - usage.free) < 2**26
    assert agent.boot_time_from_stat(Path("/proc/stat").read_text()) == psutil.boot_time()
    assert abs(agent.count_processes() - len(psutil.pids())) <= 5


def test_virtual_interfaces_are_left_out_by_default() -> None:
    names = ["eth0", "ens3", "lo", "docker0", "veth1a2b", "br-5f2", "virbr0", "vnet3", "tun0",
             "tap1", "cni0", "cali123", "flannel.1", "kube-ipvs0", "ifb0", "wg0"]
    kept = [n for n in names if agent.keep_nic(n, (), ())]
    assert kept == ["eth0", "ens3", "wg0"]
    assert [n for n in names if agent.keep_nic(n, (), ("wg*",))] == ["eth0", "ens3"]
    assert [n for n in names if agent.keep_nic(n, ("docker0", "eth*"), ())] == ["eth0",
                                                                                "docker0"]


def test_disk_counts_each_filesystem_once() -> None:
    gib = 2**30
    parts = (
        agent.Partition("/dev/vda1", "/", "ext4", 100 * gib, 40 * gib, 55 * gib),
        agent.Partition("/dev/vda1", "/srv/bind", "ext4", 100 * gib, 40 * gib, 55 * gib),
        agent.Partition("/dev/vdb", "/data", "btrfs", 50 * gib, 10 * gib, 40 * gib),
        agent.Partition("/dev/vdb", "/data/@home", "btrfs", 50 * gib, 10 * gib, 40 * gib),
        agent.Partition("tank/home", "/tank/home", "zfs", 30 * gib, 10 * gib, 20 * gib),
        agent.Partition("tank/backup", "/tank/backup", "zfs", 25 * gib, 5 * gib, 20 * gib),
    )
    total, used, free = agent.disk_totals(parts)
    assert used == (40 + 10 + 15) * gib
    assert free == (55 + 40 + 20) * gib
    assert total == (100 + 50 + 35) * gib
    message = agent.build_message("web-1", FACTS, sample(), sample(101.0, partitions=parts), 5)
    assert [p["mountPoint"] for p in message["diskInfo"]["partitions"]] == [
        "/", "/data", "/tank/home", "/tank/backup"]  # one row per filesystem
    assert message["diskInfo"]["usedPercent"] == round(65 / 180 * 100, 2)


def test_pseudo_filesystems_are_skipped() -> None:
    assert agent.keep_partition("/dev/vda1", "/", "ext4", ())
    assert not agent.keep_partition("/dev/loop3", "/snap/core/1", "squashfs", ())
    assert not agent.keep_partition("/dev/loop0", "/mnt/img", "ext4", ())
    assert not agent.keep_partition("tmpfs", "/run", "tmpfs", ())
    assert not agent.keep_partition("overlay", "/var/lib/docker/x", "overlay", ())
    assert not agent.keep_partition("/dev/vdb", "/mnt/backup", "ext4", ("/mnt/*",))


def test_backoff_follows_the_seed() -> None:
    delays = agent.backoff_delays()
    first = [next(delays) for _ in range(40)]
    assert first[:4] == pytest.approx([3, 3.6, 4.32, 5.184])
    assert max(first) == 600 and first[-1] == 600
    rng = random.Random(7)
    for delay in first:
        for _ in range(20):
            assert 0.9 * delay <= agent.jittered(delay, rng) <= delay


def test_a_fleet_comes_back_from_a_restart_spread_over_15_s() -> None:
    """10,000 agents lose a dashboard that is back 5 s later: simulated with the agent's
    own retry_delay and the spread the dashboard tells a fleet that size, every one is
    back within 15.4 s of the restart and no second sees more than 1,000 of them (the 10 %
    jitter put ~all in one second, a 10 s spread 1,700)."""
    rng = random.Random(3)
    down_until, agents = 5.0, 10_000
    spread = timings.reconnect_spread(agents)
    back_at, attempts_per_second = [], [0] * 60
    for _ in range(agents):
        now, retry, delays = 0.0, 0, agent.backoff_delays()
        while True:
            retry += 1
            now += agent.retry_delay(retry, True, next(delays), rng, spread)
            attempts_per_second[int(now)] += 1
            if now >= down_until:
                back_at.append(now)
                break
    assert spread == 15.4 and max(back_at) <= down_until + spread
    assert max(attempts_per_second) <= agents / 10
    # Agents that never connected keep the seed's schedule: 3 s, 3.6 s, ...
    assert agent.retry_delay(1, False, 3.0, rng) == pytest.approx(3.0, rel=0.1)


def test_the_reconnect_frame_is_taken_only_when_it_fits() -> None:
    """The dashboard's word on how long to spread retries (PROTOCOL.md), hostile until
    checked: anything else leaves the agent's own 10 s."""
    assert agent.parse_reconnect('{"type": "reconnect", "spread": 20}') == 20.0
    assert agent.parse_reconnect(b'{"type":"reconnect","spread":2.5}') == 2.5
    for other in ('{"type": "reconnect", "spread": 0.5}', '{"type": "reconnect", "spread": 61}',
                  '{"type": "reconnect", "spread": NaN}', '{"type": "reconnect", "spread": true}',
                  '{"type": "reconnect", "spread": "20"}', '{"type": "reconnect"}',
                  '{"type": "probes", "spread": 20}', "[20]", "not json", b"\xff",
                  "[" * 100_000):
        assert agent.parse_reconnect(other) is None, other
    rng = random.Random(1)
    assert all(0.5 <= agent.retry_delay(1, True, 3.0, rng) <= agent.RESTART_SPREAD
               for _ in range(1000))
    assert max(agent.retry_delay(1, True, 3.0, rng, 2.0) for _ in range(1000)) <= 2.0


def test_adaptive_interval_moves_both_ways_with_hysteresis() -> None:
    settings = agent.Settings(server="", server_id="", secret="", interval=5, min_interval=2,
                              max_interval=30)

    def feed(pace: agent.Pace, *loads: float) -> agent.Pace:
        for cpu in loads:
            pace = agent.adapt(pace, cpu, settings)
        return pace

    pace = feed(agent.Pace(5.0), 95, 95, 50, 95, 95)  # a dip resets the streak: no change
    assert pace.interval == 5.0
    pace = feed(pace, 95)
    assert pace.interval == pytest.approx(6.0)
    pace = feed(pace, *[99] * 60)
    assert pace.interval == 30
    pace = feed(pace, 5, 5)
    assert pace.interval == 30
    pace = feed(pace, 5)
    assert pace.interval == pytest.approx(25.0)
    pace = feed(pace, *[5] * 100)
    assert pace.interval == 2
    fixed = agent.Settings(server="", server_id="", secret="", adaptive=False)
    assert agent.adapt(agent.Pace(5.0), 99, fixed) == agent.Pace(5.0)


def test_virtualization_detection(tmp_path: Any) -> None:
    assert agent.detect_virtualization(tmp_path) == "none"
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("QEMU\n")
    assert agent.detect_virtualization(tmp_path) == "kvm"
    (dmi / "sys_vendor").write_text("Microsoft Corporation\n")
    assert agent.detect_virtualization(tmp_path) == "hyperv"
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/environ").write_bytes(b"PATH=/bin\0container=lxc\0")
    assert agent.detect_virtualization(tmp_path) == "lxc"
    (tmp_path / ".dockerenv").write_text("")
    assert agent.detect_virtualization(tmp_path) == "docker"


# --- settings ----------------------------------------------------------------


def test_settings_from_flags_environment_and_secret_file(tmp_path: Any) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env = {"SSS_SERVER": "ws://127.0.0.1:8900/ws-report", "SSS_ID": "web-1",
           "SSS_SECRET_FILE": str(secret_file)}
    settings, level = agent.parse_settings(["--interval", "10"], env)
    assert (settings.server_id, settings.secret, settings.interval) == ("web-1", SECRET, 10)
    assert level == "INFO"
    settings, _ = agent.parse_settings(["--id", "db-1", "--no-adaptive"], env)
    assert settings.server_id == "db-1" and not settings.adaptive


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ([], {}, "--server (or SSS_SERVER) is required"),
    (["--server", "http://x/ws-report"], {}, "--server (SSS_SERVER) must look like"),
    (["--server", "ws://x/ws-report"], {}, "--id (or SSS_ID) is required"),
    (["--server", "ws://x/ws-report", "--id", "a"], {}, "SSS_SECRET"),
    (["--secret-file", "/nonexistent/secret"], {}, "--secret-file (SSS_SECRET_FILE)"),
    (["--once", "--interval", "1", "--min-interval", "2"], {}, "--min-interval"),
])
def test_bad_settings_name_the_flag_and_variable(argv: list[str], env: dict[str, str],
                                                 expected: str) -> None:
    with pytest.raises(agent.UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        agent.parse_settings(argv, env)


def test_cli_usage_error_is_one_line_and_exit_2() -> None:
    result = subprocess.run([AGENT_PYTHON, str(HERE / "agent.py")], capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "SSS_SERVER" in result.stderr


def test_once_prints_the_message_without_a_dashboard() -> None:
    result = subprocess.run([AGENT_PYTHON, str(HERE / "agent.py"), "--once", "--id", "web-1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert_go_types(go_report(), message)
    reports.validate_report(result.stdout)
    # Whatever agent.py runs under (no psutil, websockets 10.4, --use-psutil), its numbers
    # agree with psutil's, read here, on the same machine.
    memory = message["virtualMemoryInfo"]
    assert memory["total"] == psutil.virtual_memory().total
    assert abs(memory["usedPercent"] - psutil.virtual_memory().percent) < 5
    assert message["hostInfo"]["bootTime"] == int(psutil.boot_time())
    assert abs(message["extraInfo"]["processes"] - len(psutil.pids())) < 20
    root = next(p for p in message["diskInfo"]["partitions"] if p["mountPoint"] == "/")
    assert root["total"] == psutil.disk_usage("/").total
    assert abs(message["swapMemoryInfo"]["total"] - psutil.swap_memory().total) < 2**20
    assert 0 <= message["cpuInfo"]["percent"] <= 100


def test_psutil_readings_agree_with_proc() -> None:
    """The psutil collector (macOS, the BSDs, --use-psutil) against /proc, field by field."""
    proc, via_psutil = agent.Collector(SETTINGS), agent.PsutilCollector(SETTINGS)
    a, b = proc.sample(), via_psutil.sample()
    for sample in (a, b):
        assert None not in (sample.processes, sample.tcp, sample.udp, sample.disk_io)
    assert a.memory[0] == b.memory[0] and abs(a.memory[2] - b.memory[2]) < 5
    assert a.swap[0] == b.swap[0]
    assert set(a.nic_bytes) == set(b.nic_bytes)
    assert [p.mount_point for p in a.partitions] == [p.mount_point for p in b.partitions]
    assert [p.total for p in a.partitions] == [p.total for p in b.partitions]
    assert a.boot_time == b.boot_time and abs(a.processes - b.processes) < 20
    assert socket_counts_agree(lambda: tcp_udp(proc.sample()),
                               lambda: tcp_udp(via_psutil.sample()), tolerance=50)
    assert abs(a.cpu[1] / os.sysconf("SC_CLK_TCK") - b.cpu[1]) < 5
    later = via_psutil.sample()
    message = agent.build_message("web-1", FACTS, b, later, 5)
    assert set(message["extraInfo"]) == {"tcpConnections", "udpConnections", "processes",
                                         "diskReadSpeed", "diskWriteSpeed", "agentVersion"}
    unreadable = later._replace(tcp=None, udp=None, disk_io=None)
    extra = agent.build_message("web-1", FACTS, b, unreadable, 5)["extraInfo"]
    # left out, never a made-up zero
    assert extra == {"processes": later.processes, "agentVersion": agent.AGENT_VERSION}
    assert agent.make_collector(SETTINGS).__class__ is agent.Collector
    forced = agent.parse_settings(["--once"], {"SSS_USE_PSUTIL": "1"})[0]
    assert agent.make_collector(forced).__class__ is agent.PsutilCollector


def test_a_too_old_websockets_is_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "websockets").mkdir()
    (tmp_path / "websockets/__init__.py").write_text('__version__ = "9.1"\n')
    result = subprocess.run([sys.executable, str(HERE / "agent.py"), "--help"],
                            env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "needs websockets 10.1 or newer, found 9.1" in result.stderr
    assert "apt-get install python3-websockets" in result.stderr


# --- end to end ----------------------------------------------------------------


def agent_args(dash: Dashboard, sid: str = "alpha", secret: str = SECRET) -> list[str]:
    return ["--server", dash.url("/ws-report", "ws"), "--id", sid, "--secret", secret,
            "--interval", "1", "--min-interval", "1", "--no-adaptive", "--log-level", "DEBUG"]


def wait_online(dash: Dashboard, sid: str, online: bool = True, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = server_in({"servers": dash.get_json("/api/servers")}, sid)
        if server and server["online"] is online and (not online or "cpuInfo" in server):
            return server
        time.sleep(0.2)
    raise AssertionError(f"{sid} not online={online} within {timeout} s")


def test_agent_reports_and_survives_a_dashboard_restart(make_dashboard: Any,
                                                        make_agent: Any) -> None:
    dash: Dashboard = make_dashboard()
    reporter = make_agent(*agent_args(dash))
    server = wait_online(dash, "alpha")
    reporter.wait_for_log(r"the dashboard asks to retry within 2 s after losing it")  # 3 servers
    assert server["virtualMemoryInfo"]["total"] == psutil.virtual_memory().total
    assert server["reportInterval"] == 1.0 and "tcpConnections" in server["extraInfo"]
    first = server["lastReportTime"]
    wait_until(lambda: wait_online(dash, "alpha")["lastReportTime"] > first)  # still reporting
    assert dash.stop() == 0
    reporter.wait_for_log("lost the dashboard", timeout=10)
    mark = len(reporter.lines)
    dash.start()
    # Retries after a lost connection are spread over the 2 s the dashboard asked for.
    reporter.wait_for_log(r"reconnected after \d+ attempts?", after=mark, timeout=10)
    wait_online(dash, "alpha")
    assert reporter.process is not None and reporter.process.poll() is None


def test_wrong_secret_is_explained_and_retried_slowly(make_dashboard: Any,
                                                      make_agent: Any) -> None:
    dash: Dashboard = make_dashboard()
    reporter = make_agent(*agent_args(dash, secret="not-the-secret"))
    # The legacy client (websockets < 13) keeps no response body: "unauthorized" then.
    reporter.wait_for_log(r"dashboard rejected id alpha \((unknown server id or wrong secret|"
                          r"unauthorized)\): check --id/--secret against servers.json")
    first = time.monotonic()
    wait_until(lambda: dash.refused("wrong_secret") >= 3)  # at 0, 3 and 6.6 s on the backoff
    assert time.monotonic() - first >= 0.9 * (3 + 3.6) - 0.5  # 10 % jitter; never a tight loop
    assert reporter.count_log("WARNING dashboard rejected id alpha") == 1  # once per outage
    assert reporter.process is not None and reporter.process.poll() is None
    assert "Traceback" not in reporter.log_text()
    # The dashboard is up: the agent must not claim it is waiting for it to come back.
    assert "until the dashboard is back" not in reporter.log_text()


def test_a_crash_looping_dashboard_keeps_agents_close(make_dashboard: Any,
                                                      make_agent: Any) -> None:
    """Restarted every few seconds: a connection on which a report was accepted starts the
    backoff over, so the agent is back within the dashboard's spread (2 s here) each time.
    Before, no connection lived the 30 s that reset it: 3, 3.6, 4.3, 5.2, 6.2 s away, on
    towards the 10-minute cap."""
    dash: Dashboard = make_dashboard()
    reporter = make_agent(*agent_args(dash))
    wait_online(dash, "alpha")
    delays = []
    for _ in range(5):
        assert dash.stop() == 0
        mark = len(dash.lines)
        dash.start()
        listening = time.monotonic()
        dash.wait_for_log(r"agent connected: id=alpha", after=mark, timeout=15)
        delays.append(time.monotonic() - listening)
        wait_online(dash, "alpha")  # a report accepted on this connection
    assert max(delays) < 2.5, delays
    assert reporter.count_log("Traceback") == 0


def test_accept_then_close_cannot_make_it_hot_loop(make_agent: Any) -> None:
    handshakes: list[float] = []

    def hang_up(ws: ServerConnection) -> None:
        handshakes.append(time.monotonic())

    with serve(hang_up, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        try:
            reporter = make_agent("--server", f"ws://127.0.0.1:{port}/ws-report", "--id", "x",
                                  "--secret", SECRET, "--interval", "1", "--min-interval", "1")
            reporter.wait_for_log("lost the dashboard")
            wait_until(lambda: len(handshakes) >= 3)  # at 0, 3 and 6.6 s on the backoff
        finally:
            server.shutdown()
    # Without the 30 s stability rule this would be ~1 attempt a second, or worse.
    gaps = [b - a for a, b in zip(handshakes, handshakes[1:])]
    assert all(gap >= 0.9 * 3 - 0.1 for gap in gaps), gaps
    assert gaps == sorted(gaps) or max(gaps) - min(gaps) < 1.5  # growing, give or take jitter


def test_sigterm_closes_with_1000_and_exits_0(make_dashboard: Any, make_agent: Any) -> None:
    dash: Dashboard = make_dashboard()
    reporter = make_agent(*agent_args(dash))
    wait_online(dash, "alpha")
    reporter.signal(signal.SIGTERM)
    assert reporter.process is not None and reporter.process.wait(5) == 0
    dash.wait_for_log(r"agent disconnected: id=alpha \(1000 'agent shutting down'\)")
    assert "Traceback" not in reporter.log_text()
    wait_online(dash, "alpha", online=False, timeout=3)


def test_silent_dashboard_is_noticed_by_the_heartbeat(make_dashboard: Any,
                                                      make_agent: Any) -> None:
    dash: Dashboard = make_dashboard()
    reporter = make_agent(*agent_args(dash))
    wait_online(dash, "alpha")
    mark = len(reporter.lines)
    dash.signal(signal.SIGSTOP)  # alive, port open, answers nothing: like dropped packets
    try:
        line = reporter.wait_for_log("lost the dashboard", after=mark, timeout=60)
    finally:
        dash.signal(signal.SIGCONT)
    assert "1011" in line or "ping" in line or "closed" in line
    reporter.wait_for_log(r"reconnected after \d+ attempts?", after=mark, timeout=35)


# --- what a new user trips over ------------------------------------------------


@pytest.mark.parametrize("script, args", [("agent.py", ["--help"]), ("dashboard.py", [])])
def test_a_missing_websockets_is_one_line_and_exit_2(script: str, args: list[str],
                                                     tmp_path: Path) -> None:
    # -S: no site-packages, so websockets (and psutil) cannot be imported.
    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"servers": [server_entry("alpha")]}))
    result = subprocess.run([sys.executable, "-S", str(HERE / script), *args,
                             *(["--config", str(config)] if script == "dashboard.py" else [])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "needs websockets" in result.stderr and "install" in result.stderr


def test_help_shows_defaults_and_the_environment_but_never_a_secret() -> None:
    result = subprocess.run([AGENT_PYTHON, str(HERE / "agent.py"), "--help"],
                            env={**os.environ, "SSS_SECRET": "env-secret-value-123"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for default in ("(default: 5.0)", "(default: 2.0)", "(default: 30.0; at most 3600)",
                    "(default: INFO)"):
        assert default in text
    assert "SSS_SERVER, SSS_ID, SSS_SECRET, SSS_SECRET_FILE" in text
    assert "env-secret-value-123" not in result.stdout
    bench_help = subprocess.run([sys.executable, str(HERE / "tools/bench.py"), "--help"],
                                capture_output=True, text=True, timeout=60).stdout
    assert "{agent,dashboard,history,restart,page,attack,churn}" in bench_help
    assert "_load" not in bench_help
    assert ".venv/" in (HERE / ".gitignore").read_text().split()


def test_failures_are_said_in_plain_words() -> None:
    settings = agent.Settings(server="wss://status.example:8900/ws-report", server_id="web-1",
                              secret="x")
    plain = agent.Settings(server="ws://status.example:8900/ws-report", server_id="web-1",
                           secret="x")
    unreachable = OSError(errno.ENETUNREACH, "Network is unreachable")
    assert agent.explain_failure(unreachable, plain) == (
        "no route to the dashboard (status.example): is this server's network up?")
    assert "speaks ws://, not wss://" in agent.explain_failure(ConnectionResetError(), settings)
    tls = InvalidMessage("did not receive a valid HTTP response")
    tls.tls = True  # explain() found a TLS handshake at the address
    assert "speaks wss:// (TLS), not ws://" in agent.explain_failure(tls, plain)
    for cause, words in ((EOFError("connection closed while reading HTTP status line"),
                          "was cut during the handshake"),
                         (ValueError("invalid HTTP status line: SSH-2.0-OpenSSH_9.2"),
                          "something other than HTTP ('SSH-2.0-OpenSSH_9.2')")):
        not_http = InvalidMessage("did not receive a valid HTTP response")
        not_http.__cause__ = cause
        said = agent.explain_failure(not_http, plain)
        assert words in said and "TLS" not in said, said
    mismatch = ssl.SSLCertVerificationError("certificate verify failed")
    mismatch.verify_code = 62
    mismatch.verify_message = "Hostname mismatch, certificate is not valid for 'status.example'."
    forged = agent.explain_failure(ValueError("bad header\n2026 INFO forged \x1b[2J"), settings)
    assert "\n" not in forged and "\x1b" not in forged and "\\n2026" in forged
    words = agent.explain_failure(mismatch, settings)
    assert "is for another name" in words and "--ca-file" not in words
    closed = ConnectionClosed(Close(1008, "evil\n2026-01-01 INFO forged"), None)
    assert "\n" not in agent.explain_failure(closed, plain)


def test_agent_pointed_at_the_viewer_path_says_so(make_dashboard: Any, make_agent: Any) -> None:
    dash: Dashboard = make_dashboard()
    reporter = make_agent("--server", dash.url("/ws-frontend", "ws"), "--id", "alpha",
                          "--secret", SECRET)
    reporter.wait_for_log(r"dashboard answered HTTP 400: (agents report on /ws-report, not "
                          r"/ws-frontend; fix the path in --server|check the path in --server)")


def test_wrong_scheme_is_named(make_dashboard: Any, make_agent: Any, tmp_path: Path) -> None:
    plain: Dashboard = make_dashboard()
    wss = make_agent("--server", plain.url("/ws-report", "wss"), "--id", "alpha",
                     "--secret", SECRET)
    wss.wait_for_log(r"the dashboard at 127\.0\.0\.1:\d+ speaks ws://, not wss:// "
                     r"\(no TLS there\): fix --server")
    tls, _ = tls_dashboard(make_dashboard, tmp_path)
    ws = make_agent("--server", tls.url("/ws-report", "ws"), "--id", "alpha", "--secret", SECRET)
    ws.wait_for_log(r"the dashboard at 127\.0\.0\.1:\d+ speaks wss:// \(TLS\), not ws://")


def test_a_handshake_cut_short_is_not_blamed_on_tls(make_agent: Any) -> None:
    """A server that resets the connection mid-handshake: before, the agent said the
    dashboard speaks wss://."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]

        def reset_each() -> None:
            with contextlib.suppress(OSError):
                while True:
                    peer, _ = server.accept()
                    peer.recv(1024)
                    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    peer.close()  # RST, not FIN
        threading.Thread(target=reset_each, daemon=True).start()
        reporter = make_agent("--server", f"ws://127.0.0.1:{port}/ws-report", "--id", "alpha",
                              "--secret", SECRET)
        line = reporter.wait_for_log(r"was cut during the handshake")
        assert "TLS" not in reporter.log_text() and "wss" not in line


def test_check_says_whether_the_dashboard_accepts(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()

    def check(secret: str) -> subprocess.CompletedProcess:
        return subprocess.run([AGENT_PYTHON, str(HERE / "agent.py"), "--check"],
                              env={**os.environ, "SSS_SERVER": dash.url("/ws-report", "ws"),
                                   "SSS_ID": "alpha", "SSS_SECRET": secret},
                              capture_output=True, text=True, timeout=60)

    accepted = check(SECRET)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith("ok: the dashboard at ws://")
    assert "accepted a report as alpha" in accepted.stdout
    assert dash.get_json("/api/servers")[0]["lastReportTime"] > 0  # the report was real
    refused = check("not-the-secret")
    assert refused.returncode == 1
    assert re.match(r"failed: dashboard rejected id alpha \((unknown server id or wrong secret|"
                    r"unauthorized)\)", refused.stdout)


# --- install.sh ------------------------------------------------------------------

# The installer runs as on a Debian box: `python3` is Debian's own (/usr/bin first), whose
# python3-websockets and python3-venv .ci/run installs, so a venv made with
# --system-site-packages finds websockets there; PIP_NO_INDEX: the tests reach no index.
INSTALL_ENV = {**{k: v for k, v in os.environ.items() if k != "SSS_USE_PSUTIL"},
               "PIP_NO_INDEX": "1", "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    result = subprocess.run([shellcheck, "--shell=sh", str(HERE / "install.sh")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def start_printed_agent(dash: Dashboard, printed: str) -> str:
    """Run the start command install.sh printed (--no-systemd) until the agent reports."""
    start = re.search(r"sss-agent:   (set -a; .*)", printed)
    assert start, printed
    installed = LoggedProcess()
    installed.spawn(["sh", "-c", start[1]], env=INSTALL_ENV)
    try:
        wait_online(dash, "alpha", timeout=20)
    finally:
        installed.kill()
    return start[1]


def test_install_sh_installs_upgrades_and_uninstalls(make_dashboard: Any,
                                                     tmp_path: Path) -> None:
    require_system_websockets()  # its venv reuses Debian's websockets
    dash: Dashboard = make_dashboard()
    prefix, env_file = tmp_path / "opt/sss-agent", tmp_path / "etc/sss-agent.env"
    environ = INSTALL_ENV

    def install(*args: str, dashboard_url: str = dash.url("")) -> subprocess.CompletedProcess:
        script = f'curl -fsSL {dashboard_url}/install.sh | sh -s -- "$@"'
        return subprocess.run(["sh", "-c", script, "sh", "--prefix", str(prefix), "--env-file",
                               str(env_file), "--no-systemd", "--system-site-packages", *args],
                              env=environ, capture_output=True, text=True, timeout=300)

    first = install("--id", "alpha", "--secret", SECRET)
    assert first.returncode == 0, first.stderr + first.stdout
    assert (prefix / "agent.py").read_bytes() == (HERE / "agent.py").read_bytes()
    assert env_file.stat().st_mode & 0o777 == 0o600
    settings = env_file.read_text()
    assert f"SSS_SERVER='ws://127.0.0.1:{dash.port}/ws-report'\n" in settings
    assert f"SSS_SECRET='{SECRET}'\n" in settings
    start_printed_agent(dash, first.stdout)
    unit = (prefix / "sss-agent.service").read_text()
    assert f"WorkingDirectory={prefix}\nExecStart={prefix}/venv/bin/python3 -m agent" in unit
    assert list((prefix / "__pycache__").glob("agent.*.pyc"))
    assert f"EnvironmentFile={env_file}" in unit

    (prefix / "agent.py").write_text("# an older agent\n")
    second = install()  # an upgrade: no settings given, the old ones stay
    assert second.returncode == 0, second.stderr
    assert (prefix / "agent.py").read_bytes() == (HERE / "agent.py").read_bytes()
    assert env_file.read_text() == settings

    third = install("--uninstall")
    assert third.returncode == 0, third.stderr
    assert not prefix.exists() and not env_file.exists()


def test_install_sh_uses_the_distributions_websockets(make_dashboard: Any,
                                                    tmp_path: Path) -> None:
    """The apt path: Debian's python3-websockets (CI installs it), the system python3, no
    venv and no pip (PIP_NO_INDEX would make any pip install fail)."""
    require_system_websockets()
    dash: Dashboard = make_dashboard()
    prefix, env_file = tmp_path / "opt/sss-agent", tmp_path / "etc/sss-agent.env"
    script = f'curl -fsSL {dash.url("")}/install.sh | sh -s -- "$@"'
    result = subprocess.run(["sh", "-c", script, "sh", "--prefix", str(prefix), "--env-file",
                             str(env_file), "--no-systemd", "--id", "alpha", "--secret", SECRET],
                            env=INSTALL_ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "using the system python3 with the distribution's websockets" in result.stdout
    assert not (prefix / "venv").exists()
    unit = (prefix / "sss-agent.service").read_text()
    assert f"WorkingDirectory={prefix}\nExecStart=/usr/bin/python3 -m agent" in unit
    assert "/usr/bin/python3 -m agent" in start_printed_agent(dash, result.stdout)
    forced = subprocess.run(["sh", "-c", script, "sh", "--prefix", str(prefix), "--env-file",
                             str(env_file), "--no-systemd", "--venv"],
                            env=INSTALL_ENV, capture_output=True,
                            text=True, timeout=300)
    # --venv makes a venv and asks pip, which has no index here: the step is named.
    assert forced.returncode == 1 and "installing websockets" in forced.stderr
    assert (prefix / "agent.py").exists()  # an upgrade that failed keeps the old install


def test_install_sh_failure_names_the_step_and_leaves_nothing(make_dashboard: Any,
                                                              tmp_path: Path) -> None:
    require_system_websockets()  # its venv reuses Debian's websockets
    dash: Dashboard = make_dashboard()
    prefix = tmp_path / "sss-agent"
    script = (dashboard.HERE / "install.sh").read_text()
    closed = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(["sh", "-c", script, "install.sh", "--prefix", str(prefix),
                             "--no-systemd", "--system-site-packages", "--dashboard", closed,
                             "--id", "alpha", "--secret", SECRET],
                            env=INSTALL_ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert "failed while downloading agent.py" in result.stderr
    assert "check that the dashboard is reachable" in result.stderr
    assert not prefix.exists()
    assert dash.get("/healthz")[0] == 200

    refused = subprocess.run(["sh", "-c", script, "install.sh", "--prefix", str(prefix),
                              "--no-systemd", "--system-site-packages", "--dashboard",
                              dash.url("").rstrip("/"), "--id", "alpha", "--secret", "wrong-0451"],
                             env=INSTALL_ENV, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 1 and "installed" not in refused.stdout
    assert "failed while checking that the dashboard accepts alpha: failed: dashboard " \
           "rejected id alpha" in refused.stderr, refused.stderr
    assert not prefix.exists() and "wrong-0451" not in dash.log_text()


def path_without_sudo(folder: Path) -> str:
    """A PATH holding every tool of this box but sudo (links in `folder`)."""
    folder.mkdir(mode=0o755)
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for tool in Path(directory).glob("*"):
            if tool.name != "sudo" and not (folder / tool.name).exists():
                (folder / tool.name).symlink_to(tool)
    return str(folder)


def test_the_one_line_install_needs_no_sudo_as_root(make_dashboard: Any,
                                                    tmp_path: Path) -> None:
    """README's line, as root on a box without sudo. Before, it piped to `sudo sh`:
    "sudo: command not found" and a curl write error."""
    require_system_websockets()
    dash: Dashboard = make_dashboard()
    line = re.search(r"^(curl -fsSL http://DASHBOARD:8900/install\.sh \| .*)$", README, re.M)
    assert line and "sudo" not in line[1], line
    command = (line[1].replace("http://DASHBOARD:8900", dash.url("").rstrip("/"))
               .replace("--id ID --secret SECRET", f"--id alpha --secret {SECRET}"))
    prefix, env_file = tmp_path / "opt/sss-agent", tmp_path / "etc/sss-agent.env"
    done = subprocess.run(
        ["sh", "-c", f"{command} --prefix {prefix} --env-file {env_file} --no-systemd"],
        env={**INSTALL_ENV, "PATH": path_without_sudo(tmp_path / "bin")},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "sudo" not in done.stderr and (prefix / "agent.py").exists()


def test_the_one_line_install_says_what_it_needs_without_root_or_sudo(
        make_dashboard: Any, tmp_path: Path) -> None:
    """Another user, no sudo: one plain message naming root and the per-user options."""
    runuser = require_tool("runuser", "util-linux")
    dash: Dashboard = make_dashboard()
    tools = Path(tempfile.mkdtemp(prefix="sss-path-"))  # readable by nobody, unlike tmp_path
    tools.chmod(0o755)
    try:
        script = f"curl -fsSL {dash.url('/install.sh')} | sh -s -- --id alpha --secret {SECRET}"
        refused = subprocess.run(
            [runuser, "-u", "nobody", "--", "env", f"PATH={path_without_sudo(tools / 'bin')}",
             "sh", "-c", script], cwd="/", capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(tools)
    assert refused.returncode == 1
    assert "needs root, and there is no sudo here" in refused.stderr, refused.stderr
    assert "--no-systemd" in refused.stderr and "command not found" not in refused.stderr
    assert not Path("/opt/sss-agent").exists() or Path("/opt/sss-agent").stat().st_uid == 0


PUNCTUATED = "s3cret!#%&*(),;?[]~+/=:@-0123456789"  # every character install.sh allows


def test_install_sh_writes_values_that_sh_and_systemd_read_literally(
        make_dashboard: Any, tmp_path: Path) -> None:
    require_system_websockets()  # its venv reuses Debian's websockets
    dash: Dashboard = make_dashboard([{"id": "alpha", "secret": PUNCTUATED}])
    prefix, env_file = tmp_path / "opt/sss-agent", tmp_path / "etc/sss-agent.env"
    script = f'curl -fsSL {dash.url("")}/install.sh | sh -s -- "$@"'

    def install(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", script, "sh", "--no-systemd", *args],
                              env=INSTALL_ENV, capture_output=True, text=True, timeout=300)

    pwned = tmp_path / "pwned"
    for secret in (f"x$(touch {pwned})", f"x`touch {pwned}`", "it's", "two words", "a\\b"):
        refused = install("--prefix", str(prefix), "--id", "alpha", "--secret", secret)
        assert refused.returncode == 1 and "--secret contains a quote, backslash" in \
            refused.stderr, refused.stderr
    assert not pwned.exists() and not prefix.exists()
    for bad_prefix in ("relative/dir", f"{tmp_path}/a#b", f"{tmp_path}/a&b", f"{tmp_path}/a b"):
        refused = install("--prefix", bad_prefix, "--id", "alpha", "--secret", PUNCTUATED)
        assert refused.returncode == 1 and "--prefix" in refused.stderr, refused.stderr

    done = install("--prefix", str(prefix), "--env-file", str(env_file), "--id", "alpha",
                   "--secret", PUNCTUATED, "--system-site-packages")
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"SSS_SECRET='{PUNCTUATED}'\n" in env_file.read_text()
    start_printed_agent(dash, done.stdout)  # sh read the secret back exactly

    not_ours = tmp_path / "data"
    not_ours.mkdir()
    (not_ours / "precious").write_text("keep me")
    refused = install("--uninstall", "--prefix", str(not_ours))
    assert refused.returncode == 1 and "was not installed by install.sh" in refused.stderr
    assert (not_ours / "precious").exists()
    removed = install("--uninstall", "--prefix", str(prefix), "--env-file", str(env_file))
    assert removed.returncode == 0, removed.stderr
    assert not prefix.exists() and not env_file.exists()



# --- benchmarks (a smoke run, so bench.py cannot rot; no timing is asserted) --------


def run_bench(*args: str) -> Any:
    result = subprocess.run([sys.executable, str(HERE / "tools/bench.py"), *args, "--json"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_agent_bench_smoke() -> None:
    result = run_bench("agent", "--duration", "4")
    assert result["samples"] >= 1 and result["probe_round_ms"] > 0
    for name in ("agent", "agent_psutil", "floor", "floor_psutil"):
        assert result[name]["rss_mb"] > 5 and result[name]["uss_mb"] > 1
        assert result[name]["cpu_ms_per_sample"] >= 0


def test_history_bench_smoke() -> None:
    result = run_bench("history", "--servers", "50")
    assert result["servers"] == 50 and result["fold_us"] > 0 and result["step_ms"] > 0
    assert result["bytes_per_server_day_fine"] > 0 and result["query_1y_ms"] > 0
    assert 24 * 3 * 8 < result["ledger_bytes_per_server"] < 4096  # a day's hours, compact


def test_restart_and_page_bench_smoke() -> None:
    (restart,) = [run_bench("restart", "--agents", "20", "--down", "1")]
    assert restart["all_back"] and restart["agents"] == 20 and restart["mean_cpu_cores"] > 0
    require_tool("/usr/bin/chromium", "chromium")
    page = run_bench("page", "--servers", "50", "--duration", "3")
    assert page["servers"] == 50 and page["updates"] > 0
    assert page["apply_p95_ms"] is not None and page["heap_end_mb"] > 0


def test_dashboard_bench_smoke() -> None:
    (result,) = run_bench("dashboard", "--agents", "20", "--viewers", "2", "--duration", "4")
    assert result["agents"] == 20 and result["reports_accepted"] > 20
    assert result["reports_accepted"] <= result["reports_sent"]
    assert result["latency_samples"] > 0 and result["latency_p99_ms"] is not None
    assert result["viewer_bytes_per_second"] > 0 and result["peak_rss_mb"] > 5
    assert result["rss_per_agent_kib"] >= result["steady_rss_per_agent_kib"]
    assert result["floor_cpu_ms_per_report"] >= 0 and result["reports_per_second"] > 0
    before, after = result["floor_cpu_ms_per_report_runs"]  # the floor bracketing it
    assert result["floor_cpu_ms_per_report"] == pytest.approx((before + after) / 2)
    assert not result["side_by_side"]


def test_dashboard_bench_side_by_side_smoke() -> None:
    """--side-by-side: one run of the floor, at the same time as the dashboard's and on
    the same core, each under a load of its own."""
    (result,) = run_bench("dashboard", "--agents", "20", "--viewers", "2", "--duration", "4",
                          "--side-by-side", "--interval", "2")
    assert result["side_by_side"] and result["interval"] == 2
    assert result["reports_accepted"] > 20  # about two from each agent, every 2 s for 4 s
    assert result["shared_core"] is not None  # Linux: both servers were pinned to it
    (floor,) = result["floor_cpu_ms_per_report_runs"]  # one run, over the same seconds
    assert result["floor_cpu_ms_per_report"] == floor >= 0
    assert result["floor_rss_per_agent_kib"] > 0 and result["latency_samples"] > 0


def test_attack_and_churn_bench_smoke() -> None:
    attack = run_bench("attack", "--servers", "20", "--duration", "4", "--warmup", "3",
                       "--settle", "2")
    assert set(attack["attacks"]) == set(bench.ATTACKS)
    assert attack["attacks"]["slow_readers"] > 0 and attack["attacks"]["refusals"] > 0
    assert sum(attack["attacks"].values()) > 1000  # (in 4 s some get nothing done)
    assert attack["refused"]
    assert attack["rss_peak_mb"] >= attack["rss_before_mb"] > 5
    assert attack["fewest_agents"] <= 20
    churn = run_bench("churn", "--agents", "10", "--churning", "2", "--duration", "12")
    assert churn["reconnects"] >= 2 and churn["rss_curve"]


# --- a hostile or misdirected dashboard ------------------------------------------------


def test_redirects_to_another_host_are_not_followed(make_agent: Any) -> None:
    """The agent's address answers 302 to another host: the secret never goes there."""
    elsewhere = socket.socket()
    elsewhere.bind(("127.0.0.2", 0))
    elsewhere.listen()
    elsewhere.settimeout(0.5)
    target = f"ws://127.0.0.2:{elsewhere.getsockname()[1]}/ws-report"

    class Redirect(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        reporter = make_agent("--server", f"ws://127.0.0.1:{redirector.server_port}/ws-report",
                              "--id", "alpha", "--secret", SECRET)
        reporter.wait_for_log(re.escape(f"redirected to {target!r}, another host or scheme; "
                                        "not followed, so the secret is not sent there"))
        with pytest.raises(socket.timeout):
            elsewhere.accept()  # nobody came
        assert SECRET not in reporter.log_text()
    finally:
        redirector.shutdown()
        elsewhere.close()


def test_a_dashboard_flooding_frames_is_hung_up_on(make_agent: Any) -> None:
    closes: list[int | None] = []
    sent = [0]

    def flood(ws: ServerConnection) -> None:
        try:
            while True:
                ws.send('{"type":"noise"}')
                sent[0] += 1
        except ConnectionClosed:
            closes.append(ws.close_code)

    with serve(flood, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        reporter = make_agent("--server", f"ws://127.0.0.1:{server.socket.getsockname()[1]}",
                              "--id", "alpha", "--secret", SECRET)
        reporter.wait_for_log(r"lost the dashboard: the dashboard sent 20 frames within 10 s; "
                              r"hung up", timeout=30)
        deadline = time.monotonic() + 10
        while not closes and time.monotonic() < deadline:  # the flooding thread sees it
            time.sleep(0.05)
        server.shutdown()
    assert closes and closes[0] == 1008
    process = psutil.Process(reporter.process.pid)
    cpu = process.cpu_times()
    # Read a few a second, the frames cost little: a busy loop would take seconds of CPU.
    assert cpu.user + cpu.system < 3.0, cpu


def test_a_certificate_for_another_name_is_named(make_dashboard: Any, make_agent: Any,
                                                 tmp_path: Path) -> None:
    tls, _ = tls_dashboard(make_dashboard, tmp_path, "status.example")
    reporter = make_agent("--server", tls.url("/ws-report", "wss"), "--id", "alpha",
                          "--secret", SECRET, "--ca-file", str(tmp_path / "ca.pem"))
    reporter.wait_for_log(r"TLS certificate of 127\.0\.0\.1 is for status\.example, not "
                          r"127\.0\.0\.1: use the name it was issued for in --server")
