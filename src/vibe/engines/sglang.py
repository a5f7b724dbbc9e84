"""SGLang: placement files for `--init-expert-location`, recorder dumps in, logical_count out.

SGLang splats the JSON object into a constructor, so the file holds
`physical_to_logical_map` and no other key. Its layer axis counts every decoder layer
(dense ones included); rows of layers without routed experts get the identity layout.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from vibe.engines.layers import decoder_rows, drop_empty_rows
from vibe.engines.plain import RawCounts, check_counts, fold_slot_counts, merge_raw, read_json_counts
from vibe.errors import InputError, VibeError
from vibe.io import atomic_path, require_file, write_json_atomic
from vibe.model import ExpertLoads, Placement


def placement_to_sglang(placement: Placement, num_hidden_layers: int | None = None) -> dict:
    """-> {"physical_to_logical_map": [num_hidden_layers, num_physical]}."""
    ids = list(placement.layer_ids)
    n = max(ids) + 1 if num_hidden_layers is None else int(num_hidden_layers)
    if min(ids) < 0 or max(ids) >= n:
        raise VibeError(f"layer ids {min(ids)}..{max(ids)} do not fit {n} decoder layers")
    P = placement.num_slots
    full = np.tile(np.arange(P) % placement.num_logical_experts, (n, 1))
    full[ids] = placement.physical_to_logical_map
    return {"physical_to_logical_map": full.tolist()}


# ---- expert distribution recorder dumps (loads import) and logical_count export --------
# Dumps are torch.save'd dicts read with torch.load(weights_only=True) only: a file that
# holds anything but tensors, numbers, strings and containers is refused unread.
# `stat` mode: {"rank", "logical_count": [buffer, num_layers, E], ...}, rows summed.
# `per_pass` mode: {"records": [{"forward_pass_id", "rank", "global_physical_count": [L, P]}],
#                   "last_physical_to_logical_map": [L, P]}, folded onto logical experts.
# The layer axis is every decoder layer; dense layers' rows are zero.

def load_pt_weights_only(path: str | os.PathLike) -> object:
    """torch.load(path, weights_only=True) on the CPU; InputError on anything else."""
    p = Path(path)
    require_file(p, "a .pt torch file")
    # torch.save writes a zip archive (or, before torch 1.6, a pickle stream); anything
    # else would reach the weights-only unpickler and be misreported as unsafe objects.
    with open(p, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5)):
        raise InputError(p, "not a torch file (torch.save writes a zip archive)")
    try:
        import torch
    except ImportError:
        raise VibeError("reading .pt files needs torch: pip install 'vibe-moe[torch]'") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(p, "refused: holds Python objects other than tensors and plain containers "
                            "(loading them could run code); only torch.load(weights_only=True) data is read") from None
    except Exception as exc:  # truncated or foreign files raise many types inside torch
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(p, f"not a readable torch file ({first_line[:160]})") from None


def _as_array(value: object, name: str, source: object) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError(source, f"{name!r} is ragged or not numeric") from None
    if arr.dtype.kind not in "iuf":
        raise InputError(source, f"{name!r} is not numeric ({arr.dtype})")
    return arr


def read_sglang_dump(path: str | os.PathLike, num_experts: int | None = None) -> RawCounts:
    """One recorder dump (stat or per_pass `.pt`, or a `{"logical_count"}` `.json` as
    written by `vibe loads export`) -> RawCounts over all decoder layers."""
    if str(path).endswith(".json"):
        raw = read_json_counts(path)
        raw.extra["source"] = "sglang:logical_count"
        return raw
    obj = load_pt_weights_only(path)
    if not isinstance(obj, dict):
        raise InputError(path, "expected a dict from SGLang's expert distribution recorder")
    if "logical_count" in obj:
        counts = _as_array(obj["logical_count"], "logical_count", path)
        if counts.ndim == 3:  # [buffer, L, E]: one row per forward pass, unfilled rows zero
            counts = counts.sum(axis=0, dtype=np.float64)
        counts = check_counts(counts, path)
        return RawCounts(str(path), counts, tuple(range(counts.shape[0])), extra={"source": "sglang:stat"})
    if "records" in obj:
        return _read_per_pass(obj, path, num_experts)
    raise InputError(path, "holds neither 'logical_count' (stat mode) nor 'records' (per_pass mode)")


def _read_per_pass(obj: dict, path: object, num_experts: int | None) -> RawCounts:
    if "last_physical_to_logical_map" not in obj:
        raise InputError(path, "per_pass dump without 'last_physical_to_logical_map'")
    phy = _as_array(obj["last_physical_to_logical_map"], "last_physical_to_logical_map", path)
    if phy.ndim != 2 or phy.dtype.kind not in "iu":
        raise InputError(path, "'last_physical_to_logical_map' must be an integer [layers, slots] matrix")
    records = obj["records"]
    if not isinstance(records, list) or not records:
        raise InputError(path, "'records' must be a non-empty list")
    total = np.zeros(phy.shape, dtype=np.float64)
    passes = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "global_physical_count" not in rec:
            kind = "per_token records (topk_ids_of_layer) are not supported; record with stat or per_pass" \
                if isinstance(rec, dict) and "topk_ids_of_layer" in rec else "has no 'global_physical_count'"
            raise InputError(path, f"record {i} {kind}")
        gpc = _as_array(rec["global_physical_count"], "global_physical_count", path)
        if gpc.shape != phy.shape:
            raise InputError(path, f"record {i}: global_physical_count of shape {list(gpc.shape)}, "
                                   f"expected {list(phy.shape)} [layers, slots]")
        total += gpc
        passes.append((rec.get("forward_pass_id"), rec.get("rank")))
    num_e = int(phy.max()) + 1 if num_experts is None else int(num_experts)
    counts = check_counts(fold_slot_counts(check_counts(total, path), phy, num_e, path), path)
    return RawCounts(str(path), counts, tuple(range(counts.shape[0])),
                     extra={"source": "sglang:per_pass", "passes": passes})


def load_sglang_loads(paths: Sequence[str | os.PathLike], top_k: int | None, moe_layers: tuple[int, ...] | None = None,
                      num_experts: int | None = None, model: str = "") -> ExpertLoads:
    """Sum recorder dumps (stat and/or per_pass, one or several ranks) into ExpertLoads keyed
    by decoder layer. Without `moe_layers` the all-zero (dense) rows are dropped."""
    parts = [read_sglang_dump(p, num_experts) for p in paths]
    seen: dict[tuple, str] = {}
    for part in parts:  # the same pass of the same rank twice would double count
        for key in part.extra.pop("passes", []):
            if key in seen:
                raise InputError(part.source, f"forward pass {key[0]} of rank {key[1]} also appears in {seen[key]}")
            seen[key] = part.source
    if moe_layers is None:
        for part in parts:
            part.counts, part.layer_ids = drop_empty_rows(part.counts, part.layer_ids)
    return merge_raw(parts, top_k, moe_layers, model or None, {"source": parts[0].extra.get("source", "sglang")})


def loads_to_logical_count(loads: ExpertLoads, num_hidden_layers: int | None = None) -> np.ndarray:
    """ExpertLoads -> int64 [num_hidden_layers, E] on SGLang's decoder-layer axis (dense
    layers zero), what `--init-expert-location` feeds to SGLang's own EPLB."""
    counts = np.rint(loads.counts).astype(np.int64)
    return decoder_rows(counts, loads.layer_ids, num_hidden_layers)


def write_sglang_logical_count(loads: ExpertLoads, path: str | os.PathLike,
                               num_hidden_layers: int | None = None) -> None:
    """`.json`: {"logical_count": [L, E]}; `.pt`: {"logical_count": int64 tensor [1, L, E]}
    (the recorder's own shape). No other key: SGLang splats the dict into a constructor."""
    counts = loads_to_logical_count(loads, num_hidden_layers)
    if str(path).endswith(".pt"):
        import torch

        with atomic_path(path) as tmp:
            torch.save({"logical_count": torch.from_numpy(counts[None])}, tmp)
    else:
        write_json_atomic(path, {"logical_count": counts.tolist()})


# ---- vibe as SGLang's EPLB algorithm ---------------------------------------------------
# SGLang's rebalancer and `--init-expert-location` with logical_count both end in
# `sglang.srt.eplb.eplb_algorithms.rebalance_experts(tokens_per_expert [..., L, E],
# num_physical_experts, num_local_physical_experts, num_groups, num_nodes, algorithm)
# -> (phy2log [L, P], log2phy [L, E, X] padded -1, logcnt [L, E])`, looked up on the module
# at each call. vibe.engines.sglang_plugin puts `vibe_rebalance_experts` there.

def sglang_rebalance_np(tokens_per_expert: np.ndarray, num_physical_experts: int, num_local_physical_experts: int,
                        num_groups: int | None, num_nodes: int, hierarchical: bool,
                        env=os.environ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens_per_expert [..., L, E] (leading window axes summed) -> (phy2log, log2phy, logcnt)
    by vibe's time-balanced placement (curves from $VIBE_CLUSTER, see vibe.engines.rebalance).
    SGLang's layer axis has every decoder layer: dense layers' zero rows are placed as uniform."""
    from vibe.engines.rebalance import (check_layout, cluster_from_env, logical_maps, point_options, time_balanced,
                                        top_k_from_env)

    w = np.asarray(tokens_per_expert, dtype=np.float64)
    w = w.reshape((-1,) + w.shape[-2:]).sum(axis=0)
    if num_local_physical_experts < 1 or num_physical_experts % num_local_physical_experts:
        check_layout(w.shape[1], num_physical_experts, 0)
    num_ranks = num_physical_experts // num_local_physical_experts
    opts = point_options(env)
    if not hierarchical:
        opts["hierarchy"] = "off"
    try:
        cluster = cluster_from_env(num_ranks, env)
    except InputError as exc:  # a running server must not stop on a stale file
        logging.getLogger("vibe.sglang").warning("vibe: %s; placing for identical GPUs", exc)
        cluster = None
    phy = time_balanced(w, num_physical_experts, int(num_groups or 1), int(num_nodes), num_ranks,
                        None, cluster, top_k_from_env(env), **opts)
    log2phy, logcnt = logical_maps(phy, w.shape[1])
    return phy, log2phy, logcnt


VIBE_ALGORITHMS = ("deepseek", "deepseek_hierarchical", "deepseek_vec", "deepseek_vec_hierarchical")


def make_sglang_rebalance(original):
    """A drop-in for SGLang's `eplb_algorithms.rebalance_experts` that answers the DeepSeek
    algorithms (the ones `--eplb-algorithm auto` picks) with vibe's placement and leaves
    the others (elasticity_aware: dead-rank masks) to `original`."""
    import torch

    def vibe_rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
                               num_nodes, algorithm):
        name = getattr(algorithm, "name", str(algorithm))
        if name not in VIBE_ALGORITHMS:
            return vibe_rebalance_experts.vibe_original(tokens_per_expert, num_physical_experts,
                                                        num_local_physical_experts, num_groups, num_nodes, algorithm)
        t = tokens_per_expert.detach().float().cpu().numpy() if hasattr(tokens_per_expert, "detach") \
            else np.asarray(tokens_per_expert)
        out = sglang_rebalance_np(t, int(num_physical_experts), int(num_local_physical_experts), num_groups,
                                  int(num_nodes), name.endswith("_hierarchical"))
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in out)

    vibe_rebalance_experts.vibe_original = original
    return vibe_rebalance_experts


def sglang_flags(placement: Placement, path: str | os.PathLike) -> str:
    """The SGLang flags that go with an exported plan: EP size, redundant experts (SGLang
    does not check them against the file) and the file."""
    return (f"--ep-size {placement.num_gpus} --ep-num-redundant-experts {placement.num_redundant} "
            f"--init-expert-location {path}")
