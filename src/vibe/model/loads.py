"""`ExpertLoads`: how many tokens each logical expert received, per MoE layer.

File format: vibe.loads/v1. `counts[l, e]` is the number of (token, expert) routings of
MoE layer `layer_ids[l]` to logical expert e over the profiled window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vibe.errors import InputError
from vibe.io import int_array, json_int, numeric_array, read_json, require_schema, write_json_atomic

LOADS_SCHEMA = "vibe.loads/v1"
MAX_COUNT = 2.0**53


@dataclass(frozen=True)
class ExpertLoads:
    counts: np.ndarray  # [L, E] non-negative token counts
    top_k: int
    layer_ids: tuple[int, ...] = ()
    model: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts, dtype=np.float64)
        object.__setattr__(self, "counts", counts)
        if not self.layer_ids:
            object.__setattr__(self, "layer_ids", tuple(range(counts.shape[0])) if counts.ndim == 2 else ())
        else:
            object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
        _validate(self, "loads")

    @property
    def num_layers(self) -> int:
        return self.counts.shape[0]

    @property
    def num_experts(self) -> int:
        return self.counts.shape[1]

    def shares(self) -> np.ndarray:
        """[L, E] fraction of each layer's routings that go to each expert (rows sum to 1,
        or to 0 for a layer that saw no token)."""
        totals = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, totals, out=np.zeros_like(self.counts), where=totals > 0)

    def expert_tokens(self, batch_tokens: float) -> np.ndarray:
        """[L, E] tokens each expert receives when `batch_tokens` tokens enter the layer:
        n_e = B * top_k * counts[l, e] / sum(counts[l])."""
        return float(batch_tokens) * self.top_k * self.shares()

    def select_layers(self, rows: Sequence[int]) -> "ExpertLoads":
        rows = list(rows)
        return ExpertLoads(self.counts[rows], self.top_k, tuple(self.layer_ids[i] for i in rows),
                           self.model, dict(self.extra))

    # ---- file I/O --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, obj: Any, source: object = "loads") -> "ExpertLoads":
        obj = require_schema(obj, LOADS_SCHEMA, source)
        counts = numeric_array(obj.get("counts"), "counts", source, 2)
        top_k = json_int(obj.get("top_k"), "top_k", source, lo=1)  # 2.5 is refused, not truncated
        layer_ids = obj.get("layer_ids")
        ids = tuple(int_array(layer_ids, "layer_ids", source, 1).tolist()) if layer_ids is not None else ()
        extra = {k: v for k, v in obj.items() if k not in ("schema", "model", "top_k", "layer_ids", "counts")}
        try:
            return cls(counts=counts, top_k=top_k, layer_ids=ids, model=str(obj.get("model", "")), extra=extra)
        except InputError as exc:
            raise InputError(source, exc.problem) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExpertLoads":
        return cls.from_dict(read_json(path), source=path)

    def to_dict(self) -> dict:
        d = dict(self.extra)
        counts = self.counts
        as_int = np.all(counts == np.round(counts))
        d.update(schema=LOADS_SCHEMA, model=self.model, top_k=self.top_k,
                 layer_ids=list(self.layer_ids),
                 counts=counts.astype(np.int64).tolist() if as_int else counts.tolist())
        return d

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())


def check_counts(counts: np.ndarray, source: object) -> np.ndarray:
    """[R, E] finite, non-negative, non-empty counts (float64), or InputError."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or 0 in counts.shape:
        raise InputError(source, f"counts must be a non-empty [layers, experts] matrix, got shape {list(counts.shape)}")
    if not np.all(np.isfinite(counts)):
        raise InputError(source, "counts hold non-finite values")
    if np.any(counts < 0):
        l, e = np.argwhere(counts < 0)[0]
        raise InputError(source, f"negative count at layer row {l}, expert {e}")
    return counts


def _validate(loads: ExpertLoads, source: object) -> None:
    c = check_counts(loads.counts, source)
    with np.errstate(over="ignore"):
        overflow = not np.all(np.isfinite(c.sum(axis=1)))
    if overflow:
        raise InputError(source, "counts too large: a layer's total overflows")
    if np.any(c > MAX_COUNT):  # no profile routes that many tokens; int64 writes would wrap
        l, e = np.argwhere(c > MAX_COUNT)[0]
        raise InputError(source, f"count {c[l, e]:g} at layer row {l}, expert {e} is beyond 2**53")
    if not isinstance(loads.top_k, (int, np.integer)) or loads.top_k < 1:
        raise InputError(source, "'top_k' must be a positive integer")
    if loads.top_k > c.shape[1]:
        raise InputError(source, f"top_k={loads.top_k} exceeds the {c.shape[1]} experts")
    if len(loads.layer_ids) != c.shape[0]:
        raise InputError(source, f"{len(loads.layer_ids)} layer_ids for {c.shape[0]} count rows")
    if len(set(loads.layer_ids)) != len(loads.layer_ids):
        raise InputError(source, "layer_ids repeat")
