"""Sweep reports: a table, P90 TTFT vs QPS and SLO attainment vs QPS per policy, and the
highest QPS each policy sustains at a target SLO attainment."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vibe.io import write_json_atomic, write_text_atomic


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean over seeds of each (policy, qps): p50/p90 TTFT, p90 TPOT, SLO attainment, tok/s."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["policy"], r["qps"]), []).append(r)
    agg = []
    for (policy, qps), rs in out.items():
        mean = lambda f: float(np.mean([f(r) for r in rs]))
        agg.append({"policy": policy, "qps": qps, "seeds": len(rs),
                    "p50_ttft_ms": mean(lambda r: r["ttft_ms"]["p50"]),
                    "p90_ttft_ms": mean(lambda r: r["ttft_ms"]["p90"]),
                    "p90_tpot_ms": mean(lambda r: r["tpot_ms"]["p90"]),
                    "slo_attainment": mean(lambda r: r["slo_attainment"]),
                    "throughput_tok_s": mean(lambda r: r["throughput_tok_s"]),
                    "idle_at_barrier": mean(lambda r: r["steps"]["idle_at_barrier"])})
    return agg


def sustained_qps(agg: list[dict], target: float = 0.9) -> dict[str, float | None]:
    """Per policy: the highest QPS at which SLO attainment is still >= target, linearly
    interpolated to the crossing with the next QPS; None if it misses at the lowest."""
    best: dict[str, float | None] = {}
    for policy in dict.fromkeys(a["policy"] for a in agg):
        pts = sorted((a["qps"], a["slo_attainment"]) for a in agg if a["policy"] == policy)
        q, s = np.array(pts).T
        if s[0] < target:
            best[policy] = None
            continue
        k = int(np.argmax(s < target)) if np.any(s < target) else len(s)
        if k == len(s):
            best[policy] = float(q[-1])
        else:  # crossing between points k-1 (>= target) and k (< target)
            best[policy] = float(q[k - 1] + (q[k] - q[k - 1]) * (s[k - 1] - target) / (s[k - 1] - s[k]))
    return best


def markdown_table(agg: list[dict], sustained: dict[str, float | None], target: float = 0.9) -> str:
    lines = ["| policy | QPS | P50 TTFT (ms) | P90 TTFT (ms) | P90 TPOT (ms) | SLO attainment | tok/s | idle at MoE barrier |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in agg:
        lines.append(f"| {a['policy']} | {a['qps']:g} | {a['p50_ttft_ms']:,.0f} | {a['p90_ttft_ms']:,.0f} | "
                     f"{a['p90_tpot_ms']:,.1f} | {100 * a['slo_attainment']:.1f}% | {a['throughput_tok_s']:,.0f} | "
                     f"{100 * a['idle_at_barrier']:.1f}% |")
    lines += ["", f"| policy | highest QPS at {100 * target:.0f}% SLO attainment |", "|---|---:|"]
    lines += [f"| {p} | {'below the sweep' if q is None else f'{q:.2f}'} |" for p, q in sustained.items()]
    return "\n".join(lines) + "\n"


def plot_png(agg: list[dict], key: str, ylabel: str, title: str, target: float | None = None,
             log: bool = False) -> bytes:
    """One line per policy of `key` vs QPS, as PNG bytes (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for policy in dict.fromkeys(a["policy"] for a in agg):
        pts = sorted((a["qps"], a[key]) for a in agg if a["policy"] == policy)
        ax.plot(*zip(*pts), marker="o", label=policy)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("QPS")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(folder: str | os.PathLike, rows: list[dict], title: str, meta: dict | None = None,
                 target: float = 0.9) -> dict[str, Path]:
    """Write results.json, table.md, p90_ttft_vs_qps.png, slo_vs_qps.png into `folder`.
    Everything is rendered first and then moved in, so a failure leaves no partial report."""
    agg = aggregate(rows)
    best = sustained_qps(agg, target)
    files = {
        "table.md": f"# {title}\n\n" + markdown_table(agg, best, target),
        "p90_ttft_vs_qps.png": plot_png(agg, "p90_ttft_ms", "P90 TTFT (ms, log scale)", title, log=True),
        "slo_vs_qps.png": plot_png(agg, "slo_attainment", "SLO attainment", title, target),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report.", dir=folder))
    try:
        write_json_atomic(staging / "results.json", {"title": title, "meta": meta or {}, "aggregate": agg,
                                                     f"sustained_qps_at_{int(100 * target)}pct": best,
                                                     "rows": rows})
        for name, body in files.items():
            if isinstance(body, bytes):
                (staging / name).write_bytes(body)
            else:
                write_text_atomic(staging / name, body)
        out = {}
        for name in ["results.json", *files]:
            os.replace(staging / name, folder / name)
            out[name] = folder / name
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def demo_rows(cluster, loads, placements: dict, requests: int = 200, seed: int = 0) -> list[dict]:
    """A short simulated comparison for the demo: Poisson 1024-in/128-out at 70% of the
    first placement's estimated capacity; SLOs from `calibrate`."""
    from vibe.sim.models import generic_model, model_for_loads
    from vibe.sim.sweep import SweepSpec, calibrate, run_point
    from vibe.errors import VibeError

    if not placements:
        return []
    try:
        model = model_for_loads(loads)
    except VibeError:
        model = generic_model(loads, cluster)
    first = next(iter(placements.values()))
    cal = calibrate(model, cluster, loads, first)
    qps = 0.7 * cal["capacity_qps"]
    spec = SweepSpec(model, duration_s=requests / qps, slo_ttft_ms=cal["slo_ttft_ms"],
                     slo_tpot_ms=cal["slo_tpot_ms"])
    rows = []
    for name, placement in placements.items():
        row = run_point(spec, cluster, loads, placement, name, qps, seed)
        row["model"] = model.name
        rows.append(row)
    return rows


# ---- online policies over time (scenario runs) ---------------------------------------------
_EVENT_STYLE = {"switch": ("tab:blue", "--"), "throttle": ("tab:orange", "-."), "loss": ("tab:red", "-")}


def plot_windows_png(series: dict[str, list[dict]], events: list[dict], title: str,
                     key: str = "slo_attainment", ylabel: str = "SLO attainment",
                     actions: dict[str, list[float]] | None = None) -> bytes:
    """`key` per arrival window (summarize_windows rows) for each policy, with the
    scenario's drift events (routing switches, throttles, lost GPUs) as vertical lines
    and each policy's plan changes (`actions`: policy -> times) as ticks along the
    bottom in its colour; PNG bytes (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=110)
    for policy, rows in series.items():
        mid = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
        line, = ax.plot(mid, [r[key] for r in rows], marker="o", markersize=3, label=policy)
        ts = (actions or {}).get(policy) or []
        if ts:
            ax.plot(ts, [0.0] * len(ts), linestyle="none", marker="|", markersize=12, color=line.get_color(),
                    transform=ax.get_xaxis_transform())
    seen = set()
    for e in events:
        if e["kind"] not in _EVENT_STYLE:
            continue
        color, style = _EVENT_STYLE[e["kind"]]
        ax.axvline(e["t_s"], color=color, linestyle=style, linewidth=1, alpha=0.8,
                   label=None if e["kind"] in seen else e["kind"])
        seen.add(e["kind"])
        ax.annotate(e["detail"], (e["t_s"], 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                    va="top", ha="right", color=color)
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel(ylabel)
    if key == "slo_attainment":
        ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def windows_markdown(series: dict[str, list[dict]]) -> str:
    """A table: one row per window, SLO attainment and P90 TTFT of every policy."""
    names = list(series)
    head = "| window (s) | " + " | ".join(f"{p} SLO | {p} P90 TTFT (ms)" for p in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    for k, r in enumerate(next(iter(series.values()))):
        cells = []
        for p in names:
            w = series[p][k]
            slo = "-" if w["requests"] == 0 else f"{100 * w['slo_attainment']:.0f}%"
            ttft = "-" if w["requests"] == 0 else f"{w['p90_ttft_ms']:,.0f}"
            cells += [slo, ttft]
        lines.append(f"| {r['start_s']:g}-{r['end_s']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def totals_markdown(totals: dict[str, dict], after_s: float | None, overall: dict[str, float],
                    after: dict[str, float] | None = None) -> str:
    """Per policy: moves, stall, re-home moves and SLO attainment overall (and after `after_s`)."""
    extra = "" if after is None else f" | SLO after {after_s:g} s"
    lines = [f"| policy | actions | moves | stall (ms) | re-home moves | re-home + detect stall (ms) | SLO overall{extra} |",
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if after is not None else "")]
    for p, t in totals.items():
        row = (f"| {p} | {t['actions']} | {t['moves']:,} | {1e3 * t['stall_s']:,.0f} | {t['rehome_moves']} | "
               f"{1e3 * (t['rehome_stall_s'] + t['detect_stall_s']):,.0f} | {100 * overall[p]:.1f}%")
        lines.append(row + ("" if after is None else f" | {100 * after[p]:.1f}%") + " |")
    return "\n".join(lines) + "\n"
