"""The baseline policies and the policy registry on inputs small enough that every answer
is derived by hand in the comments: the equal-count greedy packing (with its tie rules),
replication by load per replica, EPLB's maps (phy2log, log2phy, logcnt) with and without
nodes, the token-balanced layout, and the registry's and slot layout's messages."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.errors import VibeError
from vibe.model import ExpertLoads
from vibe.policies import PlacementOptions, place
from vibe.policies import base as policy_base
from vibe.policies._packing import balanced_packing, replicate_by_load
from vibe.policies.base import get_policy, register_policy, slots_per_gpu
from vibe.policies.eplb import nodes_are_contiguous, rebalance_experts, rebalance_hierarchical
from vibe.synth import synth_cluster, synth_loads


# ---- balanced_packing -------------------------------------------------------------------
def test_packing_adds_each_item_to_its_pack():
    # [6, 5, 4, 3, 2, 1] into 2 packs of 3, heaviest first to the lightest pack with room:
    # 6 -> A (6); 5 -> B (5); 4 -> B (9); 3 -> A (9); 2 -> A (tie 9 = 9: lower pack, 11, full);
    # 1 -> B (10). A = {6, 3, 2}, B = {5, 4, 1}; ranks in the order the items arrived.
    pack, rank = balanced_packing(np.array([[6.0, 5, 4, 3, 2, 1]]), 2)
    assert pack.tolist() == [[0, 1, 1, 0, 0, 1]]
    assert rank.tolist() == [[0, 0, 1, 1, 2, 2]]


def test_packing_takes_equal_items_in_index_order():
    # 20 items weighing 1, 2, 1, 2, ... into 4 packs of 5. The weight-2 items (odd indices)
    # come first in index order: 1, 3, 5, 7 -> packs 0..3; 9, 11, 13, 15 -> 0..3 again
    # (all tied); 17 -> 0, 19 -> 1. Then the packs weigh 6, 6, 4, 4 and the weight-1
    # items (even indices): 0 -> 2, 2 -> 3, 4 -> 2, 6 -> 3 (all at 6 now), 8 -> 0,
    # 10 -> 1, 12 -> 2, 14 -> 3 (packs 2, 3 full), 16 -> 0, 18 -> 1. More than 16 tied
    # items: numpy's default (unstable) sort would take them in another order.
    pack, _ = balanced_packing(np.tile([1.0, 2.0], 10)[None, :], 4)
    members = [sorted(np.flatnonzero(pack[0] == p).tolist()) for p in range(4)]
    assert members == [[1, 8, 9, 16, 17], [3, 10, 11, 18, 19], [0, 4, 5, 12, 13], [2, 6, 7, 14, 15]]


# ---- replicate_by_load ------------------------------------------------------------------
def test_replicas_by_load_per_replica_worked_example():
    # [8, 6, 3, 1] with 6 slots: slot 4 -> expert 0 (8 is the most per replica), then the
    # loads per replica are 4, 6, 3, 1: slot 5 -> expert 1.
    slot2item, rank, count = replicate_by_load(np.array([[8.0, 6, 3, 1]]), 6)
    assert slot2item.tolist() == [[0, 1, 2, 3, 0, 1]]
    assert rank.tolist() == [[0, 0, 0, 0, 1, 1]]
    assert count.tolist() == [[2, 2, 1, 1]] and count.dtype.kind == "i"


# ---- token_balanced -----------------------------------------------------------------------
def test_token_balanced_worked_example():
    # [8, 6, 3, 1] on 2 GPUs of 2 slots: 8 -> GPU 0, 6 -> GPU 1, 3 -> GPU 1 (6 < 8),
    # 1 -> GPU 0: GPU 0 = (8, 1) in arrival order, GPU 1 = (6, 3); both carry 9 tokens.
    loads = ExpertLoads(np.array([[8.0, 6, 3, 1]]), 1)
    p = place(loads, synth_cluster(2, scenario="identical"), "token_balanced")
    assert p.physical_to_logical_map.tolist() == [[0, 3, 1, 2]]


def test_token_balanced_with_replicas_worked_example():
    # 2 replicas more: experts 0 and 1 get one each (replicate_by_load above), slots carry
    # 4, 3, 3, 1, 4, 3 tokens (experts 0, 1, 2, 3, 0, 1). Packing 2 x 3: slot 0 (4) -> GPU 0,
    # slot 4 (4) -> GPU 1, slot 1 (3) -> GPU 0 (tie), slot 2 (3) -> GPU 1, slot 5 (3) -> GPU 0
    # (tie at 7, full at 10), slot 3 (1) -> GPU 1 (8).
    loads = ExpertLoads(np.array([[8.0, 6, 3, 1]]), 1)
    p = place(loads, synth_cluster(2, scenario="identical"), "token_balanced", PlacementOptions(redundant=2))
    assert p.physical_to_logical_map.tolist() == [[0, 1, 1, 0, 2, 3]]


# ---- EPLB ------------------------------------------------------------------------------------
def test_eplb_maps_worked_example():
    # One group, one node: EPLB's steps 2 and 3 are the token_balanced example above, so
    # phy2log = [0, 1, 1, 0, 2, 3]; the replica index of each physical slot is
    # [0, 0, 1, 1, 0, 0] (expert 0: slots 0 and 3, expert 1: slots 1 and 2), and log2phy
    # lists each expert's slots by replica index, padded with -1.
    phy2log, log2phy, logcnt = rebalance_experts(np.array([[8, 6, 3, 1]]), 6, 1, 1, 2)
    assert phy2log.tolist() == [[0, 1, 1, 0, 2, 3]]
    assert log2phy.tolist() == [[[0, 3], [1, 2], [4, -1], [5, -1]]] and log2phy.dtype.kind == "i"
    assert logcnt.tolist() == [[2, 2, 1, 1]]


def test_eplb_maps_agree_with_each_other_on_four_nodes():
    # 4 nodes, 4 groups: each node replicates and packs its own group; every node's slots
    # must then hold that node's experts, so the counts in phy2log are logcnt and log2phy
    # points back at them (a node given another node's experts breaks both).
    w = synth_loads(3, 32, 4, seed=5).counts
    phy2log, log2phy, logcnt = rebalance_experts(w, 48, 4, 4, 16)
    for layer in range(3):
        assert np.bincount(phy2log[layer], minlength=32).tolist() == logcnt[layer].tolist()
        for e in range(32):
            slots = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert len(slots) == logcnt[layer, e] and np.all(phy2log[layer, slots] == e)
        node_of_slot = np.arange(48) // 12
        for grp in range(4):  # a group lives on exactly one node
            assert len(set(node_of_slot[phy2log[layer] // 8 == grp].tolist())) == 1


def test_eplb_shape_errors_name_every_problem():
    w = np.ones((1, 10))
    with pytest.raises(VibeError) as err:
        rebalance_hierarchical(w, 9, 4, 3, 4)
    assert str(err.value) == ("eplb: 10 experts do not split into 4 groups; 4 groups do not split over 3 nodes; "
                              "4 GPUs do not split over 3 nodes; 9 slots do not split over 4 GPUs; "
                              "9 slots cannot hold 10 experts")
    with pytest.raises(VibeError, match=r"^eplb: 10 experts do not split into 3 groups$"):
        rebalance_hierarchical(w, 10, 3, 1, 2)


@pytest.mark.parametrize("nodes,expected", [
    ([0, 0, 1, 1], True),
    ([0, 0, 0, 0], True),
    ([1, 1, 0, 0], False),  # equal sizes, but not numbered in rank order
    ([0, 1, 0, 1], False),  # interleaved
    ([0, 0, 1, 1, 0, 0], False),  # node 0 in two pieces
    ([0, 0, 0, 1], False),  # unequal nodes
])
def test_nodes_are_contiguous(nodes, expected):
    assert nodes_are_contiguous(np.array(nodes)) is expected


# ---- registry and slot layout -------------------------------------------------------------
def test_place_defaults_to_vibe():
    loads = ExpertLoads(np.array([[8.0, 6, 3, 1]]), 1)
    assert place(loads, synth_cluster(2, scenario="identical")).policy == "vibe"


def test_register_policy_adds_one_name_and_refuses_a_second_function(monkeypatch):
    monkeypatch.setattr(policy_base, "_REGISTRY", dict(policy_base._REGISTRY))

    def mine(loads, cluster, options):
        return get_policy("linear")(loads, cluster, options)

    assert register_policy("mine")(mine) is mine and get_policy("mine") is mine
    assert register_policy("mine")(mine) is mine  # the same function again: a re-import, fine
    with pytest.raises(ValueError, match=r"^policy 'mine' registered twice$"):
        register_policy("mine")(lambda loads, cluster, options: None)
    assert get_policy("mine") is mine


def test_unknown_policy_lists_the_available_ones(monkeypatch):
    monkeypatch.setattr(policy_base, "_REGISTRY", {"b": None, "a": None})
    with pytest.raises(VibeError, match=r"^unknown policy 'c'; available: a, b$"):
        get_policy("c")


def test_slot_layout_messages():
    loads = ExpertLoads(np.ones((1, 9)), 1)
    cluster = synth_cluster(4, scenario="identical")
    with pytest.raises(VibeError, match=r"^--redundant must be >= 0$"):
        slots_per_gpu(loads, cluster, PlacementOptions(redundant=-1))
    # 9 experts on 4 GPUs: 3 more slots make 12, then every 4 more.
    with pytest.raises(VibeError) as err:
        slots_per_gpu(loads, cluster, PlacementOptions(redundant=1))
    assert str(err.value) == ("9 experts + 1 redundant = 10 slots cannot be split evenly over 4 GPUs "
                              "(use --redundant 3, 7, ...)")
    assert slots_per_gpu(loads, cluster, PlacementOptions(redundant=7)) == 4
