"""The `exact` MILP policy: optimal on small instances (checked by brute force), valid,
never worse than `vibe`, above the lower bound; and `vibe` close to it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vibe.cost import evaluate, expert_cost_matrix, layer_lower_bounds
from vibe.policies import PlacementOptions, place
from vibe.synth.cluster import synth_cluster
from vibe.synth.loads import synth_loads

PREFILL = (8192,)


def moe_time(placement, loads, cluster, points=PREFILL, weights=None) -> float:
    return sum(p.weight * p.moe_time_us
               for p in evaluate(placement, loads, cluster, points, weights, with_lower_bound=False))


def brute_force_two_gpus(costs: np.ndarray, overhead: np.ndarray) -> float:
    """Optimal makespan of one layer on 2 GPUs, half the experts each. costs: [E, 2]."""
    E = costs.shape[0]
    best = np.inf
    for first in itertools.combinations(range(E), E // 2):
        on0 = np.zeros(E, dtype=bool)
        on0[list(first)] = True
        best = min(best, max(overhead[0] + costs[on0, 0].sum(), overhead[1] + costs[~on0, 1].sum()))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_exact_matches_brute_force(seed):
    loads = synth_loads(2, 10, 2, seed=seed)
    cluster = synth_cluster(2, scenario="outlier" if seed == 1 else "fleet", seed=seed)
    p = place(loads, cluster, "exact", PlacementOptions(batch_tokens=PREFILL, time_limit_s=20))
    assert p.extra["exact"]["optimal_rows"] == 2
    assert p.extra["exact"]["milp_bound_us"] == pytest.approx(moe_time(p, loads, cluster), rel=1e-4)
    costs = expert_cost_matrix(cluster, loads.expert_tokens(8192))
    want = sum(brute_force_two_gpus(costs[l], cluster.overhead_us) for l in range(2))
    assert moe_time(p, loads, cluster) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_vibe_close_to_exact_on_small_instances(seed):
    rng = np.random.default_rng(seed)
    G = int(rng.choice([3, 4]))
    R = int(rng.choice([0, G]))
    E = 3 * G
    loads = synth_loads(2, E, 2, seed=seed)
    cluster = synth_cluster(G, scenario=str(rng.choice(["fleet", "power-cap", "outlier"])), seed=seed)
    o = PlacementOptions(redundant=R, time_limit_s=4, seed=seed)  # default points 8192/256, weights 0.7/0.3
    ex = place(loads, cluster, "exact", o)
    vb = place(loads, cluster, "vibe", o)
    assert (ex.logical_count() >= 1).all() and ex.num_slots == E + R
    points = (8192, 256)
    t_ex, t_vb = (moe_time(p, loads, cluster, points, (0.7, 0.3)) for p in (ex, vb))
    assert t_ex <= t_vb * (1 + 1e-9)  # exact keeps vibe's plan where HiGHS finds nothing better
    assert t_vb <= 1.03 * t_ex
    if R == 0:  # the MILP optimum can't beat the LP relaxation bound
        lb = sum(w * layer_lower_bounds(loads, cluster, b, E).sum() for b, w in zip(points, (0.7, 0.3)))
        assert t_ex >= lb * (1 - 1e-6)


def test_exact_confirms_vibe_on_real_esft_layers(esft_loads):
    """Two real ESFT layers, 8 GPUs, one 20% slow: vibe within 1% of HiGHS's bound on
    the optimum (proven within the time limit or not), and exact no worse than vibe."""
    loads = esft_loads.select_layers([0, 12])
    cluster = synth_cluster(8, scenario="power-cap", spread=0.0, slow_rank=3)
    o = PlacementOptions(batch_tokens=PREFILL, time_limit_s=4)
    ex = place(loads, cluster, "exact", o)
    info = ex.extra["exact"]
    assert info["rows"] == 2 and info["milp_bound_us"] is not None
    vibe = moe_time(place(loads, cluster, "vibe", o), loads, cluster)
    assert moe_time(ex, loads, cluster) <= vibe * (1 + 1e-9)
    assert vibe <= 1.01 * info["milp_bound_us"]


def test_exact_time_limit_falls_back_to_a_valid_plan():
    loads = synth_loads(2, 48, 4, seed=9)
    cluster = synth_cluster(8, scenario="fleet", seed=9)
    p = place(loads, cluster, "exact", PlacementOptions(redundant=8, time_limit_s=0.05))
    assert (p.logical_count() >= 1).all() and p.policy == "exact"
