"""HTTP: the route table, responses, the agents' handshake check, CSP, the installer.

Everything here runs inside websockets' `process_request`: it answers plain HTTP
requests, authenticates agents before the upgrade, and lets WebSocket handshakes through
by returning None. It imports websockets' HTTP types only.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import sqlite3
import ssl
import time
from collections.abc import Awaitable
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, NamedTuple, Union
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .alerts import Alerting
from .config import PLACEHOLDER_SECRET
from .history import RANGES, Busy, History
from .hub import Hub
from .limits import (
    VIEWERS_PER_ADDRESS,
    VIEWERS_TOTAL,
    Answers,
    Connections,
    FailureLimiter,
    LogLimiter,
    address_key,
    held_back,
)
from .metrics import Exposition, render_metrics
from .sessions import COOKIE, Sessions, cookie_value, token_key
from .traffic import Traffic

log = logging.getLogger("sss.dashboard")

INSTALL_PLACEHOLDER = b"__SSS_DASHBOARD_URL__"
HOST_HEADER = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
# A path on this dashboard, for cookies and redirects: never "//host/...", which a browser
# reads as another site.
COOKIE_PATH = re.compile(r"/(?!/)[A-Za-z0-9._~/-]{0,200}")
AGENT_HEADERS = ("X-SERVER-ID", "X-AUTH-SECRET")
# The page's vendored libraries (vendor/README.md), served from this origin only.
VENDOR_TYPES = {"uPlot.iife.min.js": "text/javascript; charset=utf-8",
                "uPlot.min.css": "text/css; charset=utf-8",
                "uPlot.LICENSE": "text/plain; charset=utf-8"}
CHECK_HEADER = "X-SSS-Check"  # agent.py --check: answer each report (PROTOCOL.md)
UPDATE_HEADER = "X-SSS-Auto-Update"  # agent.py --auto-update: offer it updates (PROTOCOL.md)


# --- what is served ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Files:
    """What the dashboard serves besides JSON, read once at start."""

    page: bytes | None
    agent: bytes | None
    installer: bytes | None
    agent_unit: bytes | None
    vendor: dict[str, bytes] = dataclasses.field(default_factory=dict)  # name -> content
    directory: Path | None = None  # where they were read

    @functools.cached_property
    def agent_sha256(self) -> str:
        """agent.py's SHA-256 ("" without it): its ETag, and what updates are checked by."""
        return hashlib.sha256(self.agent).hexdigest() if self.agent is not None else ""

    @property
    def agent_version(self) -> str:
        """What agents report as extraInfo.agentVersion when they run this agent.py."""
        return self.agent_sha256[:12]

    @classmethod
    def beside(cls, directory: Path) -> Files:
        def read(name: str) -> bytes | None:
            try:
                return (directory / name).read_bytes()
            except OSError:
                return None
        vendor = {name: body for name in VENDOR_TYPES
                  if (body := read(f"vendor/{name}")) is not None}
        return cls(read("index.html"), read("agent.py"), read("install.sh"),
                   read("deploy/sss-agent.service"), vendor, directory)

    def with_agent_read_again(self) -> Files:
        """agent.py as it is now (a reload: agents that take updates get the new one)."""
        if self.directory is None:
            return self
        try:
            agent = (self.directory / "agent.py").read_bytes()
        except OSError:
            agent = None
        return dataclasses.replace(self, agent=agent)


@dataclasses.dataclass(frozen=True)
class Options:
    """Command-line settings beyond servers.json."""

    public_url: str = ""
    tls: ssl.SSLContext | None = None
    viewer_compression: bool = False
    trusted_proxies: frozenset[str] = frozenset()
    max_viewers: int = VIEWERS_TOTAL
    viewers_per_address: int = VIEWERS_PER_ADDRESS
    viewer_memory: int | None = None  # bytes; None: by the snapshot (viewer_memory_budget)


class AgentIdentity(NamedTuple):
    """Stored on an agent's connection by the handshake check, read by its handler."""

    server_id: str
    address: str
    check: bool  # answer each report with a "check" frame (agent.py --check)
    updates: bool = False  # it takes agent.py from here when offered (agent.py --auto-update)


class Access(NamedTuple):
    """Who is asking: the signed-in user (or None), whether hidden servers show, and the
    session (the key its token is kept under; None without one)."""

    user: str | None
    sees_hidden: bool
    session: str | None = None
    address: str = "?"  # the client's (client_address)


@dataclasses.dataclass
class Site:
    """What a request handler may use."""

    hub: Hub
    files: Files
    options: Options
    limiter: FailureLimiter
    page_csp: str
    connections: Connections
    alerting: Alerting | None = None
    sessions: Sessions | None = None
    history: History | None = None
    traffic: Traffic | None = None
    quiet: LogLimiter = dataclasses.field(default_factory=LogLimiter)
    answers: Answers = dataclasses.field(default_factory=Answers)  # plain answers not taken
    # Wall time that never jumps forward (timings.WallWatch.steady): what sessions expire by.
    steady: Callable[[], float] = time.time
    # Connections refused before the upgrade, by reason (/metrics: sss_refused_total).
    refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    closed: int = 0  # connections closed since the last full garbage collection
    # Every connection websockets serves, closing ones too (websockets' own set forgets a
    # connection once it starts closing): a stop aborts what did not close in time.
    open: set[Any] = dataclasses.field(default_factory=set)

    @classmethod
    def create(cls, hub: Hub, files: Files, options: Options,
               alerting: Alerting | None = None, sessions: Sessions | None = None,
               history: History | None = None, traffic: Traffic | None = None) -> Site:
        csp = content_security_policy(files.page.decode()) if files.page else ""
        connections = Connections(options.max_viewers, options.viewers_per_address,
                                  exempt=options.trusted_proxies)
        return cls(hub, files, options, FailureLimiter(), csp, connections, alerting, sessions,
                   history, traffic)

    def refuse(self, reason: str, key: tuple[str, ...], message: str, now: float) -> None:
        """Count a refused connection and log it, quietly."""
        self.refused[reason] += 1
        self.log_quietly(logging.WARNING, key, message, now)

    def log_quietly(self, level: int, key: tuple[str, ...], message: str, now: float) -> None:
        """One line per key a minute (a flood of the same event is one line and a count)."""
        held = self.quiet.allow(key, now)
        if held is not None:
            log.log(level, "%s%s", message, held_back(held))

    def access(self, headers: Headers) -> Access:
        """Who the request comes from, by its session cookie."""
        token = cookie_value(";".join(headers.get_all("Cookie")))
        user = self.sessions.user(token, self.steady()) if self.sessions else None
        return Access(user, user is not None, token_key(token) if user and token else None)

    @property
    def private(self) -> bool:
        return not self.hub.config.viewers.public


# --- responses ---------------------------------------------------------------


def http_response(status: HTTPStatus, body: bytes, content_type: str,
                  extra: dict[str, str] | None = None) -> Response:
    """A complete HTTP response for process_request."""
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)),
                       "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
    headers.update(extra or {})
    return Response(status.value, status.phrase, headers, body)


def text_response(status: HTTPStatus, text: str,
                  extra: dict[str, str] | None = None) -> Response:
    return http_response(status, text.encode() + b"\n", "text/plain; charset=utf-8", extra)


def json_response(payload: str | bytes) -> Response:
    body = payload if isinstance(payload, bytes) else payload.encode()
    return http_response(HTTPStatus.OK, body, "application/json")


def content_security_policy(html: str) -> str:
    """A CSP allowing only this page's own inline script and style, by hash."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in bodies)
    return (f"default-src 'none'; script-src 'self' {hashes('script')}; "
            f"style-src 'self' {hashes('style')}; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


# --- addresses and URLs ------------------------------------------------------


def client_address(peer: str, headers: Headers, trusted_proxies: frozenset[str]) -> str:
    """The client's address: the peer, or what a trusted proxy says it forwarded for.

    Only the last X-Forwarded-For entry is the proxy's own; earlier ones are whatever the
    client claimed.
    """
    if peer in trusted_proxies:
        forwarded = ",".join(headers.get_all("X-Forwarded-For")).split(",")[-1].strip()
        if forwarded:
            return forwarded[:64]
    return peer


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def dashboard_url(public_url: str, host_header: str | None, tls: bool) -> str | None:
    """This dashboard's URL as agents should see it, or None when it cannot be trusted.

    The Host header ends up inside a shell script that people run as root, so it is
    accepted only when it is a plain host name or address with an optional port.
    """
    if public_url:
        return public_url.rstrip("/")
    if host_header and HOST_HEADER.fullmatch(host_header):
        return f"{'https' if tls else 'http'}://{host_header}"
    return None


def installer_for(template: bytes, url: str) -> bytes:
    """install.sh with this dashboard's URL as its default."""
    return template.replace(INSTALL_PLACEHOLDER, url.encode(), 1)


# --- the agents' handshake ---------------------------------------------------


def banned_response(site: Site, address: str, who: str, now: float) -> Response | None:
    """429 saying how long, for an address (or an id there) the failure limiter refuses,
    logged once a minute per address; None when it is let through."""
    limiter = site.limiter
    if limiter.over_budget(address, now):
        seconds, why, key = int(limiter.window), (
            "too many failed attempts from many addresses; only addresses that "
            "authenticated recently are let in for now"), ("over_budget", "")
    elif banned := limiter.banned_for(address, who, now):
        seconds, why = int(banned) + 1, "too many failed attempts from this address"
        key = ("banned", address_key(address))
    else:
        return None
    site.refuse(key[0], key, f"refused {address} ({who or 'sign-in'}): {why}", now)
    return text_response(HTTPStatus.TOO_MANY_REQUESTS, f"{why}; refused for {seconds} more s",
                         {"Retry-After": str(seconds)})


def count_failure(site: Site, address: str, who: str, kind: str, message: str,
                  now: float) -> None:
    """A failed handshake or sign-in: logged (once a minute per address and kind), counted,
    and what it got banned logged."""
    site.refuse(kind, (kind, address_key(address)), message, now)
    banned = site.limiter.fail(address, who, now)
    if banned:
        log_ban(site, address, banned)


def log_ban(site: Site, address: str, banned: str) -> None:
    """What a failure just got banned (FailureLimiter.fail), said once."""
    log.warning("%s from %s refused for %.0f s after repeated failures within %.0f s",
                "every attempt" if banned == "address" else banned, address,
                site.limiter.ban, site.limiter.window)


def check_agent(site: Site, address: str, headers: Headers,
                now: float) -> tuple[Response | None, AgentIdentity | None]:
    """Authenticate an agent before the upgrade: (refusal, None) or (None, identity)."""
    ids, secrets = headers.get_all("X-SERVER-ID"), headers.get_all("X-AUTH-SECRET")
    sid = ids[0] if ids else ""
    who = f"id:{sid[:64]}"
    refusal = banned_response(site, address, who, now)
    if refusal is not None:
        return refusal, None
    if len(ids) > 1 or len(secrets) > 1:
        status, reason, why, kind = (HTTPStatus.BAD_REQUEST,
                                     "X-SERVER-ID and X-AUTH-SECRET must be sent once each",
                                     "", "bad_headers")
    elif not ids or not secrets:
        status, reason, why, kind = (HTTPStatus.UNAUTHORIZED,
                                     "missing X-SERVER-ID or X-AUTH-SECRET header", "",
                                     "bad_headers")
    else:
        server = site.hub.config.servers.get(sid)
        expected = server.secret if server else PLACEHOLDER_SECRET + "\0"
        matches = hmac.compare_digest(secrets[0].encode(), expected.encode()) and server
        if matches and server.uses_placeholder_secret and not is_loopback(address):
            status, reason = HTTPStatus.UNAUTHORIZED, (
                "this server still has the placeholder secret, which is accepted from the "
                "dashboard's own machine only; set a real secret in servers.json")
            why, kind = "placeholder secret from a non-loopback address", "placeholder_secret"
        elif matches:
            site.limiter.succeeded(address, now)
            return None, AgentIdentity(sid, address, headers.get(CHECK_HEADER) == "1",
                                       headers.get(UPDATE_HEADER) == "1")
        else:
            status, reason = HTTPStatus.UNAUTHORIZED, "unknown server id or wrong secret"
            why = "wrong secret" if server else "id not in servers.json"
            kind = "wrong_secret" if server else "unknown_id"
    count_failure(site, address, who, kind,
                  f"agent rejected: id={sid[:60]!r} from {address}: {why or reason}", now)
    return text_response(status, reason), None


# --- routes ------------------------------------------------------------------

# A route's answer; or one to wait for, which websockets awaits (a history query).
Handler = Callable[[Site, Request, Access], Union[Response, Awaitable[Response]]]


def page(site: Site, request: Request, access: Access) -> Response:
    if site.files.page is None:
        return text_response(HTTPStatus.NOT_FOUND, "index.html is missing beside dashboard.py")
    return http_response(HTTPStatus.OK, site.files.page, "text/html; charset=utf-8",
                         {"Content-Security-Policy": site.page_csp})


def served_file(name: str, body: Callable[[Files], bytes | None]) -> Handler:
    def serve(site: Site, request: Request, access: Access) -> Response:
        content = body(site.files)
        if content is None:
            return text_response(HTTPStatus.NOT_FOUND, f"{name} is missing beside dashboard.py")
        return http_response(HTTPStatus.OK, content, "text/plain; charset=utf-8")
    return serve


def agent_file(site: Site, request: Request, access: Access) -> Response:
    """/agent.py, with a strong ETag (its SHA-256): a fleet that already has it gets 304."""
    files = site.files
    if files.agent is None:
        return text_response(HTTPStatus.NOT_FOUND, "agent.py is missing beside dashboard.py")
    etag = f'"{files.agent_sha256}"'
    if etag in [tag.strip() for value in request.headers.get_all("If-None-Match")
                for tag in value.split(",")]:
        return Response(HTTPStatus.NOT_MODIFIED.value, HTTPStatus.NOT_MODIFIED.phrase,
                        Headers({"ETag": etag, "Cache-Control": "no-cache"}), b"")
    return http_response(HTTPStatus.OK, files.agent, "text/x-python; charset=utf-8",
                         {"ETag": etag, "Cache-Control": "no-cache"})


def vendored(name: str) -> Handler:
    def serve(site: Site, request: Request, access: Access) -> Response:
        body = site.files.vendor.get(name)
        if body is None:
            return text_response(HTTPStatus.NOT_FOUND, f"vendor/{name} is missing")
        return http_response(HTTPStatus.OK, body, VENDOR_TYPES[name])
    return serve


def installer(site: Site, request: Request, access: Access) -> Response:
    if site.files.installer is None:
        return text_response(HTTPStatus.NOT_FOUND, "install.sh is missing beside dashboard.py")
    hosts = request.headers.get_all("Host")
    url = dashboard_url(site.options.public_url, hosts[0] if len(hosts) == 1 else None,
                        site.options.tls is not None)
    if url is None:
        return text_response(HTTPStatus.BAD_REQUEST,
                             "unusable Host header; start the dashboard with --public-url")
    return http_response(HTTPStatus.OK, installer_for(site.files.installer, url),
                         "text/x-shellscript; charset=utf-8")


def api_servers(site: Site, request: Request, access: Access) -> Response:
    return json_response(site.hub.servers_json(access.sees_hidden))


def visible_server(site: Site, request: Request, access: Access) -> tuple[str, Response | None]:
    """The ?id= of a request, or a 404 for ids unknown, or hidden from this viewer."""
    sid = (parse_qs(urlsplit(request.path).query).get("id") or [""])[0]
    state = site.hub.servers.get(sid)
    if state is None or (state.config.hidden and not access.sees_hidden):
        return sid, text_response(HTTPStatus.NOT_FOUND, f"no server with id {sid[:60]!r}")
    return sid, None


def api_history(site: Site, request: Request,
                access: Access) -> Response | Awaitable[Response]:
    """GET /api/history?id=ID&range=1h|6h|24h|7d|30d|1y: columnar JSON for charts."""
    history = site.history
    if history is None:
        return text_response(HTTPStatus.NOT_FOUND, "history is off (--no-history)")
    sid, refusal = visible_server(site, request, access)
    if refusal is not None:
        return refusal
    range_name = (parse_qs(urlsplit(request.path).query).get("range") or ["1h"])[0]
    if range_name not in RANGES:
        return text_response(HTTPStatus.BAD_REQUEST,
                             f"range must be one of {', '.join(RANGES)}")
    busy = site.connections.queries.add(access.address)
    if busy:
        site.refuse("queries", ("queries", address_key(access.address)),
                    f"history query from {access.address} refused: {busy}", time.monotonic())
        return text_response(HTTPStatus.SERVICE_UNAVAILABLE, f"{busy}; try again",
                             {"Retry-After": "1"})
    return history_answer(site, sid, range_name, access.address)


async def history_answer(site: Site, sid: str, range_name: str, address: str) -> Response:
    """The query's answer, from history's query threads (the event loop goes on)."""
    history = site.history
    assert history is not None
    try:
        return json_response(await history.answer(sid, range_name, time.time()))
    except Busy as exc:
        return text_response(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc}; try again",
                             {"Retry-After": "1"})
    except sqlite3.Error as exc:  # the writer logs and retries; the reader just says so
        said = history.status if history.status != "ok" else str(exc)
        return text_response(HTTPStatus.SERVICE_UNAVAILABLE, f"history unavailable: {said}")
    finally:
        site.connections.queries.remove(address)


def healthz(site: Site, request: Request, access: Access) -> Response:
    """The counts of what this audience may see, and history's state; on a private
    dashboard, anonymous visitors are told only that it is up."""
    sees_hidden = access.sees_hidden or bears_metrics_token(site, request)
    if site.private and not sees_hidden:
        return json_response('{"status":"ok"}')
    hub = site.hub
    return json_response(json.dumps({
        "status": "ok", "servers": len(hub.visible(sees_hidden)),
        "agents": hub.agents_connected(sees_hidden), "viewers": len(hub.viewers),
        "history": "off" if site.history is None else site.history.status}))


def bears_metrics_token(site: Site, request: Request) -> bool:
    """The request carries `Authorization: Bearer` with the configured metricsToken."""
    token = site.hub.config.metrics_token
    given = request.headers.get_all("Authorization")
    return bool(token) and len(given) == 1 and hmac.compare_digest(
        given[0].encode(), f"Bearer {token}".encode())


def api_traffic(site: Site, request: Request, access: Access) -> Response:
    """GET /api/traffic?id=ID: the current and the last 12 periods of one server."""
    sid, refusal = visible_server(site, request, access)
    if refusal is not None or site.traffic is None:
        return refusal or text_response(HTTPStatus.NOT_FOUND, "traffic is not counted")
    plan = site.hub.servers[sid].config.traffic
    periods = site.traffic.periods(sid, plan, time.time())
    return json_response(json.dumps({"id": sid, "periods": periods}, allow_nan=False))


def api_alerts(site: Site, request: Request, access: Access) -> Response:
    if site.alerting is None:
        return json_response("[]")
    servers = {sid: state.config for sid, state in site.hub.servers.items()}
    return json_response(site.alerting.firing_json(
        servers, site.hub.config.alerts,
        lambda sid: access.sees_hidden or not servers[sid].hidden))


def api_session(site: Site, request: Request, access: Access) -> Response:
    """Whether the page may show data, and who is signed in: the page asks first."""
    viewers = site.hub.config.viewers
    return json_response(json.dumps({"user": access.user, "public": viewers.public,
                                     "signIn": bool(viewers.users),
                                     "agentVersion": site.files.agent_version}))


def metrics(site: Site, request: Request, access: Access) -> Response:
    """Prometheus text; with metricsToken set, only for `Authorization: Bearer TOKEN`."""
    hub = site.hub
    token = hub.config.metrics_token
    if (token or site.private) and not bears_metrics_token(site, request):
        why = ("/metrics needs Authorization: Bearer with the metricsToken" if token else
               "this dashboard is private: /metrics needs a metricsToken in servers.json")
        return text_response(HTTPStatus.UNAUTHORIZED, why,
                             {"WWW-Authenticate": 'Bearer realm="metrics"'})
    sees_hidden = bool(token) or access.sees_hidden  # hidden servers: never anonymously
    visible = hub.visible(sees_hidden)
    shown = {state.config.id for state in visible}
    wall = time.time()
    alerting = site.alerting
    text = render_metrics(Exposition(
        visible, hub.agents_connected(sees_hidden), len(hub.viewers), hub.accepted,
        hub.rejected, site.refused, hub.viewers_cut, hub.viewer_backlog(),
        [(s.config, site.traffic.view(s.config.id, s.config.traffic, wall))
         for s in visible] if site.traffic else [],
        [key for key in alerting.evaluator.firing if key[1] in shown] if alerting else [],
        alerting.delivery.totals() if alerting else {}, site.files.agent_version))
    return http_response(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4")


def sign_in_done(site: Site, request: Request, access: Access) -> Response:
    """GET /login?ticket=T&path=P: trade the ticket from /ws-login for the session cookie."""
    query = parse_qs(urlsplit(request.path).query)
    ticket = (query.get("ticket") or [""])[0]
    path = (query.get("path") or ["/"])[0]
    if not COOKIE_PATH.fullmatch(path):
        path = "/"
    if not from_this_site(site, request.headers):
        return text_response(HTTPStatus.FORBIDDEN, "a sign-in from another site is refused")
    viewers = site.hub.config.viewers
    token = site.sessions.redeem(ticket, viewers.users, viewers.session_days,
                                 time.monotonic(), site.steady()) if site.sessions else None
    if token is None:
        return text_response(HTTPStatus.BAD_REQUEST, "this sign-in expired; sign in again")
    log.info("viewer signed in: %s", site.sessions.user(token, site.steady()))  # type: ignore
    cookie = (f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path={path}; "
              f"Max-Age={int(viewers.session_days * 86400)}{secure(site)}")
    return redirect(path, {"Set-Cookie": cookie})


def sign_out(site: Site, request: Request, access: Access) -> Response:
    """GET /logout: end the session and forget the cookie."""
    if site.sessions is not None:
        site.sessions.end(cookie_value(";".join(request.headers.get_all("Cookie"))))
    path = (parse_qs(urlsplit(request.path).query).get("path") or ["/"])[0]
    if not COOKIE_PATH.fullmatch(path):
        path = "/"
    cookie = f"{COOKIE}=; HttpOnly; SameSite=Strict; Path={path}; Max-Age=0{secure(site)}"
    return redirect(path, {"Set-Cookie": cookie})


def secure(site: Site) -> str:
    """Cookies over https are marked Secure (TLS here, or a proxy's https public URL)."""
    https = site.options.tls is not None or site.options.public_url.startswith("https:")
    return "; Secure" if https else ""


def redirect(location: str, headers: dict[str, str]) -> Response:
    return http_response(HTTPStatus.SEE_OTHER, b"", "text/plain; charset=utf-8",
                         {"Location": location, **headers})


ROUTES: dict[str, Handler] = {
    "/": page,
    "/index.html": page,
    "/agent.py": agent_file,
    "/sss-agent.service": served_file("deploy/sss-agent.service",
                                      lambda files: files.agent_unit),
    "/install.sh": installer,
    **{f"/vendor/{name}": vendored(name) for name in VENDOR_TYPES},
    "/api/servers": api_servers,
    "/api/history": api_history,
    "/api/alerts": api_alerts,
    "/api/traffic": api_traffic,
    "/api/session": api_session,
    "/login": sign_in_done,
    "/logout": sign_out,
    "/healthz": healthz,
    "/metrics": metrics,
}


class Agent(NamedTuple):
    """A WebSocket to let through: an agent, authenticated (check_agent)."""

    identity: AgentIdentity


class Viewer(NamedTuple):
    """A WebSocket to let through: a browser watching, counted against `address`."""

    address: str
    sees_hidden: bool
    session: str | None  # its session's key: closed when that session ends


class Login(NamedTuple):
    """A WebSocket to let through: a sign-in socket, to be counted (limits.Waiting)."""

    address: str


# What process_request gets: an answer, one to wait for, or who a WebSocket is.
Route = Union[Response, Awaitable[Response], Agent, Viewer, Login]


def route_request(site: Site, peer: str, request: Request, now: float) -> Route:
    """process_request's verdict: an HTTP answer (or one to wait for), or who a WebSocket
    handshake is, to be let through (handlers applies it to the connection)."""
    try:
        path = urlsplit(request.path).path
    except ValueError:  # "//[x": a target no URL parser takes
        site.refuse("bad_request", ("bad_request",), "request refused: unusable target "
                    f"{request.path[:60]!r}", now)
        return text_response(HTTPStatus.BAD_REQUEST, "unusable request target")
    address = client_address(peer, request.headers, site.options.trusted_proxies)
    if path == "/ws-report":
        refusal, identity = check_agent(site, address, request.headers, now)
        return refusal if refusal is not None else Agent(identity)  # type: ignore[arg-type]
    if path == "/ws-frontend":
        return viewer_handshake(site, address, request, now)
    if path == "/ws-login":
        return login_handshake(site, address, request, now)
    handler = ROUTES.get(path)
    if handler is None:
        return text_response(HTTPStatus.NOT_FOUND, "not found")
    access = site.access(request.headers)._replace(address=address)
    if site.private and access.user is None and path.startswith("/api/") \
            and path != "/api/session":
        return text_response(HTTPStatus.UNAUTHORIZED, "sign in first")
    return handler(site, request, access)


def viewer_handshake(site: Site, address: str, request: Request,
                     now: float) -> Response | Viewer:
    """/ws-frontend: a browser, if it may watch from here (counted per address)."""
    if any(name in request.headers for name in AGENT_HEADERS):
        return text_response(HTTPStatus.BAD_REQUEST,
                             "agents report on /ws-report, not /ws-frontend; "
                             "fix the path in --server")
    if not same_origin(site, request.headers):
        return text_response(HTTPStatus.FORBIDDEN, "cross-site WebSocket refused")
    access = site.access(request.headers)
    if site.private and access.user is None:
        return text_response(HTTPStatus.UNAUTHORIZED, "sign in first")
    refusal = site.connections.viewers.add(address)
    if refusal:
        site.refuse("viewers", ("viewers", address_key(address)),
                    f"viewer from {address} refused: {refusal}", now)
        return text_response(HTTPStatus.TOO_MANY_REQUESTS, refusal, {"Retry-After": "10"})
    return Viewer(address, access.sees_hidden, access.session)


def login_handshake(site: Site, address: str, request: Request,
                    now: float) -> Response | Login:
    """/ws-login: a browser sends a user name and password over it (see sessions.py)."""
    if not site.hub.config.viewers.users:
        return text_response(HTTPStatus.NOT_FOUND, "no viewers can sign in here")
    if not same_origin(site, request.headers):
        return text_response(HTTPStatus.FORBIDDEN, "cross-site sign-in refused")
    refusal = banned_response(site, address, "", now)
    return refusal if refusal is not None else Login(address)


def same_origin(site: Site, headers: Headers) -> bool:
    """A browser's Origin names this dashboard (by --public-url, or the Host it asked for);
    clients that send no Origin are not browsers and pass."""
    origins = headers.get_all("Origin")
    return not origins or (len(origins) == 1 and names_this_dashboard(site, headers,
                                                                       origins[0]))


def from_this_site(site: Site, headers: Headers) -> bool:
    """A request a browser says came from this dashboard's own page (or typed in): its
    Sec-Fetch-Site, Origin and Referer, those it sends, agree. A page on another site
    that sends a browser to /login?ticket=... (login CSRF) is refused."""
    fetch_site = headers.get_all("Sec-Fetch-Site")
    if fetch_site and fetch_site[0] not in ("same-origin", "none"):
        return False
    return all(len(values) == 1 and names_this_dashboard(site, headers, values[0])
               for values in (headers.get_all("Origin"), headers.get_all("Referer")) if values)


def names_this_dashboard(site: Site, headers: Headers, url: str) -> bool:
    """Whether a URL a browser sent (Origin, Referer) is on this dashboard's host."""
    own = urlsplit(site.options.public_url).netloc if site.options.public_url else \
        ",".join(headers.get_all("Host"))
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # "http://[": no host at all
        return False
    return bool(own) and netloc.lower() == own.lower()
