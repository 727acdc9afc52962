"""The dashboard at work: its three WebSocket handlers, the verdict on each report, the
periodic work, and reload.

    $ kill -HUP $(pidof -x dashboard.py)
    2026-12-04 18:10:02 INFO config reloaded: 12 servers (1 added, 0 removed)

`Dashboard` holds the hub, the site and the features for one running server. Agents
(`serve_agent`) are authenticated before the upgrade (web.check_agent) and send reports,
each counted, rate-limited, validated and applied (`take_report`); viewers
(`serve_viewer`) get a snapshot, then updates; a sign-in socket (`serve_login`) trades a
user name and password for a ticket. Once a second `housekeeping` applies the offline and
silence rules, alerts and expiries; history and traffic are written on their own
schedules. websockets is used through its public API here (transport.py holds the rest).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, NamedTuple

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from . import runtime
from .alerts import Alerting, Observed, missing_apprise, observed_values
from .config import Config, ConfigError, ServerConfig, load_config
from .history import History
from .hub import Closing, Hub
from .limits import (
    ANSWER_SECONDS,
    BAD_REPORTS_LIMIT,
    BAD_REPORTS_WINDOW,
    FLOOD_DROPS,
    FLOOD_WINDOW,
    REPORT_BURST,
    REPORTS_PER_SECOND,
    SIGN_IN_WORKERS,
    VIEWER_FRAME_BURST,
    VIEWER_FRAMES_PER_SECOND,
    Burst,
    TokenBucket,
    address_key,
    answers_budget,
)
from .probes import probes_frame
from .reports import MAX_FRAME_BYTES, ReportError, validate_report
from .sessions import Sessions, check_password
from .timings import TICK_SECONDS, WallWatch, jump_words, reconnect_spread, update_spread
from .traffic import SAVE_SECONDS, Traffic, days_left, traffic_json, zone
from .transport import (
    Connection,
    broadcast_framed,
    forget_handshake,
    hang_up,
    ignore_frame,
    write_backlog,
)
from .watch import Watches, processes_frame, viewer_request
from .web import (
    Agent,
    Files,
    Login,
    Options,
    Site,
    Viewer,
    banned_response,
    client_address,
    log_ban,
    route_request,
    text_response,
)

log = logging.getLogger("sss.dashboard")

LOGIN_IDLE = 5.0  # a sign-in socket that says nothing for this long is closed
SESSIONS_EXPIRE_EVERY = 60.0  # sessions that ran out are forgotten this often
# Checked against for unknown user names, so they take as long as known ones.
DUMMY_HASH = ("scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
              "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


class Dashboard:
    """The hub and the site, plus what only a running server has: closes in flight."""

    def __init__(self, config: Config, config_path: Path, options: Options,
                 history: History | None, data: Path, files: Files) -> None:
        self.config_path = config_path
        self.history = history
        self.traffic = Traffic(data / "traffic.json", zone(config.timezone))
        self.traffic.load()
        self.hub = Hub(config, broadcast_framed, time.time, time.monotonic,
                       asyncio.get_running_loop(), self.reported, options.viewer_memory,
                       write_backlog, hang_up)
        self.alerting = Alerting(data / "alerts.json", time.monotonic(), time.time())
        self.alerting.configure(config.notifiers)
        self.wall_watch = WallWatch(time.monotonic(), time.time())
        self.sessions = Sessions(data / "sessions.json", ended=self.close_sessions)
        self.sessions.load()
        self.sessions.expire(config.viewers.users, self.steady())
        self.sessions_expired = time.monotonic()
        self.site = Site.create(self.hub, files, options, self.alerting, self.sessions,
                                history, self.traffic)
        self.site.steady = self.steady
        if history is not None:
            now, wall = time.monotonic(), time.time()
            self.hub.restore(history.restore(now, wall))
            self.hub.take_history(history.fields(list(self.hub.servers), wall))
        self.refresh_traffic(time.time())
        self.closing: set[asyncio.Future[None]] = set()  # kept referenced until done
        self.reloaded: Callable[[], None] = lambda: None  # after each reload that took
        # Every agent's Connection.take_frame: one bound method, not one per connection.
        self.take_whole_frame = self.take_agent_frame
        # Passwords are checked here, on threads of their own (16 MiB and ~50 ms each).
        self.password_checks = concurrent.futures.ThreadPoolExecutor(
            SIGN_IN_WORKERS, "sss-sign-in")
        self.collections = runtime.FullCollections(time.monotonic())
        # Bursts of dropped and of invalid reports, per agent (one table for all of them:
        # 10,000 connections do not each carry two).
        self.floods = Burst(FLOOD_DROPS, FLOOD_WINDOW)
        self.invalid = Burst(BAD_REPORTS_LIMIT, BAD_REPORTS_WINDOW)
        self.watches = Watches()  # who has which server's detail view open

    def steady(self) -> float:
        """Wall time that never jumps forward: what retention and sessions go by."""
        return self.wall_watch.steady(time.monotonic())

    def close_sessions(self, keys: list[str]) -> None:
        """The viewers of sessions that ended (signed out, ran out, a password changed or
        the user removed) see no more: their sockets are closed (the page then watches as
        what it is now, or signs in)."""
        ended = set(keys)
        hub = self.hub
        for ws in [ws for ws in [*hub.viewers, *hub.joining]
                   if getattr(ws, "session", None) in ended]:
            hub.remove_viewer(ws)
            self.close_later(Closing(ws, CloseCode.POLICY_VIOLATION, "signed out"))

    def close_later(self, closing: Closing) -> None:
        """Close without waiting for the peer's answer."""
        self.in_background(closing.connection.close(closing.code, closing.reason))

    def in_background(self, awaitable: Awaitable[None]) -> asyncio.Future[None]:
        """Run `awaitable` without waiting for it, kept referenced until it is done."""
        future = asyncio.ensure_future(awaitable)
        self.closing.add(future)
        future.add_done_callback(self.closing.discard)
        return future

    def process_request(self, connection: Connection,
                        request: Request) -> Response | Awaitable[Response] | None:
        """websockets' hook: an HTTP answer, or None to let a WebSocket handshake through
        as the agent, viewer or sign-in socket web.route_request found it to be."""
        connection.headers_read()
        now = time.monotonic()
        route = route_request(self.site, connection.peer, request, now)
        if isinstance(route, Login):
            route = self.admit_login(connection, route, now)
        if isinstance(route, (Agent, Viewer, Login)):
            connection.become(route, request)
            route = None
        if connection.head:  # the GET answer's headers, no body; no upgrade on HEAD
            route = headers_only(route)
        if route is None:  # a WebSocket: websockets answers 101
            return None
        address = client_address(connection.peer, request.headers,
                                 self.site.options.trusted_proxies)
        if isinstance(route, Awaitable):
            return self.answer_when_ready(connection, address, route)
        return self.counted_answer(connection, address, route)

    def admit_login(self, connection: Connection, login: Login,
                    now: float) -> Login | Response:
        """A sign-in socket takes a place (limits.Waiting): refused past its address's
        share; past the total, the one that waited longest makes room."""
        site = self.site
        crowded, oldest = site.connections.logins.start(connection, login.address, now)
        if crowded:
            site.refuse("logins", ("logins", address_key(login.address)),
                        f"sign-in socket from {login.address} refused: {crowded}", now)
            return text_response(HTTPStatus.TOO_MANY_REQUESTS, crowded, {"Retry-After": "5"})
        if oldest is not None:
            site.refuse("logins_dropped", ("logins_dropped",), "a sign-in socket that said "
                        "nothing was dropped: every place was taken", now)
            hang_up(oldest)
        return login

    async def answer_when_ready(self, connection: Connection, address: str,
                                response: Awaitable[Response]) -> Response:
        return self.counted_answer(connection, address, await response)

    def counted_answer(self, connection: Connection, address: str,
                       response: Response) -> Response:
        """A plain HTTP answer, counted until its connection closes (limits.Answers): past
        the address's share it is refused; past the total the largest not taken yet go."""
        site, now = self.site, time.monotonic()
        per_address, total = answers_budget(max(self.hub.snapshot_bytes, len(response.body)))
        refusal, dropped = site.answers.admit(connection, address, len(response.body), now,
                                              per_address, total)
        for other in dropped:
            site.refuse("answers_dropped", ("answers_dropped",), "an answer nobody took was "
                        "dropped: the answers not taken yet passed their budget", now)
            hang_up(other)
        if refusal:
            site.refuse("answers", ("answers", address_key(address)),
                        f"request from {address} refused: {refusal}", now)
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, f"{refusal}; try again",
                                 {"Retry-After": "5"})
        return response

    async def handler(self, ws: ServerConnection) -> None:
        """Dispatch by who connected; process_request vetted it and stored who it is."""
        if ws.agent is not None:  # type: ignore[attr-defined]
            await self.serve_agent(ws)
        elif ws.login_from is not None:  # type: ignore[attr-defined]
            await self.serve_login(ws)
        else:
            await self.serve_viewer(ws)

    async def serve_login(self, ws: ServerConnection) -> None:
        """One sign-in attempt: {"user", "password"} in, a ticket or an error out.

        A guess counts as a failed attempt as it arrives, before its password is checked,
        and is forgiven if it was right: guesses sent together on sockets opened before
        count all at once, not after scrypt has answered each. The checks run one per
        address at a time, SIGN_IN_CHECKS in all, on SIGN_IN_WORKERS threads of their own."""
        address = ws.login_from  # type: ignore[attr-defined]
        try:
            frame = await asyncio.wait_for(ws.recv(), LOGIN_IDLE)
            attempt = json.loads(frame)
            user, password = str(attempt["user"])[:64], str(attempt["password"])[:1024]
        except (asyncio.TimeoutError, ConnectionClosed, ValueError, KeyError, TypeError):
            await ws.close(CloseCode.POLICY_VIOLATION, "expected a user and a password")
            return
        now, who, site = time.monotonic(), f"user:{user}", self.site
        site.connections.logins.end(ws)  # it said what it wants: no longer waiting
        refusal = banned_response(site, address, who, now)
        busy = "" if refusal is not None else site.connections.checks.add(address)
        if refusal is not None or busy:
            if busy:
                site.refuse("sign_in_busy", ("sign_in_busy", address_key(address)),
                            f"viewer sign-in from {address} refused: {busy}", now)
            error = refusal.body.decode().strip() if refusal else f"{busy}; try again"
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"ok": False, "error": error}))
                await ws.close()
            return
        banned = site.limiter.fail(address, who, now)  # counted now; forgiven if right
        if banned:
            log_ban(site, address, banned)
        users = self.hub.config.viewers.users
        stored = users.get(user, DUMMY_HASH)  # as slow for unknown users as for known ones
        try:
            matches = await asyncio.get_running_loop().run_in_executor(
                self.password_checks, check_password, password, stored)
        finally:
            site.connections.checks.remove(address)
        if matches and self.hub.config.viewers.users.get(user) == stored:  # still so
            site.limiter.forgive(address, who, banned)
            site.limiter.succeeded(address, now)
            log.info("viewer sign-in: %r from %s", user, address)
            answer = {"ok": True, "ticket": self.sessions.ticket(user, time.monotonic())}
        else:
            site.refuse("sign_in", ("sign_in", address_key(address)),
                        f"viewer sign-in refused: {user[:64]!r} from {address}: "
                        "wrong user name or password", now)
            answer = {"ok": False, "error": "wrong user name or password"}
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(answer))
            await ws.close()

    async def serve_agent(self, ws: ServerConnection) -> None:
        """Apply each report of one agent until it leaves or misbehaves."""
        hub = self.hub
        sid, address, check = ws.agent.server_id, ws.agent.address, ws.agent.check
        older = hub.attach_agent(sid, ws, time.monotonic())
        if older is not None:
            log.info("agent replaced: id=%s by a new connection from %s", sid, address)
            self.close_later(older)
        else:
            log.info("agent connected: id=%s from %s", sid, address)
        if not check:  # a checking agent reads one answer (older ones skip a probes frame)
            broadcast_framed([ws], reconnect_frame(len(hub.servers)))
        self.tell_probes(ws, hub.servers[sid].config)
        self.offer_update(ws)
        self.watches.agent_connected(sid)  # told again at the next tick, if watched
        forget_handshake(ws)
        ws.reports = TokenBucket(REPORTS_PER_SECOND, REPORT_BURST, time.monotonic())
        ws.acknowledged = check  # a checking agent hears of every report anyway
        if not check:  # a checking agent's answers go out in order, from the loop below
            ws.take_reports(self.take_whole_frame)
        try:
            async for frame in ws:  # what the transport did not take as it came
                verdict = self.agent_verdict(ws, frame)
                if verdict is None:
                    break  # removed or re-keyed by a reload
                del frame  # not kept while waiting for the next one (10,000 agents: 14 MB)
                if check and verdict.answer:
                    await ws.send(verdict.answer)
                if verdict.close is not None:
                    await self.close_agent(ws, sid, *verdict.close)
                    break
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                self.drop_report(sid, ReportError("too_large", f"frame over {MAX_FRAME_BYTES} "
                                                  "bytes"), time.monotonic())
        finally:
            ws.take_frame = None
            if hub.detach_agent(sid, ws):
                log.info("agent disconnected: id=%s (%s %r)", sid, ws.close_code,
                         ws.close_reason)

    def take_agent_frame(self, ws: Connection, frame: bytes) -> None:
        """One whole frame of an agent, as it is parsed (transport.Connection.take_frame)."""
        verdict = self.agent_verdict(ws, frame)  # None: being closed already
        if verdict is not None and verdict.close is not None:
            ws.take_frame = ignore_frame
            self.in_background(self.close_agent(ws, ws.agent.server_id, *verdict.close))

    def agent_verdict(self, ws: Connection, frame: str | bytes) -> Verdict | None:
        """take_report() for one frame of the agent on `ws`; None when `ws` no longer
        speaks for it (replaced, removed or re-keyed by a reload). The first report
        accepted on a connection is acknowledged ("accepted" frame): the agent's backoff
        starts over, even when the dashboard goes down again seconds later."""
        sid = ws.agent.server_id
        if not self.hub.is_current(sid, ws):
            return None
        verdict = self.take_report(sid, frame, ws.reports, time.monotonic())
        if verdict is ACCEPTED and not ws.acknowledged:
            ws.acknowledged = True
            broadcast_framed([ws], ACCEPTED_FRAME)
        return verdict

    def take_report(self, sid: str, frame: str | bytes, reports: TokenBucket,
                    now: float) -> Verdict:
        """One frame of an agent: counted, then dropped over the rate (`reports`, this
        connection's), rejected when invalid, or accepted into the hub."""
        self.hub.heard_from(sid, now)
        if not reports.take(now):  # over 10 a second: dropped unread
            self.drop_report(sid, ReportError(
                "rate", f"over {REPORTS_PER_SECOND:.0f} reports a second"), now)
            if self.floods.add(sid, now):
                return Verdict("", (CloseCode.POLICY_VIOLATION, f"{FLOOD_DROPS} reports over "
                                    f"the rate within {FLOOD_WINDOW:.0f} s"))
            return Verdict("", None)
        try:
            record = validate_report(frame)
        except ReportError as exc:
            self.drop_report(sid, exc, now)
            if self.invalid.add(sid, now):
                return Verdict(check_answer(str(exc)), (
                    CloseCode.INVALID_DATA,
                    f"{BAD_REPORTS_LIMIT} invalid reports within {BAD_REPORTS_WINDOW:.0f} s"))
            return Verdict(check_answer(str(exc)), None)
        self.hub.accept_report(sid, record, now, time.time())
        return ACCEPTED

    def tell_probes(self, ws: ServerConnection, server: ServerConfig,
                    unless_none: bool = True) -> None:
        """Send the agent what to probe, when anything is configured for it (agents that
        know nothing of probes, the Go one, read frames and ignore them)."""
        probes = self.hub.config.probes
        if unless_none and not probes.for_server(server):
            return
        broadcast_framed([ws], probes_frame(probes, server))

    def offer_update(self, ws: ServerConnection) -> None:
        """Tell an agent that takes updates which agent.py this dashboard serves, where
        servers.json offers updates (agents whose file differs fetch it)."""
        files = self.site.files
        if ws.agent.updates and self.hub.config.agent_updates and files.agent is not None:
            broadcast_framed([ws], update_frame(files.agent_sha256, len(files.agent),
                                                len(self.hub.servers)))

    def drop_report(self, sid: str, error: ReportError, now: float) -> None:
        """Count a dropped report; log it once a minute per agent and reason, with how many
        were held back."""
        self.hub.reject_report(error)
        self.site.log_quietly(logging.WARNING, ("report", sid, error.reason),
                              f"report dropped: id={sid}: {error}", now)

    @staticmethod
    async def close_agent(ws: ServerConnection, sid: str, code: CloseCode, why: str) -> None:
        log.warning("agent closed: id=%s: %s", sid, why)
        await ws.close(code, why)

    async def serve_viewer(self, ws: ServerConnection) -> None:
        """Send the snapshot, then updates, until the browser leaves."""
        hub = self.hub
        if ws in hub.add_viewer(ws, time.time(), ws.sees_hidden):  # type: ignore[attr-defined]
            return  # cut at once: the viewers' memory budget is spent
        self.site.log_quietly(logging.INFO, ("viewer connected",),
                              f"viewer connected ({len(hub.viewers)} watching)",
                              time.monotonic())
        frames = TokenBucket(VIEWER_FRAMES_PER_SECOND, VIEWER_FRAME_BURST, time.monotonic())
        try:
            async for frame in ws:  # "watch" and "unwatch"; reading keeps pings answered
                now = time.monotonic()
                if not frames.take(now):
                    await ws.close(CloseCode.POLICY_VIOLATION, "too many frames")
                    break
                self.viewer_said(ws, frame, now)
        except ConnectionClosed:
            pass
        finally:
            self.watches.forget(ws)
            hub.remove_viewer(ws)
            self.site.log_quietly(logging.INFO, ("viewer disconnected",),
                                  f"viewer disconnected ({len(hub.viewers)} watching)",
                                  time.monotonic())

    def viewer_said(self, ws: ServerConnection, frame: str | bytes, now: float) -> None:
        """A viewer opened or left a server's detail view (PROTOCOL.md, "Top processes"):
        counted only for a server it may see; anything else is ignored."""
        request = viewer_request(frame)
        state = self.hub.servers.get(request[1]) if request else None
        if request is None or state is None or (
                state.config.hidden and not ws.sees_hidden):  # type: ignore[attr-defined]
            return
        if request[0] == "watch":
            self.watches.watch(ws, request[1], now)
        else:
            self.watches.unwatch(ws, request[1])
        self.tell_watched(now)

    def tell_watched(self, now: float) -> None:
        """Tell agents to start, renew or stop sending their top processes."""
        for sid, seconds in self.watches.frames_due(now):
            state = self.hub.servers.get(sid)
            agent = state.connection if state is not None else None
            if agent is not None and not agent.agent.check:
                broadcast_framed([agent], processes_frame(seconds))

    # --- housekeeping ---

    async def housekeeping(self) -> None:
        """Once a second: tick()."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            with self.surviving("housekeeping"):
                self.tick(time.monotonic(), time.time())

    @contextlib.contextmanager
    def surviving(self, work: str) -> Iterator[None]:
        """Periodic work that failed (a bug) is said, once a minute with its traceback,
        and runs again next time: a dead task would stop offline rules, alerts, history."""
        try:
            yield
        except Exception:
            if self.site.quiet.allow((work,), time.monotonic()) is not None:
                log.exception("%s failed; it runs again next time", work)

    def tick(self, now: float, wall: float) -> None:
        """Offline transitions, silent connections, the wall clock, expired bans, alerts,
        sessions, collections."""
        gone, closes = self.hub.tick(now)
        for sid in gone:
            log.info("server offline: id=%s", sid)
        for closing in closes:
            log.warning("agent closed: id=%s: %s", closing.connection.agent.server_id,
                        closing.reason)
            self.close_later(closing)
        jump = self.wall_watch.observe(now, wall)
        if jump:
            log.warning("wall clock jumped %s (durations are measured on the monotonic "
                        "clock; nothing is deleted or expired for this jump until a "
                        "restart)", jump_words(jump))
        for late in self.site.answers.overdue(now):  # answers nobody takes
            self.site.answers.done(late)
            self.site.refuse("answers_late", ("answers_late",), "an answer nobody took "
                             f"within {ANSWER_SECONDS:.0f} s was dropped", now)
            hang_up(late)
        self.site.limiter.expire(now)
        self.floods.expire(now)
        self.invalid.expire(now)
        self.evaluate_alerts(now, wall)
        self.tell_watched(now)
        if now - self.sessions_expired >= SESSIONS_EXPIRE_EVERY:
            self.sessions.expire(self.hub.config.viewers.users, self.steady())
            self.sessions_expired = now
        if self.collections.run_if_due(self.site.closed, now):
            self.site.closed = 0
        if int(now) % runtime.TRIM_SECONDS == 0:
            runtime.give_back_memory()

    def reported(self, sid: str, record: dict[str, Any], now: float, wall: float) -> None:
        """The hub accepted a report: traffic counts it, history folds it (the hot path)."""
        state = self.hub.servers[sid]
        self.traffic.observe(sid, record, state.config.traffic, wall)
        if "traffic" not in state.extras:  # then refresh_traffic() keeps it current
            self.hub.set_extra(sid, "traffic", self.traffic_field(state.config, wall))
        if self.history is not None:
            self.history.fold(sid, record, now, wall)

    def traffic_field(self, server: ServerConfig, wall: float) -> str:
        """A server's `traffic` field, encoded, once counting started or a limit is set;
        else ""."""
        if server.id not in self.traffic.meters and not server.traffic.limit:
            return ""
        return traffic_json(self.traffic.view(server.id, server.traffic, wall))

    def refresh_traffic(self, wall: float) -> None:
        """Every server's period totals on its card, once a minute (keep_traffic) rather
        than with each report: a monthly total needs no fresher, and at every report it was
        an eighth of what viewers receive. The changes go out over the next few updates,
        or with a server's own next report; a new period starts even without reports."""
        for sid, state in self.hub.servers.items():
            self.hub.set_extra(sid, "traffic", self.traffic_field(state.config, wall),
                               soon=False)

    def observe(self, wall: float) -> list[Observed]:
        """What alert rules see of every server now."""
        return [Observed(state.config, state.online, state.record is not None,
                         state.report_interval,
                         observed_values(state.record) if state.online else {},
                         self.plan_values(state.config, wall))
                for state in self.hub.servers.values()]

    def plan_values(self, server: ServerConfig, wall: float) -> dict[str, float]:
        """`traffic` (% of the limit) and `expiry` (days left): judged online or not."""
        values: dict[str, float] = {}
        if server.traffic.limit:
            used = self.traffic.view(server.id, server.traffic, wall)["used"]
            values["traffic"] = round(used / server.traffic.limit * 100, 2)
        if server.expires:
            values["expiry"] = days_left(server.expires, wall, self.traffic.zone)
        return values

    def evaluate_alerts(self, now: float, wall: float) -> None:
        """Alert rules against the live state; a change shows on the servers' cards."""
        rules = self.hub.config.alerts
        if not rules and not self.alerting.evaluator.firing:
            return
        for sid in self.alerting.tick(rules, self.observe(wall), now, wall):
            self.hub.set_extra(sid, "alerts", self.alerting.view_value(sid))

    async def keep_traffic(self) -> None:
        """Save the period totals once a minute (or once a history step, if shorter), and
        show them on the cards (new periods too)."""
        every = min(SAVE_SECONDS, self.history.resolution) if self.history else SAVE_SECONDS
        while True:
            await asyncio.sleep(every)
            with self.surviving("traffic"):
                self.traffic.save()
                self.refresh_traffic(time.time())

    async def write_history(self, history: History) -> None:
        """At the end of every resolution step: the closed buckets go to SQLite."""
        while True:
            step = history.resolution
            await asyncio.sleep(step - time.time() % step + 0.01)
            with self.surviving("history"):
                await self.history_step(history)

    async def history_step(self, history: History, final: bool = False) -> None:
        hub, now = self.hub, time.monotonic()
        online = {sid for sid, state in hub.servers.items() if state.online}
        fields = await history.step(asyncio.get_running_loop(), now, time.time(),
                                    list(hub.servers), hub.last_record, final, online,
                                    kept_since=self.steady())
        if fields is not None:
            hub.take_history(fields)

    def reload(self) -> None:
        """SIGHUP: apply a changed servers.json; keep the old config if the new one is broken."""
        try:
            config, warnings = load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload failed, keeping the previous config: %s", problem)
            return
        for warning in warnings:
            log.warning("%s", warning)
        problem = missing_apprise(config)
        if problem:
            log.error("config reload failed, keeping the previous config: %s", problem)
            return
        old, served = self.hub.config, self.site.files
        told = {sid: (old.probes.interval, old.probes.for_server(state.config))
                for sid, state in self.hub.servers.items()}
        self.site.files = served.with_agent_read_again()
        closes, added, removed = self.hub.apply_config(config)
        runtime.take_over_full_collections(len(config.servers))
        for sid, state in self.hub.servers.items():
            plan = (config.probes.interval, config.probes.for_server(state.config))
            if state.connection is not None and told.get(sid, (0, ())) != plan:
                self.tell_probes(state.connection, state.config, unless_none=False)
        if config.agent_updates and (not old.agent_updates or
                                     self.site.files.agent_sha256 != served.agent_sha256):
            offered = [state.connection for state in self.hub.servers.values()
                       if state.connection is not None and state.connection.agent.updates]
            for ws in offered:
                self.offer_update(ws)
            log.info("config reload: agent.py %s offered to %d agents that take updates",
                     self.site.files.agent_version, len(offered))
        self.alerting.configure(config.notifiers)
        self.traffic.zone = zone(config.timezone)
        self.refresh_traffic(time.time())
        ended = self.sessions.expire(config.viewers.users, self.steady())
        if ended:
            log.info("config reload: %d sessions ended (password changed or user removed)",
                     ended)
        for closing in closes:
            log.info("agent disconnected: id=%s: %s", closing.connection.agent.server_id,
                     closing.reason)
            self.close_later(closing)
        if (config.host, config.port) != (old.host, old.port):
            log.warning("config reload: host and port changes apply after a restart")
        log.info("config reloaded: %d servers (%d added, %d removed)",
                 len(config.servers), added, removed)
        self.reloaded()


def headers_only(response: Response | Awaitable[Response] | None
                 ) -> Response | Awaitable[Response]:
    """The answer to HEAD: the GET answer's headers, no body (and no upgrade)."""
    if isinstance(response, Awaitable):
        async def later() -> Response:
            return dataclasses.replace(await response, body=b"")
        return later()
    return dataclasses.replace(response or text_response(
        HTTPStatus.METHOD_NOT_ALLOWED, "WebSocket handshakes use GET"), body=b"")


class Verdict(NamedTuple):
    """What to do after an agent's frame: the answer for `agent.py --check` connections,
    and the close code and reason when the connection is to be closed."""

    answer: str
    close: tuple[CloseCode, str] | None


def reconnect_frame(servers: int) -> str:
    """The frame telling an agent over how many seconds to spread its first retries after
    losing the dashboard (PROTOCOL.md, "Reconnect spread"), for a fleet of `servers`.

    >>> reconnect_frame(10_000)
    '{"type":"reconnect","spread":15.4}'
    """
    return f'{{"type":"reconnect","spread":{reconnect_spread(servers)}}}'


def update_frame(sha256: str, size: int, servers: int) -> str:
    """The frame telling an agent that takes updates which agent.py is served here, and
    over how long the fleet spreads fetching it (PROTOCOL.md, "Agent updates").

    >>> update_frame("ab" * 32, 71234, 2000)[-31:]
    'b","size":71234,"spread":100.0}'
    """
    return json.dumps({"type": "update", "sha256": sha256, "size": size,
                       "spread": update_spread(servers)}, separators=(",", ":"))


def check_answer(error: str) -> str:
    """The frame answering one report on an agent.py --check connection (PROTOCOL.md)."""
    if not error:
        return '{"type":"check","accepted":true}'
    return json.dumps({"type": "check", "accepted": False, "reason": error})


ACCEPTED = Verdict(check_answer(""), None)
ACCEPTED_FRAME = '{"type":"accepted"}'  # once a connection, after its first accepted report
