"""The WebSocket transport: websockets' server connection as the dashboard uses it.

    $ python3 dashboard.py --log-level DEBUG 2>&1 | grep transport
    2026-12-04 18:02:11 DEBUG transport: websockets 17.4, the fast path is on

This is the only module that touches websockets beyond its documented API: the
Connection subclass counts a handshake from the first byte, refuses before websockets
starts a handler, answers HEAD and 405 (websockets 15 reads GET requests only), splits an
agent's frames itself, reads every socket into one buffer, and writes one frame for many
viewers. Each trick rests on an internal of websockets (`Connection.process_event`,
`Connection.send_data`, `protocol.reader`, `protocol.parser_exc`, the transport's
`_read_ready_cb`). `check_internals` looks for each at start; where one is missing (a
websockets release moved it) the dashboard logs one line naming it and serves on the
public path: websockets parses every frame and broadcast() frames every message.
`SSS_SAFE_TRANSPORT=1` forces that path (CI runs the suite so). The request header limits
are set the way websockets documents: its environment variables, before it is imported.
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
import functools
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .limits import HANDSHAKES_TOTAL, MAX_REQUEST_BYTES, TokenBucket, address_key
from .reports import MAX_FRAME_BYTES
from .web import text_response

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
        self.early = False  # bytes came after the request before split_here() was asked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        refusal, oldest = self.site.connections.handshakes.start(self, self.peer,
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
        self.site.open.add(self)
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
            seen = self.request_tail + data  # where the request ends, across reads
            end = seen.find(b"\r\n\r\n")
            self.early = self.early or (end != -1 and end + 4 < len(seen))
            self.request_tail = seen[-3:]
        elif self.take_frame is None:
            self.early = True  # after the request, before the agent's frames are split
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
        parser has had nothing to parse since the request: a client sends nothing before
        the handshake's answer (RFC 6455, 4.1), and this agent sent nothing since. One that
        sends early anyway (in the request's own segment, or before its handler ran) is
        served by websockets alone, so that the two never disagree on where a frame
        starts."""
        self.splitting = not self.early and not self.protocol.extensions

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
        drop_tracebacks(self.protocol.parser_exc)

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
