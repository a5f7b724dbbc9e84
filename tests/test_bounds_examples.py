"""The simple bounds of vibe.bounds on hand-made inputs, every value derived by hand in the
comments: the hottest-expert bound, the fluid bound and the active-slots bound, and the
names `vibe evaluate` prints. Runs without the shared data."""

from __future__ import annotations

import numpy as np
import pytest

from vibe import bounds
from vibe.model import Cluster

# Expert costs [E, G] (us) on two GPUs; the hottest expert is expert 2 (12 us on GPU 1).
COSTS = np.array([[1.0, 2.0], [3.0, 1.0], [9.0, 12.0], [5.0, 4.0]])
OVER = np.array([0.5, 1.0])


@pytest.mark.parametrize("S, want", [
    (1, 9.5),    # alone: min(0.5 + 9, 1 + 12)
    (2, 10.5),   # + the cheapest other per GPU (1 on both): min(0.5 + 9 + 1, 1 + 12 + 1)
    (3, 13.5),   # + the two cheapest (1 + 3 on GPU 0, 1 + 2 on GPU 1): min(13.5, 16)
])
def test_hottest_expert_bound_by_hand(S, want):
    assert bounds.hottest_expert_bound(COSTS, OVER, S) == pytest.approx(want, abs=1e-12)


# Curves on the grid (10, 20) tokens: GPU 0 10 -> 30 us (flat at 10 us below 10 tokens,
# then 2 us per token), GPU 1 twice as slow; overheads 0 and 4 us.
TWO = Cluster.init_by_curves([10.0, 20.0], [[10.0, 30.0], [20.0, 60.0]], overhead_us=[0.0, 4.0])


@pytest.mark.parametrize("N, M, want", [
    # best rate per token up to M = N = 20: GPU 0 min(10/10, 30/20) = 1, GPU 1 2 us/token.
    # z alone on GPU 0 would be 20 > 4 (GPU 1's overhead), so both:
    # (z - 0) / 1 + (z - 4) / 2 = 20 -> z = 22 / 1.5
    (20.0, None, 22.0 / 1.5),
    # slots of at most M = 5 tokens: rates 10/5 = 2 and 20/5 = 4;
    # z / 2 + (z - 4) / 4 = 20 -> z = 21 / 0.75 = 28
    (20.0, 5.0, 28.0),
    # one token: rates 10 and 20; z / 10 + (z - 4) / 20 = 1 -> z = 1.2 / 0.15 = 8 (> 4)
    (1.0, None, 8.0),
    (0.0, None, 4.0),  # no token: the largest overhead
])
def test_fluid_bound_by_hand(N, M, want):
    assert bounds.fluid_bound(TWO, N, M) == pytest.approx(want, rel=1e-12)


# Floors 10 and 20 us. With S = 2 the times at which a+1 slots with tokens fit are
# 0 + 10, 0 + 20 (GPU 0) and 4 + 20, 4 + 40 (GPU 1): sorted 10, 20, 24, 44, by which
# 1, 2, 3, 4 slots fit.
@pytest.mark.parametrize("active, want", [(0, 4.0), (1, 10.0), (2, 20.0), (3, 24.0), (4, 44.0)])
def test_active_slots_bound_by_hand(active, want):
    assert bounds.active_slots_bound(TWO, np.array([active]), 2)[0] == want


def test_active_slots_bound_counts_each_gpu_from_its_overhead_up_to_its_slots():
    # GPU 1's overhead 15 us is past GPU 0's first floor: at 10 us only GPU 0 has a slot
    # (GPU 1 has none, not -1), so two slots need 20 us (GPU 0's second), not 10
    late = Cluster.init_by_curves([10.0, 20.0], [[10.0, 30.0], [20.0, 60.0]], overhead_us=[0.0, 15.0])
    assert bounds.active_slots_bound(late, np.array([1, 2]), 2).tolist() == [10.0, 20.0]
    # one slot per GPU, floors 10, 20 and 100 us: by 24 us GPU 0 could run two floors but
    # holds one slot, so three experts with tokens need GPU 2's floor, 100 us
    three = Cluster.init_by_curves([10.0, 20.0], [[10.0, 30.0], [20.0, 60.0], [100.0, 300.0]],
                                   overhead_us=[0.0, 4.0, 0.0])
    assert bounds.active_slots_bound(three, np.array([2, 3]), 1).tolist() == [24.0, 100.0]
    # more experts than slots: no time fits them all; the bound stays at the last time
    assert bounds.active_slots_bound(TWO, np.array([5]), 2)[0] == 44.0


def test_bound_kind_names_the_bounds_taken():
    assert bounds.bound_kind(80, 64) == "replica-aware Lagrangian bound, max with the slot-work bound (replicas)"
    assert bounds.bound_kind(64, 64) == ("LP relaxation of the assignment, max with the hottest-expert, "
                                         "cheapest-slots and slot-work bounds")


# ---- the convex minorant of each curve, as lines -------------------------------------------
# Grid 1, 2, 4, 8 tokens; held at the floor below the first point. GPU 0: 10, 10, 12, 20 us;
# GPU 1: 10, 16, 18, 26 us. Points on (0, 8] with (0, floor) first:
#   GPU 0: (0,10) (1,10) (2,10) (4,12) (8,20). (1,10) lies on the chord (0,10)-(2,10):
#   dropped. Hull (0,10) (2,10) (4,12) (8,20): slopes 0, 1, 2; intercepts 10, 12 - 4 = 8,
#   12 - 8 = 4.
#   GPU 1: (0,10) (1,10) (2,16) (4,18) (8,26). (2,16) lies above the chord (1,10)-(4,18),
#   then (4,18) above (1,10)-(8,26): hull (0,10) (1,10) (8,26), slopes 0 and 16/7,
#   intercept 10 - 16/7; padded to three lines by repeating the last.
HULLS = Cluster.init_by_curves([1.0, 2.0, 4.0, 8.0], [[10.0, 10.0, 12.0, 20.0], [10.0, 16.0, 18.0, 26.0]])


def test_convex_minorant_lines_by_hand():
    icpt, slope = bounds.convex_minorant_lines(HULLS, 8.0)
    assert icpt == pytest.approx(np.array([[10.0, 8.0, 4.0], [10.0, 10 - 16 / 7, 10 - 16 / 7]]), abs=1e-12)
    assert slope == pytest.approx(np.array([[0.0, 1.0, 2.0], [0.0, 16 / 7, 16 / 7]]), abs=1e-12)
    # up to 3 tokens only: GPU 0's hull is (0,10) (2,10) (3,11), GPU 1's (0,10) (1,10) (3,17)
    icpt, slope = bounds.convex_minorant_lines(HULLS, 3.0)
    assert slope == pytest.approx(np.array([[0.0, 1.0], [0.0, 3.5]]), abs=1e-12)
    assert icpt == pytest.approx(np.array([[10.0, 8.0], [10.0, 6.5]]), abs=1e-12)


# ---- the slot-work bound where the slots bind ----------------------------------------------
# Curves flat at their floor up to 10 tokens: GPU 0 1 us, GPU 1 10 us; no overhead.
FLOORS = Cluster.init_by_curves([10.0, 20.0], [[1.0, 3.0], [10.0, 30.0]])


def test_slot_work_bound_counts_experts_with_one_token():
    # four experts of one token each on 4 GPUs of one slot: each GPU runs one at its floor
    four = Cluster.init_by_curves([10.0, 20.0], [[10.0, 30.0]] * 4)
    assert bounds.slot_work_bound(four, np.ones((1, 4)), 1)[0] == pytest.approx(10.0, rel=1e-9)


def test_slot_work_bound_holds_each_gpu_to_its_slots():
    # four experts of one token, S = 2: GPU 0 takes two slots (2 us), so GPU 1 must run
    # the other two, 2 x 10 us. (Three slots on GPU 0 would allow 10 us.)
    assert bounds.slot_work_bound(FLOORS, np.ones((1, 4)), 2)[0] == pytest.approx(20.0, rel=1e-9)


# ---- lp_bounds: exact where small, the dual where large, skipping what it cannot raise -----
def _spy(monkeypatch, name: str) -> list:
    calls, real = [], getattr(bounds, name)

    def spy(*args, **kw):
        calls.append((args, kw))
        return real(*args, **kw)

    monkeypatch.setattr(bounds, name, spy)
    return calls


def test_lp_bounds_of_small_layers_are_the_exact_lp():
    rng = np.random.default_rng(4)
    costs, over = rng.uniform(1, 50, size=(3, 16, 4)), np.array([0.0, 1.0, 2.0, 3.0])
    exact = [bounds.lp_lower_bound(c, over, 4) for c in costs]
    assert bounds.lp_bounds(costs, over, 4) == pytest.approx(exact, rel=1e-12)
    # a known bound below the LP does not stop the solve
    assert bounds.lp_bounds(costs, over, 4, known=np.zeros(3)) == pytest.approx(exact, rel=1e-12)


def test_lp_bounds_switch_to_the_dual_past_2048_variables(monkeypatch):
    rng = np.random.default_rng(5)
    # 256 experts on 8 distinct GPUs: 256 x 8 = 2048 LP variables, still exact
    costs8, over8 = rng.uniform(1, 50, size=(1, 256, 8)), np.linspace(0, 3, 8)
    # on 16 GPUs of 9 kinds (8 pairs and one more): 256 x 9 > 2048, the dual bound
    kinds = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8])
    costs16 = rng.uniform(1, 50, size=(1, 256, 9))[:, :, kinds]
    over16 = np.linspace(0, 3, 9)[kinds]
    exact = _spy(monkeypatch, "lp_lower_bound")
    dual = _spy(monkeypatch, "lagrangian_lower_bounds")
    got8 = bounds.lp_bounds(costs8, over8, 32)
    assert len(exact) == 1 and not dual
    got16 = bounds.lp_bounds(costs16, over16, 16)
    assert len(exact) == 1 and len(dual) == 1
    monkeypatch.undo()
    assert got8[0] == pytest.approx(bounds.lp_lower_bound(costs8[0], over8, 32), rel=1e-12)
    assert got16[0] == bounds.lagrangian_lower_bounds(costs16, over16, 16)[0]


def test_layer_lower_bounds_hand_each_bound_what_the_last_proved(monkeypatch):
    from vibe.synth import synth_cluster, synth_loads

    cluster = synth_cluster(4, scenario="fleet", seed=3)
    loads = synth_loads(2, 8, 2, seed=3)
    n_e = loads.expert_tokens(12.0)  # decode: some experts get under one token
    fluid = np.array([bounds.fluid_bound(cluster, float(r.sum()), float(r.max())) for r in n_e])
    active = bounds.active_slots_bound(cluster, (n_e > 0).sum(axis=1), 2)
    slot_work = _spy(monkeypatch, "slot_work_bound")
    replica = _spy(monkeypatch, "replica_lagrangian_bounds")
    lp = _spy(monkeypatch, "lp_bounds")
    without = bounds.layer_lower_bounds(loads, cluster, 12.0, 8)
    assert np.array_equal(slot_work[0][1]["known"], np.maximum(fluid, active))
    assert not replica and len(lp) == 1 and lp[0][1]["known"] is not None
    assert np.all(without >= lp[0][1]["known"])
    # prefill: the fluid bound binds, with its slots of at most the hottest expert's tokens
    n_big = loads.expert_tokens(4096.0)
    fluid_big = [bounds.fluid_bound(cluster, float(r.sum()), float(r.max())) for r in n_big]
    bounds.layer_lower_bounds(loads, cluster, 4096.0, 8)
    assert slot_work[1][1]["known"].tolist() == fluid_big
    # with replicas: the replica bound instead of the LP
    with_replicas = bounds.layer_lower_bounds(loads, cluster, 12.0, 12)
    assert len(replica) == 1 and len(lp) == 2
    known = replica[0][1]["known"]
    assert known is not None and np.all(known >= np.maximum(fluid, bounds.active_slots_bound(
        cluster, (n_e > 0).sum(axis=1), 3)) - 1e-12) and np.all(with_replicas >= known)


# ---- the replica bound's one-dimensional helpers ---------------------------------------------
def test_interp_rows_by_hand():
    # Row 0: X = 0, 2, 2, 6 (a repeated point, as where curve points are clipped to the top)
    # with H = 10, 14, 20, 28. y = 1 sits halfway on [0, 2]: 12; y = 2 takes the first
    # segment that reaches it (left weight 0: 14); y = 4 halfway on [2, 6]: 24; past the
    # ends the weights are clipped: y = -1 gives H[0], y = 7 gives H[3].
    # Row 1: X = 0, 0, 0.5, 4 with H = 8, 9, 10, 17: y = 0 falls in the zero-width first
    # segment (left point: 8); y = 0.25 halfway on [0, 0.5]: 9.5; y = 2.25 halfway on
    # [0.5, 4]: 13.5.
    X = np.array([[0.0, 2.0, 2.0, 6.0], [0.0, 0.0, 0.5, 4.0]])
    H = np.array([[10.0, 14.0, 20.0, 28.0], [8.0, 9.0, 10.0, 17.0]])
    y = np.array([[1.0, 2.0, 4.0, -1.0, 7.0, 6.0], [0.0, 0.25, 2.25, 0.5, 4.0, 0.0]])
    with np.errstate(all="raise"):  # no division by a zero width, even one thrown away
        h, seg, a = bounds._interp_rows(X, H, y)
    assert h.tolist() == [[12.0, 14.0, 24.0, 10.0, 28.0, 28.0], [8.0, 9.5, 13.5, 10.0, 17.0, 8.0]]
    assert seg.tolist() == [[0, 0, 2, 0, 2, 2], [0, 1, 2, 1, 2, 0]]
    assert a.tolist() == [[0.5, 0.0, 0.5, 1.0, 0.0, 0.0], [1.0, 0.5, 0.5, 0.0, 0.0, 1.0]]


def test_hull_pairs_by_hand():
    # X = 0, 0.5, 2, 2: for point k every chord (i, j) with i <= k <= j, padded with (k, k);
    # W is the weight of X_i in the mix landing on X_k: (X_j - X_k) / (X_j - X_i), 1 on a
    # zero-width chord.
    X = np.array([[0.0, 0.5, 2.0, 2.0]])
    with np.errstate(all="raise"):
        I, J, W = bounds._hull_pairs(X)
    pairs = [sorted({(int(i), int(j)) for i, j in zip(I[k], J[k])}) for k in range(4)]
    assert pairs[0] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert pairs[1] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert pairs[2] == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 2), (2, 3)]
    assert pairs[3] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    weight = {(k, int(i), int(j)): float(w) for k in range(4) for i, j, w in zip(I[k], J[k], W[0, k])}
    assert weight[(1, 0, 2)] == 0.75  # 0.5 = 0.75 * 0 + 0.25 * 2
    assert weight[(1, 1, 3)] == 1.0 and weight[(1, 0, 1)] == 0.0
    assert weight[(2, 1, 2)] == 0.0 and weight[(2, 2, 3)] == 1.0 and weight[(0, 0, 0)] == 1.0
    assert weight[(2, 0, 3)] == 0.0 and weight[(1, 0, 3)] == 0.75 and weight[(0, 0, 1)] == 1.0


# FLOORS again, with 5 us of overhead on both GPUs.
FLOORS_O = Cluster.init_by_curves([10.0, 20.0], [[1.0, 3.0], [10.0, 30.0]], overhead_us=[5.0, 5.0])


def test_slot_work_bound_per_layer_with_overheads():
    # layer 0: four one-token experts, S = 2: GPU 1 runs two floors after its overhead,
    # 5 + 2 x 10 = 25. Layer 1: one expert of 5 tokens, alone on GPU 0: 5 + 1 = 6.
    n_e = np.array([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    with np.errstate(all="raise"):
        got = bounds.slot_work_bound(FLOORS_O, n_e, 2)
    assert got == pytest.approx([25.0, 6.0], rel=1e-9)
    # without overheads: 20 and 1
    assert bounds.slot_work_bound(FLOORS, n_e, 2) == pytest.approx([20.0, 1.0], rel=1e-9)


def test_slot_work_bound_starts_from_what_is_known():
    n_e = np.ones((1, 4))
    assert bounds.slot_work_bound(FLOORS, n_e, 2, known=np.array([30.0]))[0] >= 30.0
    assert bounds.slot_work_bound(FLOORS, n_e, 2, known=np.array([3.0]))[0] == pytest.approx(20.0, rel=1e-9)


@pytest.mark.parametrize("batch", [24.0, 2048.0])  # decode (some experts idle) and prefill
def test_slot_work_bound_of_many_layers_is_each_layers_own(batch):
    from vibe.synth import synth_cluster, synth_loads

    cluster = synth_cluster(4, scenario="power-cap", seed=2)
    n_e = synth_loads(5, 16, 4, seed=8).expert_tokens(batch)
    n_e[2] = 0.0  # and a layer without tokens
    together = bounds.slot_work_bound(cluster, n_e, 4)
    alone = [bounds.slot_work_bound(cluster, n_e[l:l + 1], 4)[0] for l in range(5)]
    assert together == pytest.approx(alone, rel=1e-9)
    assert together[2] == cluster.overhead_us.max()
