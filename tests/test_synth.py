"""Synthesizers: deterministic per seed, scenarios do what they say, loads skew like real routers."""

from __future__ import annotations

import collections
import csv
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe.cli import main
from vibe.cost import evaluate, expert_time_us
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads
from vibe.policies import place
from vibe.synth import MODEL_PRESETS, SCENARIOS, synth_cluster, synth_loads, synth_loads_for_model
from vibe.synth import cluster as synth_cluster_mod
from vibe.loadstats.stats import max_over_mean

PREFILL_N = 2048  # tokens per expert: compute-bound
DECODE_N = 8  # tokens per expert: memory-bound


def times_at(cluster: Cluster, tokens: float) -> np.ndarray:
    """[G] one expert's time on each GPU at `tokens` tokens (through the cost model)."""
    return expert_time_us(cluster, np.arange(cluster.num_gpus), tokens)


# ---- clusters ------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cluster_is_deterministic_per_seed(scenario):
    a = synth_cluster(16, scenario=scenario, seed=7).to_dict()
    b = synth_cluster(16, scenario=scenario, seed=7).to_dict()
    assert json.dumps(a) == json.dumps(b)
    if scenario != "identical":
        c = synth_cluster(16, scenario=scenario, seed=8).to_dict()
        assert json.dumps(a) != json.dumps(c)


def test_identical_gpus_have_identical_curves():
    c = synth_cluster(8, scenario="identical", seed=3)
    _, us = c.latency_table()
    assert np.all(us == us[0]) and np.all(c.overhead_us == c.overhead_us[0])


def test_curve_has_memory_floor_then_compute_slope():
    c = synth_cluster(1, scenario="identical")
    t = times_at(c, np.array([1, 4, 16, 4096, 8192]))
    assert t[2] / t[0] < 1.05  # flat at decode sizes: loading weights dominates
    assert (t[4] - t[3]) / 4096 == pytest.approx(synth_cluster_mod.SLOPE_US_PER_TOKEN, rel=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_cap_slows_prefill_not_decode(seed):
    c = synth_cluster(8, scenario="power-cap", seed=seed)
    slow = c.extra["synth"]["slow_rank"]
    others = np.delete(np.arange(8), slow)
    prefill, decode = times_at(c, PREFILL_N), times_at(c, DECODE_N)
    assert prefill[slow] / np.median(prefill[others]) > 1.12
    assert decode[slow] / np.median(decode[others]) < 1.01
    assert c.gpus[slow].telemetry["power_limit_w"] < c.gpus[others[0]].telemetry["power_limit_w"]


def test_power_cap_is_the_fleet_plus_one_capped_gpu():
    fleet = synth_cluster(8, scenario="fleet", seed=4)
    capped = synth_cluster(8, scenario="power-cap", seed=4)
    slow = capped.extra["synth"]["slow_rank"]
    ratio = times_at(capped, 1e5) / times_at(fleet, 1e5)  # deep in the compute-bound part
    assert ratio[slow] == pytest.approx(1.2, rel=0.01)
    assert np.allclose(np.delete(ratio, slow), 1.0)


def test_outlier_is_slow_at_every_size():
    c = synth_cluster(8, scenario="outlier", seed=5, slow_rank=2)
    for n in (1, DECODE_N, PREFILL_N):
        t = times_at(c, n)
        assert t[2] / np.median(np.delete(t, 2)) > 2.0


def test_fleet_spread_matches_measured_and_scales():
    measured = synth_cluster(2000, scenario="fleet", seed=0).extra["synth"]["compute_factor"]
    p5, p95 = np.percentile(measured, [5, 95])
    assert p5 == pytest.approx(0.974, abs=0.004) and p95 == pytest.approx(1.027, abs=0.004)
    assert 0.95 <= min(measured) and max(measured) <= 1.21
    wide = synth_cluster(2000, scenario="fleet", seed=0, spread=0.2).extra["synth"]["compute_factor"]
    assert np.subtract(*np.percentile(wide, [95, 5])) == pytest.approx(0.2, rel=0.1)
    flat = synth_cluster(8, scenario="fleet", seed=0, spread=0.0)
    _, us = flat.latency_table()
    assert np.allclose(us, us[0])


def test_nodes_follow_gpus_per_node():
    c = synth_cluster(12, gpus_per_node=4)
    assert c.nodes.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and c.num_nodes == 3


@pytest.mark.parametrize("kw", [dict(num_gpus=0), dict(num_gpus=4, scenario="nope"),
                                dict(num_gpus=4, spread=-0.1), dict(num_gpus=4, spread=0.9),
                                dict(num_gpus=4, scenario="identical", spread=0.1),
                                dict(num_gpus=4, gpus_per_node=0), dict(num_gpus=4, slow_rank=4)])
def test_cluster_bad_arguments(kw):
    with pytest.raises(VibeError):
        synth_cluster(**kw)


def test_embedded_fleet_quantiles_match_the_measurements(shared_data):
    """The table in vibe.synth.cluster is the V100 fleet's, recomputed from the CSV."""
    per_gpu = collections.defaultdict(list)
    with open(shared_data / "gpu-variability" / "sgemm-longhorn-agg.csv") as fh:
        for row in csv.DictReader(fh):
            per_gpu[row["uuid"]].append(float(row["perf"]))
    med = np.array([np.median(v) for v in per_gpu.values()])
    q = np.percentile(med / np.median(med), synth_cluster_mod.FLEET_LEVELS)
    assert np.allclose(q, synth_cluster_mod.FLEET_QUANTILES, atol=6e-5)


def test_embedded_floor_matches_measured_decode_kernel(shared_data):
    """FLOOR_US is the per-expert time of the measured DeepSeek-V3 decode MoE kernel on H100."""
    pq = pytest.importorskip("pyarrow.parquet")
    t = pq.read_table(shared_data / "moe-latency" / "h100_sxm_sglang_0.5.10_wideep_generation_moe_perf.parquet",
                      columns=["num_tokens", "topk", "num_experts", "moe_ep_size", "distribution", "latency"])
    d = t.to_pydict()
    per_expert = [1000 * lat * ep / e for n, k, e, ep, dist, lat in zip(*d.values())
                  if dist == "uniform" and ep in (8, 16, 32) and 2 <= n * k / e <= 32]
    assert np.median(per_expert) == pytest.approx(synth_cluster_mod.FLOOR_US, rel=0.02)


# ---- loads ---------------------------------------------------------------------------
def test_loads_are_deterministic_per_seed():
    a = synth_loads(6, 32, 4, seed=11)
    assert np.array_equal(a.counts, synth_loads(6, 32, 4, seed=11).counts)
    assert not np.array_equal(a.counts, synth_loads(6, 32, 4, seed=12).counts)


@pytest.mark.parametrize("model", sorted(MODEL_PRESETS))
def test_model_presets_have_the_model_shape_and_realistic_skew(model):
    num_layers, num_experts, top_k, first = MODEL_PRESETS[model]
    loads = synth_loads_for_model(model, seed=0)
    assert loads.counts.shape == (num_layers, num_experts) and loads.top_k == top_k
    assert loads.layer_ids == tuple(range(first, first + num_layers))
    assert np.all(loads.counts.sum(axis=1) == 8192 * top_k)
    assert np.all(loads.counts <= 8192)  # a token picks distinct experts
    peak = max_over_mean(loads.counts)
    hi = min(8.0, 0.9 * num_experts / top_k)
    assert np.all(peak >= min(3.0, hi) - 0.01) and np.all(peak <= hi + 0.01)
    if hi >= 6:
        assert np.ptp(peak) > 1.0  # layers differ


def test_layers_have_different_hot_experts():
    loads = synth_loads_for_model("deepseek-v3", seed=1)
    hottest = loads.counts.argmax(axis=1)
    assert len(set(hottest.tolist())) > loads.num_layers // 2


def test_loads_skew_resembles_the_real_router(esft_loads):
    synth = synth_loads_for_model("deepseek-v2-lite", seed=0)
    assert synth.counts.shape == esft_loads.counts.shape and synth.top_k == esft_loads.top_k

    def cv(loads):
        s = loads.shares()
        return s.std(axis=1) / s.mean(axis=1)

    real_peak, syn_peak = max_over_mean(esft_loads.counts), max_over_mean(synth.counts)
    assert 0.75 < np.median(syn_peak) / np.median(real_peak) < 1.5
    assert cv(esft_loads).min() <= np.median(cv(synth)) <= cv(esft_loads).max()


@settings(max_examples=30, deadline=None)
@given(layers=st.integers(1, 5), experts=st.integers(1, 96), top_k=st.integers(1, 8), seed=st.integers(0, 2**31),
       tokens=st.integers(1, 5000))
def test_loads_are_valid_for_any_shape(layers, experts, top_k, seed, tokens):
    top_k = min(top_k, experts)
    loads = synth_loads(layers, experts, top_k, seed=seed, tokens=tokens)
    assert loads.counts.shape == (layers, experts)
    assert np.all(loads.counts >= 0) and np.all(loads.counts.sum(axis=1) == tokens * top_k)
    assert np.all(max_over_mean(loads.counts) <= max(1.0, 0.9 * experts / top_k) + experts / (tokens * top_k))


@pytest.mark.parametrize("args", [(0, 8, 2), (2, 8, 9), (2, 0, 1)])
def test_loads_bad_arguments(args):
    with pytest.raises(VibeError):
        synth_loads(*args)
    with pytest.raises(VibeError):
        synth_loads_for_model("no-such-model")


# ---- the scenarios matter to placement ----------------------------------------------
def test_power_cap_hurts_a_token_balancer_and_not_decode():
    loads = synth_loads_for_model("deepseek-v2-lite", seed=0)

    def ratios(scenario):
        cluster = synth_cluster(8, scenario=scenario, seed=0)
        pts = evaluate(place(loads, cluster, "token_balanced"), loads, cluster, (8192, 256))
        return [p.ratio_to_lb for p in pts]

    (ident_prefill, ident_decode), (cap_prefill, cap_decode) = ratios("identical"), ratios("power-cap")
    assert cap_prefill > ident_prefill + 0.08  # the capped GPU sets the pace at prefill
    assert cap_decode < 1.03 and ident_decode < 1.03


# ---- CLI -----------------------------------------------------------------------------
def test_cli_writes_files_that_load(tmp_path, capsys):
    c, lo = tmp_path / "c.json", tmp_path / "l.json"
    assert main(["cluster", "synth", "--gpus", "16", "--scenario", "power-cap", "--gpus-per-node", "8",
                 "--seed", "3", "--out", str(c)]) == 0
    assert main(["loads", "synth", "--model", "deepseek-v3", "--seed", "3", "--out", str(lo)]) == 0
    cluster, loads = Cluster.load(c), ExpertLoads.load(lo)
    assert cluster.num_gpus == 16 and cluster.num_nodes == 2
    assert cluster.to_dict() == synth_cluster(16, scenario="power-cap", seed=3).to_dict()
    assert np.array_equal(loads.counts, synth_loads_for_model("deepseek-v3", seed=3).counts)
    assert main(["loads", "synth", "--layers", "3", "--experts", "16", "--top-k", "2", "--out", str(lo)]) == 0
    assert ExpertLoads.load(lo).counts.shape == (3, 16)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["cluster", "synth", "--gpus", "0"],
    ["cluster", "synth", "--gpus", "8", "--spread", "0.9"],
    ["cluster", "synth", "--gpus", "8", "--scenario", "identical", "--spread", "0.1"],
    ["cluster", "synth", "--gpus", "8", "--scenario", "bogus"],
    ["cluster", "synth", "--gpus", "x"],
    ["loads", "synth", "--layers", "4"],
    ["loads", "synth", "--layers", "4", "--experts", "8", "--top-k", "9"],
    ["loads", "synth", "--model", "deepseek-v3", "--experts", "8"],
    ["loads", "synth", "--model", "no-such-model"],
    ["loads", "synth", "--model", "deepseek-v3", "--layers", "3"],
])
def test_cli_bad_arguments_exit_2_without_output(tmp_path, argv, capsys):
    out = tmp_path / "out.json"
    assert run_cli(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith(("vibe: error:", "vibe cluster synth: error:", "vibe loads synth: error:"))
    assert list(tmp_path.iterdir()) == []


def run_cli(argv) -> int:
    """Exit code of `vibe argv`, whether argparse (SystemExit) or a command reports the error."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)
