"""Incremental re-placement (vibe.recal.repair): valid steps, falling objective, fair
move counts, lost GPUs, budgets, and the recovery target on real ESFT domains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vibe.cost import evaluate, gpu_times, weighted_moe_time
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions, place
from vibe.recal import (apply_moves, count_moves, expert_bytes, full_resolve, move_steps, repair_placement,
                        worth_it)
from vibe.recal.repair import live_weights, min_gain_per_move, objective_tokens, objective_us
from vibe.synth import synth_cluster
from vibe.synth.loads import synth_loads

OPTS = PlacementOptions()


def random_plan(rng: np.random.Generator, L: int, E: int, G: int, R: int) -> Placement:
    """Every expert once plus R random replicas per layer, shuffled over the slots."""
    rows = [rng.permutation(np.concatenate([np.arange(E), rng.integers(0, E, R)])) for _ in range(L)]
    return Placement.init_by_mapping(np.array(rows), G, E, tuple(range(1, L + 1)), "random")


def small_case(seed: int = 0, R: int = 0, G: int = 4, S: int = 4, L: int = 3):
    E = G * S - R
    cluster = synth_cluster(G, scenario="power-cap", seed=seed)
    old = synth_loads(L, E, 2, seed=seed, layer_ids=range(1, L + 1))
    new = synth_loads(L, E, 2, seed=seed + 1, layer_ids=range(1, L + 1))
    plan = place(old, cluster, "vibe", dataclasses.replace(OPTS, redundant=R))
    return cluster, old, new, plan


def objective(plan: Placement, loads: ExpertLoads, cluster) -> float:
    """The weighted objective straight from vibe.cost.evaluate (independent of recal)."""
    return weighted_moe_time(evaluate(plan, loads, cluster, OPTS.batch_tokens, OPTS.weights, with_lower_bound=False))


# ---- counting moves ------------------------------------------------------------------
def test_count_moves_ignores_slot_order_within_a_gpu_and_counts_a_swap_as_two():
    rng = np.random.default_rng(0)
    plan = random_plan(rng, 2, 12, 3, 0)
    phy = plan.physical_to_logical_map.reshape(2, 3, 4)
    shuffled = np.stack([np.stack([rng.permutation(g) for g in layer]) for layer in phy]).reshape(2, 12)
    relabelled = dataclasses.replace(plan, physical_to_logical_map=shuffled)
    assert count_moves(plan, relabelled) == 0
    swapped = plan.physical_to_logical_map.copy()
    swapped[0, [0, 5]] = swapped[0, [5, 0]]  # slots on GPUs 0 and 1
    assert count_moves(plan, dataclasses.replace(plan, physical_to_logical_map=swapped)) == 2


def test_full_resolve_for_the_same_loads_moves_nothing_and_its_slots_are_aligned():
    cluster, old, new, plan = small_case()
    again = full_resolve(plan, old, cluster, OPTS)
    assert count_moves(plan, again) == 0
    fresh = full_resolve(plan, new, cluster, OPTS)
    differ = int((fresh.physical_to_logical_map != plan.physical_to_logical_map).sum())
    assert differ == count_moves(plan, fresh) > 0  # aligned: every differing slot is a counted move


# ---- the repair ----------------------------------------------------------------------
def test_repair_lowers_the_objective_on_synthesized_drift_and_reports_cost_model_times():
    cluster, old, new, plan = small_case(R=4)
    rep = repair_placement(plan, new, cluster, dataclasses.replace(OPTS, redundant=4), max_moves=12)
    assert 0 < len(rep.moves) <= 12
    assert rep.before_us == pytest.approx(objective(plan, new, cluster), rel=1e-12)
    assert rep.after_us == pytest.approx(objective(rep.placement, new, cluster), rel=1e-12)
    assert rep.after_us < rep.before_us * 0.999
    assert rep.step_us[-1] == pytest.approx(rep.after_us, rel=1e-9)
    assert all(m.bytes == expert_bytes(cluster) == 3 * 7168 * 2048 for m in rep.moves)  # fp8 DeepSeek-V3 expert
    assert {m.layer for m in rep.moves} <= set(plan.layer_ids)


@st.composite
def plans(draw):
    seed = draw(st.integers(0, 10**6))
    rng = np.random.default_rng(seed)
    G, S = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    R = draw(st.integers(0, G))
    E, L = G * S - R, draw(st.integers(1, 3))
    counts = synth_loads(L, E, 2, seed=seed).counts
    if draw(st.booleans()):
        counts[:, rng.integers(E)] = 0  # an expert nobody routes to
    loads = ExpertLoads(counts, 2, tuple(range(1, L + 1)))
    cluster = synth_cluster(G, scenario=draw(st.sampled_from(["identical", "power-cap", "outlier"])), seed=seed)
    down = [int(rng.integers(G))] if draw(st.booleans()) and (G - 1) * S >= E else []
    return random_plan(rng, L, E, G, R), loads, cluster, down, draw(st.integers(0, 12))


def check_steps(plan, loads, cluster, down, rep) -> None:
    """Every step of rep's move list is a valid plan past the re-homing prefix, and the
    objective never rises along it and matches step_us."""
    tokens, w = objective_tokens(loads, OPTS)
    live = ~np.isin(plan.gpu_of_slot, down)
    phy = plan.physical_to_logical_map.copy()
    row = {lid: r for r, lid in enumerate(plan.layer_ids)}
    prev = np.inf
    done = 0
    for step in move_steps(rep.moves):
        for m in step:
            assert live[m.slot]  # nothing moves onto a lost GPU
            assert phy[row[m.layer], m.slot] == m.old_expert
            phy[row[m.layer], m.slot] = m.new_expert
        done += len(step)
        homeless = [(l, e) for l in range(phy.shape[0]) for e in range(plan.num_logical_experts)
                    if not np.any(phy[l, live] == e)]
        if not homeless:  # past the re-homing prefix every step is a valid plan in service
            current = dataclasses.replace(plan, physical_to_logical_map=phy.copy())
            value = objective_us(dataclasses.replace(current, replica_weights=live_weights(current, down)),
                                 cluster, tokens, w)
            assert value <= prev * (1 + 1e-9)
            assert value == pytest.approx(rep.step_us[done - 1], rel=1e-9)
            prev = value
    assert np.array_equal(phy, rep.placement.physical_to_logical_map)
    assert apply_moves(plan, rep.moves, down).physical_to_logical_map.tolist() == phy.tolist()
    assert rep.after_us <= rep.before_us * (1 + 1e-9)
    if down:
        assert np.all(rep.placement.replica_weights[:, ~live] == 0)
        assert rep.placement.extra["down_gpus"] == down


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_every_step_of_a_repair_is_a_valid_plan_and_the_objective_never_rises(case):
    plan, loads, cluster, down, k = case
    rep = repair_placement(plan, loads, cluster, OPTS, max_moves=k + 3 * plan.slots_per_gpu * plan.num_layers,
                           down_gpus=down)
    check_steps(plan, loads, cluster, down, rep)


def test_a_single_move_then_a_swap_is_read_as_the_repair_made_it():
    """A case a random seed found: in layer 1 the repair moves slot 5 alone (2 -> 3), then
    swaps slots 1 and 2 (3 <-> 2). Grouped by chains, the single move and the swap's
    first move looked like one swap, whose plan is 16% slower than the one before it."""
    plan = Placement.init_by_mapping(np.array([[2, 0, 2, 1, 3, 2], [0, 1, 1, 3, 2, 0], [3, 0, 3, 2, 0, 1]]),
                                     3, 4, (1, 2, 3), "random")
    loads = ExpertLoads(np.array([[7373.0, 912, 3461, 4638], [4395, 1393, 3223, 7373], [1655, 2726, 4630, 7373]]),
                        2, (1, 2, 3))
    cluster = synth_cluster(3, scenario="outlier", seed=16034)
    rep = repair_placement(plan, loads, cluster, OPTS, max_moves=18)
    assert len({m.step for m in rep.moves}) == len(move_steps(rep.moves)) > 1
    check_steps(plan, loads, cluster, [], rep)


@pytest.mark.parametrize("only", ["greedy", "knapsack"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_candidate_sequence_alone_is_valid_and_the_best_of_them_is_kept(monkeypatch, only, seed):
    """The repair takes the better of two move sequences (the global greedy, the budget
    split over layers by a knapsack): each alone keeps the contract, and the pair is
    never worse than the greedy alone."""
    from vibe.recal import repair as rp

    cluster, _, new, plan = small_case(seed=seed, R=4)
    opts = dataclasses.replace(OPTS, redundant=4)
    down = [1] if seed == 2 else []
    both = repair_placement(plan, new, cluster, opts, max_moves=10, down_gpus=down)
    other = "_budgeted_layers" if only == "greedy" else "_greedy_chunks"
    monkeypatch.setattr(rp, other, lambda *a, **k: [])
    alone = repair_placement(plan, new, cluster, opts, max_moves=10, down_gpus=down)
    assert len(alone.moves) <= 10
    check_steps(plan, new, cluster, down, alone)
    assert both.after_us <= alone.after_us * (1 + 1e-12)


def test_max_moves_budget_is_kept_and_zero_moves_changes_nothing():
    cluster, _, new, plan = small_case()
    for k in (0, 1, 3, 8):
        rep = repair_placement(plan, new, cluster, OPTS, max_moves=k)
        assert len(rep.moves) <= k
    rep = repair_placement(plan, new, cluster, OPTS, max_moves=0)
    assert np.array_equal(rep.placement.physical_to_logical_map, plan.physical_to_logical_map)
    assert rep.after_us == pytest.approx(rep.before_us)


def test_byte_budget_and_worth_it_rule():
    cluster, _, new, plan = small_case()
    size = expert_bytes(cluster)
    rep = repair_placement(plan, new, cluster, OPTS, max_bytes=5.5 * size)
    assert len(rep.moves) <= 5 and rep.bytes_moved <= 5.5 * size
    assert worth_it(rep, horizon_steps=10_000, link_gbps=50)
    assert not worth_it(rep, horizon_steps=1e-6, link_gbps=50)
    # a threshold above any gain per move: nothing is worth moving
    none = repair_placement(plan, new, cluster, OPTS, min_gain_us=rep.before_us)
    assert none.moves == () and not worth_it(none)
    assert min_gain_per_move(cluster, 10_000, 50) == pytest.approx(size / 50e9 * 1e6 / 10_000)
    bare = cluster.with_gpus(cluster.gpus, expert={})
    with pytest.raises(VibeError, match="no expert size"):
        repair_placement(plan, new, bare, OPTS, max_bytes=1e9)


def test_a_lost_gpu_gets_no_tokens_and_its_experts_are_rehomed():
    cluster, old, _, plan = small_case(R=4)  # 4 GPUs x 4 slots, 12 experts: 3 live GPUs hold them
    opts = dataclasses.replace(OPTS, redundant=4)
    rep = repair_placement(plan, old, cluster, opts, max_moves=40, down_gpus=[2])
    out = rep.placement
    assert rep.before_us == np.inf and np.isfinite(rep.after_us)
    assert out.extra["down_gpus"] == [2]
    T = gpu_times(out, old, cluster, 8192)
    assert np.allclose(T[:, 2], cluster.overhead_us[2])  # only its fixed cost: no token
    live = out.gpu_of_slot != 2
    for row in out.physical_to_logical_map:
        assert set(row[live]) == set(range(old.num_experts))
    # the same through the cluster file's "state": "down"
    gpus = [dataclasses.replace(g, extra=dict(g.extra, state="down")) if g.rank == 2 else g for g in cluster.gpus]
    marked = cluster.with_gpus(gpus)
    assert marked.down_ranks() == (2,)
    rep2 = repair_placement(plan, old, marked, opts, max_moves=40)
    assert np.array_equal(rep2.placement.physical_to_logical_map, out.physical_to_logical_map)
    with pytest.raises(VibeError, match="needs .* moves"):
        repair_placement(plan, old, cluster, opts, max_moves=1, down_gpus=[2])
    full = full_resolve(plan, old, cluster, opts, down_gpus=[2])
    assert np.all(full.replica_weights[:, ~live] == 0) and np.isfinite(objective(full, old, cluster))


def test_a_plan_without_spare_slots_cannot_survive_a_lost_gpu():
    cluster, _, new, plan = small_case(R=0)
    with pytest.raises(VibeError, match="--redundant 8 or more"):
        repair_placement(plan, new, cluster, OPTS, down_gpus=[1])


def test_repair_refuses_a_plan_for_another_cluster_or_model():
    cluster, _, new, plan = small_case()
    with pytest.raises(VibeError, match="GPUs"):
        repair_placement(plan, new, synth_cluster(8, seed=0), OPTS)
    other = synth_loads(3, 32, 2, seed=3, layer_ids=range(1, 4))
    with pytest.raises(VibeError, match="experts"):
        repair_placement(plan, other, cluster, OPTS)


# ---- the target on real data ---------------------------------------------------------
def test_real_esft_domain_switch_recovers_80_percent_with_10_percent_of_the_moves(esft_loads, esft_law_loads):
    intent, law = esft_loads, esft_law_loads  # all 26 layers of both domains
    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    plan = place(intent, cluster, "vibe", OPTS)
    full = full_resolve(plan, law, cluster, OPTS)
    n_full = count_moves(plan, full)
    rep = repair_placement(plan, law, cluster, OPTS, max_moves=n_full // 10)
    gain_full = objective(plan, law, cluster) - objective(full, law, cluster)
    assert n_full > 1000
    assert (rep.before_us - rep.after_us) / gain_full >= 0.8


# ---- closed chains (cycles) ------------------------------------------------------------
def test_a_three_gpu_cycle_fixes_what_no_swap_can_and_is_one_step():
    """3 GPUs, one slot each, linear curves t_g(n) = f_g n with f = (2, 3, 1) us/token and
    overheads (5, 5, 2) us; experts 0, 1, 2 get 3, 2, 1 tokens (top-1, 6 tokens a step).
    Plan 0|1|2: GPU times 5+6=11, 5+6=11, 2+1=3 -> 11. Every swap: 0<->1: 5+4=9, 5+9=14
    -> 14; 0<->2: 5+2=7, 11, 2+3=5 -> 11; 1<->2: 11, 5+3=8, 2+2=4 -> 11: none lowers it.
    The cycle 1|2|0 (expert 0 to GPU 2, 2 to GPU 1, 1 to GPU 0): 5+4=9, 5+3=8, 2+3=5 -> 9."""
    cluster = Cluster.init_by_curves([1.0, 100.0], [[2.0, 200.0], [3.0, 300.0], [1.0, 100.0]], [5.0, 5.0, 2.0])
    loads = ExpertLoads(np.array([[3.0, 2.0, 1.0]]), top_k=1, layer_ids=(1,))
    plan = Placement.init_by_mapping(np.array([[0, 1, 2]]), 3, 3, (1,), "hand")
    opts = PlacementOptions(batch_tokens=(6.0,), weights=(1.0,))
    assert repair_placement(plan, loads, cluster, opts, max_moves=2).after_us == pytest.approx(11.0)
    rep = repair_placement(plan, loads, cluster, opts, max_moves=3)
    assert rep.before_us == pytest.approx(11.0) and rep.after_us == pytest.approx(9.0)
    assert rep.placement.physical_to_logical_map.tolist() == [[1, 2, 0]]
    assert len(rep.moves) == 3 and [len(s) for s in move_steps(rep.moves)] == [3]
    assert rep.step_us == pytest.approx((9.0,) * 3)


def test_move_steps_groups_swaps_and_cycles_and_leaves_other_moves_alone():
    from vibe.recal.repair import Move
    swap = [Move(1, 0, 4, 7, 0), Move(1, 5, 7, 4, 0)]
    cycle = [Move(1, 2, 0, 2, 0), Move(1, 9, 2, 1, 0), Move(1, 3, 1, 0, 0)]
    single = [Move(1, 6, 3, 5, 0)]
    other_layer = [Move(2, 0, 5, 3, 0)]  # undoes `single`'s experts, but in another layer
    steps = move_steps(swap + cycle + single + other_layer)
    assert [len(s) for s in steps] == [2, 3, 1, 1]
    open_chain = [Move(1, 2, 0, 2, 0), Move(1, 9, 2, 1, 0)]  # never closes: two moves alone
    assert [len(s) for s in move_steps(open_chain)] == [1, 1]


def test_with_a_network_block_the_repair_balances_compute_plus_all_to_all():
    """The repair's own step values include each GPU's all-to-all (vibe.cost.comm_model),
    so they agree with vibe.cost.evaluate, which adds it when the cluster has a network
    block; and the repair lowers that objective."""
    cluster, old, new, plan = small_case(R=4)
    net = cluster.with_network({"intra_node_GBps": 40.0, "inter_node_GBps": 5.0})
    opts = dataclasses.replace(OPTS, redundant=4)
    rep = repair_placement(plan, new, net, opts, max_moves=12)
    assert rep.before_us == pytest.approx(objective(plan, new, net), rel=1e-12)
    assert rep.before_us > objective(plan, new, cluster) * 1.01  # the comm term is there
    assert rep.after_us == pytest.approx(objective(rep.placement, new, net), rel=1e-12)
    assert rep.step_us[-1] == pytest.approx(rep.after_us, rel=1e-9)
    assert rep.after_us < rep.before_us
