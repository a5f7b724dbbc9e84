"""The placement ceiling (vibe.sim.ceiling): its bound is never above any plan's time on
the same step (brute force on tiny layers, eplb / vibe / random plans on model-sized
ones, with and without the network block), exact where the optimum is known by hand,
and the simulator and the sweep run it as a policy. Runs without the shared data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bounds import brute_force_layer, tiny_case

from vibe.cost import expert_time_us
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions, place
from vibe.sim import PRESETS, SchedulerConfig, poisson_workload, simulate
from vibe.sim.ceiling import (CEILING, CeilingPredictor, StepBound, amortised_rates, speed_ratios,
                              water_level)
from vibe.sim.predictor import Predictor, profile_router
from vibe.sim.sweep import SweepSpec, run_point
from vibe.synth import synth_cluster, synth_loads_for_model

LITE = PRESETS["deepseek-v2-lite"]


# ---- the pieces ----------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_water_level_is_the_smallest_level_that_holds_the_total(seed):
    rng = np.random.default_rng(seed)
    G, R = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    offset, rate = rng.uniform(0, 20, G), rng.uniform(0.1, 3.0, (R, G))
    total = rng.uniform(0, 100, R) * (rng.random(R) < 0.8)
    z = water_level(offset, rate, total)
    held = lambda level: np.maximum(0.0, level[:, None] - offset[None, :]).__truediv__(rate).sum(axis=1)  # noqa: E731
    assert np.all(z >= offset.max() - 1e-12)
    assert np.all(held(z) >= total * (1 - 1e-9) - 1e-9)
    lower = np.maximum(z - 1e-6, offset.max())  # a hair lower no longer holds it (unless at max offset)
    assert np.all((held(lower) < total) | (lower == offset.max()))


def test_amortised_rate_is_the_best_tokens_per_us_up_to_the_hottest():
    # Flat 10 us to 10 tokens, then 2 us per token: best rate 1 us/token at 10 tokens;
    # up to 4 tokens only 10 / 4.
    cl = Cluster.init_by_curves([10.0, 20.0], [[10.0, 30.0], [20.0, 60.0]])
    rho = amortised_rates(cl, np.array([4.0, 10.0, 15.0, 1000.0]))
    assert rho[:, 0] == pytest.approx([2.5, 1.0, 1.0, 1.0])
    assert rho[:, 1] == pytest.approx([5.0, 2.0, 2.0, 2.0])
    n = np.arange(1, 1001, dtype=np.float64)
    brute = [float((expert_time_us(cl, 0, n[:m]) / n[:m]).min()) for m in (4, 10, 15, 1000)]
    assert rho[:, 0] == pytest.approx(brute)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_speed_ratios_bound_every_curve_by_the_reference_and_are_tight(seed):
    cl, _, _ = tiny_case(seed)
    r, s = speed_ratios(cl)
    n = np.concatenate([np.linspace(0.01, 400, 4000), cl.latency_table()[0]])
    t = expert_time_us(cl, np.arange(cl.num_gpus)[:, None], n[None, :])
    ratio = t / t[r][None, :]
    assert s[r] == pytest.approx(1.0)
    assert np.all(ratio >= s[:, None] * (1 - 1e-9))
    # attained on the grid or approached far out (the slopes' ratio)
    far = expert_time_us(cl, np.arange(cl.num_gpus), 1e9) / expert_time_us(cl, r, 1e9)
    assert np.allclose(np.minimum(ratio.min(axis=1), far), s, rtol=1e-6, atol=1e-5)


# ---- never above a plan --------------------------------------------------------------
@pytest.mark.parametrize("seed", range(10))
def test_bound_never_above_the_brute_force_optimum(seed):
    cluster, n_e, S = tiny_case(seed)
    E, G = len(n_e), cluster.num_gpus
    opt = brute_force_layer(cluster, n_e, S, k=8)
    moe, a2a = StepBound(cluster, S, replicas=G * S > E).layer_us(n_e[None, :])
    assert a2a[0] == 0.0
    assert moe[0] <= opt * (1 + 1e-9) + 1e-9


def test_bound_is_the_optimum_where_it_is_known():
    # 4 identical GPUs, 8 experts of 30 tokens, 2 slots each: every GPU runs two, 50 us
    # each (t(30) = 10 + 2 * 20) -> 100 us, plus the 3 us overhead.
    cl = Cluster.init_by_curves([10.0, 20.0], [[10.0, 30.0]] * 4, 3.0)
    moe, _ = StepBound(cl, 2, replicas=False).layer_us(np.full((1, 8), 30.0))
    assert moe[0] == pytest.approx(103.0)
    # One hot expert of 200 tokens among cold ones: it sets the layer without replicas.
    n = np.array([[200.0, 1, 1, 1, 1, 1, 1, 1]])
    assert StepBound(cl, 2, replicas=False).layer_us(n)[0][0] == pytest.approx(3 + 10 + 2 * 190)
    assert StepBound(cl, 3, replicas=True).layer_us(n)[0][0] < 3 + 10 + 2 * 190


CASES = [(8, "power-cap", 0), (8, "fleet", 8), (32, "identical", 0), (32, "power-cap", 32), (64, "fleet", 64)]


@pytest.mark.parametrize("G,scenario,R", CASES)
@pytest.mark.parametrize("network", [False, True])
def test_bound_never_above_eplb_vibe_or_a_random_plan_on_sampled_steps(G, scenario, R, network):
    loads = synth_loads_for_model("deepseek-v3", seed=1)
    cluster = synth_cluster(G, scenario=scenario, seed=2, gpus_per_node=8)
    cluster = cluster.with_network() if network else cluster
    plans = [place(loads, cluster, p, PlacementOptions(redundant=R, batch_tokens=(256.0 * G,))) for p in ("eplb", "vibe")]
    rng = np.random.default_rng(G + R)
    phy = np.stack([rng.permutation(plans[0].physical_to_logical_map[l]) for l in range(loads.num_layers)])
    plans.append(Placement.init_by_mapping(phy, G, policy="random"))
    model = PRESETS["deepseek-v3"]
    ceiling = CeilingPredictor(model, cluster, plans[0], table_tokens=0)
    route = profile_router(loads)
    for B in (1, 16 * G, 1024 * G):
        counts = route(B, rng)
        bound = ceiling.step(B, 1000.0, counts)
        for p in plans:
            st = Predictor(model, cluster, p, table_tokens=0).step(B, 1000.0, counts)
            assert bound.moe_us <= st.moe_us * (1 + 1e-9), (p.policy, B)
            assert bound.moe_us + bound.a2a_us <= (st.moe_us + st.a2a_us) * (1 + 1e-9), (p.policy, B)
            assert bound.dense_us == st.dense_us
        assert bound.idle_fraction == 0.0


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.5, 1.0, 1.3]))
def test_time_factors_keep_it_a_bound(seed, scale):
    rng = np.random.default_rng(seed)
    loads = synth_loads_for_model("deepseek-v2-lite", seed=int(seed % 7))
    cluster = synth_cluster(8, scenario="fleet", seed=int(seed % 5)).with_network()
    plan = place(loads, cluster, "eplb")
    factors = scale * rng.uniform(0.8, 1.25, 8)
    counts = profile_router(loads)(int(rng.integers(1, 4096)), rng)
    st = Predictor(LITE, cluster, plan, table_tokens=0).step(100, 0.0, counts, factors)
    bound = CeilingPredictor(LITE, cluster, plan, table_tokens=0).step(100, 0.0, counts, factors)
    assert bound.total_us <= st.total_us * (1 + 1e-9)
    with pytest.raises(VibeError, match="every GPU up"):
        StepBound(cluster, 8, False).layer_us(counts, np.where(np.arange(8) == 3, 0.0, 1.0))


# ---- in the simulator ------------------------------------------------------------------
def test_simulated_ceiling_is_never_slower_than_the_plan_it_takes_the_slots_of():
    loads = synth_loads_for_model("deepseek-v2-lite", seed=0)
    cluster = synth_cluster(8, scenario="power-cap", seed=0).with_network()
    plan = place(loads, cluster, "eplb")
    work = poisson_workload(40.0, 4.0, 512, 32, seed=3)
    sched = SchedulerConfig(max_batch_tokens=4096, max_running=64)
    real = simulate(work, cluster, loads, plan, LITE, sched, seed=5)
    ceil = simulate(work, cluster, loads, plan, LITE, sched, seed=5, ceiling=True)
    r, c = real.steps, ceil.steps
    assert c.idle_weighted == 0.0 and r.idle_weighted > 0.0
    assert (c.moe_us + c.a2a_us) / c.tokens < (r.moe_us + r.a2a_us) / r.tokens
    assert np.nanmax(ceil.finish_s) <= np.nanmax(real.finish_s)
    with pytest.raises(VibeError, match="static runs"):
        simulate(work, cluster, loads, plan, LITE, sched, ceiling=True, online=object())


def test_the_sweep_runs_the_ceiling_as_a_policy():
    loads = synth_loads_for_model("deepseek-v2-lite", seed=0)
    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    plan = place(loads, cluster, "eplb")
    spec = SweepSpec(LITE, duration_s=2.0, input_len=256, output_len=16)
    rows = {p: run_point(spec, cluster, loads, plan, p, 30.0, 0) for p in ("eplb", CEILING)}
    assert rows[CEILING]["policy"] == CEILING
    assert rows[CEILING]["steps"]["idle_at_barrier"] == 0.0 < rows["eplb"]["steps"]["idle_at_barrier"]
    assert rows[CEILING]["ttft_ms"]["p50"] <= rows["eplb"]["ttft_ms"]["p50"]
