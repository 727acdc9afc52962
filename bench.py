#!/usr/bin/env python3
"""Benchmarks: the agent's footprint and the dashboard's capacity (placeholder; see issue)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from websockets.asyncio.client import connect

import agent

FAKE_FACTS = agent.HostFacts("linux", "debian", "debian", "12", "6.1.0-18-amd64", "x86_64",
                             "kvm", ("Intel Xeon E5-2680 v4 @ 2.40GHz x 2 Virtual Core",))


def fake_report(server_id: str, rng: random.Random, stamp: int = 0) -> dict[str, Any]:
    """A realistic report, built by the agent's own message function from made-up samples."""
    gib = 2**30
    partitions = (agent.Partition("/dev/vda1", "/", "ext4", 40 * gib, 12 * gib, 26 * gib),
                  agent.Partition("/dev/vdb", "/data", "ext4", 200 * gib, 90 * gib, 100 * gib))
    busy = rng.uniform(0, 100)
    common: dict[str, Any] = dict(
        wall=time.time(), memory=(2 * gib, int(rng.uniform(0.2, 0.9) * 2 * gib), 50.0),
        swap=(gib, 0, gib, 0.0), partitions=partitions, load=(0.5, 0.4, 0.3),
        boot_time=time.time() - 86400, tcp=40, udp=4, processes=120)
    before = agent.Sample(monotonic=0.0, cpu=(0.0, 0.0), disk_io=(0, 0),
                          nic_bytes={"eth0": (10**9, 10**9)}, **common)
    rx, tx = rng.randrange(1, 10**6), rng.randrange(1, 10**6)
    after = agent.Sample(monotonic=1.0, cpu=(busy, 100.0), disk_io=(4096, 8192),
                         nic_bytes={"eth0": (10**9 + rx, 10**9 + tx + stamp)}, **common)
    return agent.build_message(server_id, FAKE_FACTS, before, after, 1.0)


async def fake_agents(url: str, ids: list[str], secret: str, duration: float,
                      interval: float = 1.0) -> int:
    """One connection per id, each reporting every `interval` s for `duration` s."""
    deadline = time.monotonic() + duration
    sent = 0

    async def one(server_id: str, offset: float) -> None:
        nonlocal sent
        rng = random.Random(server_id)
        headers = {"X-SERVER-ID": server_id, "X-AUTH-SECRET": secret}
        async with connect(url, additional_headers=headers, open_timeout=30) as ws:
            await asyncio.sleep(offset)  # stagger like a real fleet
            while time.monotonic() < deadline:
                await ws.send(json.dumps(fake_report(server_id, rng)))
                sent += 1
                await asyncio.sleep(interval)

    await asyncio.gather(*(one(sid, i * interval / len(ids)) for i, sid in enumerate(ids)))
    return sent
