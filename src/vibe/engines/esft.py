"""ESFT routing traces (deepseek-ai/ESFT `expert_scores`): real token-level router decisions.

A domain folder holds `expert_weights_<i>.txt[.gz]`, i = MoE layer (decoder layer i). One
line per sequence: the expert ids of every token in token order, top_k per token,
tab-separated; then two tabs; then the matching gate weights in the same order.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np

from vibe.errors import InputError
from vibe.model import ExpertLoads

_NAME = re.compile(r"expert_weights_(\d+)\.txt(\.gz)?$")


def esft_layer_files(folder: str | os.PathLike) -> dict[int, Path]:
    """{decoder layer id: file} of one ESFT domain folder, in layer order."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "not a folder of ESFT expert_weights_<layer>.txt[.gz] files")
    files = {int(m.group(1)): p for p in root.iterdir() if (m := _NAME.match(p.name))}
    if not files:
        raise InputError(root, "holds no expert_weights_<layer>.txt[.gz] file")
    return dict(sorted(files.items()))


def read_esft_file(path: str | os.PathLike, top_k: int = 6, num_experts: int | None = None) -> list[np.ndarray]:
    """One layer's file -> per sequence an int16 array [tokens, top_k] of expert ids."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    sequences = []
    try:
        with opener(p, "rt") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                ids_text, sep, weights_text = line.partition("\t\t")
                if not sep:
                    raise InputError(p, f"line {lineno}: no gate weights after the expert ids")
                try:
                    ids = np.array(ids_text.split("\t"), dtype=np.int64)
                except ValueError:
                    raise InputError(p, f"line {lineno}: expert ids are not integers") from None
                if ids.size % top_k:
                    raise InputError(p, f"line {lineno}: {ids.size} expert ids is not a multiple of top_k={top_k}")
                if ids.size != len(weights_text.split("\t")):
                    raise InputError(p, f"line {lineno}: {ids.size} expert ids but a different number of weights")
                if ids.min() < 0 or (num_experts is not None and ids.max() >= num_experts):
                    raise InputError(p, f"line {lineno}: expert id out of range")
                sequences.append(ids.reshape(-1, top_k).astype(np.int16))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(p, f"cannot read ({exc.__class__.__name__}: {exc})") from None
    if not sequences:
        raise InputError(p, "holds no routed token")
    return sequences


def load_esft_loads(folder: str | os.PathLike, top_k: int = 6, num_experts: int = 64,
                    model: str = "ESFT-vanilla-lite (DeepSeek-V2-Lite)") -> ExpertLoads:
    """Count the routings of every layer of one ESFT domain into ExpertLoads."""
    files = esft_layer_files(folder)
    counts = np.zeros((len(files), num_experts), dtype=np.int64)
    for row, (layer, path) in enumerate(files.items()):
        for seq in read_esft_file(path, top_k, num_experts):
            counts[row] += np.bincount(seq.ravel(), minlength=num_experts)
    return ExpertLoads(counts=counts, top_k=top_k, layer_ids=tuple(files), model=model,
                       extra={"source": f"esft:{Path(folder).name}"})


def load_esft_trace(folder: str | os.PathLike, top_k: int = 6, num_experts: int = 64,
                    model: str = "ESFT-vanilla-lite (DeepSeek-V2-Lite)"):
    """One ESFT domain -> RoutingTrace (every layer file holds the same sequences)."""
    from vibe.model.traces import RoutingTrace

    files = esft_layer_files(folder)
    layers, lengths = [], None
    for layer, path in files.items():
        seqs = read_esft_file(path, top_k, num_experts)
        lens = [len(s) for s in seqs]
        if lengths is None:
            lengths = lens
        elif lens != lengths:
            raise InputError(path, "its sequences differ in number or length from the other layers' files")
        layers.append(np.concatenate(seqs))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return RoutingTrace(np.stack(layers), offsets, num_experts, tuple(files), model)


def load_esft_traces(folders, top_k: int = 6, num_experts: int = 64,
                     model: str = "ESFT-vanilla-lite (DeepSeek-V2-Lite)"):
    """Several ESFT domain folders -> one RoutingTrace holding all their sequences (one
    folder: the same as load_esft_trace)."""
    from vibe.model.traces import concat_traces

    if not folders:
        raise InputError("esft", "no domain folder given")
    traces = [load_esft_trace(f, top_k, num_experts, model) for f in folders]
    try:
        return concat_traces(traces)
    except InputError:
        raise InputError(folders[-1], "its layers differ from the other domain folders'") from None

