"""Model shapes for the serving simulator: presets and the vibe.model/v1 file format.

A `ModelSpec` holds what the step-time predictor needs besides the cluster's expert
curves: the layer layout, the routed-expert shape, and per layer the non-expert
parameters (attention + shared experts, or a dense MLP), the KV-cache bytes and the
attention FLOPs per token of context. Presets carry their published shapes; the
non-expert parameter counts are worked out from the published configs (see
docs/simulator.md) and rounded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vibe.errors import InputError, VibeError
from vibe.io import read_json, require_schema

MODEL_SCHEMA = "vibe.model/v1"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int  # decoder layers
    moe_layer_ids: tuple[int, ...]  # decoder layers whose MLP is a routed MoE
    num_experts: int  # routed experts per MoE layer
    top_k: int
    hidden: int
    moe_intermediate: int
    moe_layer_params: float  # non-routed params of an MoE layer (attention + shared experts)
    dense_layer_params: float  # params of a dense layer (attention + MLP)
    kv_bytes_per_token: float  # KV cache bytes per token per layer
    attn_flops_per_context: float  # attention FLOPs per (query token, context token) per layer
    weight_bytes: float = 1.0  # bytes per parameter (fp8 = 1, bf16 = 2)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_ids)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["moe_layer_ids"] = list(self.moe_layer_ids)
        return {"schema": MODEL_SCHEMA, **d}


def _mla_attention(hidden: int, heads: int, q_lora: int, kv_lora: int, rope: int = 64, nope: int = 128,
                   v_dim: int = 128) -> float:
    """Params of one multi-head latent attention block (DeepSeek-V2/V3)."""
    q = hidden * heads * (nope + rope) if q_lora == 0 else hidden * q_lora + q_lora * heads * (nope + rope)
    return q + hidden * (kv_lora + rope) + kv_lora * heads * (nope + v_dim) + heads * v_dim * hidden


def _gqa_attention(hidden: int, heads: int, kv_heads: int, head_dim: int) -> float:
    return hidden * head_dim * (2 * heads + 2 * kv_heads)


def _presets() -> dict[str, ModelSpec]:
    ffn = lambda h, i: 3.0 * h * i  # gate, up and down projections
    v3_attn = _mla_attention(7168, 128, 1536, 512)
    lite_attn = _mla_attention(2048, 16, 0, 512)
    qwen_attn = _gqa_attention(4096, 64, 4, 128)
    mix_attn = _gqa_attention(4096, 32, 8, 128)
    return {
        # MLA caches the 512-d latent + 64-d rope key (bf16); absorbed attention costs
        # 2 * heads * (2 * kv_lora + rope) FLOPs per context token.
        "deepseek-v3": ModelSpec("deepseek-v3", 61, tuple(range(3, 61)), 256, 8, 7168, 2048,
                                 v3_attn + ffn(7168, 2048), v3_attn + ffn(7168, 18432),
                                 576 * 2, 2 * 128 * (2 * 512 + 64), 1.0),
        "deepseek-v2-lite": ModelSpec("deepseek-v2-lite", 27, tuple(range(1, 27)), 64, 6, 2048, 1408,
                                      lite_attn + 2 * ffn(2048, 1408), lite_attn + ffn(2048, 10944),
                                      576 * 2, 2 * 16 * (2 * 512 + 64), 2.0),
        "qwen3-235b-a22b": ModelSpec("qwen3-235b-a22b", 94, tuple(range(94)), 128, 8, 4096, 1536,
                                     qwen_attn, qwen_attn, 2 * 4 * 128 * 2, 2 * 2 * 64 * 128, 2.0),
        "mixtral-8x7b": ModelSpec("mixtral-8x7b", 32, tuple(range(32)), 8, 2, 4096, 14336,
                                  mix_attn, mix_attn, 2 * 8 * 128 * 2, 2 * 2 * 32 * 128, 2.0),
    }


PRESETS: dict[str, ModelSpec] = _presets()
_FIELDS = {f.name: f.type for f in dataclasses.fields(ModelSpec)}


def model_from_dict(obj: Any, source: object = "model") -> ModelSpec:
    """Parse a vibe.model/v1 object; every field of ModelSpec is required except weight_bytes."""
    obj = require_schema(obj, MODEL_SCHEMA, source)
    missing = [k for k in _FIELDS if k not in obj and k != "weight_bytes"]
    if missing:
        raise InputError(source, f"missing {', '.join(missing)}")
    try:
        spec = ModelSpec(
            name=str(obj["name"]), num_layers=int(obj["num_layers"]),
            moe_layer_ids=tuple(int(i) for i in obj["moe_layer_ids"]),
            num_experts=int(obj["num_experts"]), top_k=int(obj["top_k"]), hidden=int(obj["hidden"]),
            moe_intermediate=int(obj["moe_intermediate"]),
            moe_layer_params=float(obj["moe_layer_params"]), dense_layer_params=float(obj["dense_layer_params"]),
            kv_bytes_per_token=float(obj["kv_bytes_per_token"]),
            attn_flops_per_context=float(obj["attn_flops_per_context"]),
            weight_bytes=float(obj.get("weight_bytes", 1.0)))
    except (TypeError, ValueError):
        raise InputError(source, "fields must be numbers (moe_layer_ids a list of integers)") from None
    _validate(spec, source)
    return spec


def _validate(m: ModelSpec, source: object) -> None:
    if not m.moe_layer_ids or len(set(m.moe_layer_ids)) != len(m.moe_layer_ids):
        raise InputError(source, "moe_layer_ids must be a non-empty list without repeats")
    if min(m.moe_layer_ids) < 0 or max(m.moe_layer_ids) >= m.num_layers:
        raise InputError(source, f"moe_layer_ids must lie in 0..{m.num_layers - 1}")
    if not 1 <= m.top_k <= m.num_experts:
        raise InputError(source, "need 1 <= top_k <= num_experts")
    numbers = (m.hidden, m.moe_intermediate, m.moe_layer_params, m.dense_layer_params,
               m.kv_bytes_per_token, m.attn_flops_per_context, m.weight_bytes)
    if any(not (x >= 0) for x in numbers) or m.hidden < 1 or m.weight_bytes <= 0:
        raise InputError(source, "sizes must be positive numbers")


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name or the path of a vibe.model/v1 JSON file."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        return model_from_dict(read_json(p), p)
    raise VibeError(f"unknown model {name_or_path!r}: use one of {', '.join(PRESETS)} or a vibe.model/v1 .json file")


def model_for_loads(loads, name: str | None = None, source: object = "loads") -> ModelSpec:
    """The preset with the loads' shape (layers x experts, top_k); `name` forces one.

    Raises VibeError when no preset matches, naming the shapes."""
    if name is not None:
        m = resolve_model(name)
        check_model_matches(m, loads.num_layers, loads.num_experts, loads.top_k, source)
        return m
    for m in PRESETS.values():
        if (m.num_moe_layers, m.num_experts, m.top_k) == (loads.num_layers, loads.num_experts, loads.top_k):
            return m
    raise VibeError(f"no model preset has {loads.num_layers} MoE layers x {loads.num_experts} experts, "
                    f"top-{loads.top_k}; pass --model FILE.json")


def check_model_matches(model: ModelSpec, num_layers: int, num_experts: int, top_k: int | None,
                        source: object) -> None:
    """Raise InputError when a loads/placement/trace shape is not this model's."""
    if num_layers != model.num_moe_layers or num_experts != model.num_experts:
        raise InputError(source, f"is for {num_layers} MoE layers x {num_experts} experts, but model "
                                 f"{model.name} has {model.num_moe_layers} x {model.num_experts}")
    if top_k is not None and top_k != model.top_k:
        raise InputError(source, f"has top_k={top_k}, model {model.name} routes top-{model.top_k}")



def generic_model(loads, cluster=None) -> ModelSpec:
    """A model with the loads' shape when no preset fits: expert sizes from the cluster
    file's `expert` block (else 4096 / 1408), GQA attention with 32 x 128-d heads, 8 KV heads."""
    expert = getattr(cluster, "expert", None) or {}
    hidden = int(expert.get("hidden", 4096))
    inter = int(expert.get("intermediate", 1408))
    attn = _gqa_attention(hidden, 32, 8, 128)
    return ModelSpec(f"generic-{loads.num_layers}x{loads.num_experts}-top{loads.top_k}", loads.num_layers,
                     tuple(range(loads.num_layers)), loads.num_experts, loads.top_k, hidden, inter,
                     attn, attn, 2 * 8 * 128 * 2, 2 * 2 * 32 * 128, 2.0)
