#!/usr/bin/env python3
"""Benchmarks: the agent's footprint, the dashboard's capacity, history, restarts, the page,
and the dashboard under attack (attack, churn).

Real runs on this project's 2-core test machine (2026-12-05; BENCHMARKS.md has every table
and the method):

    $ python3 tools/bench.py agent --duration 60
    agent bench: 54 samples at 1 s, 60 s, 2 cores
                                       CPU/sample  RSS MB  USS MB  RSS growth MB
    agent.py (/proc, no psutil)          1.111 ms    27.1    16.1           0.01
    agent.py --use-psutil               16.296 ms    27.9    16.9           0.04
    agent.py, 8 sensors, 20 containers   1.667 ms    27.1    16.2           0.05
    floor (imports + 1 connection)       0.000 ms    25.2    14.5           0.00
    floor + import psutil                0.000 ms    26.1    15.3           0.00
    agent RSS above the floor: 1.9 MB; --use-psutil 2.8 MB; sensors and containers 2.0 MB
    of which collecting, building, encoding (median): 0.612 ms; 0.975 ms with sensors, containers
    latency probes, 4 TCP targets: 19.6 ms CPU per round (20 probes, in-process)
    top processes while watched, 200 processes: 5.73 ms CPU per report (in-process)

    $ python3 tools/bench.py dashboard --agents 10000 --interval 5 --duration 60 --side-by-side
    dashboard bench: 20 viewers, history on, reports every 5 s, 60 s per run, 2 cores (...);
    floor: run side by side on core 0, under a load of its own
    agents reports/s CPU cores ms/report floor ms ratio peak RSS MB  p50 ms  p99 ms ...
     10000      2002      0.23     0.114    0.062  1.85       219.6     151     352 ...

    $ python3 tools/bench.py history
    history bench: 2000 servers, 60 s resolution
      fold per report            3.92 µs  (validating it: 18.91 µs)
      one step, 2000 servers: 146.7 ms the first of an hour, 111.0 ms the others, ...
      write window                 69 ms  (from a step's end until its rows are committed: ...)
      ...
      in memory per server        0.8 KiB after a day (the availability of its last 24 hours)

Everything runs on 127.0.0.1: a real dashboard.py process, real agent.py or
load-generator processes holding real WebSocket connections, and Debian's Chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import math
import os
import py_compile
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psutil
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

CHECKOUT = Path(__file__).resolve().parent.parent  # dashboard.py, agent.py, sss/
BENCH = Path(__file__).resolve()
sys.path.insert(0, str(CHECKOUT))  # run as a script from anywhere: the checkout's modules

import agent  # noqa: E402 (from the checkout, just put on the path)

SECRET = "bench-secret-" + "x" * 16
STAMP = 987654321987  # placeholder in a report template, replaced by a per-report stamp
FAKE_FACTS = agent.HostFacts("linux", "debian", "debian", "12", "6.1.0-18-amd64", "x86_64",
                             "kvm", ("Intel Xeon E5-2680 v4 @ 2.40GHz x 2 Virtual Core",))

# The floor for the agent: what any Python agent costs before it collects anything.
AGENT_FLOOR = """
import asyncio, sys
if sys.argv[3] == "psutil":
    import psutil
from websockets.asyncio.client import connect
async def main():
    headers = {"X-SERVER-ID": "floor", "X-AUTH-SECRET": sys.argv[2]}
    async with connect(sys.argv[1], additional_headers=headers) as ws:
        await asyncio.Future()
asyncio.run(main())
"""


# --- made-up but realistic reports ----------------------------------------------


def fake_report(server_id: str, rng: random.Random, stamp: int = 0,
                tick: int = 0, interval: float = 1.0) -> dict[str, Any]:
    """A realistic report, built by the agent's own message function from made-up samples.

    What a real agent's reports change from one to the next comes from `rng` and `tick`
    (the report's number): uptime, CPU, memory, load, sockets, processes, disk and network
    speeds and totals, the root partition's use. Reports that differ only in one field
    would flatter every step that looks at what changed (the dashboard's diff, the
    viewers' traffic, the page's work per update)."""
    gib, now = 2**30, time.time() + tick
    root_used = 12 * gib + rng.randrange(2**18) * 4096
    partitions = (agent.Partition("/dev/vda1", "/", "ext4", 40 * gib, root_used,
                                  38 * gib - root_used),
                  agent.Partition("/dev/vdb", "/data", "ext4", 200 * gib, 90 * gib, 100 * gib))
    memory_used = int(rng.uniform(0.2, 0.9) * 2 * gib)
    common: dict[str, Any] = dict(
        wall=now, memory=(2 * gib, memory_used, round(memory_used / (2 * gib) * 100, 1)),
        swap=(gib, 0, gib, 0.0), partitions=partitions,
        load=(round(rng.uniform(0, 2), 2), round(rng.uniform(0, 2), 2), 0.3),
        boot_time=now - 86400 - tick, tcp=rng.randrange(30, 60), udp=4,
        processes=rng.randrange(110, 130))
    received = 10**9 + tick * 10**6
    before = agent.Sample(monotonic=0.0, cpu=(0.0, 0.0), disk_io=(0, 0),
                          nic_bytes={"eth0": (received, 10**9)}, **common)
    after = agent.Sample(monotonic=1.0, cpu=(rng.uniform(0, 100), 100.0),
                         disk_io=(rng.randrange(10**6), rng.randrange(10**6)),
                         nic_bytes={"eth0": (received + rng.randrange(1, 10**6), 10**9)},
                         **common)
    # Its reportInterval is the one it is sent at, as agent.py's is: the dashboard's
    # offline and silence rules (timings.py) follow it.
    message = agent.build_message(server_id, FAKE_FACTS, before, after, interval)
    message["networkInfo"]["netOutTransfer"] = stamp
    return message


REPORT_VARIANTS = 4  # an agent's reports cycle through this many, so each differs from the last


def fake_reports(server_id: str, stamp: int = 0, interval: float = 1.0) -> list[str]:
    """An agent's successive reports, sent every `interval` s, encoded (see fake_report)."""
    rng = random.Random(server_id)
    return [json.dumps(fake_report(server_id, rng, stamp, tick, interval))
            for tick in range(REPORT_VARIANTS)]


CONNECTS_PER_SECOND = 500  # per load process: how fast a fleet (re)connects


async def fake_agents(url: str, ids: list[str], secret: str, duration: float,
                      interval: float = 1.0,
                      per_second: collections.Counter[int] | None = None) -> int:
    """One connection per id, each reporting every `interval` s for `duration` s, staggered.

    The agents connect 500 a second, as a fleet spread by agent.py's reconnect jitter
    does, not all at once. Each report's netOutTransfer is its send time (monotonic, in
    µs: the clock every process of this machine shares), so a viewer in another process
    can measure the latency. `per_second` counts the reports sent in each second of
    the monotonic clock, so a measurement window can count its own.
    """
    deadline = time.monotonic() + duration
    sent = 0

    async def one(server_id: str, connect_after: float, offset: float) -> None:
        nonlocal sent
        templates = itertools.cycle(fake_reports(server_id, STAMP, interval))
        headers = {"X-SERVER-ID": server_id, "X-AUTH-SECRET": secret}
        await asyncio.sleep(connect_after)
        # A listen queue or the dashboard's 512 places for handshakes in progress may
        # still be full (503): retry after a random pause, as agents do.
        for _attempt in range(10):
            try:
                ws = await connect(url, additional_headers=headers, open_timeout=60,
                                   ping_interval=None, local_addr=(fleet_address(server_id), 0))
                break
            except (OSError, InvalidMessage, InvalidStatus, asyncio.TimeoutError):
                await asyncio.sleep(random.uniform(0.5, 10))
        else:
            return
        async with ws:
            await asyncio.sleep(offset)
            next_at = time.monotonic()
            while next_at < deadline:
                stamp = int(time.monotonic() * 1e6)
                await ws.send(next(templates).replace(str(STAMP), str(stamp), 1))
                sent += 1
                if per_second is not None:
                    per_second[stamp // 1_000_000] += 1
                next_at += interval
                await asyncio.sleep(max(next_at - time.monotonic(), 0))

    await asyncio.gather(*(one(sid, i / CONNECTS_PER_SECOND, i * interval / len(ids))
                           for i, sid in enumerate(ids)))
    return sent


def fleet_address(server_id: str) -> str:
    """A loopback address of the agent's own (127.x.y.z), as a real fleet has one each:
    the dashboard limits handshakes in progress per address."""
    number = zlib.crc32(server_id.encode())
    return f"127.{number % 250 + 1}.{number // 250 % 250}.{number // 62500 % 250 + 1}"


async def watch(url: str, duration: float, latencies: list[float] | None,
                received: list[int]) -> None:
    """A viewer: counts bytes; with `latencies`, reads each report's send time (its
    netOutTransfer, see fake_agents) in the updates and records how long it took."""
    deadline = time.monotonic() + duration
    for _attempt in range(10):  # 16 handshakes at a time per address: retry past that
        try:
            ws = await connect(url, max_size=None, open_timeout=60)
            break
        except InvalidStatus:
            await asyncio.sleep(random.uniform(0.1, 1))
    async with ws:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(ws.recv(), remaining)
            except asyncio.TimeoutError:
                break
            except ConnectionClosed:  # cut by the dashboard: this process fell behind
                received.append(-1)
                break
            now = time.monotonic()
            received[0] += len(frame)
            message = json.loads(frame) if latencies is not None else {}
            if message.get("type") != "update":
                continue
            for change in message["servers"]:
                members = change["set"]
                stamp = members.get("networkInfo.netOutTransfer",
                                    members.get("networkInfo", {}).get("netOutTransfer"))
                if stamp:
                    latencies.append(now - stamp / 1e6)


async def watch_all(url: str, viewers: int, duration: float) -> dict[str, Any]:
    """The viewers of a load run, in their own process: the first measures latency."""
    latencies: list[float] = []
    received = [[0] for _ in range(viewers)]
    await asyncio.gather(*(watch(url, duration, latencies if i == 0 else None, received[i])
                           for i in range(viewers)))
    return {"latencies": latencies, "viewer_bytes": [r[0] for r in received],
            "viewers_cut": sum(len(r) > 1 for r in received)}


# --- processes and measurements ------------------------------------------------


def start_dashboard(directory: Path, server_ids: list[str],
                    *flags: str) -> tuple[subprocess.Popen, int]:
    """dashboard.py on 127.0.0.1, port 0, with a generated servers.json."""
    config = directory / "servers.json"
    config.write_text(json.dumps({"servers": [{"id": sid, "secret": SECRET}
                                              for sid in server_ids]}))
    return start_server([sys.executable, str(CHECKOUT / "dashboard.py"), "--config", str(config),
                         "--host", "127.0.0.1", "--port", "0", "--viewers-per-address", "1000",
                         "--viewer-memory", "512", *flags], directory / "dashboard.log")


def start_server(args: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    """Start a server logging to a file (a pipe nobody drains would block it); its port."""
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(args, stderr=log_file)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        match = re.search(r"listening on http://[^:]+:(\d+)", log_path.read_text())
        if match:
            return process, int(match.group(1))
        time.sleep(0.1)
    stop(process)
    raise SystemExit(f"{args[1]} did not start:\n{log_path.read_text()}")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def reports_accepted(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(float(re.search(r"^sss_reports_accepted_total (\S+)", text, re.M).group(1)))


# --- bench: agent --------------------------------------------------------------


def time_sampling(duration: float, result: list[float], sysfs: str = "/sys") -> None:
    """CPU of collect + build + encode alone, at 1 Hz as in the agent (caches cold)."""
    settings = agent.Settings(server="", server_id="bench", secret="", sysfs=sysfs)
    collector, facts = agent.Collector(settings), agent.host_facts()
    before = collector.sample()
    deadline = time.monotonic() + duration
    while time.monotonic() + 1 < deadline:
        time.sleep(1)
        start = time.thread_time()
        after = collector.sample()
        agent.encode(agent.build_message("bench", facts, before, after, 1.0))
        result.append(time.thread_time() - start)
        before = after


def probe_round_cpu(targets: int = 4) -> float:
    """CPU seconds of one probe round (5 s) to `targets` TCP ports on loopback: five
    probes each, as agent.py's Prober measures them."""
    listeners = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(targets)]
    plan = [agent.ProbeTarget(f"t{i}", "127.0.0.1", s.getsockname()[1])
            for i, s in enumerate(listeners)]

    async def one_round() -> float:
        prober, gate = agent.Prober(), asyncio.Semaphore(agent.PROBES_AT_ONCE)
        start = time.process_time()
        results = await asyncio.gather(*(prober.measure(t, 5.0, gate) for t in plan))
        assert all(r["loss"] == 0 for r in results), results
        return time.process_time() - start
    try:
        return asyncio.run(one_round())
    finally:
        for listener in listeners:
            listener.close()


def inside_sysfs(where: Path, containers: int = 20) -> Path:
    """A sysfs with the desktop's 8 temperature sensors (tests/fixtures) and `containers`
    Docker containers under cgroup v2, for the agent's --sysfs."""
    shutil.copytree(CHECKOUT / "tests/fixtures/sys/intel-desktop", where)
    cgroup = where / "fs/cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for n in range(containers):
        group = cgroup / f"system.slice/docker-{n:064x}.scope"
        group.mkdir(parents=True)
        (group / "cpu.stat").write_text(f"usage_usec {n * 1000}\nuser_usec 0\nsystem_usec 0\n")
        (group / "memory.current").write_text(f"{(n + 1) * 2**20}\n")
        (group / "io.stat").write_text("259:0 rbytes=1093632 wbytes=40960 rios=38 wios=10\n")
        (group / "cgroup.procs").write_text("4194500\n")  # no such process: no network read
    return where


def top_processes_cpu(count: int = 200, reads: int = 20) -> tuple[int, float]:
    """(processes, median CPU ms of one read of the top processes) with at least `count`
    processes running: what a report costs while someone watches."""
    extra = max(count - len(psutil.pids()), 0)
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(extra)]
    try:
        watch = agent.ProcessWatch(with_args=False, use_psutil=False)
        watch.asked(60.0, 10, time.monotonic())
        times = []
        for _ in range(reads):
            time.sleep(0.05)
            start = time.thread_time()
            watch.read(time.monotonic())
            times.append(time.thread_time() - start)
        return len(psutil.pids()), statistics.median(times) * 1000
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def bench_agent(duration: float) -> dict[str, Any]:
    """agent.py at 1 Hz against a real dashboard, next to the floor process."""
    with tempfile.TemporaryDirectory() as tmp:
        dash, port = start_dashboard(Path(tmp), ["bench", "bench-psutil", "bench-inside",
                                                 "floor"], "--no-history")
        sysfs = inside_sysfs(Path(tmp) / "sys")
        url = f"ws://127.0.0.1:{port}/ws-report"
        # Started as the systemd unit starts it: `python3 -m agent`, from the bytecode the
        # installer compiles (py_compile writes it even under PYTHONDONTWRITEBYTECODE=1;
        # compiling 2,300 lines at start leaves about 2 MB more in RSS).
        installed = Path(tmp) / "opt"
        installed.mkdir()
        shutil.copy(CHECKOUT / "agent.py", installed)
        py_compile.compile(str(installed / "agent.py"), doraise=True)
        # Linux readings from /proc need no psutil; --use-psutil is how other systems run.
        agents = [subprocess.Popen([sys.executable, "-m", "agent", "--server", url,
                                    "--id", sid, "--secret", SECRET, "--interval", "1",
                                    "--min-interval", "1", "--no-adaptive",
                                    "--log-level", "WARNING", *extra], cwd=installed)
                  for sid, extra in (("bench", []), ("bench-psutil", ["--use-psutil"]),
                                     ("bench-inside", ["--sysfs", str(sysfs)]))]
        floors = [subprocess.Popen([sys.executable, "-c", AGENT_FLOOR, url, SECRET, kind])
                  for kind in ("bare", "psutil")]
        try:
            procs = {name: psutil.Process(p.pid) for name, p in
                     zip(("agent", "agent_psutil", "agent_inside", "floor", "floor_psutil"),
                         agents + floors)}
            warmup = min(5.0, duration / 3)
            time.sleep(warmup)  # imports done, connection open, first samples sent
            start = {name: (cpu_seconds(p), p.memory_full_info()) for name, p in procs.items()}
            reports_start = reports_accepted(port)
            rss: dict[str, list[int]] = {name: [] for name in procs}
            sampling: list[float] = []
            sampling_inside: list[float] = []
            timers = [threading.Thread(target=time_sampling, args=(duration - warmup, times, where))
                      for times, where in ((sampling, "/sys"), (sampling_inside, str(sysfs)))]
            for timer in timers:
                timer.start()
            deadline = time.monotonic() + duration - warmup
            while time.monotonic() < deadline:
                for name, p in procs.items():
                    rss[name].append(p.memory_info().rss)
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
            samples = (reports_accepted(port) - reports_start) // 3  # per agent
            for timer in timers:
                timer.join()
            result: dict[str, Any] = {
                "samples": samples, "duration": duration,
                "sampling_ms": statistics.median(sampling) * 1000 if sampling else None,
                "sampling_inside_ms": statistics.median(sampling_inside) * 1000
                if sampling_inside else None,
                "probe_round_ms": probe_round_cpu() * 1000,
                "top_processes": top_processes_cpu()}
            for name, p in procs.items():
                cpu0, mem0 = start[name]
                mem = p.memory_full_info()
                result[name] = {
                    "cpu_ms_per_sample": (cpu_seconds(p) - cpu0) * 1000 / max(samples, 1),
                    "rss_mb": mem.rss / 2**20, "uss_mb": mem.uss / 2**20,
                    "rss_growth_mb": (mem.rss - mem0.rss) / 2**20,
                    "rss_max_mb": max(rss[name]) / 2**20,
                }
            return result
        finally:
            for process in (*agents, *floors, dash):
                stop(process)


def print_agent(result: dict[str, Any]) -> None:
    print(f"agent bench: {result['samples']} samples at 1 s, {result['duration']:.0f} s, "
          f"{os.cpu_count()} cores")
    print(f"{'':34} {'CPU/sample':>10} {'RSS MB':>7} {'USS MB':>7} {'RSS growth MB':>14}")
    for name, label in (("agent", "agent.py (/proc, no psutil)"),
                        ("agent_psutil", "agent.py --use-psutil"),
                        ("agent_inside", "agent.py, 8 sensors, 20 containers"),
                        ("floor", "floor (imports + 1 connection)"),
                        ("floor_psutil", "floor + import psutil")):
        r = result[name]
        print(f"{label:34} {r['cpu_ms_per_sample']:7.3f} ms {r['rss_mb']:7.1f} "
              f"{r['uss_mb']:7.1f} {r['rss_growth_mb']:14.2f}")
    above = result["agent"]["rss_mb"] - result["floor"]["rss_mb"]
    above_psutil = result["agent_psutil"]["rss_mb"] - result["floor"]["rss_mb"]
    above_inside = result["agent_inside"]["rss_mb"] - result["floor"]["rss_mb"]
    print(f"agent RSS above the floor: {above:.1f} MB; --use-psutil {above_psutil:.1f} MB; "
          f"sensors and containers {above_inside:.1f} MB")
    if result["sampling_ms"] is not None:
        print(f"of which collecting, building, encoding (median): {result['sampling_ms']:.3f} "
              f"ms; {result['sampling_inside_ms']:.3f} ms with sensors, containers")
    print(f"latency probes, 4 TCP targets: {result['probe_round_ms']:.1f} ms CPU per round "
          "(20 probes, in-process)")
    processes, top_ms = result["top_processes"]
    print(f"top processes while watched, {processes} processes: {top_ms:.2f} ms CPU per "
          "report (in-process)")


# --- bench: dashboard ------------------------------------------------------------


async def floor_server() -> None:
    """The floor for the dashboard: the same websockets server, only receiving."""
    async def receive(ws: Any) -> None:
        async for _ in ws:
            pass
    # The same transport settings as the dashboard's agent channel (no compression, no
    # pings from this side).
    async with serve(receive, "127.0.0.1", 0, max_size=64 * 1024, compression=None,
                     backlog=1024, ping_interval=None) as server:
        print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
              file=sys.stderr, flush=True)
        await asyncio.Future()


class Target(NamedTuple):
    """A server a load drives: its port, its process, how many viewers watch it."""

    port: int
    process: psutil.Process
    viewers: int = 0


def run_load(targets: list[Target], ids: list[str], duration: float,
             interval: float = 1.0) -> list[dict[str, Any]]:
    """Drive each target with a process of agents (`ids`, every `interval` s) and one of
    viewers; measure the targets' CPU and memory meanwhile, over the same window."""
    procs: list[tuple[int, str, subprocess.Popen]] = []
    for n, target in enumerate(targets):
        procs.append((n, "agents", subprocess.Popen(
            [sys.executable, str(BENCH), "_load", "--url",
             f"ws://127.0.0.1:{target.port}/ws-report", "--duration", str(duration),
             "--interval", str(interval), "--ids", ",".join(ids)],
            stdout=subprocess.PIPE, text=True)))
        if target.viewers:
            procs.append((n, "viewers", subprocess.Popen(
                [sys.executable, str(BENCH), "_watch", "--url",
                 f"ws://127.0.0.1:{target.port}/ws-frontend", "--viewers",
                 str(target.viewers), "--duration", str(duration + 2)],
                stdout=subprocess.PIPE, text=True)))
    idle_rss = [target.process.memory_info().rss for target in targets]
    # Measure the middle of the run: connections are up and the stagger has settled.
    warmup = min(5.0 + len(ids) / CONNECTS_PER_SECOND + interval, duration / 2)
    time.sleep(warmup)
    cpu0, wall0 = [cpu_seconds(target.process) for target in targets], time.monotonic()
    rss: list[list[int]] = [[] for _ in targets]
    while True:
        for samples, target in zip(rss, targets):
            samples.append(target.process.memory_info().rss)
        if time.monotonic() - wall0 >= duration - warmup - 1:
            break
        time.sleep(0.5)
    cpu = [cpu_seconds(target.process) for target in targets]
    wall1 = time.monotonic()
    outputs: list[dict[str, Any]] = [{} for _ in targets]
    for n, kind, proc in procs:
        outputs[n][kind] = json.loads(proc.communicate(timeout=duration + 120)[0])
    # The whole seconds inside the window (a short smoke run may have none: then the run's).
    first, last = math.ceil(wall0), math.floor(wall1)
    results = []
    for n in range(len(targets)):
        agents = outputs[n]["agents"]
        in_window = sum(count for second, count in agents["per_second"].items()
                        if first <= int(second) < last)
        rate = in_window / (last - first) if last > first else agents["sent"] / duration
        # The peak is what a memory limit must allow; the median is what the agents hold,
        # without the moments (an update in 20 viewers' buffers, history's step) that come
        # and go.
        peak, steady = max(rss[n]), statistics.median(rss[n])
        results.append({
            "cpu_cores": (cpu[n] - cpu0[n]) / (wall1 - wall0), "peak_rss_mb": peak / 2**20,
            "sent": agents["sent"], "reports_per_second": rate, "window": wall1 - wall0,
            **outputs[n].get("viewers", {}),
            "rss_per_agent_kib": (peak - idle_rss[n]) / max(len(ids), 1) / 1024,
            "steady_rss_per_agent_kib": (steady - idle_rss[n]) / max(len(ids), 1) / 1024})
    return results


@contextlib.contextmanager
def server_running(start: Callable[[Path], tuple[subprocess.Popen, int]],
                   viewers: int = 0) -> Iterator[Target]:
    """The server `start` runs in a temporary directory, for as long as the block runs."""
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start(Path(tmp))
        try:
            yield Target(port, psutil.Process(process.pid), viewers)
        finally:
            stop(process)


def start_floor(directory: Path) -> tuple[subprocess.Popen, int]:
    """bench.py's bare websockets server (floor_server)."""
    return start_server([sys.executable, str(BENCH), "_floor"],
                        directory / "floor.log")


def bench_dashboard(agents: int, viewers: int, duration: float,
                    compression: bool = False, history: bool = True,
                    interval: float = 1.0, side_by_side: bool = False) -> dict[str, Any]:
    """The dashboard under `agents` agents and `viewers` viewers, against the floor: the
    same load on a bare websockets server.

    The machine's speed drifts (this one's floor moved by a third between runs). So the
    floor runs just before and just after the dashboard, and the ratio compares with their
    mean; or (`side_by_side`) it runs at the same time, on the same core, under a load of
    its own, and both are measured over the same seconds: the drift is then the same for
    both (share_one_core)."""
    ids = [f"agent-{i:05d}" for i in range(agents)]
    flags = ["--viewer-compression"] if compression else []
    flags += [] if history else ["--no-history"]
    if side_by_side:
        with server_running(start_floor) as floor, \
                server_running(lambda tmp: start_dashboard(tmp, ids, *flags), viewers) as dash:
            shared_core = share_one_core([floor.process, dash.process])
            accepted0 = reports_accepted(dash.port)
            floor_load, load = run_load([floor, dash], ids, duration, interval)
            accepted = reports_accepted(dash.port) - accepted0
        floor_runs = [floor_load]
    else:
        shared_core = None
        floor_runs = [run_floor(ids, duration, interval)]
        with server_running(lambda tmp: start_dashboard(tmp, ids, *flags), viewers) as dash:
            accepted0 = reports_accepted(dash.port)
            (load,) = run_load([dash], ids, duration, interval)
            accepted = reports_accepted(dash.port) - accepted0
        floor_runs.append(run_floor(ids, duration, interval))
    sent = load["sent"]
    latencies = sorted(load.get("latencies", []))
    viewer_bytes = load.get("viewer_bytes", [])
    reports_per_s = load["reports_per_second"]  # in the measured window
    cpu_per_report = load["cpu_cores"] / reports_per_s if reports_per_s else 0.0
    floor_ms = [run["cpu_cores"] / run["reports_per_second"] * 1000
                for run in floor_runs if run["reports_per_second"]]
    floor_per_report = statistics.mean(floor_ms) / 1000 if floor_ms else 0.0
    floor_load = {key: statistics.mean(run[key] for run in floor_runs)
                  for key in ("cpu_cores", "peak_rss_mb", "rss_per_agent_kib",
                              "steady_rss_per_agent_kib")}
    bytes_per_viewer = statistics.mean(viewer_bytes) / (duration + 2) if viewer_bytes else 0
    return {
        "agents": agents, "viewers": viewers, "duration": duration, "cores": os.cpu_count(),
        "viewer_compression": compression, "history": history, "side_by_side": side_by_side,
        "shared_core": shared_core,
        "safe_transport": os.environ.get("SSS_SAFE_TRANSPORT", ""),  # tricks turned off
        "reports_sent": sent, "reports_accepted": accepted,
        "reports_per_second": reports_per_s,
        "cpu_cores": load["cpu_cores"], "cpu_ms_per_report": cpu_per_report * 1000,
        "floor_cpu_cores": floor_load["cpu_cores"],
        "floor_cpu_ms_per_report": floor_per_report * 1000,
        "floor_cpu_ms_per_report_runs": floor_ms,
        "cpu_ratio_to_floor": cpu_per_report / floor_per_report if floor_per_report else None,
        "peak_rss_mb": load["peak_rss_mb"], "floor_peak_rss_mb": floor_load["peak_rss_mb"],
        "rss_per_agent_kib": load["rss_per_agent_kib"],
        "floor_rss_per_agent_kib": floor_load["rss_per_agent_kib"], "interval": interval,
        "steady_rss_per_agent_kib": load["steady_rss_per_agent_kib"],
        "floor_steady_rss_per_agent_kib": floor_load["steady_rss_per_agent_kib"],
        "latency_p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
        "latency_p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
        "latency_samples": len(latencies),
        "viewer_bytes_per_second": bytes_per_viewer,
        "viewer_bytes_per_report": (statistics.mean(viewer_bytes) / sent
                                    if viewer_bytes and sent else 0),
        "viewers_cut": load.get("viewers_cut", 0),
    }


def share_one_core(processes: list[psutil.Process]) -> int | None:
    """Run `processes` on one core (the first they may use), where the system can say so:
    the floor's cost per report moved by a third between side-by-side runs that left
    both servers free to move, as each ran where it happened to. Pinned to one core, both
    run at its speed and beside the same neighbours (the loads go where they like).
    Returns the core, as the processes now say they run on it (None: not pinned)."""
    if not hasattr(processes[0], "cpu_affinity"):  # macOS
        return None
    first = min(processes[0].cpu_affinity())
    for process in processes:
        process.cpu_affinity([first])
    pinned = {tuple(process.cpu_affinity()) for process in processes}
    return first if pinned == {(first,)} else None


def run_floor(ids: list[str], duration: float, interval: float) -> dict[str, Any]:
    """One run of the floor alone: the dashboard's load on bench.py's bare websockets
    server."""
    with server_running(start_floor) as floor:
        return run_load([floor], ids, duration, interval)[0]


def percentile(values: list[float], pct: float) -> float:
    return values[min(int(len(values) * pct / 100), len(values) - 1)]


def print_dashboard(results: list[dict[str, Any]]) -> None:
    first = results[0]
    print(f"dashboard bench: {first['viewers']} viewers"
          f"{' (compressed)' if first['viewer_compression'] else ''}, history "
          f"{'on' if first['history'] else 'off'}, reports every {first['interval']:g} s, "
          f"{first['duration']:.0f} s "
          f"per run, {first['cores']} cores (dashboard and load generators share them); "
          + (f"floor: run side by side on core {first['shared_core']}, under a load of its own"
             if first["side_by_side"] else "floor: the mean of a run before and one after")
          + (f"; SSS_SAFE_TRANSPORT={first['safe_transport']}" if first["safe_transport"]
             else ""))
    print(f"{'agents':>6} {'reports/s':>9} {'CPU cores':>9} {'ms/report':>9} "
          f"{'floor ms':>8} {'ratio':>5} {'peak RSS MB':>11} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'viewer KiB/s':>12} {'B/report':>8} {'KiB/agent':>9} {'floor':>6} "
          f"{'steady':>6} {'floor':>6}")
    for r in results:
        p50 = f"{r['latency_p50_ms']:7.0f}" if r["latency_p50_ms"] is not None else "      –"
        p99 = f"{r['latency_p99_ms']:7.0f}" if r["latency_p99_ms"] is not None else "      –"
        ratio = f"{r['cpu_ratio_to_floor']:5.2f}" if r["cpu_ratio_to_floor"] else "    –"
        print(f"{r['agents']:6d} {r['reports_per_second']:9.0f} {r['cpu_cores']:9.2f} "
              f"{r['cpu_ms_per_report']:9.3f} {r['floor_cpu_ms_per_report']:8.3f} {ratio} "
              f"{r['peak_rss_mb']:11.1f} {p50} {p99} "
              f"{r['viewer_bytes_per_second'] / 1024:12.1f} {r['viewer_bytes_per_report']:8.0f} "
              f"{r['rss_per_agent_kib']:9.1f} {r['floor_rss_per_agent_kib']:6.1f} "
              f"{r['steady_rss_per_agent_kib']:6.1f} {r['floor_steady_rss_per_agent_kib']:6.1f}"
              + (f"  ({r['viewers_cut']} viewers cut: the load generator fell behind)"
                 if r["viewers_cut"] else ""))


# --- bench: a restart storm ------------------------------------------------------------


async def reconnecting_agents(url: str, ids: list[str], duration: float,
                              interval: float) -> dict[str, Any]:
    """Agents that reconnect the way agent.py does (agent.retry_delay), reporting meanwhile.

    They speak WebSocket with a few lines of their own (RawAgent): 10,000 websockets
    clients in one process take longer to handshake than the dashboard does, and the
    bench would time its own load generator.
    """
    deadline = time.monotonic() + duration
    handshakes = 0
    host, port = url.split("//")[1].split("/")[0].split(":")

    async def one(server_id: str, offset: float) -> None:
        nonlocal handshakes
        rng, spread = random.Random(server_id), agent.RESTART_SPREAD
        frames = itertools.cycle([RawAgent.text_frame(report.encode())
                                  for report in fake_reports(server_id, interval=interval)])
        headers = {"X-SERVER-ID": server_id, "X-AUTH-SECRET": SECRET}
        await asyncio.sleep(offset)
        retry, delays, lost = 0, agent.backoff_delays(), False
        while time.monotonic() < deadline:
            raw = RawAgent()
            try:
                handshakes += 1
                await raw.connect(host, int(port), "/ws-report", headers,
                                  fleet_address(server_id))
                retry, delays, lost = 0, agent.backoff_delays(), True
                while time.monotonic() < deadline and raw.open:
                    raw.send(next(frames))
                    await asyncio.sleep(interval)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass  # refused, reset, timed out: retry as agent.py would
            finally:
                raw.close()
                spread = raw.restart_spread or spread
            retry += 1
            await asyncio.sleep(agent.retry_delay(retry, lost, next(delays), rng, spread))

    await asyncio.gather(*(one(sid, i * interval / len(ids)) for i, sid in enumerate(ids)),
                         return_exceptions=True)
    return {"handshakes": handshakes}


def upgrade_request(path: str, headers: dict[str, str] | None = None) -> bytes:
    """A WebSocket handshake request, written out (for clients that are not websockets)."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawAgent:
    """The client side of RFC 6455, as little as a load generator needs: the upgrade, text
    frames out (masked, as clients must), pings answered, the dashboard's reconnect spread
    taken as agent.py takes it, everything else read and dropped."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.pings = 0
        self.restart_spread: float | None = None

    @property
    def open(self) -> bool:
        return self.reading is not None and not self.reading.done()

    async def connect(self, host: str, port: int, path: str, headers: dict[str, str],
                      source: str, timeout: float = 30) -> None:
        reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), timeout)
        self.writer.write(upgrade_request(path, headers))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionRefusedError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        self.reading = asyncio.ensure_future(self.read(reader))

    async def read(self, reader: asyncio.StreamReader) -> None:
        """Server frames are never masked; answer pings, stop at a close frame."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                first, length = await reader.readexactly(2)
                if length == 126:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await reader.readexactly(8), "big")
                payload = await reader.readexactly(length)
                opcode = first & 0x0F
                if opcode == 0x8:
                    return
                if opcode == 0x9:
                    self.pings += 1
                    self.send(self.frame(0xA, payload))
                elif opcode == 0x1:
                    self.restart_spread = agent.parse_reconnect(payload) or self.restart_spread

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        """A final, masked frame; the mask is zeros (valid, and the payload stays as is)."""
        size = len(payload)
        if size < 126:
            length = bytes([0x80 | size])
        elif size < 65536:
            length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
        else:
            length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
        return bytes([0x80 | opcode]) + length + b"\0\0\0\0" + payload

    @classmethod
    def text_frame(cls, payload: bytes) -> bytes:
        return cls.frame(0x1, payload)

    def send(self, frame: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(frame)

    def close(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
        if self.writer is not None:
            self.writer.transport.abort()


def agents_connected(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.loads(response.read())["agents"]
    except OSError:
        return -1


def bench_restart(agents: int, down: float, interval: float) -> dict[str, Any]:
    """Restart a dashboard under `agents` agents; how long until all are back, its CPU
    meanwhile: the busiest half second, the mean, and how long it ran at a full core."""
    ids = [f"agent-{i:05d}" for i in range(agents)]
    generators = max((os.cpu_count() or 2) - 1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        dash, port = start_dashboard(Path(tmp), ids)
        url = f"ws://127.0.0.1:{port}/ws-report"
        budget = 120.0 + agents / 100 + down
        procs = [subprocess.Popen(
            [sys.executable, str(BENCH), "_reconnect", "--url", url, "--duration",
             str(budget), "--interval", str(interval), "--ids", ",".join(ids[g::generators])],
            stdout=subprocess.PIPE, text=True) for g in range(generators)]
        try:
            deadline = time.monotonic() + 60 + agents / 100
            while agents_connected(port) < agents and time.monotonic() < deadline:
                time.sleep(0.5)
            stop(dash)
            time.sleep(down)
            restarted = time.monotonic()
            dash, port = start_server([sys.executable, str(CHECKOUT / "dashboard.py"), "--config",
                                       str(Path(tmp) / "servers.json"), "--host", "127.0.0.1",
                                       "--port", str(port)], Path(tmp) / "dashboard2.log")
            process = psutil.Process(dash.pid)
            process.cpu_percent()
            cpu0 = cpu_seconds(process)
            peak, full, connected, curve = 0.0, 0.0, 0, []
            sample = 0.5  # seconds
            while time.monotonic() - restarted < 60:
                time.sleep(sample)
                cores = process.cpu_percent() / 100
                peak, full = max(peak, cores), full + sample * (cores >= 0.95)
                connected = agents_connected(port)
                curve.append((round(time.monotonic() - restarted, 1), connected))
                if connected >= agents:
                    break
            back = time.monotonic() - restarted
            mean = (cpu_seconds(process) - cpu0) / back
        finally:
            stop(dash)
            for p in procs:
                p.kill()
    return {"agents": agents, "down_seconds": down, "all_back_seconds": back,
            "all_back": connected >= agents, "peak_cpu_cores": peak, "mean_cpu_cores": mean,
            "full_core_seconds": full, "curve": curve[::4]}


def print_restart(r: dict[str, Any]) -> None:
    state = "all back" if r["all_back"] else "NOT all back"
    print(f"restart bench: {r['agents']} agents, dashboard down {r['down_seconds']:.0f} s: "
          f"{state} {r['all_back_seconds']:.1f} s after it restarted; "
          f"dashboard CPU meanwhile {r['mean_cpu_cores']:.2f} cores on average, at most "
          f"{r['peak_cpu_cores']:.2f} (half seconds), at a full core for "
          f"{r['full_core_seconds']:.1f} s")
    print("  seconds after restart, agents connected: " +
          ", ".join(f"{t}: {n}" for t, n in r["curve"]))


# --- bench: the page ------------------------------------------------------------------

PAGE_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def bench_page(servers: int, duration: float) -> dict[str, Any]:
    """Chromium on a real dashboard fed by `servers` agents at 1 Hz: how long an update takes
    to parse and to apply (p95, measured in the page), the JS heap over `duration`, and how
    long search and collapsing a group take."""
    from playwright.sync_api import sync_playwright
    ids = [f"host-{i:05d}" for i in range(servers)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "servers.json").write_text(json.dumps({"servers": [
            {"id": sid, "secret": SECRET, "group": f"Rack {i % 20:02d}"}
            for i, sid in enumerate(ids)]}))
        dash, port = start_server([sys.executable, str(CHECKOUT / "dashboard.py"), "--config",
                                   str(Path(tmp) / "servers.json"), "--host", "127.0.0.1",
                                   "--port", "0"], Path(tmp) / "dashboard.log")
        load = subprocess.Popen(
            [sys.executable, str(BENCH), "_load", "--url",
             f"ws://127.0.0.1:{port}/ws-report", "--duration",
             str(duration + 40 + servers / 100), "--ids", ",".join(ids)],
            stdout=subprocess.DEVNULL)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=PAGE_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#online", has_text=str(servers)).wait_for(
                    timeout=60_000 + servers * 10)
                cdp = page.context.new_cdp_session(page)

                def heap_mb() -> float:
                    cdp.send("HeapProfiler.collectGarbage")
                    return cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20

                page.wait_for_timeout(10_000)
                heap_start = heap_mb()
                page.wait_for_timeout(duration * 1000)
                heap_end = heap_mb()
                result = {"servers": servers, "duration": duration,
                          "updates": page.evaluate("timings.count"),
                          "apply_p95_ms": page.evaluate("timings.p95('apply')"),
                          "parse_p95_ms": page.evaluate("timings.p95('parse')"),
                          "heap_start_mb": heap_start, "heap_end_mb": heap_end,
                          "search_ms": page.evaluate("""() => {
                              const t0 = performance.now(), box = document.getElementById("search");
                              box.value = "host-0001"; box.dispatchEvent(new Event("input"));
                              const ms = performance.now() - t0;
                              box.value = ""; box.dispatchEvent(new Event("input"));
                              return ms; }"""),
                          "collapse_ms": page.evaluate("""() => {
                              const head = document.querySelector("button.group-head");
                              const t0 = performance.now(); head.click();
                              const ms = performance.now() - t0; head.click(); return ms; }""")}
                browser.close()
        finally:
            load.kill()
            stop(dash)
    return result


def print_page(r: dict[str, Any]) -> None:
    print(f"page bench: {r['servers']} servers at 1 Hz, {r['duration']:.0f} s, "
          f"{r['updates']} updates in Chromium")
    print(f"  one update: parse p95 {r['parse_p95_ms']:.1f} ms, apply p95 "
          f"{r['apply_p95_ms']:.1f} ms")
    print(f"  JS heap {r['heap_start_mb']:.1f} MB -> {r['heap_end_mb']:.1f} MB")
    print(f"  search {r['search_ms']:.1f} ms, collapse a group {r['collapse_ms']:.1f} ms")


# --- bench: history ------------------------------------------------------------


def bench_history(servers: int) -> dict[str, Any]:
    """history.py in this process, with a fake clock: fold, one step and its write window,
    disk use, queries."""
    from sss import history
    from sss.reports import validate_report
    rng = random.Random(1)
    frame = json.dumps(fake_report("bench", rng))
    record = validate_report(frame)
    view = json.dumps({"id": "bench", **record})
    rounds = 50_000
    store = history.History(Path("/nonexistent"))
    store.watch(0.0)
    start = time.perf_counter()
    for _ in range(rounds):
        validate_report(frame)
    validate_us = (time.perf_counter() - start) / rounds * 1e6
    start = time.perf_counter()
    for i in range(rounds):
        second = i * 60 / rounds
        store.fold(f"s{i % servers}", record, second, 1_795_000_000 + second)
    fold_us = (time.perf_counter() - start) / rounds * 1e6

    with tempfile.TemporaryDirectory() as tmp:
        store = history.History(Path(tmp))
        store.watch(0.0)
        t0 = 1_795_000_000 // 3600 * 3600
        ids = [f"srv-{i:05d}" for i in range(servers)]
        for sid in ids:
            store.fold(sid, record, 1, t0 + 1)
        lags: list[float] = []

        async def step_with_lag() -> float:
            loop = asyncio.get_running_loop()
            done = asyncio.Event()

            async def ticker() -> None:
                while not done.is_set():
                    before = loop.time()
                    await asyncio.sleep(0.001)
                    lags.append(loop.time() - before - 0.001)
            task = asyncio.ensure_future(ticker())
            started = loop.time()
            await store.step(loop, 61, t0 + 61, ids, lambda sid: (t0, view))
            elapsed = loop.time() - started
            done.set()
            await task
            return elapsed
        step_s = asyncio.run(step_with_lag())
        # The steps after the first of an hour (the availability of the 23 completed hours
        # is kept), with the servers' last views, then without: what the buckets alone cost.
        # The write window: from the step's end until its rows are committed (the 10 ms the
        # dashboard waits past the boundary, then write_rows).
        steady, windows = [], []
        for minute, views in ((2, True), (3, False)):
            for sid in ids:
                store.fold(sid, record, minute * 60 - 58, t0 + minute * 60 - 58)
            closed = store.take_closed(t0 + minute * 60 + 1)
            latest = [(sid, t0, view) for sid in ids] if views else []
            start = time.perf_counter()
            store.in_thread(store.writer.write_rows, closed)
            windows.append(time.perf_counter() - start + 0.01)
            store.in_thread(store.writer.write_rest, latest, t0 + minute * 60 + 1,
                            t0 + minute * 60 + 1)
            store.in_thread(store.writer.fields, ids, t0 + minute * 60 + 1)
            steady.append(time.perf_counter() - start)
        store.close()

    with tempfile.TemporaryDirectory() as tmp:
        sample = 20  # servers for a simulated day at the default 60 s resolution
        store = history.History(Path(tmp))
        store.watch(0.0)
        writer = store.writer
        ids = [f"srv-{i:02d}" for i in range(sample)]
        for minute in range(24 * 60):
            for sid in ids:
                store.fold(sid, record, minute * 60 + 5, t0 + minute * 60 + 5)
            closed = store.take_closed(t0 + minute * 60 + 60)
            writer.write_rows(closed)
            wall = t0 + minute * 60 + 60
            writer.write_rest([(sid, t0, view) for sid in ids], wall, wall)
        # What a day leaves in memory per server: the availability ledger's hours.
        ledger = writer.ledger
        ledger_bytes = statistics.mean(
            deep_size((ledger.hours.get(sid), ledger.past.get(sid), ledger.month.get(sid)))
            for sid in ids)
        db = writer.connection()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        fine = db.execute("SELECT COUNT(*) FROM samples WHERE tier = 0").fetchone()[0]
        hourly = db.execute("SELECT COUNT(*) FROM samples WHERE tier = 1").fetchone()[0]
        size = (Path(tmp) / "history.db").stat().st_size
        per_row = size / (fine + hourly)
        # A year of hourly rows for one server, then its 1 y query.
        year = history.Bucket(0)
        year.add(history.metric_values(record), (None, None), 0.0)
        db.executemany(history.ADD_SAMPLE, [
            history.in_tier(history.bucket_row(history.FINE, "year", year), history.HOURLY,
                            t0 - h * 3600) for h in range(1, 24 * 365)])
        start = time.perf_counter()
        store.query("year", "1y", t0 + 60)
        query_ms = (time.perf_counter() - start) * 1000
        store.close()
    return {"servers": servers, "fold_us": fold_us, "validate_us": validate_us,
            "step_ms": step_s * 1000, "steady_step_ms": steady[0] * 1000,
            "buckets_only_ms": steady[1] * 1000, "write_window_ms": max(windows) * 1000,
            "max_loop_lag_ms": max(lags) * 1000 if lags else 0,
            "bytes_per_row": per_row,
            "bytes_per_server_day_fine": per_row * 1440,
            "bytes_per_server_day_hourly": per_row * 24,
            # 48 h of fine rows at 60 s, 400 days of hourly and of six-hour rows.
            "steady_bytes_per_server": per_row * (2 * 1440 + 400 * 24 + 400 * 4),
            "query_1y_ms": query_ms, "ledger_bytes_per_server": ledger_bytes}


def deep_size(value: Any) -> int:
    """Bytes of an object and of what it holds, as sys.getsizeof counts them."""
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(deep_size(key) + deep_size(item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        size += sum(deep_size(item) for item in value)
    return size


def print_history(r: dict[str, Any]) -> None:
    print(f"history bench: {r['servers']} servers, 60 s resolution")
    print(f"  fold per report        {r['fold_us']:8.2f} µs  "
          f"(validating it: {r['validate_us']:.2f} µs)")
    print(f"  one step, {r['servers']} servers: {r['step_ms']:.1f} ms the first of an hour, "
          f"{r['steady_step_ms']:.1f} ms the others, {r['buckets_only_ms']:.1f} ms of that the "
          f"buckets (the rest: the last views); on the writer thread, loop lag at most "
          f"{r['max_loop_lag_ms']:.1f} ms")
    print(f"  write window            {r['write_window_ms']:7.0f} ms  (from a step's end until "
          f"its rows are committed: a kill -9 within it loses that step too)")
    print(f"  disk per server per day {r['bytes_per_server_day_fine'] / 1024:7.0f} KiB fine rows "
          f"(kept 48 h) + {r['bytes_per_server_day_hourly'] / 1024:.1f} KiB hourly rows")
    print(f"  steady state per server {r['steady_bytes_per_server'] / 2**20:7.1f} MiB "
          f"(48 h fine + 400 days of hourly and six-hour rows)")
    print(f"  1 y query, one server  {r['query_1y_ms']:8.1f} ms")
    print(f"  in memory per server    {r['ledger_bytes_per_server'] / 1024:7.1f} KiB after a day "
          f"(the availability of its last 24 hours)")


# --- bench: attacks from the open internet (README, Security) --------------------------

ATTACK_ADDRESSES = 50  # sources per attack, from 127.9-12.x.y: the per-address caps apply


def attack_source(kind: int, n: int) -> str:
    return f"127.{9 + kind}.{n // 250 % 250}.{n % 250 + 1}"


ATTACKS = ("idle_viewers", "slow_headers", "guesses", "flood_reports", "sign_ins",
           "slow_readers", "refusals", "year_queries", "idle_logins")
BENCH_PASSWORD = "bench-password-123"  # the sign-in attacks' user, alice, has this one


async def attack(port: int, duration: float, flooder: str,
                 kinds: tuple[str, ...] = ATTACKS) -> dict[str, int]:
    """The attacks at once, for `duration` s: viewers that never read, reconnecting in a
    loop; request headers that never end; wrong secrets from rotating addresses; an
    authenticated agent flooding reports; sign-in guesses sent together from 20 addresses;
    requests for /api/servers whose answers are never read; connect-and-close from
    addresses over their handshake limit; year-long history queries from 32 clients; idle
    sign-in sockets. Counts what each got done."""
    deadline = time.monotonic() + duration
    done = dict.fromkeys(ATTACKS, 0)
    upgrade = upgrade_request("/ws-frontend")
    # Just under the limits (16 KiB of headers, 8 KiB a line), and never finished.
    slow = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 8000 + b"\r\nX-Pad: "
            + b"p" * 7000 + b"\r\n")

    async def opened(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return await asyncio.open_connection(sock=sock)

    async def idle_viewer(n: int) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await opened(attack_source(0, n % ATTACK_ADDRESSES))
                writer.write(upgrade)
                done["idle_viewers"] += 1
                await asyncio.sleep(2)  # never read; then reconnect
                writer.transport.abort()
            await asyncio.sleep(0.1)

    async def slow_headers(n: int) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                reader, writer = await opened(attack_source(1, n % ATTACK_ADDRESSES))
                writer.write(slow)
                done["slow_headers"] += 1
                await asyncio.wait_for(reader.read(), 15)  # until the dashboard hangs up
                writer.transport.abort()
            await asyncio.sleep(0.1)

    async def guesses(n: int) -> None:
        while time.monotonic() < deadline:
            source = attack_source(2, random.randrange(250 * 250))
            with contextlib.suppress(Exception):
                async with connect(f"ws://127.0.0.1:{port}/ws-report", open_timeout=10,
                                   additional_headers={"X-SERVER-ID": "host-00001",
                                                       "X-AUTH-SECRET": f"guess-{n}"},
                                   local_addr=(source, 0)):
                    pass
            done["guesses"] += 1

    async def flood() -> None:
        report = json.dumps(fake_report(flooder, random.Random(0)))
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with connect(f"ws://127.0.0.1:{port}/ws-report", ping_interval=None,
                                   additional_headers={"X-SERVER-ID": flooder,
                                                       "X-AUTH-SECRET": SECRET}) as ws:
                    while time.monotonic() < deadline:
                        await ws.send(report)
                        done["flood_reports"] += 1
            await asyncio.sleep(1)

    async def sign_ins(n: int) -> None:
        """Guesses sent together, four sockets at a time, from one of 20 addresses."""
        source = attack_source(3, n)
        login = f"ws://127.0.0.1:{port}/ws-login"
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                sockets = [await connect(login, open_timeout=10, local_addr=(source, 0))
                           for _ in range(4)]
                for ws in sockets:
                    await ws.send(json.dumps({"user": "alice", "password": f"guess-{n}"}))
                    done["sign_ins"] += 1
                for ws in sockets:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.recv(), 10)
                    await ws.close()
            await asyncio.sleep(0.1)

    async def slow_reader(n: int) -> None:
        """/api/servers, never read; again every 2 s."""
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await opened(attack_source(4, n % ATTACK_ADDRESSES))
                writer.write(b"GET /api/servers HTTP/1.1\r\nHost: x\r\n\r\n")
                done["slow_readers"] += 1
                await asyncio.sleep(2)
                writer.transport.abort()
            await asyncio.sleep(0.1)

    async def refusals(n: int) -> None:
        """Connect and close at once, from the addresses slow_headers holds at their limit."""
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await opened(attack_source(1, n % ATTACK_ADDRESSES))
                writer.transport.close()
                done["refusals"] += 1
            await asyncio.sleep(0.01)

    async def year_query(n: int) -> None:
        """A year of one server's history, again and again, from 32 clients on 16 addresses."""
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                reader, writer = await opened(attack_source(5, n // 2))
                writer.write(b"GET /api/history?id=host-00000&range=1y HTTP/1.1\r\n"
                             b"Host: x\r\n\r\n")
                await asyncio.wait_for(reader.read(), 30)
                done["year_queries"] += 1
                writer.transport.abort()

    async def idle_login(n: int) -> None:
        """A sign-in socket that never says anything, again when it is closed."""
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with connect(f"ws://127.0.0.1:{port}/ws-login", open_timeout=10,
                                   local_addr=(attack_source(6, n % 10), 0)) as ws:
                    done["idle_logins"] += 1
                    await ws.recv()
            await asyncio.sleep(0.5)

    attackers = {"idle_viewers": [idle_viewer(n) for n in range(1000)],
                 "slow_headers": [slow_headers(n) for n in range(1000)],
                 "guesses": [guesses(n) for n in range(20)], "flood_reports": [flood()],
                 "sign_ins": [sign_ins(n) for n in range(20)],
                 "slow_readers": [slow_reader(n) for n in range(300)],
                 "refusals": [refusals(n) for n in range(20)],
                 "year_queries": [year_query(n) for n in range(32)],
                 "idle_logins": [idle_login(n) for n in range(100)]}
    for kind, coroutines in attackers.items():
        if kind not in kinds:
            for coroutine in coroutines:
                coroutine.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(
            *(c for kind in kinds for c in attackers[kind]), return_exceptions=True),
            duration + 20)
    return {kind: done[kind] for kind in kinds}


def dashboard_rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def metric_values(port: int, name: str) -> dict[str, float]:
    """Every series of one metric from /metrics: {labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {m[1] or "": float(m[2])
            for m in re.finditer(rf"^{name}(?:{{(.*)}})? (\S+)$", text, re.M)}


def bench_attack(servers: int, duration: float, kinds: tuple[str, ...] = ATTACKS,
                 warmup: float = 30, settle: float = 65) -> dict[str, Any]:
    """A 500-server fleet reporting every 5 s and a viewer watching, then the attacks at
    full tilt for `duration` s: the dashboard's RSS before, at its peak and after; the
    fewest agents connected; the longest wait of the watching viewer between updates."""
    ids = [f"host-{i:05d}" for i in range(servers)]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "servers.json"
        from sss.sessions import hash_password
        config.write_text(json.dumps({"servers": [
            {"id": sid, "secret": SECRET, "name": f"{sid}.example.net", "group": "Fleet"}
            for sid in [*ids, "flooder"]],
            "viewers": {"users": {"alice": hash_password(BENCH_PASSWORD)}}}))
        year_of_history(Path(tmp) / "data", ids[0], targets=16)
        dash, port = start_server([sys.executable, str(CHECKOUT / "dashboard.py"), "--config",
                                   str(config), "--host", "127.0.0.1", "--port", "0"],
                                  Path(tmp) / "dashboard.log")
        process = psutil.Process(dash.pid)
        total = warmup + duration + settle + 10
        load = subprocess.Popen([sys.executable, str(BENCH), "_load", "--url",
                                 f"ws://127.0.0.1:{port}/ws-report",
                                 "--duration", str(total), "--interval", "5",
                                 "--ids", ",".join(ids)], stdout=subprocess.PIPE)
        seen: dict[str, Any] = {"gaps": [], "fewest_online": servers}
        watcher = threading.Thread(target=watch_fleet, args=(port, total - 5, seen),
                                   daemon=True)
        try:
            time.sleep(warmup)  # every agent connected, the heap warm
            watcher.start()
            before = dashboard_rss_mb(process)
            attacker = subprocess.Popen([sys.executable, str(BENCH), "_attack",
                                         "--port", str(port), "--duration", str(duration),
                                         "--only", *kinds],
                                        stdout=subprocess.PIPE)
            seen["attack"] = True
            peak = before
            started = time.monotonic()
            while attacker.poll() is None and time.monotonic() - started < duration + 30:
                time.sleep(0.5)
                peak = max(peak, dashboard_rss_mb(process))
                if time.monotonic() - started >= duration:
                    seen["attack"] = False
            seen["attack"] = False
            done = json.loads(attacker.communicate(timeout=60)[0] or "{}")
            time.sleep(settle)  # the attack's connections time out; a full collection runs
            after = dashboard_rss_mb(process)
            refused = metric_values(port, "sss_refused_total")
            cut = metric_values(port, "sss_viewers_cut_total").get("", 0)
            watcher.join(timeout=30)
        finally:
            stop(dash)
            load.kill()
        gaps, fewest = seen["gaps"], seen["fewest_online"]
    return {"servers": servers, "duration": duration, "rss_before_mb": before,
            "rss_peak_mb": peak, "rss_after_mb": after, "fewest_agents": fewest,
            "longest_update_gap_s": max(gaps) if gaps else None, "attacks": done,
            "refused": {k.split('"')[1]: int(v) for k, v in refused.items()},
            "viewers_cut": int(cut)}


def year_of_history(data: Path, sid: str, targets: int) -> None:
    """400 days of six-hour rows for one server, with `targets` probe targets: what a
    year-long query reads."""
    from sss import history
    from sss.reports import validate_report
    data.mkdir(parents=True, exist_ok=True)
    store = history.History(data)
    db = store.writer.connection()
    bucket = history.Bucket(0)
    record = validate_report(json.dumps(fake_report(sid, random.Random(1))))
    bucket.add(history.metric_values(record), (None, None), 0.0)
    bucket.add_probes([{"name": f"target-{i:02d}", "rtt": 20.0 + i, "loss": 0.0}
                       for i in range(targets)])
    quarter, now = 6 * 3600, time.time()
    end = int(now) // quarter * quarter
    starts = range(end - 400 * 86400, end, quarter)
    row = history.bucket_row(history.FINE, sid, bucket)
    db.executemany(history.ADD_SAMPLE, [history.in_tier(row, history.QUARTER_DAY, t)
                                        for t in starts])
    db.executemany(history.ADD_PROBE, [(history.QUARTER_DAY, sid, r[2], t, *r[4:])
                                       for t in starts
                                       for r in history.probe_rows(history.FINE, sid, bucket)])
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                   [("rolled_until_1", int(now) // 3600 * 3600), ("rolled_until_2", end)])
    store.close()


def watch_fleet(port: int, duration: float, seen: dict[str, Any]) -> None:
    """A real viewer: while the attacks run, the longest time between two messages and
    the fewest servers online in what it is shown."""
    from websockets.sync.client import connect as sync_connect
    deadline = time.monotonic() + duration
    online: dict[str, bool] = {}
    with contextlib.suppress(ConnectionClosed), \
            sync_connect(f"ws://127.0.0.1:{port}/ws-frontend", max_size=None) as ws:
        last = time.monotonic()
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=30))
            if message["type"] == "snapshot":
                online = {s["id"]: s["online"] for s in message["servers"]}
            online.update((change["id"], change["set"]["online"])
                          for change in message["servers"] if "online" in change.get("set", {}))
            now = time.monotonic()
            if seen.get("attack"):
                seen["gaps"].append(now - last)
                fleet = sum(up for sid, up in online.items() if sid.startswith("host-"))
                seen["fewest_online"] = min(seen["fewest_online"], fleet)
            last = now


def print_attack(r: dict[str, Any]) -> None:
    print(f"attack bench: {r['servers']} agents reporting every 5 s, one viewer watching; "
          f"{len(r['attacks'])} attacks at once for {r['duration']:.0f} s")
    print("  done by the attackers: " + ", ".join(f"{k} {v}" for k, v in r["attacks"].items()))
    print("  refused by the dashboard: " + ", ".join(f"{k} {v}" for k, v in r["refused"].items())
          + f"; viewers cut {r['viewers_cut']}")
    print(f"  dashboard RSS: {r['rss_before_mb']:.1f} MB before, peak {r['rss_peak_mb']:.1f} MB, "
          f"{r['rss_after_mb']:.1f} MB after")
    gap = r["longest_update_gap_s"]
    print(f"  servers online: at least {r['fewest_agents']} of {r['servers']}; the viewer's "
          f"longest wait between updates: {gap:.2f} s" if gap is not None else "  no updates")


async def churning_agents(url: str, ids: list[str], churning: int, duration: float,
                          interval: float = 5.0, viewers: int = 0) -> int:
    """`ids` report every `interval` s; the first `churning` of them reconnect every 10 s,
    and `viewers` browsers each watch for 5 s, leave and come back."""
    deadline = time.monotonic() + duration
    reconnects = 0

    async def one(server_id: str, churn: bool) -> None:
        nonlocal reconnects
        report = json.dumps(fake_report(server_id, random.Random(server_id)))
        headers = {"X-SERVER-ID": server_id, "X-AUTH-SECRET": SECRET}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with connect(url, additional_headers=headers, ping_interval=None,
                                   local_addr=(fleet_address(server_id), 0)) as ws:
                    until = time.monotonic() + (10 if churn else duration)
                    while time.monotonic() < min(until, deadline):
                        await ws.send(report)
                        await asyncio.sleep(interval)
            reconnects += churn

    async def viewer(n: int) -> None:
        frontend = url.replace("/ws-report", "/ws-frontend")
        await asyncio.sleep(n * 5 / max(viewers, 1))
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with connect(frontend, max_size=None) as ws:
                    until = time.monotonic() + 5
                    while time.monotonic() < until:
                        await asyncio.wait_for(ws.recv(), 5)

    await asyncio.gather(*(one(sid, i < churning) for i, sid in enumerate(ids)),
                         *(viewer(n) for n in range(viewers)))
    return reconnects


def bench_churn(agents: int, churning: int, duration: float, interval: float = 5.0,
                viewers: int = 0) -> dict[str, Any]:
    """`agents` connected, `churning` of them reconnecting every 10 s, `viewers` coming and
    going, for `duration` s: the dashboard's RSS once a minute. Flat after warm-up means
    closed connections are freed."""
    ids = [f"host-{i:05d}" for i in range(agents)]
    with tempfile.TemporaryDirectory() as tmp:
        dash, port = start_dashboard(Path(tmp), ids)
        process = psutil.Process(dash.pid)
        load = subprocess.Popen([sys.executable, str(BENCH), "_churn", "--port",
                                 str(port), "--agents", str(agents), "--churning",
                                 str(churning), "--duration", str(duration), "--interval",
                                 str(interval), "--viewers", str(viewers)],
                                stdout=subprocess.PIPE)
        curve = []
        started = time.monotonic()
        try:
            while load.poll() is None:
                time.sleep(min(60, max(duration + started - time.monotonic(), 1)))
                minute = round((time.monotonic() - started) / 60, 1)
                if not curve or minute - curve[-1][0] >= 0.5:  # not again while it ends
                    curve.append((minute, round(dashboard_rss_mb(process), 2)))
            reconnects = int(load.communicate()[0] or 0)
        finally:
            stop(dash)
            load.kill()
    warm = [(minute, rss) for minute, rss in curve if minute >= 3]
    return {"agents": agents, "churning": churning, "duration": duration,
            "interval": interval, "viewers": viewers, "growth_mb_per_minute": slope(warm),
            "reconnects": reconnects, "rss_curve": curve}


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (x, y) points: a trend that one noisy sample does not
    make (the first and last minute alone swing by half a megabyte).

    >>> slope([(3, 10.0), (4, 10.5), (5, 10.0), (6, 10.5)])
    0.1
    """
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return round(sum((x - mean_x) * (y - mean_y) for x, y in points) / spread, 6)


def print_churn(r: dict[str, Any]) -> None:
    print(f"churn bench: {r['agents']} agents reporting every {r['interval']:g} s, "
          f"{r['churning']} reconnecting every 10 s, {r['viewers']} viewers coming and going, "
          f"{r['duration'] / 60:.0f} min, {r['reconnects']} reconnects")
    print("  minute, dashboard RSS MB: " + ", ".join(f"{m}: {v}" for m, v in r["rss_curve"]))
    print(f"  after minute 3: {r['growth_mb_per_minute'] * 1024:+.0f} KiB per minute (the "
          "least-squares slope)")


# --- main ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure agent.py and dashboard.py.")
    # The helpers (_load, _floor) are run by bench.py itself; the metavar hides them.
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{agent,dashboard,history,restart,page,"
                                             "attack,churn}")
    agent_cmd = commands.add_parser("agent", help="the agent's CPU and memory")
    agent_cmd.add_argument("--duration", type=float, default=60)
    agent_cmd.add_argument("--json", action="store_true")
    dash_cmd = commands.add_parser("dashboard", help="the dashboard's capacity")
    dash_cmd.add_argument("--agents", type=int, nargs="+", default=[2000])
    dash_cmd.add_argument("--viewers", type=int, default=20)
    dash_cmd.add_argument("--duration", type=float, default=30)
    dash_cmd.add_argument("--viewer-compression", action="store_true",
                          help="start the dashboard with --viewer-compression")
    dash_cmd.add_argument("--interval", type=float, default=1.0,
                          help="seconds between one agent's reports (the seed's default is 5)")
    dash_cmd.add_argument("--no-history", action="store_true",
                          help="start the dashboard with --no-history (live data only)")
    dash_cmd.add_argument("--side-by-side", action="store_true",
                          help="run the floor at the same time as the dashboard, under a "
                               "load of its own and on the same core, not before and after it")
    dash_cmd.add_argument("--json", action="store_true")
    page_cmd = commands.add_parser("page", help="the page in Chromium with N servers")
    page_cmd.add_argument("--servers", type=int, default=2000)
    page_cmd.add_argument("--duration", type=float, default=60)
    page_cmd.add_argument("--json", action="store_true")
    restart_cmd = commands.add_parser("restart", help="a dashboard restart under N agents")
    restart_cmd.add_argument("--agents", type=int, default=2000)
    restart_cmd.add_argument("--down", type=float, default=5.0)
    restart_cmd.add_argument("--interval", type=float, default=5.0)
    restart_cmd.add_argument("--json", action="store_true")
    reconnect_cmd = commands.add_parser("_reconnect")  # internal: reconnecting agents
    reconnect_cmd.add_argument("--url")
    reconnect_cmd.add_argument("--duration", type=float)
    reconnect_cmd.add_argument("--interval", type=float)
    reconnect_cmd.add_argument("--ids")
    hist_cmd = commands.add_parser("history", help="history.py: fold, writes, disk, queries")
    hist_cmd.add_argument("--servers", type=int, default=2000)
    hist_cmd.add_argument("--json", action="store_true")
    load_cmd = commands.add_parser("_load")  # internal: the agents of a load run
    load_cmd.add_argument("--url")
    load_cmd.add_argument("--duration", type=float)
    load_cmd.add_argument("--ids")
    load_cmd.add_argument("--interval", type=float, default=1.0)
    watch_cmd = commands.add_parser("_watch")  # internal: the viewers of a load run
    watch_cmd.add_argument("--url")
    watch_cmd.add_argument("--viewers", type=int)
    watch_cmd.add_argument("--duration", type=float)
    commands.add_parser("_floor")  # internal: the bare receiving server
    attack_cmd = commands.add_parser("attack", help="the attacks at once on a live fleet")
    attack_cmd.add_argument("--servers", type=int, default=500)
    attack_cmd.add_argument("--duration", type=float, default=60)
    attack_cmd.add_argument("--only", nargs="+", choices=ATTACKS, default=list(ATTACKS),
                            help="some of the attacks (default: all of them at once)")
    attack_cmd.add_argument("--warmup", type=float, default=30,
                            help="seconds for the fleet to connect before the attacks")
    attack_cmd.add_argument("--settle", type=float, default=65,
                            help="seconds after the attacks before RSS is read again")
    attack_cmd.add_argument("--json", action="store_true")
    inner_attack = commands.add_parser("_attack")  # internal: the attacking process
    inner_attack.add_argument("--port", type=int)
    inner_attack.add_argument("--duration", type=float)
    inner_attack.add_argument("--only", nargs="+", default=list(ATTACKS))
    churn_cmd = commands.add_parser("churn", help="RSS while agents reconnect all the time")
    churn_cmd.add_argument("--agents", type=int, default=300)
    churn_cmd.add_argument("--churning", type=int, default=20)
    churn_cmd.add_argument("--duration", type=float, default=900)
    churn_cmd.add_argument("--interval", type=float, default=5.0,
                           help="seconds between one agent's reports")
    churn_cmd.add_argument("--viewers", type=int, default=0,
                           help="browsers that each watch for 5 s, leave and come back")
    churn_cmd.add_argument("--json", action="store_true")
    inner_churn = commands.add_parser("_churn")  # internal: the churning agents
    inner_churn.add_argument("--port", type=int)
    inner_churn.add_argument("--agents", type=int)
    inner_churn.add_argument("--churning", type=int)
    inner_churn.add_argument("--duration", type=float)
    inner_churn.add_argument("--interval", type=float)
    inner_churn.add_argument("--viewers", type=int)
    args = parser.parse_args(argv)

    if args.command == "_load":
        per_second: collections.Counter[int] = collections.Counter()
        sent = asyncio.run(fake_agents(args.url, args.ids.split(","), SECRET, args.duration,
                                       args.interval, per_second))
        print(json.dumps({"sent": sent, "per_second": per_second}))
    elif args.command == "_watch":
        print(json.dumps(asyncio.run(watch_all(args.url, args.viewers, args.duration))))
    elif args.command == "_floor":
        asyncio.run(floor_server())
    elif args.command == "_attack":
        print(json.dumps(asyncio.run(attack(args.port, args.duration, "flooder",
                                            tuple(args.only)))))
    elif args.command == "_churn":
        ids = [f"host-{i:05d}" for i in range(args.agents)]
        print(asyncio.run(churning_agents(f"ws://127.0.0.1:{args.port}/ws-report", ids,
                                          args.churning, args.duration, args.interval,
                                          args.viewers)))
    elif args.command == "attack":
        result = bench_attack(args.servers, args.duration, tuple(args.only), args.warmup,
                              args.settle)
        print(json.dumps(result, indent=2)) if args.json else print_attack(result)
    elif args.command == "churn":
        result = bench_churn(args.agents, args.churning, args.duration, args.interval,
                             args.viewers)
        print(json.dumps(result, indent=2)) if args.json else print_churn(result)
    elif args.command == "_reconnect":
        print(json.dumps(asyncio.run(reconnecting_agents(args.url, args.ids.split(","),
                                                         args.duration, args.interval))))
    elif args.command == "page":
        result = bench_page(args.servers, args.duration)
        print(json.dumps(result, indent=2)) if args.json else print_page(result)
    elif args.command == "restart":
        result = bench_restart(args.agents, args.down, args.interval)
        print(json.dumps(result, indent=2)) if args.json else print_restart(result)
    elif args.command == "history":
        result = bench_history(args.servers)
        print(json.dumps(result, indent=2)) if args.json else print_history(result)
    elif args.command == "agent":
        result = bench_agent(args.duration)
        print(json.dumps(result, indent=2)) if args.json else print_agent(result)
    else:
        results = [bench_dashboard(n, args.viewers, args.duration, args.viewer_compression,
                                   not args.no_history, args.interval, args.side_by_side)
                   for n in args.agents]
        print(json.dumps(results, indent=2)) if args.json else print_dashboard(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
