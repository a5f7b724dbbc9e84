"""The solver at production scale (issue 11): `vibe` against `eplb` over a grid.

Grid: EP size {8 .. 256} x tokens per GPU per step {16, 128, 1024} x cluster {identical,
fleet (measured spread), one GPU capped 20%} x loads {DeepSeek-V3 (58 x 256, top-8),
Qwen3-235B (94 x 128, top-8)} x redundant slots {0, G}. Both plans are made for the one
operating point B = tokens per GPU x G and scored there with vibe.cost. Prints, per
case, eplb / vibe - 1 (the gain; never negative is the target), vibe / lower bound and
eplb / lower bound (vibe.bounds.layer_lower_bounds; with replicas the replica-aware
Lagrangian bound, max with the plan-independent ones) and vibe's solve time, then the
worst cases and the max of vibe / LB and eplb / LB per (model, GPUs, tokens per GPU).
Usage:
    .venv/bin/python benchmarks/bench_scale.py [--quick] [--markdown out.md]
        [--models deepseek-v3,...] [--sizes 8,16,...] [--tokens-per-gpu 128,1024]
        [--replicas 0|G|both]
"""

from __future__ import annotations

import argparse
import time

from vibe.cost import evaluate
from vibe.io import write_text_atomic
from vibe.policies import PlacementOptions, place
from vibe.synth import synth_cluster, synth_loads_for_model

SIZES = (8, 16, 32, 64, 128, 256)
TOKENS_PER_GPU = (16, 128, 1024)
MODELS = ("deepseek-v3", "qwen3-235b-a22b")


def clusters(G: int) -> dict:
    return {"identical": synth_cluster(G, scenario="identical"),
            "fleet": synth_cluster(G, scenario="fleet", seed=0),
            "capped": synth_cluster(G, scenario="power-cap", spread=0.0, slow_rank=G // 2 - 1)}


def case(loads, cluster, R: int, B: float) -> tuple[float, float, float, float]:
    """(gain of vibe over eplb, vibe / LB, eplb / LB, vibe solve seconds)."""
    o = PlacementOptions(redundant=R, batch_tokens=(B,))
    t0 = time.perf_counter()
    v = place(loads, cluster, "vibe", o)
    dt = time.perf_counter() - t0
    e = place(loads, cluster, "eplb", o)
    pv = evaluate(v, loads, cluster, (B,))[0]
    pe = evaluate(e, loads, cluster, (B,), with_lower_bound=False)[0]
    return pe.moe_time_us / pv.moe_time_us - 1.0, pv.ratio_to_lb, pe.moe_time_us / pv.lower_bound_us, dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8, 64 and 256 GPUs, DeepSeek-V3 only")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    ap.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--sizes", default=None, help="comma-separated EP sizes (default 8..256)")
    ap.add_argument("--tokens-per-gpu", default=None, help="comma-separated tokens per GPU (default 16,128,1024)")
    ap.add_argument("--replicas", choices=("0", "G", "both"), default="both",
                    help="redundant slots: none, one per GPU, or both (default)")
    args = ap.parse_args()
    sizes = (8, 64, 256) if args.quick else SIZES
    models = MODELS[:1] if args.quick else MODELS
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.models:
        models = tuple(args.models.split(","))
    tokens = TOKENS_PER_GPU if not args.tokens_per_gpu else tuple(int(t) for t in args.tokens_per_gpu.split(","))
    r_of = {"0": lambda G: (0,), "G": lambda G: (G,), "both": lambda G: (0, G)}[args.replicas]
    lines = ["| model | GPUs | tokens/GPU | cluster | R | vibe vs eplb | vibe / LB | eplb / LB | solve s |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for model in models:
        loads = synth_loads_for_model(model, seed=0)
        for G in sizes:
            for kind, cl in clusters(G).items():
                for tpg in tokens:
                    for R in r_of(G):
                        if (loads.num_experts + R) % G:
                            continue
                        g, rv, re, dt = case(loads, cl, R, tpg * G)
                        rows.append((model, G, tpg, kind, R, g, rv, re, dt))
                        line = (f"| {model} | {G} | {tpg} | {kind} | {R} | {100 * g:+.2f}% | {rv:.3f} | "
                                f"{re:.3f} | {dt:.2f} |")
                        lines.append(line)
                        print(line, flush=True)
    worst = min(rows, key=lambda r: r[5])
    summary = [f"worst gain over eplb: {100 * worst[5]:+.2f}% ({worst[0]}, {worst[1]} GPUs, {worst[2]} tokens/GPU, "
               f"{worst[3]}, R={worst[4]})"]
    for tpg in tokens:
        sel = [r for r in rows if r[2] == tpg]
        if not sel:
            continue
        summary.append(f"{tpg} tokens/GPU: vibe / LB max {max(r[6] for r in sel):.3f}, "
                       f"eplb / LB max {max(r[7] for r in sel):.3f}, gain min {100 * min(r[5] for r in sel):+.2f}% "
                       f"max {100 * max(r[5] for r in sel):+.2f}%")
    summary.append(f"solve time max {max(r[8] for r in rows):.2f} s")
    # The per-(model, GPUs, R) maxima over clusters: the docs' table rows.
    for key in sorted({(r[0], r[1], r[4]) for r in rows}, key=lambda k: (k[0], k[1], k[2])):
        sel = [r for r in rows if (r[0], r[1], r[4]) == key]
        per = " / ".join(f"{max(r[6] for r in sel if r[2] == t):.3f}" for t in tokens if any(r[2] == t for r in sel))
        per_e = " / ".join(f"{max(r[7] for r in sel if r[2] == t):.3f}" for t in tokens if any(r[2] == t for r in sel))
        summary.append(f"{key[0]} {key[1]} GPUs R={key[2]}: vibe / LB max {per}, eplb / LB max {per_e} "
                       f"(tokens/GPU {'/'.join(str(t) for t in tokens)})")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n"
    print("\n".join(summary))
    if args.markdown:
        write_text_atomic(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
