"""Viewer sign-in: scrypt password hashes, sign-in tickets and sessions (time comes in as
arguments: `now`, monotonic, for a ticket's seconds; `steady`, timings.WallWatch's wall time
that never jumps forward, for a session's days, so a wall clock set forward ends none).

    $ printf 'correct horse\\n' | python3 dashboard.py --hash-password
    scrypt$16384$8$1$0nJ0c1K...$Qh2V...

Sessions are random 256-bit tokens in an HttpOnly, SameSite=Strict cookie; the dashboard
keeps only their SHA-256 (in `sessions.json` in the data directory, so they survive a
restart), with the user, the expiry and a fingerprint of the user's password hash, so a
changed or removed password ends that user's sessions at the next reload.

websockets' HTTP parser takes no request bodies, so a browser cannot POST a form to it;
the page signs in over a WebSocket (/ws-login) and trades the one-time ticket it gets for
the session cookie with a GET (/login?ticket=…). Nothing here imports websockets.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

from .datafiles import JsonFile, entries, finite

log = logging.getLogger("sss.dashboard")

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # about 16 MiB and 50 ms per check
TICKET_SECONDS = 30.0
MAX_SESSIONS = 10_000
COOKIE = "sss_session"


# --- password hashes ------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None) -> str:
    """'scrypt$N$r$p$salt$hash' (base64) for servers.json."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=32)
    encode = base64.b64encode
    return (f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}$"
            f"{encode(digest).decode()}")


def is_password_hash(value: str) -> bool:
    parts = value.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(p.isdigit() for p in parts[1:4])


def check_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash made by hash_password (constant time)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        found = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                               r=int(r), p=int(p), dklen=len(expected), maxmem=2**26)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, expected)


def fingerprint(stored_hash: str) -> str:
    """Changes when the password does: sessions carry it, a reload compares."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:16]


def token_key(token: str) -> str:
    """What is stored of a session or ticket token: its hash, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


# --- sessions -------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    user: str
    expires: float
    password: str  # fingerprint of the password hash it was opened with


class Sessions:
    """Tickets (seconds long, in memory) and sessions (days long, saved)."""

    def __init__(self, path: Path, ended: Callable[[list[str]], None] = lambda keys: None) -> None:
        self.path = path
        self.ended = ended  # told the keys of sessions that end (their viewers are closed)
        self.sessions: dict[str, Session] = {}
        self.tickets: dict[str, tuple[str, float]] = {}  # key -> (user, expires)
        self.file = JsonFile(path, "sessions", "sign-ins then last until a restart",
                             private=True)

    def ticket(self, user: str, now: float) -> str:
        """A one-time ticket for a user who just proved the password (`now`: monotonic)."""
        self.tickets = {k: t for k, t in self.tickets.items() if t[1] > now}
        token = secrets.token_urlsafe(32)
        self.tickets[token_key(token)] = (user, now + TICKET_SECONDS)
        return token

    def redeem(self, ticket: str, users: dict[str, str], days: float, now: float,
               steady: float) -> str | None:
        """Trade a ticket for a session token; None when it is unknown, used or late."""
        user, expires = self.tickets.pop(token_key(ticket), ("", 0.0))
        if expires <= now or user not in users:
            return None
        token = secrets.token_urlsafe(32)
        if len(self.sessions) >= MAX_SESSIONS:
            self.expire(users, steady)
            if len(self.sessions) >= MAX_SESSIONS:  # the oldest goes
                del self.sessions[min(self.sessions, key=lambda k: self.sessions[k].expires)]
        self.sessions[token_key(token)] = Session(user, steady + days * 86400,
                                                  fingerprint(users[user]))
        self.save()
        return token

    def user(self, token: str | None, steady: float) -> str | None:
        """The signed-in user of a session token, or None."""
        if not token:
            return None
        session = self.sessions.get(token_key(token))
        if session is None or session.expires <= steady:
            return None
        return session.user

    def end(self, token: str | None) -> None:
        """Sign-out: the session ends now."""
        key = token_key(token) if token else ""
        if self.sessions.pop(key, None) is not None:
            self.save()
            self.ended([key])

    def expire(self, users: dict[str, str], steady: float) -> int:
        """End sessions that ran out, or whose user's password changed or was removed."""
        ended = [key for key, s in self.sessions.items()
                 if s.expires <= steady or s.user not in users
                 or s.password != fingerprint(users[s.user])]
        for key in ended:
            del self.sessions[key]
        if ended:
            self.save()
            self.ended(ended)
        return len(ended)

    def save(self) -> None:
        self.file.save({key: dataclasses.asdict(s) for key, s in self.sessions.items()})

    def load(self) -> None:
        self.sessions = self.file.load("everyone signs in again", sessions_from) or {}


TOKEN_KEY = re.compile(r"[0-9a-f]{64}")  # token_key(): a SHA-256 in hex
FINGERPRINT = re.compile(r"[0-9a-f]{16}")
USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # config.USER_PATTERN


def sessions_from(data: Any) -> tuple[dict[str, Session], list[str]]:
    """The sessions of sessions.json, each checked: (sessions, one problem for each dropped).

    >>> sessions_from({"ab": {"user": "alice", "expires": None, "password": "x"}})[1]
    ["entry 'ab': not a session's key; dropped, the rest kept"]
    """
    return entries(data, dict, session_from, "sessions")


def session_from(key: Any, fields: Any) -> Session:
    """One saved session, or ValueError saying what is wrong with it."""
    if not isinstance(key, str) or not TOKEN_KEY.fullmatch(key):
        raise ValueError("not a session's key")
    if not isinstance(fields, dict):
        raise ValueError("not an object")
    user, expires, password = fields.get("user"), fields.get("expires"), fields.get("password")
    if not isinstance(user, str) or not USER.fullmatch(user):
        raise ValueError("user must be a user name")
    if not finite(expires):
        raise ValueError(f"expires must be a time, got {expires!r:.40}")
    if not isinstance(password, str) or not FINGERPRINT.fullmatch(password):
        raise ValueError("password must be a password hash's fingerprint")
    return Session(user, float(expires), password)


def cookie_value(cookie_header: str | None) -> str | None:
    """The session token from a Cookie header."""
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None
