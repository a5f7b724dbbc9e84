"""vibe's SGLang algorithm through SGLang's own code (pinned release in .venv-engines): the
`sglang.srt.plugins` entry point found by SGLang's plug-in loader, the dispatch
`eplb_algorithms.rebalance_experts` with the algorithm `compute_algorithm` picks, its
output through ExpertLocationMetadata's constructor checks and SGLang's own
logical-to-physical derivation, at DeepSeek-V3 shape; quality against SGLang's deepseek."""

from __future__ import annotations

import numpy as np
import pytest
from _engine import engine_module


torch = engine_module("torch")
algos = engine_module("sglang.srt.eplb.eplb_algorithms")
expert_location = engine_module("sglang.srt.eplb.expert_location")

from vibe.engines import sglang_plugin  # noqa: E402
from vibe.engines.rebalance import layer_objective, loads_from_weight  # noqa: E402
from vibe.synth.cluster import synth_cluster  # noqa: E402
from vibe.synth.loads import synth_loads  # noqa: E402


@pytest.fixture
def installed():
    sglang_plugin.register({"VIBE_EPLB": "1"})
    yield algos.rebalance_experts
    sglang_plugin.uninstall(algos)


@pytest.fixture(scope="module")
def dsv3_counts():
    """SGLang's layer axis: 61 decoder layers, the 3 dense ones all zero; one window row."""
    counts = np.zeros((1, 61, 256))
    counts[0, 3:] = synth_loads(58, 256, 8, seed=0).counts
    return counts


def test_entry_point_found_by_sglang():
    from sglang.srt.plugins import GENERAL_PLUGINS_GROUP, load_plugins_by_group

    plugins = load_plugins_by_group(GENERAL_PLUGINS_GROUP)
    assert plugins["vibe"][0] is sglang_plugin.register
    before = algos.rebalance_experts
    sglang_plugin.register({})  # inert without VIBE_EPLB
    assert algos.rebalance_experts is before


@pytest.mark.parametrize("slots,ranks", [(288, 32), (320, 64)])
def test_dispatch_and_metadata(installed, dsv3_counts, slots, ranks):
    nodes = ranks // 8
    algorithm = algos.compute_algorithm("auto", 8, nodes)
    assert algorithm == algos.EplbAlgorithm.deepseek_hierarchical
    phy, log2phy, logcnt = algos.rebalance_experts(torch.from_numpy(dsv3_counts), slots, slots // ranks, 8, nodes,
                                                   algorithm)
    assert phy.shape == (61, slots) and phy.dtype == torch.int64 and logcnt.shape == (61, 256)
    assert (logcnt >= 1).all() and (logcnt.sum(dim=1) == slots).all()
    # SGLang's own derivation of the candidate lists (no rank preference) equals ours
    theirs = expert_location._compute_logical_to_all_physical_map(phy, 256, ranks, None)
    width = max(theirs.shape[-1], log2phy.shape[-1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=-1)  # noqa: E731
    assert torch.equal(pad(theirs), pad(log2phy))
    padded = torch.nn.functional.pad(log2phy, (0, slots - log2phy.shape[-1]), value=-1)
    meta = expert_location.ExpertLocationMetadata(  # __post_init__ checks the shapes agree
        physical_to_logical_map=phy, physical_to_logical_map_cpu=phy, logical_to_all_physical_map=padded,
        logical_to_all_physical_map_cpu=padded,
        logical_to_all_physical_map_num_valid=torch.count_nonzero(padded != -1, dim=-1), ep_size=ranks,
        logical_to_rank_dispatch_physical_map=None)
    assert meta.num_local_physical_experts == slots // ranks and meta.num_logical_experts == 256
    assert torch.equal(meta.logical_to_all_physical_map_num_valid, logcnt)


def test_elasticity_algorithms_stay_sglang(installed):
    calls = []
    algos.rebalance_experts.vibe_original, orig = (lambda *a: calls.append(a) or "sglang"), \
        algos.rebalance_experts.vibe_original
    try:
        assert algos.rebalance_experts(None, 16, 2, 4, 2, algos.EplbAlgorithm.elasticity_aware) == "sglang"
    finally:
        algos.rebalance_experts.vibe_original = orig


@pytest.mark.parametrize("slots,ranks,hierarchy", [(288, 32, "auto"), (320, 64, "off")])
def test_quality_vs_sglang_deepseek(installed, dsv3_counts, tmp_path, monkeypatch, slots, ranks, hierarchy):
    B = (1024.0 * ranks,)
    monkeypatch.setenv("VIBE_BATCH_TOKENS", str(B[0]))
    monkeypatch.setenv("VIBE_HIERARCHY", hierarchy)
    nodes = ranks // 8
    algorithm = algos.compute_algorithm("auto", 8, nodes)
    tokens = torch.from_numpy(dsv3_counts)
    ref = algos.rebalance_experts.vibe_original(tokens, slots, slots // ranks, 8, nodes, algorithm)[0].numpy()[3:]
    loads = loads_from_weight(dsv3_counts[0, 3:], 8)

    def cost(phy, cluster):
        return layer_objective(phy, loads, cluster, B).sum()

    same = synth_cluster(ranks, scenario="identical", gpus_per_node=8)
    ours = algos.rebalance_experts(tokens, slots, slots // ranks, 8, nodes, algorithm)[0].numpy()[3:]
    assert cost(ours, same) <= cost(ref, same)
    slow = synth_cluster(ranks, scenario="power-cap", spread=0.0, slow_rank=7, gpus_per_node=8)
    slow.save(tmp_path / "cluster.json")
    monkeypatch.setenv("VIBE_CLUSTER", str(tmp_path / "cluster.json"))
    ours = algos.rebalance_experts(tokens, slots, slots // ranks, 8, nodes, algorithm)[0].numpy()[3:]
    assert cost(ours, slow) <= 0.9 * cost(ref, slow)
