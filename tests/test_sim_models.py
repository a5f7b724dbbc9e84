"""Model presets and the vibe.model/v1 file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vibe.errors import InputError, VibeError
from vibe.model import ExpertLoads
from vibe.sim.models import PRESETS, generic_model, model_for_loads, model_from_dict, resolve_model


@pytest.mark.parametrize("name, layers, moe, experts, top_k", [
    ("deepseek-v3", 61, 58, 256, 8), ("deepseek-v2-lite", 27, 26, 64, 6),
    ("qwen3-235b-a22b", 94, 94, 128, 8), ("mixtral-8x7b", 32, 32, 8, 2)])
def test_presets_have_published_shapes(name, layers, moe, experts, top_k):
    m = PRESETS[name]
    assert (m.num_layers, m.num_moe_layers, m.num_experts, m.top_k) == (layers, moe, experts, top_k)
    assert m.moe_layer_params > 0 and m.kv_bytes_per_token > 0


def test_deepseek_v3_non_expert_size_is_plausible():
    # DeepSeek-V3 activates ~37B parameters per token: 61 layers of attention (+ dense or
    # shared MLP) plus 8 routed experts of 3 x 7168 x 2048 in each of 58 MoE layers, plus embeddings.
    m = PRESETS["deepseek-v3"]
    routed = 58 * 8 * 3 * 7168 * 2048
    active = 58 * m.moe_layer_params + 3 * m.dense_layer_params + routed + 2 * 129280 * 7168
    assert 33e9 < active < 41e9


def test_model_file_round_trip(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps(PRESETS["mixtral-8x7b"].to_dict() | {"name": "my-moe"}))
    m = resolve_model(str(f))
    assert m.name == "my-moe" and m.num_experts == 8 and m.moe_layer_ids == tuple(range(32))


@pytest.mark.parametrize("change, problem", [
    ({"top_k": 99}, "top_k"), ({"moe_layer_ids": [40]}, "moe_layer_ids"), ({"hidden": "wide"}, "numbers"),
    ({"schema": "other"}, "schema")])
def test_bad_model_files(change, problem):
    d = PRESETS["mixtral-8x7b"].to_dict() | change
    with pytest.raises(InputError, match=problem):
        model_from_dict(d, "m.json")
    d = PRESETS["mixtral-8x7b"].to_dict()
    del d["hidden"]
    with pytest.raises(InputError, match="missing hidden"):
        model_from_dict(d, "m.json")


def test_unknown_model_name():
    with pytest.raises(VibeError, match="unknown model"):
        resolve_model("gpt-9")


def test_model_for_loads_picks_the_preset_or_refuses(esft_loads):
    assert model_for_loads(esft_loads).name == "deepseek-v2-lite"
    odd = ExpertLoads(np.ones((5, 16)), 2)
    with pytest.raises(VibeError, match="no model preset"):
        model_for_loads(odd)
    g = generic_model(odd)
    assert (g.num_moe_layers, g.num_experts, g.top_k) == (5, 16, 2)
