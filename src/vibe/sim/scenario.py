"""What happens to the serving system over time, apart from the requests: the routing
profile (or routing trace) switching at given times, and GPUs lost at given times.
(GPUs slowing down are in hardware.py: jitter, thermal drift, named throttles.)

Routing switches: from `at_s` on, every step's tokens are routed by the switch's loads
(or, when it carries one, its routing trace), until the next switch. Before the first
switch the run's own loads / trace route.

A lost GPU, the behaviour the engine implements (documented in docs/simulator.md):
  1. at `at_s` the GPU stops; the plan still dispatches tokens to its slots, so the
     all-to-all of the next step cannot complete and serving stalls until the loss is
     detected, `detect_s` later (a collective timeout / health check);
  2. the serving system then drops the GPU: its slots get replica_weights 0 (no
     tokens), experts with a replica elsewhere are served there, and every expert whose
     only replica was on the lost GPU is re-homed onto a live GPU (the cheapest forced
     moves of vibe.recal.repair_placement), its weights reloaded from host memory at
     `rehome_gbps` per receiving GPU; serving stalls for that transfer too;
  3. attention (data-parallel) continues on the G - 1 live GPUs; the requests themselves
     are kept (the model does not lose KV caches).
This happens under every online policy (a static plan cannot serve otherwise); the
policies differ in what they do afterwards.

Shapes: L MoE layers, E experts, G GPUs, P slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vibe.errors import VibeError
from vibe.model import ExpertLoads, Placement, RoutingTrace

DEFAULT_DETECT_S = 2.0  # seconds from a GPU's loss to the serving system dropping it
DEFAULT_REHOME_GBPS = 20.0  # GB/s per GPU reloading a lost expert from host memory (PCIe, achieved)


@dataclass(frozen=True)
class RoutingSwitch:
    """From `at_s` on, route by `loads` (or by `trace`, when given)."""

    at_s: float
    loads: ExpertLoads
    trace: RoutingTrace | None = None
    label: str = ""


@dataclass(frozen=True)
class GpuLoss:
    """GPU `gpu` stops at `at_s`."""

    gpu: int
    at_s: float


@dataclass(frozen=True)
class Scenario:
    switches: tuple[RoutingSwitch, ...] = ()
    losses: tuple[GpuLoss, ...] = ()
    detect_s: float = DEFAULT_DETECT_S
    rehome_gbps: float = DEFAULT_REHOME_GBPS

    @property
    def is_empty(self) -> bool:
        return not self.switches and not self.losses


def check_scenario(sc: Scenario, placement: Placement) -> None:
    """Switches fit the plan's layers and experts; lost GPUs are ranks, each lost once,
    and enough GPUs stay to hold every expert."""
    from vibe.sim.predictor import check_trace_matches

    if sc.detect_s < 0 or sc.rehome_gbps <= 0:
        raise VibeError("the loss detection delay must be >= 0 s and the re-home bandwidth > 0")
    for k, s in enumerate(sc.switches):
        if not (s.at_s >= 0 and np.isfinite(s.at_s)):
            raise VibeError(f"switch {k + 1}: time must be >= 0 s, got {s.at_s}")
        placement.check_matches(s.loads, s.label or f"switch {k + 1}")
        if s.trace is not None:
            check_trace_matches(s.trace, placement, s.label or f"switch {k + 1}")
    gpus = [x.gpu for x in sc.losses]
    if len(set(gpus)) != len(gpus):
        raise VibeError("a GPU can be lost only once")
    for x in sc.losses:
        if not 0 <= x.gpu < placement.num_gpus:
            raise VibeError(f"lost GPU {x.gpu} is not a rank of the {placement.num_gpus}-GPU plan")
        if not (x.at_s >= 0 and np.isfinite(x.at_s)):
            raise VibeError(f"GPU {x.gpu}: loss time must be >= 0 s, got {x.at_s}")
    live = placement.num_gpus - len(gpus)
    if sc.losses and live * placement.slots_per_gpu < placement.num_logical_experts:
        raise VibeError(f"after losing {len(gpus)} GPU(s), {live} x {placement.slots_per_gpu} slots cannot hold "
                        f"{placement.num_logical_experts} experts: make the plan with more redundant slots")


def phase_at(switch_times: np.ndarray, t_s: float) -> int:
    """Index of the routing phase active at t_s: 0 before the first switch, k after the
    k-th (switch_times sorted ascending)."""
    return int(np.searchsorted(switch_times, t_s, side="right"))


def orphans(placement: Placement, down: tuple[int, ...]) -> np.ndarray:
    """[L, E] True where an expert has no slot on a live GPU."""
    live = ~np.isin(placement.gpu_of_slot, np.asarray(down, dtype=np.int64))  # [P]
    L, E = placement.num_layers, placement.num_logical_experts
    flat = (np.arange(L)[:, None] * E + placement.physical_to_logical_map)[:, live]
    return np.bincount(flat.ravel(), minlength=L * E).reshape(L, E) == 0


def rehome_after_loss(placement: Placement, loads: ExpertLoads, cluster, down: tuple[int, ...],
                      options=None) -> tuple[Placement, tuple]:
    """The plan once lost GPUs `down` are dropped: their slots get replica_weights 0 and
    every expert left without a live slot is re-homed by the cheapest forced moves of
    vibe.recal.repair_placement (for `loads`, the profile the plan serves). Returns
    (plan, moves)."""
    from vibe.policies.base import PlacementOptions
    from vibe.recal import repair_placement

    need = int(orphans(placement, down).sum())
    r = repair_placement(placement, loads, cluster, options or PlacementOptions(), max_moves=need, down_gpus=down)
    return r.placement, r.moves


class ScenarioRuntime:
    """The scenario as the engine meets it, step by step: which router routes at time t
    (the phase of the latest switch) and which GPU losses are due."""

    def __init__(self, scenario: Scenario, loads: ExpertLoads, trace: RoutingTrace | None, placement: Placement,
                 routing: str):
        from vibe.sim.predictor import make_router

        check_scenario(scenario, placement)
        order = sorted(range(len(scenario.switches)), key=lambda k: scenario.switches[k].at_s)
        switches = [scenario.switches[k] for k in order]
        self.times = np.array([s.at_s for s in switches], dtype=np.float64)  # [K] ascending
        self.routers = [make_router(loads, placement, trace, routing)] + [
            make_router(s.loads, placement, s.trace, routing) for s in switches]
        self.pending = sorted(scenario.losses, key=lambda x: x.at_s)
        self.detect_s = scenario.detect_s
        self.rehome_gbps = scenario.rehome_gbps
        self.switch_events = [{"t_s": s.at_s, "kind": "switch", "detail": f"routing -> {s.label or f'switch {k + 1}'}"}
                              for k, s in enumerate(switches)]

    def router(self, t_s: float):
        return self.routers[phase_at(self.times, t_s)]

    def next_loss(self, t_s: float) -> GpuLoss | None:
        """The earliest loss not handled yet with at_s <= t_s (removed from the queue)."""
        if self.pending and self.pending[0].at_s <= t_s:
            return self.pending.pop(0)
        return None
