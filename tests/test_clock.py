"""Tests for clock.py, then a real dashboard whose wall clock is moved under it.

The dashboard runs with a small LD_PRELOAD library, built here with the system's C
compiler, that adds an offset (read from a file the test rewrites) to CLOCK_REALTIME
only: time.time() jumps, time.monotonic() and sleeping do not. (libfaketime shifts the
monotonic clock too, or breaks sleeping.)
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET, Dashboard, require_tool, wait_until
from test_alerts import Receiver
from test_private import HASH, request, sign_in

from sss import timings as clock

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Nanoseconds added to CLOCK_REALTIME: the first 8 bytes of $SSS_TEST_CLOCK_FILE, mapped
   shared, so that the test moves the clock by rewriting the file. */
static volatile int64_t *offset;
static int (*real_clock_gettime)(clockid_t, struct timespec *);

static void start(void) {
    real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT,
                                                                      "clock_gettime");
    const char *path = getenv("SSS_TEST_CLOCK_FILE");
    int fd = path ? open(path, O_RDONLY) : -1;
    if (fd >= 0) {
        void *map = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
        if (map != MAP_FAILED) offset = map;
        close(fd);
    }
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) start();
    int result = real_clock_gettime(id, ts);
    if (result == 0 && offset && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + *offset;
        ts->tv_sec = ns / 1000000000;
        ts->tv_nsec = ns % 1000000000;
        if (ts->tv_nsec < 0) { ts->tv_nsec += 1000000000; ts->tv_sec -= 1; }
    }
    return result;
}
"""
DAY = 86400


# --- the watch (pure) --------------------------------------------------------------


def test_jumps_are_noticed_and_the_steady_clock_never_jumps_forward() -> None:
    watch = clock.WallWatch(now=0.0, wall=1000.0)
    assert [watch.observe(float(s), 1000.0 + s + s * 1e-4) for s in range(1, 60)] == [0.0] * 59
    assert watch.steady(60.0) == pytest.approx(1000.0 + 60 * 1.0001)  # slewing: followed
    assert watch.observe(61.0, 1061.0 - 60) == pytest.approx(-60, abs=0.01)  # back
    assert watch.steady(61.0) == pytest.approx(1001.0)  # followed back at once
    assert watch.observe(62.0, 1002.0 + 3 * DAY) == pytest.approx(3 * DAY)  # forward
    assert watch.steady(62.0) == pytest.approx(1002.0)  # not followed
    assert watch.observe(63.0, 1003.0 + 3 * DAY) == 0.0 and watch.steady(63.0) == 1003.0
    assert clock.jump_words(-5 * DAY) == "back by 5d0h"


# --- a dashboard whose wall clock moves ----------------------------------------------


@pytest.fixture(scope="module")
def shim(tmp_path_factory: Any) -> Path:
    compiler = require_tool("cc", "gcc")
    folder = tmp_path_factory.mktemp("shim")
    (folder / "shim.c").write_text(SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(folder / "shim.so"),
                    str(folder / "shim.c"), "-ldl"], check=True)
    return folder / "shim.so"


class WallClock:
    """The offset file the shim maps: set() moves the dashboard's wall clock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(struct.pack("q", 0))

    def set(self, seconds: float) -> None:
        with self.path.open("r+b") as file:
            file.write(struct.pack("q", int(seconds * 1e9)))


def fine_rows(dash: Dashboard) -> dict[int, int]:
    db = sqlite3.connect(f"file:{dash.data / 'history.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT t, n FROM samples WHERE tier = 0 AND server = 'alpha'"))
    finally:
        db.close()


def test_a_wall_clock_that_jumps_destroys_nothing(make_dashboard: Any, make_agent: Any,
                                                  shim: Path, tmp_path: Path) -> None:
    """Measured before on a running dashboard: back 60 s overwrote the rows of that
    minute; back 5 days began a new traffic period at 0 B; forward 3 days deleted every
    fine row, ended sessions, and fired a 4 s offline alert at once saying "3d". Now each
    jump is one log line and none of that happens."""
    wall = WallClock(tmp_path / "clock")
    hook = Receiver()
    today = datetime.datetime.now(datetime.timezone.utc)
    dash: Dashboard = make_dashboard(
        [{"id": "alpha", "name": "Alpha", "secret": SECRET,
          "traffic": {"limit": "1 GiB", "resetDay": min(today.day, 28)}}],
        start=False, viewers={"users": {"alice": HASH}, "sessionDays": 1},
        notifiers=[{"name": "ops", "type": "webhook", "url": hook.url}],
        alerts=[{"name": "down", "metric": "offline", "for": "4s", "notify": ["ops"]}])
    dash.start("--history-resolution", "1", env={
        **os.environ, "LD_PRELOAD": str(shim), "SSS_TEST_CLOCK_FILE": str(wall.path)})
    try:
        answer = sign_in(dash)
        _, headers, _ = request(dash, f"/login?ticket={answer['ticket']}&path=/")
        cookie = headers["Set-Cookie"].split(";")[0]
        agent = make_agent("--server", dash.url("/ws-report", "ws"), "--id", "alpha",
                           "--secret", SECRET, "--interval", "1", "--min-interval", "1",
                           "--no-adaptive")
        dash.wait_for_log("agent connected: id=alpha")
        wait_until(lambda: len(fine_rows(dash)) >= 10)
        period = dash.get_json("/api/traffic?id=alpha")["periods"][0]

        wall.set(-8)  # back 8 s: the rows of those seconds are added to, never replaced
        dash.wait_for_log("wall clock jumped back by 8s")
        before = fine_rows(dash)
        wait_until(lambda: sum(fine_rows(dash).values()) >= sum(before.values()) + 6)
        after = fine_rows(dash)
        assert all(after[t] >= n for t, n in before.items()), (before, after)
        assert sum(after[t] - n for t, n in before.items()) >= 4  # the same seconds again

        wall.set(-5 * DAY)  # back five days, past the start of the traffic period
        dash.wait_for_log("wall clock jumped back by 4d23h")  # from -8 s to -5 days
        wait_until(lambda: min(fine_rows(dash)) < time.time() - 4 * DAY)  # reports since
        now_period = dash.get_json("/api/traffic?id=alpha")["periods"][0]
        assert now_period["periodStart"] == period["periodStart"]
        assert now_period["in"] >= period["in"]

        kept = len(fine_rows(dash))
        assert agent.stop() == 0
        dash.wait_for_log("agent disconnected: id=alpha")
        offline_at = time.monotonic()
        wall.set(3 * DAY)  # forward three days
        dash.wait_for_log("wall clock jumped forward by 8d0h")
        (_, _, message), = hook.wait(1, timeout=20)
        assert time.monotonic() - offline_at >= 3.5
        assert message["text"] in ("🔴 Alpha offline for 4s", "🔴 Alpha offline for 5s")
        # Two steps written since the jump (the offline time watched, at the new wall
        # time): the writer is done with the first one's rollups and retention, which did
        # not follow the jump.
        wait_until(lambda: sum(t > time.time() + 2 * DAY for t in fine_rows(dash)) >= 2)
        assert len(fine_rows(dash)) >= kept
        _, _, body = request(dash, "/api/session", {"Cookie": cookie})
        assert json.loads(body)["user"] == "alice"  # the session did not end
        assert dash.count_log("wall clock jumped") == 3
        assert "Traceback" not in dash.log_text()
    finally:
        hook.close()


