"""vibe's engine balancer (vibe.engines.rebalance, behind the vLLM and SGLang entry points),
held to the contract of vLLM's own algorithm tests (tests/distributed/test_eplb_algo.py):
shapes, dtypes, ids in range, every expert >= 1 replica, replica totals, the parity
vector's shape, num_groups that do not divide fall back to global balancing, slots that
do not split over ranks are refused. Runs without any engine installed."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.engines.rebalance import (EplbShapeError, cluster_from_env, hierarchical, keep_slots, layer_objective,
                                    loads_from_weight, logical_maps, match_ranks, moved_slots, time_balanced)
from vibe.errors import InputError
from vibe.policies.eplb import rebalance_experts as eplb_rebalance
from vibe.synth.cluster import synth_cluster

PARITY_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
PARITY_PHY2LOG = np.array([[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                           [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]])


def check_contract(phy, weight, num_replicas, num_ranks):
    """What vLLM's tests assert of any policy's output."""
    L, E = np.asarray(weight).shape
    assert phy.shape == (L, num_replicas) and phy.dtype == np.int64
    assert phy.min() >= 0 and phy.max() < E
    log2phy, logcnt = logical_maps(phy, E)
    assert (logcnt >= 1).all() and (logcnt.sum(axis=1) == num_replicas).all()
    assert log2phy.shape == (L, E, logcnt.max())
    for l in range(L):  # log2phy lists exactly the slots of each expert, padded with -1
        for e in range(E):
            slots = log2phy[l, e][log2phy[l, e] >= 0]
            assert sorted(slots.tolist()) == np.flatnonzero(phy[l] == e).tolist()
            assert (log2phy[l, e][logcnt[l, e]:] == -1).all()


# (weight shape, replicas, groups, nodes, ranks) as in vLLM's rebalance cases
CASES = [((2, 12), 16, 4, 2, 8), ((3, 8), 8, 2, 1, 4), ((1, 8), 12, 4, 1, 4), ((4, 16), 32, 8, 2, 8),
         ((2, 12), 16, 3, 2, 8),  # 3 groups over 2 nodes: vLLM falls back to global
         ((2, 10), 12, 4, 2, 4),  # 4 groups do not divide 10 experts: global
         ((1, 4), 4, 1, 1, 4), ((2, 6), 12, 2, 2, 6)]


@pytest.mark.parametrize("shape,replicas,groups,nodes,ranks", CASES)
def test_contract(shape, replicas, groups, nodes, ranks, rng):
    weight = rng.integers(0, 200, size=shape)
    phy = time_balanced(weight, replicas, groups, nodes, ranks)
    check_contract(phy, weight, replicas, ranks)


def test_parity_vector_shape_and_hierarchy():
    phy = time_balanced(PARITY_WEIGHT, 16, 4, 2, 8)
    check_contract(phy, PARITY_WEIGHT, 16, 8)
    # hierarchical: every node holds whole expert groups (3 experts each), as EPLB does
    for l in range(2):
        node_groups = [set(phy[l, n * 8:(n + 1) * 8] // 3) for n in range(2)]
        assert node_groups[0].isdisjoint(node_groups[1]) and len(node_groups[0]) == 2
    # our eplb is the reference's parity vector
    assert np.array_equal(eplb_rebalance(PARITY_WEIGHT, 16, 4, 2, 8)[0], PARITY_PHY2LOG)


def test_refuses_slots_that_do_not_split():
    with pytest.raises(EplbShapeError, match="do not split evenly over 8 ranks") as info:
        time_balanced(PARITY_WEIGHT, 15, 4, 2, 8)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, ValueError)
    with pytest.raises(EplbShapeError, match="cannot hold"):
        time_balanced(PARITY_WEIGHT, 8, 1, 1, 8)


def test_hierarchical_rule():
    assert hierarchical(12, 4, 2, 8)
    assert not hierarchical(12, 3, 2, 8) and not hierarchical(10, 4, 2, 4) and not hierarchical(12, 4, 1, 8)
    assert not hierarchical(12, 4, 2, 5)


def test_empty_window_and_bad_values_are_uniform():
    zeros = np.zeros((2, 8))
    assert (loads_from_weight(zeros, 8).counts == 1).all()
    check_contract(time_balanced(zeros, 8, 1, 1, 4), zeros, 8, 4)
    w = np.array([[np.nan, -1, 5, 5]])
    assert loads_from_weight(w, 2).counts.tolist() == [[0, 0, 5, 5]]


def test_deterministic():
    rng = np.random.default_rng(3)
    w = rng.integers(0, 1000, size=(4, 32))
    assert np.array_equal(time_balanced(w, 40, 4, 2, 8), time_balanced(w, 40, 4, 2, 8))


def test_identical_gpus_at_least_eplb_and_slow_rank_wins():
    rng = np.random.default_rng(0)
    w = rng.lognormal(0, 1.0, size=(6, 64)) * 1000
    loads = loads_from_weight(w, 8)
    same = synth_cluster(16, scenario="identical", gpus_per_node=16)
    slow = synth_cluster(16, scenario="power-cap", spread=0.0, slow_rank=5, gpus_per_node=16)
    ref = eplb_rebalance(w, 80, 1, 1, 16)[0]
    ours = time_balanced(w, 80, 1, 1, 16)
    assert layer_objective(ours, loads, same).sum() <= layer_objective(ref, loads, same).sum() * 1.001
    ours_slow = time_balanced(w, 80, 1, 1, 16, cluster=slow)
    assert layer_objective(ours_slow, loads, slow).sum() < 0.95 * layer_objective(ref, loads, slow).sum()


def test_keeps_old_layout_when_as_good_and_moves_less():
    rng = np.random.default_rng(1)
    w = rng.lognormal(0, 1.0, size=(5, 32)) * 1000
    first = time_balanced(w, 40, 1, 1, 8)
    # the same loads again, with the old layout shuffled across ranks: nothing gets worse,
    # and keeping / relabelling moves no weight at all
    again = time_balanced(w, 40, 1, 1, 8, old=first)
    assert np.array_equal(again, first)
    w2 = w * rng.lognormal(0, 0.3, size=w.shape)
    fresh = time_balanced(w2, 40, 1, 1, 8)
    kept = time_balanced(w2, 40, 1, 1, 8, old=first)
    loads2 = loads_from_weight(w2, 8)
    same = synth_cluster(8, scenario="identical", gpus_per_node=8)
    assert np.all(layer_objective(kept, loads2, same) <= layer_objective(fresh, loads2, same) * (1 + 1e-3) + 1e-9)
    assert moved_slots(kept, first, 8) < moved_slots(fresh, first, 8)
    # an invalid old layout (elastic EP's -1 padding) is ignored, not trusted
    bad = first.copy()
    bad[0, 0] = -1
    assert np.array_equal(time_balanced(w2, 40, 1, 1, 8, old=bad), fresh)


def test_relabelling_helpers():
    old = np.array([[0, 1, 2, 3, 4, 5]])
    new = np.array([[4, 5, 1, 0, 3, 2]])  # rank contents {4,5},{0,1},{2,3}
    matched = match_ranks(new, old, 3, np.zeros(3, dtype=int))
    assert [set(matched[0, r * 2:(r + 1) * 2]) for r in range(3)] == [{0, 1}, {2, 3}, {4, 5}]
    assert keep_slots(matched, old, 3).tolist() == old.tolist()
    assert moved_slots(new, old, 3) == 6 and moved_slots(matched, old, 3) == 0
    # different curves: no swap between the two ranks
    assert np.array_equal(match_ranks(new, old, 3, np.arange(3)), new)


def test_cluster_from_env(tmp_path):
    path = tmp_path / "c.json"
    synth_cluster(4, scenario="fleet").save(path)
    assert cluster_from_env(4, {"VIBE_CLUSTER": str(path)}).num_gpus == 4
    assert cluster_from_env(4, {}) is None
    with pytest.raises(InputError, match="describes 4 GPUs, the EP group has 8 ranks"):
        cluster_from_env(8, {"VIBE_CLUSTER": str(path)})
    with pytest.raises(InputError, match="no such file"):
        cluster_from_env(8, {"VIBE_CLUSTER": str(tmp_path / "none.json")})


def test_point_options_from_env():
    from vibe.engines.rebalance import KEEP_TOL, point_options
    from vibe.errors import VibeError

    d = point_options({})
    assert d["hierarchy"] == "auto" and d["keep_tol"] == KEEP_TOL and d["weights"] is None
    d = point_options({"VIBE_BATCH_TOKENS": "32768,256", "VIBE_WEIGHTS": "1,1", "VIBE_HIERARCHY": "off",
                       "VIBE_KEEP_TOL": "0.03"})
    assert d == {"batch_tokens": (32768.0, 256.0), "weights": (1.0, 1.0), "hierarchy": "off", "keep_tol": 0.03}
    for bad in ({"VIBE_BATCH_TOKENS": "a"}, {"VIBE_WEIGHTS": "1,2,3"}, {"VIBE_HIERARCHY": "x"},
                {"VIBE_KEEP_TOL": "2"}):
        with pytest.raises(VibeError):
            point_options(bad)


def test_keep_tolerance_trades_moves_for_time():
    rng = np.random.default_rng(5)
    w = rng.lognormal(0, 1.0, size=(6, 32)) * 1000
    old = time_balanced(w, 40, 1, 1, 8)
    w2 = w * rng.lognormal(0, 0.05, size=w.shape)
    strict = time_balanced(w2, 40, 1, 1, 8, old=old)
    loose = time_balanced(w2, 40, 1, 1, 8, old=old, keep_tol=0.5)
    assert np.array_equal(loose, old) and moved_slots(strict, old, 8) >= moved_slots(loose, old, 8) == 0
