"""Sweeps: policies x QPS x seeds, each point one simulation, run in parallel on local
processes (default) or on a Ray cluster (`ray_address`).

A point is described by plain picklable data (`SweepSpec` + the cluster, loads and
placement objects), so the same function runs in a process pool and as a Ray task.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.sim.ceiling import CEILING
from vibe.sim.engine import simulate, summarize
from vibe.sim.hardware import HardwareModel
from vibe.sim.models import ModelSpec
from vibe.sim.predictor import GpuSpec, Predictor, expected_router, load_routing_trace
from vibe.sim.scheduler import SchedulerConfig
from vibe.sim.requests import Workload, check_qps, poisson_workload, read_azure_trace, rescale


@dataclass(frozen=True)
class SweepSpec:
    """Everything about a simulated serving run except the placement, QPS and seed."""

    model: ModelSpec
    duration_s: float = 60.0
    input_len: int = 1024  # Poisson workloads
    output_len: int = 128
    request_trace: str | None = None  # Azure CSV, rescaled to each QPS (replaces Poisson)
    max_requests: int | None = None
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 100.0
    scheduler: SchedulerConfig = SchedulerConfig()
    hardware: HardwareModel = HardwareModel()
    routing: str = "sample"
    routing_trace: str | None = None  # .npz or ESFT folder
    gpu: GpuSpec = GpuSpec()


def make_workload(spec: SweepSpec, qps: float | None, seed: int) -> Workload:
    """The spec's workload at `qps` (None: a trace at its own rate)."""
    if spec.request_trace is not None:
        return rescale(read_azure_trace(spec.request_trace), qps, spec.duration_s, spec.max_requests)
    if qps is None:
        raise VibeError("give --qps (or --trace FILE)")
    return poisson_workload(qps, spec.duration_s, spec.input_len, spec.output_len, seed, spec.max_requests)


_TRACES: dict[str, object] = {}  # routing traces already read by this process (and its forks)


def routing_trace(path: str):
    """The RoutingTrace at `path`, read once per process."""
    if path not in _TRACES:
        _TRACES[path] = load_routing_trace(path)
    return _TRACES[path]


def run_point(spec: SweepSpec, cluster: Cluster, loads: ExpertLoads, placement: Placement, policy: str,
              qps: float | None, seed: int, progress: Callable[[int, int], None] | None = None) -> dict:
    """One simulation -> its summary row (with policy, qps, seed). Policy "ceiling"
    times every step at the bound of any plan with `placement`'s slots on that step's
    routing (vibe.sim.ceiling)."""
    trace = None if spec.routing_trace is None else routing_trace(spec.routing_trace)
    workload = make_workload(spec, qps, seed)
    result = simulate(workload, cluster, loads, placement, spec.model, spec.scheduler,
                      replace(spec.hardware, seed=spec.hardware.seed + seed), trace, spec.routing, seed, spec.gpu,
                      progress=progress, ceiling=policy == CEILING)
    row = summarize(result, spec.slo_ttft_ms, spec.slo_tpot_ms)
    row.update(policy=policy, qps=float(qps) if qps is not None else workload.qps, seed=int(seed))
    return row


def run_sweep(spec: SweepSpec, cluster: Cluster, loads: ExpertLoads, placements: dict[str, Placement],
              qps_list: list[float], seeds: list[int], workers: int | None = None,
              ray_address: str | None = None, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Every (policy, qps, seed) point; rows sorted by policy order, QPS, seed."""
    for q in qps_list:
        check_qps(q)
    if not placements:
        raise VibeError("no policy to sweep")
    tasks = [(spec, cluster, loads, placements[p], p, float(q), int(s))
             for p in placements for q in qps_list for s in seeds]
    if ray_address:
        rows = _run_ray(tasks, ray_address)
    else:
        rows = _run_local(tasks, workers or os.cpu_count() or 1, progress)
    order = {p: i for i, p in enumerate(placements)}
    return sorted(rows, key=lambda r: (order[r["policy"]], r["qps"], r["seed"]))


def _run_local(tasks: list[tuple], workers: int, progress) -> list[dict]:
    rows = []
    if workers <= 1 or len(tasks) == 1:
        for t in tasks:
            rows.append(run_point(*t))
            if progress:
                progress(len(rows), len(tasks))
        return rows
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        futures = [pool.submit(run_point, *t) for t in tasks]
        for f in as_completed(futures):
            rows.append(f.result())
            if progress:
                progress(len(rows), len(tasks))
    return rows


def _run_ray(tasks: list[tuple], address: str) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise VibeError("--ray-address needs the 'ray' package, which is not installed "
                        "(pip install ray, or drop --ray-address to use local processes)") from None
    ray.init(address=address, ignore_reinit_error=True)
    remote = ray.remote(run_point)
    return ray.get([remote.remote(*t) for t in tasks])


# ---- calibration: a QPS scale and SLOs that fit the model and cluster --------------------
def calibrate(model: ModelSpec, cluster: Cluster, loads: ExpertLoads, placement: Placement,
              input_len: int = 1024, output_len: int = 128,
              scheduler: SchedulerConfig = SchedulerConfig(), gpu: GpuSpec = GpuSpec()) -> dict:
    """Rough scale of the system from the predictor with expected routing:
    `capacity_qps`: full-budget steps back to back, each request costing input + output
    budget tokens; `slo_ttft_ms`: 5x the step of one lone prompt; `slo_tpot_ms`: 2x the
    decode step of a quarter of `max_running` requests (a loaded but not full system)."""
    pred = Predictor(model, cluster, placement, gpu, table_tokens=0)
    route = expected_router(loads)

    def step_ms(tokens: int, context: float) -> float:
        return pred.step(tokens, context, route(tokens, None)).total_us / 1e3

    budget = scheduler.max_batch_tokens
    full = step_ms(budget, budget * input_len / 2)
    lone = step_ms(input_len, input_len * (input_len + 1) / 2)
    batch = max(scheduler.max_running // 4, 1)
    decode = step_ms(batch, batch * (input_len + output_len / 2))
    return {"capacity_qps": budget / (input_len + output_len) / (full / 1e3),
            "slo_ttft_ms": float(np.round(5 * lone, -1)), "slo_tpot_ms": float(np.round(2 * decode, 0))}
