"""The replica-aware lower bound (vibe.bounds.replica_lagrangian_bounds): never above the
best plan of tiny layers found by brute force over replica counts, GPU assignments and a
grid of replica shares, nor above vibe's and eplb's plans; at least the slot-work bound;
and equal to a hand-derived optimum. Runs without the shared data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vibe import bounds
from vibe.cost import expert_time_us, gpu_times
from vibe.model import Cluster, ExpertLoads
from vibe.policies import PlacementOptions, place


def share_grid(r: int, k: int) -> np.ndarray:
    """[C, r] every split of one expert over r replicas in steps of 1/k (zeros allowed:
    a replica may get no token)."""
    return np.array([c for c in itertools.product(range(k + 1), repeat=r) if sum(c) == k], dtype=np.float64) / k


def brute_force_layer(cluster: Cluster, n_e: np.ndarray, S: int, k: int = 12) -> float:
    """Best time of one layer over every map of the E experts to G*S slots (each expert
    at least once; slot order inside a GPU ignored) and every replica split in steps of
    1/k. At least the true optimum (the splits are a grid), so a bound must stay below."""
    G, E = cluster.num_gpus, len(n_e)
    gpu = np.repeat(np.arange(G), S)  # [P] GPU of each slot
    best = np.inf
    per_gpu = list(itertools.combinations_with_replacement(range(E), S))
    for choice in itertools.product(per_gpu, repeat=G):
        row = np.concatenate(choice)  # [P] expert of each slot
        if len(set(row.tolist())) < E:
            continue
        shares = np.ones((1, row.size))
        for e in range(E):  # every combination of the experts' splits
            slots = np.flatnonzero(row == e)
            if slots.size > 1:
                grid = share_grid(slots.size, k)  # [C, r]
                tiled = np.repeat(shares, len(grid), axis=0)
                tiled[:, slots] = np.tile(grid, (len(shares), 1))
                shares = tiled
        tokens = n_e[row][None, :] * shares  # [C, P]
        t = expert_time_us(cluster, gpu[None, :], tokens)  # 0 where a slot gets no token
        T = cluster.overhead_us[None, :] + t.reshape(len(t), G, S).sum(axis=2)
        best = min(best, float(T.max(axis=1).min()))
    return best


def replica_bound(cluster: Cluster, n_e: np.ndarray, S: int) -> float:
    return float(bounds.replica_lagrangian_bounds(cluster, n_e[None, :], S)[0])


# ---- a layer whose optimum is known -----------------------------------------------------
# t(n) = 10 us up to 10 tokens (flat), then 2 us per token: t(15) = 20, t(30) = 50.
CONVEX = Cluster.init_by_curves([10.0, 20.0], [[10.0, 30.0], [10.0, 30.0]])


def test_bound_equals_a_hand_derived_optimum_where_slot_work_is_loose():
    # Experts of 30, 30, 1, 1 tokens on 2 GPUs x 3 slots. The two small experts take a
    # slot each (10 us); the big ones share the other 4 slots, r1 + r2 <= 4 pieces, and by
    # convexity r pieces of 30 cost at least r t(30 / r): 50, 40, 30, 40 for r = 1..4, so
    # the pair costs at least 80 (2 + 2, 3 + 1 or 1 + 3) and the layer at least
    # (80 + 20) / 2 = 50 us. Each GPU holding half of both big experts and one small one
    # (20 + 20 + 10) reaches it: the optimum is 50.
    n_e = np.array([30.0, 30.0, 1.0, 1.0])
    assert brute_force_layer(CONVEX, n_e, 3) == pytest.approx(50.0)
    # Uniform lam, slot price m = 5 us: a piece costs t / 2 + 5, every split of a big
    # expert then costs 30 (25 + 5, 2 x 15, 3 x 10), a small one 10, minus 6 slots x 5:
    # 2 x 30 + 2 x 10 - 30 = 50.
    assert replica_bound(CONVEX, n_e, 3) == pytest.approx(50.0, rel=1e-6)
    # The slot-work bound pools the tokens: 3 slots per GPU with 31 tokens, 3 h(31 / 3)
    # = 3 (10 + 2 / 3) = 32 us.
    assert float(bounds.slot_work_bound(CONVEX, n_e[None, :], 3)[0]) == pytest.approx(32.0, rel=1e-6)
    loads = ExpertLoads(n_e[None, :], top_k=1)
    assert float(bounds.layer_lower_bounds(loads, CONVEX, 62.0, 6)[0]) == pytest.approx(50.0, rel=1e-6)


def test_slots_running_out_raise_the_bound_above_slot_work():
    # Experts of 19, 19, 2 tokens on 2 GPUs x 2 slots: splitting a 19 would halve its
    # cost (2 t(9.5) = 20 < t(19) = 28), but only one extra slot exists. With slot price
    # m = 4 splitting one more expert stops paying (14 + 4 = 2 x 5 + 2 x 4): 18 + 18 + 9
    # - 4 x 4 = 29 us. Slot work (tokens pooled, 2 slots of 10 per GPU) says 20; the
    # optimum is 38 (some GPU runs a whole 19 beside another piece).
    n_e = np.array([19.0, 19.0, 2.0])
    assert float(bounds.slot_work_bound(CONVEX, n_e[None, :], 2)[0]) == pytest.approx(20.0, rel=1e-6)
    assert replica_bound(CONVEX, n_e, 2) == pytest.approx(29.0, rel=1e-6)
    assert brute_force_layer(CONVEX, n_e, 2) == pytest.approx(38.0)


def test_the_makespan_restriction_forces_pieces_the_slots_cannot_hold():
    # t(n) = n us (1 us floor), experts of 60, 1, 1, 1, 1 tokens on 3 GPUs x 2 slots.
    # The average work is 64 / 3 = 21.3 us, but a plan faster than z < 30 has no piece
    # above z tokens, so the 60 needs ceil(60 / z) >= 3 pieces: 7 with the four small
    # experts, more than the 6 slots. So z >= 30; the optimum is 31 ({30, 1} twice, {1, 1}).
    unit = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0]] * 3)
    n_e = np.array([60.0, 1.0, 1.0, 1.0, 1.0])
    assert float(bounds.slot_work_bound(unit, n_e[None, :], 2)[0]) == pytest.approx(64 / 3, rel=1e-6)
    assert replica_bound(unit, n_e, 2) == pytest.approx(30.0, rel=1e-4)
    assert replica_bound(unit, n_e, 2) <= 30.0
    assert brute_force_layer(unit, n_e, 2) == pytest.approx(31.0)


def test_floors_limit_the_pieces_a_fast_plan_can_run():
    # Experts of 20 and 2 tokens on 2 GPUs x 2 slots, curve CONVEX. Whole, the 20 takes
    # t(20) = 30 us; split, some GPU runs two pieces, at least 2 x 10 us floor: the
    # optimum is 20. The average work of the best split (10 + 10 for the 20, 10 for the
    # 2) is 15, and slot work pools 11 tokens per GPU: t(11) = 12. Under z < 20 a GPU
    # fits one piece only (two cost 20), so the 20 stays whole, which needs
    # t(20) = 30 > z: no plan is faster than 20.
    n_e = np.array([20.0, 2.0])
    assert float(bounds.slot_work_bound(CONVEX, n_e[None, :], 2)[0]) == pytest.approx(12.0, rel=1e-6)
    lb = replica_bound(CONVEX, n_e, 2)
    assert 20.0 * (1 - 1e-4) <= lb <= 20.0
    assert brute_force_layer(CONVEX, n_e, 2) == pytest.approx(20.0)


# ---- never above the brute-force optimum or any policy's plan -------------------------
def tiny_case(seed: int):
    """(cluster, n_e, S): 2-3 GPUs with their own 2-3 point curves and overheads,
    2-3 slots each, 3-5 experts, at least one replica slot."""
    rng = np.random.default_rng(seed)
    G = int(rng.integers(2, 4))
    S = int(rng.integers(2, 4)) if G == 2 else 2
    E = int(rng.integers(3, min(5, G * S - 1) + 1))
    k = int(rng.integers(2, 4))
    tokens = np.sort(rng.choice(np.arange(1, 80), size=k, replace=False)).astype(float)
    # Curves of any shape that never fall: convex, concave, flat stretches.
    lat = np.cumsum(rng.choice([0.0, 1.0, 5.0, 20.0], size=(G, k)), axis=1) + rng.uniform(1, 10, size=(G, 1))
    cluster = Cluster.init_by_curves(tokens, lat, rng.uniform(0, 3, G))
    n_e = rng.integers(0, 60, size=E).astype(float) * (rng.random(E) < 0.9)
    return cluster, n_e, S


@pytest.mark.parametrize("seed", range(12))
def test_bound_never_above_the_brute_force_optimum(seed):
    cluster, n_e, S = tiny_case(seed)
    opt = brute_force_layer(cluster, n_e, S, k=8)
    lb = replica_bound(cluster, n_e, S)
    assert lb <= opt * (1 + 1e-9) + 1e-9
    # What plans with replicas get: the maximum with the plan-independent bounds, never
    # below the slot-work bound and still below the optimum (the bisection on z stops
    # within 1.2e-5 of where it starts, so the two runs agree to that).
    loads = ExpertLoads(n_e[None, :], top_k=1)
    both = float(bounds.layer_lower_bounds(loads, cluster, float(n_e.sum()), cluster.num_gpus * S)[0])
    assert both >= float(bounds.slot_work_bound(cluster, n_e[None, :], S)[0]) * (1 - 1e-9)
    assert both >= lb * (1 - 2e-5)
    assert both <= opt * (1 + 1e-9) + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_bound_never_above_vibe_or_eplb(seed):
    cluster, n_e, S = tiny_case(100 + seed)
    E, G = len(n_e), cluster.num_gpus
    loads = ExpertLoads(np.maximum(n_e, 0)[None, :] + (n_e.sum() == 0), top_k=1)
    B = float(loads.counts.sum())
    n = loads.expert_tokens(B)
    lb = float(bounds.layer_lower_bounds(loads, cluster, B, G * S)[0])
    assert lb >= float(bounds.replica_lagrangian_bounds(cluster, n, S)[0]) - 1e-9
    for policy in ("vibe", "eplb"):
        p = place(loads, cluster, policy, PlacementOptions(redundant=G * S - E, batch_tokens=(B,)))
        assert lb <= gpu_times(p, loads, cluster, B).max() * (1 + 1e-9) + 1e-9, policy


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 2.0))
def test_any_multipliers_and_restriction_stay_below_the_optimum(seed, spread, price):
    """replica_lagrangian_value at random lam >= 0 (summing to 1), mu >= 0, with and
    without the makespan restriction at z = the brute-force optimum, and the full bound:
    all at most that optimum."""
    cluster, n_e, S = tiny_case(seed)
    opt = brute_force_layer(cluster, n_e, S, k=6)
    rng = np.random.default_rng(seed)
    G = cluster.num_gpus
    lam = rng.dirichlet(np.full(G, 0.2 + 5 * spread))[None, :]
    mu = price * rng.random((1, G)) * np.abs(n_e).max(initial=1.0) / 10
    n = n_e[None, :]
    from vibe.cost import expert_cost_matrix

    costs = expert_cost_matrix(cluster, n)
    M = np.array([max(n_e.max(), 1e-9)])
    X, tp = bounds._piece_points(cluster, M)
    v = bounds.replica_lagrangian_value(costs, n, X, tp, cluster.overhead_us, S, lam, mu)
    assert v[0] <= opt * (1 + 1e-9) + 1e-9
    # Plans of time <= opt have no piece above D(opt): the restricted value bounds them too.
    D = np.minimum(M, bounds._largest_piece(tp, X, opt - cluster.overhead_us[None, :]))
    Xz, tz = bounds._piece_points(cluster, D)
    vz = bounds.replica_lagrangian_value(costs, n, Xz, tz, cluster.overhead_us, S, lam, mu, D)
    assert vz[0] <= opt * (1 + 1e-9) + 1e-9
    assert replica_bound(cluster, n_e, S) <= opt * (1 + 1e-9) + 1e-9


def test_identical_gpus_skip_the_ascent_and_layers_are_independent():
    """All layers at once give each layer's own bound; an empty layer gets the overhead."""
    cluster, n_e, S = tiny_case(7)
    rows = np.stack([n_e, np.zeros_like(n_e), n_e[::-1]])
    together = bounds.replica_lagrangian_bounds(cluster, rows, S)
    alone = [replica_bound(cluster, r, S) for r in rows]
    assert together == pytest.approx(alone, rel=1e-9)
    assert together[1] == pytest.approx(cluster.overhead_us.max())


def test_evaluate_names_the_bound_it_reports(tmp_path, capsys):
    import json

    from vibe.cli import main
    from vibe.synth import synth_cluster, synth_loads

    synth_cluster(4, scenario="power-cap", seed=1).save(tmp_path / "c.json")
    loads = synth_loads(2, 8, 2, seed=1)
    loads.save(tmp_path / "l.json")
    files = ["--cluster", str(tmp_path / "c.json"), "--loads", str(tmp_path / "l.json")]
    for redundant, word in ((4, "replica-aware"), (0, "LP relaxation")):
        plan = tmp_path / f"p{redundant}.json"
        assert main(["place", *files, "--out", str(plan), "--redundant", str(redundant)]) == 0
        capsys.readouterr()
        assert main(["evaluate", *files, "--placement", str(plan), "--batch-tokens", "512"]) == 0
        assert f"lower bound: {bounds.bound_kind(8 + redundant, 8)}" in capsys.readouterr().out
        assert main(["evaluate", *files, "--placement", str(plan), "--batch-tokens", "512", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert word in doc["lower_bound"]
        # the reported bound is the replica-aware one where the plan has replicas
        n = loads.expert_tokens(512.0)
        lb = bounds.layer_lower_bounds(loads, synth_cluster(4, scenario="power-cap", seed=1), 512.0, 8 + redundant)
        assert doc["operating_points"][0]["lower_bound_us"] == pytest.approx(lb.sum())
        if redundant:
            rep = bounds.replica_lagrangian_bounds(synth_cluster(4, scenario="power-cap", seed=1), n, 3)
            assert lb.sum() >= rep.sum() * (1 - 2e-5)
