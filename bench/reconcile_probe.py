"""Runs check_pending_payments once in a fresh process and reports its rate and memory (scenario 5)."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import django


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, required=True, help="the check's time budget in seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    django.setup()
    from bench.stack import rss_kib
    from payment import metrics, services
    from payment.conf import app_settings

    pid = os.getpid()
    baseline = rss_kib(pid)[0]
    samples: list[list[float]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            samples.append([round(time.monotonic() - t0, 2), rss_kib(pid)[0] / 1024])
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    cpu_started = time.process_time()
    # The task's own body (payment.tasks.check_pending_payments), with the budget the bench chose.
    counts = services.pending_payments_check(time_budget_seconds=args.budget)
    elapsed = time.monotonic() - started
    # This process's CPU per payment (every thread): on a shared machine a steadier figure than the rate.
    cpu_s = time.process_time() - cpu_started
    stop.set()
    sampler.join()
    peak = rss_kib(pid)[1]
    quarter = [rss for t, rss in samples if t <= elapsed / 4] or [0.0]
    rest = [rss for t, rss in samples if t > elapsed / 4] or [0.0]
    args.out.write_text(json.dumps({
        "counts": counts,
        "elapsed_s": round(elapsed, 2),
        "verified_per_s": round(counts["verified"] / elapsed, 1) if elapsed else None,
        "cpu_ms_per_verified": round(cpu_s * 1000 / counts["verified"], 2) if counts["verified"] else None,
        "baseline_rss_mib": round(baseline / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        # Flat means batches work: the RSS after the first quarter of the run does not keep rising.
        "rss_first_quarter_max_mib": round(max(quarter), 1),
        "rss_rest_max_mib": round(max(rest), 1),
        "growth_after_first_quarter_pct": round((max(rest) - max(quarter)) / max(quarter) * 100, 2)
        if max(quarter) else None,
        # 429s met (re-sent after Retry-After, or given up) and calls the client limiter held past their bound.
        "gateway_429s": _errors_of_kind(metrics, "429", "429_retried"),
        "throttled": _errors_of_kind(metrics, "throttled"),
        "batch_size": app_settings.PAYSHIFT_RECONCILE_BATCH_SIZE,
        "concurrency": app_settings.PAYSHIFT_RECONCILE_CONCURRENCY,
        "client_rate_limit_per_s": app_settings.PAYSHIFT_GATEWAY_RATE_LIMIT,
        "rss_series_mib": samples,
    }))


def _errors_of_kind(metrics: Any, *kinds: str) -> int:
    return int(sum(sample.value for family in metrics.GATEWAY_API_ERRORS.collect() for sample in family.samples
                   if sample.name.endswith("_total") and sample.labels.get("kind") in kinds))


if __name__ == "__main__":
    main()
