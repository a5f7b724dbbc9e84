"""Drift detectors: has the workload or the hardware moved away from what the plan assumed?

Both are fed one observation at a time and answer None (nothing to do) or a report of
what drifted; both fire once per drift episode and re-arm on `rebase` (after the plan
was repaired) or, for the workload, once the window looks like the profile again.

    wd = WorkloadDriftDetector(profile_loads)         # the loads the plan was made for
    drift = wd.update(counts)                          # counts [L, E] of one step or dump
    if drift: repair for drift.loads (the window's counts); drift.layers says which layers

    hd = HardwareDriftDetector(cluster, placement, top_k)
    drift = hd.update(gpu_us, counts)                  # observed per-GPU MoE time [G] or [L, G]
    if drift: repair on drift.cluster                  #  (NaN: no report), counts [L, E] of that step

Workload: per layer, the total-variation distance 0.5 * sum_e |p_e - q_e| and the cosine
distance 1 - cos(p, q) between the expert shares p of a sliding window of the last
`window` observations and the shares q of the profile. A layer drifted when either
distance passes its threshold; the detector fires when at least `min_layers` layers
drifted in `patience` consecutive updates (hysteresis: noise of one odd step does not
fire it) and re-arms when fewer than `min_layers` layers stay above `clear_ratio` x the
thresholds. Defaults, measured on the ESFT domains (26 layers x 64 experts): between
two domains the per-layer TV is 0.28-0.36 (median), the cosine distance 0.26-0.32;
sampling noise of a single 256-token step drawn from the profile's own trace is TV
0.06-0.08, cosine < 0.015.

Hardware: the cost model predicts every GPU's time for the step's counts on the current
plan (vibe.cost); the ratio observed / predicted of each GPU is kept over the last
`window` updates. A GPU whose median ratio stays off by more than `threshold` (5%) over
a full window is re-profiled: the new Cluster has its curve and overhead scaled by that
ratio. A GPU that misses `missing_after` consecutive reports, or is marked
`"state": "down"` in the cluster, is lost; the new Cluster marks it down.

Shapes: L MoE layers, E experts, G GPUs.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vibe.cost import gpu_times_from_slot_tokens
from vibe.errors import InputError, VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.model.cluster import _interp_extrap

DEFAULT_WINDOW = 8  # observations (steps or dumps) in the sliding window
DEFAULT_TV_THRESHOLD = 0.15
DEFAULT_COS_THRESHOLD = 0.08
DEFAULT_PATIENCE = 2
DEFAULT_CLEAR_RATIO = 0.5
DEFAULT_HW_THRESHOLD = 0.05
DEFAULT_MISSING_AFTER = 3
PERSISTENT_SHARE = 0.8  # share of the window a GPU must be off by more than the threshold


def share_distances(counts: np.ndarray, profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer (total variation, cosine distance) of two count matrices [L, E] -> [L], [L].
    A layer without any count in either matrix has distance 0."""
    p = np.asarray(counts, dtype=np.float64)
    q = np.asarray(profile, dtype=np.float64)
    ps, qs = p.sum(axis=1, keepdims=True), q.sum(axis=1, keepdims=True)
    seen = (ps[:, 0] > 0) & (qs[:, 0] > 0)
    p = np.divide(p, ps, out=np.zeros_like(p), where=ps > 0)
    q = np.divide(q, qs, out=np.zeros_like(q), where=qs > 0)
    tv = 0.5 * np.abs(p - q).sum(axis=1)
    norm = np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1)
    cos = 1.0 - np.divide((p * q).sum(axis=1), norm, out=np.ones_like(norm), where=norm > 0)
    return np.where(seen, tv, 0.0), np.where(seen, np.maximum(cos, 0.0), 0.0)


@dataclass(frozen=True)
class WorkloadDrift:
    """The window's routing drifted away from the profile in `layers` (layer ids)."""

    layers: tuple[int, ...]
    tv: np.ndarray  # [L] total-variation distance of every layer
    cosine: np.ndarray  # [L] cosine distance of every layer
    loads: ExpertLoads  # the window's counts: what to repair for

    def describe(self) -> str:
        return (f"workload drift in {len(self.layers)}/{len(self.tv)} layers (TV median {np.median(self.tv):.3f}, "
                f"max {self.tv.max():.3f}; cosine max {self.cosine.max():.3f})")


class WorkloadDriftDetector:
    """Sliding-window drift of expert shares against the plan's profile (module docstring)."""

    def __init__(self, profile: ExpertLoads, window: int = DEFAULT_WINDOW, tv_threshold: float = DEFAULT_TV_THRESHOLD,
                 cos_threshold: float = DEFAULT_COS_THRESHOLD, min_layers: int | None = None,
                 patience: int = DEFAULT_PATIENCE, clear_ratio: float = DEFAULT_CLEAR_RATIO):
        if window < 1 or patience < 1:
            raise VibeError("window and patience must be >= 1")
        if not (0 < tv_threshold <= 1 and 0 < cos_threshold <= 1 and 0 < clear_ratio <= 1):
            raise VibeError("thresholds must lie in (0, 1] and the clear ratio in (0, 1]")
        self.window, self.tv_threshold, self.cos_threshold = int(window), tv_threshold, cos_threshold
        self.patience, self.clear_ratio = int(patience), clear_ratio
        self.min_layers = max(1, math.ceil(profile.num_layers / 4)) if min_layers is None else int(min_layers)
        self._recent: collections.deque = collections.deque(maxlen=self.window)
        self.last_tv: np.ndarray | None = None  # [L] distances of the latest update
        self.last_cos: np.ndarray | None = None
        self.rebase(profile)

    def rebase(self, profile: ExpertLoads) -> None:
        """A new plan was made for `profile`: compare against it from now on, re-armed."""
        self.profile = profile
        self.armed = True
        self.streak = 0

    def window_counts(self) -> np.ndarray:
        """[L, E] sum of the observations in the window (zeros before the first)."""
        if not self._recent:
            return np.zeros_like(self.profile.counts)
        return np.sum(self._recent, axis=0)

    def update(self, counts: np.ndarray) -> WorkloadDrift | None:
        """Add one observation counts [L, E] (the plan's layers); a report when it fires."""
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != self.profile.counts.shape:
            raise InputError("counts", f"shape {list(c.shape)} differs from the profile's "
                                       f"{list(self.profile.counts.shape)} [layers, experts]")
        if not np.all(np.isfinite(c)) or np.any(c < 0):
            raise InputError("counts", "counts must be finite and >= 0")
        self._recent.append(c)
        total = self.window_counts()
        tv, cos = share_distances(total, self.profile.counts)
        self.last_tv, self.last_cos = tv, cos
        hot = (tv > self.tv_threshold) | (cos > self.cos_threshold)
        warm = (tv > self.tv_threshold * self.clear_ratio) | (cos > self.cos_threshold * self.clear_ratio)
        if not self.armed:
            if warm.sum() < self.min_layers:  # the window looks like the profile again
                self.armed, self.streak = True, 0
            return None
        self.streak = self.streak + 1 if hot.sum() >= self.min_layers else 0
        if self.streak < self.patience:
            return None
        self.armed = False
        ids = self.profile.layer_ids
        loads = ExpertLoads(total, self.profile.top_k, ids, self.profile.model,
                            {"source": "window", "observations": len(self._recent)})
        return WorkloadDrift(tuple(int(ids[i]) for i in np.flatnonzero(hot)), tv, cos, loads)


@dataclass(frozen=True)
class HardwareDrift:
    """GPUs whose observed time left the prediction (`ratio`: observed / predicted) and
    GPUs lost; `cluster` is the re-profiled cluster to repair on."""

    ratio: dict[int, float]
    lost: tuple[int, ...]
    cluster: Cluster

    def describe(self, what: str = "hardware drift", of: str = "the predicted time") -> str:
        parts = [f"GPU {g} {r:.3f}x {of}" for g, r in sorted(self.ratio.items())]
        parts += [f"GPU {g} lost" for g in self.lost]
        return f"{what}: " + ", ".join(parts)


def curve_ratios(old: Cluster, new: Cluster) -> dict[int, float]:
    """{rank: median ratio new / old of its latency curve} for the GPUs whose curve or
    overhead changed (e.g. `vibe cluster edit --scale`)."""
    grid_old, us_old = old.latency_table()
    # every new curve on the old grid, extended past its last point as the cost model
    # extends it (np.interp would hold it flat there: a curve given at other points but
    # unchanged would then look changed)
    us_new = np.stack([_interp_extrap(grid_old, g.tokens, g.latency_us) for g in new.gpus])
    out = {}
    for g in range(old.num_gpus):
        same = np.allclose(us_new[g], us_old[g], rtol=1e-9) and np.isclose(new.gpus[g].overhead_us,
                                                                           old.gpus[g].overhead_us, rtol=1e-9)
        if not same:
            out[g] = float(np.median(us_new[g] / us_old[g]))
    return out


def predicted_gpu_us(placement: Placement, cluster: Cluster, counts: np.ndarray,
                     down: Sequence[int] = ()) -> np.ndarray:
    """[G] predicted MoE time of every GPU over all layers of one step whose routings are
    counts [L, E] (tokens per expert = the counts), by the cost model."""
    from vibe.recal.repair import live_weights

    plan = dataclasses.replace(placement, replica_weights=live_weights(placement, down)) if down else placement
    slot = np.take_along_axis(np.asarray(counts, dtype=np.float64), plan.physical_to_logical_map, axis=1)
    return gpu_times_from_slot_tokens(cluster, slot * plan.slot_share()).sum(axis=0)


def scale_gpus(cluster: Cluster, ratio: dict[int, float], lost: Sequence[int] = ()) -> Cluster:
    """`cluster` with GPU g's curve and overhead scaled by ratio[g] and the lost GPUs
    marked `"state": "down"`."""
    gpus = []
    for g in cluster.gpus:
        r = ratio.get(g.rank, 1.0)
        extra = dict(g.extra, state="down") if g.rank in lost else g.extra
        gpus.append(dataclasses.replace(g, latency_us=g.latency_us * r, overhead_us=g.overhead_us * r, extra=extra))
    return cluster.with_gpus(gpus)


class HardwareDriftDetector:
    """Observed per-GPU times against the cost model's prediction (module docstring)."""

    def __init__(self, cluster: Cluster, placement: Placement, threshold: float = DEFAULT_HW_THRESHOLD,
                 window: int = DEFAULT_WINDOW, missing_after: int = DEFAULT_MISSING_AFTER):
        if not 0 < threshold < 1 or window < 1 or missing_after < 1:
            raise VibeError("threshold must lie in (0, 1), window and missing_after must be >= 1")
        self.threshold, self.window, self.missing_after = threshold, int(window), int(missing_after)
        self.rebase(cluster, placement)
        self._reported = set()  # GPUs the cluster file marks down are reported by the first update

    def pending_lost(self) -> list[int]:
        """Lost GPUs not reported yet."""
        return sorted(self.lost - self._reported)

    def mark_down(self, ranks: Sequence[int]) -> None:
        """GPUs found lost elsewhere (e.g. the cluster file, re-read): reported next update."""
        self.lost.update(int(g) for g in ranks)

    def rebase(self, cluster: Cluster, placement: Placement) -> None:
        """Compare against this cluster and plan from now on (after a repair)."""
        placement.check_fits(cluster)
        self.cluster, self.placement = cluster, placement
        G = cluster.num_gpus
        self._ratios: collections.deque = collections.deque(maxlen=self.window)
        self._missing = np.zeros(G, dtype=np.int64)
        self.lost = set(cluster.down_ranks())
        self._reported = set(self.lost)  # lost GPUs already in a report

    def update(self, gpu_us: np.ndarray | None = None, counts: np.ndarray | None = None,
               predicted_us: np.ndarray | None = None) -> HardwareDrift | None:
        """One step: observed MoE time of each GPU gpu_us [G] in us, or per layer [L, G]
        (summed over layers; NaN: no report), with that step's counts [L, E] (or its
        predicted times predicted_us [G])."""
        G = self.cluster.num_gpus
        new_lost = sorted(self.lost - self._reported)  # marked down in the cluster file
        if gpu_us is not None:
            obs = np.asarray(gpu_us, dtype=np.float64)
            if obs.ndim == 2:  # per layer: a GPU missing in any layer did not report the step
                obs = obs.sum(axis=0)
            if obs.shape != (G,):
                raise InputError("gpu_us", f"{obs.size} GPU times for a {G}-GPU cluster")
            if predicted_us is None:
                if counts is None:
                    raise VibeError("per-GPU times need that step's counts (or predicted times) to compare")
                # the plan's own lost GPUs get no tokens; GPUs lost since then still do in the
                # plan (their reports are missing, so their ratios are not used)
                predicted_us = predicted_gpu_us(self.placement, self.cluster, counts,
                                                self.placement.extra.get("down_gpus") or ())
            pred = np.asarray(predicted_us, dtype=np.float64)
            missing = ~np.isfinite(obs)
            self._missing = np.where(missing, self._missing + 1, 0)
            for g in np.flatnonzero(self._missing >= self.missing_after):
                if int(g) not in self.lost:
                    self.lost.add(int(g))
                    new_lost.append(int(g))
            with np.errstate(invalid="ignore", divide="ignore"):
                self._ratios.append(np.where(missing | (pred <= 0), np.nan, obs / pred))
        ratio = {}
        if len(self._ratios) == self.window:
            r = np.array(self._ratios)  # [window, G]
            enough = np.isfinite(r).sum(axis=0) == self.window  # a full window of reports
            r = np.where(enough[None], r, 1.0)
            # persistent: at least PERSISTENT_SHARE of the window is off in the same direction
            slow = np.quantile(r, 1 - PERSISTENT_SHARE, axis=0) > 1 + self.threshold
            fast = np.quantile(r, PERSISTENT_SHARE, axis=0) < 1 - self.threshold
            med = np.median(r, axis=0)
            for g in np.flatnonzero(enough & (slow | fast)):
                if int(g) not in self.lost:
                    ratio[int(g)] = float(med[g])
        if not ratio and not new_lost:
            return None
        self._reported.update(new_lost)
        lost = tuple(sorted(self.lost))
        cluster = scale_gpus(self.cluster, ratio, lost)
        drift = HardwareDrift(ratio, tuple(sorted(new_lost)), cluster)
        self.rebase(cluster, self.placement)  # fires once: ratios restart against the new curves
        return drift
