"""`vibe place` and `vibe evaluate`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from rich.table import Table

from vibe.cli._common import (add_comm_arg, load_cluster, add_operating_points, check_outputs, check_slots, console, err_console, fmt_us,
                              nonneg_int, operating_points, positive_float, positive_int, seed_int)
from vibe.cost import evaluate, normalize_weights, weighted_moe_time
from vibe.errors import InputError, VibeError
from vibe.io import require_file
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions, available_policies, place
from vibe.stochastic import DEFAULT_SAMPLES, check_trace_matches, expected_step_time, load_traces

ENGINE_FORMATS = ("vibe", "sglang", "trtllm")


def register(cli) -> None:
    p = cli.command("place", "choose which GPU holds which expert, per MoE layer", cmd_place)
    p.add_argument("--cluster", required=True, help="vibe.cluster/v1 file")
    add_comm_arg(p)
    p.add_argument("--loads", required=True, help="vibe.loads/v1 file")
    p.add_argument("--policy", default="vibe", help=f"one of: {', '.join(available_policies())} (default: vibe)")
    p.add_argument("--redundant", type=nonneg_int, default=0, metavar="R", help="extra replica slots per layer")
    p.add_argument("--num-groups", type=positive_int, default=None, metavar="N",
                   help="expert groups kept inside one node (hierarchical placement)")
    add_operating_points(p)
    p.add_argument("--split", choices=("even", "speed"), default="even",
                   help="how replicas share tokens: evenly (engines) or by GPU speed (writes replica_weights)")
    p.add_argument("--robust", action="store_true",
                   help="optimise the expected per-step makespan over re-sampled batches (from --traces when "
                        "given, else drawn from the loads' average shares)")
    p.add_argument("--traces", default=None,
                   help="token-level routing traces (.npz vibe trace or ESFT domain folder); implies --robust")
    p.add_argument("--samples", type=positive_int, default=None, metavar="K",
                   help="re-sampled steps per operating point for --robust, or in all with --step-tokens "
                        "(default: 64 in all, at least 16 per point)")
    p.add_argument("--step-tokens", nargs="+", default=None, metavar="N|FILE",
                   help="token counts of observed serving steps (numbers, or files of numbers); --robust then "
                        "re-samples steps of these sizes instead of the operating points; implies --robust")
    p.add_argument("--time-limit", type=positive_float, default=60.0, metavar="S", help="for search policies (exact)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--format", nargs="+", choices=ENGINE_FORMATS, default=["vibe"],
                   help="also write engine files next to --out: OUT.sglang.json, OUT.trtllm.yaml")
    p.add_argument("--num-hidden-layers", type=positive_int, default=None,
                   help="decoder layers of the model, for SGLang's layer axis and TensorRT-LLM's MTP layer ids "
                        "(default: last MoE layer + 1)")
    p.add_argument("--mtp-layers", type=nonneg_int, default=None, metavar="N",
                   help="trtllm: MTP MoE layers num_hidden_layers + i to add (default: the model's, "
                        "DeepSeek-V3/R1: 1, others 0); they get the last MoE layer's assignment")
    p.add_argument("--out", required=True, help="placement file to write (vibe.placement/v1)")

    e = cli.command("evaluate", "predict what a placement costs (cost model + lower bounds)", cmd_evaluate)
    e.add_argument("--cluster", required=True)
    add_comm_arg(e)
    e.add_argument("--loads", required=True)
    e.add_argument("--placement", required=True)
    add_operating_points(e)
    e.add_argument("--no-lower-bound", action="store_true", help="skip the LP lower bound (faster)")
    e.add_argument("--traces", default=None,
                   help="also report the expected per-step MoE time over batches re-sampled from these "
                        "token-level traces (.npz vibe trace or ESFT domain folder)")
    e.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES, metavar="K",
                   help=f"re-sampled steps per operating point for --traces (default: {DEFAULT_SAMPLES})")
    e.add_argument("--seed", type=seed_int, default=0, help="seed of the re-sampling")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def options_from_args(args: argparse.Namespace, num_gpus: int) -> PlacementOptions:
    extras = {}
    if getattr(args, "traces", None):
        extras["traces_path"] = args.traces
    if getattr(args, "samples", None) is not None:
        if args.samples < 1:
            raise VibeError("--samples must be >= 1")
        extras["robust_samples"] = args.samples
    if getattr(args, "step_tokens", None):
        extras["step_tokens"] = read_step_tokens(args.step_tokens)
    return PlacementOptions(redundant=args.redundant, num_groups=args.num_groups,
                            batch_tokens=operating_points(args, num_gpus),
                            weights=None if args.weights is None else tuple(args.weights),
                            seed=args.seed, split=args.split, robust=args.robust or bool(extras.get("traces_path"))
                            or "step_tokens" in extras,
                            time_limit_s=args.time_limit, extras=extras)


def read_step_tokens(values: list[str]) -> np.ndarray:
    """[M] step sizes from numbers and/or files of numbers (whitespace, comma or a JSON list)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
            continue
        except ValueError:
            pass
        path = Path(v)
        require_file(path, "a file of step sizes")
        text = path.read_text().replace("[", " ").replace("]", " ").replace(",", " ").split()
        try:
            out.extend(float(x) for x in text)
        except ValueError:
            raise InputError(path, "step sizes must be numbers") from None
    sizes = np.array(out)
    if sizes.size == 0 or not np.all(np.isfinite(sizes)) or sizes.min() < 1:
        raise VibeError("--step-tokens: step sizes must be token counts >= 1")
    return sizes


def read_traces(path: str, loads: ExpertLoads):
    """The routing trace at `path`, checked against the loads (one-line error if not)."""
    trace = load_traces(path)
    check_trace_matches(trace, loads, path)
    return trace


def step_stats(placement: Placement, loads: ExpertLoads, cluster: Cluster, batch_tokens, samples: int, seed: int,
               trace) -> list:
    """Expected per-step MoE time at each operating point (vibe.stochastic)."""
    return [expected_step_time(placement, loads, cluster, b, samples, seed + i, trace)
            for i, b in enumerate(batch_tokens)]


def engine_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {"sglang": Path(f"{stem}.sglang.json"), "trtllm": Path(f"{stem}.trtllm.yaml")}


def cmd_place(args: argparse.Namespace) -> int:
    from vibe.engines.sglang import placement_to_sglang
    from vibe.engines.trtllm import trtllm_placement_yaml
    from vibe.io import json_default, write_text_atomic

    out = Path(args.out)
    check_outputs([out, *(engine_paths(out)[f] for f in args.format if f != "vibe")],
                  [args.cluster, args.loads, args.traces])
    cluster = load_cluster(args.cluster, args.comm)
    loads = ExpertLoads.load(args.loads)
    check_slots(loads.num_experts, args.redundant, cluster.num_gpus, loads.num_layers)
    options = options_from_args(args, cluster.num_gpus)
    if options.weights is not None:
        normalize_weights(options.batch_tokens, options.weights)
    if args.traces:  # read once here: bad traces fail before any solving, with the file named
        options = dataclasses.replace(options, extras=dict(options.extras, traces=read_traces(args.traces, loads)))
    if args.split == "speed" and args.redundant == 0:
        raise VibeError("--split speed shares tokens between replicas: it needs --redundant R > 0")
    placement = place(loads, cluster, args.policy, options)
    if args.split == "speed" and placement.replica_weights is None:
        err_console.print(f"vibe: warning: policy {args.policy!r} ignores --split speed (it writes no "
                          "replica_weights): its replicas split evenly")
    # Build every output in memory and check every target first, so that a failure
    # leaves no file behind (each write is atomic on its own).
    paths = engine_paths(out)
    outputs: list[tuple[Path, str]] = [(out, json.dumps(placement.to_dict(), default=json_default) + "\n")]
    if "sglang" in args.format:
        outputs.append((paths["sglang"], json.dumps(placement_to_sglang(placement, args.num_hidden_layers)) + "\n"))
    notes = []
    if "trtllm" in args.format:
        from vibe.engines.trtllm import default_mtp_layers, load_balancer_applies

        mtp = default_mtp_layers(loads.model) if args.mtp_layers is None else args.mtp_layers
        outputs.append((paths["trtllm"], trtllm_placement_yaml(placement, args.num_hidden_layers, mtp)))
        why = load_balancer_applies(loads.model, cluster.num_gpus)
        if why:
            notes.append(f"warning: {paths['trtllm']}: {why}")
        if mtp:
            notes.append(f"{paths['trtllm']}: {mtp} MTP layer(s) from decoder layer "
                         f"{(args.num_hidden_layers or max(placement.layer_ids) + 1)} (--mtp-layers)")
    for path, _ in outputs:
        if path.is_dir():
            raise VibeError(f"{path}: is a folder, cannot write the placement there")
    # Predict before writing: a placement whose predicted time overflows is not written.
    points = evaluate(placement, loads, cluster, options.batch_tokens, options.weights, with_lower_bound=False)
    _check_finite(points, args.cluster)
    for path, text in outputs:
        write_text_atomic(path, text)
    written = [str(path) for path, _ in outputs]
    summary = ", ".join(f"B={p.batch_tokens:g}: {fmt_us(p.moe_time_us)}" for p in points)
    console.print(f"[bold]{args.policy}[/]: {loads.num_layers} layers x {placement.num_slots} slots on "
                  f"{cluster.num_gpus} GPUs; predicted {_what(cluster)} per step {summary}")
    if placement.replica_weights is not None:
        even = dataclasses.replace(placement, replica_weights=None)
        points_even = evaluate(even, loads, cluster, options.batch_tokens, options.weights, with_lower_bound=False)
        console.print("  replicas split evenly (what engines do): " + ", ".join(
            f"B={p.batch_tokens:g}: {fmt_us(p.moe_time_us)}" for p in points_even)
            + "; the time above needs a runtime that honours replica_weights")
    if options.robust:
        trace = options.extras.get("traces")
        stats = step_stats(placement, loads, cluster, options.batch_tokens,
                           options.extras.get("robust_samples", DEFAULT_SAMPLES), options.seed + 1, trace)
        console.print("  expected per-step MoE time (" + (f"steps re-sampled from {args.traces}" if trace else
                                                         "multinomial steps") + "): " + ", ".join(
            f"B={s.batch_tokens:g}: {fmt_us(s.mean_us)}" for s in stats))
    console.print("wrote " + ", ".join(written))
    if "sglang" in args.format:
        from vibe.engines.sglang import sglang_flags

        console.print(f"SGLang: --tp-size {cluster.num_gpus} {sglang_flags(placement, paths['sglang'])} "
                      "(plus --moe-a2a-backend deepep or another EP backend)", soft_wrap=True)
    for note in notes:
        console.print(note, soft_wrap=True, markup=False)
    return 0


def _what(cluster: Cluster) -> str:
    """What the predicted time holds: the all-to-all too when the network block is on."""
    return "MoE time" if cluster.network is None else "MoE + all-to-all time"


def _check_finite(points, source: str) -> None:
    """Refuse predictions that overflowed (curves or batch sizes too large to add up)."""
    for p in points:
        if not math.isfinite(p.moe_time_us):
            raise InputError(source, f"the predicted MoE time at B={p.batch_tokens:g} overflows; "
                                     "its latency curves or --batch-tokens are too large")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vibe.bounds import bound_kind  # which bound the lower-bound column is
    cluster = load_cluster(args.cluster, args.comm)
    loads = ExpertLoads.load(args.loads)
    placement = Placement.load(args.placement)
    placement.check_fits(cluster, args.placement)
    placement.check_matches(loads, args.placement)
    if args.samples < 1:
        raise VibeError("--samples must be >= 1")
    trace = read_traces(args.traces, loads) if args.traces else None
    batch_tokens = operating_points(args, cluster.num_gpus)
    points = evaluate(placement, loads, cluster, batch_tokens, args.weights,
                      with_lower_bound=not args.no_lower_bound)
    _check_finite(points, args.cluster)
    steps = step_stats(placement, loads, cluster, batch_tokens, args.samples, args.seed, trace) if trace else None
    if args.json:
        out = {"policy": placement.policy, "num_gpus": cluster.num_gpus,
               "num_slots": placement.num_slots,
               "lower_bound": None if args.no_lower_bound else bound_kind(placement.num_slots, loads.num_experts),
               "weighted_moe_time_us": weighted_moe_time(points),
               "operating_points": [p.to_dict() for p in points]}
        if steps:
            out["per_step"] = [s.to_dict() for s in steps]
        print(json.dumps(out))
        return 0
    table = Table(title=f"{placement.policy or 'placement'} on {cluster.name} ({cluster.num_gpus} GPUs, "
                        f"{placement.num_slots} slots/layer)")
    lb = "lower bound" if cluster.network is None else "lower bound (no all-to-all)"  # vibe.bounds ignores C
    for col in ("batch tokens", f"{_what(cluster)} / step", lb, "ratio to LB", "imbalance", "idle at barrier"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(f"{p.batch_tokens:g}", fmt_us(p.moe_time_us),
                      "-" if p.lower_bound_us is None else fmt_us(p.lower_bound_us),
                      "-" if p.ratio_to_lb is None else f"{p.ratio_to_lb:.4f}",
                      f"{p.imbalance:.4f}", f"{100 * p.idle_fraction:.1f}%")
    console.print(table)
    if not args.no_lower_bound:
        console.print(f"lower bound: {bound_kind(placement.num_slots, loads.num_experts)}")
    if steps:
        console.print(f"per-step MoE time over {args.samples} batches re-sampled from {args.traces}: " + ", ".join(
            f"B={s.batch_tokens:g}: mean {fmt_us(s.mean_us)} (p95 {fmt_us(s.p95_us)}, "
            f"{s.mean_us / p.moe_time_us:.3f}x the average-load prediction)" for s, p in zip(steps, points)))
    return 0
