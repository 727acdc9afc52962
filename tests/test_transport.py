"""The transport's guard: the fast path rests on websockets internals that are checked at
start; a missing one is named in the log and the dashboard serves on the public path."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Dashboard, go_report, recv_until, server_in
from websockets.asyncio.server import ServerConnection

from sss import transport


class Renamed(ServerConnection):
    """A websockets release where process_event takes another argument and send_data is
    gone (as a rename would leave them)."""

    def process_event(self, event: Any, more: Any = None) -> None:  # type: ignore[override]
        super().process_event(event)

    send_data = None  # type: ignore[assignment]


def test_each_trick_names_the_internals_it_misses() -> None:
    assert transport.internals_missing() == {trick: [] for trick in transport.TRICKS}
    missing = transport.internals_missing(connection=Renamed)
    assert missing["take_frames"] == ["Renamed.process_event(event)"]
    assert missing["split_frames"] == ["Renamed.process_event(event)", "Renamed.send_data()"]
    assert missing["framed_broadcast"] == []


@pytest.mark.parametrize("safe, off", [
    ("1", {"take_frames", "split_frames", "framed_broadcast"}),
    ("split_frames", {"split_frames"}),
    ("take_frames", {"take_frames", "split_frames"}),  # splitting hands frames to take
    ("", set()),
])
def test_safe_transport_turns_tricks_off(safe: str, off: set[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    before = transport.FastPath(**vars(transport.FAST))
    try:
        with caplog.at_level(logging.DEBUG, "sss.dashboard"):
            fast = transport.check_internals(safe)
        assert set(fast.names(False)) == off
        if off:
            assert f"SSS_SAFE_TRANSPORT={safe}: serving on websockets' public path" in caplog.text
    finally:
        vars(transport.FAST).update(vars(before))


def watch_one_report(dash: Dashboard) -> None:
    """An agent's reports and pings get through and a viewer sees them: the wiring works
    whichever path carries it."""
    with dash.viewer() as viewer, dash.agent("alpha") as agent:
        recv_until(viewer, lambda m: m.get("type") == "snapshot")
        agent.send(json.dumps(go_report(cpuInfo={"percent": 42.0, "info": []})))
        assert json.loads(agent.recv(timeout=5)) == {"type": "accepted"}
        agent.ping().wait(5)
        update = recv_until(viewer, lambda m: (server_in(m, "alpha") or {})
                            .get("cpuInfo", {}).get("percent") == 42.0)
        assert update["type"] in ("update", "snapshot")


def test_a_missing_internal_is_named_and_the_public_path_serves(
        make_dashboard: Any, tmp_path: Path) -> None:
    """A websockets where process_event changed (simulated before the dashboard starts):
    one line names it, and agents and viewers are served on websockets' own path."""
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(textwrap.dedent("""
        import os
        os.environ.setdefault("WEBSOCKETS_MAX_NUM_HEADERS", "32")
        from websockets.asyncio.server import ServerConnection
        original = ServerConnection.process_event
        def process_event(self, event, more=None):
            original(self, event)
        ServerConnection.process_event = process_event
    """))
    dash: Dashboard = make_dashboard(start=False)
    fast = {name: value for name, value in os.environ.items()
            if name != transport.SAFE_TRANSPORT}  # CI runs the suite with it set too
    dash.start(env={**fast, "PYTHONPATH": str(patch)})
    dash.wait_for_log(r"WARNING websockets [\d.]+: ServerConnection\.process_event\(event\) "
                      r"not as transport\.py expects; serving on websockets' public path "
                      r"for take_frames, split_frames \(slower, correct\)")
    watch_one_report(dash)
    assert "Traceback" not in dash.log_text()


def test_the_public_path_forced_serves_agents_and_viewers(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(start=False)
    dash.start(env={**os.environ, "SSS_SAFE_TRANSPORT": "1"})
    dash.wait_for_log("SSS_SAFE_TRANSPORT=1: serving on websockets' public path")
    watch_one_report(dash)
    assert "Traceback" not in dash.log_text()
