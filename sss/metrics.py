"""Prometheus text exposition (format 0.0.4) of the fleet and the dashboard (pure): every
line of /metrics is written here, from what web.metrics gathers for one audience.

PROTOCOL.md lists every metric; the tests parse the output with prometheus_client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .config import ServerConfig
from .hub import ServerState

# (name, help, type, path into the record)
SERVER_METRICS = (
    ("sss_cpu_percent", "CPU use in percent.", "gauge", ("cpuInfo", "percent")),
    ("sss_memory_used_bytes", "Memory used.", "gauge", ("virtualMemoryInfo", "used")),
    ("sss_memory_total_bytes", "Memory installed.", "gauge", ("virtualMemoryInfo", "total")),
    ("sss_swap_used_bytes", "Swap used.", "gauge", ("swapMemoryInfo", "used")),
    ("sss_swap_total_bytes", "Swap size.", "gauge", ("swapMemoryInfo", "total")),
    ("sss_disk_used_bytes", "Disk used over real filesystems.", "gauge", ("diskInfo", "used")),
    ("sss_disk_total_bytes", "Disk size over real filesystems.", "gauge", ("diskInfo", "total")),
    ("sss_load1", "Load average over 1 minute.", "gauge", ("hostInfo", "avgStat", "load1")),
    ("sss_load5", "Load average over 5 minutes.", "gauge", ("hostInfo", "avgStat", "load5")),
    ("sss_load15", "Load average over 15 minutes.", "gauge", ("hostInfo", "avgStat", "load15")),
    ("sss_network_receive_bytes_per_second", "Network receive speed.", "gauge",
     ("networkInfo", "netInSpeed")),
    ("sss_network_transmit_bytes_per_second", "Network transmit speed.", "gauge",
     ("networkInfo", "netOutSpeed")),
    ("sss_network_receive_bytes_total", "Bytes received since boot.", "counter",
     ("networkInfo", "netInTransfer")),
    ("sss_network_transmit_bytes_total", "Bytes sent since boot.", "counter",
     ("networkInfo", "netOutTransfer")),
    ("sss_uptime_seconds", "Seconds since boot.", "gauge", ("hostInfo", "uptime")),
)


def label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _dig(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return record


@dataclasses.dataclass(frozen=True)
class Exposition:
    """What /metrics shows one audience: gathered by web.metrics, rendered here."""

    servers: list[ServerState]  # those this audience may see
    agents: int
    viewers: int
    accepted: int
    rejected: Mapping[str, int]  # reports dropped, by reason
    refused: Mapping[str, int]  # connections refused before the upgrade, by reason
    viewers_cut: int
    viewer_backlog: int  # bytes queued for all viewers
    traffic: list[tuple[ServerConfig, dict[str, Any]]]  # (server, Traffic.view())
    firing: list[tuple[str, str]]  # (rule, server id) of the alerts firing now
    notifications: Mapping[tuple[str, str], int]  # (notifier, result) -> messages
    agent_version: str = ""  # of the agent.py this dashboard serves ("" without one)


def agent_lines(reported: list[ServerState], labels: Mapping[str, str],
                served: str) -> list[str]:
    """Which agent.py each server runs (its reports' extraInfo.agentVersion) and whether
    it is the one this dashboard serves."""
    versions = [(s, v) for s in reported
                if isinstance(v := (s.record or {}).get("extraInfo", {}).get("agentVersion"),
                              str)]
    lines = ["# HELP sss_agent_info The agent.py version a server reports (short SHA-256).",
             "# TYPE sss_agent_info gauge"]
    lines += [f'sss_agent_info{{{labels[s.config.id]},version="{label(v)}"}} 1'
              for s, v in versions]
    if served:
        lines += ["# HELP sss_agent_outdated 1 when a server's agent.py is not the one this "
                  "dashboard serves.", "# TYPE sss_agent_outdated gauge"]
        lines += [f"sss_agent_outdated{{{labels[s.config.id]}}} {int(v != served)}"
                  for s, v in versions]
    return lines


def render_metrics(shown: Exposition) -> str:
    """Prometheus text exposition (format 0.0.4) of the fleet and the dashboard."""
    states = shown.servers
    labels = {s.config.id: f'id="{label(s.config.id)}",name="{label(s.config.name)}",'
              f'group="{label(s.config.group)}"' for s in states}
    lines = ["# HELP sss_up 1 when the server reports, 0 when offline or never seen.",
             "# TYPE sss_up gauge"]
    lines += [f"sss_up{{{labels[s.config.id]}}} {int(s.online)}" for s in states]
    reported = [s for s in states if s.record]
    for name, help_text, kind, path in SERVER_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for s in reported:
            value = _dig(s.record or {}, path)
            if value is not None:
                lines.append(f"sss_{name[4:]}{{{labels[s.config.id]}}} {value}")
    lines += ["# HELP sss_last_report_timestamp_seconds Unix time of the last accepted report.",
              "# TYPE sss_last_report_timestamp_seconds gauge"]
    lines += [f"sss_last_report_timestamp_seconds{{{labels[s.config.id]}}} {s.last_report}"
              for s in reported]
    lines += agent_lines(reported, labels, shown.agent_version)
    lines += item_lines((s.config, s.record if s.online else None) for s in states)
    lines += traffic_lines(shown.traffic)
    lines += ["# HELP sss_alert_firing 1 for each alert firing for a server.",
              "# TYPE sss_alert_firing gauge"]
    lines += [f'sss_alert_firing{{alert="{label(rule)}",id="{label(sid)}"}} 1'
              for rule, sid in sorted(shown.firing)]
    lines += ["# HELP sss_alert_notifications_total Alert messages by notifier and result.",
              "# TYPE sss_alert_notifications_total counter"]
    lines += [f'sss_alert_notifications_total{{notifier="{label(name)}",result="{result}"}} {n}'
              for (name, result), n in sorted(shown.notifications.items())]
    lines += ["# HELP sss_agents_connected Agent connections open.",
              "# TYPE sss_agents_connected gauge", f"sss_agents_connected {shown.agents}",
              "# HELP sss_viewers_connected Browser connections open.",
              "# TYPE sss_viewers_connected gauge", f"sss_viewers_connected {shown.viewers}",
              "# HELP sss_reports_accepted_total Reports validated and applied.",
              "# TYPE sss_reports_accepted_total counter",
              f"sss_reports_accepted_total {shown.accepted}"]
    lines += counter_lines("sss_reports_rejected_total", "Reports dropped, by reason.",
                           shown.rejected)
    lines += counter_lines("sss_refused_total", "Connections refused before the upgrade, "
                           "by reason.", shown.refused)
    lines += ["# HELP sss_viewers_cut_total Viewers disconnected for not reading.",
              "# TYPE sss_viewers_cut_total counter", f"sss_viewers_cut_total {shown.viewers_cut}",
              "# HELP sss_viewer_backlog_bytes Bytes queued for all viewers, not sent yet.",
              "# TYPE sss_viewer_backlog_bytes gauge",
              f"sss_viewer_backlog_bytes {shown.viewer_backlog}"]
    return "\n".join(lines) + "\n"


# Gauges per server and item of a list in extraInfo: (list, item label, [(metric, key, help)]).
ITEM_METRICS = (
    ("probes", "target", (("sss_probe_rtt_ms", "rtt",
                           "Median round trip of the last probe round, per target."),
                          ("sss_probe_loss_ratio", "loss",
                           "Share of the last round's probes lost, per target."),
                          ("sss_http_status", "status",
                           "Status of the last HTTP check, per target (0: no answer)."),
                          ("sss_certificate_days_left", "certDays",
                           "Days until the certificate of an https target expires."))),
    ("temperatures", "sensor", (("sss_temperature_celsius", "celsius",
                                 "Temperature of each sensor of the box."),)),
)


def item_lines(servers: Iterable[tuple[ServerConfig, dict[str, Any] | None]]) -> list[str]:
    """ITEM_METRICS of online servers: sss_probe_rtt_ms{target}, sss_temperature_celsius
    {sensor} and the like, one series per server and item."""
    extras = [(server, (record or {}).get("extraInfo") or {}) for server, record in servers]
    lines: list[str] = []
    for field, item_label, gauges in ITEM_METRICS:  # one pass over the servers a list
        series: list[list[str]] = [[f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
                                   for name, _, help_text in gauges]
        for server, extra in extras:
            for item in extra.get(field) or ():
                who = (f'id="{label(server.id)}",name="{label(server.name)}",'
                       f'{item_label}="{label(item["name"])}"')
                for (name, key, _), out in zip(gauges, series):
                    if key in item:
                        out.append(f"{name}{{{who}}} {item[key]}")
        for out in series:
            lines += out
    return lines


def traffic_lines(traffic: list[tuple[ServerConfig, dict[str, Any]]]) -> list[str]:
    """sss_traffic_period_bytes{direction} and sss_traffic_limit_bytes, per server."""
    lines = ["# HELP sss_traffic_period_bytes Bytes counted in the current billing period.",
             "# TYPE sss_traffic_period_bytes gauge"]
    limits = ["# HELP sss_traffic_limit_bytes The period's traffic limit.",
              "# TYPE sss_traffic_limit_bytes gauge"]
    for server, view in traffic:
        who = f'id="{label(server.id)}",name="{label(server.name)}"'
        lines += [f'sss_traffic_period_bytes{{{who},direction="in"}} {view["in"]}',
                  f'sss_traffic_period_bytes{{{who},direction="out"}} {view["out"]}']
        if view["limit"]:
            limits.append(f"sss_traffic_limit_bytes{{{who}}} {view['limit']}")
    return lines + limits


def counter_lines(name: str, help_text: str, counts: Mapping[str, int]) -> list[str]:
    """A counter with one series per reason."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter"] + [
        f'{name}{{reason="{label(reason)}"}} {count}' for reason, count in sorted(counts.items())]
