"""The cost model: the one contract every policy, report and check uses.

For MoE layer l at operating point B (tokens entering the layer per step across the EP
group), expert e receives n_e = B * top_k * counts[l, e] / sum(counts[l]) tokens, each
slot p of e gets its share s_p of them, and

    T[l, g]       = overhead_us[g] + sum over slots p on g with n_p > 0 of t_g(n_p)
    layer_time[l] = max_g T[l, g]          moe_time(B) = sum_l layer_time[l]

t_g is GPU g's latency curve: linear between points, linear past the last two, flat
below the first, zero for a slot with no token. The model is additive per expert
because grouped-GEMM kernels tile each expert's tokens separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement

# Default operating points: a prefill-sized and a decode-sized step of the EP group.
PREFILL_TOKENS = 8192
DECODE_TOKENS = 256
DEFAULT_BATCH_TOKENS: tuple[int, ...] = (PREFILL_TOKENS, DECODE_TOKENS)


# ---- latency curves ------------------------------------------------------------------
def expert_time_us(cluster: Cluster, gpu: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Time of one expert FFN on `tokens` tokens on GPU `gpu` (broadcast together).

    gpu: int array [...]; tokens: float array [...] -> us [...] (0 where tokens <= 0).
    """
    grid, us = cluster.latency_table()
    gpu, n = np.broadcast_arrays(np.asarray(gpu, dtype=np.int64), np.asarray(tokens, dtype=np.float64))
    slope = np.diff(us, axis=1) / np.diff(grid)[None, :]  # [G, P-1]
    seg = np.clip(np.searchsorted(grid, n, side="right") - 1, 0, len(grid) - 2)
    t = us[gpu, seg] + slope[gpu, seg] * (np.maximum(n, grid[0]) - grid[seg])
    return np.where(n > 0, t, 0.0)


def expert_cost_matrix(cluster: Cluster, expert_tokens: np.ndarray) -> np.ndarray:
    """[..., E] tokens per expert -> [..., E, G] time of each expert on each GPU."""
    n = np.asarray(expert_tokens, dtype=np.float64)[..., None]
    return expert_time_us(cluster, np.arange(cluster.num_gpus), n)


# ---- predicted times of a placement --------------------------------------------------
def slot_tokens(placement: Placement, loads: ExpertLoads, batch_tokens: float) -> np.ndarray:
    """[L, P] tokens each physical slot receives at operating point `batch_tokens`."""
    n_e = loads.expert_tokens(batch_tokens)  # [L, E]
    return np.take_along_axis(n_e, placement.physical_to_logical_map, axis=1) * placement.slot_share()


def gpu_times_from_slot_tokens(cluster: Cluster, tokens: np.ndarray) -> np.ndarray:
    """[..., P] tokens per slot (P = G * S, slot p on GPU p // S) -> [..., G] T[g] in us."""
    tokens = np.asarray(tokens, dtype=np.float64)
    G = cluster.num_gpus
    per_gpu = tokens.reshape(tokens.shape[:-1] + (G, tokens.shape[-1] // G))
    gpu = np.arange(G)[:, None]
    return cluster.overhead_us + expert_time_us(cluster, gpu, per_gpu).sum(axis=-1)


def gpu_times(placement: Placement, loads: ExpertLoads, cluster: Cluster, batch_tokens: float) -> np.ndarray:
    """[L, G] predicted MoE time of every GPU in every layer (us)."""
    placement.check_fits(cluster)
    placement.check_matches(loads)
    return gpu_times_from_slot_tokens(cluster, slot_tokens(placement, loads, batch_tokens))


# ---- lower bounds --------------------------------------------------------------------
def lp_lower_bound(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int) -> float:
    """LP relaxation of one layer's no-replica assignment, solved with HiGHS.

    costs: [E, G] time of expert e on GPU g; overhead_us: [G]. Variables x[e, g] in
    [0, 1] with sum_g x = 1 per expert, sum_e x = slots_per_gpu per GPU, and
    overhead[g] + sum_e costs[e, g] x[e, g] <= z; minimise z.
    """
    E, G = costs.shape
    if G == 1:
        return float(overhead_us[0] + costs.sum())
    nx = E * G
    idx = np.arange(nx).reshape(E, G)
    ones = np.ones(nx)
    a_eq = sp.vstack([
        sp.csr_matrix((ones, (np.repeat(np.arange(E), G), idx.ravel())), shape=(E, nx + 1)),
        sp.csr_matrix((ones, (np.tile(np.arange(G), E), idx.ravel())), shape=(G, nx + 1)),
    ])
    b_eq = np.concatenate([np.ones(E), np.full(G, float(slots_per_gpu))])
    rows = np.concatenate([np.tile(np.arange(G), E), np.arange(G)])
    cols = np.concatenate([idx.ravel(), np.full(G, nx)])
    vals = np.concatenate([costs.ravel(), -np.ones(G)])
    a_ub = sp.csr_matrix((vals, (rows, cols)), shape=(G, nx + 1))
    c = np.zeros(nx + 1)
    c[-1] = 1.0
    res = linprog(c, A_ub=a_ub, b_ub=-np.asarray(overhead_us, dtype=np.float64), A_eq=a_eq, b_eq=b_eq,
                  bounds=[(0, 1)] * nx + [(0, None)], method="highs")
    if res.status != 0:
        raise VibeError(f"lower-bound LP failed: {res.message}")
    return float(res.x[-1])


def hottest_expert_bound(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int) -> float:
    """Without replicas the hottest expert sits whole on some GPU beside S-1 others, at
    best the S-1 cheapest ones there. costs: [E, G] -> a bound in us."""
    E, G = costs.shape
    hot = int(np.argmax(costs.max(axis=1)))
    others = np.delete(costs, hot, axis=0)  # [E-1, G]
    k = slots_per_gpu - 1
    cheapest = np.sort(others, axis=0)[:k].sum(axis=0) if k > 0 else np.zeros(G)
    return float(np.min(overhead_us + costs[hot] + cheapest))


def fluid_bound(cluster: Cluster, total_tokens: float) -> float:
    """Bound for any plan, replicas included: tokens split freely over GPUs, each GPU g
    processing tokens at its best amortised rate rho_g = min_{0<n<=N} t_g(n) / n.
    Returns the smallest z with sum_g max(0, z - o_g) / rho_g >= N (and z >= max o_g)."""
    over = cluster.overhead_us
    if total_tokens <= 0:
        return float(over.max())
    grid, _ = cluster.latency_table()
    pts = np.concatenate([grid[grid < total_tokens], [total_tokens]])
    G = cluster.num_gpus
    t = expert_time_us(cluster, np.arange(G)[:, None], pts[None, :])
    rho = (t / pts[None, :]).min(axis=1)  # [G] us per token
    # sum_g max(0, z - o_g) / rho_g is piecewise linear and increasing in z: walk the kinks.
    order = np.argsort(over)
    o, r = over[order], rho[order]
    inv_cum = np.cumsum(1.0 / r)
    off_cum = np.cumsum(o / r)
    for k in range(G):
        z = (total_tokens + off_cum[k]) / inv_cum[k]
        if k == G - 1 or z <= o[k + 1]:
            return float(max(z, over.max()))
    return float(over.max())  # unreachable


def layer_lower_bounds(loads: ExpertLoads, cluster: Cluster, batch_tokens: float, num_slots: int) -> np.ndarray:
    """[L] lower bound on every layer's time for any plan with `num_slots` slots per layer.

    Without replicas (num_slots == E): max of the LP relaxation, the hottest-expert
    bound and the fluid bound. With replicas: the fluid bound.
    """
    G = cluster.num_gpus
    n_e = loads.expert_tokens(batch_tokens)
    over = cluster.overhead_us
    out = np.empty(loads.num_layers)
    costs_all = expert_cost_matrix(cluster, n_e)  # [L, E, G]
    for l in range(loads.num_layers):
        fluid = fluid_bound(cluster, float(n_e[l].sum()))
        if num_slots == loads.num_experts:
            S = num_slots // G
            out[l] = max(fluid, lp_lower_bound(costs_all[l], over, S), hottest_expert_bound(costs_all[l], over, S))
        else:
            out[l] = fluid
    return out


# ---- evaluation ----------------------------------------------------------------------
@dataclass(frozen=True)
class PointMetrics:
    """What a placement does at one operating point (all times in us)."""

    batch_tokens: float
    weight: float
    moe_time_us: float  # sum over layers of the slowest GPU's time
    lower_bound_us: float | None
    imbalance: float  # sum_l max_g T / sum_l mean_g T
    idle_fraction: float  # share of GPU time spent waiting at layer barriers
    layer_times_us: np.ndarray  # [L]
    gpu_times_us: np.ndarray  # [L, G]

    @property
    def ratio_to_lb(self) -> float | None:
        if self.lower_bound_us is None or self.lower_bound_us <= 0:
            return None
        return self.moe_time_us / self.lower_bound_us

    def to_dict(self) -> dict:
        return {"batch_tokens": self.batch_tokens, "weight": self.weight,
                "moe_time_us": self.moe_time_us, "lower_bound_us": self.lower_bound_us,
                "ratio_to_lb": self.ratio_to_lb, "imbalance": self.imbalance,
                "idle_fraction": self.idle_fraction}


def normalize_weights(batch_tokens: Sequence[float], weights: Sequence[float] | None) -> np.ndarray:
    """Weights of the operating points, summing to 1 (equal when not given)."""
    if not batch_tokens:
        raise VibeError("at least one operating point (--batch-tokens) is needed")
    if any(b <= 0 for b in batch_tokens):
        raise VibeError("batch tokens must be > 0")
    if weights is None:
        return np.full(len(batch_tokens), 1.0 / len(batch_tokens))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(batch_tokens),):
        raise VibeError(f"{len(w)} weights for {len(batch_tokens)} batch sizes")
    if np.any(w < 0) or w.sum() <= 0 or not np.all(np.isfinite(w)):
        raise VibeError("weights must be >= 0 and not all zero")
    return w / w.sum()


def metrics_from_gpu_times(T: np.ndarray, batch_tokens: float, weight: float = 1.0,
                           lower_bounds: np.ndarray | None = None) -> PointMetrics:
    """Summarise [L, G] GPU times into the reported metrics."""
    layer = T.max(axis=1)
    busy = T.mean(axis=1).sum()
    total = float(layer.sum())
    return PointMetrics(
        batch_tokens=float(batch_tokens), weight=float(weight), moe_time_us=total,
        lower_bound_us=None if lower_bounds is None else float(lower_bounds.sum()),
        imbalance=float(total / busy) if busy > 0 else 1.0,
        idle_fraction=float(1.0 - busy / total) if total > 0 else 0.0,
        layer_times_us=layer, gpu_times_us=T)


def evaluate(placement: Placement, loads: ExpertLoads, cluster: Cluster,
             batch_tokens: Sequence[float] = DEFAULT_BATCH_TOKENS, weights: Sequence[float] | None = None,
             with_lower_bound: bool = True) -> list[PointMetrics]:
    """Predicted metrics of `placement` at each operating point."""
    w = normalize_weights(batch_tokens, weights)
    points = []
    for b, wi in zip(batch_tokens, w):
        T = gpu_times(placement, loads, cluster, b)
        lb = layer_lower_bounds(loads, cluster, b, placement.num_slots) if with_lower_bound else None
        points.append(metrics_from_gpu_times(T, b, wi, lb))
    return points


def weighted_moe_time(points: Sequence[PointMetrics]) -> float:
    """The multi-point objective: sum_i weight_i * moe_time_i (us)."""
    return float(sum(p.weight * p.moe_time_us for p in points))
