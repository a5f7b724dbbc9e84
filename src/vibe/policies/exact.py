"""`exact`: the same placement problem as `vibe`, solved as a MILP with HiGHS
(scipy.optimize.milp) under a time limit. Meant for small instances and for measuring
how far `vibe` is from optimal.

Per row (layer): binary x[e, g] = expert e has a replica on GPU g, continuous z_k.
    sum_g x[e, g] = r_e            (replica counts: 1 each without --redundant)
    sum_e x[e, g] = S              (every GPU fills its S slots)
    o_g + sum_e c_k[e, g] x[e, g] <= z_k   for every scenario k and GPU g
    minimize sum_k w_k z_k
With --redundant the replica counts r_e are fixed by the same time-based rule as `vibe`
(the MILP is exact for the assignment given those counts). The solution of each layer is
the MILP's when it finds one within its share of --time-limit, else vibe's; the best
of the two is kept either way. The placement's extra 'exact' says how many rows HiGHS
proved optimal and the sum of its per-row lower bounds (the weighted MoE time of any
plan with these replica counts is at least that; exact for flat rows, i.e. without
--num-groups).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
from rich.console import Console
from rich.progress import Progress

from vibe.policies._timebalance import gpu_times, objective, solve_placement, solve_rows
from vibe.policies.base import register_policy


def milp_row(costs: np.ndarray, weights: np.ndarray, count: np.ndarray, overhead: np.ndarray,
             slots_per_gpu: int, time_limit_s: float) -> tuple[np.ndarray | None, bool, float]:
    """One row. costs: [K, E, G]; count: [E] replicas; overhead: [G].

    Returns (x [E, G] 0/1 or None when no solution was found, proven_optimal, HiGHS's
    lower bound on the row's weighted makespan (us), -inf when it has none)."""
    import scipy.sparse as sp  # imported here: keeps `vibe` start-up fast
    from scipy.optimize import Bounds, LinearConstraint, milp

    K, E, G = costs.shape
    nx = E * G
    idx = np.arange(nx).reshape(E, G)
    ones = np.ones(nx)
    n = nx + K
    per_expert = sp.csr_matrix((ones, (np.repeat(np.arange(E), G), idx.ravel())), shape=(E, n))
    per_gpu = sp.csr_matrix((ones, (np.tile(np.arange(G), E), idx.ravel())), shape=(G, n))
    # time rows: one per (scenario, GPU): sum_e c x - z_k <= -o_g
    rows = np.concatenate([np.repeat(np.arange(K * G), E), np.arange(K * G)])
    cols = np.concatenate([np.tile(idx.T.ravel(), K), nx + np.repeat(np.arange(K), G)])
    vals = np.concatenate([costs.transpose(0, 2, 1).ravel(), -np.ones(K * G)])
    timing = sp.csr_matrix((vals, (rows, cols)), shape=(K * G, n))
    constraints = [LinearConstraint(per_expert, count, count),
                   LinearConstraint(per_gpu, slots_per_gpu, slots_per_gpu),
                   LinearConstraint(timing, -np.inf, -np.tile(overhead, K))]
    c = np.concatenate([np.zeros(nx), weights])
    integrality = np.concatenate([np.ones(nx), np.zeros(K)])
    bounds = Bounds(np.zeros(n), np.concatenate([np.ones(nx), np.full(K, np.inf)]))
    res = milp(c, constraints=constraints, integrality=integrality, bounds=bounds,
               options={"time_limit": max(time_limit_s, 0.01), "disp": False})
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) if bound is not None and np.isfinite(bound) else -np.inf
    if res.x is None:
        return None, False, bound
    return np.round(res.x[:nx]).reshape(E, G).astype(np.int64), res.status == 0, bound


def _solve_exact(time_limit_s: float, seed: int, status: list, bounds: list):
    """A `solve` callback for solve_placement: MILP per row, vibe as fallback and guard."""

    def solve(costs, weights, items, overhead, S):
        heuristic = solve_rows(costs, weights, items, overhead, S, seed=seed)
        f_heur = objective(gpu_times(costs, items, heuristic, overhead), weights)
        K, X, E, G = costs.shape
        out = heuristic.copy()
        deadline = time.monotonic() + time_limit_s
        with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("exact: MILP per layer", total=X)
            for x in range(X):
                left = deadline - time.monotonic()
                count = np.bincount(items[x], minlength=E)
                sol, optimal, bound = milp_row(costs[:, x], weights, count, overhead[x], S, left / (X - x))
                bounds.append(bound)
                if sol is not None:
                    # items list each expert's replicas consecutively, experts in id order
                    trial = np.concatenate([np.nonzero(sol[e])[0] for e in range(E)])
                    f = objective(gpu_times(costs[:, x:x + 1], items[x:x + 1], trial[None], overhead[x:x + 1]),
                                  weights)[0]
                    if f <= f_heur[x]:
                        out[x] = trial
                status.append(bool(optimal))
                bar.advance(task)
        return out

    return solve


@register_policy("exact")
def exact(loads, cluster, options):
    status: list[bool] = []
    bounds: list[float] = []
    placement, _, _ = solve_placement(loads, cluster, options, "exact",
                                      _solve_exact(options.time_limit_s, options.seed, status, bounds))
    # the sum of the rows' MILP bounds bounds the weighted MoE time (flat rows = layers)
    bound = float(sum(bounds)) if bounds and np.isfinite(sum(bounds)) else None
    extra = dict(placement.extra, exact={"optimal_rows": int(sum(status)), "rows": len(status),
                                         "milp_bound_us": bound})
    return dataclasses.replace(placement, extra=extra)
