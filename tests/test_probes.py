"""Latency probes: the dashboard says what to probe, agents measure, reports carry it.

All on loopback: a listening port (a reply), a closed port (refused is a reply too), a
listener whose accept queue is full (SYNs dropped: all loss), ICMP echo to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import http.server
import json
import signal
import socket
import ssl
import threading
import time
from typing import Any

import pytest
from conftest import (
    SECRET,
    Dashboard,
    card,
    free_port,
    go_report,
    recv_json,
    server_entry,
)
from websockets.sync.client import connect

import agent


def run(coroutine: Any) -> Any:
    """asyncio.run in a thread of its own: a browser test in this worker may hold the main
    thread's event loop (Playwright's sync API)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture
def listener() -> Any:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


@pytest.fixture
def black_hole() -> Any:
    """A port whose accept queue is full: the kernel drops further SYNs, nothing answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    yield port
    for filler in fillers:
        filler.close()
    sock.close()


def test_the_probes_frame_and_a_round_summary() -> None:
    frame = json.dumps({"type": "probes", "interval": 30, "targets": [
        {"name": "Cloudflare", "host": "1.1.1.1"},
        {"name": "CT", "host": "ct.example", "port": 80}]})
    assert agent.parse_probes(frame) == (30.0, (agent.ProbeTarget("Cloudflare", "1.1.1.1", None),
                                                agent.ProbeTarget("CT", "ct.example", 80)))
    for other in ('{"type": "check"}', "not json", '{"type": "probes", "interval": 1, '
                  '"targets": []}', '{"type": "probes", "interval": 30, "targets": [{}]}'):
        assert agent.parse_probes(other) is None
    assert agent.summarize("CT", [10.0, None, 30.0, 20.0, None]) == {
        "name": "CT", "loss": 0.4, "rtt": 20.0}
    assert agent.summarize("CT", [None] * 5) == {"name": "CT", "loss": 1.0}


def test_tcp_probes_measure_a_reply_a_refusal_and_silence(listener: Any,
                                                          black_hole: int) -> None:
    open_port, closed_port = listener.getsockname()[1], free_port()

    async def measure() -> tuple[Any, Any, Any]:
        return await asyncio.gather(agent.tcp_rtt("127.0.0.1", open_port),
                                    agent.tcp_rtt("127.0.0.1", closed_port),
                                    agent.tcp_rtt("127.0.0.1", black_hole))
    connected, refused, silent = run(measure())
    assert isinstance(connected, float) and 0 < connected < agent.PROBE_TIMEOUT * 1000
    assert isinstance(refused, float) and refused > 0  # refused is an answer
    assert silent is None  # dropped SYNs: loss after the 2 s timeout


def test_icmp_echo_to_loopback() -> None:
    try:
        rtt = run(agent.icmp_rtt("127.0.0.1", socket.AF_INET))
    except PermissionError:
        pytest.skip("unprivileged ICMP is not allowed here: sysctl net.ipv4.ping_group_range "
                    "does not include this user's group")
    assert isinstance(rtt, float) and 0 < rtt < 2000


def probes_config(port: int, hang_port: int) -> dict[str, Any]:
    return {"interval": 5, "targets": [{"name": "Local", "host": "127.0.0.1", "port": port},
                                       {"name": "Hole", "host": "127.0.0.1", "port": hang_port}]}


def test_agents_probe_what_the_dashboard_says_and_reports_keep_their_pace(
        make_dashboard: Any, make_agent: Any, listener: Any, black_hole: int) -> None:
    dash: Dashboard = make_dashboard([server_entry("alpha", probes=["Local", "Hole"])],
                                     probes=probes_config(listener.getsockname()[1], black_hole))
    reporter = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                          "--secret", SECRET, "--interval", "1", "--min-interval", "1",
                          "--no-adaptive")
    reporter.wait_for_log("probing 2 targets every 5 s")
    started, accepted = time.monotonic(), dash.metric("sss_reports_accepted_total")
    probes = wait_for_probes(dash, "alpha", {"Local", "Hole"})
    elapsed = time.monotonic() - started
    local = next(p for p in probes if p["name"] == "Local")
    hole = next(p for p in probes if p["name"] == "Hole")
    assert local["loss"] == 0 and 0 < local["rtt"] < 2000
    assert hole == {"name": "Hole", "loss": 1.0}  # no rtt without a reply
    # The hanging target never held a report back: about one a second throughout.
    reports = dash.metric("sss_reports_accepted_total") - accepted
    assert reports >= elapsed * 0.6, (reports, elapsed)
    metrics = dash.get("/metrics")[2].decode()
    assert 'sss_probe_loss_ratio{id="alpha",name="alpha",target="Hole"} 1.0' in metrics
    assert 'sss_probe_rtt_ms{id="alpha",name="alpha",target="Local"}' in metrics

    # A reload changes what the agent measures.
    config = json.loads(dash.config_path.read_text())
    config["probes"]["targets"] = [{"name": "Other", "host": "127.0.0.1",
                                    "port": listener.getsockname()[1]}]
    config["servers"][0]["probes"] = ["Other"]
    dash.config_path.write_text(json.dumps(config))
    assert dash.process is not None
    dash.process.send_signal(signal.SIGHUP)
    reporter.wait_for_log("probing 1 target every 5 s")
    assert [p["name"] for p in wait_for_probes(dash, "alpha", {"Other"})] == ["Other"]


def wait_for_probes(dash: Dashboard, sid: str, names: set[str],
                    timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = next(s for s in dash.get_json("/api/servers") if s["id"] == sid)
        probes = server.get("extraInfo", {}).get("probes", [])
        if {p["name"] for p in probes} == names:
            return probes
        time.sleep(0.3)
    raise AssertionError(f"no probes {names} from {sid} in {timeout} s")


def test_a_go_style_agent_ignores_the_probes_frame(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(probes={"targets": [{"name": "CF", "host": "1.1.1.1"}]})
    with dash.agent("alpha") as go_agent, dash.viewer() as viewer:  # after the reconnect frame
        recv_json(viewer)
        frame = json.loads(go_agent.recv(timeout=5))  # sent right after the handshake
        assert frame == {"type": "probes", "interval": 30.0,
                         "targets": [{"name": "CF", "host": "1.1.1.1"}]}
        for _ in range(3):  # the Go agent reads frames and ignores them: reports go on
            go_agent.send(json.dumps(go_report()))
    assert dash.metric("sss_reports_accepted_total") == 3


def test_bad_probe_results_are_refused(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with connect(dash.url("/ws-report", "ws"), additional_headers={
            "X-SERVER-ID": "alpha", "X-AUTH-SECRET": SECRET}) as sender:
        sender.send(json.dumps(go_report(extraInfo={"probes": [
            {"name": "x", "rtt": 1, "loss": 2}]})))
        sender.send(json.dumps(go_report(extraInfo={"probes": [
            {"name": str(n), "loss": 0} for n in range(17)]})))
    dash.wait_for_log("report dropped: id=alpha: out_of_range")
    assert dash.metric("sss_reports_rejected_total", 'reason="too_many_items"') == 1


def test_the_page_shows_the_worst_target_and_charts_every_target(
        make_dashboard: Any, page_on: Any) -> None:
    dash: Dashboard = make_dashboard(start=False).start("--history-resolution", "1")
    probes = [{"name": "CT Shanghai", "rtt": 182.4, "loss": 0.02},
              {"name": "Cloudflare", "rtt": 4.1, "loss": 0.0}]
    with dash.agent("alpha") as sender:
        page = page_on(dash)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for _ in range(3):
            sender.send(json.dumps(go_report(extraInfo={"probes": probes})))
            time.sleep(1.1)  # history rows of one second each
        line = card(page, "alpha").locator(".probe")
        line.wait_for(timeout=10_000)
        assert line.inner_text() == "CT Shanghai 182 ms · 2 % loss"
        assert "warn" in (line.get_attribute("class") or "")
        assert "Cloudflare 4 ms · 0 % loss" in (line.get_attribute("title") or "")
        page.goto(dash.url("/#/server/alpha"))
        titles = page.locator(".plot h3")
        titles.nth(8).wait_for(timeout=10_000)
        assert titles.all_inner_texts()[-2:] == ["Latency", "Packet loss"]
        keys = page.locator(".plot").nth(7).locator(".keys span").all_inner_texts()
        assert keys == ["CT Shanghai", "Cloudflare"]
        assert errors == [], errors


def test_icmp_falls_back_once_names_fail_once_and_ipv6_works(caplog: Any) -> None:
    async def rounds() -> tuple[Any, ...]:
        prober, gate = agent.Prober(), asyncio.Semaphore(agent.PROBES_AT_ONCE)
        echo = agent.ProbeTarget("Loop", "127.0.0.1", None)
        nowhere = agent.ProbeTarget("Nowhere", "no-such-host.invalid", 80)
        results = [await prober.measure(t, 0.5, gate) for t in (echo, echo, nowhere, nowhere)]
        return prober.icmp_permitted, results
    with caplog.at_level("INFO", logger="sss.agent"):
        icmp_permitted, (echo1, echo2, lost1, lost2) = run(rounds())
    # ICMP echo where ping sockets are allowed; else TCP 443 on loopback (refused: a reply).
    assert echo1["loss"] == 0 and echo2["loss"] == 0 and echo1["rtt"] > 0
    fallbacks = [r for r in caplog.records if "ICMP echo is not permitted" in r.message]
    assert len(fallbacks) == (0 if icmp_permitted else 1)  # said once, not per probe
    assert lost1 == lost2 == {"name": "Nowhere", "loss": 1.0}
    unresolved = [r for r in caplog.records if "cannot resolve no-such-host.invalid" in r.message]
    assert len(unresolved) == 1  # once per outage

    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        rtt = run(agent.tcp_rtt("::1", server.getsockname()[1]))
    assert isinstance(rtt, float) and rtt > 0


def test_an_agent_stopped_while_probing_exits_quietly(make_dashboard: Any, make_agent: Any,
                                                      listener: Any) -> None:
    """SIGTERM in the middle of a round: before, every stop logged a traceback
    ("_GatheringFuture exception was never retrieved")."""
    port = listener.getsockname()[1]
    dash: Dashboard = make_dashboard([server_entry("alpha")], probes={
        "interval": 5, "targets": [{"name": "local", "host": "127.0.0.1", "port": port},
                                   {"name": "other", "host": "127.0.0.1", "port": port}]})
    prober = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                        "--secret", SECRET, "--interval", "2")
    prober.wait_for_log("probing 2 targets every 5 s")
    listener.settimeout(10)
    listener.accept()[0].close()  # a probe of the first round came, the next ones wait
    prober.signal(signal.SIGTERM)
    assert prober.process is not None and prober.process.wait(5) == 0
    assert prober.collected.wait(5)  # every line it wrote
    text = prober.log_text()
    assert "stopped" in text
    assert "Traceback" not in text and "never retrieved" not in text, text



# --- HTTP(S) and certificate checks ----------------------------------------------------

class AnyMilliseconds:
    """Equal to any time a check could take (its exact value is the network's)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and 0 < other < 10_000


ANY_MS = AnyMilliseconds()


class Site:
    """A local HTTP server, or HTTPS with `cert`: / answers 200, /missing 404, /moved 301
    (not followed), /huge a status line longer than the agent reads."""

    def __init__(self, cert: Any = None) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/huge":
                    self.wfile.write(b"HTTP/1.1 200 " + b"x" * 70_000 + b"\r\n\r\n")
                    return
                status = {"/": 200, "/moved": 301}.get(self.path, 404)
                self.send_response(status)
                if status == 301:
                    self.send_header("Location", "/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        scheme = "https" if cert is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sites() -> Any:
    """sites(days) -> an HTTPS Site whose certificate expires in `days` (negative: expired
    that long ago), from one test CA; sites() -> a plain HTTP Site; sites.ca."""
    trustme = pytest.importorskip("trustme")
    made: list[Site] = []

    def make(days: float | None = None) -> Site:
        cert = None
        if days is not None:
            now = datetime.datetime.now(datetime.timezone.utc)
            cert = make.ca.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=400),
                                      not_after=now + datetime.timedelta(days=days))
        made.append(Site(cert))
        return made[-1]

    make.ca = trustme.CA()  # type: ignore[attr-defined]
    yield make
    for site in made:
        site.close()


def trusting(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def check(url: str, context: ssl.SSLContext | None, expect: int = 200) -> dict[str, Any]:
    return run(agent.http_check(agent.ProbeTarget("Site", "", None, url, expect), context))


def test_http_checks_report_status_first_byte_and_what_went_wrong(sites: Any,
                                                                  black_hole: int) -> None:
    site = sites()
    good = check(site.url + "/", None)
    assert good["status"] == 200 and good["loss"] == 0 and 0 < good["rtt"] < 10_000
    assert "certDays" not in good and "error" not in good
    assert check(site.url + "/missing", None) == {
        "name": "Site", "status": 404, "loss": 1.0, "rtt": ANY_MS, "error": "expected 200"}
    assert check(site.url + "/moved", None, expect=301)["loss"] == 0  # not followed
    huge = check(site.url + "/huge", None)  # the status line only, and at most 64 KiB of it
    assert huge["status"] == 0 and huge["loss"] == 1 and huge["error"]
    closed = check(f"http://127.0.0.1:{free_port()}/", None)
    assert closed == {"name": "Site", "status": 0, "loss": 1.0, "error": "refused"}
    agent.HTTP_TIMEOUT, saved = 0.5, agent.HTTP_TIMEOUT
    try:
        assert check(f"http://127.0.0.1:{black_hole}/", None)["error"] == "timeout"
    finally:
        agent.HTTP_TIMEOUT = saved


def test_https_checks_say_how_long_the_certificate_has(sites: Any) -> None:
    fresh, soon, expired = sites(90), sites(3), sites(-2)
    context = trusting(sites.ca)
    result = check(fresh.url + "/", context)
    assert result["status"] == 200 and result["loss"] == 0 and 89.9 < result["certDays"] < 90.1
    assert 2.9 < check(soon.url + "/", context)["certDays"] < 3.1
    late = check(expired.url + "/", context)  # refused, yet how late it is is known
    assert late["status"] == 0 and late["loss"] == 1 and -2.1 < late["certDays"] < -1.9
    assert late["error"] == "certificate has expired"
    untrusted = check(fresh.url + "/", ssl.create_default_context())
    assert "self-signed" in untrusted["error"] or "issuer" in untrusted["error"]
    assert 89.9 < untrusted["certDays"] < 90.1


def test_the_probes_frame_with_http_targets_is_checked() -> None:
    frame = json.dumps({"type": "probes", "interval": 30, "targets": [
        {"name": "Site", "url": "https://example.com/health?x=1", "expect": 204}]})
    assert agent.parse_probes(frame) == (30.0, (agent.ProbeTarget(
        "Site", "", None, "https://example.com/health?x=1", 204),))
    for url in ("ftp://example.com/", "https://", "http://a b/", "http://a/\r\nX: y",
                "https://example.com/" + "x" * 2048):
        assert agent.parse_probes(json.dumps({"type": "probes", "interval": 30, "targets": [
            {"name": "Bad", "url": url}]})) is None, url
    assert agent.http_status(b"HTTP/1.0 503 Service Unavailable\r\n") == 503
    for line in (b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 OK\r\n"):
        with pytest.raises(ValueError):
            agent.http_status(line)
    with pytest.raises(ValueError):
        agent.der_not_after(b"\x30\x03\x02\x01")


def test_http_checks_from_servers_json_to_alerts_metrics_and_the_page(
        make_dashboard: Any, make_agent: Any, sites: Any, page_on: Any,
        tmp_path: Any) -> None:
    from test_alerts import Receiver
    hook = Receiver()
    plain, expired = sites(), sites(-2)
    sites.ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    try:
        dash: Dashboard = make_dashboard(
            [server_entry("alpha", name="Alpha")],
            probes={"interval": 5, "targets": [
                {"name": "Home", "url": plain.url + "/"},
                {"name": "Gone", "url": plain.url + "/missing"},
                {"name": "Shop", "url": expired.url + "/"}]},
            notifiers=[{"name": "ops", "type": "webhook", "url": hook.url + "/sss"}],
            alerts=[{"name": "gone", "metric": "http", "target": "Gone", "notify": ["ops"]},
                    {"name": "cert", "metric": "certificate", "below": 14,
                     "notify": ["ops"]}])
        make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                   "--secret", SECRET, "--interval", "1", "--min-interval", "1",
                   "--no-adaptive", env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")})
        texts = sorted(post[2]["text"] for post in hook.wait(2))
        assert texts == ["🔥 Alpha HTTP check of Gone fails: status 404",
                         "🔥 Alpha certificate expired 2 days ago (below 14 days)"]
        probes = wait_for_probes(dash, "alpha", {"Home", "Gone", "Shop"})
        home = next(p for p in probes if p["name"] == "Home")
        assert home["status"] == 200 and home["loss"] == 0
        metrics = dash.get("/metrics")[2].decode()
        assert 'sss_http_status{id="alpha",name="Alpha",target="Gone"} 404' in metrics
        assert 'sss_certificate_days_left{id="alpha",name="Alpha",target="Shop"} -' in metrics
        for width in (1280, 375):
            page = page_on(dash, viewport={"width": width, "height": 900})
            line = card(page, "alpha").locator(".probe")
            line.wait_for(timeout=10_000)
            assert line.inner_text() == "Shop certificate expired 2 d ago"
            assert "bad" in (line.get_attribute("class") or "")
            assert "Gone 404 · " in (line.get_attribute("title") or "")
            assert "(expected 200)" in (line.get_attribute("title") or "")
            assert page.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        hook.close()
