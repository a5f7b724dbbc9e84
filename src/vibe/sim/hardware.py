"""Hardware over time: the cluster's static per-GPU speeds, plus optional per-step jitter
and slow thermal drift, all from a seed.

The static part lives in the cluster's latency curves (the cost model applies it). This
module only returns the *time-varying* multipliers, one per GPU per step:

    factor[g](t) = drift[g](t) * jitter[g]
    drift[g](t)  = 1 + slowdown_g * clip((t - start_g) / ramp_s, 0, 1)   (drifting GPUs only)
    jitter[g]    ~ LogNormal(0, jitter_cv), independent per step and GPU

which models a GPU heating up and clocking down after some minutes, and run-to-run noise.
`throttles` add named events on top: GPU g takes (1 + slowdown) x its time from
`start_s` on (reached over `ramp_s`), e.g. a power cap imposed at a known time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vibe.errors import VibeError


@dataclass(frozen=True)
class Throttle:
    """GPU `gpu` slows to (1 + slowdown) x its time from `start_s`, over `ramp_s` seconds."""

    gpu: int
    start_s: float
    slowdown: float
    ramp_s: float = 0.0


@dataclass(frozen=True)
class HardwareModel:
    jitter_cv: float = 0.0  # per-step log-normal noise on each GPU's time (0: none)
    drift_gpus: int = 0  # how many GPUs (chosen from the seed) clock down over time
    drift_slowdown: float = 0.15  # their final extra time fraction
    drift_start_s: float = 120.0  # earliest onset; each drifting GPU starts in [start, 2*start)
    drift_ramp_s: float = 60.0  # time to reach the full slowdown
    seed: int = 0
    throttles: tuple[Throttle, ...] = ()  # named slow-downs at given times

    @property
    def is_static(self) -> bool:
        return self.jitter_cv == 0 and self.drift_gpus == 0 and not self.throttles


def check_hardware(hw: HardwareModel, num_gpus: int) -> None:
    if hw.jitter_cv < 0 or hw.drift_slowdown < 0 or hw.drift_ramp_s <= 0 or hw.drift_start_s < 0:
        raise VibeError("jitter and drift settings must be >= 0 (ramp > 0)")
    if not 0 <= hw.drift_gpus <= num_gpus:
        raise VibeError(f"--drift-gpus must lie in 0..{num_gpus}")
    for th in hw.throttles:
        if not 0 <= th.gpu < num_gpus:
            raise VibeError(f"throttled GPU {th.gpu} is not a rank of the {num_gpus}-GPU cluster")
        if th.start_s < 0 or th.slowdown < 0 or th.ramp_s < 0:
            raise VibeError("a throttle's start, slowdown and ramp must be >= 0")


@dataclass(frozen=True)
class DriftPlan:
    """Which GPUs drift and when they start: drawn once from the seed."""

    slowdown: np.ndarray  # [G] final extra time fraction (0 for steady GPUs)
    start_s: np.ndarray  # [G]
    ramp_s: float
    jitter_cv: float
    throttles: tuple[Throttle, ...] = ()


def plan_drift(hw: HardwareModel, num_gpus: int) -> DriftPlan:
    check_hardware(hw, num_gpus)
    rng = np.random.default_rng([hw.seed, 7])
    slowdown = np.zeros(num_gpus)
    chosen = rng.choice(num_gpus, size=hw.drift_gpus, replace=False)
    slowdown[chosen] = hw.drift_slowdown
    with np.errstate(over="ignore"):  # an onset past ~1e308 s becomes inf: never, as it means
        start = hw.drift_start_s * (1.0 + rng.random(num_gpus))
    return DriftPlan(slowdown, start, hw.drift_ramp_s, hw.jitter_cv, tuple(hw.throttles))


def speed_factors(plan: DriftPlan, t_s: float, rng: np.random.Generator) -> np.ndarray:
    """[G] multipliers on each GPU's time at simulated time `t_s` (1 = its static speed)."""
    f = 1.0 + plan.slowdown * np.clip((t_s - plan.start_s) / plan.ramp_s, 0.0, 1.0)
    for th in plan.throttles:
        if t_s >= th.start_s:
            done = 1.0 if th.ramp_s == 0 else min((t_s - th.start_s) / th.ramp_s, 1.0)
            f[th.gpu] *= 1.0 + th.slowdown * done
    if plan.jitter_cv > 0:
        f = f * np.exp(plan.jitter_cv * rng.standard_normal(f.shape))
    return f


def static_speed_ratio(cluster) -> np.ndarray:
    """[G] each GPU's time relative to the median GPU, averaged over its curve's points.

    Used to slow the non-expert part (attention, dense layers) of a slow GPU too."""
    _, us = cluster.latency_table()
    return (us / np.median(us, axis=0, keepdims=True)).mean(axis=1)
