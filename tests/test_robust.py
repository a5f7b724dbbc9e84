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
from vibe.stochastic import (check_trace_matches, expected_step_time, multinomial_step_tokens, step_layer_times,
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
