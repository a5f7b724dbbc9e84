"""Worked examples for the time-balanced binning (`vibe.policies._timebalance`), one
function at a time: every expected value below is derived by hand in the comments, on
linear curves (t_g(n) = slope_g * n) or a curve with a flat floor, so a changed sign,
index, tie rule or limit in the solver's parts shows up as a wrong number. None of these
needs ../shared."""

from __future__ import annotations

import numpy as np
import pytest

from vibe import stochastic
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions, place
from vibe.policies import _timebalance as tb


def linear(*slopes: float, overhead=0.0, nodes=None) -> Cluster:
    """GPU g runs an expert on n >= 1 tokens in slopes[g] * n us (grid 1..1000)."""
    return Cluster.init_by_curves([1.0, 1000.0], [[s, 1000.0 * s] for s in slopes], overhead, nodes=nodes)


def floor5(num_gpus: int) -> Cluster:
    """Identical GPUs: an expert takes 5 us up to 5 tokens, then 1 us per token."""
    return Cluster.init_by_curves([1.0, 5.0, 1000.0], [[5.0, 5.0, 1000.0]] * num_gpus)


def row(costs_eg, S, items=None):
    """One row, one scenario, no overhead: costs [E, G] -> (costs [1, 1, E, G], w, items, over)."""
    c = np.asarray(costs_eg, dtype=np.float64)[None, None]
    items = np.arange(c.shape[2])[None] if items is None else np.asarray(items)[None]
    return c, np.ones(1), items, np.zeros((1, c.shape[3]))


# ---- costs -----------------------------------------------------------------------------
def test_replica_costs_split_tokens_evenly_over_replicas_and_price_each_gpu():
    # GPUs with slopes 1 and 2; expert 0 gets 10 tokens in 1 replica, expert 1 20 tokens
    # in 2 replicas (10 each): both replicas cost 10 us on GPU 0 and 20 us on GPU 1.
    cl = linear(1.0, 2.0)
    c = tb.replica_costs(cl, np.array([[0, 1]]), np.array([[[10.0, 20.0]]]), np.array([[1, 2]]))
    assert c.shape == (1, 1, 2, 2)
    assert c[0, 0].tolist() == [[10.0, 20.0], [10.0, 20.0]]
    # rows address global ranks: a row listing GPU 1 first sees its costs first
    c = tb.replica_costs(cl, np.array([[1, 0]]), np.array([[[10.0, 20.0]]]), np.array([[1, 2]]))
    assert c[0, 0].tolist() == [[20.0, 10.0], [20.0, 10.0]]


def test_replica_costs_and_overhead_fold_in_the_network():
    # 2 GPUs on 2 nodes, hidden 1000 x (1 + 2) bytes a token, 50 GB/s between nodes:
    # a token costs 1e6 * 3000 * (1/2) / 50e9 = 0.03 us; the two all-to-alls' latency is
    # 2 x 15 us. Expert 0's 10 tokens: 10 us compute + 0.3 us on GPU 0, 20 + 0.3 on GPU 1.
    cl = linear(1.0, 2.0, overhead=[3.0, 5.0], nodes=[0, 1]).with_network({"hidden": 1000.0})
    c = tb.replica_costs(cl, np.array([[0, 1]]), np.array([[[10.0]]]), np.array([[1]]))
    assert c[0, 0, 0] == pytest.approx([10.3, 20.3])
    assert tb.row_overhead(cl, np.array([[1, 0]]))[0] == pytest.approx([35.0, 33.0])
    assert tb.row_overhead(linear(1.0, 2.0, overhead=[3.0, 5.0]), np.array([[1, 0]])).tolist() == [[5.0, 3.0]]


def test_reference_cluster_is_the_mean_curve_and_overhead():
    ref = tb.reference_cluster(linear(1.0, 3.0, overhead=[2.0, 4.0]))
    assert ref.num_gpus == 1
    assert ref.overhead_us.tolist() == [3.0]
    assert float(tb.expert_time_us(ref, 0, 10.0)) == pytest.approx(20.0)


# ---- replica counts ----------------------------------------------------------------------
def test_the_extra_replica_goes_to_the_expert_that_sets_the_pace():
    # Unit GPUs, tokens 30, 10, 10, 2 GPUs, 4 slots: one extra replica. Splitting expert 0
    # gives max(others 10, half 15, work 50 / 2) = 25; splitting expert 1 leaves 30.
    count = tb.allocate_replicas(linear(1.0, 1.0), np.array([[[30.0, 10.0, 10.0]]]), np.ones(1), 2, 4)
    assert count.tolist() == [[2, 1, 1]]
    assert count.dtype == np.int64


def test_replica_ties_go_to_the_split_that_adds_least_work_then_the_next_hottest():
    # Floor curve (5 us up to 5 tokens), 4 GPUs, tokens 20, 20, 4, 5 slots (2 extra).
    # Extra 1: every split scores 20 (the other 20-token expert stays at 20; work/4 <=
    # 12.5), but splitting the 4-token expert adds a whole floor (2 x 5 - 5 = 5 us) while
    # splitting a 20-token one adds nothing: expert 0 (the first of the tied).
    # Extra 2: splitting expert 1 now gives max(10, 10, 45/4) = 11.25, the others 20.
    count = tb.allocate_replicas(floor5(4), np.array([[[20.0, 20.0, 4.0]]]), np.ones(1), 4, 5)
    assert count.tolist() == [[2, 2, 1]]
    # cold expert first in id order: the tie rule, not the id, must decide
    count = tb.allocate_replicas(floor5(4), np.array([[[4.0, 20.0, 20.0]]]), np.ones(1), 4, 4)
    assert count.tolist() == [[1, 2, 1]]


def test_no_expert_gets_more_replicas_than_gpus_unless_slots_force_it():
    # 2 GPUs, 2 slots each, experts of 100 and 1 tokens: the hot one would take both extra
    # slots, but it may hold at most 2 replicas (one per GPU), so the cold one gets one.
    count = tb.allocate_replicas(linear(1.0, 1.0), np.array([[[100.0, 1.0]]]), np.ones(1), 2, 4)
    assert count.tolist() == [[2, 2]]
    # 2 GPUs with 3 slots each and 2 experts: 3 replicas of one expert are forced
    # (cap = ceil(6 / 2) = 3), and the hot expert takes them.
    count = tb.allocate_replicas(linear(1.0, 1.0), np.array([[[100.0, 1.0]]]), np.ones(1), 2, 6)
    assert count.tolist() == [[3, 3]]
    # 3 GPUs, 6 slots: the hot expert reaches the cap of 3; the last extra ties between the
    # cold ones (half a token costs the 1-token floor either way): the first, expert 1.
    count = tb.allocate_replicas(linear(1.0, 1.0, 1.0), np.array([[[100.0, 1.0, 1.0]]]), np.ones(1), 3, 6)
    assert count.tolist() == [[3, 2, 1]]


def test_replicas_weigh_scenarios_by_their_weight():
    # Two scenarios on unit GPUs, 2 GPUs, one extra slot: expert 0 is hot in scenario 0
    # (40 vs 10 tokens), expert 1 in scenario 1 (10 vs 40). The heavier scenario decides:
    # w = (0.9, 0.1): split expert 0; w = (0.1, 0.9): split expert 1.
    tokens = np.array([[[40.0, 10.0]], [[10.0, 40.0]]])
    cl = linear(1.0, 1.0)
    assert tb.allocate_replicas(cl, tokens, np.array([0.9, 0.1]), 2, 3).tolist() == [[2, 1]]
    assert tb.allocate_replicas(cl, tokens, np.array([0.1, 0.9]), 2, 3).tolist() == [[1, 2]]


def test_every_row_gets_its_own_replicas():
    # Row 0's hot expert is 0, row 1's is 2.
    tokens = np.array([[[30.0, 1.0, 1.0], [1.0, 1.0, 30.0]]])
    count = tb.allocate_replicas(linear(1.0, 1.0), tokens, np.ones(1), 2, 4)
    assert count.tolist() == [[2, 1, 1], [1, 1, 2]]


def test_prefer_variance_splits_the_bursty_expert_among_ties():
    # Unit GPUs, 2 GPUs (at most 2 replicas each), two equally weighted steps, 5 slots.
    # Steady A takes 10 tokens in both steps, bursty B 0 then 20 (same mean), C 30 in both.
    # Extra 1 goes to C (25 against 30 for the others). Extra 2: C is at the cap; splitting
    # A scores 0.5 * max(15, 5, 40/2) + 0.5 * max(20, 5, 60/2) = 25, splitting B
    # 0.5 * max(15, 0, 20) + 0.5 * max(15, 10, 30) = 25: a tie, and neither adds work.
    # Plain: the first of the tied (A). prefer_variance: B, whose time varies.
    tokens = np.array([[[10.0, 0.0, 30.0]], [[10.0, 20.0, 30.0]]])
    w = np.array([0.5, 0.5])
    assert tb.allocate_replicas(linear(1.0, 1.0), tokens, w, 2, 5).tolist() == [[2, 1, 2]]
    assert tb.allocate_replicas(linear(1.0, 1.0), tokens, w, 2, 5, prefer_variance=True).tolist() == [[1, 2, 2]]


# ---- construction ---------------------------------------------------------------------
def test_items_list_experts_in_id_order_with_replicas_together():
    assert tb.items_of(np.array([[2, 1, 3], [1, 1, 4]])).tolist() == [[0, 0, 1, 2, 2, 2], [0, 1, 2, 2, 2, 2]]


def test_construct_doubles_an_expert_on_a_gpu_only_when_forced():
    # 2 identical GPUs, 2 slots each, expert 0 in 3 replicas (10 us each), expert 1 (4 us).
    # Largest first: replica 1 -> GPU 0 (tie, lower index), replica 2 -> GPU 1 (GPU 0 holds
    # expert 0), replica 3 -> no GPU is free of expert 0, so any GPU with room: 20 either
    # way -> GPU 0; expert 1 -> GPU 1, the only one with room.
    costs, w, items, over = row([[10.0, 10.0], [10.0, 10.0], [10.0, 10.0], [4.0, 4.0]], 2, items=[0, 0, 0, 1])
    costs = costs[:, :, :2]  # [1, 1, E=2, G=2]
    gpu = tb.construct(costs, w, items, over, 2)
    assert gpu.tolist() == [[0, 1, 0, 1]]


def test_construct_sends_the_hot_item_to_the_fast_gpu_and_ties_to_the_earliest_finish():
    # GPU 0 twice as slow as GPU 1 (costs 2c vs c), 1 slot each, items of 10 and 1 us on
    # GPU 1. The hot item (mean cost 15) goes first, to GPU 1 (makespan 10 < 20); the cold
    # one to GPU 0 (the only room).
    costs, w, items, over = row([[20.0, 10.0], [2.0, 1.0]], 1)
    assert tb.construct(costs, w, items, over, 1).tolist() == [[1, 0]]
    # Two GPUs where the makespan grows equally (both stay under GPU 2's 50 us overhead):
    # the earlier finish wins, GPU 1 (overhead 0 + 3 < 10 + 3).
    c = np.array([[3.0, 3.0, 3.0]])[None, None]
    gpu = tb.construct(c, np.ones(1), np.array([[0]]), np.array([[10.0, 0.0, 50.0]]), 1)
    assert gpu.tolist() == [[1]]


def test_objective_and_gpu_times_on_a_hand_made_plan():
    # K=2 scenarios weighted 1/4, 3/4; 3 items on 2 GPUs, overhead (1, 2).
    costs = np.array([[[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], [[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]]])
    items, gpu, over = np.array([[0, 1, 2]]), np.array([[0, 1, 1]]), np.array([[1.0, 2.0]])
    T = tb.gpu_times(costs, items, gpu, over)
    # scenario 0: GPU 0 = 1 + 1, GPU 1 = 2 + 4 + 6; scenario 1: 1 + 10, 2 + 40 + 60
    assert T.tolist() == [[[2.0, 12.0]], [[11.0, 102.0]]]
    assert tb.objective(T, np.array([0.25, 0.75])).tolist() == [0.25 * 12 + 0.75 * 102]


# ---- the local search's parts ---------------------------------------------------------------
def test_top3_pads_small_rows_and_orders_by_value():
    v, i = tb._top3(np.array([[5.0, 7.0]]))
    assert v.tolist() == [[7.0, 5.0, -np.inf]] and i.tolist() == [[1, 0, -1]]
    v, i = tb._top3(np.array([[4.0, 9.0, 1.0, 6.0]]))
    assert v.tolist() == [[9.0, 6.0, 4.0]] and i.tolist() == [[1, 3, 0]]


def test_critical_gpus_with_few_scenarios_are_each_scenarios_busiest():
    # One scenario, 5 GPUs with times 1, 5, 3, 4, 2 (makespan 5): its critical GPU 1, then
    # the CRITICAL_GPUS = 4 busiest relative to the makespan: 1, 3, 2, 4.
    Ta = np.array([[[1.0, 5.0, 3.0, 4.0, 2.0]]])
    assert tb._critical_gpus(Ta, np.ones(1)).tolist() == [[1, 1, 3, 2, 4]]
    # Two scenarios: each one's busiest (GPU 0, then GPU 2), then by weighted relative time
    # 0.5 * (T / M): GPU 0 (1 + 0.5)/2, GPU 1 (0.8 + 0.2)/2, GPU 2 (0.1 + 1)/2.
    Ta = np.array([[[10.0, 8.0, 1.0]], [[5.0, 2.0, 10.0]]])
    assert tb._critical_gpus(Ta, np.array([0.5, 0.5])).tolist() == [[0, 2, 0, 2, 1]]


def test_critical_gpus_with_many_scenarios_go_by_votes():
    # 5 equally weighted scenarios on 3 GPUs; GPU 0 is the busiest in 3 of them, GPU 1 and
    # GPU 2 in one each: votes 0.6, 0.2, 0.2; GPU 1's relative time (mean 0.56) beats
    # GPU 2's (mean 0.5) for the tie.
    Ta = np.array([[[10, 6, 5]], [[10, 6, 5]], [[10, 6, 5]], [[1, 10, 0]], [[1, 0, 10]]], dtype=float)
    w = np.full(5, 0.2)
    crit = tb._critical_gpus(Ta, w)
    assert crit[0, :3].tolist() == [0, 1, 2]
    rel = (w[:, None] * Ta[:, 0] / Ta[:, 0].max(axis=1, keepdims=True)).sum(axis=0)
    assert crit[0, 3:].tolist() == np.argsort(-rel, kind="stable").tolist()


def test_rest_max_is_the_largest_time_outside_the_swapped_pair():
    # GPU times: GPU 2 = 9, GPU 0 = 7, GPU 1 = 5 (top 3). Swapping GPU 2 with GPU 0 leaves
    # GPU 1's 5; swapping GPU 2 with GPU 3 leaves GPU 0's 7.
    top_v, top_i = np.array([[[9.0, 7.0, 5.0]]]), np.array([[[2, 0, 1]]])
    out = tb._rest_max(top_v, top_i, np.array([[2]]), np.array([[0, 3]]))
    assert out.tolist() == [[[[5.0, 7.0]]]]
    # only two GPUs: nothing is left outside the pair
    out = tb._rest_max(np.array([[[9.0, 7.0, -np.inf]]]), np.array([[[1, 0, -1]]]), np.array([[1]]), np.array([[0]]))
    assert out.tolist() == [[[[-np.inf]]]]


def test_cost_at_reads_the_flat_cost_array():
    rng = np.random.default_rng(0)
    costs = np.ascontiguousarray(rng.random((2, 3, 4, 5)))
    x, e, g = np.array([0, 2, 1]), np.array([3, 0, 1]), np.array([4, 1, 0])
    assert np.array_equal(tb._cost_at(costs, x, e, g), costs[:, x, e, g])


def test_apply_swaps_moves_both_items_and_updates_times_and_holdings():
    # GPU 0 holds expert 0 (costs 4 / 6 on GPUs 0 / 1), GPU 1 expert 1 (2 / 3).
    costs = np.array([[[[4.0, 6.0], [2.0, 3.0]]]])
    items, gpu = np.array([[0, 1]]), np.array([[0, 1]])
    T = tb.gpu_times(costs, items, gpu, np.zeros((1, 2)))
    has = np.zeros((1, 2, 2), dtype=np.int64)
    has[0, 0, 0] = has[0, 1, 1] = 1
    tb._apply_swaps(costs, items, gpu, T, has, np.array([0]), np.array([0]), np.array([1]))
    assert gpu.tolist() == [[1, 0]]
    assert T.tolist() == [[[2.0, 6.0]]]  # GPU 0 now runs expert 1 (2), GPU 1 expert 0 (6)
    assert has[0].tolist() == [[0, 1], [1, 0]]


def test_local_search_takes_a_plateau_swap_only_with_plateau_on():
    # Three identical GPUs, 2 slots each, items 6, 6, 4, 4, 1, 1 us. Start: GPU 0 {6, 4} =
    # 10, GPU 1 {6, 4} = 10, GPU 2 {1, 1} = 2: makespan 10, tied on two GPUs. No single
    # swap lowers the makespan (GPU 1 stays at 10), but swapping 4 (GPU 0) with 1 (GPU 2)
    # evens GPU 0 to 7 and GPU 2 to 5 (psi falls); then 4 (GPU 1) with 1 (GPU 2) gives
    # GPU 1 7, GPU 2 8: makespan 8. Without the plateau rule the search stops at 10.
    c = np.array([6.0, 6.0, 4.0, 4.0, 1.0, 1.0])[:, None].repeat(3, axis=1)
    costs, w, items, over = row(c, 2)
    start = np.array([[0, 1, 0, 1, 2, 2]])
    flat = tb.local_search(costs, w, items, start, over, plateau=False)
    assert tb.objective(tb.gpu_times(costs, items, flat, over), w).tolist() == [10.0]
    walked = tb.local_search(costs, w, items, start, over)
    assert tb.objective(tb.gpu_times(costs, items, walked, over), w).tolist() == [8.0]  # optimum: {6,1}{6,1}{4,4}
    assert np.bincount(walked[0], minlength=3).tolist() == [2, 2, 2]


def test_local_search_never_puts_two_replicas_of_an_expert_on_one_gpu():
    # Expert 0 in 2 replicas (10 us on GPU 0, 2 us on GPU 1), experts 1 and 2 (1 us).
    # Start: GPU 0 {0, 1} = 11, GPU 1 {0, 2} = 3. Every swap that lowers the makespan puts
    # the second replica of expert 0 on GPU 1 (e.g. 0 <-> 2: GPU 0 2, GPU 1 4); the only
    # legal swap (1 <-> 2) changes nothing. The search must stay at 11.
    c = np.array([[10.0, 2.0], [1.0, 1.0], [1.0, 1.0]])
    costs, w, _, over = row(c, 2)
    items = np.array([[0, 0, 1, 2]])
    gpu = tb.local_search(costs, w, items, np.array([[0, 1, 0, 1]]), over)
    assert tb.duplicates(items, gpu, 3).tolist() == [0]
    assert tb.objective(tb.gpu_times(costs, items, gpu, over), w).tolist() == [11.0]


def test_local_search_with_one_gpu_or_no_rows_returns_the_start():
    costs, w, items, over = row([[1.0], [2.0]], 2)
    start = np.array([[0, 0]])
    assert tb.local_search(costs, w, items, start, over).tolist() == [[0, 0]]
    empty = np.zeros((1, 0, 2, 2))
    assert tb.local_search(empty, w, np.zeros((0, 2), dtype=np.int64), np.zeros((0, 2), dtype=np.int64),
                           np.zeros((0, 2))).shape == (0, 2)


def test_local_search_returns_a_copy():
    c = np.array([8.0, 7.0, 6.0, 5.0, 4.0, 0.0])[:, None].repeat(2, axis=1)
    costs, w, items, over = row(c, 3)
    start = np.array([[0, 1, 1, 0, 0, 1]])
    kept = start.copy()
    tb.local_search(costs, w, items, start, over)
    assert np.array_equal(start, kept)


# ---- restarts, duplicates, layouts ----------------------------------------------------------
def test_perturb_is_seeded_keeps_slot_counts_and_never_doubles_an_expert():
    rng = np.random.default_rng(3)
    items = tb.items_of(np.array([[2, 1, 1, 2, 1, 1], [1, 1, 1, 1, 2, 2]]))  # [2, 8]
    gpu = np.array([[0, 1, 0, 2, 3, 1, 2, 3], [0, 0, 1, 1, 2, 3, 2, 3]])
    a = tb.perturb(items, gpu, 6, np.random.default_rng(11))
    b = tb.perturb(items, gpu, 6, np.random.default_rng(11))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, gpu)  # 6 random swaps move something
    for x in range(2):
        assert np.bincount(a[x], minlength=4).tolist() == [2, 2, 2, 2]
    assert tb.duplicates(items, a, 6).tolist() == [0, 0]
    assert np.array_equal(tb.perturb(items, gpu, 0, rng), gpu)
    many = [tb.perturb(items, gpu, 20, np.random.default_rng(s)) for s in range(20)]
    assert all(tb.duplicates(items, m, 6).tolist() == [0, 0] for m in many)


def test_repair_duplicates_takes_the_swap_that_keeps_the_pair_fastest():
    # GPU 1 twice as slow. Expert 0 (10 / 20 us) sits twice on GPU 0; GPU 1 holds experts 1
    # (3 / 6) and 2 (5 / 10): T = (20, 16). Swapping a replica of 0 with expert 1 gives
    # GPU 0 13, GPU 1 16 - 6 + 20 = 30; with expert 2: GPU 0 15, GPU 1 16 - 10 + 20 = 26.
    costs = np.array([[[[10.0, 20.0], [3.0, 6.0], [5.0, 10.0]]]])
    items, gpu = np.array([[0, 0, 1, 2]]), np.array([[0, 0, 1, 1]])
    fixed = tb.repair_duplicates(costs, np.ones(1), items, gpu, np.zeros((1, 2)))
    assert fixed.tolist() == [[1, 0, 1, 0]]
    assert gpu.tolist() == [[0, 0, 1, 1]]  # the input is left alone


def test_repair_duplicates_leaves_forced_doubles_and_clean_rows_alone():
    # Row 0: expert 0 in 3 replicas on 2 GPUs of 2 slots: one GPU must hold 2 (stuck).
    # Row 1: no duplicate.
    costs = np.ones((1, 2, 2, 2))
    items = np.array([[0, 0, 0, 1], [0, 1, 0, 1]])
    gpu = np.array([[0, 1, 0, 1], [0, 0, 1, 1]])
    fixed = tb.repair_duplicates(costs, np.ones(1), items, gpu, np.zeros((2, 2)))
    assert np.array_equal(fixed, gpu)


def test_repair_duplicates_fixes_every_double_in_a_row():
    # 3 GPUs: GPU 0 holds expert 0 twice, GPU 1 expert 1 twice, GPU 2 experts 2 and 3.
    costs = np.ones((1, 1, 4, 3))
    items = np.array([[0, 0, 1, 1, 2, 3]])
    gpu = np.array([[0, 0, 1, 1, 2, 2]])
    fixed = tb.repair_duplicates(costs, np.ones(1), items, gpu, np.zeros((1, 3)))
    assert tb.duplicates(items, fixed, 4).tolist() == [0]
    assert np.bincount(fixed[0], minlength=3).tolist() == [2, 2, 2]


def test_duplicates_counts_extra_replicas_per_row():
    items = np.array([[0, 0, 1, 1], [0, 0, 0, 1]])
    gpu = np.array([[0, 0, 1, 0], [1, 1, 1, 0]])
    assert tb.duplicates(items, gpu, 2).tolist() == [1, 2]
    # a key per row: the same (GPU, expert) in two rows is not a duplicate
    assert tb.duplicates(np.array([[0, 1], [0, 1]]), np.array([[0, 1], [0, 1]]), 2).tolist() == [0, 0]


def test_slot_layout_lists_each_gpus_experts_in_id_order():
    items, gpu = np.array([[3, 1, 2, 0]]), np.array([[1, 0, 1, 0]])
    assert tb.slot_layout(items, gpu, 2).tolist() == [[[0, 1], [2, 3]]]
    items, gpu = np.array([[0, 2, 1, 2]]), np.array([[1, 1, 0, 0]])
    assert tb.slot_layout(items, gpu, 2).tolist() == [[[1, 2], [0, 2]]]


def test_solve_rows_restarts_only_keep_better_plans_and_are_seeded():
    rng = np.random.default_rng(5)
    E, G = 12, 4
    costs = rng.gamma(1.0, 10.0, size=(1, 2, E, 1)) * rng.uniform(0.8, 1.3, size=(1, 1, 1, G))
    items = np.tile(np.arange(E), (2, 1))
    over = np.zeros((2, G))
    base = tb.solve_rows(costs, np.ones(1), items, over, 3)
    f0 = tb.objective(tb.gpu_times(costs, items, base, over), np.ones(1))
    more = tb.solve_rows(costs, np.ones(1), items, over, 3, restarts=4, seed=1)
    f1 = tb.objective(tb.gpu_times(costs, items, more, over), np.ones(1))
    assert np.all(f1 <= f0 * (1 + 1e-12))
    assert np.array_equal(more, tb.solve_rows(costs, np.ones(1), items, over, 3, restarts=4, seed=1))
    for x in range(2):
        assert np.bincount(more[x], minlength=G).tolist() == [3] * G


def test_solve_rows_repairs_a_forced_double_from_the_construction():
    # 2 GPUs x 2 slots, expert 0 in 2 replicas (9 us), expert 1 (8), expert 2 (1). Largest
    # first: 9 -> GPU 0, 9 -> GPU 1 (GPU 0 holds it), 8 -> GPU 0 (tie: lower index; 17 either
    # way), 1 -> GPU 1: 17 / 10, no double. The solve must keep it valid and optimal: the
    # best split is {9, 8} / {9, 1} since expert 0 cannot sit twice on one GPU.
    costs, w, _, over = row([[9.0, 9.0], [8.0, 8.0], [1.0, 1.0]], 2)
    items = np.array([[0, 0, 1, 2]])
    gpu = tb.solve_rows(costs, w, items, over, 2)
    assert tb.duplicates(items, gpu, 3).tolist() == [0]
    assert tb.objective(tb.gpu_times(costs, items, gpu, over), w).tolist() == [17.0]


# ---- starts ------------------------------------------------------------------------------
def test_best_of_starts_keeps_the_lowest_without_more_doubles_and_the_first_on_ties():
    cl = linear(1.0, 1.0)
    row_gpus = np.array([[0, 1], [0, 1]])
    tokens = np.array([[[6.0, 4.0, 2.0], [6.0, 4.0, 2.0]]])  # [K=1, X=2, E=3]
    count = np.array([[2, 1, 1], [2, 1, 1]])  # expert 0 split: 3 tokens a replica
    items = tb.items_of(count)  # [0, 0, 1, 2]
    over = np.zeros((2, 2))
    a = np.array([[0, 1, 0, 1], [0, 1, 0, 1]])  # {3, 4} {3, 2}: 7
    b = np.array([[0, 1, 1, 0], [0, 1, 1, 0]])  # {3, 2} {3, 4}: 7 (a tie: the first stays)
    c = np.array([[0, 0, 1, 1], [0, 1, 1, 0]])  # row 0: {3, 3} {4, 2}: 6 but doubles expert 0
    starts = [(count, items, a), (count, items, b), (count, items, c)]
    _, _, gpu = tb.best_of_starts(cl, row_gpus, tokens, np.ones(1), over, starts)
    assert gpu.tolist() == a.tolist()
    # a start with other replica counts that is better wins, with its counts and items
    one = np.array([[2, 1, 1], [1, 2, 1]])
    one_items = tb.items_of(one)  # row 0: [0, 0, 1, 2], row 1: [0, 1, 1, 2]
    tokens2 = np.array([[[6.0, 4.0, 2.0], [1.0, 12.0, 1.0]]])
    split = (count, items, a)  # row 1, expert 0 split: {1, 12} {1, 1}: 13 (half a token costs the floor)
    better = (one, one_items, np.array([[0, 1, 0, 1], [0, 0, 1, 1]]))  # row 1: {1, 6} {6, 1}: 7
    cnt, it, gpu = tb.best_of_starts(cl, row_gpus, tokens2, np.ones(1), over, [split, better])
    assert cnt.tolist() == [[2, 1, 1], [1, 2, 1]]
    assert it.tolist() == [[0, 0, 1, 2], [0, 1, 1, 2]]
    assert gpu.tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]


def test_eplb_start_is_never_worse_than_eplb_and_keeps_its_counts():
    from vibe.policies.eplb import rebalance_experts

    rng = np.random.default_rng(2)
    loads = ExpertLoads(rng.gamma(0.6, 100.0, size=(3, 8)), top_k=2)
    cl = linear(1.0, 1.1, 1.3, 0.9)
    S, G = 3, 4
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(400.0, 40.0)))
    over = tb.row_overhead(cl, np.tile(np.arange(G), (3, 1)))
    [(count, items, gpu)] = tb.eplb_starts(loads, cl, S, tokens, w, over)
    phy, _, eplb_count = rebalance_experts(loads.counts, G * S, 1, 1, G)
    assert np.array_equal(count, eplb_count)
    assert np.array_equal(items, phy)
    costs = tb.replica_costs(cl, np.tile(np.arange(G), (3, 1)), tokens, count)
    eplb_gpu = np.broadcast_to(np.arange(G * S) // S, phy.shape)
    f_eplb = tb.objective(tb.gpu_times(costs, phy, eplb_gpu, over), w)
    f = tb.objective(tb.gpu_times(costs, items, gpu, over), w)
    assert np.all(f <= f_eplb * (1 + 1e-12))
    assert np.any(f < f_eplb * (1 - 1e-6))  # the search improves EPLB's plan on uneven GPUs
    assert tb.duplicates(items, gpu, 8).tolist() == [0, 0, 0]


# ---- problem set-up --------------------------------------------------------------------------
def test_point_tokens_are_each_points_expected_tokens_with_normalized_weights():
    loads = ExpertLoads(np.array([[3.0, 1.0], [1.0, 1.0]]), top_k=1)
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(100.0, 8.0), weights=(3.0, 1.0)))
    assert tokens.shape == (2, 2, 2)
    assert tokens[0].tolist() == [[75.0, 25.0], [50.0, 50.0]]
    assert tokens[1].tolist() == [[6.0, 2.0], [4.0, 4.0]]
    assert w.tolist() == [0.75, 0.25]


def test_sampled_steps_per_point_are_seeded_by_point_and_weighted():
    loads = ExpertLoads(np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 1.0]]), top_k=1)
    opts = PlacementOptions(batch_tokens=(100.0, 10.0), weights=(3.0, 1.0), seed=4)
    tokens, w = tb.sampled_steps(loads, opts)
    n = max(stochastic.DEFAULT_SAMPLES, stochastic.ROBUST_SAMPLES // 2)  # 32 per point
    assert tokens.shape == (2 * n, 2, 3)
    assert w.tolist() == pytest.approx([0.75 / n] * n + [0.25 / n] * n)
    assert np.array_equal(tokens[:n], stochastic.step_tokens(loads, 100.0, n, 4))
    assert np.array_equal(tokens[n:], stochastic.step_tokens(loads, 10.0, n, 4 + 7919))
    # the number of steps is a knob; 0 is an error
    tokens, w = tb.sampled_steps(loads, PlacementOptions(batch_tokens=(100.0,), extras={"robust_samples": 5}))
    assert tokens.shape == (5, 2, 3) and w.tolist() == pytest.approx([0.2] * 5)
    with pytest.raises(VibeError, match="robust_samples must be >= 1"):
        tb.sampled_steps(loads, PlacementOptions(extras={"robust_samples": 0}))
    # one point: DEFAULT_SAMPLES is only a floor, ROBUST_SAMPLES steps in all
    tokens, w = tb.sampled_steps(loads, PlacementOptions(batch_tokens=(100.0,)))
    assert tokens.shape[0] == stochastic.ROBUST_SAMPLES


def test_sampled_steps_with_step_sizes_draw_sizes_and_weigh_steps_equally():
    loads = ExpertLoads(np.array([[3.0, 1.0, 2.0]]), top_k=1)
    opts = PlacementOptions(seed=2, extras={"step_tokens": [10.0, 30.0], "robust_samples": 4})
    tokens, w = tb.sampled_steps(loads, opts)
    assert np.array_equal(tokens, stochastic.sized_step_tokens(loads, [10.0, 30.0], 4, 2, None))
    assert w.tolist() == [0.25] * 4
    tokens, w = tb.sampled_steps(loads, PlacementOptions(extras={"step_tokens": [10.0]}))
    assert tokens.shape[0] == stochastic.ROBUST_SAMPLES  # the default with sizes, whatever the points


def test_sampled_steps_use_and_check_a_trace():
    from vibe.model.traces import RoutingTrace

    loads = ExpertLoads(np.array([[3.0, 1.0, 2.0]]), top_k=1)
    experts = np.array([[[0], [2], [0], [1], [2], [0]]])  # [L=1, T=6, k=1]
    trace = RoutingTrace(experts.astype(np.int16), [0, 6], 3)
    opts = PlacementOptions(batch_tokens=(4.0,), seed=1, extras={"traces": trace, "robust_samples": 3})
    tokens, _ = tb.sampled_steps(loads, opts)
    assert np.array_equal(tokens, stochastic.step_tokens(loads, 4.0, 3, 1, trace))
    wrong = RoutingTrace(np.array([[[0], [1]]], dtype=np.int16), [0, 2], 2)
    with pytest.raises(Exception, match="expert"):
        tb.sampled_steps(loads, PlacementOptions(extras={"traces": wrong}))


def test_layer_rows_flat_without_groups_or_with_one_node():
    loads = ExpertLoads(np.ones((2, 4)), top_k=1)
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(40.0,)))
    for opts, cl in ((PlacementOptions(), linear(1, 1)), (PlacementOptions(num_groups=2), linear(1, 1))):
        row_layer, row_gpus, row_experts = tb.layer_rows(loads, cl, opts, tokens, w)
        assert row_layer.tolist() == [0, 1]
        assert row_gpus.tolist() == [[0, 1], [0, 1]]
        assert row_experts.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_layer_rows_send_the_heaviest_group_to_the_fastest_node():
    # 2 nodes x 2 GPUs; node 1's GPUs twice as fast. 4 experts in 2 groups {0, 1}, {2, 3};
    # layer 0: group {2, 3} is heavier -> node 1, layer 1: group {0, 1} -> node 1.
    cl = linear(2.0, 2.0, 1.0, 1.0, nodes=[0, 0, 1, 1])
    loads = ExpertLoads(np.array([[1.0, 1.0, 5.0, 5.0], [6.0, 6.0, 1.0, 1.0]]), top_k=1)
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(100.0,)))
    row_layer, row_gpus, row_experts = tb.layer_rows(loads, cl, PlacementOptions(num_groups=2), tokens, w)
    assert row_layer.tolist() == [0, 0, 1, 1]
    assert row_gpus.tolist() == [[0, 1], [2, 3], [0, 1], [2, 3]]
    assert row_experts.tolist() == [[0, 1], [2, 3], [2, 3], [0, 1]]


def test_layer_rows_equal_group_counts_per_node_even_when_one_node_is_fast():
    # 4 groups on 2 nodes: 2 groups each, even though node 1 is 10x faster (it takes the
    # two heaviest groups, which come first).
    cl = linear(10.0, 1.0, nodes=[0, 1])
    loads = ExpertLoads(np.array([[8.0, 4.0, 2.0, 1.0]]), top_k=1)
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(150.0,)))
    _, row_gpus, row_experts = tb.layer_rows(loads, cl, PlacementOptions(num_groups=4), tokens, w)
    assert row_gpus.tolist() == [[0], [1]]
    assert sorted(row_experts[1].tolist()) == [0, 1] and sorted(row_experts[0].tolist()) == [2, 3]


def test_layer_rows_errors_name_the_rule():
    loads = ExpertLoads(np.ones((1, 4)), top_k=1)
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(40.0,)))
    two_nodes = linear(1, 1, 1, 1, nodes=[0, 0, 1, 1])
    for g in (0, 3, 1, 8):
        with pytest.raises(VibeError, match=rf"--num-groups {g} must divide the 4 experts and be a multiple of "
                                            r"the 2 nodes"):
            tb.layer_rows(loads, two_nodes, PlacementOptions(num_groups=g), tokens, w)
    with pytest.raises(VibeError, match="--num-groups needs nodes with equal GPU counts"):
        tb.layer_rows(loads, linear(1, 1, 1, nodes=[0, 0, 1]), PlacementOptions(num_groups=2), tokens, w)


def test_hierarchical_plan_keeps_each_group_on_its_node_through_the_policy():
    cl = linear(2.0, 2.0, 1.0, 1.0, nodes=[0, 0, 1, 1])
    loads = ExpertLoads(np.array([[1.0, 1.0, 5.0, 5.0], [6.0, 6.0, 1.0, 1.0]]), top_k=1)
    p = place(loads, cl, "vibe", PlacementOptions(num_groups=2, batch_tokens=(100.0,)))
    node_of_slot = np.asarray(cl.nodes)[p.gpu_of_slot]  # [P]
    phy = p.physical_to_logical_map
    assert set(phy[0, node_of_slot == 1].tolist()) == {2, 3}
    assert set(phy[1, node_of_slot == 1].tolist()) == {0, 1}


# ---- robust and speed split -----------------------------------------------------------------
def test_robust_solve_is_never_worse_on_the_samples_than_its_start():
    rng = np.random.default_rng(8)
    cl = linear(1.0, 1.2, 0.9)
    E, G, S = 6, 3, 3
    row_gpus = np.tile(np.arange(G), (2, 1))
    tokens = rng.gamma(1.0, 20.0, size=(6, 2, E))  # 6 sampled steps
    w = np.full(6, 1 / 6)
    over = np.zeros((2, G))
    count = tb.allocate_replicas(cl, tokens.mean(axis=0, keepdims=True), np.ones(1), G, G * S)
    items = tb.items_of(count)
    gpu = tb.solve_rows(tb.replica_costs(cl, row_gpus, tokens.mean(axis=0, keepdims=True), count), np.ones(1),
                        items, over, S)
    f0 = tb.objective(tb.gpu_times(tb.replica_costs(cl, row_gpus, tokens, count), items, gpu, over), w)
    c2, i2, g2 = tb.robust_solve(cl, row_gpus, tokens, w, over, S, [(count, items, gpu)])
    f1 = tb.objective(tb.gpu_times(tb.replica_costs(cl, row_gpus, tokens, c2), i2, g2, over), w)
    assert np.all(f1 <= f0 * (1 + 1e-12))
    assert (c2.sum(axis=1) == G * S).all()
    assert tb.duplicates(i2, g2, E).tolist() == [0, 0]


def test_speed_split_gives_the_fast_gpu_the_larger_share():
    # One expert, 2 replicas on 2 GPUs (slopes 1 and 2), 300 tokens: the even split gives
    # 150 and 300 us; the balanced split gives GPU 0 2/3 of the tokens: 200 us each.
    cl = linear(1.0, 2.0)
    p = Placement.init_by_mapping(np.array([[0, 0]]), 2, 1)
    tokens, w = np.array([[[300.0]]]), np.ones(1)
    share = tb.speed_split(p, cl, tokens, w)
    assert share[0] == pytest.approx([2 / 3, 1 / 3], abs=1e-3)
    assert tb.speed_split(p, cl, tokens, w, rounds=0).tolist() == [[0.5, 0.5]]  # round 0 is the even split
    # identical GPUs: nothing to gain, the even split is kept
    assert tb.speed_split(p, linear(1.0, 1.0), tokens, w).tolist() == [[0.5, 0.5]]


def test_vibe_speed_split_only_with_replicas():
    loads = ExpertLoads(np.array([[5.0, 1.0]]), top_k=1)
    cl = linear(1.0, 2.0)
    no_rep = place(loads, cl, "vibe", PlacementOptions(split="speed", batch_tokens=(60.0,)))
    assert no_rep.replica_weights is None
    rep = place(loads, cl, "vibe", PlacementOptions(split="speed", redundant=2, batch_tokens=(60.0,)))
    even = place(loads, cl, "vibe", PlacementOptions(redundant=2, batch_tokens=(60.0,)))
    assert rep.replica_weights is not None and even.replica_weights is None
    assert not np.allclose(rep.slot_share(), even.slot_share())


# ---- more examples, each written against a mutant that the ones above let through ---------
def test_replicas_count_the_network_time_of_their_tokens():
    # 3 identical GPUs on one node (floor curve: 5 us up to 5 tokens), tokens 14 and 8, 4
    # slots. Without a network block: extra 1 splits the 14 (8 against 14); extra 2 ties at
    # 8 between splitting the 14 again (adds 3 x 5 - 2 x 7 = 1 us of work) and the 8 (adds
    # 2 x 5 - 8 = 2): the 14 -> (3, 1). With 4 GB/s links a token costs r = 1e6 x 4096 x 3
    # x (2/3) / 4e9 = 2.048 us more, linear in tokens: extra 2 then scores 8 + 8r = 24.4
    # for the 14 against max(7 + 7r, 5 + 4r, (24 + 22r) / 3) = 23.0 for the 8 -> (2, 2).
    tokens = np.array([[[14.0, 8.0]]])
    assert tb.allocate_replicas(floor5(3), tokens, np.ones(1), 3, 4).tolist() == [[3, 1]]
    net = floor5(3).with_network({"hidden": 4096.0, "intra_node_GBps": 4.0})
    assert tb.comm_model(net).us_per_token == pytest.approx([2.048] * 3)
    assert tb.allocate_replicas(net, tokens, np.ones(1), 3, 4).tolist() == [[2, 2]]


def test_construct_avoids_a_double_even_when_the_double_would_be_faster():
    # GPU 1 is 10x slower for expert 0's replicas (10 vs 100 us), experts 1 and 2 cost 1.
    # Replica 1 -> GPU 0; replica 2 may not join it (GPU 0 holds expert 0) although 20 us
    # there beats 100 on GPU 1.
    costs = np.array([[[[10.0, 100.0], [1.0, 1.0], [1.0, 1.0]]]])
    items = np.array([[0, 0, 1, 2]])
    gpu = tb.construct(costs, np.ones(1), items, np.zeros((1, 2)), 2)
    assert gpu.tolist() == [[0, 1, 0, 1]]


def test_construct_treats_rows_independently_when_one_row_is_forced():
    # Row 0 forces a double (expert 0 in 3 replicas on 2 GPUs); row 1 does not. Each row
    # gets what it gets alone.
    costs = np.ones((1, 2, 3, 2)) * np.array([10.0, 4.0, 3.0])[None, None, :, None]
    items = np.array([[0, 0, 0, 1], [0, 1, 2, 2]])
    both = tb.construct(costs, np.ones(1), items, np.zeros((2, 2)), 2)
    for x in range(2):
        alone = tb.construct(costs[:, x:x + 1], np.ones(1), items[x:x + 1], np.zeros((1, 2)), 2)
        assert both[x].tolist() == alone[0].tolist()
        assert np.bincount(both[x], minlength=2).tolist() == [2, 2]


def _construct_by_the_rule(costs, w, items, over, S):
    """construct's documented rule as plain loops: largest weighted mean cost first, to
    the GPU with room and without the expert (any with room if none) where the weighted
    makespan grows least (within 1e-12), then the earliest weighted finish, then the
    lowest index."""
    K, X, E, G = costs.shape
    out = np.empty(items.shape, dtype=np.int64)
    for x in range(X):
        T = np.tile(over[x].astype(float), (K, 1)).T  # [G, K]
        filled, held = [0] * G, [set() for _ in range(G)]
        mean = [float(w @ costs[:, x, e].mean(axis=1)) for e in items[x]]
        for j in sorted(range(items.shape[1]), key=lambda j: -mean[j]):  # stable, like the solver
            e = items[x, j]
            room = [g for g in range(G) if filled[g] < S]
            free = [g for g in room if e not in held[g]] or room
            grow = {g: float(w @ np.maximum(T.max(axis=0), T[g] + costs[:, x, e, g])) for g in free}
            least = min(grow.values())
            g = min((g for g in free if grow[g] <= least * (1 + 1e-12)),
                    key=lambda g: (float(w @ (T[g] + costs[:, x, e, g])), g))
            out[x, j] = g
            T[g] += costs[:, x, e, g]
            filled[g] += 1
            held[g].add(e)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_construct_follows_its_rule_on_random_rows(seed):
    rng = np.random.default_rng(seed)
    K, X, G, S = int(rng.integers(1, 3)), 2, int(rng.integers(2, 5)), int(rng.integers(1, 4))
    E = G * S - int(rng.integers(0, G))
    count = np.ones((X, E), dtype=np.int64)
    for x in range(X):
        for _ in range(G * S - E):
            count[x, rng.integers(E)] += 1
    items = tb.items_of(count)
    costs = rng.gamma(1.5, 10.0, size=(K, X, E, 1)) * rng.uniform(0.6, 1.6, size=(K, 1, 1, G))
    w = rng.dirichlet(np.ones(K))
    over = rng.uniform(0, 5, size=(X, G))
    assert tb.construct(costs, w, items, over, S).tolist() == _construct_by_the_rule(costs, w, items, over, S).tolist()


def test_repair_duplicates_weighs_the_unloaded_gpu_too():
    # GPU 1 is fast (1 us for anything). Expert 0 (10 us on GPU 0) sits twice on GPU 0
    # with GPU 1 holding experts 1 (3 us on GPU 0) and 2 (6 us): T = (20, 2). Swapping in
    # expert 1 leaves GPU 0 at 20 - 10 + 3 = 13, expert 2 at 16; GPU 1 stays at 2.
    costs = np.array([[[[10.0, 1.0], [3.0, 1.0], [6.0, 1.0]]]])
    items, gpu = np.array([[0, 0, 1, 2]]), np.array([[0, 0, 1, 1]])
    assert tb.repair_duplicates(costs, np.ones(1), items, gpu, np.zeros((1, 2))).tolist() == [[1, 0, 0, 1]]


def test_repair_duplicates_goes_on_after_a_stuck_double_and_in_every_row():
    # Row 0: expert 0 sits 3 times on GPUs 0 and 1 (2 slots each, 3 GPUs): the GPU 0
    # double is fixable by swapping with GPU 2, then no double is left. Row 1 holds the
    # same problem: both rows must come out clean, each as it would alone.
    costs = np.ones((1, 2, 3, 3))
    items = np.array([[0, 0, 0, 1, 2, 2], [0, 0, 0, 1, 2, 2]])
    gpu = np.array([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]])
    fixed = tb.repair_duplicates(costs, np.ones(1), items, gpu, np.zeros((2, 3)))
    assert tb.duplicates(items, fixed, 3).tolist() == [0, 0]
    alone = tb.repair_duplicates(costs[:, 1:], np.ones(1), items[1:], gpu[1:], np.zeros((1, 3)))
    assert fixed[1].tolist() == alone[0].tolist()


def test_repair_duplicates_skips_a_stuck_double_and_fixes_the_next():
    # 2 GPUs, 3 slots: GPU 0 holds experts 0, 0, 2 and GPU 1 holds 0, 1, 1. Expert 0's
    # double on GPU 0 is stuck (GPU 1 holds expert 0 too, so no swap can take it there);
    # the repair must go on to expert 1's double and swap a 1 with the 2 on GPU 0.
    costs = np.ones((1, 1, 3, 2))
    items = np.array([[0, 0, 0, 1, 1, 2]])
    gpu = np.array([[0, 0, 1, 1, 1, 0]])
    fixed = tb.repair_duplicates(costs, np.ones(1), items, gpu, np.zeros((1, 2)))
    assert tb.duplicates(items, fixed, 3).tolist() == [1]  # only the forced double of expert 0 is left


def test_duplicates_keys_do_not_collide_between_gpus():
    # expert 1 on GPU 0 and expert 0 on GPU 2 (2 experts): different (GPU, expert) pairs
    assert tb.duplicates(np.array([[1, 0]]), np.array([[0, 2]]), 2).tolist() == [0]


def test_top3_of_many_rows_on_two_gpus_pads_each_row():
    v, i = tb._top3(np.array([[[3.0, 1.0], [0.0, 2.0], [5.0, 4.0]]]))  # [K=1, A=3, G=2]
    assert v[0].tolist() == [[3.0, 1.0, -np.inf], [2.0, 0.0, -np.inf], [5.0, 4.0, -np.inf]]
    assert i[0].tolist() == [[0, 1, -1], [1, 0, -1], [0, 1, -1]]


def test_local_search_on_many_rows_of_two_gpus_matches_each_row_alone():
    rng = np.random.default_rng(4)
    costs = rng.gamma(1.5, 10.0, size=(1, 4, 6, 1)) * np.ones((1, 1, 1, 2))
    items = np.tile(np.arange(6), (4, 1))
    over = np.zeros((4, 2))
    start = tb.construct(costs, np.ones(1), items, over, 3)
    together = tb.local_search(costs, np.ones(1), items, start, over)
    for x in range(4):
        alone = tb.local_search(costs[:, x:x + 1], np.ones(1), items[x:x + 1], start[x:x + 1], over[x:x + 1])
        assert together[x].tolist() == alone[0].tolist()


def test_best_of_starts_keeps_the_first_of_zero_cost_plans():
    cl = linear(1.0, 1.0)
    count = np.array([[1, 1]])
    items = tb.items_of(count)
    zero = np.zeros((1, 1, 2))
    _, _, gpu = tb.best_of_starts(cl, np.array([[0, 1]]), zero, np.ones(1), np.zeros((1, 2)),
                                  [(count, items, np.array([[0, 1]])), (count, items, np.array([[1, 0]]))])
    assert gpu.tolist() == [[0, 1]]


def test_perturb_can_move_every_item():
    items = np.arange(8)[None]
    gpu = np.repeat(np.arange(4), 2)[None]
    moved = np.zeros(8, dtype=bool)
    for s in range(30):
        moved |= tb.perturb(items, gpu, 1, np.random.default_rng(s))[0] != gpu[0]
    assert moved.all()


def test_solve_rows_default_runs_one_search_and_no_restart(monkeypatch):
    calls = []
    real = tb.local_search
    monkeypatch.setattr(tb, "local_search", lambda *a, **k: calls.append(1) or real(*a, **k))
    costs, w, items, over = row(np.array([8.0, 7.0, 6.0, 5.0, 4.0, 0.0])[:, None].repeat(2, axis=1), 3)
    tb.solve_rows(costs, w, items, over, 3)
    assert len(calls) == 1
    tb.solve_rows(costs, w, items, over, 3, restarts=2)
    assert len(calls) == 1 + 3


def test_solve_placement_passes_the_options_restarts_and_seed_on(monkeypatch):
    seen = []
    real = tb.solve_rows
    monkeypatch.setattr(tb, "solve_rows", lambda *a, **k: seen.append(a[5:]) or real(*a, **k))
    loads = ExpertLoads(np.array([[5.0, 3.0, 2.0, 1.0]]), top_k=1)
    opts = PlacementOptions(batch_tokens=(40.0,), seed=9, extras={"restarts": 2})
    p = place(loads, linear(1.0, 1.5), "vibe", opts)
    assert seen == [(2, 9)]
    assert p.policy == "vibe" and p.num_logical_experts == 4
    seen.clear()
    place(loads, linear(1.0, 1.5), "vibe", PlacementOptions(batch_tokens=(40.0,), seed=9, robust=True,
                                                             extras={"restarts": 2, "robust_samples": 4}))
    assert seen == [(2, 9), (2, 9)]  # the average-load plan, then the plan built on the samples


def test_robust_solve_is_at_least_as_good_as_the_plan_built_on_the_samples():
    rng = np.random.default_rng(8)
    cl = linear(1.0, 1.2, 0.9)
    E, G, S = 6, 3, 3
    row_gpus = np.tile(np.arange(G), (2, 1))
    tokens = rng.gamma(1.0, 20.0, size=(6, 2, E))
    w = np.full(6, 1 / 6)
    over = np.zeros((2, G))
    # a poor start: the average-load replica counts, items dealt round-robin to the GPUs
    count = tb.allocate_replicas(cl, tokens.mean(axis=0, keepdims=True), np.ones(1), G, G * S)
    items = tb.items_of(count)
    start = np.tile(np.arange(G * S) % G, (2, 1))
    c2, i2, g2 = tb.robust_solve(cl, row_gpus, tokens, w, over, S, [(count, items, start)])
    f = tb.objective(tb.gpu_times(tb.replica_costs(cl, row_gpus, tokens, c2), i2, g2, over), w)
    own = tb.allocate_replicas(cl, tokens, w, G, G * S, prefer_variance=True)
    own_items = tb.items_of(own)
    own_costs = tb.replica_costs(cl, row_gpus, tokens, own)
    own_gpu = tb.solve_rows(own_costs, w, own_items, over, S)
    assert np.all(f <= tb.objective(tb.gpu_times(own_costs, own_items, own_gpu, over), w) * (1 + 1e-12))


def test_speed_split_one_round_is_the_square_root_step():
    # Even split: GPU times 150 and 300 (mean 225). One round scales the shares by
    # sqrt(225/150) and sqrt(225/300) and renormalizes: GPU 0 gets 2 - sqrt(2) = 0.586,
    # which gives 175.7 and 248.5 us, better than 300: kept.
    cl = linear(1.0, 2.0)
    p = Placement.init_by_mapping(np.array([[0, 0]]), 2, 1)
    share = tb.speed_split(p, cl, np.array([[[300.0]]]), np.ones(1), rounds=1)
    assert share[0] == pytest.approx([2 - np.sqrt(2), np.sqrt(2) - 1])


def test_sampled_steps_read_the_trace_file_and_name_it_in_errors(tmp_path):
    from vibe.errors import InputError
    from vibe.model.traces import RoutingTrace

    loads = ExpertLoads(np.array([[3.0, 1.0, 2.0]]), top_k=1)
    trace = RoutingTrace(np.array([[[0], [2], [0], [1], [2], [0]]], dtype=np.int16), [0, 6], 3)
    path = tmp_path / "steps.npz"
    trace.save(path)
    opts = PlacementOptions(batch_tokens=(4.0,), seed=1, extras={"traces_path": str(path), "robust_samples": 3})
    tokens, _ = tb.sampled_steps(loads, opts)
    assert np.array_equal(tokens, stochastic.step_tokens(loads, 4.0, 3, 1, trace))
    # a trace given as an object wins over a path
    other = RoutingTrace(np.array([[[1], [1], [1], [1]]], dtype=np.int16), [0, 4], 3)
    opts = PlacementOptions(batch_tokens=(4.0,), seed=1, extras={"traces": other, "traces_path": str(path),
                                                                 "robust_samples": 3})
    assert tb.sampled_steps(loads, opts)[0][:, 0].tolist() == [[0.0, 4.0, 0.0]] * 3
    wrong = tmp_path / "wrong.npz"
    RoutingTrace(np.array([[[0], [1]]], dtype=np.int16), [0, 2], 2).save(wrong)
    with pytest.raises(InputError) as err:
        tb.sampled_steps(loads, PlacementOptions(extras={"traces_path": str(wrong)}))
    assert str(err.value).startswith(str(wrong))
    with pytest.raises(InputError) as err:
        tb.sampled_steps(loads, PlacementOptions(extras={"traces": RoutingTrace(np.array([[[0], [1]]], dtype=np.int16),
                                                                                   [0, 2], 2)}))
    assert str(err.value).startswith("traces")


def test_sampled_steps_one_step_is_enough_and_the_error_is_exact():
    loads = ExpertLoads(np.array([[3.0, 1.0, 2.0]]), top_k=1)
    tokens, w = tb.sampled_steps(loads, PlacementOptions(batch_tokens=(10.0,), extras={"robust_samples": 1}))
    assert tokens.shape == (1, 1, 3) and w.tolist() == [1.0]
    with pytest.raises(VibeError, match=r"^robust_samples must be >= 1$"):
        tb.sampled_steps(loads, PlacementOptions(extras={"robust_samples": -2}))


def test_layer_rows_one_group_on_one_node_is_flat_and_messages_are_exact():
    loads = ExpertLoads(np.ones((1, 4)), top_k=1)
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(40.0,)))
    row_layer, row_gpus, _ = tb.layer_rows(loads, linear(1, 1), PlacementOptions(num_groups=1), tokens, w)
    assert row_gpus.tolist() == [[0, 1]]
    with pytest.raises(VibeError, match=r"^--num-groups needs nodes with equal GPU counts$"):
        tb.layer_rows(loads, linear(1, 1, 1, nodes=[0, 0, 1]), PlacementOptions(num_groups=2), tokens, w)


def test_layer_rows_add_up_each_nodes_groups():
    # 2 equal nodes of 1 GPU, 6 groups of 1 expert with work 6..1, 3 groups per node.
    # Heaviest first to the earliest finish: 6 -> n0 (6), 5 -> n1 (5), 4 -> n1 (9 < 10),
    # 3 -> n0 (9 < 12), 2 -> n0 (11 = 11: lower index), 1 -> n1 (n0 full).
    cl = linear(1.0, 1.0, nodes=[0, 1])
    loads = ExpertLoads(np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]), top_k=1)
    tokens, w = tb.point_tokens(loads, PlacementOptions(batch_tokens=(210.0,)))
    _, _, row_experts = tb.layer_rows(loads, cl, PlacementOptions(num_groups=6), tokens, w)
    assert sorted(row_experts[0].tolist()) == [0, 3, 4]
    assert sorted(row_experts[1].tolist()) == [1, 2, 5]
