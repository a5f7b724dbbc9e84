"""Worked examples for the `exact` policy (vibe.policies.exact): one MILP row solved by
hand and by brute force, the per-row fallback to vibe's plan and its tie rule, the time
limit split over the rows, the HiGHS call, and the progress bar's place."""

from __future__ import annotations

import io
import itertools
import sys
import warnings

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from vibe.policies import PlacementOptions, place
from vibe.policies import exact as ex
from vibe.policies._timebalance import solve_rows
from vibe.synth.cluster import synth_cluster
from vibe.synth.loads import synth_loads


# ---- one row -----------------------------------------------------------------------------
def test_milp_row_two_scenarios_worked_example():
    """2 GPUs x 1 slot, experts 0 and 1, overheads (1, 0); scenario weights 0.7, 0.3.
    costs[k][e] = time of expert e on GPUs (0, 1): k=0: e0 (2, 4), e1 (3, 3); k=1:
    e0 (1, 1), e1 (10, 2). e0 on GPU 0, e1 on GPU 1: k=0: (1+2, 3) -> 3, k=1: (1+1, 2)
    -> 2; 0.7 x 3 + 0.3 x 2 = 2.7. The other way: k=0 (1+3, 4) -> 4, k=1 (1+10, 1) ->
    11: 6.1. HiGHS proves 2.7 optimal."""
    costs = np.array([[[2.0, 4.0], [3.0, 3.0]], [[1.0, 1.0], [10.0, 2.0]]])
    x, optimal, bound = ex.milp_row(costs, np.array([0.7, 0.3]), np.array([1, 1]), np.array([1.0, 0.0]), 1, 10.0)
    assert x.tolist() == [[1, 0], [0, 1]] and optimal is True
    assert bound == pytest.approx(2.7, rel=1e-6)


def brute_force_row(costs, weights, count, overhead, S):
    """Best weighted makespan over every 0/1 x [E, G] with row sums `count`, column sums S."""
    K, E, G = costs.shape
    best = np.inf
    for choice in itertools.product(*[list(itertools.combinations(range(G), int(c))) for c in count]):
        x = np.zeros((E, G))
        for e, gpus in enumerate(choice):
            x[e, list(gpus)] = 1
        if np.all(x.sum(axis=0) == S):
            best = min(best, float(weights @ (overhead + np.einsum("keg,eg->kg", costs, x)).max(axis=1)))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_milp_row_matches_brute_force_with_replicas_and_two_scenarios(seed):
    """3 GPUs x 2 slots, 4 experts with replica counts (2, 1, 2, 1), two scenarios."""
    rng = np.random.default_rng(seed)
    costs = rng.uniform(1, 10, size=(2, 4, 3))
    weights, count, overhead = np.array([0.6, 0.4]), np.array([2, 1, 2, 1]), rng.uniform(0, 3, size=3)
    x, optimal, bound = ex.milp_row(costs, weights, count, overhead, 2, 10.0)
    assert x.sum(axis=1).tolist() == count.tolist() and x.sum(axis=0).tolist() == [2, 2, 2]
    assert set(np.unique(x)) <= {0, 1}
    value = float(weights @ (overhead + np.einsum("keg,eg->kg", costs, x)).max(axis=1))
    best = brute_force_row(costs, weights, count, overhead, 2)
    assert value == pytest.approx(best, rel=1e-6) and optimal
    assert bound == pytest.approx(best, rel=1e-4)


def test_milp_row_calls_highs_quietly_with_its_time_limit_floored_at_10_ms(monkeypatch, capfd):
    import scipy.optimize

    seen = []
    real = scipy.optimize.milp

    def spy(*args, **kwargs):
        seen.append(dict(kwargs["options"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "milp", spy)
    costs = np.array([[[2.0, 4.0], [3.0, 3.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. an option HiGHS does not know
        for limit in (0.0, -1.0, 3.0):
            ex.milp_row(costs, np.array([1.0]), np.array([1, 1]), np.zeros(2), 1, limit)
    assert seen == [{"time_limit": 0.01, "disp": False}, {"time_limit": 0.01, "disp": False},
                    {"time_limit": 3.0, "disp": False}]
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no solver log


@pytest.mark.parametrize("dual_bound", [None, np.nan, -np.inf, np.inf])
def test_milp_row_without_a_solution_or_a_finite_bound(monkeypatch, dual_bound):
    """HiGHS out of time before any solution: no x, not optimal, and a bound of -inf (none)."""
    import scipy.optimize

    monkeypatch.setattr(scipy.optimize, "milp",
                        lambda *a, **k: OptimizeResult(x=None, status=1, mip_dual_bound=dual_bound))
    costs = np.array([[[2.0, 4.0], [3.0, 3.0]]])
    assert ex.milp_row(costs, np.array([1.0]), np.array([1, 1]), np.zeros(2), 1, 1.0) == (None, False, -np.inf)


# ---- the rows together: fallback, tie rule, time split --------------------------------------
def one_row_instance():
    """K=1, one row, 3 experts on 2 GPUs x 2 slots, expert 0 twice (items [0, 0, 1, 2]).
    Expert 0 costs 1 per replica anywhere; expert 1 costs 10 on GPU 0, 1 on GPU 1; expert 2
    the reverse. Best: GPU 0 {0, 2}, GPU 1 {0, 1}: 2 and 2, makespan 2 (any other layout
    puts a 10 somewhere)."""
    costs = np.array([[[[1.0, 1.0], [10.0, 1.0], [1.0, 10.0]]]])  # [K, X, E, G]
    return costs, np.array([1.0]), np.array([[0, 0, 1, 2]]), np.zeros((1, 2)), 2


def test_the_milp_solution_is_laid_out_item_by_item_in_expert_order():
    """x = [[1, 1], [0, 1], [1, 0]]: expert 0's replicas on GPUs 0 and 1, expert 1 on 1,
    expert 2 on 0: item GPUs [0, 1, 1, 0]; proven optimal, bound 2."""
    status, bounds = [], []
    out = ex._solve_exact(10.0, 0, status, bounds)(*one_row_instance())
    assert out.tolist() == [[0, 1, 1, 0]]
    assert status == [True] and bounds == [pytest.approx(2.0)]


def test_a_tie_with_vibes_row_goes_to_the_milp_and_a_worse_milp_row_is_not_taken(monkeypatch):
    """Two identical GPUs, 1 slot each, two experts of cost 1: both layouts tie at 1.
    The MILP's layout is taken on a tie (the documented rule: the MILP's when it finds
    one, vibe's only when the MILP's is worse)."""
    costs, w, items, overhead, S = np.ones((1, 1, 2, 2)), np.array([1.0]), np.array([[0, 1]]), np.zeros((1, 2)), 1
    heuristic = solve_rows(costs, w, items, overhead, S)
    other = 1 - heuristic[0]  # the mirrored layout, as an x [E, G]
    x = np.zeros((2, 2), dtype=np.int64)
    x[[0, 1], other] = 1
    monkeypatch.setattr(ex, "milp_row", lambda *a: (x, False, 1.0))
    assert ex._solve_exact(10.0, 0, [], [])(costs, w, items, overhead, S).tolist() == [other.tolist()]
    # now the mirrored layout costs more: expert 0 at 5 on its GPU there
    worse = costs.copy()
    worse[0, 0, 0, other[0]] = 5.0
    heuristic = solve_rows(worse, w, items, overhead, S)
    assert heuristic[0].tolist() != other.tolist()
    assert ex._solve_exact(10.0, 0, [], [])(worse, w, items, overhead, S).tolist() == heuristic.tolist()


def test_each_row_gets_an_equal_share_of_the_time_left(monkeypatch):
    """Limit 10 s over two rows: the first MILP gets (10 - ~0) / 2, the second all that is
    left (the first took no time here)."""
    limits = []

    def no_solution(costs, weights, count, overhead, S, time_limit_s):
        limits.append(time_limit_s)
        return None, False, -np.inf

    monkeypatch.setattr(ex, "milp_row", no_solution)
    costs, w, items, overhead, S = one_row_instance()
    costs2, items2, overhead2 = np.concatenate([costs, costs], axis=1), np.concatenate([items, items]), \
        np.concatenate([overhead, overhead])
    status, bounds = [], []
    out = ex._solve_exact(10.0, 0, status, bounds)(costs2, w, items2, overhead2, S)
    assert limits == [pytest.approx(5.0, abs=0.2), pytest.approx(10.0, abs=0.2)]
    assert out.tolist() == solve_rows(costs2, w, items2, overhead2, S).tolist()  # vibe's rows
    assert status == [False, False] and bounds == [-np.inf, -np.inf]


def small_case():
    loads = synth_loads(2, 6, 2, seed=0)
    cluster = synth_cluster(2, scenario="fleet", seed=0)
    return loads, cluster, PlacementOptions(batch_tokens=(8192,), time_limit_s=10)


@pytest.mark.parametrize("rows, want", [
    ([(True, 1.5), (False, 2.5)], {"optimal_rows": 1, "rows": 2, "milp_bound_us": 4.0}),
    ([(True, 1.5), (True, -np.inf)], {"optimal_rows": 2, "rows": 2, "milp_bound_us": None}),
])
def test_the_plans_extra_counts_optimal_rows_and_sums_their_bounds(monkeypatch, rows, want):
    """Without any MILP solution exact's plan is vibe's, and its extra 'exact' says how
    many rows were proven optimal and sums the bounds (None when a row has none)."""
    answers = iter(rows)

    def fake(*a):
        optimal, bound = next(answers)
        return None, optimal, bound

    monkeypatch.setattr(ex, "milp_row", fake)
    loads, cluster, opts = small_case()
    p = place(loads, cluster, "exact", opts)
    assert p.extra["exact"] == want and p.policy == "exact"
    assert np.array_equal(p.physical_to_logical_map, place(loads, cluster, "vibe", opts).physical_to_logical_map)


# ---- the progress bar --------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_with_streams(monkeypatch, stderr):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", stderr)
    loads, cluster, opts = small_case()
    place(loads, cluster, "exact", opts)
    monkeypatch.undo()
    return out.getvalue(), stderr.getvalue()


def test_the_progress_bar_goes_to_a_terminal_stderr_and_is_erased_when_done(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out, err = run_with_streams(monkeypatch, FakeTerminal())
    assert out == ""  # stdout stays clean for pipes
    assert "\x1b[2Kexact: MILP per layer " in err and "100%" in err  # its title at the line's start; 2 rows of 2
    assert err.endswith("\x1b[1A\x1b[2K")  # transient: the bar's line is erased at the end


def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    assert run_with_streams(monkeypatch, io.StringIO()) == ("", "")
