"""Routing of a real Hugging Face MoE model: hooks on the routers record the experts each
token picks in each MoE layer, kept as a token-level RoutingTrace.

Works for the transformers families whose decoder layers hold `mlp.gate` (5.x: a router
returning `(logits, weights, indices)`; 4.x: a linear gate returning logits, top_k taken
here): Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2 and DeepSeek-V3. torch and
transformers are imported here only (the data model stays numpy).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vibe.errors import InputError, VibeError
from vibe.io import require_file
from vibe.model import RoutingTrace

# `model.layers.3.mlp.gate` (Mixtral 4.x: `block_sparse_moe.gate`); not Qwen2-MoE's
# `shared_expert_gate`, which is a 1-wide linear.
_ROUTER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate$")


def read_dataset(path: str | os.PathLike, max_sequences: int | None = None) -> list[str]:
    """Texts of a dataset file: `.jsonl` (one {"text": ...} object or string per line) or
    plain text (one sequence per non-empty line)."""
    p = Path(path)
    require_file(p, "a text or .jsonl dataset")
    texts: list[str] = []
    try:
        with open(p, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if p.suffix == ".jsonl":
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(p, f"line {lineno}: invalid JSON ({exc.msg})") from None
                    text = obj.get("text") if isinstance(obj, dict) else obj
                    if not isinstance(text, str):
                        raise InputError(p, f"line {lineno}: expected a string or an object with a 'text' string")
                else:
                    text = line.rstrip("\n")
                texts.append(text)
                if max_sequences is not None and len(texts) >= max_sequences:
                    break
    except UnicodeDecodeError:
        raise InputError(p, "not a UTF-8 text file") from None
    if not texts:
        raise InputError(p, "holds no text")
    return texts


def find_routers(model) -> dict[int, object]:
    """{decoder layer id: router module} of every MoE layer, in layer order."""
    routers = {int(m.group(1)): mod for name, mod in model.named_modules() if (m := _ROUTER_NAME.search(name))}
    if not routers:
        raise VibeError(f"{type(model).__name__}: no MoE router found (expected decoder layers with mlp.gate)")
    return dict(sorted(routers.items()))


def routing_shape(model) -> tuple[int, int]:
    """(num_experts, top_k) of a model, from its config."""
    cfg = getattr(model, "config", None)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    num_e = next((getattr(cfg, a) for a in ("num_local_experts", "n_routed_experts", "num_experts")
                  if getattr(cfg, a, None)), None)
    if not top_k or not num_e:
        raise VibeError(f"{type(model).__name__}: config lacks num_experts_per_tok or the number of routed experts")
    return int(num_e), int(top_k)


def _chosen_experts(output, top_k: int):
    """Router output -> [tokens, top_k] expert ids: the integer tensor of a 5.x router's
    tuple, or the top_k of a 4.x gate's logits (softmax keeps the order)."""
    import torch

    if isinstance(output, tuple):
        ints = [o for o in output if isinstance(o, torch.Tensor) and not o.is_floating_point()]
        if ints:
            return ints[-1]
        output = output[0]
    return torch.topk(output, top_k, dim=-1).indices


def record_routing(model, sequences: Sequence[Sequence[int]], batch_size: int = 8,
                   on_batch: Callable[[int], None] | None = None, model_name: str = "") -> RoutingTrace:
    """Run `model` over token-id `sequences` (right-padded batches) with hooks on its
    routers -> RoutingTrace: experts [L MoE layers, T tokens, top_k] in sequence order
    (padding dropped), layer ids = decoder layer indices."""
    import torch

    seqs = [list(s) for s in sequences if len(s)]
    if not seqs:
        raise VibeError("no token to run the model on")
    num_experts, top_k = routing_shape(model)
    routers = find_routers(model)
    layer_ids = tuple(routers)
    current: dict[int, torch.Tensor] = {}
    hooks = [mod.register_forward_hook(lambda _m, _i, out, layer=layer: current.__setitem__(
        layer, _chosen_experts(out, top_k).detach().to("cpu", torch.int64)))
        for layer, mod in routers.items()]
    device = next(model.parameters()).device
    per_layer: dict[int, list[np.ndarray]] = {layer: [] for layer in layer_ids}
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(seqs), batch_size):
                batch = seqs[start:start + batch_size]
                lens = [len(s) for s in batch]
                S = max(lens)
                ids = torch.zeros((len(batch), S), dtype=torch.long)
                mask = torch.zeros((len(batch), S), dtype=torch.long)
                for i, s in enumerate(batch):
                    ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
                    mask[i, :len(s)] = 1
                current.clear()
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                for layer in layer_ids:
                    per_layer[layer].append(_unpad(current.get(layer), lens, S, top_k, layer))
                if on_batch:
                    on_batch(len(batch))
    finally:
        for h in hooks:
            h.remove()
    experts = np.stack([np.concatenate(per_layer[layer]) for layer in layer_ids])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    dtype = np.int16 if num_experts <= np.iinfo(np.int16).max else np.int32
    return RoutingTrace(experts.astype(dtype), offsets, num_experts, layer_ids, model_name)


def _unpad(chosen, lens: list[int], S: int, top_k: int, layer: int) -> np.ndarray:
    """Router picks of a padded batch [B*S, top_k] -> [sum(lens), top_k] real tokens."""
    if chosen is None:
        raise VibeError(f"the router of layer {layer} did not run")
    if chosen.shape != (len(lens) * S, top_k):
        raise VibeError(f"the router of layer {layer} returned {list(chosen.shape)} picks, "
                        f"expected [{len(lens) * S}, {top_k}]")
    picks = chosen.numpy().reshape(len(lens), S, top_k)
    return np.concatenate([picks[i, :n] for i, n in enumerate(lens)])


def load_model(model_id: str, device: str = "cpu", dtype: str = "auto"):
    """(model, tokenizer) from a Hub id or a local folder; safetensors weights only, no
    remote code."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise VibeError("profiling a model needs torch and transformers: pip install 'vibe-moe[hf]'") from None
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype, None)
    if torch_dtype is None:
        raise VibeError(f"--dtype {dtype!r} is not a torch dtype")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(model_id, f"cannot load the model or its tokenizer ({str(exc).strip().splitlines()[0][:200]})") from None
    return model.to(device), tokenizer


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Texts -> token ids, each cut to max_tokens (empty ones dropped)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, add_special_tokens=True)
    return [ids for ids in enc["input_ids"] if len(ids)]
