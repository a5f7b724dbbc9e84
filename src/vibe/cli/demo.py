"""`vibe demo`: synthesize a cluster with one power-capped GPU and a realistic workload,
place with every policy, compare them with the cost model, plot the worst layers."""

from __future__ import annotations

import argparse

from vibe.cli._common import MAX_GPUS, check_slots, console, int_range, nonneg_int, seed_int
from vibe.synth import MODEL_PRESETS, SCENARIOS


def register(cli) -> None:
    p = cli.command("demo", "compare every placement policy on a synthesized cluster and workload", cmd_demo)
    p.add_argument("--out-dir", default="demo-out", help="folder for the plot and files (default: demo-out)")
    p.add_argument("--model", choices=sorted(MODEL_PRESETS), default="deepseek-v2-lite",
                   help="shape of the workload (default: deepseek-v2-lite)")
    p.add_argument("--gpus", type=int_range(1, MAX_GPUS), default=8, metavar="N", help="GPUs in the EP group (default: 8)")
    p.add_argument("--scenario", choices=SCENARIOS, default="power-cap",
                   help="hardware scenario (default: power-cap, one GPU capped 20%%)")
    p.add_argument("--redundant", type=nonneg_int, default=0, metavar="R", help="extra replica slots per layer")
    p.add_argument("--seed", type=seed_int, default=0)


def cmd_demo(args: argparse.Namespace) -> int:
    from vibe.io import check_output_dir
    from vibe.report.demo import run_demo  # matplotlib loads only when the demo runs
    from vibe.synth.loads import MODEL_PRESETS as SHAPES

    check_output_dir(args.out_dir)
    layers, experts = SHAPES[args.model][:2]
    check_slots(experts, args.redundant, args.gpus, layers)
    run_demo(args.out_dir, model=args.model, num_gpus=args.gpus, scenario=args.scenario, seed=args.seed,
             redundant=args.redundant, console=console)
    return 0
