"""Per-step noise: the expected makespan of real steps, not of the long-run average.

A real step routes the tokens of a few sequences, so its per-expert counts scatter around
the profiled average, and the slowest GPU of each layer is set by that step's counts.
Here steps are re-sampled from token-level traces (whole sequences, `RoutingTrace`) or,
without traces, drawn as independent routings from the average shares (a milder noise:
real sequences route in correlated bursts). Every time is computed by `vibe.cost`.

Shapes: K sampled steps, L MoE layers, E experts, P physical slots, G GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vibe.cost import gpu_times_from_slot_tokens, slot_tokens_from_expert_tokens
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.model.traces import RoutingTrace, check_trace_matches  # noqa: F401 (re-exported)

DEFAULT_SAMPLES = 16  # steps per operating point for `vibe evaluate --traces`
ROBUST_SAMPLES = 64  # steps the --robust solver optimises over; 16 overfit (held-out steps got worse)


def load_traces(path: str | os.PathLike) -> RoutingTrace:
    """A RoutingTrace from a vibe .npz trace file or an ESFT domain folder."""
    p = Path(path)
    if p.is_dir():
        from vibe.engines.esft import load_esft_trace

        return load_esft_trace(p)
    return RoutingTrace.load(p)


def trace_step_tokens(trace: RoutingTrace, batch_tokens: float, num_samples: int, seed: int) -> np.ndarray:
    """[K, L, E] tokens per expert of K steps of `batch_tokens` tokens, each made of whole
    sequences re-sampled from the trace (seeded)."""
    rng = np.random.default_rng(seed)
    B = max(1, int(round(batch_tokens)))
    return np.stack([trace.sample_batch_counts(B, rng) for _ in range(num_samples)]).astype(np.float64)


def multinomial_step_tokens(loads: ExpertLoads, batch_tokens: float, num_samples: int, seed: int) -> np.ndarray:
    """[K, L, E] tokens per expert of K steps whose B * top_k routings are drawn
    independently from the average shares (the noise floor when no trace is at hand)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(batch_tokens * loads.top_k)))
    shares = loads.shares()
    empty = shares.sum(axis=1) <= 0
    shares[empty] = 1.0 / loads.num_experts  # a layer that saw no token: uniform
    return rng.multinomial(n, shares, size=(num_samples, loads.num_layers)).astype(np.float64)


def step_tokens(loads: ExpertLoads, batch_tokens: float, num_samples: int, seed: int,
                trace: RoutingTrace | None = None) -> np.ndarray:
    """[K, L, E] sampled steps: from the trace when given, else multinomial."""
    if trace is not None:
        return trace_step_tokens(trace, batch_tokens, num_samples, seed)
    return multinomial_step_tokens(loads, batch_tokens, num_samples, seed)


def sized_step_tokens(loads: ExpertLoads, step_sizes, num_samples: int, seed: int,
                      trace: RoutingTrace | None = None) -> np.ndarray:
    """[K, L, E] K steps whose sizes are drawn (seeded, stratified) from
    `step_sizes` [M] (tokens of observed serving steps: decodes, prefill chunks, mixes),
    each then routed from the trace (whole sequences) or multinomially.

    Serving steps are mostly far smaller than a prefill operating point (in the
    simulator's ESFT run the median step has ~150 tokens), and the per-step noise that
    a placement can absorb lives at those sizes; a step of the whole trace's size has
    almost none."""
    sizes = np.asarray(step_sizes, dtype=np.float64).ravel()
    if sizes.size == 0 or not np.all(np.isfinite(sizes)) or sizes.min() < 1:
        raise VibeError("step sizes must be a non-empty list of token counts >= 1")
    rng = np.random.default_rng(seed)
    # stratified over the sizes' quantiles: every part of the size mix (tiny decode
    # steps, where co-activation sets the pace, and big prefill chunks) gets its share
    # of the K steps, instead of whatever a plain draw with replacement happens to give
    q = (np.arange(num_samples) + rng.random(num_samples)) / num_samples
    picks = np.quantile(sizes, q, method="inverted_cdf")
    # one child seed per step: the same seed gives the same steps whatever the sizes' order
    seeds = rng.integers(0, 2**63 - 1, size=num_samples)
    return np.concatenate([step_tokens(loads, b, 1, int(s), trace) for b, s in zip(picks, seeds)])


def step_gpu_times(placement: Placement, cluster: Cluster, tokens: np.ndarray) -> np.ndarray:
    """[K, L, G] time of every GPU in every layer of every step.

    tokens: [K, L, E] tokens per expert of each step, split over replicas as the
    placement says (evenly, or by its replica_weights). Includes each GPU's all-to-all
    when the cluster has a network block (vibe.cost.gpu_times_from_slot_tokens)."""
    return gpu_times_from_slot_tokens(cluster, slot_tokens_from_expert_tokens(placement, tokens), comm=True)


def step_layer_times(placement: Placement, cluster: Cluster, tokens: np.ndarray) -> np.ndarray:
    """[K, L] slowest GPU's time of every layer in every step (tokens: [K, L, E])."""
    return step_gpu_times(placement, cluster, tokens).max(axis=2)


@dataclass(frozen=True)
class SampledStepStats:
    """Per-step MoE time (sum over layers of the slowest GPU) over sampled steps, in us."""

    batch_tokens: float
    num_samples: int
    mean_us: float
    p50_us: float
    p95_us: float
    source: str  # "trace" or "multinomial"

    def to_dict(self) -> dict:
        return {"batch_tokens": self.batch_tokens, "num_samples": self.num_samples, "mean_us": self.mean_us,
                "p50_us": self.p50_us, "p95_us": self.p95_us, "source": self.source}


def expected_step_time(placement: Placement, loads: ExpertLoads, cluster: Cluster, batch_tokens: float,
                       num_samples: int = DEFAULT_SAMPLES, seed: int = 0,
                       trace: RoutingTrace | None = None) -> SampledStepStats:
    """Expected per-step MoE time of `placement` at operating point `batch_tokens`."""
    per_step = step_layer_times(placement, cluster, step_tokens(loads, batch_tokens, num_samples, seed, trace))
    total = per_step.sum(axis=1)
    return SampledStepStats(float(batch_tokens), int(num_samples), float(total.mean()),
                            float(np.percentile(total, 50)), float(np.percentile(total, 95)),
                            "trace" if trace is not None else "multinomial")
