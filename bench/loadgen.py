"""Load generators: wrk (saturation, closed loop) and an open-loop asyncio+aiohttp sender for fixed rates."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.stack import BENCH, cpu_seconds

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100)


@dataclass(frozen=True)
class Req:
    """One pre-signed webhook: the signing is done before the clock starts, never in the timed loop."""

    path: str
    header: str
    value: str
    body: bytes


def write_requests_file(path: Path, reqs: Sequence[Req]) -> Path:
    """The file wrk_cycle.lua reads: one "header<TAB>value<TAB>body" line per request."""
    with path.open("wb") as f:
        for r in reqs:
            if b"\n" in r.body or b"\t" in r.header.encode():
                raise ValueError("bodies must be one-line JSON")
            f.write(r.header.encode() + b"\t" + r.value.encode() + b"\t" + r.body + b"\n")
    return path


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(*, base_url: str, path: str, requests_file: Path, duration: float, connections: int,
            out: Path, threads: int = 1) -> dict[str, Any]:
    """Saturation: wrk keeps `connections` requests in flight for `duration` seconds (closed loop)."""
    env = {**os.environ, "BENCH_WRK_OUT": str(out)}
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            "--timeout", "10s", "-s", str(BENCH / "wrk_cycle.lua"), base_url, "--", str(requests_file), path]
    started = time.time()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}{proc.stdout[-2000:]}")
    raw = json.loads(out.read_text())
    seconds = raw["duration_us"] / 1e6
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    socket_errors = sum(v for k, v in raw["errors"].items() if k != "status")
    per_second = sorted((int(k), v) for k, v in raw["per_second"].items())
    # Drop the partial first and last seconds from the series (wrk's clock is not aligned to whole seconds).
    series = [[float(k - int(started)), float(v)] for k, v in per_second[1:-1]] or \
        [[float(k - int(started)), float(v)] for k, v in per_second]
    curve = [[float(p), float(v) / 1000.0] for p, v in raw["latency_us"]["percentiles"].items()]
    by_p = dict(raw["latency_us"]["percentiles"].items())
    return {
        "generator": "wrk",
        "mode": "saturation",
        "connections": connections,
        "requests": raw["requests"],
        "duration_s": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "ok": ok,
        "errors": raw["requests"] - ok + socket_errors,
        "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "socket_errors": raw["errors"],
        "latency_ms": {name: round(float(by_p[key]) / 1000.0, 2) for name, key in
                       (("p50", "50"), ("p95", "95"), ("p99", "99"), ("p99.9", "99.9"), ("max", "100"))},
        "curve": curve,
        "per_second": series,
        "wrapped": None,
    }


async def _open_loop(base_url: str, reqs: Sequence[Req], rate: float, connections: int,
                     timeout: float) -> tuple[list[tuple[float, float, int]], float, float]:
    records: list[tuple[float, float, int]] = []
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        # Open the pool before the clock starts, so the first second does not measure TCP handshakes.
        await asyncio.gather(*(_get(session, "/healthz") for _ in range(min(connections, 8))),
                             return_exceptions=True)

        async def one(req: Req, intended: float) -> None:
            headers = {"content-type": "application/json", req.header: req.value}
            try:
                async with session.post(req.path, data=req.body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            # Latency from the INTENDED send time: a sender that fell behind (or a full pool) is counted
            # as waiting, which corrects for coordinated omission (the server cannot slow the clock down).
            records.append((intended, loop.time(), status))

        start = loop.time() + 0.05
        tasks = []
        for i, req in enumerate(reqs):
            intended = start + i / rate
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(req, intended)))
        await asyncio.gather(*tasks)
    return records, start, loop.time()


async def _get(session: aiohttp.ClientSession, path: str) -> None:
    async with session.get(path) as response:
        await response.read()


def run_open_loop(*, base_url: str, reqs: Sequence[Req], rate: float, connections: int = 64,
                  timeout: float = 10.0) -> dict[str, Any]:
    """Fixed rate: request i is due at start + i/rate whatever happened to the ones before it."""
    cpu_before = cpu_seconds(os.getpid())
    wall_start = time.time()
    records, start, end = asyncio.run(_open_loop(base_url, reqs, rate, connections, timeout))
    wall_end = time.time()
    cpu = cpu_seconds(os.getpid()) - cpu_before
    latencies = np.array([(done - intended) * 1000.0 for intended, done, _ in records])
    statuses = Counter(status for _, _, status in records)
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    duration = end - start
    seconds = np.array([int(done - start) for _, done, _ in records])
    counts = np.bincount(seconds) if len(seconds) else np.array([])
    return {
        "generator": "asyncio+aiohttp open loop",
        "mode": "rate",
        "target_rps": rate,
        "connections": connections,
        "requests": len(records),
        "duration_s": round(duration, 3),
        "rps": round(len(records) / duration, 1) if duration else 0.0,
        "ok": ok,
        "errors": len(records) - ok,
        "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "latency_ms": summarize(latencies),
        # The first request due: after a fault, the one that finds out (a cold pool, a dead broker).
        "first_ms": round(min(records)[1] * 1000.0 - min(records)[0] * 1000.0, 2) if records else None,
        "curve": [[float(p), round(float(np.percentile(latencies, p)), 3)] for p in PERCENTILES]
        if len(latencies) else [],
        "per_second": [[float(i), float(c)] for i, c in enumerate(counts)][:-1] or
        [[float(i), float(c)] for i, c in enumerate(counts)],
        "generator_cpu_share": round(cpu / duration, 3) if duration else None,
        "started_at": wall_start,
        "ended_at": wall_end,
    }


def summarize(values_ms: np.ndarray) -> dict[str, float]:
    if not len(values_ms):
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "p99.9": 0.0, "max": 0.0}
    return {name: round(float(np.percentile(values_ms, p)), 2)
            for name, p in (("p50", 50), ("p95", 95), ("p99", 99), ("p99.9", 99.9), ("max", 100))}
