"""The event loop: schedule a batch, route its tokens, predict the step time, advance
the clock, commit; plus streaming statistics (memory bounded by the request count, not
by tokens or steps).

Random streams (routing, hardware jitter) are spawned from one seed, so the same inputs
and seed give the same output, and two policies run under the same seed see the same
random numbers in the same order as long as their batches match.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vibe.model import Cluster, ExpertLoads, Placement, RoutingTrace
from vibe.sim.hardware import HardwareModel, plan_drift, speed_factors, static_speed_ratio
from vibe.sim.models import ModelSpec, check_model_matches
from vibe.sim.predictor import GpuSpec, Predictor, make_router
from vibe.sim.scheduler import Scheduler, SchedulerConfig
from vibe.sim.requests import Workload

_HIST_EDGES_MS = np.geomspace(0.1, 1e5, 121)  # step-time histogram bins, 0.1 ms .. 100 s


@dataclass
class StepStats:
    """Streaming per-step statistics: counts, sums, a log histogram of step times and
    how often each GPU was the slowest of a MoE layer."""

    num_gpus: int
    steps: int = 0
    busy_s: float = 0.0
    tokens: int = 0
    moe_us: float = 0.0
    a2a_us: float = 0.0
    dense_us: float = 0.0
    idle_weighted: float = 0.0  # sum of idle fraction x MoE time
    hist: np.ndarray = field(default=None)  # [len(edges) + 1] step-time counts
    slowest: np.ndarray = field(default=None)  # [G] layers in which each GPU was last

    def __post_init__(self) -> None:
        self.hist = np.zeros(len(_HIST_EDGES_MS) + 1, np.int64)
        self.slowest = np.zeros(self.num_gpus, np.int64)

    def add(self, st, tokens: int) -> None:
        self.steps += 1
        self.tokens += tokens
        self.busy_s += st.total_us / 1e6
        self.moe_us += st.moe_us
        self.a2a_us += st.a2a_us
        self.dense_us += st.dense_us
        self.idle_weighted += st.idle_fraction * st.moe_us
        self.hist[np.searchsorted(_HIST_EDGES_MS, st.total_us / 1e3)] += 1
        self.slowest += np.bincount(st.slowest_gpu, minlength=self.num_gpus)

    def step_percentile_ms(self, q: float) -> float:
        """Upper edge of the histogram bin holding the q-th percentile step time."""
        if self.steps == 0:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.hist), q / 100 * self.steps, side="left"))
        return float(_HIST_EDGES_MS[min(k, len(_HIST_EDGES_MS) - 1)])

    def to_dict(self) -> dict:
        n = max(self.steps, 1)
        share = self.slowest / max(self.slowest.sum(), 1)
        return {"steps": self.steps, "mean_step_ms": self.busy_s * 1e3 / n,
                "p50_step_ms": self.step_percentile_ms(50), "p99_step_ms": self.step_percentile_ms(99),
                "mean_batch_tokens": self.tokens / n,
                "moe_share": self.moe_us / max(self.busy_s * 1e6, 1e-9),
                "a2a_share": self.a2a_us / max(self.busy_s * 1e6, 1e-9),
                "idle_at_barrier": self.idle_weighted / max(self.moe_us, 1e-9),
                "straggler_share": share.round(4).tolist(),
                "top_straggler_gpu": int(np.argmax(self.slowest))}


@dataclass(frozen=True)
class SimResult:
    """Per request (seconds; NaN where not reached before the end) and step statistics."""

    arrival_s: np.ndarray  # [N]
    first_token_s: np.ndarray  # [N]
    finish_s: np.ndarray  # [N]
    output_len: np.ndarray  # [N]
    end_s: float  # simulated time when the run stopped
    steps: StepStats

    @property
    def finished(self) -> np.ndarray:
        return np.isfinite(self.finish_s)

    def ttft_s(self) -> np.ndarray:
        """[N] time to first token; unserved requests count the time they waited (a lower bound)."""
        return np.where(np.isfinite(self.first_token_s), self.first_token_s, self.end_s) - self.arrival_s

    def tpot_s(self) -> np.ndarray:
        """[N] time per output token after the first; unfinished ones count time so far."""
        last = np.where(self.finished, self.finish_s, self.end_s)
        first = np.where(np.isfinite(self.first_token_s), self.first_token_s, self.end_s)
        return np.where(self.output_len > 1, (last - first) / np.maximum(self.output_len - 1, 1), 0.0)

    def e2e_s(self) -> np.ndarray:
        return np.where(self.finished, self.finish_s, self.end_s) - self.arrival_s


def simulate(workload: Workload, cluster: Cluster, loads: ExpertLoads, placement: Placement, model: ModelSpec,
             scheduler: SchedulerConfig = SchedulerConfig(), hardware: HardwareModel = HardwareModel(),
             trace: RoutingTrace | None = None, routing: str = "sample", seed: int = 0,
             gpu: GpuSpec = GpuSpec(), max_time_s: float | None = None, progress=None) -> SimResult:
    """Serve `workload` with `placement` on `cluster`; stop when every request finished
    or at `max_time_s` of simulated time (default: 3x the last arrival + 60 s).

    progress: optional callable(done_requests, total) called every few hundred steps."""
    placement.check_fits(cluster)
    placement.check_matches(loads)
    check_model_matches(model, loads.num_layers, loads.num_experts, loads.top_k, "loads")
    # Lookup table of expert times up to the step budget, capped at ~4M entries (32 MB).
    table = min(scheduler.max_batch_tokens, 4_000_000 // cluster.num_gpus)
    predictor = Predictor(model, cluster, placement, gpu, table_tokens=table)
    route = make_router(loads, placement, trace, routing)
    route_rng, hw_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    plan = plan_drift(hardware, cluster.num_gpus)
    static = static_speed_ratio(cluster)
    sched = Scheduler(workload, scheduler)
    stats = StepStats(cluster.num_gpus)
    limit = max_time_s if max_time_s is not None else 3.0 * float(workload.arrival_s[-1]) + 60.0
    finished, t = 0, 0.0
    while not sched.done and t < limit:
        batch = sched.schedule(t)
        if batch.requests.size == 0:
            if sched.next_arrival() <= t:  # cannot happen: the scheduler admits onto an empty group
                raise RuntimeError("scheduler made no progress")
            t = sched.next_arrival()  # idle until the next request arrives
            continue
        factors = None if hardware.is_static else speed_factors(plan, t, hw_rng)
        dense_scale = float((static if factors is None else static * factors).max())
        n = batch.num_tokens
        st = predictor.step(n, batch.context, route(n, route_rng), factors, dense_scale)
        t += st.total_us / 1e6
        _, fin = sched.commit(batch, t)
        stats.add(st, n)
        finished += fin.size
        if progress is not None and stats.steps % 256 == 0:
            progress(finished, workload.num_requests)
    if progress is not None:
        progress(finished, workload.num_requests)
    return SimResult(workload.arrival_s, sched.first_token_s, sched.finish_s, workload.output_len, t, stats)


def summarize(result: SimResult, slo_ttft_ms: float, slo_tpot_ms: float) -> dict:
    """The JSON summary: requests, ttft_ms / tpot_ms / e2e_ms percentiles, slo_attainment,
    throughput_tok_s (generated tokens per simulated second), step statistics."""
    ttft, tpot, e2e = result.ttft_s() * 1e3, result.tpot_s() * 1e3, result.e2e_s() * 1e3
    ok = result.finished & (ttft <= slo_ttft_ms) & (tpot <= slo_tpot_ms)
    pct = lambda x: {f"p{q}": float(np.percentile(x, q)) for q in (50, 90, 99)} | {"mean": float(x.mean())}
    gen = float(np.where(result.finished, result.output_len, 0).sum())
    return {"requests": int(len(ttft)), "finished": int(result.finished.sum()),
            "ttft_ms": pct(ttft), "tpot_ms": pct(tpot), "e2e_ms": pct(e2e),
            "slo_attainment": float(ok.mean()), "slo_ttft_ms": slo_ttft_ms, "slo_tpot_ms": slo_tpot_ms,
            "throughput_tok_s": gen / result.end_s if result.end_s > 0 else 0.0,
            "simulated_s": result.end_s, "steps": result.steps.to_dict()}
