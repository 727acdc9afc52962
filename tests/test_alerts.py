"""Tests for alerts.py: rules as pure functions with an injected clock, then real receivers."""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HERE,
    SECRET,
    Dashboard,
    card,
    free_port,
    go_report,
    recv_json,
    recv_until,
    server_in,
    wait_accepted,
)

from sss import alerts
from sss.config import AlertRule, ConfigError, ServerConfig, parse_config
from sss.datafiles import JsonFile

T0 = 1_795_000_000.0
WEB = ServerConfig("web-1", "Web 1", "Frankfurt", SECRET, "de")
DB = ServerConfig("db-2", "DB 2", "Default", SECRET, "")


def rule(name: str = "cpu", metric: str = "cpu", above: float | None = 90,
         below: float | None = None, for_seconds: float = 0, servers: tuple[str, ...] = (),
         repeat: float | None = None) -> AlertRule:
    return AlertRule(name, metric, above, below, for_seconds, servers, repeat, ("ops",))


def seen(server: ServerConfig = WEB, online: bool = True, interval: float = 5,
         **values: float) -> alerts.Observed:
    return alerts.Observed(server, online, True, interval, values if online else {})


def judge(evaluator: alerts.Evaluator, rules: tuple[AlertRule, ...],
          servers: list[alerts.Observed], now: float) -> list[alerts.Event]:
    """Evaluate at `now`, where the monotonic and the wall clock agree."""
    return evaluator.evaluate(rules, servers, now, now)


# --- evaluation (pure) -----------------------------------------------------------


def test_offline_fires_after_for_then_resolves() -> None:
    down = rule("down", "offline", None, for_seconds=60)
    evaluator = alerts.Evaluator(started=T0 - 3600)
    assert judge(evaluator, (down,), [seen(online=False)], T0) == []
    assert judge(evaluator, (down,), [seen(online=False)], T0 + 59) == []
    (fired,) = judge(evaluator, (down,), [seen(online=False)], T0 + 60)
    assert (fired.state, fired.text()) == ("firing", "🔴 Web 1 (Frankfurt) offline for 1m")
    assert judge(evaluator, (down,), [seen(online=False)], T0 + 600) == []  # once
    (back,) = judge(evaluator, (down,), [seen(cpu=5)], T0 + 720)
    assert (back.state, back.text()) == ("resolved", "✅ Web 1 (Frankfurt) back after 12m")
    assert back.payload() == {"alert": "down", "state": "resolved",
                              "server": {"id": "web-1", "name": "Web 1", "group": "Frankfurt"},
                              "metric": "offline", "value": None, "threshold": None,
                              "since": int(T0), "text": back.text()}


def test_a_short_spike_does_not_fire_a_rule_with_for() -> None:
    cpu = rule(for_seconds=300)
    evaluator = alerts.Evaluator(started=T0 - 3600)
    assert judge(evaluator, (cpu,), [seen(cpu=97)], T0) == []
    assert judge(evaluator, (cpu,), [seen(cpu=97)], T0 + 200) == []
    assert judge(evaluator, (cpu,), [seen(cpu=40)], T0 + 210) == []  # the spike ended
    assert judge(evaluator, (cpu,), [seen(cpu=97)], T0 + 400) == []  # counting anew
    (fired,) = judge(evaluator, (cpu,), [seen(cpu=97)], T0 + 700)
    assert fired.text() == "🔥 Web 1 (Frankfurt) CPU 97 % for 5m (above 90)"
    (done,) = judge(evaluator, (cpu,), [seen(cpu=45)], T0 + 820)
    assert done.text() == "✅ Web 1 (Frankfurt) CPU back to 45 % after 7m"


def test_repeat_reminds_while_firing() -> None:
    cpu = rule(repeat=600)
    evaluator = alerts.Evaluator(started=T0 - 3600)
    assert [e.state for e in judge(evaluator, (cpu,), [seen(cpu=95)], T0)] == ["firing"]
    assert judge(evaluator, (cpu,), [seen(cpu=95)], T0 + 599) == []
    assert [e.state for e in judge(evaluator, (cpu,), [seen(cpu=96)], T0 + 600)] == ["firing"]
    assert judge(evaluator, (cpu,), [seen(cpu=96)], T0 + 900) == []


def test_selectors_pick_ids_and_groups() -> None:
    disk = rule("disk", "disk", 85, servers=("db-2", "group:Frankfurt"))
    other = ServerConfig("cache-3", "Cache", "Paris", SECRET, "")
    assert disk.applies_to(WEB) and disk.applies_to(DB) and not disk.applies_to(other)
    evaluator = alerts.Evaluator(started=T0 - 3600)
    events = judge(evaluator, (disk,), [seen(WEB, disk=90), seen(DB, disk=90),
                                          seen(other, disk=99)], T0)
    assert sorted(e.server.id for e in events) == ["db-2", "web-1"]


def test_while_offline_only_offline_applies() -> None:
    cpu, down = rule(), rule("down", "offline", None)
    evaluator = alerts.Evaluator(started=T0 - 3600)
    judge(evaluator, (cpu, down), [seen(cpu=99)], T0)
    assert set(evaluator.firing) == {("cpu", "web-1")}
    events = judge(evaluator, (cpu, down), [seen(online=False)], T0 + 30)
    assert [(e.rule.name, e.state) for e in events] == [("down", "firing")]  # cpu: no verdict
    events = judge(evaluator, (cpu, down), [seen(cpu=10)], T0 + 60)
    assert sorted((e.rule.name, e.state) for e in events) == [("cpu", "resolved"),
                                                              ("down", "resolved")]


def test_no_page_for_a_dashboard_restart() -> None:
    down = rule("down", "offline", None, for_seconds=60)
    evaluator = alerts.Evaluator(started=T0)
    never = alerts.Observed(DB, False, False, 2, {})
    # A seen server gets `for` + 2 intervals after the start; one never seen, `for` + 60 s.
    assert judge(evaluator, (down,), [seen(online=False, interval=5), never], T0 + 1) == []
    assert judge(evaluator, (down,), [seen(online=False, interval=5), never], T0 + 69) == []
    (web,) = judge(evaluator, (down,), [seen(online=False, interval=5), never], T0 + 70)
    assert web.server.id == "web-1"
    (db,) = judge(evaluator, (down,), [seen(online=False, interval=5), never], T0 + 120)
    assert db.server.id == "db-2"


def test_firing_state_survives_a_restart(tmp_path: Path) -> None:
    down = rule("down", "offline", None)
    saved = JsonFile(tmp_path / "alerts.json", "alerts", "")
    first = alerts.Evaluator(started=T0 - 3600)
    judge(first, (down,), [seen(online=False)], T0)
    assert saved.save(alerts.firing_rows(first.firing))
    firing, problems = alerts.firing_from(saved.read()[0], T0 + 100, T0 + 100)
    assert problems == []
    restarted = alerts.Evaluator(started=T0 + 100, firing=firing)
    assert judge(restarted, (down,), [seen(online=False)], T0 + 200) == []  # no repeat
    (back,) = judge(restarted, (down,), [seen(cpu=1)], T0 + 300)
    assert back.state == "resolved" and back.since == T0  # and not forgotten
    (tmp_path / "broken.json").write_text("{")
    assert JsonFile(tmp_path / "broken.json", "alerts", "").read()[0] is None
    damaged = [{"alert": "x"}, {"alert": "down", "id": "web-1", "since": 1e400, "value": None,
                                "last_sent": T0}, *alerts.firing_rows(first.firing)]
    kept, problems = alerts.firing_from(damaged, T0, T0)
    assert list(kept) == [("down", "web-1")] and len(problems) == 2  # the good one kept
    assert all(p.startswith("entry ") and "dropped" in p for p in problems)


def test_durations_run_on_the_monotonic_clock_whatever_the_wall_clock_does() -> None:
    """`for`, `repeat` and what messages say are monotonic durations; the wall clock only
    says when (the `since` of payloads)."""
    down = rule("down", "offline", None, for_seconds=300, repeat=3600)
    evaluator = alerts.Evaluator(started=0.0)
    assert evaluator.evaluate((down,), [seen(online=False)], 100.0, T0) == []
    later = T0 + 3 * 86400  # the wall clock jumps three days forward
    assert evaluator.evaluate((down,), [seen(online=False)], 280.0, later + 180) == []
    (fired,) = evaluator.evaluate((down,), [seen(online=False)], 400.0, later + 300)
    assert fired.text() == "🔴 Web 1 (Frankfurt) offline for 5m" and fired.since == T0
    earlier = T0 - 5 * 86400  # and then five days back
    assert evaluator.evaluate((down,), [seen(online=False)], 3999.0, earlier) == []
    (reminder,) = evaluator.evaluate((down,), [seen(online=False)], 4000.0, earlier + 1)
    assert reminder.text() == "🔴 Web 1 (Frankfurt) offline for 1h5m"  # since 100 s
    (back,) = evaluator.evaluate((down,), [seen(cpu=1)], 4300.0, earlier + 301)
    assert back.text() == "✅ Web 1 (Frankfurt) back after 1h10m"
    # Across a restart the one duration the wall clock measures: from the saved times.
    cpu = rule(repeat=600)
    first = alerts.Evaluator(started=0.0)
    judge(first, (cpu,), [seen(cpu=95)], T0)
    restarted = alerts.Evaluator(50.0, alerts.firing_from(alerts.firing_rows(first.firing),
                                                          50.0, T0 + 120)[0])
    assert judge(restarted, (cpu,), [seen(cpu=95)], 529.0) == []
    (reminder,) = restarted.evaluate((cpu,), [seen(cpu=95)], 530.0, T0 + 600)
    assert reminder.text() == "🔥 Web 1 (Frankfurt) CPU 95 % for 10m (above 90)"


def test_durations_and_values_read_well() -> None:
    assert [alerts.short_duration(s) for s in (5, 60, 725, 3600, 3900, 86400 + 7200)] == [
        "5s", "1m", "12m", "1h", "1h5m", "1d2h"]
    assert alerts.metric_value("netIn", 3 * 2**20) == "3.0 MiB/s"
    assert alerts.metric_value("load1", 4.25) == "4.25"


# --- config --------------------------------------------------------------------

NOTIFIERS = [{"name": "ops", "type": "webhook", "url": "https://hooks.example.com/sss",
              "headers": {"Authorization": "Bearer x"}},
             {"name": "phone", "type": "telegram", "token": "123456:ABC-def",
              "chatId": "-1001234567890"}]


def test_alert_config_parses() -> None:
    config, _ = parse_config({"servers": [], "notifiers": NOTIFIERS, "alerts": [
        {"name": "down", "metric": "offline", "for": "1m", "notify": ["phone", "ops"]},
        {"name": "cpu", "metric": "cpu", "above": 90, "for": "5m", "repeat": "1h",
         "notify": ["ops"]}]}, "servers.json")
    down, cpu = config.alerts
    assert (down.for_seconds, cpu.for_seconds, cpu.repeat) == (60, 300, 3600)
    assert config.notifiers["phone"].chat_id == "-1001234567890"
    assert "ABC-def" not in repr(config.notifiers["phone"])  # secrets stay out of logs


def test_every_alert_config_error_names_item_field_and_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"servers": [], "notifiers": [
            {"name": "ops", "type": "webhook", "url": "ftp://x"},
            {"name": "tg", "type": "telegram", "token": "nope", "chatId": "x"},
            {"name": "odd", "type": "pager"}], "alerts": [
            {"name": "a", "metric": "humidity", "above": 1, "notify": ["ops"]},
            {"name": "b", "metric": "cpu", "notify": ["ops"]},
            {"name": "c", "metric": "cpu", "above": 1, "for": "5 minutes", "notify": ["ops"]},
            {"name": "d", "metric": "cpu", "above": 1, "notify": ["pager"]},
            {"name": "e", "metric": "http", "below": 1, "notify": ["ops"]}]}, "servers.json")
    problems = caught.value.problems
    expected = [
        "notifiers[0] ('ops'): field \"url\" must be an http:// or https:// URL",
        "notifiers[1] ('tg'): field \"token\" must be the bot token",
        "notifiers[1] ('tg'): field \"chatId\" must be a chat id",
        "notifiers[2] ('odd'): field \"type\" must be one of webhook, telegram, apprise",
        "alerts[0] ('a'): field \"metric\" must be one of offline, cpu",
        "alerts[1] ('b'): a threshold is missing; add \"above\": N or \"below\": N",
        "alerts[2] ('c'): field \"for\" must be seconds or a duration such as \"30s\"",
        "alerts[3] ('d'): field \"notify\" names 'pager', which is not in \"notifiers\"",
        "alerts[0] ('a'): field \"notify\" names 'ops'",  # ops was refused above
        "alerts[4] ('e'): \"http\" takes no threshold; remove \"above\"/\"below\"",
    ]
    for part in expected:
        assert any(part in p for p in problems), (part, problems)
    assert all(p.startswith("servers.json: ") for p in problems)


# --- real receivers --------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records what is POSTed; `mode` says how it answers."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode, self.posts = mode, []
        self.changed = threading.Condition()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.changed:
                    owner.posts.append((self.path, dict(self.headers), json.loads(body)))
                    owner.changed.notify_all()
                if owner.mode == "hang":
                    time.sleep(30)
                status = {"fail": 500, "reject": 400}.get(owner.mode, 200)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, count: int, timeout: float = 15) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.posts) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(self.posts)} of {count} posts: {self.posts}"
                self.changed.wait(remaining)
            return list(self.posts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(mode: str = "ok") -> Receiver:
        made.append(Receiver(mode))
        return made[-1]
    yield make
    for receiver in made:
        receiver.close()


def alerting_dashboard(make_dashboard: Any, hook: Receiver, telegram: Receiver,
                       **extra: Any) -> Dashboard:
    return make_dashboard(
        [{"id": "alpha", "name": "Alpha", "group": "Web", "secret": SECRET}],
        notifiers=[{"name": "ops", "type": "webhook", "url": hook.url + "/sss",
                    "headers": {"Authorization": "Bearer hook-secret-1"}},
                   {"name": "phone", "type": "telegram", "token": "123456:tg-secret",
                    "chatId": "-100200300", "apiBase": telegram.url}],
        alerts=[{"name": "down", "metric": "offline", "for": "1s", "notify": ["ops", "phone"]},
                {"name": "cpu", "metric": "cpu", "above": 90, "notify": ["ops"]}], **extra)


def test_offline_and_back_reach_a_webhook_and_telegram(make_dashboard: Any,
                                                       receivers: Any) -> None:
    hook, telegram = receivers(), receivers()
    dash = alerting_dashboard(make_dashboard, hook, telegram)
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report(reportInterval=0.5)))
        wait_accepted(agent)
    # Offline at once (the connection closed); fires after `for` + the startup grace.
    (path, headers, firing), = hook.wait(1)
    assert path == "/sss" and headers["Authorization"] == "Bearer hook-secret-1"
    assert firing["state"] == "firing" and firing["alert"] == "down"
    assert firing["server"] == {"id": "alpha", "name": "Alpha", "group": "Web"}
    assert firing["text"].startswith("🔴 Alpha (Web) offline for")
    (tg_path, _, message), = telegram.wait(1)
    assert tg_path == "/bot123456:tg-secret/sendMessage"
    assert message["chat_id"] == "-100200300" and message["text"] == firing["text"]
    assert [a["alert"] for a in dash.get_json("/api/alerts")] == ["down"]
    assert 'sss_alert_firing{alert="down",id="alpha"} 1' in dash.get("/metrics")[2].decode()
    with dash.viewer() as viewer:
        alpha = server_in(recv_json(viewer), "alpha")
        assert [a["alert"] for a in alpha["alerts"]] == ["down"]
        with dash.agent("alpha") as agent:
            agent.send(json.dumps(go_report(cpuInfo={"percent": 97.0, "info": []},
                                            reportInterval=0.5)))
            posts = hook.wait(3)
            states = sorted((p[2]["alert"], p[2]["state"]) for p in posts[1:])
            assert states == [("cpu", "firing"), ("down", "resolved")]
            assert any(p[2]["text"].startswith("✅ Alpha (Web) back after") for p in posts)
            recv_until(viewer, lambda m: [a["alert"] for a in
                                          (server_in(m, "alpha") or {}).get("alerts", [])]
                       == ["cpu"])
    metrics = dash.get("/metrics")[2].decode()
    assert 'sss_alert_notifications_total{notifier="ops",result="sent"} 3' in metrics
    log = dash.log_text()
    assert "hook-secret-1" not in log and "tg-secret" not in log and hook.url not in log


def offline_fired(make_dashboard: Any, receivers: Any) -> tuple[Dashboard, Receiver]:
    """A dashboard whose agent came and went: its "down" alert has fired."""
    hook, telegram = receivers(), receivers()
    dash = alerting_dashboard(make_dashboard, hook, telegram)
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report(reportInterval=0.5)))
        wait_accepted(agent)
    hook.wait(1)
    return dash, hook


def test_restart_neither_refires_nor_forgets(make_dashboard: Any, receivers: Any) -> None:
    dash, hook = offline_fired(make_dashboard, receivers)
    for stop in ("graceful", "kill"):
        if stop == "graceful":
            assert dash.stop() == 0
        else:
            assert dash.process is not None
            dash.process.send_signal(signal.SIGKILL)
            dash.process.wait(10)
        dash.start()
        time.sleep(3)  # past the startup grace: still offline, still firing, no new message
        assert len(hook.posts) == 1, hook.posts
        assert [a["alert"] for a in dash.get_json("/api/alerts")] == ["down"]
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report(reportInterval=0.5)))
        (_, _, resolved) = hook.wait(2)[1]
        assert resolved["state"] == "resolved" and resolved["alert"] == "down"


def test_failing_receivers_are_retried_then_dropped(make_dashboard: Any,
                                                    receivers: Any) -> None:
    failing, hanging, rejecting = receivers("fail"), receivers("hang"), receivers("reject")
    refused = f"http://127.0.0.1:{free_port()}"
    dash = make_dashboard(
        [{"id": "alpha", "secret": SECRET}],
        notifiers=[{"name": "broken", "type": "webhook", "url": failing.url},
                   {"name": "closed", "type": "webhook", "url": refused},
                   {"name": "stuck", "type": "webhook", "url": hanging.url},
                   {"name": "picky", "type": "webhook", "url": rejecting.url}],
        alerts=[{"name": "cpu", "metric": "cpu", "above": 50,
                 "notify": ["broken", "closed", "stuck", "picky"]}])
    with dash.viewer() as viewer, dash.agent("alpha") as agent:
        recv_json(viewer)
        agent.send(json.dumps(go_report(cpuInfo={"percent": 99.0, "info": []})))
        assert len(failing.wait(3, timeout=20)) == 3  # three attempts, then given up
        dash.wait_for_log(r"alert delivery failed: notifier broken \(webhook\): HTTP 500 "
                          r"after 3 attempts")
        dash.wait_for_log(r"alert delivery failed: notifier closed \(webhook\): "
                          r"ConnectionRefusedError")
        hanging.wait(1)
        # A receiver that hangs holds only its own thread: reports still reach viewers fast.
        for percent in (60.0, 70.0, 80.0):
            sent = time.monotonic()
            agent.send(json.dumps(go_report(cpuInfo={"percent": percent, "info": []})))
            recv_until(viewer, lambda m, p=percent: (server_in(m, "alpha") or {}).get(
                "cpuInfo", {}).get("percent") == p)
            assert time.monotonic() - sent < 1.0
        # A 4xx will not change: one attempt, no retries.
        dash.wait_for_log(r"alert delivery failed: notifier picky \(webhook\): HTTP 400$")
        assert len(rejecting.posts) == 1
        # The hung receiver: 10 s per attempt, three attempts, then dropped (bounded: 50 s).
        dash.wait_for_log(r"alert delivery failed: notifier stuck \(webhook\): .*timed out "
                          r"after 3 attempts", timeout=50)
    metrics = dash.get("/metrics")[2].decode()
    for name in ("broken", "closed", "picky", "stuck"):
        assert f'sss_alert_notifications_total{{notifier="{name}",result="failed"}} 1' in metrics
    assert failing.url not in dash.log_text() and hanging.url not in dash.log_text()


def test_the_card_and_header_show_firing_alerts(make_dashboard: Any, receivers: Any,
                                                page_on: Any) -> None:
    dash, _ = offline_fired(make_dashboard, receivers)
    page = page_on(dash)
    alpha = card(page, "alpha")
    alpha.locator(".firing", has_text="🔥 down since ").wait_for(timeout=10_000)
    assert page.locator("#alerts").inner_text() == "1"
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report(reportInterval=0.5)))
        alpha.locator(".firing").wait_for(state="hidden", timeout=10_000)
        assert page.locator("#alerts").inner_text() == "0"


def test_test_notify_and_config_errors_from_the_command_line(tmp_path: Path,
                                                             receivers: Any) -> None:
    hook = receivers()
    config = tmp_path / "servers.json"

    def run(data: dict[str, Any], *args: str) -> subprocess.CompletedProcess:
        config.write_text(json.dumps(data))
        return subprocess.run([sys.executable, str(HERE / "dashboard.py"), "--config",
                               str(config), *args], capture_output=True, text=True, timeout=60)

    good = {"servers": [], "notifiers": [{"name": "ops", "type": "webhook", "url": hook.url}]}
    sent = run(good, "--test-notify", "ops")
    assert sent.returncode == 0 and sent.stdout.startswith("ok: sent a test message")
    assert "test message" in hook.wait(1)[0][2]["text"]
    missing = run(good, "--test-notify", "pager")
    assert missing.returncode == 1 and "no notifier named 'pager'" in missing.stdout
    down = {"servers": [], "notifiers": [{"name": "ops", "type": "webhook",
                                          "url": f"http://127.0.0.1:{free_port()}"}]}
    failed = run(down, "--test-notify", "ops")
    assert failed.returncode == 1 and "ConnectionRefusedError" in failed.stdout
    broken = run({"servers": [], "alerts": [{"name": "x", "metric": "cpu", "notify": []}]})
    assert broken.returncode == 2 and "alerts[0] ('x')" in broken.stderr
    with contextlib.suppress(ImportError):
        import apprise  # noqa: F401
        pytest.skip("apprise is installed here: the missing-package message cannot show")
    apprise_config = {"servers": [], "notifiers": [{"name": "chat", "type": "apprise",
                                                    "url": "json://127.0.0.1/"}]}
    needs = run(apprise_config)
    assert needs.returncode == 2 and "pip install apprise" in needs.stderr


def test_latency_and_loss_judge_one_target_or_the_worst() -> None:
    probes = [{"name": "CT Shanghai", "rtt": 182.0, "loss": 0.02},
              {"name": "Cloudflare", "rtt": 4.0, "loss": 0.0}]
    values = alerts.observed_values({"extraInfo": {"probes": probes}})
    assert values["latency"] == 182.0 and values["loss"] == 2.0  # the worst target
    assert values["latency:Cloudflare"] == 4.0 and values["loss:Cloudflare"] == 0.0
    to_ct = AlertRule("ct", "latency", 150, None, 0, (), None, ("ops",), "CT Shanghai")
    lossy = AlertRule("loss", "loss", 1, None, 0, (), None, ("ops",))
    to_cf = AlertRule("cf", "latency", 50, None, 0, (), None, ("ops",), "Cloudflare")
    evaluator = alerts.Evaluator(started=T0 - 3600)
    fired = judge(evaluator, (to_ct, lossy, to_cf), [seen(**values)], T0)
    assert sorted(event.text() for event in fired) == [
        "🔥 Web 1 (Frankfurt) latency to CT Shanghai 182 ms (above 150)",
        "🔥 Web 1 (Frankfurt) packet loss 2 % (above 1)"]
    config, _ = parse_config({
        "servers": [{"id": "web-1", "secret": SECRET}],
        "probes": {"targets": [{"name": "Cloudflare", "host": "1.1.1.1"}]},
        "notifiers": [{"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/"}],
        "alerts": [{"name": "cf", "metric": "latency", "above": 50, "target": "Cloudflare",
                    "notify": ["ops"]}]}, "servers.json")
    assert config.alerts[0].value_key == "latency:Cloudflare"
    with pytest.raises(ConfigError, match="field \"target\" names 'Nowhere'"):
        parse_config({"servers": [], "notifiers": [
            {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/"}],
            "alerts": [{"name": "x", "metric": "loss", "above": 5, "target": "Nowhere",
                        "notify": ["ops"]}]}, "servers.json")


def test_http_checks_fire_while_failing_and_certificates_below_days() -> None:
    def observed(*probes: dict[str, Any]) -> alerts.Observed:
        return seen(**alerts.observed_values({"extraInfo": {"probes": list(probes)}}))

    shop = {"name": "Shop", "status": 503, "loss": 1.0, "rtt": 20.0, "certDays": 5.5}
    home = {"name": "Home", "status": 200, "loss": 0.0, "certDays": 80.0}
    down = AlertRule("down", "http", None, None, 0, (), None, ("ops",), "Shop")
    any_down = AlertRule("any", "http", None, None, 0, (), None, ("ops",))
    home_down = AlertRule("home", "http", None, None, 0, (), None, ("ops",), "Home")
    cert = AlertRule("cert", "certificate", None, 14, 0, (), None, ("ops",))
    rules = (down, any_down, home_down, cert)
    evaluator = alerts.Evaluator(started=T0 - 3600)
    assert sorted(event.text() for event in judge(evaluator, rules, [observed(shop, home)],
                                                 T0)) == [
        "🔥 Web 1 (Frankfurt) HTTP check fails: status 503",  # the worst: the failing one
        "🔥 Web 1 (Frankfurt) HTTP check of Shop fails: status 503",
        "🔥 Web 1 (Frankfurt) certificate 6 days left (below 14 days)"]
    renewed = {"name": "Shop", "status": 200, "loss": 0.0, "certDays": 89.0}
    assert sorted(event.text() for event in judge(evaluator, rules, [observed(renewed, home)],
                                                 T0 + 60)) == [
        "✅ Web 1 (Frankfurt) HTTP check of Shop passes again after 1m",
        "✅ Web 1 (Frankfurt) HTTP check passes again after 1m",
        "✅ Web 1 (Frankfurt) certificate back to 80 days left after 1m"]
    silent = {"name": "Shop", "status": 0, "loss": 1.0, "error": "timeout"}
    assert [event.text() for event in judge(evaluator, (down,), [observed(silent)],
                                            T0 + 120)] == [
        "🔥 Web 1 (Frankfurt) HTTP check of Shop fails: no answer"]
