"""Alerts: rules evaluated against the live state (pure), and senders beside the hub.

    $ python3 dashboard.py --test-notify phone
    ok: sent a test message through notifier 'phone' (telegram)

Evaluation takes the servers' state and the time in and gives events out; it keeps only
which rule fires for which server and since when (`Firing`), which the dashboard saves in
the data directory, so a restart neither repeats a "firing" nor forgets its "resolved".
Delivery runs on one thread per notifier, each with a bounded queue: a receiver that
hangs, fails or refuses delays only its own messages, never the hub. Nothing here imports
websockets.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from .config import ALERT_METRICS, AlertRule, Config, NotifierConfig, ServerConfig
from .datafiles import JsonFile, entries, finite
from .history import METRICS, metric_values

log = logging.getLogger("sss.dashboard")

PLAN_METRICS = ("traffic", "expiry")
NEVER_SEEN_GRACE = 60.0  # after a start, servers never seen get this long to connect
QUEUE_SIZE = 100  # messages waiting per notifier; past it the oldest is dropped
REQUEST_TIMEOUT = 10.0
ATTEMPTS = 3
RETRY_DELAYS = (1.0, 4.0)  # before the second and the third attempt


# --- the state that rules look at -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the rules see of one server at one moment."""

    server: ServerConfig
    online: bool
    seen: bool  # reported at least once (in this run or before a restart)
    interval: float  # its report interval, for the startup grace
    values: dict[str, float]  # metric -> current value (empty while offline)
    plan: dict[str, float] = dataclasses.field(default_factory=dict)  # traffic %, expiry days


def observed_values(record: dict[str, Any] | None) -> dict[str, float]:
    """The alert metrics of a validated record: history's extraction, plus load5."""
    if not record:
        return {}
    values = dict(zip((name for name, _ in METRICS), metric_values(record)))
    values["load5"] = record.get("hostInfo", {}).get("avgStat", {}).get("load5")
    observed = {metric: value for metric, value in values.items()
                if value is not None and metric in ALERT_METRICS}
    return {**observed, **probe_values(record.get("extraInfo", {}).get("probes", []))}


def probe_values(probes: list[dict[str, Any]]) -> dict[str, float]:
    """latency (ms) and loss (%) of each probe target ("latency:NAME"), and the worst of
    all targets ("latency", "loss"). A target with no reply has loss, not latency. An HTTP
    check also has its status ("http:NAME"; 0: no answer) and whether it failed
    ("httpFailed:NAME", 0 or 1), an https one its certificate's days left."""
    values: dict[str, float] = {}
    for probe in probes:
        name = probe["name"]
        values[f"loss:{name}"] = round(probe["loss"] * 100, 1)
        if "rtt" in probe:
            values[f"latency:{name}"] = probe["rtt"]
        if "status" in probe:
            values[f"http:{name}"], values[f"httpFailed:{name}"] = probe["status"], probe["loss"]
        if "certDays" in probe:
            values[f"certificate:{name}"] = probe["certDays"]
    for metric, worst in (("latency", max), ("loss", max), ("certificate", min)):
        mine = [value for key, value in values.items() if key.startswith(metric + ":")]
        if mine:
            values[metric] = worst(mine)
    checks = [probe for probe in probes if "status" in probe]
    if checks:  # the first failing check, else the first
        check = max(checks, key=lambda probe: probe["loss"])
        values["http"], values["httpFailed"] = check["status"], check["loss"]
    return values


# --- evaluation (pure) ------------------------------------------------------------------


@dataclasses.dataclass
class Firing:
    """One rule firing for one server: kept across restarts. Durations are measured on
    the monotonic clock (`held`, `sent`); the Unix times say when, in messages and in
    alerts.json."""

    since: float  # Unix time the condition started to hold
    value: float | None
    last_sent: float  # Unix time of the last "firing" message
    held: float = 0.0  # monotonic time the condition started to hold
    sent: float = 0.0  # monotonic time of the last "firing" message (for repeat)


@dataclasses.dataclass(frozen=True)
class Event:
    """A message to send: a rule started or stopped firing for a server (or a reminder)."""

    rule: AlertRule
    server: ServerConfig
    state: str  # firing | resolved
    value: float | None
    since: float  # Unix time the condition started to hold
    lasted: float  # seconds it held, on the monotonic clock

    @property
    def threshold(self) -> float | None:
        return self.rule.above if self.rule.above is not None else self.rule.below

    def text(self) -> str:
        return message_text(self)

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON (PROTOCOL.md, "Alerts")."""
        return {"alert": self.rule.name, "state": self.state,
                "server": {"id": self.server.id, "name": self.server.name,
                           "group": self.server.group},
                "metric": self.rule.metric, "value": self.value, "threshold": self.threshold,
                "since": int(self.since), "text": self.text()}


Key = tuple[str, str]  # (rule name, server id)


class Evaluator:
    """Which rule fires for which server; `evaluate` turns observations into events.
    `now` is monotonic (durations), `wall` Unix time (what messages say)."""

    def __init__(self, started: float, firing: dict[Key, Firing] | None = None) -> None:
        self.started = started  # monotonic time the dashboard started
        self.firing: dict[Key, Firing] = firing or {}
        # Condition holds since (monotonic, Unix time), not yet for `for`.
        self.pending: dict[Key, tuple[float, float]] = {}

    def evaluate(self, rules: tuple[AlertRule, ...], servers: list[Observed],
                 now: float, wall: float) -> list[Event]:
        events: list[Event] = []
        live_keys = set()
        for rule in rules:
            for seen in servers:
                if not rule.applies_to(seen.server):
                    continue
                key = (rule.name, seen.server.id)
                live_keys.add(key)
                holds, value = self.condition(rule, seen)
                if holds is None:  # offline: stale values neither fire nor resolve
                    self.pending.pop(key, None)
                    continue
                events += self.step(rule, seen, key, holds, value, now, wall)
        for key in [k for k in self.firing if k not in live_keys]:
            del self.firing[key]  # the rule or the server is gone from servers.json
        for key in [k for k in self.pending if k not in live_keys]:
            del self.pending[key]
        return events

    @staticmethod
    def condition(rule: AlertRule, seen: Observed) -> tuple[bool | None, float | None]:
        """(holds, value); holds is None when the rule cannot judge now."""
        if rule.metric == "offline":
            return not seen.online, None
        if rule.metric == "http":  # no threshold: the check failed, or not
            failed = seen.values.get(rule.value_key.replace("http", "httpFailed", 1))
            if not seen.online or failed is None:
                return None, None
            return failed == 1, seen.values[rule.value_key]
        if rule.metric in PLAN_METRICS:  # kept by the dashboard: judged online or not
            if rule.metric not in seen.plan:
                return None, None
            value = seen.plan[rule.metric]
        elif not seen.online or rule.value_key not in seen.values:
            return None, None
        else:
            value = seen.values[rule.value_key]
        holds = (rule.above is not None and value > rule.above) or \
                (rule.below is not None and value < rule.below)
        return holds, value

    def step(self, rule: AlertRule, seen: Observed, key: Key, holds: bool,
             value: float | None, now: float, wall: float) -> list[Event]:
        firing = self.firing.get(key)
        if firing is not None:
            if not holds:
                del self.firing[key]
                return [Event(rule, seen.server, "resolved", value, firing.since,
                              now - firing.held)]
            firing.value = value if value is not None else firing.value
            if rule.repeat and now - firing.sent >= rule.repeat:
                firing.sent, firing.last_sent = now, wall
                return [Event(rule, seen.server, "firing", firing.value, firing.since,
                              now - firing.held)]
            return []
        if not holds:
            self.pending.pop(key, None)
            return []
        held, since = self.pending.setdefault(key, (now, wall))
        if now - self.not_before(rule, seen, held) < rule.for_seconds:
            return []
        del self.pending[key]
        self.firing[key] = Firing(since, value, wall, held, now)
        return [Event(rule, seen.server, "firing", value, since, now - held)]

    def not_before(self, rule: AlertRule, seen: Observed, since: float) -> float:
        """No page for a restart: offline counts only from a grace after the start."""
        if rule.metric != "offline":
            return since
        grace = 2 * seen.interval if seen.seen else NEVER_SEEN_GRACE
        return max(since, self.started + grace)

    def firing_list(self) -> list[tuple[str, str, Firing]]:
        return [(rule, sid, firing) for (rule, sid), firing in self.firing.items()]


# --- messages (pure) ----------------------------------------------------------------

METRIC_NAMES = {"cpu": "CPU", "memory": "memory", "swap": "swap", "disk": "disk",
                "load1": "load (1 min)", "load5": "load (5 min)", "netIn": "download",
                "netOut": "upload", "tcp": "TCP connections", "udp": "UDP sockets",
                "processes": "processes", "traffic": "traffic", "expiry": "plan",
                "latency": "latency", "loss": "packet loss", "temperature": "temperature",
                "http": "HTTP check", "certificate": "certificate"}
PERCENT_METRICS = {"cpu", "memory", "swap", "disk", "traffic", "loss"}
BYTE_RATE_METRICS = {"netIn", "netOut"}


def short_duration(seconds: float) -> str:
    """45s, 5m, 1h5m, 2d3h: what fits in a phone's notification."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(seconds // 3600, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def metric_value(metric: str, value: float | None) -> str:
    if value is None:
        return "?"
    if metric in PERCENT_METRICS:
        return f"{value:.0f} %"
    if metric in BYTE_RATE_METRICS:
        for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
            if value < 1024 or unit == "GiB/s":
                return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
            value /= 1024
    if metric == "latency":
        return f"{value:.0f} ms"
    if metric == "temperature":
        return f"{value:.0f} °C"
    if metric == "certificate":
        return f"{value:.0f} days left" if value >= 0 else f"expired {-value:.0f} days ago"
    if metric == "http":
        return f"status {value:.0f}" if value else "no answer"
    return f"{value:g}"


def threshold_text(metric: str, value: float | None) -> str:
    """A rule's threshold as its message says it: "90", "150", "14 days", "80 °C"."""
    if metric == "certificate" and value is not None:
        return f"{value:g} days"
    return metric_value(metric, value).replace(" %", "").replace(" ms", "")


def message_text(event: Event) -> str:
    """'🔴 Web 1 (Frankfurt) offline for 1m', '🔥 DB 2 CPU 97 % for 5m (above 90)'."""
    server, rule = event.server, event.rule
    who = server.name if server.group == "Default" else f"{server.name} ({server.group})"
    lasted = short_duration(event.lasted)
    if rule.metric == "offline":
        if event.state == "firing":
            return f"🔴 {who} offline for {lasted}"
        return f"✅ {who} back after {lasted}"
    preposition = " of " if rule.metric in ("http", "certificate") else " to "
    name = METRIC_NAMES[rule.metric] + (preposition + rule.target if rule.target else "")
    value = metric_value(rule.metric, event.value)
    if rule.metric == "http":
        if event.state == "firing":
            return f"🔥 {who} {name} fails: {value}"
        return f"✅ {who} {name} passes again after {lasted}"
    if rule.metric == "expiry":
        days = int(event.value or 0)
        if event.state == "firing":
            return f"⏳ {who} plan expires in {days} d" if days >= 0 else \
                f"⏳ {who} plan expired {-days} d ago"
        return f"✅ {who} plan renewed ({days} d left)"
    if event.state == "firing":
        side = "above" if rule.above is not None else "below"
        limit = threshold_text(rule.metric, event.threshold)
        held = f" for {lasted}" if event.lasted >= 1 else ""  # a rule without "for": at once
        return f"🔥 {who} {name} {value}{held} ({side} {limit})"
    return f"✅ {who} {name} back to {value} after {lasted}"


# --- keeping the firing state in the data directory ------------------------------------


def firing_rows(firing: dict[Key, Firing]) -> list[dict[str, Any]]:
    """The firing state as saved in alerts.json (Unix times: monotonic ones mean nothing
    to the next process)."""
    return [{"alert": rule, "id": sid, "since": state.since, "value": state.value,
             "last_sent": state.last_sent} for (rule, sid), state in firing.items()]


def firing_from(rows: Any, now: float, wall: float) -> tuple[dict[Key, Firing], list[str]]:
    """The saved firing state, each entry checked: (firing, one problem for each dropped).
    Durations go on from the Unix times saved (the one place the wall clock measures one:
    from before a restart)."""
    def firing(index: Any, row: Any) -> tuple[Key, Firing]:
        if not isinstance(row, dict):
            raise ValueError("not an object")
        rule, sid, value = row.get("alert"), row.get("id"), row.get("value")
        since, sent = row.get("since"), row.get("last_sent")
        if not isinstance(rule, str) or not isinstance(sid, str):
            raise ValueError("alert and id must be names")
        if not (finite(since) and finite(sent)):
            raise ValueError(f"since and last_sent must be times, got {since!r:.30}, "
                             f"{sent!r:.30}")
        if value is not None and not finite(value):
            raise ValueError(f"value must be a number or null, got {value!r:.30}")
        return (rule, sid), Firing(float(since), value, float(sent),
                                   now - max(wall - since, 0.0), now - max(wall - sent, 0.0))

    kept, problems = entries(rows, list, firing, "alerts")
    return dict(kept), problems


# --- senders -----------------------------------------------------------------------


class DeliveryError(Exception):
    """A failed attempt; `retry` is False for answers that will not change (4xx)."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


def post_json(url: str, body: dict[str, Any], headers: dict[str, str],
              timeout: float = REQUEST_TIMEOUT) -> None:
    """POST JSON; raise DeliveryError saying what failed, never the URL."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "sss-dashboard", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(4096)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code}", retry=exc.code >= 500) from None
    except urllib.error.URLError as exc:
        said = getattr(exc.reason, "strerror", None) or exc.reason
        raise DeliveryError(f"{type(exc.reason).__name__}: {said}", retry=True) from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a URL that cannot be used
        raise DeliveryError(f"{type(exc).__name__}: {exc}", retry=True) from None


def send(notifier: NotifierConfig, text: str, payload: dict[str, Any]) -> None:
    """One attempt through one notifier."""
    if notifier.type == "webhook":
        post_json(notifier.url, payload, dict(notifier.headers))
    elif notifier.type == "telegram":
        post_json(f"{notifier.api_base}/bot{notifier.token}/sendMessage",
                  {"chat_id": notifier.chat_id, "text": text,
                   "disable_web_page_preview": True}, {})
    else:
        try:
            import apprise
        except ImportError:
            raise DeliveryError("apprise is not installed: pip install apprise",
                                retry=False) from None
        sender = apprise.Apprise()
        if not sender.add(notifier.url):
            raise DeliveryError("apprise does not understand this URL", retry=False)
        if not sender.notify(body=text, title="SimpleServerStatus"):
            raise DeliveryError("apprise could not deliver it", retry=True)


def deliver(notifier: NotifierConfig, text: str, payload: dict[str, Any],
            wait: Callable[[float], bool] = lambda seconds: False) -> str:
    """Up to ATTEMPTS attempts with backoff; "" when sent, else why not. `wait` sleeps and
    says whether to give up (the dashboard is stopping)."""
    reason = ""
    for attempt in range(ATTEMPTS):
        if attempt and wait(RETRY_DELAYS[attempt - 1]):
            return reason
        try:
            send(notifier, text, payload)
            return ""
        except DeliveryError as exc:
            reason = str(exc)
            if not exc.retry:
                return reason
    return f"{reason} after {ATTEMPTS} attempts"


class Delivery:
    """One worker thread and bounded queue per notifier; counters for /metrics."""

    def __init__(self) -> None:
        self.notifiers: dict[str, NotifierConfig] = {}
        self.queues: dict[str, queue.Queue[tuple[str, dict[str, Any]]]] = {}
        self.counts: Counter[tuple[str, str]] = Counter()  # (notifier, result) -> count
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def configure(self, notifiers: dict[str, NotifierConfig]) -> None:
        """Take a (re)loaded config: a worker for each notifier, new settings for old ones."""
        with self.lock:
            self.notifiers = dict(notifiers)
        for name in notifiers:
            if name not in self.queues:
                self.queues[name] = queue.Queue(QUEUE_SIZE)
                threading.Thread(target=self.work, args=(name,), daemon=True,
                                 name=f"sss-notify-{name}").start()

    def submit(self, event: Event) -> None:
        """Queue the event for each of its rule's notifiers; never blocks."""
        text, payload = event.text(), event.payload()
        log.info("alert %s: %s", event.state, text)
        for name in event.rule.notify:
            box = self.queues.get(name)
            if box is None:
                continue
            while True:
                try:
                    box.put_nowait((text, payload))
                    break
                except queue.Full:
                    try:
                        box.get_nowait()  # the oldest is the least useful
                        self.count(name, "dropped")
                        log.warning("alert delivery: notifier %s is behind; dropped its oldest "
                                    "message", name)
                    except queue.Empty:
                        pass

    def count(self, name: str, result: str) -> None:
        with self.lock:
            self.counts[(name, result)] += 1

    def work(self, name: str) -> None:
        box = self.queues[name]
        while not self.stopping.is_set():
            try:
                text, payload = box.get(timeout=1)
            except queue.Empty:
                continue
            with self.lock:
                notifier = self.notifiers.get(name)
            if notifier is None:
                continue  # removed by a reload
            why = deliver(notifier, text, payload, self.stopping.wait)
            if why:
                self.count(name, "failed")
                log.warning("alert delivery failed: notifier %s (%s): %s", name,
                            notifier.type, why)
            else:
                self.count(name, "sent")

    def stop(self) -> None:
        self.stopping.set()

    def totals(self) -> dict[tuple[str, str], int]:
        """Messages by (notifier, result), for /metrics."""
        with self.lock:
            return dict(self.counts)


def missing_apprise(config: Config) -> str:
    """A notifier of type apprise needs the optional package: say so, with the command."""
    needing = [n.name for n in config.notifiers.values() if n.type == "apprise"]
    if needing and importlib.util.find_spec("apprise") is None:
        return (f"notifier {needing[0]!r} is of type apprise, which needs the Apprise package: "
                "pip install apprise (in the dashboard's environment)")
    return ""


def test_notify(notifier: NotifierConfig) -> str:
    """--test-notify: one message through one notifier; "" when sent, else why not."""
    text = "✅ SimpleServerStatus test message: this notifier works"
    payload = {"alert": "test", "state": "resolved", "server": None, "metric": None,
               "value": None, "threshold": None, "since": int(time.time()), "text": text}
    return deliver(notifier, text, payload, lambda seconds: time.sleep(seconds) or False)


# --- the whole, as the dashboard uses it ----------------------------------------------


class Alerting:
    """Evaluator, delivery and the saved firing state, for the dashboard's tick."""

    def __init__(self, state_path: Path, now: float, wall: float) -> None:
        self.file = JsonFile(state_path, "alerts", "alerts still go out")
        saved = self.file.load("starting with no alert firing",
                               lambda rows: firing_from(rows, now, wall))
        self.evaluator = Evaluator(now, saved or {})
        self.delivery = Delivery()

    def configure(self, notifiers: dict[str, NotifierConfig]) -> None:
        self.delivery.configure(notifiers)

    def tick(self, rules: tuple[AlertRule, ...], observed: list[Observed],
             now: float, wall: float) -> set[str]:
        """Evaluate, hand events to delivery, save what changed; the servers whose set of
        firing alerts changed (their views change)."""
        before = set(self.evaluator.firing)
        events = self.evaluator.evaluate(rules, observed, now, wall)
        for event in events:
            self.delivery.submit(event)
        after = set(self.evaluator.firing)
        if before != after or events:
            self.file.save(firing_rows(self.evaluator.firing))
        return {sid for _, sid in before ^ after}

    def view_value(self, sid: str) -> str:
        """A server view's `alerts` field, encoded: its firing alerts, or "" when none."""
        firing = [{"alert": rule, "since": int(state.since), "value": state.value}
                  for (rule, server), state in self.evaluator.firing.items() if server == sid]
        return json.dumps(firing, separators=(",", ":"), allow_nan=False) if firing else ""

    def firing_json(self, servers: dict[str, ServerConfig], rules: tuple[AlertRule, ...],
                    visible: Callable[[str], bool] = lambda sid: True) -> str:
        """/api/alerts: every firing alert, with its server and rule."""
        by_name = {rule.name: rule for rule in rules}
        listed = []
        for (name, sid), state in sorted(self.evaluator.firing.items()):
            server, rule = servers.get(sid), by_name.get(name)
            if server is None or rule is None or not visible(sid):
                continue
            listed.append({"alert": name, "server": {"id": sid, "name": server.name,
                                                     "group": server.group},
                           "metric": rule.metric, "value": state.value,
                           "threshold": rule.above if rule.above is not None else rule.below,
                           "since": int(state.since)})
        return json.dumps(listed, allow_nan=False)
