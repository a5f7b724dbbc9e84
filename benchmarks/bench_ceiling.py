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

    nice .venv/bin/python benchmarks/bench_ceiling.py [--quick] [--real] [--markdown out.md] [--plot p.png]
    nice .venv/bin/python benchmarks/bench_ceiling.py --robust 32:58.5   # vibe --robust at scale (~3 min)
    nice .venv/bin/python benchmarks/bench_ceiling.py --no-network --sizes 8 16

Full run with --real: about 20 minutes on the shared 2-core machine.
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
REFINE = 8
FRACTIONS = tuple(round(0.3 + 0.1 * i, 1) for i in range(14))  # 0.3 .. 1.6 of the calibrated capacity


NETWORK = True  # --no-network: bench_sim.py's scale-study cluster, all-to-all after the layer


def setup(G: int, R: int):
    """Capped cluster (with the network block unless --no-network), DeepSeek-V3 loads,
    eplb and vibe plans."""
    cluster = synth_cluster(G, scenario="power-cap", seed=0, gpus_per_node=PER_NODE)
    cluster = cluster.with_network() if NETWORK else cluster
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


def sweep_rows(spec, cluster, loads, plans, qps, seeds, workers) -> tuple[dict, dict, dict, tuple]:
    """(QPS at 90% SLO, {knee: P90 TTFT}, idle at the barrier) per policy, and eplb's two
    knees (last QPS meeting 90% SLO, first missing it). The coarse QPS grid is refined with REFINE points between the last point where
    every policy meets 90% SLO and the first where none does (one more sweep)."""
    placements = {**plans, CEILING: plans["eplb"]}  # the ceiling takes eplb's slot count
    rows = run_sweep(spec, cluster, loads, placements, qps, list(seeds), workers)
    agg = aggregate(rows)
    ok = {q: [a["slo_attainment"] >= 0.9 for a in agg if a["qps"] == q] for q in qps}
    lo = max([q for q in qps if all(ok[q])] or [qps[0]])
    hi = min([q for q in qps if q > lo and not any(ok[q])] or [qps[-1]])
    fine = [round(x, 2) for x in np.linspace(lo, hi, REFINE + 2)[1:-1]]
    if fine:
        rows += run_sweep(spec, cluster, loads, placements, fine, list(seeds), workers)
        agg = aggregate(sorted(rows, key=lambda r: (list(placements).index(r["policy"]), r["qps"], r["seed"])))
    qps = sorted(set(qps) | set(fine))
    best = sustained_qps(agg)
    # eplb's knee from both sides: the last QPS where it meets 90% SLO, the first where not
    att = {a["qps"]: a["slo_attainment"] for a in agg if a["policy"] == "eplb"}
    knees = (max([q for q in qps if att[q] >= 0.9] or [qps[0]]), min([q for q in qps if att[q] < 0.9] or [qps[-1]]))
    p90 = {k: {a["policy"]: a["p90_ttft_ms"] for a in agg if a["qps"] == k} for k in knees}
    idle = {p: float(np.mean([a["idle_at_barrier"] for a in agg if a["policy"] == p])) for p in placements}
    return best, p90, idle, knees


def row_lines(label: str, best, p90, idle) -> list[str]:
    out = []
    k1, k2 = p90
    for pol in ("eplb", "vibe", CEILING):
        q, qe = best[pol], best["eplb"]
        rel = "-" if q is None or qe is None else f"{100 * (q / qe - 1):+.1f}%"
        ttft = " | ".join(f"{p90[k][pol]:,.0f} ({100 * (p90[k][pol] / p90[k]['eplb'] - 1):+.1f}%)" for k in (k1, k2))
        out.append(f"| {label} | {pol} | {'-' if q is None else f'{q:.2f}'} | {rel} | {ttft} | {100 * idle[pol]:.1f}% |")
        print(out[-1], flush=True)
    return out


HEAD = ["| case | policy | QPS at 90% SLO | vs eplb | P90 TTFT ms at eplb's last QPS >= 90% SLO (vs eplb) | "
        "at its first QPS < 90% | idle at barrier |", "|---|---|---|---|---|---|---|"]


def serving(sizes, replicas: bool, duration: float, seeds, workers, gains: list | None = None) -> list[str]:
    """The scale study's table; `gains` collects (G, R, vibe, ceiling) QPS gains over eplb."""
    lines = list(HEAD)
    for G in sizes:
        R = G if replicas else 0
        cluster, loads, plans = setup(G, R)
        sched = SchedulerConfig(max_batch_tokens=1024 * G, max_running=32 * G)
        cal = calibrate(MODEL, cluster, loads, plans["eplb"], scheduler=sched)
        spec = SweepSpec(MODEL, duration_s=duration, slo_ttft_ms=cal["slo_ttft_ms"],
                         slo_tpot_ms=cal["slo_tpot_ms"], scheduler=sched)
        qps = [round(f * cal["capacity_qps"], 2) for f in FRACTIONS]
        best, p90, idle, knees = sweep_rows(spec, cluster, loads, plans, qps, seeds, workers)
        lines += row_lines(f"{G} GPUs, R = {R}", best, p90, idle)
        print(f"  (QPS {qps}, eplb's knees {knees})", flush=True)
        if gains is not None and None not in best.values():
            gains.append((G, R, best["vibe"] / best["eplb"] - 1, best[CEILING] / best["eplb"] - 1))
    return lines


def plot_gains(gains: list, path: Path) -> None:
    """QPS at 90% SLO over eplb's, vibe and the ceiling, against EP size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for replicas, style in ((False, "-"), (True, "--")):
        pts = sorted(g for g in gains if (g[1] > 0) == replicas)
        label = "one replica per GPU" if replicas else "no replicas"
        ax.plot([g[0] for g in pts], [100 * g[3] for g in pts], style, color="C2", marker="s",
                label=f"ceiling (any plan, re-made every step), {label}")
        ax.plot([g[0] for g in pts], [100 * g[2] for g in pts], style, color="C0", marker="o", label=f"vibe, {label}")
    ax.axhline(5, color="C3", linewidth=1, linestyle=":", label="issue 11 target (+5%)")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs in the EP group")
    ax.set_ylabel("highest QPS at 90% SLO vs eplb (%)")
    ax.set_title("DeepSeek-V3 shape, one GPU capped 20%, network block on", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def robust_check(G: int, q0: float, duration: float, seeds, workers) -> list[str]:
    """vibe --robust (planned on sampled steps of a pilot run's sizes) against vibe and eplb
    on G GPUs with one replica per GPU, QPS 0.9-1.12 x q0 (about eplb's QPS at 90% SLO)."""
    from bench_robust import StepRecorder

    from vibe.sim import poisson_workload, simulate

    cluster, loads, plans = setup(G, G)
    sched = SchedulerConfig(max_batch_tokens=1024 * G, max_running=32 * G)
    rec = StepRecorder(loads.top_k)
    simulate(poisson_workload(q0, 15.0, 1024, 128, 0), cluster, loads, plans["eplb"], MODEL, sched, seed=0, online=rec)
    plans["vibe robust"] = place(loads, cluster, "vibe", PlacementOptions(
        redundant=G, robust=True, extras={"step_tokens": np.array(rec.sizes, dtype=np.float64)}))
    cal = calibrate(MODEL, cluster, loads, plans["eplb"], scheduler=sched)
    spec = SweepSpec(MODEL, duration_s=duration, slo_ttft_ms=cal["slo_ttft_ms"], slo_tpot_ms=cal["slo_tpot_ms"],
                     scheduler=sched)
    qps = [round(q0 * f, 2) for f in (0.9, 0.95, 0.98, 1.0, 1.02, 1.05, 1.08, 1.12)]
    agg = aggregate(run_sweep(spec, cluster, loads, plans, qps, list(seeds), workers))
    best = sustained_qps(agg)
    lines = ["| policy | QPS at 90% SLO | vs eplb | idle at barrier |", "|---|---|---|---|"]
    for p in plans:
        idle = float(np.mean([a["idle_at_barrier"] for a in agg if a["policy"] == p]))
        lines.append(f"| {p} | {best[p]:.2f} | {100 * (best[p] / best['eplb'] - 1):+.1f}% | {100 * idle:.1f}% |")
        print(lines[-1], flush=True)
    return [f"{G} GPUs, R = {G}, pilot of eplb at {q0} QPS ({len(rec.sizes)} steps):", ""] + lines


def real(duration: float, seeds, workers) -> list[str]:
    from vibe.engines.esft import load_esft_loads

    esft = DATA / "routing" / "esft-dsv2lite" / "intent"
    azure = DATA / "request-traces" / "AzureLLMInferenceTrace_conv.csv"
    if not esft.is_dir() or not azure.is_file():
        print(f"skipping --real: {esft} or {azure} not found")
        return []
    from vibe.sim.requests import read_azure_trace

    model = PRESETS["deepseek-v2-lite"]
    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    loads = load_esft_loads(esft)
    plans = {p: place(loads, cluster, p, PlacementOptions()) for p in ("eplb", "vibe")}
    az = read_azure_trace(azure)  # calibrated as bench_robust.py: on linear, the trace's mean lengths
    cal = calibrate(model, cluster, loads, place(loads, cluster, "linear"), int(az.input_len.mean()),
                    int(az.output_len.mean()))
    spec = SweepSpec(model, duration_s=duration, request_trace=str(azure), routing_trace=str(esft),
                     slo_ttft_ms=cal["slo_ttft_ms"], slo_tpot_ms=cal["slo_tpot_ms"])
    qps = [round(f * cal["capacity_qps"], 1) for f in (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)]
    best, p90, idle, knees = sweep_rows(spec, cluster, loads, plans, qps, seeds, workers)
    print(f"  (QPS {qps}, eplb's knees {knees})", flush=True)
    return list(HEAD) + row_lines("ESFT + Azure, 8 GPUs", best, p90, idle)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8, 64 and 256 GPUs, one seed")
    ap.add_argument("--real", action="store_true", help="also the real-input case (ESFT + Azure, 8 GPUs)")
    ap.add_argument("--duration", type=float, default=20.0, help="simulated seconds of arrivals")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    ap.add_argument("--plot", default=None, help="also plot the scale study's QPS gains to this PNG")
    ap.add_argument("--robust", default=None, metavar="G:QPS",
                    help="only vibe --robust vs vibe and eplb on G GPUs around QPS (e.g. 32:58.5)")
    ap.add_argument("--no-network", action="store_true", help="clusters without the network block")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="EP sizes (default 8 .. 256)")
    args = ap.parse_args()
    global NETWORK
    NETWORK = not args.no_network
    sizes = args.sizes or ((8, 64, 256) if args.quick else SIZES)
    seeds = range(1 if args.quick else args.seeds)
    if args.robust:
        G, q0 = args.robust.split(":")
        text = robust_check(int(G), float(q0), args.duration, range(args.seeds), args.workers)
        if args.markdown:
            write_text_atomic(args.markdown, "\n".join(text) + "\n")
        return 0
    text, gains = full_steps(sizes) + [""], []
    for replicas in (False, True):
        text += serving(sizes, replicas, args.duration, seeds, args.workers, gains) + [""]
    if args.plot:
        plot_gains(gains, Path(args.plot))
    if args.real:
        text += real(args.duration, seeds, args.workers) + [""]
    if args.markdown:
        write_text_atomic(args.markdown, "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
