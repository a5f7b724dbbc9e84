"""The placement ceiling: every step timed at a lower bound of any placement.

A static plan is made once and serves every step; the best it can do on one step is the
best plan *for that step's routing*. `CeilingPredictor` times each MoE layer of a step at
a bound no plan with the same slots per GPU can beat on that step's counts (so no static
plan, and no plan re-made every step, can beat it), and keeps the simulator's dense part
as it is (placement does not change attention). Serving simulated with it says how much
any placement could gain over another at all: where the ceiling's QPS at 90% SLO is
within x% of EPLB's, no placement policy gets more than x%.

Per layer, with N the step's routed tokens, M its hottest expert's and A its active
experts (docs/cost-model.md proves the first two for average loads; they hold for any
counts):
* fluid: tokens split freely over GPUs at each GPU's best amortised rate
  rho_g(M) = min_{0<n<=M} t_g(n) / n; with the all-to-all folded in (the cluster's
  `network` block: a GPU receives, computes, sends back) each token also costs the GPU
  its receive time u_g, and the layer's fixed latency adds to o_g;
* active slots: each active expert needs a slot that costs at least the curve's floor;
* hottest expert (plans without replicas): expert M runs whole on one GPU;
* work: with t_g >= s_g t_ref for a reference GPU's curve, GPU g needs s_g times the
  reference work of what it holds, and every expert's work is at least t_ref(n_e)
  (n_e rho_ref(n_e) where replicas may cut it into pieces).
Without the network block the simulator adds max_g C_g to the layer; its bound is the
water level of the receive times (the tokens must be received somewhere), and without
replicas at least the hottest expert's receive on the cheapest link.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vibe.bounds import active_slots_bound, amortised_rates, water_level
from vibe.cost import CommModel, expert_time_us
from vibe.errors import VibeError
from vibe.model import Cluster
from vibe.sim.predictor import Predictor, StepTime

CEILING = "ceiling"  # the sweep's name for it, beside the policies


def speed_ratios(cluster: Cluster) -> tuple[int, np.ndarray]:
    """(r, s [G]) with t_g(n) >= s_g t_r(n) for every n > 0: GPU r's curve is the
    reference (the fastest on average; s_r = 1).

    Both curves are piecewise linear on one grid, constant below its first point and
    linear past its last, so their ratio is monotone between grid points: its minimum
    is at a grid point or at the last slopes' ratio."""
    _, us = cluster.latency_table()
    r = int(np.argmin(us.mean(axis=1)))
    ratio = (us / us[r][None, :]).min(axis=1)
    if us.shape[1] > 1 and us[r, -1] > us[r, -2]:
        ratio = np.minimum(ratio, (us[:, -1] - us[:, -2]) / (us[r, -1] - us[r, -2]))
    return r, ratio


@dataclass(frozen=True)
class StepBound:
    """Lower bound of every MoE layer on one step's counts, for plans with
    `slots_per_gpu` slots per GPU on `cluster` (`replicas`: whether plans may hold more
    slots than experts)."""

    cluster: Cluster
    slots_per_gpu: int
    replicas: bool
    comm: CommModel | None = None
    joint: bool = False  # the all-to-all inside the layer (network block), not after it

    @cached_property
    def ratios(self) -> tuple[int, np.ndarray]:
        return speed_ratios(self.cluster)

    @cached_property
    def links(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(latency [G], us per token [G]) of the all-to-all, None without one (or on 1 GPU)."""
        cm = self.comm
        return None if cm is None or np.any(cm.us_per_token <= 0) else (cm.latency_us, cm.us_per_token)

    def layer_us(self, counts: np.ndarray, factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """counts [L, E] routed tokens -> (moe [L], a2a [L]) in us: a lower bound of the
        slowest GPU's expert time and of what the all-to-all adds to it, as the
        predictor counts them; factors [G] scale each GPU's expert time (> 0)."""
        n = np.asarray(counts, dtype=np.float64)
        N, M, A = n.sum(axis=1), n.max(axis=1), (n > 0).sum(axis=1)
        f, over = self._factors(factors)
        r = self.ratios[0]
        w = n * amortised_rates(self.cluster, n, np.array([r]))[..., 0] if self.replicas else \
            expert_time_us(self.cluster, np.array(r), n)
        rho = amortised_rates(self.cluster, M) * f[None, :]  # [L, G]
        moe = np.maximum(water_level(over, rho, N), self._work_level(w, N, over, f))
        # Floors scale by at least the fastest factor, which keeps the bound.
        moe = np.maximum(moe, active_slots_bound(self.cluster, A, self.slots_per_gpu) * f.min())
        if not self.replicas:
            hot = expert_time_us(self.cluster, np.arange(len(f))[None, :], M[:, None]) * f[None, :]  # [L, G]
            moe = np.maximum(moe, (over[None, :] + hot).min(axis=1))
        if self.links is None:
            return moe, np.zeros_like(moe)
        lat, u = self.links
        if not self.joint:
            return moe, self._a2a(N, M)
        layer = np.maximum(moe, water_level(over + lat, rho + u[None, :], N))
        layer = np.maximum(layer, self._work_level(w, N, over, f, joint=True))
        if not self.replicas:
            layer = np.maximum(layer, (over + lat + hot + M[:, None] * u[None, :]).min(axis=1))
        return moe, layer - moe

    def _factors(self, factors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        G = self.cluster.num_gpus
        f = np.ones(G) if factors is None else np.asarray(factors, dtype=np.float64)
        if np.any(f <= 0):
            raise VibeError("the placement ceiling needs every GPU up (time factors > 0)")
        return f, self.cluster.overhead_us * f

    def _work_level(self, w: np.ndarray, N: np.ndarray, over: np.ndarray, f: np.ndarray,
                    joint: bool = False) -> np.ndarray:
        """[L] the z with sum_g (z - o_g) / (f_g s_g) = sum_e w[l, e], w [L, E] each
        expert's least reference time (GPU g takes at least f_g s_g times the reference
        time of what it holds); `joint`: each GPU's receive time and the layer's latency
        folded in, the N tokens of a layer costing at least min_g u_g / (f_g s_g)
        reference-us each."""
        s = self.ratios[1] * f
        work, off = w.sum(axis=1), over
        if joint and self.links is not None:
            lat, u = self.links
            work, off = work + float((u / s).min()) * N, over + lat
        return water_level(off, np.broadcast_to(s, (len(N), len(s))), work)

    def _a2a(self, N: np.ndarray, hottest: np.ndarray) -> np.ndarray:
        """[L] the all-to-all's max_g C_g: the N tokens are received somewhere (water
        level), and without replicas the hottest expert's on the cheapest link."""
        lat, u = self.links
        a2a = water_level(lat, np.broadcast_to(u, (len(N), len(u))), N)
        if not self.replicas:
            a2a = np.maximum(a2a, (lat[None, :] + hottest[:, None] * u[None, :]).min(axis=1))
        return a2a


class CeilingPredictor(Predictor):
    """A Predictor whose MoE layers take `StepBound`'s time on each step's own counts
    (the placement only fixes the slots per GPU); dense parts as in Predictor. Idle at
    the barrier reads 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        p = self.placement
        object.__setattr__(self, "_bound", StepBound(self.cluster, p.num_slots // self.cluster.num_gpus,
                                                     p.num_slots > p.num_logical_experts, self._comm,
                                                     self._comm_joint))

    def step(self, tokens: float, context: float, counts: np.ndarray, factors: np.ndarray | None = None,
             dense_scale: float = 1.0) -> StepTime:
        moe, a2a = self._bound.layer_us(counts, factors)
        dense = self.dense_us(tokens, context, dense_scale)
        return StepTime(float(moe.sum() + a2a.sum()) + dense, float(moe.sum()), float(a2a.sum()), dense, 0.0,
                        np.zeros(len(moe), dtype=np.int64), None)
