"""Tests for history.py: pure folding, rows, rollups and availability, then a real dashboard."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import history
from conftest import SECRET, Dashboard, go_report, recv_json, recv_until, server_in
from reports import validate_report

HOUR = 3600
T0 = 1_795_000_000 // HOUR * HOUR  # an hour boundary, as a fake clock's zero


def report(cpu: float, interval: float = 5, **fields: Any) -> dict[str, Any]:
    """A validated record, as the hub hands it to history."""
    return validate_report(json.dumps(go_report(cpuInfo={"percent": cpu, "info": []},
                                                reportInterval=interval, **fields)))


# --- folding and rows (pure) -------------------------------------------------------


def test_reports_fold_into_one_row_per_bucket() -> None:
    store = history.History(Path("/nonexistent"), resolution=60)
    for second, cpu in ((0, 10.0), (5, 30.0), (10, 20.0), (65, 90.0)):
        store.fold("web-1", report(cpu), T0 + second)
    closed = store.take_closed(T0 + 61)
    assert [start for start, _ in closed] == [T0]  # the bucket from 60 s on is still open
    bucket = closed[0][1]["web-1"]
    row = dict(zip(history.COLUMNS, history.bucket_row(history.FINE, "web-1", bucket, 60)))
    assert row["n"] == 3 and row["cpu"] == pytest.approx(20.0) and row["cpu_max"] == 30.0
    assert row["memory"] == 50.0 and row["net_in"] == 1000 and row["load1"] == 0.5
    assert row["online"] == 15 and row["watched"] == 60  # three reports vouch for 5 s each
    assert row["net_in_total"] == 10**9 and row["net_out_total"] == 2 * 10**9
    assert row["tcp"] is None and row["tcp_max"] is None  # the Go agent sends no extraInfo
    assert store.take_closed(T0 + 121)[0][1]["web-1"].n == 1


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


def test_online_seconds_never_exceed_what_a_report_vouches_for() -> None:
    assert history.online_seconds(T0 + 10, None, 5) == 5
    assert history.online_seconds(T0 + 10, T0 + 8, 5) == 2  # reports closer than the interval
    assert history.online_seconds(T0 + 13, T0 + 6, 5) == 7  # late, but online all along
    assert history.online_seconds(T0 + 100, T0, 5) == 5  # after an outage: only its own interval
    bucket = history.Bucket(T0)
    for _ in range(30):
        bucket.add(history.metric_values(report(1, interval=5)), 5, (None, None))
    assert history.bucket_row(history.FINE, "x", bucket, 60)[4] == 60  # capped at the bucket
    # A value some reports lack is averaged over those that had it; other buckets keep
    # sharing the count of none missing.
    values = history.metric_values(report(1, interval=5))
    partial = history.Bucket(T0)
    partial.add(values, 5, (None, None))
    partial.add((None, *values[1:]), 5, (None, None))
    assert history.bucket_row(history.FINE, "x", partial, 60)[6:8] == (values[0], values[0])
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
            bucket.add(values, 5, (None, None))
            bucket.add(values, 5, (None, None))
        used = (tracemalloc.get_traced_memory()[0] - before) / len(buckets)
    finally:
        tracemalloc.stop()
    assert used < 700
    assert history.bucket_row(history.FINE, "x", buckets[0], 60)[6:8] == (values[0], values[0])


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
                "online"}
    assert set(answer) == expected


# --- the writer: rollups, retention and availability with an injected clock -------------


def writer_step(writer: history.Writer, store: history.History, now: float,
                servers: list[str]) -> dict[str, str]:
    closed = store.take_closed(now)
    latest = [(sid, int(now), '{"cpuInfo":{"percent":1}}') for _, b in closed for sid in b]
    return writer.step(closed, servers, latest, now)


def test_rollups_availability_and_retention(tmp_path: Path) -> None:
    store = history.History(tmp_path, resolution=60, days=3)
    writer = store.writer
    # Two hours: "up" reports every 5 s throughout; "flaky" only in the first 30 minutes.
    for second in range(0, 2 * HOUR, 5):
        store.fold("up", report(40.0), T0 + second)
        if second < 30 * 60:
            store.fold("flaky", report(80.0), T0 + second)
        if second % 60 == 55:
            writer_step(writer, store, T0 + second + 5, ["up", "flaky", "never"])
    db = writer.connection()
    hourly = db.execute("SELECT server, t, n, online, watched, cpu, cpu_max FROM samples "
                        "WHERE tier = 1 ORDER BY server, t").fetchall()
    assert hourly == [("flaky", T0, 360, 1800.0, 3600.0, 80.0, 80.0),
                      ("flaky", T0 + HOUR, 0, 0.0, 3600.0, None, None),
                      ("up", T0, 720, 3600.0, 3600.0, 40.0, 40.0),
                      ("up", T0 + HOUR, 720, 3600.0, 3600.0, 40.0, 40.0)]
    fields = writer_step(writer, store, T0 + 2 * HOUR + 60, ["up", "flaky", "never"])
    assert set(fields) == {"up", "flaky"}  # never reported: no availability yet
    flaky = {field: json.loads(value) for field, value in fields["flaky"].items()}
    share = round(1800 / 7260 * 100, 2)  # half an hour online of two hours and a minute
    assert flaky["availability"] == {"24h": share, "30d": share}
    assert flaky["last24h"][-3:] == [50.0, 0.0, 0.0] and flaky["last24h"][0] is None
    up = {field: json.loads(value) for field, value in fields["up"].items()}
    assert up["availability"]["24h"] == round(7200 / 7260 * 100, 2)  # the last minute: silent

    # Retention: fine rows go after 48 h, hourly rows after --history-days (3 here).
    writer_step(writer, store, T0 + 49 * HOUR, ["up", "flaky"])
    assert db.execute("SELECT MIN(t) FROM samples WHERE tier = 0").fetchone()[0] >= T0 + HOUR
    assert db.execute("SELECT COUNT(*) FROM samples WHERE tier = 1 AND t = ?",
                      (T0,)).fetchone()[0] == 2
    writer_step(writer, store, T0 + 4 * 24 * HOUR, ["up", "flaky"])
    assert db.execute("SELECT COUNT(*) FROM samples WHERE tier = 1 AND t < ?",
                      (T0 + 24 * HOUR,)).fetchone()[0] == 0
    writer.close()


def test_a_range_reads_hourly_rows_and_the_hour_not_rolled_up_yet(tmp_path: Path) -> None:
    store = history.History(tmp_path, resolution=60)
    for second in range(0, 2 * HOUR + 600, 10):
        store.fold("web-1", report(second / 100), T0 + second)
        if second % 60 == 50:
            writer_step(store.writer, store, T0 + second + 10, ["web-1"])
    week = json.loads(store.query("web-1", "7d", T0 + 2 * HOUR + 600))
    assert week["step"] == HOUR
    filled = [(t, cpu) for t, cpu in zip(week["time"], week["cpu"]) if cpu is not None]
    assert [t for t, _ in filled] == [T0, T0 + HOUR, T0 + 2 * HOUR]  # the last from fine rows
    assert filled[2][1] == pytest.approx((7200 + 7790) / 2 / 100, abs=0.01)
    store.close()


# --- end to end -----------------------------------------------------------------


def start_with_history(make_dashboard: Any, *extra: str) -> Dashboard:
    dash: Dashboard = make_dashboard(start=False)
    return dash.start("--history-resolution", "1", *extra)


def test_history_end_to_end_survives_kill_9(make_dashboard: Any, make_agent: Any) -> None:
    dash = start_with_history(make_dashboard)
    reporter = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                          "--secret", SECRET, "--interval", "1", "--min-interval", "1",
                          "--no-adaptive")
    deadline = time.monotonic() + 20
    points: list[Any] = []
    while time.monotonic() < deadline and len(points) < 4:
        time.sleep(0.5)
        answer = dash.get_json("/api/history?id=alpha&range=1h")
        points = [c for c in answer["cpu"] if c is not None]
    assert len(points) >= 4, answer
    assert answer["id"] == "alpha" and answer["range"] == "1h"
    assert all(0 <= c <= 100 for c in points)
    assert reporter.stop() == 0
    before = dash.get_json("/api/history?id=alpha&range=1h")
    last_seen = server_in({"servers": dash.get_json("/api/servers")}, "alpha")
    time.sleep(1.2)  # let the step holding the last report reach the disk
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
        time.sleep(0.5)
    assert dash.stop() == 0
    db = sqlite3.connect(dash.directory / "history.db")
    assert db.execute("SELECT cpu FROM samples WHERE server = 'alpha'").fetchall() == [(42.0,)]


def test_no_history_and_a_read_only_data_directory(make_dashboard: Any, tmp_path: Path) -> None:
    off: Dashboard = make_dashboard(start=False).start("--no-history")
    assert off.get_json("/healthz")["history"] == "off"
    assert off.get("/api/history?id=alpha&range=1h")[0] == 404
    assert not (off.directory / "history.db").exists()

    # A data directory that cannot be created (its parent is a file: this holds for root
    # too), then a corrupt database: one clear line each, and the live page keeps working.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "history.db").write_bytes(b"this is not a database" * 100)
    for data, advice in ((blocker / "data", "writable"), (corrupt, "move the file aside")):
        dash: Dashboard = make_dashboard(start=False).start("--data", str(data))
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
    folding = timed(lambda i: store.fold(f"s{i % 100}", record, T0 + i * 0.01))
    assert folding < validating, (folding, validating)


def test_history_step_does_not_block_the_loop(tmp_path: Path) -> None:
    """2,000 servers' buckets are written on the writer thread while the loop keeps ticking."""
    store = history.History(tmp_path, resolution=60)
    record = report(10)
    for i in range(2000):
        store.fold(f"srv-{i}", record, T0 + 1)

    async def measure() -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1
        task = asyncio.ensure_future(ticker())
        fields = await store.step(loop, T0 + 61, [f"srv-{i}" for i in range(2000)],
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


def test_a_step_without_a_report_counts_as_the_hub_saw_the_server(tmp_path: Path) -> None:
    """Reports every 60 s at a 60 s resolution fall either side of some steps: a server the
    hub has online is online that step; one it has offline is offline."""
    store = history.History(tmp_path, resolution=60)
    for sid in ("steady", "gone"):
        store.fold(sid, report(5, interval=60), T0 + 30)
    store.writer.step(store.take_closed(T0 + 61), ["steady", "gone"], [], T0 + 61)
    empty = store.take_closed(T0 + 121)  # nobody reported in this step
    store.writer.step(empty, ["steady", "gone"], [], T0 + 121, online={"steady"})
    db = store.writer.connection()
    rows = dict(db.execute("SELECT server, online FROM samples WHERE t = ?", (T0 + 60,)))
    assert rows == {"steady": 60.0, "gone": 0.0}
    store.close()


def test_probe_history_per_target_rolls_up_and_answers_every_range(tmp_path: Path) -> None:
    store = history.History(tmp_path, resolution=60, days=3)
    # Two hours at one report every 10 s; "CT" answers slowly in the first hour and loses
    # half its probes in the second; "Hole" never answers.
    for second in range(0, 2 * HOUR, 10):
        slow = second < HOUR
        probes = [{"name": "CT", "rtt": 180.0 if slow else 20.0, "loss": 0.0 if slow else 0.5},
                  {"name": "Hole", "loss": 1.0}]
        store.fold("web", report(10.0, extraInfo={"probes": probes}), T0 + second)
        if second % 60 == 50:
            writer_step(store.writer, store, T0 + second + 10, ["web"])
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
