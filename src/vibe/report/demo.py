"""`vibe demo`: the whole pipeline on synthesized inputs, as a list of sections.

Each section is a function `section(run: DemoRun) -> None` that reads what earlier
sections left in `run` and adds to it. `DEMO_SECTIONS` runs in order; a later stage
(e.g. the serving simulation) joins the demo with one call: `add_demo_section(fn)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from vibe.cost import DEFAULT_BATCH_TOKENS, PointMetrics, evaluate, layer_lower_bounds
from vibe.errors import VibeError
from vibe.io import write_json_atomic
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions, available_policies, place, slots_per_gpu
from vibe.report.plots import GpuTimesPanel, plot_gpu_times
from vibe.synth import synth_cluster, synth_loads_for_model

SLOW_POLICIES = frozenset({"exact"})  # searches that take minutes: not for a one-minute demo
DEFAULT_MODEL = "deepseek-v2-lite"  # the shape of the real ESFT traces in ../shared/data
DEFAULT_SCENARIO = "power-cap"


@dataclass
class DemoRun:
    """What the demo's sections share: inputs, then each section's results."""

    cluster: Cluster
    loads: ExpertLoads
    options: PlacementOptions
    out_dir: Path
    console: Console
    placements: dict[str, Placement] = field(default_factory=dict)
    place_seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # policy -> why
    points: dict[str, list[PointMetrics]] = field(default_factory=dict)  # policy -> per batch size
    layer_bounds: dict[float, np.ndarray] = field(default_factory=dict)  # batch tokens -> [L] us
    written: list[Path] = field(default_factory=list)

    @property
    def slow_ranks(self) -> list[int]:
        rank = self.cluster.extra.get("synth", {}).get("slow_rank")
        return [] if rank is None else [int(rank)]


Section = Callable[[DemoRun], None]


def demo_policies() -> list[str]:
    """Every registered policy except the slow searches (new policies join automatically)."""
    return [p for p in available_policies() if p not in SLOW_POLICIES]


# ---- sections ------------------------------------------------------------------------
def section_inputs(run: DemoRun) -> None:
    """Show and save the synthesized cluster and loads."""
    c, lo = run.cluster, run.loads
    info = c.extra.get("synth", {})
    compute = np.asarray(info.get("compute_factor", np.ones(c.num_gpus)))
    slow = f", GPU {run.slow_ranks[0]} {info['scenario']}" if run.slow_ranks else ""
    run.console.print(f"[bold]cluster[/] {c.name}: {c.num_gpus} GPUs, compute speed factors "
                      f"{compute.min():.3f}..{compute.max():.3f}{slow}")
    shares = lo.shares()
    peak = shares.max(axis=1) * lo.num_experts
    run.console.print(f"[bold]workload[/] {lo.model}: {lo.num_layers} MoE layers x {lo.num_experts} experts, "
                      f"top-{lo.top_k}; busiest expert {peak.min():.1f}..{peak.max():.1f}x the mean")
    for name, obj in (("cluster.json", c), ("loads.json", lo)):
        obj.save(run.out_dir / name)
        run.written.append(run.out_dir / name)


def section_place(run: DemoRun) -> None:
    """Place with every (fast) registered policy; a policy that cannot run here is skipped."""
    names = demo_policies()
    with Progress(console=run.console, transient=True) as bar:
        task = bar.add_task("placing", total=len(names))
        for name in names:
            bar.update(task, description=f"placing with {name}")
            t0 = time.perf_counter()
            try:
                placement = place(run.loads, run.cluster, name, run.options)
            except VibeError as exc:
                run.skipped[name] = str(exc)
            else:
                run.place_seconds[name] = time.perf_counter() - t0
                run.placements[name] = placement
                path = run.out_dir / f"placement-{name}.json"
                placement.save(path)
                run.written.append(path)
            bar.advance(task)
    if not run.placements:
        raise VibeError(f"no policy could place this demo: {next(iter(run.skipped.values()), 'none registered')}")
    for name, why in run.skipped.items():
        run.console.print(f"[yellow]skipped policy {name}[/]: {why}")


def section_compare(run: DemoRun) -> None:
    """Cost-model metrics of every placement at each batch size, one table per size."""
    num_slots = run.loads.num_experts + run.options.redundant
    for b in run.options.batch_tokens:
        run.layer_bounds[b] = layer_lower_bounds(run.loads, run.cluster, b, num_slots)
    for name, placement in run.placements.items():
        points = evaluate(placement, run.loads, run.cluster, run.options.batch_tokens, with_lower_bound=False)
        run.points[name] = [replace(p, lower_bound_us=float(run.layer_bounds[p.batch_tokens].sum()))
                            for p in points]
    for i, b in enumerate(run.options.batch_tokens):
        run.console.print(_comparison_table(run, i, b))
    write_json_atomic(run.out_dir / "summary.json", _summary(run))
    run.written.append(run.out_dir / "summary.json")


def section_plot(run: DemoRun) -> None:
    """PNG: per-GPU time in each policy's worst layer at the first (prefill-sized) batch."""
    b = run.options.batch_tokens[0]
    panels = []
    for name, points in run.points.items():
        p = points[0]
        worst = int(np.argmax(p.layer_times_us))
        panels.append(GpuTimesPanel(f"{name}: layer {run.loads.layer_ids[worst]}, "
                                    f"{p.layer_times_us[worst]:,.0f} us",
                                    p.gpu_times_us[worst], float(run.layer_bounds[b][worst])))
    if not panels:
        return
    path = run.out_dir / "worst-layer-gpu-times.png"
    plot_gpu_times(panels, path, f"{run.cluster.name}, {run.loads.model}, B={b:g} tokens: per-GPU time in "
                                 f"each policy's slowest layer (hatched: slow GPU)", run.slow_ranks)
    run.written.append(path)


def section_simulate(run: "DemoRun") -> None:
    """A short serving simulation: what the placements do to TTFT, TPOT and SLO attainment."""
    from vibe.sim import demo_section

    demo_section(run.cluster, run.loads, run.placements, run.console)


DEMO_SECTIONS: list[Section] = [
    section_inputs,
    section_place,
    section_compare,
    section_plot,
    section_simulate,
]


def add_demo_section(section: Section, before: Section | None = None) -> None:
    """Append `section` to the demo (or insert it before another section)."""
    if section in DEMO_SECTIONS:
        return
    DEMO_SECTIONS.insert(DEMO_SECTIONS.index(before) if before else len(DEMO_SECTIONS), section)


# ---- driver --------------------------------------------------------------------------
def run_demo(out_dir: str | Path = "demo-out", *, model: str = DEFAULT_MODEL, num_gpus: int = 8,
             scenario: str = DEFAULT_SCENARIO, seed: int = 0, redundant: int = 0,
             batch_tokens: tuple[float, ...] = DEFAULT_BATCH_TOKENS, console: Console | None = None,
             sections: list[Section] | None = None) -> DemoRun:
    """Synthesize inputs, then run every section in order; returns what they produced."""
    run = DemoRun(cluster=synth_cluster(num_gpus, scenario=scenario, seed=seed),
                  loads=synth_loads_for_model(model, seed=seed),
                  options=PlacementOptions(redundant=redundant, batch_tokens=tuple(batch_tokens), seed=seed,
                                           time_limit_s=5.0),
                  out_dir=Path(out_dir), console=console or Console(highlight=False))
    slots_per_gpu(run.loads, run.cluster, run.options)  # a bad layout fails before any file is written
    run.out_dir.mkdir(parents=True, exist_ok=True)
    for section in DEMO_SECTIONS if sections is None else sections:
        section(run)
    run.console.print(f"wrote to {run.out_dir}/: " + ", ".join(p.name for p in run.written))
    return run


def _comparison_table(run: DemoRun, index: int, batch: float) -> Table:
    kind = "prefill-sized" if batch == max(run.options.batch_tokens) else "decode-sized"
    table = Table(title=f"B={batch:g} tokens ({kind}): lower bound {run.layer_bounds[batch].sum():,.0f} us")
    table.add_column("policy", no_wrap=True)
    for col in ("MoE us/step", "vs best", "x LB", "imbalance", "idle", "place"):
        table.add_column(col, justify="right", no_wrap=True)
    best = min(p[index].moe_time_us for p in run.points.values())
    for name, points in run.points.items():
        p = points[index]
        table.add_row(name, f"{p.moe_time_us:,.0f}", f"{p.moe_time_us / best:.3f}", f"{p.ratio_to_lb:.3f}",
                      f"{p.imbalance:.3f}", f"{100 * p.idle_fraction:.1f}%",
                      f"{run.place_seconds[name] * 1000:,.0f} ms",
                      style="bold green" if p.moe_time_us == best else None)
    return table


def _summary(run: DemoRun) -> dict:
    return {"cluster": run.cluster.name, "model": run.loads.model, "num_gpus": run.cluster.num_gpus,
            "slow_ranks": run.slow_ranks, "skipped": run.skipped,
            "policies": {name: {"place_seconds": run.place_seconds[name],
                                "operating_points": [p.to_dict() for p in points]}
                         for name, points in run.points.items()}}
