"""Latency probes, the dashboard's side: what each agent is told to measure (pure); their
results show in /metrics (metrics.py). The agent measures (agent.py, "probes");
PROTOCOL.md, "Probes", has the frame and the report field.

    >>> from sss.config import ProbeTarget, Probes, ServerConfig
    >>> plan = Probes(30.0, (ProbeTarget("Cloudflare", "1.1.1.1"),))
    >>> probes_frame(plan, ServerConfig("web-1", "Web 1", "Default", "s" * 20, ""))
    '{"type":"probes","interval":30.0,"targets":[{"name":"Cloudflare","host":"1.1.1.1"}]}'
"""

from __future__ import annotations

import json

from .config import Probes, ServerConfig


def probes_frame(probes: Probes, server: ServerConfig) -> str:
    """The frame telling one agent what to probe (an empty list: nothing, stop)."""
    targets = [{"name": t.name, "url": t.url, "expect": t.expect} if t.url else
               {"name": t.name, "host": t.host, **({"port": t.port} if t.port else {})}
               for t in probes.for_server(server)]
    return json.dumps({"type": "probes", "interval": probes.interval, "targets": targets},
                      separators=(",", ":"))
