"""The serving simulation end to end on the real ESFT loads (DeepSeek-V2-Lite shape)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vibe.model import Cluster, ExpertLoads
from vibe.policies import available_policies, place
from vibe.sim import HardwareModel, SchedulerConfig, poisson_workload, simulate, summarize
from vibe.sim.models import PRESETS
from vibe.synth import synth_cluster

LITE = PRESETS["deepseek-v2-lite"]
SLO = (80.0, 25.0)  # TTFT, TPOT limits (ms) for this small model


@pytest.fixture(scope="module")
def identical():
    return synth_cluster(8, scenario="identical", seed=0)


def _run(loads, cluster, placement, qps=80.0, duration=4.0, seed=0, **kw) -> dict:
    w = poisson_workload(qps, duration, 1024, 64, seed=seed)
    return summarize(simulate(w, cluster, loads, placement, LITE, seed=seed, **kw), *SLO)


def _slowed(cluster: Cluster, gpu: int, factor: float) -> Cluster:
    grid, us = cluster.latency_table()
    us = us.copy()
    us[gpu] *= factor
    over = cluster.overhead_us.copy()
    over[gpu] *= factor
    return Cluster.init_by_curves(grid, us, over, name=f"{cluster.name}-gpu{gpu}x{factor:g}")


def test_uniform_loads_identical_gpus_all_policies_agree(identical):
    loads = ExpertLoads(np.full((26, 64), 100.0), 6, tuple(range(1, 27)))
    results = {p: _run(loads, identical, place(loads, identical, p), routing="expected")
               for p in ("linear", "round_robin", "eplb", "token_balanced")}
    ref = results["linear"]
    for p, r in results.items():
        for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
            for q in ("p50", "p90", "p99"):
                assert r[key][q] == pytest.approx(ref[key][q], rel=1e-9), (p, key, q)
        assert r["steps"]["steps"] == ref["steps"]["steps"]


def test_same_seed_same_output_other_seed_differs(esft_loads, identical):
    placement = place(esft_loads, identical, "eplb")
    hw = HardwareModel(jitter_cv=0.03, drift_gpus=1, drift_start_s=1.0, drift_ramp_s=1.0, seed=5)
    a = _run(esft_loads, identical, placement, seed=3, hardware=hw)
    b = _run(esft_loads, identical, placement, seed=3, hardware=hw)
    c = _run(esft_loads, identical, placement, seed=4, hardware=hw)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["ttft_ms"] != c["ttft_ms"]


def test_ttft_grows_with_qps(esft_loads, identical):
    placement = place(esft_loads, identical, "eplb")
    p90 = [_run(esft_loads, identical, placement, qps=q, duration=3.0)["ttft_ms"]["p90"] for q in (40, 160, 320)]
    assert p90[0] < p90[1] < p90[2]
    slo = [_run(esft_loads, identical, placement, qps=q, duration=3.0)["slo_attainment"] for q in (40, 320)]
    assert slo[0] > slo[1]


def test_trace_routing_runs_and_differs_from_profile(esft_loads, esft_trace, identical):
    placement = place(esft_loads, identical, "linear")
    a = _run(esft_loads, identical, placement, trace=esft_trace)
    b = _run(esft_loads, identical, placement)
    assert a["requests"] == b["requests"] and a["finished"] == a["requests"]
    assert a["ttft_ms"]["p90"] != b["ttft_ms"]["p90"]


def test_drift_and_jitter_slow_serving_down(esft_loads, identical):
    placement = place(esft_loads, identical, "eplb")
    calm = _run(esft_loads, identical, placement, qps=160)
    hot = _run(esft_loads, identical, placement, qps=160,
               hardware=HardwareModel(drift_gpus=2, drift_slowdown=0.5, drift_start_s=0.5, drift_ramp_s=0.5))
    assert hot["e2e_ms"]["mean"] > calm["e2e_ms"]["mean"]
    assert max(hot["steps"]["straggler_share"]) > max(calm["steps"]["straggler_share"])


@pytest.mark.skipif("vibe" not in available_policies(), reason="the vibe policy is not registered")
def test_slow_gpu_hurts_every_policy_vibe_least(esft_loads, identical):
    slow = _slowed(identical, 5, 2.0)
    hurt = {}
    for p in ("linear", "eplb", "vibe"):
        base = _run(esft_loads, identical, place(esft_loads, identical, p), qps=120)
        worse = _run(esft_loads, slow, place(esft_loads, slow, p), qps=120)
        hurt[p] = worse["e2e_ms"]["mean"] / base["e2e_ms"]["mean"]
    assert all(h > 1.0 for h in hurt.values()), hurt
    assert hurt["vibe"] == min(hurt.values()), hurt


def test_unfinished_requests_count_as_misses(esft_loads, identical):
    placement = place(esft_loads, identical, "linear")
    w = poisson_workload(2000, 1.0, 1024, 64, seed=0)
    res = simulate(w, identical, esft_loads, placement, LITE, max_time_s=0.5,
                   scheduler=SchedulerConfig(max_running=32))
    s = summarize(res, *SLO)
    assert s["finished"] < s["requests"]
    assert s["slo_attainment"] <= s["finished"] / s["requests"]
    assert np.isfinite(s["ttft_ms"]["p99"])


def test_demo_section_prints_a_comparison(esft_loads, identical):
    import io

    from rich.console import Console

    from vibe.sim import demo_section

    buf = io.StringIO()
    placements = {p: place(esft_loads, identical, p) for p in ("linear", "eplb")}
    demo_section(identical, esft_loads, placements, Console(file=buf, width=140))
    text = buf.getvalue()
    assert "Simulated serving" in text and "linear" in text and "eplb" in text and "%" in text
