"""TensorRT-LLM: the MoE load-balancer YAML (`moe_config: {load_balancer: file.yaml}`),
and the EXPERT_STATISTIC_PATH load dumps (import).

Exactly three keys: num_slots, layer_updates_per_iter (0 = static placement) and
initial_global_assignments keyed by decoder layer index. MTP modules (DeepSeek-V3's
next-token predictor) add MoE layers `num_hidden_layers + i` that the load balancer also
looks up; they get the last MoE layer's assignment (loads are not recorded for them).
The load balancer is only built for some architectures with MoE EP > 1
(`load_balancer_applies`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from vibe.engines.plain import RawCounts, check_counts, fold_slot_counts, merge_raw
from vibe.errors import InputError, VibeError
from vibe.io import json_int, read_json
from vibe.model import ExpertLoads, Placement


# Architectures whose TensorRT-LLM model builds the MoE load balancer (with MoE EP > 1),
# matched on the model name vibe records; DeepSeek-R1 is the DeepseekV3 architecture.
LOAD_BALANCER_MODELS = {"deepseekv3": ("deepseek-v3", "deepseek-r1", "deepseekv3"), "mixtral": ("mixtral",),
                        "llama4": ("llama-4", "llama4"), "qwen2moe": ("qwen2-moe", "qwen1.5-moe", "qwen2moe", "qwen2-57b"),
                        "qwen3moe": ("qwen3-moe", "qwen3moe", "qwen3-30b-a3b", "qwen3-235b-a22b")}
DEFAULT_MTP_LAYERS = {"deepseekv3": 1}  # the MTP modules a checkpoint ships (DeepSeek-V3 / R1: one)


def trtllm_architecture(model: str) -> str | None:
    """The load-balancer architecture of a model name, or None when TensorRT-LLM builds none."""
    name = (model or "").lower().replace("_", "-")
    for arch, keys in LOAD_BALANCER_MODELS.items():
        if any(k in name for k in keys):
            return arch
    return None


def default_mtp_layers(model: str) -> int:
    return DEFAULT_MTP_LAYERS.get(trtllm_architecture(model) or "", 0)


def load_balancer_applies(model: str, num_gpus: int) -> str | None:
    """None when TensorRT-LLM will use the YAML, else why it will not (one line)."""
    if num_gpus < 2:
        return "TensorRT-LLM builds its MoE load balancer only with MoE EP > 1"
    if trtllm_architecture(model) is None:
        return (f"TensorRT-LLM builds its MoE load balancer only for DeepseekV3, Mixtral, Llama4, Qwen2Moe and "
                f"Qwen3Moe models; {model or 'this model (no name recorded in the loads)'} would ignore the YAML")
    return None


def placement_to_trtllm(placement: Placement, num_hidden_layers: int | None = None, mtp_layers: int = 0) -> dict:
    """-> {num_slots, layer_updates_per_iter, initial_global_assignments {decoder layer: [slots]}},
    MTP layers num_hidden_layers + i (default num_hidden_layers: last MoE layer + 1)."""
    rows = {int(layer): [int(e) for e in row]
            for layer, row in zip(placement.layer_ids, placement.physical_to_logical_map)}
    n = max(rows) + 1 if num_hidden_layers is None else int(num_hidden_layers)
    if mtp_layers < 0:
        raise VibeError("--mtp-layers must be >= 0")
    if mtp_layers and max(rows) >= n:
        raise VibeError(f"MoE layer {max(rows)} does not fit {n} decoder layers (--num-hidden-layers)")
    last = rows[max(rows)]
    for i in range(int(mtp_layers)):
        rows[n + i] = list(last)
    return {"num_slots": int(placement.num_slots), "layer_updates_per_iter": 0, "initial_global_assignments": rows}


def trtllm_placement_yaml(placement: Placement, num_hidden_layers: int | None = None, mtp_layers: int = 0) -> str:
    return yaml.safe_dump(placement_to_trtllm(placement, num_hidden_layers, mtp_layers), default_flow_style=None,
                          sort_keys=False, width=1 << 20)


# ---- EXPERT_STATISTIC_PATH dumps (loads import) -----------------------------------------
# A folder with meta_info.json {"num_experts", "num_experts_per_token", ...} and
# rank{R}.safetensors holding "{iter}_{layer}" -> int [num_experts] counts keyed by decoder
# layer (other files there, e.g. rank0_raw.safetensors, are ignored). With the load
# balancer on, the vectors are per slot: fold them through the placement in use.

_RANK_FILE = re.compile(r"rank(\d+)\.safetensors$")
_KEY = re.compile(r"(\d+)_(\d+)$")


def read_trtllm_folder(folder: str | os.PathLike, placement: Placement | None = None,
                       num_experts: int | None = None) -> RawCounts:
    """One statistic folder -> RawCounts [layers, experts], summed over iterations and ranks.

    With the load balancer on, TensorRT-LLM counts per slot and meta_info's num_experts is
    the slot count: given the model's expert count (`num_experts`), a wider file is refused
    unless `placement` (the plan in use) folds it back onto experts."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "not a folder (expected EXPERT_STATISTIC_PATH with meta_info.json and rank*.safetensors)")
    meta = read_json(root / "meta_info.json")
    if not isinstance(meta, dict):
        raise InputError(root / "meta_info.json", "expected a JSON object")
    if "num_experts" not in meta or "num_experts_per_token" not in meta:
        raise InputError(root / "meta_info.json", "needs integer 'num_experts' and 'num_experts_per_token'")
    recorded = json_int(meta["num_experts"], "num_experts", root / "meta_info.json", lo=1)
    top_k = json_int(meta["num_experts_per_token"], "num_experts_per_token", root / "meta_info.json", lo=1)
    check_slot_counts(root, recorded, num_experts, placement)
    files = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _RANK_FILE.match(p.name)))
    if not files:
        raise InputError(root, "holds no rank<R>.safetensors file")
    width = placement.num_slots if placement is not None else recorded
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


def check_slot_counts(root: Path, recorded: int, num_experts: int | None, placement: Placement | None) -> None:
    """Refuse per-slot statistics read as per-expert ones (see read_trtllm_folder)."""
    if placement is not None and num_experts is not None and placement.num_logical_experts != num_experts:
        raise InputError(root, f"--placement has {placement.num_logical_experts} experts, --num-experts says {num_experts}")
    if placement is not None or num_experts is None or recorded == num_experts:
        return
    if recorded > num_experts:
        raise InputError(root / "meta_info.json",
                         f"counts {recorded} slots, not the model's {num_experts} experts (recorded with the load "
                         f"balancer on); pass --placement with the plan in use to fold them onto experts")
    raise InputError(root / "meta_info.json", f"num_experts {recorded} differs from --num-experts {num_experts}")


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
                      model: str = "", num_experts: int | None = None) -> ExpertLoads:
    """Sum one or more EXPERT_STATISTIC_PATH folders into ExpertLoads (decoder layer ids)."""
    parts = [read_trtllm_folder(f, placement, num_experts) for f in folders]
    return merge_raw(parts, top_k, moe_layers, model or None)
