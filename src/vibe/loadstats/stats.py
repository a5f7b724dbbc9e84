"""Skew of expert loads, co-activation of experts, and distances between two profiles.

All functions take count or share matrices `[L, E]` (one row per MoE layer) and work row by
row; a row that saw no token has zero skew and is treated as uniform by the distances.
"""

from __future__ import annotations

import numpy as np

from vibe.errors import VibeError
from vibe.model import ExpertLoads


def _shares(counts: np.ndarray) -> np.ndarray:
    """[L, E] counts -> [L, E] rows summing to 1 (an empty row becomes uniform)."""
    c = np.asarray(counts, dtype=np.float64)
    tot = c.sum(axis=-1, keepdims=True)
    uniform = np.full_like(c, 1.0 / c.shape[-1])
    return np.divide(c, tot, out=uniform, where=tot > 0)


def max_over_mean(counts: np.ndarray) -> np.ndarray:
    """[L] busiest expert over the mean expert (1 = perfectly balanced, E = one expert)."""
    return _shares(counts).max(axis=-1) * np.shape(counts)[-1]


def gini(counts: np.ndarray) -> np.ndarray:
    """[L] Gini coefficient of the experts' loads (0 = balanced, (E-1)/E = one expert)."""
    s = np.sort(_shares(counts), axis=-1)
    E = s.shape[-1]
    rank = np.arange(1, E + 1)
    return (2.0 * (s * rank).sum(axis=-1)) / E - (E + 1.0) / E


def entropy(counts: np.ndarray, normalized: bool = True) -> np.ndarray:
    """[L] Shannon entropy of the routing distribution, in bits; normalized by log2(E)
    (1 = uniform) unless `normalized` is False."""
    p = _shares(counts)
    h = -(p * np.log2(p, out=np.zeros_like(p), where=p > 0)).sum(axis=-1)
    return h / np.log2(p.shape[-1]) if normalized else h


def layer_skew(loads: ExpertLoads) -> dict[str, np.ndarray]:
    """Per-layer skew of a profile: {"max_over_mean", "gini", "entropy"} each [L]."""
    return {"max_over_mean": max_over_mean(loads.counts), "gini": gini(loads.counts),
            "entropy": entropy(loads.counts)}


def coactivation(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """experts [T, k] expert ids of T tokens in one layer -> [E, E] int64: entry (a, b) is
    how many tokens picked both a and b (symmetric; the diagonal holds each expert's count)."""
    ex = np.asarray(experts, dtype=np.int64)
    T, k = ex.shape
    a_idx, b_idx = np.triu_indices(k, 1)
    # One bincount over the k(k-1)/2 expert pairs of each token: O(T k^2), no [T, E] one-hot.
    pairs = ex[:, a_idx] * num_experts + ex[:, b_idx]
    co = np.bincount(pairs.ravel(), minlength=num_experts * num_experts).reshape(num_experts, num_experts)
    co = co + co.T
    co[np.diag_indices(num_experts)] = np.bincount(ex.ravel(), minlength=num_experts)
    return co


def top_pairs(co: np.ndarray, tokens: int, n: int = 5) -> list[tuple[int, int, int, float]]:
    """The n most co-activated expert pairs of one layer: (a, b, tokens with both, lift),
    lift = observed / expected if a and b were picked independently."""
    E = co.shape[0]
    a, b = np.triu_indices(E, 1)
    both = co[a, b]
    p = np.diag(co) / max(tokens, 1)
    expected = p[a] * p[b] * tokens
    order = np.lexsort((a, -both))[:n]
    return [(int(a[i]), int(b[i]), int(both[i]), float(both[i] / expected[i]) if expected[i] > 0 else float("inf"))
            for i in order]


def tv_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[L] total-variation distance of two routing distributions per layer, in [0, 1]."""
    return 0.5 * np.abs(_shares(a) - _shares(b)).sum(axis=-1)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[L] 1 - cosine similarity of two count vectors per layer, in [0, 1] for counts."""
    pa, pb = _shares(a), _shares(b)
    return 1.0 - (pa * pb).sum(axis=-1) / (np.linalg.norm(pa, axis=-1) * np.linalg.norm(pb, axis=-1))


def compare_loads(a: ExpertLoads, b: ExpertLoads) -> dict:
    """Distances between two profiles over their common layers: per layer and overall.

    Returns {"layer_ids": [L], "tv": [L], "cosine": [L], "overall": {tv_mean, tv_median,
    tv_max, cosine_mean, cosine_median, cosine_all}} where `cosine_all` compares the
    whole [L*E] share vectors (every layer weighted alike)."""
    if a.num_experts != b.num_experts:
        raise VibeError(f"profiles have {a.num_experts} and {b.num_experts} experts per layer")
    common = [l for l in a.layer_ids if l in set(b.layer_ids)]
    if not common:
        raise VibeError(f"profiles share no layer (layers {a.layer_ids[0]}..{a.layer_ids[-1]} and "
                        f"{b.layer_ids[0]}..{b.layer_ids[-1]}); see --moe-layers")
    ra = a.counts[[a.layer_ids.index(l) for l in common]]
    rb = b.counts[[b.layer_ids.index(l) for l in common]]
    tv, cos = tv_distance(ra, rb), cosine_distance(ra, rb)
    cos_all = cosine_distance(_shares(ra).reshape(1, -1), _shares(rb).reshape(1, -1))[0]
    return {"layer_ids": common, "tv": tv, "cosine": cos,
            "overall": {"tv_mean": float(tv.mean()), "tv_median": float(np.median(tv)), "tv_max": float(tv.max()),
                        "cosine_mean": float(cos.mean()), "cosine_median": float(np.median(cos)),
                        "cosine_all": float(cos_all)}}
