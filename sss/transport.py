"""The WebSocket transport: websockets' server connection as the dashboard uses it.

    $ SSS_SAFE_TRANSPORT=1 python3 dashboard.py
    2026-12-04 19:40:02 INFO SSS_SAFE_TRANSPORT=1: serving on websockets' public path
    (take_frames, split_frames, framed_broadcast off)

This is the only module that touches websockets beyond its documented API. The
Connection subclass counts a handshake from the first byte, refuses before websockets
starts a handler, answers HEAD and 405 (websockets 15 reads GET requests only) and tells
agents, viewers and sign-in sockets apart. Three tricks make it cheaper, each on
internals of websockets (FastPath below): an agent's report is taken as it is parsed
(`take_frames`), an agent's frames are split here instead of by websockets' parser
(`split_frames`), and one frame is written for many viewers (`framed_broadcast`).

`check_internals` looks at start for each internal a trick rests on, and that it behaves
as expected; where one is missing (a websockets release moved it) the dashboard logs one
line naming it and serves on websockets' public path, slower but correct.
`SSS_SAFE_TRANSPORT=1` forces that path (CI runs the suite so); a list of tricks
(`SSS_SAFE_TRANSPORT=split_frames,framed_broadcast`) turns off those only, which is how
BENCHMARKS.md measures what each pays. The request header limits are set the way
websockets documents: its environment variables, before it is imported.
"""

from __future__ import annotations

import os

from .limits import MAX_HEADER_LINE, MAX_HEADERS

# websockets reads these when it is imported (its "Environment variables" reference):
# what agents and browsers send, not 128 lines of 8 KiB (1 MiB held by every unfinished
# handshake). An operator's own setting wins.
os.environ.setdefault("WEBSOCKETS_MAX_NUM_HEADERS", str(MAX_HEADERS))
os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", str(MAX_HEADER_LINE))

import asyncio  # after the environment websockets reads
import dataclasses
import functools
import inspect
import logging
import socket
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable

import websockets
from websockets import http11
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from .limits import (
    HANDSHAKES_TOTAL,
    MAX_REQUEST_BYTES,
    VIEWER_SEND_BUFFER,
    TokenBucket,
    address_key,
)
from .reports import MAX_FRAME_BYTES
from .web import Agent, Login, Viewer, text_response

try:  # websockets' own unmasking: C where it was built, else Python
    from websockets.speedups import apply_mask
except ImportError:
    from websockets.utils import apply_mask

if TYPE_CHECKING:
    from .web import Site

log = logging.getLogger("sss.dashboard")

REFUSED_LINGER = 1.0  # a refused client gets this long to read the answer
LISTEN_BACKLOG = 1024  # a fleet reconnecting at once: asyncio's default of 100 drops SYNs
TLS_HANDSHAKE_TIMEOUT = 10.0  # asyncio's default of 60 s lets idle sockets pile up
HANDSHAKE_TIMEOUT = 10.0  # a request (and the upgrade) has this long to finish
PING_INTERVAL = 20.0  # viewers only (Connection.start_keepalive); websockets' default
# --viewer-compression: each viewer compresses every update itself (deflate state is per
# connection), which at 20 viewers costs more CPU than handling the reports; off by default.
# zlib's fastest level still shrinks this JSON about fivefold.
VIEWER_COMPRESSION = ServerPerMessageDeflateFactory(
    server_max_window_bits=12, client_max_window_bits=12,
    compress_settings={"memLevel": 5, "level": 1})


# --- the fast path and its guard ---------------------------------------------------


@dataclasses.dataclass
class FastPath:
    """The tricks in use; all off until check_internals() finds what they rest on.
    What each pays, side by side with the public path: BENCHMARKS.md, "Transport"."""

    take_frames: bool = False  # an agent's report taken as it is parsed (process_event)
    split_frames: bool = False  # an agent's frames split here (needs take_frames)
    framed_broadcast: bool = False  # one frame written for many viewers

    def names(self, on: bool) -> list[str]:
        return [field.name for field in dataclasses.fields(self)
                if getattr(self, field.name) is on]


FAST = FastPath()
__all__ = ["serve"]  # websockets' own, imported through here: after the header limits
SAFE_TRANSPORT = "SSS_SAFE_TRANSPORT"  # "1": every trick off; or a list of tricks to turn off
TRICKS = tuple(field.name for field in dataclasses.fields(FastPath))


def internals_missing(connection: type = ServerConnection,
                      protocol: type = ServerProtocol) -> dict[str, list[str]]:
    """For each trick, the internals of websockets it rests on that are not there or not
    as expected (names as the log line gives them)."""
    def method(name: str, parameters: list[str]) -> list[str]:
        function = getattr(connection, name, None)
        try:
            ok = list(inspect.signature(function).parameters) == parameters
        except (TypeError, ValueError):  # not there, or not a function
            ok = False
        return [] if ok else [f"{connection.__name__}.{name}({', '.join(parameters[1:])})"]

    def attribute(name: str) -> list[str]:
        return [] if hasattr(protocol(), name) else [f"{protocol.__name__}.{name}"]

    def serialized() -> list[str]:
        try:  # an unmasked text frame, as RFC 6455 writes it
            ok = Frame(Opcode.TEXT, b"ok").serialize(mask=False, extensions=[]) == b"\x81\x02ok"
        except (TypeError, AttributeError, ValueError):
            ok = False
        return [] if ok else ["Frame.serialize(mask, extensions)"]

    frame_fields = {field.name for field in dataclasses.fields(Frame)}
    take = method("process_event", ["self", "event"]) + (
        [] if {"opcode", "data", "fin"} <= frame_fields else ["Frame.opcode, .data, .fin"])
    return {"take_frames": take,
            "split_frames": take + method("send_data", ["self"]) + attribute("extensions"),
            "framed_broadcast": serialized() + attribute("extensions")}


def check_internals(safe: str = "") -> FastPath:
    """Turn on the tricks whose internals are there (FAST), except those `safe` names
    (SSS_SAFE_TRANSPORT); one line says what is off and why. Also says when the header
    limits did not take (websockets was imported before this module set them), and
    when a connection will keep the cause of a failed frame (a cycle, freed later)."""
    off = set(TRICKS) if safe.strip() == "1" else \
        {name.strip() for name in safe.split(",") if name.strip()}
    for name in sorted(off - set(TRICKS)):
        log.warning("%s: no trick named %r (the tricks: %s)", SAFE_TRANSPORT, name,
                    ", ".join(TRICKS))
    missing = internals_missing()
    for trick in TRICKS:
        setattr(FAST, trick, trick not in off and not missing[trick])
    FAST.split_frames = FAST.split_frames and FAST.take_frames
    absent = sorted({name for trick in TRICKS if trick not in off for name in missing[trick]})
    if absent:
        log.warning("websockets %s: %s not as transport.py expects; serving on websockets' "
                    "public path for %s (slower, correct)", websockets.version.version,
                    ", ".join(absent), ", ".join(FAST.names(False)))
    elif off:
        log.info("%s=%s: serving on websockets' public path (%s off)", SAFE_TRANSPORT,
                 safe, ", ".join(FAST.names(False)))
    else:
        log.debug("websockets %s: the fast path is on (%s)", websockets.version.version,
                  ", ".join(TRICKS))
    limits = {"WEBSOCKETS_MAX_NUM_HEADERS": getattr(http11, "MAX_NUM_HEADERS", None),
              "WEBSOCKETS_MAX_LINE_LENGTH": getattr(http11, "MAX_LINE_LENGTH", None)}
    for variable, value in limits.items():
        if str(value) != os.environ.get(variable):
            log.warning("websockets did not take %s=%s (it has %s): imported before "
                        "transport.py set it", variable, os.environ.get(variable), value)
    if not hasattr(ServerProtocol(), "parser_exc"):
        log.info("websockets %s: no ServerProtocol.parser_exc; a failed frame's cause is "
                 "kept until a full collection", websockets.version.version)
    return FAST


def quiet_peer_errors() -> None:
    """websockets' errors are bugs (a hook or handler that raised): said, with the
    traceback. What peers do wrong it logs below ERROR, except "opening handshake failed"
    before 15.0.2 or so (a socket closed before its request, a request over the header
    limits): that one is a peer's doing, and the dashboard counts refusals itself."""
    logging.getLogger("websockets").setLevel(logging.ERROR)
    # A logger's filters see only its own records: the server's connections log here.
    logging.getLogger("websockets.server").addFilter(
        lambda record: record.msg != "opening handshake failed")


def server_settings(site: Site, tls: Any, viewer_compression: bool,
                    server_header: str) -> dict[str, Any]:
    """websockets' serve() arguments for the dashboard: its Connection, the limits and
    timeouts, no compression for agents."""
    return {"create_connection": functools.partial(Connection, site=site),
            "max_size": MAX_FRAME_BYTES, "backlog": LISTEN_BACKLOG,
            "open_timeout": HANDSHAKE_TIMEOUT, "ping_interval": PING_INTERVAL,
            "ssl": tls, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT if tls else None,
            "server_header": server_header, "compression": None,
            "extensions": [VIEWER_COMPRESSION] if viewer_compression else None}


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


class Connection(ServerConnection):
    """websockets' connection, plus what the dashboard counts from the first byte on:
    the handshake in progress (per address and in total), the request's method (HEAD
    and 405 are answered here, because websockets 15 reads GET requests only), and the
    agent, viewer or sign-in socket it becomes, until the socket closes however it
    closes."""

    def __init__(self, *args: Any, site: Site, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site = site
        self.peer = "?"
        self.handshaking = False
        self.head = False  # a HEAD request, parsed as GET and answered without a body
        self.before_method: bytes | None = b""  # the first bytes, until the method is known
        self.viewer_from: str | None = None  # set by web.route_request
        self.login_from: str | None = None  # a sign-in socket's client (web.login_handshake)
        self.session: str | None = None  # a viewer's session: closed when it ends
        self.agent = None
        self.refused = False
        self.started = False  # websockets' own connection_made ran: it has a handler
        self.request_bytes = 0
        # An agent's: takes each report as it is parsed (process_event); set by serve_agent.
        self.take_frame: Callable[[Connection, bytes], None] | None = None
        self.reports: TokenBucket | None = None  # an agent's: its reports' rate
        self.acknowledged = False  # an agent's: told that a report of it was accepted
        self.ignored = 0  # an agent's frames dropped unread while it is being closed
        # An agent's frames split here, not by websockets (split_frames), from when
        # serve_agent starts until a frame that only websockets handles; what came of
        # a frame not complete yet.
        self.splitting = False
        self.partial: list[bytes] = []  # the pieces of it, joined once `missing` came
        self.missing = 0
        self.request_tail = b""  # the request's last bytes read, to find where it ends
        self.early = False  # bytes came after the request before take_reports()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # ours, whatever websockets keeps
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        refusal, oldest = self.site.connections.handshakes.start(self, self.peer,
                                                                time.monotonic())
        if refusal:  # before websockets starts a handler: a refusal costs next to nothing
            self.site.refuse("handshakes", ("handshakes", address_key(self.peer)),
                             f"connection from {self.peer} refused: {refusal}",
                             time.monotonic())
            self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"{refusal}; retry later",
                        {"Retry-After": "10"})
            return
        super().connection_made(transport)
        self.started = True
        self.site.open.add(self)
        self.handshaking = True
        if isinstance(oldest, Connection):  # every place taken: the slowest one goes
            oldest.handshaking = False
            self.site.refuse("handshakes_dropped", ("handshakes_dropped",),
                             f"connection from {oldest.peer} dropped: {HANDSHAKES_TOTAL} "
                             "handshakes in progress, it was the oldest", time.monotonic())
            oldest.transport.abort()

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
            seen = self.request_tail + data  # where the request ends, across reads
            end = seen.find(b"\r\n\r\n")
            self.early = self.early or (end != -1 and end + 4 < len(seen))
            self.request_tail = seen[-3:]
        elif self.take_frame is None:
            self.early = True  # after the request, before take_reports()
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

    def take_reports(self, take: Callable[[Connection, bytes], None]) -> None:
        """From now on this agent's reports go to `take` as they are parsed, where the
        fast path is on (FAST.take_frames); else its handler reads them as websockets
        queues them. Its frames are split in split_frames() (FAST.split_frames) when
        websockets' parser has had nothing to parse since the request: a client sends
        nothing before the handshake's answer (RFC 6455, 4.1), and this agent sent
        nothing since. One that sends early anyway (in the request's own segment, or
        before its handler ran) is served by websockets alone, so that the two never
        disagree on where a frame starts."""
        if FAST.take_frames:
            self.take_frame = take
            self.splitting = FAST.split_frames and not self.early \
                and not self.protocol.extensions
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
        super().process_event(event)

    def become(self, role: Agent | Viewer | Login, request: Request) -> None:
        """What web.route_request let through: an agent, a viewer or a sign-in socket.
        Its counts (a viewer's place, a sign-in socket's) are released by connection_lost."""
        if isinstance(role, Agent):
            self.agent, self.sees_hidden = role.identity, False
        elif isinstance(role, Viewer):
            self.agent, self.sees_hidden = None, role.sees_hidden
            self.session = role.session  # closed when that session ends
            self.viewer_from = role.address
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # a backlog shows in the transport's buffer, where it is cut
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIEWER_SEND_BUFFER)
        else:
            self.agent, self.login_from = None, role.address
        # Never permessage-deflate for agents (or sign-in sockets), even with
        # --viewer-compression: its state (~50 KiB a connection) would be most of the
        # memory at a few thousand agents, to save a few hundred bytes per report.
        # websockets negotiates what the request offers, after process_request.
        if not isinstance(role, Viewer) and "Sec-WebSocket-Extensions" in request.headers:
            del request.headers["Sec-WebSocket-Extensions"]

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
            self.site.connections.handshakes.end(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A write that failed (the peer reset) raised inside broadcast(): the traceback
        # holds its frames, and with them the encoded message and its frame (a whole
        # snapshot, twice) for as long as websockets keeps the exception, until the
        # handler ends. Nothing here needs that traceback.
        drop_tracebacks(exc)
        self.headers_read()
        self.site.answers.done(self)
        if self.viewer_from is not None:
            self.site.connections.viewers.remove(self.viewer_from)
            self.viewer_from = None
        if self.login_from is not None:
            self.site.connections.logins.end(self)
            self.login_from = None
            self.viewer_from = None
        # Refused before websockets knew of it: no handler, nothing in a cycle (below), so
        # it counts toward no full collection.
        if self.started:
            self.site.open.discard(self)
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
        drop_tracebacks(getattr(self.protocol, "parser_exc", None))

    def refuse(self, status: HTTPStatus, text: str, headers: dict[str, str]) -> None:
        """Answer before websockets has read a request, and hang up: our side at once,
        the socket when the client closes or after a second."""
        self.refused, self.before_method = True, None
        response = text_response(status, text, {**headers, "Connection": "close"})
        transport = self.transport
        try:
            transport.write(response.serialize())
            if transport.can_write_eof():
                transport.write_eof()
            else:  # TLS: no half-close; close() still sends what is buffered first
                transport.close()
        except OSError:  # the client was gone before it was accepted: nothing to answer
            transport.abort()
            return
        self.loop.call_later(REFUSED_LINGER, transport.abort)


def broadcast_framed(viewers: list[ServerConnection], message: str) -> None:
    """websockets' broadcast(), with the frame built once for all viewers (or agents: no
    task per frame, where 10,000 agents coming back are each told their reconnect spread).

    broadcast() frames the message again for each connection, a copy of it each: with 20
    viewers of 10,000 servers, four updates of ~400 KB a second, 3 % of the dashboard's
    time. A server's frame is the same bytes for every connection without an extension,
    and websockets writes each frame to the transport as it makes it, so writing this one
    there keeps every viewer's messages in order. Viewers with permessage-deflate
    (--viewer-compression) compress for themselves: broadcast() as it is, as for all
    viewers without FAST.framed_broadcast."""
    if not FAST.framed_broadcast:
        broadcast(viewers, message)
        return
    plain = [ws for ws in viewers if not ws.protocol.extensions]
    if len(plain) < len(viewers):
        broadcast([ws for ws in viewers if ws.protocol.extensions], message)
    if not plain:
        return
    frame = Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
    for ws in plain:
        if ws.protocol.state is State.OPEN:  # as broadcast(): closing ones are skipped
            ws.transport.write(frame)



def write_backlog(ws: ServerConnection) -> int:
    """Bytes written to a connection and not sent yet."""
    return ws.transport.get_write_buffer_size()


def hang_up(ws: ServerConnection) -> None:
    """Close a connection at once, with no close handshake (it would queue behind what the
    peer is not reading, or wait for a peer that does not answer)."""
    ws.transport.abort()


def forget_handshake(ws: ServerConnection) -> None:
    """websockets keeps a connection's handshake request and response for its whole life;
    nothing reads an agent's after this point, and their headers are ~5 KiB a connection."""
    for message in (ws.request, ws.response):
        if message is not None:
            message.headers.clear()


def drop_tracebacks(exc: BaseException | None) -> None:
    """Forget where an exception and its causes were raised: their frames hold whoever
    raised them, and the exception is often held by that same object (a cycle)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # a chain may loop back
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
