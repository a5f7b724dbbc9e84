"""Plots (matplotlib, Agg canvas: no display needed), written atomically as PNG."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vibe.io import atomic_path


@dataclass(frozen=True)
class GpuTimesPanel:
    """One sub-plot: per-GPU times of one layer under one policy."""

    title: str
    gpu_times_us: np.ndarray  # [G]
    lower_bound_us: float | None = None


def plot_gpu_times(panels: Sequence[GpuTimesPanel], path: str | os.PathLike, suptitle: str = "",
                   slow_ranks: Sequence[int] = ()) -> None:
    """Bar chart of per-GPU time, one panel per entry, shared y axis; the slowest GPU of
    each panel (which sets the layer time) is dark, known slow GPUs are hatched, the
    dashed line is the layer's lower bound. Written atomically to `path` (PNG)."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        t = np.asarray(panel.gpu_times_us, dtype=np.float64)
        ranks = np.arange(t.size)
        colors = np.where(t == t.max(), "#c0392b", "#5d8aa8")
        bars = ax.bar(ranks, t, color=colors)
        for r in slow_ranks:
            bars[r].set_hatch("//")
        ax.axhline(t.mean(), color="#555555", lw=1, ls=":", label="mean")
        if panel.lower_bound_us is not None:
            ax.axhline(panel.lower_bound_us, color="black", lw=1, ls="--", label="lower bound")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xticks(ranks)
        ax.set_xlabel("GPU rank")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("MoE time in layer (us)")
    axes[0].legend(fontsize=8, loc="upper left", framealpha=0.9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
