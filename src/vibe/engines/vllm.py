"""vLLM: vibe as the EPLB policy of vLLM's periodic rebalancer, and start-up from a plan.

vLLM calls `policy.rebalance_experts(weight [L, E], num_replicas, num_groups, num_nodes,
num_ranks, old_global_expert_indices [L, P] | None)` with the loads of the MoE layers only
(L = MoE layers, slot p on rank p // (P / num_ranks)). Releases up to about 0.2x returned
`(phy2log [L, P], log2phy [L, E, X] padded with -1, logcnt [L, E])`; newer ones return
phy2log alone and derive the rest with `compute_logical_maps`. `VibeEplbPolicy` detects
which from the installed `AbstractEplbPolicy` and answers in kind; the placement itself is
`vibe.engines.rebalance.time_balanced` (the `vibe` policy under per-rank curves from
$VIBE_CLUSTER).

Nothing here imports vLLM or torch at module import; `policy_class()` does, lazily.
The plug-in that installs it is `vibe.engines.vllm_plugin`.
"""

from __future__ import annotations

import inspect
import logging
import os
import typing

import numpy as np

from vibe.engines.rebalance import (EplbShapeError, cluster_from_env, logical_maps, point_options, time_balanced,
                                    top_k_from_env)
from vibe.errors import InputError

log = logging.getLogger("vibe.vllm")

ENV_LOADS_OUT = "VIBE_LOADS_OUT"  # write each load window the policy sees as vibe.loads/v1


def dump_loads(weight: np.ndarray, path: str, top_k: int) -> None:
    """vLLM keeps its expert-load window in memory only: write the [L, E] window the policy
    received (MoE layers 0..L-1, vLLM's layer axis) atomically to `path`."""
    from vibe.model import ExpertLoads

    try:
        w = np.asarray(weight, dtype=np.float64)
        ExpertLoads(w, min(top_k, w.shape[1]), model="vllm-eplb-window").save(path)
    except Exception as exc:  # never stop the engine over a dump
        log.warning("vibe: could not write %s: %s", path, exc)


def rebalance_np(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
                 old_global_expert_indices: np.ndarray | None = None, env=os.environ) -> np.ndarray:
    """vLLM's policy contract on numpy arrays: weight [L, E] -> phy2log [L, P] int64.

    Curves from $VIBE_CLUSTER when it names a file with one GPU per rank (otherwise a
    warning and identical GPUs: a running engine must not stop on a stale file), top-k
    from $VIBE_TOP_K (default 8), operating points from $VIBE_BATCH_TOKENS / $VIBE_WEIGHTS,
    $VIBE_HIERARCHY=off to balance globally where EPLB would keep groups in nodes; with
    $VIBE_LOADS_OUT set, the load window is also written there (vibe.loads/v1)."""
    dump = env.get(ENV_LOADS_OUT, "")
    if dump and np.asarray(weight).sum() > 0:
        dump_loads(weight, dump, top_k_from_env(env))
    try:
        cluster = cluster_from_env(num_ranks, env)
    except InputError as exc:
        log.warning("vibe: %s; placing for identical GPUs", exc)
        cluster = None
    return time_balanced(weight, int(num_replicas), int(num_groups), int(num_nodes), int(num_ranks),
                         old_global_expert_indices, cluster, top_k_from_env(env), **point_options(env))


def returns_maps(abstract_cls: type) -> bool:
    """True when the installed vLLM's `rebalance_experts` returns (phy2log, log2phy, logcnt)."""
    fn = abstract_cls.__dict__.get("rebalance_experts", getattr(abstract_cls, "rebalance_experts"))
    fn = getattr(fn, "__func__", fn)
    try:
        ann = typing.get_type_hints(fn).get("return", inspect.signature(fn).return_annotation)
    except Exception:  # unresolved string annotations
        ann = inspect.signature(fn).return_annotation
    if isinstance(ann, str):
        return ann.replace(" ", "").strip("'\"").lower().startswith(("tuple", "typing.tuple"))
    return typing.get_origin(ann) is tuple or ann is tuple


def to_engine(phy2log: np.ndarray, num_experts: int, triple: bool):
    """numpy phy2log -> what the installed vLLM expects: a torch int64 tensor, or the triple."""
    import torch

    phy = torch.from_numpy(np.ascontiguousarray(phy2log, dtype=np.int64))
    if not triple:
        return phy
    log2phy, logcnt = logical_maps(phy2log, num_experts)
    return phy, torch.from_numpy(log2phy), torch.from_numpy(logcnt)


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float().numpy() if x.dtype.is_floating_point else x.long().numpy()
    return np.asarray(x)


_CLASS = None


def policy_class() -> type:
    """The `AbstractEplbPolicy` subclass for the installed vLLM (built once)."""
    global _CLASS
    if _CLASS is None:
        from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy

        _CLASS = make_policy_class(AbstractEplbPolicy)
    return _CLASS


def make_policy_class(abstract_cls: type) -> type:
    """vibe's policy as a subclass of `abstract_cls`, answering in the kind it declares."""
    triple = returns_maps(abstract_cls)

    class VibeEplbPolicy(abstract_cls):
        """vibe's time-balanced placement with per-rank latency curves ($VIBE_CLUSTER)."""

        returns_maps = triple

        @classmethod
        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                              old_global_expert_indices=None):
            w = _np(weight)
            phy = rebalance_np(w, num_replicas, num_groups, num_nodes, num_ranks, _np(old_global_expert_indices))
            return to_engine(phy, w.shape[1], triple)

    return VibeEplbPolicy


def plan_policy(inner: type, plan: np.ndarray, holder: dict) -> type:
    """A policy class that answers the first armed call whose shape matches `plan [L, P]`
    with the plan itself (vLLM then moves the weights there with its own rearrangement
    code), and delegates every other call to `inner`."""
    triple = getattr(inner, "returns_maps", None)
    if triple is None:
        from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy

        triple = returns_maps(AbstractEplbPolicy)

    class VibePlanPolicy(inner):
        @classmethod
        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                              old_global_expert_indices=None):
            shape = tuple(weight.shape)
            if holder.get("armed") and shape == (plan.shape[0], holder["num_experts"]) \
                    and int(num_replicas) == plan.shape[1]:
                holder["armed"] = False
                holder["delivered"] = True
                log.info("vibe: installing the start-up plan %s", holder.get("path"))
                return to_engine(plan, shape[1], triple)
            return inner.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
                                           old_global_expert_indices)

    return VibePlanPolicy


def check_plan_fits(plan, num_moe_layers: int, num_physical: int, num_logical: int, source: object) -> np.ndarray:
    """A vibe.placement/v1 Placement against the served model -> phy2log [L, P], or InputError."""
    if plan.num_layers != num_moe_layers or plan.num_slots != num_physical \
            or plan.num_logical_experts != num_logical:
        raise InputError(source, f"plan of {plan.num_layers} MoE layers x {plan.num_slots} slots over "
                                 f"{plan.num_logical_experts} experts does not fit the model: {num_moe_layers} "
                                 f"MoE layers x {num_physical} physical experts over {num_logical} "
                                 f"(set num_redundant_experts to {plan.num_slots - plan.num_logical_experts})")
    return plan.physical_to_logical_map


__all__ = ["EplbShapeError", "check_plan_fits", "plan_policy", "policy_class", "rebalance_np", "returns_maps",
           "to_engine"]
