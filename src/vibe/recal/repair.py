"""Incremental re-placement: repair a stale plan with few expert moves.

A *move* gives one physical slot a different logical expert (one expert's weights
travel to that slot's GPU); a *swap* of two slots is two moves, and a *chain* of 3 or 4
slots on as many GPUs (each slot's expert moves on to the next slot's GPU, the last
one back to the first slot) is 3 or 4 moves, listed one after the other, that an
engine applies together (`move_steps` groups them). Starting from the current plan,
the greedy takes, again and again, the move or swap that lowers the predicted
objective most per move, until the move or byte budget is spent or no move helps. With
a finite budget on a plan of up to SHORT_LOOKAHEAD_SLOTS slots, a second candidate
splits the budget over the layers exactly (a knapsack over prefixes of each layer's own
sequences: the greedy potential sequence, a makespan-first sequence, one that also
takes chains, and a beam search over swaps), and the candidate with the lower objective
is returned. Chains matter on plans without spare slots, where a hot expert must leave
its GPU and the load it displaces must cascade over several GPUs. The objective is the
one of `vibe place` (vibe.cost): sum over operating points (or re-sampled steps with
--robust/--traces) of weight x sum over layers of the slowest GPU's time.

Validity along the list: after every single move and after every swap or chain, every
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
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vibe.cost import comm_model, expert_time_us
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
    from `old_expert` to `new_expert`; `bytes` of weights travel to the slot's GPU.
    `step`: the repair step the move belongs to (moves of one step, a swap or a chain, are
    applied together; every plan between steps is valid), -1 when not known."""

    layer: int
    slot: int
    old_expert: int
    new_expert: int
    bytes: int
    step: int = -1

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
        G = placement.num_gpus
        r = next(r for r in range(G * E + 1) if (E + r) % G == 0 and live_gpus * ((E + r) // G) >= E)
        raise VibeError(f"{E} experts need {E} live slots; {live_gpus} live GPUs x {S} slots hold only "
                        f"{live_gpus * S} (a plan that survives this loss needs --redundant {r} or more)")


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
        self.gpu_live = ~np.isin(np.arange(self.G), np.asarray(down, dtype=np.int64))  # [G]
        # with a network block each GPU also pays its all-to-all: linear in the tokens it
        # receives, so it splits per replica, and a fixed latency (vibe.cost.comm_model)
        cm = comm_model(cluster)
        self.comm_rate = np.zeros(self.G) if cm is None else cm.us_per_token  # [G] us per token
        self.fixed_us = cluster.overhead_us + (0.0 if cm is None else cm.latency_us)  # [G] or scalar
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
            return expert_time_us(self.cluster, gpus, share[..., None]) + share[..., None] * self.comm_rate

        self.C0[:, l] = per_slot(c)
        self.Cm[:, l] = per_slot(np.where(c >= 2, c - 1, 0))
        self.Cp[:, l] = per_slot(c + 1)
        T = np.zeros((n.shape[0], G))
        np.add.at(T, (slice(None), g), self.C0[:, l, e, g])
        self.T[:, l] = T + self.fixed_us

    def layer_value(self, l: int) -> float:
        return float(self.w @ self.T[:, l].max(axis=1))

    def level(self, l: int) -> np.ndarray:
        """[K] mean time of layer l's live GPUs: the level its GPUs should come down to."""
        return self.T[:, l][:, self.gpu_live].mean(axis=1)

    def _excess(self, x: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """Squared time above the level (tau [K], broadcast over x [K, ...])."""
        t = tau.reshape((-1,) + (1,) * (x.ndim - 1))
        return np.maximum(x - t, 0.0) ** 2

    def heavy_slots(self, l: int, tau: np.ndarray) -> np.ndarray:
        """Live slots on the HEAVY_GPUS live GPUs furthest above the level: a step must
        unload one of them to lower the potential (all GPUs when there are few)."""
        T = self.T[:, l]
        rel = self.w @ (T / np.maximum(tau[:, None], 1e-12))  # [G]
        rel = np.where(self.gpu_live, rel, -np.inf)
        heavy = np.argsort(-rel, kind="stable")[:HEAVY_GPUS]
        return np.flatnonzero(self.live & np.isin(self.gpu, heavy))

    def swaps(self, l: int, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Swaps of a live slot i on a heavy GPU with any live slot j of layer l:
        (change of the weighted makespan [I, J], change of the excess potential [I, J],
        slots i [I], slots j [J]); inf where not allowed."""
        si, sj = self.heavy_slots(l, tau), np.flatnonzero(self.live)
        ai, gi, aj, gj = self.phy[l, si], self.gpu[si], self.phy[l, sj], self.gpu[sj]
        T, C0 = self.T[:, l], self.C0[:, l]  # [K, G], [K, E, G]
        M = T.max(axis=1)  # [K]
        new_i = (T[:, gi] - C0[:, ai, gi])[:, :, None] + C0[:, aj[None, :], gi[:, None]]  # [K, I, J]
        new_j = (T[:, gj] - C0[:, aj, gj])[:, None, :] + C0[:, ai[:, None], gj[None, :]]  # [K, I, J]
        rest = _rest_max(T)[:, gi[:, None], gj[None, :]]  # [K, I, J] the other GPUs' max
        df = np.tensordot(self.w, np.maximum(np.maximum(new_i, new_j), rest) - M[:, None, None], axes=1)
        dphi = np.tensordot(self.w, self._excess(new_i, tau) + self._excess(new_j, tau)
                            - self._excess(T[:, gi], tau)[:, :, None] - self._excess(T[:, gj], tau)[:, None, :],
                            axes=1)
        has = self.has[l]
        ok = (gi[:, None] != gj[None, :]) & (ai[:, None] != aj[None, :])
        ok &= (has[ai[:, None], gj[None, :]] == 0) & (has[aj[None, :], gi[:, None]] == 0)
        return np.where(ok, df, np.inf), np.where(ok, dphi, np.inf), si, sj

    def singles(self, l: int, tau: np.ndarray, targets: np.ndarray | None = None):
        """Moves of a live slot whose expert has another live replica to another expert:
        one held by a heavy GPU (a new replica unloads it), or only `targets` [E] bool if
        given. Returns (change of the makespan [N, B], change of the excess potential
        [N, B], slots [N], experts [B]); inf where not allowed."""
        slots = np.flatnonzero(self.live & (self.cnt[l][self.phy[l]] >= 2))
        if targets is None:
            targets = np.zeros(self.E, dtype=bool)
            targets[self.phy[l, self.heavy_slots(l, tau)]] = True
        b = np.flatnonzero(targets)
        if slots.size == 0 or b.size == 0:
            return np.full((slots.size, b.size), np.inf), np.full((slots.size, b.size), np.inf), slots, b
        a, g = self.phy[l, slots], self.gpu[slots]
        T, C0, Cm, Cp, has = self.T[:, l], self.C0[:, l], self.Cm[:, l], self.Cp[:, l], self.has[l]
        M = T.max(axis=1)
        N = slots.size
        # the slot's expert loses a replica: its other replicas take more tokens, the slot is freed
        d_src = has[a][None] * (Cm[:, a, :] - C0[:, a, :])  # [K, N, G]
        # (a plan may hold two replicas of one expert on one GPU: the one left there also grows)
        d_src[:, np.arange(N), g] = (has[a, g] - 1) * (Cm[:, a, g] - C0[:, a, g]) - C0[:, a, g]
        # the new expert gains a replica here: its existing replicas take fewer tokens
        d_dst = has[b][None] * (Cp[:, b] - C0[:, b])  # [K, B, G]
        X = T[:, None, None, :] + d_src[:, :, None, :] + d_dst[:, None, :, :]  # [K, N, B, G]
        X[:, np.arange(N)[:, None], np.arange(b.size)[None, :], g[:, None]] += Cp[:, b][:, :, g].transpose(0, 2, 1)
        df = np.tensordot(self.w, X.max(axis=3) - M[:, None, None], axes=1)  # [N, B]
        dphi = np.tensordot(self.w, (self._excess(X, tau) - self._excess(T, tau)[:, None, None, :]).sum(axis=3),
                            axes=1)
        ok = (a[:, None] != b[None, :]) & (has[b][:, g].T == 0)
        return np.where(ok, df, np.inf), np.where(ok, dphi, np.inf), slots, b

    def next_step(self, l: int, tau: np.ndarray, tol: float) -> list[tuple[int, int]] | None:
        """The step of layer l that lowers the excess potential most per move without
        raising the makespan: [(slot, new expert)] (one move, or a swap's two), or None.
        Why the potential and not the makespan: when two GPUs tie at the top, no single
        swap lowers the makespan, but unloading either one is progress."""
        df, dphi, si, sj = self.swaps(l, tau)
        key = np.where((df <= tol) & (dphi < -tol * tol), dphi / 2 + 1e-3 * np.minimum(df, 0), np.inf)
        best, step = np.inf, None
        if key.size:
            k = int(np.argmin(key))
            best = key.flat[k]
        if np.isfinite(best):
            i, j = divmod(k, len(sj))
            i, j = int(si[i]), int(sj[j])
            step = [(i, int(self.phy[l, j])), (j, int(self.phy[l, i]))]
        if (self.cnt[l] >= 2).any():
            df, dphi, slots, b = self.singles(l, tau)
            key = np.where((df <= tol) & (dphi < -tol * tol), dphi + 2e-3 * np.minimum(df, 0), np.inf)
            if key.size and key.min() < best:
                i, j = divmod(int(np.argmin(key)), b.size)
                step = [(int(slots[i]), int(b[j]))]
        return step

    def next_makespan_step(self, l: int, tau: np.ndarray, tol: float) -> list[tuple[int, int]] | None:
        """The step of layer l that lowers its weighted makespan most per move (ties: the
        excess potential), or next_step's potential step when none lowers it."""
        best, step = -tol, None
        df, dphi, si, sj = self.swaps(l, tau)
        if df.size:
            key = df / 2 + 1e-9 * np.where(np.isfinite(dphi), dphi, 0) / max(float(tau.max()), 1e-12)
            k = int(np.argmin(key))
            if key.flat[k] < best and df.flat[k] < -tol:
                i, j = divmod(k, len(sj))
                i, j = int(si[i]), int(sj[j])
                best, step = key.flat[k], [(i, int(self.phy[l, j])), (j, int(self.phy[l, i]))]
        if (self.cnt[l] >= 2).any():
            df, dphi, slots, b = self.singles(l, tau)
            if df.size:
                key = df + 1e-9 * np.where(np.isfinite(dphi), dphi, 0) / max(float(tau.max()), 1e-12)
                k = int(np.argmin(key))
                if key.flat[k] < best and df.flat[k] < -tol:
                    i, j = divmod(k, b.size)
                    step = [(int(slots[i]), int(b[j]))]
        return step if step is not None else self.next_step(l, tau, tol)

    def _arrivals(self, l: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """[K, A, B] time of the GPU of slot dst[b] once its expert leaves and the expert of
        slot src[a] arrives."""
        T, C0, a, g = self.T[:, l], self.C0[:, l], self.phy[l], self.gpu
        gd = g[dst]
        return (T[:, gd] - C0[:, a[dst], gd])[:, None, :] + C0[:, a[src][:, None], gd[None, :]]

    def _may_take(self, l: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """[A, B] whether slot dst[b]'s GPU may take slot src[a]'s expert: another GPU,
        holding no replica of it (a plan keeps at most one replica per GPU)."""
        g, a = self.gpu, self.phy[l]
        return (g[src][:, None] != g[dst][None, :]) & (self.has[l][a[src][:, None], g[dst][None, :]] == 0)

    def cycles(self, l: int, tau: np.ndarray) -> list[tuple[float, list[tuple[int, int]]]]:
        """The best closed chain of 3 and of 4 moves in layer l, as [(change of the weighted
        makespan, step)]: the expert of a slot i on one of the CYCLE_START_GPUS heaviest
        GPUs moves into slot j's GPU, j's expert into slot k's GPU, (k's into slot m's,)
        and the last one into slot i. Every expert keeps its replica count, so a chain
        applied as one step keeps the plan valid; it reaches what swaps cannot when the
        heat must cascade over several GPUs. 3-chains are scored exhaustively; 4-chains
        extend the CHAIN_KEEP open 3-chains of lowest floor (a bound on their peak)."""
        T, w, g = self.T[:, l], self.w, self.gpu
        M = T.max(axis=1)  # [K]
        rel = np.where(self.gpu_live, w @ (T / np.maximum(tau[:, None], 1e-12)), -np.inf)
        top = np.argsort(-rel, kind="stable")[:CYCLE_START_GPUS]
        si, sj = np.flatnonzero(self.live & np.isin(g, top)), np.flatnonzero(self.live)
        if si.size == 0 or sj.size < 3:
            return []
        new_j = self._arrivals(l, si, sj)  # [K, I, J] j's GPU takes i's expert
        new_k = self._arrivals(l, sj, sj)  # [K, J, J] k's GPU takes j's expert
        new_i = self._arrivals(l, sj, si).transpose(0, 2, 1)  # [K, I, J] i's GPU takes the last one's
        ok_ij, ok_jk = self._may_take(l, si, sj), self._may_take(l, sj, sj)  # [I, J], [J, J]
        ok_ki = self._may_take(l, sj, si).T  # [I, J]
        out = []
        # 3-chains i -> j -> k -> i
        gi, gj = g[si], g[sj]
        ok = ok_ij[:, :, None] & ok_jk[None] & ok_ki[:, None, :] & (gi[:, None, None] != gj[None, None, :])
        peak = np.maximum(np.maximum(new_j[:, :, :, None], new_k[:, None]), new_i[:, :, None, :])
        peak = np.maximum(peak, _rest_max_outside(T, (gi[:, None, None], gj[None, :, None], gj[None, None, :])))
        df = np.where(ok, np.tensordot(w, peak - M[:, None, None, None], axes=1), np.inf)  # [I, J, J]
        b = int(np.argmin(df))
        if np.isfinite(df.flat[b]):
            i, j, k = np.unravel_index(b, df.shape)
            out.append((float(df.flat[b]), self._chain_step(l, [si[i], sj[j], sj[k]])))
        # 4-chains i -> j -> k -> m -> i, exhaustively from the heaviest GPU's slots when
        # the largest time outside four GPUs fits a table, else from the CHAIN_KEEP open
        # 3-chains of lowest floor (a bound on their peak)
        if self.G <= CHAIN_TABLE_GPUS:
            g0 = top[0]  # every start slot is on this GPU: what does not depend on i is shared
            rest4 = _rest_max_table(T, 4)[:, g0]  # [K, G, G, G] largest time outside g0 and three GPUs
            pair_ok = ok_jk & (gj != g0)[None, :]  # [J, J] j's expert may go to k's GPU, not g0
            best4 = (np.inf, None)
            wM = w @ M
            for ii in np.flatnonzero(gi == g0):
                # Only a chain that lowers the weighted makespan (df < 0) and beats the best
                # so far is of use, and a chain's peak is at least that of its first two and
                # of its last two moves: score just the (j, k, m) whose pairs (j, k) and (k, m)
                # alone stay below that (the same best chain, found in the same index order).
                cut = wM + min(best4[0], 0.0)
                lo_jk = np.tensordot(w, np.maximum(new_j[:, ii][:, :, None], new_k), axes=1) < cut  # [J, J]
                lo_km = np.tensordot(w, np.maximum(new_k, new_i[:, ii][:, None, :]), axes=1) < cut  # [J, J]
                j, k = np.nonzero(lo_jk & pair_ok & ok_ij[ii][:, None])  # [n] pairs, C order
                fits = lo_km[k] & ok_jk[k] & ok_ki[ii][None, :] & (gj[j][:, None] != gj[None, :])  # [n, J]
                r, m = np.nonzero(fits)  # (j, k, m) in C order: as argmin scans
                if not r.size:
                    continue
                j, k = j[r], k[r]
                peak = np.maximum(np.maximum(np.maximum(new_k[:, j, k], new_k[:, k, m]), rest4[:, gj[j], gj[k], gj[m]]),
                                  np.maximum(new_j[:, ii, j], new_i[:, ii, m]))  # [K, n]
                df = w @ peak - wM
                b = int(np.argmin(df))
                if df[b] < best4[0]:
                    best4 = (float(df[b]), (si[ii], sj[j[b]], sj[k[b]], sj[m[b]]))
            if np.isfinite(best4[0]):
                out.append((best4[0], self._chain_step(l, list(best4[1]))))
            return out
        # (above CHAIN_TABLE_GPUS GPUs)
        # 4-chains i -> j -> k -> m -> i from the open 3-chains of lowest floor: i's GPU
        # without i's expert and the two GPUs that took one; the chain's peak is above it
        open_ok = ok_ij[:, :, None] & ok_jk[None] & (gi[:, None, None] != gj[None, None, :])
        floor = np.maximum(np.maximum(new_j[:, :, :, None], new_k[:, None]),
                           (T[:, gi] - self.C0[:, l, self.phy[l, si], gi])[:, :, None, None])
        score = np.where(open_ok, np.tensordot(w, floor, axes=1), np.inf)
        n = min(CHAIN_KEEP, score.size)
        pick = np.argpartition(score.ravel(), n - 1)[:n]
        pick = pick[np.isfinite(score.flat[pick])]
        if pick.size:
            i, j, k = np.unravel_index(pick, score.shape)  # [N] each
            new_m = self._arrivals(l, sj, sj)[:, k]  # [K, N, J] m's GPU takes k's expert
            new_i4 = new_i[:, i]  # [K, N, J] i's GPU takes m's expert
            gm = gj[None, :]
            ok = ok_jk[k] & ok_ki[i] & (gm != gi[i][:, None]) & (gm != gj[j][:, None])  # [N, J]
            peak = np.maximum(np.maximum(new_m, new_i4), np.maximum(new_j[:, i, j], new_k[:, j, k])[:, :, None])
            peak = np.maximum(peak, _rest_max_outside(T, (gi[i][:, None], gj[j][:, None], gj[k][:, None], gm)))
            df = np.where(ok, np.tensordot(w, peak - M[:, None, None], axes=1), np.inf)  # [N, J]
            b = int(np.argmin(df))
            if np.isfinite(df.flat[b]):
                n_, m = divmod(b, df.shape[1])
                out.append((float(df.flat[b]), self._chain_step(l, [si[i[n_]], sj[j[n_]], sj[k[n_]], sj[m]])))
        return out

    def _chain_step(self, l: int, chain: Sequence[int]) -> list[tuple[int, int]]:
        """Slots [i, j, ..., z] of a closed chain -> its moves, listed so that each one's new
        expert is the next one's old: (i gets z's expert), (z gets y's), ..., (j gets i's)."""
        a = self.phy[l]
        c = [int(x) for x in chain]
        return [(c[0], int(a[c[-1]]))] + [(c[h], int(a[c[h - 1]])) for h in range(len(c) - 1, 0, -1)]

    def next_chain_step(self, l: int, tau: np.ndarray, tol: float) -> list[tuple[int, int]] | None:
        """The step of layer l, swap, single move or closed chain of up to MAX_CHAIN moves,
        that lowers its weighted makespan most per move; next_step's potential step when
        none lowers it."""
        step = self.next_makespan_step(l, tau, tol)
        best = -tol
        if step is not None:  # its gain per move, by trying it (one layer's refresh)
            row = self.phy[l].copy()
            before = self.layer_value(l)
            self.apply(l, step)
            best = min((self.layer_value(l) - before) / len(step), -tol)
            self.phy[l] = row
            self.refresh(l)
        for df, chain in self.cycles(l, tau):
            if df / len(chain) < best and df < -tol:
                best, step = df / len(chain), chain
        return step

    def forced_rehome(self, l: int) -> tuple[int, int]:
        """The cheapest move that gives an expert without a live slot one: (slot, expert)."""
        df, dphi, slots, b = self.singles(l, self.level(l), targets=self.cnt[l] == 0)
        i, j = divmod(int(np.argmin(df + 1e-9 * dphi)), b.size)
        return int(slots[i]), int(b[j])

    def apply(self, l: int, step: Sequence[tuple[int, int]]) -> list[Move]:
        """Apply a step to layer l (refreshing it); its moves (layer and bytes unset)."""
        moves = []
        for slot, expert in step:
            moves.append(Move(-1, slot, int(self.phy[l, slot]), expert, 0))
            self.phy[l, slot] = expert
        self.refresh(l)
        return moves


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


def _rest_max_table(T: np.ndarray, c: int) -> np.ndarray:
    """T [K, G] GPU times -> [K, G, ..., G] (c GPU axes): the largest time outside GPUs
    (g1, ..., gc) (-inf when they cover every GPU)."""
    K, G = T.shape
    idx = np.indices((G,) * c)  # [c, G, ..., G]
    h = np.arange(G).reshape((G,) + (1,) * c)
    outside = ~(idx[None] == h[:, None]).any(axis=1)  # [G(h), G, ..., G]
    return np.where(outside[None], T.reshape((K, G) + (1,) * c), -np.inf).max(axis=1)


def _rest_max_outside(T: np.ndarray, gpu_sets: Sequence[np.ndarray]) -> np.ndarray:
    """T [K, G] GPU times; gpu_sets: c integer arrays that broadcast together to shape
    [...], the GPUs of each candidate (distinct) -> [K, ...] the largest time outside
    each candidate's GPUs (-inf when they are every GPU)."""
    order = np.argsort(-T, axis=1)[:, :len(gpu_sets) + 1]  # [K, <=c+1]: one is outside the set
    vals = np.take_along_axis(T, order, axis=1)
    shape = np.broadcast_shapes(*(np.shape(x) for x in gpu_sets))
    out = np.full((T.shape[0],) + shape, -np.inf)
    pad = (slice(None),) + (None,) * len(shape)
    for r in range(order.shape[1] - 1, -1, -1):  # the best rank not excluded wins
        o = order[:, r][pad]
        inside = np.zeros((T.shape[0],) + shape, dtype=bool)
        for x in gpu_sets:
            inside |= np.asarray(x)[None] == o
        out = np.where(inside, out, vals[:, r][pad])
    return out


CYCLE_START_GPUS, CHAIN_KEEP, MAX_CHAIN = 2, 512, 4  # chains start on the 2 heaviest GPUs
CHAIN_PREFIX_MOVES = 12  # moves of a layer's chains sequence that may be chains
CHAIN_TABLE_GPUS = 12  # up to here 4-chains are searched exhaustively (a G**4 table)
HEAVY_GPUS = 8  # GPUs furthest above the level that a step may unload (ESFT's 8 GPUs: all)
LOOKAHEAD_STEPS = 4  # steps of each layer's own sequence scored ahead (plateaus hide gains)
# Above this many slots in all layers, a layer looks ahead only to its first gain: a
# DeepSeek-V3-sized plan (58 x 320) then repairs in about 2 s instead of 6 s; on ESFT
# plans (26 x 64) the full lookahead recovers 2-4 points more of the re-solve's gain.
SHORT_LOOKAHEAD_SLOTS = 8192


class _Sequence:
    """One layer's repair sequence, generated ahead of what the global greedy commits.

    Layers are independent, so each layer's best next step does not depend on what
    happens elsewhere: the steps generated ahead are exactly that layer's future. The
    greedy commits a prefix chunk of LOOKAHEAD_STEPS steps or fewer, the one with the
    best gain per move (a plateau step followed by a big gain is worth its moves)."""

    def __init__(self, st: _State, l: int, tol: float, short: bool):
        self.st, self.l, self.tol, self.short = st, l, tol, short
        self.tau = st.level(l)  # fixed for the layer: the potential must not drift
        self.steps: list[tuple[list[Move], float]] = []  # (moves, layer value after)
        self.start = st.layer_value(l)
        self.done = 0  # steps committed
        self.exhausted = False

    def _extend(self) -> None:
        """Generate LOOKAHEAD_STEPS steps ahead (`short`: stop at one that lowers the makespan)."""
        base = self.steps[self.done - 1][1] if self.done else self.start
        while not self.exhausted and len(self.steps) < self.done + LOOKAHEAD_STEPS:
            if self.short and len(self.steps) > self.done and self.steps[-1][1] < base - self.tol:
                break
            step = self.st.next_step(self.l, self.tau, self.tol)
            if step is None:
                self.exhausted = True
                break
            moves = self.st.apply(self.l, step)
            self.steps.append((moves, self.st.layer_value(self.l)))

    def best_chunk(self, room: float) -> tuple[float, int, int]:
        """(gain per move, steps, moves) of the best next chunk within `room` moves."""
        self._extend()
        base = self.steps[self.done - 1][1] if self.done else self.start
        best = (0.0, 0, 0)
        used = 0
        for k in range(self.done, len(self.steps)):
            used += len(self.steps[k][0])
            if used > room:
                break
            rate = (base - self.steps[k][1]) / used
            if rate > best[0] * (1 + 1e-12):
                best = (rate, k + 1 - self.done, used)
        return best

    def commit(self, count: int) -> list[tuple[list[Move], float]]:
        out = self.steps[self.done:self.done + count]
        self.done += count
        return out



# ---- the candidate sequences -----------------------------------------------------------
# A layer's plan after a step: (the step's moves, the layer's value after it).
_Steps = list[tuple[list[Move], float]]


def _restore(st: _State, phy: np.ndarray) -> None:
    """Put the state back on plan `phy` [L, P] (refreshing the layers that differ)."""
    for l in np.flatnonzero((st.phy != phy).any(axis=1)):
        st.phy[l] = phy[l]
        st.refresh(int(l))


def _greedy_chunks(st: _State, tol: float, short: bool, room: float,
                   min_gain_us: float) -> list[tuple[int, _Steps, float]]:
    """Global greedy: again and again, the chunk of some layer's own sequence that lowers
    the objective most per move. Returns committed runs [(layer, steps, gain)] in order."""
    L = st.phy.shape[0]
    seqs = [_Sequence(st, l, tol, short) for l in range(L)]
    chunks = [s.best_chunk(room) for s in seqs]
    out: list[tuple[int, _Steps, float]] = []
    while room >= 1:
        l = int(np.argmax([c[0] for c in chunks]))
        rate, count, used = chunks[l]
        if count == 0 or rate <= tol or rate < min_gain_us:
            break
        out.append((l, seqs[l].commit(count), rate * used))
        room -= used
        chunks[l] = seqs[l].best_chunk(room)
        for k, c in enumerate(chunks):  # a chunk that no longer fits the budget is re-cut
            if c[2] > room:
                chunks[k] = seqs[k].best_chunk(room)
    return out


def _layer_sequence(st: _State, l: int, tol: float, cap: float, mode: str) -> _Steps:
    """Layer l's own sequence of improving steps, up to `cap` moves, from the state's
    current plan (which it leaves changed). mode "potential": each step lowers the excess
    potential most per move (next_step); "makespan": the step that lowers the layer's
    weighted makespan most per move, the potential step only on a plateau; "chains": as
    "makespan" with closed chains too, for the first CHAIN_PREFIX_MOVES moves (where the
    budget split mostly cuts; chains cost ~50x a swap search)."""
    tau = st.level(l)
    steps: _Steps = []
    used = 0
    while True:
        if mode == "chains" and used < CHAIN_PREFIX_MOVES:
            step = st.next_chain_step(l, tau, tol)
        else:
            step = st.next_step(l, tau, tol) if mode == "potential" else st.next_makespan_step(l, tau, tol)
        if step is None or used + len(step) > cap:
            break
        used += len(step)
        steps.append((st.apply(l, step), st.layer_value(l)))
    return steps


BEAM_WIDTH, BEAM_BRANCH, BEAM_DEPTH = 8, 16, 6  # plans kept, swaps tried from each, swaps deep


def _beam_options(st: _State, l: int, tol: float, cap: float) -> list[tuple[int, float, _Steps]]:
    """Layer l's swap sequences by beam search, from the state's current plan (restored
    on return): at every depth, the BEAM_WIDTH distinct plans of lowest excess potential
    that BEAM_BRANCH improving swaps of the plans before reach, no swap raising the
    makespan. Returns, per depth, the path to the plan of lowest makespan as an option
    (moves, gain, steps); its steps are replayed on the state, so their values are exact."""
    row, base, tau = st.phy[l].copy(), st.layer_value(l), st.level(l)
    beams: list[tuple[float, float, np.ndarray, list]] = [(base, 0.0, row, [])]  # (value, potential, row, path)
    out: list[tuple[int, float, _Steps]] = []
    for depth in range(1, int(min(BEAM_DEPTH, cap // 2)) + 1):
        cand = []
        for val, phi, r, path in beams:
            st.phy[l] = r
            st.refresh(l)
            df, dphi, si, sj = st.swaps(l, tau)
            if not df.size:
                continue
            ok = (df <= tol) & (dphi < -tol * tol)
            key = np.where(ok, dphi, np.inf).ravel()
            for k in np.argsort(key, kind="stable")[:BEAM_BRANCH]:
                if not np.isfinite(key[k]):
                    break
                i, j = divmod(int(k), len(sj))
                i, j = int(si[i]), int(sj[j])
                r2 = r.copy()
                r2[i], r2[j] = r[j], r[i]
                cand.append((val + float(df.flat[k]), phi + float(key[k]), r2,
                             path + [[(i, int(r[j])), (j, int(r[i]))]]))
        seen: set[bytes] = set()
        beams = []
        for c in sorted(cand, key=lambda c: c[1]):
            sig = np.sort(c[2].reshape(st.G, st.S), axis=1).tobytes()  # slot order within a GPU is moot
            if sig not in seen:
                seen.add(sig)
                beams.append(c)
                if len(beams) == BEAM_WIDTH:
                    break
        if not beams:
            break
        best = min(beams, key=lambda c: c[0])
        st.phy[l] = row
        st.refresh(l)
        steps = [(st.apply(l, step), st.layer_value(l)) for step in best[3]]
        out.append((2 * depth, base - steps[-1][1], steps))
    st.phy[l] = row
    st.refresh(l)
    return out


SEQUENCE_MODES = ("potential", "makespan", "chains")
# A layer's sequences are generated up to this many times its fair share of the moves
# (and at least LAYER_MIN_CAP moves): the budget split rarely gives one layer more.
LAYER_SHARE_CAP, LAYER_MIN_CAP = 4, 16


def _layer_options(st: _State, l: int, tol: float, cap: float, min_gain_us: float) -> list[tuple[int, float, _Steps]]:
    """Layer l's repairs of up to `cap` moves, best per move count: [(moves, gain, steps)]
    ascending in moves, from the prefixes of its own sequences (every SEQUENCE_MODES
    mode, chain-first ones, the beam over swaps); the state is left on its plan. A
    prefix must gain min_gain_us per move."""
    row, base = st.phy[l].copy(), st.layer_value(l)
    best: dict[int, tuple[float, _Steps]] = {}
    # the sequences of every mode, and chain-first ones: the best 3- and 4-chain by
    # their whole gain (a chain can gain most in few moves yet less per move than a swap)
    starts = [(mode, []) for mode in SEQUENCE_MODES]
    starts += [("chains", [chain]) for df, chain in st.cycles(l, st.level(l)) if df < -tol and len(chain) <= cap]
    for mode, first in starts:
        steps = [(st.apply(l, step), st.layer_value(l)) for step in first]
        steps += _layer_sequence(st, l, tol, cap - sum(len(ms) for ms, _ in steps), mode if not first else "makespan")
        used = 0
        for k, (ms, v) in enumerate(steps):
            used += len(ms)
            gain = base - v
            if gain > tol and gain >= min_gain_us * used and gain > best.get(used, (0.0,))[0]:
                best[used] = (gain, steps[:k + 1])
        st.phy[l] = row
        st.refresh(l)
    for used, gain, steps in _beam_options(st, l, tol, cap):
        if gain > tol and gain >= min_gain_us * used and gain > best.get(used, (0.0,))[0] \
                and all(b[1] <= a[1] + tol for a, b in zip([([], base)] + steps, steps)):
            best[used] = (gain, steps)
    return [(m, g, s) for m, (g, s) in sorted(best.items())]


def _budgeted_layers(st: _State, tol: float, room: float,
                     min_gain_us: float) -> list[tuple[int, _Steps, float]]:
    """Split the move budget over the layers exactly: every layer offers the prefixes of
    several of its own sequences (SEQUENCE_MODES), each a (moves, gain) option, and a
    knapsack over the layers picks one prefix per layer that gains most in all within
    `room` moves. A prefix must gain min_gain_us per move. Layers are listed by gain per
    move, each prefix whole: every step lowers its layer's value, so the objective never
    rises along the list."""
    L = st.phy.shape[0]
    B = int(min(room, L * st.phy.shape[1]))
    cap = min(B, max(LAYER_MIN_CAP, LAYER_SHARE_CAP * B // max(L, 1)))
    options = [_layer_options(st, l, tol, cap, min_gain_us) for l in range(L)]  # per layer: (moves, gain, steps)
    # knapsack: total[b] = the most gain within b moves over the layers so far
    total = np.zeros(B + 1)
    pick = np.full((L, B + 1), -1, dtype=np.int64)
    for l, opts in enumerate(options):
        new = total.copy()
        for k, (m, g, _) in enumerate(opts):
            if m > B:
                break
            cand = np.full(B + 1, -np.inf)
            cand[m:] = total[:B + 1 - m] + g
            better = cand > new * (1 + 1e-12) + tol
            new = np.where(better, cand, new)
            pick[l, better] = k
        total = new
    b = int(np.argmax(total))
    chosen = []
    for l in range(L - 1, -1, -1):
        k = int(pick[l, b])
        if k >= 0:
            m, g, steps = options[l][k]
            chosen.append((l, steps, g))
            b -= m
    chosen.sort(key=lambda c: -c[2] / sum(len(ms) for ms, _ in c[1]))
    return chosen


def repair_placement(placement: Placement, loads: ExpertLoads, cluster: Cluster, options: PlacementOptions,
                     max_moves: int | None = None, max_bytes: float | None = None,
                     down_gpus: Sequence[int] = (), *, min_gain_us: float = 0.0) -> Repair:
    """Greedy repair of `placement` for `loads` on `cluster` (see the module docstring).

    max_moves / max_bytes: budgets (None: unbounded); a swap needs two moves.
    down_gpus: lost GPUs (with those the cluster marks down and the plan names).
    min_gain_us: every committed chunk must lower the objective by at least this much
    per step and per move (min_gain_per_move gives the worth-it threshold); 0 takes
    every gain.
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
    room = math.inf if max_moves is None else float(max_moves)
    if max_bytes is not None:
        room = min(room, max_bytes // size)
    ids = placement.layer_ids
    L = placement.num_layers
    moves: list[Move] = []
    steps: list[float] = []
    value = np.array([st.layer_value(l) for l in range(L)])  # [L] committed layer values

    def record(l: int, ms: Sequence[Move], layer_value: float) -> None:
        value[l] = layer_value
        total = math.inf if (st.cnt == 0).any() else float(value.sum())
        step = moves[-1].step + 1 if moves else 0
        for m in ms:
            moves.append(dataclasses.replace(m, layer=int(ids[l]), bytes=size, step=step))
            steps.append(total)

    # 1. re-home the experts a lost GPU held alone (required, whatever they cost)
    orphans = st.cnt == 0  # [L, E]
    need = int(orphans.sum())
    if need > room:
        raise VibeError(f"re-homing the experts of lost GPU(s) {list(down)} needs {need} moves "
                        f"({need * size:,} bytes), more than the budget")
    for l in np.flatnonzero(orphans.any(axis=1)):
        while (st.cnt[l] == 0).any():
            ms = st.apply(l, [st.forced_rehome(l)])
            record(l, ms, st.layer_value(l))
    room -= need
    before = math.inf if need else objective_us(
        dataclasses.replace(placement, replica_weights=live_weights(placement, down)), cluster, tokens, w)

    # 2. candidate move sequences from the same start; the one with the lowest objective wins
    tol = 1e-9 * max(float(value.sum()) / L, 1e-12)
    short = L * placement.num_slots > SHORT_LOOKAHEAD_SLOTS
    start = st.phy.copy()
    candidates = [_greedy_chunks(st, tol, short, room, min_gain_us)]
    if not short and math.isfinite(room):
        _restore(st, start)
        candidates.append(_budgeted_layers(st, tol, room, min_gain_us))
    gains = [sum(g for _, _, g in c) for c in candidates]
    for l, steps_l, _ in candidates[int(np.argmax(gains))]:
        for ms, v in steps_l:
            record(l, ms, v)

    # the layers' sequences ran ahead of what was committed: rebuild from the moves
    new = dataclasses.replace(apply_moves(placement, moves, down), replica_weights=live_weights(placement, down))
    after = objective_us(new, cluster, tokens, w)
    return Repair(new, tuple(moves), before, after, tuple(steps))


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
    """Group the move list into the steps an engine applies. Moves that carry their step
    (a repair's do) group by it. Otherwise a closed chain (consecutive moves of one layer,
    each one's new expert the next one's old, the last one's new expert the first one's
    old: a swap, or a cycle of up to MAX_CHAIN moves) is one step and any other move stands
    alone; that reading is ambiguous (a single move followed by a swap can close a chain
    with the swap's first move), which is why repairs record their steps."""
    if moves and all(m.step >= 0 for m in moves):
        return [tuple(group) for _, group in itertools.groupby(moves, key=lambda m: m.step)]
    out: list[tuple[Move, ...]] = []
    k = 0
    while k < len(moves):
        end = k + 1
        for n in range(k + 1, min(k + MAX_CHAIN, len(moves))):
            if moves[n].layer != moves[k].layer or moves[n].old_expert != moves[n - 1].new_expert:
                break
            if moves[n].new_expert == moves[k].old_expert:
                end = n + 1
                break
        out.append(tuple(moves[k:end]))
        k = end
    return out
