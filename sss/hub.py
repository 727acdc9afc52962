"""The live state of every server, fan-out to viewers, and liveness.

Every method runs on the event loop and takes the time it needs as arguments (`now`:
monotonic seconds, `wall`: Unix seconds), so the rules are tested with a fake clock.
Sending is injected (`broadcast`), so this module needs websockets' connection type only.
Closing connections is the caller's job: the methods that decide to close one return it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from .config import COUNTRY_PATTERN, Config, ServerConfig
from .limits import VIEWER_BACKLOG_BYTES, LogLimiter, held_back, viewer_memory_budget
from .reports import REPORT_SCHEMA, VIEW_FIELDS, ReportError
from .timings import COALESCE_SECONDS, DEFAULT_REPORT_INTERVAL, offline_after, silent_close_after

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
else:
    ServerConnection = Any

log = logging.getLogger("sss.dashboard")


# json.dumps(value, separators=(",", ":")), built once. No circular check: what it encodes
# came from JSON. No NaN or infinity (browsers' JSON.parse refuses them): they raise. (json's
# private C encoder, built once, saved 0.7 µs a report, under 1 %: BENCHMARKS.md.)
encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode

POLICY_VIOLATION = 1008  # websockets' CloseCode.POLICY_VIOLATION (hub imports no websockets)
SNAPSHOT_SHARED_SECONDS = 1.0
HISTORY_SERVERS_PER_UPDATE = 500  # a history step's changes go out this many at a time

Broadcast = Callable[[list[Any], str], None]
Reported = Callable[[str, dict[str, Any], float, float], None]  # sid, record, now, wall


class Before(NamedTuple):
    """A server's view before a change, in the parts that change: enough to work out
    the change without building the view twice."""

    head: tuple[Any, ...]  # head_values()
    record: dict[str, Any] | None


class Closing(NamedTuple):
    """A connection the hub wants closed, and why (close code and reason)."""

    connection: ServerConnection
    code: int
    reason: str


def server_view(server: ServerConfig, record: dict[str, Any] | None,
                last_report: int, online: bool) -> dict[str, Any]:
    """The object a browser gets for one server: config names, the head, validated blocks."""
    view: dict[str, Any] = {"id": server.id, "name": server.name, "group": server.group}
    view.update(zip(HEAD_FIELDS, head_values(server, record, last_report, online)))
    if server.expires:
        view["expires"] = server.expires
    if server.price:
        view["price"] = server.price
    if record:
        view.update((key, record[key]) for key in VIEW_FIELDS if key in record)
    return view


# The view's few fields that a report or the clock changes besides its blocks.
HEAD_FIELDS = ("loc", "online", "lastReportTime", "offlineAfter")


def head_values(server: ServerConfig, record: dict[str, Any] | None,
                last_report: int, online: bool) -> tuple[Any, ...]:
    """The values of HEAD_FIELDS."""
    loc = server.country_code
    if not loc and record and COUNTRY_PATTERN.fullmatch(record.get("loc", "")):
        loc = record["loc"].lower()
    interval = (record or {}).get("reportInterval", DEFAULT_REPORT_INTERVAL)
    return loc, online, last_report, offline_after(interval)


def browser_message(kind: str, wall: float, server_views: list[str]) -> str:
    """Assemble a snapshot or update from per-server JSON encoded once each."""
    return f'{{"type":"{kind}","time":{wall:.3f},"servers":[{",".join(server_views)}]}}'


MISSING = object()
# What a server that viewers are up to date with holds as its changes: 10,000 servers
# between two updates hold no containers of their own. Never changed in place.
NO_CHANGES: dict[str, Any] = {}
NO_UNSET: list[str] = []


def record_changes(before: dict[str, Any], record: dict[str, Any],
                   changes: dict[str, Any]) -> list[str]:
    """What turns the blocks a browser sees of record `before` into those of `record`:
    into `changes` (empty until then), the members to set; returns the blocks to unset.
    Objects that kept all their members, and lists that kept their length, change by
    member ("cpuInfo.percent", "diskInfo.partitions.0.used"), so a report costs viewers
    what changed in it, not the whole server; anything else is replaced whole.

        >>> changes = {}
        >>> record_changes({"cpuInfo": {"percent": 5, "info": ["x"]}, "swapMemoryInfo": {}},
        ...                {"cpuInfo": {"percent": 7, "info": ["x"]}}, changes), changes
        (['swapMemoryInfo'], {'cpuInfo.percent': 7})
        >>> changes = {}
        >>> record_changes({"cpuInfo": {"percent": 5, "info": ["x"]}},
        ...                {"cpuInfo": {"percent": 7}}, changes), changes
        ([], {'cpuInfo': {'percent': 7}})
    """
    try:
        return RECORD_CHANGES(before, record, changes)
    except MemberRemoved:  # an object lost a member (rare): the generic way, from the start
        changes.clear()
        unset = []
        for field in VIEW_FIELDS:
            value, old = record.get(field, MISSING), before.get(field, MISSING)
            if value is MISSING:
                if old is not MISSING:
                    unset.append(field)
            elif old is not value and old != value:
                member_changes(field, old, value, changes)
        return unset


def member_changes(path: str, old: Any, new: Any, changes: dict[str, Any]) -> None:
    """Into `changes`: what turns `old` (which differs) into `new`, at `path`."""
    if type(new) is dict and type(old) is dict and old.keys() <= new.keys():
        for member, item in new.items():
            before = old.get(member, MISSING)
            if before is not item and before != item:
                member_changes(f"{path}.{member}", before, item, changes)
    elif type(new) is list and type(old) is list and len(old) == len(new):
        for index, (before, item) in enumerate(zip(old, new)):
            if before is not item and before != item:
                member_changes(f"{path}.{index}", before, item, changes)
    else:
        changes[path] = new


class MemberRemoved(Exception):
    """An object of the new record lacks a member the old one had: that object is to be
    replaced whole, which the generated comparison leaves to member_changes()."""


def record_changes_source(schema: dict[str, Any], fields: tuple[str, ...]) -> str:
    """record_changes() for records of `schema`, as straight-line code: member_changes()
    at a third of the cost (no call per member, no set of keys compared per object, and a
    path formatted only for a member that changed, by its index in a list), because every
    report of every server goes through it while anyone watches. Records hold no nulls
    (reports.py drops them), so a member is missing where .get() gives None.

    >>> print(record_changes_source({"a": "number", "b": {"c": "number"}, "d": ["str"]},
    ...                             ("a", "b", "d")))
    def changes(o0, n0, out):
        unset = []
        o1 = o0.get('a'); n1 = n0.get('a')
        if o1 is not n1:
            if n1 is None:
                unset.append('a')
            elif o1 != n1:
                out['a'] = n1
        o2 = o0.get('b'); n2 = n0.get('b')
        if o2 is not n2:
            if n2 is None:
                unset.append('b')
            elif type(o2) is dict and type(n2) is dict:
                o3 = o2.get('c'); n3 = n2.get('c')
                if o3 is not n3 and o3 != n3:
                    if n3 is None:
                        raise MemberRemoved
                    out['b.c'] = n3
            else:
                out['b'] = n2
        o4 = o0.get('d'); n4 = n0.get('d')
        if o4 is not n4:
            if n4 is None:
                unset.append('d')
            elif type(o4) is list and type(n4) is list and len(o4) == len(n4):
                for i5, (o5, n5) in enumerate(zip(o4, n4)):
                    if o5 is not n5 and o5 != n5:
                        out[f'd.{i5}'] = n5
            else:
                out['d'] = n4
        return unset
    """
    lines = ["def changes(o0, n0, out):", "    unset = []"]
    names = iter(range(1, 1 << 16))

    def emit(depth: int, line: str) -> None:
        lines.append("    " * depth + line)

    def at(path: str) -> str:
        """A path's source: a literal, or an f-string when it runs through a list."""
        return f"f{path!r}" if "{" in path else repr(path)

    def changed(spec: Any, before: str, after: str, path: str, depth: int,
                first: str = "if") -> None:
        """Lines putting into `out` what turns `before` (which differs) into `after`."""
        if isinstance(spec, dict):
            emit(depth, f"{first} type({before}) is dict and type({after}) is dict:")
            members(spec, before, after, path, depth + 1)
        elif isinstance(spec, list):
            name = next(names)
            index, old, new = f"i{name}", f"o{name}", f"n{name}"
            emit(depth, f"{first} type({before}) is list and type({after}) is list "
                        f"and len({before}) == len({after}):")
            emit(depth + 1, f"for {index}, ({old}, {new}) in enumerate(zip({before}, {after})):")
            emit(depth + 2, f"if {old} is not {new} and {old} != {new}:")
            changed(spec[0], old, new, f"{path}.{{{index}}}", depth + 3)
        elif first == "elif":  # a field of the record itself: only `is not` tested yet
            emit(depth, f"elif {before} != {after}:")
            emit(depth + 1, f"out[{at(path)}] = {after}")
            return
        else:
            emit(depth, f"out[{at(path)}] = {after}")
            return
        emit(depth, "else:")
        emit(depth + 1, f"out[{at(path)}] = {after}")

    def members(spec: dict[str, Any], old: str, new: str, path: str, depth: int) -> None:
        for key, sub in spec.items():
            before, after = pair(old, new, key, depth)
            emit(depth, f"if {before} is not {after} and {before} != {after}:")
            emit(depth + 1, f"if {after} is None:")
            emit(depth + 2, "raise MemberRemoved")
            changed(sub, before, after, f"{path}.{key}", depth + 1)

    def pair(old: str, new: str, key: str, depth: int) -> tuple[str, str]:
        name = next(names)
        emit(depth, f"o{name} = {old}.get({key!r}); n{name} = {new}.get({key!r})")
        return f"o{name}", f"n{name}"

    for field in fields:  # the blocks nearly always differ: compared member by member
        before, after = pair("o0", "n0", field, 1)
        emit(1, f"if {before} is not {after}:")
        emit(2, f"if {after} is None:")
        emit(3, f"unset.append({field!r})")
        changed(schema[field], before, after, field, 2, first="elif")
    emit(1, "return unset")
    return "\n".join(lines)


def compile_record_changes(schema: dict[str, Any], fields: tuple[str, ...]) -> Callable[..., Any]:
    namespace = {"MemberRemoved": MemberRemoved}
    exec(record_changes_source(schema, fields), namespace)  # our own schema, no input in it
    return namespace["changes"]  # type: ignore[return-value]


RECORD_CHANGES = compile_record_changes(REPORT_SCHEMA, VIEW_FIELDS)


def merge_changes(pending: dict[str, Any], unset: list[str],
                  changes: dict[str, Any], removed: list[str]) -> None:
    """Add a later report's changes (`changes`, `removed`) to those not sent yet, so that
    the update (its sets in order, then its unsets) still ends at the later view: a path
    set again moves to the end, and what was pending at or below it goes.

        >>> pending, unset = {"disk.parts": [1, 2], "cpu.percent": 5}, ["swap"]
        >>> merge_changes(pending, unset, {"disk.parts.0": 3, "cpu": {"n": 6}, "swap": 1}, [])
        >>> pending, unset
        ({'disk.parts': [1, 2], 'disk.parts.0': 3, 'cpu': {'n': 6}, 'swap': 1}, [])
    """
    for path in [*removed, *changes]:
        below = path + "."
        for old in [old for old in pending if old == path or old.startswith(below)]:
            del pending[old]
        if path in unset:
            unset.remove(path)
    pending.update(changes)
    unset += removed


def with_members(encoded: str, members: str) -> str:
    """Splice already encoded `,"key":value` members into an encoded JSON object."""
    if not members:
        return encoded
    return "{" + members[1:] + "}" if encoded == "{}" else encoded[:-1] + members + "}"


def extra_members(extras: dict[str, str], keys: Any = None) -> str:
    """`,"key":value` for each (or each listed) extra field, values already encoded."""
    return "".join(f',"{key}":{extras[key]}' for key in (extras if keys is None else keys))


def to_cut(backlogs: dict[Any, int], cap: int, budget: int) -> list[Any]:
    """Which viewers to cut: each over `cap`, then the largest until the rest fit `budget`.

        >>> to_cut({"a": 10, "b": 500, "c": 300, "d": 0}, cap=400, budget=200)
        ['b', 'c']
    """
    cut = [ws for ws, size in backlogs.items() if size > cap]
    total = sum(backlogs.values()) - sum(backlogs[ws] for ws in cut)
    for ws in sorted(backlogs, key=backlogs.__getitem__, reverse=True):
        if total <= budget:
            break
        if ws not in cut:
            cut.append(ws)
            total -= backlogs[ws]
    return cut


@dataclasses.dataclass
class ServerState:
    """One server: its config, last record and connection, and what viewers lack.

    While anyone watches, each report is compared with the one before it as it comes in,
    and what changed waits in `changes` and `unset` for the next update. So the record
    before is let go at once, instead of being kept as what viewers have until the next
    update: a second record of every server. The view's JSON is encoded only when a
    snapshot, /api/servers or history needs it, and kept until the server changes."""

    config: ServerConfig
    record: dict[str, Any] | None = None
    last_report: int = 0  # Unix seconds, 0 = never
    # The record's reportInterval, kept apart: the tick reads it for every server each second.
    report_interval: float = DEFAULT_REPORT_INTERVAL
    last_report_mono: float = 0.0
    last_frame_mono: float = 0.0
    online: bool = False
    connection: ServerConnection | None = None
    # Fields other modules add, encoded: history's availability, traffic, alerts firing.
    extras: dict[str, str] = dataclasses.field(default_factory=dict)
    # Not sent yet: members to set (paths, in order), fields to unset (merge_changes), and
    # the extras set or removed. Between updates, shared empty ones (never changed in place).
    changes: dict[str, Any] = dataclasses.field(default_factory=lambda: NO_CHANGES)
    unset: list[str] = dataclasses.field(default_factory=lambda: NO_UNSET)
    unsent_extras: tuple[str, ...] = ()
    encoded: str = ""  # the view now, as JSON; "" once it changed, until needed again
    # head_values() as of the last change viewers heard of; None when it changed unheard.
    head: tuple[Any, ...] | None = None

    def take_record(self, record: dict[str, Any], last_report: int) -> None:
        self.record, self.last_report = record, last_report
        self.report_interval = float(record.get("reportInterval", DEFAULT_REPORT_INTERVAL))

    def view(self) -> dict[str, Any]:
        return server_view(self.config, self.record, self.last_report, self.online)

    def head_now(self) -> tuple[Any, ...]:
        return head_values(self.config, self.record, self.last_report, self.online)

    def before(self) -> Before:
        return Before(self.head or self.head_now(), self.record)

    def view_json(self) -> str:
        if not self.encoded:
            self.encoded = with_members(encode(self.view()), extra_members(self.extras))
        return self.encoded

    def changed(self, before: Before | None) -> None:
        """The view (or only the extras) changed; `before`: the view until now, when
        viewers are to hear of more than the extras."""
        self.encoded = ""
        if before is None:
            self.head = None
            return
        changes: dict[str, Any] = {}
        unset = []
        if before.record is not self.record:
            unset = record_changes(before.record or {}, self.record or {}, changes)
        self.head = head = self.head_now()  # kept: the next change's `before` needs it
        changes.update((key, value) for key, old, value in zip(HEAD_FIELDS, before.head, head)
                       if old != value)
        if self.changes or self.unset:  # a second report within one update: rare
            pending, removed = dict(self.changes), list(self.unset)
            merge_changes(pending, removed, changes, unset)
            changes, unset = pending, removed
        self.changes, self.unset = changes or NO_CHANGES, unset or NO_UNSET

    def set_extra(self, field: str, value: str) -> bool:
        """Set (or with "" remove) a field another module adds to the view, its value
        encoded already; whether that changed it."""
        if self.extras.get(field, "") == value:
            return False
        if value:
            self.extras[field] = value
        else:
            del self.extras[field]
        if field not in self.unsent_extras:
            self.unsent_extras += (field,)
        return True

    def commit(self) -> str:
        """The update entry that brings viewers to the view now ("" when nothing changed);
        from here on they have it."""
        changes, unset, unsent = self.changes, self.unset, self.unsent_extras
        extras = [key for key in unsent if key in self.extras]
        if len(extras) < len(unsent):  # an extra was removed: rare
            unset = unset + [key for key in unsent if key not in self.extras]
        self.catch_up()
        if not (changes or extras or unset):
            return ""
        members = with_members(encode(changes), extra_members(self.extras, extras))
        removed = f',"unset":{encode(unset)}' if unset else ""
        return f'{{"id":{encode(self.config.id)},"set":{members}{removed}}}'

    def catch_up(self) -> None:
        """Take the view now as what viewers have, telling no one (nobody watches, or a
        snapshot will)."""
        self.changes, self.unset, self.unsent_extras = NO_CHANGES, NO_UNSET, ()


class Hub:
    """Servers, agents, viewers and counters."""

    def __init__(self, config: Config, broadcast: Broadcast, wall: Callable[[], float],
                 monotonic: Callable[[], float], loop: asyncio.AbstractEventLoop | None = None,
                 reported: Reported = lambda sid, record, now, wall: None,
                 viewer_memory: int | None = None,
                 backlog: Callable[[Any], int] = lambda ws: 0,
                 hang_up: Callable[[Any], None] = lambda ws: None) -> None:
        self.config = config
        # Writing to viewers is given too: send one message to many, measure what one has
        # not taken yet, and hang up on one (transport.py).
        self.broadcast, self.backlog, self.hang_up = broadcast, backlog, hang_up
        # The clocks, given: the hub reads none itself (updates carry wall time; log lines
        # are limited by the monotonic one).
        self.wall, self.monotonic = wall, monotonic
        self.reported = reported  # told of each accepted report (history, traffic)
        self.loop = loop  # None in unit tests: updates then wait in `dirty`
        self.servers = {sid: ServerState(cfg) for sid, cfg in config.servers.items()}
        self.viewers: dict[ServerConnection, bool] = {}  # -> may see hidden servers
        self.joining: dict[ServerConnection, bool] = {}  # waiting for the next update
        self.dirty: set[str] = set()
        self.later: dict[str, None] = {}  # changed too, for one of the next updates (in order)
        self.flush_handle: asyncio.TimerHandle | None = None
        self.snapshot_bytes = 0
        self.snapshots: dict[bool, tuple[float, str]] = {}  # per audience: (built, message)
        self.listings: dict[bool, bytes] = {}  # per audience: /api/servers
        self.viewer_memory = viewer_memory  # --viewer-memory, or None: by the snapshot
        self.viewers_cut = 0
        self.quiet = LogLimiter()  # a crowd of viewers cut is one line a minute
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        # The earliest moment a server may go offline or a connection fall silent, as the
        # last tick that looked at every server found it; 0: look at every server.
        self.next_deadline = 0.0

    # --- agents ---

    def attach_agent(self, sid: str, ws: ServerConnection, now: float) -> Closing | None:
        """Make `ws` the live connection of `sid`; the older one, if any, is to be closed."""
        state = self.servers[sid]
        older, state.connection = state.connection, ws
        state.last_frame_mono = now
        self.next_deadline = 0.0  # a new connection's silence is to be watched
        if older is None:
            return None
        return Closing(older, POLICY_VIOLATION, "replaced by a newer connection for this id")

    def detach_agent(self, sid: str, ws: ServerConnection) -> bool:
        """Forget `ws`; False when it had been replaced or dropped by a reload already."""
        state = self.servers.get(sid)
        if state is None or state.connection is not ws:
            return False
        state.connection = None
        self._set_online(state, False)
        return True

    def is_current(self, sid: str, ws: ServerConnection) -> bool:
        """Whether `ws` still speaks for `sid` (not replaced, removed or re-keyed)."""
        state = self.servers.get(sid)
        return state is not None and state.connection is ws

    def heard_from(self, sid: str, now: float) -> None:
        """Any frame counts against the silent-connection rule, valid or not."""
        self.servers[sid].last_frame_mono = now

    def accept_report(self, sid: str, record: dict[str, Any], now: float, wall: float) -> None:
        state = self.servers[sid]
        before = self.view_before(state)
        interval = state.report_interval
        state.take_record(record, int(wall))
        state.last_report_mono = now
        if not state.online or state.report_interval < interval:
            self.next_deadline = 0.0  # its offline deadline is new, or may come sooner
            state.online = True
        self.accepted += 1
        self.mark_dirty(sid, before)
        self.reported(sid, record, now, wall)

    def last_record(self, sid: str) -> tuple[int, str] | None:
        """(Unix time, view JSON) of the server's last accepted report, for history."""
        state = self.servers.get(sid)
        return (state.last_report, state.view_json()) if state and state.record else None

    def restore(self, latest: dict[str, tuple[float, dict[str, Any]]]) -> None:
        """After a restart: each server's last record, shown offline with "last seen"."""
        for sid, (last_report, record) in latest.items():
            state = self.servers.get(sid)
            if state is not None and state.record is None:
                state.take_record(record, int(last_report))
                state.changed(None)
        self.forget_built()

    def take_history(self, fields: dict[str, dict[str, str]]) -> None:
        """Each server's availability from history. A step can change every server's at
        once (the first one, each new hour): the changes go out over the next updates,
        HISTORY_SERVERS_PER_UPDATE servers each, or with a server's own next report. One
        update of 10,000 servers was 2 MB queued for each viewer at once: 40 MB with 20."""
        for sid, values in fields.items():
            for field, value in values.items():
                self.set_extra(sid, field, value, soon=False)

    def set_extra(self, sid: str, field: str, value: str, soon: bool = True) -> None:
        """Set (or with "" remove) a field another module adds to a server's view, its
        value encoded already; in the next update (`soon`) or one of the next few."""
        state = self.servers.get(sid)
        if state is not None and state.set_extra(field, value):
            self.mark_dirty(sid, soon=soon)

    def reject_report(self, error: ReportError) -> None:
        self.rejected[error.reason] += 1

    def _set_online(self, state: ServerState, online: bool) -> None:
        if state.online != online:
            before = self.view_before(state)
            state.online = online
            self.mark_dirty(state.config.id, before)

    # --- liveness ---

    def tick(self, now: float) -> tuple[list[str], list[Closing]]:
        """Offline transitions and silent connections: (ids gone offline, closes to make).

        Every server is looked at only once the earliest deadline the last such look found
        has come: reports and frames only move deadlines later, and what can bring one
        sooner (a server coming online, a shorter reportInterval, a new connection) resets
        it. At 10,000 servers reporting every 5 s that is a look every 10 s, not every
        second (a walk of 10,000 servers is 1-3 ms)."""
        if now < self.next_deadline:
            return [], []
        gone, closes = [], []
        earliest = math.inf
        limits: dict[float, tuple[float, float]] = {}  # a fleet has a few intervals
        for sid, state in self.servers.items():
            interval = state.report_interval
            offline, silent = limits.get(interval) or limits.setdefault(
                interval, (offline_after(interval), silent_close_after(interval)))
            if state.online:
                if now - state.last_report_mono > offline:
                    self._set_online(state, False)
                    gone.append(sid)
                elif state.last_report_mono + offline < earliest:
                    earliest = state.last_report_mono + offline
            if state.connection is not None:
                if now - state.last_frame_mono > silent:
                    state.last_frame_mono = now  # close once
                    closes.append(Closing(state.connection, POLICY_VIOLATION,
                                          f"no report for {silent:.0f} s"))
                if state.last_frame_mono + silent < earliest:
                    earliest = state.last_frame_mono + silent
        self.next_deadline = earliest
        return gone, closes

    def apply_config(self, config: Config) -> tuple[list[Closing], int, int]:
        """Take a reloaded servers.json: (closes to make, servers added, servers removed)."""
        old = self.servers
        added = len(config.servers.keys() - old.keys())
        closes = []
        self.servers = {}
        for sid, cfg in config.servers.items():
            state = old.pop(sid, None) or ServerState(cfg)
            if state.connection is not None and cfg.secret != state.config.secret:
                closes.append(self._drop(state, "secret changed in servers.json"))
            state.config = cfg
            self.servers[sid] = state
        closes += [self._drop(state, "server removed from servers.json")
                   for state in old.values() if state.connection is not None]
        self.config = config
        self.next_deadline = 0.0
        self.resend_snapshots()
        return closes, added, len(old)

    def _drop(self, state: ServerState, reason: str) -> Closing:
        ws, state.connection = state.connection, None
        self._set_online(state, False)
        return Closing(ws, POLICY_VIOLATION, reason)

    # --- viewers ---
    # Two audiences: viewers who may see hidden servers (signed in) and those who may not.
    # Each message is built once per audience, never once per viewer.

    def visible(self, sees_hidden: bool) -> list[ServerState]:
        return [s for s in self.servers.values() if sees_hidden or not s.config.hidden]

    def snapshot(self, wall: float, sees_hidden: bool = True) -> str:
        """The snapshot for one audience, shared by every viewer joining within a second
        while nothing changed: viewers reconnecting in a loop cost no rebuilds. (Its
        `time` sets the page's clock, so it is never older than that.)"""
        built, message = self.snapshots.get(sees_hidden, (-1.0, ""))
        if not 0 <= wall - built < SNAPSHOT_SHARED_SECONDS:
            message = browser_message("snapshot", wall,
                                      [s.view_json() for s in self.visible(sees_hidden)])
            self.snapshots[sees_hidden] = (wall, message)
            self.snapshot_bytes = max(self.snapshot_bytes, len(message))
        return message

    def add_viewer(self, ws: ServerConnection, wall: float,
                   sees_hidden: bool = True) -> list[ServerConnection]:
        """Queue the snapshot, then updates; broadcast() keeps the two in order. While an
        update is pending the snapshot waits for it (at most 0.25 s), so that every viewer
        has the same view when the update goes out. Returns the viewers cut to stay
        within the memory budget (this one, maybe)."""
        if self.dirty and self.flush_handle is not None:
            self.joining[ws] = sees_hidden
            return []
        self.broadcast([ws], self.snapshot(wall, sees_hidden))
        self.viewers[ws] = sees_hidden
        return self.cut_backlogs()

    def remove_viewer(self, ws: ServerConnection) -> None:
        self.viewers.pop(ws, None)
        self.joining.pop(ws, None)

    def view_before(self, state: ServerState) -> Before | None:
        """The server's view before it changes, when anyone is to hear of the change."""
        return state.before() if self.viewers else None

    def mark_dirty(self, sid: str, before: Before | None = None,
                   soon: bool = True) -> None:
        """The server changed: an update is due, the next one (`soon`) or one of the next
        few (`later`). `before` (view_before()) when more than its extras did."""
        self.servers[sid].changed(before)
        self.forget_built()
        if soon:
            self.dirty.add(sid)
        else:
            self.later[sid] = None
        self.flush_soon()

    def flush_soon(self) -> None:
        if self.flush_handle is None and self.loop is not None:
            self.flush_handle = self.loop.call_later(COALESCE_SECONDS, self.flush)

    def flush(self) -> None:
        """Send one update holding what changed since the last one, server by server;
        then the snapshots of the viewers that joined meanwhile."""
        self.flush_handle = None
        for sid in list(itertools.islice(self.later, HISTORY_SERVERS_PER_UPDATE)):
            del self.later[sid]
            self.dirty.add(sid)
        entries = []  # (hidden, entry)
        watched = bool(self.viewers)  # often nobody is: then no update is worked out
        for sid in self.dirty:
            state = self.servers.get(sid)
            if state is None:
                continue
            if not watched:
                state.catch_up()
            elif entry := state.commit():
                entries.append((state.config.hidden, entry))
        self.dirty.clear()
        wall = self.wall()
        if entries:

            def update(sees_hidden: bool) -> str | None:
                shown = [entry for hidden, entry in entries if sees_hidden or not hidden]
                return browser_message("update", wall, shown) if shown else None
            self.push(update)
        self.welcome(wall)
        if self.later:
            self.flush_soon()

    def welcome(self, wall: float) -> None:
        """The snapshots of the viewers that waited for an update."""
        joining, self.joining = self.joining, {}
        for ws, sees_hidden in joining.items():
            self.broadcast([ws], self.snapshot(wall, sees_hidden))
            self.viewers[ws] = sees_hidden
            self.cut_backlogs()  # one at a time: a crowd of joiners never all queue at once

    def resend_snapshots(self) -> None:
        """After a reload: everyone gets a fresh snapshot of what they may see."""
        for state in self.servers.values():
            state.changed(None)
            state.catch_up()
        self.dirty.clear()
        self.later.clear()
        wall = self.wall()
        self.snapshot_bytes = 0
        self.forget_built()
        self.push(lambda sees_hidden: self.snapshot(wall, sees_hidden))
        self.welcome(wall)

    def push(self, message_for: Callable[[bool], str | None]) -> list[ServerConnection]:
        """Send to every viewer that keeps up; cut (and return) those that do not."""
        cut = self.cut_backlogs()
        audiences: dict[bool, list[ServerConnection]] = {True: [], False: []}
        for ws, sees_hidden in self.viewers.items():
            audiences[sees_hidden].append(ws)
        for sees_hidden, members in audiences.items():
            message = message_for(sees_hidden) if members else None
            if message is not None:  # None: nothing this audience may see changed
                self.broadcast(members, message)
        return cut + self.cut_backlogs()  # and after: it is the writing that fills them

    def cut_backlogs(self) -> list[ServerConnection]:
        """Cut viewers whose unsent bytes pass their own cap (1 MiB beyond a snapshot),
        then the largest backlogs until all viewers' together fit the memory budget."""
        backlogs = {ws: self.backlog(ws) for ws in self.viewers}
        budget = viewer_memory_budget(self.snapshot_bytes, self.viewer_memory)
        cut = to_cut(backlogs, VIEWER_BACKLOG_BYTES + self.snapshot_bytes, budget)
        for ws in cut:
            held = self.quiet.allow(("viewer cut",), self.monotonic())
            if held is not None:
                log.warning("viewer disconnected: not reading (%d bytes queued)%s",
                            backlogs[ws], held_back(held))
            self.viewers.pop(ws, None)
            self.hang_up(ws)  # a close handshake would queue behind the backlog
        self.viewers_cut += len(cut)
        return cut

    # --- read-outs ---

    def viewer_backlog(self) -> int:
        """Bytes queued for all viewers, not sent yet."""
        return sum(self.backlog(ws) for ws in self.viewers)

    def agents_connected(self, sees_hidden: bool = True) -> int:
        """Agents connected, of the servers this audience may see."""
        return sum(s.connection is not None for s in self.visible(sees_hidden))

    def servers_json(self, sees_hidden: bool = True) -> bytes:
        """/api/servers for one audience, built once while nothing changes (a crowd of
        requests for it costs no more building than one)."""
        listing = self.listings.get(sees_hidden)
        if listing is None:
            listing = self.listings[sees_hidden] = (
                "[" + ",".join(s.view_json() for s in self.visible(sees_hidden)) + "]").encode()
        return listing

    def forget_built(self) -> None:
        """Something changed: the snapshots and listings built until now are out of date."""
        self.snapshots.clear()
        self.listings.clear()
