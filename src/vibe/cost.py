"""The cost model: the one contract every policy, report and check uses.

For MoE layer l at operating point B (tokens entering the layer per step across the EP
group), expert e receives n_e = B * top_k * counts[l, e] / sum(counts[l]) tokens, each
slot p of e gets its share s_p of them, and

    T[l, g]       = overhead_us[g] + sum over slots p on g with n_p > 0 of t_g(n_p)
    layer_time[l] = max_g T[l, g]          moe_time(B) = sum_l layer_time[l]

t_g is GPU g's latency curve: linear between points, linear past the last two, flat
below the first, zero for a slot with no token. The model is additive per expert
because grouped-GEMM kernels tile each expert's tokens separately.

Communication (on when the cluster file has a `network` block, or with `--comm`): GPU
g receives r_g = sum of its slots' tokens in the dispatch and sends as many back in the
combine, each token hidden x (dispatch_bytes + combine_bytes) bytes. Attention is
data-parallel, so a token comes from any rank alike: 1/G of r_g is local, (n_g - 1)/G
crosses NVLink (n_g = GPUs in g's node) and (G - n_g)/G the inter-node network:

    C[l, g] = 2 * latency_us + r_g * hidden * bytes * ((n_g-1)/G / intra + (G-n_g)/G / inter)

and the per-GPU time the plan balances is T[l, g] + C[l, g] (dispatch, compute and
combine run back to back on each GPU; the combine barrier waits for the slowest).
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


# ---- communication: dispatch + combine all-to-all ------------------------------------
@dataclass(frozen=True)
class CommModel:
    """Per-GPU all-to-all time as a linear function of the tokens a GPU receives."""

    us_per_token: np.ndarray  # [G] receive + send-back time of one routed token (us)
    latency_us: np.ndarray  # [G] fixed cost per layer (two all-to-alls); 0 on one GPU

    @classmethod
    def from_links(cls, nodes: np.ndarray, intra_bytes_s: float, inter_bytes_s: float, latency_us: float,
                   bytes_per_token: float) -> "CommModel":
        """nodes [G] node of each rank; bandwidths per GPU per direction (B/s); a token
        is `bytes_per_token` bytes there and back (hidden x (dispatch + combine) bytes)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        G = nodes.size
        n = np.bincount(nodes)[nodes].astype(np.float64)  # [G] GPUs in each rank's node
        # Uniform sources (data-parallel attention): own share local, node peers over
        # NVLink, the rest over the network; the two transfers counted one after the
        # other (DeepEP forwards tokens that arrive over RDMA through NVLink).
        per_token = 1e6 * bytes_per_token * ((n - 1) / G / intra_bytes_s + (G - n) / G / inter_bytes_s)
        lat = np.full(G, 2.0 * latency_us if G > 1 else 0.0)
        return cls(us_per_token=per_token, latency_us=lat)

    def times(self, recv_tokens: np.ndarray) -> np.ndarray:
        """[..., G] tokens each GPU receives -> [..., G] its all-to-all time C (us)."""
        return self.latency_us + np.asarray(recv_tokens, dtype=np.float64) * self.us_per_token


def comm_model(cluster: Cluster, hidden: float | None = None) -> CommModel | None:
    """The cluster's CommModel, or None when its file has no `network` block (no comm
    term). `hidden` fills in the hidden size only where the file gives none."""
    net = cluster.network_params()
    if net is None:
        return None
    if hidden is not None and "hidden" not in cluster.network and "hidden" not in cluster.expert:
        net["hidden"] = float(hidden)
    return CommModel.from_links(cluster.nodes, 1e9 * net["intra_node_GBps"], 1e9 * net["inter_node_GBps"],
                                net["latency_us"], net["hidden"] * (net["dispatch_bytes"] + net["combine_bytes"]))


def gpu_recv_tokens(tokens: np.ndarray, num_gpus: int) -> np.ndarray:
    """[..., P] tokens per slot -> [..., G] tokens each GPU receives (slot p on GPU p // S)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    return tokens.reshape(tokens.shape[:-1] + (num_gpus, tokens.shape[-1] // num_gpus)).sum(axis=-1)


def comm_times_from_slot_tokens(cluster: Cluster, tokens: np.ndarray, hidden: float | None = None) -> np.ndarray:
    """[..., P] tokens per slot -> [..., G] all-to-all time C of each GPU (us); zeros
    when the cluster has no network block. The one comm formula: the policies'
    objective, evaluate and the simulator's all-to-all all come here."""
    cm = comm_model(cluster, hidden)
    recv = gpu_recv_tokens(tokens, cluster.num_gpus)
    return np.zeros_like(recv) if cm is None else cm.times(recv)


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


def gpu_times_from_slot_tokens(cluster: Cluster, tokens: np.ndarray, comm: bool = False) -> np.ndarray:
    """[..., P] tokens per slot (P = G * S, slot p on GPU p // S) -> [..., G] T[g] in us:
    expert compute only, or with comm=True plus the all-to-all time C[g] (when the
    cluster has a network block): the per-GPU time that plans balance."""
    tokens = np.asarray(tokens, dtype=np.float64)
    G = cluster.num_gpus
    per_gpu = tokens.reshape(tokens.shape[:-1] + (G, tokens.shape[-1] // G))
    gpu = np.arange(G)[:, None]
    T = cluster.overhead_us + expert_time_us(cluster, gpu, per_gpu).sum(axis=-1)
    return T + comm_times_from_slot_tokens(cluster, tokens) if comm and cluster.network is not None else T


def gpu_times(placement: Placement, loads: ExpertLoads, cluster: Cluster, batch_tokens: float) -> np.ndarray:
    """[L, G] predicted time of every GPU in every layer (us): MoE compute, plus its
    all-to-all when the cluster has a network block."""
    placement.check_fits(cluster)
    placement.check_matches(loads)
    return gpu_times_from_slot_tokens(cluster, slot_tokens(placement, loads, batch_tokens), comm=True)


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
