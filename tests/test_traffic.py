"""Tests for traffic.py: periods and counting as pure functions, then a real dashboard."""

from __future__ import annotations

import datetime
import json
import re
import signal
import time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import SECRET, Dashboard, card, go_report, server_in, wait_until
from test_alerts import Receiver

from sss import traffic
from sss.config import ConfigError, parse_config

UTC = datetime.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: Any = UTC) -> int:
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp())


# --- periods (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(("now", "reset_day", "start", "end"), [
    ("2027-01-20 10:00", 1, "2027-01-01 00:00", "2027-02-01 00:00"),
    ("2027-01-01 00:00", 1, "2027-01-01 00:00", "2027-02-01 00:00"),  # the first second
    ("2026-12-31 23:59", 1, "2026-12-01 00:00", "2027-01-01 00:00"),
    ("2027-01-14 23:59", 15, "2026-12-15 00:00", "2027-01-15 00:00"),
    ("2027-01-15 00:00", 15, "2027-01-15 00:00", "2027-02-15 00:00"),
    ("2027-02-10 12:00", 31, "2027-01-31 00:00", "2027-02-28 00:00"),  # the last day
    ("2027-03-01 12:00", 31, "2027-02-28 00:00", "2027-03-31 00:00"),
    ("2028-02-29 12:00", 31, "2028-02-29 00:00", "2028-03-31 00:00"),  # a leap year
    ("2028-02-28 12:00", 29, "2028-01-29 00:00", "2028-02-29 00:00"),
    ("2027-04-30 23:00", 30, "2027-04-30 00:00", "2027-05-30 00:00"),
])
def test_period_boundaries(now: str, reset_day: int, start: str, end: str) -> None:
    assert traffic.period(at(now), reset_day, UTC) == (at(start), at(end))


def test_periods_follow_the_zone_through_a_dst_change() -> None:
    # Berlin moves from CET (+1) to CEST (+2) on 2027-03-28: midnight stays midnight.
    start, end = traffic.period(at("2027-03-20 12:00", BERLIN), 1, BERLIN)
    assert start == at("2027-03-01 00:00", BERLIN) == at("2027-02-28 23:00")
    assert end == at("2027-04-01 00:00", BERLIN) == at("2027-03-31 22:00")
    assert end - start == 31 * 86400 - 3600
    # In UTC terms the Berlin period starts before the UTC one.
    assert traffic.period(at("2027-02-28 23:30"), 1, BERLIN)[0] == start
    assert traffic.period(at("2027-02-28 23:30"), 1, UTC)[0] == at("2027-02-01 00:00")


def test_counting_through_reboots_resets_and_gaps() -> None:
    meter = traffic.Meter(traffic.Period(0, 10**10))
    meter.count(1000, 500, boot_time=100)  # the first report: only a baseline
    assert (meter.current.received, meter.current.sent) == (0, 0)
    meter.count(1500, 700, boot_time=100)
    assert (meter.current.received, meter.current.sent) == (500, 200)
    meter.count(300, 50, boot_time=5000)  # rebooted: counters dropped, count from zero
    assert (meter.current.received, meter.current.sent) == (800, 250)
    meter.count(10**6, 10**5, boot_time=5000)  # a long offline gap: the kernel kept counting
    assert meter.current.received == 800 + 10**6 - 300
    meter.count(2 * 10**6, 10**5 + 5, boot_time=9000)  # rebooted meanwhile, counters higher
    assert meter.current.received == 800 + 10**6 - 300 + 2 * 10**6
    meter.count(10, 10**5 + 10, boot_time=9000)  # other NICs counted now: lower, from zero
    assert meter.current.received == 800 + 10**6 - 300 + 2 * 10**6 + 10
    assert traffic.increase(None, 5, False) == 0 and traffic.increase(9, 5, False) == 5
    assert [traffic.used_bytes(3, 5, mode) for mode in traffic.COUNT_MODES] == [8, 5, 3, 5]


def test_a_new_period_starts_and_twelve_are_kept() -> None:
    meter = traffic.Meter(traffic.Period(*traffic.period(at("2027-01-05 00:00"), 1, UTC)))
    for month in range(1, 16):
        year, index = 2027 + (month - 1) // 12, (month - 1) % 12 + 1
        meter.roll(at(f"{year}-{index:02d}-10 00:00"), 1, UTC)
        meter.count(month * 1000, 0, None)
    assert len(meter.past) == traffic.KEPT_PERIODS
    assert meter.current.start == at("2028-03-01 00:00")
    assert meter.past[0].start == at("2028-02-01 00:00")


def test_a_period_never_goes_back_to_an_earlier_one() -> None:
    """A wall clock set back five days across the reset keeps counting into the current
    period: before, it started an earlier one at 0 B and moved the month's count to the
    past, where the quota alert no longer saw it."""
    meter = traffic.Meter(traffic.Period(*traffic.period(at("2027-01-02 00:00"), 1, UTC)))
    meter.count(10**9, 0, None)
    meter.count(3 * 10**9, 0, None)
    meter.roll(at("2026-12-28 00:00"), 1, UTC)
    assert meter.current.start == at("2027-01-01 00:00") and meter.past == []
    assert meter.current.received == 2 * 10**9
    meter.roll(at("2027-02-01 00:00"), 15, UTC)  # a new reset day: from the period's end
    assert (meter.current.start, meter.current.end) == (at("2027-02-01 00:00"),
                                                        at("2027-02-15 00:00"))


def test_sizes_and_their_errors_name_server_and_field() -> None:
    assert traffic.parse_size("2 TiB") == 2 * 2**40
    assert traffic.parse_size("1.5GB") == 1_500_000_000 and traffic.parse_size("10 kB") == 10_000
    assert traffic.parse_size("512 KiB") == 512 * 1024 and traffic.parse_size(4096) == 4096
    for bad in ("2 TB/month", "-5 GB", "lots", 0, True, "5 tib"):
        assert traffic.parse_size(bad) is None, bad
    with pytest.raises(ConfigError) as caught:
        parse_config({"timezone": "Mars/Olympus", "servers": [
            {"id": "web-1", "secret": SECRET, "traffic": {"limit": "2 TB/month"}},
            {"id": "web-2", "secret": SECRET, "traffic": {"resetDay": 32, "count": "both"}},
            {"id": "web-3", "secret": SECRET, "expires": "next year", "price": "x" * 41}]},
            "servers.json")
    problems = "\n".join(caught.value.problems)
    for part in ("servers[0] (id 'web-1'): field \"traffic.limit\" must be bytes or a number",
                 "servers[1] (id 'web-2'): field \"traffic.resetDay\" must be a day of the month",
                 "servers[1] (id 'web-2'): field \"traffic.count\" must be one of sum, out, in",
                 "servers[2] (id 'web-3'): field \"expires\" must be a date like \"2027-03-01\"",
                 "servers[2] (id 'web-3'): field \"price\" must be text of at most 40",
                 'field "timezone" must be an IANA time zone'):
        assert part in problems, part
    config, _ = parse_config({"timezone": "Europe/Berlin", "servers": [
        {"id": "web-1", "secret": SECRET, "traffic": {"limit": "2 TiB", "resetDay": 15,
                                                      "count": "max"},
         "expires": "2027-03-01", "price": "4.50 EUR/month"}]}, "servers.json")
    web = config.servers["web-1"]
    assert web.traffic == traffic.Plan(2 * 2**40, 15, "max") and web.expires == "2027-03-01"
    assert config.timezone == "Europe/Berlin"


def test_days_left() -> None:
    assert traffic.days_left("2027-03-01", at("2027-02-27 23:00"), UTC) == 2
    assert traffic.days_left("2027-03-01", at("2027-02-27 23:30"), BERLIN) == 1  # 00:30 there
    assert traffic.days_left("2027-03-01", at("2027-03-03 12:00"), UTC) == -2


# --- end to end -------------------------------------------------------------------


def transfer_report(received: int, sent: int, boot: int = 1764000000) -> str:
    report = go_report(networkInfo={"netInSpeed": 0, "netOutSpeed": 0,
                                    "netInTransfer": received, "netOutTransfer": sent})
    report["hostInfo"]["bootTime"] = boot
    return json.dumps(report)


def traffic_of(dash: Dashboard) -> dict[str, Any]:
    return server_in({"servers": dash.get_json("/api/servers")}, "web-1")["traffic"]


def saved_meter(dash: Dashboard, sid: str) -> dict[str, Any]:
    """`sid`'s meter as traffic.json holds it ({} before the first save)."""
    try:
        return json.loads((dash.data / "traffic.json").read_text()).get(sid, {})
    except (OSError, ValueError):  # not there yet (it is replaced whole, never half)
        return {}


def wait_traffic(dash: Dashboard, used: int, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (seen := traffic_of(dash))["used"] != used:
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)
    return seen


def test_counting_survives_reboots_and_a_kill_9(make_dashboard: Any, page_on: Any) -> None:
    hook = Receiver()
    dash: Dashboard = make_dashboard(
        [{"id": "web-1", "name": "Web 1", "secret": SECRET,
          "traffic": {"limit": "10 KiB", "resetDay": 1}, "expires": "2099-01-01",
          "price": "4.50 EUR/month"}],
        notifiers=[{"name": "ops", "type": "webhook", "url": hook.url}],
        alerts=[{"name": "quota", "metric": "traffic", "above": 80, "notify": ["ops"]}],
        start=False).start("--history-resolution", "1")
    with dash.agent("web-1") as agent:
        agent.send(transfer_report(10**9, 10**9))  # the baseline: counts nothing
        agent.send(transfer_report(10**9 + 3000, 10**9 + 1000))
        first = wait_traffic(dash, 4000)
        assert (first["in"], first["out"], first["limit"]) == (3000, 1000, 10 * 1024)
        assert first["periodEnd"] > time.time() > first["periodStart"]
        agent.send(transfer_report(1000, 0, boot=1764009999))  # the server rebooted
        wait_traffic(dash, 5000)
    wait_until(lambda: saved_meter(dash, "web-1").get("last_in") == 1000)  # one save
    assert dash.process is not None
    dash.process.send_signal(signal.SIGKILL)
    dash.process.wait(10)
    dash.start("--history-resolution", "1")
    assert traffic_of(dash)["used"] == 5000  # kept through the kill -9
    with dash.agent("web-1") as agent:
        agent.send(transfer_report(1000, 0, boot=1764009999))  # the same counters: no change
        agent.send(transfer_report(4000, 500, boot=1764009999))  # the gap is counted
        wait_traffic(dash, 8500)
        (_, _, fired), = hook.wait(1)  # 8,500 of 10,240 bytes: over 80 %
        assert fired["alert"] == "quota" and fired["state"] == "firing"
        assert fired["text"].startswith("🔥 Web 1 traffic 83 %")
        periods = dash.get_json("/api/traffic?id=web-1")["periods"]
        assert periods[0]["used"] == 8500 and len(periods) == 1
        assert dash.get("/api/traffic?id=ghost")[0] == 404
        metrics = dash.get("/metrics")[2].decode()
        assert 'sss_traffic_period_bytes{id="web-1",name="Web 1",direction="in"} 7000' in metrics
        assert 'sss_traffic_limit_bytes{id="web-1",name="Web 1"} 10240' in metrics
        page = page_on(dash)
        web = card(page, "web-1")
        web.locator(".quota").wait_for(timeout=10_000)
        text = web.locator(".quota").inner_text()
        assert "8.30 KiB / 10.0 KiB" in text and "resets in" in text
        assert "bad" not in web.locator(".quota .fill").get_attribute("class")
        assert "warn" in web.locator(".quota .fill").get_attribute("class")  # 83 %: amber
        assert re.search(r"expires in \d+ d", web.locator(".plan").inner_text())
        assert "4.50 EUR/month" in web.locator(".plan").inner_text()
    hook.close()
