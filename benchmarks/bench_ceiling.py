"""The placement ceiling (issue 11): how much can any placement gain in simulated serving?

`vibe.sim.ceiling` times every step of a simulation at a lower bound of the MoE layers
for any plan with the same slots per GPU on that step's own routing (a plan re-made for
every step could not beat it), and keeps the dense part, which placement does not touch.
Its QPS at 90% SLO bounds what every placement policy can reach; this benchmark puts it
beside eplb and vibe.

1. Full steps (offline, expected routing): a step of the full budget (1024 tokens per
   GPU), eplb / vibe / ceiling step times and the ceiling's capacity gain over eplb.
2. Scale study in serving: {8 .. 256} GPUs, one GPU capped 20% (the measured fleet
   spread besides), DeepSeek-V3 shape, nodes of 8 GPUs with the network block on
   (the comm-aware cost model), Poisson 1024-in / 128-out, step budget 1024 tokens and
   32 requests per GPU, 0 and G replica slots; QPS swept around eplb's capacity:
   highest QPS at 90% SLO of each, and P90 TTFT at eplb's knee.
3. Real inputs (--real): 8 GPUs, DeepSeek-V2-Lite, ESFT `intent` loads with the router
   trace re-sampled every step, Azure conversation arrivals: the same three.

    nice .venv/bin/python benchmarks/bench_ceiling.py [--quick] [--real] [--markdown out.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vibe.io import write_text_atomic
from vibe.policies import PlacementOptions, place
from vibe.sim import PRESETS, SchedulerConfig
from vibe.sim.ceiling import CEILING, CeilingPredictor
from vibe.sim.hardware import static_speed_ratio
from vibe.sim.predictor import Predictor, expected_router
from vibe.sim.report import aggregate, sustained_qps
from vibe.sim.sweep import SweepSpec, calibrate, run_sweep
from vibe.synth import synth_cluster, synth_loads_for_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SIZES = (8, 16, 32, 64, 128, 256)
PER_NODE = 8
MODEL = PRESETS["deepseek-v3"]
FRACTIONS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1)


def setup(G: int, R: int):
    """Capped cluster with the network block, DeepSeek-V3 loads, eplb and vibe plans."""
    cluster = synth_cluster(G, scenario="power-cap", seed=0, gpus_per_node=PER_NODE).with_network()
    loads = synth_loads_for_model("deepseek-v3", seed=0)
    o = PlacementOptions(redundant=R)
    return cluster, loads, {"eplb": place(loads, cluster, "eplb", o), "vibe": place(loads, cluster, "vibe", o)}


def full_steps(sizes) -> list[str]:
    lines = ["| GPUs | R | dense ms | eplb MoE + a2a ms | vibe | ceiling | vibe vs eplb | ceiling vs eplb |",
             "|---|---|---|---|---|---|---|---|"]
    for G in sizes:
        for R in (0, G):
            cluster, loads, plans = setup(G, R)
            B = 1024 * G
            counts = expected_router(loads)(B, None)
            dense_scale = float(static_speed_ratio(cluster).max())  # as the simulator: the slowest GPU's
            st = {p: Predictor(MODEL, cluster, pl, table_tokens=0).step(B, B * 512, counts, None, dense_scale)
                  for p, pl in plans.items()}
            st[CEILING] = CeilingPredictor(MODEL, cluster, plans["eplb"], table_tokens=0).step(
                B, B * 512, counts, None, dense_scale)
            moe = {p: (s.moe_us + s.a2a_us) / 1e3 for p, s in st.items()}
            tot = {p: s.total_us for p, s in st.items()}
            lines.append(f"| {G} | {R} | {st['eplb'].dense_us / 1e3:.1f} | {moe['eplb']:.1f} | {moe['vibe']:.1f} | "
                         f"{moe[CEILING]:.1f} | {100 * (tot['eplb'] / tot['vibe'] - 1):+.1f}% | "
                         f"{100 * (tot['eplb'] / tot[CEILING] - 1):+.1f}% |")
            print(lines[-1], flush=True)
    return lines


def sweep_rows(spec, cluster, loads, plans, qps, seeds, workers) -> tuple[dict, dict, dict, float]:
    """(QPS at 90% SLO, P90 TTFT at eplb's knee, idle at the barrier) per policy, and the knee."""
    placements = {**plans, CEILING: plans["eplb"]}  # the ceiling takes eplb's slot count
    agg = aggregate(run_sweep(spec, cluster, loads, placements, qps, list(seeds), workers))
    best = sustained_qps(agg)
    knee = max([q for q in qps if best["eplb"] is not None and q <= best["eplb"]] or [qps[0]])
    p90 = {a["policy"]: a["p90_ttft_ms"] for a in agg if a["qps"] == knee}
    idle = {p: float(np.mean([a["idle_at_barrier"] for a in agg if a["policy"] == p])) for p in placements}
    return best, p90, idle, knee


def row_lines(label: str, best, p90, idle) -> list[str]:
    out = []
    for pol in ("eplb", "vibe", CEILING):
        q, qe = best[pol], best["eplb"]
        rel = "-" if q is None or qe is None else f"{100 * (q / qe - 1):+.1f}%"
        out.append(f"| {label} | {pol} | {'-' if q is None else f'{q:.2f}'} | {rel} | {p90[pol]:.0f} | "
                   f"{100 * (p90[pol] / p90['eplb'] - 1):+.1f}% | {100 * idle[pol]:.1f}% |")
        print(out[-1], flush=True)
    return out


HEAD = ["| case | policy | QPS at 90% SLO | vs eplb | P90 TTFT at eplb's knee (ms) | vs eplb | idle at barrier |",
        "|---|---|---|---|---|---|---|"]


def serving(sizes, replicas: bool, duration: float, seeds, workers) -> list[str]:
    lines = list(HEAD)
    for G in sizes:
        R = G if replicas else 0
        cluster, loads, plans = setup(G, R)
        sched = SchedulerConfig(max_batch_tokens=1024 * G, max_running=32 * G)
        cal = calibrate(MODEL, cluster, loads, plans["eplb"], scheduler=sched)
        spec = SweepSpec(MODEL, duration_s=duration, slo_ttft_ms=cal["slo_ttft_ms"],
                         slo_tpot_ms=cal["slo_tpot_ms"], scheduler=sched)
        qps = [round(f * cal["capacity_qps"], 2) for f in FRACTIONS]
        best, p90, idle, knee = sweep_rows(spec, cluster, loads, plans, qps, seeds, workers)
        lines += row_lines(f"{G} GPUs, R = {R}", best, p90, idle)
        print(f"  (QPS {qps}, knee {knee})", flush=True)
    return lines


def real(duration: float, seeds, workers) -> list[str]:
    from vibe.engines.esft import load_esft_loads

    esft = DATA / "routing" / "esft-dsv2lite" / "intent"
    azure = DATA / "request-traces" / "AzureLLMInferenceTrace_conv.csv"
    if not esft.is_dir() or not azure.is_file():
        print(f"skipping --real: {esft} or {azure} not found")
        return []
    model = PRESETS["deepseek-v2-lite"]
    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    loads = load_esft_loads(esft)
    plans = {p: place(loads, cluster, p, PlacementOptions()) for p in ("eplb", "vibe")}
    sched = SchedulerConfig()
    cal = calibrate(model, cluster, loads, plans["eplb"], scheduler=sched)
    spec = SweepSpec(model, duration_s=duration, request_trace=str(azure), routing_trace=str(esft),
                     slo_ttft_ms=cal["slo_ttft_ms"], slo_tpot_ms=cal["slo_tpot_ms"], scheduler=sched)
    qps = [round(f * cal["capacity_qps"], 1) for f in (0.6, 0.75, 0.85, 0.9, 0.95, 1.0, 1.1)]
    best, p90, idle, knee = sweep_rows(spec, cluster, loads, plans, qps, seeds, workers)
    print(f"  (QPS {qps}, knee {knee})", flush=True)
    return list(HEAD) + row_lines("ESFT + Azure, 8 GPUs", best, p90, idle)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8, 64 and 256 GPUs, one seed")
    ap.add_argument("--real", action="store_true", help="also the real-input case (ESFT + Azure, 8 GPUs)")
    ap.add_argument("--duration", type=float, default=20.0, help="simulated seconds of arrivals")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = ap.parse_args()
    sizes = (8, 64, 256) if args.quick else SIZES
    seeds = range(1 if args.quick else args.seeds)
    text = full_steps(sizes) + [""]
    for replicas in (False, True):
        text += serving(sizes, replicas, args.duration, seeds, args.workers) + [""]
    if args.real:
        text += real(args.duration, seeds, args.workers) + [""]
    if args.markdown:
        write_text_atomic(args.markdown, "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
