"""`Placement`: which logical expert each physical slot holds, per MoE layer.

File format: vibe.placement/v1. Slot p lives on GPU p // slots_per_gpu (every engine's
convention). The physical-to-logical map is the one source of truth; the other maps
(logical counts, logical-to-physical lists, per-slot token shares) are derived from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vibe.errors import InputError
from vibe.io import int_array, json_int, numeric_array, read_json, require_schema, write_json_atomic

PLACEMENT_SCHEMA = "vibe.placement/v1"


@dataclass(frozen=True)
class Placement:
    physical_to_logical_map: np.ndarray  # [L, P] int64 logical expert id of each slot
    num_gpus: int
    num_logical_experts: int
    layer_ids: tuple[int, ...] = ()
    policy: str = ""
    replica_weights: np.ndarray | None = None  # [L, P] share of its expert's tokens, or None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        phy = np.asarray(self.physical_to_logical_map)
        object.__setattr__(self, "physical_to_logical_map", phy.astype(np.int64))
        if not self.layer_ids and phy.ndim == 2:
            object.__setattr__(self, "layer_ids", tuple(range(phy.shape[0])))
        else:
            object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
        if self.replica_weights is not None:
            object.__setattr__(self, "replica_weights", np.asarray(self.replica_weights, dtype=np.float64))
        _validate(self, "placement")

    # ---- constructors ----------------------------------------------------------------
    @classmethod
    def init_by_mapping(cls, physical_to_logical_map: np.ndarray, num_gpus: int,
                        num_logical_experts: int | None = None, layer_ids: Sequence[int] = (),
                        policy: str = "", replica_weights: np.ndarray | None = None) -> "Placement":
        phy = np.asarray(physical_to_logical_map, dtype=np.int64)
        num_e = int(phy.max()) + 1 if num_logical_experts is None else int(num_logical_experts)
        return cls(phy, int(num_gpus), num_e, tuple(layer_ids), policy, replica_weights)

    @classmethod
    def from_dict(cls, obj: Any, source: object = "placement") -> "Placement":
        obj = require_schema(obj, PLACEMENT_SCHEMA, source)
        phy = int_array(obj.get("physical_to_logical_map"), "physical_to_logical_map", source, 2)
        num_gpus = json_int(obj.get("num_gpus"), "num_gpus", source, lo=1)
        if "slots_per_gpu" in obj:
            spg = json_int(obj["slots_per_gpu"], "slots_per_gpu", source)
            if phy.shape[1] % num_gpus != 0:
                raise InputError(source, f"{phy.shape[1]} slots per layer are not divisible by {num_gpus} GPUs")
            if spg * num_gpus != phy.shape[1]:
                raise InputError(source, f"slots_per_gpu={spg} x num_gpus={num_gpus} != {phy.shape[1]} slots per layer")
        num_e = obj.get("num_logical_experts")
        if num_e is None:
            num_e = int(phy.max()) + 1 if phy.size else 0
        else:
            num_e = json_int(num_e, "num_logical_experts", source)
        weights = obj.get("replica_weights")
        if weights is not None:
            weights = numeric_array(weights, "replica_weights", source, 2)
        ids = obj.get("layer_ids")
        ids = tuple(int_array(ids, "layer_ids", source, 1).tolist()) if ids is not None else ()
        extra = {k: v for k, v in obj.items() if k not in (
            "schema", "policy", "num_gpus", "slots_per_gpu", "layer_ids", "physical_to_logical_map",
            "replica_weights", "num_logical_experts")}
        try:
            return cls(phy, num_gpus, int(num_e), ids, str(obj.get("policy", "")), weights, extra)
        except InputError as exc:
            raise InputError(source, exc.problem) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Placement":
        return cls.from_dict(read_json(path), source=path)

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update(schema=PLACEMENT_SCHEMA, policy=self.policy, num_gpus=self.num_gpus,
                 slots_per_gpu=self.slots_per_gpu, num_logical_experts=self.num_logical_experts,
                 layer_ids=list(self.layer_ids),
                 physical_to_logical_map=self.physical_to_logical_map.tolist(),
                 replica_weights=None if self.replica_weights is None else self.replica_weights.tolist())
        return d

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    # ---- derived maps ----------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.physical_to_logical_map.shape[0]

    @property
    def num_slots(self) -> int:
        return self.physical_to_logical_map.shape[1]

    @property
    def slots_per_gpu(self) -> int:
        return self.num_slots // self.num_gpus

    @property
    def num_redundant(self) -> int:
        return self.num_slots - self.num_logical_experts

    @property
    def gpu_of_slot(self) -> np.ndarray:
        """[P] GPU rank of each physical slot."""
        return np.arange(self.num_slots) // self.slots_per_gpu

    def logical_count(self) -> np.ndarray:
        """[L, E] number of replicas of each logical expert."""
        L, E = self.num_layers, self.num_logical_experts
        flat = (np.arange(L)[:, None] * E + self.physical_to_logical_map).ravel()
        return np.bincount(flat, minlength=L * E).reshape(L, E)

    def logical_to_physical_map(self) -> np.ndarray:
        """[L, E, max_replicas] slots of each logical expert, padded with -1 (SGLang/EPLB)."""
        L, E = self.num_layers, self.num_logical_experts
        cnt = self.logical_count()
        out = np.full((L, E, max(int(cnt.max()), 1)), -1, dtype=np.int64)
        order = np.argsort(self.physical_to_logical_map, axis=1, kind="stable")  # slots grouped by expert
        sorted_e = np.take_along_axis(self.physical_to_logical_map, order, axis=1)
        first = np.concatenate([np.zeros((L, 1), np.int64), np.cumsum(cnt, axis=1)[:, :-1]], axis=1)
        rank = np.arange(self.num_slots)[None, :] - np.take_along_axis(first, sorted_e, axis=1)
        out[np.arange(L)[:, None], sorted_e, rank] = order
        return out

    def slot_share(self) -> np.ndarray:
        """[L, P] fraction of its expert's tokens each slot receives (even split unless
        replica_weights say otherwise)."""
        phy = self.physical_to_logical_map
        L, E = self.num_layers, self.num_logical_experts
        flat = (np.arange(L)[:, None] * E + phy)
        if self.replica_weights is None:
            cnt = self.logical_count().ravel()
            return 1.0 / cnt[flat]
        w = self.replica_weights
        tot = np.bincount(flat.ravel(), weights=w.ravel(), minlength=L * E)
        return w / tot[flat]

    def check_matches(self, loads, source: object = "placement") -> None:
        """Raise InputError unless this placement fits `loads` (an ExpertLoads)."""
        if self.num_logical_experts != loads.num_experts:
            raise InputError(source, f"placement is for {self.num_logical_experts} experts, "
                                     f"loads have {loads.num_experts}")
        if self.num_layers != loads.num_layers:
            raise InputError(source, f"placement has {self.num_layers} layers, loads have {loads.num_layers}")
        if tuple(self.layer_ids) != tuple(loads.layer_ids):
            raise InputError(source, "placement layer_ids differ from the loads' layer_ids")

    def check_fits(self, cluster, source: object = "placement") -> None:
        """Raise InputError unless this placement is for `cluster`'s GPU count."""
        if self.num_gpus != cluster.num_gpus:
            raise InputError(source, f"placement is for {self.num_gpus} GPUs, cluster has {cluster.num_gpus}")


def _validate(p: Placement, source: object) -> None:
    phy = p.physical_to_logical_map
    if phy.ndim != 2 or phy.shape[0] == 0 or phy.shape[1] == 0:
        raise InputError(source, f"physical_to_logical_map must be a non-empty [layers, slots] matrix, "
                                 f"got shape {list(phy.shape)}")
    if p.num_gpus < 1:
        raise InputError(source, "num_gpus must be >= 1")
    if phy.shape[1] % p.num_gpus != 0:
        raise InputError(source, f"{phy.shape[1]} slots per layer are not divisible by {p.num_gpus} GPUs")
    if p.num_logical_experts < 1 or p.num_logical_experts > phy.shape[1]:
        raise InputError(source, f"{p.num_logical_experts} logical experts cannot fill {phy.shape[1]} slots")
    if phy.min() < 0 or phy.max() >= p.num_logical_experts:
        raise InputError(source, f"expert ids must lie in 0..{p.num_logical_experts - 1}")
    cnt = p.logical_count()
    if np.any(cnt == 0):
        l, e = np.argwhere(cnt == 0)[0]
        raise InputError(source, f"layer row {l} is missing expert {e}")
    if len(p.layer_ids) != phy.shape[0]:
        raise InputError(source, f"{len(p.layer_ids)} layer_ids for {phy.shape[0]} layers")
    w = p.replica_weights
    if w is not None:
        if w.shape != phy.shape:
            raise InputError(source, f"replica_weights shape {list(w.shape)} != map shape {list(phy.shape)}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise InputError(source, "replica_weights must be finite and >= 0")
        L, E = phy.shape[0], p.num_logical_experts
        tot = np.bincount((np.arange(L)[:, None] * E + phy).ravel(), weights=w.ravel(), minlength=L * E)
        if np.any(tot <= 0):
            raise InputError(source, "every expert's replica_weights must sum to more than 0")
