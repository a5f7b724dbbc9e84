"""Plain count matrices (`.json`, `.npy`), and the step every importer ends with: raw
per-layer count matrices of one or more files -> one validated `ExpertLoads`.

JSON forms read: a vibe.loads/v1 file; an object with `counts` (or SGLang's
`logical_count`) and optional `layer_ids`, `top_k`, `model`; a bare list of rows.
`.npy`: a 2-D [layers, experts] array, or 3-D [windows, layers, experts] summed over
windows (never unpickled: allow_pickle=False).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vibe.engines.layers import apply_moe_layers
from vibe.errors import InputError
from vibe.io import atomic_path, int_array, read_json, require_file, write_json_atomic
from vibe.model import LOADS_SCHEMA, ExpertLoads
from vibe.model.loads import check_counts  # re-exported for the engine importers


@dataclass
class RawCounts:
    """One file's counts before layer mapping: `counts [R, E]` for rows `layer_ids`."""
    source: str
    counts: np.ndarray
    layer_ids: tuple[int, ...]
    top_k: int | None = None
    model: str = ""
    extra: dict = field(default_factory=dict)


def merge_raw(parts: Sequence[RawCounts], top_k: int | None = None, moe_layers: tuple[int, ...] | None = None,
              model: str | None = None, extra: dict | None = None) -> ExpertLoads:
    """Sum the counts of several files (same layers and experts) into ExpertLoads,
    mapping rows onto `moe_layers` (see vibe.engines.layers)."""
    if not parts:
        raise InputError("import", "no input file")
    first = parts[0]
    total = first.counts.copy()
    for p in parts[1:]:
        if p.counts.shape != first.counts.shape or p.layer_ids != first.layer_ids:
            raise InputError(p.source, f"{p.counts.shape[0]} layers x {p.counts.shape[1]} experts "
                                       f"(layers {_span(p.layer_ids)}) differs from {first.source}: "
                                       f"{first.counts.shape[0]} x {first.counts.shape[1]} "
                                       f"(layers {_span(first.layer_ids)})")
        total += p.counts
    counts, layer_ids = apply_moe_layers(total, first.layer_ids, moe_layers, first.source)
    k = top_k if top_k is not None else next((p.top_k for p in parts if p.top_k is not None), None)
    if k is None:
        raise InputError(first.source, "holds no top_k: pass --top-k")
    meta = dict(first.extra)
    meta.update(extra or {})
    try:
        return ExpertLoads(counts, int(k), layer_ids, model if model is not None else first.model, meta)
    except InputError as exc:
        raise InputError(first.source, exc.problem) from None


def _span(ids: Sequence[int]) -> str:
    return f"{min(ids)}..{max(ids)}" if len(ids) else "none"


def read_json_counts(path: str | os.PathLike) -> RawCounts:
    obj = read_json(path)
    if isinstance(obj, dict) and obj.get("schema") == LOADS_SCHEMA:
        loads = ExpertLoads.from_dict(obj, source=path)
        return RawCounts(str(path), loads.counts, loads.layer_ids, loads.top_k, loads.model, dict(loads.extra))
    if isinstance(obj, list):
        obj = {"counts": obj}
    if not isinstance(obj, dict):
        raise InputError(path, "expected a JSON object or a list of count rows")
    key = "counts" if "counts" in obj else "logical_count"
    if obj.get(key) is None:
        raise InputError(path, "holds no 'counts' or 'logical_count'")
    try:
        counts = np.asarray(obj[key], dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(path, f"{key!r} is ragged or not numeric") from None
    if counts.ndim == 3:  # SGLang keeps a leading window axis: sum it.
        counts = counts.sum(axis=0)
    counts = check_counts(counts, path)
    ids = obj.get("layer_ids")
    layer_ids = tuple(int_array(ids, "layer_ids", path, 1).tolist()) if ids is not None \
        else tuple(range(counts.shape[0]))
    if len(layer_ids) != counts.shape[0]:
        raise InputError(path, f"{len(layer_ids)} layer_ids for {counts.shape[0]} count rows")
    top_k = obj.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise InputError(path, "'top_k' must be a positive integer")
    return RawCounts(str(path), counts, layer_ids, top_k, str(obj.get("model", "")))


def read_npy_counts(path: str | os.PathLike) -> RawCounts:
    p = Path(path)
    require_file(p, "a .npy array")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(p, f"not a readable .npy array ({exc})") from None
    except Exception as exc:  # a damaged header is parsed as Python literals: SyntaxError, TokenError, ...
        raise InputError(p, f"not a readable .npy array (damaged header: {exc.__class__.__name__})") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise InputError(p, "is an .npz archive, expected one .npy array")
    if arr.dtype.kind not in "iuf":
        raise InputError(p, f"holds {arr.dtype} values, expected numbers")
    if arr.ndim == 3:
        arr = arr.sum(axis=0)
    counts = check_counts(arr, p)
    return RawCounts(str(p), counts, tuple(range(counts.shape[0])))


def write_npy(counts: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, counts)


def write_counts_json(loads: ExpertLoads, path: str | os.PathLike) -> None:
    """A plain {"counts", "layer_ids", "top_k", "model"} object (no schema tag)."""
    d = loads.to_dict()
    write_json_atomic(path, {k: d[k] for k in ("model", "top_k", "layer_ids", "counts")})


def fold_slot_counts(slot_counts: np.ndarray, physical_to_logical_map: np.ndarray, num_experts: int,
                     source: object) -> np.ndarray:
    """Per-slot counts [L, P] -> per-expert counts [L, E] through a placement's
    physical_to_logical_map [L, P] (replicas of an expert add up)."""
    phy = np.asarray(physical_to_logical_map, dtype=np.int64)
    if slot_counts.shape != phy.shape:
        raise InputError(source, f"per-slot counts of shape {list(slot_counts.shape)} do not match the "
                                 f"placement's {list(phy.shape)} [layers, slots]")
    if phy.min() < 0 or phy.max() >= num_experts:
        raise InputError(source, f"physical_to_logical_map names experts outside 0..{num_experts - 1}")
    L = phy.shape[0]
    flat = (np.arange(L)[:, None] * num_experts + phy).ravel()
    return np.bincount(flat, weights=slot_counts.ravel(), minlength=L * num_experts).reshape(L, num_experts)
