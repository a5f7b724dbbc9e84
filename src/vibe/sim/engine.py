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

from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement, RoutingTrace
from vibe.sim.ceiling import CeilingPredictor
from vibe.sim.hardware import HardwareModel, plan_drift, speed_factors, static_speed_ratio
from vibe.sim.models import ModelSpec, check_model_matches
from vibe.sim.predictor import GpuSpec, Predictor, make_router
from vibe.sim.scenario import ScenarioRuntime, rehome_after_loss
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
    events: tuple[dict, ...] = ()  # scenario and online-policy events (t_s, kind, detail, moves, stall_s)

    @property
    def finished(self) -> np.ndarray:
        return np.isfinite(self.finish_s)

    def ttft_s(self) -> np.ndarray:
        """[N] time to first token; unserved requests count the time they waited (a lower bound;
        0 for one arriving after the run stopped, which waited for nothing yet)."""
        return np.maximum(np.where(np.isfinite(self.first_token_s), self.first_token_s, self.end_s)
                          - self.arrival_s, 0.0)

    def tpot_s(self) -> np.ndarray:
        """[N] time per output token after the first; unfinished ones count time so far."""
        last = np.where(self.finished, self.finish_s, self.end_s)
        first = np.where(np.isfinite(self.first_token_s), self.first_token_s, self.end_s)
        return np.where(self.output_len > 1, (last - first) / np.maximum(self.output_len - 1, 1), 0.0)

    def e2e_s(self) -> np.ndarray:
        return np.maximum(np.where(self.finished, self.finish_s, self.end_s) - self.arrival_s, 0.0)


def simulate(workload: Workload, cluster: Cluster, loads: ExpertLoads, placement: Placement, model: ModelSpec,
             scheduler: SchedulerConfig = SchedulerConfig(), hardware: HardwareModel = HardwareModel(),
             trace: RoutingTrace | None = None, routing: str = "sample", seed: int = 0,
             gpu: GpuSpec = GpuSpec(), max_time_s: float | None = None, progress=None,
             scenario=None, online=None, expert_bytes: int | None = None, ceiling: bool = False) -> SimResult:
    """Serve `workload` with `placement` on `cluster`; stop when every request finished
    or at `max_time_s` of simulated time (default: 3x the last arrival + 60 s).

    progress: optional callable(done_requests, total) called every few hundred steps.
    scenario: a vibe.sim.scenario.Scenario (routing switches, lost GPUs) or None.
    online: a policy from vibe.sim.online.make_online, called between steps, or None.
    expert_bytes: one expert's weights, for the re-home stall after a loss (default:
    from the model shape). Without scenario and online the run is the static one.
    ceiling: time every step at the bound of any plan with this placement's slots on
    that step's routing (vibe.sim.ceiling; the placement gives only the slot count)."""
    placement.check_fits(cluster)
    placement.check_matches(loads)
    check_model_matches(model, loads.num_layers, loads.num_experts, loads.top_k, "loads")
    # Lookup table of expert times up to the step budget, capped at ~4M entries (32 MB).
    table = min(scheduler.max_batch_tokens, 4_000_000 // cluster.num_gpus)
    if ceiling and (scenario is not None or online is not None):
        raise VibeError("the placement ceiling is for static runs (no scenario, no online policy)")
    predictor = (CeilingPredictor if ceiling else Predictor)(model, cluster, placement, gpu, table_tokens=table)
    route = make_router(loads, placement, trace, routing)
    route_rng, hw_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    plan = plan_drift(hardware, cluster.num_gpus)
    static = static_speed_ratio(cluster)
    sched = Scheduler(workload, scheduler)
    stats = StepStats(cluster.num_gpus)
    limit = max_time_s if max_time_s is not None else 3.0 * float(workload.arrival_s[-1]) + 60.0
    world = None if scenario is None or scenario.is_empty else ScenarioRuntime(scenario, loads, trace, placement,
                                                                                  routing)
    events: list[dict] = _fixed_events(world, hardware)
    down: tuple[int, ...] = ()
    finished, t = 0, 0.0
    while not sched.done and t < limit:
        if world is not None and (loss := world.next_loss(t)) is not None:
            t, placement, down = _lose_gpu(loss, t, placement, down, world, loads, cluster, model, online,
                                           expert_bytes, events)
            predictor = Predictor(model, cluster, placement, gpu, table_tokens=table,
                                  dense_gpus=cluster.num_gpus - len(down))
            continue  # another loss may be due by now
        batch = sched.schedule(t)
        if batch.requests.size == 0:
            if sched.next_arrival() <= t:  # cannot happen: the scheduler admits onto an empty group
                raise RuntimeError("scheduler made no progress")
            t = sched.next_arrival()  # idle until the next request arrives
            continue
        factors = None if hardware.is_static else speed_factors(plan, t, hw_rng)
        if down:  # a lost GPU does no work and sets no pace
            factors = np.ones(cluster.num_gpus) if factors is None else factors.copy()
            factors[list(down)] = 0.0
        dense_scale = float((static if factors is None else static * factors).max())
        n = batch.num_tokens
        counts = (route if world is None else world.router(t))(n, route_rng)
        st = predictor.step(n, batch.context, counts, factors, dense_scale)
        t += st.total_us / 1e6
        _, fin = sched.commit(batch, t)
        stats.add(st, n)
        finished += fin.size
        if online is not None:
            seen = st.gpu_us.copy()
            seen[list(down)] = np.nan  # a lost GPU reports nothing
            action = online.observe(t, counts, seen)
            if action is not None:
                t = _apply(action, t, events, online.name)
                placement = action.placement
                predictor = Predictor(model, cluster, placement, gpu, table_tokens=table,
                                      dense_gpus=cluster.num_gpus - len(down))
        if progress is not None and stats.steps % 256 == 0:
            progress(finished, workload.num_requests)
    if progress is not None:
        progress(finished, workload.num_requests)
    return SimResult(workload.arrival_s, sched.first_token_s, sched.finish_s, workload.output_len, t, stats,
                     tuple(e for e in events if e["t_s"] <= t))


def _fixed_events(world, hardware: HardwareModel) -> list[dict]:
    """Events known up front: routing switches and named throttles."""
    ev = [] if world is None else list(world.switch_events)
    ev += [{"t_s": th.start_s, "kind": "throttle", "detail": f"GPU {th.gpu} +{100 * th.slowdown:.0f}% time"}
           for th in hardware.throttles]
    return ev


def _apply(action, t: float, events: list[dict], policy: str) -> float:
    """Log a policy's action and return the clock after its stall."""
    events.append({"t_s": t, "kind": "resolve" if policy == "periodic" else "repair", "policy": policy,
                   "detail": action.reason, "moves": action.moves, "bytes": action.bytes, "stall_s": action.stall_s})
    return t + action.stall_s


def _lose_gpu(loss, t: float, placement: Placement, down: tuple[int, ...], world, loads: ExpertLoads,
              cluster: Cluster, model: ModelSpec, online, expert_bytes: int | None,
              events: list[dict]) -> tuple[float, Placement, tuple[int, ...]]:
    """A GPU loss (scenario.py): stall until detected, drop the GPU, re-home its lone
    experts (stalling for their reload), then let the online policy react.
    Returns (clock, plan, lost GPUs)."""
    from vibe.sim.online import migration_stall_s, model_expert_bytes, moves_per_gpu

    size = expert_bytes if expert_bytes is not None else model_expert_bytes(model)
    down = tuple(sorted(down + (loss.gpu,)))
    t = max(t, loss.at_s + world.detect_s)
    events.append({"t_s": loss.at_s, "kind": "loss", "detail": f"GPU {loss.gpu} lost", "moves": 0, "bytes": 0,
                   "stall_s": t - loss.at_s})
    placement, moves = rehome_after_loss(placement, loads, cluster, down)
    stall = migration_stall_s(moves_per_gpu(moves, placement.slots_per_gpu, placement.num_gpus), size,
                              world.rehome_gbps)
    events.append({"t_s": t, "kind": "rehome", "detail": f"{len(moves)} experts of GPU {loss.gpu} re-homed",
                   "moves": len(moves), "bytes": len(moves) * size, "stall_s": stall})
    t += stall
    if online is not None:
        action = online.gpu_lost(down, placement)
        if action is not None:
            t = _apply(action, t, events, online.name)
            placement = action.placement
    return t, placement, down


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


def summarize_windows(result: SimResult, slo_ttft_ms: float, slo_tpot_ms: float, window_s: float,
                      until_s: float | None = None) -> list[dict]:
    """Per window of arrival time [k w, (k + 1) w): requests that arrived in it, their SLO
    attainment and P90 TTFT (unfinished requests count as misses, as in `summarize`).
    Windows run up to `until_s` (default: the last arrival)."""
    if not window_s > 0:
        raise VibeError("the window must be > 0 s")
    ttft, tpot = result.ttft_s() * 1e3, result.tpot_s() * 1e3
    ok = result.finished & (ttft <= slo_ttft_ms) & (tpot <= slo_tpot_ms)
    end = float(result.arrival_s[-1]) if until_s is None else until_s
    k = np.floor(result.arrival_s / window_s).astype(np.int64)
    rows = []
    for w in range(int(np.floor(end / window_s)) + 1):
        sel = k == w
        n = int(sel.sum())
        rows.append({"start_s": w * window_s, "end_s": (w + 1) * window_s, "requests": n,
                     "slo_attainment": float(ok[sel].mean()) if n else float("nan"),
                     "p90_ttft_ms": float(np.percentile(ttft[sel], 90)) if n else float("nan")})
    return rows


def online_totals(result: SimResult) -> dict:
    """Moves, bytes and stall seconds of the online policy's actions, of the re-homes
    after losses, and the stall waiting for losses to be detected."""
    pol = [e for e in result.events if e["kind"] in ("repair", "resolve")]
    home = [e for e in result.events if e["kind"] == "rehome"]
    return {"actions": len(pol), "moves": int(sum(e["moves"] for e in pol)),
            "bytes": int(sum(e["bytes"] for e in pol)), "stall_s": float(sum(e["stall_s"] for e in pol)),
            "rehome_moves": int(sum(e["moves"] for e in home)), "rehome_stall_s": float(sum(e["stall_s"] for e in home)),
            "detect_stall_s": float(sum(e["stall_s"] for e in result.events if e["kind"] == "loss"))}
