"""Serving-simulator benchmark (issue 6): speed, a paper-style QPS sweep, a scale study.

1. Speed: 10,000 requests of DeepSeek-V3 (1024-in / 128-out) on 8 GPUs; target < 60 s.
2. Paper-style: one 8-GPU EP group, DeepSeek-V3 shape (synthetic loads with real-router
   skew), GPUs with the measured few-percent spread plus one GPU power-capped (20% slower
   compute), policies linear / eplb / vibe over a QPS sweep, 3 seeds. SLOs come from the
   model (5x a lone prompt's step for TTFT, 2x a 64-request decode step for TPOT).
3. Real inputs: ESFT router decisions (DeepSeek-V2-Lite shape, re-sampled per step) and
   the Azure conversation trace (real arrivals and lengths, rescaled to each QPS), 8 GPUs.
4. Scale: 8 .. 256 GPUs at 65% and 85% of linear's estimated capacity, step
   budget and running cap growing with the group (data-parallel attention); once without
   replicas, once with one replica slot per GPU for eplb and vibe.

Numbers are whatever the simulator gives; nothing is tuned to the paper.

    .venv/bin/python benchmarks/bench_sim.py [--quick] [--workers 2] [--out out/bench-sim]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from vibe.engines.esft import load_esft_loads
from vibe.policies import PlacementOptions, available_policies, place
from vibe.sim import PRESETS, SchedulerConfig, poisson_workload, simulate, summarize
from vibe.sim.report import aggregate, plot_png, sustained_qps, write_report
from vibe.sim.sweep import SweepSpec, calibrate, run_sweep
from vibe.synth import synth_cluster, synth_loads_for_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
AZURE = DATA / "request-traces" / "AzureLLMInferenceTrace_conv.csv"
ESFT = DATA / "routing" / "esft-dsv2lite" / "intent"
IMG = ROOT / "docs" / "img"
MODEL = PRESETS["deepseek-v3"]
console = Console(highlight=False)


def policies() -> list[str]:
    return [p for p in ("linear", "eplb", "vibe") if p in available_policies()]


def setup(num_gpus: int, seed: int = 0, redundant: int = 0):
    """Cluster, loads and placements; `redundant` replica slots for eplb and vibe (linear,
    which cannot use them, stays the vLLM default without replicas)."""
    cluster = synth_cluster(num_gpus, scenario="power-cap", seed=seed)
    loads = synth_loads_for_model("deepseek-v3", seed=seed)
    t0 = time.perf_counter()
    placements = {p: place(loads, cluster, p, PlacementOptions(redundant=0 if p == "linear" else redundant))
                  for p in policies()}
    return cluster, loads, placements, time.perf_counter() - t0


def bench_speed(cluster, loads, placement, qps: float, requests: int = 10_000) -> dict:
    w = poisson_workload(qps, requests / qps * 1.02, 1024, 128, seed=0, max_requests=requests)
    t0 = time.perf_counter()
    res = simulate(w, cluster, loads, placement, MODEL, seed=0)
    wall = time.perf_counter() - t0
    s = summarize(res, 1e9, 1e9)
    return {"requests": w.num_requests, "qps": round(qps, 2), "steps": s["steps"]["steps"],
            "simulated_s": round(s["simulated_s"], 1), "wall_s": round(wall, 1),
            "us_per_step": round(wall / s["steps"]["steps"] * 1e6), "under_60s": wall < 60,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def relative(agg: list[dict], key: str, policy: str, base: str) -> dict[float, float]:
    """{qps: policy's key / base's key - 1} for QPS present in both."""
    a = {r["qps"]: r[key] for r in agg if r["policy"] == policy}
    b = {r["qps"]: r[key] for r in agg if r["policy"] == base}
    return {q: a[q] / b[q] - 1 for q in sorted(a) if q in b and b[q] > 0}


def bench_paper(cluster, loads, placements, fractions, seeds, duration, workers, out: Path) -> dict:
    cal = calibrate(MODEL, cluster, loads, placements["linear"])
    qps = [round(f * cal["capacity_qps"], 1) for f in fractions]
    spec = SweepSpec(MODEL, duration_s=duration, slo_ttft_ms=cal["slo_ttft_ms"], slo_tpot_ms=cal["slo_tpot_ms"])
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("paper-style sweep", total=len(placements) * len(qps) * len(seeds))
        rows = run_sweep(spec, cluster, loads, placements, qps, seeds, workers,
                         progress=lambda d, t: bar.update(task, completed=d))
    title = f"DeepSeek-V3 on 8 GPUs, one power-capped (SLO TTFT {cal['slo_ttft_ms']:g} ms, TPOT {cal['slo_tpot_ms']:g} ms)"
    written = write_report(out / "paper-8gpu", rows, title, {"calibration": cal, "seeds": seeds})
    shutil.copyfile(written["p90_ttft_vs_qps.png"], IMG / "sim_8gpu_p90_ttft.png")
    shutil.copyfile(written["slo_vs_qps.png"], IMG / "sim_8gpu_slo.png")
    agg = aggregate(rows)
    result = {"calibration": cal, "qps": qps, "sustained_qps_at_90pct": sustained_qps(agg), "aggregate": agg,
              "table_md": written["table.md"].read_text()}
    if "vibe" in placements:
        for base in ("linear", "eplb"):
            result[f"vibe_vs_{base}_p90_ttft"] = relative(agg, "p90_ttft_ms", "vibe", base)
            result[f"vibe_vs_{base}_slo_points"] = {
                q: v for q, v in zip(qps, [a["slo_attainment"] - b["slo_attainment"] for a, b in zip(
                    [r for r in agg if r["policy"] == "vibe"], [r for r in agg if r["policy"] == base])])}
    return result


def bench_real(fractions, seeds, duration, workers, out: Path) -> dict:
    """ESFT loads + routing trace, Azure conversation arrivals, 8 GPUs with one power-capped."""
    from vibe.sim.requests import read_azure_trace

    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    loads = load_esft_loads(ESFT)
    placements = {p: place(loads, cluster, p) for p in policies()}
    model = PRESETS["deepseek-v2-lite"]
    trace = read_azure_trace(AZURE)
    n_in, n_out = int(trace.input_len.mean()), int(trace.output_len.mean())
    cal = calibrate(model, cluster, loads, placements["linear"], n_in, n_out)
    qps = [round(f * cal["capacity_qps"], 1) for f in fractions]
    spec = SweepSpec(model, duration_s=duration, request_trace=str(AZURE), slo_ttft_ms=cal["slo_ttft_ms"],
                     slo_tpot_ms=cal["slo_tpot_ms"], routing_trace=str(ESFT))
    rows = run_sweep(spec, cluster, loads, placements, qps, seeds, workers)
    title = (f"ESFT routing + Azure conv arrivals, 8 GPUs, one power-capped (SLO TTFT {cal['slo_ttft_ms']:g} ms, "
             f"TPOT {cal['slo_tpot_ms']:g} ms)")
    written = write_report(out / "real-esft-azure", rows, title, {"calibration": cal, "seeds": seeds})
    shutil.copyfile(written["p90_ttft_vs_qps.png"], IMG / "sim_real_p90_ttft.png")
    shutil.copyfile(written["slo_vs_qps.png"], IMG / "sim_real_slo.png")
    agg = aggregate(rows)
    res = {"calibration": cal, "mean_lengths": [n_in, n_out], "qps": qps,
           "sustained_qps_at_90pct": sustained_qps(agg), "table_md": written["table.md"].read_text()}
    if "vibe" in placements:
        for base in ("linear", "eplb"):
            res[f"vibe_vs_{base}_p90_ttft"] = relative(agg, "p90_ttft_ms", "vibe", base)
    return res


def bench_scale(sizes, seeds, fractions, duration, workers, replicas_per_gpu: int = 0) -> list[dict]:
    out = []
    for G in sizes:
        cluster, loads, placements, place_s = setup(G, redundant=replicas_per_gpu * G)
        sched = SchedulerConfig(max_batch_tokens=1024 * G, max_running=32 * G)
        cal = calibrate(MODEL, cluster, loads, placements["linear"], scheduler=sched)
        spec = SweepSpec(MODEL, duration_s=duration, slo_ttft_ms=cal["slo_ttft_ms"],
                         slo_tpot_ms=cal["slo_tpot_ms"], scheduler=sched)
        qps = [round(f * cal["capacity_qps"], 1) for f in fractions]
        t0 = time.perf_counter()
        rows = run_sweep(spec, cluster, loads, placements, qps, seeds, workers)
        sim_s = time.perf_counter() - t0
        for f, q in zip(fractions, qps):
            agg = {a["policy"]: a for a in aggregate(rows) if a["qps"] == q}
            row = {"gpus": G, "redundant": replicas_per_gpu * G, "load": f, "qps": q, "place_s": round(place_s, 1), "sim_s": round(sim_s, 1),
                   **{f"{p}_p90_ttft_ms": round(a["p90_ttft_ms"], 1) for p, a in agg.items()},
                   **{f"{p}_slo": round(a["slo_attainment"], 4) for p, a in agg.items()}}
            if "vibe" in agg:
                for base in ("linear", "eplb"):
                    row[f"vibe_vs_{base}"] = round(agg["vibe"]["p90_ttft_ms"] / agg[base]["p90_ttft_ms"] - 1, 4)
            console.print(row)
            out.append(row)
    return out


def plot_scale(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for load, style in zip(dict.fromkeys(r["load"] for r in rows), ("-", "--", ":")):
        pts = [r for r in rows if r["load"] == load]
        for base, color in (("linear", "C0"), ("eplb", "C1")):
            ax.plot([r["gpus"] for r in pts], [100 * r[f"vibe_vs_{base}"] for r in pts], style, color=color,
                    marker="o", label=f"vibe vs {base}, {100 * load:.0f}% of est. capacity")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs in the EP group")
    ax.set_ylabel("P90 TTFT change (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def markdown_summary(results: dict) -> str:
    """The benchmark's numbers as markdown for docs/simulator.md and the README."""
    lines = []
    for sp in results.get("speed", []):
        lines.append(f"- Speed: {sp['requests']:,} DeepSeek-V3 requests (1024-in/128-out) on 8 GPUs at "
                     f"{sp['qps']:g} QPS: {sp['steps']:,} steps, {sp['wall_s']:.1f} s wall "
                     f"({sp['us_per_step']} us per step), peak RSS {sp['max_rss_mb']} MB.")
    for key, head in (("paper", "Paper-style: DeepSeek-V3, 8 GPUs (one power-capped), 1024-in/128-out, 3 seeds"),
                      ("real", "Real inputs: ESFT routing trace + Azure conversation arrivals, 8 GPUs (one power-capped)")):
        if key not in results:
            continue
        r = results[key]
        lines += ["", f"**{head}**", "", r["table_md"].split("\n", 2)[2].strip(), ""]
        for base in ("linear", "eplb"):
            k = f"vibe_vs_{base}_p90_ttft"
            if k in r:
                best_q = min(r[k], key=r[k].get)
                lines.append(f"- vibe vs {base}: P90 TTFT " + ", ".join(f"{_pct(v)} at {q}" for q, v in r[k].items())
                             + f" (best {_pct(r[k][best_q])} at {best_q} QPS)")
            k = f"vibe_vs_{base}_slo_points"
            if k in r:
                lines.append(f"- vibe vs {base}: SLO attainment " + ", ".join(
                    f"{100 * v:+.1f} pts at {q}" for q, v in r[k].items()))
    for key, head in (("scale", "Scale study, no replicas"), ("scale-replicas", "Scale study, one replica per GPU for eplb and vibe")):
        if key not in results or "vibe_vs_linear" not in results[key][0]:
            continue
        lines += ["", f"**{head}** (P90 TTFT change of vibe; SLO attainment linear / eplb / vibe)", "",
                  "| GPUs | load | QPS | vs linear | vs eplb | SLO attainment |", "|---:|---:|---:|---:|---:|---|"]
        for r in results[key]:
            lines.append(f"| {r['gpus']} | {100 * r['load']:.0f}% | {r['qps']:g} | {_pct(r['vibe_vs_linear'])} | "
                         f"{_pct(r['vibe_vs_eplb'])} | {100 * r['linear_slo']:.1f}% / {100 * r['eplb_slo']:.1f}% / "
                         f"{100 * r['vibe_slo']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points, shorter runs (a smoke test)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-sim"))
    ap.add_argument("--skip", nargs="*", default=[], choices=("speed", "paper", "real", "scale", "scale-replicas"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    IMG.mkdir(parents=True, exist_ok=True)
    if "vibe" not in available_policies():
        console.print("[yellow]the vibe policy is not registered: comparing linear and eplb only[/]")
    cluster, loads, placements, place_s = setup(8)
    console.print(f"8-GPU placements ({', '.join(placements)}) took {place_s:.1f} s")
    results: dict = {"policies": list(placements)}
    cal = calibrate(MODEL, cluster, loads, placements["linear"])
    if "speed" not in args.skip:
        # Low load means small batches and the most steps per request: the slow case.
        results["speed"] = [bench_speed(cluster, loads, placements["eplb"], f * cal["capacity_qps"],
                                        1000 if args.quick else 10_000) for f in (0.25, 0.5)]
        console.print("speed:", results["speed"])
    if "paper" not in args.skip:
        fractions = (0.3, 0.6, 0.8) if args.quick else (0.3, 0.45, 0.55, 0.6, 0.65, 0.7, 0.8)
        seeds = [0] if args.quick else [0, 1, 2]
        results["paper"] = bench_paper(cluster, loads, placements, fractions, seeds, 15 if args.quick else 60,
                                       args.workers, out)
        console.print(results["paper"]["table_md"])
        for k, v in results["paper"].items():
            if k.startswith("vibe_vs"):
                console.print(k, {q: f"{100 * x:+.1f}%" if "ttft" in k else f"{100 * x:+.1f} pts" for q, x in v.items()})
    if "real" not in args.skip and AZURE.exists() and ESFT.exists():
        fractions = (0.4, 0.8) if args.quick else (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
        results["real"] = bench_real(fractions, [0] if args.quick else [0, 1, 2], 15 if args.quick else 60,
                                     args.workers, out)
        console.print(results["real"]["table_md"])
        for k, v in results["real"].items():
            if k.startswith("vibe_vs"):
                console.print(k, {q: f"{100 * x:+.1f}%" for q, x in v.items()})
    sizes = (8, 32) if args.quick else (8, 16, 32, 64, 128, 256)
    for key, per_gpu, label in (("scale", 0, "no replicas"), ("scale-replicas", 1, "eplb and vibe with 1 replica per GPU")):
        if key in args.skip:
            continue
        results[key] = bench_scale(sizes, [0] if args.quick else [0, 1], (0.65, 0.85), 10 if args.quick else 40,
                                   args.workers, per_gpu)
        if "vibe" in placements:
            plot_scale(results[key], IMG / f"sim_{key.replace('-', '_')}.png",
                       f"DeepSeek-V3, one power-capped GPU, {label}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sim.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "bench_sim.md").write_text(markdown_summary(results))
    console.print(f"wrote {out / 'bench_sim.json'}, {out / 'bench_sim.md'} and PNGs in {IMG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
