"""Layer-axis conventions of engines, and `--moe-layers` to map between them.

vibe keys every row of a loads file by its *decoder* layer index (DeepSeek-V2-Lite: MoE
layers 1..26, layer 0 is dense). Engines differ (see ENGINES.md): SGLang has one row per
decoder layer with zero rows for dense layers, vLLM numbers MoE layers 0..L-1 only,
TensorRT-LLM keys by decoder layer index. `--moe-layers SPEC` names the decoder indices of
the MoE layers, e.g. `1-26`, `3-60` or `1,3,5-9`.
"""

from __future__ import annotations

import numpy as np

from vibe.errors import InputError, VibeError

MAX_LAYER_ID = 100_000


def parse_layer_spec(spec: str) -> tuple[int, ...]:
    """'1-3,7' -> (1, 2, 3, 7): decoder layer ids, increasing, no repeats."""
    ids: list[int] = []
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise VibeError(f"--moe-layers {spec!r}: {part!r} is not a layer id or a range a-b") from None
        if a < 0 or b < a:
            raise VibeError(f"--moe-layers {spec!r}: bad range {part!r}")
        if b > MAX_LAYER_ID:  # a typo such as 1-2600000000 would fill memory
            raise VibeError(f"--moe-layers {spec!r}: layer id {b} is past {MAX_LAYER_ID:,}")
        ids.extend(range(a, b + 1))
    if not ids:
        raise VibeError(f"--moe-layers {spec!r} names no layer")
    if len(set(ids)) != len(ids) or ids != sorted(ids):
        raise VibeError(f"--moe-layers {spec!r}: layer ids must increase without repeats")
    return tuple(ids)


def apply_moe_layers(counts: np.ndarray, layer_ids: tuple[int, ...], moe_layers: tuple[int, ...] | None,
                     source: object) -> tuple[np.ndarray, tuple[int, ...]]:
    """Map rows `counts [R, E]` labelled `layer_ids` onto the decoder ids `moe_layers`.

    - moe_layers None: rows are kept as they are;
    - every moe layer is a row label (decoder-indexed input, e.g. SGLang): select them;
    - as many moe layers as rows labelled 0..R-1 (MoE-indexed input, e.g. vLLM): relabel.
    Returns (counts [L, E], layer ids)."""
    if moe_layers is None:
        return counts, tuple(layer_ids)
    position = {layer: row for row, layer in enumerate(layer_ids)}
    if all(layer in position for layer in moe_layers):
        return counts[[position[layer] for layer in moe_layers]], tuple(moe_layers)
    if len(moe_layers) == len(layer_ids) and tuple(layer_ids) == tuple(range(len(layer_ids))):
        return counts, tuple(moe_layers)
    raise InputError(source, f"--moe-layers names {len(moe_layers)} layers ({moe_layers[0]}..{moe_layers[-1]}) "
                             f"that match neither its {len(layer_ids)} layer rows "
                             f"({min(layer_ids)}..{max(layer_ids)}) nor their count")


def drop_empty_rows(counts: np.ndarray, layer_ids: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Keep the rows that saw at least one routing: the MoE layers of a decoder-indexed dump
    (dense layers route nothing)."""
    keep = np.flatnonzero(counts.sum(axis=1) > 0)
    return counts[keep], tuple(layer_ids[i] for i in keep)


def decoder_rows(counts: np.ndarray, layer_ids: tuple[int, ...], num_layers: int | None) -> np.ndarray:
    """counts [L, E] of MoE layers `layer_ids` -> [num_layers, E] with zero rows for the
    other decoder layers (default num_layers: last MoE layer + 1)."""
    n = max(layer_ids) + 1 if num_layers is None else int(num_layers)
    if min(layer_ids) < 0 or max(layer_ids) >= n:
        raise VibeError(f"layer ids {min(layer_ids)}..{max(layer_ids)} do not fit {n} decoder layers")
    full = np.zeros((n, counts.shape[1]), dtype=counts.dtype)
    full[list(layer_ids)] = counts
    return full
