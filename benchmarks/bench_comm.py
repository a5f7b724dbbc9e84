"""The communication-aware objective (issue 11): vibe planned with the all-to-all term,
vibe planned on compute only, and EPLB, all scored under the comm-aware cost model.

1. Placement grid: EP size {8 .. 256} x tokens per GPU {16, 128, 1024} x cluster
   {identical, fleet, one GPU capped 20%} x redundant {0, G}, DeepSeek-V3-shaped loads
   (58 x 256, top-8), nodes of 8 GPUs, the network block's defaults (NVLink 450 GB/s,
   400 Gb/s NIC = 50 GB/s per GPU, 15 us per all-to-all, fp8 dispatch + bf16 combine,
   hidden 7168). Every plan is made for the one operating point B = tokens/GPU x G and
   scored there by vibe.cost.evaluate with the network block on. Prints eplb / plan - 1
   for both vibe plans and the share of EPLB's per-layer time that is all-to-all; then
   node-aware vibe (--num-groups 8: expert groups kept inside a node) where it applies.
2. Serving (--sim): 16 and 64 GPUs, one GPU capped, the same policies under the
   simulator with the network block (its all-to-all is the same function), a QPS sweep
   around the calibrated capacity: highest QPS at 90% SLO and P90 TTFT.

    nice .venv/bin/python benchmarks/bench_comm.py [--quick] [--sim] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vibe.cost import evaluate
from vibe.io import write_text_atomic
from vibe.policies import PlacementOptions, place
from vibe.synth import synth_cluster, synth_loads_for_model

SIZES = (8, 16, 32, 64, 128, 256)
TOKENS_PER_GPU = (16, 128, 1024)
PER_NODE = 8


def clusters(G: int) -> dict:
    return {"identical": synth_cluster(G, scenario="identical", gpus_per_node=PER_NODE),
            "fleet": synth_cluster(G, scenario="fleet", seed=0, gpus_per_node=PER_NODE),
            "capped": synth_cluster(G, scenario="power-cap", spread=0.0, slow_rank=G // 2 - 1,
                                    gpus_per_node=PER_NODE)}


def plans(loads, cluster, R: int, B: float) -> dict:
    """The three plans: vibe with the comm term, vibe on compute only, eplb."""
    o = PlacementOptions(redundant=R, batch_tokens=(B,))
    on = cluster.with_network()
    return {"vibe-comm": place(loads, on, "vibe", o), "vibe-compute": place(loads, cluster, "vibe", o),
            "eplb": place(loads, cluster, "eplb", o)}


def moe_time(plan, loads, cluster, B: float) -> float:
    return evaluate(plan, loads, cluster, (B,), with_lower_bound=False)[0].moe_time_us


def grid(sizes, loads) -> tuple[list[str], list[tuple]]:
    lines = ["| GPUs | tokens/GPU | cluster | R | a2a share (eplb) | vibe-comm vs eplb | vibe-compute vs eplb | "
             "comm-aware vs compute-only | solve s |", "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for G in sizes:
        for kind, cl in clusters(G).items():
            on = cl.with_network()
            for tpg in TOKENS_PER_GPU:
                for R in (0, G):
                    B = float(tpg * G)
                    t0 = time.perf_counter()
                    p = plans(loads, cl, R, B)
                    dt = (time.perf_counter() - t0) / 2  # two vibe solves (eplb is instant)
                    f = {k: moe_time(v, loads, on, B) for k, v in p.items()}
                    share = 1 - moe_time(p["eplb"], loads, cl, B) / f["eplb"]
                    g_on, g_off = f["eplb"] / f["vibe-comm"] - 1, f["eplb"] / f["vibe-compute"] - 1
                    g_aware = f["vibe-compute"] / f["vibe-comm"] - 1
                    rows.append((G, tpg, kind, R, share, g_on, g_off, g_aware, dt))
                    line = (f"| {G} | {tpg} | {kind} | {R} | {100 * share:.0f}% | {100 * g_on:+.2f}% | "
                            f"{100 * g_off:+.2f}% | {100 * g_aware:+.2f}% | {dt:.2f} |")
                    lines.append(line)
                    print(line, flush=True)
    return lines, rows


def node_aware(sizes, loads) -> list[str]:
    """vibe with --num-groups 8 (groups whole inside a node) vs flat vibe, comm term on."""
    lines = ["| GPUs | tokens/GPU | cluster | flat vibe-comm vs eplb | node-aware vibe-comm vs eplb |",
             "|---|---|---|---|---|"]
    for G in sizes:
        nodes = G // PER_NODE
        if nodes < 2 or 8 % nodes:
            continue
        for kind, cl in clusters(G).items():
            on = cl.with_network()
            for tpg in (128, 1024):
                B = float(tpg * G)
                flat = PlacementOptions(batch_tokens=(B,))
                grouped = PlacementOptions(batch_tokens=(B,), num_groups=8)
                e = moe_time(place(loads, cl, "eplb", flat), loads, on, B)
                v = moe_time(place(loads, on, "vibe", flat), loads, on, B)
                n = moe_time(place(loads, on, "vibe", grouped), loads, on, B)
                line = f"| {G} | {tpg} | {kind} | {100 * (e / v - 1):+.2f}% | {100 * (e / n - 1):+.2f}% |"
                lines.append(line)
                print(line, flush=True)
    return lines


def serving(sizes, fractions, duration: float, workers: int, seeds=(0, 1, 2)) -> list[str]:
    """Simulated serving with the network block on: QPS at 90% SLO and P90 TTFT."""
    from vibe.sim import PRESETS, SchedulerConfig
    from vibe.sim.report import aggregate, sustained_qps
    from vibe.sim.sweep import SweepSpec, calibrate, run_sweep

    model = PRESETS["deepseek-v3"]
    loads = synth_loads_for_model("deepseek-v3", seed=0)
    lines = ["| GPUs | policy | QPS at 90% SLO | vs eplb | P90 TTFT at the knee (ms) | vs eplb | a2a share |",
             "|---|---|---|---|---|---|---|"]
    for G in sizes:
        cl = synth_cluster(G, scenario="power-cap", seed=0, gpus_per_node=PER_NODE)
        on = cl.with_network()
        B = float(1024 * G)
        o = PlacementOptions(batch_tokens=(B, 32.0 * G))
        placements = {"eplb": place(loads, cl, "eplb", o), "vibe-compute": place(loads, cl, "vibe", o),
                      "vibe-comm": place(loads, on, "vibe", o)}
        sched = SchedulerConfig(max_batch_tokens=1024 * G, max_running=32 * G)
        cal = calibrate(model, on, loads, placements["eplb"], scheduler=sched)
        spec = SweepSpec(model, duration_s=duration, slo_ttft_ms=cal["slo_ttft_ms"], slo_tpot_ms=cal["slo_tpot_ms"],
                         scheduler=sched)
        qps = [round(f * cal["capacity_qps"], 2) for f in fractions]
        rows = run_sweep(spec, on, loads, placements, qps, list(seeds), workers)
        agg = aggregate(rows)
        best = sustained_qps(agg)
        # the knee: the last swept QPS at which eplb still meets 90% SLO (the first if none)
        knee = max([q for q in qps if best["eplb"] is not None and q <= best["eplb"]] or [qps[0]])
        p90 = {a["policy"]: a["p90_ttft_ms"] for a in agg if a["qps"] == knee}
        share = {p: float(np.mean([r["steps"]["a2a_share"] for r in rows if r["qps"] == knee and r["policy"] == p]))
                 for p in placements}
        for pol in placements:
            q, qe = best[pol], best["eplb"]
            rel_q = "-" if q is None or qe is None else f"{100 * (q / qe - 1):+.1f}%"
            lines.append(f"| {G} | {pol} | {'-' if q is None else f'{q:.2f}'} | {rel_q} | {p90[pol]:.0f} | "
                         f"{100 * (p90[pol] / p90['eplb'] - 1):+.1f}% | {100 * share[pol]:.0f}% |")
            print(lines[-1], flush=True)
        print(f"  ({G} GPUs: QPS {qps}, knee {knee}, SLO TTFT {cal['slo_ttft_ms']:.0f} ms, "
              f"TPOT {cal['slo_tpot_ms']:.0f} ms)", flush=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8, 64 and 256 GPUs only")
    ap.add_argument("--sim", action="store_true", help="also the serving simulation at 16 and 64 GPUs")
    ap.add_argument("--no-grid", action="store_true", help="skip the placement grid")
    ap.add_argument("--duration", type=float, default=20.0, help="simulated seconds of arrivals")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = ap.parse_args()
    sizes = (8, 64, 256) if args.quick else SIZES
    loads = synth_loads_for_model("deepseek-v3", seed=0)
    text = []
    if not args.no_grid:
        lines, rows = grid(sizes, loads)
        summary = []
        for tpg in TOKENS_PER_GPU:
            sel = [r for r in rows if r[1] == tpg]
            summary.append(f"{tpg} tokens/GPU: a2a share of eplb's time {100 * min(r[4] for r in sel):.0f}-"
                           f"{100 * max(r[4] for r in sel):.0f}%; vibe-comm vs eplb min {100 * min(r[5] for r in sel):+.2f}%"
                           f" median {100 * float(np.median([r[5] for r in sel])):+.2f}%; vibe-compute vs eplb min "
                           f"{100 * min(r[6] for r in sel):+.2f}%; comm-aware vs compute-only min "
                           f"{100 * min(r[7] for r in sel):+.2f}% max {100 * max(r[7] for r in sel):+.2f}%")
        summary.append(f"solve time max {max(r[8] for r in rows):.2f} s")
        print("\n".join(summary))
        text += lines + [""] + [f"- {s}" for s in summary] + [""]
        text += node_aware(sizes, loads) + [""]
    if args.sim:
        text += serving((16, 64), (0.4, 0.5, 0.6, 0.7, 0.8, 1.0), args.duration, args.workers) + [""]
    if args.markdown:
        write_text_atomic(args.markdown, "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
