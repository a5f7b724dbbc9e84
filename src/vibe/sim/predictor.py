"""Execution-time predictor: how long one scheduler step takes (all times in us).

    step = sum over dense layers   of  attn_dense(T, C)
         + sum over MoE layers l   of  attn_dense(T, C) + all_to_all[l] + max_g moe[l, g]

* attn_dense: the non-expert part of a layer (attention and shared / dense MLP), with
  attention data-parallel over the G GPUs of the EP group (DeepSeek's layout): each GPU
  sees T/G of the step's tokens and C/G of their attended context, and runs a roofline
  `overhead + max(flops / F, bytes / BW)`; the slowest GPU (static speed x drift) sets it.
* moe[l, g]: the cost model, `vibe.cost.gpu_times_from_slot_tokens`, on the tokens each
  slot receives in this step (routed counts spread over replicas by `slot_share()`),
  times each GPU's time-varying factor. Each layer waits for its slowest GPU.
* all_to_all[l]: dispatch (fp8) + combine (bf16) of the routed tokens, each GPU's time
  C[l, g] from `vibe.cost.CommModel` (fixed latency + its received tokens x bytes over
  NVLink / network). With the cluster's `network` block (the comm-aware cost model,
  the same function the policies balance) each GPU receives, computes and sends back
  in turn, so the layer ends at max_g (moe[l, g] + C[l, g]) and all_to_all[l] is what
  that adds to max_g moe[l, g]. Without it (old cluster files) the previous estimate:
  `max_g C[l, g]` on GpuSpec's links, added to max_g moe (an upper bound of the first).

Routing per step is drawn by a router: re-sampled whole sequences of a RoutingTrace, or
draws from the loads profile, or the expected (noise-free) counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vibe.cost import CommModel, comm_model, expert_time_us, gpu_recv_tokens, gpu_times_from_slot_tokens
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement, RoutingTrace
from vibe.model.traces import check_trace_matches
from vibe.sim.models import ModelSpec, check_model_matches


@dataclass(frozen=True)
class GpuSpec:
    """Nominal GPU and links for the non-expert part (H100 SXM, effective not peak)."""

    name: str = "H100-SXM"
    flops: float = 400e12  # dense bf16/fp8 FLOP/s actually reached (~40% of peak)
    hbm_bytes_s: float = 2.6e12  # ~80% of 3.35 TB/s
    layer_overhead_us: float = 20.0  # norms, launches, sampling share per layer
    gpus_per_node: int = 8
    nvlink_bytes_s: float = 300e9  # per GPU, one direction, achieved
    net_bytes_s: float = 40e9  # per GPU between nodes (400 Gb/s NIC, achieved)
    a2a_latency_us: float = 15.0  # per all-to-all
    a2a_bytes_per_token: float = 3.0  # per hidden element: fp8 dispatch + bf16 combine


Router = Callable[[int, np.random.Generator], np.ndarray]  # (tokens B, rng) -> counts [L, E]


# ---- routers -------------------------------------------------------------------------
def expected_router(loads: ExpertLoads) -> Router:
    """No noise: expert e of layer l gets B * top_k * share[l, e] tokens."""
    return lambda b, rng: loads.expert_tokens(b)


def trace_router(trace: RoutingTrace) -> Router:
    """Real per-step skew: a batch of whole sequences re-sampled from the trace."""
    return lambda b, rng: trace.sample_batch_counts(int(b), rng).astype(np.float64)


def profile_router(loads: ExpertLoads, exact_limit: float = 2.0) -> Router:
    """Each of the B * top_k routings of a layer picks expert e with probability share[l, e]
    (a multinomial per layer). Exact draws (alias tables) while the mean per expert is
    below `exact_limit`; above it the multinomial's Gaussian limit, rounded and clipped at
    0, which has the same mean and covariance and costs one normal draw per expert
    instead of one uniform per routing (the step loop's budget)."""
    shares = loads.shares()
    L, E = shares.shape
    prob, alias = _alias_tables(shares)
    row = (np.arange(L)[:, None] * E).astype(np.int32)
    # float32 / int32 halve the memory traffic of the per-routing arrays.
    prob, alias = prob.ravel().astype(np.float32), (alias + row).ravel().astype(np.int32)
    sqrt_p = np.sqrt(shares)

    def route(b: int, rng: np.random.Generator) -> np.ndarray:
        n = int(round(b * loads.top_k))
        if n <= 0:
            return np.zeros((L, E))
        if n < exact_limit * E:
            # One uniform per draw: its integer part picks a column, its fraction the coin.
            u = rng.random((L, n), dtype=np.float32)
            u *= E
            col = np.minimum(u.astype(np.int32), E - 1)  # float32 u * E may round up to E
            u -= col
            col += row
            pick = np.where(u < prob[col], col, alias[col])
            return np.bincount(pick.ravel(), minlength=L * E).reshape(L, E).astype(np.float64)
        z = rng.standard_normal((L, E)) * sqrt_p
        x = n * shares + np.sqrt(n) * (z - shares * z.sum(axis=1, keepdims=True))
        return np.maximum(np.rint(x), 0.0)

    return route


def _alias_tables(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose alias tables, one per row of p [L, E] -> (prob [L, E], alias [L, E] int)."""
    L, E = p.shape
    prob, alias = np.ones((L, E)), np.tile(np.arange(E), (L, 1))
    for l in range(L):
        q = p[l] * E / p[l].sum() if p[l].sum() > 0 else np.ones(E)
        small = [i for i in range(E) if q[i] < 1.0]
        large = [i for i in range(E) if q[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large[-1]
            prob[l, s], alias[l, s] = q[s], g
            q[g] -= 1.0 - q[s]
            if q[g] < 1.0:
                small.append(large.pop())
    return prob, alias


def make_router(loads: ExpertLoads, placement: Placement, trace: RoutingTrace | None = None,
                mode: str = "sample") -> Router:
    """The router for `mode` ("sample" or "expected"); a trace, when given, wins for "sample"."""
    if mode == "expected":
        return expected_router(loads)
    if mode != "sample":
        raise VibeError(f"unknown routing mode {mode!r} (sample, expected)")
    if trace is None:
        return profile_router(loads)
    check_trace_matches(trace, placement)
    return trace_router(trace)


# ---- the predictor -------------------------------------------------------------------
@dataclass(frozen=True)
class StepTime:
    total_us: float
    moe_us: float  # sum over MoE layers of the slowest GPU
    a2a_us: float
    dense_us: float  # attention + non-expert parts, all layers
    idle_fraction: float  # GPU time idle at MoE barriers, this step
    slowest_gpu: np.ndarray  # [L] which GPU set each MoE layer's time
    gpu_us: np.ndarray | None = None  # [G] each GPU's MoE time summed over layers (what it would report)


@dataclass(frozen=True)
class Predictor:
    model: ModelSpec
    cluster: Cluster
    placement: Placement
    gpu: GpuSpec = GpuSpec()
    table_tokens: int = 8192  # whole token counts up to this are looked up, not interpolated
    dense_gpus: int | None = None  # GPUs sharing the data-parallel attention (None: all; fewer after a loss)

    def __post_init__(self) -> None:
        p = self.placement
        p.check_fits(self.cluster)
        check_model_matches(self.model, p.num_layers, p.num_logical_experts, None, "placement")
        object.__setattr__(self, "_share", p.slot_share())
        flat = np.arange(p.num_layers)[:, None] * p.num_logical_experts + p.physical_to_logical_map
        object.__setattr__(self, "_flat_phy", flat)  # [L, P] index into counts.ravel()
        G = self.cluster.num_gpus
        n = np.arange(self.table_tokens + 1, dtype=np.float64)
        object.__setattr__(self, "_table", expert_time_us(self.cluster, np.arange(G)[:, None], n).ravel())
        object.__setattr__(self, "_table_offset", p.gpu_of_slot * (self.table_tokens + 1))  # [P]
        object.__setattr__(self, "_comm", self.comm())
        object.__setattr__(self, "_comm_joint", self.cluster.network is not None)

    def comm(self) -> CommModel:
        """The all-to-all model: the cluster's network block (hidden size from the model
        where the file gives none), else GpuSpec's links with ranks grouped
        gpus_per_node to a node (the simulator's estimate before the network block)."""
        cm = comm_model(self.cluster, hidden=self.model.hidden)
        if cm is not None:
            return cm
        g = self.gpu
        nodes = np.arange(self.cluster.num_gpus) // g.gpus_per_node
        return CommModel.from_links(nodes, g.nvlink_bytes_s, g.net_bytes_s, g.a2a_latency_us,
                                    self.model.hidden * g.a2a_bytes_per_token)

    def dense_us(self, tokens: float, context: float, scale: float = 1.0) -> float:
        """Non-expert time of all layers for `tokens` tokens attending `context` context
        tokens in total (us), on GPUs `scale` times slower than nominal."""
        m, g = self.model, self.gpu
        G = self.cluster.num_gpus if self.dense_gpus is None else self.dense_gpus
        t, c = tokens / G, context / G

        def layer(params: float) -> float:
            flops = 2.0 * params * t + m.attn_flops_per_context * c
            bytes_ = params * m.weight_bytes + m.kv_bytes_per_token * c
            return g.layer_overhead_us + 1e6 * max(flops / g.flops, bytes_ / g.hbm_bytes_s)

        return scale * (m.num_moe_layers * layer(m.moe_layer_params) + m.num_dense_layers * layer(m.dense_layer_params))

    def moe_gpu_times(self, slot: np.ndarray) -> np.ndarray:
        """[L, P] tokens per slot -> [L, G] cost-model time of every GPU (us).

        Same values as `vibe.cost.gpu_times_from_slot_tokens`; whole token counts (every
        step without replicas) are looked up in a table of `vibe.cost.expert_time_us`
        filled on first use, which is several times faster than re-interpolating the
        curves for every slot of every layer of every step."""
        n_max = len(self._table) // self.cluster.num_gpus - 1
        whole = np.rint(slot)
        if slot.max(initial=0) > n_max or not np.array_equal(whole, slot):
            return gpu_times_from_slot_tokens(self.cluster, slot)
        t = self._table[whole.astype(np.int64) + self._table_offset]  # [L, P]
        return self.cluster.overhead_us + t.reshape(slot.shape[0], self.cluster.num_gpus, -1).sum(axis=2)

    def slot_tokens(self, counts: np.ndarray) -> np.ndarray:
        """[L, E] routed tokens -> [L, P] tokens of each slot (replicas share as placed)."""
        return np.asarray(counts, dtype=np.float64).ravel()[self._flat_phy] * self._share

    def step(self, tokens: float, context: float, counts: np.ndarray, factors: np.ndarray | None = None,
             dense_scale: float = 1.0) -> StepTime:
        """One step: `tokens` in the batch, `context` attended, `counts` [L, E] routed;
        factors [G] time-varying GPU multipliers; dense_scale for the slowest GPU's
        non-expert work."""
        slot = self.slot_tokens(counts)
        T = self.moe_gpu_times(slot)  # [L, G]
        if factors is not None:
            T = T * factors
        layer = T.max(axis=1)
        moe = float(layer.sum())
        C = self._comm.times(gpu_recv_tokens(slot, self.cluster.num_gpus))  # [L, G]
        dense = self.dense_us(tokens, context, dense_scale)
        if self._comm_joint:  # each GPU: receive, compute, send back; the slowest sets the layer
            TC = T + C
            a2a = float(TC.max(axis=1).sum()) - moe
            idle = 1.0 - float(TC.mean(axis=1).sum()) / (moe + a2a) if moe + a2a > 0 else 0.0
            return StepTime(moe + a2a + dense, moe, a2a, dense, idle, TC.argmax(axis=1), T.sum(axis=0))
        a2a = float(C.max(axis=1).sum())
        idle = 1.0 - float(T.mean(axis=1).sum()) / moe if moe > 0 else 0.0
        return StepTime(moe + a2a + dense, moe, a2a, dense, idle, T.argmax(axis=1), T.sum(axis=0))


def load_routing_trace(path) -> RoutingTrace:
    """A vibe.trace/v1 .npz file, or an ESFT domain folder of expert_weights_<i>.txt[.gz]."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        from vibe.engines.esft import load_esft_trace

        return load_esft_trace(p)
    return RoutingTrace.load(p)
