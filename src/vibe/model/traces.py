"""`RoutingTrace`: token-level routing, kept per sequence so batches can be re-sampled.

Long-run loads hide per-step skew: a real step routes a few thousand tokens from a few
sequences. The trace keeps, for every MoE layer, the top_k experts chosen by each token,
with tokens grouped into whole sequences (the same sequences in every layer).
On disk: a `.npz` (no pickles) with `experts [L, T, k]`, `seq_offsets [N+1]`,
`layer_ids [L]`, `num_experts`, `top_k`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from vibe.errors import InputError
from vibe.io import atomic_path, require_file
from vibe.model.loads import ExpertLoads

TRACE_SCHEMA = "vibe.trace/v1"
# Cap of the cached per-sequence count table (int32 entries: 2**26 = 256 MiB).
SEQUENCE_COUNTS_MAX_ENTRIES = 1 << 26
MAX_EXPERTS = 1 << 16  # routed experts per layer; real models have at most a few hundred


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
        return _count_routings(ex, self.num_experts)

    @cached_property
    def sequence_counts(self) -> np.ndarray | None:
        """[N, L, E] int32 routings of each whole sequence, or None when that table would
        exceed SEQUENCE_COUNTS_MAX_ENTRIES (the sampler then counts token by token)."""
        N, L, E = self.num_sequences, self.num_layers, self.num_experts
        if N * L * E > SEQUENCE_COUNTS_MAX_ENTRIES:
            return None
        seq_of_token = np.repeat(np.arange(N, dtype=np.int64), np.diff(self.seq_offsets))[:, None] * E
        table = np.empty((N, L, E), dtype=np.int32)
        for l in range(L):  # one layer at a time keeps the temporary keys at [T, k]
            table[:, l] = np.bincount((seq_of_token + self.experts[l]).ravel(), minlength=N * E).reshape(N, E)
        return table

    def to_loads(self, source: str | None = None) -> ExpertLoads:
        """Routing counts as ExpertLoads; with `source`, extra keys record where they came
        from and how many tokens and sequences they hold."""
        extra = {} if source is None else {"source": source, "tokens": int(self.num_tokens),
                                           "sequences": int(self.num_sequences)}
        return ExpertLoads(self.counts(), self.top_k, self.layer_ids, self.model, extra)

    def _sample_sequences(self, batch_tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """(sequence ids [n], tokens kept of the last one): whole sequences drawn at random
        with replacement until `batch_tokens` tokens, the last one cut to fit."""
        if batch_tokens <= 0:
            raise ValueError("batch_tokens must be > 0")
        lengths = np.diff(self.seq_offsets)
        # Draw enough sequences in one go (twice the expected number), top up if unlucky.
        n_draw = int(np.ceil(batch_tokens / max(lengths.mean(), 1))) * 2 + 2
        picks = rng.integers(0, self.num_sequences, size=n_draw)
        while lengths[picks].sum() < batch_tokens:
            picks = np.concatenate([picks, rng.integers(0, self.num_sequences, size=n_draw)])
        cum = np.cumsum(lengths[picks])
        n_seq = int(np.searchsorted(cum, batch_tokens)) + 1
        last_len = int(lengths[picks[n_seq - 1]] - (cum[n_seq - 1] - batch_tokens))
        return picks[:n_seq], last_len

    def sample_token_indices(self, batch_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """[batch_tokens] token indices of a batch made of whole sequences drawn at random
        (with replacement), the last one cut to fit."""
        picks, last_len = self._sample_sequences(batch_tokens, rng)
        starts = self.seq_offsets[picks]
        lens = np.diff(self.seq_offsets)[picks]
        lens[-1] = last_len
        # Vectorized concatenation of ranges [start, start + len).
        return np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())

    def sample_batch_counts(self, batch_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """[L, E] routings of one re-sampled batch of `batch_tokens` tokens; equal to
        `counts(sample_token_indices(B, rng))` for the same rng state.

        Whole sequences add up from the per-sequence table (O(sequences * L * E)), only
        the cut last sequence is counted token by token."""
        seq_counts = self.sequence_counts
        if seq_counts is None:
            return self.counts(self.sample_token_indices(batch_tokens, rng))
        picks, last_len = self._sample_sequences(batch_tokens, rng)
        total = seq_counts[picks[:-1]].sum(axis=0, dtype=np.int64)
        start = int(self.seq_offsets[picks[-1]])
        return total + self.counts(slice(start, start + last_len))

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
        require_file(p, "a .npz trace")
        try:
            with np.load(p, allow_pickle=False) as z:
                if "schema" not in z or str(z["schema"]) != TRACE_SCHEMA:
                    raise InputError(p, f"not a {TRACE_SCHEMA} .npz file")
                obj = {k: z[k] for k in z.files}
        except InputError:
            raise
        except Exception as exc:  # a damaged zip or .npy header fails in many ways (zlib, struct, syntax...)
            raise InputError(p, f"not a readable .npz trace ({exc.__class__.__name__})") from None
        try:
            return cls(experts=obj["experts"], seq_offsets=obj["seq_offsets"],
                       num_experts=int(obj["num_experts"]), layer_ids=tuple(obj["layer_ids"].tolist()),
                       model=str(obj.get("model", "")))
        except KeyError as exc:
            raise InputError(p, f"missing array {exc}") from None
        except (TypeError, ValueError, OverflowError):  # e.g. a NaN or a list as num_experts
            raise InputError(p, "num_experts and layer_ids must be integers") from None
        except InputError as exc:
            raise InputError(p, exc.problem) from None


def _validate(t: RoutingTrace, source: object) -> None:
    ex, off = t.experts, t.seq_offsets
    if ex.ndim != 3 or 0 in ex.shape:
        raise InputError(source, f"experts must be a non-empty [layers, tokens, top_k] array, got {list(ex.shape)}")
    if ex.dtype.kind not in "iu":
        raise InputError(source, "expert ids must be integers")
    if t.num_experts > MAX_EXPERTS:  # counting allocates [layers, num_experts]
        raise InputError(source, f"num_experts={t.num_experts} is past {MAX_EXPERTS:,}")
    if t.num_experts < 1 or ex.min() < 0 or ex.max() >= t.num_experts:
        raise InputError(source, f"expert ids must lie in 0..{t.num_experts - 1}")
    if off.ndim != 1 or len(off) < 2 or off[0] != 0 or off[-1] != ex.shape[1] or np.any(np.diff(off) <= 0):
        raise InputError(source, "seq_offsets must rise strictly from 0 to the token count")
    if len(t.layer_ids) != ex.shape[0]:
        raise InputError(source, f"{len(t.layer_ids)} layer_ids for {ex.shape[0]} layers")


def check_trace_matches(trace: RoutingTrace, other, source: object = "routing trace") -> None:
    """Raise InputError unless `trace` routes the same MoE layers (count and ids) and the
    same number of experts as `other`, an ExpertLoads or a Placement."""
    what = "placement" if hasattr(other, "num_logical_experts") else "loads"
    E = other.num_logical_experts if what == "placement" else other.num_experts
    if (trace.num_layers, trace.num_experts) != (other.num_layers, E):
        raise InputError(source, f"is for {trace.num_layers} layers x {trace.num_experts} experts, "
                                 f"the {what} for {other.num_layers} x {E}")
    if tuple(trace.layer_ids) != tuple(other.layer_ids):
        raise InputError(source, f"trace layer ids {list(trace.layer_ids)[:4]}... differ from the {what}'s "
                                 f"{list(other.layer_ids)[:4]}...")


def _count_routings(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """experts [L, T, k] expert ids -> [L, E] int64 routings per layer and expert."""
    L = experts.shape[0]
    # One bincount over layer-offset ids; int32 keys halve the memory traffic of int64.
    key_dtype = np.int32 if L * num_experts < 2**31 else np.int64
    keys = experts.astype(key_dtype) + (np.arange(L, dtype=key_dtype) * num_experts)[:, None, None]
    return np.bincount(keys.ravel(), minlength=L * num_experts).reshape(L, num_experts)


def concat_traces(traces: list[RoutingTrace], model: str | None = None) -> RoutingTrace:
    """Traces of the same layers and experts (e.g. several domains) -> one trace holding
    all their sequences, in order."""
    first = traces[0]
    for t in traces[1:]:
        if t.layer_ids != first.layer_ids or t.num_experts != first.num_experts or t.top_k != first.top_k:
            raise InputError("trace", "traces to join differ in layers, experts or top_k")
    offsets = [first.seq_offsets]
    for t in traces[1:]:
        offsets.append(t.seq_offsets[1:] + offsets[-1][-1])
    return RoutingTrace(np.concatenate([t.experts for t in traces], axis=1), np.concatenate(offsets),
                        first.num_experts, first.layer_ids, first.model if model is None else model)
