"""Benchmark of workload profiling on the real ESFT routing traces (../shared/data).

Targets (issue 5): importing the 26 ESFT files of one domain takes under 5 s; the
token-level sampler draws a 10k-token batch in under 10 ms. Also reported: the token-by-
token count the sampler replaced (same batches, same seed), and `loads diff` statistics.

    .venv/bin/python benchmarks/bench_workload.py [--draws 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vibe.engines.esft import load_esft_trace
from vibe.loadstats import compare_loads

ROOT = Path(__file__).resolve().parents[1]
ESFT = ROOT.parent / "shared" / "data" / "routing" / "esft-dsv2lite"
DOMAINS = ("intent", "law", "summary")
console = Console(highlight=False)


def timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` calls, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def bench_import(repeats: int) -> tuple[list[dict], dict]:
    """Time `vibe loads import --format esft` minus the CLI start-up: parse the 26 files of
    a domain into a trace and count it into loads."""
    rows, loads = [], {}
    for d in DOMAINS:
        secs, trace = timed(lambda d=d: load_esft_trace(ESFT / d), repeats)
        loads[d] = trace.to_loads()
        rows.append({"domain": d, "files": 26, "tokens": trace.num_tokens, "sequences": trace.num_sequences,
                     "import_s": round(secs, 3), "under_5s": secs < 5.0})
    return rows, loads


def bench_sampler(draws: int, batch_tokens: int = 10_000, seed: int = 0) -> dict:
    trace = load_esft_trace(ESFT / "intent")
    t0 = time.perf_counter()
    trace.sample_batch_counts(batch_tokens, np.random.default_rng(seed))  # builds the per-sequence table
    first_ms = (time.perf_counter() - t0) * 1e3
    fast, _ = timed(lambda rng=np.random.default_rng(seed): trace.sample_batch_counts(batch_tokens, rng), draws)
    slow, _ = timed(lambda rng=np.random.default_rng(seed):
                    trace.counts(trace.sample_token_indices(batch_tokens, rng)), max(draws // 10, 5))
    a = trace.sample_batch_counts(batch_tokens, np.random.default_rng(seed + 1))
    b = trace.counts(trace.sample_token_indices(batch_tokens, np.random.default_rng(seed + 1)))
    return {"batch_tokens": batch_tokens, "draws": draws, "first_call_ms": round(first_ms, 2),
            "sample_ms": round(fast * 1e3, 3), "token_count_ms": round(slow * 1e3, 2),
            "speedup": round(slow / fast, 1), "same_counts": bool(np.array_equal(a, b)),
            "under_10ms": fast * 1e3 < 10.0}


def _table(title: str, rows: list[dict]) -> Table:
    """Rows as columns; a single row is shown as metric/value pairs to fit a terminal."""
    t = Table(title=title)
    if len(rows) == 1:
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in rows[0].items():
            t.add_row(k, str(v))
        return t
    for col in rows[0]:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200, help="sampler draws to time")
    ap.add_argument("--repeats", type=int, default=3, help="imports per domain to time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not ESFT.exists():
        console.print(f"real data not found at {ESFT}: nothing to benchmark")
        return 0
    imports, loads = bench_import(args.repeats)
    sampler = bench_sampler(args.draws)
    drift = []
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1:]:
            o = compare_loads(loads[a], loads[b])["overall"]
            drift.append({"a": a, "b": b, "tv_median": round(o["tv_median"], 3), "tv_max": round(o["tv_max"], 3),
                          "cosine_all": round(o["cosine_all"], 3)})
    result = {"import": imports, "sampler": sampler, "drift": drift}
    if args.json:
        print(json.dumps(result))
    else:
        for title, rows in (("ESFT import (one domain, 26 files)", imports), ("sampler (ESFT intent)", [sampler]),
                            ("drift between domains (per-layer TV, cosine)", drift)):
            console.print(_table(title, rows))
    ok = all(r["under_5s"] for r in imports) and sampler["under_10ms"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
