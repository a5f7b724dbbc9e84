"""Worked examples for the incremental re-placement (vibe.recal.repair): sizes, stalls and
the worth-it rule at its boundary, fair move counts and slot alignment on tiny plans,
lost-GPU bookkeeping, move validation and grouping, the rest-max tables against brute
force, and a 2-GPU repair whose best moves are derived by hand."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from vibe.errors import InputError, VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions
from vibe.recal.repair import (DTYPE_BYTES, Move, Repair, _check_room, _rest_max, _rest_max_outside,
                               _rest_max_table, align_slots, apply_moves, count_moves, expert_bytes,
                               live_weights, min_gain_per_move, move_steps, repair_placement, resolve_down,
                               stall_us, worth_it)


def plan_of(rows, G, E=None, ids=None, **kw) -> Placement:
    rows = np.array(rows)
    E = int(rows.max()) + 1 if E is None else E
    return Placement.init_by_mapping(rows, G, E, tuple(ids or range(1, len(rows) + 1)), "hand", **kw)


# ---- sizes, stalls, worth it ---------------------------------------------------------------
def cluster_with(expert, name="c") -> Cluster:
    return Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0], [2.0, 200.0]], [0.0, 0.0], name=name,
                                  expert=expert)


def test_expert_bytes_is_three_matrices_at_the_dtypes_width():
    assert expert_bytes(cluster_with({"hidden": 7168, "intermediate": 2048, "dtype": "fp8"})) == 44040192
    assert expert_bytes(cluster_with({"hidden": 4, "intermediate": 8})) == 3 * 4 * 8 * 2  # bf16 by default
    assert expert_bytes(cluster_with({"hidden": 4, "intermediate": 8, "dtype": "BF16"})) == 192
    assert expert_bytes(cluster_with({"hidden": 4, "intermediate": 8, "dtype": "nvfp4"})) == 48
    assert expert_bytes(cluster_with({"hidden": "4", "intermediate": 8.0, "dtype": "fp32"})) == 384
    for unknown in ({}, {"hidden": 4}, {"intermediate": 8}, {"hidden": "x", "intermediate": 8},
                    {"hidden": None, "intermediate": 8}):
        assert expert_bytes(cluster_with(unknown)) == 0
    with pytest.raises(VibeError) as exc:
        expert_bytes(cluster_with({"hidden": 4, "intermediate": 8, "dtype": "fp12"}, name="lab"))
    assert str(exc.value) == f"cluster 'lab': unknown expert dtype 'fp12'; known: {', '.join(sorted(DTYPE_BYTES))}"


def test_stall_and_the_smallest_gain_that_pays_a_move():
    """44,040,192 bytes over 50 GB/s: 44040192 / 50e9 s = 880.80384 us; over 10,000 steps a
    move pays from 0.088080384 us per step."""
    assert stall_us(44040192, 50.0) == pytest.approx(880.80384, rel=1e-12)
    assert stall_us(1e9) == pytest.approx(20000.0, rel=1e-12)  # default link 50 GB/s
    fp8 = cluster_with({"hidden": 7168, "intermediate": 2048, "dtype": "fp8"})
    assert min_gain_per_move(fp8) == pytest.approx(0.088080384, rel=1e-12)  # defaults 10,000 steps, 50 GB/s
    assert min_gain_per_move(fp8, 100, 25.0) == pytest.approx(17.6160768, rel=1e-12)
    for bad in (0.0, -1.0):
        with pytest.raises(VibeError) as exc:
            stall_us(1.0, bad)
        assert str(exc.value) == "link bandwidth must be > 0"
        with pytest.raises(VibeError) as exc:
            min_gain_per_move(fp8, bad)
        assert str(exc.value) == "horizon must be > 0 steps"
    assert min_gain_per_move(fp8, 1e-9) > 0
    assert stall_us(1e9, 0.5) == pytest.approx(2e6, rel=1e-12)  # a slow link below 1 GB/s is a link


def a_repair(before, after, n_moves, size) -> Repair:
    plan = plan_of([[0, 1]], 2)
    moves = tuple(Move(1, 0, 0, 1, size) for _ in range(n_moves))
    return Repair(plan, moves, before, after)


def test_worth_it_needs_the_gain_over_the_horizon_strictly_above_the_stall():
    """Two moves of 25e9 bytes: 50e9 bytes, 1e6 us at 50 GB/s. A gain of 100 us per step
    pays 1e6 us over exactly 10,000 steps: not more than the stall, so not worth it; over
    10,001 steps it is."""
    rep = a_repair(101.0, 1.0, 2, 25 * 10**9)
    assert rep.bytes_moved == 50 * 10**9
    assert not worth_it(rep, horizon_steps=10_000, link_gbps=50.0)
    assert worth_it(rep, horizon_steps=10_001, link_gbps=50.0)
    assert worth_it(rep, horizon_steps=10_000, link_gbps=50.1)
    assert not worth_it(rep)  # the defaults: 10,000 steps, 50 GB/s
    assert not worth_it(a_repair(101.0, 1.0, 0, 0))  # no move: nothing to gain
    assert worth_it(a_repair(101.0, 1.0, 1, 0))  # moves without bytes cost nothing
    assert not worth_it(a_repair(1.0, 1.0, 1, 0))  # ... but must gain something
    assert Move(3, 4, 5, 6, 7).to_dict() == {"layer": 3, "slot": 4, "old_expert": 5, "new_expert": 6, "bytes": 7,
                                             "step": -1}
    assert Move(3, 4, 5, 6, 7, 2).to_dict()["step"] == 2


# ---- counting and aligning moves ---------------------------------------------------------------
def test_count_moves_and_align_slots_on_a_two_gpu_plan():
    """Old [0 1 | 2 3]. New [1 0 | 3 2]: the same experts per GPU, 0 moves. New [2 0 | 1 3]:
    GPU 0 keeps 0, GPU 1 keeps 3: 2 moves; aligned, each kept expert stays in its old
    slot: [0 2 | 1 3], which differs from old in exactly those 2 slots."""
    old = plan_of([[0, 1, 2, 3]], 2)
    same = plan_of([[1, 0, 3, 2]], 2)
    assert count_moves(old, same) == 0
    assert align_slots(old, same).physical_to_logical_map.tolist() == [[0, 1, 2, 3]]
    new = plan_of([[2, 0, 1, 3]], 2, replica_weights=np.array([[1.0, 2.0, 3.0, 4.0]]))
    assert count_moves(old, new) == 2
    aligned = align_slots(old, new)
    assert aligned.physical_to_logical_map.tolist() == [[0, 2, 1, 3]]
    assert aligned.replica_weights.tolist() == [[2.0, 1.0, 3.0, 4.0]]  # the weights travel with their slots
    assert align_slots(old, plan_of([[2, 0, 1, 3]], 2)).replica_weights is None


def test_align_slots_with_more_slots_than_gpus():
    """2 GPUs x 3 slots. Old [0 1 2 | 3 4 5], new [5 2 0 | 1 4 3]: GPU 0 keeps 0 and 2
    (slots 0 and 2), its new expert 5 takes slot 1; GPU 1 keeps 3 and 4, 1 takes slot 5."""
    old, new = plan_of([[0, 1, 2, 3, 4, 5]], 2), plan_of([[5, 2, 0, 1, 4, 3]], 2)
    assert align_slots(old, new).physical_to_logical_map.tolist() == [[0, 5, 2, 3, 4, 1]]
    assert count_moves(old, new) == 2


def test_count_moves_counts_replicas_as_multisets_and_layers_apart():
    """Layer 1: old GPU 0 holds expert 0 twice [0 0 | 1 2]; new [0 1 | 0 2]: GPU 0 keeps
    one 0 (one move), GPU 1 keeps 2 (one move). Layer 2 only reorders slots within its
    GPUs. 2 moves in all; aligned, the kept 0 stays in slot 0 and the kept 2 in slot 3."""
    old = plan_of([[0, 0, 1, 2], [0, 1, 2, 0]], 2)
    new = plan_of([[0, 1, 0, 2], [1, 0, 0, 2]], 2)
    assert count_moves(old, new) == 2
    aligned = align_slots(old, new).physical_to_logical_map
    assert aligned.tolist() == [[0, 1, 0, 2], [0, 1, 2, 0]]
    assert int((aligned != old.physical_to_logical_map).sum()) == 2


def test_plans_of_another_shape_are_refused():
    old = plan_of([[0, 1, 2, 3]], 2)
    with pytest.raises(VibeError) as exc:
        count_moves(old, plan_of([[0, 1, 2, 3, 0, 1]], 2))
    assert str(exc.value) == "plans differ in shape: [1, 4] on 2 GPUs vs [1, 6] on 2 GPUs"
    with pytest.raises(VibeError) as exc:
        align_slots(old, plan_of([[0, 1, 2, 3]], 4))
    assert str(exc.value) == "plans differ in shape: [1, 4] on 2 GPUs vs [1, 4] on 4 GPUs"


# ---- lost GPUs ---------------------------------------------------------------------------------
def four_gpus(down=()) -> Cluster:
    c = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (4, 1)), 0.0)
    return c.with_gpus([dataclasses.replace(g, extra={"state": "down"}) if g.rank in down else g for g in c.gpus])


def test_live_weights_zero_the_slots_of_lost_gpus():
    plan = plan_of([[0, 1, 0, 1], [1, 0, 1, 0]], 2)
    assert live_weights(plan, []) is None
    assert live_weights(plan, [1]).tolist() == [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_resolve_down_unites_the_three_sources_and_checks_them():
    plan = plan_of([list(range(8))], 4)
    tagged = dataclasses.replace(plan, extra={"down_gpus": [3]})
    assert resolve_down(plan, four_gpus(), ()) == ()
    assert resolve_down(tagged, four_gpus(down=[1]), [np.int64(0)]) == (0, 1, 3)
    for bad in ("3", [1.5], 3):
        with pytest.raises(VibeError) as exc:
            resolve_down(dataclasses.replace(plan, extra={"down_gpus": bad}), four_gpus(), ())
        assert str(exc.value) == "the plan's 'down_gpus' must be a list of GPU ranks"
    for rank in (4, -1):
        with pytest.raises(VibeError) as exc:
            resolve_down(plan, four_gpus(), [rank])
        assert str(exc.value) == f"lost GPU {rank} is not a rank of the 4-GPU cluster"
    assert resolve_down(plan, four_gpus(), [0, 3]) == (0, 3)  # the first and last ranks are ranks


def test_check_room_names_the_redundancy_that_would_survive_the_loss():
    """16 experts, 4 GPUs x 4 slots, 3 live: 12 slots. --redundant r needs (16 + r) % 4 == 0
    and 3 x (16 + r) / 4 >= 16: r = 4 gives 15, r = 8 gives 18."""
    plan = plan_of([list(range(16))], 4)
    _check_room(plan, 4)
    with pytest.raises(VibeError) as exc:
        _check_room(plan, 3)
    assert str(exc.value) == ("16 experts need 16 live slots; 3 live GPUs x 4 slots hold only 12 "
                              "(a plan that survives this loss needs --redundant 8 or more)")
    exactly = plan_of([list(range(12)) + [0, 1, 2, 3]], 4, E=12)  # 12 experts in 3 x 4 live slots: fits
    _check_room(exactly, 3)


# ---- moves ---------------------------------------------------------------------------------------
def test_apply_moves_checks_each_move_and_marks_lost_gpus():
    plan = plan_of([[0, 1, 2, 3], [3, 2, 1, 0]], 2, ids=(5, 9))
    out = apply_moves(plan, [Move(9, 0, 3, 1, 0), Move(9, 2, 1, 3, 0)])
    assert out.physical_to_logical_map.tolist() == [[0, 1, 2, 3], [1, 2, 3, 0]]
    assert out.replica_weights is None and "down_gpus" not in out.extra
    both = plan_of([[0, 1, 0, 1]], 2)  # every expert on both GPUs: GPU 1 may be lost
    lost = apply_moves(both, [Move(1, 3, 1, 0, 0), Move(1, 2, 0, 1, 0)], down_gpus=[1])
    assert lost.physical_to_logical_map.tolist() == [[0, 1, 1, 0]]
    assert lost.extra["down_gpus"] == [1] and lost.replica_weights.tolist() == [[1, 1, 0, 0]]
    for move, problem in ((Move(6, 0, 0, 1, 0), "move 1: layer 6 slot 0 is not in the plan"),
                          (Move(5, 4, 0, 1, 0), "move 1: layer 5 slot 4 is not in the plan"),
                          (Move(5, -1, 0, 1, 0), "move 1: layer 5 slot -1 is not in the plan"),
                          (Move(5, 2, 1, 0, 0), "move 1: slot 2 of layer 5 holds expert 2, not 1")):
        with pytest.raises(InputError) as exc:
            apply_moves(plan, [Move(5, 3, 3, 0, 0), move])
        assert exc.value.source == "moves" and exc.value.problem == problem


def test_move_steps_groups_chains_of_up_to_four_moves_only():
    four = [Move(1, 0, 0, 1, 0), Move(1, 1, 1, 2, 0), Move(1, 2, 2, 3, 0), Move(1, 3, 3, 0, 0)]
    assert [len(s) for s in move_steps(four)] == [4]
    five = [Move(1, k, k, (k + 1) % 5, 0) for k in range(5)]  # a cycle of 5: longer than MAX_CHAIN
    assert [len(s) for s in move_steps(five)] == [1] * 5
    swap_then_swap = [Move(1, 0, 4, 7, 0), Move(1, 5, 7, 4, 0), Move(2, 0, 4, 7, 0), Move(2, 5, 7, 4, 0)]
    assert [len(s) for s in move_steps(swap_then_swap)] == [2, 2]
    broken = [Move(1, 0, 0, 1, 0), Move(2, 1, 1, 0, 0)]  # would close, but in another layer
    assert [len(s) for s in move_steps(broken)] == [1, 1]
    assert move_steps([]) == []
    assert move_steps(four)[0] == tuple(four)


def test_move_steps_follow_the_steps_the_moves_carry():
    """A single move (expert 2 -> 3 in slot 5) then a swap of slots 1 and 2 (3 <-> 2): read
    as chains, the single move and the swap's first move close a chain (2 -> 3, 3 -> 2)
    and the swap's second move stands alone; the steps the repair recorded say otherwise."""
    single, s1, s2 = Move(1, 5, 2, 3, 0), Move(1, 1, 3, 2, 0), Move(1, 2, 2, 3, 0)
    assert [len(s) for s in move_steps([single, s1, s2])] == [2, 1]  # the chain reading
    tagged = [dataclasses.replace(single, step=4), dataclasses.replace(s1, step=5), dataclasses.replace(s2, step=5)]
    assert [len(s) for s in move_steps(tagged)] == [1, 2]
    assert [len(s) for s in move_steps(tagged[:1] + [s1, s2])] == [2, 1]  # one move without its step: chains


# ---- rest-max tables against brute force ------------------------------------------------------------
def T_cases():
    rng = np.random.default_rng(3)
    yield np.array([[5.0, 9.0, 7.0, 1.0]])
    yield np.array([[2.0, 2.0, 2.0], [1.0, 3.0, 3.0]])  # ties
    yield rng.integers(0, 4, size=(2, 5)).astype(float)  # many ties
    yield rng.uniform(0, 10, size=(3, 6))


@pytest.mark.parametrize("T", list(T_cases()))
def test_rest_max_tables_match_brute_force(T):
    K, G = T.shape

    def outside(k, gpus):
        rest = [T[k, h] for h in range(G) if h not in gpus]
        return max(rest) if rest else -np.inf

    R = _rest_max(T)
    assert R.shape == (K, G, G)
    for k, g, h in itertools.product(range(K), range(G), range(G)):
        assert R[k, g, h] == outside(k, {g, h})
    for c in (2, 3):
        tab = _rest_max_table(T, c)
        assert tab.shape == (K,) + (G,) * c
        for k in range(K):
            for gpus in itertools.product(range(G), repeat=c):
                assert tab[(k,) + gpus] == outside(k, set(gpus))
    sets = (np.arange(G)[:, None, None], np.arange(G)[None, :, None], np.arange(G)[None, None, :])
    out = _rest_max_outside(T, sets)
    for k, a, b, d in itertools.product(range(K), range(G), range(G), range(G)):
        if len({a, b, d}) == 3:  # the candidates' GPUs are distinct
            assert out[k, a, b, d] == outside(k, {a, b, d})


def test_rest_max_outside_every_gpu_is_minus_infinity():
    T = np.array([[1.0, 2.0]])
    assert _rest_max_outside(T, (np.array([0]), np.array([1]))).tolist() == [[-np.inf]]
    assert _rest_max(T)[0, 0, 1] == -np.inf and _rest_max(T)[0, 1, 0] == -np.inf


# ---- a repair whose best moves are known ------------------------------------------------------------
def two_gpu_case(expert=None):
    """GPU 0 takes 1 us per token, GPU 1 2 us (linear curves), no overheads; experts 0-3
    get 6, 5, 2, 1 tokens (top-1, 14 a step). Plan [2 3 | 0 1]: GPU 0 3, GPU 1 22 -> 22.
    Swaps: 0<->2: 7, 14 -> 14; 0<->3: 8, 12 -> 12; 1<->2: 6, 16 -> 16; 1<->3: 7, 14 ->
    14: the best swap is 0<->3, 12 us, gaining 5 us per move. The best plan puts {0, 1}
    on GPU 0: 11, 6 -> 11 (every other pair: {0, 2} 12, {0, 3} / {1, 2} 14, {1, 3} 16),
    two swaps away."""
    cluster = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0], [2.0, 200.0]], [0.0, 0.0], expert=expert)
    loads = ExpertLoads(np.array([[6.0, 5.0, 2.0, 1.0]]), top_k=1, layer_ids=(4,))
    plan = plan_of([[2, 3, 0, 1]], 2, ids=(4,))
    return cluster, loads, plan, PlacementOptions(batch_tokens=(14.0,), weights=(1.0,))


def gpu_sets(placement) -> list[set]:
    row = placement.physical_to_logical_map[0]
    return [set(row[:2].tolist()), set(row[2:].tolist())]


def test_two_gpu_repair_takes_the_best_swap_then_reaches_the_optimum():
    cluster, loads, plan, opts = two_gpu_case()
    one = repair_placement(plan, loads, cluster, opts, max_moves=2)
    assert one.before_us == pytest.approx(22.0) and one.after_us == pytest.approx(12.0)
    assert gpu_sets(one.placement) == [{2, 0}, {3, 1}]
    assert sorted((m.slot, m.old_expert, m.new_expert) for m in one.moves) == [(1, 3, 0), (2, 0, 3)]
    assert all(m.layer == 4 for m in one.moves) and one.step_us == pytest.approx((12.0, 12.0))
    assert repair_placement(plan, loads, cluster, opts, max_moves=3).after_us == pytest.approx(12.0)
    for budget in (4, 8):
        full = repair_placement(plan, loads, cluster, opts, max_moves=budget)
        assert full.after_us == pytest.approx(11.0) and len(full.moves) == 4
        assert gpu_sets(full.placement) == [{0, 1}, {2, 3}]
        assert full.step_us == pytest.approx((12.0, 12.0, 11.0, 11.0))  # the big swap first
    # unbounded, only the global greedy runs (the budget split needs a finite budget): it
    # stops once no GPU is above the level (3 + 22) / 2 = 12.5 it balances to
    assert repair_placement(plan, loads, cluster, opts).after_us == pytest.approx(12.0)
    assert repair_placement(plan, loads, cluster, opts, max_moves=1).moves == ()  # a swap needs two


def test_two_gpu_repair_min_gain_is_per_move_and_inclusive():
    """The best swap gains (22 - 12) / 2 = 5 us per move: taken at min_gain_us 5, not above."""
    cluster, loads, plan, opts = two_gpu_case()
    at = repair_placement(plan, loads, cluster, opts, max_moves=2, min_gain_us=5.0)
    assert at.after_us == pytest.approx(12.0)
    assert repair_placement(plan, loads, cluster, opts, max_moves=2, min_gain_us=5.01).moves == ()


def test_two_gpu_repair_byte_budget_is_whole_moves():
    """Experts of 3 x 1000 x 1000 bf16 = 6e6 bytes: 2.5 experts' bytes buy 2 moves (the best
    swap), 1.99 buy 1 (no swap fits)."""
    cluster, loads, plan, opts = two_gpu_case({"hidden": 1000, "intermediate": 1000, "dtype": "bf16"})
    rep = repair_placement(plan, loads, cluster, opts, max_bytes=2.5 * 6e6)
    assert rep.after_us == pytest.approx(12.0) and rep.bytes_moved == 12_000_000
    assert all(m.bytes == 6_000_000 for m in rep.moves)
    assert repair_placement(plan, loads, cluster, opts, max_bytes=1.99 * 6e6).moves == ()
    both = repair_placement(plan, loads, cluster, opts, max_moves=8, max_bytes=2.5 * 6e6)
    assert len(both.moves) == 2  # the tighter of the two budgets


def test_repair_budget_errors_are_one_line():
    cluster, loads, plan, opts = two_gpu_case()
    for kw, msg in ((dict(max_moves=-1), "--max-moves must be >= 0"), (dict(max_bytes=-1.0), "--max-bytes must be >= 0"),
                    (dict(max_bytes=1e9), "cluster 'cluster' gives no expert size ('expert': hidden, intermediate, "
                                          "dtype), so a byte budget cannot be kept")):
        with pytest.raises(VibeError) as exc:
            repair_placement(plan, loads, cluster, opts, **kw)
        assert str(exc.value) == msg
    sized, *_ = two_gpu_case({"hidden": 1000, "intermediate": 1000, "dtype": "bf16"})
    assert repair_placement(plan, loads, sized, opts, max_moves=0, max_bytes=0.0).moves == ()


def test_rehoming_a_lost_gpus_experts_comes_first_and_must_fit_the_budget():
    """3 GPUs x 2 slots, 1 us per token everywhere, experts 0-3 (6, 5, 2, 1 tokens), plan
    [0 1 | 2 0 | 3 1]: GPU 2 lost, expert 3 lived only there and must move to a live slot
    that holds a replicated expert (0 or 1): one move, first; before it the plan cannot
    serve expert 3 (before_us inf)."""
    cluster = Cluster.init_by_curves([1.0, 100.0], np.tile([1.0, 100.0], (3, 1)), 0.0,
                                     expert={"hidden": 10, "intermediate": 10, "dtype": "fp8"})
    loads = ExpertLoads(np.array([[6.0, 5.0, 2.0, 1.0]]), top_k=1, layer_ids=(1,))
    plan = plan_of([[0, 1, 2, 0, 3, 1]], 3)
    opts = PlacementOptions(batch_tokens=(14.0,), weights=(1.0,))
    rep = repair_placement(plan, loads, cluster, opts, max_moves=1, down_gpus=[2])
    assert rep.before_us == np.inf and np.isfinite(rep.after_us) and len(rep.moves) == 1
    m = rep.moves[0]
    assert m.new_expert == 3 and m.slot in (0, 1, 2, 3) and m.old_expert in (0, 1)
    assert rep.placement.extra["down_gpus"] == [2]
    with pytest.raises(VibeError) as exc:
        repair_placement(plan, loads, cluster, opts, max_moves=0, down_gpus=[2])
    assert str(exc.value) == "re-homing the experts of lost GPU(s) [2] needs 1 moves (300 bytes), more than the budget"


# ---- the full re-solve it is compared with -----------------------------------------------------------
def test_full_resolve_is_the_policy_with_the_callers_options_on_the_live_gpus_only():
    """4 GPUs x 4 slots, 12 experts (--redundant 4). Without a loss: exactly `vibe place`
    with the caller's options (here one operating point), slots aligned. GPU 2 lost: the
    policy runs on GPUs 0, 1, 3 renumbered 0, 1, 2 with 3 x 4 - 12 = 0 replicas, the lost
    GPU's slots keep their experts with replica weight 0."""
    from vibe.policies import place
    from vibe.recal import full_resolve
    from vibe.synth import synth_cluster
    from vibe.synth.loads import synth_loads

    cluster = synth_cluster(4, scenario="power-cap", seed=0)
    old, new = synth_loads(2, 12, 2, seed=0, layer_ids=(1, 2)), synth_loads(2, 12, 2, seed=1, layer_ids=(1, 2))
    opts = PlacementOptions(batch_tokens=(4096.0,), weights=(1.0,), redundant=4)
    plan = dataclasses.replace(place(old, cluster, "vibe", opts), policy="eplb", extra={"note": "kept"})
    fresh = full_resolve(plan, new, cluster, opts)
    assert count_moves(fresh, place(new, cluster, "vibe", opts)) == 0
    assert fresh.extra == {"note": "kept"} and fresh.policy == "vibe"
    lost = full_resolve(plan, new, cluster, opts, down_gpus=[2])
    sub = cluster.with_gpus([dataclasses.replace(cluster.gpus[g], rank=i) for i, g in enumerate([0, 1, 3])])
    alone = place(new, sub, "vibe", dataclasses.replace(opts, redundant=0)).physical_to_logical_map  # [2, 12]
    phy = lost.physical_to_logical_map
    for l in range(2):
        for i, g in enumerate([0, 1, 3]):
            assert sorted(phy[l, 4 * g:4 * g + 4]) == sorted(alone[l, 4 * i:4 * i + 4])
    assert np.array_equal(phy[:, 8:12], plan.physical_to_logical_map[:, 8:12])  # GPU 2 keeps its experts
    assert lost.replica_weights[:, 8:12].max() == 0
    assert lost.extra == {"note": "kept", "down_gpus": [2]} and lost.policy == "vibe"
