"""`vibe cluster synth` and `vibe loads synth`: realistic inputs without any download."""

from __future__ import annotations

import argparse

import numpy as np

from vibe.cli._common import MAX_GPUS, check_outputs, check_size, console, finite_float, int_range, positive_int, seed_int
from vibe.errors import VibeError
from vibe.synth import MODEL_PRESETS, SCENARIOS, synth_cluster, synth_loads, synth_loads_for_model
from vibe.loadstats.stats import max_over_mean
from vibe.synth.cluster import MAX_SPREAD


# Real MoE models have ~100 MoE layers and <= a few thousand experts; synthesis loops over
# layers (about a millisecond each), so these bounds keep a run to seconds.
MAX_LAYERS = 4096
MAX_EXPERTS = 1 << 16


def register(cli) -> None:
    c = cli.command("synth", "synthesize a cluster file from a GPU variability model", cmd_cluster_synth,
                    group="cluster")
    c.add_argument("--gpus", type=int_range(1, MAX_GPUS), required=True, metavar="N", help="GPUs in the EP group")
    c.add_argument("--scenario", choices=SCENARIOS, default="fleet",
                   help="identical GPUs, a measured-like fleet, one GPU power-capped 20%%, "
                        "or one GPU 2.2x slow (default: fleet)")
    c.add_argument("--spread", type=finite_float(0, MAX_SPREAD), default=None, metavar="X",
                   help=f"p95 - p5 of GPU compute speed, 0 .. {MAX_SPREAD:g} (default: 0.053 as measured; "
                        "0 for identical)")
    c.add_argument("--gpus-per-node", type=int_range(1, MAX_GPUS), default=8, metavar="K")
    c.add_argument("--seed", type=seed_int, default=0)
    c.add_argument("--out", required=True, help="cluster file to write (vibe.cluster/v1)")

    lo = cli.command("synth", "synthesize skewed, layer-varying expert loads", cmd_loads_synth, group="loads")
    shape = lo.add_mutually_exclusive_group(required=True)
    shape.add_argument("--model", choices=sorted(MODEL_PRESETS), help="shape the loads like this model")
    shape.add_argument("--layers", type=int_range(1, MAX_LAYERS), metavar="L",
                       help="MoE layers (with --experts and --top-k)")
    lo.add_argument("--experts", type=int_range(1, MAX_EXPERTS), metavar="E")
    lo.add_argument("--top-k", type=positive_int, metavar="K")
    lo.add_argument("--tokens", type=positive_int, default=8192, help="tokens in the profiled window (default: 8192)")
    lo.add_argument("--seed", type=seed_int, default=0)
    lo.add_argument("--out", required=True, help="loads file to write (vibe.loads/v1)")


def cmd_cluster_synth(args: argparse.Namespace) -> int:
    check_outputs([args.out])
    cluster = synth_cluster(args.gpus, scenario=args.scenario, seed=args.seed,
                            gpus_per_node=args.gpus_per_node, spread=args.spread)
    cluster.save(args.out)
    info = cluster.extra["synth"]
    compute = np.asarray(info["compute_factor"])
    slow = "" if info["slow_rank"] is None else f"; slow GPU: rank {info['slow_rank']}"
    console.print(f"{cluster.name}: {cluster.num_gpus} GPUs on {cluster.num_nodes} node(s), compute factors "
                  f"{compute.min():.3f}..{compute.max():.3f}{slow}")
    console.print(f"wrote {args.out}")
    return 0


def cmd_loads_synth(args: argparse.Namespace) -> int:
    check_outputs([args.out])
    if args.model:
        if args.experts is not None or args.top_k is not None:
            raise VibeError("--model sets the experts and top_k; drop --experts/--top-k")
        loads = synth_loads_for_model(args.model, seed=args.seed, tokens=args.tokens)
    else:
        if args.experts is None or args.top_k is None:
            raise VibeError("--layers needs --experts and --top-k")
        # float64 counts plus a few same-sized temporaries while drawing them
        check_size(8.0 * 5 * args.layers * args.experts, f"{args.layers} layers x {args.experts} experts",
                   "--layers or --experts")
        loads = synth_loads(args.layers, args.experts, args.top_k, seed=args.seed, tokens=args.tokens)
    loads.save(args.out)
    peak = max_over_mean(loads.counts)
    console.print(f"{loads.model or 'loads'}: {loads.num_layers} MoE layers x {loads.num_experts} experts, "
                  f"top-{loads.top_k}; busiest expert {peak.min():.1f}..{peak.max():.1f}x the mean "
                  f"(median {np.median(peak):.1f}x)")
    console.print(f"wrote {args.out}")
    return 0
