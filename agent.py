#!/usr/bin/env python3
"""SimpleServerStatus agent: report this machine's metrics to a dashboard.

    $ python3 agent.py --server ws://127.0.0.1:8900/ws-report --id local \\
          --secret-file /etc/sss-agent.secret
    2026-11-26 05:29:10 INFO reporting to ws://127.0.0.1:8900/ws-report as local
    2026-11-26 05:29:10 INFO connected to ws://127.0.0.1:8900/ws-report

    $ python3 agent.py --once --id web-1 | head -c 110
    {"name":"web-1","group":"","id":"web-1","lastReportTime":1795670948,"hostInfo":{"kernelArch":"x86_64","kernelV

One sample per interval goes to the dashboard as the JSON message described in
PROTOCOL.md (the original SimpleServerStatus ServerInfo, plus our extensions).

It needs websockets 10.1 or newer (the new asyncio client from 13 on, the legacy one
before: the distributions' python3-websockets is enough). On Linux every reading comes
from /proc and statvfs; psutil is imported only where there is no /proc, or with
--use-psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import errno
import fnmatch
import functools
import hashlib
import json
import logging
import math
import os
import platform
import random
import re
import signal
import socket
import ssl
import statistics
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

# --- dependencies: websockets 10.1 or newer; psutil only where there is no /proc -------

INSTALL_HINT = ("apt-get install python3-websockets (Debian 12, Ubuntu 22.04 and newer), "
                "or: pip install websockets")


def websockets_version() -> tuple[int, ...] | None:
    """The installed websockets' version, or None; exits 2 with one line when too old."""
    try:
        import websockets
    except ImportError:
        return None
    found = tuple(int(part) for part in re.findall(r"\d+", websockets.__version__)[:2])
    if found < (10, 1):
        print(f"agent.py needs websockets 10.1 or newer, found {websockets.__version__}: "
              f"{INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2)
    return found


WEBSOCKETS = websockets_version()
if WEBSOCKETS is None:
    print(f"agent.py needs websockets, which is not installed: {INSTALL_HINT}", file=sys.stderr)
    raise SystemExit(2)
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidURI  # noqa: E402

if WEBSOCKETS >= (13, 0):  # the new asyncio client
    from websockets.asyncio.client import connect as new_connect
    from websockets.exceptions import InvalidStatus as RefusedHandshake
else:  # websockets 10.1-12 (Debian 12: 10.4, Ubuntu 22.04: 10.1): the legacy client
    from websockets.client import connect as legacy_connect
    from websockets.exceptions import InvalidStatusCode as RefusedHandshake

ClientConnection = Any  # either client's connection: send, recv and close alike


class RedirectRefused(Exception):
    """The dashboard's address redirected to another host, port or scheme: not followed,
    because the agent would send its secret there."""

    def __init__(self, target: str) -> None:
        super().__init__(f"redirected to {target!r}")
        self.target = target


class FrameFlood(Exception):
    """The dashboard sent frames faster than any dashboard should."""


def same_origin(old: str, new: str) -> bool:
    a, b = urlsplit(old), urlsplit(new)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


if WEBSOCKETS >= (13, 0):
    class DashboardConnect(new_connect):  # type: ignore[misc,valid-type]
        """websockets' connect(), following redirects on the same host and scheme only."""

        def process_redirect(self, exc: Exception) -> Exception | str:
            response = getattr(exc, "response", None)
            location = response.headers.get("Location") if response is not None else None
            if location and not same_origin(self.uri, urljoin(self.uri, location)):
                return RedirectRefused(urljoin(self.uri, location))
            follow = getattr(super(), "process_redirect", None)  # 13.0 follows none
            return follow(exc) if follow else exc
else:
    class DashboardConnect(legacy_connect):  # type: ignore[misc,valid-type,no-redef]
        """websockets' legacy connect(), following redirects on the same host and scheme."""

        def handle_redirect(self, uri: str) -> None:
            target = urljoin(self._uri, uri)
            if not same_origin(self._uri, target):
                raise RedirectRefused(target)
            super().handle_redirect(uri)

__version__ = "0.1.0"

log = logging.getLogger("sss.agent")

BACKOFF_INITIAL = 3.0  # the seed's timings
BACKOFF_FACTOR = 1.2
BACKOFF_CAP = 600.0
BACKOFF_JITTER = 0.1  # each wait is 90-100 % of the schedule
STABLE_CONNECTION = 30.0  # only a connection up this long resets the backoff
# A dashboard starting beside the agent (README's quick start, a box booting): connections
# refused this soon after the agent's start are retried every half second, said only once
# the dashboard stays away longer.
STARTUP_WAIT = 10.0
STARTUP_RETRY = 0.5
RESTART_RETRIES = 3  # after a connection that was up: this many retries with full jitter,
RESTART_SPREAD = 10.0  # each at a random moment 0.5-10 s later, or as long as the dashboard
MAX_RESTART_SPREAD = 60.0  # says ("reconnect" frame: 2-30 s, by the size of its fleet)
RESTART_MIN_DELAY = 0.5
PING_INTERVAL = 30.0
PING_TIMEOUT = 15.0  # a dead dashboard is noticed within 30 + 15 s
QUEUE_SIZE = 100  # the seed's send queue
MAX_INTERVAL = 3600.0  # the longest reportInterval a dashboard accepts (PROTOCOL.md)
CHECK_TIMEOUT = 10.0  # --check: how long to wait for the dashboard's answer
# Frames from the dashboard (the probes list): read at most this many a second, and a
# dashboard sending FLOOD_FRAMES within FLOOD_SECONDS is hung up on (a malicious or broken
# one cannot keep this process busy).
NAME_MISMATCH = (62, 64)  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
FRAMES_PER_SECOND = 5.0
FLOOD_FRAMES = 20
FLOOD_SECONDS = 10.0
ADAPT_HIGH_CPU = 80.0
ADAPT_LOW_CPU = 30.0
ADAPT_STREAK = 3  # samples in a row before the interval moves (hysteresis)
ADAPT_FACTOR = 1.2

DEFAULT_EXCLUDED_NICS = ("lo", "docker*", "veth*", "br-*", "virbr*", "vnet*", "tun*", "tap*",
                         "cni*", "cali*", "flannel*", "kube*", "ifb*")
VIRTUAL_FSTYPES = frozenset({"squashfs", "tmpfs", "devtmpfs", "overlay", "ramfs", "iso9660"})
PROC = Path("/proc")
MAX_TEMPERATURES = 32  # sensors reported (PROTOCOL.md); a board with more sends its first 32
SENSORS_REFRESH = 60.0  # the sensor list is looked up this often, read every sample
MAX_CONTAINERS = 64  # reported, the busiest first; the rest only counted
CONTAINERS_REFRESH = 15.0  # the cgroup tree is searched for containers this often
NAMES_REFRESH = 60.0  # Docker's or Podman's API is asked for names this often (at most)
CONTAINER_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")


# --- settings ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    server: str
    server_id: str
    secret: str
    interval: float = 5.0
    min_interval: float = 2.0
    max_interval: float = 30.0
    adaptive: bool = True
    nics: tuple[str, ...] = ()
    exclude_nics: tuple[str, ...] = ()
    exclude_mounts: tuple[str, ...] = ()
    ca_file: str | None = None
    once: bool = False
    check: bool = False
    use_psutil: bool = False
    auto_update: bool = False  # take agent.py from the dashboard when it offers one
    sysfs: str = "/sys"  # where sysfs is: the host's, for an agent in a container
    process_args: bool = False  # top processes named by their command line, not just name


class UsageError(Exception):
    """A missing or bad setting; the message names the flag and the variable."""


def parse_settings(argv: list[str] | None, environ: Mapping[str, str]) -> tuple[Settings, str]:
    """Flags first, then SSS_* variables; returns the settings and the log level."""
    parser = argparse.ArgumentParser(
        description="SimpleServerStatus agent: reports this machine to a dashboard.",
        epilog="The connection settings may come from the environment instead: SSS_SERVER, "
               "SSS_ID, SSS_SECRET, SSS_SECRET_FILE, SSS_USE_PSUTIL=1, SSS_AUTO_UPDATE=1, "
               "SSS_SYSFS and SSS_PROCESS_ARGS=1 (flags win).")
    parser.add_argument("--server", default=environ.get("SSS_SERVER"),
                        help="dashboard URL, ws://HOST:8900/ws-report or wss://... (SSS_SERVER)")
    parser.add_argument("--id", dest="server_id", default=environ.get("SSS_ID"),
                        help="this server's id in the dashboard's servers.json (SSS_ID)")
    parser.add_argument("--secret", default=environ.get("SSS_SECRET"),
                        help="its secret; prefer --secret-file or SSS_SECRET (not shown in ps)")
    parser.add_argument("--secret-file", default=environ.get("SSS_SECRET_FILE"),
                        help="file holding the secret (SSS_SECRET_FILE)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="base report interval in s (default: %(default)s)")
    parser.add_argument("--min-interval", type=float, default=2.0,
                        help="shortest interval in s (default: %(default)s)")
    parser.add_argument("--max-interval", type=float, default=30.0,
                        help="longest interval in s (default: %(default)s; at most "
                             f"{MAX_INTERVAL:.0f})")
    parser.add_argument("--no-adaptive", action="store_true",
                        help="always report every --interval seconds")
    parser.add_argument("--nic", action="append", default=[], metavar="GLOB",
                        help="count only these interfaces (repeatable; default: physical ones)")
    parser.add_argument("--exclude-nic", action="append", default=[], metavar="GLOB",
                        help="also leave out these interfaces (repeatable)")
    parser.add_argument("--exclude-mount", action="append", default=[], metavar="GLOB",
                        help="leave out these mount points (repeatable)")
    parser.add_argument("--ca-file", help="CA bundle trusting a self-signed wss:// dashboard")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="(default: %(default)s)")
    parser.add_argument("--once", action="store_true",
                        help="print one message as JSON on stdout and exit (no network)")

    def switch(flag: str, variable: str, what: str) -> None:
        """A flag that the variable set to 1 turns on as well."""
        parser.add_argument(flag, action="store_true", default=environ.get(variable) == "1",
                            help=f"{what}; {variable}=1")

    switch("--use-psutil", "SSS_USE_PSUTIL",
           "read through psutil even where /proc is (as on macOS and the BSDs)")
    parser.add_argument("--check", action="store_true",
                        help="connect once, send one report, say whether the dashboard "
                             "accepted it; exit 0 or 1")
    switch("--auto-update", "SSS_AUTO_UPDATE", "run the agent.py the dashboard serves when it "
           "offers updates (wss:// or a dashboard on this machine only)")
    parser.add_argument("--sysfs", default=environ.get("SSS_SYSFS", "/sys"), metavar="PATH",
                        help="where the host's sysfs is mounted, for temperatures from an "
                             "agent in a container (default: %(default)s; SSS_SYSFS)")
    switch("--process-args", "SSS_PROCESS_ARGS", "name top processes by their command line "
           "with its arguments (64 characters), not only the program")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__} ({AGENT_VERSION})")
    args = parser.parse_args(argv)

    if args.secret_file and not args.secret:
        try:
            args.secret = Path(args.secret_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--secret-file (SSS_SECRET_FILE) {args.secret_file}: "
                             f"{exc.strerror}") from exc
    if not args.once:  # --check needs the connection settings too
        if not args.server:
            raise UsageError("--server (or SSS_SERVER) is required: the dashboard's "
                             "ws://HOST:8900/ws-report")
        if urlsplit(args.server).scheme not in ("ws", "wss") or not urlsplit(args.server).netloc:
            raise UsageError(f"--server (SSS_SERVER) must look like ws://HOST:8900/ws-report "
                             f"or wss://..., got {args.server!r}")
        if not args.server_id:
            raise UsageError("--id (or SSS_ID) is required: this server's id in servers.json")
        if not args.secret:
            raise UsageError("--secret, --secret-file (or SSS_SECRET, SSS_SECRET_FILE) is "
                             "required: this server's secret in servers.json")
    if not 0 < args.min_interval <= args.interval <= args.max_interval <= MAX_INTERVAL:
        raise UsageError("--min-interval, --interval and --max-interval must be positive, "
                         f"in that order and at most {MAX_INTERVAL:.0f} s, got "
                         f"{args.min_interval}, {args.interval}, {args.max_interval}")
    if args.ca_file and not os.path.isfile(args.ca_file):
        raise UsageError(f"--ca-file {args.ca_file}: no such file")
    settings = Settings(
        server=args.server or "", server_id=args.server_id or "", secret=args.secret or "",
        interval=args.interval, min_interval=args.min_interval, max_interval=args.max_interval,
        adaptive=not args.no_adaptive, nics=tuple(args.nic),
        exclude_nics=tuple(args.exclude_nic), exclude_mounts=tuple(args.exclude_mount),
        ca_file=args.ca_file, once=args.once, check=args.check, use_psutil=args.use_psutil,
        auto_update=args.auto_update, sysfs=args.sysfs, process_args=args.process_args)
    return settings, args.log_level


# --- collection --------------------------------------------------------------


class Partition(NamedTuple):
    device: str
    mount_point: str
    fstype: str
    total: int
    used: int
    free: int


class ContainerReading(NamedTuple):
    """One container's counters at one instant (cgroup v2; its network from its netns)."""

    key: str  # its cgroup, relative to the cgroup root
    name: str
    cpu_usec: int  # CPU time used since it started
    memory: int  # bytes
    io: tuple[int, int]  # bytes read and written since it started
    net: tuple[int, int] | None  # bytes received and sent; None: the host's network, unknown


class Sample(NamedTuple):
    """Raw readings at one instant; messages are computed from two of these."""

    monotonic: float
    wall: float
    cpu: tuple[float, float]  # busy and total CPU seconds since boot
    memory: tuple[int, int, float]  # total, used, percent
    swap: tuple[int, int, int, float]  # total, used, free, percent
    partitions: tuple[Partition, ...]
    nic_bytes: Mapping[str, tuple[int, int]]  # name -> (received, sent)
    disk_io: tuple[int, int] | None  # bytes read, written; None where unreadable
    load: tuple[float, float, float]
    boot_time: float
    processes: int | None  # None where the platform will not tell (never a made-up 0)
    tcp: int | None
    udp: int | None
    temperatures: tuple[tuple[str, float], ...] = ()  # (sensor, °C); () where there are none
    containers: tuple[ContainerReading, ...] = ()  # () without cgroup v2 or containers


class HostFacts(NamedTuple):
    """What does not change while the agent runs."""

    os: str
    platform: str
    platform_family: str
    platform_version: str
    kernel_version: str
    kernel_arch: str
    virtualization: str
    cpu_info: tuple[str, ...]


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class ProcFiles:
    """/proc (or /sys) files kept open and re-read with pread: half the cost of open, read,
    close. sysfs attributes are produced afresh by each read from offset 0, as /proc's are."""

    def __init__(self, base: Path = PROC) -> None:
        self.base = base
        self.fds: dict[str, int] = {}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def read(self, name: str) -> str:
        fd = self.fds.get(name)
        try:
            if fd is None:
                fd = self.fds[name] = os.open(self.base / name, os.O_RDONLY)
            chunks, offset = [], 0
            while True:
                chunk = os.pread(fd, 65536, offset)
                chunks.append(chunk)
                if len(chunk) < 65536:
                    return b"".join(chunks).decode(errors="replace")
                offset += len(chunk)
        except OSError:
            return ""  # not Linux, or not allowed: those numbers read as zero


def parse_os_release(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').strip("'")
    return fields


def detect_virtualization(root: Path = Path("/")) -> str:
    """kvm, xen, vmware, hyperv, virtualbox, lxc, docker, openvz or none, as Linux shows it."""
    if (root / ".dockerenv").exists() or "docker" in read_text(root / "proc/1/cgroup"):
        return "docker"
    if b"container=lxc" in read_text(root / "proc/1/environ").encode() \
            or (root / "dev/lxd").exists():
        return "lxc"
    if (root / "proc/vz").exists() and not (root / "proc/bc").exists():
        return "openvz"
    dmi = " ".join(read_text(root / "sys/class/dmi/id" / name)
                   for name in ("sys_vendor", "product_name", "bios_vendor")).lower()
    for needle, name in (("vmware", "vmware"), ("virtualbox", "virtualbox"),
                         ("microsoft", "hyperv"), ("xen", "xen"), ("kvm", "kvm"),
                         ("qemu", "kvm"), ("amazon ec2", "kvm"), ("google", "kvm"),
                         ("openstack", "kvm"), ("droplet", "kvm")):
        if needle in dmi:
            return name
    if (root / "proc/xen").exists():
        return "xen"
    return "none"


def host_facts() -> HostFacts:
    release = parse_os_release(read_text(Path("/etc/os-release")))
    cpuinfo = read_text(PROC / "cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith(("model name", "Hardware", "Model"))), "") \
        or platform.processor() or "unknown CPU"
    uname = os.uname()
    return HostFacts(
        os=sys.platform, platform=release.get("ID", uname.sysname.lower()),
        platform_family=release.get("ID_LIKE", release.get("ID", "")).split(" ")[0],
        platform_version=release.get("VERSION_ID", ""), kernel_version=uname.release,
        kernel_arch=uname.machine, virtualization=detect_virtualization(),
        cpu_info=(f"{model} x {os.cpu_count() or 1} Virtual Core",))


# --- temperatures: hwmon chips, else thermal zones -------------------------------------
#
# Linux shows a sensor as a hwmon chip's temp*_input (millidegrees; a temp*_label, a chip
# `name`) and often again as a thermal zone (`type`, `temp`). hwmon is read where it has
# any sensor, thermal zones only where it has none (some ARM boards), so no sensor counts
# twice. A VPS has neither, and sends nothing.


def numbered(paths: Iterator[Path]) -> list[Path]:
    """hwmon2 before hwmon10, temp2_input before temp10_input."""
    return sorted(paths, key=lambda p: (tuple(int(n) for n in re.findall(r"\d+", p.name)),
                                        p.name))


def find_temperature_sensors(sys_root: Path) -> list[tuple[str, str]]:
    """(name, file relative to sys_root) of each temperature sensor, in the kernel's order:
    named by its temp*_label, else by its chip's name (thermal zones: by their type);
    names made distinct, at most MAX_TEMPERATURES."""
    found: list[tuple[str, Path]] = []
    for chip in numbered((sys_root / "class/hwmon").glob("hwmon*")):
        chip_name = (read_text(chip / "name").strip() or read_text(chip / "device/name").strip()
                     or chip.name)
        # Drivers before Linux 5.x kept their attributes in the device's folder.
        inputs = numbered(chip.glob("temp*_input")) or numbered(chip.glob("device/temp*_input"))
        for path in inputs:
            label = read_text(path.with_name(path.name[:-len("input")] + "label")).strip()
            found.append((label or chip_name, path))
    if not found:
        for zone in numbered((sys_root / "class/thermal").glob("thermal_zone*")):
            if (zone / "temp").exists():
                found.append((read_text(zone / "type").strip() or zone.name, zone / "temp"))
    return [(name, str(path.relative_to(sys_root)))
            for name, path in distinct_names(found)[:MAX_TEMPERATURES]]


def distinct_names(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Names that repeat (two NVMe drives' "Composite") numbered "Composite #1", "#2"."""
    repeated = {name for name, count in collections.Counter(n for n, _ in items).items()
                if count > 1}
    numbers: collections.Counter[str] = collections.Counter()
    named = []
    for name, value in items:
        if name in repeated:
            numbers[name] += 1
            name = f"{name[:60]} #{numbers[name]}"
        named.append((name[:64], value))
    return named


def plausible_celsius(value: float) -> float | None:
    """A reading rounded to 0.1 °C, or None for one no sensor could have (drivers give
    -128 °C, or 255, for "no reading")."""
    return round(value, 1) if -60 <= value <= 200 else None


def celsius(millidegrees: str) -> float | None:
    """A temp*_input or thermal zone's temp (millidegrees) in °C; None for a failed read."""
    try:
        return plausible_celsius(int(millidegrees) / 1000)
    except ValueError:
        return None


class Thermometer:
    """The temperatures of this box, from sysfs: the sensor list looked up every
    SENSORS_REFRESH s, each sensor's file kept open and re-read every sample."""

    def __init__(self, sys_root: Path) -> None:
        self.sys_root = sys_root
        self.files = ProcFiles(sys_root)
        self.sensors: list[tuple[str, str]] = []
        self.looked = -math.inf

    def read(self) -> tuple[tuple[str, float], ...]:
        if time.monotonic() - self.looked > SENSORS_REFRESH:
            self.sensors = find_temperature_sensors(self.sys_root)
            self.files.close()
            self.looked = time.monotonic()
        readings = ((name, celsius(self.files.read(path))) for name, path in self.sensors)
        return tuple((name, value) for name, value in readings if value is not None)


# --- containers: cgroup v2 groups of Docker, Podman, LXC/Incus and systemd-nspawn -------
#
# Each container is a cgroup whose files count its CPU time (cpu.stat), memory
# (memory.current) and block IO (io.stat); its network is its network namespace's, read
# from /proc/PID/net/dev of one of its processes. The tree is searched every
# CONTAINERS_REFRESH s, each file kept open and read once a sample. Names come from the
# Docker or Podman API over its unix socket where the agent may read it (once a minute),
# else from the cgroup (a short id). cgroup v1 hosts have none of this: said once, nothing
# sent.

CONTAINER_GROUPS = (  # (kind, pattern of the cgroup's folder name: the id or name)
    ("docker", re.compile(r"docker-([0-9a-f]{64})\.scope")),  # systemd cgroup driver
    ("podman", re.compile(r"libpod-([0-9a-f]{64})\.scope")),
    ("lxc", re.compile(r"lxc\.payload\.(.+)")),  # LXC 4+, LXD, Incus
    ("nspawn", re.compile(r"systemd-nspawn@(.+)\.service")),
    ("machine", re.compile(r"machine-(?!qemu)(.+)\.scope")),  # nspawn run by hand
)
CGROUPFS_DOCKER = re.compile(r"[0-9a-f]{64}")  # docker/ID with the cgroupfs driver
SEARCH_DEPTH = 6  # user.slice/user-1000.slice/user@1000.service/user.slice/libpod-ID.scope


def find_containers(cgroup_root: Path) -> list[tuple[str, str]]:
    """(cgroup relative to cgroup_root, name) of each container under a cgroup v2 root, in
    the tree's order. Only slices, users' service managers and docker/ are searched (not
    every service's group); a container's own subgroups (Podman's "container", nspawn's
    "payload") are part of it."""
    found: list[tuple[str, str]] = []

    def search(folder: Path, depth: int) -> None:
        try:
            children = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        except OSError:
            return
        for name in children:
            container = container_name(folder.name, name)
            if container:
                found.append((str((folder / name).relative_to(cgroup_root)), container))
            elif depth < SEARCH_DEPTH and (name.endswith(".slice") or name == "docker"
                                           or name.startswith("user@")):  # rootless
                search(folder / name, depth + 1)

    search(cgroup_root, 0)
    return found


def container_name(parent: str, folder: str) -> str | None:
    """A container's name as its cgroup says it (an id shortened as `docker ps` does), or
    None for a cgroup that is no container."""
    if parent == "docker" and CGROUPFS_DOCKER.fullmatch(folder):
        return folder[:12]
    for kind, pattern in CONTAINER_GROUPS:
        match = pattern.fullmatch(folder)
        if match:
            name = match[1]
            return name[:12] if kind in ("docker", "podman") else systemd_unescape(name)
    return None


def systemd_unescape(name: str) -> str:
    r"""systemd's escaping of unit names undone: "web-1" is "web-1"."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m[1], 16)), name)


def cpu_usage_usec(cpu_stat: str) -> int:
    """usage_usec from a cgroup's cpu.stat."""
    for line in cpu_stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise ValueError("cpu.stat without usage_usec")


def io_totals(io_stat: str) -> tuple[int, int]:
    """Bytes read and written over every device of a cgroup's io.stat
    ("259:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0")."""
    read = written = 0
    for line in io_stat.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                written += int(value)
    return read, written


def docker_names(payload: bytes) -> dict[str, str]:
    """Full id -> name from the Docker (or Podman) API's /containers/json; {} for anything
    else. A name is data from the box: at most 64 characters, escaped where shown."""
    try:
        listed = json.loads(payload)
    except (ValueError, RecursionError):
        return {}
    names = {}
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, dict) and isinstance(item.get("Id"), str) \
                and isinstance(item.get("Names"), list) and item["Names"] \
                and isinstance(item["Names"][0], str):
            names[item["Id"]] = item["Names"][0].lstrip("/")[:64]
    return names


def ask_container_names(sockets: tuple[str, ...], timeout: float = 1.0) -> dict[str, str]:
    """Names of the running containers from each API socket this process may use."""
    # Imported here, on hosts with such a socket only: http.client is 1.9 MB of modules.
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        """http.client over a unix socket: the Docker and Podman APIs."""

        def __init__(self, path: str) -> None:
            super().__init__("localhost", timeout=timeout)
            self.socket_path = path

        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(self.socket_path)

    names: dict[str, str] = {}
    for path in sockets:
        if not os.access(path, os.R_OK | os.W_OK):
            continue
        connection = UnixHTTPConnection(path)
        try:
            connection.request("GET", "/containers/json")
            response = connection.getresponse()
            if response.status == 200:
                names.update(docker_names(response.read(4 << 20)))
        except (OSError, http.client.HTTPException):
            continue
        finally:
            connection.close()
    return names


class ContainerWatch:
    """The containers of this host: found in the cgroup tree every CONTAINERS_REFRESH s,
    their files read every sample."""

    def __init__(self, sys_root: Path, sockets: tuple[str, ...] = CONTAINER_SOCKETS) -> None:
        self.root = sys_root / "fs/cgroup"
        self.sockets = sockets
        self.v2 = (self.root / "cgroup.controllers").exists()
        if not self.v2 and self.root.exists():
            log.info("containers are read from cgroup v2; this host mounts cgroup v1: no "
                     "container figures")
        self.files = ProcFiles(self.root)
        self.proc = ProcFiles(PROC)
        self.groups: list[tuple[str, str]] = []
        self.looked = self.named = -math.inf
        self.names: dict[str, str] = {}  # full id -> name, from the API
        # cgroup -> a process in it (its network namespace), None where the container shares
        # the host's network or has no process: looked up once a CONTAINERS_REFRESH
        self.pids: dict[str, str | None] = {}
        self.own_netns = netns_of("self")

    def read(self) -> tuple[ContainerReading, ...]:
        if not self.v2:
            return ()
        now = time.monotonic()
        if now - self.looked > CONTAINERS_REFRESH:
            groups = find_containers(self.root)
            self.files.close()
            self.proc.close()
            self.pids.clear()
            self.looked = now
            if groups and self.sockets and now - self.named > NAMES_REFRESH:
                self.names = ask_container_names(self.sockets)
                self.named = now
            self.groups = [(key, self.name_of(key, name)) for key, name in groups]
        readings = []
        for key, name in self.groups:
            try:
                cpu = cpu_usage_usec(self.files.read(f"{key}/cpu.stat"))
                memory = int(self.files.read(f"{key}/memory.current"))
            except ValueError:
                continue  # gone since the tree was searched
            readings.append(ContainerReading(
                key, name, cpu, memory,
                io_totals(self.files.read(f"{key}/io.stat")), self.network(key)))
        return tuple(readings)

    def name_of(self, key: str, name: str) -> str:
        """The API's name for a Docker or Podman container, else the cgroup's."""
        match = re.search(r"[0-9a-f]{64}", key)
        return self.names.get(match[0], name) if match else name

    def network(self, key: str) -> tuple[int, int] | None:
        """Bytes received and sent in the container's network namespace (lo left out);
        None where it shares the host's, or has no process."""
        if key not in self.pids:
            pid = first_process(self.root / key)
            own = pid is None or netns_of(pid) in (None, self.own_netns)
            self.pids[key] = None if own else pid
        pid = self.pids[key]
        if pid is None:
            return None
        counters = nic_counters(self.proc.read(f"{pid}/net/dev"), lambda nic: nic != "lo")
        if not counters:
            del self.pids[key]  # that process is gone: another one, next time
            return None
        return (sum(rx for rx, _ in counters.values()), sum(tx for _, tx in counters.values()))


def first_process(group: Path) -> str | None:
    """A process of a cgroup: its own, or its subgroups' (Podman's "container", nspawn's
    "payload", an LXC guest's init.scope: v2 keeps processes out of inner groups)."""
    procs = read_text(group / "cgroup.procs").split()
    if procs:
        return procs[0]
    try:
        inner = sorted(entry.path for entry in os.scandir(group) if entry.is_dir())
    except OSError:
        return None
    return next((found for path in inner if (found := first_process(Path(path)))), None)


def netns_of(pid: str) -> int | None:
    """The inode of a process's network namespace; None where it cannot be seen."""
    try:
        return os.stat(PROC / pid / "ns/net").st_ino
    except OSError:
        return None


class Collector:
    """Reads samples on Linux, from /proc and statvfs: the only code here that touches it.

    What rarely changes is read once (boot time) or now and then (the mount table,
    every MOUNTS_REFRESH s), so a sample costs a fraction of a millisecond.
    """

    MOUNTS_REFRESH = 60.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc = ProcFiles()
        self.thermometer = Thermometer(Path(settings.sysfs))
        self.containers = ContainerWatch(Path(settings.sysfs))
        self.boot_time = boot_time_from_stat(self.proc.read("stat"))
        self.mounts: list[tuple[str, str, str]] = []
        self.mounts_read = -math.inf
        # Bounded memos: interface names churn with containers (veth*).
        self.wanted = functools.lru_cache(maxsize=256)(
            lambda nic: keep_nic(nic, settings.nics, settings.exclude_nics))
        self.is_disk = functools.lru_cache(maxsize=256)(  # a disk, not a partition
            lambda name: os.path.exists(f"/sys/block/{name.replace('/', '!')}"))

    def mount_points(self) -> list[tuple[str, str, str]]:
        if time.monotonic() - self.mounts_read > self.MOUNTS_REFRESH:
            self.mounts = [mount for mount in physical_mounts(read_text(PROC / "self/mounts"),
                                                               read_text(PROC / "filesystems"))
                           if keep_partition(*mount, self.settings.exclude_mounts)]
            self.mounts_read = time.monotonic()
        return self.mounts

    def sample(self) -> Sample:
        read = self.proc.read
        meminfo = meminfo_bytes(read("meminfo"))
        partitions = []
        for device, mount_point, fstype in self.mount_points():
            try:
                fs = os.statvfs(mount_point)
            except OSError:
                continue  # unmounted meanwhile, or no permission
            partitions.append(Partition(device, mount_point, fstype,
                                        *statvfs_usage(fs.f_frsize, fs.f_blocks, fs.f_bfree,
                                                       fs.f_bavail)))
        tcp, udp = socket_counts(read("net/sockstat") + read("net/sockstat6"))
        return Sample(
            monotonic=time.monotonic(), wall=time.time(),
            cpu=cpu_from_stat(read("stat")),
            memory=memory_from_meminfo(meminfo), swap=swap_from_meminfo(meminfo),
            partitions=tuple(partitions),
            nic_bytes=nic_counters(read("net/dev"), self.wanted),
            disk_io=disk_bytes(read("diskstats"), self.is_disk),
            load=os.getloadavg(), boot_time=self.boot_time,
            processes=count_processes(), tcp=tcp, udp=udp,
            temperatures=self.thermometer.read(), containers=self.containers.read())


def count_processes() -> int:
    """Processes running: the numeric entries of /proc, as psutil.pids() counts them."""
    with os.scandir(PROC) as entries:
        return sum(1 for entry in entries if entry.name.isdigit())


class PsutilCollector:
    """Reads samples through psutil: every platform without /proc (macOS, the BSDs,
    Windows), or anywhere with --use-psutil. Readings the platform refuses (sockets
    without root on macOS) are None, never a made-up zero."""

    def __init__(self, settings: Settings) -> None:
        self.psutil = require_psutil()
        self.settings = settings
        self.boot_time = self.psutil.boot_time()
        self.wanted = functools.lru_cache(maxsize=256)(
            lambda nic: keep_nic(nic, settings.nics, settings.exclude_nics))

    def sample(self) -> Sample:
        ps = self.psutil
        times = ps.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        # guest time is already inside user and nice, as cpu_from_stat counts it
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        memory, swap = ps.virtual_memory(), ps.swap_memory()
        partitions = []
        for p in ps.disk_partitions(all=False):
            if not keep_partition(p.device, p.mountpoint, p.fstype, self.settings.exclude_mounts):
                continue
            try:
                usage = ps.disk_usage(p.mountpoint)
            except OSError:
                continue
            partitions.append(Partition(p.device, p.mountpoint, p.fstype, usage.total,
                                        usage.used, usage.free))
        nics = {name: (c.bytes_recv, c.bytes_sent)
                for name, c in ps.net_io_counters(pernic=True).items() if self.wanted(name)}
        try:
            io = ps.disk_io_counters()
            disk_io = (io.read_bytes, io.write_bytes) if io is not None else None
        except (OSError, RuntimeError):
            disk_io = None
        return Sample(
            monotonic=time.monotonic(), wall=time.time(), cpu=(total - idle, total),
            memory=(memory.total, memory.used, memory.percent),
            swap=(swap.total, swap.used, swap.free, swap.percent),
            partitions=tuple(partitions), nic_bytes=nics, disk_io=disk_io,
            load=ps.getloadavg(), boot_time=self.boot_time,
            processes=self.guarded(lambda: len(ps.pids())),
            tcp=self.guarded(lambda: len(ps.net_connections(kind="tcp"))),
            udp=self.guarded(lambda: len(ps.net_connections(kind="udp"))),
            temperatures=self.temperatures())

    def temperatures(self) -> tuple[tuple[str, float], ...]:
        """psutil's sensors (Linux and FreeBSD have them; elsewhere none)."""
        sensors = getattr(self.psutil, "sensors_temperatures", None)
        try:
            chips = sensors() if sensors else {}
        except (self.psutil.Error, OSError, RuntimeError):
            return ()
        found = [(t.label or chip, plausible_celsius(t.current))
                 for chip, readings in chips.items() for t in readings]
        return tuple((name, value) for name, value in distinct_names(found)[:MAX_TEMPERATURES]
                     if value is not None)

    def guarded(self, read: Any) -> int | None:
        try:
            return read()
        except (self.psutil.Error, OSError):
            return None


def require_psutil() -> Any:
    try:
        import psutil
    except ImportError:
        print("agent.py needs psutil for --use-psutil (SSS_USE_PSUTIL=1) and on systems "
              "without /proc: pip install psutil (or your system's py3-psutil package)",
              file=sys.stderr)
        raise SystemExit(2) from None
    return psutil


def reads_proc(settings: Settings) -> bool:
    """/proc where there is one (no psutil needed), psutil elsewhere or when asked."""
    return not settings.use_psutil and (PROC / "stat").exists()


def make_collector(settings: Settings) -> Collector | PsutilCollector:
    return Collector(settings) if reads_proc(settings) else PsutilCollector(settings)


# --- sample -> message (pure) -------------------------------------------------


def socket_counts(sockstat: str) -> tuple[int, int]:
    """(TCP, UDP) sockets, as many as /proc/net/tcp*, udp* list, from /proc/net/sockstat*.

    Reading /proc/net/tcp walks the kernel's whole connection hash table: ~5 ms per
    file on a 24 GB machine even when idle. sockstat costs microseconds.
    """
    fields: dict[str, int] = {}
    for line in sockstat.splitlines():
        proto, _, rest = line.partition(":")
        words = rest.split()
        fields.update((f"{proto}.{key}", int(value))
                      for key, value in zip(words[::2], words[1::2]) if value.isdigit())
    tcp = fields.get("TCP.inuse", 0) + fields.get("TCP6.inuse", 0) + fields.get("TCP.tw", 0)
    return tcp, fields.get("UDP.inuse", 0) + fields.get("UDP6.inuse", 0)


def boot_time_from_stat(stat: str) -> float:
    """Unix time of boot: the btime line of /proc/stat (what psutil.boot_time() reads)."""
    match = re.search(r"^btime (\d+)", stat, re.MULTILINE)
    return float(match[1]) if match else time.time() - time.monotonic()


def unescape_mount(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def physical_mounts(mounts: str, filesystems: str) -> list[tuple[str, str, str]]:
    """(device, mount point, fstype) of real filesystems, as psutil's all=False lists them.

    A filesystem type is real when /proc/filesystems lists it without "nodev"; ZFS is
    nodev there but holds real data.
    """
    real = {line.split()[-1] for line in filesystems.splitlines()
            if line.strip() and not line.startswith("nodev")} | {"zfs"}
    found = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] in real:
            found.append((unescape_mount(fields[0]), unescape_mount(fields[1]), fields[2]))
    return found


def statvfs_usage(block: int, blocks: int, blocks_free: int,
                  blocks_available: int) -> tuple[int, int, int]:
    """(total, used, free) bytes as psutil.disk_usage() and df compute them."""
    return block * blocks, block * (blocks - blocks_free), block * blocks_available


def distinct_filesystems(partitions: tuple[Partition, ...]) -> list[Partition]:
    """One row per filesystem: bind mounts and subvolumes of a device already listed are
    left out (the first mount, in mount-table order, stays). ZFS datasets are their own."""
    seen: set[str] = set()
    rows = []
    for p in partitions:
        if p.fstype != "zfs":
            if p.device in seen:
                continue
            seen.add(p.device)
        rows.append(p)
    return rows


MEMINFO_FIELDS = re.compile(
    r"^(MemTotal|MemFree|MemAvailable|Buffers|Cached|SReclaimable|SwapTotal|SwapFree):\s+(\d+)",
    re.MULTILINE)


def meminfo_bytes(meminfo: str) -> dict[str, int]:
    """The fields of /proc/meminfo we use, in bytes (one regex pass: cheaper than splitting)."""
    return {key: int(kib) * 1024 for key, kib in MEMINFO_FIELDS.findall(meminfo)}


def memory_from_meminfo(m: dict[str, int]) -> tuple[int, int, float]:
    """(total, used, percent) exactly as psutil.virtual_memory() computes them on Linux.

    Read here rather than through psutil so one read of /proc/meminfo serves memory
    and swap: reading /proc files is most of what a sample costs.
    """
    total, free = m.get("MemTotal", 0), m.get("MemFree", 0)
    # MemAvailable exists since Linux 3.14; before, psutil estimates it much like this.
    cached = m.get("Cached", 0) + m.get("SReclaimable", 0)
    available = m.get("MemAvailable", free + cached + m.get("Buffers", 0))
    if available > total:  # distorted inside some containers; psutil falls back likewise
        available = free
    used = total - available  # psutil 7: what `free` shows as used
    return total, used, round(used / total * 100, 1) if total else 0.0


def swap_from_meminfo(m: dict[str, int]) -> tuple[int, int, int, float]:
    """(total, used, free, percent) as psutil.swap_memory() has them, from /proc/meminfo."""
    total, free = m.get("SwapTotal", 0), m.get("SwapFree", 0)
    used = max(total - free, 0)
    return total, used, free, round(used / total * 100, 1) if total else 0.0


def nic_counters(net_dev: str, wanted: Any) -> dict[str, tuple[int, int]]:
    """name -> (received, sent) bytes from /proc/net/dev, for the wanted interfaces."""
    counters = {}
    for line in net_dev.splitlines()[2:]:  # two header lines
        name, _, rest = line.partition(":")
        name, fields = name.strip(), rest.split()
        if len(fields) >= 9 and wanted(name):
            counters[name] = (int(fields[0]), int(fields[8]))
    return counters


def disk_bytes(diskstats: str, is_disk: Any) -> tuple[int, int]:
    """Bytes read and written by whole disks (partitions would count twice)."""
    read = written = 0
    for line in diskstats.splitlines():
        fields = line.split()
        if len(fields) >= 10 and is_disk(fields[2]):
            read += int(fields[5]) * 512  # the kernel counts 512-byte sectors
            written += int(fields[9]) * 512
    return read, written


def keep_nic(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Physical interfaces by default; --nic replaces the default, --exclude-nic adds to it."""
    if include:
        return any(fnmatch.fnmatchcase(name, p) for p in include) \
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    return not any(fnmatch.fnmatchcase(name, p) for p in DEFAULT_EXCLUDED_NICS + exclude)


def keep_partition(device: str, mount_point: str, fstype: str,
                   exclude_mounts: tuple[str, ...]) -> bool:
    return (fstype not in VIRTUAL_FSTYPES and not device.startswith("/dev/loop")
            and not any(fnmatch.fnmatchcase(mount_point, p) for p in exclude_mounts))


def disk_totals(partitions: tuple[Partition, ...]) -> tuple[int, int, int]:
    """(total, used, free) with each filesystem counted once.

    Bind mounts and btrfs subvolumes show the same device and the same numbers:
    take one. ZFS datasets of one pool each report their own `used` and the
    pool's shared `free`: add the used, take the free once.
    """
    spaces: dict[str, tuple[int, int, int]] = {}  # key -> (total, used, free)
    for p in partitions:
        if p.fstype == "zfs":
            key = "zfs:" + p.device.split("/", 1)[0]
            _, used, free = spaces.get(key, (0, 0, 0))
            used, free = used + p.used, max(free, p.free)
            spaces[key] = (used + free, used, free)
        else:
            spaces.setdefault(p.device, (p.total, p.used, p.free))
    return (sum(s[0] for s in spaces.values()), sum(s[1] for s in spaces.values()),
            sum(s[2] for s in spaces.values()))


def cpu_from_stat(stat: str) -> tuple[float, float]:
    """(busy, total) clock ticks from the first line of /proc/stat, as psutil counts them.

    Fields: user nice system idle iowait irq softirq steal guest guest_nice; guest time
    is already inside user and nice, so it is not added again.
    """
    ticks = [int(v) for v in stat.split("\n", 1)[0].split()[1:]]
    total = sum(ticks[:8])
    idle = sum(ticks[3:5])  # idle + iowait
    return float(total - idle), float(total)


def cpu_percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Busy share between two readings, as top shows it (the first reading primes)."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    return round(min(max(busy / total * 100, 0.0), 100.0), 1)


def rate(before: int, after: int, seconds: float) -> int:
    """Bytes per second; a counter that went backwards (reboot, wrap) gives 0."""
    if seconds <= 0 or after < before:
        return 0
    return int((after - before) / seconds)


def nic_rates(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]],
              seconds: float) -> tuple[int, int]:
    """Summed receive and send speed; an interface that appears or resets adds 0."""
    received = sent = 0
    for name, (rx, tx) in after.items():
        if name in before:
            received += rate(before[name][0], rx, seconds)
            sent += rate(before[name][1], tx, seconds)
    return received, sent


def percent_of(part: float, whole: float) -> float:
    return round(part / whole * 100, 2) if whole > 0 else 0.0


def build_message(server_id: str, facts: HostFacts, before: Sample, after: Sample,
                  report_interval: float) -> dict[str, Any]:
    """The report for the interval between two samples, in PROTOCOL.md's format."""
    seconds = after.monotonic - before.monotonic
    disk_total, disk_used, disk_free = disk_totals(after.partitions)
    net_in, net_out = nic_rates(before.nic_bytes, after.nic_bytes, seconds)
    swap_total, swap_used, swap_free, swap_percent = after.swap
    return {
        "name": server_id, "group": "", "id": server_id, "lastReportTime": int(after.wall),
        "hostInfo": {
            "kernelArch": facts.kernel_arch, "kernelVersion": facts.kernel_version,
            "virtualizationSystem": facts.virtualization,
            "uptime": max(int(after.wall - after.boot_time), 0),
            "bootTime": int(after.boot_time), "os": facts.os, "platform": facts.platform,
            "platformFamily": facts.platform_family, "platformVersion": facts.platform_version,
            "avgStat": {"load1": round(after.load[0], 2), "load5": round(after.load[1], 2),
                        "load15": round(after.load[2], 2)},
        },
        "cpuInfo": {"percent": cpu_percent(before.cpu, after.cpu),
                    "info": list(facts.cpu_info)},
        "virtualMemoryInfo": {"total": after.memory[0], "used": after.memory[1],
                              "usedPercent": round(after.memory[2], 2)},
        "swapMemoryInfo": {"total": swap_total, "used": swap_used, "free": swap_free,
                           "usedPercent": round(swap_percent, 2)},
        "diskInfo": {
            "total": disk_total, "used": disk_used,
            "usedPercent": percent_of(disk_used, disk_used + disk_free),  # as df shows it
            "partitions": [{"mountPoint": p.mount_point, "fstype": p.fstype, "total": p.total,
                            "free": p.free, "used": p.used,
                            "usedPercent": percent_of(p.used, p.used + p.free)}
                           for p in distinct_filesystems(after.partitions)],
        },
        "networkInfo": {"netInSpeed": net_in, "netOutSpeed": net_out,
                        "netInTransfer": sum(rx for rx, _ in after.nic_bytes.values()),
                        "netOutTransfer": sum(tx for _, tx in after.nic_bytes.values())},
        "ip": "", "loc": "",
        "reportInterval": round(report_interval, 2),
        "extraInfo": {**extra_info(before, after, seconds), "agentVersion": AGENT_VERSION},
    }


def extra_info(before: Sample, after: Sample, seconds: float) -> dict[str, Any]:
    """Our extensions; a reading the platform does not give is left out (PROTOCOL.md)."""
    extra: dict[str, Any] = {"tcpConnections": after.tcp, "udpConnections": after.udp,
                             "processes": after.processes}
    if before.disk_io is not None and after.disk_io is not None:
        extra["diskReadSpeed"] = rate(before.disk_io[0], after.disk_io[0], seconds)
        extra["diskWriteSpeed"] = rate(before.disk_io[1], after.disk_io[1], seconds)
    if after.temperatures:
        extra["temperatures"] = [{"name": name, "celsius": value}
                                 for name, value in after.temperatures]
    if after.containers:
        extra["containers"] = container_rows(before.containers, after.containers,
                                             seconds)[:MAX_CONTAINERS]
        extra["containerCount"] = len(after.containers)
    return {key: value for key, value in extra.items() if value is not None}


def container_rows(before: tuple[ContainerReading, ...], after: tuple[ContainerReading, ...],
                   seconds: float) -> list[dict[str, Any]]:
    """Each container's CPU (percent of one CPU, as `docker stats` shows it), memory, and
    network and block IO rates over the interval, the busiest first; a container seen only
    in `after` waits for its second sample."""
    earlier = {c.key: c for c in before}
    rows = []
    for now in after:
        was = earlier.get(now.key)
        if was is None:
            continue
        row = {"name": now.name, "cpu": round(max(now.cpu_usec - was.cpu_usec, 0)
                                              / (seconds * 1e4), 2),
               "memory": now.memory, "read": rate(was.io[0], now.io[0], seconds),
               "write": rate(was.io[1], now.io[1], seconds)}
        if now.net is not None and was.net is not None:
            row["rx"], row["tx"] = (rate(was.net[0], now.net[0], seconds),
                                    rate(was.net[1], now.net[1], seconds))
        rows.append(row)
    rows.sort(key=lambda row: -row["cpu"])
    return rows


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


# --- pacing: adaptive interval and reconnect backoff (pure) --------------------


class Pace(NamedTuple):
    interval: float
    high_streak: int = 0
    low_streak: int = 0


def adapt(pace: Pace, cpu: float, settings: Settings) -> Pace:
    """Lengthen under sustained high CPU, shorten under sustained low load.

    Only ADAPT_STREAK samples in a row on one side move the interval, and a move
    restarts the count, so one spike or one quiet second changes nothing.
    """
    if not settings.adaptive:
        return pace
    high = pace.high_streak + 1 if cpu > ADAPT_HIGH_CPU else 0
    low = pace.low_streak + 1 if cpu < ADAPT_LOW_CPU else 0
    if high >= ADAPT_STREAK:
        return Pace(min(pace.interval * ADAPT_FACTOR, settings.max_interval))
    if low >= ADAPT_STREAK:
        return Pace(max(pace.interval / ADAPT_FACTOR, settings.min_interval))
    return Pace(pace.interval, high, low)


def backoff_delays() -> Iterator[float]:
    """3, 3.6, 4.32, ... capped at 600 s (the seed's schedule, without jitter)."""
    delay = BACKOFF_INITIAL
    while True:
        yield delay
        delay = min(delay * BACKOFF_FACTOR, BACKOFF_CAP)


def jittered(delay: float, rng: random.Random) -> float:
    """Spread reconnects of a fleet: 90-100 % of the scheduled delay."""
    return delay * (1 - BACKOFF_JITTER * rng.random())


def retry_delay(retry: int, after_connection: bool, scheduled: float,
                rng: random.Random, spread: float = RESTART_SPREAD) -> float:
    """How long to wait before a retry (`retry` counts from 1 in this outage).

    When a connection that was up (for STABLE_CONNECTION) drops, the whole fleet usually
    lost it at once (the dashboard restarted): the first RESTART_RETRIES retries are spread
    evenly over `spread` seconds (full jitter), which the dashboard sets by the size of
    its fleet: 10,000 agents come back within about 15 s of a restart instead of within
    one second (1,700 a second at the busiest with 10 s), 2,000 within 3 s. Otherwise,
    and after those, the seed's backoff with 10 % jitter.
    """
    if after_connection and retry <= RESTART_RETRIES:
        return rng.uniform(RESTART_MIN_DELAY, spread)
    return jittered(scheduled, rng)


def refusal_status(exc: BaseException) -> int:
    """The HTTP status of a refused handshake, from either client."""
    response = getattr(exc, "response", None)
    return response.status_code if response is not None else exc.status_code  # type: ignore


def dashboard_says(exc: BaseException) -> str:
    """The first line of the dashboard's refusal, made safe to log (the legacy client
    keeps no body: then "")."""
    response = getattr(exc, "response", None)
    body = (response.body if response is not None else None) or b""
    line = body.decode(errors="replace").strip().split("\n", 1)[0][:200]
    return line.encode("ascii", "backslashreplace").decode()


def explain_failure(exc: BaseException, settings: Settings) -> str:
    """A connection failure in plain words, with the setting to check."""
    url = urlsplit(settings.server)
    host = url.hostname or settings.server
    if isinstance(exc, RefusedHandshake):
        status, said = refusal_status(exc), dashboard_says(exc)
        if status == 401:
            return (f"dashboard rejected id {settings.server_id} ({said or 'unauthorized'}): "
                    "check --id/--secret against servers.json")
        if status == 429:
            return f"dashboard refuses this address after repeated failed attempts ({said})"
        if said:
            return f"dashboard answered HTTP {status}: {said}"
        return f"dashboard answered HTTP {status}: check the path in --server (/ws-report)"
    if isinstance(exc, RedirectRefused):
        return (f"the dashboard at {url.netloc} redirected to {exc.target!r}, another host or "
                "scheme; not followed, so the secret is not sent there: fix --server")
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: check --server"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in NAME_MISMATCH:
            names = ", ".join(getattr(exc, "names", ())) or "another name"
            return (f"TLS certificate of {host} is for {names}, not {host}: use the name it "
                    "was issued for in --server")
        return (f"TLS certificate of {host} rejected ({exc.verify_message}): "
                "pass --ca-file for a self-signed dashboard")
    if url.scheme == "wss" and isinstance(exc, (ssl.SSLError, ConnectionResetError,
                                                 EOFError, InvalidMessage)):
        return (f"the dashboard at {url.netloc} speaks ws://, not wss:// (no TLS there): "
                "fix --server")
    if url.scheme == "ws" and isinstance(exc, InvalidMessage):
        if getattr(exc, "tls", False):  # explain() found a TLS server there
            return f"the dashboard at {url.netloc} speaks wss:// (TLS), not ws://: fix --server"
        if isinstance(exc.__cause__, ValueError):  # a status line that is not HTTP
            said = str(exc.__cause__).rpartition(": ")[2][:60]
            return (f"{url.netloc} answered with something other than HTTP ({said!r}): is "
                    "that the dashboard's port? check --server")
        return (f"the connection to {url.netloc} was cut during the handshake: check --server, "
                "and any proxy or firewall in between")
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {host}: is the dashboard running? check --server"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"timed out connecting to {host}: a firewall may drop packets; check --server"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"no route to the dashboard ({host}): is this server's network up?"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd else (exc.sent.code if exc.sent else 1006)
        reason = exc.rcvd.reason if exc.rcvd else ""
        return f"connection closed ({code}{': ' + repr(reason) if reason else ''})"
    if isinstance(exc, InvalidURI):
        return f"{exc}: check --server"
    if isinstance(exc, FrameFlood):
        return str(exc)
    # Whatever else: its text may quote the peer (a header, a status line), so escaped.
    return f"cannot connect to {settings.server}: {type(exc).__name__}: {str(exc)!r}"


async def tls_certificate(settings: Settings, verify: bool) -> dict[str, Any] | None:
    """The certificate the dashboard's address presents in a TLS handshake (checked against
    the CAs when `verify`, never against the name; {} unchecked), or None when no TLS
    handshake succeeds there."""
    url = urlsplit(settings.server)
    context = ssl.create_default_context(cafile=settings.ca_file)
    context.check_hostname = False
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            url.hostname, url.port or (443 if url.scheme == "wss" else 80), ssl=context), 10)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        return None
    cert = writer.get_extra_info("peercert") or {}
    writer.close()
    return cert


async def explain(exc: BaseException, settings: Settings) -> str:
    """explain_failure, after asking the dashboard's address what it is: the names its
    certificate is for (a name mismatch), or whether it speaks TLS at all (a ws:// answer
    that was not HTTP: only then is wss:// the advice)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in NAME_MISMATCH:
        cert = await tls_certificate(settings, verify=True) or {}
        names = [str(value) for _, value in cert.get("subjectAltName", ())][:5]
        exc.names = names  # type: ignore[attr-defined]
    elif isinstance(exc, InvalidMessage) and settings.server.startswith("ws:"):
        found = await tls_certificate(settings, verify=False)
        exc.tls = found is not None  # type: ignore[attr-defined]
    return explain_failure(exc, settings)


def is_refusal(exc: BaseException) -> bool:
    """The dashboard is up and said no (credentials, address): not an outage."""
    return isinstance(exc, RefusedHandshake)


# --- latency probes: what the dashboard asks to measure --------------------------------

PROBES_PER_ROUND = 5  # spread over the round, not in one burst
PROBE_TIMEOUT = 2.0
PROBES_AT_ONCE = 4
MAX_PROBE_TARGETS = 16
ICMP_FALLBACK_PORT = 443  # where ICMP echo is not permitted, TCP connect to this port
HTTP_TIMEOUT = 10.0  # an HTTP check: connect, TLS, request and status line, all in this
HTTP_HEAD_LIMIT = 64 * 1024  # the status line is read, at most this long; never the body
MAX_URL = 2048


class ProbeTarget(NamedTuple):
    name: str
    host: str
    port: int | None  # None: ICMP echo
    url: str | None = None  # an HTTP(S) check of this URL instead
    expect: int = 200  # the status that passes it


def dashboard_message(frame: str | bytes, kind: str) -> dict[str, Any] | None:
    """A frame from the dashboard as the JSON object of type `kind` it holds, or None."""
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) and message.get("type") == kind else None


def parse_reconnect(frame: str | bytes) -> float | None:
    """The dashboard's reconnect frame (PROTOCOL.md, "Reconnect spread"): over how many
    seconds to spread the first retries after losing it; None for any other frame or one
    that does not fit."""
    message = dashboard_message(frame, "reconnect")
    spread = message.get("spread") if message else None
    if type(spread) not in (int, float) or not RESTART_MIN_DELAY < spread <= MAX_RESTART_SPREAD:
        return None
    return float(spread)


def parse_probes(frame: str | bytes) -> tuple[float, tuple[ProbeTarget, ...]] | None:
    """The dashboard's probes frame (PROTOCOL.md, "Probes"), checked; None for any other
    frame or one that does not fit."""
    message = dashboard_message(frame, "probes")
    if message is None:
        return None
    try:
        interval = float(message["interval"])
        targets = tuple(probe_target(t) for t in message["targets"][:MAX_PROBE_TARGETS])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not 5 <= interval <= MAX_INTERVAL:
        return None
    return interval, targets


def probe_target(target: dict[str, Any]) -> ProbeTarget:
    """One target of a probes frame; ValueError (and the like) where it does not fit."""
    name = str(target["name"])[:64]
    if target.get("url") is None:
        return ProbeTarget(name, str(target["host"])[:253],
                           int(target["port"]) if target.get("port") else None)
    url = str(target["url"])
    parts = urlsplit(url)
    if len(url) > MAX_URL or parts.scheme not in ("http", "https") or not parts.hostname \
            or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise ValueError(f"not an http(s) URL: {url[:80]!r}")
    return ProbeTarget(name, "", None, url, int(target.get("expect", 200)))


def summarize(name: str, rtts: list[float | None]) -> dict[str, Any]:
    """One target's round: the median round trip of the replies (ms) and the share lost."""
    replies = sorted(r for r in rtts if r is not None)
    result: dict[str, Any] = {"name": name, "loss": round(1 - len(replies) / len(rtts), 3)}
    if replies:
        result["rtt"] = round(statistics.median(replies), 2)
    return result


async def tcp_rtt(address: str, port: int) -> float | None:
    """Milliseconds to connect, or to be refused (a reply too); None when nothing came."""
    start = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port),
                                           PROBE_TIMEOUT)
        writer.transport.abort()
    except ConnectionRefusedError:
        pass
    except (OSError, asyncio.TimeoutError):
        return None
    return (time.monotonic() - start) * 1000


async def icmp_rtt(address: str, family: int) -> float | None:
    """Milliseconds for an ICMP echo through an unprivileged ping socket (Linux's
    net.ipv4.ping_group_range); PermissionError where those are not allowed."""
    v6 = family == socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM,
                         socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    sequence = random.randrange(1 << 16)
    try:
        start = time.monotonic()
        # The kernel fills in the identifier and the checksum of a ping socket's echo.
        sock.sendto(struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0, sequence) + b"sss",
                    (address, 0))
        while (left := PROBE_TIMEOUT - (time.monotonic() - start)) > 0:
            reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
            kind, _, _, _, seq = struct.unpack("!BBHHH", reply[:8])
            if kind == (129 if v6 else 0) and seq == sequence:
                return (time.monotonic() - start) * 1000
    except (asyncio.TimeoutError, OSError, struct.error) as exc:
        if isinstance(exc, PermissionError):
            raise
        return None
    finally:
        sock.close()
    return None


async def http_get(url: str, context: ssl.SSLContext | None
                   ) -> tuple[int, float, bytes | None]:
    """GET `url`, redirects not followed: (status, ms to the first byte of the answer, the
    server's certificate in DER for https). Reads the status line only, never the body."""
    parts = urlsplit(url)
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port or (443 if context else 80), ssl=context,
        server_hostname=parts.hostname if context else None, limit=HTTP_HEAD_LIMIT)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
                     f"User-Agent: sss-agent/{__version__}\r\nAccept: */*\r\n"
                     "Connection: close\r\n\r\n".encode())
        line = await reader.readline()  # ValueError past HTTP_HEAD_LIMIT
        ttfb = (time.monotonic() - start) * 1000
    finally:
        writer.transport.abort()
    return http_status(line), ttfb, der


def http_status(line: bytes) -> int:
    """The code of an HTTP status line ("HTTP/1.1 200 OK"); ValueError for anything else."""
    version, _, rest = line.partition(b" ")
    if not version.startswith(b"HTTP/") or not rest[:3].isdigit():
        raise ValueError("not an HTTP answer")
    return int(rest[:3])


async def peer_certificate(url: str) -> bytes | None:
    """The certificate an https server shows, unverified: to say how long one that failed
    verification (expired, say) has left."""
    parts = urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection(parts.hostname, parts.port or 443, ssl=context,
                                              server_hostname=parts.hostname)
    try:
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.transport.abort()


def der_not_after(der: bytes) -> float:
    """When an X.509 certificate (DER) expires, as Unix time. RFC 5280: Certificate holds
    tbsCertificate: [0] version (optional), serialNumber, signature, issuer, validity
    (notBefore, notAfter). ValueError where the bytes are not that."""
    import calendar  # here: only agents with https checks need it (0.6 MB)

    def element(at: int) -> tuple[int, int, int]:  # (tag, where its content starts, ends)
        tag, length, at = der[at], der[at + 1], at + 2
        if length & 0x80:
            size = length & 0x7F
            length, at = int.from_bytes(der[at:at + size], "big"), at + size
        return tag, at, at + length

    try:
        _, tbs, _ = element(0)
        _, at, _ = element(tbs)
        if der[at] == 0xA0:  # version
            at = element(at)[2]
        for _ in range(3):  # serialNumber, signature, issuer
            at = element(at)[2]
        _, validity, _ = element(at)
        tag, start, end = element(element(validity)[2])
        text = der[start:end].decode("ascii")
        layout = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime, or Generalized
        return float(calendar.timegm(time.strptime(text, layout)))
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError("not an X.509 certificate") from exc


async def http_check(target: ProbeTarget, context: ssl.SSLContext | None) -> dict[str, Any]:
    """One HTTP(S) check: its status (0: no answer), time to first byte as `rtt`, `loss` 1
    unless the status is the expected one, an https certificate's days left, the error."""
    url = target.url or ""
    status, ttfb, der, error = 0, None, None, ""
    try:
        status, ttfb, der = await asyncio.wait_for(http_get(url, context), HTTP_TIMEOUT)
    except ssl.SSLCertVerificationError as exc:
        error = exc.verify_message  # "certificate has expired", "self-signed certificate"
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            der = await asyncio.wait_for(peer_certificate(url), HTTP_TIMEOUT)
    except asyncio.TimeoutError:
        error = "timeout"
    except ConnectionRefusedError:
        error = "refused"
    except (OSError, ValueError, EOFError) as exc:  # ssl.SSLError is an OSError
        error = str(exc) or type(exc).__name__
    return http_result(target, status, ttfb, der, error, time.time())


def http_result(target: ProbeTarget, status: int, ttfb: float | None, der: bytes | None,
                error: str, wall: float) -> dict[str, Any]:
    """The report's entry for one HTTP check (PROTOCOL.md, "Probes")."""
    result: dict[str, Any] = {"name": target.name, "status": status,
                              "loss": 0.0 if status == target.expect else 1.0}
    if ttfb is not None:
        result["rtt"] = round(ttfb, 2)
    if der:
        with contextlib.suppress(ValueError):
            result["certDays"] = round((der_not_after(der) - wall) / 86400, 2)
    if status and status != target.expect:
        error = f"expected {target.expect}"
    if error:
        result["error"] = error[:64]
    return result


class Prober:
    """Rounds of probes every `interval` s to the targets the dashboard named; the last
    round's results wait in `results` for the next report (probing never delays one)."""

    def __init__(self) -> None:
        self.interval = 30.0
        self.targets: tuple[ProbeTarget, ...] = ()
        self.results: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.icmp_permitted = True
        self.unresolved: set[str] = set()  # targets whose name did not resolve (logged once)
        self.tls: ssl.SSLContext | None = None  # HTTPS checks: the system's CAs, once needed

    def plan(self, interval: float, targets: tuple[ProbeTarget, ...]) -> None:
        if (interval, targets) != (self.interval, self.targets):
            log.info("probing %d target%s every %.0f s", len(targets),
                     "" if len(targets) == 1 else "s", interval)
            self.interval, self.targets, self.results = interval, targets, []
            self.changed.set()

    async def run(self) -> None:
        while True:
            self.changed.clear()
            targets, interval = self.targets, self.interval
            if not targets:
                await self.changed.wait()
                continue
            gate = asyncio.Semaphore(PROBES_AT_ONCE)
            round_ = asyncio.gather(*(self.measure(t, interval, gate) for t in targets))
            changed = asyncio.ensure_future(self.changed.wait())
            try:
                await asyncio.wait([round_, changed], return_when=asyncio.FIRST_COMPLETED)
            finally:  # a new plan, or the agent stopping: the round is dropped, quietly
                changed.cancel()
                dropped = not round_.done()
                if dropped:  # (a cancelled gather() ends with CancelledError as its result)
                    round_.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await round_
            if not dropped:
                self.results = round_.result()

    async def measure(self, target: ProbeTarget, interval: float,
                      gate: asyncio.Semaphore) -> dict[str, Any]:
        """One round for one target: PROBES_PER_ROUND probes spread over the interval (an
        HTTP check: one request)."""
        spacing = interval / PROBES_PER_ROUND
        start = time.monotonic() + random.uniform(0, spacing)  # targets apart, too
        if target.url is not None:
            await asyncio.sleep(max(start - time.monotonic(), 0))
            if target.url.startswith("https:") and self.tls is None:
                self.tls = ssl.create_default_context()
            async with gate:
                result = await http_check(target, self.tls if target.url.startswith("https:")
                                          else None)
            # A round lasts as long as one of probes does: one check per interval.
            await asyncio.sleep(max(start + (PROBES_PER_ROUND - 1) * spacing
                                    - time.monotonic(), 0))
            return result
        address = await self.resolve(target)
        rtts: list[float | None] = []
        for n in range(PROBES_PER_ROUND):
            await asyncio.sleep(max(start + n * spacing - time.monotonic(), 0))
            if address is None:
                rtts.append(None)
                continue
            async with gate:
                rtts.append(await self.probe(target, *address))
        return summarize(target.name, rtts)

    async def resolve(self, target: ProbeTarget) -> tuple[int, str] | None:
        """(family, address), resolved once a round in a thread; None (logged once an
        outage) when the name does not resolve in time."""
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(loop.getaddrinfo(
                target.host, target.port or ICMP_FALLBACK_PORT, type=socket.SOCK_STREAM),
                PROBE_TIMEOUT)
            family, address = found[0][0], found[0][4][0]
        except (OSError, asyncio.TimeoutError, IndexError) as exc:
            if target.name not in self.unresolved:
                log.warning("probe %r: cannot resolve %s (%s): counted as loss until it "
                            "does", target.name, target.host, type(exc).__name__)
                self.unresolved.add(target.name)
            return None
        if target.name in self.unresolved:
            log.info("probe %r: %s resolves again", target.name, target.host)
            self.unresolved.discard(target.name)
        return family, address

    async def probe(self, target: ProbeTarget, family: int, address: str) -> float | None:
        if target.port is None and self.icmp_permitted:
            try:
                return await icmp_rtt(address, family)
            except PermissionError:
                self.icmp_permitted = False
                log.warning("ICMP echo is not permitted here (unprivileged ping sockets: "
                            "sysctl net.ipv4.ping_group_range); probing ICMP targets by TCP "
                            "port %d instead", ICMP_FALLBACK_PORT)
        return await tcp_rtt(address, target.port or ICMP_FALLBACK_PORT)


# --- top processes, only while someone watches -------------------------------------------
#
# When a viewer opens this server's detail view the dashboard sends {"type": "processes",
# "seconds": 60}, again every 20 s while it stays open, and "seconds": 0 when the last
# viewer leaves (PROTOCOL.md, "Top processes"). Until then nothing is read. While
# watched, every report carries the top processes by CPU (over the interval) and by memory,
# from /proc/PID/stat (one read each; psutil's process_iter where the agent reads through
# psutil): the program's name, or with --process-args its command line, cut at 64 characters.

MAX_WATCH_SECONDS = 120.0  # a frame asking for longer is held to this
MAX_TOP = 10


def parse_processes(frame: str | bytes) -> tuple[float, int] | None:
    """(seconds to send top processes for, how many of each) from the dashboard's frame;
    None for any other frame or one that does not fit."""
    message = dashboard_message(frame, "processes")
    seconds = message.get("seconds") if message else None
    top = message.get("top", MAX_TOP) if message else None
    if type(seconds) not in (int, float) or not 0 <= seconds < math.inf \
            or type(top) is not int or not 1 <= top <= MAX_TOP:
        return None
    return min(float(seconds), MAX_WATCH_SECONDS), top


def stat_fields(stat: str) -> tuple[str, int, int]:
    """(name, CPU ticks used, resident pages) from /proc/PID/stat; the name may hold spaces
    and ")"."""
    head, _, rest = stat.rpartition(")")
    fields = rest.split()  # from the state on: utime, stime, rss are fields 14, 15 and 24
    return head.partition("(")[2], int(fields[11]) + int(fields[12]), int(fields[21])


Processes = dict[int, tuple[str, float, int]]  # pid -> (name, CPU seconds, resident bytes)


def read_processes(proc: Path, with_args: bool) -> Processes:
    """Every process there is now, from /proc."""
    clock_ticks, page_size = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    found = {}
    with os.scandir(proc) as entries:
        pids = [entry.name for entry in entries if entry.name.isdigit()]
    for pid in pids:
        try:
            with open(proc / pid / "stat", "rb") as stat:
                name, ticks, resident = stat_fields(stat.read().decode(errors="replace"))
            if with_args:
                with open(proc / pid / "cmdline", "rb") as cmdline:
                    name = cmdline.read(256).replace(b"\0", b" ").decode(errors="replace"
                                                                         ).strip() or name
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        found[int(pid)] = (name[:64], ticks / clock_ticks, resident * page_size)
    return found


def psutil_processes(psutil: Any, with_args: bool) -> Processes:
    """Every process there is now, through psutil (where there is no /proc); those it may
    not read are left out."""
    found = {}
    wanted = ["name", "cpu_times", "memory_info", *(["cmdline"] if with_args else [])]
    for process in psutil.process_iter(wanted):
        info = process.info
        times, memory = info.get("cpu_times"), info.get("memory_info")
        if times is None or memory is None:
            continue
        name = " ".join(info.get("cmdline") or ()) or info.get("name") or "?"
        found[process.pid] = (name[:64], times.user + times.system, memory.rss)
    return found


def top_processes(before: Mapping[int, float], now: Processes, seconds: float,
                  top: int) -> list[dict[str, Any]]:
    """The `top` processes by CPU (percent of one CPU over the `seconds` since `before`)
    and by memory (resident bytes): at most 2 × top, each once. A process not in `before`
    started within the interval: all its CPU time counts."""
    rows = {pid: {"pid": pid, "name": name,
                  "cpu": round(max(cpu - before.get(pid, 0.0), 0.0) / seconds * 100, 1),
                  "memory": memory}
            for pid, (name, cpu, memory) in now.items()}
    by_cpu = sorted(rows, key=lambda pid: -rows[pid]["cpu"])[:top]
    by_memory = sorted(rows, key=lambda pid: -rows[pid]["memory"])[:top]
    return [rows[pid] for pid in dict.fromkeys(by_cpu + by_memory)]


class ProcessWatch:
    """Top processes while the dashboard says someone watches; nothing read otherwise."""

    def __init__(self, with_args: bool, use_psutil: bool) -> None:
        self.with_args = with_args
        self.psutil = require_psutil() if use_psutil else None
        self.until = -math.inf  # monotonic time the last request lapses
        self.top = MAX_TOP
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds at the last read
        self.read_at = 0.0

    def asked(self, seconds: float, top: int, now: float) -> None:
        """The dashboard's frame: collect until `now + seconds` (0: stop now)."""
        was = now < self.until
        self.until, self.top = now + seconds, top
        if seconds > 0 and not was:
            log.info("a viewer watches: top processes go with each report")
            self.read(now)  # the first report's CPU needs a reading before it
        elif seconds == 0 and was:
            log.info("nobody watches: no more top processes")
            self.cpu.clear()

    def read(self, now: float) -> list[dict[str, Any]] | None:
        """The top processes for a report, or None while nobody watches."""
        if now >= self.until:
            self.cpu.clear()
            return None
        try:
            processes = psutil_processes(self.psutil, self.with_args) if self.psutil \
                else read_processes(PROC, self.with_args)
        except (OSError, RuntimeError):
            return None  # the platform would not tell
        seconds = now - self.read_at
        rows = top_processes(self.cpu, processes, seconds, self.top) \
            if self.cpu and seconds > 0 else None
        self.cpu = {pid: cpu for pid, (_, cpu, _) in processes.items()}
        self.read_at = now
        return rows


# --- self-update: opt-in on both sides, from its own dashboard, checked by hash ---------
#
# The one exception to "monitor-only": with --auto-update, and only when its dashboard
# offers it (servers.json "agentUpdates"), the agent replaces its own file with the
# agent.py that dashboard serves, once the file's size and SHA-256 match what the
# dashboard said over the same authenticated connection. Never over plain ws:// to
# another machine (whoever sits in between could hand out code). The new file runs on
# trial: until its first report is accepted a marker stays, and a start that finds the
# marker (the new file crashed, or never got a report accepted) goes back to the file
# before and refuses that hash for a day. PROTOCOL.md, "Agent updates".

MAX_AGENT_BYTES = 1 << 20  # no agent.py is bigger
MAX_UPDATE_SPREAD = 600.0
UPDATE_TRIAL = 120.0  # a new file's first report must be accepted within this long
REFUSED_FOR = 86400.0  # a hash that failed its trial is not tried again for a day
UPDATE_FOLDER = ".sss-agent-update"  # beside agent.py, where there is no StateDirectory
TRIAL_ENV = "SSS_AGENT_TRIAL"  # set for the new file's first run: the switch, not a restart
INSTALLED_ENV = "SSS_AGENT_INSTALLED"  # the agent.py first started: what a rollback runs
HEX64 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


AGENT_FILE = Path(__file__).resolve()
AGENT_SHA256 = file_sha256(AGENT_FILE)
AGENT_VERSION = AGENT_SHA256[:12]  # each report's extraInfo.agentVersion


class Offer(NamedTuple):
    """The dashboard's agent.py, as its update frame describes it."""

    sha256: str
    size: int
    spread: float  # seconds over which the fleet's fetches are spread


def parse_update(frame: str | bytes) -> Offer | None:
    """The dashboard's update frame (PROTOCOL.md, "Agent updates"), checked; None for any
    other frame or one that does not fit."""
    message = dashboard_message(frame, "update")
    if message is None:
        return None
    sha256, size, spread = message.get("sha256"), message.get("size"), message.get("spread")
    if not (isinstance(sha256, str) and HEX64.fullmatch(sha256) and type(size) is int
            and 0 < size <= MAX_AGENT_BYTES and type(spread) in (int, float)
            and 0 <= spread <= MAX_UPDATE_SPREAD):
        return None
    return Offer(sha256, size, float(spread))


def update_refusal(server: str) -> str:
    """Why updates may not come from this dashboard ("" when they may): only over wss://,
    or from a dashboard on this machine."""
    parts = urlsplit(server)
    if parts.scheme == "wss":
        return ""
    host = parts.hostname or ""
    import ipaddress  # here: only agents run with --auto-update need it
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return "" if loopback else (f"updates come only over wss:// or from a dashboard on this "
                                f"machine, and {server} is neither")


def agent_url(server: str) -> str:
    """Where the dashboard serves agent.py: beside /ws-report, on the same origin."""
    parts = urlsplit(server)
    path = parts.path.rsplit("/", 1)[0] + "/agent.py"
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}{path}"


def fetch_agent(settings: Settings, offer: Offer) -> bytes:
    """agent.py from the dashboard, with the TLS checks the reports get, following no
    redirect; raises ValueError when it is not what the dashboard said."""
    import urllib.request  # here: 1.5 MB of imports that an agent without updates never needs

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None  # a 3xx is an error: agent.py comes from this dashboard only

    context = ssl.create_default_context(cafile=settings.ca_file) \
        if settings.server.startswith("wss:") else None
    opener = urllib.request.build_opener(NoRedirects(),
                                         urllib.request.HTTPSHandler(context=context))
    with opener.open(agent_url(settings.server), timeout=30) as response:
        body = response.read(offer.size + 1)
    if len(body) != offer.size or hashlib.sha256(body).hexdigest() != offer.sha256:
        raise ValueError(f"got {len(body)} bytes that are not the {offer.size} the dashboard "
                         "announced")
    compile(body, "agent.py", "exec")  # a file that does not even compile is not switched to
    return body


def update_folder(installed: Path, environ: Mapping[str, str]) -> Path:
    """Where updates go: systemd's StateDirectory, else a folder beside agent.py."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else installed.parent / UPDATE_FOLDER


class Updates:
    """The update folder: agent.py (the update in use), agent.py.previous, trial.json
    (the marker of a file on trial) and refused.json (hashes not to try until then)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current, self.previous = folder / "agent.py", folder / "agent.py.previous"
        self.trial, self.refused_file = folder / "trial.json", folder / "refused.json"

    def refused(self, wall: float) -> dict[str, float]:
        try:
            saved = json.loads(self.refused_file.read_text())
            return {sha: float(until) for sha, until in saved.items()
                    if HEX64.fullmatch(sha) and float(until) > wall}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def on_trial(self) -> str:
        """The hash of the file on trial, or ""."""
        try:
            sha = json.loads(self.trial.read_text()).get("sha256", "")
        except (OSError, ValueError, AttributeError):
            return ""
        return sha if isinstance(sha, str) and HEX64.fullmatch(sha) else ""

    def roll_back(self, sha: str, wall: float) -> None:
        """The file on trial goes: the one before it comes back (or none: the installed
        agent.py runs), and its hash is refused for a day."""
        refused = {**self.refused(wall), sha: wall + REFUSED_FOR}
        write_atomically(self.refused_file, json.dumps(refused).encode())
        if self.previous.exists():
            os.replace(self.previous, self.current)
        else:
            self.current.unlink(missing_ok=True)
        self.trial.unlink(missing_ok=True)

    def start(self, environ: Mapping[str, str], wall: float) -> Path | None:
        """At start: the update to run (None: this file). A file on trial that is not
        starting for the first time failed it: rolled back."""
        sha = self.on_trial()
        if sha and environ.get(TRIAL_ENV) != sha:
            self.roll_back(sha, wall)
            log.warning("agent.py %s did not get a report accepted: back to the one before "
                        "it; that version is not tried again for a day", sha[:12])
        return self.current if self.current.exists() else None

    def switch(self, body: bytes, wall: float) -> None:
        """Put `body` in place, keeping the file before it, and mark it on trial."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged = self.folder / "agent.py.new"
        write_atomically(staged, body)
        if self.current.exists():
            os.replace(self.current, self.previous)
        write_atomically(self.trial, json.dumps(
            {"sha256": hashlib.sha256(body).hexdigest(), "since": wall}).encode())
        os.replace(staged, self.current)

    def passed(self) -> None:
        """The file on trial got a report accepted: it stays."""
        self.trial.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def exec_agent(path: Path, environ: dict[str, str]) -> None:
    """Run `path` in this process's place, with the same arguments."""
    os.execve(sys.executable, [sys.executable, str(path), *sys.argv[1:]], environ)


class Updater:
    """Waits for the dashboard's offer, fetches within its spread, switches, and says
    when the file on trial passed (its first report accepted) or ran out of time."""

    def __init__(self, settings: Settings, updates: Updates) -> None:
        self.settings, self.updates = settings, updates
        self.offers: asyncio.Queue[Offer] = asyncio.Queue(1)
        self.switched_to: Path | None = None  # set once a new file is in place: run it
        self.on_trial = updates.on_trial() == AGENT_SHA256 and bool(AGENT_SHA256)

    def offered(self, offer: Offer) -> None:
        if self.offers.full():
            self.offers.get_nowait()  # the newest offer wins
        self.offers.put_nowait(offer)

    def accepted(self) -> None:
        if self.on_trial:
            self.updates.passed()
            self.on_trial = False
            log.info("agent.py %s passed: its first report was accepted", AGENT_VERSION)

    async def run(self, stop: asyncio.Event) -> None:
        """Until a new file is in place (then `stop` is set so that it runs)."""
        loop = asyncio.get_running_loop()
        trial_ends = time.monotonic() + UPDATE_TRIAL
        offer: Offer | None = None
        while True:
            timeout = trial_ends - time.monotonic() if self.on_trial else None
            if offer is None:
                try:
                    offer = await asyncio.wait_for(self.offers.get(), timeout)
                except asyncio.TimeoutError:  # on trial, and no report accepted in time?
                    if not self.on_trial:
                        continue  # one was, while this waited
                    self.updates.roll_back(AGENT_SHA256, time.time())
                    log.warning("agent.py %s got no report accepted within %.0f s: back to "
                                "the one before it", AGENT_VERSION, UPDATE_TRIAL)
                    self.switched_to = Path(os.environ.get(INSTALLED_ENV) or AGENT_FILE)
                    stop.set()
                    return
            refused = offer.sha256 in self.updates.refused(time.time())
            if refused:
                log.info("agent.py %s offered: refused, it failed its trial here within a "
                         "day", offer.sha256[:12])
            if refused or offer.sha256 == AGENT_SHA256:
                offer = None
                continue
            delay = random.uniform(0, offer.spread)
            log.info("agent.py %s offered: fetching it in %.1f s (the fleet's spread: %g s)",
                     offer.sha256[:12], delay, offer.spread)
            try:  # the fleet's fetches spread; a newer offer meanwhile starts the wait over
                offer = await asyncio.wait_for(self.offers.get(), delay)
                continue
            except asyncio.TimeoutError:
                pass
            try:
                body = await loop.run_in_executor(None, fetch_agent, self.settings, offer)
                self.updates.switch(body, time.time())
            except (OSError, ValueError, SyntaxError) as exc:
                log.warning("update to agent.py %s failed: %s; this one goes on running",
                            offer.sha256[:12], exc)
                offer = None
                continue
            log.info("updated to agent.py %s (was %s): starting it", offer.sha256[:12],
                     AGENT_VERSION)
            self.switched_to = self.updates.current
            stop.set()
            return


# --- transport ---------------------------------------------------------------


def open_connection(settings: Settings, check: bool = False) -> Any:
    """The connection to the dashboard, as an async context manager, from whichever client
    this websockets has: the same timeouts, heartbeat, TLS and headers on both."""
    context = ssl.create_default_context(cafile=settings.ca_file) \
        if settings.server.startswith("wss:") else None
    headers = {"X-SERVER-ID": settings.server_id, "X-AUTH-SECRET": settings.secret}
    if check:
        headers["X-SSS-Check"] = "1"  # the dashboard answers each report (PROTOCOL.md)
    elif settings.auto_update:
        headers["X-SSS-Auto-Update"] = "1"  # offer this agent updates (PROTOCOL.md)
    common = {"ssl": context, "open_timeout": 10, "ping_interval": PING_INTERVAL,
              "ping_timeout": PING_TIMEOUT, "close_timeout": 1, "compression": None,
              "user_agent_header": f"sss-agent/{__version__}"}
    if WEBSOCKETS >= (13, 0):
        return DashboardConnect(settings.server, additional_headers=headers, **common)
    return DashboardConnect(settings.server, extra_headers=headers, **common)


class Reporter:
    """Collects on its own schedule and sends through a bounded queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self.connection: ClientConnection | None = None
        self.pace = Pace(settings.interval)
        self.dropping = False
        self.stopping = False
        self.refused = False  # the dashboard is up but refuses this agent
        self.prober = Prober()
        self.processes = ProcessWatch(settings.process_args, not reads_proc(settings))
        self.restart_spread = RESTART_SPREAD  # until the dashboard says (parse_reconnect)
        self.accepted = False  # the dashboard accepted a report on this connection
        self.updater: Updater | None = None  # with --auto-update, where updates may come

    async def collect(self) -> None:
        """Sample every interval; enqueue while connected, drop (logged once) while not."""
        facts = host_facts()
        collector = make_collector(self.settings)
        before = collector.sample()
        while True:
            await asyncio.sleep(self.pace.interval)
            try:
                after = collector.sample()
                message = build_message(self.settings.server_id, facts, before, after,
                                        self.pace.interval)
            except (OSError, ValueError) as exc:  # keep reporting whatever else happens
                log.warning("sample failed: %s", exc)
                continue
            before = after
            if self.prober.results:  # the last finished round, however old the sample
                message.setdefault("extraInfo", {})["probes"] = self.prober.results
            top = self.processes.read(time.monotonic())
            if top:
                message.setdefault("extraInfo", {})["topProcesses"] = top
            self.pace = adapt(self.pace, message["cpuInfo"]["percent"], self.settings)
            if self.connection is None:
                if not self.dropping:
                    log.info("not connected: samples are dropped until %s",
                             "the dashboard accepts this agent" if self.refused
                             else "the dashboard is back")
                self.dropping = True
                continue
            self.dropping = False
            if self.queue.full():
                self.queue.get_nowait()  # the oldest sample is the least useful
            self.queue.put_nowait(encode(message))

    async def send_queued(self, ws: ClientConnection) -> None:
        while True:
            await ws.send(await self.queue.get())

    async def read_dashboard(self, ws: ClientConnection) -> None:
        """Frames from the dashboard, a few a second at most; raises when the connection
        drops, or closes it on a flood (FLOOD_FRAMES within FLOOD_SECONDS)."""
        recent: collections.deque[float] = collections.deque(maxlen=FLOOD_FRAMES)
        while True:
            frame = await ws.recv()
            now = time.monotonic()
            recent.append(now)
            if len(recent) == FLOOD_FRAMES and now - recent[0] <= FLOOD_SECONDS:
                await ws.close(1008, "too many frames")
                raise FrameFlood(f"the dashboard sent {FLOOD_FRAMES} frames within "
                                 f"{FLOOD_SECONDS:.0f} s; hung up")
            self.dashboard_said(frame)
            await asyncio.sleep(1 / FRAMES_PER_SECOND)  # unread frames wait in TCP buffers

    def dashboard_said(self, frame: str | bytes) -> None:
        """One frame from the dashboard (PROTOCOL.md: "reconnect", "accepted", "probes")."""
        if dashboard_message(frame, "accepted") is not None:
            self.accepted = True  # this connection works: a loss starts the backoff over
            if self.updater is not None:
                self.updater.accepted()
            return
        offer = parse_update(frame)
        if offer is not None:
            if self.updater is not None:
                self.updater.offered(offer)
            return
        spread = parse_reconnect(frame)
        if spread is not None:
            if spread != self.restart_spread:
                log.info("the dashboard asks to retry within %g s after losing it", spread)
                self.restart_spread = spread
            return
        watch = parse_processes(frame)
        if watch is not None:
            self.processes.asked(*watch, time.monotonic())
            return
        plan = parse_probes(frame)
        if plan is None:
            log.debug("frame from the dashboard ignored: %.80r", frame)
        else:
            self.prober.plan(*plan)

    async def report(self, ws: ClientConnection) -> None:
        """Send queued samples; raise ConnectionClosed as soon as the connection drops."""
        tasks = [asyncio.ensure_future(self.read_dashboard(ws)),
                 asyncio.ensure_future(self.send_queued(ws))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        for task in tasks:  # the reader's reason first: it knows why the connection ended
            if task in done:
                task.result()

    async def connect_forever(self) -> None:
        """Connect, report, and reconnect on the seed's backoff; never gives up."""
        settings = self.settings
        rng = random.Random()
        delays = backoff_delays()
        attempts = 0  # in the current outage
        lost_connection = False  # this outage began with a connection that was up
        outage_start: float | None = None  # None until the first connection is lost
        last_cause = ""
        started, ever_connected = time.monotonic(), False
        while True:
            attempts += 1
            connected_at = None
            starting = False  # a dashboard on its way up: retried soon, quietly
            self.accepted = False
            try:
                async with open_connection(settings) as ws:
                    connected_at = time.monotonic()
                    self.refused = False
                    if last_cause or ever_connected:  # after an outage that was said
                        since = connected_at - (outage_start or connected_at)
                        log.info("reconnected after %d attempt%s (%.0f s without dashboard)",
                                 attempts, "" if attempts == 1 else "s", since)
                    else:
                        log.info("connected to %s", settings.server)
                    attempts, last_cause, outage_start = 0, "", None
                    lost_connection, ever_connected = False, True
                    self.connection = ws
                    await self.report(ws)
            except Exception as exc:  # whatever went wrong, explain it and retry
                if self.stopping:
                    return
                cause = await explain(exc, settings)
                self.refused = is_refusal(exc)
                starting = (not ever_connected and isinstance(exc, ConnectionRefusedError)
                            and time.monotonic() - started < STARTUP_WAIT)
                if starting:
                    log.debug("%s; the dashboard may be starting: retrying", cause)
                elif connected_at is not None:
                    log.warning("lost the dashboard: %s", cause)
                    outage_start = None
                elif cause != last_cause:
                    log.warning("%s; retrying with backoff", cause)
                else:
                    log.debug("still failing: %s", cause)
                last_cause = "" if starting else cause
                outage_start = outage_start or time.monotonic()
            finally:
                self.connection = None
                while not self.queue.empty():
                    self.queue.get_nowait()  # stale once the connection is gone
            if self.accepted or (connected_at is not None
                                 and time.monotonic() - connected_at >= STABLE_CONNECTION):
                delays = backoff_delays()
                # A connection that worked (a report accepted, or up for a while) dropped:
                # likely the whole fleet's (a restart, or a dashboard crash-looping). One
                # that drops at once (a flapping proxy) keeps the backoff growing.
                lost_connection = True
            delay = STARTUP_RETRY if starting else retry_delay(
                attempts + 1, lost_connection, next(delays), rng, self.restart_spread)
            log.debug("next attempt in %.1f s", delay)
            await asyncio.sleep(delay)

    async def close(self, code: int = 1000, reason: str = "agent shutting down") -> None:
        self.stopping = True
        if self.connection is not None:
            await self.connection.close(code, reason)


async def run(settings: Settings, updates: Updates | None = None) -> Path | None:
    """Report until SIGTERM or SIGINT, then close with 1000; or, with `updates`, until a
    new agent.py is in place: then close with 1001 and return it, to be run."""
    reporter = Reporter(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("reporting to %s as %s (agent.py %s)", settings.server, settings.server_id,
             AGENT_VERSION)
    tasks = [asyncio.ensure_future(reporter.collect()),
             asyncio.ensure_future(reporter.connect_forever()),
             asyncio.ensure_future(reporter.prober.run())]
    if updates is not None:
        reporter.updater = Updater(settings, updates)
        tasks.append(asyncio.ensure_future(reporter.updater.run(stop)))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    for task in tasks:
        if task.done():
            task.result()  # a bug surfaced as a traceback, not a silent hang
    switched_to = reporter.updater.switched_to if reporter.updater is not None else None
    closing = (1001, "agent updating") if switched_to else (1000, "agent shutting down")
    with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
        await asyncio.wait_for(reporter.close(*closing), 1.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if switched_to is None:
        log.info("stopped")
    return switched_to


def one_message(settings: Settings) -> dict[str, Any]:
    """A report computed over one second, as the running agent would send it."""
    collector = make_collector(settings)
    before = collector.sample()
    time.sleep(1)
    after = collector.sample()
    return build_message(settings.server_id or socket.gethostname(), host_facts(),
                         before, after, settings.interval)


async def check_once(settings: Settings, message: dict[str, Any]) -> tuple[bool, str]:
    """--check: send one report and read the dashboard's verdict: (accepted, what to say)."""
    try:
        async with open_connection(settings, check=True) as ws:
            await ws.send(encode(message))
            try:
                answer = json.loads(await asyncio.wait_for(ws.recv(), CHECK_TIMEOUT))
                if isinstance(answer, dict) and answer.get("type") == "probes":
                    answer = json.loads(await asyncio.wait_for(ws.recv(), CHECK_TIMEOUT))
            except asyncio.TimeoutError:
                return True, ("connected and sent a report; this dashboard does not confirm "
                              "reports (an older or the Go dashboard)")
            if not isinstance(answer, dict) or answer.get("type") != "check":
                return True, "connected and sent a report; the dashboard's answer was unclear"
            if answer.get("accepted") is True:
                return True, f"the dashboard at {settings.server} accepted a report as " \
                             f"{settings.server_id}"
            reason = str(answer.get("reason", "no reason given"))[:200]
            return False, f"the dashboard refused the report: {reason!r}"
    except Exception as exc:  # whatever went wrong, say it in plain words
        return False, await explain(exc, settings)


def main(argv: list[str] | None = None) -> int:
    try:
        settings, log_level = parse_settings(argv, os.environ)
    except UsageError as exc:
        print(f"agent.py: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # we explain failures ourselves
    if settings.once:
        print(encode(one_message(settings)))
        return 0
    if settings.check:
        accepted, verdict = asyncio.run(check_once(settings, one_message(settings)))
        print(("ok: " if accepted else "failed: ") + verdict)
        return 0 if accepted else 1
    updates = None
    if settings.auto_update:
        updates = updates_at_start(settings)
        if updates is None:  # then it does not ask for them either
            settings = dataclasses.replace(settings, auto_update=False)
    switched_to = asyncio.run(run(settings, updates))
    if switched_to is not None:
        exec_agent(switched_to, {**os.environ, TRIAL_ENV: file_sha256(switched_to),
                                 INSTALLED_ENV: os.environ.get(INSTALLED_ENV, str(AGENT_FILE))})
    return 0


def updates_at_start(settings: Settings) -> Updates | None:
    """--auto-update at start: run the update in place (this process becomes it), or roll
    back one whose trial failed; the update folder, or None where updates cannot come."""
    refusal = update_refusal(settings.server)
    if refusal:
        log.warning("--auto-update: %s; this agent.py stays", refusal)
        return None
    installed = Path(os.environ.get(INSTALLED_ENV) or AGENT_FILE)
    updates = Updates(update_folder(installed, os.environ))
    try:
        chosen = updates.start(os.environ, time.time())
    except OSError as exc:
        log.warning("--auto-update: %s: %s; this agent.py stays", updates.folder,
                    exc.strerror or exc)
        return None
    os.environ.pop(TRIAL_ENV, None)  # only this first run of a new file is its switch
    target = chosen or installed
    if target.resolve() != AGENT_FILE:
        exec_agent(target, {**os.environ, INSTALLED_ENV: str(installed)})
    return updates


if __name__ == "__main__":
    raise SystemExit(main())
