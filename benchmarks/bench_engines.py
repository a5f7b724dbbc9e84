"""Benchmark of vibe inside the engines (issue 10): the balancer behind the vLLM policy and
the SGLang algorithm (vibe.engines.rebalance.time_balanced, what both plug-ins call)
against the engines' default EPLB at DeepSeek-V3 shape (58 MoE layers x 256 experts,
top-8, seeded synthetic loads), 288 slots on 32 ranks and 320 on 64 (8 ranks per node,
8 expert groups, so the engines ask for hierarchical balancing).

The reference is vLLM's DefaultEplbPolicy when vLLM is importable (e.g. in .venv-engines),
else vibe's `eplb` (the same DeepSeek algorithm; the parity vector matches), and SGLang's
deepseek algorithm when SGLang is importable. Costs come from vibe.cost: a prefill step of
1024 tokens per rank, and vibe's default two-point objective (8192 / 256 tokens, 0.7 / 0.3).
Clusters: identical synthetic H100s; the same with one rank's compute 20% slower; the
measured fleet spread. Targets: identical >= the default (gain >= 0), one rank 20% slow
gain >= 10% at the prefill point. Also: seconds per call, and the weights a re-balance
after load drift moves (slots fetched from another rank) with and without the old layout.

Usage: python benchmarks/bench_engines.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from vibe.engines.rebalance import layer_objective, loads_from_weight, moved_slots, time_balanced
from vibe.synth.cluster import synth_cluster
from vibe.synth.loads import synth_loads

SHAPES = [(288, 32), (320, 64)]
NUM_GROUPS = 8
PER_NODE = 8


def references():
    """name -> fn(weight [L, E], P, groups, nodes, ranks, old) -> phy2log [L, P] (numpy)."""
    refs = {}
    try:
        import torch
        from vllm.distributed.eplb.policy.default import DefaultEplbPolicy

        def vllm_default(w, P, g, n, r, old=None):
            out = DefaultEplbPolicy.rebalance_experts(torch.from_numpy(w), P, g, n, r,
                                                      None if old is None else torch.from_numpy(old))
            return (out[0] if isinstance(out, tuple) else out).numpy()

        refs["vLLM DefaultEplbPolicy"] = vllm_default
    except Exception:
        from vibe.policies.eplb import rebalance_experts

        refs["DeepSeek EPLB (vibe.policies.eplb; vLLM not importable)"] = \
            lambda w, P, g, n, r, old=None: rebalance_experts(w, P, g, n, r)[0]
    try:
        import torch
        from sglang.srt.eplb import eplb_algorithms as algos

        original = getattr(algos.rebalance_experts, "vibe_original", algos.rebalance_experts)

        def sglang_deepseek(w, P, g, n, r, old=None):
            algo = algos.compute_algorithm("auto", g, n)
            return original(torch.from_numpy(w)[None], P, P // r, g, n, algo)[0].numpy()

        refs["SGLang deepseek (auto)"] = sglang_deepseek
    except Exception:
        pass
    return refs


def clusters(ranks: int) -> dict:
    return {"identical": synth_cluster(ranks, scenario="identical", gpus_per_node=PER_NODE),
            "one rank 20% slow": synth_cluster(ranks, scenario="power-cap", spread=0.0, slow_rank=7,
                                               gpus_per_node=PER_NODE),
            "fleet spread": synth_cluster(ranks, scenario="fleet", seed=0, gpus_per_node=PER_NODE)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 ranks only")
    args = ap.parse_args()
    weight = synth_loads(58, 256, 8, seed=0).counts
    loads = loads_from_weight(weight, 8)
    refs = references()
    missed = []
    print("| reference | slots / ranks | cluster | hierarchy | gain prefill (1024 tok/rank) | gain 2-point | vibe s/call |")
    print("|---|---|---|---|---|---|---|")
    for P, G in SHAPES[:1] if args.quick else SHAPES:
        nodes = G // PER_NODE
        B = (1024.0 * G,)
        ref_plans = {name: fn(weight, P, NUM_GROUPS, nodes, G) for name, fn in refs.items()}
        for cname, cluster in clusters(G).items():
            for hierarchy in ("auto", "off"):
                t = time.perf_counter()
                ours_b = time_balanced(weight, P, NUM_GROUPS, nodes, G, cluster=cluster, batch_tokens=B,
                                       hierarchy=hierarchy)
                dt = time.perf_counter() - t
                ours_d = time_balanced(weight, P, NUM_GROUPS, nodes, G, cluster=cluster, hierarchy=hierarchy)
                for name, ref in ref_plans.items():
                    gb = 1 - layer_objective(ours_b, loads, cluster, B).sum() / layer_objective(ref, loads, cluster, B).sum()
                    gd = 1 - layer_objective(ours_d, loads, cluster).sum() / layer_objective(ref, loads, cluster).sum()
                    print(f"| {name} | {P} / {G} | {cname} | {hierarchy} | {100 * gb:+.1f}% | {100 * gd:+.1f}% "
                          f"| {dt:.2f} |", flush=True)
                    if cname == "identical" and (gb < -1e-9 or gd < -1e-9):
                        missed.append(f"{name} {P}/{G} identical {hierarchy}")
                    if cname == "one rank 20% slow" and hierarchy == "off" and gb < 0.10:
                        missed.append(f"{name} {P}/{G} slow {hierarchy}: {gb:.3f}")
    # moves after drift: re-balance with new loads, given the old (vibe) layout
    rng = np.random.default_rng(1)
    print("\n| slots / ranks | drift | slots moved: vibe, old layout given | vibe, no old layout | reference, old given |")
    print("|---|---|---|---|---|")
    name, fn = next(iter(refs.items()))
    for P, G in SHAPES[:1] if args.quick else SHAPES:
        nodes = G // PER_NODE
        old = time_balanced(weight, P, NUM_GROUPS, nodes, G)
        for sigma in (0.05, 0.3):
            w2 = weight * rng.lognormal(0, sigma, weight.shape)
            kept = time_balanced(w2, P, NUM_GROUPS, nodes, G, old=old)
            fresh = time_balanced(w2, P, NUM_GROUPS, nodes, G)
            ref = fn(w2, P, NUM_GROUPS, nodes, G, old)
            print(f"| {P} / {G} | lognormal {sigma} | {moved_slots(kept, old, G)} | {moved_slots(fresh, old, G)} "
                  f"| {moved_slots(ref, old, G)} ({name}) |", flush=True)
    if missed:
        print("missed: " + "; ".join(missed), file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    os.environ.pop("VIBE_CLUSTER", None)
    sys.exit(main())
