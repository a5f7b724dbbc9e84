"""Benchmark of the foundation: how long the baseline policies and the cost model take at
DeepSeek-V3 size, and how far each baseline lands from the lower bound on real ESFT loads.

Targets (issue 2): evaluating a DeepSeek-V3-sized plan (58 layers x 256 experts, 64 GPUs,
with and without 64 replicas) takes well under a second, and a few seconds at most with
the lower bound. Timings are the best of --repeats runs (the machine is shared).

    .venv/bin/python benchmarks/bench_foundation.py [--repeats 3] [--with-256-no-replicas]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import Progress

from vibe.cost import DEFAULT_BATCH_TOKENS, evaluate
from vibe.policies import PlacementOptions, place
from vibe.synth import synth_cluster, synth_loads_for_model

ROOT = Path(__file__).resolve().parents[1]
ESFT = ROOT.parent / "shared" / "data" / "routing" / "esft-dsv2lite"
BASELINES = ("linear", "round_robin", "token_balanced", "eplb")
err = Console(stderr=True, highlight=False)


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(fastest wall time in seconds, last result) over `repeats` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def timing_rows(configs: list[tuple[int, int]], repeats: int, progress: Progress) -> list[list[str]]:
    """One row per (GPUs, redundant): each baseline's placement time and the evaluation
    time at both default operating points, without and with the lower bound."""
    loads = synth_loads_for_model("deepseek-v3", seed=0)  # 58 MoE layers x 256 experts, top-8
    task = progress.add_task("DeepSeek-V3 timings", total=len(configs) * (len(BASELINES) + 2))
    rows = []
    for G, R in configs:
        cluster = synth_cluster(G, scenario="fleet", seed=0)
        opts = PlacementOptions(redundant=R)
        row = [f"{G} GPUs, {256 + R} slots"]
        plans = {}
        for name in BASELINES:
            secs, plans[name] = best_of(lambda: place(loads, cluster, name, opts), repeats)
            row.append(f"{secs * 1000:.1f}")
            progress.advance(task)
        plan = plans["eplb"]
        secs, _ = best_of(lambda: evaluate(plan, loads, cluster, DEFAULT_BATCH_TOKENS, with_lower_bound=False),
                          repeats)
        row.append(f"{secs * 1000:.1f}")
        progress.advance(task)
        secs, points = best_of(lambda: evaluate(plan, loads, cluster, DEFAULT_BATCH_TOKENS), max(1, repeats - 1))
        row.append(f"{secs:.2f}")
        row.append(" / ".join(f"{p.ratio_to_lb:.3f}" for p in points))
        progress.advance(task)
        rows.append(row)
    return rows


def esft_rows(progress: Progress, batch_tokens: float = 8192.0) -> list[list[str]]:
    """Each baseline's ratio to the lower bound on the real ESFT loads of every domain."""
    from vibe.engines.esft import load_esft_loads

    domains = sorted(p.name for p in ESFT.iterdir() if p.is_dir())
    task = progress.add_task("ESFT ratios", total=len(domains) * 4)
    rows = []
    for domain in domains:
        loads = load_esft_loads(ESFT / domain)
        for G in (8, 16):
            for label, cluster in (("identical", synth_cluster(G, scenario="identical")),
                                   ("one GPU 20% slow", synth_cluster(G, scenario="power-cap", spread=0.0,
                                                                      cap=0.2, seed=0))):
                row = [domain, str(G), label]
                for name in BASELINES:
                    (pt,) = evaluate(place(loads, cluster, name), loads, cluster, [batch_tokens])
                    row.append(f"{pt.ratio_to_lb:.3f}")
                rows.append(row)
                progress.advance(task)
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--with-256-no-replicas", action="store_true",
                    help="also time 256 GPUs without replicas (the slowest lower bound: ~4x the 64-GPU one)")
    args = ap.parse_args()
    configs = [(64, 0), (64, 64), (256, 256)] + ([(256, 0)] if args.with_256_no_replicas else [])
    with Progress(console=err, transient=True) as progress:
        timing = timing_rows(configs, args.repeats, progress)
        ratios = esft_rows(progress) if ESFT.is_dir() else None
    print("### DeepSeek-V3 size: 58 MoE layers x 256 experts, top-8 (synthetic fleet cluster, seed 0)\n")
    print(markdown(["plan"] + [f"{n} (ms)" for n in BASELINES]
                   + ["evaluate, 2 points (ms)", "evaluate + bound (s)", "eplb ratio to LB (B=8192 / 256)"], timing))
    if ratios is None:
        print(f"\n(real ESFT loads not found at {ESFT}: ratio table skipped)")
        return
    print("\n### Real ESFT loads (26 layers x 64 experts, top-6): ratio to the lower bound at B=8192\n")
    print(markdown(["domain", "GPUs", "cluster"] + list(BASELINES), ratios))


if __name__ == "__main__":
    main()
