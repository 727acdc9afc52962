"""Prometheus text exposition (format 0.0.4) of the fleet and the dashboard (pure).

PROTOCOL.md lists every metric; the tests parse the output with prometheus_client.
"""

from __future__ import annotations

from typing import Any

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


def render_metrics(states: list[ServerState], agents: int, viewers: int,
                   accepted: int, rejected: dict[str, int], extra: list[str] | None = None) -> str:
    """Prometheus text exposition (format 0.0.4) of the fleet and the dashboard."""
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
    lines += ["# HELP sss_agents_connected Agent connections open.",
              "# TYPE sss_agents_connected gauge", f"sss_agents_connected {agents}",
              "# HELP sss_viewers_connected Browser connections open.",
              "# TYPE sss_viewers_connected gauge", f"sss_viewers_connected {viewers}",
              "# HELP sss_reports_accepted_total Reports validated and applied.",
              "# TYPE sss_reports_accepted_total counter",
              f"sss_reports_accepted_total {accepted}"]
    lines += counter_lines("sss_reports_rejected_total", "Reports dropped, by reason.", rejected)
    return "\n".join(lines + (extra or [])) + "\n"


def counter_lines(name: str, help_text: str, counts: dict[str, int]) -> list[str]:
    """A counter with one series per reason."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter"] + [
        f'{name}{{reason="{label(reason)}"}} {count}' for reason, count in sorted(counts.items())]
