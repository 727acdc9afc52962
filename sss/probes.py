"""Latency probes, the dashboard's side: what each agent is told to measure, and what its
reports say in /metrics (pure). The agent measures (agent.py, "probes"); PROTOCOL.md,
"Probes", has the frame and the report field.

    >>> from sss.config import ProbeTarget, Probes, ServerConfig
    >>> plan = Probes(30.0, (ProbeTarget("Cloudflare", "1.1.1.1"),))
    >>> probes_frame(plan, ServerConfig("web-1", "Web 1", "Default", "s" * 20, ""))
    '{"type":"probes","interval":30.0,"targets":[{"name":"Cloudflare","host":"1.1.1.1"}]}'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .config import Probes, ServerConfig
from .metrics import label


def probes_frame(probes: Probes, server: ServerConfig) -> str:
    """The frame telling one agent what to probe (an empty list: nothing, stop)."""
    targets = [{"name": t.name, "host": t.host, **({"port": t.port} if t.port else {})}
               for t in probes.for_server(server)]
    return json.dumps({"type": "probes", "interval": probes.interval, "targets": targets},
                      separators=(",", ":"))


def probe_metrics(servers: Iterable[tuple[ServerConfig, dict[str, Any] | None]]) -> list[str]:
    """sss_probe_rtt_ms and sss_probe_loss_ratio per server and target, from the reports."""
    rtt = ["# HELP sss_probe_rtt_ms Median round trip of the last probe round, per target.",
           "# TYPE sss_probe_rtt_ms gauge"]
    loss = ["# HELP sss_probe_loss_ratio Share of the last round's probes lost, per target.",
            "# TYPE sss_probe_loss_ratio gauge"]
    for server, record in servers:
        results = ((record or {}).get("extraInfo") or {}).get("probes") or []
        for result in results:
            who = (f'id="{label(server.id)}",name="{label(server.name)}",'
                   f'target="{label(result["name"])}"')
            if "rtt" in result:
                rtt.append(f"sss_probe_rtt_ms{{{who}}} {result['rtt']}")
            if "loss" in result:
                loss.append(f"sss_probe_loss_ratio{{{who}}} {result['loss']}")
    return rtt + loss
