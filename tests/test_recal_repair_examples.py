"""More worked examples for the incremental re-placement (vibe.recal.repair): which slot a
lost GPU's expert is re-homed to, and the tie rules of the steps, derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions
from vibe.recal.repair import repair_placement


def plan_of(rows, G) -> Placement:
    rows = np.array(rows)
    return Placement.init_by_mapping(rows, G, int(rows.max()) + 1, tuple(range(1, len(rows) + 1)), "hand")



def test_rehoming_takes_the_cheapest_live_slot():
    """3 GPUs x 2 slots, 1 us per token, tokens (6, 1, 5, 1); plan [0 1 | 0 2 | 3 1], GPU 2
    lost: expert 3 needs a slot, and only expert 0 has two live replicas (slots 0 and 2).
    Live times before: GPU 0 3 + 1 = 4, GPU 1 3 + 5 = 8. Expert 3 into slot 0: GPU 0 1 + 1
    = 2, GPU 1 6 + 5 = 11 -> 11; into slot 2: GPU 0 6 + 1 = 7, GPU 1 1 + 5 = 6 -> 7."""
    cluster = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (3, 1)), 0.0)
    loads = ExpertLoads(np.array([[6.0, 1.0, 5.0, 1.0]]), top_k=1, layer_ids=(1,))
    plan = plan_of([[0, 1, 0, 2, 3, 1]], 3)
    rep = repair_placement(plan, loads, cluster, PlacementOptions(batch_tokens=(13.0,), weights=(1.0,)),
                           max_moves=1, down_gpus=[2])
    assert [(m.layer, m.slot, m.old_expert, m.new_expert) for m in rep.moves] == [(1, 2, 0, 3)]
    assert rep.after_us == pytest.approx(7.0)
    assert rep.step_us == pytest.approx((7.0,))


def test_rehoming_ties_in_makespan_go_to_the_more_balanced_plan():
    """3 GPUs x 2 slots, 1 us per token, tokens (6, 4, 7, 7); plan [2 1 | 2 1 | 3 0], GPU 2
    lost: experts 0 and 3 need slots. Live GPUs 3.5 + 2 = 5.5 each (level 5.5). Either
    expert into slot 0 (one of expert 2's replicas): expert 0: GPU 0 6 + 2 = 8, GPU 1 7 + 2
    = 9; expert 3: 7 + 2 = 9 and 9: both 9. The tie goes to the lower excess over the
    level: (8 - 5.5)^2 + (9 - 5.5)^2 = 18.5 against 2 x 3.5^2 = 24.5: expert 0 first (slot
    0 and slot 2 mirror each other: the first). Then expert 3 can only take one of expert
    1's slots: slot 1: GPU 0 6 + 7 = 13, GPU 1 7 + 4 = 11 -> 13; slot 3: 6 + 4 = 10, 7 + 7 =
    14 -> 14: slot 1."""
    cluster = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (3, 1)), 0.0)
    loads = ExpertLoads(np.array([[6.0, 4.0, 7.0, 7.0]]), top_k=1, layer_ids=(1,))
    plan = plan_of([[2, 1, 2, 1, 3, 0]], 3)
    rep = repair_placement(plan, loads, cluster, PlacementOptions(batch_tokens=(24.0,), weights=(1.0,)),
                           max_moves=2, down_gpus=[2])
    assert [(m.slot, m.old_expert, m.new_expert) for m in rep.moves] == [(0, 2, 0), (1, 1, 3)]
    assert rep.step_us == (np.inf, pytest.approx(13.0)) and rep.after_us == pytest.approx(13.0)


def two_gpu_case():
    """GPU 0 1 us per token, GPU 1 2 us; tokens (6, 5, 2, 1); plan [2 3 | 0 1]: 3 and 22.
    The best swap 0<->3 gives 8 and 12; from there 2<->1 gives 11 and 6, the optimum
    (test_recal_examples derives every swap). The global greedy balances to the level
    (3 + 22) / 2 = 12.5 and stops at 12; the budget split over layers follows the
    makespan and reaches 11 in 4 moves."""
    cluster = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0], [2.0, 200.0]], [0.0, 0.0])
    loads = ExpertLoads(np.array([[6.0, 5.0, 2.0, 1.0]]), top_k=1, layer_ids=(1,))
    return cluster, loads, plan_of([[2, 3, 0, 1]], 2), PlacementOptions(batch_tokens=(14.0,), weights=(1.0,))


def test_the_budget_split_runs_up_to_short_lookahead_slots_and_not_beyond(monkeypatch):
    """The plan has 1 layer x 4 slots. With SHORT_LOOKAHEAD_SLOTS = 4 it is not above the
    limit: both candidates run and the budget split's 11 wins; with 3 only the global
    greedy runs: 12."""
    from vibe.recal import repair as rp

    cluster, loads, plan, opts = two_gpu_case()
    monkeypatch.setattr(rp, "SHORT_LOOKAHEAD_SLOTS", 4)
    assert repair_placement(plan, loads, cluster, opts, max_moves=4).after_us == pytest.approx(11.0)
    monkeypatch.setattr(rp, "SHORT_LOOKAHEAD_SLOTS", 3)
    short = repair_placement(plan, loads, cluster, opts, max_moves=4)
    assert short.after_us == pytest.approx(12.0) and len(short.moves) == 2


def test_a_single_move_re_points_a_replica_where_no_swap_helps():
    """2 GPUs x 2 slots, 1 us per token, tokens (2, 8, 2); plan [0 1 | 0 2], expert 0 on
    both GPUs: GPU 0 1 + 8 = 9, GPU 1 1 + 2 = 3 -> 9. Swaps: 1<->2: 3 and 9 -> 9; the
    others would put expert 0 twice on one GPU. Moving expert 0's slot on GPU 1 to expert
    1: GPU 0 2 + 4 = 6, GPU 1 4 + 2 = 6 -> 6 in one move (the optimum: 12 tokens over 2)."""
    cluster = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (2, 1)), 0.0)
    loads = ExpertLoads(np.array([[2.0, 8.0, 2.0]]), top_k=1, layer_ids=(1,))
    plan = plan_of([[0, 1, 0, 2]], 2)
    opts = PlacementOptions(batch_tokens=(12.0,), weights=(1.0,))
    for budget in (1, 5, None):
        rep = repair_placement(plan, loads, cluster, opts, max_moves=budget)
        assert [(m.slot, m.old_expert, m.new_expert) for m in rep.moves] == [(2, 0, 1)]
        assert rep.before_us == pytest.approx(9.0) and rep.after_us == pytest.approx(6.0)


def test_the_objective_is_place_s_points_or_with_robust_its_resampled_steps():
    """Tokens (2, 8, 2) of top-1 routing at B = 12 are the counts; with two points the
    second, B = 6, halves them; weights as given. With robust, the re-sampled steps of
    `vibe place --robust` (same seed, same steps) and their equal weights."""
    from vibe.policies._timebalance import sampled_steps
    from vibe.recal.repair import objective_tokens

    loads = ExpertLoads(np.array([[2.0, 8.0, 2.0]]), top_k=1, layer_ids=(1,))
    tokens, w = objective_tokens(loads, PlacementOptions(batch_tokens=(12.0, 6.0), weights=(0.75, 0.25)))
    assert tokens.tolist() == [[[2.0, 8.0, 2.0]], [[1.0, 4.0, 1.0]]] and w.tolist() == [0.75, 0.25]
    robust = PlacementOptions(batch_tokens=(12.0,), weights=(1.0,), robust=True, seed=3)
    tokens, w = objective_tokens(loads, robust)
    want_t, want_w = sampled_steps(loads, robust)
    assert tokens.shape[0] > 1 and np.array_equal(tokens, want_t) and np.array_equal(w, want_w)
    assert w.sum() == pytest.approx(1.0)


def test_the_budget_split_over_two_layers():
    """Layer 1 is two_gpu_case's (22: its best swap 0<->3 gains 10 in 2 moves, a second swap
    1 more, 11 in 4). Layer 2, tokens (7, 3, 3, 1) on the same plan [2 3 | 0 1]: GPU 0 3 +
    1 = 4, GPU 1 2 x (7 + 3) = 20. Swaps: 0<->2: 8, 12; 0<->3: 10, 8; 1<->2: 4, 20; 1<->3:
    6, 16: 0<->3 gains 10 and reaches its optimum (every GPU-0 pair: {0, 1} or {0, 2} 10,
    the rest 12 or more). Before: 22 + 20 = 42.
    2 moves: one swap, 10 either way; the first layer keeps it: 32. 4 moves: both first
    swaps, 20: 22 (better than layer 1's 4 moves, 11). 6 moves: layer 1's 4 and layer 2's
    2 gain 21: 21, listed by gain per move (layer 2's 5 per move first, then layer 1's
    11 / 4). Unbounded, the greedy alone stops at each layer's level (12.5, 12): 22."""
    cluster = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0], [2.0, 200.0]], [0.0, 0.0])
    loads = ExpertLoads(np.array([[6.0, 5.0, 2.0, 1.0], [7.0, 3.0, 3.0, 1.0]]), top_k=1, layer_ids=(1, 2))
    plan = plan_of([[2, 3, 0, 1], [2, 3, 0, 1]], 2)
    opts = PlacementOptions(batch_tokens=(14.0,), weights=(1.0,))

    def run(budget):
        rep = repair_placement(plan, loads, cluster, opts, max_moves=budget)
        assert rep.before_us == pytest.approx(42.0)
        return rep.after_us, [m.layer for m in rep.moves], rep.step_us

    assert run(2) == (pytest.approx(32.0), [1, 1], pytest.approx((32.0, 32.0)))
    assert run(4) == (pytest.approx(22.0), [1, 1, 2, 2], pytest.approx((32.0, 32.0, 22.0, 22.0)))
    six = (pytest.approx(21.0), [2, 2, 1, 1, 1, 1], pytest.approx((32.0, 32.0, 22.0, 22.0, 21.0, 21.0)))
    assert run(6) == six and run(8) == six
    assert run(None)[0] == pytest.approx(22.0)


def test_a_single_move_off_a_gpu_that_holds_two_replicas_of_its_expert():
    """2 GPUs x 2 slots, 1 us per token, tokens (4, 8, 2); plan [0 0 | 1 2]: expert 0 twice on
    GPU 0 (2 tokens each): GPU 0 4, GPU 1 10. Moving one of them to expert 1: GPU 0 keeps
    expert 0 whole (4) and takes half of expert 1 (4): 8; GPU 1 4 + 2 = 6 -> 8, in one
    move. To expert 2: 4 + 1 = 5 and 8 + 1 = 9 -> 9; the swaps of expert 0 with 1 or 2
    give 10."""
    cluster = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (2, 1)), 0.0)
    loads = ExpertLoads(np.array([[4.0, 8.0, 2.0]]), top_k=1, layer_ids=(1,))
    rep = repair_placement(plan_of([[0, 0, 1, 2]], 2), loads, cluster,
                           PlacementOptions(batch_tokens=(14.0,), weights=(1.0,)), max_moves=1)
    assert [(m.slot, m.old_expert, m.new_expert) for m in rep.moves] == [(0, 0, 1)]
    assert rep.before_us == pytest.approx(10.0) and rep.after_us == pytest.approx(8.0)


# ---- one step of the makespan greedy, on the state itself ----------------------------------
def _state(cluster, plan, tokens):
    from vibe.recal.repair import _State

    return _State(plan, cluster, np.array([tokens], dtype=np.float64), np.array([1.0]), ())


def test_the_makespan_step_is_the_swap_that_lowers_the_makespan_most():
    """two_gpu_case: plan [2 3 | 0 1] at 3 and 22 us. Swaps: 2<->0 7 / 14, 2<->1 6 / 16,
    3<->0 8 / 12, 3<->1 7 / 14: 3<->0 (slots 1 and 2) lowers the makespan most."""
    cluster, loads, plan, _ = two_gpu_case()
    st = _state(cluster, plan, loads.counts)
    st.next_step = lambda *a: pytest.fail("fell back to the potential step")
    step = st.next_makespan_step(0, st.level(0), 1e-9)
    assert sorted(step) == [(1, 0), (2, 3)]


def test_the_makespan_step_takes_a_single_move_itself():
    """The single-move case above: [0 1 | 0 2], tokens (2, 8, 2), 9 and 3 us; no swap lowers
    the makespan, re-pointing slot 2 (expert 0's replica on GPU 1) to expert 1 gives 6."""
    cluster = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (2, 1)), 0.0)
    st = _state(cluster, plan_of([[0, 1, 0, 2]], 2), [[2.0, 8.0, 2.0]])
    st.next_step = lambda *a: pytest.fail("fell back to the potential step")
    assert st.next_makespan_step(0, st.level(0), 1e-9) == [(2, 1)]


def test_on_a_plateau_the_makespan_step_falls_back_to_the_potential():
    """3 GPUs x 2 slots, 1 us per token, tokens (5, 5, 5, 5, 1, 1); plan [0 1 | 2 3 | 4 5]:
    10, 10 and 2 us. Any swap leaves one GPU at 10: no step lowers the makespan, but a
    5 <-> 1 swap between GPU 2 and GPU 0 or 1 lowers the excess over the level (22 / 3)."""
    cluster = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (3, 1)), 0.0)
    st = _state(cluster, plan_of([[0, 1, 2, 3, 4, 5]], 3), [[5.0, 5.0, 5.0, 5.0, 1.0, 1.0]])
    step = st.next_makespan_step(0, st.level(0), 1e-9)
    assert step is not None and len(step) == 2
    slots = sorted(s for s, _ in step)
    assert slots[0] in range(4) and slots[1] in (4, 5)


# ---- closed chains against every chain ----------------------------------------------------
def _every_chain(rates, tokens, top, length):
    """Best change of the makespan over every closed chain of `length` slots (one slot
    per GPU, so slots are GPUs) starting on a GPU in `top`: i's expert goes to j, j's to
    k, ..., the last one's to i."""
    import itertools

    G = len(rates)
    expert = np.arange(G)
    before = (rates * tokens[expert]).max()
    best = np.inf
    for chain in itertools.permutations(range(G), length):
        if chain[0] not in top:
            continue
        after = expert.copy()
        for h in range(length):  # chain[h]'s expert moves to chain[h + 1]
            after[chain[(h + 1) % length]] = expert[chain[h]]
        best = min(best, (rates * tokens[after]).max() - before)
    return best


@pytest.mark.parametrize("G", [6, 13])  # 4-chains from a G**4 table, and beyond CHAIN_TABLE_GPUS
def test_closed_chains_are_the_best_of_every_chain(G):
    """One expert per GPU, linear curves of random speeds (1 to 2 us per token), random
    tokens: the best 3-chain and 4-chain of cycles() are the best of every chain from
    the two heaviest GPUs (on 13 GPUs all 338 open 3-chains fit CHAIN_KEEP, so the
    search there is exhaustive too)."""
    rng = np.random.default_rng(G)
    rates = rng.uniform(1.0, 2.0, size=G)
    tokens = rng.integers(2, 40, size=G).astype(np.float64)
    cluster = Cluster.init_by_curves([1.0, 1000.0], np.outer(rates, [1.0, 1000.0]), 0.0)
    st = _state(cluster, plan_of([list(range(G))], G), [tokens])
    T = rates * tokens
    top = set(np.argsort(-T, kind="stable")[:2].tolist())
    found = {len(step): (df, step) for df, step in st.cycles(0, st.level(0))}
    best3, best4 = _every_chain(rates, tokens, top, 3), _every_chain(rates, tokens, top, 4)
    assert best4 < 0  # a chain that pays exists, so both paths must find it
    assert found[3][0] == pytest.approx(best3, abs=1e-9) and found[4][0] == pytest.approx(best4, abs=1e-9)
    for df, step in found.values():  # the step is the chain it scored
        before = st.layer_value(0)
        row = st.phy[0].copy()
        st.apply(0, step)
        assert st.layer_value(0) - before == pytest.approx(df, abs=1e-9)
        st.phy[0] = row
        st.refresh(0)


def test_too_few_live_slots_name_the_redundancy_that_would_survive():
    """5 experts on 4 GPUs x 2 slots (3 replicas); 2 GPUs lost leave 4 slots. A plan that
    survives needs (5 + r) % 4 == 0 and 2 x (5 + r) / 4 >= 5: r = 3 gives 4 slots, r = 7
    gives 6. With 6 experts (2 replicas): r = 2 gives 4 slots, r = 6 exactly 6."""
    from vibe.errors import VibeError
    from vibe.recal.repair import _check_room

    with pytest.raises(VibeError) as err:
        _check_room(plan_of([[0, 1, 2, 3, 4, 0, 1, 2]], 4), 2)
    assert str(err.value) == ("5 experts need 5 live slots; 2 live GPUs x 2 slots hold only 4 "
                              "(a plan that survives this loss needs --redundant 7 or more)")
    with pytest.raises(VibeError, match=r"needs --redundant 6 or more\)$"):
        _check_room(plan_of([[0, 1, 2, 3, 4, 5, 0, 1]], 4), 2)
    _check_room(plan_of([[0, 1, 2, 3, 4, 5, 0, 1]], 4), 3)  # 6 live slots: room enough
