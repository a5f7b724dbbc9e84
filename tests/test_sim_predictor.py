"""Step-time predictor: the MoE part is the cost model on the step's routed tokens."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.cost import gpu_times, gpu_times_from_slot_tokens
from vibe.errors import InputError
from vibe.model import ExpertLoads
from vibe.policies import PlacementOptions, place
from vibe.sim.models import PRESETS
from vibe.sim.predictor import Predictor, check_trace_matches, profile_router, trace_router
from vibe.synth import synth_cluster, synth_loads_for_model

LITE = PRESETS["deepseek-v2-lite"]


@pytest.fixture(scope="module")
def lite_loads():
    """Synthetic loads of the DeepSeek-V2-Lite shape (26 MoE layers x 64 experts, top-6):
    these tests need the shape and a realistic skew, not the real ESFT data."""
    return synth_loads_for_model("deepseek-v2-lite", seed=0)


@pytest.fixture(scope="module")
def cluster():
    return synth_cluster(8, scenario="power-cap", seed=3)


def test_expected_step_equals_cost_model(lite_loads, cluster):
    placement = place(lite_loads, cluster, "eplb")
    pred = Predictor(LITE, cluster, placement)
    for b in (256, 4096):
        st = pred.step(b, 0.0, lite_loads.expert_tokens(b))
        want = gpu_times(placement, lite_loads, cluster, b).max(axis=1).sum()
        assert st.moe_us == pytest.approx(want, rel=1e-12)
        assert st.total_us == pytest.approx(st.moe_us + st.a2a_us + st.dense_us)


def test_sampled_step_equals_cost_model_on_same_tokens(lite_loads, cluster, rng):
    """Integer counts go through the lookup table, fractional ones (replicas) through
    the cost model directly: both must give the cost model's times."""
    for redundant in (0, 8):
        placement = place(lite_loads, cluster, "eplb", PlacementOptions(redundant=redundant))
        pred = Predictor(LITE, cluster, placement)
        route = profile_router(lite_loads)
        for b in (40, 300, 3000):
            counts = route(b, rng)
            slot = np.take_along_axis(counts, placement.physical_to_logical_map, 1) * placement.slot_share()
            want = gpu_times_from_slot_tokens(cluster, slot)
            np.testing.assert_allclose(pred.moe_gpu_times(pred.slot_tokens(counts)), want, rtol=1e-12)
            assert pred.step(b, 0.0, counts).moe_us == pytest.approx(want.max(axis=1).sum(), rel=1e-12)


def test_replicas_share_tokens_as_placed(lite_loads, cluster):
    placement = place(lite_loads, cluster, "eplb", PlacementOptions(redundant=8))
    pred = Predictor(LITE, cluster, placement)
    counts = lite_loads.expert_tokens(1000)
    slot = pred.slot_tokens(counts)
    L, E = counts.shape
    back = np.zeros((L, E))
    np.add.at(back, (np.arange(L)[:, None], placement.physical_to_logical_map), slot)
    np.testing.assert_allclose(back, counts)  # every routed token lands on exactly one slot
    assert (placement.logical_count() > 1).any()


def test_profile_router_counts(lite_loads, rng):
    route = profile_router(lite_loads)
    reps = 300
    for b in (10, 2000):  # exact draws, Gaussian limit
        c = np.mean([route(b, rng) for _ in range(reps)], axis=0)
        assert c.shape == lite_loads.counts.shape
        np.testing.assert_allclose(c.sum(axis=1), b * lite_loads.top_k, rtol=0.02)
        want = lite_loads.expert_tokens(b)
        z = (c - want) / np.sqrt(np.maximum(want, 1e-3) / reps)  # multinomial variance <= mean
        assert np.abs(z).max() < 6  # unbiased: no cell more than 6 standard errors off
    exact = route(10, rng)
    assert np.all(exact.sum(axis=1) == 10 * lite_loads.top_k)


def test_trace_router_resamples_real_batches(esft_trace, esft_loads, cluster, rng):
    route = trace_router(esft_trace)
    a, b = route(512, rng), route(512, rng)
    assert a.shape == (26, 64) and a.sum() == 512 * 26 * 6
    assert not np.array_equal(a, b)  # per-step skew changes from step to step
    check_trace_matches(esft_trace, place(esft_loads, cluster, "linear"))


def test_mismatched_model_is_refused(cluster):
    v3 = ExpertLoads(np.ones((58, 256)), 8, tuple(range(3, 61)))
    with pytest.raises(InputError, match="58 MoE layers x 256 experts, but model deepseek-v2-lite"):
        Predictor(LITE, cluster, place(v3, cluster, "linear"))


def test_mismatched_trace_is_refused(esft_trace, cluster):
    v3 = ExpertLoads(np.ones((58, 256)), 8, tuple(range(3, 61)))
    placement = place(v3, cluster, "linear")
    with pytest.raises(InputError, match="26 layers x 64 experts"):
        check_trace_matches(esft_trace, placement)


def test_dense_part_grows_with_tokens_and_context(lite_loads, cluster):
    pred = Predictor(LITE, cluster, place(lite_loads, cluster, "linear"))
    assert pred.dense_us(8192, 0) > pred.dense_us(64, 0)
    assert pred.dense_us(64, 64 * 100_000) > pred.dense_us(64, 64 * 1000)
