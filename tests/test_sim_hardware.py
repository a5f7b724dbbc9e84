"""Hardware over time: seeded drift plans, ramps, jitter; and the Ray path of sweeps."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from vibe.errors import VibeError
from vibe.sim.hardware import HardwareModel, plan_drift, speed_factors, static_speed_ratio
from vibe.synth import synth_cluster


def test_drift_ramps_from_one_to_the_slowdown():
    hw = HardwareModel(drift_gpus=2, drift_slowdown=0.3, drift_start_s=100.0, drift_ramp_s=50.0, seed=4)
    plan = plan_drift(hw, 8)
    hot = np.flatnonzero(plan.slowdown)
    assert hot.size == 2 and np.all((plan.start_s >= 100) & (plan.start_s < 200))
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(speed_factors(plan, 0.0, rng), np.ones(8))
    late = speed_factors(plan, 1e4, rng)
    np.testing.assert_allclose(late[hot], 1.3)
    assert np.all(np.delete(late, hot) == 1.0)
    mid = speed_factors(plan, float(plan.start_s[hot[0]]) + 25.0, rng)[hot[0]]
    assert mid == pytest.approx(1.15)
    again = plan_drift(hw, 8)
    np.testing.assert_array_equal(again.start_s, plan.start_s)  # same seed, same plan


def test_jitter_is_seeded_noise_around_one():
    plan = plan_drift(HardwareModel(jitter_cv=0.05), 8)
    f = np.stack([speed_factors(plan, 0.0, np.random.default_rng(1)) for _ in range(2)])
    np.testing.assert_array_equal(f[0], f[1])
    many = speed_factors(plan_drift(HardwareModel(jitter_cv=0.05), 4000), 0.0, np.random.default_rng(2))
    assert np.std(np.log(many)) == pytest.approx(0.05, rel=0.1)


def test_bad_hardware_settings():
    with pytest.raises(VibeError):
        plan_drift(HardwareModel(drift_gpus=9), 8)
    with pytest.raises(VibeError):
        plan_drift(HardwareModel(jitter_cv=-1), 8)


def test_static_speed_ratio_finds_the_capped_gpu():
    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    ratio = static_speed_ratio(cluster)
    assert int(np.argmax(ratio)) == cluster.extra["synth"]["slow_rank"]
    assert ratio.max() > 1.05


def test_sweep_runs_points_as_ray_tasks(monkeypatch, esft_loads):
    """With --ray-address, points go through ray.remote / ray.get (a stand-in module here)."""
    from vibe.policies import place
    from vibe.sim.models import PRESETS
    from vibe.sim.sweep import SweepSpec, run_sweep

    calls = {}
    fake = types.ModuleType("ray")
    fake.init = lambda address, **kw: calls.setdefault("address", address)

    def remote(fn):
        return types.SimpleNamespace(remote=lambda *a: fn(*a))

    fake.remote = remote
    fake.get = lambda refs: list(refs)
    monkeypatch.setitem(sys.modules, "ray", fake)
    cluster = synth_cluster(8, scenario="identical", seed=0)
    spec = SweepSpec(PRESETS["deepseek-v2-lite"], duration_s=0.5, output_len=8)
    rows = run_sweep(spec, cluster, esft_loads, {"linear": place(esft_loads, cluster, "linear")}, [50.0], [0, 1],
                     ray_address="ray://head:10001")
    assert calls["address"] == "ray://head:10001"
    assert [(r["policy"], r["seed"]) for r in rows] == [("linear", 0), ("linear", 1)]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_drift_onset_near_the_float_limit_means_never_without_a_warning():
    # found by a property run: --drift-start 9.99e307 overflowed the onset draw with a warning
    plan = plan_drift(HardwareModel(drift_gpus=2, drift_slowdown=0.3, drift_start_s=9.99e307, seed=1), 4)
    assert np.all(plan.start_s >= 9.99e307)
    assert speed_factors(plan, 1e9, np.random.default_rng(0)).tolist() == [1.0] * 4
