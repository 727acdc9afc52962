"""Tests for history.py: pure folding, rows, rollups and availability, then a real dashboard."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import bench
import pytest
from conftest import (
    SECRET,
    Dashboard,
    go_report,
    recv_json,
    recv_until,
    server_in,
    wait_accepted,
    wait_until,
)

from sss import history
from sss.reports import validate_report

HOUR = 3600
T0 = 1_795_000_000 // HOUR * HOUR  # an hour boundary, as a fake clock's zero


def report(cpu: float, interval: float = 5, **fields: Any) -> dict[str, Any]:
    """A validated record, as the hub hands it to history."""
    return validate_report(json.dumps(go_report(cpuInfo={"percent": cpu, "info": []},
                                                reportInterval=interval, **fields)))


# --- folding and rows (pure) -------------------------------------------------------


def fold(store: history.History, sid: str, record: dict[str, Any], second: float) -> None:
    """A report `second` seconds after T0: monotonic and wall clocks agree here."""
    store.fold(sid, record, second, T0 + second)


def row_of(bucket: history.Bucket, sid: str = "web-1") -> dict[str, Any]:
    return dict(zip(history.COLUMNS, history.bucket_row(history.FINE, sid, bucket)))


def test_reports_fold_into_one_row_per_bucket() -> None:
    store = history.History(Path("/nonexistent"), resolution=60)
    store.watch(0.0)
    for second, cpu in ((0, 10.0), (5, 30.0), (10, 20.0), (65, 90.0)):
        fold(store, "web-1", report(cpu), second)
    closed = store.take_closed(T0 + 61)
    assert [start for start, _ in closed] == [T0]  # the bucket from 60 s on is still open
    row = row_of(closed[0][1]["web-1"])
    assert row["n"] == 3 and row["cpu"] == pytest.approx(20.0) and row["cpu_max"] == 30.0
    assert row["memory"] == 50.0 and row["net_in"] == 1000 and row["load1"] == 0.5
    assert row["net_in_total"] == 10**9 and row["net_out_total"] == 2 * 10**9
    assert row["tcp"] is None and row["tcp_max"] is None  # the Go agent sends no extraInfo
    assert row["seen"] == T0 + 10
    # 0-10 s vouched for by the reports; 10-60 s offline (the next report came 55 s after
    # the last, past offline_after, so it vouches for its own 5 s only, in the next step).
    assert row["online"] == 10 and row["watched"] == 60
    later = row_of(store.take_closed(T0 + 121)[0][1]["web-1"])
    assert (later["n"], later["online"], later["watched"]) == (1, 5.0, 5.0)


def test_last_views_are_written_when_offline_at_a_stop_and_every_ten_minutes() -> None:
    store = history.History(Path("/nonexistent"), resolution=60)
    store.unwritten.update({"up", "down"})
    assert sorted(store.views_due(T0, online={"up"}, final=False)) == ["down", "up"]  # first
    store.unwritten.update({"up", "down"})
    assert store.views_due(T0 + 60, online={"up"}, final=False) == ["down"]  # went offline
    store.unwritten.add("up")
    assert store.views_due(T0 + history.LATEST_SECONDS - 1, online={"up"}, final=False) == []
    assert store.views_due(T0 + history.LATEST_SECONDS, online={"up"}, final=False) == ["up"]
    store.unwritten.add("up")
    assert store.views_due(T0 + history.LATEST_SECONDS + 60, online={"up"}, final=True) == [
        "up"]  # a graceful stop writes every view not written yet
    assert store.views_due(T0 + 2 * history.LATEST_SECONDS, online=(), final=True) == []
    # A dashboard starting under a big fleet writes them over several steps, offline first.
    fleet = [f"srv-{i}" for i in range(history.LATEST_PER_STEP + 5)]
    store.unwritten.update(fleet)
    first = store.views_due(T0, online=set(fleet[1:]), final=False)
    assert len(first) == history.LATEST_PER_STEP and first[0] == "srv-0"
    assert len(store.views_due(T0 + 60, online=set(fleet), final=False)) == 5


def test_a_report_vouches_for_the_time_since_the_one_before_if_it_came_in_time() -> None:
    assert history.vouched_seconds(2, 5) == 2  # reports closer than the interval
    assert history.vouched_seconds(7, 5) == 7  # late, but within offline_after
    assert history.vouched_seconds(100, 5) == 5  # after an outage: only its own interval
    assert list(history.step_pieces(T0 + 60, 60.0, 60.0, 60)) == [(T0, 60.0, 60.0)]
    assert list(history.step_pieces(T0 + 61, 3.0, 1.5, 60)) == [(T0 + 60, 1.0, 1.0),
                                                                (T0, 2.0, 0.5)]
    # A value some reports lack is averaged over those that had it; other buckets keep
    # sharing the count of none missing.
    values = history.metric_values(report(1, interval=5))
    partial = history.Bucket(T0)
    partial.add(values, (None, None), T0)
    partial.add((None, *values[1:]), (None, None), T0 + 5)
    assert history.bucket_row(history.FINE, "x", partial)[6:8] == (values[0], values[0])
    assert partial.missing[0] == 1 and not any(history.Bucket(T0).missing)


def test_a_bucket_holds_its_sums_and_maxima_without_an_object_each() -> None:
    """Every server holds a bucket, two while a step is written: with 24 float objects in
    two lists one took 870 bytes (about 600 in arrays of doubles)."""
    values = history.metric_values(report(1, interval=5))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buckets = [history.Bucket(T0) for _ in range(100)]
        for bucket in buckets:
            bucket.add(values, (None, None), T0)
            bucket.add(values, (None, None), T0 + 5)
        used = (tracemalloc.get_traced_memory()[0] - before) / len(buckets)
    finally:
        tracemalloc.stop()
    assert used < 700
    assert history.bucket_row(history.FINE, "x", buckets[0])[6:8] == (values[0], values[0])


def test_plans_return_at_most_about_1500_points() -> None:
    for name, seconds in history.RANGES.items():
        for resolution in (1, 60, 3600):
            chosen = history.plan(seconds, resolution, T0 + 1234)
            points = (chosen.end - chosen.start) // chosen.step
            assert points <= history.MAX_POINTS + 1, (name, resolution, points)
            assert chosen.end > T0 + 1234 >= chosen.end - chosen.step
            assert (chosen.tier > history.FINE) == (seconds > 24 * HOUR)
    assert history.plan(HOUR, 60, T0).step == 60
    assert history.plan(365 * 24 * HOUR, 60, T0).step == 6 * HOUR


def test_columnar_answer_has_a_slot_for_every_step_and_null_in_gaps() -> None:
    chosen = history.Plan(T0, T0 + 300, 60, tier=history.FINE)
    metrics = [None] * (2 * len(history.METRICS))
    metrics[0:2] = [12.345, 20.0]
    rows = [(T0 + 60, 12, 60.0, 60.0, *metrics), (T0 + 180, 0, 0.0, 60.0,
                                                  *[None] * len(metrics))]
    answer = json.loads(history.columnar("web-1", "1h", chosen, rows))
    assert answer["time"] == [T0, T0 + 60, T0 + 120, T0 + 180, T0 + 240]
    assert answer["cpu"] == [None, 12.35, None, None, None]
    assert answer["cpuMax"] == [None, 20.0, None, None, None]
    assert answer["online"] == [None, 1.0, None, 0.0, None]  # offline is 0, a gap is null
    expected = {"id", "range", "step", "time", "cpu", "cpuMax", "memory", "swap", "disk",
                "load1", "netIn", "netOut", "diskRead", "diskWrite", "tcp", "udp", "processes",
                "temperature",
                "online"}
    assert set(answer) == expected


# --- the writer: rollups, retention and availability with an injected clock -------------


def step(store: history.History, second: float, servers: list[str], final: bool = False,
         wall: float | None = None, kept_since: float | None = None) -> Any:
    """History.step `second` seconds after T0 (monotonic), at wall time T0 + second unless
    `wall` says otherwise; every server's view is written."""
    async def run() -> Any:
        return await store.step(
            asyncio.get_running_loop(), second, T0 + second if wall is None else wall,
            servers, lambda sid: (int(T0 + second), '{"cpuInfo":{"percent":1}}'), final,
            (), kept_since)
    return asyncio.run(run())


def rows(store: history.History, tier: int = history.FINE,
         columns: str = "server, t, n, online, watched") -> list[tuple[Any, ...]]:
    return store.writer.connection().execute(
        f"SELECT {columns} FROM samples WHERE tier = ? ORDER BY server, t", (tier,)).fetchall()


def test_rollups_availability_and_retention(tmp_path: Path) -> None:
    store = history.History(tmp_path, resolution=60, days=3)
    store.watch(0.0)
    # Two hours: "up" reports every 5 s throughout; "flaky" only in the first 30 minutes.
    servers = ["up", "flaky", "never"]
    for second in range(0, 2 * HOUR, 5):
        fold(store, "up", report(40.0), second)
        if second < 30 * 60:
            fold(store, "flaky", report(80.0), second)
        if second % 60 == 55:
            step(store, second + 5, servers)
    hourly = rows(store, history.HOURLY, "server, t, n, online, watched, cpu, cpu_max")
    # "up": its report at the hour vouches for the hour's last 5 s (added to the hourly
    # row after the hour was rolled up); the second hour's last 5 s wait for a report.
    # "flaky": offline from its last report on.
    assert hourly == [("flaky", T0, 360, 1795.0, 3600.0, 80.0, 80.0),
                      ("flaky", T0 + HOUR, 0, 0.0, 3600.0, None, None),
                      ("up", T0, 720, 3600.0, 3600.0, 40.0, 40.0),
                      ("up", T0 + HOUR, 720, 3595.0, 3595.0, 40.0, 40.0)]
    fields = step(store, 2 * HOUR + 60, servers)
    assert set(fields) == {"up", "flaky"}  # never reported: no availability yet
    flaky = {field: json.loads(value) for field, value in fields["flaky"].items()}
    share = round(1795 / 7260 * 100, 2)  # half an hour online of two hours and a minute
    assert flaky["availability"] == {"24h": share, "30d": share}
    assert flaky["last24h"][-3:] == [49.86, 0.0, 0.0] and flaky["last24h"][0] is None
    up = {field: json.loads(value) for field, value in fields["up"].items()}
    assert up["availability"]["24h"] == round(7195 / 7260 * 100, 2)  # then silent

    # Retention: fine rows go after 48 h, hourly rows after --history-days (3 here).
    db = store.writer.connection()
    step(store, 49 * HOUR, ["up", "flaky"])
    assert db.execute("SELECT MIN(t) FROM samples WHERE tier = 0").fetchone()[0] >= T0 + HOUR
    assert db.execute("SELECT COUNT(*) FROM samples WHERE tier = 1 AND t = ?",
                      (T0,)).fetchone()[0] == 2
    step(store, 4 * 24 * HOUR, ["up", "flaky"])
    assert db.execute("SELECT COUNT(*) FROM samples WHERE tier = 1 AND t < ?",
                      (T0 + 24 * HOUR,)).fetchone()[0] == 0
    store.close()


def test_a_range_reads_hourly_rows_and_the_hour_not_rolled_up_yet(tmp_path: Path) -> None:
    store = history.History(tmp_path, resolution=60)
    store.watch(0.0)
    for second in range(0, 2 * HOUR + 600, 10):
        fold(store, "web-1", report(second / 100), second)
        if second % 60 == 50:
            step(store, second + 10, ["web-1"])
    week = json.loads(store.query("web-1", "7d", T0 + 2 * HOUR + 600))
    assert week["step"] == HOUR
    filled = [(t, cpu) for t, cpu in zip(week["time"], week["cpu"]) if cpu is not None]
    assert [t for t, _ in filled] == [T0, T0 + HOUR, T0 + 2 * HOUR]  # the last from fine rows
    assert filled[2][1] == pytest.approx((7200 + 7790) / 2 / 100, abs=0.01)
    assert [week["online"][week["time"].index(t)] for t, _ in filled] == [1.0, 1.0, 1.0]
    store.close()


# --- end to end -----------------------------------------------------------------


def step_times(dash: Dashboard, sid: str = "alpha") -> list[int]:
    """The steps of `sid` written to history.db (fine rows), read as a reader would."""
    if not (dash.data / "history.db").exists():
        return []
    db = sqlite3.connect(f"file:{dash.data / 'history.db'}?mode=ro", uri=True)
    try:
        return [t for t, in db.execute(
            "SELECT t FROM samples WHERE tier = 0 AND server = ? ORDER BY t", (sid,))]
    finally:
        db.close()


def written_through(dash: Dashboard, wall: float, resolution: int = 1) -> None:
    """Until the step holding wall time `wall` is on disk."""
    wait_until(lambda: (step_times(dash) or [0])[-1] >= wall // resolution * resolution)


def view_written(dash: Dashboard, sid: str = "alpha") -> dict[str, Any] | None:
    """The last view of `sid` written to history.db (written as it goes offline)."""
    db = sqlite3.connect(f"file:{dash.data / 'history.db'}?mode=ro", uri=True)
    try:
        found = db.execute("SELECT record FROM latest WHERE server = ?", (sid,)).fetchone()
        return json.loads(found[0]) if found else None
    finally:
        db.close()


def start_with_history(make_dashboard: Any, *extra: str) -> Dashboard:
    dash: Dashboard = make_dashboard(start=False)
    return dash.start("--history-resolution", "1", *extra)


def test_history_end_to_end_survives_kill_9(make_dashboard: Any, make_agent: Any) -> None:
    dash = start_with_history(make_dashboard)
    reporter = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                          "--secret", SECRET, "--interval", "1", "--min-interval", "1",
                          "--no-adaptive")
    def points() -> list[Any]:
        return [c for c in dash.get_json("/api/history?id=alpha&range=1h")["cpu"]
                if c is not None]
    wait_until(lambda: len(points()) >= 4)
    answer = dash.get_json("/api/history?id=alpha&range=1h")
    assert answer["id"] == "alpha" and answer["range"] == "1h"
    assert all(0 <= c <= 100 for c in points())
    assert reporter.stop() == 0
    before = dash.get_json("/api/history?id=alpha&range=1h")
    last_seen = server_in({"servers": dash.get_json("/api/servers")}, "alpha")
    written_through(dash, last_seen["lastReportTime"])
    wait_until(lambda: (view_written(dash) or {}).get("cpuInfo") == last_seen["cpuInfo"])
    assert dash.process is not None
    dash.process.send_signal(signal.SIGKILL)
    dash.process.wait(10)
    dash.start("--history-resolution", "1")
    after = dash.get_json("/api/history?id=alpha&range=1h")
    kept = {t: c for t, c in zip(before["time"], before["cpu"]) if c is not None}
    del kept[max(kept)]  # its slot may have been half written when it was read
    restored = {t: c for t, c in zip(after["time"], after["cpu"]) if c is not None}
    assert kept and kept.items() <= restored.items()
    alpha = server_in({"servers": dash.get_json("/api/servers")}, "alpha")
    assert alpha["online"] is False and alpha["lastReportTime"] == last_seen["lastReportTime"]
    assert alpha["cpuInfo"] == last_seen["cpuInfo"]  # the last values, not "waiting"
    assert alpha["availability"]["24h"] is not None and len(alpha["last24h"]) == 24
    assert dash.get_json("/healthz")["history"] == "ok"
    assert dash.get("/api/history?id=ghost&range=1h")[0] == 404
    status, _, body = dash.get("/api/history?id=alpha&range=2y")
    assert status == 400 and b"1h, 6h, 24h, 7d, 30d, 1y" in body


def test_graceful_stop_keeps_the_open_bucket(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False).start("--history-resolution", "3600")
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report(cpuInfo={"percent": 42.0, "info": []})))
        wait_accepted(agent)
    assert dash.stop() == 0
    db = sqlite3.connect(dash.data / "history.db")
    assert db.execute("SELECT cpu FROM samples WHERE server = 'alpha'").fetchall() == [(42.0,)]


def test_no_history_and_a_read_only_data_directory(make_dashboard: Any, tmp_path: Path) -> None:
    off: Dashboard = make_dashboard(start=False).start("--no-history")
    assert off.get_json("/healthz")["history"] == "off"
    assert off.get("/api/history?id=alpha&range=1h")[0] == 404
    assert not (off.data / "history.db").exists()

    # A data directory that cannot be created (its parent is a file: this holds for root
    # too), then a corrupt database: one clear line each, and the live page keeps working.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "history.db").write_bytes(b"this is not a database" * 100)
    for data, advice in ((blocker / "data", "writable"), (corrupt, "move the file aside")):
        dash: Dashboard = make_dashboard(start=False, history=True).start("--data", str(data))
        line = dash.wait_for_log("ERROR history: ")
        assert str(data / "history.db") in line and advice in line
        with dash.viewer() as viewer, dash.agent("alpha") as agent:
            recv_json(viewer)
            agent.send(json.dumps(go_report()))
            update = recv_until(viewer, lambda m: server_in(m, "alpha"))
            assert server_in(update, "alpha")["online"] is True  # the live page works
        assert dash.get_json("/healthz")["history"].startswith(str(data / "history.db"))
        assert dash.get("/api/history?id=alpha&range=1h")[0] in (503,)
        time.sleep(2.5)  # steps keep retrying, and say nothing new while nothing changed
        assert dash.count_log("ERROR history: ") == 1
        assert "Traceback" not in dash.log_text()


def test_fold_costs_no_more_than_the_hub_already_spends() -> None:
    """A ratio within one run, not a wall-clock limit: folding is cheaper than validating."""
    frame = json.dumps(go_report(reportInterval=5))
    record = validate_report(frame)
    store = history.History(Path("/nonexistent"), resolution=60)
    rounds = 20_000

    def timed(work: Any) -> float:
        started = time.perf_counter()
        for i in range(rounds):
            work(i)
        return time.perf_counter() - started

    validating = timed(lambda i: validate_report(frame))
    folding = timed(lambda i: fold(store, f"s{i % 100}", record, i * 0.01))
    assert folding < validating, (folding, validating)


def test_history_step_does_not_block_the_loop(tmp_path: Path) -> None:
    """2,000 servers' buckets are written on the writer thread while the loop keeps ticking."""
    store = history.History(tmp_path, resolution=60)
    store.watch(0.0)
    record = report(10)
    for i in range(2000):
        fold(store, f"srv-{i}", record, 1)

    async def measure() -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1
        task = asyncio.ensure_future(ticker())
        fields = await store.step(loop, 61, T0 + 61, [f"srv-{i}" for i in range(2000)],
                                  lambda sid: (T0, json.dumps(record)))
        task.cancel()
        return ticks, fields
    ticks, fields = asyncio.run(measure())
    assert fields is not None and len(fields) == 2000
    assert ticks >= 1  # the loop ran while the thread wrote
    db = sqlite3.connect(tmp_path / "history.db")
    assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 2000
    assert db.execute("SELECT COUNT(*) FROM latest").fetchone()[0] == history.LATEST_PER_STEP
    store.close()


def test_every_storage_problem_is_one_line_naming_the_file_and_what_to_do() -> None:
    path = Path("/var/lib/sss-dashboard/history.db")
    for error, todo in ((sqlite3.OperationalError("attempt to write a readonly database"),
                         "writable"),
                        (PermissionError(13, "Permission denied"), "writable"),
                        (sqlite3.OperationalError("database or disk is full"), "free disk space"),
                        (sqlite3.DatabaseError("file is not a database"), "move the file aside"),
                        (sqlite3.OperationalError("database is locked"), "another process")):
        line = history.advice(path, error)
        assert line.startswith(f"{path}: ") and todo in line and "\n" not in line


def test_the_cached_view_fields_equal_the_plain_computation() -> None:
    ledger = history.Ledger()
    for minute in range(0, 26 * 60, 7):
        start = T0 + minute * 60
        ledger.add("web-1", start, 60.0 if minute % 3 else 0.0, 60.0)
        now = start + 61
        expected = history.availability(ledger.day("web-1"), ledger.month.get(
            "web-1", (0.0, 0.0)), now)
        assert {field: json.loads(value)
                for field, value in ledger.json("web-1", now).items()} == expected
    # Seconds from before the day it holds (the clock went back) count in the month only.
    day, month = ledger.day("web-1"), ledger.month["web-1"]
    ledger.add("web-1", T0, 60.0, 60.0)
    assert ledger.day("web-1") == day and ledger.month["web-1"] == (month[0] + 60, month[1] + 60)


def test_a_step_without_a_report_counts_as_its_next_report_says(tmp_path: Path) -> None:
    """Reports every 60 s at a 60 s resolution fall either side of some steps: a step
    without one is settled by the next report (online: it came in time), or offline once
    the server's silence is past offline_after."""
    store = history.History(tmp_path, resolution=60)
    store.watch(0.0)
    for sid in ("steady", "gone"):
        fold(store, sid, report(5, interval=60), 30)
    step(store, 61, ["steady", "gone"])
    step(store, 121, ["steady", "gone"])  # nobody reported in this step
    fold(store, "steady", report(5, interval=60), 150)
    step(store, 181, ["steady", "gone"])  # "gone" is past offline_after (125 s) now
    assert rows(store) == [("gone", T0, 1, 30.0, 60.0), ("gone", T0 + 60, 0, 0.0, 60.0),
                           ("gone", T0 + 120, 0, 0.0, 60.0),
                           ("steady", T0, 1, 60.0, 60.0), ("steady", T0 + 60, 0, 60.0, 60.0),
                           ("steady", T0 + 120, 1, 30.0, 30.0)]
    store.close()


def test_probe_history_per_target_rolls_up_and_answers_every_range(tmp_path: Path) -> None:
    store = history.History(tmp_path, resolution=60, days=3)
    store.watch(0.0)
    # Two hours at one report every 10 s; "CT" answers slowly in the first hour and loses
    # half its probes in the second; "Hole" never answers.
    for second in range(0, 2 * HOUR, 10):
        slow = second < HOUR
        probes = [{"name": "CT", "rtt": 180.0 if slow else 20.0, "loss": 0.0 if slow else 0.5},
                  {"name": "Hole", "loss": 1.0}]
        fold(store, "web", report(10.0, extraInfo={"probes": probes}), second)
        if second % 60 == 50:
            step(store, second + 10, ["web"])
    db = store.writer.connection()
    hourly = db.execute("SELECT target, t, n, rtt, rtt_max, loss FROM probe_samples "
                        "WHERE tier = 1 ORDER BY target, t").fetchall()
    assert hourly == [("CT", T0, 360, 180.0, 180.0, 0.0), ("CT", T0 + HOUR, 360, 20.0, 20.0, 0.5),
                      ("Hole", T0, 360, None, None, 1.0), ("Hole", T0 + HOUR, 360, None, None, 1.0)]
    day = json.loads(store.query("web", "24h", T0 + 2 * HOUR))
    ct, hole = day["probes"]["CT"], day["probes"]["Hole"]
    assert len(ct["rtt"]) == len(day["time"])
    assert [v for v in ct["rtt"] if v is not None] == [180.0] * 60 + [20.0] * 60
    assert [v for v in ct["loss"] if v is not None][-1] == 0.5
    assert set(hole["rtt"]) == {None} and {v for v in hole["loss"] if v is not None} == {1.0}
    week = json.loads(store.query("web", "7d", T0 + 2 * HOUR))
    assert [v for v in week["probes"]["CT"]["rtt"] if v is not None] == [180.0, 20.0]
    assert "probes" not in json.loads(store.query("other", "1h", T0 + 2 * HOUR))
    store.close()


# --- availability and rows across restarts and clock jumps (pure, time passed in) -------


class Agent:
    """An agent reporting every `interval` s with a little jitter, into one history at a
    time; counts what it sent."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval, self.sent, self.next = interval, 0, 0.0

    def report_until(self, store: history.History, until: float, first: float) -> None:
        self.next = max(self.next, first)
        while self.next < until:
            fold(store, "web", report(10.0, interval=self.interval), self.next)
            self.sent += 1
            self.next += self.interval * (0.9 + 0.2 * ((self.sent * 7919) % 13) / 13)


def run_steps(store: history.History, agent: Agent, start: float, end: float,
              final_at: float | None = None) -> None:
    """Steps at every boundary in (start, end], the agent reporting in between; a
    graceful stop at `final_at`."""
    boundary = (start // 60 + 1) * 60
    while boundary <= end:
        stop = final_at if final_at is not None and final_at < boundary + 0.01 else None
        agent.report_until(store, stop if stop is not None else boundary + 0.01, start)
        if stop is not None:
            step(store, stop, ["web"], final=True)
            return
        step(store, boundary + 0.01, ["web"])
        boundary += 60
    if final_at is not None:
        agent.report_until(store, final_at, start)
        step(store, final_at, ["web"], final=True)


@pytest.mark.parametrize("started, stopped, back", [(0.3, 610.0, 0.27), (17.0, 575.5, 3.0),
                                                    (59.9, 599.95, 1.0)])
def test_an_always_reporting_server_is_100_percent_whatever_the_dashboard_did(
        tmp_path: Path, started: float, stopped: float, back: float) -> None:
    """Started at any moment of a step, stopped gracefully at another, back `back` s later
    (the agent reconnecting up to 3 s after that): every row is as online as it was
    watched, and no report is lost."""
    agent = Agent()
    store = history.History(tmp_path, resolution=60)
    store.watch(started)
    run_steps(store, agent, started, 10_000, final_at=stopped)
    store.close()
    again = history.History(tmp_path, resolution=60)
    again.restore(stopped + back, T0 + stopped + back)
    agent.next = stopped + back + 2.5  # reconnecting
    run_steps(again, agent, stopped + back, 1500)
    fields = step(again, 1501, ["web"])
    found = rows(again)
    assert all(online == watched for _, _, _, online, watched in found), found
    assert sum(n for _, _, n, _, _ in found) == agent.sent  # nothing lost across the stop
    # The step of the restart holds the reports from before and after it.
    in_that_step = [n for _, t, n, _, _ in found if t == T0 + stopped // 60 * 60]
    assert in_that_step and in_that_step[0] >= 10
    assert json.loads(fields["web"]["availability"]) == {"24h": 100.0, "30d": 100.0}
    assert set(json.loads(fields["web"]["last24h"])) == {None, 100.0}
    again.close()


def test_a_graceful_restart_keeps_the_step_and_adds_to_it(tmp_path: Path) -> None:
    """SIGTERM 10 s into a minute and back in 0.27 s: that minute's row holds every
    report of it, averaged over all of them."""
    store = history.History(tmp_path, resolution=60)
    store.watch(0.0)
    for second in range(0, 11):
        fold(store, "web", report(10.0, interval=1), second)
    step(store, 10.2, ["web"], final=True)
    store.close()
    again = history.History(tmp_path, resolution=60)
    again.restore(10.47, T0 + 10.47)
    for second in range(12, 60):
        fold(again, "web", report(70.0, interval=1), second)
    step(again, 60.01, ["web"])
    [(n, online, watched, cpu, cpu_max)] = rows(again, columns="n, online, watched, cpu, cpu_max")
    assert (n, cpu_max) == (59, 70.0)
    assert cpu == pytest.approx((11 * 10 + 48 * 70) / 59)
    # 0-10 s, then 10.47-59 s: the 0.27 s the dashboard was down and the 0.2 s before
    # the stop that no report had vouched for yet are watched by nobody.
    assert online == watched == pytest.approx(59 - 0.47)
    again.close()


def test_a_wall_clock_set_back_adds_to_rows_and_replaces_none(tmp_path: Path) -> None:
    """Back 60 s at a 5 s resolution: the steps of that minute are written again, each
    row adding the later reports to what it had."""
    store = history.History(tmp_path, resolution=5)
    store.watch(0.0)
    sent = 0
    for second in range(0, 61):
        store.fold("web", report(10.0, interval=1), second, T0 + second)
        sent += 1
        if second % 5 == 0:
            step(store, second + 0.01, ["web"])
    before = {t: n for _, t, n, _, _ in rows(store)}
    for second in range(61, 121):  # the wall clock is 60 s behind from here on
        store.fold("web", report(50.0, interval=1), second, T0 + second - 60)
        sent += 1
        if second % 5 == 0:
            step(store, second + 0.01, ["web"], wall=T0 + second - 60 + 0.01)
    step(store, 121, ["web"], final=True, wall=T0 + 61)
    after = {t: n for _, t, n, _, _ in rows(store)}
    assert all(after[t] >= n for t, n in before.items())  # nothing replaced
    assert sum(after.values()) == sent
    assert sum(watched for *_, watched in rows(store)) == pytest.approx(120)
    assert {cpu_max for (cpu_max,) in rows(store, columns="cpu_max")} >= {50.0}
    store.close()


@pytest.mark.parametrize("steady", [True, False])
def test_a_wall_clock_jumped_forward_deletes_no_history(tmp_path: Path, steady: bool) -> None:
    """Forward 3 days: retention counts back from the steady clock (clock.WallWatch),
    which the jump did not move, so the fine rows of the last minutes stay. (Counting
    back from the wall clock, as before, deleted them all.)"""
    store = history.History(tmp_path, resolution=60)
    store.watch(0.0)
    for second in range(0, 600, 5):
        fold(store, "web", report(10.0), second)
        if second % 60 == 55:
            step(store, second + 5, ["web"])
    kept = len(rows(store))
    jumped = T0 + 601 + 3 * 24 * HOUR
    fold(store, "web", report(10.0), 601)
    step(store, 601, ["web"], wall=jumped, kept_since=T0 + 601 if steady else jumped)
    assert (len(rows(store)) >= kept) is steady
    store.close()


def test_rows_added_to_a_rolled_up_hour_reach_its_hourly_row(tmp_path: Path) -> None:
    """The report at the top of the hour vouches for the hour's last seconds after the
    hour was rolled up: they are added to the hourly (and six-hour) rows as well."""
    store = history.History(tmp_path, resolution=60)
    quarter = 6 * HOUR
    begin = (T0 // quarter + 1) * quarter - T0  # seconds after T0 when a quarter day starts
    store.watch(begin)
    for second in range(begin, begin + quarter + 120, 10):
        fold(store, "web", report(10.0, interval=10), second)
        if second % 60 == 50:
            step(store, second + 10.5, ["web"])
    hourly = rows(store, history.HOURLY)
    assert [(online, watched) for *_, online, watched in hourly] == [(3600.0, 3600.0)] * 6
    assert [(n, online, watched) for _, _, n, online, watched in rows(
        store, history.QUARTER_DAY)] == [(2160, 21600.0, 21600.0)]
    store.close()


# --- end to end: restarts, kills and the last seen time --------------------------------


def availability_of(dash: Dashboard, sid: str = "alpha") -> tuple[Any, list[Any]]:
    server = server_in({"servers": dash.get_json("/api/servers")}, sid)
    assert server is not None
    return server.get("availability"), server.get("last24h", [])


def test_an_always_reporting_agent_reads_100_percent_across_a_restart(
        make_dashboard: Any, make_agent: Any) -> None:
    """The dashboard starts wherever in a step it starts, and is restarted gracefully
    in the middle of one; the agent reconnects a few seconds later. Before, the part of
    a step before the start, and the restart, counted against the server (59-95 %)."""
    dash = start_with_history(make_dashboard, "--history-resolution", "2")
    agent = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                       "--secret", SECRET, "--interval", "1", "--min-interval", "1",
                       "--no-adaptive")
    agent.wait_for_log("connected to")
    dash.wait_for_log(r"agent connected: id=alpha")
    wait_until(lambda: len(step_times(dash)) >= 3)  # a few steps, each of them written
    assert dash.stop() == 0
    mark = len(dash.lines)
    dash.start("--history-resolution", "2")
    restarted = time.time()
    dash.wait_for_log(r"agent connected: id=alpha", after=mark, timeout=15)
    db = sqlite3.connect(dash.data / "history.db")
    wait_until(lambda: db.execute(  # a step wholly after the restart is written
        "SELECT COUNT(*) FROM samples WHERE tier = 0 AND server = 'alpha' AND t >= ?",
        (restarted + 2,)).fetchone()[0] > 0)
    wait_until(lambda: availability_of(dash)[1][-1] is not None)
    availability, last24h = availability_of(dash)
    assert availability == {"24h": 100.0, "30d": 100.0}, availability
    assert set(last24h) <= {None, 100.0} and last24h[-1] == 100.0
    online = [o for o in dash.get_json("/api/history?id=alpha&range=1h")["online"]
              if o is not None]
    assert online and set(online) == {1.0}
    assert db.execute("SELECT COUNT(*) FROM samples WHERE online < watched").fetchone()[0] == 0


def test_a_kill_in_the_writers_window_loses_only_the_step_in_progress(
        make_dashboard: Any) -> None:
    """SSS_TEST_HISTORY_STALL holds the writer's second transaction (last views, rollups,
    retention) open: a kill -9 lands in it. The closed step was committed before it, in a
    transaction of its own; before, one transaction held both, and such a kill lost the
    step just closed as well as the one in progress."""
    dash: Dashboard = make_dashboard(start=False)
    dash.start("--history-resolution", "2", env={**os.environ, "SSS_TEST_HISTORY_STALL": "10"})
    with dash.agent("alpha") as agent:
        for cpu in range(5):
            agent.send(json.dumps(go_report(cpuInfo={"percent": float(cpu), "info": []})))
        dash.wait_for_log("holding the rollup transaction", timeout=10)
        dash.kill()
    db = sqlite3.connect(dash.data / "history.db")
    assert db.execute("SELECT SUM(n), AVG(cpu) FROM samples WHERE tier = 0 AND "
                      "server = 'alpha'").fetchone() == (5, 2.0)


@pytest.mark.parametrize("kill", [False, True])
def test_the_last_seen_time_comes_back_after_a_restart(make_dashboard: Any,
                                                         kill: bool) -> None:
    """Exact after a graceful stop; at most a step old after kill -9 (the server's view is
    written every 10 minutes only, its rows every step). Before, a server online at a kill
    came back with the time of its view: up to 10 minutes old."""
    dash = start_with_history(make_dashboard)
    with dash.agent("alpha") as agent:
        for _ in range(6):  # over several steps of a second
            agent.send(json.dumps(go_report()))
            time.sleep(0.7)
        last = server_in({"servers": dash.get_json("/api/servers")}, "alpha")
        written_through(dash, last["lastReportTime"])
        if kill:
            dash.kill()
        else:
            assert dash.stop() == 0
    dash.start("--history-resolution", "1")
    restored = server_in({"servers": dash.get_json("/api/servers")}, "alpha")
    assert restored["online"] is False
    if kill:
        assert last["lastReportTime"] - 2 <= restored["lastReportTime"] <= last["lastReportTime"]
    else:
        assert restored["lastReportTime"] == last["lastReportTime"]


def test_year_long_queries_run_off_the_loop(make_dashboard: Any) -> None:
    """32 clients asking for a year with 16 probe targets: before, each query took 113 ms
    on the event loop and a viewer waited 11 s for its updates. Now they run on query
    threads, a few at a time, answers kept until the next step; the viewer's updates keep
    coming, and one address cannot take every thread."""
    dash: Dashboard = make_dashboard(start=False)
    bench.year_of_history(dash.data, "alpha", 16)
    bench.year_of_history(dash.data, "beta", 16)  # for the burst: no answer of it kept
    dash.start("--history-resolution", "1")  # a step a second: answers kept for no longer
    one = dash.get_json("/api/history?id=alpha&range=1y")
    assert len(one["probes"]) == 16 and sum(c is not None for c in one["cpu"]) > 1400
    gaps: list[float] = []
    with dash.viewer() as viewer, dash.agent("alpha") as agent:
        recv_json(viewer)
        stop = threading.Event()

        def watch() -> None:
            last = time.monotonic()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    viewer.recv(timeout=1)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

        def report_often() -> None:
            while not stop.is_set():
                agent.send(json.dumps(go_report(cpuInfo={"percent": random.uniform(1, 99),
                                                         "info": []})))
                time.sleep(0.1)

        def ask(n: int) -> int:
            source = f"127.0.11.{n // 2 + 1}"  # two clients per address
            with socket.create_connection(("127.0.0.1", dash.port), timeout=30,
                                          source_address=(source, 0)) as sock:
                sock.sendall(b"GET /api/history?id=alpha&range=1y&n=%d HTTP/1.1\r\n"
                             b"Host: x\r\n\r\n" % n)
                return int(sock.recv(20).split()[1])

        threads = [threading.Thread(target=watch), threading.Thread(target=report_often)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(ask, range(32)))
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 16, statuses
    assert max(gaps) < 2.5, max(gaps)  # on the loop, 32 queries held it 3.6 s (11 s before)
    # One address asking six at once: two run, the others are told to come back. (Of a
    # server nobody asked about: alpha's answer may still be kept, and come at once.)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        burst = list(pool.map(lambda n: ask_from(dash, "127.0.12.1", "beta"), range(6)))
    assert 200 in burst and 503 in burst and set(burst) == {200, 503}, burst
    assert dash.refused("queries") > 0
    assert "Traceback" not in dash.log_text()


def ask_from(dash: Dashboard, source: str, sid: str) -> int:
    with socket.create_connection(("127.0.0.1", dash.port), timeout=30,
                                  source_address=(source, 0)) as sock:
        sock.sendall(b"GET /api/history?id=%s&range=1y HTTP/1.1\r\nHost: x\r\n\r\n"
                     % sid.encode())
        return int(sock.recv(20).split()[1])
