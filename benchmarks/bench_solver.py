"""Benchmark of the `vibe` placement solver (issue 3).

1. Targets on the real ESFT loads (3 domains, 8 and 16 GPUs, prefill-sized batch 8192):
   vibe / lower bound without replicas (target <= 1.01 on average; with R = G replicas
   against the any-plan bound of vibe.cost, for information), the gain over eplb
   with one GPU 20% slow (target >= 10% at 8 GPUs without replicas and at 8 and 16 GPUs
   with one replica per GPU), identical GPUs (never > 0.5% slower than eplb), and the
   decode-sized batch (256) against linear (never slower).
2. Scale: `vibe place` end to end (a fresh process: start-up, solve, write) on a
   DeepSeek-V3-shaped plan (58 MoE layers x 256 experts, top-8) on 64 GPUs + 64 redundant
   slots (target < 2 s) and 256 GPUs + 256 (target < 10 s), predicted time against eplb.
3. Sweeps: gain over eplb vs EP size (8 .. 256 GPUs, measured fleet spread) and vs
   variability spread (0 .. 25%, 32 GPUs), DeepSeek-V3-shaped loads, a prefill step of
   1024 tokens per GPU; writes docs/img/solver_gain.png and prints markdown tables.

Times are the best of --repeats runs (the machine is shared); predicted times come from
vibe.cost. Usage:
    .venv/bin/python benchmarks/bench_solver.py [--repeats 3] [--quick] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from vibe.bounds import layer_lower_bounds  # noqa: E402
from vibe.cost import evaluate  # noqa: E402
from vibe.engines.esft import load_esft_loads  # noqa: E402
from vibe.io import atomic_path, write_text_atomic  # noqa: E402
from vibe.policies import PlacementOptions, place  # noqa: E402
from vibe.synth import synth_cluster, synth_loads_for_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ESFT = ROOT.parent / "shared" / "data" / "routing" / "esft-dsv2lite"
VIBE = Path(sys.executable).with_name("vibe")
PNG = ROOT / "docs" / "img" / "solver_gain.png"
err = Console(stderr=True, highlight=False)


def moe_us(plan, loads, cluster, batch_tokens: float) -> float:
    return evaluate(plan, loads, cluster, (batch_tokens,), with_lower_bound=False)[0].moe_time_us


def gain(loads, cluster, redundant: int, batch_tokens: float) -> tuple[float, float]:
    """(eplb time / vibe time - 1, vibe time) at one operating point; both plans are made
    for that point."""
    o = PlacementOptions(redundant=redundant, batch_tokens=(batch_tokens,))
    v = moe_us(place(loads, cluster, "vibe", o), loads, cluster, batch_tokens)
    e = moe_us(place(loads, cluster, "eplb", o), loads, cluster, batch_tokens)
    return e / v - 1.0, v


# ---- 1. targets on ESFT ------------------------------------------------------------------
def esft_clusters(G: int) -> dict:
    return {"identical": synth_cluster(G, scenario="identical"),
            "one GPU 20% slow": synth_cluster(G, scenario="power-cap", spread=0.0, slow_rank=G // 2 - 1),
            "fleet": synth_cluster(G, scenario="fleet", seed=1)}


def esft_targets(domains: list[str], progress: Progress) -> list[list[str]]:
    rows = []
    task = progress.add_task("ESFT targets", total=len(domains) * 6)
    for domain in domains:
        loads = load_esft_loads(ESFT / domain)
        for G in (8, 16):
            for kind, cluster in esft_clusters(G).items():
                o0 = PlacementOptions(batch_tokens=(8192,))
                v0 = moe_us(place(loads, cluster, "vibe", o0), loads, cluster, 8192)
                lb = float(layer_lower_bounds(loads, cluster, 8192, loads.num_experts).sum())
                g0, _ = gain(loads, cluster, 0, 8192)
                gR, vR = gain(loads, cluster, G, 8192)
                lbR = float(layer_lower_bounds(loads, cluster, 8192, loads.num_experts + G).sum())
                od = PlacementOptions(batch_tokens=(256,))
                dec = (moe_us(place(loads, cluster, "vibe", od), loads, cluster, 256)
                       / moe_us(place(loads, cluster, "linear", od), loads, cluster, 256))
                rows.append([domain, str(G), kind, f"{v0 / lb:.4f}", f"{vR / lbR:.4f}", f"{100 * g0:+.1f}%",
                             f"{100 * gR:+.1f}%", f"{dec:.4f}"])
                progress.advance(task)
    return rows


# ---- 2. scale ----------------------------------------------------------------------------
def scale_rows(configs: list[int], repeats: int, progress: Progress) -> list[list[str]]:
    loads = synth_loads_for_model("deepseek-v3", seed=0)
    rows = []
    task = progress.add_task("DeepSeek-V3 end to end", total=len(configs))
    with tempfile.TemporaryDirectory() as tmp:
        lpath = Path(tmp) / "loads.json"
        loads.save(lpath)
        for G in configs:
            cluster = synth_cluster(G, scenario="fleet", seed=0)
            cpath, out = Path(tmp) / f"c{G}.json", Path(tmp) / f"p{G}.json"
            cluster.save(cpath)
            cmd = [str(VIBE), "place", "--cluster", str(cpath), "--loads", str(lpath), "--redundant", str(G),
                   "--out", str(out)]
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                best = min(best, time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([str(VIBE), "--help"], check=True, capture_output=True)
            startup = time.perf_counter() - t0
            opts = PlacementOptions(redundant=G)
            t0 = time.perf_counter()
            plan = place(loads, cluster, "vibe", opts)
            solve = time.perf_counter() - t0
            eplb = place(loads, cluster, "eplb", opts)
            pv = evaluate(plan, loads, cluster, with_lower_bound=False)
            pe = evaluate(eplb, loads, cluster, with_lower_bound=False)
            rows.append([f"{G} + {G}", f"{best:.2f} s", f"{startup:.2f} s", f"{solve:.2f} s",
                         " / ".join(f"{p.moe_time_us:,.0f}" for p in pv),
                         " / ".join(f"{p.moe_time_us:,.0f}" for p in pe),
                         f"{100 * (pe[0].moe_time_us / pv[0].moe_time_us - 1):+.1f}%"])
            progress.advance(task)
    return rows


# ---- 3. sweeps -----------------------------------------------------------------------------
def sweep(sizes: list[int], spreads: list[float], seeds: list[int], progress: Progress) -> dict:
    loads = synth_loads_for_model("deepseek-v3", seed=0)
    out = {"size": {}, "spread": {}}
    task = progress.add_task("sweeps", total=(len(sizes) + len(spreads)) * len(seeds) * 2)
    for G in sizes:
        for R in (0, G):
            vals = []
            for s in seeds:
                vals.append(gain(loads, synth_cluster(G, scenario="fleet", seed=s), R, 1024 * G)[0])
                progress.advance(task)
            out["size"][(G, R)] = float(np.mean(vals))
    G = 32
    for spread in spreads:
        for R in (0, G):
            vals = []
            for s in seeds:
                cl = (synth_cluster(G, scenario="identical") if spread == 0
                      else synth_cluster(G, scenario="fleet", spread=spread, seed=s))
                vals.append(gain(loads, cl, R, 1024 * G)[0])
                progress.advance(task)
            out["spread"][(spread, R)] = float(np.mean(vals))
    return out


def plot(res: dict, sizes: list[int], spreads: list[float]) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for R, label in ((0, "no replicas"), (1, "one replica per GPU")):
        a.plot(sizes, [100 * res["size"][(G, G * R)] for G in sizes], "o-", label=label)
        b.plot([100 * s for s in spreads], [100 * res["spread"][(s, 32 * R)] for s in spreads], "o-", label=label)
    a.set_xscale("log", base=2)
    a.set_xticks(sizes, [str(g) for g in sizes])
    a.set(xlabel="EP size (GPUs), measured fleet spread", ylabel="predicted gain over eplb (%)",
          title="gain vs EP size")
    b.set(xlabel="GPU speed spread p95-p5 (%), 32 GPUs", title="gain vs variability")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.legend()
    fig.suptitle("vibe vs eplb, DeepSeek-V3-shaped loads, prefill step of 1024 tokens per GPU", fontsize=10)
    fig.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(PNG) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one ESFT domain, one seed, fewer sweep points")
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = ap.parse_args()
    if not ESFT.exists():
        err.print(f"real data not found at {ESFT}")
        return 2
    domains = ["intent"] if args.quick else ["intent", "law", "summary"]
    sizes = [8, 16, 32, 64, 128, 256] if not args.quick else [8, 32, 128]
    spreads = [0.0, 0.05, 0.10, 0.15, 0.20, 0.25] if not args.quick else [0.0, 0.10, 0.25]
    seeds = [0, 1, 2] if not args.quick else [0]
    with Progress(console=err, transient=True) as progress:
        targets = esft_targets(domains, progress)
        scale = scale_rows([64, 256], args.repeats, progress)
        res = sweep(sizes, spreads, seeds, progress)
    plot(res, sizes, spreads)
    parts = [
        "### Targets on real ESFT loads (prefill 8192 tokens; decode 256)",
        md_table(["domain", "GPUs", "cluster", "vibe / LB (R=0)", "vibe / LB (R=G)", "gain vs eplb R=0",
                  "gain vs eplb R=G", "decode vibe / linear"], targets),
        "### DeepSeek-V3 shape (58 x 256, top-8), `vibe place` end to end",
        md_table(["GPUs + redundant", "end to end (best)", "of which start-up (`vibe --help`)", "solve in-process",
                  "vibe us (8192 / 256)", "eplb us (8192 / 256)", "gain at 8192"], scale),
        "### Gain over eplb vs EP size (fleet spread 5.3%) and vs spread (32 GPUs)",
        md_table(["GPUs"] + [str(g) for g in sizes],
                 [["no replicas"] + [f"{100 * res['size'][(g, 0)]:+.1f}%" for g in sizes],
                  ["one replica per GPU"] + [f"{100 * res['size'][(g, g)]:+.1f}%" for g in sizes]]),
        md_table(["spread"] + [f"{100 * s:.0f}%" for s in spreads],
                 [["no replicas"] + [f"{100 * res['spread'][(s, 0)]:+.1f}%" for s in spreads],
                  ["one replica per GPU"] + [f"{100 * res['spread'][(s, 32)]:+.1f}%" for s in spreads]]),
        f"Plot: {PNG.relative_to(ROOT)}",
    ]
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.markdown:
        write_text_atomic(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
