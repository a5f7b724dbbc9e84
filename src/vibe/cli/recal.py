"""`vibe recalibrate` (repair a stale plan with few moves) and `vibe monitor` (watch live
statistics and repair on drift)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from vibe.cli._common import add_operating_points, console, fmt_us
from vibe.cli.place import ENGINE_FORMATS, options_from_args, read_traces
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.recal import drift as drift_defaults
from vibe.recal.repair import DEFAULT_HORIZON_STEPS, DEFAULT_LINK_GBPS

LOADS_FORMATS = ("vibe", "sglang", "trtllm")


def _objective_args(p: argparse.ArgumentParser) -> None:
    """The objective options of `vibe place` (replicas come from the plan itself)."""
    add_operating_points(p)
    p.add_argument("--robust", action="store_true",
                   help="optimise the expected per-step makespan over re-sampled batches")
    p.add_argument("--traces", default=None, help="token-level routing traces (.npz or ESFT folder); implies --robust")
    p.add_argument("--samples", type=int, default=None, metavar="K", help="re-sampled steps per operating point")
    p.add_argument("--num-groups", type=int, default=None, metavar="N",
                   help="expert groups kept inside one node (for the full re-solve)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(redundant=0, split="even", time_limit=60.0)


def _budget_args(p: argparse.ArgumentParser, default_moves: int | None) -> None:
    p.add_argument("--max-moves", type=int, default=default_moves, metavar="K",
                   help="most slot changes (a swap is two)" + (f" (default: {default_moves})" if default_moves else
                                                               " (default: no limit)"))
    p.add_argument("--max-bytes", type=float, default=None, metavar="N",
                   help="most bytes of expert weights to move (expert size from the cluster's 'expert')")
    p.add_argument("--horizon-steps", type=float, default=DEFAULT_HORIZON_STEPS, metavar="H",
                   help=f"worth-it rule: a move must gain, over H steps, more than the stall of moving its weights "
                        f"(default: {DEFAULT_HORIZON_STEPS:g})")
    p.add_argument("--link-gbps", type=float, default=DEFAULT_LINK_GBPS, metavar="GB/s",
                   help=f"bandwidth the weights move at, GB/s (default: {DEFAULT_LINK_GBPS:g}, one 400 Gb/s NIC)")
    p.add_argument("--format", nargs="+", choices=ENGINE_FORMATS, default=["vibe"],
                   help="also write engine files next to the plan: .sglang.json, .trtllm.yaml")
    p.add_argument("--num-hidden-layers", type=int, default=None,
                   help="decoder layers of the model, for SGLang's layer axis (default: last MoE layer + 1)")


def register(cli) -> None:
    r = cli.command("recalibrate", "repair a plan for new loads or changed GPUs with few expert moves",
                    cmd_recalibrate)
    r.add_argument("--cluster", required=True, help="vibe.cluster/v1 file (GPUs marked \"state\": \"down\" are lost)")
    r.add_argument("--loads", required=True,
                   help="the new loads: vibe.loads/v1 file, SGLang dump (.pt) or TensorRT-LLM statistics folder")
    r.add_argument("--loads-format", choices=LOADS_FORMATS, default=None,
                   help="format of --loads (default: sglang for .pt, trtllm for a folder, else vibe)")
    r.add_argument("--top-k", type=int, default=None, help="experts per token, for dumps that do not say (SGLang)")
    r.add_argument("--placement", required=True, help="the current plan (vibe.placement/v1)")
    r.add_argument("--down", type=int, nargs="+", default=[], metavar="RANK", help="GPUs lost (besides the cluster's)")
    _objective_args(r)
    _budget_args(r, None)
    r.add_argument("--no-full", action="store_true", help="skip the full re-solve used for comparison")
    r.add_argument("--out", required=True, help="repaired plan to write; its moves go to OUT.moves.json")
    r.add_argument("--json", action="store_true", help="print one JSON object (times, moves, full re-solve)")

    m = cli.command("monitor", "watch engine statistics; on drift write a repaired plan and its engine files",
                    cmd_monitor)
    m.add_argument("watch", metavar="PATH",
                   help="SGLang dump folder (*.pt), TensorRT-LLM EXPERT_STATISTIC_PATH folder, or a JSONL file "
                        "of per-step {\"counts\", \"gpu_us\"}")
    m.add_argument("--input-format", choices=("sglang", "trtllm", "jsonl"), default=None,
                   help="what PATH is (default: inferred)")
    m.add_argument("--cluster", required=True, help="vibe.cluster/v1 file, re-read when it changes")
    m.add_argument("--placement", required=True, help="the plan in service (vibe.placement/v1)")
    m.add_argument("--loads", required=True, help="the loads that plan was made for (vibe.loads/v1)")
    _objective_args(m)
    _budget_args(m, 30)
    m.add_argument("--window", type=int, default=drift_defaults.DEFAULT_WINDOW,
                   help=f"observations in the sliding window (default: {drift_defaults.DEFAULT_WINDOW})")
    m.add_argument("--tv-threshold", type=float, default=drift_defaults.DEFAULT_TV_THRESHOLD,
                   help=f"per-layer total-variation distance that counts as drift "
                        f"(default: {drift_defaults.DEFAULT_TV_THRESHOLD})")
    m.add_argument("--cos-threshold", type=float, default=drift_defaults.DEFAULT_COS_THRESHOLD,
                   help=f"per-layer cosine distance that counts as drift "
                        f"(default: {drift_defaults.DEFAULT_COS_THRESHOLD})")
    m.add_argument("--min-layers", type=int, default=None, help="drifted layers needed to fire (default: a quarter)")
    m.add_argument("--patience", type=int, default=drift_defaults.DEFAULT_PATIENCE,
                   help=f"consecutive drifted updates needed to fire (default: {drift_defaults.DEFAULT_PATIENCE})")
    m.add_argument("--hw-threshold", type=float, default=drift_defaults.DEFAULT_HW_THRESHOLD,
                   help=f"observed/predicted GPU time off by more than this is drift "
                        f"(default: {drift_defaults.DEFAULT_HW_THRESHOLD})")
    m.add_argument("--out-dir", default=None, help="where plans go (default: the folder of --placement)")
    m.add_argument("--once", action="store_true", help="process what is there now and exit")
    m.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds between polls (default: 10)")
    m.add_argument("--max-iterations", type=int, default=None, metavar="N", help="stop after N polls")


def _options(args: argparse.Namespace, placement: Placement, loads: ExpertLoads):
    """vibe place's PlacementOptions, with the plan's own replica count."""
    options = options_from_args(args, placement.num_gpus)
    if args.traces:
        options = dataclasses.replace(options, extras=dict(options.extras, traces=read_traces(args.traces, loads)))
    return dataclasses.replace(options, redundant=placement.num_redundant)


def _check_budget(args: argparse.Namespace) -> None:
    if args.max_moves is not None and args.max_moves < 0:
        raise VibeError("--max-moves must be >= 0")
    if args.horizon_steps <= 0 or args.link_gbps <= 0:
        raise VibeError("--horizon-steps and --link-gbps must be > 0")


def read_new_loads(args: argparse.Namespace, placement: Placement) -> ExpertLoads:
    """--loads in any accepted format, on the plan's layers (one-line error if it does not fit)."""
    from vibe.recal.sources import read_dump

    path = Path(args.loads)
    fmt = args.loads_format or ("sglang" if path.suffix == ".pt" else "trtllm" if path.is_dir() else "vibe")
    if fmt == "vibe":
        from vibe.io import read_json

        obj = read_json(path)
        if isinstance(obj, dict) and obj.get("schema") == "vibe.loads/v1":
            loads = ExpertLoads.from_dict(obj, path)
            placement.check_matches(loads, path)
            return loads
    return read_dump(path, fmt, placement, args.top_k)


def cmd_recalibrate(args: argparse.Namespace) -> int:
    from vibe.recal.monitor import plan_outputs, repair_report, write_outputs
    from vibe.recal.repair import count_moves, full_resolve, min_gain_per_move, objective_tokens, objective_us
    from vibe.recal.repair import repair_placement

    _check_budget(args)
    cluster = Cluster.load(args.cluster)
    placement = Placement.load(args.placement)
    placement.check_fits(cluster, args.placement)
    loads = read_new_loads(args, placement)
    options = _options(args, placement, loads)
    repair = repair_placement(placement, loads, cluster, options, args.max_moves, args.max_bytes, args.down,
                              min_gain_us=min_gain_per_move(cluster, args.horizon_steps, args.link_gbps))
    report = repair_report(repair, args.horizon_steps, args.link_gbps)
    if not args.no_full:
        full = full_resolve(placement, loads, cluster, options, args.down)
        tokens, w = objective_tokens(loads, options)
        report["full_resolve"] = {"after_us": objective_us(full, cluster, tokens, w),
                                  "num_moves": count_moves(placement, full)}
    written = write_outputs(plan_outputs(repair.placement, Path(args.out), args.format, args.num_hidden_layers,
                                         report))
    if args.json:
        print(json.dumps(dict(report, written=written)))
        return 0
    down = repair.placement.extra.get("down_gpus")
    before = fmt_us(repair.before_us) if report["before_us"] is not None else "no valid plan (lost GPU)"
    console.print(f"repair: {len(repair.moves)} moves ({repair.bytes_moved / 1e9:,.2f} GB, stall "
                  f"{report['stall_us'] / 1000:,.1f} ms at {args.link_gbps:g} GB/s); predicted {before} -> "
                  f"{fmt_us(repair.after_us)} per step" + (f"; GPUs {down} get no tokens" if down else ""))
    if "full_resolve" in report:
        f = report["full_resolve"]
        console.print(f"full re-solve: {f['num_moves']} moves, {fmt_us(f['after_us'])} per step")
    if report["before_us"] is not None:
        console.print("worth it over {:g} steps: {}".format(args.horizon_steps, "yes" if report["worth_it"] else "no"))
    console.print("wrote " + ", ".join(written))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from vibe.recal.monitor import Monitor, MonitorConfig

    _check_budget(args)
    if args.interval < 0 or (args.max_iterations is not None and args.max_iterations < 1):
        raise VibeError("--interval must be >= 0 and --max-iterations >= 1")
    placement = Placement.load(args.placement)
    profile = ExpertLoads.load(args.loads)
    placement.check_matches(profile, args.placement)
    config = MonitorConfig(
        max_moves=args.max_moves, max_bytes=args.max_bytes, horizon_steps=args.horizon_steps, link_gbps=args.link_gbps,
        formats=tuple(args.format), num_hidden_layers=args.num_hidden_layers,
        workload={"window": args.window, "tv_threshold": args.tv_threshold, "cos_threshold": args.cos_threshold,
                  "min_layers": args.min_layers, "patience": args.patience},
        hardware={"window": args.window, "threshold": args.hw_threshold})
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.placement).resolve().parent
    monitor = Monitor(args.watch, args.input_format, args.cluster, placement, profile,
                      _options(args, placement, profile), out_dir, config,
                      log=lambda line: console.print(line, markup=False, soft_wrap=True))
    monitor.run(args.interval, args.max_iterations, args.once)
    return 0
