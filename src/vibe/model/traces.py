"""`RoutingTrace`: token-level routing, kept per sequence so batches can be re-sampled.

Long-run loads hide per-step skew: a real step routes a few thousand tokens from a few
sequences. The trace keeps, for every MoE layer, the top_k experts chosen by each token,
with tokens grouped into whole sequences (the same sequences in every layer).
On disk: a `.npz` (no pickles) with `experts [L, T, k]`, `seq_offsets [N+1]`,
`layer_ids [L]`, `num_experts`, `top_k`.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vibe.errors import InputError
from vibe.io import atomic_path
from vibe.model.loads import ExpertLoads

TRACE_SCHEMA = "vibe.trace/v1"


@dataclass(frozen=True)
class RoutingTrace:
    experts: np.ndarray  # [L, T, k] expert id chosen by token t in layer l (int16)
    seq_offsets: np.ndarray  # [N+1] token offsets: sequence i is tokens seq_offsets[i]:seq_offsets[i+1]
    num_experts: int
    layer_ids: tuple[int, ...] = ()
    model: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ex = np.asarray(self.experts)
        off = np.asarray(self.seq_offsets, dtype=np.int64)
        object.__setattr__(self, "experts", ex)
        object.__setattr__(self, "seq_offsets", off)
        if not self.layer_ids and ex.ndim == 3:
            object.__setattr__(self, "layer_ids", tuple(range(ex.shape[0])))
        else:
            object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
        _validate(self, "trace")

    @property
    def num_layers(self) -> int:
        return self.experts.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.experts.shape[1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[2]

    @property
    def num_sequences(self) -> int:
        return len(self.seq_offsets) - 1

    def counts(self, tokens: np.ndarray | slice | None = None) -> np.ndarray:
        """[L, E] routings per expert over all tokens, or over token indices `tokens`."""
        ex = self.experts if tokens is None else self.experts[:, tokens]
        L, E = self.num_layers, self.num_experts
        flat = (np.arange(L)[:, None, None] * E + ex.astype(np.int64)).ravel()
        return np.bincount(flat, minlength=L * E).reshape(L, E)

    def to_loads(self) -> ExpertLoads:
        return ExpertLoads(self.counts(), self.top_k, self.layer_ids, self.model)

    def sample_token_indices(self, batch_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """Token indices of a batch of `batch_tokens` tokens made of whole sequences drawn
        at random (with replacement), the last one cut to fit."""
        if batch_tokens <= 0:
            raise ValueError("batch_tokens must be > 0")
        lengths = np.diff(self.seq_offsets)
        # Draw enough sequences in one go: at least B / shortest-mean, then trim.
        n_draw = int(np.ceil(batch_tokens / max(lengths.mean(), 1))) * 2 + 2
        picks = rng.integers(0, self.num_sequences, size=n_draw)
        while lengths[picks].sum() < batch_tokens:
            picks = np.concatenate([picks, rng.integers(0, self.num_sequences, size=n_draw)])
        cum = np.cumsum(lengths[picks])
        n_seq = int(np.searchsorted(cum, batch_tokens)) + 1
        picks = picks[:n_seq]
        starts = self.seq_offsets[picks]
        lens = lengths[picks].copy()
        lens[-1] -= int(cum[n_seq - 1] - batch_tokens)
        # Vectorized concatenation of ranges [start, start + len).
        idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
        return idx

    def sample_batch_counts(self, batch_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """[L, E] routings of one re-sampled batch of `batch_tokens` tokens."""
        return self.counts(self.sample_token_indices(batch_tokens, rng))

    # ---- file I/O --------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, schema=np.array(TRACE_SCHEMA), experts=self.experts,
                                    seq_offsets=self.seq_offsets, layer_ids=np.array(self.layer_ids),
                                    num_experts=np.array(self.num_experts), model=np.array(self.model))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RoutingTrace":
        p = Path(path)
        if not p.is_file():
            raise InputError(p, "no such file")
        try:
            with np.load(p, allow_pickle=False) as z:
                if "schema" not in z or str(z["schema"]) != TRACE_SCHEMA:
                    raise InputError(p, f"not a {TRACE_SCHEMA} .npz file")
                obj = {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(p, f"not a readable .npz trace ({exc.__class__.__name__})") from None
        try:
            return cls(experts=obj["experts"], seq_offsets=obj["seq_offsets"],
                       num_experts=int(obj["num_experts"]), layer_ids=tuple(obj["layer_ids"].tolist()),
                       model=str(obj.get("model", "")))
        except KeyError as exc:
            raise InputError(p, f"missing array {exc}") from None
        except InputError as exc:
            raise InputError(p, exc.problem) from None


def _validate(t: RoutingTrace, source: object) -> None:
    ex, off = t.experts, t.seq_offsets
    if ex.ndim != 3 or 0 in ex.shape:
        raise InputError(source, f"experts must be a non-empty [layers, tokens, top_k] array, got {list(ex.shape)}")
    if ex.dtype.kind not in "iu":
        raise InputError(source, "expert ids must be integers")
    if t.num_experts < 1 or ex.min() < 0 or ex.max() >= t.num_experts:
        raise InputError(source, f"expert ids must lie in 0..{t.num_experts - 1}")
    if off.ndim != 1 or len(off) < 2 or off[0] != 0 or off[-1] != ex.shape[1] or np.any(np.diff(off) <= 0):
        raise InputError(source, "seq_offsets must rise strictly from 0 to the token count")
    if len(t.layer_ids) != ex.shape[0]:
        raise InputError(source, f"{len(t.layer_ids)} layer_ids for {ex.shape[0]} layers")
