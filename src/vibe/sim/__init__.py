"""Serving simulator: what a placement does to TTFT, TPOT and SLO attainment.

Structured like Vidur, each part in its own module and replaceable:
  requests.py   request arrivals (Azure traces rescaled to a QPS, or Poisson)
  scheduler.py  continuous batching with chunked prefill (vLLM-like, FCFS)
  predictor.py  step time = non-expert roofline + all-to-all + the cost model on the
                step's routed tokens (each MoE layer waits for its slowest GPU)
  hardware.py   per-GPU time multipliers over time (jitter, thermal drift)
  engine.py     the event loop and streaming statistics
  scenario.py   routing switches and lost GPUs over time
  online.py     online placement policies (none, periodic re-solve, drift-triggered repair)
  sweep.py      policies x QPS x seeds in parallel;  report.py  table + plots
"""

from __future__ import annotations

from vibe.sim.engine import SimResult, simulate, summarize
from vibe.sim.hardware import HardwareModel
from vibe.sim.models import PRESETS, ModelSpec, model_for_loads, resolve_model
from vibe.sim.predictor import GpuSpec, Predictor
from vibe.sim.scheduler import SchedulerConfig
from vibe.sim.requests import Workload, poisson_workload, read_azure_trace, rescale

__all__ = ["simulate", "summarize", "SimResult", "HardwareModel", "PRESETS", "ModelSpec", "model_for_loads",
           "resolve_model", "GpuSpec", "Predictor", "SchedulerConfig", "Workload", "poisson_workload",
           "read_azure_trace", "rescale", "demo_section"]


def demo_section(cluster, loads, placements: dict, console) -> None:
    """Print a short simulated serving comparison of `placements` (a few seconds).

    Poisson 1024-in / 128-out requests at about 70% of what the first placement
    sustains, on the model preset with the loads' shape (or a generic one)."""
    from rich.table import Table

    from vibe.sim.report import demo_rows

    rows = demo_rows(cluster, loads, placements)
    if not rows:
        return
    first = rows[0]
    table = Table(title=f"Simulated serving: {first['model']}, {cluster.num_gpus} GPUs, "
                        f"{first['qps']:.3g} QPS, {first['requests']} requests 1024-in/128-out "
                        f"(SLO: TTFT {first['slo_ttft_ms']:g} ms, TPOT {first['slo_tpot_ms']:g} ms)")
    for col in ("policy", "P50 TTFT", "P90 TTFT", "P90 TPOT", "SLO attainment", "tok/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["policy"], f"{r['ttft_ms']['p50']:,.0f} ms", f"{r['ttft_ms']['p90']:,.0f} ms",
                      f"{r['tpot_ms']['p90']:,.1f} ms", f"{100 * r['slo_attainment']:.1f}%",
                      f"{r['throughput_tok_s']:,.0f}")
    console.print(table)
