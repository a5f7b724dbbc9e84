"""What `vibe monitor` watches, read incrementally: each poll returns only what is new.

- SGLang: a folder of expert-distribution recorder dumps (`*.pt`, stat or per_pass
  mode, read with torch.load(weights_only=True) by vibe.engines.sglang). Each dump is
  one observation: the counts it holds. A file is known by (name, size, mtime): the same
  dump is never counted twice, and a dump rewritten in place counts again.
- TensorRT-LLM: an EXPERT_STATISTIC_PATH folder (meta_info.json + rank<R>.safetensors),
  or a folder of such folders. The statistics accumulate, so an observation is what the
  folder gained since the last read (the difference of its totals).
- JSONL: one JSON object per line and per step, `{"counts": [[...]] (layers x experts,
  the plan's layers), "gpu_us": [...] (per-GPU MoE time of the step in us, null for a
  GPU that did not report)}`, either key optional. Lines are read from where the last
  poll stopped; a partial last line waits for its newline.

A malformed dump or line becomes an Observation with `error` set: reported, skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vibe.errors import InputError, VibeError
from vibe.model import ExpertLoads, Placement

INPUT_FORMATS = ("sglang", "trtllm", "jsonl")


@dataclass
class Observation:
    """One new piece of evidence: counts [L, E] on the plan's layers and/or per-GPU
    times [G] (us, NaN = no report); `error` instead when it could not be read."""

    source: str
    counts: np.ndarray | None = None
    gpu_us: np.ndarray | None = None
    error: str | None = None


def counts_for_plan(loads: ExpertLoads, placement: Placement, source: object) -> np.ndarray:
    """[L, E] rows of `loads` for the plan's layers, or InputError (a dump of another model)."""
    if loads.num_experts != placement.num_logical_experts:
        raise InputError(source, f"has {loads.num_experts} experts per layer, the plan {placement.num_logical_experts}")
    row = {lid: r for r, lid in enumerate(loads.layer_ids)}
    missing = [lid for lid in placement.layer_ids if lid not in row]
    if missing:
        raise InputError(source, f"has no counts for the plan's MoE layer {missing[0]} "
                                 f"({len(missing)} of {placement.num_layers} missing)")
    return loads.counts[[row[lid] for lid in placement.layer_ids]]


def read_dump(path: str | os.PathLike, fmt: str, placement: Placement, top_k: int | None) -> ExpertLoads:
    """One SGLang dump or TensorRT-LLM statistics folder (or a vibe.loads/plain counts
    file, fmt "vibe") -> ExpertLoads on the plan's layers. InputError if it does not fit."""
    if fmt == "sglang":
        from vibe.engines.sglang import load_sglang_loads

        loads = load_sglang_loads([path], top_k, None, placement.num_logical_experts)
    elif fmt == "trtllm":
        from vibe.engines.trtllm import load_trtllm_loads

        loads = load_trtllm_loads([path], top_k)
    elif fmt == "vibe":
        from vibe.engines.plain import merge_raw, read_json_counts

        loads = merge_raw([read_json_counts(path)], top_k)
    else:
        raise VibeError(f"unknown dump format {fmt!r}; choose one of: sglang, trtllm, vibe")
    counts = counts_for_plan(loads, placement, path)
    return ExpertLoads(counts, loads.top_k, placement.layer_ids, loads.model, dict(loads.extra))


def _fingerprint(path: Path) -> tuple:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns)


class SglangFolder:
    """New `*.pt` dumps of one folder, oldest first."""

    def __init__(self, folder: Path, placement: Placement, top_k: int):
        self.folder, self.placement, self.top_k = folder, placement, top_k
        self.seen: dict[str, tuple] = {}

    def poll(self) -> list[Observation]:
        if not self.folder.is_dir():
            return [Observation(str(self.folder), error=f"{self.folder}: not a folder")]
        out = []
        files = sorted(self.folder.glob("*.pt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        for path in files:
            try:
                key = _fingerprint(path)
            except OSError:  # vanished between listing and reading
                continue
            if self.seen.get(path.name) == key:
                continue
            self.seen[path.name] = key
            try:
                loads = read_dump(path, "sglang", self.placement, self.top_k)
                out.append(Observation(str(path), counts=loads.counts))
            except VibeError as exc:
                out.append(Observation(str(path), error=str(exc)))
        return out


class TrtllmFolder:
    """What each EXPERT_STATISTIC_PATH folder gained since the last poll."""

    def __init__(self, root: Path, placement: Placement, top_k: int):
        self.root, self.placement, self.top_k = root, placement, top_k
        self.seen: dict[str, tuple] = {}
        self.totals: dict[str, np.ndarray] = {}

    def folders(self) -> list[Path]:
        if (self.root / "meta_info.json").exists():
            return [self.root]
        return sorted(p for p in self.root.iterdir() if (p / "meta_info.json").exists()) if self.root.is_dir() else []

    def poll(self) -> list[Observation]:
        out = []
        for folder in self.folders():
            try:
                key = tuple((p.name,) + _fingerprint(p) for p in sorted(folder.iterdir()) if p.is_file())
            except OSError:
                continue
            name = str(folder)
            if self.seen.get(name) == key:
                continue
            self.seen[name] = key
            try:
                total = read_dump(folder, "trtllm", self.placement, self.top_k).counts
            except VibeError as exc:
                out.append(Observation(name, error=str(exc)))
                continue
            prev = self.totals.get(name)
            self.totals[name] = total
            # statistics only grow; a smaller total means the engine started over
            new = total if prev is None or np.any(total < prev) else total - prev
            if new.sum() > 0:
                out.append(Observation(name, counts=new))
        return out


class JsonlStream:
    """Complete lines appended to a JSONL file since the last poll."""

    def __init__(self, path: Path, placement: Placement, num_gpus: int):
        self.path, self.placement, self.num_gpus = path, placement, num_gpus
        self.offset = 0
        self.inode = None
        self.lineno = 0

    def poll(self) -> list[Observation]:
        try:
            st = self.path.stat()
        except OSError:
            return [Observation(str(self.path), error=f"{self.path}: no such file")]
        if self.inode != st.st_ino or st.st_size < self.offset:  # rotated or truncated: start over
            self.inode, self.offset, self.lineno = st.st_ino, 0, 0
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a partial last line waits for its newline
        self.offset += end
        out = []
        for raw in data[:end].splitlines():
            self.lineno += 1
            if not raw.strip():
                continue
            where = f"{self.path}:{self.lineno}"
            try:
                out.append(self._parse(raw, where))
            except VibeError as exc:
                out.append(Observation(where, error=str(exc)))
        return out

    def _parse(self, raw: bytes, where: str) -> Observation:
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(where, f"invalid JSON ({exc.__class__.__name__})") from None
        if not isinstance(obj, dict):
            raise InputError(where, "expected a JSON object")
        counts = gpu = None
        if obj.get("counts") is not None:
            from vibe.model.loads import check_counts

            try:
                counts = check_counts(np.asarray(obj["counts"], dtype=np.float64), where)
            except (ValueError, TypeError):
                raise InputError(where, "'counts' is ragged or not numeric") from None
            want = self.placement.physical_to_logical_map.shape[0], self.placement.num_logical_experts
            if counts.shape != want:
                raise InputError(where, f"counts of shape {list(counts.shape)}, the plan has {list(want)} "
                                        "[layers, experts]")
        if obj.get("gpu_us") is not None:
            try:
                gpu = np.array([np.nan if v is None else float(v) for v in obj["gpu_us"]])
            except (TypeError, ValueError):
                raise InputError(where, "'gpu_us' must be a list of numbers or nulls") from None
            if gpu.shape != (self.num_gpus,) or np.any(gpu[np.isfinite(gpu)] < 0):
                raise InputError(where, f"'gpu_us' must hold {self.num_gpus} times >= 0")
        if counts is None and gpu is None:
            raise InputError(where, "holds neither 'counts' nor 'gpu_us'")
        return Observation(where, counts=counts, gpu_us=gpu)


def open_source(path: str | os.PathLike, fmt: str | None, placement: Placement, top_k: int, num_gpus: int):
    """The watcher for `path` (format inferred when None: .jsonl file, a folder with
    meta_info.json or folders of them = trtllm, else an SGLang dump folder)."""
    p = Path(path)
    if fmt is None:
        if p.suffix == ".jsonl" or p.is_file():
            fmt = "jsonl"
        elif (p / "meta_info.json").exists() or (p.is_dir() and any((c / "meta_info.json").exists()
                                                                    for c in p.iterdir() if c.is_dir())):
            fmt = "trtllm"
        else:
            fmt = "sglang"
    if fmt == "jsonl":
        return JsonlStream(p, placement, num_gpus)
    if not p.is_dir():
        raise InputError(p, f"not a folder (expected {'SGLang dumps' if fmt == 'sglang' else 'EXPERT_STATISTIC_PATH'})")
    return SglangFolder(p, placement, top_k) if fmt == "sglang" else TrtllmFolder(p, placement, top_k)
