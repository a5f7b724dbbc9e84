"""TensorRT-LLM: the MoE load-balancer YAML (`moe_config: {load_balancer: file.yaml}`),
and the EXPERT_STATISTIC_PATH load dumps (import).

Exactly three keys: num_slots, layer_updates_per_iter (0 = static placement) and
initial_global_assignments keyed by decoder layer index.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from vibe.engines.plain import RawCounts, check_counts, fold_slot_counts, merge_raw
from vibe.errors import InputError
from vibe.io import json_int, read_json, write_text_atomic
from vibe.model import ExpertLoads, Placement


def placement_to_trtllm(placement: Placement) -> dict:
    return {
        "num_slots": int(placement.num_slots),
        "layer_updates_per_iter": 0,
        "initial_global_assignments": {
            int(layer): [int(e) for e in row]
            for layer, row in zip(placement.layer_ids, placement.physical_to_logical_map)
        },
    }


def trtllm_placement_yaml(placement: Placement) -> str:
    return yaml.safe_dump(placement_to_trtllm(placement), default_flow_style=None, sort_keys=False, width=1 << 20)


def write_trtllm_placement(placement: Placement, path: str | os.PathLike) -> None:
    write_text_atomic(path, trtllm_placement_yaml(placement))


# ---- EXPERT_STATISTIC_PATH dumps (loads import) -----------------------------------------
# A folder with meta_info.json {"num_experts", "num_experts_per_token", ...} and
# rank{R}.safetensors holding "{iter}_{layer}" -> int [num_experts] counts keyed by decoder
# layer (other files there, e.g. rank0_raw.safetensors, are ignored). With the load
# balancer on, the vectors are per slot: fold them through the placement in use.

_RANK_FILE = re.compile(r"rank(\d+)\.safetensors$")
_KEY = re.compile(r"(\d+)_(\d+)$")


def read_trtllm_folder(folder: str | os.PathLike, placement: Placement | None = None) -> RawCounts:
    """One statistic folder -> RawCounts [layers, experts], summed over iterations and ranks."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "not a folder (expected EXPERT_STATISTIC_PATH with meta_info.json and rank*.safetensors)")
    meta = read_json(root / "meta_info.json")
    if not isinstance(meta, dict):
        raise InputError(root / "meta_info.json", "expected a JSON object")
    if "num_experts" not in meta or "num_experts_per_token" not in meta:
        raise InputError(root / "meta_info.json", "needs integer 'num_experts' and 'num_experts_per_token'")
    num_experts = json_int(meta["num_experts"], "num_experts", root / "meta_info.json", lo=1)
    top_k = json_int(meta["num_experts_per_token"], "num_experts_per_token", root / "meta_info.json", lo=1)
    files = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _RANK_FILE.match(p.name)))
    if not files:
        raise InputError(root, "holds no rank<R>.safetensors file")
    width = placement.num_slots if placement is not None else num_experts
    totals: dict[int, np.ndarray] = {}
    iters_by_rank = []
    for _, path in files:
        per_layer, iters = _read_rank_file(path, width)
        iters_by_rank.append((path, iters))
        for layer, vec in per_layer.items():
            totals[layer] = totals.get(layer, 0) + vec
    layer_ids = tuple(sorted(totals))
    counts = check_counts(np.stack([totals[l] for l in layer_ids]), root)
    if placement is not None:
        if tuple(placement.layer_ids) != layer_ids:
            raise InputError(root, f"its layers {layer_ids[0]}..{layer_ids[-1]} ({len(layer_ids)}) differ from "
                                   f"the placement's ({len(placement.layer_ids)} layers)")
        counts = fold_slot_counts(counts, placement.physical_to_logical_map, placement.num_logical_experts, root)
    return RawCounts(str(root), counts, layer_ids, top_k,
                     extra={"source": "trtllm", "iterations": len(set().union(*(i for _, i in iters_by_rank)))})


def _read_rank_file(path: Path, width: int) -> tuple[dict[int, np.ndarray], set[int]]:
    """rank file -> ({layer: counts [width] summed over iterations}, iterations seen)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None
    per_layer: dict[int, np.ndarray] = {}
    iters: set[int] = set()
    for key, vec in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise InputError(path, f"key {key!r} is not '<iteration>_<layer>'")
        if vec.shape != (width,) or vec.dtype.kind not in "iuf":
            raise InputError(path, f"{key!r}: {vec.dtype} {list(vec.shape)}, expected [{width}] counts"
                                   + (" (per-slot counts need the placement in use: --placement)" if vec.ndim == 1 else ""))
        if np.any(vec < 0) or not np.all(np.isfinite(vec)):
            raise InputError(path, f"{key!r} holds a negative count or a non-finite value")
        it, layer = int(m.group(1)), int(m.group(2))
        iters.add(it)
        per_layer[layer] = per_layer.get(layer, 0) + vec.astype(np.float64)
    if not per_layer:
        raise InputError(path, "holds no '<iteration>_<layer>' count")
    return per_layer, iters


def load_trtllm_loads(folders: Sequence[str | os.PathLike], top_k: int | None = None,
                      moe_layers: tuple[int, ...] | None = None, placement: Placement | None = None,
                      model: str = "") -> ExpertLoads:
    """Sum one or more EXPERT_STATISTIC_PATH folders into ExpertLoads (decoder layer ids)."""
    parts = [read_trtllm_folder(f, placement) for f in folders]
    return merge_raw(parts, top_k, moe_layers, model or None)
