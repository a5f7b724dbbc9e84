"""Drift detectors (vibe.recal.drift): noise does not fire them, real drift does, once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vibe.errors import VibeError
from vibe.model import ExpertLoads
from vibe.policies import PlacementOptions, place
from vibe.recal.drift import (HardwareDriftDetector, WorkloadDriftDetector, predicted_gpu_us, scale_gpus,
                              share_distances)
from vibe.stochastic import multinomial_step_tokens, trace_step_tokens
from vibe.synth import synth_cluster
from vibe.synth.loads import synth_loads


def test_share_distances_of_equal_and_disjoint_profiles():
    a = np.array([[1.0, 1, 0, 0], [3, 1, 0, 0]])
    tv, cos = share_distances(a, a * 7)
    assert np.allclose(tv, 0) and np.allclose(cos, 0, atol=1e-12)
    tv, cos = share_distances(a, np.array([[0.0, 0, 2, 2], [0, 0, 1, 0]]))
    assert np.allclose(tv, 1) and np.allclose(cos, 1)


def steps_of(loads: ExpertLoads, n: int, seed: int, batch: int = 256) -> np.ndarray:
    return multinomial_step_tokens(loads, batch, n, seed)


def test_workload_noise_does_not_fire_and_a_switch_fires_once_with_its_layers():
    a = synth_loads(8, 32, 4, seed=0)
    b = synth_loads(8, 32, 4, seed=1)
    det = WorkloadDriftDetector(a, window=4, patience=2)
    assert all(det.update(c) is None for c in steps_of(a, 60, 0))
    fired = [(i, d) for i, c in enumerate(steps_of(b, 30, 1)) if (d := det.update(c)) is not None]
    assert len(fired) == 1  # hysteresis: one report per drift episode
    i, drift = fired[0]
    assert i < 6
    assert len(drift.layers) >= 2 and set(drift.layers) <= set(a.layer_ids)
    assert drift.tv.shape == (8,) and drift.tv.max() > 0.15
    # what to repair for: the window's counts, close to b
    tv_b, _ = share_distances(drift.loads.counts, b.counts)
    assert np.median(tv_b) < np.median(drift.tv)
    # after a repair for the new profile it is quiet, and fires again on the way back
    det.rebase(b)
    assert all(det.update(c) is None for c in steps_of(b, 20, 2))
    assert any(det.update(c) is not None for c in steps_of(a, 10, 3))


def test_one_odd_step_does_not_fire_with_patience():
    a, b = synth_loads(6, 16, 2, seed=0), synth_loads(6, 16, 2, seed=5)
    det = WorkloadDriftDetector(a, window=1, patience=3)
    for k in range(5):
        assert det.update(steps_of(a, 1, k)[0]) is None
        assert det.update(steps_of(b, 1, 10 + k)[0]) is None  # drifted, but never 3 in a row


def test_workload_detector_refuses_counts_of_another_shape():
    det = WorkloadDriftDetector(synth_loads(4, 16, 2, seed=0))
    with pytest.raises(VibeError, match="shape"):
        det.update(np.ones((4, 8)))


def test_real_esft_steps_stay_quiet_within_a_domain_and_fire_on_a_domain_switch(esft_dir):
    from vibe.engines.esft import load_esft_loads, load_esft_trace

    intent = load_esft_loads(esft_dir / "intent")
    det = WorkloadDriftDetector(intent)
    same = trace_step_tokens(load_esft_trace(esft_dir / "intent"), 256, 30, 0)
    other = trace_step_tokens(load_esft_trace(esft_dir / "law"), 256, 12, 1)
    assert all(det.update(c) is None for c in same)
    fired = [i for i, c in enumerate(other) if det.update(c) is not None]
    assert len(fired) == 1 and fired[0] < 8
    assert det.last_tv is not None and np.median(det.last_tv) > 0.15


def hw_case():
    cluster = synth_cluster(4, scenario="fleet", seed=0)
    loads = synth_loads(4, 16, 2, seed=0)
    plan = place(loads, cluster, "vibe", PlacementOptions())
    return cluster, loads, plan


def test_a_persistently_slow_gpu_is_reprofiled_and_noise_is_not():
    cluster, loads, plan = hw_case()
    det = HardwareDriftDetector(cluster, plan, window=6)
    rng = np.random.default_rng(0)
    steps = steps_of(loads, 40, 0, batch=4096)
    reports = []
    for t, c in enumerate(steps):
        obs = predicted_gpu_us(plan, cluster, c) * (1 + 0.01 * rng.standard_normal(4))
        if t >= 15:
            obs[1] *= 1.2
        d = det.update(obs, c)
        if d is not None:
            reports.append((t, d))
    assert len(reports) == 1
    t, d = reports[0]
    assert 15 <= t < 15 + 6 and list(d.ratio) == [1]
    assert d.ratio[1] == pytest.approx(1.2, rel=0.02)
    assert np.allclose(d.cluster.gpus[1].latency_us, cluster.gpus[1].latency_us * d.ratio[1])
    assert np.allclose(d.cluster.gpus[0].latency_us, cluster.gpus[0].latency_us)
    # per-layer reports [L, G] work the same way
    from vibe.cost import gpu_times_from_slot_tokens

    per_layer = HardwareDriftDetector(cluster, plan, window=3)
    c = steps[0]
    slot = np.take_along_axis(c, plan.physical_to_logical_map, axis=1) * plan.slot_share()
    T = gpu_times_from_slot_tokens(cluster, slot)  # [L, G] what the cost model predicts
    T[:, 3] *= 0.8  # GPU 3 runs faster than its curve says
    found = [per_layer.update(T, c) for _ in range(3)]
    assert found[:2] == [None, None] and found[2].ratio == {3: pytest.approx(0.8)}


def test_a_gpu_that_stops_reporting_or_is_marked_down_is_lost():
    cluster, loads, plan = hw_case()
    det = HardwareDriftDetector(cluster, plan, missing_after=3)
    c = steps_of(loads, 1, 0, batch=4096)[0]
    obs = predicted_gpu_us(plan, cluster, c)
    obs[2] = np.nan
    assert det.update(obs, c) is None and det.update(obs, c) is None
    d = det.update(obs, c)
    assert d is not None and d.lost == (2,) and d.cluster.down_ranks() == (2,)
    assert det.update(obs, c) is None  # reported once
    gpus = [dataclasses.replace(g, extra={"state": "down"}) if g.rank == 3 else g for g in cluster.gpus]
    marked = HardwareDriftDetector(cluster.with_gpus(gpus), plan)
    d = marked.update()
    assert d is not None and d.lost == (3,)
    assert scale_gpus(cluster, {}, [0]).down_ranks() == (0,)
