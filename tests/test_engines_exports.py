"""Engine exports that start: TensorRT-LLM MTP layers and the architectures whose load
balancer reads the YAML, the SGLang flags printed with each plan, and TensorRT-LLM
statistics that count slots never read as expert counts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from vibe.cli import main
from vibe.engines.trtllm import (default_mtp_layers, load_balancer_applies, placement_to_trtllm,
                                 trtllm_architecture)
from vibe.errors import VibeError
from vibe.model import Placement
from vibe.synth import synth_cluster, synth_loads


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("model,arch", [("DeepSeek-V3", "deepseekv3"), ("deepseek-ai/DeepSeek-R1", "deepseekv3"),
                                        ("Mixtral-8x7B", "mixtral"), ("Qwen3-30B-A3B", "qwen3moe"),
                                        ("Llama-4-Scout", "llama4"), ("DeepSeek-V2-Lite", None), ("", None)])
def test_architectures(model, arch):
    assert trtllm_architecture(model) == arch
    assert (load_balancer_applies(model, 8) is None) == (arch is not None)
    assert load_balancer_applies(model, 1) is not None  # EP 1: never built


def test_mtp_layers_follow_the_decoder_layers():
    plan = Placement.init_by_mapping(np.tile(np.arange(288) % 256, (58, 1)), 32, 256, tuple(range(3, 61)))
    d = placement_to_trtllm(plan, None, default_mtp_layers("DeepSeek-V3"))
    assert sorted(d["initial_global_assignments"]) == list(range(3, 62))  # layer 61 = MTP
    assert d["initial_global_assignments"][61] == d["initial_global_assignments"][60]
    assert len(d["initial_global_assignments"][61]) == d["num_slots"] == 288
    assert sorted(placement_to_trtllm(plan, 64, 2)["initial_global_assignments"])[-2:] == [64, 65]
    with pytest.raises(VibeError, match="does not fit 40 decoder layers"):
        placement_to_trtllm(plan, 40, 1)


@pytest.fixture
def dsv3_files(tmp_path):
    cluster, loads = tmp_path / "cluster.json", tmp_path / "loads.json"
    synth_cluster(8, scenario="power-cap", seed=1).save(cluster)
    lo = synth_loads(4, 32, 4, seed=1, layer_ids=[3, 4, 5, 6])
    dataclasses.replace(lo, model="DeepSeek-V3").save(loads)
    return tmp_path, cluster, loads


def test_cli_writes_mtp_and_prints_sglang_flags(dsv3_files, capsys):
    tmp, cluster, loads = dsv3_files
    out = tmp / "plan.json"
    rc, text, err = run(["place", "--cluster", cluster, "--loads", loads, "--policy", "eplb", "--redundant", 8,
                         "--format", "sglang", "trtllm", "--num-hidden-layers", 7, "--out", out], capsys)
    assert rc == 0, err
    trt = yaml.safe_load((tmp / "plan.trtllm.yaml").read_text())
    assert sorted(trt["initial_global_assignments"]) == [3, 4, 5, 6, 7]
    assert "warning" not in text
    assert f"--ep-size 8 --ep-num-redundant-experts 8 --init-expert-location {tmp / 'plan.sglang.json'}" in text
    rc, text, err = run(["place", "--cluster", cluster, "--loads", loads, "--policy", "eplb", "--redundant", 8,
                         "--format", "trtllm", "--mtp-layers", 0, "--out", out], capsys)
    assert sorted(yaml.safe_load((tmp / "plan.trtllm.yaml").read_text())["initial_global_assignments"]) == [3, 4, 5, 6]


def test_cli_warns_for_an_architecture_without_load_balancer(tmp_path, capsys):
    cluster, loads = tmp_path / "cluster.json", tmp_path / "loads.json"
    synth_cluster(8, scenario="fleet").save(cluster)
    dataclasses.replace(synth_loads(3, 64, 6, seed=2), model="DeepSeek-V2-Lite").save(loads)
    rc, text, _ = run(["place", "--cluster", cluster, "--loads", loads, "--policy", "eplb", "--format", "trtllm",
                       "--out", tmp_path / "p.json"], capsys)
    assert rc == 0 and "warning:" in text and "DeepSeek-V2-Lite would ignore the YAML" in text.replace("\n", " ")


def write_stats(folder, width, top_k=4, layers=(3, 4)):
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "meta_info.json").write_text(json.dumps({"num_experts": width, "num_experts_per_token": top_k}))
    rng = np.random.default_rng(0)
    save_file({f"5_{l}": rng.integers(0, 50, width).astype(np.int64) for l in layers}, str(folder / "rank0.safetensors"))


def test_slot_counts_are_never_read_as_experts(tmp_path, capsys):
    folder = tmp_path / "stat"
    write_stats(folder, 40)  # 32 experts + 8 redundant slots, load balancer on
    out = tmp_path / "loads.json"
    rc, _, err = run(["loads", "import", "--format", "trtllm", folder, "--num-experts", 32, "--out", out], capsys)
    assert rc == 2 and "counts 40 slots, not the model's 32 experts" in err and "--placement" in err
    assert err.strip().count("\n") == 0 and not out.exists()
    plan = Placement.init_by_mapping(np.tile(np.arange(40) % 32, (2, 1)), 8, 32, (3, 4))
    plan.save(tmp_path / "plan.json")
    rc, _, err = run(["loads", "import", "--format", "trtllm", folder, "--num-experts", 32, "--placement",
                      tmp_path / "plan.json", "--out", out], capsys)
    assert rc == 0, err
    from vibe.model import ExpertLoads

    assert ExpertLoads.load(out).num_experts == 32
    rc, text, _ = run(["loads", "import", "--format", "trtllm", folder, "--out", tmp_path / "l2.json"], capsys)
    assert rc == 0 and "note: read as 40 experts" in text.replace("\n", " ")
