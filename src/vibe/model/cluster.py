"""`Cluster`: the measured (or synthesized) performance of each GPU of one EP group.

File format: vibe.cluster/v1 (see docs/formats.md). Each GPU has a latency curve for
ONE expert's FFN as a function of its token count, and a fixed per-layer overhead.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vibe.errors import InputError
from vibe.io import json_int, numeric_array, read_json, require_schema, write_json_atomic

CLUSTER_SCHEMA = "vibe.cluster/v1"
# A day per expert call, a trillion tokens: past these a curve is a unit mistake, and
# sums over experts, layers and steps would overflow to inf.
MAX_LATENCY_US = 8.64e10
MAX_CURVE_TOKENS = 1e12
# The optional `network` block: the links of the dispatch / combine all-to-all. Absent
# block: no communication term (old files keep their numbers). Present block: its
# missing keys take these defaults (sources in docs/cost-model.md):
#   intra_node_GBps 450: NVLink 4 on H100 SXM, 900 GB/s bidirectional = 450 per direction;
#   inter_node_GBps 50:  one ConnectX-7 400 Gb/s NIC per GPU = 50 GB/s per direction;
#   latency_us 15:       fixed cost of one all-to-all (launch + sync), two per MoE layer;
#   dispatch_bytes 1:    fp8 tokens sent to the experts (DeepSeek-V3 / DeepEP dispatch);
#   combine_bytes 2:     bf16 expert outputs sent back;
#   hidden:              the `expert` block's hidden size, else DEFAULT_HIDDEN.
NETWORK_DEFAULTS = {"intra_node_GBps": 450.0, "inter_node_GBps": 50.0, "latency_us": 15.0,
                    "dispatch_bytes": 1.0, "combine_bytes": 2.0}
DEFAULT_HIDDEN = 7168  # DeepSeek-V3's hidden size (config.json of deepseek-ai/DeepSeek-V3)


@dataclass(frozen=True)
class GpuProfile:
    """One GPU: its latency curve `latency_us[i]` at `tokens[i]` tokens, and overhead."""

    rank: int
    node: int
    tokens: np.ndarray  # [P] strictly increasing token counts
    latency_us: np.ndarray  # [P] non-decreasing expert FFN time (us)
    overhead_us: float = 0.0
    name: str = "GPU"
    telemetry: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # other keys of the file, kept on rewrite

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update(
            rank=self.rank,
            node=self.node,
            name=self.name,
            overhead_us=float(self.overhead_us),
            latency={"tokens": self.tokens.tolist(), "us": self.latency_us.tolist()},
        )
        if self.telemetry:
            d["telemetry"] = self.telemetry
        return d


@dataclass(frozen=True)
class Cluster:
    """The GPUs of one expert-parallel group, ranks 0..G-1 in order."""

    gpus: tuple[GpuProfile, ...]
    name: str = "cluster"
    expert: dict = field(default_factory=dict)  # {"hidden", "intermediate", "dtype"}
    extra: dict = field(default_factory=dict)
    network: dict | None = None  # the all-to-all's links as in the file; None: no comm term

    def __post_init__(self) -> None:
        _validate_gpus(self.gpus, "cluster")
        if self.network is not None:
            _validate_network(self.network, self.expert, "cluster")

    # ---- derived views ---------------------------------------------------------------
    @property
    def num_gpus(self) -> int:
        return len(self.gpus)

    @property
    def nodes(self) -> np.ndarray:
        """[G] node index of each rank."""
        return np.array([g.node for g in self.gpus], dtype=np.int64)

    @property
    def num_nodes(self) -> int:
        return len(np.unique(self.nodes))

    @property
    def overhead_us(self) -> np.ndarray:
        """[G] fixed per-layer MoE cost of each GPU."""
        return np.array([g.overhead_us for g in self.gpus], dtype=np.float64)

    def latency_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All curves on one common token grid.

        Returns (tokens [P], us [G, P]). Resampling a piecewise-linear curve onto a
        superset of its breakpoints (extrapolating past its last point) leaves the
        function unchanged, so the cost model can evaluate every GPU in one shot.
        """
        cached = self.__dict__.get("_latency_table")
        if cached is None:
            grid = np.unique(np.concatenate([g.tokens for g in self.gpus]))
            us = np.stack([_interp_extrap(grid, g.tokens, g.latency_us) for g in self.gpus])
            cached = (grid, us)
            object.__setattr__(self, "_latency_table", cached)
        return cached

    def down_ranks(self) -> tuple[int, ...]:
        """Ranks marked `"state": "down"` in the file (lost GPUs: they get no tokens)."""
        return tuple(g.rank for g in self.gpus if str(g.extra.get("state", "")).lower() == "down")

    def with_gpus(self, gpus: Sequence[GpuProfile], **changes: Any) -> "Cluster":
        return dataclasses.replace(self, gpus=tuple(gpus), **changes)

    def with_network(self, network: dict | None = None) -> "Cluster":
        """This cluster with the comm term on: `network` keys over NETWORK_DEFAULTS
        (None or {}: all defaults). Keys already in the file win over the defaults."""
        merged = dict(self.network or {})
        merged.update(network or {})
        return dataclasses.replace(self, network=merged)

    def network_params(self) -> dict | None:
        """The resolved network block (every key, defaults filled), or None when off."""
        if self.network is None:
            return None
        params = dict(NETWORK_DEFAULTS)
        params["hidden"] = float(self.expert.get("hidden", DEFAULT_HIDDEN))
        params.update({k: float(v) for k, v in self.network.items() if k in _NETWORK_KEYS})
        return params

    # ---- constructors ----------------------------------------------------------------
    @classmethod
    def init_by_curves(
        cls,
        tokens: Sequence[float],
        latency_us: np.ndarray,
        overhead_us: Sequence[float] | float = 0.0,
        nodes: Sequence[int] | None = None,
        name: str = "cluster",
        gpu_name: str = "GPU",
        expert: dict | None = None,
    ) -> "Cluster":
        """Build from a shared token grid and a [G, P] matrix of latencies."""
        lat = np.asarray(latency_us, dtype=np.float64)
        if lat.ndim == 1:
            lat = lat[None, :]
        num_gpus = lat.shape[0]
        over = np.broadcast_to(np.asarray(overhead_us, dtype=np.float64), (num_gpus,))
        node_of = np.zeros(num_gpus, dtype=np.int64) if nodes is None else np.asarray(nodes)
        tok = np.asarray(tokens, dtype=np.float64)
        gpus = tuple(
            GpuProfile(rank=g, node=int(node_of[g]), tokens=tok.copy(), latency_us=lat[g].copy(),
                       overhead_us=float(over[g]), name=gpu_name)
            for g in range(num_gpus)
        )
        return cls(gpus=gpus, name=name, expert=dict(expert or {}))

    @classmethod
    def from_dict(cls, obj: Any, source: object = "cluster") -> "Cluster":
        obj = require_schema(obj, CLUSTER_SCHEMA, source)
        raw_gpus = obj.get("gpus")
        if not isinstance(raw_gpus, list) or not raw_gpus:
            raise InputError(source, "'gpus' must be a non-empty list")
        gpus = []
        for i, raw in enumerate(raw_gpus):
            gpus.append(_gpu_from_dict(raw, i, source))
        gpus.sort(key=lambda g: g.rank)
        expert = obj.get("expert")
        expert = {} if expert is None else expert  # [] or 0 are mistakes, not "no expert block"
        if not isinstance(expert, dict):
            raise InputError(source, "'expert' must be an object")
        network = obj.get("network")
        if network is not None and not isinstance(network, dict):
            raise InputError(source, "'network' must be an object")
        extra = {k: v for k, v in obj.items() if k not in ("schema", "name", "expert", "gpus", "network")}
        try:
            return cls(gpus=tuple(gpus), name=str(obj.get("name", "cluster")), expert=expert, extra=extra,
                       network=network)
        except InputError as exc:
            raise InputError(source, exc.problem) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Cluster":
        return cls.from_dict(read_json(path), source=path)

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update(schema=CLUSTER_SCHEMA, name=self.name, expert=self.expert,
                 gpus=[g.to_dict() for g in self.gpus])
        if self.network is not None:
            d["network"] = self.network
        return d

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())


def _gpu_from_dict(raw: Any, index: int, source: object) -> GpuProfile:
    where = f"gpus[{index}]"
    if not isinstance(raw, dict):
        raise InputError(source, f"{where} must be an object")
    lat = raw.get("latency")
    if not isinstance(lat, dict):
        raise InputError(source, f"{where} has no 'latency' object")
    tokens = numeric_array(lat.get("tokens"), f"{where}.latency.tokens", source, 1)
    us = numeric_array(lat.get("us"), f"{where}.latency.us", source, 1)
    rank = json_int(raw.get("rank", index), f"{where}.rank", source, lo=0)
    node = json_int(raw.get("node", 0), f"{where}.node", source, lo=0)
    overhead = raw.get("overhead_us", 0.0)
    # float() would also take "12" or true: a JSON number is required, as for the curve
    if not isinstance(overhead, (int, float)) or isinstance(overhead, bool):
        raise InputError(source, f"{where}: overhead_us must be a number")
    try:
        overhead = float(overhead)
    except OverflowError:  # a JSON integer past float range (1e400 written out): refused below
        overhead = np.inf if overhead > 0 else -np.inf
    telemetry = raw.get("telemetry")
    telemetry = {} if telemetry is None else telemetry  # [] or 0 are mistakes, not "none"
    if not isinstance(telemetry, dict):
        raise InputError(source, f"{where}.telemetry must be an object")
    extra = {k: v for k, v in raw.items()
             if k not in ("rank", "node", "name", "overhead_us", "latency", "telemetry")}
    return GpuProfile(rank=rank, node=node, tokens=tokens, latency_us=us, overhead_us=overhead,
                      name=str(raw.get("name", "GPU")), telemetry=telemetry, extra=extra)


def _validate_gpus(gpus: Sequence[GpuProfile], source: object) -> None:
    if not gpus:
        raise InputError(source, "a cluster needs at least one GPU")
    ranks = [g.rank for g in gpus]
    if ranks != list(range(len(gpus))):
        raise InputError(source, f"GPU ranks must be 0..{len(gpus) - 1} in order, got {ranks}")
    for g in gpus:
        where = f"gpu rank {g.rank}"
        if g.tokens.ndim != 1 or g.tokens.shape != g.latency_us.shape:
            raise InputError(source, f"{where}: latency tokens and us differ in length")
        if g.tokens.size < 2:
            raise InputError(source, f"{where}: a latency curve needs at least 2 points")
        if not (np.all(np.isfinite(g.tokens)) and np.all(np.isfinite(g.latency_us))):
            raise InputError(source, f"{where}: latency curve holds non-finite values")
        if g.tokens[0] <= 0 or np.any(np.diff(g.tokens) <= 0):
            raise InputError(source, f"{where}: latency tokens must be positive and strictly increasing")
        if np.any(g.latency_us <= 0):
            raise InputError(source, f"{where}: latency must be positive")
        if g.latency_us.max() > MAX_LATENCY_US or g.overhead_us > MAX_LATENCY_US or g.tokens[-1] > MAX_CURVE_TOKENS:
            raise InputError(source, f"{where}: latency curve is implausibly large (over {MAX_LATENCY_US:g} us or "
                                     f"{MAX_CURVE_TOKENS:g} tokens); the cost model would overflow")
        if np.any(np.diff(g.latency_us) < 0):
            bad = int(np.argmax(np.diff(g.latency_us) < 0))
            raise InputError(source, f"{where}: latency curve is not monotone (drops after "
                                     f"{g.tokens[bad]:g} tokens)")
        if not np.isfinite(g.overhead_us) or g.overhead_us < 0:
            raise InputError(source, f"{where}: overhead_us must be finite and >= 0")
        if g.node < 0:
            raise InputError(source, f"{where}: node must be >= 0")


_NETWORK_KEYS = (*NETWORK_DEFAULTS, "hidden")


def _validate_network(network: dict, expert: dict, source: object) -> None:
    """Every known key of the network block (and expert.hidden, which it uses) must be a
    finite number, > 0 (latency_us >= 0): a zero bandwidth would make every time inf."""
    values = {k: network[k] for k in _NETWORK_KEYS if k in network}
    if "hidden" not in values and "hidden" in expert:
        values["expert.hidden"] = expert["hidden"]
    for key, v in values.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        if not ok or v < 0 or (v == 0 and key != "latency_us"):
            bound = ">= 0" if key == "latency_us" else "> 0"
            raise InputError(source, f"network.{key} must be a finite number {bound}, got {v!r}"
                             if key != "expert.hidden" else f"expert.hidden must be a finite number > 0, got {v!r}")


def _interp_extrap(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation, linear past the last two points, flat before the first."""
    y = np.interp(x, xp, fp)
    past = x > xp[-1]
    if np.any(past):
        slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y[past] = fp[-1] + slope * (x[past] - xp[-1])
    return y
