"""Time-balanced rebalancing behind the engines' EPLB entry points (vLLM, SGLang).

Engines call their balancer with the loads of one EP group, `weight [L, E]` tokens per
logical expert of each MoE layer, and the slot layout (`num_replicas` slots, slot p on
rank p // (num_replicas / num_ranks)). `time_balanced` answers with `phy2log [L, P]`
chosen by the `vibe` policy (vibe.policies.place) under per-rank latency curves:

- the curves come from a vibe.cluster/v1 file named by $VIBE_CLUSTER (one GPU per EP
  rank, in rank order); without one, identical synthetic GPUs (vibe.synth), where the
  plan balances time the way the engines' default balances tokens;
- hierarchical (expert groups kept inside a node) exactly when EPLB would be: groups
  divide the experts, nodes divide groups and ranks; otherwise global, as the engines'
  default falls back;
- with the old layout `old [L, P]`, a layer keeps its old row when that row is predicted
  as fast (within `keep_tol`), and a changed row is relabelled so that fewer weights move:
  ranks with the same curve in the same node swap whole contents to overlap the old
  layout most, then experts that stay on a rank keep their old slot.

numpy only; the engine modules convert tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from vibe.cost import DEFAULT_BATCH_TOKENS, gpu_times, normalize_weights
from vibe.errors import InputError, VibeError
from vibe.model import Cluster, ExpertLoads, Placement

ENV_CLUSTER = "VIBE_CLUSTER"  # vibe.cluster/v1 file: one GPU per EP rank
ENV_TOP_K = "VIBE_TOP_K"  # experts per token of the served model
ENV_BATCH = "VIBE_BATCH_TOKENS"  # operating points, e.g. "32768,256" (default: vibe.cost's)
ENV_WEIGHTS = "VIBE_WEIGHTS"  # their weights, e.g. "0.7,0.3"
ENV_HIERARCHY = "VIBE_HIERARCHY"  # "auto" (as the engine asks) or "off" (always global)
ENV_KEEP_TOL = "VIBE_KEEP_TOL"  # keep an old layer predicted within this fraction of a fresh plan
DEFAULT_TOP_K = 8  # DeepSeek-V3 / R1
KEEP_TOL = 1e-3  # keep an old row predicted within 0.1% of the new one


class EplbShapeError(VibeError, AssertionError, ValueError):
    """A slot layout the engines refuse too (their own balancers assert on it)."""


def check_layout(num_experts: int, num_replicas: int, num_ranks: int) -> None:
    """Refuse what every engine refuses: slots that do not split over ranks, too few slots."""
    if num_ranks < 1 or num_replicas % num_ranks:
        raise EplbShapeError(f"{num_replicas} physical experts do not split evenly over {num_ranks} ranks")
    if num_replicas < num_experts:
        raise EplbShapeError(f"{num_replicas} physical experts cannot hold {num_experts} logical experts")


def hierarchical(num_experts: int, num_groups: int, num_nodes: int, num_ranks: int) -> bool:
    """Whether EPLB's hierarchical mode applies (else: global balancing, no error)."""
    return (num_nodes > 1 and num_groups > 0 and num_experts % num_groups == 0
            and num_groups % num_nodes == 0 and num_ranks % num_nodes == 0)


@functools.lru_cache(maxsize=8)
def identical_cluster(num_ranks: int) -> Cluster:
    """Identical synthetic H100-like GPUs (the curve shape matters for replica choices)."""
    from vibe.synth.cluster import synth_cluster

    return synth_cluster(num_ranks, scenario="identical", seed=0, gpus_per_node=num_ranks)


@functools.lru_cache(maxsize=8)
def _cluster_file(path: str, mtime: float) -> Cluster:
    return Cluster.load(path)


def cluster_from_env(num_ranks: int | None = None, env=os.environ) -> Cluster | None:
    """The cluster named by $VIBE_CLUSTER (re-read when the file changes), or None.
    InputError naming the file when it does not have `num_ranks` GPUs."""
    path = env.get(ENV_CLUSTER)
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError(p, f"no such file (named by ${ENV_CLUSTER})")
    cluster = _cluster_file(str(p), p.stat().st_mtime)
    if num_ranks is not None and cluster.num_gpus != num_ranks:
        raise InputError(p, f"describes {cluster.num_gpus} GPUs, the EP group has {num_ranks} ranks")
    return cluster


def top_k_from_env(env=os.environ) -> int:
    raw = env.get(ENV_TOP_K, "")
    if not raw:
        return DEFAULT_TOP_K
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if k < 1:
        raise VibeError(f"${ENV_TOP_K}={raw!r} must be a positive integer")
    return k


def _floats(env, name: str) -> tuple[float, ...] | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        vals = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise VibeError(f"${name}={raw!r} must be comma-separated numbers") from None
    return vals


def point_options(env=os.environ) -> dict:
    """{"batch_tokens", "weights", "hierarchy", "keep_tol"} from the environment (validated)."""
    batch = _floats(env, ENV_BATCH) or DEFAULT_BATCH_TOKENS
    weights = _floats(env, ENV_WEIGHTS)
    normalize_weights(batch, weights)
    hierarchy = env.get(ENV_HIERARCHY, "auto").strip().lower() or "auto"
    if hierarchy not in ("auto", "off"):
        raise VibeError(f"${ENV_HIERARCHY}={hierarchy!r} must be 'auto' or 'off'")
    keep = _floats(env, ENV_KEEP_TOL)
    if keep is not None and (len(keep) != 1 or not 0 <= keep[0] < 1):
        raise VibeError(f"${ENV_KEEP_TOL} must be one number in [0, 1)")
    return {"batch_tokens": tuple(batch), "weights": weights, "hierarchy": hierarchy,
            "keep_tol": KEEP_TOL if keep is None else keep[0]}


def with_rank_nodes(cluster: Cluster, num_nodes: int) -> Cluster:
    """The engine's node layout (rank // ranks_per_node) on the cluster's curves."""
    per_node = cluster.num_gpus // num_nodes
    gpus = [dataclasses.replace(g, node=g.rank // per_node) for g in cluster.gpus]
    return cluster.with_gpus(gpus)


def loads_from_weight(weight: np.ndarray, top_k: int) -> ExpertLoads:
    """[L, E] engine loads -> ExpertLoads; a layer that saw no token counts as uniform
    (engines call their balancer on empty windows at start-up and in profile runs)."""
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or 0 in w.shape:
        raise EplbShapeError(f"weight must be a non-empty [layers, experts] matrix, got shape {list(w.shape)}")
    w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
    empty = w.sum(axis=1) <= 0
    w[empty] = 1.0
    return ExpertLoads(w, min(int(top_k), w.shape[1]))


def valid_old(old: np.ndarray | None, shape: tuple[int, int], num_experts: int) -> bool:
    """True when `old` is a full layout of the same shape holding every expert per layer."""
    if old is None:
        return False
    old = np.asarray(old)
    if old.shape != shape or old.dtype.kind not in "iu" or old.min() < 0 or old.max() >= num_experts:
        return False
    present = np.zeros((shape[0], num_experts), dtype=bool)
    present[np.arange(shape[0])[:, None], old] = True
    return bool(present.all())


def layer_objective(phy: np.ndarray, loads: ExpertLoads, cluster: Cluster,
                    batch_tokens=DEFAULT_BATCH_TOKENS, weights=None) -> np.ndarray:
    """[L] weighted makespan (us) of layout phy [L, P] under vibe.cost."""
    placement = Placement.init_by_mapping(phy, cluster.num_gpus, loads.num_experts, loads.layer_ids)
    w = normalize_weights(batch_tokens, weights)
    return sum(wk * gpu_times(placement, loads, cluster, b).max(axis=1) for b, wk in zip(batch_tokens, w))


def curve_classes(cluster: Cluster) -> np.ndarray:
    """[G] class id: ranks with the same node, curve and overhead share one."""
    grid, us = cluster.latency_table()
    key = np.concatenate([cluster.nodes[:, None], us, cluster.overhead_us[:, None]], axis=1)
    _, cls = np.unique(key, axis=0, return_inverse=True)
    return cls.reshape(-1)


def match_ranks(new: np.ndarray, old: np.ndarray, num_ranks: int, classes: np.ndarray) -> np.ndarray:
    """Permute whole rank contents of new [L, P] among ranks of one class so that each rank
    keeps as many of its old experts as possible (same predicted times, fewer moves)."""
    L, P = new.shape
    S = P // num_ranks
    E = int(max(new.max(), old.max())) + 1
    out = new.copy()
    for l in range(L):
        have_new = np.zeros((num_ranks, E), dtype=np.int64)
        have_old = np.zeros((num_ranks, E), dtype=np.int64)
        np.add.at(have_new, (np.repeat(np.arange(num_ranks), S), new[l]), 1)
        np.add.at(have_old, (np.repeat(np.arange(num_ranks), S), old[l]), 1)
        overlap = np.minimum(have_new[:, None, :], have_old[None, :, :]).sum(axis=2)  # [new rank, old rank]
        for c in np.unique(classes):
            ranks = np.flatnonzero(classes == c)
            if len(ranks) < 2:
                continue
            rows, cols = linear_sum_assignment(-overlap[np.ix_(ranks, ranks)])
            src = new[l].reshape(num_ranks, S)
            block = out[l].reshape(num_ranks, S)
            block[ranks[cols]] = src[ranks[rows]]
    return out


def keep_slots(new: np.ndarray, old: np.ndarray, num_ranks: int) -> np.ndarray:
    """Reorder each rank's slots of new [L, P] so that an expert the rank already held keeps
    its old slot; the rank's other experts fill its remaining slots in order."""
    L, P = new.shape
    S = P // num_ranks
    out = new.copy()
    for l in range(L):
        for r in range(num_ranks):
            lo = r * S
            want, had = list(new[l, lo:lo + S]), list(old[l, lo:lo + S])
            row = [-1] * S
            for s, e in enumerate(had):
                if e in want:
                    row[s] = e
                    want.remove(e)
            free = iter(want)
            out[l, lo:lo + S] = [e if e >= 0 else next(free) for e in row]
    return out


def moved_slots(new: np.ndarray, old: np.ndarray, num_ranks: int) -> int:
    """Slots whose expert must be fetched from another rank (not held by this rank before)."""
    L, P = new.shape
    S = P // num_ranks
    moved = 0
    for l in range(L):
        for r in range(num_ranks):
            had = list(old[l, r * S:(r + 1) * S])
            for e in new[l, r * S:(r + 1) * S]:
                if e in had:
                    had.remove(e)
                else:
                    moved += 1
    return moved


def time_balanced(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
                  old: np.ndarray | None = None, cluster: Cluster | None = None, top_k: int = DEFAULT_TOP_K,
                  keep_tol: float = KEEP_TOL, seed: int = 0, batch_tokens=DEFAULT_BATCH_TOKENS,
                  weights=None, hierarchy: str = "auto") -> np.ndarray:
    """weight [L, E] -> phy2log [L, num_replicas] int64 (see the module docstring).
    hierarchy "off" balances globally even where EPLB would keep groups in nodes."""
    from vibe.policies import PlacementOptions, place

    loads = loads_from_weight(weight, top_k)
    L, E = loads.counts.shape
    check_layout(E, num_replicas, num_ranks)
    if cluster is None:
        cluster = identical_cluster(num_ranks)
    elif cluster.num_gpus != num_ranks:
        raise EplbShapeError(f"the cluster has {cluster.num_gpus} GPUs, the EP group {num_ranks} ranks")
    hier = hierarchy != "off" and hierarchical(E, num_groups, num_nodes, num_ranks)
    cluster = with_rank_nodes(cluster, num_nodes if hier else 1)
    options = PlacementOptions(redundant=num_replicas - E, num_groups=num_groups if hier else None, seed=seed,
                               batch_tokens=tuple(batch_tokens), weights=None if weights is None else tuple(weights))
    new = place(loads, cluster, "vibe", options).physical_to_logical_map
    if not valid_old(old, new.shape, E):
        return new
    old = np.asarray(old, dtype=np.int64)
    f_old = layer_objective(old, loads, cluster, batch_tokens, weights)
    keep = f_old <= layer_objective(new, loads, cluster, batch_tokens, weights) * (1 + keep_tol)
    changed = keep_slots(match_ranks(new, old, num_ranks, curve_classes(cluster)), old, num_ranks)
    return np.where(keep[:, None], old, changed)


def logical_maps(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """phy2log [L, P] -> (log2phy [L, E, X] slots of each expert in slot order, padded with
    -1, X = most replicas; logcnt [L, E]). Slots holding -1 are ignored."""
    phy = np.asarray(phy2log, dtype=np.int64)
    L, P = phy.shape
    valid = phy >= 0
    logcnt = np.zeros((L, num_experts), dtype=np.int64)
    np.add.at(logcnt, (np.broadcast_to(np.arange(L)[:, None], phy.shape)[valid], phy[valid]), 1)
    log2phy = np.full((L, num_experts, max(int(logcnt.max(initial=0)), 1)), -1, dtype=np.int64)
    seen = np.zeros((L, num_experts), dtype=np.int64)
    for p in range(P):
        rows = np.flatnonzero(valid[:, p])
        e = phy[rows, p]
        log2phy[rows, e, seen[rows, e]] = p
        seen[rows, e] += 1
    return log2phy, logcnt
