"""Time-balanced binning shared by the `vibe` and `exact` policies.

The unit of work is a *row*: one MoE layer (or one layer restricted to one node) with
E experts to spread over the row's G GPUs, S slots each. Everything is vectorized over
rows. The objective is the weighted sum over scenarios k (operating points, or batches
re-sampled for --robust) of the row's makespan:

    f = sum_k w_k max_g T[k, g],   T[k, g] = overhead[g] + sum of t_g(tokens of each slot on g)

All times come from `vibe.cost.expert_time_us` (the one cost model); this module only
decides replica counts and which GPU holds which replica. When the cluster has a
network block, each GPU's all-to-all time (`vibe.cost.comm_model`: a fixed latency plus
a rate per received token) is folded in: the rate into every replica's cost on that
GPU, the latency into its overhead, so the search balances compute + communication.

Shapes: K scenarios, X rows, E experts per row, G GPUs per row, S slots per GPU,
N = G * S items (replicas) per row.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vibe.cost import DEFAULT_BATCH_TOKENS, comm_model, expert_time_us, normalize_weights
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement

DEFAULT_RESTARTS = 0  # seeded restarts of the local search (extras["restarts"]); rarely pay on ESFT


# ---- costs ---------------------------------------------------------------------------
def replica_costs(cluster: Cluster, gpu_ids: np.ndarray, tokens: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Time of one replica of each expert on each GPU of its row, tokens split evenly:
    its compute, plus receiving and sending back its tokens when the cluster has a
    network block (the comm time is linear in tokens, so it splits per replica).

    gpu_ids: [X, G] global ranks of each row's GPUs; tokens: [K, X, E]; count: [X, E]
    replicas per expert -> [K, X, E, G] us.
    """
    per_replica = (tokens / count[None])[..., None]
    t = expert_time_us(cluster, gpu_ids[None, :, None, :], per_replica)
    cm = comm_model(cluster)
    return t if cm is None else t + per_replica * cm.us_per_token[gpu_ids][None, :, None, :]


def row_overhead(cluster: Cluster, gpu_ids: np.ndarray) -> np.ndarray:
    """[X, G] fixed per-layer time of each row's GPUs: MoE overhead, plus the
    all-to-alls' latency when the cluster has a network block."""
    cm = comm_model(cluster)
    over = cluster.overhead_us if cm is None else cluster.overhead_us + cm.latency_us
    return over[gpu_ids]


def reference_cluster(cluster: Cluster) -> Cluster:
    """A one-GPU cluster whose curve is the mean of all curves: the 'average GPU' used to
    weigh replica decisions before we know where replicas go."""
    grid, us = cluster.latency_table()
    return Cluster.init_by_curves(grid, us.mean(axis=0), float(cluster.overhead_us.mean()))


# ---- replica counts by time ----------------------------------------------------------
def allocate_replicas(cluster: Cluster, tokens: np.ndarray, weights: np.ndarray, num_gpus: int,
                      slots: int, prefer_variance: bool = False) -> np.ndarray:
    """How many replicas each expert gets, decided by predicted time.

    tokens: [K, X, E]; weights: [K]; each row has `slots` >= E slots on `num_gpus` GPUs.
    Every extra slot goes to the expert whose extra replica lowers most the weighted
    proxy makespan  sum_k w_k max(hottest replica time, total work / G)  on the average
    GPU; ties go to the expert whose split adds least work (a replica of a cold expert
    costs little at prefill, but every replica costs a weight reload at decode).
    An expert never gets more replicas than there are GPUs, unless slots force it.
    prefer_variance (for scenarios that are sampled steps): among experts still tied,
    the one whose replica time varies most over the steps (a replica halves its
    variance; the proxy, blind to slot granularity, often ties a bursty expert with a
    steady one of the same mean). Returns count [X, E] (int64).
    """
    K, X, E = tokens.shape
    ref = reference_cluster(cluster)
    cm = comm_model(cluster)
    rate = 0.0 if cm is None else float(cm.us_per_token.mean())  # comm per token, average GPU

    def replica_time(n):  # [K, X, E] tokens of one replica -> its time on the average GPU
        return expert_time_us(ref, 0, n) + rate * n

    count = np.ones((X, E), dtype=np.int64)
    cap = max(num_gpus, -(-slots // E))
    cur = replica_time(tokens)  # [K, X, E] time of one replica now
    nxt = replica_time(tokens / 2)  # ... with one more replica
    rows = np.arange(X)
    w = weights[:, None, None]
    for _ in range(slots - E):
        work = (count[None] * cur).sum(axis=2)  # [K, X]
        top2 = -np.partition(-cur, min(1, E - 1), axis=2)[..., :2] if E > 1 else np.concatenate([cur, cur * 0], 2)
        hottest = np.argmax(cur, axis=2)  # [K, X]
        others_max = np.where(np.arange(E)[None, None, :] == hottest[..., None], top2[..., 1:2], top2[..., 0:1])
        added = (count[None] + 1) * nxt - count[None] * cur  # [K, X, E] extra work of the split
        proxy = np.maximum(np.maximum(others_max, nxt), (work[..., None] + added) / num_gpus)
        score = (w * proxy).sum(axis=0)  # [X, E]
        score = np.where(count >= cap, np.inf, score)
        best = score.min(axis=1, keepdims=True)
        tie = score <= best + 1e-9 * np.abs(best)
        extra = np.where(tie, (w * added).sum(axis=0), np.inf)
        if prefer_variance:
            tie &= extra <= extra.min(axis=1, keepdims=True) * (1 + 1e-9) + 1e-12
            mean = (w * cur).sum(axis=0)
            e = np.argmax(np.where(tie, (w * (cur - mean) ** 2).sum(axis=0), -np.inf), axis=1)
        else:
            e = np.argmin(extra, axis=1)
        count[rows, e] += 1
        cur[:, rows, e] = nxt[:, rows, e]
        nxt[:, rows, e] = replica_time(tokens[:, rows, e] / (count[rows, e] + 1))
    return count


# ---- construction --------------------------------------------------------------------
def items_of(count: np.ndarray) -> np.ndarray:
    """[X, E] replica counts (equal row sums N) -> [X, N] expert of each item, experts in
    id order with their replicas consecutive."""
    return np.stack([np.repeat(np.arange(count.shape[1]), row) for row in count])


def construct(costs: np.ndarray, weights: np.ndarray, item_expert: np.ndarray, overhead: np.ndarray,
              slots_per_gpu: int) -> np.ndarray:
    """Largest-cost-first: each item goes to the GPU (with room, not yet holding its expert)
    where the weighted makespan grows least, ties to the GPU that finishes earliest.

    costs: [K, X, E, G]; weights: [K]; item_expert: [X, N]; overhead: [X, G].
    Returns the GPU of each item [X, N].
    """
    K, X, E, G = costs.shape
    N = item_expert.shape[1]
    rows = np.arange(X)
    mean_cost = np.einsum("k,kxeg->xe", weights, costs) / G
    order = np.argsort(-np.take_along_axis(mean_cost, item_expert, axis=1), axis=1, kind="stable")
    T = np.broadcast_to(overhead, (K, X, G)).copy()
    M = T.max(axis=2)  # [K, X]
    filled = np.zeros((X, G), dtype=np.int64)
    has = np.zeros((X, E, G), dtype=bool)
    gpu = np.empty((X, N), dtype=np.int64)
    w = weights[:, None, None]
    for j in range(N):
        item = order[:, j]
        e = item_expert[rows, item]
        c = costs[:, rows, e, :]  # [K, X, G]
        room = filled < slots_per_gpu
        ok = room & ~has[rows, e, :]
        ok = np.where(ok.any(axis=1, keepdims=True), ok, room)  # duplicates only if forced
        new = T + c
        grow = (w * np.maximum(M[..., None], new)).sum(axis=0)  # [X, G]
        finish = (w * new).sum(axis=0)
        grow = np.where(ok, grow, np.inf)
        tie = grow <= grow.min(axis=1, keepdims=True) * (1 + 1e-12)
        g = np.argmin(np.where(tie, finish, np.inf), axis=1)
        gpu[rows, item] = g
        T[:, rows, g] = new[:, rows, g]
        M = np.maximum(M, T[:, rows, g])
        filled[rows, g] += 1
        has[rows, e, g] = True
    return gpu


# ---- local search --------------------------------------------------------------------
def objective(T: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[K, X, G] GPU times -> [X] weighted makespan."""
    return np.einsum("k,kx->x", weights, T.max(axis=2))


def gpu_times(costs: np.ndarray, item_expert: np.ndarray, item_gpu: np.ndarray, overhead: np.ndarray) -> np.ndarray:
    """[K, X, G] time of every GPU for the assignment item_gpu [X, N]."""
    K, X, E, G = costs.shape
    c = costs[:, np.arange(X)[:, None], item_expert, item_gpu]  # [K, X, N]
    T = np.zeros((K, X, G))
    for k in range(K):
        np.add.at(T[k], (np.arange(X)[:, None], item_gpu), c[k])
    return T + overhead[None]


def _top3(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Three largest values of T [..., G] and their indices (padded with -inf / -1)."""
    G = T.shape[-1]
    if G < 3:
        pad = 3 - G
        T = np.concatenate([T, np.full(T.shape[:-1] + (pad,), -np.inf)], axis=-1)
    idx = np.argsort(-T, axis=-1)[..., :3]
    val = np.take_along_axis(T, idx, axis=-1)
    return val, np.where(np.isfinite(val), idx, -1)


def local_search(costs: np.ndarray, weights: np.ndarray, item_expert: np.ndarray, item_gpu: np.ndarray,
                 overhead: np.ndarray, max_rounds: int | None = None, plateau: bool = True) -> np.ndarray:
    """Swap items between the most loaded GPUs and lightly loaded ones while the weighted
    makespan f drops, or stays equal while psi = sum_k w_k sum_g (T[k,g] / M0_k)^64
    drops (a smooth stand-in for the max: it walks off plateaus where several GPUs tie at
    the max and evens out the GPUs just below it). (f, psi) falls at every round, so the
    search cannot cycle. plateau=False takes only swaps that lower f.

    Each round, every row evaluates at once the swaps of each scenario's critical GPU and
    the CRITICAL_GPUS busiest GPUs with the PARTNER_GPUS least-loaded ones and
    applies the best improving swap, plus more swaps on disjoint GPU pairs that raise no
    scenario's makespan and lower psi. A row stops when no partner offers an improving
    swap (up to FULL_SEARCH_GPUS GPUs, all GPUs are tried before it stops).

    costs: [K, X, E, G]; item_expert, item_gpu: [X, N]. Returns the improved item_gpu.
    """
    K, X, E, G = costs.shape
    item_gpu = item_gpu.copy()
    if G < 2 or X == 0:
        return item_gpu
    costs = np.ascontiguousarray(costs)  # _cost_at reads it flat
    T = gpu_times(costs, item_expert, item_gpu, overhead)
    has = np.zeros((X, E, G), dtype=np.int64)
    np.add.at(has, (np.arange(X)[:, None], item_expert, item_gpu), 1)
    scale = np.maximum(objective(T, weights), 1e-12)  # [X] for tolerances
    norm = np.maximum(T.max(axis=2), 1e-12)  # [K, X] fixed normaliser of psi
    active = np.arange(X)
    S = item_expert.shape[1] // G
    # Many slots per GPU make a round expensive (it scores S x partners*S swaps per
    # critical GPU): fewer partners then, and a deterministic cap on the swaps scored in
    # all, which bounds the solve time; the first rounds take nearly all of the gain.
    few = min(G - 1, PARTNER_GPUS, max(2, PARTNER_ITEMS // S))
    pairs = K * (K + CRITICAL_GPUS) * S * S  # swaps scored per row and partner GPU
    spent = 0
    for rnd in range(max_rounds or 20 * item_expert.shape[1] + 100):
        if active.size == 0 or (rnd >= MIN_ROUNDS and spent >= SWAP_BUDGET):
            break
        swaps = _best_swaps(costs, weights, item_expert, item_gpu, T, has, active, scale, norm, few, plateau)
        spent += active.size * pairs * (few + 1)
        stuck = (swaps[0] < 0).all(axis=1)
        if few < G - 1 and G <= FULL_SEARCH_GPUS and stuck.any():
            full = _best_swaps(costs, weights, item_expert, item_gpu, T, has, active[stuck], scale, norm,
                               G - 1, plateau)
            swaps[0][stuck], swaps[1][stuck] = full
            spent += int(stuck.sum()) * pairs * G
        moved = (swaps[0] >= 0).any(axis=1)
        for q in range(swaps[0].shape[1]):
            ok = swaps[0][:, q] >= 0
            _apply_swaps(costs, item_expert, item_gpu, T, has, active[ok], swaps[0][ok, q], swaps[1][ok, q])
        active = active[moved]
    return item_gpu


PARTNER_GPUS = 8  # least-loaded GPUs searched for a swap partner
PARTNER_ITEMS = 64  # ... fewer when they hold more items than this in all
SWAP_BUDGET = 3_000_000  # swaps scored per local search, at most: bounds the solve time (~0.3 us each)
MIN_ROUNDS = 2  # rounds granted whatever the budget
CRITICAL_GPUS = 4  # busiest GPUs that look for a partner in each round
FULL_SEARCH_GPUS = 32  # up to this EP size a row stops only at a full-neighbourhood optimum
PSI_SQUARINGS = 6  # psi uses (T / M0)^(2^6): how sharply it singles out the busiest GPUs


def _psi(x: np.ndarray) -> np.ndarray:
    """x^(2^PSI_SQUARINGS) by repeated squaring (much faster than a float power)."""
    for _ in range(PSI_SQUARINGS):
        x = x * x
    return x


def _critical_gpus(Ta: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[K, A, G] times -> [A, Q] GPUs to unload: the critical GPU of each scenario (with
    many scenarios, those critical in the most of them), then the CRITICAL_GPUS busiest
    relative to each scenario's makespan. A GPU may appear twice (harmless)."""
    K, _, G = Ta.shape
    M = Ta.max(axis=2, keepdims=True)
    rel = np.einsum("k,kag->ag", w, Ta / np.maximum(M, 1e-12))
    if K <= CRITICAL_GPUS:
        crit = np.argmax(Ta, axis=2).T
    else:
        votes = np.einsum("k,kag->ag", w, (Ta >= M * (1 - 1e-12)).astype(np.float64))
        crit = np.argsort(-(votes + 1e-3 * rel), axis=1, kind="stable")[:, :min(CRITICAL_GPUS, G)]
    return np.concatenate([crit, np.argsort(-rel, axis=1, kind="stable")[:, :min(CRITICAL_GPUS, G)]], axis=1)


def _best_swaps(costs, w, item_expert, item_gpu, T, has, r, scale, norm, num_partners, plateau=True):
    """For each row in r, swaps of an item a on a critical GPU with an item b on one of
    the `num_partners` least-loaded other GPUs: the best improving one, then for the
    other critical GPUs their best 'safe' swap (no scenario's makespan rises, psi falls)
    on GPU pairs disjoint from those taken. Returns (a [A, Q], b [A, Q]), -1 where none."""
    K = costs.shape[0]
    G = T.shape[2]
    A = r.size
    ra = np.arange(A)[:, None]
    Ta = T[:, r]  # [K, A, G]
    M = Ta.max(axis=2)  # [K, A]
    top_v, top_i = _top3(Ta)
    ie, ig = item_expert[r], item_gpu[r]  # [A, N]
    S = ie.shape[1] // G
    by_gpu = np.argsort(ig, axis=1, kind="stable").reshape(A, G, S)  # items of each GPU
    gc = _critical_gpus(Ta, w)  # [A, Q]
    Q = gc.shape[1]
    load = np.einsum("k,kag->ag", w, Ta)
    part = np.argsort(load, axis=1, kind="stable")[:, :num_partners + 1]  # [A, m+1] (may include a gc)
    b_items = by_gpu[ra, part].reshape(A, -1)  # [A, Nb]
    h = np.repeat(part, S, axis=1)  # [A, Nb]
    a_items = by_gpu[ra, gc]  # [A, Q, S]
    ea = np.take_along_axis(ie[:, None, :], a_items, axis=2)  # [A, Q, S]
    eb = np.take_along_axis(ie, b_items, axis=1)  # [A, Nb]
    xs = r[:, None, None, None]
    c_a_gc = _cost_at(costs, r[:, None, None], ea, gc[:, :, None])  # [K, A, Q, S]
    c_b_gc = _cost_at(costs, r[:, None, None], eb[:, None, :], gc[:, :, None])  # [K, A, Q, Nb]
    c_b_h = _cost_at(costs, r[:, None], eb, h)  # [K, A, Nb]
    c_a_h = _cost_at(costs, xs, ea[..., None], h[:, None, None, :])  # [K, A, Q, S, Nb]
    Tg = np.take_along_axis(Ta, np.broadcast_to(gc, (K,) + gc.shape), axis=2)  # [K, A, Q]
    Th = np.take_along_axis(Ta, np.broadcast_to(h, (K,) + h.shape), axis=2)  # [K, A, Nb]
    new_g = Tg[..., None, None] - c_a_gc[..., None] + c_b_gc[:, :, :, None, :]
    new_h = (Th - c_b_h)[:, :, None, None, :] + c_a_h
    pair = np.maximum(new_g, new_h)  # [K, A, Q, S, Nb]
    rest = _rest_max(top_v, top_i, gc, h)  # [K, A, Q, Nb]
    df = np.tensordot(w, np.maximum(pair, rest[:, :, :, None, :]) - M[:, :, None, None, None], axes=1)
    nk = norm[:, r][:, :, None]  # [K, A, 1]
    psi_old = _psi(Tg / nk)  # [K, A, Q]
    psi_h = _psi(Th / nk)  # [K, A, Nb]
    nk = nk[..., None, None]
    dpsi = np.tensordot(w, _psi(new_g / nk) + _psi(new_h / nk)
                        - (psi_old[..., None, None] + psi_h[:, :, None, None, :]), axes=1)
    valid = (h[:, None, :] != gc[:, :, None])[:, :, None, :] & (ea[..., None] != eb[:, None, None, :])
    valid &= _cost_at(has[None], xs, ea[..., None], h[:, None, None, :])[0] == 0
    valid &= (_cost_at(has[None], r[:, None, None], eb[:, None, :], gc[:, :, None])[0] == 0)[:, :, None, :]
    tol = 1e-9 * scale[r][:, None, None, None]
    falls = valid & (dpsi < -1e-12) & plateau
    good = valid & (df < -tol) | falls & (df <= 0)
    safe = falls & (pair <= M[:, :, None, None, None]).all(axis=0)
    Nb = b_items.shape[1]
    rows = np.arange(A)
    out_a = np.full((A, Q), -1)
    out_b = np.full((A, Q), -1)
    used = np.zeros((A, G), dtype=bool)
    # the best improving swap (df first, psi among ties), then safe swaps on free GPUs
    first = np.where(good, df / scale[r][:, None, None, None] + 1e-6 * dpsi, np.inf).reshape(A, -1)
    second = np.where(safe, dpsi, np.inf).reshape(A, Q, -1)
    j0 = np.argmin(first, axis=1)
    ok0 = np.isfinite(first[rows, j0])
    q0 = j0 // (first.shape[1] // Q)
    j1 = np.argmin(second, axis=2)  # [A, Q]
    k1 = np.take_along_axis(second, j1[..., None], axis=2)[..., 0]
    k1[rows, q0] = np.where(ok0, -np.inf, np.inf)  # the first swap goes first
    j1[rows, q0] = j0 % (first.shape[1] // Q)
    for q in np.argsort(k1, axis=1, kind="stable").T:
        j = j1[rows, q]
        g_q, h_q = gc[rows, q], h[rows, j % Nb]
        take = (k1[rows, q] < np.inf) & ~used[rows, g_q] & ~used[rows, h_q]  # -inf: the best improving swap
        t = rows[take]
        out_a[t, q[take]] = a_items[t, q[take], j[take] // Nb]
        out_b[t, q[take]] = b_items[t, j[take] % Nb]
        used[t, g_q[take]] = True
        used[t, h_q[take]] = True
    return out_a, out_b


def _cost_at(costs: np.ndarray, x, e, g) -> np.ndarray:
    """costs[:, x, e, g] for broadcastable index arrays -> [K, *shape]; one flat `take`
    (several times faster than numpy's multi-array fancy indexing here). costs must be
    C-contiguous [K, X, E, G] (also used on has[None])."""
    K, X, E, G = costs.shape
    return np.take(costs.reshape(K, -1), (x * E + e) * G + g, axis=1)


def _rest_max(top_v, top_i, gc, h):
    """Largest GPU time outside {gc, h}: top_v/top_i [K, A, 3], gc [A, Q], h [A, Nb] -> [K, A, Q, Nb]."""
    i = top_i[:, :, None, None, :]  # [K, A, 1, 1, 3]
    out = (i != gc[None, :, :, None, None]) & (i != h[None, :, None, :, None])  # [K, A, Q, Nb, 3]
    first = np.argmax(out, axis=4)
    val = np.take_along_axis(np.broadcast_to(top_v[:, :, None, None, :], out.shape), first[..., None], axis=4)[..., 0]
    return np.where(out.any(axis=4), val, -np.inf)


def _apply_swaps(costs, item_expert, item_gpu, T, has, rows, a, b):
    """Swap the GPUs of items a and b in each row of `rows` and update T and has."""
    ga, gb = item_gpu[rows, a], item_gpu[rows, b]
    ea, eb = item_expert[rows, a], item_expert[rows, b]
    T[:, rows, ga] += costs[:, rows, eb, ga] - costs[:, rows, ea, ga]
    T[:, rows, gb] += costs[:, rows, ea, gb] - costs[:, rows, eb, gb]
    has[rows, ea, ga] -= 1
    has[rows, eb, gb] -= 1
    has[rows, ea, gb] += 1
    has[rows, eb, ga] += 1
    item_gpu[rows, a], item_gpu[rows, b] = gb, ga


# ---- the whole solve -----------------------------------------------------------------
def perturb(item_expert: np.ndarray, item_gpu: np.ndarray, num_swaps: int, rng: np.random.Generator) -> np.ndarray:
    """Random swaps of items on different GPUs that hold different experts (a restart)."""
    X, N = item_gpu.shape
    g = item_gpu.copy()
    rows = np.arange(X)
    for _ in range(num_swaps):
        a, b = rng.integers(0, N, size=(2, X))
        ok = (g[rows, a] != g[rows, b]) & (item_expert[rows, a] != item_expert[rows, b])
        # keep the no-duplicate rule: b's expert must not already sit on a's GPU and vice versa
        for x in np.nonzero(ok)[0]:
            on_a = item_expert[x, g[x] == g[x, a[x]]]
            on_b = item_expert[x, g[x] == g[x, b[x]]]
            if item_expert[x, b[x]] in on_a or item_expert[x, a[x]] in on_b:
                ok[x] = False
        r = rows[ok]
        g[r, a[ok]], g[r, b[ok]] = g[r, b[ok]], g[r, a[ok]]
    return g


def repair_duplicates(costs: np.ndarray, weights: np.ndarray, item_expert: np.ndarray, item_gpu: np.ndarray,
                      overhead: np.ndarray) -> np.ndarray:
    """Move away the second replica of an expert on one GPU (the construction allows it
    only when the last free slots leave no choice), by the swap that keeps the pair's
    weighted time lowest among those that create no new duplicate. Rare: plain loops."""
    K, X, E, G = costs.shape
    item_gpu = item_gpu.copy()
    for x in range(X):
        stuck = set()
        while True:
            has = np.zeros((E, G), dtype=np.int64)
            np.add.at(has, (item_expert[x], item_gpu[x]), 1)
            dup = [(e, g) for e, g in np.argwhere(has > 1).tolist() if (e, g) not in stuck]
            if not dup:
                break
            e, g = dup[0]
            a = np.nonzero((item_expert[x] == e) & (item_gpu[x] == g))[0][0]
            eb, h = item_expert[x], item_gpu[x]
            ok = (h != g) & (eb != e) & (has[e, h] == 0) & (has[eb, g] == 0)
            if not ok.any():
                stuck.add((e, g))  # no single swap fixes it (or slots force it)
                continue
            T = gpu_times(costs[:, x:x + 1], item_expert[x:x + 1], item_gpu[x:x + 1], overhead[x:x + 1])[:, 0]
            new_g = T[:, g][:, None] - costs[:, x, e, g][:, None] + costs[:, x, eb, g]
            new_h = T[:, h] - costs[:, x, eb, h] + costs[:, x, e, h]
            b = int(np.argmin(np.where(ok, weights @ np.maximum(new_g, new_h), np.inf)))
            item_gpu[x, a], item_gpu[x, b] = h[b], g
    return item_gpu


def solve_rows(costs: np.ndarray, weights: np.ndarray, item_expert: np.ndarray, overhead: np.ndarray,
               slots_per_gpu: int, restarts: int = 0, seed: int = 0) -> np.ndarray:
    """Construction + local search (+ seeded restarts kept only where they pay).

    costs: [K, X, E, G]; item_expert: [X, N]; overhead: [X, G] -> item_gpu [X, N].
    """
    gpu = construct(costs, weights, item_expert, overhead, slots_per_gpu)
    gpu = local_search(costs, weights, item_expert, repair_duplicates(costs, weights, item_expert, gpu, overhead),
                       overhead)
    best = objective(gpu_times(costs, item_expert, gpu, overhead), weights)
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        trial = local_search(costs, weights, item_expert, perturb(item_expert, gpu, item_expert.shape[1] // 4, rng),
                             overhead)
        f = objective(gpu_times(costs, item_expert, trial, overhead), weights)
        better = f < best * (1 - 1e-12)
        gpu[better], best[better] = trial[better], f[better]
    return gpu


def slot_layout(item_expert: np.ndarray, item_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """[X, N] items with their GPUs -> [X, G, S] expert in each slot of each GPU
    (each GPU's experts in ascending id, a stable canonical order)."""
    X, N = item_expert.shape
    key = item_gpu * (item_expert.max(initial=0) + 1) + item_expert
    order = np.argsort(key, axis=1, kind="stable")
    return np.take_along_axis(item_expert, order, axis=1).reshape(X, num_gpus, N // num_gpus)


# ---- more starts: EPLB's plan -------------------------------------------------------
def eplb_starts(loads: ExpertLoads, cluster: Cluster, slots_per_gpu: int, tokens: np.ndarray,
                weights: np.ndarray, overhead: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Starts built from EPLB's global plan (flat rows: row x = layer x, all GPUs).

    EPLB's plan itself, improved by the local search: the result is never worse than
    EPLB under the cost model (the search only takes swaps that do not raise the
    objective), whatever the replica proxy of allocate_replicas gets wrong.
    tokens: [K, L, E]. Returns [(count [L, E], item_expert [L, N], item_gpu [L, N])].
    """
    from vibe.policies.eplb import rebalance_experts  # deferred: eplb imports the policy registry

    G = cluster.num_gpus
    phy2log, _, count = rebalance_experts(loads.counts, G * slots_per_gpu, 1, 1, G)
    gpu = np.broadcast_to(np.arange(phy2log.shape[1]) // slots_per_gpu, phy2log.shape).copy()
    costs = replica_costs(cluster, np.tile(np.arange(G), (loads.num_layers, 1)), tokens, count)
    # EPLB may put two replicas of one expert on a GPU; vibe never does unless forced,
    # so such a start is repaired first (the guarantee then holds against the repaired plan).
    gpu = repair_duplicates(costs, weights, phy2log, gpu, overhead)
    return [(count, phy2log, local_search(costs, weights, phy2log, gpu, overhead))]


def duplicates(item_expert: np.ndarray, item_gpu: np.ndarray, num_experts: int) -> np.ndarray:
    """[X] extra replicas of an expert on a GPU that already holds it. item_*: [X, N]."""
    X = item_expert.shape[0]
    key = (np.arange(X)[:, None] * (item_gpu.max(initial=0) + 1) + item_gpu) * num_experts + item_expert
    key = np.sort(key, axis=1)
    return (np.diff(key, axis=1) == 0).sum(axis=1)


def best_of_starts(cluster: Cluster, row_gpus: np.ndarray, tokens: np.ndarray, weights: np.ndarray,
                   overhead: np.ndarray, starts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the start (count [X, E], item_expert [X, N], item_gpu [X, N]) with the
    lowest weighted makespan among those with no more doubled experts than the first;
    ties keep the earlier start. tokens: [K, X, E]."""
    best = None
    for count, items, gpu in starts:
        costs = replica_costs(cluster, row_gpus, tokens, count)
        f = objective(gpu_times(costs, items, gpu, overhead), weights)
        dup = duplicates(items, gpu, count.shape[1])
        if best is None:
            best, dup0 = [count.copy(), items.copy(), gpu.copy(), f], dup
            continue
        f = np.where(dup > dup0, np.inf, f)  # no more doubled experts on a GPU than the first start
        take = f < best[3] * (1 - 1e-12)
        best[0][take], best[1][take], best[2][take], best[3] = count[take], items[take], gpu[take], \
            np.minimum(f, best[3])
    return best[0], best[1], best[2]


# ---- problem set-up shared by `vibe` and `exact` -------------------------------------
def point_weights(batch_tokens, weights) -> np.ndarray:
    """[K] normalized weights of the operating points (vibe.cost's defaults when None)."""
    return normalize_weights(batch_tokens, weights)


def point_tokens(loads: ExpertLoads, options) -> tuple[np.ndarray, np.ndarray]:
    """The operating points at average load: tokens [K, L, E] per expert, weights [K]."""
    w = point_weights(options.batch_tokens, options.weights)
    return np.stack([loads.expert_tokens(b) for b in options.batch_tokens]), w


def sampled_steps(loads: ExpertLoads, options) -> tuple[np.ndarray, np.ndarray]:
    """For --robust: re-sampled steps (from the trace in options.extras 'traces' /
    'traces_path', else multinomial) and their weights, so that the objective is the
    expected per-step makespan. tokens [K, L, E], weights [K] (summing to 1).

    With extras 'step_tokens' (sizes of observed serving steps) `robust_samples`
    (default ROBUST_SAMPLES) steps get sizes drawn from them, each weighted 1/K;
    otherwise `robust_samples` steps per operating point (default ROBUST_SAMPLES split
    over the points, at least DEFAULT_SAMPLES each), each weighted 1/samples of its point."""
    from vibe import stochastic

    w = point_weights(options.batch_tokens, options.weights)
    trace = options.extras.get("traces")
    if trace is None and options.extras.get("traces_path"):
        trace = stochastic.load_traces(options.extras["traces_path"])
    if trace is not None:
        stochastic.check_trace_matches(trace, loads, options.extras.get("traces_path", "traces"))
    sizes = options.extras.get("step_tokens")
    default = stochastic.ROBUST_SAMPLES if sizes is not None else \
        max(stochastic.DEFAULT_SAMPLES, stochastic.ROBUST_SAMPLES // len(w))
    n = int(options.extras.get("robust_samples", default))
    if n < 1:
        raise VibeError("robust_samples must be >= 1")
    if sizes is not None:
        return stochastic.sized_step_tokens(loads, sizes, n, options.seed, trace), np.full(n, 1.0 / n)
    tokens = np.concatenate([stochastic.step_tokens(loads, b, n, options.seed + 7919 * i, trace)
                             for i, b in enumerate(options.batch_tokens)])
    return tokens, np.repeat(w / n, n)


def robust_solve(cluster: Cluster, row_gpus: np.ndarray, tokens: np.ndarray, weights: np.ndarray,
                 overhead: np.ndarray, slots_per_gpu: int, starts: list, restarts: int = 0,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plan with the lowest expected per-step makespan over the sampled steps.

    tokens: [K, X, E] sampled steps of each row; weights [K]; starts: plans
    (count [X, E], item_expert [X, N], item_gpu [X, N]) made for the average load, the
    first of which is kept on ties. Adds a plan built on the samples themselves: its
    replica counts come from the steps (an expert that bursts in some steps is split
    where its bursts set the makespan, so variance earns replicas, not only mean load),
    then construction and search on the sampled objective. Every start is then
    searched on the sampled objective and, per row, the best is kept, so the result is
    never worse on the samples than the average-load plan.
    """
    N = starts[0][1].shape[1]
    Gr = row_gpus.shape[1]
    count = allocate_replicas(cluster, tokens, weights, Gr, N, prefer_variance=True)
    items = items_of(count)
    gpu = solve_rows(replica_costs(cluster, row_gpus, tokens, count), weights, items, overhead, slots_per_gpu,
                     restarts, seed)
    searched = [(c, i, local_search(replica_costs(cluster, row_gpus, tokens, c), weights, i, g, overhead))
                for c, i, g in starts]
    return best_of_starts(cluster, row_gpus, tokens, weights, overhead, [*searched, (count, items, gpu)])


def layer_rows(loads: ExpertLoads, cluster: Cluster, options, tokens: np.ndarray,
               weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the problem into independent rows.

    Flat: one row per layer, all GPUs, all experts. With --num-groups and several
    nodes (EPLB's hierarchical mode): expert groups go whole to nodes, the heaviest
    group (by time on the average GPU) to the node that would finish it earliest given
    its GPUs' speed, equal group count per node; then one row per (layer, node).
    Returns row_layer [X], row_gpus [X, G'] (global ranks), row_experts [X, E'].
    """
    L, E, G = loads.num_layers, loads.num_experts, cluster.num_gpus
    nodes = np.unique(cluster.nodes)
    num_groups, num_nodes = options.num_groups, len(nodes)
    if num_groups is not None and (num_groups < 1 or num_groups % num_nodes or E % num_groups):
        raise VibeError(f"--num-groups {num_groups} must divide the {E} experts and be a multiple of "
                        f"the {num_nodes} nodes")
    if not num_groups or num_nodes == 1:
        return np.arange(L), np.tile(np.arange(G), (L, 1)), np.tile(np.arange(E), (L, 1))
    node_gpus = [np.nonzero(cluster.nodes == n)[0] for n in nodes]
    if len({len(g) for g in node_gpus}) != 1:
        raise VibeError("--num-groups needs nodes with equal GPU counts")
    ref = reference_cluster(cluster)
    work = np.einsum("k,kle->le", weights, expert_time_us(ref, 0, tokens))  # [L, E]
    group_work = work.reshape(L, num_groups, -1).sum(axis=2)  # [L, groups]
    # a node's speed: how many 'average experts' per us its GPUs run together
    gpu_time = np.einsum("k,klg->lg", weights, expert_time_us(cluster, np.arange(G), tokens.mean(axis=2)[..., None]))
    node_speed = np.stack([(1.0 / gpu_time[:, g]).sum(axis=1) for g in node_gpus], axis=1)  # [L, nodes]
    per_node = num_groups // num_nodes
    load = np.zeros((L, num_nodes))
    filled = np.zeros((L, num_nodes), dtype=np.int64)
    group_node = np.empty((L, num_groups), dtype=np.int64)
    rows = np.arange(L)
    for grp in np.argsort(-group_work, axis=1, kind="stable").T:  # heaviest group first, per layer
        finish = np.where(filled < per_node, (load + group_work[rows, grp][:, None]) / node_speed, np.inf)
        n = np.argmin(finish, axis=1)
        group_node[rows, grp] = n
        load[rows, n] += group_work[rows, grp]
        filled[rows, n] += 1
    size = E // num_groups
    row_layer = np.repeat(np.arange(L), num_nodes)
    row_gpus = np.tile(np.stack(node_gpus), (L, 1))
    row_experts = np.stack([np.concatenate([np.arange(gr * size, (gr + 1) * size)
                                            for gr in np.nonzero(group_node[l] == n)[0]])
                            for l in range(L) for n in range(num_nodes)])
    return row_layer, row_gpus, row_experts


def solve_placement(loads: ExpertLoads, cluster: Cluster, options, policy: str,
                    solve=None) -> tuple[Placement, np.ndarray, np.ndarray]:
    """Set up rows, replica counts and costs, run `solve` on them, lay out the slots.

    solve(costs [K, X, E', G'], weights [K], item_expert [X, N], overhead [X, G'], S)
    -> item_gpu [X, N]; default: `solve_rows` with the options' restarts and seed.
    The plan is made for the operating points at average load; with --robust,
    `robust_solve` then keeps, per row, whichever of that plan (searched on the
    re-sampled steps) and a plan built on the steps has the lower expected makespan.
    Returns (placement, tokens [K, L, E], weights [K]) of the objective finally used.
    """
    from vibe.policies.base import slots_per_gpu

    S = slots_per_gpu(loads, cluster, options)
    tokens, w = point_tokens(loads, options)
    row_layer, row_gpus, row_experts = layer_rows(loads, cluster, options, tokens, w)
    Gr = row_gpus.shape[1]
    row_tokens = tokens[:, row_layer[:, None], row_experts]  # [K, X, E']
    overhead = row_overhead(cluster, row_gpus)
    count = allocate_replicas(cluster, row_tokens, w, Gr, Gr * S)
    items = items_of(count)
    costs = replica_costs(cluster, row_gpus, row_tokens, count)
    if solve is None:
        restarts = int(options.extras.get("restarts", DEFAULT_RESTARTS))
        item_gpu = solve_rows(costs, w, items, overhead, S, restarts, options.seed)
    else:
        item_gpu = solve(costs, w, items, overhead, S)
    if Gr == cluster.num_gpus:  # flat rows: EPLB's plan is a start too
        count, items, item_gpu = best_of_starts(
            cluster, row_gpus, row_tokens, w, overhead,
            [(count, items, item_gpu), *eplb_starts(loads, cluster, S, row_tokens, w, overhead)])
    if options.robust:
        tokens, w = sampled_steps(loads, options)
        count, items, item_gpu = robust_solve(
            cluster, row_gpus, tokens[:, row_layer[:, None], row_experts], w, overhead, S,
            [(count, items, item_gpu)], int(options.extras.get("restarts", DEFAULT_RESTARTS)), options.seed)
    local = slot_layout(items, item_gpu, Gr)  # [X, G', S] row-local expert ids
    experts = np.take_along_axis(row_experts, local.reshape(len(row_layer), -1), axis=1).reshape(local.shape)
    phy = np.empty((loads.num_layers, cluster.num_gpus * S), dtype=np.int64)
    phy[row_layer[:, None, None], row_gpus[:, :, None] * S + np.arange(S)] = experts
    placement = Placement.init_by_mapping(phy, cluster.num_gpus, loads.num_experts, loads.layer_ids, policy)
    return placement, tokens, w


# ---- replicas that split by speed ----------------------------------------------------
def speed_split(placement: Placement, cluster: Cluster, tokens: np.ndarray, weights: np.ndarray,
                rounds: int = 40) -> np.ndarray:
    """replica_weights [L, P] that give replicas on GPUs with spare time a larger share.

    Multiplicative rebalancing: each slot's share is scaled by (mean GPU time / its
    GPU's time)^1/2 and renormalized per expert; per layer the best round under the
    weighted makespan is kept (round 0 is the even split, so this never predicts worse).
    tokens: [K, L, E]; weights: [K].
    """
    from vibe.stochastic import step_gpu_times

    phy = placement.physical_to_logical_map
    L, P = phy.shape
    gpu = placement.gpu_of_slot
    share = placement.slot_share()
    best_share = share.copy()
    best_f = None
    for _ in range(rounds + 1):
        trial = dataclasses.replace(placement, replica_weights=share)
        T = step_gpu_times(trial, cluster, tokens)  # [K, L, G]
        f = np.einsum("k,kl->l", weights, T.max(axis=2))
        if best_f is None:
            best_f = f
        better = f < best_f * (1 - 1e-12)
        best_share[better], best_f = share[better], np.where(better, f, best_f)
        Tw = np.einsum("k,klg->lg", weights, T)
        factor = np.sqrt(Tw.mean(axis=1, keepdims=True) / np.maximum(Tw, 1e-12))[:, gpu]  # [L, P]
        share = share * factor
        flat = np.arange(L)[:, None] * placement.num_logical_experts + phy
        tot = np.bincount(flat.ravel(), weights=share.ravel(), minlength=L * placement.num_logical_experts)
        share = share / tot[flat]
    return best_share
