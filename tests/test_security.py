"""Attacks from the open internet, each reproduced on loopback and shown contained.

Every test here is bounded in count and time and uses addresses of 127.0.0.0/8 as the
attacker's many sources. README's Security section has the numbers at full tilt
(bench.py attack).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from bench import upgrade_request
from conftest import (
    SECRET,
    Dashboard,
    free_port,
    go_report,
    recv_json,
    recv_until,
    server_entry,
    server_in,
    tls_dashboard,
)
from websockets.asyncio.client import connect as asyncio_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

import dashboard
from sss import history, limits
from sss.limits import Connections


def raw(dash: Dashboard, data: bytes, source: str = "127.0.0.1", read: bool = True) -> bytes:
    """Send `data` on a fresh TCP connection from `source`; the whole answer (until close)."""
    with socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                  source_address=(source, 0)) as sock:
        sock.sendall(data)
        answer = b""
        while read and (chunk := sock.recv(65536)):
            answer += chunk
        return answer


def idle_viewer(dash: Dashboard, source: str) -> socket.socket:
    """A viewer that completes the handshake and never reads a byte again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", dash.port))
    sock.sendall(upgrade_request("/ws-frontend"))
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def viewer_from(dash: Dashboard, source: str, **kwargs: Any) -> Any:
    sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                    source_address=(source, 0))
    return connect(dash.url("/ws-frontend", "ws"), sock=sock, open_timeout=10, **kwargs)


def agent_status(dash: Dashboard, sid: str, secret: str, source: str) -> int:
    sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                    source_address=(source, 0))
    try:
        with connect(dash.url("/ws-report", "ws"), sock=sock, open_timeout=10,
                     additional_headers={"X-SERVER-ID": sid, "X-AUTH-SECRET": secret}):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


# --- memory an unauthenticated client can take ---------------------------------------


def big_fleet(count: int) -> list[dict[str, Any]]:
    """Servers whose names make a snapshot of about 0.6 KB each."""
    return [server_entry(f"s{i:04d}", name=f"server {i} " + "n" * 240,
                         group="g" * 250) for i in range(count)]


def test_viewers_that_never_read_stay_within_the_memory_budget(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard([*big_fleet(2000), server_entry("alpha")], start=False)
    dash.start("--viewer-memory", "2")
    snapshot = len(dash.get("/api/servers")[2])
    assert snapshot > 1_000_000
    idle = [idle_viewer(dash, f"127.0.3.{n}") for n in range(1, 4) for _ in range(8)]
    try:
        with dash.viewer(max_size=None) as watcher, dash.agent("alpha") as agent:
            recv_json(watcher, timeout=10)
            agent.send(json.dumps(go_report()))
            recv_until(watcher, lambda m: server_in(m, "alpha"), timeout=5)  # still served
            backlog = dash.metric("sss_viewer_backlog_bytes")
            assert backlog <= 2 * 2**20 + snapshot, backlog
            assert dash.metric("sss_viewers_cut_total") >= 16  # 24 snapshots do not fit
        dash.wait_for_log(r"viewer disconnected: not reading \(\d+ bytes queued\)")
    finally:
        for sock in idle:
            sock.close()


def test_ten_viewers_of_a_big_fleet_need_no_flag(make_dashboard: Any) -> None:
    """The viewers' budget scales with the snapshot: ten browsers that have not read their
    snapshot yet (idle, the worst case) are all kept by default. Before, 32 MiB held three
    snapshots of a 10,000-server dashboard, and README said to raise --viewer-memory."""
    dash: Dashboard = make_dashboard(big_fleet(10_000))
    snapshot = len(dash.get("/api/servers")[2])
    assert snapshot > 4_000_000
    idle = [idle_viewer(dash, "127.0.6.1") for _ in range(10)]
    try:
        with dash.viewer(max_size=None) as watcher:
            recv_json(watcher, timeout=20)  # served after them: nobody was cut
        assert dash.metric("sss_viewers_cut_total") == 0
        assert dash.metric("sss_viewer_backlog_bytes") > 8 * snapshot  # they hold it all
    finally:
        for sock in idle:
            sock.close()


def test_answers_nobody_reads_are_bounded(make_dashboard: Any) -> None:
    """600 requests for /api/servers (1.2 MB each here) from clients that never read their
    answer. Before, each answer sat in the dashboard until its client read it: 3,000 such
    requests took RSS from 35 to 305 MB (the unit's MemoryMax is 256 MB)."""
    dash: Dashboard = make_dashboard(big_fleet(2000))
    listing = len(dash.get("/api/servers")[2])
    assert listing > 1_000_000
    process = psutil.Process(dash.process.pid)  # type: ignore[union-attr]
    before, peak = process.memory_info().rss, [0]
    flooding = threading.Event()

    def sample() -> None:
        while not flooding.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.05)
    sampler = threading.Thread(target=sample)
    sampler.start()
    never_read = []
    try:
        for n in range(600):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind((f"127.0.14.{n % 20 + 1}", 0))
            sock.connect(("127.0.0.1", dash.port))
            sock.sendall(b"GET /api/servers HTTP/1.1\r\nHost: x\r\n\r\n")
            never_read.append(sock)
        deadline = time.monotonic() + 10
        while sum(dash.refused(why) for why in ("answers", "answers_dropped", "handshakes")) \
                < 500:  # each request refused, or its answer dropped, but the 32 MiB's
            assert time.monotonic() < deadline, "the answers were never bounded"
            time.sleep(0.2)
        assert len(dash.get("/api/servers")[2]) == listing  # others are served as usual
    finally:
        flooding.set()
        sampler.join()
        for sock in never_read:
            sock.close()
    grown = (peak[0] - before) / 2**20
    assert grown < 80, grown  # the answers' budget (32 MiB) and the requests themselves
    assert "Traceback" not in dash.log_text()


def read_upgrade(sock: socket.socket) -> bytes:
    """The 101 answer's head; the bytes after it (frames) are returned."""
    seen = b""
    while b"\r\n\r\n" not in seen:
        seen += sock.recv(4096)
    head, _, rest = seen.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return rest


def test_bytes_sent_before_the_handshake_answer_do_not_desync_frames(
        make_dashboard: Any) -> None:
    """An agent that pipelines a report right behind its request, or the first two bytes of
    one: websockets and the dashboard's own frame splitter must agree where each frame
    starts. The report here is 33,157 bytes long, so the bytes after those two read as the
    header of a short frame (0x81 0x85): before, the splitter took them for one, and the
    connection's frames went wrong from there."""
    dash: Dashboard = make_dashboard()
    small = json.dumps(go_report()).encode()
    big = small + b" " * (0x8185 - len(small))  # JSON allows the spaces; 126, 0x81 0x85
    headers = {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": SECRET}
    for report, cut in ((big, 2), (small, len(masked_frame(small)))):
        accepted = dash.metric("sss_reports_accepted_total")
        with socket.create_connection(("127.0.0.1", dash.port), timeout=5) as sock:
            first = masked_frame(report)
            assert report is small or first[:4] == b"\x81\xfe\x81\x85"
            sock.sendall(upgrade_request("/ws-report", headers) + first[:cut])
            read_upgrade(sock)
            sock.sendall(first[cut:] + masked_frame(report) + masked_frame(report))
            deadline = time.monotonic() + 5
            while dash.metric("sss_reports_accepted_total") < accepted + 3:
                assert time.monotonic() < deadline, "a frame was lost or misread"
                time.sleep(0.05)
        assert dash.metric("sss_reports_rejected_total", 'reason="not_json"') == 0
    assert "Traceback" not in dash.log_text()


def masked_frame(payload: bytes) -> bytes:
    """A client's text frame: masked, as clients must."""
    return Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])


def test_a_stop_does_not_wait_for_a_peer_that_never_answers_the_close(
        make_dashboard: Any) -> None:
    """SIGTERM closes every connection with 1001 and waits 1.5 s for the answers. Before,
    a connection already closing was in no list that the stop aborted: 10 s for an agent
    that never answers."""
    dash: Dashboard = make_dashboard()
    silent = socket.create_connection(("127.0.0.1", dash.port), timeout=5)
    try:
        silent.sendall(upgrade_request("/ws-report", {"X-SERVER-ID": "alpha",
                                                      "X-AUTH-SECRET": SECRET}))
        read_upgrade(silent)
        dash.wait_for_log("agent connected: id=alpha")
        started = time.monotonic()
        assert dash.stop(timeout=15) == 0
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def strict_json(text: str | bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: no NaN, no Infinity."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_damaged_data_files_drop_their_bad_entries_and_keep_the_rest(
        make_dashboard: Any) -> None:
    """Before: sessions.json with "expires": null or traffic.json with "received": "many"
    stopped the dashboard with a TypeError; 1e400 in traffic.json put a bare inf into every
    snapshot and /api/servers (invalid JSON for every browser); in alerts.json it made
    /api/alerts answer 500."""
    dash: Dashboard = make_dashboard(
        [server_entry("alpha"), server_entry("beta"), server_entry("gamma")], start=False,
        history=True,
        notifiers=[{"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/"}],
        alerts=[{"name": "down", "metric": "offline", "notify": ["ops"]}])
    dash.data.mkdir()
    period = {"start": 1_700_000_000, "end": 2_700_000_000, "sent": 5}
    meter = {"last_in": None, "last_out": None, "boot_time": None, "past": []}
    (dash.data / "traffic.json").write_text(json.dumps({
        "alpha": {**meter, "current": {**period, "received": "many"}},
        "beta": {**meter, "current": {**period, "received": 7}}})[:-1]
        + ', "gamma": {"last_in": null, "last_out": null, "boot_time": null, "past": [], '
          '"current": {"start": 1700000000, "end": 2700000000, "received": 1e400, '
          '"sent": 5}}}')
    (dash.data / "sessions.json").write_text(json.dumps({
        "a" * 64: {"user": "alice", "expires": None, "password": "0" * 16}}))
    (dash.data / "alerts.json").write_text(
        '[{"alert": "down", "id": "alpha", "since": 1e400, "value": null, "last_sent": 1}, '
        '{"alert": "down", "id": "beta", "since": 1700000000, "value": null, '
        '"last_sent": 1700000000}]')
    store = history.History(dash.data)
    store.writer.connection().execute(
        "INSERT INTO latest VALUES ('alpha', 1700000000, ?)",
        ('{"cpuInfo": {"percent": Infinity, "info": []}}',))
    store.close()
    dash.start()
    for entry in ("traffic.json: entry 'alpha'", "traffic.json: entry 'gamma'",
                  "sessions.json: entry 'aaaa", "alerts.json: entry 0",
                  "the last view of 'alpha' is damaged"):
        dash.wait_for_log(re.escape(entry))
    servers = strict_json(dash.get("/api/servers")[2])
    assert {s["id"]: s.get("traffic", {}).get("in") for s in servers}["beta"] == 7
    assert [a["server"]["id"] for a in strict_json(dash.get("/api/alerts")[2])] == ["beta"]
    with dash.viewer() as viewer:
        strict_json(viewer.recv(timeout=5))
    strict_json(dash.get("/api/traffic?id=gamma")[2])
    assert "Traceback" not in dash.log_text()


def test_viewers_are_capped_per_address(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False).start("--viewers-per-address", "3")
    with contextlib.ExitStack() as stack:
        first = [stack.enter_context(viewer_from(dash, "127.0.0.5")) for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            viewer_from(dash, "127.0.0.5")
        assert refused.value.response.status_code == 429
        assert b"3 viewers connected from this address" in refused.value.response.body
        with viewer_from(dash, "127.0.0.6") as other:  # another address is unaffected
            assert recv_json(other)["type"] == "snapshot"
        first[0].close()
        deadline = time.monotonic() + 5
        while dash.metric("sss_viewers_connected") > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with viewer_from(dash, "127.0.0.5") as again:  # a closed one frees its place
            assert recv_json(again)["type"] == "snapshot"
    assert dash.refused("viewers") == 1


def test_unfinished_handshakes_are_capped_per_address(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    partial = b"GET /ws-frontend HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    held = []
    try:
        for _ in range(16):
            sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                            source_address=("127.0.0.8", 0))
            sock.sendall(partial + b"a" * 8000)
            held.append(sock)
        answer = raw(dash, partial, "127.0.0.8")  # the 17th from that address
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 10" in answer
        assert b"16 handshakes in progress from this address" in answer
        with dash.agent("alpha") as agent:  # agents elsewhere connect as usual
            agent.send(json.dumps(go_report()))
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5  # until the dashboard has seen the closes
    while not (answer := raw(dash, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                             "127.0.0.8")).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, answer[:60]
        time.sleep(0.1)
    assert dash.refused("handshakes") >= 1


def test_request_headers_are_limited_to_what_clients_send(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(40)) + b"\r\n"
    # websockets 16 and later answer 431; 15 hangs up without an answer.
    assert raw(dash, many).startswith(b"HTTP/1.1 431") or raw(dash, many) == b""
    long = b"GET / HTTP/1.1\r\nCookie: " + b"c" * 9000 + b"\r\n\r\n"
    assert raw(dash, long).startswith(b"HTTP/1.1 431") or raw(dash, long) == b""
    cookie = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 7000 + b"\r\n\r\n"
    assert raw(dash, cookie).startswith(b"HTTP/1.1 200")  # a long cookie still fits
    heavy = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: " % n + b"h" * 7000 + b"\r\n"
                                              for n in range(3))
    answer = raw(dash, heavy)  # unfinished, but 21 KB already: answered at once
    assert answer.startswith(b"HTTP/1.1 431") and b"over 16384 bytes" in answer
    assert dash.refused("request_too_large") == 1


def test_refusing_clients_already_gone_is_counted_and_quiet(make_dashboard: Any) -> None:
    """Connect-and-close from an address over its handshake limit, while the dashboard is
    busy (stopped here): by the time it accepts, the client is gone, and answering it
    raised inside connection_made, past the log limiter (157,020 tracebacks in 90 s)."""
    dash: Dashboard = make_dashboard()
    held = [socket.create_connection(("127.0.0.1", dash.port), source_address=("127.0.7.1", 0))
            for _ in range(limits.HANDSHAKES_PER_ADDRESS)]
    for sock in held:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # a request that never ends
    try:
        dash.signal(signal.SIGSTOP)
        try:
            for _ in range(300):
                with socket.socket() as gone:
                    gone.bind(("127.0.7.1", 0))
                    gone.connect(("127.0.0.1", dash.port))
        finally:
            dash.signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while dash.refused("handshakes") < 250 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dash.refused("handshakes") >= 250  # every refusal counted
        assert "Traceback" not in dash.log_text()
        assert dash.count_log("127.0.7.1") <= 2  # logged once a minute, with a count
    finally:
        for sock in held:
            sock.close()


def test_a_failure_counted_as_it_arrives_is_forgiven_when_right() -> None:
    """Sign-ins count as failures as they arrive (FailureLimiter.fail) and are forgiven when
    the password was right, the ban the count set included."""
    limiter = limits.FailureLimiter(limit=2, window=60, ban=300)
    assert limiter.fail("198.51.100.7", "user:alice", now=0.0) is None
    limiter.forgive("198.51.100.7", "user:alice")
    limiter.expire(now=1.0)  # an emptied count is gone, not an empty one (IndexError)
    assert limiter.fail("198.51.100.7", "user:alice", now=2.0) is None  # counting anew
    banned = limiter.fail("198.51.100.7", "user:alice", now=3.0)
    assert banned == "user:alice" and limiter.banned_for("198.51.100.7", "user:alice", 4.0)
    limiter.forgive("198.51.100.7", "user:alice", banned)
    assert limiter.banned_for("198.51.100.7", "user:alice", 4.0) == 0.0
    limiter.expire(now=100.0)


def test_past_the_total_the_oldest_handshake_makes_room() -> None:
    handshakes = Connections(handshakes_total=3, handshakes_per_address=2).handshakes
    assert handshakes.start("slow-1", "192.0.2.1", 0.0) == ("", None)
    assert handshakes.start("slow-2", "192.0.2.1", 0.0) == ("", None)
    refusal, _ = handshakes.start("slow-3", "192.0.2.1", 0.0)
    assert refusal == "2 handshakes in progress from this address"
    assert handshakes.start("agent-1", "198.51.100.1", 1.0) == ("", None)
    assert handshakes.start("agent-2", "198.51.100.2", 5.0) == ("", "slow-1")
    handshakes.end("agent-1")
    assert handshakes.start("slow-4", "192.0.2.1", 5.0) == ("", None)  # slow-1 left
    assert dict(handshakes.by_address) == {"192.0.2.1": 2, "198.51.100.2": 1}


def test_a_reconnecting_fleet_is_told_to_retry_not_dropped_halfway() -> None:
    """All places taken by handshakes younger than 2 s (a fleet coming back at once): the
    newcomer waits, instead of each one dropping another before it can finish."""
    handshakes = Connections(handshakes_total=2, handshakes_per_address=2).handshakes
    assert handshakes.start("agent-1", "198.51.100.1", 10.0) == ("", None)
    assert handshakes.start("agent-2", "198.51.100.2", 10.5) == ("", None)
    assert handshakes.start("agent-3", "198.51.100.3", 11.9) == (
        "2 handshakes in progress", None)
    assert handshakes.start("agent-3", "198.51.100.3", 12.0) == ("", "agent-1")


# Programs run from the checkout: the tests' helpers and bench.py importable there.
PROGRAM_ENV = {**os.environ, "PYTHONPATH": f"{dashboard.HERE / 'tests'}:{dashboard.HERE / 'tools'}"}


# The dashboard in a process of its own (its signal handlers need a main thread that no
# other test's event loop runs in), and the garbage collector asked what churn left.
CHURN_PROGRAM = """
import asyncio, dataclasses, gc, json, os, resource, signal, socket, sys, threading
from pathlib import Path
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect
import dashboard
from sss import limits, transport
from sss.config import load_config
from conftest import SECRET, go_report
config_path, port = Path(sys.argv[1]), int(sys.argv[2])
config, _ = load_config(config_path)
config = dataclasses.replace(config, host="127.0.0.1", port=port)
transport.HANDSHAKE_TIMEOUT = 1.0  # unfinished requests time out within the test
left = []
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # both ends of 520 sockets live here
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))

def unfinished_request(source):
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.sendall(b"GET / HTTP/1.1\\r\\n")
    return sock

def churn():
    url = f"ws://127.0.0.1:{port}"
    dashboard_up.wait()
    gc.collect()
    gc.disable()
    try:
        for _ in range(6):
            for i in range(5):
                with connect(f"{url}/ws-report", additional_headers={
                        "X-SERVER-ID": f"agent{i}", "X-AUTH-SECRET": SECRET}) as agent:
                    agent.send(json.dumps(go_report()))
            with connect(f"{url}/ws-frontend") as viewer:
                viewer.recv(timeout=5)
        # A handshake flood: every place taken, then newcomers. The dashboard drops the
        # oldest, refuses the rest before websockets starts, and times out what is left.
        held = [unfinished_request(f"127.0.3.{n // 16 + 1}")
                for n in range(limits.HANDSHAKES_TOTAL)]
        threading.Event().wait(limits.HANDSHAKE_EVICT_AFTER + 0.5)
        held += [unfinished_request("127.0.4.1") for _ in range(3)]  # each drops the oldest
        held += [unfinished_request("127.0.3.2") for _ in range(3)]  # refused: over 16 there
        threading.Event().wait(transport.HANDSHAKE_TIMEOUT + 0.5)  # the rest time out
        for sock in held:
            sock.close()
        threading.Event().wait(0.5)  # the dashboard sees every close
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left.extend(type(o).__name__ for o in gc.garbage
                    if type(o).__module__.startswith(("asyncio", "sss", "websockets")))
    finally:
        os.kill(os.getpid(), signal.SIGINT)  # the dashboard's own handler stops it

dashboard_up = threading.Event()
async def main():
    asyncio.get_running_loop().call_later(1, dashboard_up.set)
    args = dashboard.parse_args(["--config", str(config_path)])
    await dashboard.run(config, config_path, args, None, None, config_path.parent)
threading.Thread(target=churn, daemon=True).start()
asyncio.run(main())
print(json.dumps(left))
"""


@pytest.mark.skipif(sys.version_info < (3, 11), reason=(
    "before 3.11 a cancelled task keeps its CancelledError, whose traceback holds the frame "
    "that holds the task (websockets' keepalive): a cycle in the interpreter that the "
    "dashboard's collection once a minute frees"))
def test_closed_connections_are_freed_without_a_collection(tmp_path: Path) -> None:
    """Reconnect churn and a handshake flood: every closed connection must be freed at
    once (refcounting), not left in a cycle for the next full collection."""
    config_path = tmp_path / "servers.json"
    config_path.write_text(json.dumps({"servers": [server_entry(f"agent{i}") for i in range(5)]}))
    result = subprocess.run([sys.executable, "-c", CHURN_PROGRAM, str(config_path),
                             str(free_port())], cwd=dashboard.HERE, env=PROGRAM_ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    left = json.loads(result.stdout.strip().splitlines()[-1])
    assert left == [], collections.Counter(left)


PINGS_PROGRAM = """
import asyncio, dataclasses, json, sys
from pathlib import Path
import bench, dashboard
from sss import transport
from sss.config import load_config
from conftest import SECRET
config_path, port = Path(sys.argv[1]), int(sys.argv[2])
config, _ = load_config(config_path)
config = dataclasses.replace(config, host="127.0.0.1", port=port)
transport.PING_INTERVAL = 0.2

async def pings_seen(path, headers):
    raw = bench.RawAgent()
    await raw.connect("127.0.0.1", port, path, headers, "127.0.0.1")
    await asyncio.sleep(1.5)
    raw.close()
    return raw.pings

async def main():
    args = dashboard.parse_args(["--config", str(config_path)])
    served = asyncio.ensure_future(dashboard.run(config, config_path, args, None, None,
                                                 config_path.parent))
    await asyncio.sleep(1)
    agent = await pings_seen("/ws-report", {"X-SERVER-ID": "agent0", "X-AUTH-SECRET": SECRET})
    viewer = await pings_seen("/ws-frontend", {})
    print(json.dumps({"agent": agent, "viewer": viewer}))
    served.cancel()
asyncio.run(main())
"""


def test_viewers_are_pinged_agents_are_not(tmp_path: Path) -> None:
    """An agent's reports are its heartbeat: at 10,000 agents, pings would be 500 a second."""
    config_path = tmp_path / "servers.json"
    config_path.write_text(json.dumps({"servers": [server_entry("agent0")]}))
    result = subprocess.run([sys.executable, "-c", PINGS_PROGRAM, str(config_path),
                             str(free_port())], cwd=dashboard.HERE, env=PROGRAM_ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["agent"] == 0 and seen["viewer"] >= 3, seen


# --- lockouts and limits -------------------------------------------------------------


def test_rotating_addresses_spend_a_global_budget(make_dashboard: Any) -> None:
    """50 addresses x 9 guesses each stay under every per-address limit; the global
    budget (300 failures a minute) stops them, while known addresses get through."""
    dash: Dashboard = make_dashboard()
    assert agent_status(dash, "alpha", SECRET, "127.0.0.1") == 101  # known before the attack
    statuses = [agent_status(dash, ("alpha", "beta")[n % 2], f"guess-{n}", f"127.0.1.{n // 9 + 1}")
                for n in range(450)]
    assert statuses[:300] == [401] * 300
    assert statuses[300:] == [429] * 150
    assert agent_status(dash, "alpha", SECRET, "127.0.0.1") == 101
    assert agent_status(dash, "beta", SECRET, "127.0.2.1") == 429  # an unknown address
    assert dash.refused("over_budget") == 151
    assert dash.count_log("only addresses that authenticated recently") == 1  # once a minute


def test_a_report_flood_is_dropped_counted_and_closed(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    report = json.dumps(go_report())
    started = time.monotonic()
    sent = 0
    with dash.agent("alpha") as agent:
        with pytest.raises(ConnectionClosed):
            for _ in range(5000):
                agent.send(report)
                sent += 1
            agent.recv(timeout=10)
        assert agent.close_code == 1008
    elapsed = time.monotonic() - started
    accepted = dash.metric("sss_reports_accepted_total")
    assert accepted <= 100 + 10 * elapsed + 1, (accepted, elapsed)  # burst, then 10 a second
    assert dash.metric("sss_reports_rejected_total", 'reason="rate"') >= 200
    dash.wait_for_log("agent closed: id=alpha: 200 reports over the rate within 10 s")
    assert dash.count_log("report dropped: id=alpha: rate") == 1  # not one line per report
    with dash.agent("alpha") as again:  # it may come back at a sane pace
        again.send(report)


def test_a_closed_flooder_is_read_no_more(make_dashboard: Any) -> None:
    """Once a flood is closed, the dashboard stops reading the connection: what the
    flooder sends backs up in TCP, instead of being parsed and dropped until the close
    handshake times out. (A sender that never yields to read the close frame, as a tight
    asyncio loop does, is the worst case.)"""
    dash: Dashboard = make_dashboard()
    report = json.dumps(go_report())
    sent = 0

    async def flood() -> None:
        nonlocal sent
        async with asyncio_connect(dash.url("/ws-report", "ws"), additional_headers={
                "X-SERVER-ID": "alpha", "X-AUTH-SECRET": SECRET}) as ws:
            while True:
                await ws.send(report)
                sent += 1

    with contextlib.suppress(TimeoutError, asyncio.TimeoutError, ConnectionClosed):
        asyncio.run(asyncio.wait_for(flood(), timeout=5))
    dash.wait_for_log("agent closed: id=alpha: 200 reports over the rate within 10 s")
    # 300 reports read; then at most what the sockets' buffers hold (a few MB).
    assert sent < 300 + 8 * 2**20 // len(report), sent


# --- small ones ------------------------------------------------------------------------


def test_the_viewer_socket_checks_origin(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()  # a public dashboard: no users configured
    with pytest.raises(InvalidStatus) as refused:
        dash.viewer(origin="http://evil.example").close()
    assert refused.value.response.status_code == 403
    with dash.viewer(origin=f"http://127.0.0.1:{dash.port}") as own:
        assert recv_json(own)["type"] == "snapshot"
    with dash.viewer() as no_origin:  # not a browser: unaffected
        assert recv_json(no_origin)["type"] == "snapshot"


def test_methods_other_than_get_and_head_get_405(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    page = dash.get("/")[2]
    for method in (b"POST", b"DELETE", b"OPTIONS", b"PUT"):
        answer = raw(dash, method + b" / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405"), answer[:40]
        assert b"Allow: GET, HEAD" in answer
    head = raw(dash, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    headers, _, body = head.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 200") and body == b""
    assert f"Content-Length: {len(page)}".encode() in headers
    assert raw(dash, b"HEAD /ws-report HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 401")
    assert dash.refused("method") == 4


def test_refusals_before_the_request_work_over_tls(make_dashboard: Any, tmp_path: Path) -> None:
    dash, ca = tls_dashboard(make_dashboard, tmp_path)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", dash.port), timeout=10) as plain, \
            context.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        answer = b""
        with contextlib.suppress(ssl.SSLError, OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 405"), answer[:60]
    assert "Traceback" not in dash.log_text()


def test_peer_text_is_escaped_in_the_log(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    forged = "bye\n2026-01-01 00:00:00 INFO agent connected: id=root \x1b[31m"
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report()))
        agent.close(1000, forged)
    line = dash.wait_for_log("agent disconnected: id=alpha")
    assert "\\n2026-01-01" in line and "\\x1b[31m" in line
    assert not any(x.startswith("2026-01-01") for x in dash.lines)  # no forged line
    assert "\x1b" not in dash.log_text()
