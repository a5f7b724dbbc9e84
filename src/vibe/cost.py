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

from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement

# Default operating points, in tokens per GPU per step: a prefill-sized step (1024 tokens
# per GPU: compute-bound on H100-class curves) and a decode-sized one (32 per GPU: on the
# latency floor). The CLI scales them by the EP size (default_batch_tokens); the library's
# absolute default is their value at 8 GPUs, 8192 and 256 tokens per step.
PREFILL_TOKENS_PER_GPU = 1024
DECODE_TOKENS_PER_GPU = 32
DEFAULT_TOKENS_PER_GPU: tuple[int, ...] = (PREFILL_TOKENS_PER_GPU, DECODE_TOKENS_PER_GPU)
PREFILL_TOKENS = 8 * PREFILL_TOKENS_PER_GPU
DECODE_TOKENS = 8 * DECODE_TOKENS_PER_GPU
DEFAULT_BATCH_TOKENS: tuple[int, ...] = (PREFILL_TOKENS, DECODE_TOKENS)
# Their default weights in the multi-point objective: prefill-sized steps set TTFT and are
# where placement changes times most; the memory-bound decode point weighs in mainly to
# stop replicas that only add weight reloads. Other operating points get equal weights.
DEFAULT_WEIGHTS: tuple[float, ...] = (0.7, 0.3)


# ---- latency curves ------------------------------------------------------------------
def expert_time_us(cluster: Cluster, gpu: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Time of one expert FFN on `tokens` tokens on GPU `gpu` (broadcast together).

    gpu: int array [...]; tokens: float array [...] -> us [...] (0 where tokens <= 0).
    """
    grid, us = cluster.latency_table()
    n = np.asarray(tokens, dtype=np.float64)
    # The grid is shared by all GPUs: locate the segments before broadcasting over GPUs.
    seg = np.clip(np.searchsorted(grid, n, side="right") - 1, 0, len(grid) - 2)
    offset = np.maximum(n, grid[0]) - grid[seg]
    gpu = np.asarray(gpu, dtype=np.int64)
    slope = np.diff(us, axis=1) / np.diff(grid)[None, :]  # [G, P-1]
    t = us[gpu, seg] + slope[gpu, seg] * offset
    return np.where(n > 0, t, 0.0)


def expert_cost_matrix(cluster: Cluster, expert_tokens: np.ndarray) -> np.ndarray:
    """[..., E] tokens per expert -> [..., E, G] time of each expert on each GPU."""
    n = np.asarray(expert_tokens, dtype=np.float64)[..., None]
    return expert_time_us(cluster, np.arange(cluster.num_gpus), n)


# ---- predicted times of a placement --------------------------------------------------
def slot_tokens(placement: Placement, loads: ExpertLoads, batch_tokens: float) -> np.ndarray:
    """[L, P] tokens each physical slot receives at operating point `batch_tokens`."""
    return slot_tokens_from_expert_tokens(placement, loads.expert_tokens(batch_tokens))


def slot_tokens_from_expert_tokens(placement: Placement, expert_tokens: np.ndarray) -> np.ndarray:
    """[..., L, E] tokens per expert -> [..., L, P] tokens of each slot, split over an
    expert's replicas as the placement says (evenly, or by its replica_weights)."""
    n_e = np.asarray(expert_tokens, dtype=np.float64)
    phy = placement.physical_to_logical_map
    return np.take_along_axis(n_e, np.broadcast_to(phy, n_e.shape[:-2] + phy.shape), axis=-1) * placement.slot_share()


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


def default_batch_tokens(num_gpus: int) -> tuple[float, ...]:
    """The default operating points of an EP group of `num_gpus` GPUs (tokens per step):
    DEFAULT_TOKENS_PER_GPU times the group size."""
    return tuple(float(t * num_gpus) for t in DEFAULT_TOKENS_PER_GPU)


def is_default_points(batch_tokens: Sequence[float]) -> bool:
    """True when batch_tokens are the default operating points of some EP size (in order)."""
    b = tuple(float(x) for x in batch_tokens)
    g = b[0] / PREFILL_TOKENS_PER_GPU if b else 0.0
    return g >= 1 and g == int(g) and b == default_batch_tokens(int(g))


def default_weights(batch_tokens: Sequence[float]) -> np.ndarray:
    """[K] the weights used when none are given: DEFAULT_WEIGHTS for exactly the default
    operating points of an EP size (default_batch_tokens(G), in that order; 8192 and 256
    at 8 GPUs), else equal weights. This is the one place the default is chosen;
    evaluate, the policies and the CLI all come here."""
    if is_default_points(batch_tokens):
        return np.asarray(DEFAULT_WEIGHTS, dtype=np.float64)
    return np.full(len(batch_tokens), 1.0 / len(batch_tokens))


def normalize_weights(batch_tokens: Sequence[float], weights: Sequence[float] | None) -> np.ndarray:
    """Weights of the operating points, summing to 1 (default_weights when not given)."""
    if not batch_tokens:
        raise VibeError("at least one operating point (--batch-tokens) is needed")
    if any(b <= 0 for b in batch_tokens):
        raise VibeError("batch tokens must be > 0")
    if weights is None:
        return default_weights(batch_tokens)
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
    from vibe import bounds  # deferred: vibe.bounds imports this module

    w = normalize_weights(batch_tokens, weights)
    points = []
    for b, wi in zip(batch_tokens, w):
        T = gpu_times(placement, loads, cluster, b)
        lb = bounds.layer_lower_bounds(loads, cluster, b, placement.num_slots) if with_lower_bound else None
        points.append(metrics_from_gpu_times(T, b, wi, lb))
    return points


def weighted_moe_time(points: Sequence[PointMetrics]) -> float:
    """The multi-point objective: sum_i weight_i * moe_time_i (us)."""
    return float(sum(p.weight * p.moe_time_us for p in points))


# ---- lower bounds: moved to vibe.bounds; re-exported here for old callers -------------
_MOVED_TO_BOUNDS = frozenset(('gpu_kinds', 'lp_lower_bound', 'lagrangian_value', 'lagrangian_lower_bounds', 'cheapest_slots_bound', 'hottest_expert_bound', 'fluid_bound', 'active_slots_bound', 'convex_minorant_lines', 'slot_work_bound', 'lp_bounds', 'layer_lower_bounds', 'LP_EXACT_MAX_VARS'))


def __getattr__(name: str):
    if name in _MOVED_TO_BOUNDS:
        from vibe import bounds

        return getattr(bounds, name)
    raise AttributeError(f"module 'vibe.cost' has no attribute {name!r}")
