"""Per-step noise (issue 11): does `vibe --robust` lower the idle time at the MoE
barrier that real per-step routing causes in simulated serving?

Setup, real data only: 8 GPUs (measured fleet spread, one GPU power-capped 20%),
DeepSeek-V2-Lite shape, ESFT `intent` loads and router trace (re-sampled every step,
whole sequences), Azure conversation arrivals rescaled to each QPS, no replicas.

1. Step sizes: a pilot run of EPLB's plan at 60% of capacity records the token count of
   every step (a deployment would log them); `--step-tokens` samples from them.
2. Plans: eplb, vibe (average load), vibe --robust as it was (steps at the default
   operating points 8192 / 256), vibe --robust --step-tokens (steps sized like the
   serving steps).
3. Offline, on 400 held-out re-sampled steps: idle at the barrier and mean MoE time
   per step; and an oracle that re-places every one of 60 of those steps for that
   step alone (what no static plan can beat: the irreducible part of the noise).
4. Simulated serving: QPS sweep x seeds; idle at the barrier, P90 TTFT, SLO attainment,
   the highest QPS at 90% SLO attainment.

    nice .venv/bin/python benchmarks/bench_robust.py [--quick] [--out out/bench-robust]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vibe.engines.esft import load_esft_loads
from vibe.policies import PlacementOptions, place
from vibe.policies import _timebalance as tb
from vibe.sim import PRESETS, simulate
from vibe.sim.report import aggregate, sustained_qps
from vibe.sim.requests import read_azure_trace, rescale
from vibe.sim.sweep import SweepSpec, calibrate, routing_trace, run_sweep
from vibe.stochastic import sized_step_tokens, step_gpu_times
from vibe.synth import synth_cluster

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
AZURE = DATA / "request-traces" / "AzureLLMInferenceTrace_conv.csv"
ESFT = DATA / "routing" / "esft-dsv2lite" / "intent"
MODEL = PRESETS["deepseek-v2-lite"]


class StepRecorder:
    """An 'online policy' that only records each step's token count (never acts)."""

    name = "record"

    def __init__(self, top_k: int):
        self.top_k, self.sizes = top_k, []

    def observe(self, t, counts, seen):
        self.sizes.append(int(round(counts[0].sum() / self.top_k)))
        return None

    def gpu_lost(self, down, placement):
        return None


def pilot_step_sizes(cluster, loads, trace, placement, qps: float, duration: float) -> np.ndarray:
    """[M] tokens of every step of a simulated run of `placement` at `qps` (seed 0)."""
    rec = StepRecorder(loads.top_k)
    work = rescale(read_azure_trace(AZURE), qps, duration)
    simulate(work, cluster, loads, placement, MODEL, trace=trace, seed=0, online=rec)
    return np.array(rec.sizes, dtype=np.float64)


def idle_and_time(T: np.ndarray) -> tuple[float, float]:
    """T [K, L, G] -> (idle fraction at the barriers, mean MoE us per step)."""
    return float(1 - T.mean(axis=2).sum() / T.max(axis=2).sum()), float(T.max(axis=2).sum(axis=1).mean())


def oracle_times(cluster, steps: np.ndarray) -> np.ndarray:
    """[K, L, G] GPU times when every step [K, L, E] gets vibe's plan for that step alone."""
    K, L, E = steps.shape
    G = cluster.num_gpus
    rows = np.tile(np.arange(G), (L, 1))
    over, count = tb.row_overhead(cluster, rows), np.ones((L, E), dtype=np.int64)
    items = tb.items_of(count)
    out = []
    for k in range(K):
        c = tb.replica_costs(cluster, rows, steps[k:k + 1], count)
        out.append(tb.gpu_times(c, items, tb.solve_rows(c, np.ones(1), items, over, E // G), over)[0])
    return np.stack(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-robust"))
    args = ap.parse_args()
    if not (AZURE.exists() and ESFT.exists()):
        print(f"skipped: needs {ESFT} and {AZURE}")
        return 0
    t_start = time.perf_counter()
    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    loads, trace = load_esft_loads(ESFT), routing_trace(str(ESFT))
    az = read_azure_trace(AZURE)
    linear = place(loads, cluster, "linear")
    cal = calibrate(MODEL, cluster, loads, linear, int(az.input_len.mean()), int(az.output_len.mean()))
    eplb = place(loads, cluster, "eplb")
    sizes = pilot_step_sizes(cluster, loads, trace, eplb, 0.6 * cal["capacity_qps"], 15 if args.quick else 30)
    plans, place_s = {"eplb": eplb}, {"eplb": 0.0}
    for name, opt in (("vibe", PlacementOptions()),
                      ("vibe robust (old points)", PlacementOptions(robust=True, extras={"traces": trace})),
                      ("vibe robust", PlacementOptions(robust=True, extras={"traces": trace, "step_tokens": sizes}))):
        t0 = time.perf_counter()
        plans[name] = place(loads, cluster, "vibe", opt)
        place_s[name] = time.perf_counter() - t0

    held = sized_step_tokens(loads, sizes, 400, 12345, trace)  # other seed than the solver's
    offline = {k: idle_and_time(step_gpu_times(p, cluster, held)) for k, p in plans.items()}
    n_or = 20 if args.quick else 60
    sub = {k: idle_and_time(step_gpu_times(p, cluster, held[:n_or])) for k, p in plans.items()}
    oracle = idle_and_time(oracle_times(cluster, held[:n_or]))

    fractions = (0.4, 0.6) if args.quick else (0.4, 0.5, 0.55, 0.6, 0.65, 0.7)
    seeds = [0] if args.quick else [0, 1]
    qps = [round(f * cal["capacity_qps"], 1) for f in fractions]
    spec = SweepSpec(MODEL, duration_s=15 if args.quick else 20, request_trace=str(AZURE),
                     slo_ttft_ms=cal["slo_ttft_ms"], slo_tpot_ms=cal["slo_tpot_ms"], routing_trace=str(ESFT))
    agg = aggregate(run_sweep(spec, cluster, loads, plans, qps, seeds, args.workers))
    sustained = sustained_qps(agg)
    by = {(a["policy"], a["qps"]): a for a in agg}
    # the knee: the first swept QPS at which EPLB misses 90% SLO attainment (its queue builds)
    knee = next((q for q in qps if by[("eplb", q)]["slo_attainment"] < 0.9), qps[-1])

    lines = [f"step sizes (pilot, {len(sizes)} steps): p10/p50/p90 "
             f"{'/'.join(f'{v:.0f}' for v in np.percentile(sizes, [10, 50, 90]))} tokens, mean {sizes.mean():.0f}",
             "", "| plan | place (s) | idle, 400 held-out steps | MoE us/step | idle, 60 steps | vs oracle |",
             "|---|---:|---:|---:|---:|---:|"]
    for k in plans:
        lines.append(f"| {k} | {place_s[k]:.1f} | {100 * offline[k][0]:.2f}% | {offline[k][1]:,.0f} | "
                     f"{100 * sub[k][0]:.2f}% | {sub[k][0] / max(oracle[0], 1e-12):.2f}x |")
    lines.append(f"| oracle (re-placed every step) | | | | {100 * oracle[0]:.2f}% | 1.00x |")
    lines += ["", "| plan | QPS | idle at barrier | P90 TTFT (ms) | SLO attainment |", "|---|---:|---:|---:|---:|"]
    for a in agg:
        lines.append(f"| {a['policy']} | {a['qps']:g} | {100 * a['idle_at_barrier']:.1f}% | "
                     f"{a['p90_ttft_ms']:,.0f} | {100 * a['slo_attainment']:.1f}% |")
    lines += ["", "| plan | idle at barrier (mean over QPS) | P90 TTFT at the knee | vs eplb | QPS at 90% SLO |",
              "|---|---:|---:|---:|---:|"]
    summary = {}
    for k in plans:
        idle = float(np.mean([by[(k, q)]["idle_at_barrier"] for q in qps]))
        p90 = by[(k, knee)]["p90_ttft_ms"]
        summary[k] = {"idle_at_barrier": idle, "p90_ttft_knee_ms": p90, "qps_at_90": sustained[k],
                      "offline_idle": offline[k][0], "offline_moe_us": offline[k][1], "place_s": place_s[k]}
        s = sustained[k]
        lines.append(f"| {k} | {100 * idle:.2f}% | {p90:,.0f} | {p90 / by[('eplb', knee)]['p90_ttft_ms'] - 1:+.1%} | "
                     f"{'-' if s is None else f'{s:.1f}'} |")
    lines.append(f"\nknee: {knee:g} QPS (first swept QPS where eplb misses 90% SLO attainment); "
                 f"capacity estimate {cal['capacity_qps']:.1f} QPS; SLO TTFT {cal['slo_ttft_ms']:g} ms, "
                 f"TPOT {cal['slo_tpot_ms']:g} ms; {len(seeds)} seeds x {spec.duration_s:g} s; "
                 f"wall {time.perf_counter() - t_start:.0f} s")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"summary": summary, "oracle_idle": oracle[0], "knee_qps": knee,
                                                  "calibration": cal, "aggregate": agg}, indent=1))
    (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
