"""Which GPUs got slower or faster between two profiles, by how much, and in which regime.

Both cluster files are evaluated with the cost model's curves on the token grid of the
reference (`a`). The regime boundary of each GPU is the knee of the floor-plus-slope fit
of its reference curve: points at or below the knee are memory-bound (the kernel streams
weights), points above it compute-bound. A power cap or a clock drop shows up in the
compute-bound ratio and barely in the memory-bound one; a memory problem the other way.
This is what recalibration reads.
"""

from __future__ import annotations

import numpy as np

from vibe.cost import expert_time_us
from vibe.errors import InputError
from vibe.model import Cluster
from vibe.profile.fit import hinge_fit

REGIMES = ("memory", "compute")


def _geo_mean(x: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(x)))) if x.size else float("nan")


def compare_gpu(a: Cluster, b: Cluster, rank: int, threshold: float) -> dict:
    """One GPU: time ratio b/a (geometric mean) overall and per regime, and a verdict."""
    ga = a.gpus[rank]
    tokens = ga.tokens
    ta = expert_time_us(a, rank, tokens)
    tb = expert_time_us(b, rank, tokens)
    ratio = tb / ta
    knee = hinge_fit(tokens, ga.latency_us)["knee_tokens"]
    memory = tokens <= knee
    by_regime = {"memory": _geo_mean(ratio[memory]), "compute": _geo_mean(ratio[~memory])}
    overall = _geo_mean(ratio)
    change = {r: v - 1.0 for r, v in by_regime.items() if np.isfinite(v)}
    regime = max(change, key=lambda r: abs(change[r]))
    worst = change[regime]
    verdict = "slower" if worst > threshold else "faster" if worst < -threshold else "same"
    return {"rank": rank, "name": ga.name, "ratio": overall, "memory_ratio": by_regime["memory"],
            "compute_ratio": by_regime["compute"], "knee_tokens": float(knee),
            "overhead_ratio": (b.gpus[rank].overhead_us / ga.overhead_us) if ga.overhead_us > 0 else None,
            "verdict": verdict, "regime": regime if verdict != "same" else None}


def compare_clusters(a: Cluster, b: Cluster, threshold: float = 0.03, source_b: object = "b") -> list[dict]:
    """Per-GPU comparison of profile `b` against reference `a` (ranks matched)."""
    if a.num_gpus != b.num_gpus:
        raise InputError(source_b, f"has {b.num_gpus} GPUs, the reference has {a.num_gpus}: "
                                   "compare profiles of the same EP group")
    if not threshold >= 0:
        raise InputError("--threshold", "must be >= 0")
    return [compare_gpu(a, b, g, threshold) for g in range(a.num_gpus)]
