"""Tests for dashboard.py: pure functions directly, the rest against a real process."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import bench
import psutil
import pytest
from conftest import (
    SCREENSHOTS,
    SECRET,
    Dashboard,
    LoggedProcess,
    LogNotFound,
    apply_change,
    card,
    free_port,
    go_report,
    recv_json,
    recv_until,
    require_tool,
    server_entry,
    server_in,
    tls_dashboard,
)
from prometheus_client.parser import text_string_to_metric_families
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import connect
from websockets.uri import parse_uri

import agent as sss_agent
import dashboard
from sss import handlers, runtime, timings
from sss.config import PLACEHOLDER_SECRET, ConfigError, ServerConfig, load_config, parse_config
from sss.hub import (
    HISTORY_SERVERS_PER_UPDATE,
    MISSING,
    Closing,
    Hub,
    member_changes,
    record_changes,
    server_view,
)
from sss.limits import MAX_HEADERS, FailureLimiter
from sss.reports import MAX_FRAME_BYTES, VIEW_FIELDS, ReportError, validate_report
from sss.timings import (
    DEFAULT_REPORT_INTERVAL,
    MAX_REPORT_INTERVAL,
    offline_after,
    silent_close_after,
)
from sss.web import AgentIdentity, Files, Options, Site, check_agent, client_address, dashboard_url

# --- configuration -----------------------------------------------------------


def config_error(data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "servers.json")
    return str(caught.value)


def test_config_defaults_and_warnings() -> None:
    config, warnings = parse_config(
        {"servers": [{"id": "web-1", "secret": "short", "colour": "red"},
                     {"id": "db_2", "secret": PLACEHOLDER_SECRET, "countryCode": "NL"}],
         "prot": 1}, "servers.json")
    web, db = config.servers["web-1"], config.servers["db_2"]
    assert (web.name, web.group, web.country_code) == ("web-1", "Default", "")
    assert db.country_code == "nl"
    assert (config.host, config.port) == ("0.0.0.0", 8900)
    text = "\n".join(warnings)
    assert "'prot'" in text and "'colour'" in text  # typos are named
    assert "shorter than 16" in text and "placeholder secret" in text


@pytest.mark.parametrize(("data", "expected"), [
    ([], "top level must be an object"),
    ({"servers": [{"id": "ab", "secret": SECRET}]}, 'servers[0]: field "id"'),
    ({"servers": [{"id": "bad id!", "secret": SECRET}]}, 'field "id" must be 3-50'),
    ({"servers": [{"id": "web-1"}]}, "servers[0] (id 'web-1'): field \"secret\" is missing"),
    ({"servers": [{"id": "web-1", "secret": SECRET}, {"id": "web-1", "secret": SECRET}]},
     "servers[1] (id 'web-1'): field \"id\" repeats"),
    ({"servers": [{"id": "web-1", "secret": "x$(reboot)-0123456789"}]},
     "servers[0] (id 'web-1'): field \"secret\" contains a quote, backslash, $, backtick"),
    ({"servers": [{"id": "web-1", "secret": SECRET, "countryCode": "DEU"}]}, '"countryCode"'),
    ({"servers": [{"id": "web-1", "secret": SECRET, "name": 5}]}, 'field "name"'),
    ({"port": "80", "servers": []}, 'field "port"'),
    ({"servers": {}}, 'field "servers" must be a list'),
])
def test_config_errors_name_the_field(data: Any, expected: str) -> None:
    message = config_error(data)
    assert message.startswith("servers.json")
    assert expected in message


def test_every_config_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"port": "80", "servers": [
            {"id": "ab", "secret": SECRET},
            {"id": "web-1"},
            {"id": "web-2", "secret": SECRET, "countryCode": "DEU", "name": 5},
            {"id": "db-1", "secret": SECRET},
            {"id": "db-1", "secret": SECRET},
        ]}, "servers.json")
    problems = caught.value.problems
    assert [p.split(":")[1].strip() for p in problems] == [
        'field "port" must be an integer 0-65535, such as 8900',
        'servers[0]', "servers[1] (id 'web-1')", "servers[2] (id 'web-2')",
        "servers[2] (id 'web-2')", "servers[4] (id 'db-1')"]
    assert all(p.startswith("servers.json: ") for p in problems)


def test_broken_config_exits_2_naming_file_and_fix(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False)
    dash.write_config({"servers": [{"id": "web-1", "secret": ""},
                                   {"id": "web-2", "secret": SECRET, "countryCode": "x"}]})
    with pytest.raises(LogNotFound) as exited:
        dash.start()
    assert exited.value.exit_code == 2
    log = dash.log_text()
    assert str(dash.config_path) in log and 'field "secret"' in log and "token_urlsafe" in log
    assert "servers[1] (id 'web-2'): field \"countryCode\"" in log  # the second problem too
    assert "Traceback" not in log
    dash.write_config("{not json")
    with pytest.raises(LogNotFound) as exited:
        dash.start()
    assert exited.value.exit_code == 2 and "not valid JSON" in dash.log_text()


def test_shipped_config_is_valid_and_warns_about_its_placeholder() -> None:
    config, warnings = load_config(dashboard.DEFAULT_CONFIG)
    assert list(config.servers) == ["local"]
    assert any("placeholder secret" in w for w in warnings)


# --- validating reports ------------------------------------------------------


def test_go_agent_report_validates_and_unknown_fields_are_dropped() -> None:
    report = go_report(surprise={"x": 1})
    report["hostInfo"]["extra"] = "<b>"
    record = validate_report(json.dumps(report))
    assert "surprise" not in record and "extra" not in record["hostInfo"]
    assert record["diskInfo"]["partitions"][0]["mountPoint"] == "/"
    view = server_view(ServerConfig("web-1", "Web", "G", SECRET, "de"),
                                 record, 1764000000, True)
    assert "ip" not in view and SECRET not in json.dumps(view)
    assert (view["name"], view["loc"], view["online"]) == ("Web", "de", True)
    assert view["cpuInfo"]["percent"] == 12.5


def test_nulls_from_go_are_accepted() -> None:
    record = validate_report(json.dumps(go_report(diskInfo={
        "total": 1, "used": 0, "usedPercent": 0, "partitions": None}, swapMemoryInfo=None)))
    assert "partitions" not in record["diskInfo"] and "swapMemoryInfo" not in record


def with_field(path: str, value: Any) -> str:
    report = go_report()
    *parents, leaf = path.split(".")
    target = report
    for key in parents:
        target = target[key]
    target[leaf] = value
    return json.dumps(report)


BAD_REPORTS = [
    ("not json {", "not_json"),
    ("[1, 2]", "not_object"),
    ('"text"', "not_object"),
    ("[" * 30_000 + "]" * 30_000, "not_json"),  # deep nesting, under 64 KiB
    (with_field("cpuInfo.percent", "12"), "wrong_type"),
    (with_field("cpuInfo.percent", True), "wrong_type"),
    (with_field("cpuInfo", [1]), "wrong_type"),
    (with_field("cpuInfo.info", "x"), "wrong_type"),
    (with_field("cpuInfo.percent", 100.5), "out_of_range"),
    (with_field("diskInfo.usedPercent", -1), "negative"),
    (with_field("networkInfo.netInSpeed", -5), "negative"),
    (with_field("virtualMemoryInfo.total", 2**70), "out_of_range"),
    (with_field("hostInfo.platform", "x" * 257), "string_too_long"),
    (with_field("diskInfo.partitions", [go_report()["diskInfo"]["partitions"][0]] * 65),
     "too_many_items"),
    (with_field("cpuInfo.percent", 1e400), "not_finite"),
    (json.dumps(go_report()).replace('"percent": 12.5', '"percent": NaN'), "not_finite"),
    (json.dumps(go_report()).replace('"percent": 12.5', '"percent": Infinity'), "not_finite"),
    (b"\xff\xfe{", "not_json"),
    ('{"surprise": 1}', "no_fields"),
    ('{"name": "a", "group": "", "id": "a", "ip": "", "lastReportTime": 1}', "no_fields"),
]


@pytest.mark.parametrize(("frame", "reason"), BAD_REPORTS)
def test_bad_reports_are_refused_with_a_reason(frame: str | bytes, reason: str) -> None:
    with pytest.raises(ReportError) as caught:
        validate_report(frame)
    assert caught.value.reason == reason


class FakeConnection:
    """Stands in for a connection where the hub only compares and stores it."""

    def __init__(self, sid: str) -> None:
        self.agent = AgentIdentity(sid, "127.0.0.1", False)


def fleet(*sids: str) -> Hub:
    config, _ = parse_config({"servers": [server_entry(sid) for sid in sids]}, "servers.json")
    return Hub(config, broadcast=lambda viewers, message: None, wall=time.time,
               monotonic=time.monotonic)


def test_offline_rule_follows_each_servers_interval() -> None:
    assert offline_after(DEFAULT_REPORT_INTERVAL) == 9  # the Go agent says nothing: 2 s
    assert offline_after(5) == 15
    assert offline_after(70) == 145  # no cap: an agent at 70 s is not offline between reports
    hub = fleet("go-agent", "slow-agent")
    go, slow = FakeConnection("go-agent"), FakeConnection("slow-agent")
    hub.attach_agent("go-agent", go, now=0.0)
    hub.attach_agent("slow-agent", slow, now=0.0)
    hub.accept_report("go-agent", {"cpuInfo": {"percent": 1}}, now=0.0, wall=1e9)
    hub.accept_report("slow-agent", {"reportInterval": 70}, now=0.0, wall=1e9)
    assert hub.tick(now=9.0)[0] == []
    assert hub.tick(now=9.001)[0] == ["go-agent"]
    assert hub.tick(now=144.9)[0] == []
    assert hub.tick(now=145.1)[0] == ["slow-agent"]
    assert not hub.servers["slow-agent"].online and hub.dirty == {"go-agent", "slow-agent"}


def test_a_tick_looks_at_every_server_only_once_a_deadline_may_have_come() -> None:
    hub = fleet("slow-agent", "late-agent")
    slow, late = FakeConnection("slow-agent"), FakeConnection("late-agent")
    hub.attach_agent("slow-agent", slow, now=0.0)
    hub.accept_report("slow-agent", {"reportInterval": 70}, now=0.0, wall=1e9)
    assert hub.tick(now=1.0) == ([], []) and hub.next_deadline == 145.0  # offline at 145 s
    # Deadlines sooner than the one found: each must bring the next look forward.
    hub.accept_report("slow-agent", {"reportInterval": 1}, now=10.0, wall=1e9)
    assert hub.tick(now=17.0)[0] == [] and hub.next_deadline == 17.0  # 2 × 1 s + 5 s
    assert hub.tick(now=17.001)[0] == ["slow-agent"]
    hub.accept_report("late-agent", {"cpuInfo": {"percent": 1}}, now=20.0, wall=1e9)
    assert hub.tick(now=29.001)[0] == ["late-agent"]  # came online: offline after 9 s
    hub.detach_agent("slow-agent", slow)
    assert hub.tick(now=60.0) == ([], []) and hub.next_deadline == math.inf  # nothing to watch
    hub.attach_agent("late-agent", late, now=61.0)
    assert hub.tick(now=121.001)[1] == [Closing(late, 1008, "no report for 60 s")]


def test_full_collections_follow_closed_connections_not_the_heap() -> None:
    due = runtime.full_collection_due
    assert not due(closed=0, since=runtime.COLLECT_SECONDS - 1)  # a calm fleet: rarely
    assert due(closed=0, since=runtime.COLLECT_SECONDS)
    assert due(closed=runtime.COLLECT_AFTER_CLOSED, since=runtime.COLLECT_AT_MOST_EVERY)
    assert not due(closed=10**6, since=runtime.COLLECT_AT_MOST_EVERY / 2)  # a flood: bounded
    # A big heap: a collection that took a second waits until it is 5 % of the time.
    assert not due(closed=10**6, since=19, took=1.0) and due(closed=10**6, since=20, took=1.0)
    for servers, expected in ((3, 700), (10_000, 20_000)):
        script = (f"import gc; from sss import runtime; "
                  f"runtime.take_over_full_collections({servers}); print(gc.get_threshold())")
        shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               cwd=Path(dashboard.__file__).parent, check=True).stdout
        young, middle, full = ast.literal_eval(shown)
        if sys.version_info < (3, 14):  # young collections sized to the fleet
            assert (young, middle) == (expected, 10) and full > 10**6


def test_silent_connections_close_after_the_derived_limit() -> None:
    assert silent_close_after(2) == 60  # never sooner than the seed's minute
    assert silent_close_after(70) == 290
    hub = fleet("fast-1", "slow-1")
    fast, slow = FakeConnection("fast-1"), FakeConnection("slow-1")
    hub.attach_agent("fast-1", fast, now=0.0)
    hub.attach_agent("slow-1", slow, now=0.0)
    hub.accept_report("slow-1", {"reportInterval": 70}, now=0.0, wall=1e9)
    hub.heard_from("slow-1", now=70.0)
    assert hub.tick(now=60.0)[1] == []
    _, closes = hub.tick(now=60.5)
    assert [(c.connection, c.code, c.reason) for c in closes] == [
        (fast, 1008, "no report for 60 s")]
    assert hub.tick(now=61.0)[1] == []  # closed once, not every tick
    assert slow in [c.connection for c in hub.tick(now=70.0 + 290.5)[1]]


def test_failed_attempts_ban_one_id_at_one_address_for_five_minutes() -> None:
    limiter, nat = FailureLimiter(), "192.0.2.1"
    assert [limiter.fail(nat, "id:web", now=float(t)) for t in range(9)] == [None] * 9
    assert limiter.fail("192.0.2.2", "id:web", now=9.0) is None  # another address apart
    assert limiter.fail(nat, "id:web", now=59.0) == "id:web"  # the tenth within 60 s
    assert limiter.banned_for(nat, "id:web", now=60.0) == 299.0
    assert limiter.banned_for(nat, "id:db", now=60.0) == 0  # its neighbours behind the NAT
    assert limiter.banned_for("192.0.2.2", "id:web", now=60.0) == 0
    limiter.expire(now=359.0)
    assert limiter.banned_for(nat, "id:web", now=359.0) == 0
    slow = FailureLimiter()  # ten failures spread over more than a minute never ban
    assert not any(slow.fail("192.0.2.3", "id:web", now=t * 7.0) for t in range(30))


def test_guessing_across_ids_bans_the_address_and_ipv6_counts_by_64() -> None:
    limiter = FailureLimiter()
    verdicts = [limiter.fail(f"2001:db8:1:2::{n:x}", f"id:{n % 7}", now=n * 0.1)
                for n in range(50)]  # 50 addresses of one /64, 7 ids: under 10 per id
    assert verdicts[:49] == [None] * 49 and verdicts[49] == "address"
    assert limiter.banned_for("2001:db8:1:2::ffff", "id:other", now=6.0) > 290
    assert limiter.banned_for("2001:db8:1:3::1", "id:other", now=6.0) == 0  # the next /64


def test_a_spent_global_budget_lets_only_known_addresses_through() -> None:
    limiter = FailureLimiter()
    limiter.succeeded("198.51.100.1", now=0.0)
    for n in range(300):  # rotating addresses, each far under its own limits
        limiter.fail(f"203.0.113.{n % 250}", f"id:{n}", now=10 + n * 0.01)
    assert limiter.over_budget("203.0.113.251", now=14.0)  # a new address: refused
    assert not limiter.over_budget("198.51.100.1", now=14.0)  # authenticated before
    assert not limiter.over_budget("203.0.113.251", now=75.0)  # the budget recovered


def test_timing_contract_ties_the_agent_to_the_dashboard() -> None:
    """Whatever interval an agent may use, the dashboard waits for its next report."""
    assert sss_agent.MAX_INTERVAL == MAX_REPORT_INTERVAL
    with pytest.raises(sss_agent.UsageError, match="3600"):
        sss_agent.parse_settings(["--once", "--max-interval", "3601"], {})
    assert validate_report(json.dumps({"reportInterval": MAX_REPORT_INTERVAL}))
    with pytest.raises(ReportError):
        validate_report(json.dumps({"reportInterval": MAX_REPORT_INTERVAL + 1}))
    for interval in (sss_agent.Settings.min_interval, sss_agent.Settings.interval,
                     sss_agent.Settings.max_interval, 70, MAX_REPORT_INTERVAL):
        # The next report may come one adaptive step later, plus a ping round trip.
        next_report = interval * sss_agent.ADAPT_FACTOR + sss_agent.PING_TIMEOUT
        assert offline_after(interval) > interval * sss_agent.ADAPT_FACTOR
        assert silent_close_after(interval) > next_report
        assert silent_close_after(interval) >= offline_after(interval)
    # Every spread a dashboard tells its agents is one they take.
    for servers in (1, 2000, 10_000, 10**6):
        spread = timings.reconnect_spread(servers)
        assert sss_agent.parse_reconnect(handlers.reconnect_frame(servers)) == spread


# --- HTTP --------------------------------------------------------------------


def test_http_endpoints(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(history=True)
    status, headers, body = dash.get("/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == (dashboard.HERE / "index.html").read_bytes()
    assert "script-src 'self' 'sha256-" in headers["Content-Security-Policy"]
    assert dash.get("/index.html")[2] == body
    servers = dash.get_json("/api/servers")
    assert [s["id"] for s in servers] == ["alpha", "beta", "never"]
    assert servers[0] == {"id": "alpha", "name": "Alpha", "group": "Web", "loc": "de",
                          "online": False, "lastReportTime": 0, "offlineAfter": 9.0}
    assert dash.get_json("/healthz") == {"status": "ok", "servers": 3, "agents": 0, "viewers": 0,
                                         "history": "ok"}
    for path in ("/nope", "/ws-reportx", "/api/servers/alpha"):
        assert dash.get(path)[0] == 404


def test_api_servers_matches_what_a_viewer_gets(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as agent, dash.viewer() as viewer:
        recv_json(viewer)
        agent.send(json.dumps(go_report()))
        update = recv_json(viewer)
        assert server_in(update, "alpha") == server_in(
            {"servers": dash.get_json("/api/servers")}, "alpha")


def test_metrics_parse_as_prometheus_text(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as agent, dash.viewer() as viewer:
        recv_json(viewer)
        agent.send(json.dumps(go_report()))
        agent.send("garbage")
        recv_until(viewer, lambda m: server_in(m, "alpha"))
        status, headers, body = dash.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, s.labels.get("id", s.labels.get("reason"))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}
    assert samples[("sss_up", "alpha")] == 1 and samples[("sss_up", "never")] == 0
    assert samples[("sss_cpu_percent", "alpha")] == 12.5
    assert samples[("sss_memory_total_bytes", "alpha")] == 2 * 2**30
    assert samples[("sss_load15", "alpha")] == 0.3
    assert samples[("sss_network_transmit_bytes_per_second", "alpha")] == 2000
    assert samples[("sss_network_receive_bytes_total", "alpha")] == 10**9
    assert samples[("sss_uptime_seconds", "alpha")] == 86400
    assert abs(samples[("sss_last_report_timestamp_seconds", "alpha")] - time.time()) < 60
    assert samples[("sss_agents_connected", None)] == 1
    assert samples[("sss_viewers_connected", None)] == 1
    assert samples[("sss_reports_accepted_total", None)] == 1
    assert samples[("sss_reports_rejected_total", "not_json")] == 1
    assert ("sss_cpu_percent", "never") not in samples
    assert SECRET not in body.decode()


# --- agents: authentication and connections ----------------------------------


def handshake(dash: Dashboard, headers: Any, source: str = "127.0.0.1", port: int = 0,
              path: str = "/ws-report") -> tuple[int, Headers, bytes]:
    """Status, headers and body of a handshake from `source` (to the dashboard or a proxy)."""
    port = port or dash.port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        with connect(f"ws://127.0.0.1:{port}{path}", sock=sock, additional_headers=headers,
                     open_timeout=10) as ws:
            return 101, ws.response.headers, b""
    except InvalidStatus as error:
        response = error.response
        return response.status_code, response.headers, response.body or b""


def handshake_status(dash: Dashboard, headers: Any, source: str = "127.0.0.1",
                     port: int = 0, path: str = "/ws-report") -> int:
    return handshake(dash, headers, source, port, path)[0]


def test_agent_auth_happens_before_the_upgrade(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    assert handshake_status(dash, {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": SECRET}) == 101
    assert handshake_status(dash, {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": "guess-123"}) == 401
    assert handshake_status(dash, {"X-SERVER-ID": "ghost", "X-AUTH-SECRET": SECRET}) == 401
    assert handshake_status(dash, {"X-SERVER-ID": "alpha"}) == 401
    twice = [("X-SERVER-ID", "alpha"), ("X-SERVER-ID", "alpha"), ("X-AUTH-SECRET", SECRET)]
    assert handshake_status(dash, twice) == 400
    status, _, body = dash.get("/ws-report")  # plain HTTP, no credentials
    assert status == 401 and b"X-SERVER-ID" in body
    dash.wait_for_log(r"agent rejected: id='ghost' from 127\.0\.0\.1: id not in servers.json")
    dash.wait_for_log(r"agent rejected: id='alpha' from 127\.0\.0\.1: wrong secret")
    assert "guess-123" not in dash.log_text() and SECRET not in dash.log_text()


def test_agents_are_told_how_long_to_spread_their_reconnects(make_dashboard: Any) -> None:
    """PROTOCOL.md, "Reconnect spread": by the size of the fleet, first thing on every
    agent's connection but a checking one (its first frame answers its report)."""
    fleet = [server_entry(f"s{i:04d}") for i in range(4999)]
    dash: Dashboard = make_dashboard([*fleet, server_entry("alpha")])
    headers = {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": SECRET}
    with connect(dash.url("/ws-report", "ws"), additional_headers=headers) as agent:
        assert json.loads(agent.recv(timeout=5)) == {"type": "reconnect", "spread": 7.7}
    with connect(dash.url("/ws-report", "ws"),
                 additional_headers={**headers, "X-SSS-Check": "1"}) as checking:
        checking.send(json.dumps(go_report()))
        assert json.loads(checking.recv(timeout=5))["type"] == "check"


def test_a_newer_connection_replaces_the_older(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as first:
        first.send(json.dumps(go_report()))
        assert recv_json(first) == {"type": "accepted"}
        with dash.agent("alpha") as second:
            with pytest.raises(ConnectionClosed):
                first.recv(timeout=5)
            assert first.close_code == 1008 and "replaced" in (first.close_reason or "")
            second.send(json.dumps(go_report()))
            dash.wait_for_log("agent replaced: id=alpha")
            assert recv_json(second) == {"type": "accepted"}
            assert dash.get_json("/healthz")["agents"] == 1
            assert dash.get_json("/api/servers")[0]["online"] is True


# --- viewers -----------------------------------------------------------------


def cpu_of(message: dict[str, Any], sid: str) -> float | None:
    server = server_in(message, sid) or {}
    return server.get("cpuInfo", {}).get("percent")


def test_snapshot_then_updates_within_a_second(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.viewer() as viewer, dash.agent("alpha") as agent:
        snapshot = recv_json(viewer)
        assert snapshot["type"] == "snapshot" and abs(snapshot["time"] - time.time()) < 60
        assert [s["id"] for s in snapshot["servers"]] == ["alpha", "beta", "never"]
        never = server_in(snapshot, "never")
        assert never == {"id": "never", "name": "never", "group": "Default", "loc": "",
                         "online": False, "lastReportTime": 0, "offlineAfter": 9.0}
        for load in (10.0, 20.0, 30.0):
            sent = time.monotonic()
            agent.send(json.dumps(go_report(cpuInfo={"percent": load, "info": []})))
            update = recv_until(viewer, lambda m, want=load: cpu_of(m, "alpha") == want)
            assert time.monotonic() - sent < 1.0
            assert update["type"] == "update" and [s["id"] for s in update["servers"]] == ["alpha"]
            alpha = server_in(update, "alpha")
            assert alpha["online"] is True and abs(alpha["lastReportTime"] - time.time()) < 5
            assert "ip" not in alpha and alpha["name"] == "Alpha" and alpha["loc"] == "de"


def test_updates_carry_what_changed_and_add_up_to_the_servers(make_dashboard: Any) -> None:
    """An update holds what changed since the last one, member by member; applied to the
    snapshot as the page applies them, the updates give exactly what /api/servers says."""
    dash: Dashboard = make_dashboard()
    with dash.viewer() as viewer:
        recv_json(viewer)
        with dash.agent("alpha") as agent:
            first = go_report()
            agent.send(json.dumps(first))
            recv_until(viewer, lambda m: cpu_of(m, "alpha") == 12.5)
            second = go_report(cpuInfo={**first["cpuInfo"], "percent": 80.0})
            del second["swapMemoryInfo"]
            second["hostInfo"] = {**first["hostInfo"], "uptime": 86405,
                                  "avgStat": {**first["hostInfo"]["avgStat"], "load1": 2.5}}
            root = first["diskInfo"]["partitions"][0]
            second["diskInfo"] = {**first["diskInfo"], "partitions": [
                {**root, "used": root["used"] + 4096}, *first["diskInfo"]["partitions"][1:]]}
            agent.send(json.dumps(second))
            update = recv_until(viewer, lambda m: cpu_of(m, "alpha") == 80.0)
            change = server_in({"servers": update["changes"]}, "alpha")
            assert change["unset"] == ["swapMemoryInfo"]
            assert set(change["set"]) - {"lastReportTime"} == {
                "cpuInfo.percent", "hostInfo.uptime", "hostInfo.avgStat.load1",
                "diskInfo.partitions.0.used"}  # down into objects and lists, by member
            assert change["set"]["hostInfo.uptime"] == 86405
            # A field whose members went away is replaced whole.
            third = dict(second, cpuInfo={"percent": 81.0})
            agent.send(json.dumps(third))
            update = recv_until(viewer, lambda m: cpu_of(m, "alpha") == 81.0)
            assert server_in({"servers": update["changes"]}, "alpha")["set"]["cpuInfo"] == {
                "percent": 81.0}
        # The agent left: offline goes out in the next update.
        recv_until(viewer, lambda m: (server_in(m, "alpha") or {}).get("online") is False)
        assert viewer.servers_seen == {s["id"]: s for s in dash.get_json("/api/servers")}


def test_nobody_watching_costs_no_updates_and_a_late_viewer_still_adds_up(
        make_dashboard: Any) -> None:
    """With no viewer no update is worked out; a viewer joining later gets a snapshot,
    then updates by member from it."""
    hub = fleet("alpha")
    for cpu in (10.0, 20.0):
        hub.accept_report("alpha", go_report(cpuInfo={"percent": cpu}), now=0.0, wall=1e9)
    assert hub.servers["alpha"].changes == {} and hub.dirty == {"alpha"}

    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report()))
        deadline = time.monotonic() + 5
        while dash.metric("sss_reports_accepted_total") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        agent.send(json.dumps(go_report(cpuInfo={"percent": 40.0, "info": []})))
        with dash.viewer() as viewer:
            assert cpu_of(recv_json(viewer), "alpha") in (12.5, 40.0)
            agent.send(json.dumps(go_report(cpuInfo={"percent": 70.0, "info": []})))
            update = recv_until(viewer, lambda m: cpu_of(m, "alpha") == 70.0)
            change = server_in({"servers": update["changes"]}, "alpha")
            assert "cpuInfo.percent" in change["set"] and "hostInfo" not in change["set"]
            assert viewer.servers_seen == {s["id"]: s for s in dash.get_json("/api/servers")}


class Watcher:
    """A viewer as the hub sees one: something it sends to (by its broadcast)."""


def varied_records() -> list[dict[str, Any]]:
    """Records that differ from each other in every way an update must carry: members,
    a list's length, a field gone, an object that lost members."""
    variants = [json.loads(frame) for frame in bench.fake_reports("alpha")]
    two_disks = copy.deepcopy(variants[1])
    two_disks["diskInfo"]["partitions"].append(dict(two_disks["diskInfo"]["partitions"][0],
                                                    mountPoint="/srv"))
    no_swap = {key: value for key, value in variants[2].items() if key != "swapMemoryInfo"}
    bare_cpu = dict(variants[3], cpuInfo={"percent": 50.0})
    return [validate_report(json.dumps(report))
            for report in [*variants, two_disks, no_swap, bare_cpu]]


def test_generated_comparisons_find_what_the_generic_one_does() -> None:
    """Records are compared by generated code (hub.RECORD_CHANGES), for speed; it must find
    the very changes member_changes() finds, no more, no fewer, whatever was added to or
    dropped from a record, an object or a list."""
    records = varied_records()
    for before in records:
        for after in records:
            generic: dict[str, Any] = {}
            for field in VIEW_FIELDS:
                value, old = after.get(field, MISSING), before.get(field, MISSING)
                if value is not MISSING and old != value:
                    member_changes(field, old, value, generic)
            changes: dict[str, Any] = {}
            unset = record_changes(before, after, changes)
            assert changes == generic
            assert unset == [field for field in VIEW_FIELDS if field in before
                             and field not in after]


def test_reports_within_one_update_add_up_to_the_last() -> None:
    """What changed is worked out as each report comes in, and the report before is let
    go: one, two or three reports of a server within an update, whatever changed in them,
    bring viewers exactly to the last."""
    records = varied_records()
    sent: list[dict[str, Any]] = []
    hub = fleet("alpha", "beta")
    hub.broadcast = lambda viewers, message: sent.append(json.loads(message))
    hub.accept_report("alpha", records[0], now=0.0, wall=1e9)
    hub.add_viewer(Watcher(), wall=1e9)
    seen = {server["id"]: server for server in sent.pop()["servers"]}
    rng = random.Random(5)
    for step in range(1, 60):
        for _ in range(rng.choice((1, 1, 2, 3))):
            hub.accept_report(rng.choice(["alpha", "beta"]), rng.choice(records),
                              now=step, wall=1e9 + step)
        hub.flush()
        for update in sent:
            for change in update["servers"]:
                seen[change["id"]] = apply_change(seen, change)
        sent.clear()
        assert seen == {server["id"]: server for server in json.loads(hub.servers_json())}
    assert all(not state.changes for state in hub.servers.values())


def test_a_history_step_goes_out_over_several_updates() -> None:
    """A step that changes every server's availability at once goes out a few hundred
    servers an update (a server that reports meanwhile takes its own along), so no one
    update holds the whole fleet; a viewer joining meanwhile has it all in its snapshot."""
    sids = [f"host-{i:04d}" for i in range(1200)]
    sent: list[dict[str, Any]] = []
    hub = fleet(*sids)
    hub.broadcast = lambda viewers, message: sent.append(json.loads(message))
    hub.add_viewer(Watcher(), wall=1e9)
    seen = {server["id"]: server for server in sent.pop()["servers"]}
    hub.take_history({sid: {"availability": '{"24h":100.0,"30d":99.5}'} for sid in sids})
    snapshot = json.loads(hub.snapshot(wall=1e9 + 1))["servers"]
    assert all(server["availability"]["30d"] == 99.5 for server in snapshot)
    hub.accept_report(sids[-1], validate_report(json.dumps(go_report())), now=1.0, wall=1e9 + 1)
    sizes = []
    while hub.dirty or hub.later:
        hub.flush()
        update = sent.pop()
        sizes.append(len(update["servers"]))
        for change in update["servers"]:
            seen[change["id"]] = apply_change(seen, change)
    assert sizes == [HISTORY_SERVERS_PER_UPDATE + 1, HISTORY_SERVERS_PER_UPDATE, 199]
    assert seen == {server["id"]: server for server in json.loads(hub.servers_json())}
    assert f"most {HISTORY_SERVERS_PER_UPDATE} servers an update" in PROTOCOL


def test_updates_are_coalesced(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.viewer() as viewer, dash.agent("alpha") as a, dash.agent("beta") as b:
        recv_json(viewer)
        started = time.monotonic()
        for i in range(40):
            for agent in (a, b):
                agent.send(json.dumps(go_report(cpuInfo={"percent": i, "info": []})))
        messages = []
        final = {}
        while set(final.values()) != {39} and time.monotonic() - started < 10:
            messages.append(recv_json(viewer))
            final.update((s["id"], s["cpuInfo"]["percent"]) for s in messages[-1]["servers"])
        elapsed = time.monotonic() - started
        assert final == {"alpha": 39, "beta": 39}
        # 80 reports arrived; a viewer got a handful of messages, ~4 a second at most.
        assert len(messages) <= 4 * elapsed + 2, (len(messages), elapsed)


def test_offline_after_silence_and_back(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.viewer() as viewer, dash.agent("alpha") as agent:
        recv_json(viewer)
        agent.send(json.dumps(go_report(reportInterval=0.5)))  # offline after 2*0.5+5 = 6 s
        recv_until(viewer, lambda m: (server_in(m, "alpha") or {}).get("online") is True)
        silent_since = time.monotonic()
        recv_until(viewer, lambda m: (server_in(m, "alpha") or {}).get("online") is False,
                   timeout=12)
        assert time.monotonic() - silent_since > 5
        dash.wait_for_log("server offline: id=alpha")
        agent.send(json.dumps(go_report(reportInterval=0.5)))
        recv_until(viewer, lambda m: (server_in(m, "alpha") or {}).get("online") is True)
    with dash.viewer() as viewer:  # the agent left: offline at once
        assert server_in(recv_json(viewer), "alpha")["online"] is False


def test_stuck_viewer_is_cut_and_others_keep_up(make_dashboard: Any) -> None:
    sids = [f"srv-{i:02d}" for i in range(20)]
    dash: Dashboard = make_dashboard([server_entry(sid) for sid in sids])
    # A browser that completes the handshake and then never reads a byte.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", dash.port))
    stuck.sendall(b"GET /ws-frontend HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
    dash.wait_for_log("viewer connected")
    partition = {"mountPoint": "/" + "m" * 250, "fstype": "ext4", "total": 10, "free": 5,
                 "used": 5, "usedPercent": 50.0}
    # ~25 KiB per report, all of it changing, so each coalesced update carries ~500 KiB.
    frames = [json.dumps(go_report(cpuInfo={"percent": p, "info": []},
                                   diskInfo={"total": 10, "used": 5, "usedPercent": 50.0,
                                             "partitions": [dict(partition, used=p)] * 64}))
              for p in range(10)]
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        agents = [stack.enter_context(dash.agent(sid)) for sid in sids]

        def load() -> None:
            for round_number in range(600):  # bounded: at most ~150 s
                if stop.is_set():
                    return
                for agent in agents:
                    agent.send(frames[round_number % 10])
                time.sleep(0.25)

        sender = threading.Thread(target=load, daemon=True)
        healthy = stack.enter_context(dash.viewer(max_size=None))
        recv_json(healthy)
        sender.start()
        try:
            dash.wait_for_log("viewer disconnected: not reading", timeout=90)
            assert recv_json(healthy)["type"] == "update"  # it kept receiving meanwhile
        finally:
            stop.set()
            sender.join(10)
        with pytest.raises(TimeoutError):
            while True:  # drain what the load queued
                healthy.recv(timeout=1)
        sent = time.monotonic()
        agents[0].send(json.dumps(go_report(cpuInfo={"percent": 99.0, "info": []})))
        update = recv_json(healthy)
        assert time.monotonic() - sent < 1.0
        assert server_in(update, sids[0])["cpuInfo"]["percent"] == 99.0
        assert dash.get_json("/healthz")["viewers"] == 1
    stuck.close()


def test_viewer_compression_is_opt_in_and_never_for_agents(make_dashboard: Any) -> None:
    def extensions(ws: Any) -> str:
        return ws.response.headers.get("Sec-WebSocket-Extensions", "")

    plain: Dashboard = make_dashboard()
    with plain.viewer() as viewer, plain.agent("alpha") as agent:
        assert extensions(viewer) == "" and extensions(agent) == ""
    compressed: Dashboard = make_dashboard(start=False).start("--viewer-compression")
    with compressed.viewer() as viewer, compressed.viewer(compression=None) as declined, \
            compressed.agent("alpha") as agent:
        assert "permessage-deflate" in extensions(viewer)
        assert extensions(declined) == "" and extensions(agent) == ""
        agent.send(json.dumps(go_report()))
        for both in (viewer, declined):  # one update, compressed for one of them only
            recv_until(both, lambda m: cpu_of(m, "alpha") == 12.5)
            assert both.servers_seen == {  # type: ignore[attr-defined]
                s["id"]: s for s in compressed.get_json("/api/servers")}


# --- bad input over the wire ---------------------------------------------------


def test_bad_reports_are_dropped_counted_and_logged(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as agent, dash.viewer() as viewer:
        recv_json(viewer)
        for frame, _ in BAD_REPORTS[4:8]:
            agent.send(frame)
        agent.send(json.dumps(go_report(cpuInfo={"percent": 77, "info": []})))
        update = recv_until(viewer, lambda m: server_in(m, "alpha"))
        assert server_in(update, "alpha")["cpuInfo"]["percent"] == 77  # good ones still count
    dash.wait_for_log(r"report dropped: id=alpha: wrong_type")
    metrics = dash.get("/metrics")[2].decode()
    assert 'sss_reports_rejected_total{reason="wrong_type"} 4' in metrics
    # One line per agent and reason a minute: the other three are held back.
    assert dash.log_text().count("report dropped: id=alpha: wrong_type") == 1
    assert "Traceback" not in dash.log_text()


def test_five_bad_reports_within_a_minute_close_with_1007(make_dashboard: Any) -> None:
    """Good reports in between do not reset the count (4 bad, 1 good, repeated)."""
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as agent:
        for frame, _ in BAD_REPORTS[8:12]:
            agent.send(frame)
        agent.send(json.dumps(go_report()))
        agent.send(BAD_REPORTS[12][0])
        assert recv_json(agent) == {"type": "accepted"}  # the good one
        with pytest.raises(ConnectionClosed):
            agent.recv(timeout=5)
        assert agent.close_code == 1007
    dash.wait_for_log("agent closed: id=alpha: 5 invalid reports within 60 s")
    with dash.agent("beta") as other:  # the dashboard is fine
        other.send(json.dumps(go_report()))
    assert dash.get_json("/healthz")["status"] == "ok"


def test_reports_count_alike_in_one_frame_in_fragments_or_binary(make_dashboard: Any) -> None:
    """Whole frames are taken as they are parsed, anything else the ordinary way: both
    count, in the order sent, and a binary frame that is not UTF-8 is refused as not JSON.
    (A text frame that is not UTF-8 closes the connection on websockets' own path, 1007.)"""
    dash: Dashboard = make_dashboard()

    def report(percent: int) -> str:
        return json.dumps(go_report(cpuInfo={"percent": percent, "info": []}))
    with dash.agent("alpha") as agent, dash.viewer() as viewer:
        recv_json(viewer)
        agent.send(report(10))
        agent.send(b"\xff\xfe{")
        fragmented = report(20)
        agent.send([fragmented[:40], fragmented[40:]])
        agent.send(report(30))
        agent.send(report(40).encode())
        seen: list[int] = []

        def percent(message: dict[str, Any]) -> int | None:
            server = server_in(message, "alpha")
            if server is None or "cpuInfo" not in server:
                return None
            seen.append(server["cpuInfo"]["percent"])
            return seen[-1]
        recv_until(viewer, lambda m: percent(m) == 40)
    assert seen == sorted(seen)
    metrics = dash.get("/metrics")[2].decode()
    assert "sss_reports_accepted_total 4" in metrics
    assert 'sss_reports_rejected_total{reason="not_json"} 1' in metrics
    assert "Traceback" not in dash.log_text()


def test_an_agents_frames_count_however_tcp_cuts_them(make_dashboard: Any) -> None:
    """The dashboard splits an agent's frames itself (Connection.split_frames): reports
    count whether several arrive in one segment or one arrives byte by byte, with a 7-bit
    or a 16-bit length; a ping is answered with its payload; a close goes on to websockets,
    which answers it; an unmasked frame is refused as websockets refuses it."""
    dash: Dashboard = make_dashboard()
    events: list[Any] = []  # what came in one segment comes out one at a time

    def handshake(sock: socket.socket) -> ClientProtocol:
        events.clear()
        client = ClientProtocol(parse_uri(dash.url("/ws-report", "ws")))
        request = client.connect()
        request.headers["X-SERVER-ID"], request.headers["X-AUTH-SECRET"] = "alpha", SECRET
        client.send_request(request)
        sock.sendall(b"".join(client.data_to_send()))
        assert isinstance(next_event(sock, client), Response)
        assert json.loads(next_event(sock, client).data)["type"] == "reconnect"
        return client

    def next_event(sock: socket.socket, client: ClientProtocol) -> Any:
        while not events:
            client.receive_data(sock.recv(65536))
            events.extend(client.events_received())
        return events.pop(0)

    def close_code(event: Any) -> int:
        assert event.opcode == Opcode.CLOSE
        return Close.parse(event.data).code

    def frame(opcode: Opcode, data: bytes) -> bytes:
        return Frame(opcode, data).serialize(mask=True, extensions=[])
    reports = [frame(Opcode.TEXT, json.dumps(go_report(cpuInfo={"percent": n, "info": []}))
                     .encode()) for n in range(5)]
    reports.append(frame(Opcode.TEXT, b'{"cpuInfo": {"percent": 5}}'))  # a 7-bit length
    assert len(reports[0]) > 130 and len(reports[-1]) < 125
    with socket.create_connection(("127.0.0.1", dash.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = handshake(sock)
        sock.sendall(reports[0] + reports[1] + reports[2][:3])  # two and a header's start
        sock.sendall(reports[2][3:9])  # the rest of the header, the mask's start
        sock.sendall(reports[2][9:])
        for byte in reports[3]:
            sock.send(bytes([byte]))
        sock.sendall(frame(Opcode.PING, b"still there?") + reports[4] + reports[5])
        accepted = next_event(sock, client)  # after the first report (PROTOCOL.md)
        assert json.loads(accepted.data) == {"type": "accepted"}
        pong = next_event(sock, client)
        assert (pong.opcode, pong.data) == (Opcode.PONG, b"still there?")
        deadline = time.monotonic() + 10
        while dash.metric("sss_reports_accepted_total") < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dash.metric("sss_reports_accepted_total") == 6
        client.send_close(CloseCode.NORMAL_CLOSURE)
        sock.sendall(b"".join(client.data_to_send()))
        assert close_code(next_event(sock, client)) == CloseCode.NORMAL_CLOSURE
    with socket.create_connection(("127.0.0.1", dash.port), timeout=5) as sock:
        client = handshake(sock)
        sock.sendall(Frame(Opcode.TEXT, b"{}").serialize(mask=False, extensions=[]))
        assert close_code(next_event(sock, client)) == CloseCode.PROTOCOL_ERROR
    assert dash.metric("sss_reports_accepted_total") == 6
    assert "Traceback" not in dash.log_text()


def test_oversized_frame_closes_with_1009(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as agent:
        agent.send("x" * (MAX_FRAME_BYTES + 1))
        with pytest.raises(ConnectionClosed):
            agent.recv(timeout=5)
        assert agent.close_code == 1009
    dash.wait_for_log("report dropped: id=alpha: too_large")
    assert 'reason="too_large"} 1' in dash.get("/metrics")[2].decode()


def test_a_misconfigured_agent_locks_out_only_itself(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    wrong = {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": "wrong"}
    right = {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": SECRET}
    statuses = [handshake_status(dash, wrong, "127.0.0.2") for _ in range(10)]
    assert statuses == [401] * 10
    assert handshake_status(dash, right, "127.0.0.2") == 429  # even with the right secret
    assert handshake_status(dash, right, "127.0.0.1") == 101  # from elsewhere: unaffected
    beta = {"X-SERVER-ID": "beta", "X-AUTH-SECRET": SECRET}
    assert handshake_status(dash, beta, "127.0.0.2") == 101  # its neighbour behind the NAT
    status, headers, body = handshake(dash, right, "127.0.0.2")
    assert status == 429 and 295 <= int(headers["Retry-After"]) <= 301
    assert re.search(rb"refused for (29[5-9]|30[01]) more s", body), body  # says how long
    log = dash.log_text()
    assert log.count("id:alpha from 127.0.0.2 refused for 300 s") == 1
    assert log.count("agent rejected: id='alpha' from 127.0.0.2: wrong secret") == 1  # a minute
    # The two refusals (429) are logged too, once a minute per address.
    assert log.count("refused 127.0.0.2 (id:alpha): too many failed attempts") == 1


def test_agents_on_the_viewer_path_are_told_where_to_go(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    status, _, body = handshake(dash, {"X-Server-Id": "alpha", "X-Auth-Secret": SECRET},
                                path="/ws-frontend")
    assert status == 400 and b"agents report on /ws-report" in body
    assert handshake_status(dash, {}, path="/ws-frontend") == 101  # browsers are unaffected


def test_placeholder_secret_is_accepted_from_loopback_only(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard([server_entry("demo", secret=PLACEHOLDER_SECRET)],
                                     start=False).start("--trusted-proxy", "127.0.0.1")
    demo = {"X-SERVER-ID": "demo", "X-AUTH-SECRET": PLACEHOLDER_SECRET}
    assert handshake_status(dash, demo) == 101
    status, _, body = handshake(dash, {**demo, "X-Forwarded-For": "198.51.100.9"})
    assert status == 401 and b"placeholder secret" in body and b"servers.json" in body
    dash.wait_for_log(r"agent rejected: id='demo' from 198\.51\.100\.9: placeholder secret")
    dash.wait_for_log(r"uses the placeholder secret, so its agent is accepted from this "
                      r"machine \(loopback\) only")


def test_check_connections_get_a_verdict_per_report(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha", headers={"X-SSS-Check": "1"}) as agent:
        agent.send(json.dumps(go_report()))
        assert recv_json(agent) == {"type": "check", "accepted": True}
        agent.send(with_field("cpuInfo.percent", "high"))
        verdict = recv_json(agent)
        assert verdict["accepted"] is False and verdict["reason"].startswith("wrong_type")
    with dash.agent("beta") as plain:  # without the header: told once, then silent
        plain.send(json.dumps(go_report()))
        assert recv_json(plain) == {"type": "accepted"}
        plain.send(json.dumps(go_report()))
        with pytest.raises(TimeoutError):
            plain.recv(timeout=1)


def test_no_secret_or_ip_reaches_a_browser(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.viewer() as viewer, dash.agent("alpha") as agent:
        payloads = [viewer.recv(timeout=5)]
        agent.send(json.dumps(go_report(ip="198.51.100.23", loc="fr")))
        payloads.append(viewer.recv(timeout=5))
        payloads += [dash.get(path)[2].decode() for path in ("/api/servers", "/metrics",
                                                               "/healthz", "/")]
    for payload in payloads:
        assert SECRET not in payload and "198.51.100.23" not in payload
        assert "127.0.0.1" not in payload
    # countryCode from servers.json wins over the agent's loc: the update leaves it alone
    assert "loc" not in server_in(json.loads(payloads[1]), "alpha")["set"]
    assert server_in({"servers": json.loads(payloads[2])}, "alpha")["loc"] == "de"


def file_limit(soft: int, hard: int) -> Any:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_file_limit_is_raised_and_running_out_is_one_line(make_dashboard: Any) -> None:
    raised: Dashboard = make_dashboard(start=False).start(preexec_fn=file_limit(64, 4096))
    raised.wait_for_log("open-file limit raised from 64 to 4096")
    capped: Dashboard = make_dashboard(start=False).start("--no-history",
                                                         preexec_fn=file_limit(64, 64))
    capped.wait_for_log(r"open-file limit 64 is below 3 servers plus 128 for viewers")
    with capped.agent("alpha") as agent, capped.viewer() as viewer:
        recv_json(viewer)
        idle = []
        try:
            for _ in range(80):  # bounded: more than the limit, then stop
                idle.append(socket.create_connection(("127.0.0.1", capped.port), timeout=5))
            capped.wait_for_log("open-file limit reached", timeout=10)
            for percent in (11.0, 22.0):  # the open connections are served
                agent.send(json.dumps(go_report(cpuInfo={"percent": percent, "info": []})))
                recv_until(viewer, lambda m, p=percent: cpu_of(m, "alpha") == p)
            time.sleep(2.5)  # asyncio retries the accept every second: still one line
            assert capped.count_log("open-file limit reached") == 1
        finally:
            for sock in idle:
                sock.close()
    assert "Traceback" not in capped.log_text()


# --- signals -----------------------------------------------------------------


def test_sighup_reloads_servers(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.viewer() as viewer, dash.agent("alpha") as alpha, dash.agent("beta") as beta, \
            dash.agent("never") as never:
        recv_json(viewer)
        dash.write_config({"servers": [
            server_entry("alpha", name="Alpha renamed", group="Web"),
            {"id": "beta", "secret": "a-brand-new-secret-value"},
            server_entry("gamma", name="Gamma"),
        ]})
        dash.signal(signal.SIGHUP)
        snapshot = recv_until(viewer, lambda m: m["type"] == "snapshot")
        assert [s["id"] for s in snapshot["servers"]] == ["alpha", "beta", "gamma"]
        assert server_in(snapshot, "alpha")["name"] == "Alpha renamed"
        assert server_in(snapshot, "gamma")["online"] is False
        for removed_or_rekeyed in (beta, never):
            with pytest.raises(ConnectionClosed):
                removed_or_rekeyed.recv(timeout=5)
            assert removed_or_rekeyed.close_code == 1008
        alpha.send(json.dumps(go_report()))  # untouched agent stays connected
        update = recv_until(viewer, lambda m: server_in(m, "alpha"))
        assert server_in(update, "alpha")["online"] is True
        dash.wait_for_log(r"config reloaded: 3 servers \(1 added, 1 removed\)")

        mark = len(dash.lines)
        dash.write_config("{broken")
        dash.signal(signal.SIGHUP)
        dash.wait_for_log("config reload failed, keeping the previous config", after=mark)
        alpha.send(json.dumps(go_report(cpuInfo={"percent": 42.0, "info": []})))
        recv_until(viewer, lambda m: (server_in(m, "alpha") or {}).get("cpuInfo") ==
                   {"percent": 42.0, "info": []})
        assert handshake_status(dash, {"X-SERVER-ID": "gamma", "X-AUTH-SECRET": SECRET}) == 101
        assert dash.process is not None and dash.process.poll() is None


def test_sigterm_closes_everything_with_1001_and_exits_0(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.viewer() as viewer, dash.agent("alpha") as agent:
        recv_json(viewer)
        dash.signal(signal.SIGTERM)
        for ws in (viewer, agent):
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=5)
            assert ws.close_code == 1001
        assert dash.process is not None and dash.process.wait(5) == 0
    assert "Traceback" not in dash.log_text()


# --- the page, in a real browser -------------------------------------------------

XSS_NAME = "<img src=x onerror=alert(1)>"


def test_page_shows_a_live_agent(make_dashboard: Any, make_agent: Any, page_on: Any) -> None:
    dash: Dashboard = make_dashboard()
    make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha", "--secret", SECRET,
               "--interval", "1", "--min-interval", "1", "--no-adaptive")
    page = page_on(dash)
    alpha = card(page, "alpha")
    alpha.and_(page.locator(".online")).wait_for(timeout=15_000)
    assert alpha.locator("h3").inner_text() == "Alpha"
    assert re.fullmatch(r"\d+\.\d %", alpha.locator(".bar").nth(0).locator(".val").inner_text())
    ram_title = alpha.locator(".bar").nth(1).locator(".val").get_attribute("title")
    assert f"of {psutil.virtual_memory().total:,} bytes" in ram_title
    assert page.locator("#state").inner_text() == "live"
    assert page.locator("#online").inner_text() == "1"
    assert page.locator("#total").inner_text() == "3"
    assert alpha.locator(".bar").nth(0).locator(".track").get_attribute("aria-label") == "CPU"
    # Updates keep coming: "updated N s ago" never grows past a few seconds.
    for _ in range(6):
        page.wait_for_timeout(1000)
        seconds = int(re.search(r"updated (\d+) s ago", alpha.locator(".ago").inner_text())[1])
        assert seconds <= 3
    alpha.locator("button.more").click()
    details = alpha.locator(".details")
    assert "Processes" in details.inner_text() and "/" in details.locator("td").first.inner_text()
    # The agent's version, unmarked: it runs the agent.py this dashboard serves.
    assert sss_agent.AGENT_VERSION in details.inner_text()
    assert details.locator("dd.outdated").count() == 0
    never = card(page, "never")
    assert "waiting for first report" in never.inner_text()
    origin = dash.url("/").rstrip("/")
    ws_origin = dash.url("/", "ws").rstrip("/")
    assert page.requests and all(u.startswith((origin, ws_origin)) for u in page.requests), \
        page.requests


def test_page_marks_a_stopped_agent_offline_and_reconnects(make_dashboard: Any,
                                                            make_agent: Any,
                                                            page_on: Any) -> None:
    dash: Dashboard = make_dashboard()
    reporter = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha", "--secret",
                          SECRET, "--interval", "1", "--min-interval", "1", "--no-adaptive")
    page = page_on(dash)
    alpha = card(page, "alpha")
    alpha.and_(page.locator(".online")).wait_for(timeout=15_000)
    assert reporter.stop() == 0
    alpha.and_(page.locator(".offline")).wait_for(timeout=10_000)
    page.wait_for_timeout(1100)
    assert "offline, last seen" in alpha.locator(".ago").inner_text()
    assert page.locator("#online").inner_text() == "0"
    # Dashboard restarts: the page notices, then reconnects by itself.
    assert dash.stop() == 0
    page.locator("#state", has_text="reconnecting").wait_for(timeout=5_000)
    dash.start()
    page.locator("#state", has_text="live").wait_for(timeout=10_000)
    assert card(page, "alpha").count() == 1 and page.locator("#total").inner_text() == "3"


def test_page_says_stale_when_a_live_socket_goes_quiet(make_dashboard: Any, make_agent: Any,
                                                        page_on: Any) -> None:
    dash: Dashboard = make_dashboard()
    make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha", "--secret", SECRET,
               "--interval", "1", "--min-interval", "1", "--no-adaptive")
    page = page_on(dash)
    card(page, "alpha").and_(page.locator(".online")).wait_for(timeout=15_000)
    dash.signal(signal.SIGSTOP)  # the socket stays open, nothing arrives
    try:
        page.locator("#state", has_text=re.compile(r"^stale for \d+ s$")).wait_for(
            timeout=50_000)
    finally:
        dash.signal(signal.SIGCONT)
    page.locator("#state", has_text="live").wait_for(timeout=10_000)


def test_page_shows_hostile_names_as_text(make_dashboard: Any, page_on: Any) -> None:
    dash: Dashboard = make_dashboard([server_entry("evil", name=XSS_NAME, group="<b>g</b>")])
    page = page_on(dash)
    evil = card(page, "evil")
    evil.wait_for()
    with dash.agent("evil") as agent:
        agent.send(json.dumps(go_report(hostInfo={**go_report()["hostInfo"],
                                                  "platform": "<script>alert(2)</script>"})))
        evil.and_(page.locator(".online")).wait_for(timeout=5_000)
    assert evil.locator("h3").inner_text() == XSS_NAME
    assert "<script>alert(2)</script>" in evil.locator(".sys").inner_text()
    assert page.locator("img").count() == 0 and page.locator("main b").count() == 0
    assert "<b>g</b>" in page.locator("button.group-head").inner_text()
    page.wait_for_timeout(500)
    assert page.dialogs == []
    csp = dash.get("/")[1]["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_page_search_sort_groups_and_theme_are_remembered(make_dashboard: Any,
                                                          page_on: Any) -> None:
    dash: Dashboard = make_dashboard()
    page = page_on(dash)
    card(page, "alpha").wait_for()
    page.locator("button.group-head", has_text="Web").click()
    page.fill("#search", "bet")
    assert card(page, "beta").is_visible() and not card(page, "alpha").is_visible()
    page.select_option("#sort", "cpu")
    page.click("#theme")  # auto -> light
    page.click("#theme")  # light -> dark
    page.reload()
    card(page, "beta").wait_for()
    assert page.input_value("#search") == "bet" and page.input_value("#sort") == "cpu"
    assert page.locator("html").get_attribute("data-theme") == "dark"
    page.fill("#search", "")
    web = page.locator("button.group-head", has_text="Web")
    assert web.get_attribute("aria-expanded") == "false"
    assert not card(page, "alpha").is_visible() and card(page, "beta").is_visible()


def test_page_newcomer_details(make_dashboard: Any, page_on: Any) -> None:
    """Favicon, the stale limit from the data, the disconnect clock, wrapping, the search box."""
    dash: Dashboard = make_dashboard()
    console: list[str] = []
    page = page_on(dash, viewport={"width": 375, "height": 800})
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.reload()
    card(page, "alpha").wait_for()
    assert page.evaluate("staleLimit()") is None  # nothing online: silence is normal
    long_mount = "/srv/" + "very-long-directory-name-" * 8
    report = go_report(reportInterval=70)
    report["diskInfo"]["partitions"].append({**report["diskInfo"]["partitions"][0],
                                             "mountPoint": long_mount, "total": 123456789012})
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(report))
        card(page, "alpha").and_(page.locator(".online")).wait_for(timeout=5_000)
        assert page.evaluate("staleLimit()") == 2 * 70 + 5 + 1.25  # offlineAfter + slack
        card(page, "alpha").locator("button.more").click()
        cells = card(page, "alpha").locator(".details td.num")
        assert cells.count() == 6
        lines = "n => { const r = document.createRange(); r.selectNodeContents(n); " \
                "return r.getClientRects().length; }"
        for i in range(cells.count()):  # each number on one line, however long the mount
            assert cells.nth(i).evaluate(lines) == 1, cells.nth(i).inner_text()
        mount = card(page, "alpha").locator(".details td", has_text="very-long")
        assert mount.evaluate(lines) > 1  # the long mount point wraps instead
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
    search = page.locator("#search")
    fits = search.evaluate("""n => {
        const style = getComputedStyle(n), ctx = document.createElement("canvas").getContext("2d");
        ctx.font = style.font;
        const room = n.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return ctx.measureText(n.placeholder).width <= room; }""")
    assert fits
    page.wait_for_timeout(4000)  # a while without messages, then the dashboard goes away
    assert dash.stop() == 0
    state = page.locator("#state", has_text="reconnecting")
    state.wait_for(timeout=5_000)
    seconds = int(re.search(r"stale for (\d+) s", state.inner_text())[1])
    assert seconds <= 2  # counted from the disconnect, not from the last message
    assert not [u for u in page.requests if "favicon" in u]
    assert not [m for m in console if m.startswith("error") and "ws-frontend" not in m], console


UPLOT_SHA256 = {  # vendor/README.md: uPlot 1.6.32 from the npm registry
    "uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    "uPlot.LICENSE": "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd",
}


def test_vendored_uplot_is_pinned_and_served_from_this_origin(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    readme = (dashboard.HERE / "vendor/README.md").read_text()
    for name, digest in UPLOT_SHA256.items():
        body = (dashboard.HERE / "vendor" / name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == digest, name
        assert digest in readme
        status, _, served = dash.get(f"/vendor/{name}")
        assert status == 200 and served == body
    assert dash.get("/vendor/../servers.json")[0] == 404
    assert "MIT" in (dashboard.HERE / "vendor/uPlot.LICENSE").read_text()
    csp = dash.get("/")[1]["Content-Security-Policy"]
    assert "script-src 'self' 'sha256-" in csp and "style-src 'self' 'sha256-" in csp


def wait_until(page: Any, expression: str, timeout: float = 10) -> None:
    """Poll a JS expression (wait_for_function would need 'unsafe-eval', which the CSP bars)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{expression} stayed false for {timeout} s"
        page.wait_for_timeout(100)


def test_page_applies_updates_to_what_the_api_says(make_dashboard: Any, page_on: Any) -> None:
    """Realistic reports, one after another: the page applies each update by member, down
    into lists (a partition's use), and ends with exactly the server /api/servers gives."""
    dash: Dashboard = make_dashboard()
    page = page_on(dash)
    card(page, "alpha").wait_for(state="attached")
    with dash.agent("alpha") as agent:
        for report in bench.fake_reports("alpha"):
            agent.send(report)
            percent = json.loads(report)["cpuInfo"]["percent"]
            wait_until(page, f"(servers.get('alpha').data.cpuInfo || {{}}).percent === {percent}")
        wait_until(page, "paths.has('diskInfo.partitions.0.used')")  # not sent whole
        deadline = time.monotonic() + 10  # history's minute may add a field meanwhile
        while True:
            api = {server["id"]: server for server in dash.get_json("/api/servers")}
            seen = json.loads(page.evaluate("JSON.stringify(servers.get('alpha').data)"))
            if seen == api["alpha"] or time.monotonic() > deadline:
                break
            page.wait_for_timeout(200)
        assert seen == api["alpha"]


def test_page_detail_view_charts_history(make_dashboard: Any, make_agent: Any,
                                        page_on: Any) -> None:
    dash: Dashboard = make_dashboard(start=False).start("--history-resolution", "1")
    make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha", "--secret", SECRET,
               "--interval", "1", "--min-interval", "1", "--no-adaptive")
    SCREENSHOTS.mkdir(exist_ok=True)
    for scheme, width in (("light", 1280), ("dark", 375)):
        errors: list[str] = []
        page = page_on(dash, color_scheme=scheme, viewport={"width": width, "height": 900})
        page.on("console", lambda m, errors=errors: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        alpha = card(page, "alpha")
        alpha.and_(page.locator(".online")).wait_for(timeout=15_000)
        alpha.locator("h3 a").click()
        assert page.url.endswith("#/server/alpha")
        page.locator(".plot canvas").nth(6).wait_for(timeout=10_000)
        assert page.locator(".plot").count() == 7 and not page.locator("#groups").is_visible()
        assert page.locator("#detail-name").inner_text() == "Alpha"
        grown = page.evaluate("detail.data.time.length")
        wait_until(page, f"detail.data.time.length > {grown}")  # the 1h view grows live
        cpu = page.locator(".plot").first.locator(".u-over")
        box = cpu.bounding_box()
        page.mouse.move(box["x"] + box["width"] - 1, box["y"] + box["height"] / 2)
        tip = page.locator(".plot").first.locator(".tip")
        tip.wait_for(state="visible", timeout=5_000)
        assert re.search(r"average: \d+\.\d %", tip.inner_text()), tip.inner_text()
        assert page.locator(".tip:visible").count() == 1  # only the hovered chart's
        page.locator("#ranges button", has_text="6h").click()
        wait_until(page, "detail.data && detail.data.range === '6h'")
        assert page.locator("#ranges button[aria-pressed=true]").inner_text() == "6h"
        assert any("api/history?id=alpha&range=6h" in u for u in page.requests)
        background = page.eval_on_selector(".plot", "n => getComputedStyle(n).backgroundColor")
        assert (luminance(background) < 0.3) == (scheme == "dark")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(SCREENSHOTS / f"detail-{scheme}-{width}px.png"), full_page=True)
        page.locator("#ranges button", has_text="1h").click()  # leave it as found
        page.go_back()
        assert page.locator("#groups").is_visible() and not page.locator("#detail").is_visible()
        page.goto(dash.url("/#/server/alpha"))  # a shared link opens the view directly
        page.locator(".plot canvas").first.wait_for(timeout=10_000)
        strip = card(page, "alpha").locator(".strip span")
        assert strip.count() == 24
        assert errors == [], errors
        origin = dash.url("/").rstrip("/")
        assert all(u.startswith((origin, dash.url("/", "ws").rstrip("/"))) for u in page.requests)
    page.goto(dash.url("/"))
    card(page, "alpha").locator(".strip span").nth(23).and_(
        page.locator(".ok")).wait_for(timeout=10_000)  # this hour: green
    assert re.fullmatch(r"30 d \d+\.\d\d %", card(page, "alpha").locator(".month").inner_text())


LONG_VALUES = {"cpuInfo": {"percent": 99.9, "info": ["Intel(R) Xeon(R) CPU E5-2680 v4 x 16"]},
               "reportInterval": 1,
               "extraInfo": {"diskReadSpeed": 95.4 * 2**20, "diskWriteSpeed": 123.4 * 2**20,
                             "tcpConnections": 123456, "udpConnections": 4567,
                             "processes": 12345},
               "networkInfo": {"netInSpeed": 987654321, "netOutSpeed": 123456789,
                               "netInTransfer": 10**13, "netOutTransfer": 2 * 10**13}}


def test_page_long_values_fit_at_both_widths(make_dashboard: Any, page_on: Any) -> None:
    """Every chart and card with long values, in Chromium at 1280 and 375 px. Before: the
    Disk IO axis showed "5.4 MiB/s" for 95.4, CPU's two series shared one key colour, phrases
    wrapped in the middle ("resets / in 28 d"), and an alert read "traffic for 0 s"."""
    dash: Dashboard = make_dashboard([server_entry(
        "alpha", name="A server with a rather long name that goes on", group="Frankfurt",
        traffic={"limit": "2 TiB"}, expires="2027-03-01", price="4.50 EUR/month")],
        start=False, notifiers=[{"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/"}],
        alerts=[{"name": "traffic", "metric": "cpu", "above": 90, "notify": ["ops"]}])
    dash.start("--history-resolution", "1")
    SCREENSHOTS.mkdir(exist_ok=True)
    with dash.agent("alpha") as agent:
        for _ in range(4):
            agent.send(json.dumps(go_report(**LONG_VALUES)))
            time.sleep(0.6)
        for width in (1280, 375):
            page = page_on(dash, viewport={"width": width, "height": 900})
            try:
                alpha = card(page, "alpha")
                alpha.and_(page.locator(".online")).wait_for(timeout=10_000)
                assert re.fullmatch(r"🔥 traffic since \d\d:\d\d",
                                    alpha.locator(".firing").inner_text())
                for phrase in (".ago", ".quota-text span", ".plan span", ".month", ".val"):
                    lines = alpha.locator(phrase).evaluate_all(
                        "nodes => nodes.map(n => [n.textContent, n.getClientRects().length])")
                    assert all(count == 1 for _, count in lines), (phrase, lines)
                name_width = alpha.locator("h3").evaluate("n => n.getBoundingClientRect().width")
                assert name_width >= 140, name_width  # not squeezed by "updated 2 s ago"
                page.goto(dash.url("/#/server/alpha"))
                page.locator(".plot canvas").nth(6).wait_for(timeout=10_000)
                wait_until(page, "detail.plots.every(u => u.axes[1]._values)")
                axes = page.evaluate("""detail.plots.map(u => {
                    const axis = u.axes[1];
                    u.ctx.font = axis.font[0];
                    const widest = Math.max(...axis._values.map(v => u.ctx.measureText(v).width));
                    return [axis._values, widest / devicePixelRatio, axis._size];
                })""")
                for labels, widest, size in axes:
                    assert widest + 8 <= size, (labels, widest, size)  # nothing cut off
                assert any("95.4 MiB/s" in labels or "100 MiB/s" in labels
                           for labels, _, _ in axes), axes
                keys = page.locator(".plot .keys").evaluate_all(
                    "boxes => boxes.map(b => [...b.querySelectorAll('i')].map("
                    "i => getComputedStyle(i).backgroundColor))")
                assert all(len(set(colors)) == len(colors) for colors in keys), keys
                assert page.evaluate("document.documentElement.scrollWidth") <= width
            except BaseException:
                page.screenshot(path=str(SCREENSHOTS / f"long-values-{width}px.png"),
                                full_page=True)
                raise


def luminance(css_color: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_page_screenshots_dark_mode_and_narrow_screens(make_dashboard: Any,
                                                       page_on: Any) -> None:
    dash: Dashboard = make_dashboard()
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report(cpuInfo={"percent": 93.0, "info": ["Test CPU"]})))
        SCREENSHOTS.mkdir(exist_ok=True)
        for scheme in ("light", "dark"):
            page = page_on(dash, color_scheme=scheme, viewport={"width": 1280, "height": 800})
            card(page, "alpha").and_(page.locator(".online")).wait_for(timeout=5_000)
            assert page.locator("html").get_attribute("data-theme") == scheme
            backgrounds = page.eval_on_selector_all(
                "article.card, header.top, body",
                "nodes => nodes.map(n => getComputedStyle(n).backgroundColor)")
            for colour in backgrounds:
                assert (luminance(colour) < 0.3) == (scheme == "dark"), colour
            fill = card(page, "alpha").locator(".fill").first
            assert "bad" in fill.get_attribute("class")  # 93 % is red
            page.screenshot(path=str(SCREENSHOTS / f"page-{scheme}.png"), full_page=True)
        page = page_on(dash, viewport={"width": 375, "height": 800})
        card(page, "alpha").and_(page.locator(".online")).wait_for(timeout=5_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=str(SCREENSHOTS / "page-375px.png"), full_page=True)


def test_page_draws_only_cards_on_screen(make_dashboard: Any, page_on: Any) -> None:
    sids = [f"host-{i:03d}" for i in range(60)]
    dash: Dashboard = make_dashboard([server_entry(sid) for sid in sids])
    page = page_on(dash, viewport={"width": 800, "height": 500})
    card(page, sids[-1]).wait_for(state="attached")
    with contextlib.ExitStack() as stack:
        agents = [stack.enter_context(dash.agent(sid)) for sid in (sids[0], sids[-1])]
        for agent in agents:
            agent.send(json.dumps(go_report()))
        page.locator("#online", has_text="2").wait_for(timeout=10_000)
        first, last = card(page, sids[0]), card(page, sids[-1])
        assert "debian" in first.locator(".sys").inner_text()
        assert last.locator("h3").inner_text() == sids[-1]  # its name and state: yes
        assert "online" in last.get_attribute("class")
        assert last.locator(".sys").evaluate("n => n.textContent") == ""  # not drawn yet
        last.scroll_into_view_if_needed()
        last.locator(".sys", has_text="debian").wait_for(timeout=5_000)


def test_bench_reports_change_what_a_real_agents_do() -> None:
    """The benches' agents: each report valid, and the next one moves what a real agent's
    next report moves (not one field, which would flatter every diff downstream)."""
    records = [validate_report(frame) for frame in bench.fake_reports("web-1")]
    for before, after in zip(records, records[1:]):
        changes: dict[str, Any] = {}
        assert not record_changes(before, after, changes)
        assert {"hostInfo.uptime", "hostInfo.avgStat.load1", "cpuInfo.percent",
                              "virtualMemoryInfo.used", "networkInfo.netInTransfer",
                              "diskInfo.partitions.0.used"} <= changes.keys()
    # Each says the interval it is sent at, as agent.py does: the offline rules follow it.
    assert {validate_report(frame)["reportInterval"]
            for frame in bench.fake_reports("web-1", interval=5)} == {5}


def test_page_memory_stays_flat_with_500_servers(make_dashboard: Any, page_on: Any) -> None:
    count, seconds, bound_mb = 500, 60, 8
    sids = [f"host-{i:03d}" for i in range(count)]
    dash: Dashboard = make_dashboard([server_entry(sid, group=f"Rack {i % 5}")
                                      for i, sid in enumerate(sids)])
    sent: list[int] = []
    load = threading.Thread(target=lambda: sent.append(asyncio.run(bench.fake_agents(
        dash.url("/ws-report", "ws"), sids, SECRET, duration=seconds + 20))), daemon=True)
    load.start()
    page = page_on(dash)
    page.locator("#online", has_text=str(count)).wait_for(timeout=30_000)
    cdp = page.context.new_cdp_session(page)

    def heap_mb() -> float:
        cdp.send("HeapProfiler.collectGarbage")
        return cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20

    page.wait_for_timeout(10_000)  # charts fill their buffers, caches warm up
    start = heap_mb()
    page.wait_for_timeout((seconds - 10) * 1000)
    assert page.locator("#online").inner_text() == str(count)  # still all live
    end = heap_mb()
    print(f"JS heap with {count} servers: {start:.1f} MB -> {end:.1f} MB")
    load.join(40)
    assert sent and sent[0] >= count * seconds  # the load really ran
    # Stated bound: the JS heap grows by less than 8 MB over the last 50 s of updates.
    assert end - start < bound_mb, (start, end)


# --- deployment: served files, units, TLS, reverse proxies ---------------------------

README = (dashboard.HERE / "README.md").read_text()


def readme_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)
    assert len(blocks) == 1, f"README must hold exactly one {language} block"
    return blocks[0]


PROTOCOL = (dashboard.HERE / "PROTOCOL.md").read_text()


def test_docs_state_what_the_code_does() -> None:
    """Each number and message a reader relies on, checked against the code that sets it."""
    config, _ = parse_config({"servers": [server_entry("web-1"),
                                          server_entry("demo", secret=PLACEHOLDER_SECRET)]}, "x")
    hub = Hub(config, broadcast=lambda viewers, message: None, wall=time.time,
              monotonic=time.monotonic)
    site = Site.create(hub, Files(None, None, None, None), Options())
    bodies = []
    for headers, address in (
            ([("X-SERVER-ID", "web-1"), ("X-SERVER-ID", "web-1"), ("X-AUTH-SECRET", SECRET)],
             "192.0.2.1"),
            ([("X-SERVER-ID", "web-1")], "192.0.2.1"),
            ([("X-SERVER-ID", "web-1"), ("X-AUTH-SECRET", "wrong")], "192.0.2.1"),
            ([("X-SERVER-ID", "demo"), ("X-AUTH-SECRET", PLACEHOLDER_SECRET)], "192.0.2.2"),
            *[([("X-SERVER-ID", "web-1"), ("X-AUTH-SECRET", "wrong")], "192.0.2.3")] * 11):
        refusal, _ = check_agent(site, address, Headers(headers), now=0.0)
        assert refusal is not None
        bodies.append(refusal.body.decode().strip())
    bodies[-1] = re.sub(r"\d+ more s", "N more s", bodies[-1])
    for body in set(bodies):
        assert f"`{body}`" in PROTOCOL, body
    assert f"at most {MAX_REPORT_INTERVAL:.0f} s" in PROTOCOL
    assert f"`2 × reportInterval + {timings.OFFLINE_MARGIN:g}`" in PROTOCOL
    assert f"`max({timings.SILENT_CLOSE_FLOOR:g}, 2 × (2 × reportInterval + 5))`" in PROTOCOL
    assert f"at most one every {timings.COALESCE_SECONDS:g} s" in PROTOCOL
    slack = timings.COALESCE_SECONDS + timings.TICK_SECONDS
    assert f"plus {slack:g} s" in PROTOCOL
    assert f"const COALESCE_AND_TICK_S = {slack:g};" in (dashboard.HERE / "index.html").read_text()
    disks = PROTOCOL[PROTOCOL.index("- Disks:"):PROTOCOL.index("- Processes:")]
    assert all(fstype in disks for fstype in sss_agent.VIRTUAL_FSTYPES)
    nics = PROTOCOL[PROTOCOL.index("- Interfaces:"):PROTOCOL.index("- Disks:")]
    assert all(f"`{glob}`" in nics for glob in sss_agent.DEFAULT_EXCLUDED_NICS)
    copied = re.search(r"sudo cp -r (dashboard\.py.*?) /opt/sss-dashboard/", README, re.DOTALL)
    served = {"dashboard.py", "sss", "index.html", "vendor", "agent.py", "install.sh"}
    assert copied and served <= set(copied[1].split())  # what the dashboard runs and serves
    assert "psutil" not in (dashboard.HERE / "requirements.txt").read_text()
    assert "Collects with psutil" not in README


def raw_get(port: int, path: str, host: str) -> bytes:
    """An HTTP request with a Host header no HTTP library would send."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_requests_with_more_headers_than_clients_send_are_refused(
        make_dashboard: Any) -> None:
    """websockets reads at most MAX_HEADERS header lines (transport.py sets its
    environment variable before it is imported): an unfinished request holds at most
    that many, not websockets' default of 128."""
    dash: Dashboard = make_dashboard()

    def status_with(headers: int) -> bytes:
        padding = "".join(f"X-Pad-{i}: x\r\n" for i in range(headers))
        with socket.create_connection(("127.0.0.1", dash.port), timeout=10) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{padding}\r\n".encode())
            return sock.recv(64).split(b"\r\n")[0]
    assert status_with(MAX_HEADERS - 2) == b"HTTP/1.1 200 OK"
    # websockets answers 431 since 15.0.2 or so; 15.0.1 hangs up without an answer
    assert status_with(MAX_HEADERS + 8) in (b"HTTP/1.1 431 Request Header Fields Too Large",
                                            b"")
    assert "Traceback" not in dash.log_text()
    assert "WEBSOCKETS_MAX" not in dash.log_text()  # no "did not take" line


def test_dashboard_serves_its_agent_and_installer(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard()
    status, headers, body = dash.get("/agent.py")
    assert status == 200 and body == (dashboard.HERE / "agent.py").read_bytes()
    status, headers, body = dash.get("/install.sh")
    assert status == 200 and headers["Content-Type"].startswith("text/x-shellscript")
    assert f'DASHBOARD_URL="http://127.0.0.1:{dash.port}"'.encode() in body
    unit = dash.get("/sss-agent.service")[2]
    assert unit == (dashboard.HERE / "deploy/sss-agent.service").read_bytes()
    # A hostile Host header must not end up in a script people run as root.
    answer = raw_get(dash.port, "/install.sh", 'x";touch /tmp/pwned;"')
    assert answer.startswith(b"HTTP/1.1 400") and b"pwned" not in answer
    assert dashboard_url("", "[::1]:8900", tls=True) == "https://[::1]:8900"
    assert dashboard_url("", "a b", tls=False) is None
    assert dashboard_url("https://s.example/status/", "x", False) == \
        "https://s.example/status"


def test_public_url_goes_into_the_installer(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False).start("--public-url",
                                                        "https://status.example.com/status/")
    body = dash.get("/install.sh")[2]
    assert b'DASHBOARD_URL="https://status.example.com/status"' in body


def test_bad_public_url_and_certificate_are_clear_errors(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False)
    for flags, expected in ((["--public-url", "http://x/$(reboot)"], "--public-url"),
                            (["--certfile", "/nonexistent.pem"], "--certfile")):
        with pytest.raises(LogNotFound) as exited:
            dash.start(*flags)
        assert exited.value.exit_code == 2
        assert expected in dash.log_text() and "Traceback" not in dash.log_text()


@pytest.fixture
def systemd_analyze() -> str:
    return require_tool("systemd-analyze", "systemd")


def test_systemd_units_verify(systemd_analyze: str, tmp_path: Path) -> None:
    """Both units, with their /opt paths pointing at a real Python as when installed."""
    for name, prefix in (("sss-dashboard.service", "/opt/sss-dashboard"),
                         ("sss-agent.service", "/opt/sss-agent")):
        home = tmp_path / name.split(".")[0]
        (home / "venv/bin").mkdir(parents=True)
        (home / "venv/bin/python3").symlink_to(sys.executable)
        text = (dashboard.HERE / "deploy" / name).read_text()
        assert "DynamicUser=yes" in text and "CapabilityBoundingSet=\n" in text
        assert "MemoryMax=" in text and "Restart=always" in text
        unit = tmp_path / name
        unit.write_text(text.replace(prefix, str(home)))
        result = subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True,
                                text=True, timeout=60)
        problems = [line for line in result.stderr.splitlines()
                    if name in line and "sysinit.target" not in line]
        assert result.returncode == 0 or not problems, result.stderr
        assert not problems, result.stderr
    # systemd's default soft limit (1,024 files) would refuse agents past about a thousand.
    dashboard_unit = (dashboard.HERE / "deploy/sss-dashboard.service").read_text()
    limit = re.search(r"^LimitNOFILE=(\d+)$", dashboard_unit, re.M)
    assert limit and int(limit.group(1)) >= 10_000 + runtime.VIEWER_MARGIN


def test_tls_carries_reports_to_a_viewer(make_dashboard: Any, make_agent: Any,
                                         tmp_path: Path) -> None:
    dash, _ = tls_dashboard(make_dashboard, tmp_path)
    wss = dash.url("/ws-report", "wss")
    rejected = make_agent("--server", wss, "--id", "beta", "--secret", SECRET)
    rejected.wait_for_log(r"TLS certificate of 127\.0\.0\.1 rejected .*--ca-file")
    make_agent("--server", wss, "--id", "alpha", "--secret", SECRET, "--ca-file",
               str(tmp_path / "ca.pem"), "--interval", "1", "--min-interval", "1")
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with connect(dash.url("/ws-frontend", "wss"), ssl=context, open_timeout=10) as viewer:
        recv_until(viewer, lambda m: (server_in(m, "alpha") or {}).get("online") is True,
                   timeout=15)
    with urllib.request.urlopen(dash.url("/healthz", "https"), context=context,
                                timeout=10) as response:
        assert json.loads(response.read())["agents"] == 1


def start_proxy(kind: str, tmp_path: Path, dashboard_port: int) -> tuple[LoggedProcess, int]:
    """nginx or Caddy on loopback, configured with README's block (ports changed). A free
    port can be taken by another test's socket before the proxy binds it: then another."""
    for _ in range(3):
        proxy, port = spawn_proxy(kind, tmp_path, dashboard_port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proxy.process.poll() is None:  # type: ignore
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return proxy, port
            time.sleep(0.1)
        proxy.kill()
        if "address already in use" not in proxy.log_text().lower():
            break
    raise AssertionError(f"{kind} did not start:\n{proxy.log_text()}")


def spawn_proxy(kind: str, tmp_path: Path, dashboard_port: int) -> tuple[LoggedProcess, int]:
    binary = require_tool(kind, kind)
    port = free_port()
    proxy = LoggedProcess()
    if kind == "nginx":
        site = readme_block("nginx").replace("listen 80;", f"listen 127.0.0.1:{port};")
        site = site.replace("127.0.0.1:8900", f"127.0.0.1:{dashboard_port}")
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                        f"http {{\naccess_log off;\nclient_body_temp_path {tmp_path};\n"
                        f"proxy_temp_path {tmp_path};\n{site}}}\n")
        proxy.spawn([binary, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"])
    else:
        site = readme_block("caddy").replace("status.example.com", f"http://127.0.0.1:{port}")
        site = site.replace("127.0.0.1:8900", f"127.0.0.1:{dashboard_port}")
        conf = tmp_path / "Caddyfile"
        conf.write_text("{\n\tadmin off\n}\n" + site)
        proxy.spawn([binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
                    env={**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
                         "XDG_CONFIG_HOME": str(tmp_path)})
    return proxy, port


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
def test_agent_and_page_work_through_a_reverse_proxy(kind: str, make_dashboard: Any,
                                                     make_agent: Any, page_on: Any,
                                                     tmp_path: Path) -> None:
    dash: Dashboard = make_dashboard()
    proxy, port = start_proxy(kind, tmp_path, dash.port)
    try:
        base = f"http://127.0.0.1:{port}/status/"
        make_agent("--server", f"ws://127.0.0.1:{port}/status/ws-report", "--id", "alpha",
                   "--secret", SECRET, "--interval", "1", "--min-interval", "1")
        with urllib.request.urlopen(base + "healthz", timeout=10) as response:
            assert json.loads(response.read())["servers"] == 3
        page = page_on(dash, "/")  # direct, then the same page through the proxy
        page.goto(base)
        alpha = card(page, "alpha")
        alpha.and_(page.locator(".online")).wait_for(timeout=20_000)
        assert page.locator("#state").inner_text() == "live"
        assert any(u.startswith(f"ws://127.0.0.1:{port}/status/ws-frontend")
                   for u in page.requests), page.requests
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
            assert response.url == base  # the bare sub-path redirects
    finally:
        proxy.kill()


def test_trusted_proxy_bans_the_client_not_the_proxy(make_dashboard: Any,
                                                     tmp_path: Path) -> None:
    headers = Headers([("X-Forwarded-For", "10.9.9.9, 203.0.113.5")])
    trusted = frozenset({"127.0.0.1"})
    assert client_address("127.0.0.1", headers, trusted) == "203.0.113.5"
    assert client_address("127.0.0.9", headers, trusted) == "127.0.0.9"
    assert client_address("127.0.0.1", Headers(), trusted) == "127.0.0.1"

    dash: Dashboard = make_dashboard(start=False).start("--trusted-proxy", "127.0.0.1")
    proxy, port = start_proxy("nginx", tmp_path, dash.port)
    try:
        wrong = {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": "guess"}
        right = {"X-SERVER-ID": "alpha", "X-AUTH-SECRET": SECRET}
        via_proxy = {"port": port, "path": "/status/ws-report"}
        assert [handshake_status(dash, wrong, "127.0.0.2", **via_proxy)
                for _ in range(10)] == [401] * 10
        assert handshake_status(dash, right, "127.0.0.2", **via_proxy) == 429
        assert handshake_status(dash, right, "127.0.0.3", **via_proxy) == 101
        dash.wait_for_log("id:alpha from 127.0.0.2 refused for 300 s")
    finally:
        proxy.kill()
