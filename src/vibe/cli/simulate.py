"""`vibe simulate` (one serving simulation) and `vibe sweep` (policies x QPS x seeds)."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vibe.cli._common import (add_comm_arg, load_cluster, check_slots, console, err_console, finite_float, nonneg_float, nonneg_int,
                             positive_float, positive_int, seed_int)
from vibe.errors import InputError, VibeError
from vibe.io import check_output_dir
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions, available_policies, place
from vibe.sim.ceiling import CEILING


def register(cli) -> None:
    s = cli.command("simulate", "simulate serving with a placement: TTFT, TPOT, SLO attainment", cmd_simulate)
    s.add_argument("--placement", required=True, help="vibe.placement/v1 file")
    _add_common(s)
    s.add_argument("--qps", type=positive_float, default=None, help="request rate; required without --trace (with --trace: rescale the trace to it)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    o = s.add_argument_group("drift and online policies (see docs/simulator.md)")
    o.add_argument("--switch", action="append", default=[], metavar="T:LOADS[:TRACE]",
                   help="from T s on, route by LOADS (vibe.loads/v1 file or ESFT folder) or by TRACE (.npz or ESFT "
                        "folder); repeatable")
    o.add_argument("--lose-gpu", action="append", default=[], metavar="G:T", help="GPU G is lost at T s; repeatable")
    o.add_argument("--throttle", action="append", default=[], metavar="G:T:X",
                   help="GPU G takes (1 + X) x its time from T s on; repeatable")
    o.add_argument("--online", nargs="+", default=["none"], choices=("none", "periodic", "vibe"),
                   help="online policy; several: one run each, compared (default: none)")
    o.add_argument("--period-steps", type=int, default=None, metavar="N", help="periodic: steps between full re-solves")
    o.add_argument("--resolve-policy", default="vibe", help="periodic: the solver of the full re-solve")
    o.add_argument("--max-moves", type=int, default=None, metavar="K", help="vibe: moves per repair")
    o.add_argument("--link-gbps", type=float, default=None, help="GB/s per GPU for moved weights")
    o.add_argument("--detect-delay", type=float, default=None, metavar="S", help="seconds until a lost GPU is dropped")
    o.add_argument("--rehome-gbps", type=float, default=None, help="GB/s per GPU reloading a lost GPU's experts")
    o.add_argument("--window", type=float, default=None, metavar="S",
                   help="seconds per reporting window (default: duration / 12)")
    o.add_argument("--plot", default=None, metavar="PNG", help="write SLO attainment over time with drift events")

    w = cli.command("sweep", "simulate policies x QPS x seeds in parallel and write a report folder", cmd_sweep)
    _add_common(w)
    w.add_argument("--policies", nargs="+", default=None, metavar="NAME",
                   help=f"policies to place with (default: linear eplb vibe; available: {', '.join(available_policies())})")
    w.add_argument("--placements", nargs="+", default=[], metavar="FILE",
                   help="also (or only, without --policies) compare these vibe.placement/v1 files")
    w.add_argument("--redundant", type=nonneg_int, default=0, metavar="R", help="extra replica slots per layer")
    w.add_argument("--ceiling", action="store_true",
                   help="also the placement ceiling: every step timed at a lower bound of any plan with the first "
                        "placement's slots on that step's routing (what no placement can beat; docs/simulator.md)")
    w.add_argument("--qps", type=positive_float, nargs="+", required=True, metavar="X")
    w.add_argument("--seeds", type=seed_int, nargs="+", default=[0], metavar="K")
    w.add_argument("--workers", type=positive_int, default=None, help="local processes (default: all cores)")
    w.add_argument("--ray-address", default=None, help="run on a Ray cluster at this address (needs ray)")
    w.add_argument("--out", required=True, help="report folder to write")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, help="vibe.cluster/v1 file")
    add_comm_arg(p)
    p.add_argument("--loads", required=True, help="vibe.loads/v1 file (the routing profile)")
    p.add_argument("--model", default=None,
                   help="deepseek-v3, deepseek-v2-lite, qwen3-235b-a22b, mixtral-8x7b or a vibe.model/v1 .json "
                        "(default: the preset with the loads' shape)")
    p.add_argument("--trace", default=None, help="Azure LLM request trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens)")
    p.add_argument("--input-len", type=positive_int, default=1024, metavar="N", help="prompt tokens (Poisson workload)")
    p.add_argument("--output-len", type=positive_int, default=128, metavar="M", help="generated tokens (Poisson workload)")
    p.add_argument("--duration", type=positive_float, default=60.0, metavar="S", help="seconds of arrivals")
    p.add_argument("--max-requests", type=positive_int, default=None)
    p.add_argument("--slo-ttft-ms", type=positive_float, default=2000.0)
    p.add_argument("--slo-tpot-ms", type=positive_float, default=100.0)
    p.add_argument("--routing-trace", default=None,
                   help="token-level routing (.npz or ESFT folder) re-sampled every step instead of the loads profile")
    p.add_argument("--routing", choices=("sample", "expected"), default="sample",
                   help="per-step routed tokens: drawn (default) or their expectation (no noise)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=8192, help="token budget per step")
    p.add_argument("--max-running", type=positive_int, default=256, help="requests running at once")
    p.add_argument("--kv-tokens", type=positive_int, default=None, help="KV-cache capacity in tokens (default: unlimited)")
    p.add_argument("--jitter", type=finite_float(0, 1), default=0.0, metavar="CV",
                   help="per-step GPU time noise (log-normal sigma, 0 .. 1)")
    p.add_argument("--drift-gpus", type=nonneg_int, default=0, help="GPUs that heat up and slow down")
    p.add_argument("--drift-slowdown", type=finite_float(0, 10), default=0.15,
                   help="their final extra time fraction (0 .. 10)")
    p.add_argument("--drift-start", type=nonneg_float, default=120.0, metavar="S", help="earliest drift onset (s)")


def _spec(args: argparse.Namespace, loads: ExpertLoads):
    from vibe.sim.hardware import HardwareModel
    from vibe.sim.models import model_for_loads
    from vibe.sim.scheduler import SchedulerConfig
    from vibe.sim.sweep import SweepSpec

    if args.duration <= 0:
        raise VibeError("--duration must be > 0")
    if args.slo_ttft_ms <= 0 or args.slo_tpot_ms <= 0:
        raise VibeError("SLO limits must be > 0 ms")
    if args.trace is None and args.qps is None:
        raise VibeError("give --qps (Poisson arrivals) or --trace FILE")
    if args.trace is None:
        _check_requests(max(args.qps) if isinstance(args.qps, list) else args.qps, args.duration, args.max_requests,
                        args.input_len, args.output_len, args.max_batch_tokens)
    elif args.qps is not None:  # read now: a trace that cannot be rescaled fails before any work, by its name
        from vibe.sim.requests import read_azure_trace

        if not np.isfinite(read_azure_trace(args.trace).qps):
            raise InputError(args.trace, "its requests all arrive at one instant (or there is only one): it has "
                                         "no rate to rescale to --qps; drop --qps to replay it as it is")
    if args.drift_gpus > 0 and args.drift_start >= args.duration:
        err_console.print(f"vibe: warning: --drift-start {args.drift_start:g} s is past the end of the arrivals "
                          f"(--duration {args.duration:g} s): the drifting GPUs may never slow down")
    return SweepSpec(
        model=model_for_loads(loads, args.model, args.loads), duration_s=args.duration, input_len=args.input_len,
        output_len=args.output_len, request_trace=args.trace, max_requests=args.max_requests,
        slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms,
        scheduler=SchedulerConfig(args.max_batch_tokens, args.max_running, args.kv_tokens),
        hardware=HardwareModel(args.jitter, args.drift_gpus, args.drift_slowdown, args.drift_start),
        routing=args.routing, routing_trace=args.routing_trace)


# Poisson arrivals are drawn in one array and the simulator steps through every request:
# past these the run would take hours or allocate gigabytes.
MAX_REQUESTS = 1_000_000
MAX_ARRIVALS_DRAWN = 20_000_000


MAX_STEPS = 1_000_000  # tens of microseconds to milliseconds each


def _check_requests(qps: float, duration_s: float, max_requests: int | None, input_len: int, output_len: int,
                    max_batch_tokens: int) -> None:
    expected = qps * duration_s
    if expected > MAX_ARRIVALS_DRAWN or min(expected, max_requests or expected) > MAX_REQUESTS:
        raise VibeError(f"--qps {qps:g} for --duration {duration_s:g} s gives about {expected:,.0f} requests, over "
                        f"the {MAX_REQUESTS:,} a run simulates: lower --qps or --duration"
                        + ("" if expected > MAX_ARRIVALS_DRAWN else " (or set --max-requests)"))
    # At least: the last request's decode steps, plus every prompt token through the step budget.
    requests = max(1.0, min(expected, max_requests or expected))
    steps = output_len + requests * input_len / max_batch_tokens
    if steps > MAX_STEPS:
        raise VibeError(f"--input-len {input_len} / --output-len {output_len} for about {requests:,.0f} requests need "
                        f"over {steps:,.0f} steps (limit {MAX_STEPS:,}): lower them, --qps or --duration, or raise "
                        "--max-batch-tokens")


def _inputs(args: argparse.Namespace) -> tuple[Cluster, ExpertLoads]:
    return load_cluster(args.cluster, args.comm), ExpertLoads.load(args.loads)


def _check_trace(spec, placement: Placement) -> None:
    """Read the routing trace once up front so a bad file fails before any work."""
    if spec.routing_trace is not None:
        from vibe.sim.predictor import check_trace_matches
        from vibe.sim.sweep import routing_trace

        check_trace_matches(routing_trace(spec.routing_trace), placement, spec.routing_trace)


def _add_placement_files(placements: dict[str, Placement], paths: list[str], cluster: Cluster,
                         loads: ExpertLoads) -> None:
    """Add placement files to `placements`, labelled by their policy (by file name when
    that label is taken), each checked against the cluster and loads."""
    for path in paths:
        p = Placement.load(path)
        p.check_fits(cluster, path)
        p.check_matches(loads, path)
        label = p.policy or Path(path).stem
        placements[label if label not in placements else Path(path).name] = p


@contextlib.contextmanager
def _bar(label: str, total: int | None = None):
    """A transient rich progress bar on stderr: yields (progress, task id)."""
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        yield bar, bar.add_task(label, total=total)


def _fields(text: str, n: int, flag: str, form: str) -> list[str]:
    parts = text.split(":", n - 1)
    if len(parts) < n:
        raise VibeError(f"{flag} {text!r}: expected {form}")
    return parts


def _number(text: str, flag: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise VibeError(f"{flag}: {text!r} is not a number") from None


def _scenario_args(args: argparse.Namespace, placement: Placement):
    """--switch / --lose-gpu / --throttle -> (Scenario, throttles)."""
    from vibe.sim.hardware import Throttle
    from vibe.sim.predictor import load_routing_trace
    from vibe.sim.scenario import GpuLoss, RoutingSwitch, Scenario, check_scenario

    switches = []
    for text in args.switch:
        t, rest = _fields(text, 2, "--switch", "T:LOADS[:TRACE]")
        path, _, trace = rest.partition(":")
        if Path(path).is_dir():
            from vibe.engines.esft import load_esft_loads

            sw_loads = load_esft_loads(path)
        else:
            sw_loads = ExpertLoads.load(path)
        switches.append(RoutingSwitch(_number(t, "--switch"), sw_loads, load_routing_trace(trace) if trace else None,
                                      Path(path).name))
    losses = []
    for text in args.lose_gpu:
        g, t = _fields(text, 2, "--lose-gpu", "G:T")
        losses.append(GpuLoss(_number(g, "--lose-gpu", int), _number(t, "--lose-gpu")))
    throttles = []
    for text in args.throttle:
        g, t, x = _fields(text, 3, "--throttle", "G:T:X")
        throttles.append(Throttle(_number(g, "--throttle", int), _number(t, "--throttle"), _number(x, "--throttle")))
    events = [(f"--switch at {s.at_s:g} s", s.at_s) for s in switches]
    events += [(f"--lose-gpu at {l.at_s:g} s", l.at_s) for l in losses]
    events += [(f"--throttle at {x.start_s:g} s", x.start_s) for x in throttles]
    for name, t in events:  # an event after the last arrival may change nothing the table shows
        if args.duration is not None and t >= args.duration:
            err_console.print(f"vibe: warning: {name} is past the end of the arrivals ({args.duration:g} s, "
                              "--duration): it may show nothing", soft_wrap=True)
    kw = {k: v for k, v in (("detect_s", args.detect_delay), ("rehome_gbps", args.rehome_gbps)) if v is not None}
    sc = Scenario(tuple(switches), tuple(losses), **kw)
    check_scenario(sc, placement)
    return sc, tuple(throttles)


def _online_mode(args: argparse.Namespace) -> bool:
    return bool(args.switch or args.lose_gpu or args.throttle or args.plot or args.online != ["none"])


def cmd_simulate(args: argparse.Namespace) -> int:
    from vibe.sim.hardware import check_hardware
    from vibe.sim.sweep import run_point
    from vibe.sim.requests import check_qps

    cluster, loads = _inputs(args)
    placement = Placement.load(args.placement)
    placement.check_fits(cluster, args.placement)
    placement.check_matches(loads, args.placement)
    spec = _spec(args, loads)
    if args.qps is not None:
        check_qps(args.qps)
    check_hardware(spec.hardware, cluster.num_gpus)
    _check_trace(spec, placement)
    if _online_mode(args):
        return _simulate_online(args, spec, cluster, loads, placement)
    with _bar("simulating requests") as (bar, task):
        row = run_point(spec, cluster, loads, placement, placement.policy or "placement", args.qps, args.seed,
                        progress=lambda done, total: bar.update(task, completed=done, total=total))
    if args.json:
        print(json.dumps(row))
        return 0
    table = Table(title=f"{row['policy']}: {row['requests']} requests at {row['qps']:.3g} QPS on "
                        f"{cluster.num_gpus} GPUs ({spec.model.name}), {row['simulated_s']:.1f} s simulated")
    for col in ("", "P50", "P90", "P99", "mean"):
        table.add_column(col, justify="right")
    for key, label in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "end-to-end (ms)")):
        table.add_row(label, *(f"{row[key][k]:,.1f}" for k in ("p50", "p90", "p99", "mean")))
    console.print(table)
    st = row["steps"]
    console.print(f"SLO attainment (TTFT <= {spec.slo_ttft_ms:g} ms, TPOT <= {spec.slo_tpot_ms:g} ms): "
                  f"[bold]{100 * row['slo_attainment']:.1f}%[/]; throughput {row['throughput_tok_s']:,.0f} tok/s; "
                  f"{row['finished']}/{row['requests']} finished")
    console.print(f"{st['steps']} steps, mean {st['mean_step_ms']:.1f} ms ({100 * st['moe_share']:.0f}% MoE, "
                  f"{100 * st['a2a_share']:.0f}% all-to-all), {100 * st['idle_at_barrier']:.1f}% GPU time idle at "
                  f"MoE barriers; slowest GPU most often: {st['top_straggler_gpu']} "
                  f"({100 * max(st['straggler_share']):.0f}% of layers)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from vibe.sim.hardware import check_hardware
    from vibe.sim.report import write_report
    from vibe.sim.sweep import run_sweep
    from vibe.sim.requests import check_qps

    if args.ray_address:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise VibeError("--ray-address needs the 'ray' package, which is not installed "
                            "(pip install ray, or drop --ray-address to use local processes)")
    if args.workers is not None and args.workers < 1:
        raise VibeError("--workers must be >= 1")
    # The report folder is checked now: a file there would lose every simulated point.
    check_output_dir(args.out, "the sweep report")
    cluster, loads = _inputs(args)
    check_slots(loads.num_experts, args.redundant, cluster.num_gpus, loads.num_layers)
    spec = _spec(args, loads)
    check_hardware(spec.hardware, cluster.num_gpus)
    for q in args.qps:
        check_qps(q)
    default = [] if args.placements else [p for p in ("linear", "eplb", "vibe") if p in available_policies()]
    options = PlacementOptions(redundant=args.redundant)
    placements = {p: place(loads, cluster, p, options) for p in (args.policies or default)}
    _add_placement_files(placements, args.placements, cluster, loads)
    if args.ceiling:
        if CEILING in placements:
            raise VibeError(f"--ceiling: a placement is already labelled {CEILING!r}; rename its file")
        placements[CEILING] = next(iter(placements.values()))  # only its slots per GPU count
    _check_trace(spec, next(iter(placements.values())))
    with _bar("simulating points", len(placements) * len(args.qps) * len(args.seeds)) as (bar, task):
        rows = run_sweep(spec, cluster, loads, placements, args.qps, args.seeds, args.workers, args.ray_address,
                         progress=lambda done, total: bar.update(task, completed=done))
    title = f"{spec.model.name} on {cluster.num_gpus} GPUs ({cluster.name})"
    meta = {"cluster": args.cluster, "loads": args.loads, "model": spec.model.name, "seeds": args.seeds,
            "slo_ttft_ms": spec.slo_ttft_ms, "slo_tpot_ms": spec.slo_tpot_ms, "redundant": args.redundant}
    written = write_report(args.out, rows, title, meta)
    console.print((written["table.md"]).read_text())
    console.print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def _simulate_online(args: argparse.Namespace, spec, cluster: Cluster, loads: ExpertLoads, placement: Placement) -> int:
    """--online / --switch / --lose-gpu / --throttle: one run per online policy, a table
    per reporting window, the policies' moves and stalls, and optionally the plot."""
    import dataclasses

    from vibe.io import atomic_path
    from vibe.sim.hardware import check_hardware
    from vibe.sim.online import OnlineConfig, action_times, check_online, run_online
    from vibe.sim.report import plot_windows_png, totals_markdown, windows_markdown

    scenario, throttles = _scenario_args(args, placement)
    spec = dataclasses.replace(spec, hardware=dataclasses.replace(spec.hardware, throttles=throttles))
    check_hardware(spec.hardware, cluster.num_gpus)
    knobs = {k: v for k, v in (("period_steps", args.period_steps), ("max_moves", args.max_moves),
                               ("link_gbps", args.link_gbps)) if v is not None}
    options = PlacementOptions(redundant=placement.num_redundant)
    configs = {p: OnlineConfig(p, resolve_policy=args.resolve_policy, options=options, **knobs)
               for p in dict.fromkeys(args.online)}
    for c in configs.values():
        check_online(c)
    window = args.window if args.window is not None else args.duration / 12
    if not window > 0:
        raise VibeError("--window must be > 0 s")
    with _bar("simulating requests") as (bar, task):
        out = run_online(spec, cluster, loads, placement, args.qps, args.seed, scenario, configs, window,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    series = {p: r["windows"] for p, r in out["policies"].items()}
    if args.plot:
        png = plot_windows_png(series, out["events"], f"{spec.model.name} on {cluster.num_gpus} GPUs, "
                                                      f"{out['qps']:.3g} QPS: SLO attainment over time",
                               actions=action_times(out))
        with atomic_path(args.plot) as tmp:
            tmp.write_bytes(png)
    if args.json:
        print(json.dumps(_finite(out), default=float))
        return 0
    for e in sorted(out["events"], key=lambda e: e["t_s"]):
        console.print(f"{e['t_s']:8.2f} s  {e['kind']}: {e['detail']}")
    # plain print: markdown tables must not be wrapped at the terminal width
    print(windows_markdown(series))
    overall = {p: r["summary"]["slo_attainment"] for p, r in out["policies"].items()}
    print(totals_markdown({p: r["totals"] for p, r in out["policies"].items()}, None, overall))
    if args.plot:
        console.print(f"wrote {args.plot}")
    return 0


def _finite(obj):
    """NaN (an empty window's attainment) as null, so --json prints strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
