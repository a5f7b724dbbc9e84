"""Per-step noise: re-sampled steps, the expected per-step makespan, `--robust`, and the
CLI wiring of `vibe place --robust/--traces/--split speed` and `vibe evaluate --traces`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vibe.cli import main
from vibe.cost import gpu_times
from vibe.errors import InputError
from vibe.model import Cluster, ExpertLoads
from vibe.model.traces import RoutingTrace
from vibe.policies import PlacementOptions, place
from vibe.errors import VibeError
from vibe.stochastic import (check_trace_matches, expected_step_time, multinomial_step_tokens, sized_step_tokens,
                             step_layer_times,
                             trace_step_tokens)
from vibe.synth.cluster import synth_cluster
from vibe.synth.loads import synth_loads


def test_steps_from_average_tokens_reproduce_the_cost_model():
    loads = synth_loads(3, 16, 2, seed=0)
    cluster = synth_cluster(4, scenario="fleet", seed=0)
    p = place(loads, cluster, "vibe", PlacementOptions(redundant=4, split="speed"))
    per_step = step_layer_times(p, cluster, loads.expert_tokens(1024)[None])
    np.testing.assert_allclose(per_step[0], gpu_times(p, loads, cluster, 1024).max(axis=1))


def test_multinomial_steps_are_seeded_and_sized():
    loads = synth_loads(3, 16, 2, seed=0)
    a = multinomial_step_tokens(loads, 512, 5, seed=1)
    np.testing.assert_array_equal(a, multinomial_step_tokens(loads, 512, 5, seed=1))
    assert a.shape == (5, 3, 16) and (a.sum(axis=2) == 512 * 2).all()
    assert not np.array_equal(a, multinomial_step_tokens(loads, 512, 5, seed=2))


def test_trace_steps_route_the_batch(esft_trace):
    steps = trace_step_tokens(esft_trace, 2048, 4, seed=3)
    assert steps.shape == (4, esft_trace.num_layers, esft_trace.num_experts)
    assert (steps.sum(axis=2) == 2048 * esft_trace.top_k).all()
    np.testing.assert_array_equal(steps, trace_step_tokens(esft_trace, 2048, 4, seed=3))


def test_real_steps_cost_more_than_the_average_predicts(esft_loads, esft_trace):
    """Real batches are burstier than the long-run mean: at a small batch the expected
    per-step MoE time of a balanced plan exceeds its average-load prediction."""
    cluster = synth_cluster(8, scenario="fleet", seed=1)
    p = place(esft_loads, cluster, "vibe", PlacementOptions(batch_tokens=(1024,)))
    stats = expected_step_time(p, esft_loads, cluster, 1024, num_samples=32, seed=0, trace=esft_trace)
    average = gpu_times(p, esft_loads, cluster, 1024).max(axis=1).sum()
    assert stats.mean_us > 1.002 * average
    assert stats.p95_us >= stats.p50_us and stats.source == "trace"


def test_robust_never_worse_on_its_samples_and_holds_out(esft_loads, esft_trace):
    cluster = synth_cluster(8, scenario="power-cap", spread=0.0, slow_rank=3)
    base = PlacementOptions(batch_tokens=(2048,))
    plain = place(esft_loads, cluster, "vibe", base)
    robust = place(esft_loads, cluster, "vibe", PlacementOptions(batch_tokens=(2048,), robust=True,
                                                                 extras={"traces": esft_trace, "robust_samples": 8}))
    in_sample = [expected_step_time(p, esft_loads, cluster, 2048, 8, seed=0, trace=esft_trace).mean_us
                 for p in (plain, robust)]
    held_out = [expected_step_time(p, esft_loads, cluster, 2048, 64, seed=123, trace=esft_trace).mean_us
                for p in (plain, robust)]
    assert in_sample[1] <= in_sample[0] + 1e-6
    assert held_out[1] <= 1.002 * held_out[0]


def test_trace_must_match_the_loads(esft_trace):
    other = ExpertLoads(np.ones((esft_trace.num_layers, 32)), 2, esft_trace.layer_ids)
    with pytest.raises(InputError, match="experts"):
        check_trace_matches(esft_trace, other, "t.npz")


# ---- CLI -----------------------------------------------------------------------------
@pytest.fixture()
def files(tmp_path):
    loads = synth_loads(2, 16, 2, seed=0, layer_ids=(1, 2))
    cluster = synth_cluster(4, scenario="power-cap", seed=0)
    rng = np.random.default_rng(0)
    trace = RoutingTrace(rng.integers(0, 16, size=(2, 600, 2)).astype(np.int16),
                         np.arange(0, 601, 20), 16, (1, 2))
    paths = {k: tmp_path / f"{k}" for k in ("loads.json", "cluster.json", "trace.npz", "plan.json")}
    loads.save(paths["loads.json"])
    cluster.save(paths["cluster.json"])
    trace.save(paths["trace.npz"])
    return {k: str(v) for k, v in paths.items()}


def test_cli_place_robust_split_and_evaluate_traces(files, capsys):
    rc = main(["place", "--cluster", files["cluster.json"], "--loads", files["loads.json"], "--redundant", "4",
               "--split", "speed", "--traces", files["trace.npz"], "--samples", "4", "--out", files["plan.json"]])
    out = capsys.readouterr().out
    assert rc == 0 and "replicas split evenly" in out and "expected per-step" in out
    rc = main(["evaluate", "--cluster", files["cluster.json"], "--loads", files["loads.json"], "--placement",
               files["plan.json"], "--traces", files["trace.npz"], "--samples", "4", "--json", "--no-lower-bound"])
    res = json.loads(capsys.readouterr().out)
    from vibe.cost import default_batch_tokens  # the CLI's defaults scale with the EP size

    G = Cluster.load(files["cluster.json"]).num_gpus
    assert rc == 0 and [s["batch_tokens"] for s in res["per_step"]] == list(default_batch_tokens(G))
    assert all(s["mean_us"] > 0 and s["source"] == "trace" for s in res["per_step"])


def test_cli_bad_traces_fail_in_one_line_without_output(files, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    out = tmp_path / "never.json"
    rc = main(["place", "--cluster", files["cluster.json"], "--loads", files["loads.json"], "--traces", str(bad),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and len(err.strip().splitlines()) == 1 and not out.exists()
    rc = main(["evaluate", "--cluster", files["cluster.json"], "--loads", files["loads.json"], "--placement",
               str(out), "--traces", files["trace.npz"]])
    assert rc == 2


# ---- the robust objective on steps sized like serving steps -------------------------
def bursty_case():
    """2 GPUs x 4 slots, 7 experts + 1 replica, a linear curve (1 us per token).
    Every sequence (160 tokens, top-1) sends 40 tokens to expert 0; half of them also
    send 80 to expert 1 (a burst) and 8 to each cold expert 2..6, the other half 24 to
    each cold expert. Experts 0 and 1 have the same mean (40 per sequence), so the
    average load cannot tell them apart; a one-sequence step with expert 1's burst
    (80 of 160 tokens) needs expert 1 split to reach the 80 us per GPU ideal."""
    burst = [0] * 40 + [1] * 80 + [e for e in range(2, 7) for _ in range(8)]
    calm = [0] * 40 + [e for e in range(2, 7) for _ in range(24)]
    seqs = [burst, calm] * 20
    experts = np.array([t for s in seqs for t in s], dtype=np.int16)[None, :, None]
    trace = RoutingTrace(experts, np.arange(0, 160 * len(seqs) + 1, 160), 7, (1,))
    loads = trace.to_loads()
    cluster = Cluster.init_by_curves([1, 1024], np.array([[1.0, 1024.0]] * 2), 0.0)
    return trace, loads, cluster


def test_robust_replicates_the_bursty_expert_not_the_steady_one():
    trace, loads, cluster = bursty_case()
    assert loads.counts[0, 0] == loads.counts[0, 1]  # equal means
    opt = PlacementOptions(redundant=1, batch_tokens=(160,), robust=True,
                           extras={"traces": trace, "step_tokens": [160], "robust_samples": 32})
    p = place(loads, cluster, "vibe", opt)
    replicas = np.bincount(p.physical_to_logical_map[0], minlength=7)
    assert replicas[1] == 2 and replicas[0] == 1
    steps = sized_step_tokens(loads, [160], 200, seed=5, trace=trace)  # held-out steps
    plain = place(loads, cluster, "vibe", PlacementOptions(redundant=1, batch_tokens=(160,)))
    robust_t, plain_t = (step_layer_times(q, cluster, steps).sum(axis=1).mean() for q in (p, plain))
    assert robust_t <= plain_t + 1e-9


def test_robust_with_step_sizes_never_worse_on_its_samples_and_is_seeded(esft_loads, esft_trace):
    cluster = synth_cluster(8, scenario="power-cap", spread=0.0, slow_rank=3)
    sizes = [4, 16, 64, 200, 700, 3000]
    extras = {"traces": esft_trace, "step_tokens": sizes, "robust_samples": 12}
    robust = place(esft_loads, cluster, "vibe", PlacementOptions(robust=True, seed=3, extras=extras))
    again = place(esft_loads, cluster, "vibe", PlacementOptions(robust=True, seed=3, extras=dict(extras)))
    np.testing.assert_array_equal(robust.physical_to_logical_map, again.physical_to_logical_map)
    plain = place(esft_loads, cluster, "vibe", PlacementOptions(seed=3))
    steps = sized_step_tokens(esft_loads, sizes, 12, seed=3, trace=esft_trace)  # the solver's own samples
    f = [step_layer_times(q, cluster, steps).sum(axis=1).mean() for q in (plain, robust)]
    assert f[1] <= f[0] + 1e-6 and f[1] < f[0]  # on ESFT's bursty small steps it strictly helps


def test_sized_steps_are_seeded_stratified_and_checked():
    loads = synth_loads(2, 16, 2, seed=0)
    a = sized_step_tokens(loads, [10, 1000], 8, seed=1)
    np.testing.assert_array_equal(a, sized_step_tokens(loads, [10, 1000], 8, seed=1))
    assert sorted(a.sum(axis=2)[:, 0] / 2) == [10] * 4 + [1000] * 4  # half the steps of each size
    with pytest.raises(VibeError, match="step sizes"):
        sized_step_tokens(loads, [0, 5], 4, seed=0)


def test_cli_place_step_tokens_from_numbers_and_a_file(files, tmp_path, capsys):
    sizes = tmp_path / "sizes.txt"
    sizes.write_text("4, 40\n400\n")
    rc = main(["place", "--cluster", files["cluster.json"], "--loads", files["loads.json"], "--traces",
               files["trace.npz"], "--step-tokens", "2", str(sizes), "--samples", "6", "--out", files["plan.json"]])
    assert rc == 0 and "expected per-step" in capsys.readouterr().out
    rc = main(["place", "--cluster", files["cluster.json"], "--loads", files["loads.json"], "--step-tokens", "0",
               "--out", str(tmp_path / "never.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "step sizes" in err and not (tmp_path / "never.json").exists()
