"""Online placement policies: what the serving system does to its plan while it serves.
The engine calls the policy between steps with what a real system can observe (the
step's routed counts and each GPU's MoE time); a policy may answer with a new plan,
which the engine charges as a stall of serving while the weights move.

  none      the static plan (a lost GPU's experts are still re-homed: scenario.py)
  periodic  EPLB-style: every `period_steps` steps, a full re-solve from the counts of
            the last `window_steps` steps (the plan's own solver, `resolve_policy`, on
            the cluster file's curves: it does not measure the hardware), its slots
            aligned with the old plan so that only real changes count as moves
  vibe      drift-triggered incremental repair: the workload and hardware drift
            detectors of vibe.recal watch every step; when one fires, repair_placement
            starts from the current plan with at most `max_moves` moves (each must pay
            for its stall over `horizon_steps`, the worth-it rule), for the detector's
            window of counts and on the re-profiled cluster.
            Observations: a step of a few decode tokens is too noisy to compare expert
            shares on (the detector's thresholds sit above the noise of ~2k-token
            observations), and the hardware check costs about a step's time, so the
            workload detector sees sums of >= `observe_tokens` tokens (like periodic
            expert-count dumps) and the hardware detector one step in `hw_sample`.
            Rounds: a repair that spends its whole budget has more to gain, so up to
            `rounds` repairs of `max_moves` each run per drift episode, `round_gap_steps`
            apart, each for the latest window (the stall stays bounded per round, and
            later rounds see only traffic from after the drift)

Migration stall: a moved expert's weights (3 x hidden x moe_intermediate x weight
bytes, from the model shape; e.g. DeepSeek-V2-Lite in bf16: 17.3 MB) travel to the
GPU of its new slot. Transfers to different GPUs run in parallel, each GPU receiving
over one link of `link_gbps` (default 50 GB/s, one 400 Gb/s NIC: weights may come from
another node); serving pauses until the busiest receiver is done:

    stall_s = max_g (moves into GPU g) x expert_bytes / (link_gbps x 1e9)

The solver's own run time is not charged: it runs beside serving, on the host.

Shapes: L MoE layers, E experts, G GPUs, P = G x S slots.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies.base import PlacementOptions

ONLINE_POLICIES = ("none", "periodic", "vibe")
DEFAULT_LINK_GBPS = 50.0  # GB/s per receiving GPU: one 400 Gb/s NIC (NVLink would be ~9x faster)
DEFAULT_PERIOD_STEPS = 1000  # periodic re-solve interval: ~10-20 s of serving at 10-20 ms per step
DEFAULT_MAX_MOVES = 64  # vibe: moves per repair (a full re-solve of an ESFT plan moves ~1,700)
DEFAULT_HORIZON_STEPS = 10_000  # vibe: a move must pay its stall back within this many steps
DEFAULT_DETECT_WINDOW = 8  # vibe: observations in the workload detector's window
DEFAULT_OBSERVE_TOKENS = 4096  # vibe: tokens summed into one workload observation (a "dump")
DEFAULT_HW_SAMPLE = 8  # vibe: the hardware detector checks one step in this many
DEFAULT_ROUNDS = 4  # vibe: repair rounds per drift episode (each at most max_moves moves)
DEFAULT_ROUND_GAP_STEPS = 200  # vibe: steps between the rounds of one episode


@dataclass(frozen=True)
class OnlineConfig:
    policy: str = "none"  # none | periodic | vibe
    period_steps: int = DEFAULT_PERIOD_STEPS
    window_steps: int | None = None  # periodic: steps of counts to re-solve from (None: the period)
    resolve_policy: str = "vibe"  # periodic: the solver of the full re-solve
    max_moves: int = DEFAULT_MAX_MOVES
    horizon_steps: float = DEFAULT_HORIZON_STEPS
    detect_window: int = DEFAULT_DETECT_WINDOW
    observe_tokens: int = DEFAULT_OBSERVE_TOKENS
    hw_sample: int = DEFAULT_HW_SAMPLE
    rounds: int = DEFAULT_ROUNDS
    round_gap_steps: int = DEFAULT_ROUND_GAP_STEPS
    link_gbps: float = DEFAULT_LINK_GBPS
    expert_bytes: int | None = None  # None: from the model shape
    options: PlacementOptions = PlacementOptions()  # objective of re-solves and repairs


def check_online(cfg: OnlineConfig) -> None:
    if cfg.policy not in ONLINE_POLICIES:
        raise VibeError(f"unknown online policy {cfg.policy!r} ({', '.join(ONLINE_POLICIES)})")
    if cfg.period_steps < 1 or (cfg.window_steps is not None and cfg.window_steps < 1):
        raise VibeError("the re-solve period and window must be >= 1 step")
    if cfg.max_moves < 0:
        raise VibeError("--max-moves must be >= 0")
    if not cfg.link_gbps > 0 or not cfg.horizon_steps > 0:
        raise VibeError("link bandwidth and horizon must be > 0")
    if cfg.detect_window < 1 or cfg.observe_tokens < 1 or cfg.hw_sample < 1 or cfg.rounds < 1 \
            or cfg.round_gap_steps < 1:
        raise VibeError("the detector window, tokens per observation and hardware sampling must be >= 1")
    if cfg.policy == "periodic":
        from vibe.policies import available_policies

        if cfg.resolve_policy not in available_policies():
            raise VibeError(f"unknown re-solve policy {cfg.resolve_policy!r} ({', '.join(available_policies())})")


@dataclass(frozen=True)
class Action:
    """A policy's decision: serve with `placement` from now on, after a stall of `stall_s`
    while `moves` experts (`bytes` in all) travel."""

    placement: Placement
    moves: int
    bytes: int
    stall_s: float
    reason: str


# ---- migration cost ------------------------------------------------------------------
def model_expert_bytes(model) -> int:
    """Bytes of one routed expert (gate, up, down: 3 x hidden x moe_intermediate)."""
    return int(3 * model.hidden * model.moe_intermediate * model.weight_bytes)


def changed_slots_per_gpu(old: Placement, new: Placement) -> np.ndarray:
    """[G] slots (all layers) whose expert differs between two plans, per GPU."""
    diff = old.physical_to_logical_map != new.physical_to_logical_map  # [L, P]
    return np.bincount(np.broadcast_to(old.gpu_of_slot, diff.shape)[diff], minlength=old.num_gpus)


def moves_per_gpu(moves: Sequence, slots_per_gpu: int, num_gpus: int) -> np.ndarray:
    """[G] how many of `moves` (vibe.recal.Move) land on each GPU."""
    return np.bincount([m.slot // slots_per_gpu for m in moves], minlength=num_gpus).astype(np.int64)


def migration_stall_s(per_gpu: np.ndarray, expert_bytes: int, link_gbps: float) -> float:
    """Seconds serving pauses while GPU g receives per_gpu[g] experts, all GPUs at once."""
    if link_gbps <= 0:
        raise VibeError("link bandwidth must be > 0")
    return float(np.max(per_gpu, initial=0)) * expert_bytes / (link_gbps * 1e9)


# ---- the policies --------------------------------------------------------------------
class StaticPlan:
    """`none`: never changes the plan."""

    name = "none"

    def __init__(self, placement: Placement):
        self.placement = placement

    def observe(self, t_s: float, counts: np.ndarray, gpu_us: np.ndarray | None) -> Action | None:
        return None

    def gpu_lost(self, down: tuple[int, ...], placement: Placement) -> Action | None:
        self.placement = placement
        return None


class PeriodicResolve:
    """`periodic`: a full re-solve every `period_steps` steps from the last window's counts."""

    name = "periodic"

    def __init__(self, cfg: OnlineConfig, cluster: Cluster, loads: ExpertLoads, placement: Placement,
                 expert_bytes: int):
        self.cfg, self.cluster, self.placement, self.bytes = cfg, cluster, placement, expert_bytes
        self.top_k, self.layer_ids, self.model = loads.top_k, loads.layer_ids, loads.model
        self.recent: collections.deque = collections.deque(maxlen=cfg.window_steps or cfg.period_steps)
        self.steps = 0
        self.down: tuple[int, ...] = ()

    def observe(self, t_s: float, counts: np.ndarray, gpu_us: np.ndarray | None) -> Action | None:
        from vibe.recal import full_resolve

        self.recent.append(np.asarray(counts, dtype=np.float64))
        self.steps += 1
        if self.steps % self.cfg.period_steps:
            return None
        window = np.sum(self.recent, axis=0)
        if not np.all(window.sum(axis=1) > 0):
            return None  # a layer saw no token: nothing to re-solve from
        loads = ExpertLoads(window, self.top_k, self.layer_ids, self.model, {"source": "window"})
        new = full_resolve(self.placement, loads, self.cluster, self.cfg.options, self.down, self.cfg.resolve_policy)
        per_gpu = changed_slots_per_gpu(self.placement, new)
        n = int(per_gpu.sum())
        self.placement = new
        if n == 0:
            return None
        return Action(new, n, n * self.bytes, migration_stall_s(per_gpu, self.bytes, self.cfg.link_gbps),
                      f"periodic full re-solve (step {self.steps})")

    def gpu_lost(self, down: tuple[int, ...], placement: Placement) -> Action | None:
        self.down, self.placement = down, placement
        return None  # the next period re-solves on the live GPUs


class DriftRepair:
    """`vibe`: detectors -> repair_placement with a move budget (module docstring)."""

    name = "vibe"

    def __init__(self, cfg: OnlineConfig, cluster: Cluster, loads: ExpertLoads, placement: Placement,
                 expert_bytes: int):
        from vibe.recal.drift import HardwareDriftDetector, WorkloadDriftDetector

        self.cfg, self.cluster, self.placement, self.bytes = cfg, cluster, placement, expert_bytes
        self.profile = loads
        self.down: tuple[int, ...] = ()
        self.wd = WorkloadDriftDetector(loads, window=cfg.detect_window)
        self.hd = HardwareDriftDetector(cluster, placement)
        # the worth-it rule per move: its stall (one GPU's link) spread over the horizon
        self.min_gain_us = expert_bytes / (cfg.link_gbps * 1e9) * 1e6 / cfg.horizon_steps
        self.acc = np.zeros_like(loads.counts, dtype=np.float64)  # [L, E] counts of the open observation
        self.steps = 0
        self.rounds_left = 0  # further repair rounds of the current drift episode
        self.next_round: int | None = None  # step of the next round, if any

    def observe(self, t_s: float, counts: np.ndarray, gpu_us: np.ndarray | None) -> Action | None:
        self.steps += 1
        self.acc += counts
        w = h = None
        if self.acc[0].sum() >= self.cfg.observe_tokens * self.profile.top_k:
            w = self.wd.update(self.acc)
            self.acc = np.zeros_like(self.acc)
        if gpu_us is not None and self.steps % self.cfg.hw_sample == 0:
            h = self.hd.update(gpu_us, counts)
        if h is not None:
            self.cluster = h.cluster  # the slow GPU's curve scaled by its observed ratio
        if w is None and h is None:
            if self.next_round is None or self.steps < self.next_round:
                return None
            self.rounds_left -= 1
            done = self.cfg.rounds - self.rounds_left
            return self._repair(self._window_loads(), f"repair round {done}/{self.cfg.rounds}")
        reason = "; ".join(d.describe() for d in (w, h) if d is not None)
        self.rounds_left = self.cfg.rounds - 1  # a new episode
        return self._repair(w.loads if w is not None else self.profile, reason)

    def _window_loads(self) -> ExpertLoads:
        """The detector's window of counts as loads (the profile while it is empty)."""
        window = self.wd.window_counts()
        if not np.all(window.sum(axis=1) > 0):
            return self.profile
        return dataclasses.replace(self.profile, counts=window)

    def gpu_lost(self, down: tuple[int, ...], placement: Placement) -> Action | None:
        from vibe.recal.drift import scale_gpus

        self.down, self.placement = down, placement
        self.cluster = scale_gpus(self.cluster, {}, down)
        self.rounds_left = self.cfg.rounds - 1
        return self._repair(self._window_loads(), f"GPU {', '.join(map(str, down))} lost: rebalance on the live GPUs")

    def _repair(self, loads: ExpertLoads, reason: str) -> Action | None:
        from vibe.recal import repair_placement

        r = repair_placement(self.placement, loads, self.cluster, self.cfg.options, max_moves=self.cfg.max_moves,
                             down_gpus=self.down, min_gain_us=self.min_gain_us)
        self.profile = loads
        self.wd.rebase(loads)
        self.hd.rebase(self.cluster, r.placement)
        self.placement = r.placement
        spent = len(r.moves) >= self.cfg.max_moves > 0
        self.next_round = self.steps + self.cfg.round_gap_steps if spent and self.rounds_left > 0 else None
        if not r.moves:
            return None
        per_gpu = moves_per_gpu(r.moves, self.placement.slots_per_gpu, self.placement.num_gpus)
        n = len(r.moves)
        return Action(r.placement, n, n * self.bytes, migration_stall_s(per_gpu, self.bytes, self.cfg.link_gbps),
                      f"{reason} -> {n} moves, predicted {r.before_us:,.0f} -> {r.after_us:,.0f} us")


def make_online(cfg: OnlineConfig, cluster: Cluster, loads: ExpertLoads, placement: Placement, model):
    """The policy object for cfg.policy, made for `placement` (planned for `loads`)."""
    check_online(cfg)
    size = cfg.expert_bytes if cfg.expert_bytes is not None else model_expert_bytes(model)
    if cfg.policy == "none":
        return StaticPlan(placement)
    if cfg.policy == "periodic":
        return PeriodicResolve(cfg, cluster, loads, placement, size)
    return DriftRepair(cfg, cluster, loads, placement, size)


def run_online(spec, cluster: Cluster, loads: ExpertLoads, placement: Placement, qps: float | None, seed: int,
               scenario, configs: dict[str, OnlineConfig], window_s: float, progress=None) -> dict:
    """The same workload, scenario and seed under each online policy of `configs`
    (name -> config). Returns {"events": the scenario's own events, "policies": {name:
    {"summary", "windows", "totals", "events"}}} (spec: a vibe.sim.sweep.SweepSpec)."""
    from vibe.sim.engine import online_totals, simulate, summarize, summarize_windows
    from vibe.sim.sweep import make_workload, routing_trace

    trace = None if spec.routing_trace is None else routing_trace(spec.routing_trace)
    workload = make_workload(spec, qps, seed)
    until = float(workload.arrival_s[-1])
    out: dict = {"qps": float(qps) if qps is not None else workload.qps, "seed": int(seed), "policies": {}}
    for name, cfg in configs.items():
        policy = make_online(cfg, cluster, loads, placement, spec.model)
        res = simulate(workload, cluster, loads, placement, spec.model, spec.scheduler,
                       dataclasses.replace(spec.hardware, seed=spec.hardware.seed + seed), trace, spec.routing, seed,
                       spec.gpu, progress=progress, scenario=scenario, online=policy,
                       expert_bytes=cfg.expert_bytes)
        out["policies"][name] = {"summary": summarize(res, spec.slo_ttft_ms, spec.slo_tpot_ms),
                                 "windows": summarize_windows(res, spec.slo_ttft_ms, spec.slo_tpot_ms, window_s, until),
                                 "totals": online_totals(res), "events": list(res.events)}
        out["events"] = [e for e in res.events if e["kind"] in ("switch", "throttle", "loss")]
    return out


def action_times(result: dict) -> dict[str, list[float]]:
    """run_online's result -> {policy: times of its plan changes} (for the plot's ticks)."""
    return {p: [e["t_s"] for e in r["events"] if e["kind"] in ("repair", "resolve")]
            for p, r in result["policies"].items()}


def attainment_after(windows: list[dict], after_s: float, before_s: float = float("inf")) -> float:
    """SLO attainment of the requests arriving in [after_s, before_s) (windows weighted
    by requests; windows are taken whole by their start)."""
    rows = [w for w in windows if after_s <= w["start_s"] < before_s and w["requests"]]
    n = sum(w["requests"] for w in rows)
    return float(sum(w["slo_attainment"] * w["requests"] for w in rows) / n) if n else float("nan")
