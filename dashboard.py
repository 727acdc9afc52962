#!/usr/bin/env python3
"""SimpleServerStatus dashboard: agents report over WebSocket, browsers watch live.

    $ python3 dashboard.py --port 8931
    2026-11-27 04:56:22 WARNING /work/main/servers.json: servers[0] (id 'local') uses the pl...
    2026-11-27 04:56:22 INFO open-file limit: 20000
    2026-11-27 04:56:22 INFO listening on http://0.0.0.0:8931 (1 servers configured)
    2026-11-27 04:56:23 INFO agent connected: id=local from 127.0.0.1
    2026-11-27 04:56:24 INFO viewer connected (1 watching)
    2026-11-27 04:56:27 INFO agent disconnected: id=local (1000 'agent shutting down')

Agents connect to /ws-report with the headers X-SERVER-ID and X-AUTH-SECRET and
send one JSON report per interval; browsers connect to /ws-frontend and get a
snapshot, then coalesced updates. PROTOCOL.md describes every message.

This file wires the modules beside it together (README, "Layout"): config.py reads
servers.json, reports.py validates reports, hub.py keeps the live state, web.py answers
HTTP, metrics.py renders /metrics, limits.py and timings.py hold the limits and timings,
history.py, alerts.py, traffic.py and sessions.py the features, datafiles.py their files.
"""

from __future__ import annotations

import sys


def require_websockets() -> None:
    """One line naming what is missing and how to install it, instead of a traceback."""
    try:
        import websockets
        version = tuple(int(part) for part in websockets.__version__.split(".")[:1])
    except ImportError:
        version = None
    if version is None or version < (15,):
        found = "not installed" if version is None else f"{websockets.__version__} found"
        print(f"dashboard.py needs websockets 15 or newer ({found}): "
              "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
              file=sys.stderr)
        raise SystemExit(2)


require_websockets()

import argparse  # noqa: E402 (after the dependency check, on purpose)
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import dataclasses  # noqa: E402
import errno  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import getpass  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable  # noqa: E402
from http import HTTPStatus  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, NamedTuple  # noqa: E402

import websockets.http11  # noqa: E402
from websockets.asyncio.server import ServerConnection, broadcast, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.extensions.permessage_deflate import (  # noqa: E402
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CloseCode, Frame, Opcode  # noqa: E402
from websockets.http11 import Request, Response  # noqa: E402
from websockets.protocol import State  # noqa: E402

try:  # websockets' own unmasking: C where it was built, else Python
    from websockets.speedups import apply_mask
except ImportError:
    from websockets.utils import apply_mask

from alerts import Alerting  # noqa: E402
from alerts import test_notify as alerts_test_notify  # noqa: E402
from clock import WallWatch, jump_words  # noqa: E402
from config import Config, ConfigError, ServerConfig, load_config  # noqa: E402
from history import DEFAULT_DAYS, DEFAULT_RESOLUTION, History  # noqa: E402
from hub import Closing, Hub  # noqa: E402
from limits import (  # noqa: E402
    BAD_REPORTS_LIMIT,
    BAD_REPORTS_WINDOW,
    FLOOD_DROPS,
    FLOOD_WINDOW,
    HANDSHAKES_TOTAL,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_BYTES,
    REPORT_BURST,
    REPORTS_PER_SECOND,
    VIEWER_MEMORY_BUDGET,
    VIEWERS_PER_ADDRESS,
    VIEWERS_TOTAL,
    Burst,
    TokenBucket,
    address_key,
)
from probes import probes_frame  # noqa: E402
from reports import MAX_FRAME_BYTES, ReportError, validate_report  # noqa: E402
from sessions import Sessions, check_password, hash_password  # noqa: E402
from timings import TICK_SECONDS, reconnect_spread  # noqa: E402
from traffic import SAVE_SECONDS, Traffic, zone  # noqa: E402
from web import (  # noqa: E402
    SAFE_URL,
    Files,
    Options,
    Site,
    banned_response,
    count_failure,
    route_request,
    text_response,
)

__version__ = "0.2.0"

log = logging.getLogger("sss.dashboard")

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "servers.json"
LISTEN_BACKLOG = 1024  # a fleet reconnecting at once: asyncio's default of 100 drops SYNs
LOGIN_TIMEOUT = 10.0  # a sign-in socket that says nothing is closed
REFUSED_LINGER = 1.0  # a refused client gets this long to read the answer
TLS_HANDSHAKE_TIMEOUT = 10.0  # asyncio's default of 60 s lets idle sockets pile up
HANDSHAKE_TIMEOUT = 10.0  # a request (and the upgrade) has this long to finish
SESSIONS_EXPIRE_EVERY = 60.0  # sessions that ran out are forgotten this often
PING_INTERVAL = 20.0  # viewers only (Connection.start_keepalive); websockets' default
# Checked against for unknown user names, so they take as long as known ones.
DUMMY_HASH = ("scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
              "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")

# --viewer-compression: each viewer compresses every update itself (deflate state is per
# connection), which at 20 viewers costs more CPU than handling the reports; off by default.
# zlib's fastest level still shrinks this JSON about fivefold.
VIEWER_COMPRESSION = ServerPerMessageDeflateFactory(
    server_max_window_bits=12, client_max_window_bits=12,
    compress_settings={"memLevel": 5, "level": 1})


# --- connections ---------------------------------------------------------------


WHOLE_MESSAGES = frozenset({Opcode.TEXT, Opcode.BINARY})  # a message's first frame


IGNORED_BEFORE_PAUSE = 16  # websockets' own queue: reading stopped when it held that many

# The frames an agent's connection splits itself (Connection.split_frames): a whole,
# masked text or binary message (FIN set, no RSV bit, no extension), and a ping.
SPLIT_MESSAGES = frozenset({0x81, 0x82})
SPLIT_PING = 0x89
MASKED = 0x80


def ignore_frame(ws: Connection, frame: bytes) -> None:
    """An agent's Connection.take_frame once it is being closed: what comes meanwhile is
    dropped, and past a few frames no more is read, so a flooder's sends back up in TCP
    (as they did behind websockets' full queue) instead of being parsed and dropped here
    until the close handshake times out. An agent that stops sending closes at once."""
    ws.ignored += 1
    if ws.ignored == IGNORED_BEFORE_PAUSE:
        ws.transport.pause_reading()


# Every connection's reads land here, one read at a time (the loop runs one callback at a
# time, and each read is copied out before the next): asyncio's own 256 KiB a read.
READ_BUFFER = memoryview(bytearray(256 * 1024))


class Connection(ServerConnection, asyncio.BufferedProtocol):
    """websockets' connection, plus what the dashboard counts from the first byte on:
    the handshake in progress (per address and in total), the request's method (HEAD
    and 405 are answered here, because websockets 15 reads GET requests only), and the
    viewer it becomes, until the socket closes however it closes.

    It reads as a BufferedProtocol: into READ_BUFFER, then copied out as bytes of the
    length read. A plain Protocol gets a new 256 KiB bytes object for every read, shrunk
    to what came: at 2,000 reports a second, one read in four took a block from the
    system for a 1.3 KB report (mmap, mremap, munmap: 14,500 calls in 10 s under
    strace, none now). Side by side under the same load it saves about 1 % of the CPU
    (README, "Scale")."""

    def __init__(self, *args: Any, site: Site, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site = site
        self.peer = "?"
        self.handshaking = False
        self.head = False  # a HEAD request, parsed as GET and answered without a body
        self.before_method: bytes | None = b""  # the first bytes, until the method is known
        self.viewer_from: str | None = None  # set by web.route_request
        self.agent = None
        self.refused = False
        self.started = False  # websockets' own connection_made ran: it has a handler
        self.request_bytes = 0
        # An agent's: takes each report as it is parsed (process_event); set by serve_agent.
        self.take_frame: Callable[[Connection, bytes], None] | None = None
        self.reports: TokenBucket | None = None  # an agent's: its reports' rate
        self.ignored = 0  # an agent's frames dropped unread while it is being closed
        # An agent's frames split here, not by websockets (split_frames), from when
        # serve_agent starts until a frame that only websockets handles; what came of
        # a frame not complete yet.
        self.splitting = False
        self.partial: list[bytes] = []  # the pieces of it, joined once `missing` came
        self.missing = 0
        self.websockets_parsed_a_frame = False  # after the handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        refusal, oldest = self.site.connections.start_handshake(self, self.peer,
                                                                time.monotonic())
        if refusal:  # before websockets starts a handler: a refusal costs next to nothing
            self.transport = transport  # type: ignore[assignment]
            self.site.refuse("handshakes", ("handshakes", address_key(self.peer)),
                             f"connection from {self.peer} refused: {refusal}",
                             time.monotonic())
            self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"{refusal}; retry later",
                        {"Retry-After": "10"})
            return
        super().connection_made(transport)
        self.started = True
        self.handshaking = True
        if isinstance(oldest, Connection):  # every place taken: the slowest one goes
            oldest.handshaking = False
            self.site.refuse("handshakes_dropped", ("handshakes_dropped",),
                             f"connection from {oldest.peer} dropped: {HANDSHAKES_TOTAL} "
                             "handshakes in progress, it was the oldest", time.monotonic())
            oldest.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(READ_BUFFER[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self.splitting:
            if self.missing:  # joined once, not at every piece: a frame sent a byte at a
                self.partial.append(data)  # time costs no more than one sent whole
                self.missing -= len(data)
                if self.missing > 0:
                    return
                data, self.partial = b"".join(self.partial), []
            self.split_frames(data)
            return
        if self.refused:
            return  # read and dropped, so that closing sends FIN, not RST over the answer
        if self.handshaking:
            self.request_bytes += len(data)
            if self.request_bytes > MAX_REQUEST_BYTES:
                self.site.refused["request_too_large"] += 1
                self.refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                            f"request headers over {MAX_REQUEST_BYTES} bytes", {})
                return
        if self.before_method is not None:
            data = self.before_method + data
            method = data.split(b" ", 1)[0]
            if len(method) == len(data) < 8:  # the method is not complete yet
                self.before_method = data
                return
            self.before_method = None
            if method == b"HEAD":
                self.head, data = True, b"GET" + data[4:]
            elif method != b"GET":
                self.site.refused["method"] += 1
                self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD are served here",
                            {"Allow": "GET, HEAD"})
                return
        super().data_received(data)

    def split_here(self) -> None:
        """From now on, split this agent's frames in split_frames(), when websockets'
        parser holds nothing yet: it answered the handshake in this very step, a client
        sends nothing before that answer (RFC 6455, 4.1), and no frame nor byte of one
        reached it since. (A client that sends early anyway is served by websockets.)"""
        self.splitting = (not self.websockets_parsed_a_frame and not self.protocol.extensions
                          and not getattr(self.protocol.reader, "buffer", True))

    def split_frames(self, data: bytes) -> None:
        """An agent's bytes, split into frames here: its reports (each a whole masked
        message, as every agent sends them) go to take_frame, its pings are answered.
        websockets parses a frame through four generators: at 2,000 reports a second, 6 %
        of the dashboard's samples in py-spy. Anything else (a close, a fragment, a frame
        over the size limit or not masked) and all that follows go to websockets, which
        answers as it would have: from then on this connection is websockets' alone.
        What came of a frame not complete yet waits (wait_for; under 64 KiB: a longer
        one goes to websockets as soon as its header is in)."""
        take, start, end = self.take_frame, 0, len(data)
        while take is not None and self.protocol.state is State.OPEN:
            if end - start < 2 or (data[start + 1] & 0x7F == 126 and end - start < 4):
                if start < end:  # the start of a header: wait for enough to read its length
                    self.wait_for(data[start:], 2 if end - start < 2 else 4)
                return
            first, second = data[start], data[start + 1]
            length, head = second & 0x7F, start + 6
            if length == 126:
                length, head = int.from_bytes(data[start + 2:start + 4], "big"), start + 8
            message = first in SPLIT_MESSAGES and length <= MAX_FRAME_BYTES
            ping = first == SPLIT_PING and length <= 125
            if not (message or ping) or second & 0x7F == 127 or not second & MASKED:
                break  # websockets' to answer, or to refuse (127: a 64-bit length)
            if head + length > end:
                self.wait_for(data[start:], head + length - start)
                return
            payload = apply_mask(data[head:head + length], data[head - 4:head])
            start = head + length
            if ping:
                self.protocol.send_pong(payload)
                self.send_data()
            else:
                take(self, payload)
                take = self.take_frame  # a verdict may have replaced it
        self.splitting = False
        if start < end:
            super().data_received(data[start:])

    def wait_for(self, piece: bytes, size: int) -> None:
        """Keep the start of a frame until it is `size` bytes long."""
        self.partial, self.missing = [piece], size - len(piece)

    def process_event(self, event: Any) -> None:
        """An agent's report in one frame (as every agent sends them) is taken here, as
        it is parsed, instead of being queued for the handler's task to wake up and read
        it: at 2,000 reports a second that wake-up was a sixth of the dashboard's CPU.
        The handshake, control frames and fragmented messages take websockets' way (an
        agent that fragments one message is served that way from then on, in order)."""
        take = self.take_frame  # set after the handshake: every event is a Frame then
        if take is not None and event.opcode in WHOLE_MESSAGES:
            if event.fin:
                data = event.data
                take(self, data if type(data) is bytes else bytes(data))
                return
            self.take_frame = None
        if type(event) is Frame:
            self.websockets_parsed_a_frame = True
        super().process_event(event)

    def start_keepalive(self) -> None:
        """Viewers are pinged (browsers send nothing else); agents are not. An agent's
        reports are its heartbeat (a silent connection is closed, timings.py) and it pings
        the dashboard itself; pinging 10,000 agents would be 500 pings a second."""
        if self.agent is None:
            super().start_keepalive()

    def headers_read(self) -> None:
        """The request is complete: it no longer counts as a handshake in progress."""
        if self.handshaking:
            self.handshaking = False
            self.site.connections.end_handshake(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A write that failed (the peer reset) raised inside broadcast(): the traceback
        # holds its frames, and with them the encoded message and its frame (a whole
        # snapshot, twice) for as long as websockets keeps the exception, until the
        # handler ends. Nothing here needs that traceback.
        drop_tracebacks(exc)
        self.headers_read()
        if self.viewer_from is not None:
            self.site.connections.remove_viewer(self.viewer_from)
            self.viewer_from = None
        # Refused before websockets knew of it: no handler, nothing in a cycle (below), so
        # it counts toward no full collection.
        if self.started:
            self.site.closed += 1
            super().connection_lost(exc)
        # Before Python 3.12 the transport keeps a bound method of itself (_read_ready_cb),
        # a cycle that only a full collection frees: under reconnect churn memory grows.
        # 3.12 clears it on close (CPython gh-100348); do the same.
        if getattr(self.transport, "_read_ready_cb", None) is not None:
            self.transport._read_ready_cb = None  # type: ignore[attr-defined]
        # websockets keeps why a handshake or a frame failed (a request cut short: its
        # cause's traceback holds the parser's frames, which hold the protocol): a cycle,
        # with the request's bytes, that only a full collection would free. Not needed now.
        drop_tracebacks(self.protocol.handshake_exc)
        drop_tracebacks(self.protocol.parser_exc)

    def refuse(self, status: HTTPStatus, text: str, headers: dict[str, str]) -> None:
        """Answer before websockets has read a request, and hang up: our side at once,
        the socket when the client closes or after a second."""
        self.refused, self.before_method = True, None
        response = text_response(status, text, {**headers, "Connection": "close"})
        transport = self.transport
        transport.write(response.serialize())
        if transport.can_write_eof():
            transport.write_eof()
        else:  # TLS: no half-close; close() still sends what is buffered first
            transport.close()
        self.loop.call_later(REFUSED_LINGER, transport.abort)


def broadcast_framed(viewers: list[ServerConnection], message: str) -> None:
    """websockets' broadcast(), with the frame built once for all viewers (or agents: no
    task per frame, where 10,000 agents coming back are each told their reconnect spread).

    broadcast() frames the message again for each connection, a copy of it each: with 20
    viewers of 10,000 servers, four updates of ~400 KB a second, 3 % of the dashboard's
    time. A server's frame is the same bytes for every connection without an extension,
    and websockets writes each frame to the transport as it makes it, so writing this one
    there keeps every viewer's messages in order. Viewers with permessage-deflate
    (--viewer-compression) compress for themselves: broadcast() as it is."""
    plain = [ws for ws in viewers if not ws.protocol.extensions]
    if len(plain) < len(viewers):
        broadcast([ws for ws in viewers if ws.protocol.extensions], message)
    if not plain:
        return
    frame = Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
    for ws in plain:
        if ws.protocol.state is State.OPEN:  # as broadcast(): closing ones are skipped
            ws.transport.write(frame)


class Dashboard:
    """The hub and the site, plus what only a running server has: closes in flight."""

    def __init__(self, config: Config, config_path: Path, options: Options,
                 history: History | None, data: Path) -> None:
        self.config_path = config_path
        self.history = history
        self.traffic = Traffic(data / "traffic.json", zone(config.timezone))
        self.traffic.load()
        self.hub = Hub(config, broadcast_framed, asyncio.get_running_loop(), history, self.traffic,
                       options.viewer_memory)
        self.alerting = Alerting(data / "alerts.json", time.monotonic(), time.time())
        self.alerting.configure(config.notifiers)
        self.wall_watch = WallWatch(time.monotonic(), time.time())
        self.sessions = Sessions(data / "sessions.json")
        self.sessions.load()
        self.sessions.expire(config.viewers.users, self.steady())
        self.sessions_expired = time.monotonic()
        self.site = Site.create(self.hub, Files.beside(HERE), options, self.alerting,
                                self.sessions)
        self.site.steady = self.steady
        if history is not None:
            now, wall = time.monotonic(), time.time()
            self.hub.restore(history.restore(now, wall))
            self.hub.take_history(history.fields(list(self.hub.servers), wall))
        self.hub.refresh_traffic(time.time())
        self.closing: set[asyncio.Future[None]] = set()  # kept referenced until done
        # Every agent's Connection.take_frame: one bound method, not one per connection.
        self.take_whole_frame = self.take_agent_frame
        self.collected = time.monotonic()  # the last full garbage collection
        self.collection_took = 0.0  # how long it took
        # Bursts of dropped and of invalid reports, per agent (one table for all of them:
        # 10,000 connections do not each carry two).
        self.floods = Burst(FLOOD_DROPS, FLOOD_WINDOW)
        self.invalid = Burst(BAD_REPORTS_LIMIT, BAD_REPORTS_WINDOW)

    def steady(self) -> float:
        """Wall time that never jumps forward: what retention and sessions go by."""
        return self.wall_watch.steady(time.monotonic())

    def close_later(self, closing: Closing) -> None:
        """Close without waiting for the peer's answer."""
        self.in_background(closing.connection.close(closing.code, closing.reason))

    def in_background(self, awaitable: Awaitable[None]) -> asyncio.Future[None]:
        """Run `awaitable` without waiting for it, kept referenced until it is done."""
        future = asyncio.ensure_future(awaitable)
        self.closing.add(future)
        future.add_done_callback(self.closing.discard)
        return future

    def process_request(self, connection: Connection, request: Request) -> Response | None:
        connection.headers_read()
        response = route_request(self.site, connection, request, time.monotonic())
        if connection.head:  # the GET answer's headers, no body; no upgrade on HEAD
            response = response or text_response(HTTPStatus.METHOD_NOT_ALLOWED,
                                                 "WebSocket handshakes use GET")
            response = dataclasses.replace(response, body=b"")
        return response

    async def handler(self, ws: ServerConnection) -> None:
        """Dispatch by who connected; process_request vetted it and stored who it is."""
        if ws.agent is not None:  # type: ignore[attr-defined]
            await self.serve_agent(ws)
        elif hasattr(ws, "login_from"):
            await self.serve_login(ws)
        else:
            await self.serve_viewer(ws)

    async def serve_login(self, ws: ServerConnection) -> None:
        """One sign-in attempt: {"user", "password"} in, a ticket or an error out."""
        address = ws.login_from  # type: ignore[attr-defined]
        try:
            frame = await asyncio.wait_for(ws.recv(), LOGIN_TIMEOUT)
            attempt = json.loads(frame)
            user, password = str(attempt["user"])[:64], str(attempt["password"])[:1024]
        except (asyncio.TimeoutError, ConnectionClosed, ValueError, KeyError, TypeError):
            await ws.close(CloseCode.POLICY_VIOLATION, "expected a user and a password")
            return
        now, who = time.monotonic(), f"user:{user}"
        refusal = banned_response(self.site, address, who, now)
        if refusal is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"ok": False, "error": refusal.body.decode().strip()}))
                await ws.close()
            return
        users = self.hub.config.viewers.users
        stored = users.get(user, DUMMY_HASH)  # as slow for unknown users as for known ones
        loop = asyncio.get_running_loop()
        matches = await loop.run_in_executor(None, check_password, password, stored)
        if matches and user in users:
            log.info("viewer sign-in: %r from %s", user, address)
            self.site.limiter.succeeded(address, now)
            answer = {"ok": True, "ticket": self.sessions.ticket(user, time.monotonic())}
        else:
            count_failure(self.site, address, who, "sign_in",
                          f"viewer sign-in refused: {user[:64]!r} from {address}: "
                          "wrong user name or password", now)
            answer = {"ok": False, "error": "wrong user name or password"}
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(answer))
            await ws.close()

    async def serve_agent(self, ws: ServerConnection) -> None:
        """Apply each report of one agent until it leaves or misbehaves."""
        hub = self.hub
        sid, address, check = ws.agent  # type: ignore[attr-defined]
        older = hub.attach_agent(sid, ws, time.monotonic())
        if older is not None:
            log.info("agent replaced: id=%s by a new connection from %s", sid, address)
            self.close_later(older)
        else:
            log.info("agent connected: id=%s from %s", sid, address)
        if not check:  # a checking agent reads one answer (older ones skip a probes frame)
            broadcast_framed([ws], reconnect_frame(len(hub.servers)))
        self.tell_probes(ws, hub.servers[sid].config)
        forget_handshake(ws)
        ws.reports = TokenBucket(REPORTS_PER_SECOND, REPORT_BURST, time.monotonic())
        if not check:  # a checking agent's answers go out in order, from the loop below
            ws.take_frame = self.take_whole_frame
            ws.split_here()
        try:
            async for frame in ws:  # what Connection.process_event leaves to it
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
        """One whole frame of an agent, as it is parsed (Connection.process_event)."""
        verdict = self.agent_verdict(ws, frame)  # None: being closed already
        if verdict is not None and verdict.close is not None:
            ws.take_frame = ignore_frame
            self.in_background(self.close_agent(ws, ws.agent.server_id, *verdict.close))

    def agent_verdict(self, ws: Connection, frame: str | bytes) -> Verdict | None:
        """take_report() for one frame of the agent on `ws`; None when `ws` no longer
        speaks for it (replaced, removed or re-keyed by a reload)."""
        sid = ws.agent.server_id
        if not self.hub.is_current(sid, ws):
            return None
        return self.take_report(sid, frame, ws.reports, time.monotonic())

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
        log.info("viewer connected (%d watching)", len(hub.viewers))
        try:
            async for _ in ws:
                pass  # browsers have nothing to say; reading keeps pings answered
        except ConnectionClosed:
            pass
        finally:
            hub.remove_viewer(ws)
            log.info("viewer disconnected (%d watching)", len(hub.viewers))

    # --- housekeeping ---

    async def housekeeping(self) -> None:
        """Once a second: offline transitions, silent connections, expired bans."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            gone, closes = self.hub.tick(now)
            for sid in gone:
                log.info("server offline: id=%s", sid)
            for closing in closes:
                log.warning("agent closed: id=%s: %s", closing.connection.agent.server_id,
                            closing.reason)
                self.close_later(closing)
            wall = time.time()
            jump = self.wall_watch.observe(now, wall)
            if jump:
                log.warning("wall clock jumped %s (durations are measured on the monotonic "
                            "clock; nothing is deleted or expired for this jump until a "
                            "restart)", jump_words(jump))
            self.site.limiter.expire(now)
            self.floods.expire(now)
            self.invalid.expire(now)
            self.evaluate_alerts(now, wall)
            if now - self.sessions_expired >= SESSIONS_EXPIRE_EVERY:
                self.sessions.expire(self.hub.config.viewers.users, self.steady())
                self.sessions_expired = now
            if full_collection_due(self.site.closed, now - self.collected,
                                   self.collection_took):
                started = time.monotonic()
                gc.collect()
                self.site.closed, self.collected = 0, now
                self.collection_took = time.monotonic() - started
            if int(now) % TRIM_SECONDS == 0:
                give_back_memory()

    def evaluate_alerts(self, now: float, wall: float) -> None:
        """Alert rules against the live state; a change shows on the servers' cards."""
        rules = self.hub.config.alerts
        if not rules and not self.alerting.evaluator.firing:
            return
        for sid in self.alerting.tick(rules, self.hub.observe(wall), now, wall):
            self.hub.set_extra(sid, "alerts", self.alerting.view_value(sid))

    async def keep_traffic(self) -> None:
        """Save the period totals once a minute (or once a history step, if shorter), and
        show them on the cards (new periods too)."""
        every = min(SAVE_SECONDS, self.history.resolution) if self.history else SAVE_SECONDS
        while True:
            await asyncio.sleep(every)
            self.traffic.save()
            self.hub.refresh_traffic(time.time())

    async def write_history(self, history: History) -> None:
        """At the end of every resolution step: the closed buckets go to SQLite."""
        while True:
            step = history.resolution
            await asyncio.sleep(step - time.time() % step + 0.01)
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
        old = self.hub.config
        told = {sid: (old.probes.interval, old.probes.for_server(state.config))
                for sid, state in self.hub.servers.items()}
        closes, added, removed = self.hub.apply_config(config)
        take_over_full_collections(len(config.servers))
        for sid, state in self.hub.servers.items():
            plan = (config.probes.interval, config.probes.for_server(state.config))
            if state.connection is not None and told.get(sid, (0, ())) != plan:
                self.tell_probes(state.connection, state.config, unless_none=False)
        self.alerting.configure(config.notifiers)
        self.traffic.zone = zone(config.timezone)
        self.hub.refresh_traffic(time.time())
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


def missing_apprise(config: Config) -> str:
    """A notifier of type apprise needs the optional package: say so, with the command."""
    needing = [n.name for n in config.notifiers.values() if n.type == "apprise"]
    if needing and importlib.util.find_spec("apprise") is None:
        return (f"notifier {needing[0]!r} is of type apprise, which needs the Apprise package: "
                "pip install apprise (in the dashboard's environment)")
    return ""


def print_password_hash() -> int:
    """--hash-password: ask twice without echo (or read one line from a pipe), print a hash."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("the two passwords differ; nothing printed", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(first))
    return 0


def send_test_notification(config: Config, name: str) -> int:
    """--test-notify NAME: exit 0 when the message went out, 1 with the reason."""
    notifier = config.notifiers.get(name)
    if notifier is None:
        known = ", ".join(config.notifiers) or "none are configured"
        print(f"failed: no notifier named {name!r} in the config (known: {known})")
        return 1
    why = alerts_test_notify(notifier)
    if why:
        print(f"failed: notifier {name!r} ({notifier.type}): {why}")
        return 1
    print(f"ok: sent a test message through notifier {name!r} ({notifier.type})")
    return 0


class Verdict(NamedTuple):
    """What to do after an agent's frame: the answer for `agent.py --check` connections,
    and the close code and reason when the connection is to be closed."""

    answer: str
    close: tuple[CloseCode, str] | None


def forget_handshake(ws: ServerConnection) -> None:
    """websockets keeps a connection's handshake request and response for its whole life;
    nothing reads an agent's after this point, and their headers are ~5 KiB a connection."""
    for message in (ws.request, ws.response):
        if message is not None:
            message.headers.clear()


def reconnect_frame(servers: int) -> str:
    """The frame telling an agent over how many seconds to spread its first retries after
    losing the dashboard (PROTOCOL.md, "Reconnect spread"), for a fleet of `servers`.

    >>> reconnect_frame(10_000)
    '{"type":"reconnect","spread":15.4}'
    """
    return f'{{"type":"reconnect","spread":{reconnect_spread(servers)}}}'


def check_answer(error: str) -> str:
    """The frame answering one report on an agent.py --check connection (PROTOCOL.md)."""
    if not error:
        return '{"type":"check","accepted":true}'
    return json.dumps({"type": "check", "accepted": False, "reason": error})


ACCEPTED = Verdict(check_answer(""), None)


# --- memory ----------------------------------------------------------------------------

TRIM_SECONDS = 10
# Full garbage collections: Python's own run whenever the long-lived objects grew by a
# quarter, every 5 s at 10,000 agents (a report's record lives 5 s, long enough to count),
# and each walks a million objects for about a second while no report is read, to find
# nothing: the records are freed by reference counting. Cycles come from connections
# that close (a traceback, a transport), so the dashboard runs its own: after that many
# closed connections, at most every few seconds and never for more than a share of the
# time (a reconnecting fleet of 10,000 closes thousands while each collection takes
# most of a second), and every ten minutes regardless.
COLLECT_AFTER_CLOSED = 1000
COLLECT_AT_MOST_EVERY = 5.0
COLLECT_SHARE = 0.05
COLLECT_SECONDS = 600.0
# Young collections: Python's run one per 700 new containers (its default), and each moves
# what survives on to the middle generation, itself walked every ten of them. A report's
# record (a dozen dicts and lists, no cycles) lives one report interval: at 10,000 agents
# every record was walked twice on its way, for nothing (gc.callbacks in bench.py: 1,450
# young and 132 middle collections, 1.2 s; sized to the fleet 85 and 7, 0.9 s; about 4 µs
# a report). A young collection of 10,000 servers takes a few milliseconds.
YOUNG_DEFAULT = 700
YOUNG_PER_SERVER = 2
YOUNG_MOST = 20_000


def drop_tracebacks(exc: BaseException | None) -> None:
    """Forget where an exception and its causes were raised: their frames hold whoever
    raised them, and the exception is often held by that same object (a cycle)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # a chain may loop back
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def full_collection_due(closed: int, since: float, took: float = 0.0) -> bool:
    """Whether to run a full collection, `since` seconds after the last one, which took
    `took` seconds.

    >>> full_collection_due(closed=3, since=60), full_collection_due(closed=3, since=600)
    (False, True)
    >>> full_collection_due(closed=5000, since=1), full_collection_due(closed=5000, since=5)
    (False, True)
    >>> full_collection_due(closed=5000, since=5, took=0.8)  # 10,000 agents: every 16 s
    False
    """
    if since < max(COLLECT_AT_MOST_EVERY, took / COLLECT_SHARE):
        return False
    return closed >= COLLECT_AFTER_CLOSED or since >= COLLECT_SECONDS


def young_threshold(servers: int) -> int:
    """New containers between two young collections, for a fleet of `servers`.

    >>> young_threshold(5), young_threshold(2000), young_threshold(10_000)
    (700, 4000, 20000)
    """
    return min(max(YOUNG_DEFAULT, YOUNG_PER_SERVER * servers), YOUNG_MOST)


def take_over_full_collections(servers: int) -> None:
    """Young collections are sized to the fleet (young_threshold); full ones are
    full_collection_due's. (From 3.14 the collector is incremental, with no long pauses:
    left as it is.)"""
    if sys.version_info < (3, 14):
        _, middle, _ = gc.get_threshold()
        gc.set_threshold(young_threshold(servers), middle, 1 << 30)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024


@functools.lru_cache(maxsize=1)
def glibc() -> Any:
    """glibc, or None (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def map_large_blocks() -> None:
    """Blocks of 128 KiB and more (a snapshot queued for one viewer, its frame) come from
    the system and go straight back when freed. glibc raises that threshold to the size
    of every such block freed, so that after the first few snapshots they are carved
    from the heap, where a flood of viewers leaves holes that RSS keeps."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def give_back_memory() -> None:
    """Return freed heap pages to the system. Connections come and go in bursts (a viewer
    flood, a reconnect storm); glibc keeps what they freed, in holes between live
    blocks, and RSS stays at the burst's peak. Trimming takes a few milliseconds."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


# --- open files ------------------------------------------------------------------------

VIEWER_MARGIN = 128  # open files kept for viewers, the history database, logs
FILE_LIMIT_CAP = 1 << 20  # when the hard limit is "unlimited"


def raise_file_limit(servers: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs do); log it, and warn
    when the fleet would not fit. systemd gives services 1,024 by default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FILE_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays at %d: cannot raise it (%s)", soft, exc)
    else:
        log.info("open-file limit: %d", soft)
    if soft != resource.RLIM_INFINITY and servers + VIEWER_MARGIN > soft:
        log.warning("open-file limit %d is below %d servers plus %d for viewers: agents past "
                    "it will be refused; raise LimitNOFILE= in the unit (or ulimit -n)",
                    soft, servers, VIEWER_MARGIN)
    return soft


class AcceptErrors:
    """asyncio's handler for a refused accept (out of file descriptors), rate-limited: one
    line a minute with a count instead of a traceback per attempt."""

    def __init__(self, every: float = 60.0) -> None:
        self.every, self.count, self.last = every, 0, -math.inf

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)):
            loop.default_exception_handler(context)
            return
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            log.error("open-file limit reached (%s): refused %d new connections in the last "
                      "minute; the open ones are served. Raise LimitNOFILE= (README, Scale)",
                      exc.strerror, self.count)
            self.last, self.count = now, 0


async def run(config: Config, config_path: Path, options: Options,
              history: History | None, data: Path) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads servers.json."""
    dashboard = Dashboard(config, config_path, options, history, data)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrors())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, dashboard.reload)
    tls = options.tls
    # Request headers: what agents and browsers send, not websockets' 128 lines of 8 KiB
    # (1 MiB held by every unfinished handshake).
    websockets.http11.MAX_NUM_HEADERS = MAX_HEADERS
    websockets.http11.MAX_LINE_LENGTH = MAX_HEADER_LINE
    async with serve(dashboard.handler, config.host, config.port,
                     process_request=dashboard.process_request, max_size=MAX_FRAME_BYTES,
                     create_connection=functools.partial(Connection, site=dashboard.site),
                     backlog=LISTEN_BACKLOG, open_timeout=HANDSHAKE_TIMEOUT,
                     ping_interval=PING_INTERVAL,
                     ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None,
                     server_header=f"sss-dashboard/{__version__}", compression=None, ssl=tls,
                     extensions=[VIEWER_COMPRESSION] if options.viewer_compression else None,
                     ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        log.info("listening on %s://%s:%d (%d servers configured)", "https" if tls else "http",
                 config.host, port, len(config.servers))
        tasks = [asyncio.ensure_future(dashboard.housekeeping()),
                 asyncio.ensure_future(dashboard.keep_traffic())]
        if history is not None:
            tasks.append(asyncio.ensure_future(dashboard.write_history(history)))
        await stop.wait()
        log.info("shutting down")
        for task in tasks:
            task.cancel()
        dashboard.alerting.delivery.stop()
        dashboard.traffic.save()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 1.5)
        except asyncio.TimeoutError:
            for ws in server.connections:
                ws.transport.abort()  # peers that never answered the close
    if history is not None:  # nothing is lost on a graceful stop: the open bucket too
        await dashboard.history_step(history, final=True)
        history.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SimpleServerStatus dashboard.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="servers.json to use")
    parser.add_argument("--host", help="address to listen on (overrides the file's host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides the file's port)")
    parser.add_argument("--public-url", default="",
                        help="URL agents use to reach this dashboard, e.g. behind a proxy: "
                             "https://status.example.com/ (default: from each request)")
    parser.add_argument("--certfile", help="serve https and wss with this PEM certificate chain")
    parser.add_argument("--keyfile", help="private key for --certfile (default: in certfile)")
    parser.add_argument("--viewer-compression", action="store_true",
                        help="compress updates to browsers (permessage-deflate): ~5x less "
                             "traffic for slow links, more CPU per viewer")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                        help="a reverse proxy's address (repeatable): agents behind it are "
                             "known by its X-Forwarded-For, so one bad client cannot get "
                             "the proxy banned for everyone")
    parser.add_argument("--max-viewers", type=int, default=VIEWERS_TOTAL, metavar="N",
                        help="browsers watching at once, in total")
    parser.add_argument("--viewers-per-address", type=int, default=VIEWERS_PER_ADDRESS,
                        metavar="N", help="browsers watching at once from one address "
                        "(an IPv6 /64); behind a proxy, by its X-Forwarded-For")
    parser.add_argument("--viewer-memory", type=int, default=VIEWER_MEMORY_BUDGET >> 20,
                        metavar="MIB", help="unsent bytes of all viewers together; past it "
                        "the slowest viewers are disconnected")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="where the dashboard keeps what it remembers (history.db) "
                             "(default: the folder holding servers.json)")
    parser.add_argument("--no-history", action="store_true",
                        help="keep no history: live data only")
    parser.add_argument("--history-resolution", type=int, default=DEFAULT_RESOLUTION,
                        metavar="SECONDS", help="seconds per history row, 1-3600")
    parser.add_argument("--history-days", type=int, default=DEFAULT_DAYS, metavar="DAYS",
                        help="days to keep hourly history")
    parser.add_argument("--hash-password", action="store_true",
                        help="ask for a viewer's password and print its hash for servers.json")
    parser.add_argument("--test-notify", metavar="NAME",
                        help="send a test message through one notifier and exit (0: sent)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if not 1 <= args.history_resolution <= 3600:
        parser.error("--history-resolution must be 1-3600 seconds")
    if min(args.max_viewers, args.viewers_per_address, args.viewer_memory) < 1:
        parser.error("--max-viewers, --viewers-per-address and --viewer-memory must be 1 or more")
    if args.history_days < 3:
        parser.error("--history-days must be at least 3")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hash_password:
        return print_password_hash()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # we log what matters
    try:
        config, warnings = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    for warning in warnings:
        log.warning("%s", warning)
    problem = missing_apprise(config)
    if problem:
        log.error("%s: %s", args.config, problem)
        return 2
    if args.test_notify:
        return send_test_notification(config, args.test_notify)
    config = dataclasses.replace(config, host=args.host or config.host,
                                 port=config.port if args.port is None else args.port)
    if args.public_url and not SAFE_URL.fullmatch(args.public_url):
        log.error("--public-url must look like https://status.example.com/ (letters, digits, "
                  ". - _ ~ / only), got %r", args.public_url)
        return 2
    tls = None
    if args.certfile:
        try:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.error("--certfile %s / --keyfile %s: cannot load: %s", args.certfile,
                      args.keyfile, exc)
            return 2
    options = Options(args.public_url, tls, args.viewer_compression,
                      frozenset(args.trusted_proxy), args.max_viewers,
                      args.viewers_per_address, args.viewer_memory << 20)
    raise_file_limit(len(config.servers))
    take_over_full_collections(len(config.servers))
    map_large_blocks()
    data = args.data or args.config.resolve().parent
    history = None
    if not args.no_history:
        history = History(data, args.history_resolution, args.history_days)
    try:
        asyncio.run(run(config, args.config, options, history, data))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
