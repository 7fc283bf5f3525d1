"""Turns a results dict into results.json, report.md and PNG charts, and the table printed at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.stack import BENCH

GOAL_RATIO = 0.8
GOAL_P99_300 = 25.0
GOAL_REDIS_DOWN_P99 = 100.0
GOAL_E2E_RATE = 300
GOAL_DRAIN_S = 10.0
GOAL_GROWTH_PCT = 10.0


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _lat(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    lat = run["latency_ms"]
    return f"{_f(lat['p50'])} / {_f(lat['p95'])} / {_f(lat['p99'])}"


def _result_backend_runs(down: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    backend = down.get("result_backend") or {}
    return [(mode, backend[mode]) for mode in ("stopped", "blackholed") if backend.get(mode)]


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 6 with its measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    ingest = results.get("ingest") or {}

    def add(name: str, measured: Any, met: bool | None, text: str) -> None:
        out.append({"goal": name, "measured": measured, "met": met, "text": text})

    pay, minimal = ingest.get("Payshift", {}), ingest.get("minimal ingest", {})
    if pay.get("saturation") and minimal.get("saturation"):
        ratio = pay["saturation"]["rps"] / minimal["saturation"]["rps"]
        add("Payshift saturation >= 0.8 x minimal ingest", round(ratio, 2), ratio >= GOAL_RATIO,
            f"{ratio:.2f} x ({_f(pay['saturation']['rps'])} vs {_f(minimal['saturation']['rps'])} req/s)")
    if pay.get("rate_300"):
        p99 = pay["rate_300"]["latency_ms"]["p99"]
        errors = pay["rate_300"]["errors"]
        add("Payshift p99 <= 25 ms at 300 req/s", p99, p99 <= GOAL_P99_300 and errors == 0,
            f"p99 {_f(p99)} ms, {errors} errors")
    down = results.get("redis_down") or {}
    key = next((k for k in down if k.startswith("rate_")), None)
    if key:
        run = down[key]
        fivexx = run["errors_5xx"] + down["saturation"]["errors_5xx"]
        add("Redis stopped: no 5xx, p99 <= 100 ms at 100 req/s", run["latency_ms"]["p99"],
            fivexx == 0 and run["latency_ms"]["p99"] <= GOAL_REDIS_DOWN_P99,
            f"p99 {_f(run['latency_ms']['p99'])} ms, {fivexx} 5xx")
    for mode, backend_run in _result_backend_runs(down):
        p99 = backend_run["latency_ms"]["p99"]
        handed = backend_run.get("events_to_django_q", backend_run.get("django_q_tasks_enqueued")) == \
            backend_run.get("events_stored")
        add(f"Redis {mode}, result backend on it: no 5xx, p99 <= 100 ms at {_f(backend_run['target_rps'], 0)} "
            "req/s, all to Django Q", p99,
            backend_run["errors"] == 0 and p99 <= GOAL_REDIS_DOWN_P99 and handed,
            f"p99 {_f(p99)} ms, first {_f(backend_run.get('first_ms'))} ms, max "
            f"{_f(backend_run['latency_ms']['max'])} ms, {backend_run['errors_5xx']} 5xx, "
            f"{backend_run.get('events_to_django_q', backend_run.get('django_q_tasks_enqueued'))}/"
            f"{backend_run.get('events_stored')} to Django Q")
    e2e = results.get("e2e") or {}
    if e2e:
        sustained = e2e["ingest"]["rps"]
        drain = e2e.get("drain_after_load_s")
        ok = (drain is not None and drain <= GOAL_DRAIN_S and e2e["settle"]["settled"] == e2e["count"]
              and e2e["ingest"]["errors"] == 0 and e2e["rate"] >= GOAL_E2E_RATE)
        last = (f"the last {_f(drain, 2)} s after the load stopped" if drain is not None
                else f"not all within {_f(e2e.get('settle_timeout_s'), 0)} s of the load stopping")
        add("E2E: 300 webhooks/s for 60 s, all settled <= 10 s after", drain, ok,
            f"offered {e2e['rate']}/s, answered {_f(sustained)}/s over {_f(e2e['load_seconds'])} s; "
            f"{e2e['settle']['settled']:,}/{e2e['count']:,} settled, {last}")
        mem = e2e.get("memory") or {}
        growths = [m.get("growth_pct") for m in mem.values() if m.get("growth_pct") is not None]
        if growths:
            worst = max(growths)
            add("Memory growth first -> second half < 10 %", worst, worst < GOAL_GROWTH_PCT,
                ", ".join(f"{role} {_f(m.get('growth_pct'), 2)} %" for role, m in mem.items()))
    rec = results.get("reconcile") or {}
    if rec:
        growth = rec.get("growth_after_first_quarter_pct")
        add("Reconciliation memory flat (batches)", growth, growth is not None and growth < GOAL_GROWTH_PCT,
            f"RSS {_f(rec['rss_first_quarter_max_mib'])} MiB after the first quarter, max "
            f"{_f(rec['rss_rest_max_mib'])} MiB after it")
    return out


def tables(results: dict[str, Any]) -> str:
    """The Markdown tables: every figure with its same-run reference beside it."""
    lines: list[str] = []
    ingest = results.get("ingest") or {}
    if ingest:
        rates = sorted({k for v in ingest.values() if isinstance(v, dict) for k in v if k.startswith("rate_")},
                       key=lambda k: int(k.split("_")[1]))
        head = "| target | saturation req/s | sat. p50 / p99 ms | sat. errors |" + "".join(
            f" {k.split('_')[1]} req/s: p50 / p95 / p99 ms | errors |" for k in rates)
        lines += ["### 1-2. Ingest (same payloads, same gunicorn setup)", "",
                  "Median of the repetitions (each repetition's saturation req/s in brackets); errors = any "
                  "answer but 2xx plus socket errors.", "", head,
                  "|" + "---|" * (4 + 2 * len(rates))]
        for name, runs in ingest.items():
            if name.startswith("_") or not runs.get("saturation"):
                continue
            sat = runs["saturation"]
            reps = sat.get("repetitions") or []
            spread = f" ({', '.join(_f(r['rps'], 0) for r in reps)})" if len(reps) > 1 else ""
            row = (f"| {name} | {_f(sat['rps'])}{spread} | {_f(sat['latency_ms']['p50'])} / "
                   f"{_f(sat['latency_ms']['p99'])} | {sat['errors']} |")
            for k in rates:
                row += f" {_lat(runs.get(k))} | {runs[k]['errors'] if runs.get(k) else '-'} |"
            lines.append(row)
        pay, peer, minimal = ingest.get("Payshift"), ingest.get("paystack-django"), ingest.get("minimal ingest")
        lines.append("")
        if pay and minimal:
            lines.append(f"Payshift / minimal ingest at saturation: **{pay['saturation']['rps'] / minimal['saturation']['rps']:.2f} x**")  # noqa: E501
        if pay and peer and peer.get("saturation"):
            lines.append(f"Payshift / paystack-django at saturation: **{pay['saturation']['rps'] / peer['saturation']['rps']:.2f} x**")  # noqa: E501
            for k in rates:
                if pay.get(k) and peer.get(k):
                    lines.append(f"p99 at {k.split('_')[1]} req/s: Payshift {_f(pay[k]['latency_ms']['p99'])} ms, "
                                 f"paystack-django {_f(peer[k]['latency_ms']['p99'])} ms")
        if any(r.get("wrapped") for runs in ingest.values() if isinstance(runs, dict) for r in runs.values()
               if isinstance(r, dict)):
            lines.append("(a saturation run sent more requests than pre-signed bodies: the repeats answered "
                         "`duplicate`)")
        lines.append("")
    down = results.get("redis_down")
    if down:
        key = next(k for k in down if k.startswith("rate_"))
        up = (ingest.get("Payshift") or {})
        lines += ["### 3. Ingest with Redis stopped (Django Q fallback)", "",
                  "| | saturation req/s | sat. p99 ms | sat. errors (5xx) | "
                  f"{key.split('_')[1]} req/s: p50 / p95 / p99 ms | errors (5xx) |", "|---|---|---|---|---|---|"]
        for label, runs in (("Redis stopped", down), ("reference: Redis up (scenario 1)", up)):
            sat, rate = runs.get("saturation"), runs.get(key)
            if not sat:
                continue
            lines.append(f"| {label} | {_f(sat['rps'])} | {_f(sat['latency_ms']['p99'])} | {sat['errors']} "
                         f"({sat['errors_5xx']}) | {_lat(rate)} | "
                         f"{rate['errors'] if rate else '-'} ({rate['errors_5xx'] if rate else '-'}) |")
        lines += ["", f"Events stored while Redis was down: {down['events_stored']}; handed to Django Q: "
                      f"{down.get('events_to_django_q', down['django_q_tasks_enqueued'])}, in "
                      f"{down['django_q_tasks_enqueued']} Django Q tasks (the outbox relay hands over batches).", ""]
        backend_runs = _result_backend_runs(down)
        if backend_runs:
            lines += [f"With the result backend on the same Redis (`CELERY_RESULT_BACKEND="
                      f"{down['result_backend'].get('result_backend', '')}`), web restarted with it and warmed "
                      "while Redis was up, then Redis stopped or black-holed (accepts, never answers):", "",
                      "| Redis | req/s | first request ms | p50 / p95 / p99 ms | max ms | errors (5xx) | "
                      "stored / to Django Q |", "|---|---|---|---|---|---|---|"]
            for mode, run in backend_runs:
                lines.append(f"| {mode} | {_f(run['target_rps'], 0)} | {_f(run.get('first_ms'))} | {_lat(run)} | "
                             f"{_f(run['latency_ms']['max'])} | {run['errors']} ({run['errors_5xx']}) | "
                             f"{run.get('events_stored')} / "
                             f"{run.get('events_to_django_q', run.get('django_q_tasks_enqueued'))} |")
            lines.append("")
    e2e = results.get("e2e")
    if e2e:
        noop = e2e["noop_rate"]

        def drained(run: dict[str, Any]) -> str:
            if run.get("drain_after_load_s") is not None:
                return f"{_f(run['drain_after_load_s'], 2)} s"
            return f"not within {_f(run.get('settle_timeout_s'), 0)} s ({run['settle']['settled']:,} settled)"

        def e2e_row(label: str, run: dict[str, Any], backlog: str) -> str:
            st = run["settle"]
            return (f"| {label} | {run['rate']}/s for {_f(run['load_seconds'])} s | {run['count']:,} "
                    f"({run['ingest']['errors']:,} errors) | {_f(st['notification_ms']['p50'])} / "
                    f"{_f(st['notification_ms']['p99'])} | {backlog} | {drained(run)} |")

        lines += ["### 4. End to end (receipt -> payment success + notification)", "",
                  "| | offered rate | sent (ingest errors) | receipt -> success+notification p50 / p99 ms | "
                  "settled/s at saturation (backlog) | last settled after the load stopped |",
                  "|---|---|---|---|---|---|"]
        if e2e.get("low"):
            lines.append(e2e_row("Payshift, a rate this machine sustains", e2e["low"], "-"))
        lines += [e2e_row("Payshift, the goal run", e2e, _f(e2e["backlog"]["settled_per_s"])),
                  f"| reference: no-op Celery task | {e2e['rate']}/s for {_f(noop['count'] / e2e['rate'])} s | "
                  f"{noop['count']:,} | {_f(noop['latency_ms']['p50'])} / {_f(noop['latency_ms']['p99'])} | "
                  f"{_f(e2e['noop_backlog']['tasks_per_s'])} | {_f(noop['drain_s'], 2)} s |"]
        minimal = e2e.get("minimal")
        if minimal:
            lines.append(f"| reference: hand-written minimal pipeline (Paystack only) | {minimal['rate']}/s for "
                         f"{_f(minimal['load_seconds'])} s | {minimal['count']:,} ({minimal['ingest']['errors']:,} "
                         f"errors) | {_f(minimal['latency_ms']['p50'])} / {_f(minimal['latency_ms']['p99'])} | - | "
                         f"{drained({**minimal, 'settle': {'settled': minimal['settled']}})} |")
        lines.append("")
        for label, run in (("sustainable rate", e2e.get("low")), ("goal run", e2e)):
            if run:
                st = run["settle"]
                lines.append(f"- {label}: ingest latency (open loop) p50 / p95 / p99 {_lat(run['ingest'])} ms; "
                             f"receipt -> transition row p50 / p99 {_f(st['transition_ms']['p50'])} / "
                             f"{_f(st['transition_ms']['p99'])} ms; payments after the run: {st['statuses']}.")
        lines += [f"- Queries per webhook: {e2e['query_counts']['receive']} to receive (web), "
                  f"{e2e['query_counts']['process']} to process (worker). Ingest errors are client timeouts "
                  "(10 s): a gateway would resend them.", ""]
    rec = results.get("reconcile")
    if rec:
        lines += ["### 5. Reconciliation (check_pending_payments)", "",
                  "| pending payments | verified in one run | time | payments verified/s | baseline RSS | peak RSS |"
                  " RSS growth after the first quarter |", "|---|---|---|---|---|---|---|",
                  f"| {rec['pending_payments']:,} | {rec['counts']['verified']:,} | {_f(rec['elapsed_s'])} s | "
                  f"{_f(rec['verified_per_s'])} | {_f(rec['baseline_rss_mib'])} MiB | {_f(rec['peak_rss_mib'])} MiB | "
                  f"{_f(rec['growth_after_first_quarter_pct'], 2)} % |", ""]
    cpu_rows = _cpu_rows(results)
    if cpu_rows:
        lines += ["### Where the CPU went (ms of CPU per request or per settled payment, all cores)", "",
                  "| measurement | web (gunicorn) | Celery | Django Q | sandbox | PostgreSQL | Redis | bench itself "
                  "| whole machine |", "|---|---|---|---|---|---|---|---|---|", *cpu_rows, "",
                  "Two cores give 2,000 ms of CPU per second: `2000 / whole machine` is the ceiling per second for "
                  "that work on this machine, whatever the software does with it. The machine column includes "
                  "other tenants of this shared machine.", ""]
    mem = (e2e or {}).get("memory")
    if mem:
        lines += ["### 6. Memory during the end-to-end run", "",
                  "| process | processes | peak RSS | growth, first half -> second half (worst process) |",
                  "|---|---|---|---|"]
        for role, label in (("web", "gunicorn web worker"), ("celery", "Celery worker (main + pool)")):
            if role in mem:
                m = mem[role]
                lines.append(f"| {label} | {m['processes']} | {_f(m['peak_rss_mib'])} MiB | "
                             f"{_f(m['growth_pct'], 2)} % |")
        lines.append("")
    return "\n".join(lines)


def _cpu_rows(results: dict[str, Any]) -> list[str]:
    rows = []

    def row(label: str, cpu: dict[str, float] | None) -> None:
        if cpu:
            web = (cpu.get("web") or 0.0) + (cpu.get("peer") or 0.0)
            rows.append(f"| {label} | {_f(web, 2)} | {_f(cpu.get('celery'), 2)} | {_f(cpu.get('qcluster'), 2)} | "
                        f"{_f(cpu.get('sandbox'), 2)} | {_f(cpu.get('postgres'), 2)} | {_f(cpu.get('redis'), 2)} | "
                        f"{_f(cpu.get('bench'), 2)} | {_f(cpu.get('machine'), 2)} |")

    for name, runs in (results.get("ingest") or {}).items():
        if not name.startswith("_") and runs.get("saturation"):
            row(f"ingest at saturation: {name}", runs["saturation"].get("cpu_ms_per_request"))
    down = results.get("redis_down") or {}
    if down.get("saturation"):
        row("ingest at saturation: Payshift, Redis stopped", down["saturation"].get("cpu_ms_per_request"))
    e2e = results.get("e2e") or {}
    if e2e:
        if e2e.get("low"):
            row(f"end to end at {e2e['low']['rate']}/s, per settled payment", e2e["low"].get("cpu_ms_per_payment"))
        row(f"end to end at {e2e['rate']}/s, per settled payment", e2e.get("cpu_ms_per_payment"))
        if e2e.get("minimal"):
            row(f"hand-written minimal pipeline at {e2e['minimal']['rate']}/s, per settled payment (reference)",
                e2e["minimal"].get("cpu_ms_per_payment"))
        row("backlog drain, per settled payment", e2e["backlog"].get("cpu_ms_per_payment"))
        row("backlog drain, per no-op task (reference)", e2e["noop_backlog"].get("cpu_ms_per_task"))
    return rows


def goals_table(results: dict[str, Any]) -> str:
    rows = ["| goal | result | met |", "|---|---|---|"]
    for g in goals(results):
        rows.append(f"| {g['goal']} | {g['text']} | {'yes' if g['met'] else 'NO'} |")
    return "\n".join(rows)


# --- charts ----------------------------------------------------------------------------------------------
def _nines(p: float) -> float:
    return -math.log10(max(1e-6, 1 - p / 100.0))


def _curve(ax: Axes, run: dict[str, Any], label: str) -> None:
    points = [(p, v) for p, v in run.get("curve", []) if p < 100]
    if points:
        ax.plot([_nines(p) for p, _ in points], [v for _, v in points], marker=".", label=label)


def _nines_axis(ax: Axes) -> None:
    ticks = [50, 90, 99, 99.9, 99.99]
    ax.set_xticks([_nines(p) for p in ticks], [f"p{p:g}" for p in ticks])
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log)")
    ax.grid(True, which="both", alpha=0.3)


def charts(results: dict[str, Any], out: Path) -> list[str]:
    made: list[str] = []
    ingest = {k: v for k, v in (results.get("ingest") or {}).items() if not k.startswith("_")}
    if ingest:
        modes = ["saturation", *sorted({k for v in ingest.values() for k in v if k.startswith("rate_")},
                                       key=lambda k: int(k.split("_")[1]))]
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4.2), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=True):
            for name, runs in ingest.items():
                if runs.get(mode):
                    _curve(ax, runs[mode], name)
            _nines_axis(ax)
            ax.set_title("saturation (wrk, closed loop)" if mode == "saturation"
                         else f"{mode.split('_')[1]} req/s (open loop)")
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Ingest latency distribution")
        fig.tight_layout()
        fig.savefig(out / "ingest_latency.png", dpi=110)
        plt.close(fig)
        made.append("ingest_latency.png")
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, runs in ingest.items():
            series = (runs.get("saturation") or {}).get("per_second") or []
            if series:
                ax.plot([t - series[0][0] for t, _ in series], [c for _, c in series], marker=".", label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("responses per second")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("Ingest throughput over time at saturation")
        fig.tight_layout()
        fig.savefig(out / "ingest_throughput.png", dpi=110)
        plt.close(fig)
        made.append("ingest_throughput.png")
    down = results.get("redis_down")
    if down:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
        key = next(k for k in down if k.startswith("rate_"))
        up = ingest.get("Payshift", {})
        for ax, mode in zip(axes[0], ("saturation", key), strict=True):
            if down.get(mode):
                _curve(ax, down[mode], "Redis stopped (Django Q)")
            if up.get(mode):
                _curve(ax, up[mode], "Redis up (Celery)")
            _nines_axis(ax)
            ax.set_title("saturation" if mode == "saturation" else f"{key.split('_')[1]} req/s (open loop)")
            ax.legend(fontsize=8)
        fig.suptitle("Payshift ingest with the broker down")
        fig.tight_layout()
        fig.savefig(out / "redis_down_latency.png", dpi=110)
        plt.close(fig)
        made.append("redis_down_latency.png")
    e2e = results.get("e2e")
    if e2e:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), squeeze=False)
        ax = axes[0][0]
        for label, key in (("received (webhooks/s)", "received_per_second"),
                           ("settled (payments/s)", "settled_per_second")):
            series = e2e["settle"].get(key) or []
            ax.plot([t for t, _ in series], [c for _, c in series], label=label)
        ax.set_xlabel("seconds since the first webhook")
        ax.set_ylabel("per second")
        ax.set_title(f"End to end at {e2e['rate']}/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[0][1]
        series = e2e["backlog"].get("settled_per_second") or []
        first = next((i for i, (_, c) in enumerate(series) if c), 0)
        ax.plot([t - series[first][0] for t, _ in series[first:]], [c for _, c in series[first:]],
                label="Payshift payments settled/s")
        ax.axhline(e2e["noop_backlog"].get("tasks_per_s") or 0, color="grey", linestyle="--",
                   label="no-op Celery task drain rate")
        ax.set_xlabel("seconds since the first settle")
        ax.set_ylabel("per second")
        ax.set_title(f"Backlog of {e2e['backlog']['count']:,} drained (saturation)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "e2e_throughput.png", dpi=110)
        plt.close(fig)
        made.append("e2e_throughput.png")
    rec = results.get("reconcile")
    mem = (e2e or {}).get("memory")
    if mem or rec:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), squeeze=False)
        ax = axes[0][0]
        for role, style in (("web", "-"), ("celery", "--")):
            for pid, series in (mem or {}).get(role, {}).get("series_mib", {}).items():
                ax.plot([t for t, _ in series], [v for _, v in series], style, label=f"{role} {pid}")
        ax.set_xlabel("seconds (end-to-end run)")
        ax.set_ylabel("RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.set_title("RSS of web and Celery processes")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        ax = axes[0][1]
        if rec:
            series = rec.get("rss_series_mib") or []
            ax.plot([t for t, _ in series], [v for _, v in series])
            ax.set_title(f"check_pending_payments over {rec['pending_payments']:,} pending payments")
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=110)
        plt.close(fig)
        made.append("memory.png")
    return made


def write(results: dict[str, Any], out: Path) -> Path:
    """results.json + report.md + PNGs in `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    results["goals"] = goals(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    pngs = charts(results, out)
    meta = results.get("meta", {})
    parts = [
        "# Payshift benchmark report", "",
        f"Run: {meta.get('started')} ({meta.get('mode')} mode, {meta.get('elapsed_s')} s). Machine: "
        f"{meta.get('cpus')} CPUs ({meta.get('cpu_model')}), {meta.get('postgres')}, Python {meta.get('python')}, "
        f"Django {meta.get('django')}. Everything (server, database, broker, sandbox gateway, load generator) "
        "shares these cores.", "",
        f"Server: gunicorn {' '.join(meta.get('gunicorn', []))}; Celery worker prefork concurrency "
        f"{meta.get('worker_concurrency')}; private redis-server; PostgreSQL database `payshift_bench`.", "",
        "## Goals", "", goals_table(results), "",
        "## Figures", "", tables(results), "",
    ]
    parts += [f"![{p}]({p})" for p in pngs]
    notes = BENCH / "FINDINGS.md"
    if notes.is_file():
        parts += ["", notes.read_text()]
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    return report
