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
