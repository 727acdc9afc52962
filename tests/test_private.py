"""Tests for the private dashboard: password hashes, sessions, hidden servers, /metrics token."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HERE,
    SCREENSHOTS,
    SECRET,
    Dashboard,
    card,
    go_report,
    recv_json,
    recv_until,
    server_in,
    wait_until,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import agent
from sss import handlers, limits, sessions
from sss.config import ConfigError, parse_config

PASSWORD = "correct horse battery"
HASH = sessions.hash_password(PASSWORD)
T0 = 1_795_000_000.0


# --- hashes and sessions (pure, with an injected clock) -------------------------------


def test_hash_password_from_stdin_and_plain_passwords_refused() -> None:
    result = subprocess.run([sys.executable, str(HERE / "dashboard.py"), "--hash-password"],
                            input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert printed.startswith("scrypt$16384$8$1$") and PASSWORD not in printed
    assert sessions.check_password(PASSWORD, printed)
    assert not sessions.check_password(PASSWORD + "!", printed)
    assert printed != sessions.hash_password(PASSWORD)  # a random salt each time
    with pytest.raises(ConfigError) as caught:
        parse_config({"servers": [], "viewers": {"public": False,
                                                 "users": {"alice": PASSWORD}}}, "servers.json")
    assert caught.value.problems == [
        'servers.json: field "viewers.users.alice" must be a password hash, not a password: '
        "make one with python3 dashboard.py --hash-password"]


def test_sessions_expire_end_and_follow_password_changes(tmp_path: Path) -> None:
    users = {"alice": HASH, "bob": sessions.hash_password("bob's password")}
    store = sessions.Sessions(tmp_path / "sessions.json")
    ticket = store.ticket("alice", T0)
    assert store.redeem("forged", users, 30, T0, T0) is None
    token = store.redeem(ticket, users, 30, T0 + 5, T0 + 5)
    assert token and store.user(token, T0 + 10) == "alice"
    assert store.redeem(ticket, users, 30, T0 + 6, T0 + 6) is None  # one use only
    late = store.ticket("bob", T0)
    late_by = T0 + sessions.TICKET_SECONDS + 1
    assert store.redeem(late, users, 30, late_by, late_by) is None
    assert store.user(token, T0 + 5 + 30 * 86400) is None  # sessionDays ran out
    assert store.user(token, T0 + 4 + 30 * 86400) == "alice"
    bob = store.redeem(store.ticket("bob", T0), users, 30, T0, T0)
    assert token not in json.dumps(json.loads(store.path.read_text()))  # only hashes kept
    reloaded = sessions.Sessions(store.path)
    reloaded.load()
    assert reloaded.user(token, T0 + 60) == "alice" and reloaded.user(bob, T0 + 60) == "bob"
    changed = {"alice": sessions.hash_password("a new password"), "bob": users["bob"]}
    assert reloaded.expire(changed, T0 + 60) == 1  # alice's password changed
    assert reloaded.user(token, T0 + 60) is None and reloaded.user(bob, T0 + 60) == "bob"
    assert reloaded.expire({}, T0 + 60) == 1  # bob removed
    reloaded.end(bob)
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert sessions.cookie_value("a=1; sss_session=abc; b=2") == "abc"
    assert sessions.cookie_value(None) is None


# --- over real HTTP and WebSocket ---------------------------------------------------


def private_servers() -> list[dict[str, Any]]:
    return [{"id": "alpha", "name": "Alpha", "secret": SECRET},
            {"id": "vault", "name": "Vault", "secret": SECRET, "hidden": True,
             "traffic": {"limit": "1 GiB"}}]


def request(dash: Dashboard, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(dash.url(path), headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def sign_in(dash: Dashboard, user: str = "alice", password: str = PASSWORD,
            source: str = "127.0.0.1") -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                    source_address=(source, 0))
    with connect(dash.url("/ws-login", "ws"), sock=sock, open_timeout=10) as ws:
        ws.send(json.dumps({"user": user, "password": password}))
        return json.loads(ws.recv(timeout=10))


def session_cookie(dash: Dashboard, user: str = "alice") -> str:
    answer = sign_in(dash, user)
    assert answer["ok"], answer
    status, headers, _ = request(dash, f"/login?ticket={answer['ticket']}&path=/")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/;" in cookie
    assert "Secure" not in cookie  # plain http here
    return cookie.split(";")[0]


def handshake(dash: Dashboard, path: str, headers: dict[str, str]) -> int:
    try:
        with connect(dash.url(path, "ws"), additional_headers=headers, open_timeout=10):
            return 101
    except InvalidStatus as error:
        return error.response.status_code


def test_private_page_needs_a_session(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH}}, metricsToken="m" * 24)
    for path in ("/api/servers", "/api/history?id=alpha&range=1h", "/api/alerts",
                 "/api/traffic?id=alpha"):
        assert request(dash, path)[0] == 401, path
    # agentVersion: the hash of the agent.py that /agent.py serves to anyone anyway
    assert json.loads(request(dash, "/api/session")[2]) == {
        "user": None, "public": False, "signIn": True, "agentVersion": agent.AGENT_VERSION}
    assert handshake(dash, "/ws-frontend", {}) == 401
    foreign = {"Origin": "http://evil.example"}
    assert handshake(dash, "/ws-frontend", foreign) == 403  # before anything else
    assert handshake(dash, "/ws-login", foreign) == 403
    assert sign_in(dash, password="wrong")["error"] == "wrong user name or password"
    cookie = session_cookie(dash)
    own = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{dash.port}"}
    assert handshake(dash, "/ws-frontend", own) == 101
    assert handshake(dash, "/ws-frontend", {**own, "Origin": "http://evil.example"}) == 403
    names = [s["id"] for s in json.loads(request(dash, "/api/servers", own)[2])]
    assert names == ["alpha", "vault"]  # signed in: the hidden one too
    assert json.loads(request(dash, "/api/session", own)[2])["user"] == "alice"
    # /metrics wants the token, as Prometheus' `authorization` setting sends it.
    assert request(dash, "/metrics")[0] == 401
    assert request(dash, "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    status, _, body = request(dash, "/metrics", {"Authorization": "Bearer " + "m" * 24})
    assert status == 200 and b'id="vault"' in body
    # Sessions survive a restart, and end on logout.
    assert dash.stop() == 0
    dash.start()
    assert request(dash, "/api/servers", own)[0] == 200
    status, headers, _ = request(dash, "/logout?path=/", own)
    assert status == 303 and "Max-Age=0" in headers["Set-Cookie"]
    assert request(dash, "/api/servers", own)[0] == 401
    log = dash.log_text()
    assert PASSWORD not in log and cookie.split("=", 1)[1] not in log


def test_redirects_stay_on_this_dashboard_and_sign_in_comes_from_its_page(
        make_dashboard: Any) -> None:
    """/logout?path=//evil.example/x answered 303 to another site; /login did the same with
    a cookie for that path, and traded a ticket for a page on another site (login CSRF)."""
    dash: Dashboard = make_dashboard(private_servers(), viewers={"public": False,
                                                                 "users": {"alice": HASH}})
    status, headers, _ = request(dash, "/logout?path=//evil.example/x")
    assert status == 303 and headers["Location"] == "/"
    for foreign in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Referer": "http://evil.example/page"}, {"Origin": "http://["}):
        ticket = sign_in(dash)["ticket"]
        status, _, body = request(dash, f"/login?ticket={ticket}&path=/", foreign)
        assert status == 403 and b"another site" in body, (foreign, status)
        assert "Set-Cookie" not in request(dash, f"/login?ticket={ticket}&path=/", foreign)[1]
    ticket = sign_in(dash)["ticket"]
    own = {"Sec-Fetch-Site": "same-origin", "Referer": dash.url("/")}
    status, headers, _ = request(dash, f"/login?ticket={ticket}&path=//evil.example/x", own)
    assert status == 303 and headers["Location"] == "/" and "Path=/;" in headers["Set-Cookie"]
    with socket.create_connection(("127.0.0.1", dash.port), timeout=5) as raw:
        raw.sendall(b"GET //[x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
    assert handshake(dash, "/ws-frontend", {"Origin": "http://["}) == 403
    dash.wait_for_log("request refused: unusable target")
    assert "Traceback" not in dash.log_text()


def test_a_changed_password_ends_its_sessions_on_reload(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH}})
    own = {"Cookie": session_cookie(dash)}
    assert request(dash, "/api/servers", own)[0] == 200
    config = json.loads(dash.config_path.read_text())
    config["viewers"]["users"]["alice"] = sessions.hash_password("another password")
    dash.write_config(config)
    mark = len(dash.lines)
    dash.signal(signal.SIGHUP)
    dash.wait_for_log(r"1 sessions ended", after=mark)
    assert request(dash, "/api/servers", own)[0] == 401


def test_a_private_dashboard_tells_strangers_nothing(make_dashboard: Any) -> None:
    """Before, with "public": false and no metricsToken, anonymous /metrics gave every
    non-hidden server's figures."""
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH}})
    dash.wait_for_log(r'the dashboard is private and has no "metricsToken", so /metrics '
                      r"answers 401 to everyone")
    own = {"Cookie": session_cookie(dash)}
    with dash.agent("alpha") as agent:
        agent.send(json.dumps(go_report()))
        for headers in ({}, own):
            status, _, body = request(dash, "/metrics", headers)
            assert status == 401 and b"needs a metricsToken" in body
        assert json.loads(request(dash, "/healthz")[2]) == {"status": "ok"}
        assert json.loads(request(dash, "/healthz", own)[2])["servers"] == 2


def test_an_ended_session_closes_its_viewer(make_dashboard: Any) -> None:
    """Before, after /logout, or once the user was removed and servers.json reloaded, the
    open /ws-frontend kept receiving everything, hidden servers included."""
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH, "bob": HASH}})
    alice, bob = session_cookie(dash), session_cookie(dash, "bob")
    with connect(dash.url("/ws-frontend", "ws"), additional_headers={"Cookie": alice},
                 open_timeout=10) as first, \
            connect(dash.url("/ws-frontend", "ws"), additional_headers={"Cookie": bob},
                    open_timeout=10) as second:
        assert {s["id"] for s in recv_json(first)["servers"]} == {"alpha", "vault"}
        recv_json(second)
        assert request(dash, "/logout?path=/", {"Cookie": alice})[0] == 303
        with pytest.raises(ConnectionClosed):
            while True:
                first.recv(timeout=5)
        assert first.close_code == 1008 and first.close_reason == "signed out"
        config = json.loads(dash.config_path.read_text())
        del config["viewers"]["users"]["bob"]
        dash.write_config(config)
        dash.signal(signal.SIGHUP)
        with pytest.raises(ConnectionClosed):
            while True:
                second.recv(timeout=5)
        assert second.close_code == 1008


def test_wrong_passwords_lock_one_user_at_one_address_only(make_dashboard: Any) -> None:
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH, "bob": HASH}}, metricsToken="m" * 24)
    for _ in range(10):
        assert sign_in(dash, password="guess", source="127.0.0.2")["ok"] is False
    refused = sign_in(dash, source="127.0.0.2")  # the right password, too late
    assert refused["ok"] is False and "too many failed attempts" in refused["error"]
    assert sign_in(dash, user="bob", source="127.0.0.2")["ok"] is True  # another user there
    assert sign_in(dash, source="127.0.0.3")["ok"] is True  # others sign in as usual
    dash.wait_for_log("user:alice from 127.0.0.2 refused for 300 s")
    assert dash.refused("sign_in") == 10


def test_guesses_sent_together_are_counted_as_they_arrive(make_dashboard: Any) -> None:
    """Before, a guess was counted after scrypt answered, so guesses sent together on
    sockets opened beforehand were all checked: from one address, 200 guesses and the right
    one last got a ticket; from 20 addresses, a real sign-in took 57 s."""
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH}}, metricsToken="m" * 24)
    started = time.monotonic()
    assert sign_in(dash, source="127.0.0.100")["ok"]  # the real user, known here
    alone = time.monotonic() - started  # one sign-in on this machine, under its load now

    def burst(source: str, count: int = limits.LOGINS_PER_ADDRESS) -> list[dict[str, Any]]:
        """Guesses sent at once, on sockets opened before."""
        sockets = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                            source_address=(source, 0))
            with contextlib.suppress(InvalidStatus):  # 429: the last burst's are still open
                sockets.append(connect(dash.url("/ws-login", "ws"), open_timeout=10, sock=sock))
        for ws in sockets:
            ws.send(json.dumps({"user": "alice", "password": "a guess"}))
        answers = []
        for ws in sockets:
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                answers.append(json.loads(ws.recv(timeout=20)))
            ws.close()
        return answers

    # One address: one guess checked at a time, every one counted, the ban holds.
    answers = [a for _ in range(12) for a in burst("127.0.8.1")]
    assert all(not a["ok"] for a in answers)
    assert sign_in(dash, source="127.0.8.1")["ok"] is False  # right, but banned by now
    assert dash.refused("sign_in") <= limits.FAILED_HANDSHAKES_LIMIT
    # Twenty addresses at once while the real user signs in: under 2 s, or (on a machine
    # busy with other tests) ten sign-ins alone. Queued behind the attack it took 57 s.
    refused = dash.refused("sign_in") + dash.refused("sign_in_busy")
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        attack = [pool.submit(lambda n=n: [burst(f"127.0.9.{n}") for _ in range(3)])
                  for n in range(1, 21)]
        wait_until(lambda: dash.refused("sign_in") + dash.refused("sign_in_busy")
                   > refused + 20)  # the attack is under way
        started = time.monotonic()
        assert sign_in(dash, source="127.0.0.100")["ok"]
        took = time.monotonic() - started
        for done in attack:
            done.result()
    assert took < max(2, 10 * alone), (took, alone)
    assert dash.refused("sign_in_busy") > 0  # the rest waited for no thread
    assert "Traceback" not in dash.log_text()


def test_idle_sign_in_sockets_are_counted_and_closed(make_dashboard: Any) -> None:
    """Before, one address held 1,014 idle /ws-login sockets (the open-file limit was
    1,024) and agents' reconnects timed out."""
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH}})
    idle = []
    for _ in range(limits.LOGINS_PER_ADDRESS):
        sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                        source_address=("127.0.10.1", 0))
        idle.append(connect(dash.url("/ws-login", "ws"), sock=sock, open_timeout=10))
    try:
        sock = socket.create_connection(("127.0.0.1", dash.port), timeout=10,
                                        source_address=("127.0.10.1", 0))
        with pytest.raises(InvalidStatus) as refused:
            connect(dash.url("/ws-login", "ws"), sock=sock, open_timeout=10)
        assert refused.value.response.status_code == 429
        assert sign_in(dash, source="127.0.10.2")["ok"]  # another address: as usual
        started = time.monotonic()
        for ws in idle:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=handlers.LOGIN_IDLE + 5)
            assert ws.close_code == 1008
        assert time.monotonic() - started < handlers.LOGIN_IDLE + 2
        assert sign_in(dash, source="127.0.10.1")["ok"]  # the places are free again
    finally:
        for ws in idle:
            ws.close()


def test_hidden_servers_reach_no_anonymous_viewer(make_dashboard: Any, page_on: Any) -> None:
    dash: Dashboard = make_dashboard(
        private_servers(), history=True, viewers={"public": True, "users": {"alice": HASH}},
        notifiers=[{"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/"}],
        alerts=[{"name": "cpu", "metric": "cpu", "above": 50, "notify": ["ops"]}])
    own = {"Cookie": session_cookie(dash), "Origin": f"http://127.0.0.1:{dash.port}"}
    with dash.viewer() as anonymous, connect(dash.url("/ws-frontend", "ws"),
                                              additional_headers=own) as signed_in, \
            dash.agent("vault") as vault, dash.agent("alpha") as alpha:
        assert [s["id"] for s in recv_json(anonymous)["servers"]] == ["alpha"]
        assert [s["id"] for s in recv_json(signed_in)["servers"]] == ["alpha", "vault"]
        vault.send(json.dumps(go_report(cpuInfo={"percent": 99.0, "info": []})))
        recv_until(signed_in, lambda m: server_in(m, "vault"))
        alpha.send(json.dumps(go_report(cpuInfo={"percent": 10.0, "info": []})))
        update = recv_until(anonymous, lambda m: server_in(m, "alpha"))
        assert server_in(update, "vault") is None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # nothing about vault ever reaches it
            try:
                message = recv_json(anonymous, timeout=0.5)
            except TimeoutError:
                continue
            assert server_in(message, "vault") is None
        for path in ("/api/history?id=vault&range=1h", "/api/traffic?id=vault"):
            assert request(dash, path)[0] == 404
            assert request(dash, path, own)[0] == 200
        assert [s["id"] for s in json.loads(request(dash, "/api/servers")[2])] == ["alpha"]
        assert request(dash, "/api/alerts")[2] == b"[]"
        assert [a["server"]["id"] for a in json.loads(request(dash, "/api/alerts", own)[2])] \
            == ["vault"]
        assert b"vault" not in request(dash, "/metrics")[2]  # no token set: anonymous
        # ... and its agent is not counted either, nor in /healthz (before: it was).
        assert b"\nsss_agents_connected 1\n" in request(dash, "/metrics")[2]
        health = json.loads(request(dash, "/healthz")[2])
        assert (health["servers"], health["agents"]) == (1, 1)
        assert json.loads(request(dash, "/healthz", own)[2])["agents"] == 2
        page = page_on(dash)  # the header's totals count what this viewer may see
        card(page, "alpha").wait_for()
        assert page.locator("#total").inner_text() == "1"
        assert page.locator("#alerts").inner_text() == "0" and card(page, "vault").count() == 0
        assert not page.locator("#signin-open").is_hidden()  # users exist: "Sign in" shows


# --- the page, in Chromium -----------------------------------------------------------


def test_sign_in_page(make_dashboard: Any, page_on: Any) -> None:
    dash: Dashboard = make_dashboard(private_servers(), viewers={
        "public": False, "users": {"alice": HASH}, "sessionDays": 0.0001})  # 8.6 s
    SCREENSHOTS.mkdir(exist_ok=True)
    for scheme, width in (("dark", 375), ("light", 1280)):
        page = page_on(dash, color_scheme=scheme, viewport={"width": width, "height": 700})
        form = page.locator("#signin-form")
        form.wait_for(timeout=10_000)
        assert page.locator("#state").inner_text() == "signed out"
        assert card(page, "alpha").count() == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(SCREENSHOTS / f"signin-{scheme}-{width}px.png"))
    page.fill("#signin-user", "alice")
    page.fill("#signin-password", "not it")
    page.click("#signin-form button[type=submit]")
    page.locator("#signin-error", has_text="wrong user name or password").wait_for()
    page.fill("#signin-password", PASSWORD)
    page.click("#signin-form button[type=submit]")
    card(page, "vault").wait_for(timeout=10_000)  # signed in: hidden servers show too
    assert page.locator("#user").inner_text() == "alice"
    assert page.locator("#state", has_text="live").count() == 1
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["sss_session"] and cookies[0]["httpOnly"]
    page.click("#signout")
    page.locator("#signin-form").wait_for(timeout=10_000)
    # Signing in again, then the session runs out (sessionDays is 8.6 s here).
    page.fill("#signin-user", "alice")
    page.fill("#signin-password", PASSWORD)
    page.click("#signin-form button[type=submit]")
    card(page, "alpha").wait_for(timeout=10_000)
    page.wait_for_timeout(9_500)
    page.reload()
    page.locator("#signin-form").wait_for(timeout=10_000)
    csp = dash.get("/")[1]["Content-Security-Policy"]
    assert "form-action 'self'" in csp
