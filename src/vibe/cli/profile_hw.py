"""`vibe profile hw`, `vibe profile import` and `vibe profile compare`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from vibe.cli._common import (MAX_GPUS, check_outputs, console, err_console, fmt_us, int_range, nonneg_float, nonneg_int,
                             positive_float, positive_int, seed_int)
from vibe.errors import InputError
from vibe.model import Cluster, GpuProfile
from vibe.profile.fit import FIT_METHODS, fit_curve

DTYPE_CHOICES = ("bf16", "fp16", "fp8", "fp32")  # = vibe.profile.hardware.DTYPES (no torch import here)


def register(cli) -> None:
    p = cli.command("hw", "measure each device's expert FFN latency curve for real (torch)", cmd_hw,
                    group="profile")
    p.add_argument("--hidden", type=positive_int, required=True, help="model hidden size H")
    p.add_argument("--intermediate", type=positive_int, required=True, help="expert intermediate size I")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="bf16")
    p.add_argument("--devices", default="auto",
                   help="auto (all GPUs, else cpu), cpu, cuda (all GPUs) or a list: cuda:0,cuda:1")
    p.add_argument("--tokens", type=_int_list, default=None, metavar="N,N,...",
                   help="token counts (default 1,2,4..8192 on GPUs, 1..256 on cpu)")
    p.add_argument("--repeats", type=positive_int, default=15, help="rounds over the token grid (default 15)")
    p.add_argument("--warmup", type=nonneg_int, default=3)
    p.add_argument("--max-seconds", type=positive_float, default=60.0, help="stop the rounds after this (default 60)")
    p.add_argument("--threads", type=positive_int, default=None, help="cpu only: torch threads (default: torch's)")
    p.add_argument("--fit", choices=FIT_METHODS, default="isotonic", help="curve written (default isotonic)")
    p.add_argument("--num-experts", type=positive_int, default=256, help="router width for the per-layer overhead")
    p.add_argument("--top-k", type=positive_int, default=8)
    p.add_argument("--node", type=nonneg_int, default=0, help="node index written for these devices")
    p.add_argument("--name", default=None)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", required=True, help="cluster file to write (vibe.cluster/v1)")

    i = cli.command("import", "turn a measured MoE latency table or a fleet table into a cluster file",
                    cmd_import, group="profile")
    i.add_argument("table", metavar="TABLE", help="MoE latency table (.parquet) or fleet table (.csv)")
    i.add_argument("--out", required=True, help="cluster file to write (vibe.cluster/v1)")
    shape = i.add_argument_group("shape (default: DeepSeek-V3 when the table has it)")
    shape.add_argument("--hidden", type=positive_int, default=None)
    shape.add_argument("--intermediate", type=positive_int, default=None)
    shape.add_argument("--num-experts", type=positive_int, default=None)
    shape.add_argument("--top-k", "--topk", dest="topk", type=positive_int, default=None,
                       help="experts per token (--topk: the table's own spelling)")
    rows = i.add_argument_group("rows")
    rows.add_argument("--table-dtype", default=None, help="moe_dtype of the rows (e.g. fp8_block)")
    rows.add_argument("--kernel", default=None, help="kernel_source of the rows")
    rows.add_argument("--tp", type=positive_int, default=None, help="moe_tp_size (default 1)")
    rows.add_argument("--ep", type=positive_int, default=None, help="moe_ep_size the curve is taken from")
    rows.add_argument("--distribution", default=None, help="default: balanced or uniform")
    i.add_argument("--fit", choices=FIT_METHODS, default="isotonic")
    fleet = i.add_argument_group("fleet: spread the curve over real per-GPU speed factors")
    fleet.add_argument("--fleet", default=None, metavar="CSV", help="fleet table (gpu-variability/*.csv)")
    fleet.add_argument("--fleet-column", default=None, help="column of factors (default perf or PerfVar_classA)")
    fleet.add_argument("--base", default=None, help="when TABLE is a fleet CSV: cluster file whose GPU 0 curve is spread")
    fleet.add_argument("--num-gpus", type=int_range(1, MAX_GPUS), default=None, help="GPUs to draw (default 8 with a fleet, else 1)")
    fleet.add_argument("--gpus-per-node", type=int_range(1, MAX_GPUS), default=8)
    fleet.add_argument("--regime", choices=("compute", "all"), default="compute",
                       help="scale only the time above the memory floor (default) or the whole curve")
    fleet.add_argument("--seed", type=seed_int, default=0)
    i.add_argument("--name", default=None)

    c = cli.command("compare", "which GPUs got slower or faster between two profiles, and in which regime",
                    cmd_compare, group="profile")
    c.add_argument("a", metavar="A.json", help="reference cluster file")
    c.add_argument("b", metavar="B.json", help="new cluster file (same GPUs)")
    c.add_argument("--threshold", type=nonneg_float, default=0.03, help="relative change that counts (default 0.03)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# ---- hw ---------------------------------------------------------------------------------
def cmd_hw(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vibe.profile import hardware as hw

    check_outputs([args.out])
    devices = hw.resolve_devices(args.devices)
    spec = hw.ProfileSpec(hidden=args.hidden, intermediate=args.intermediate, dtype=args.dtype,
                          tokens=tuple(args.tokens or hw.default_tokens(devices)), warmup=args.warmup,
                          repeats=args.repeats, max_seconds=args.max_seconds, num_experts=args.num_experts,
                          top_k=args.top_k, seed=args.seed, threads=args.threads)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        tasks = {d: bar.add_task(f"profiling {d}", total=spec.repeats) for d in devices}
        profiles = hw.profile_devices(spec, devices, lambda d, k, n: bar.update(tasks[d], completed=k))
    cluster = hw.cluster_from_profiles(profiles, spec, args.fit, args.name, args.node)
    cluster.save(args.out)
    _print_hw_summary(cluster, devices)
    console.print(f"wrote {args.out}")
    return 0


def _print_hw_summary(cluster: Cluster, devices: list[str]) -> None:
    from vibe.profile.hardware import relative_speed

    speed = relative_speed(cluster)
    t = Table(title=f"{cluster.name}: expert {cluster.expert['hidden']}x{cluster.expert['intermediate']} "
                    f"{cluster.expert['dtype']}")
    for col in ("rank", "device", "name", f"t({_n(cluster.gpus[0].tokens[0])})",
                f"t({_n(cluster.gpus[0].tokens[-1])})", "overhead", "fit err", "knee",
                "hinge err", "vs median", "telemetry"):
        t.add_column(col, justify="right" if col not in ("device", "name", "telemetry") else "left")
    for g, dev, s in zip(cluster.gpus, devices, speed):
        t.add_row(str(g.rank), dev, g.name, fmt_us(g.latency_us[0]), fmt_us(g.latency_us[-1]),
                  fmt_us(g.overhead_us), f"{g.extra['fit']['max_rel_error']:.1%}",
                  _n(g.extra["fit"]["knee_tokens"]), f"{g.extra['fit']['hinge_max_rel_error']:.1%}", f"{s:.3f}x",
                  _telemetry_text(g.telemetry))
    console.print(t)


def _telemetry_text(tel: dict) -> str:
    parts = [f"{tel['sm_clock_mhz']:.0f} MHz" if "sm_clock_mhz" in tel else None,
             f"{tel['power_draw_w']:.0f}/{tel['power_limit_w']:.0f} W" if {"power_draw_w", "power_limit_w"} <= set(tel) else None,
             f"{tel['temp_c']:.0f} C" if "temp_c" in tel else None]
    return ", ".join(p for p in parts if p) or "-"


def _n(x: float) -> str:
    return f"{x:g}"


# ---- import -----------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    from vibe.profile import tables

    path = Path(args.table)
    check_outputs([args.out], [args.table, args.fleet, args.base])
    if path.suffix == ".csv":
        if args.base is None:
            raise InputError(path, "a fleet table needs --base CLUSTER.json (the curve to spread)")
        if args.fleet:
            raise InputError("--fleet", "TABLE is already a fleet table")
        base = Cluster.load(args.base)
        g0 = base.gpus[0]
        curve = {"tokens": g0.tokens, "us": g0.latency_us, "overhead_us": g0.overhead_us}
        fitted, report = g0.latency_us, dict(g0.extra.get("fit", {}))
        source = {"base": str(args.base), **base.extra.get("source", {})}
        expert, gpu_name, fleet_path = base.expert, g0.name, path
    else:
        curve, info = tables.curve_from_table(path, hidden=args.hidden, intermediate=args.intermediate,
                                              num_experts=args.num_experts, topk=args.topk,
                                              dtype=args.table_dtype, kernel=args.kernel, tp=args.tp,
                                              ep=args.ep, distribution=args.distribution)
        fitted, report = fit_curve(curve["tokens"], curve["us"], args.fit)
        source = {"table": path.name, **info, "one_token_expert_us": curve["one_token_expert_us"],
                  "derivation": "per-expert tokens n = num_tokens*topk/num_experts; overhead = intercept of "
                                "latency vs active experts at one token each; t(n) = (latency - overhead) / "
                                "(num_experts/ep) on the rows of the chosen EP size"}
        # With TP > 1 each GPU runs a 1/TP shard of every expert: the curve is the shard's.
        expert = {"hidden": info["hidden"], "intermediate": info["intermediate"] // info["tp"],
                  "dtype": info["dtype"]}
        gpu_name, fleet_path = info.get("device", "GPU"), Path(args.fleet) if args.fleet else None

    num_gpus = args.num_gpus or (8 if fleet_path else 1)
    if fleet_path:
        ids, factors = tables.read_fleet(fleet_path, args.fleet_column)
        pick = tables.sample_fleet(factors, num_gpus, args.seed, fleet_path)
        curves = tables.spread_curve(fitted, factors[pick], args.regime)
        fleet = [{"fleet": fleet_path.name, "id": ids[j], "factor": float(factors[j])} for j in pick]
        source["fleet"] = {"table": fleet_path.name, "gpus": len(ids), "seed": args.seed, "regime": args.regime,
                           "factor_min": float(factors.min()), "factor_max": float(factors.max())}
    else:
        if num_gpus < 1:
            raise InputError("--num-gpus", "must be >= 1")
        curves, fleet = np.tile(fitted, (num_gpus, 1)), [None] * num_gpus
    if args.gpus_per_node < 1:
        raise InputError("--gpus-per-node", "must be >= 1")
    raw = {"tokens": np.asarray(curve["tokens"]).tolist(), "us": np.asarray(curve["us"]).tolist()}
    gpus = [GpuProfile(rank=g, node=g // args.gpus_per_node, tokens=np.asarray(curve["tokens"], dtype=np.float64),
                       latency_us=curves[g], overhead_us=float(curve["overhead_us"]), name=gpu_name,
                       extra={k: v for k, v in (("samples", raw), ("fit", report), ("fleet", fleet[g])) if v})
            for g in range(num_gpus)]
    cluster = Cluster(gpus=tuple(gpus), name=args.name or f"{num_gpus}x{gpu_name}".replace(" ", "-"),
                      expert=expert, extra={"source": source})
    cluster.save(args.out)
    _print_import_summary(cluster, report, source)
    console.print(f"wrote {args.out}")
    return 0


def _print_import_summary(cluster: Cluster, report: dict, source: dict) -> None:
    g = cluster.gpus[0]
    if "table" in source and "kernel" in source:
        console.print(f"{source['table']}: {source.get('device', '?')} {source['kernel']} {source['dtype']}, "
                      f"shape {source['hidden']}x{source['intermediate']} E={source['num_experts']} "
                      f"top-{source['topk']}, EP {source['ep']} TP {source['tp']}, {source['distribution']} rows")
    console.print(f"per-expert curve: {len(g.tokens)} points, {_n(g.tokens[0])}..{_n(g.tokens[-1])} tokens; "
                  f"overhead {fmt_us(g.overhead_us)}")
    if report:
        console.print(f"fit {report['method']}: max error {report['max_rel_error']:.1%} (median "
                      f"{report['median_rel_error']:.1%}); floor {fmt_us(report['floor_us'])} up to "
                      f"{_n(round(report['knee_tokens'], 1))} tokens, then {report['slope_us_per_token']:.4f} us/token "
                      f"(hinge error {report['hinge_max_rel_error']:.1%})")
    if "fleet" in source:
        f = np.array([gg.extra["fleet"]["factor"] for gg in cluster.gpus])
        console.print(f"fleet {source['fleet']['table']}: {cluster.num_gpus} of {source['fleet']['gpus']} GPUs "
                      f"(seed {source['fleet']['seed']}), factors {f.min():.3f}..{f.max():.3f}, "
                      f"applied to the {source['fleet']['regime']} part")


# ---- compare ----------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    from vibe.profile.compare import compare_clusters

    a, b = Cluster.load(args.a), Cluster.load(args.b)
    rows = compare_clusters(a, b, args.threshold, source_b=args.b)
    if args.json:
        print(json.dumps(rows))
        return 0
    t = Table(title=f"{Path(args.b).name} vs {Path(args.a).name}: time ratio per regime (>1 = slower)")
    for col in ("rank", "name", "overall", "memory", "compute", "knee", "verdict"):
        t.add_column(col, justify="left" if col in ("name", "verdict") else "right")
    for r in rows:
        verdict = r["verdict"] if r["regime"] is None else f"{r['verdict']}, {r['regime']}"
        t.add_row(str(r["rank"]), r["name"], f"{r['ratio']:.3f}", f"{r['memory_ratio']:.3f}",
                  f"{r['compute_ratio']:.3f}", _n(round(r["knee_tokens"], 1)), verdict)
    console.print(t)
    changed = [r for r in rows if r["verdict"] != "same"]
    console.print(f"{len(changed)} of {len(rows)} GPUs changed by more than {args.threshold:.0%}")
    return 0
