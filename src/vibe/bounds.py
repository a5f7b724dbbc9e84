"""Lower bounds on a layer's time under the cost model of `vibe.cost`.

`layer_lower_bounds(loads, cluster, B, num_slots) -> [L]`: for every layer a time no
placement with `num_slots` slots per layer can beat, the maximum of the bounds that
apply (docs/cost-model.md proves each one). Every plan gets the fluid, active-slots and
slot-work bounds; plans with replicas also the replica-aware Lagrangian bound (experts
cut into pieces priced by GPU weights and slot prices); plans without replicas the LP
relaxation of the assignment (HiGHS, or its Lagrangian dual on big layers), the
hottest-expert and the cheapest-slots bounds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vibe.cost import expert_cost_matrix, expert_time_us
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads

# --------------------------------------------------------------------
# HiGHS solves the LP exactly while E x (distinct GPU kinds) stays below this many
# variables (ESFT: 64 experts x 16 GPUs); bigger layers use the Lagrangian dual below.
LP_EXACT_MAX_VARS = 2048
# Elements of [L, E, kinds] the replica bound's multiplier ascent may sweep in all.
REPLICA_ASCENT_WORK = 1e7


def gpu_kinds(costs: np.ndarray, overhead_us: np.ndarray) -> np.ndarray:
    """[G] kind of each GPU: GPUs with identical cost columns and overheads share one.

    costs: [E, G]. Interchangeable GPUs let the LP merge their columns (see lp_lower_bound).
    """
    cols = np.vstack([np.asarray(costs, dtype=np.float64), np.asarray(overhead_us, dtype=np.float64)[None, :]])
    return np.unique(cols.T, axis=0, return_inverse=True)[1].ravel()


def lp_lower_bound(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int) -> float:
    """LP relaxation of one layer's no-replica assignment, solved exactly with HiGHS.

    costs: [E, G] time of expert e on GPU g; overhead_us: [G]. Variables x[e, g] in
    [0, 1] with sum_g x = 1 per expert, sum_e x = slots_per_gpu per GPU, and
    overhead[g] + sum_e costs[e, g] x[e, g] <= z; minimise z.

    GPUs of one kind (identical columns) are merged: the LP is convex and symmetric in
    them, so some optimum splits every expert evenly over a kind, and y[e, k] = sum of
    x[e, g] over the n_k GPUs of kind k gives an exact LP with E x K variables.
    """
    costs = np.asarray(costs, dtype=np.float64)
    over = np.asarray(overhead_us, dtype=np.float64)
    kind = gpu_kinds(costs, over)
    K = int(kind.max()) + 1
    size = np.bincount(kind, minlength=K).astype(np.float64)  # [K] GPUs per kind
    first = np.unique(kind, return_index=True)[1]
    c, o = costs[:, first] / size, over[first]  # [E, K] cost of y[e, k]; [K]
    E = c.shape[0]
    if K == 1:  # every GPU alike: y[e, 0] = 1
        return float(o[0] + c.sum())
    nx = E * K
    idx = np.arange(nx).reshape(E, K)
    ones = np.ones(nx)
    import scipy.sparse as sp  # deferred: scipy costs ~1 s of CLI start-up
    from scipy.optimize import linprog

    a_eq = sp.vstack([
        sp.csr_matrix((ones, (np.repeat(np.arange(E), K), idx.ravel())), shape=(E, nx + 1)),
        sp.csr_matrix((ones, (np.tile(np.arange(K), E), idx.ravel())), shape=(K, nx + 1)),
    ])
    b_eq = np.concatenate([np.ones(E), float(slots_per_gpu) * size])
    rows = np.concatenate([np.tile(np.arange(K), E), np.arange(K)])
    cols = np.concatenate([idx.ravel(), np.full(K, nx)])
    vals = np.concatenate([c.ravel(), -np.ones(K)])
    a_ub = sp.csr_matrix((vals, (rows, cols)), shape=(K, nx + 1))
    obj = np.zeros(nx + 1)
    obj[-1] = 1.0
    res = linprog(obj, A_ub=a_ub, b_ub=-o, A_eq=a_eq, b_eq=b_eq,
                  bounds=[(0, 1)] * nx + [(0, None)], method="highs")
    if res.status != 0:
        raise VibeError(f"lower-bound LP failed: {res.message}")
    return float(res.x[-1])


def lagrangian_value(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int,
                     lam: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Dual value of the LP of lp_lower_bound at multipliers (lam, v): a valid bound.

    costs: [L, E, G]; overhead_us: [G]; lam: [L, G] >= 0 summing to 1; v: [L, G] free.
    Returns [L]: sum_g lam_g o_g + sum_e min_g (lam_g c[e,g] - v_g) + S sum_g v_g.
    Why it is a bound: for any feasible x, z >= sum_g lam_g (o_g + sum_e c x) and,
    using sum_g x[e, g] = 1 and sum_e x[e, g] = S, the right side is >= this value.
    """
    a = lam[:, None, :] * costs - v[:, None, :]
    return (lam * overhead_us).sum(-1) + a.min(-1).sum(-1) + slots_per_gpu * v.sum(-1)


def lagrangian_lower_bounds(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int,
                            temperatures: Sequence[float] = (3e-2, 3e-3, 3e-4),
                            max_iter: int = 100) -> np.ndarray:
    """The LP bound of lp_lower_bound for many large layers at once, from its dual.

    costs: [L, E, G]; overhead_us: [G] -> [L] bounds (us), each <= that layer's LP value.
    The dual max over (lam, v) of lagrangian_value equals the LP value. We climb it with
    L-BFGS on a smoothed copy (min_g replaced by a soft-min at falling temperatures,
    lam = softmax(alpha)), all layers together, then score the multipliers found with
    the exact lagrangian_value, so the result is a valid bound whatever the optimiser
    did; it is typically within 0.1% of the LP value.
    """
    costs = np.asarray(costs, dtype=np.float64)
    over = np.asarray(overhead_us, dtype=np.float64)
    L, E, G = costs.shape
    S = float(slots_per_gpu)
    # Work in units of each layer's mean GPU time, so one temperature fits all layers.
    scale = over.mean() + costs.sum(axis=1).mean(axis=1) / G  # [L]
    scale = np.where(scale > 0, scale, 1.0)
    cn = (costs / scale[:, None, None]).astype(np.float32)  # float32: the hot loop is memory-bound
    on = over[None, :] / scale[:, None]  # [L, G]

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # v in units of 1/E: a[e, g] moves as much per unit of alpha_g as of v_g.
        alpha, v = x[: L * G].reshape(L, G), x[L * G:].reshape(L, G) / E
        lam = np.exp(alpha - alpha.max(axis=1, keepdims=True))
        return lam / lam.sum(axis=1, keepdims=True), v

    def neg_smoothed(x: np.ndarray, tau: float) -> tuple[float, np.ndarray]:
        lam, v = unpack(x)
        w = np.multiply(cn, lam[:, None, :].astype(np.float32))  # [L, E, G] lam_g c[e, g] - v_g
        w -= v[:, None, :].astype(np.float32)
        m = w.min(axis=2, keepdims=True)
        np.subtract(m, w, out=w)  # in place: this array is the whole cost of an evaluation
        w *= np.float32(1.0 / tau)
        np.exp(w, out=w)
        tot = w.sum(axis=2, dtype=np.float64)  # [L, E]
        softmin = m[..., 0].astype(np.float64) - tau * np.log(tot)  # [L, E] <= min_g
        f = (lam * on).sum() + softmin.sum() + S * v.sum()
        r = (1.0 / tot).astype(np.float32)[:, None, :]  # [L, 1, E]: soft arg-min = w * r
        d_v = S - np.matmul(r, w)[:, 0, :].astype(np.float64)  # [L, G]
        w *= cn
        d_lam = on + np.matmul(r, w)[:, 0, :].astype(np.float64)
        d_alpha = lam * (d_lam - (lam * d_lam).sum(axis=1, keepdims=True))
        return -f, -np.concatenate([d_alpha.ravel(), d_v.ravel() / E])

    from scipy.optimize import minimize  # deferred: scipy costs ~1 s of CLI start-up

    x = np.zeros(2 * L * G)
    for t in temperatures:
        # Per expert, lam_g c[e, g] is about 1/E in these units: scale the soft-min to it.
        res = minimize(neg_smoothed, x, args=(t / E,), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "ftol": 1e-7})
        x = res.x
    lam, v = unpack(x)
    found = lagrangian_value(costs, over, slots_per_gpu, lam, v * scale[:, None])
    # The dual at the vertices lam = 1_g, where the smoothed climb is slowest.
    return np.maximum(found, cheapest_slots_bound(costs, over, slots_per_gpu))


def cheapest_slots_bound(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int) -> np.ndarray:
    """Without replicas every GPU holds S experts, at best its S cheapest: what binds in
    memory-bound decode. costs: [..., E, G] -> [...] bound in us."""
    S = slots_per_gpu
    cheapest = np.partition(costs, S - 1, axis=-2)[..., :S, :].sum(axis=-2) if S < costs.shape[-2] else costs.sum(axis=-2)
    return (overhead_us + cheapest).max(axis=-1)


def hottest_expert_bound(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int) -> float:
    """Without replicas the hottest expert sits whole on some GPU beside S-1 others, at
    best the S-1 cheapest ones there. costs: [E, G] -> a bound in us."""
    E, G = costs.shape
    hot = int(np.argmax(costs.max(axis=1)))
    others = np.delete(costs, hot, axis=0)  # [E-1, G]
    k = slots_per_gpu - 1
    cheapest = np.sort(others, axis=0)[:k].sum(axis=0) if k > 0 else np.zeros(G)
    return float(np.min(overhead_us + costs[hot] + cheapest))


def fluid_bound(cluster: Cluster, total_tokens: float, max_slot_tokens: float | None = None) -> float:
    """Bound for any plan, replicas included: tokens split freely over GPUs, each GPU g
    processing tokens at its best amortised rate rho_g = min_{0<n<=M} t_g(n) / n, where
    M = max_slot_tokens (a slot holds one expert's tokens: M = the hottest expert's n_e;
    default N). Returns the smallest z with sum_g max(0, z - o_g) / rho_g >= N (and
    z >= max o_g)."""
    over = cluster.overhead_us
    if total_tokens <= 0:
        return float(over.max())
    top = float(total_tokens if max_slot_tokens is None else min(max_slot_tokens, total_tokens))
    rho = amortised_rates(cluster, np.array([top]))  # [1, G] us per token
    return float(water_level(over, rho, np.array([float(total_tokens)]))[0])


def amortised_rates(cluster: Cluster, max_tokens: np.ndarray, gpus: np.ndarray | None = None) -> np.ndarray:
    """M [...] -> [..., len(gpus)] rho_g(M) = min_{0<n<=M} t_g(n) / n (us per token), for
    `gpus` (default all).

    t_g is piecewise linear on the latency grid (constant below its first point,
    extrapolated past its last), so t / n is monotone on every segment and its minimum
    over (0, M] is at a grid point below M or at M itself."""
    grid, us = cluster.latency_table()
    gpus = np.arange(cluster.num_gpus) if gpus is None else np.asarray(gpus, dtype=np.int64)
    pos = grid > 0
    per_token = np.minimum.accumulate(us[gpus][:, pos] / grid[None, pos], axis=1).T  # [K, g] prefix minima
    M = np.maximum(np.asarray(max_tokens, dtype=np.float64), 1e-9)
    k = np.searchsorted(grid[pos], M, side="right") - 1  # [...] last grid point <= M
    at_m = expert_time_us(cluster, gpus, M[..., None]) / M[..., None]
    below = np.where(k[..., None] >= 0, per_token[np.maximum(k, 0)], np.inf)
    return np.minimum(at_m, below)


def water_level(offset: np.ndarray, rate: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Smallest z per row with sum_g max(0, z - offset[g]) / rate[r, g] >= total[r].

    offset [G] (us), rate [R, G] (us per token, >= 0), total [R] -> [R] (us), at least
    max(offset). The sum is piecewise linear and increasing in z: the answer lies on
    the segment where adding the next GPU (by offset) would start above it. A row with
    a zero rate (a GPU that absorbs any work above its offset) gets max(offset)."""
    rate = np.asarray(rate, dtype=np.float64)
    free = (rate <= 0).any(axis=1)
    order = np.argsort(offset)
    o, r = offset[order], np.where(free[:, None], 1.0, rate)[:, order]
    inv_cum = np.cumsum(1.0 / r, axis=1)
    off_cum = np.cumsum(o[None, :] / r, axis=1)
    z = (np.asarray(total, dtype=np.float64)[:, None] + off_cum) / inv_cum  # [R, G]
    nxt = np.append(o[1:], np.inf)
    k = np.argmax(z <= nxt[None, :], axis=1)  # first segment that holds (the last always does)
    return np.where(free, o.max(), np.maximum(z[np.arange(len(k)), k], o.max()))


def active_slots_bound(cluster: Cluster, active_experts: np.ndarray, slots_per_gpu: int) -> np.ndarray:
    """Bound for any plan, replicas included: each of the A experts that receive tokens
    needs a slot with tokens, a GPU holds at most S slots, and a slot with tokens costs at
    least the curve's floor f_g = t_g(0+). active_experts: [L] A per layer -> [L] the
    smallest z with sum_g min(S, floor((z - o_g) / f_g)) >= A (us).
    """
    _, us = cluster.latency_table()
    floor_us, over = us[:, 0], cluster.overhead_us  # [G]
    S = slots_per_gpu
    # The answer is one of the G*S values o_g + a f_g (a = 1..S), or max o_g when A = 0.
    cand = np.sort((over[:, None] + np.arange(1, S + 1)[None, :] * floor_us[:, None]).ravel())  # [C]
    fits = np.floor((cand[:, None] - over[None, :]) / floor_us[None, :] * (1 + 1e-12))  # [C, G]
    slots = np.clip(fits, 0, S).sum(axis=1)  # [C] slots with tokens affordable by time cand
    need = np.asarray(active_experts)
    first = np.minimum(np.searchsorted(slots, need, side="left"), len(cand) - 1)
    return np.where(need > 0, cand[first], over.max()).astype(np.float64)


def convex_minorant_lines(cluster: Cluster, top_tokens: float) -> tuple[np.ndarray, np.ndarray]:
    """The lower convex hull of every GPU's curve on (0, top_tokens], as lines whose max is
    the hull: (intercepts [G, J], slopes [G, J]), padded by repeating the last line.

    The hull starts at (0, t_g(0+)): a slot with any token pays at least the floor.
    """
    grid, us = cluster.latency_table()
    G = cluster.num_gpus
    n = np.concatenate([[0.0], grid[grid < top_tokens], [float(top_tokens)]])  # [Q]
    t = np.concatenate([us[:, :1], expert_time_us(cluster, np.arange(G)[:, None], n[None, 1:])], axis=1)  # [G, Q]
    lines = []
    for tg in t:
        hull = [0]  # monotone chain: drop a point that lies on or above the chord of its neighbours
        for j in range(1, len(n)):
            while len(hull) >= 2 and ((tg[hull[-1]] - tg[hull[-2]]) * (n[j] - n[hull[-2]])
                                      >= (tg[j] - tg[hull[-2]]) * (n[hull[-1]] - n[hull[-2]])):
                hull.pop()
            hull.append(j)
        i, j = np.array(hull[:-1]), np.array(hull[1:])
        slope = (tg[j] - tg[i]) / (n[j] - n[i])
        lines.append((tg[i] - slope * n[i], slope))
    J = max(len(s) for _, s in lines)
    icpt = np.array([np.pad(c, (0, J - len(c)), mode="edge") for c, _ in lines])
    slope = np.array([np.pad(s, (0, J - len(s)), mode="edge") for _, s in lines])
    return icpt, slope


def slot_work_bound(cluster: Cluster, expert_tokens: np.ndarray, slots_per_gpu: int,
                    known: np.ndarray | None = None, steps: int = 40) -> np.ndarray:
    """Bound for any plan, replicas included, that counts both the floors and the work.

    expert_tokens: [L, E] n_e -> [L] bound (us). GPU g runs a_g <= S slots with tokens
    (together at least A = the experts with tokens), each slot at most M = max_e n_e
    tokens, and sum_g N_g = N tokens. With h_g the convex hull of t_g on (0, M] (below
    the curve), Jensen gives T_g >= o_g + a_g h_g(N_g / a_g). For a time z, a GPU with a
    slots can take at most cap_g(a) = min(a M, a h_g^-1((z - o_g) / a)) tokens, concave in
    a; z is reachable only if some a_g with sum >= A give sum_g cap_g(a_g) >= N. The bound
    is the smallest such z, by bisection (all layers at once). It implies the fluid and
    active-slots bounds. known: [L] bounds already proven, to start from.
    """
    n_e = np.asarray(expert_tokens, dtype=np.float64)
    L = n_e.shape[0]
    over = cluster.overhead_us
    N, M, A = n_e.sum(axis=1), n_e.max(axis=1), (n_e > 0).sum(axis=1)
    icpt, slope = convex_minorant_lines(cluster, max(float(M.max()), 1.0))  # [G, J]
    floor_us = cluster.latency_table()[1][:, 0]  # [G]
    a = np.arange(1, slots_per_gpu + 1, dtype=np.float64)  # [S]
    rising = slope > 0
    safe_slope = np.where(rising, slope, 1.0)

    def placeable_tokens(z: np.ndarray) -> np.ndarray:
        """[L] most tokens the GPUs can take within time z using >= A slots with tokens."""
        budget = (z[:, None, None] - over[None, :, None]) / a  # [L, G, S] per-slot time
        inv = np.where(rising[None, :, None, :], (budget[..., None] - icpt[None, :, None, :])
                       / safe_slope[None, :, None, :], np.inf).min(axis=-1)  # [L, G, S] h^-1
        fits = budget >= floor_us[None, :, None] * (1 - 1e-12)  # erring towards "fits" keeps it a bound
        cap = np.where(fits, np.minimum(M[:, None, None], inv) * a, -np.inf)
        prev = np.concatenate([np.zeros((L, cap.shape[1], 1)), cap[..., :-1]], axis=2)
        with np.errstate(invalid="ignore"):
            gain = np.where(np.isfinite(prev), cap - prev, -np.inf)  # marginal tokens of one more slot
        gain = -np.sort(-gain.reshape(L, -1), axis=1)  # [L, G*S] largest first
        positive = np.where(gain > 0, gain, 0.0).sum(axis=1)
        first_a = np.cumsum(gain, axis=1)[np.arange(L), np.maximum(A, 1) - 1]  # -inf: too few slots
        return np.where((gain > 0).sum(axis=1) >= A, positive, first_a)

    lo = np.full(L, over.max()) if known is None else np.maximum(known, over.max())
    hi = lo * 2 + 1.0
    for _ in range(64):  # grow hi until every layer is feasible there
        bad = ~(placeable_tokens(hi) >= N)
        if not bad.any():
            break
        hi = np.where(bad, hi * 2, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = placeable_tokens(mid) >= N * (1 - 1e-12)  # erring towards "feasible" keeps it a bound
        lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
    return np.where(A > 0, lo, over.max())


# ---- the replica-aware Lagrangian bound ----------------------------------------------
def _piece_points(cluster: Cluster, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points where a piece's cost can bend on (0, top]: X [L, Q] (0, the curve points
    below top, top; points past top are clipped to it) and t [L, Q, G] (t_g(0+) at 0).

    top: [L] the largest piece a layer can have. Between consecutive points every curve
    is linear, so lam_g t_g + mu_g is too and its minimum over g is concave there.
    """
    grid, us = cluster.latency_table()
    L, G = top.shape[0], cluster.num_gpus
    X = np.concatenate([np.zeros((L, 1)), np.minimum(grid[None, :], top[:, None]), top[:, None]], axis=1)
    t = expert_time_us(cluster, np.arange(G)[None, None, :], X[:, :, None])  # [L, Q, G]
    t[:, 0, :] = us[None, :, 0]  # the floor: a piece with any token pays at least t_g(0+)
    return X, t


def _hull_pairs(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chords that can hold the lower convex hull above each point of X [L, Q].

    Returns I, J [Q, C] point indices (i <= k <= j, padded with (k, k)) and W [L, Q, C]
    the weight of point i in the combination that lands on X_k. In one dimension the
    convex minorant at x is the lowest chord over x, so hull_k = min_c (W phi_i + (1-W) phi_j).
    """
    Q = X.shape[1]
    pairs = [[(i, j) for i in range(k + 1) for j in range(k, Q)] for k in range(Q)]
    C = max(len(p) for p in pairs)
    I = np.array([[i for i, _ in p] + [k] * (C - len(p)) for k, p in enumerate(pairs)])
    J = np.array([[j for _, j in p] + [k] * (C - len(p)) for k, p in enumerate(pairs)])
    xi, xj, xk = X[:, I], X[:, J], X[:, :, None]
    width = xj - xi
    W = np.where(width > 0, (xj - xk) / np.where(width > 0, width, 1.0), 1.0)
    return I, J, W


def _interp_rows(X: np.ndarray, H: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per layer linear interpolation of H [L, Q] (on the sorted X [L, Q]) at y [L, K]:
    (values [L, K], left point index [L, K], weight of the left point [L, K])."""
    Q = X.shape[1]
    seg = np.clip((X[:, None, 1:-1] < y[..., None]).sum(-1), 0, Q - 2)  # [L, K]
    x0, x1 = np.take_along_axis(X, seg, 1), np.take_along_axis(X, seg + 1, 1)
    width = x1 - x0
    a = np.where(width > 0, (x1 - y) / np.where(width > 0, width, 1.0), 1.0)  # weight of x0
    a = np.clip(a, 0.0, 1.0)
    h = a * np.take_along_axis(H, seg, 1) + (1 - a) * np.take_along_axis(H, seg + 1, 1)
    return h, seg, a


def replica_lagrangian_value(costs: np.ndarray, n_e: np.ndarray, X: np.ndarray, t_pts: np.ndarray,
                             overhead_us: np.ndarray, slots_per_gpu: int, lam: np.ndarray, mu: np.ndarray,
                             top: np.ndarray | None = None, size: np.ndarray | None = None,
                             with_subgradient: bool = False, tau: float = 1e-3,
                             phi_n: np.ndarray | None = None, with_pieces: bool = False,
                             usable: np.ndarray | None = None):
    """A lower bound on any plan's layer time (replicas and replica weights included)
    for GPU weights lam [L, K] (>= 0, sum_k size_k lam_k = 1) and slot prices mu [L, K]
    (>= 0), where the K columns are GPU kinds of size [K] identical GPUs (default: one
    column per GPU) that share their multipliers.

    costs: [L, E, K] t_k(n_e); n_e: [L, E]; X [L, Q], t_pts [L, Q, K] from _piece_points
    on (0, D] with D >= every piece's size; top: [L] that D when it is below n_e for some
    expert (the makespan-z restriction of replica_lagrangian_bounds): expert e then needs
    at least ceil(n_e / D) pieces. phi_n: [L, E] min_k (lam_k costs + mu_k) when the
    caller has it (it does not depend on D). usable: [L, K] slots with tokens a GPU of
    each kind can run within the restriction (default S; at most S).
    Returns [L] values (inf: no plan fits the restriction); with with_pieces also [L] the
    pieces the value uses (sum of the chosen r, ties to fewer); with with_subgradient
    also T [L, K]: the per-GPU time of each kind in the fractional plan behind the value,
    the supergradient in p_k = size_k lam_k.

    Why it is a bound: a plan's slots with tokens ("pieces") on GPU g number a_g <= S
    (<= usable_g under a makespan restriction: each piece costs at least the curve's
    minimum there), so for any of its GPUs' times T_g, z = max_g T_g >= sum_g lam_g T_g
    + sum_g mu_g (a_g - S) = sum_g lam_g o_g - S sum_g mu_g + sum over pieces
    (lam_g t_g(x) + mu_g) (S read as usable_g throughout). A piece of x
    tokens costs at least phi(x) = min_g (lam_g t_g(x) + mu_g); expert e in r pieces
    (sum n_e, each in (0, D]) costs at least phi(n_e) if r = 1 and, by Jensen on the
    convex minorant h of phi on (0, D], r h(n_e / r) if r >= 2. The minimum over integer
    r of that is what each expert adds. r h(n / r) is convex in r (a perspective) and
    equals n h(y) / y at y = n / r, smallest where h(y) / y is (a hull vertex y*): the
    best r >= 2 is floor or ceil of n / y*, clipped to [max(2, r_min), r_max] with
    r_max = sum_g usable_g - (active experts - 1), the most pieces one expert can get.
    """
    L, E, K = costs.shape
    size = np.ones(K) if size is None else np.asarray(size, dtype=np.float64)
    S = slots_per_gpu
    usable = np.full((L, K), float(S)) if usable is None else usable
    total = (size * usable).sum(axis=1)  # [L] pieces all GPUs can hold
    active = n_e > 0
    A = active.sum(axis=1)
    piece = lam[:, None, :] * t_pts + mu[:, None, :]  # [L, Q, K]
    phi = piece.min(axis=2)  # [L, Q]
    I, J, W = _hull_pairs(X)
    chords = W * phi[:, I] + (1 - W) * phi[:, J]  # [L, Q, C]
    c_best = chords.argmin(axis=2)
    H = np.take_along_axis(chords, c_best[..., None], 2)[..., 0]  # [L, Q] hull at the points
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(X[:, 1:] > 0, H[:, 1:] / X[:, 1:], np.inf)
    y_star = np.take_along_axis(X[:, 1:], ratio.argmin(axis=1)[:, None], 1)  # [L, 1]
    if phi_n is None or with_subgradient:
        whole = lam[:, None, :] * costs + mu[:, None, :]  # [L, E, K]
        phi_n = whole.min(axis=2)  # [L, E]
    D = X[:, -1:] if top is None else top[:, None]
    r_min = np.maximum(np.ceil(n_e / D * (1 - 1e-12)), 1.0)  # erring low keeps it a bound
    r_max = (total - A + 1)[:, None]
    lo2 = np.maximum(r_min, 2.0)
    rc = n_e / np.maximum(y_star, 1e-300)
    # floor or ceil of the best real r, within [lo2, r_max] (masked below if that is empty)
    cand = np.maximum(np.minimum(np.stack([np.floor(rc), np.ceil(rc)], axis=-1), r_max[..., None]), lo2[..., None])
    h, seg, a = _interp_rows(X, H, (n_e[..., None] / cand).reshape(L, -1))
    split = np.where(lo2[..., None] <= r_max[..., None], cand * h.reshape(L, E, 2), np.inf)
    one = np.where(r_min <= 1, phi_n, np.inf)
    best = np.minimum(one, split.min(axis=-1))
    feasible = (np.where(active, r_min, 0).sum(axis=1) <= total) & np.all(~active | np.isfinite(best), axis=1)
    value = (size * (lam * overhead_us - usable * mu)).sum(1) + np.where(active, best, 0.0).sum(1)
    value = np.where(feasible, value, np.inf)
    if with_pieces:
        r_split = np.take_along_axis(cand, split.argmin(axis=-1)[..., None], -1)[..., 0]
        return value, np.where(active, np.where(one <= split.min(axis=-1), 1.0, r_split), 0.0).sum(axis=1)
    if not with_subgradient:
        return value
    # The fractional plan behind the value: whole experts spread over the kinds nearly
    # cheapest for them, split ones as mass on the hull's points, each point's mass
    # spread the same way. Spreading over near-ties (a soft-min) instead of one arg-min
    # gives ascent directions that do not jump between near-identical GPUs.
    def soft(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.float32)  # a direction only: float32 halves the cost of [L, E, K]
        m = v.min(axis=-1, keepdims=True)
        w = np.exp(-(v - m) / np.maximum(np.float32(tau) * np.abs(m), np.float32(1e-12)))
        return w / w.sum(axis=-1, keepdims=True)

    use_one = active & (one <= split.min(axis=-1))  # [L, E]
    w1 = soft(whole)
    w1 *= use_one[..., None]
    w1 *= costs
    work = w1.sum(axis=1, dtype=np.float64)  # [L, K]
    rows = np.repeat(np.arange(L), E)
    use_split = (active & ~use_one & np.isfinite(best)).ravel()
    pick = np.arange(L * E)[use_split], split.argmin(axis=-1).ravel()[use_split]
    r_used, s_used, a_used = cand.reshape(L * E, 2)[pick], seg.reshape(L * E, 2)[pick], a.reshape(L * E, 2)[pick]
    mass_h = np.zeros(X.shape)  # pieces at each hull point
    np.add.at(mass_h, (rows[use_split], s_used), r_used * a_used)
    np.add.at(mass_h, (rows[use_split], s_used + 1), r_used * (1 - a_used))
    q = np.arange(X.shape[1])[None, :]
    w = np.take_along_axis(W, c_best[..., None], 2)[..., 0]  # [L, Q]
    mass = np.zeros(X.shape)  # pieces at each curve point
    lr = np.repeat(np.arange(L)[:, None], X.shape[1], 1)
    np.add.at(mass, (lr, I[q, c_best]), mass_h * w)
    np.add.at(mass, (lr, J[q, c_best]), mass_h * (1 - w))
    work += (soft(piece) * mass[..., None] * t_pts).sum(axis=1)
    return value, overhead_us[None, :] + work / size


def _largest_piece(t_pts: np.ndarray, X: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """[L] the most tokens one piece can hold on any GPU within per-GPU time budgets
    [L, G] (z - o_g): max over g and over the segments of t_g on X of the largest x with
    t_g(x) <= budget_g (0 where no piece fits). t_pts [L, Q, G], X [L, Q]."""
    b = budget[:, None, :] * (1 + 1e-12)  # erring towards "fits" keeps it a bound
    t0, t1 = t_pts[:, :-1], t_pts[:, 1:]  # [L, Q-1, G] segment ends
    x0, x1 = X[:, :-1, None], X[:, 1:, None]
    rise = t1 - t0
    inner = x0 + np.where(rise > 0, (b - t0) / np.where(rise > 0, rise, 1.0), 0.0) * (x1 - x0)
    x = np.where(t1 <= b, x1, np.where(t0 <= b, np.clip(inner, x0, x1), 0.0))
    return x.max(axis=(1, 2))


def replica_lagrangian_bounds(cluster: Cluster, expert_tokens: np.ndarray, slots_per_gpu: int,
                              known: np.ndarray | None = None, iters: int = 10,
                              price_steps: int = 30, steps: int = 12) -> np.ndarray:
    """Replica-aware bound for any plan with S = slots_per_gpu slots per GPU, all layers
    at once: expert_tokens [L, E] n_e -> [L] (us).

    GPUs with identical curves and overheads share multipliers (gpu_kinds): F is
    concave and symmetric in them, so averaging any multipliers over such GPUs loses
    nothing, and the work is over K kinds instead of G GPUs. Two stages, each scored with
    the exact replica_lagrangian_value, so the result is a valid bound whatever the
    search did:
    1. Multipliers: lam_g proportional to each GPU's speed at the mean expert, mu = 0,
       then up to `iters` mirror-ascent steps on lam along the soft supergradient
       (skipped with one kind, where uniform lam is optimal for equal slot prices;
       stopped once no layer gains 1e-5 in 3 steps); the best value per layer is kept.
       Then one slot price mu_g = m for all GPUs, by `price_steps` golden-section steps
       (it binds where splitting experts pays and the slots run out).
    2. The makespan restriction: if a plan's time is z* <= z, none of its pieces is larger
       than D(z) = the most tokens any GPU can run within z - o_g (_largest_piece), so
       every expert needs at least ceil(n_e / D(z)) pieces and the hull is taken on
       (0, D(z)]; and a GPU runs at most floor((z - o_g) / least piece cost) pieces, so
       the slot budget shrinks. That restricted value F_z bounds z*. Either z* > z or
       z* >= F_z, so z* >= z wherever F_z >= z: `steps` bisection steps on z for the
       largest such z.
    known: [L] bounds already proven; the result is at least those.
    """
    n_e = np.asarray(expert_tokens, dtype=np.float64)
    L, E = n_e.shape
    S = slots_per_gpu
    over_g = cluster.overhead_us.astype(np.float64)
    out = np.full(L, over_g.max()) if known is None else np.maximum(np.asarray(known, dtype=np.float64), over_g.max())
    A = (n_e > 0).sum(axis=1)
    live = np.flatnonzero(A > 0)
    if live.size == 0:
        return out
    n_e = n_e[live]
    kind = gpu_kinds(cluster.latency_table()[1].T, over_g)  # [G]
    first = np.unique(kind, return_index=True)[1]  # one GPU of each kind
    size = np.bincount(kind).astype(np.float64)  # [K]
    over = over_g[first]
    M = n_e.max(axis=1)
    costs = expert_cost_matrix(cluster, n_e)[..., first]  # [L, E, K]
    X, tp = _piece_points(cluster, M)
    tp = tp[..., first]
    mean_n = n_e.sum(axis=1) / A[live]
    speed = 1.0 / np.maximum(expert_time_us(cluster, first[None, :], mean_n[:, None]), 1e-300)  # [L, K]
    lam = speed / (size * speed).sum(axis=1, keepdims=True)
    mu = np.zeros_like(lam)

    def value(lam, Xp, tpp, top=None, grad=False, phi_n=None):
        return replica_lagrangian_value(costs, n_e, Xp, tpp, over, S, lam, mu, top, size, grad, phi_n=phi_n)

    best, lam_best, stale = value(lam, X, tp), lam, 0
    # Each ascent step touches [L, E, K] several times: cap the steps on the biggest
    # layers (256 fleet GPUs x 256 experts x 58 layers: 2 steps).
    n_steps = 0 if len(first) == 1 else min(iters, max(2, int(REPLICA_ASCENT_WORK // costs.size)))
    for it in range(n_steps):
        v, T = value(lam, X, tp, grad=True)
        stale = 0 if np.any(v > best * (1 + 1e-5)) else stale + 1
        up = v > best
        best, lam_best = np.where(up, v, best), np.where(up[:, None], lam, lam_best)
        if stale >= 3:
            break
        p = lam * size  # a mirror step on the simplex of p_k = size_k lam_k; dF/dp_k = T_k
        dev = T - (p * T).sum(axis=1, keepdims=True)
        # normalised steps: the fractional plan piles work onto the cheapest kind, so raw
        # gradients are ~K times a GPU's time and would jump between vertices
        step = 0.03 / np.sqrt(it + 1.0) * dev / np.maximum(np.abs(dev).max(axis=1, keepdims=True), 1e-300)
        p = p * np.exp(step)
        lam = p / p.sum(axis=1, keepdims=True) / size
    # One slot price m for every GPU prices the slot budget: it only shifts phi (and its
    # hull) by m, so the whole-expert minimum is computed once. F is concave in m with
    # slope (pieces used) - G S at m = 0+: where no layer's pieces exceed the slots, m = 0
    # is optimal (the usual case: on GPU curves t(n) / n falls, so no expert is split);
    # else golden-section search on [0, the dearest whole expert].
    phi0 = (lam_best[:, None, :] * costs).min(axis=2)  # [L, E]
    _, pieces = replica_lagrangian_value(costs, n_e, X, tp, over, S, lam_best, mu, None, size,
                                         phi_n=phi0, with_pieces=True)
    if not np.any(pieces > size.sum() * S):
        price_steps = 0

    def at_price(m: np.ndarray, Xp=X, tpp=tp, top=None, usable=None) -> np.ndarray:
        return replica_lagrangian_value(costs, n_e, Xp, tpp, over, S, lam_best, m[:, None] + mu, top, size,
                                        phi_n=phi0 + m[:, None], usable=usable)

    golden = (np.sqrt(5.0) - 1) / 2
    a, b = np.zeros(len(live)), phi0.max(axis=1)
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = (at_price(c), at_price(d)) if price_steps else (best, best)
    m_best = np.zeros(len(live))
    for _ in range(price_steps):
        for m, f in ((c, fc), (d, fd)):
            up = f > best
            best, m_best = np.where(up, f, best), np.where(up, m, m_best)
        left = fc >= fd  # the maximum lies in [a, d]
        a, b = np.where(left, a, c), np.where(left, d, b)
        c_new, d_new = b - golden * (b - a), a + golden * (b - a)
        f_new = at_price(np.where(left, c_new, d_new))
        fc, fd, c, d = (np.where(left, f_new, fd), np.where(left, fc, f_new),
                        np.where(left, c_new, d), np.where(left, c, d_new))
    lo = np.maximum(out[live], best)  # proven: z* >= lo
    cheapest = np.maximum(tp.min(axis=1), 1e-300)  # [L, K] least a piece costs

    def proven(z: np.ndarray) -> np.ndarray:
        """[L] True where F_z >= z: no plan is faster than z."""
        budget = z[:, None] - over[None, :]  # [L, K]
        D = np.minimum(M, _largest_piece(tp, X, budget))
        # a piece costs at least the curve's minimum on (0, M]: so many fit in the budget
        usable = np.clip(np.floor(budget / cheapest * (1 + 1e-12)), 0, S)
        Xz, tpz = _piece_points(cluster, np.maximum(D, 1e-9))
        return (D > 0) & ~(at_price(m_best, Xz, tpz[..., first], np.maximum(D, 1e-9), usable) < z)

    hi = lo * 1.05 + 1e-9
    for _ in range(60):  # grow hi until it is not proven
        ok = proven(hi)
        if not ok.any():
            break
        lo, hi = np.where(ok, hi, lo), np.where(ok, hi * 1.5, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = proven(mid)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    out[live] = np.maximum(out[live], lo)
    return out


def lp_bounds(costs: np.ndarray, overhead_us: np.ndarray, slots_per_gpu: int,
              known: np.ndarray | None = None) -> np.ndarray:
    """[L, E, G] costs -> [L] LP bound of every layer: exact (HiGHS) when the merged LP
    is small, else the Lagrangian dual bound, all large layers at once.

    known: [L] bounds already proven (hottest expert, fluid). A layer whose LP cannot
    beat them (the even split x = 1/G already reaches them) gets its known bound back
    without solving: max(known, LP) is what callers use, and it is then exact.
    """
    L, E, G = costs.shape
    out = np.empty(L)
    even_split = (overhead_us + costs.sum(axis=1) / G).max(axis=1)  # [L] >= LP value
    todo = np.ones(L, dtype=bool) if known is None else even_split > known
    if known is not None:
        out[~todo] = known[~todo]
    big = []
    for l in np.flatnonzero(todo):
        if E * (int(gpu_kinds(costs[l], overhead_us).max()) + 1) <= LP_EXACT_MAX_VARS:
            out[l] = lp_lower_bound(costs[l], overhead_us, slots_per_gpu)
        else:
            big.append(l)
    if big:
        out[big] = lagrangian_lower_bounds(costs[big], overhead_us, slots_per_gpu)
    return out


def bound_kind(num_slots: int, num_experts: int) -> str:
    """Which bounds layer_lower_bounds takes the maximum of for a plan of that shape, in
    words (what `vibe evaluate` prints beside its lower bound)."""
    if num_slots > num_experts:
        return "replica-aware Lagrangian bound, max with the slot-work bound (replicas)"
    return "LP relaxation of the assignment, max with the hottest-expert, cheapest-slots and slot-work bounds"


def layer_lower_bounds(loads: ExpertLoads, cluster: Cluster, batch_tokens: float, num_slots: int) -> np.ndarray:
    """[L] lower bound on every layer's time for any plan with `num_slots` slots per layer.

    Any plan: the slot-work bound (started from the cheaper fluid and active-slots
    bounds it implies). With replicas (num_slots > E) also the replica-aware Lagrangian
    bound (replica_lagrangian_bounds); without (num_slots == E) the LP bound, the
    hottest-expert bound and the cheapest-slots bound; the maximum of all that apply.
    """
    n_e = loads.expert_tokens(batch_tokens)
    over = cluster.overhead_us
    out = np.array([fluid_bound(cluster, float(row.sum()), float(row.max())) for row in n_e])
    S = num_slots // cluster.num_gpus
    out = np.maximum(out, active_slots_bound(cluster, (n_e > 0).sum(axis=1), S))
    out = np.maximum(out, slot_work_bound(cluster, n_e, S, known=out))
    if num_slots > loads.num_experts:
        out = np.maximum(out, replica_lagrangian_bounds(cluster, n_e, S, known=out))
    if num_slots == loads.num_experts:
        costs_all = expert_cost_matrix(cluster, n_e)  # [L, E, G]
        out = np.maximum(out, [hottest_expert_bound(c, over, S) for c in costs_all])
        out = np.maximum(out, cheapest_slots_bound(costs_all, over, S))
        out = np.maximum(out, lp_bounds(costs_all, over, S, known=out))
    return out
