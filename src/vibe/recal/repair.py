"""Incremental re-placement: repair a stale plan with few expert moves.

A *move* gives one physical slot a different logical expert (one expert's weights
travel to that slot's GPU); a *swap* of two slots is two moves, listed one after the
other, that an engine applies together. Starting from the current plan, the greedy
takes, again and again, the move or swap that lowers the predicted objective most per
move, until the move or byte budget is spent or no move helps. The objective is the one
of `vibe place` (vibe.cost): sum over operating points (or re-sampled steps with
--robust/--traces) of weight x sum over layers of the slowest GPU's time.

Validity along the list: after every single move and after every swap pair, every
expert keeps at least one slot on a live GPU, so an engine can apply the list step by
step while serving. A lost GPU (`down_gpus`, `"state": "down"` in the cluster file, or
the plan's own `"down_gpus"`) keeps its slots but they get `replica_weights` 0; the
repair first re-homes every expert that lived only there (those moves come first and
may raise the objective: before them the plan cannot serve those experts at all, and
`before_us` is then infinite).

Speed: layers are independent, so the best candidate of every layer is kept and only
the layer just changed is re-scored. Scoring a layer evaluates every swap (all slot
pairs) and every single move (each slot of a replicated expert to every expert) at
once with numpy, from per-slot costs of vibe.cost.expert_time_us.

Shapes: K scenarios (operating points or sampled steps), L layers, E experts,
P = G * S slots, G GPUs, S slots per GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vibe.cost import expert_time_us
from vibe.errors import InputError, VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies.base import PlacementOptions

# Bytes per weight element of an expert's dtype (cluster file `expert.dtype`).
DTYPE_BYTES = {"fp8": 1.0, "fp8_block": 1.0, "e4m3": 1.0, "int8": 1.0, "bf16": 2.0, "bfloat16": 2.0,
               "fp16": 2.0, "float16": 2.0, "half": 2.0, "fp32": 4.0, "float32": 4.0,
               "fp4": 0.5, "nvfp4": 0.5, "mxfp4": 0.5, "int4": 0.5}
# Worth-it rule defaults: a repair pays when its predicted gain per step, over this many
# steps, exceeds the stall of moving its weights over one link of this bandwidth.
DEFAULT_HORIZON_STEPS = 10_000  # ~3 minutes of serving at 20 ms per step
DEFAULT_LINK_GBPS = 50.0  # GB/s: one 400 Gb/s NIC (the cross-node path; NVLink is ~9x faster)


@dataclass(frozen=True)
class Move:
    """Slot `slot` of MoE layer `layer` (a layer id of the plan, not a row index) changes
    from `old_expert` to `new_expert`; `bytes` of weights travel to the slot's GPU."""

    layer: int
    slot: int
    old_expert: int
    new_expert: int
    bytes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Repair:
    """The repaired plan, its ordered moves, and the weighted objective (us per step)
    before and after. step_us[i]: the objective once moves[: i + 1] are applied (both
    moves of a swap carry the value after the swap)."""

    placement: Placement
    moves: tuple[Move, ...]
    before_us: float
    after_us: float
    step_us: tuple[float, ...] = ()

    @property
    def bytes_moved(self) -> int:
        return int(sum(m.bytes for m in self.moves))


# ---- sizes, stalls and the worth-it rule ---------------------------------------------
def expert_bytes(cluster: Cluster) -> int:
    """Bytes of one expert's weights: 3 matrices hidden x intermediate (gate, up, down)
    at the cluster's `expert.dtype`; 0 when the cluster does not say."""
    e = cluster.expert or {}
    try:
        hidden, inter = int(e["hidden"]), int(e["intermediate"])
    except (KeyError, TypeError, ValueError):
        return 0
    per = DTYPE_BYTES.get(str(e.get("dtype", "bf16")).lower())
    if per is None:
        raise VibeError(f"cluster {cluster.name!r}: unknown expert dtype {e.get('dtype')!r}; "
                        f"known: {', '.join(sorted(DTYPE_BYTES))}")
    return int(3 * hidden * inter * per)


def stall_us(num_bytes: float, link_gbps: float = DEFAULT_LINK_GBPS) -> float:
    """Time to move `num_bytes` over one link of `link_gbps` GB/s, in us."""
    if link_gbps <= 0:
        raise VibeError("link bandwidth must be > 0")
    return float(num_bytes) / (link_gbps * 1e9) * 1e6


def min_gain_per_move(cluster: Cluster, horizon_steps: float = DEFAULT_HORIZON_STEPS,
                      link_gbps: float = DEFAULT_LINK_GBPS) -> float:
    """Smallest gain per step (us) that pays one move's stall over the horizon."""
    if horizon_steps <= 0:
        raise VibeError("horizon must be > 0 steps")
    return stall_us(expert_bytes(cluster), link_gbps) / horizon_steps


def worth_it(repair: Repair, horizon_steps: float = DEFAULT_HORIZON_STEPS,
             link_gbps: float = DEFAULT_LINK_GBPS) -> bool:
    """Does the predicted gain over the horizon exceed the stall of all the moves?"""
    if not repair.moves:
        return False
    gain = repair.before_us - repair.after_us
    return gain * horizon_steps > stall_us(repair.bytes_moved, link_gbps)


# ---- the objective -------------------------------------------------------------------
def objective_tokens(loads: ExpertLoads, options: PlacementOptions) -> tuple[np.ndarray, np.ndarray]:
    """The scenarios of `vibe place`'s objective: tokens [K, L, E] and weights [K] (the
    operating points at average load, or re-sampled steps with options.robust)."""
    from vibe.policies._timebalance import point_tokens, sampled_steps

    return sampled_steps(loads, options) if options.robust else point_tokens(loads, options)


def live_weights(placement: Placement, down_gpus: Sequence[int]) -> np.ndarray | None:
    """[L, P] replica_weights with 0 on the slots of lost GPUs (1 elsewhere: an even
    split over the live replicas, what engines do), or None without lost GPUs."""
    if not len(down_gpus):
        return None
    live = ~np.isin(placement.gpu_of_slot, np.asarray(down_gpus))
    return np.broadcast_to(live.astype(np.float64), placement.physical_to_logical_map.shape).copy()


def objective_us(placement: Placement, cluster: Cluster, tokens: np.ndarray, weights: np.ndarray) -> float:
    """sum_k w_k sum_l max_g T[k, l, g] (us) by the cost model; tokens [K, L, E]."""
    from vibe.stochastic import step_gpu_times

    T = step_gpu_times(placement, cluster, tokens)
    return float(np.einsum("k,kl->", weights, T.max(axis=2)))


# ---- counting moves fairly -----------------------------------------------------------
def _per_gpu_counts(placement: Placement) -> np.ndarray:
    """[L, G, E] how many slots of each GPU hold each expert."""
    L, G, E = placement.num_layers, placement.num_gpus, placement.num_logical_experts
    key = (np.arange(L)[:, None] * G + placement.gpu_of_slot[None, :]) * E + placement.physical_to_logical_map
    return np.bincount(key.ravel(), minlength=L * G * E).reshape(L, G, E)


def _check_same_shape(old: Placement, new: Placement) -> None:
    if old.physical_to_logical_map.shape != new.physical_to_logical_map.shape or old.num_gpus != new.num_gpus:
        raise VibeError(f"plans differ in shape: {list(old.physical_to_logical_map.shape)} on {old.num_gpus} GPUs "
                        f"vs {list(new.physical_to_logical_map.shape)} on {new.num_gpus} GPUs")


def count_moves(old: Placement, new: Placement) -> int:
    """Fewest slot changes that turn `old` into `new` when `new`'s slots may be
    relabelled within each GPU: per GPU and layer, S minus the experts both keep there
    (as multisets). A slot that holds the same expert is no move."""
    _check_same_shape(old, new)
    kept = np.minimum(_per_gpu_counts(old), _per_gpu_counts(new)).sum()
    return int(old.num_slots * old.num_layers - kept)


def align_slots(old: Placement, new: Placement) -> Placement:
    """`new` with its slots permuted within each GPU so that every expert `old` already
    had on that GPU stays in its old slot: `new` then differs from `old` in exactly
    count_moves(old, new) slots (same GPU times: the cost model ignores slot order)."""
    _check_same_shape(old, new)
    S = old.slots_per_gpu
    a = old.physical_to_logical_map.reshape(old.num_layers, old.num_gpus, S)
    b = new.physical_to_logical_map.reshape(a.shape)
    wb = None if new.replica_weights is None else new.replica_weights.reshape(a.shape)
    out = np.empty_like(b)
    wout = None if wb is None else np.empty_like(wb)
    for l, g in np.ndindex(a.shape[0], a.shape[1]):
        src = list(range(S))  # positions of new's slots not yet placed
        dest = [-1] * S
        for s in range(S):  # keep experts in place where old had them
            for j in src:
                if b[l, g, j] == a[l, g, s]:
                    dest[s] = j
                    src.remove(j)
                    break
        free = iter(src)
        for s in range(S):
            if dest[s] < 0:
                dest[s] = next(free)
        out[l, g] = b[l, g, dest]
        if wout is not None:
            wout[l, g] = wb[l, g, dest]
    return dataclasses.replace(new, physical_to_logical_map=out.reshape(old.physical_to_logical_map.shape),
                               replica_weights=None if wout is None else wout.reshape(new.replica_weights.shape))


def full_resolve(placement: Placement, loads: ExpertLoads, cluster: Cluster, options: PlacementOptions,
                 down_gpus: Sequence[int] = (), policy: str = "vibe") -> Placement:
    """What a from-scratch plan for `loads` would be (same slot count), its slots aligned
    with `placement` so that count_moves counts its moves fairly. With lost GPUs the
    policy runs on the live GPUs only (their slots, the rest as replicas) and the dead
    GPUs' slots keep what they held, with replica_weights 0."""
    from vibe.policies import place

    down = resolve_down(placement, cluster, down_gpus)
    S = placement.slots_per_gpu
    live = [g for g in range(cluster.num_gpus) if g not in down]
    _check_room(placement, len(live))
    sub = cluster if not down else cluster.with_gpus(
        [dataclasses.replace(cluster.gpus[g], rank=i) for i, g in enumerate(live)])
    opts = dataclasses.replace(options, redundant=len(live) * S - placement.num_logical_experts)
    fresh = place(loads, sub, policy, opts)
    if not down:
        return align_slots(placement, dataclasses.replace(fresh, extra=dict(placement.extra)))
    phy = placement.physical_to_logical_map.copy()
    slots = (np.asarray(live)[:, None] * S + np.arange(S)).ravel()
    phy[:, slots] = fresh.physical_to_logical_map
    out = dataclasses.replace(placement, physical_to_logical_map=phy, policy=policy,
                              replica_weights=live_weights(placement, down),
                              extra=dict(placement.extra, down_gpus=list(down)))
    return align_slots(placement, out)


def resolve_down(placement: Placement, cluster: Cluster, down_gpus: Sequence[int]) -> tuple[int, ...]:
    """Lost GPUs: those passed, those marked down in the cluster, those the plan names."""
    down = set(int(g) for g in down_gpus) | set(cluster.down_ranks())
    extra = placement.extra.get("down_gpus") or []
    if not isinstance(extra, list) or not all(isinstance(g, int) for g in extra):
        raise VibeError("the plan's 'down_gpus' must be a list of GPU ranks")
    down |= set(extra)
    bad = [g for g in down if not 0 <= g < cluster.num_gpus]
    if bad:
        raise VibeError(f"lost GPU {bad[0]} is not a rank of the {cluster.num_gpus}-GPU cluster")
    return tuple(sorted(down))


def _check_room(placement: Placement, live_gpus: int) -> None:
    E, S = placement.num_logical_experts, placement.slots_per_gpu
    if live_gpus * S < E:
        raise VibeError(f"{E} experts need {E} live slots; {live_gpus} live GPUs x {S} slots hold only "
                        f"{live_gpus * S} (a plan needs at least {S} redundant slots per layer to survive a lost GPU)")


# ---- the greedy ----------------------------------------------------------------------
class _State:
    """The plan being repaired, with per-slot costs at the current, one fewer and one
    more replica of every expert, and GPU times, kept up to date layer by layer."""

    def __init__(self, placement: Placement, cluster: Cluster, tokens: np.ndarray, weights: np.ndarray,
                 down: Sequence[int]):
        self.cluster = cluster
        self.n = tokens  # [K, L, E]
        self.w = weights  # [K]
        self.phy = placement.physical_to_logical_map.copy()  # [L, P]
        self.G, self.S = placement.num_gpus, placement.slots_per_gpu
        self.E = placement.num_logical_experts
        self.gpu = placement.gpu_of_slot  # [P]
        self.live = ~np.isin(self.gpu, np.asarray(down, dtype=np.int64))  # [P]
        K, L, E = tokens.shape
        G = self.G
        self.cnt = np.zeros((L, E), dtype=np.int64)
        self.has = np.zeros((L, E, G), dtype=np.int64)
        self.C0 = np.zeros((K, L, E, G))
        self.Cm = np.zeros((K, L, E, G))
        self.Cp = np.zeros((K, L, E, G))
        self.T = np.zeros((K, L, G))
        for l in range(L):
            self.refresh(l)

    def refresh(self, l: int) -> None:
        """Recompute counts, costs and GPU times of layer l from phy[l]."""
        E, G = self.E, self.G
        e, g = self.phy[l, self.live], self.gpu[self.live]
        self.cnt[l] = np.bincount(e, minlength=E)
        self.has[l] = np.bincount(e * G + g, minlength=E * G).reshape(E, G)
        c = self.cnt[l].astype(np.float64)
        n = self.n[:, l, :]  # [K, E]
        gpus = np.arange(G)

        def per_slot(count: np.ndarray) -> np.ndarray:  # [K, E, G] time of one replica
            share = np.divide(n, count, out=np.zeros_like(n), where=count > 0)
            return expert_time_us(self.cluster, gpus, share[..., None])

        self.C0[:, l] = per_slot(c)
        self.Cm[:, l] = per_slot(np.where(c >= 2, c - 1, 0))
        self.Cp[:, l] = per_slot(c + 1)
        T = np.zeros((n.shape[0], G))
        np.add.at(T, (slice(None), g), self.C0[:, l, e, g])
        self.T[:, l] = T + self.cluster.overhead_us

    def layer_value(self, l: int) -> float:
        return float(self.w @ self.T[:, l].max(axis=1))

    def best_swap(self, l: int) -> tuple[float, int, int]:
        """Best swap of two live slots on different GPUs: (change of the weighted
        makespan, slot i, slot j); (inf, -1, -1) if none is allowed."""
        slots = np.flatnonzero(self.live)
        a, g = self.phy[l, slots], self.gpu[slots]
        T = self.T[:, l]  # [K, G]
        C0 = self.C0[:, l]  # [K, E, G]
        M = T.max(axis=1)  # [K]
        cs = C0[:, a, g]  # [K, N] each slot's cost now
        cross = C0[:, a[None, :], g[:, None]]  # [K, N, N]: slot j's expert on slot i's GPU
        new_i = T[:, g][:, :, None] - cs[:, :, None] + cross  # [K, N, N] slot i's GPU after the swap
        new_j = new_i.transpose(0, 2, 1)
        rest = _rest_max(T)[:, g[:, None], g[None, :]]  # [K, N, N] other GPUs' max
        df = np.tensordot(self.w, np.maximum(np.maximum(new_i, new_j), rest) - M[:, None, None], axes=1)
        has = self.has[l]
        ok = (g[:, None] != g[None, :]) & (a[:, None] != a[None, :])
        ok &= (has[a[:, None], g[None, :]] == 0) & (has[a[None, :], g[:, None]] == 0)
        df = np.where(ok, df, np.inf)
        k = int(np.argmin(df))
        i, j = divmod(k, len(slots))
        return float(df.flat[k]), int(slots[i]), int(slots[j])

    def best_single(self, l: int, targets: np.ndarray | None = None) -> tuple[float, int, int]:
        """Best move of a live slot whose expert has another live replica to another
        expert (only `targets` [E] bool if given): (change, slot, new expert)."""
        slots = np.flatnonzero(self.live & (self.cnt[l][self.phy[l]] >= 2))
        if slots.size == 0:
            return math.inf, -1, -1
        a, g = self.phy[l, slots], self.gpu[slots]
        T, C0, Cm, Cp, has = self.T[:, l], self.C0[:, l], self.Cm[:, l], self.Cp[:, l], self.has[l]
        M = T.max(axis=1)
        N = slots.size
        # the slot's expert loses a replica: its other replicas take more tokens, the slot is freed
        d_src = has[a][None] * (Cm[:, a, :] - C0[:, a, :])  # [K, N, G]
        d_src[:, np.arange(N), g] = -C0[:, a, g]
        # the new expert gains a replica: its existing replicas take fewer tokens
        d_dst = has[None] * (Cp - C0)  # [K, E, G]
        X = T[:, None, None, :] + d_src[:, :, None, :] + d_dst[:, None, :, :]  # [K, N, E, G]
        X[:, np.arange(N)[:, None], np.arange(self.E)[None, :], g[:, None]] += Cp[:, :, g].transpose(0, 2, 1)
        df = np.tensordot(self.w, X.max(axis=3) - M[:, None, None], axes=1)  # [N, E]
        ok = (a[:, None] != np.arange(self.E)[None, :]) & (has[:, g].T == 0)
        if targets is not None:
            ok &= targets[None, :]
        df = np.where(ok, df, np.inf)
        k = int(np.argmin(df))
        i, b = divmod(k, self.E)
        return float(df.flat[k]), int(slots[i]), int(b)

    def assign(self, l: int, slot: int, expert: int) -> Move:
        old = int(self.phy[l, slot])
        self.phy[l, slot] = expert
        return Move(-1, int(slot), old, int(expert), 0)


def _rest_max(T: np.ndarray) -> np.ndarray:
    """[K, G] GPU times -> [K, G, G]: the largest time outside GPUs {g, h}."""
    K, G = T.shape
    order = np.argsort(-T, axis=1)[:, :3]  # [K, <=3]
    vals = np.take_along_axis(T, order, axis=1)
    out = np.full((K, G, G), -np.inf)
    gg = np.arange(G)
    for r in range(order.shape[1] - 1, -1, -1):  # the best rank not excluded wins
        idx = order[:, r][:, None, None]
        free = (gg[None, :, None] != idx) & (gg[None, None, :] != idx)
        out = np.where(free, vals[:, r][:, None, None], out)
    return out


def repair_placement(placement: Placement, loads: ExpertLoads, cluster: Cluster, options: PlacementOptions,
                     max_moves: int | None = None, max_bytes: float | None = None,
                     down_gpus: Sequence[int] = (), *, min_gain_us: float = 0.0) -> Repair:
    """Greedy repair of `placement` for `loads` on `cluster` (see the module docstring).

    max_moves / max_bytes: budgets (None: unbounded); a swap needs two moves.
    down_gpus: lost GPUs (with those the cluster marks down and the plan names).
    min_gain_us: a move must lower the objective by at least this much per step
    (min_gain_per_move gives the worth-it threshold); 0 takes every gain.
    """
    placement.check_fits(cluster)
    placement.check_matches(loads)
    if max_moves is not None and max_moves < 0:
        raise VibeError("--max-moves must be >= 0")
    if max_bytes is not None and max_bytes < 0:
        raise VibeError("--max-bytes must be >= 0")
    size = expert_bytes(cluster)
    if max_bytes is not None and size == 0:
        raise VibeError(f"cluster {cluster.name!r} gives no expert size ('expert': hidden, intermediate, dtype), "
                        "so a byte budget cannot be kept")
    down = resolve_down(placement, cluster, down_gpus)
    _check_room(placement, cluster.num_gpus - len(down))
    tokens, w = objective_tokens(loads, options)
    st = _State(placement, cluster, tokens, w, down)
    moves_left = math.inf if max_moves is None else int(max_moves)
    bytes_left = math.inf if max_bytes is None else float(max_bytes)
    ids = placement.layer_ids
    moves: list[Move] = []
    steps: list[float] = []
    value = np.array([st.layer_value(l) for l in range(placement.num_layers)])  # [L]

    def record(l: int, ms: list[Move]) -> None:
        nonlocal moves_left, bytes_left
        st.refresh(l)
        value[l] = st.layer_value(l)
        total = float(value.sum()) if not (st.cnt == 0).any() else math.inf
        for m in ms:
            moves.append(dataclasses.replace(m, layer=int(ids[l]), bytes=size))
            steps.append(total)
        moves_left -= len(ms)
        bytes_left -= size * len(ms)

    # 1. re-home the experts a lost GPU held alone (required, whatever they cost)
    orphans = st.cnt == 0  # [L, E]
    if orphans.any():
        need = int(orphans.sum())
        if need > moves_left or need * size > bytes_left:
            raise VibeError(f"re-homing the experts of lost GPU(s) {list(down)} needs {need} moves "
                            f"({need * size:,} bytes), more than the budget")
    for l in np.flatnonzero(orphans.any(axis=1)):
        while (st.cnt[l] == 0).any():
            _, slot, b = st.best_single(l, targets=st.cnt[l] == 0)
            record(l, [st.assign(l, slot, b)])
    before = math.inf if orphans.any() else objective_us(
        dataclasses.replace(placement, replica_weights=None), cluster, tokens, w)

    # 2. greedy: the move or swap that lowers the objective most per move
    tol = 1e-9 * max(float(value.sum()), 1e-12)
    best = [_layer_best(st, l) for l in range(placement.num_layers)]
    while moves_left >= 1 and bytes_left >= size:
        room = min(moves_left, (bytes_left // size) if size else math.inf)
        pick = None  # (change per move, layer, kind, i, j)
        for l, (sw, si) in enumerate(best):
            if room >= 2 and sw[0] < math.inf and (pick is None or sw[0] / 2 < pick[0]):
                pick = (sw[0] / 2, l, "swap", sw[1], sw[2])
            if si[0] < math.inf and (pick is None or si[0] < pick[0]):
                pick = (si[0], l, "single", si[1], si[2])
        if pick is None or pick[0] > -tol or -pick[0] < min_gain_us:
            break
        _, l, kind, i, j = pick
        if kind == "swap":
            a, b = int(st.phy[l, i]), int(st.phy[l, j])
            record(l, [st.assign(l, i, b), st.assign(l, j, a)])
        else:
            record(l, [st.assign(l, i, j)])
        best[l] = _layer_best(st, l)

    new = dataclasses.replace(placement, physical_to_logical_map=st.phy, replica_weights=live_weights(placement, down),
                              extra=dict(placement.extra, **({"down_gpus": list(down)} if down else {})))
    after = objective_us(new, cluster, tokens, w)
    return Repair(new, tuple(moves), before, after, tuple(steps))


def _layer_best(st: _State, l: int) -> tuple[tuple[float, int, int], tuple[float, int, int]]:
    """(best swap, best single move) of layer l; singles exist only with replicas."""
    single = st.best_single(l) if (st.cnt[l] >= 2).any() else (math.inf, -1, -1)
    return st.best_swap(l), single


def apply_moves(placement: Placement, moves: Sequence[Move], down_gpus: Sequence[int] = ()) -> Placement:
    """`placement` with `moves` applied in order (checking each move's old expert);
    replica_weights 0 on lost GPUs' slots. The result is validated like any plan."""
    phy = placement.physical_to_logical_map.copy()
    row = {lid: r for r, lid in enumerate(placement.layer_ids)}
    for k, m in enumerate(moves):
        r = row.get(m.layer)
        if r is None or not 0 <= m.slot < placement.num_slots:
            raise InputError("moves", f"move {k}: layer {m.layer} slot {m.slot} is not in the plan")
        if phy[r, m.slot] != m.old_expert:
            raise InputError("moves", f"move {k}: slot {m.slot} of layer {m.layer} holds expert "
                                      f"{phy[r, m.slot]}, not {m.old_expert}")
        phy[r, m.slot] = m.new_expert
    down = list(down_gpus)
    extra = dict(placement.extra, **({"down_gpus": sorted(down)} if down else {}))
    return dataclasses.replace(placement, physical_to_logical_map=phy,
                               replica_weights=live_weights(placement, down) if down else placement.replica_weights,
                               extra=extra)


def move_steps(moves: Sequence[Move]) -> list[tuple[Move, ...]]:
    """Group the move list into the steps an engine applies: a swap (two consecutive
    moves of one layer that exchange two experts) is one step, any other move alone."""
    out: list[tuple[Move, ...]] = []
    k = 0
    while k < len(moves):
        m = moves[k]
        if k + 1 < len(moves):
            n = moves[k + 1]
            if n.layer == m.layer and n.old_expert == m.new_expert and n.new_expert == m.old_expert:
                out.append((m, n))
                k += 2
                continue
        out.append((m,))
        k += 1
    return out
