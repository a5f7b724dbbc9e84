"""Worked examples for the drift detectors (vibe.recal.drift): distances on tiny count
vectors, the workload detector's thresholds, hysteresis and patience at their exact
boundaries, the hardware detector's ratios, windows and lost GPUs on two hand-made GPUs.
Every expected value is derived by hand in the comments."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vibe.errors import InputError, VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.model.cluster import GpuProfile
from vibe.recal.drift import (HardwareDrift, HardwareDriftDetector, WorkloadDrift, WorkloadDriftDetector,
                              curve_ratios, predicted_gpu_us, scale_gpus, share_distances)
from vibe.recal.repair import live_weights


# ---- distances -------------------------------------------------------------------------
def test_share_distances_worked_example():
    """Layer 0: counts [3, 1] (shares .75/.25) vs profile [1, 1] (.5/.5): TV = 0.5 (.25 +
    .25) = 0.25; cos(p, q) = .5 / (sqrt(.625) sqrt(.5)) = 2 / sqrt(5). Layer 1: no count
    in the window, layer 2: none in the profile: both 0. Layer 3: counts [.25, .25] (sum
    0.5, below one token) vs [1, 0]: TV = 0.5 (.5 + .5) = 0.5, cos = .5 / sqrt(.5) = 1/sqrt(2)."""
    counts = np.array([[3.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.25, 0.25]])
    profile = np.array([[1.0, 1.0], [2.0, 5.0], [0.0, 0.0], [1.0, 0.0]])
    with np.errstate(all="raise"):  # empty layers are handled, not divided by zero
        tv, cos = share_distances(counts, profile)
    assert tv.tolist() == pytest.approx([0.25, 0.0, 0.0, 0.5], abs=1e-15)
    assert cos.tolist() == pytest.approx([1 - 2 / math.sqrt(5), 0.0, 0.0, 1 - 1 / math.sqrt(2)], abs=1e-15)
    assert tv[1] == tv[2] == cos[1] == cos[2] == 0.0
    # integer count matrices (what engines dump) give the same distances
    tv_i, cos_i = share_distances(np.array([[3, 1], [0, 0], [1, 0]]), np.array([[1, 1], [2, 5], [0, 0]]))
    assert tv_i.tolist() == pytest.approx([0.25, 0.0, 0.0], abs=1e-15)
    assert cos_i.tolist() == pytest.approx([1 - 2 / math.sqrt(5), 0.0, 0.0], abs=1e-15)


# ---- the workload detector -------------------------------------------------------------
def one_layer(counts, ids=(7,), model="m") -> ExpertLoads:
    return ExpertLoads(np.array([counts], dtype=np.float64), top_k=1, layer_ids=ids, model=model)


def fires(det: WorkloadDriftDetector, observations) -> list[bool]:
    return [det.update(np.array([o], dtype=np.float64)) is not None for o in observations]


def test_tv_threshold_and_the_clear_ratio_at_their_boundaries():
    """Profile [1, 1]; TV threshold 0.25, clear ratio 0.5 (re-arms below TV 0.125); the
    cosine threshold 1 can never be passed (distances are <= 1) and its clear level 0.5
    is above every cosine here ([7, 1]: cos = .5 / (sqrt(.78125) sqrt(.5)) = 0.2).
    [3, 1]: TV exactly 0.25, not above it: no drift. [7, 1]: TV .375: fires. Disarmed,
    [3, 1] (0.25 > 0.125) keeps it disarmed, so [7, 1] stays silent. [5, 3]: TV exactly
    0.125, not above the clear level: re-armed, and [7, 1] fires again."""
    det = WorkloadDriftDetector(one_layer([1, 1]), window=1, tv_threshold=0.25, cos_threshold=1.0,
                                min_layers=1, patience=1, clear_ratio=0.5)
    assert fires(det, [[3, 1], [7, 1]]) == [False, True]
    assert det.armed is False
    assert fires(det, [[3, 1], [7, 1]]) == [False, False]
    assert fires(det, [[5, 3]]) == [False] and det.armed is True and det.streak == 0
    assert fires(det, [[7, 1]]) == [True]


def test_cosine_threshold_at_its_boundary_and_its_clear_level():
    """Profile [1, 1, 1, 1, 0] (q = .25 on four experts, |q| = .5). [1, 0, 0, 0, 0]: cos =
    1 - .25 / .5 = 0.5 exactly, TV 0.75; [0, 0, 0, 0, 1]: orthogonal, cos 1, TV 1. TV
    threshold 1 (never passed), cosine 0.5, clear ratio 1: [1, 0, ...] is not above 0.5,
    so it neither fires nor keeps the detector disarmed."""
    det = WorkloadDriftDetector(one_layer([1, 1, 1, 1, 0]), window=1, tv_threshold=1.0, cos_threshold=0.5,
                                min_layers=1, patience=1, clear_ratio=1.0)
    a, b = [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]
    assert fires(det, [a, b, a, b]) == [False, True, False, True]


def test_the_cosine_clear_level_is_the_threshold_times_the_ratio():
    """Same profile, TV threshold 1 (never passed; its clear level 1 x 0.5), clear ratio
    0.5. The orthogonal [0, 0, 0, 0, 1] (cos 1) fires. [1, 1, 0, 0, 0] (p = .5/.5, |p| =
    1/sqrt(2)): cos = 1 - .25 / (.5 / sqrt(2)) = 1 - 1/sqrt(2) = 0.293, and TV = 0.5
    (.25 x 4), not above the TV clear level 0.5: only the cosine can keep the detector
    disarmed, i.e. when 0.293 is above the cosine threshold x 0.5."""
    det = WorkloadDriftDetector(one_layer([1, 1, 1, 1, 0]), window=1, tv_threshold=1.0, cos_threshold=0.9,
                                min_layers=1, patience=1, clear_ratio=0.5)
    # clear level: cosine 0.45, TV 0.5; [1, 1, 0, 0, 0]: cos 0.293 < 0.45 re-arms
    assert fires(det, [[0, 0, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1]]) == [True, False, True]
    det = WorkloadDriftDetector(one_layer([1, 1, 1, 1, 0]), window=1, tv_threshold=1.0, cos_threshold=0.55,
                                min_layers=1, patience=1, clear_ratio=0.5)
    # clear level: cosine 0.275 < 0.293: stays disarmed
    assert fires(det, [[0, 0, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1]]) == [True, False, False]


def test_patience_counts_consecutive_drifted_updates_from_zero_after_every_reset():
    """Patience 2 on the first example's detector: [7, 1] twice fires on the second; after
    re-arming on [1, 1] (TV 0), one [7, 1] is not enough; [3, 1] (not drifted) resets the
    streak, so it takes two more."""
    det = WorkloadDriftDetector(one_layer([1, 1]), window=1, tv_threshold=0.25, cos_threshold=1.0,
                                min_layers=1, patience=2, clear_ratio=0.5)
    assert det.armed is True and det.streak == 0
    hot, same, edge = [7, 1], [1, 1], [3, 1]
    assert fires(det, [hot, hot, same, hot, edge, hot, hot]) == [False, True, False, False, False, False, True]


def test_min_layers_is_a_quarter_of_the_layers_rounded_up_and_must_be_reached():
    profile = ExpertLoads(np.ones((5, 2)), top_k=1)
    assert WorkloadDriftDetector(profile).min_layers == 2  # ceil(5 / 4)
    assert WorkloadDriftDetector(ExpertLoads(np.ones((1, 2)), top_k=1)).min_layers == 1
    assert WorkloadDriftDetector(ExpertLoads(np.ones((8, 2)), top_k=1)).min_layers == 2
    assert WorkloadDriftDetector(profile, min_layers=4).min_layers == 4
    # 5 layers, two of them drifted ([7, 1] vs [1, 1]): enough for min_layers 2, not for 3
    obs = np.ones((5, 2))
    obs[[1, 3]] = [7, 1]
    for need, fired in ((2, True), (3, False)):
        det = WorkloadDriftDetector(profile, window=1, tv_threshold=0.25, cos_threshold=1.0, min_layers=need,
                                    patience=1)
        assert (det.update(obs) is not None) is fired


def test_the_report_holds_the_windows_counts_with_the_profiles_ids_and_model():
    """Window 2: the report's loads are the sum of the last two observations."""
    profile = ExpertLoads(np.array([[1.0, 1.0], [1.0, 1.0]]), top_k=2, layer_ids=(3, 9), model="m")
    det = WorkloadDriftDetector(profile, window=2, tv_threshold=0.25, cos_threshold=1.0, min_layers=1, patience=1)
    assert det.last_tv is None and det.last_cos is None
    assert det.window_counts().tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert det.update(np.array([[1.0, 1.0], [1.0, 1.0]])) is None
    d = det.update(np.array([[1.0, 1.0], [13.0, 1.0]]))  # window: [2, 2] and [14, 2]: TV 0 and .375
    assert isinstance(d, WorkloadDrift) and d.layers == (9,)
    assert d.loads.counts.tolist() == [[2.0, 2.0], [14.0, 2.0]]
    assert d.loads.layer_ids == (3, 9) and d.loads.model == "m" and d.loads.top_k == 2
    assert d.loads.extra == {"source": "window", "observations": 2}
    assert d.tv.tolist() == pytest.approx([0.0, 0.375]) and np.array_equal(d.cosine, det.last_cos)
    assert d.cosine.tolist() == pytest.approx([0.0, 0.2])
    assert d.describe() == "workload drift in 1/2 layers (TV median 0.188, max 0.375; cosine max 0.200)"
    assert det.update(np.array([[1.0, 1.0], [1.0, 1.0]])) is None  # window [2, 2], [14, 2]
    assert det.window_counts().tolist() == [[2.0, 2.0], [14.0, 2.0]]


@pytest.mark.parametrize("kwargs", [dict(window=0), dict(patience=0), dict(window=0, patience=1)])
def test_window_and_patience_below_one_are_refused(kwargs):
    with pytest.raises(VibeError) as exc:
        WorkloadDriftDetector(one_layer([1, 1]), **kwargs)
    assert str(exc.value) == "window and patience must be >= 1"


@pytest.mark.parametrize("name", ["tv_threshold", "cos_threshold", "clear_ratio"])
@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_thresholds_outside_zero_one_are_refused(name, value):
    with pytest.raises(VibeError) as exc:
        WorkloadDriftDetector(one_layer([1, 1]), **{name: value})
    assert str(exc.value) == "thresholds must lie in (0, 1] and the clear ratio in (0, 1]"


def test_the_boundary_values_one_are_accepted():
    det = WorkloadDriftDetector(one_layer([1, 1]), window=1, patience=1, tv_threshold=1.0, cos_threshold=1.0,
                                clear_ratio=1.0)
    assert (det.window, det.patience, det.tv_threshold, det.cos_threshold, det.clear_ratio) == (1, 1, 1.0, 1.0, 1.0)


def test_counts_of_another_shape_or_negative_or_not_finite_are_refused_with_their_message():
    det = WorkloadDriftDetector(ExpertLoads(np.ones((4, 16)), top_k=2))
    with pytest.raises(InputError) as exc:
        det.update(np.ones((4, 8)))
    assert str(exc.value) == "counts: shape [4, 8] differs from the profile's [4, 16] [layers, experts]"
    for bad in (-1.0, np.nan, np.inf):
        c = np.ones((4, 16))
        c[2, 3] = bad
        with pytest.raises(InputError) as exc:
            det.update(c)
        assert str(exc.value) == "counts: counts must be finite and >= 0"
    assert det.window_counts().tolist() == np.zeros((4, 16)).tolist()  # nothing refused was kept


def test_window_sums_are_exact_for_float32_dumps():
    """Engines dump float32 tensors; 2**24 + 1 tokens is not a float32, but the window's
    sum (the counts a repair is made for) is exact."""
    det = WorkloadDriftDetector(ExpertLoads(np.ones((1, 2)), top_k=1), window=2)
    det.update(np.array([[2.0**24, 0.0]], dtype=np.float32))
    det.update(np.array([[1.0, 0.0]], dtype=np.float32))
    assert det.window_counts()[0, 0].item() == 2**24 + 1  # .item(): compared as a Python number


# ---- two hand-made GPUs ------------------------------------------------------------------
def two_gpus(f=(1.0, 2.0), overhead=(10.0, 20.0)) -> Cluster:
    """t_g(n) = f_g n us for n >= 1 token (linear curves through (1, f) and (100, 100 f))."""
    return Cluster.init_by_curves([1.0, 100.0], [[f[0], 100 * f[0]], [f[1], 100 * f[1]]], list(overhead))


def both_on_both() -> Placement:
    """One layer, experts 0 and 1 on both GPUs (slots 0, 1 on GPU 0, slots 2, 3 on GPU 1)."""
    return Placement.init_by_mapping(np.array([[0, 1, 0, 1]]), 2, 2, (1,), "hand")


COUNTS = np.array([[8, 4]])  # integer counts: what engines report


def test_predicted_gpu_us_splits_replicas_evenly_and_gives_lost_gpus_no_tokens():
    """Counts [8, 4], each expert on both GPUs: every replica takes half, 4 + 2 tokens per
    GPU: GPU 0 10 + 1 x 6 = 16 us, GPU 1 20 + 2 x 6 = 32 us. GPU 1 lost: GPU 0 takes all
    12 tokens, 10 + 12 = 22 us; GPU 1 keeps its overhead, 20 us."""
    cluster, plan = two_gpus(), both_on_both()
    assert predicted_gpu_us(plan, cluster, COUNTS).tolist() == pytest.approx([16.0, 32.0])
    assert predicted_gpu_us(plan, cluster, COUNTS, down=[1]).tolist() == pytest.approx([22.0, 20.0])
    # the plan's own replica weights 3:1 (expert 0: 6 tokens on GPU 0, 2 on GPU 1) and
    # 1:3 (expert 1: 1 and 3): GPU 0 10 + 6 + 1 = 17, GPU 1 20 + 2 x (2 + 3) = 30
    weighted = dataclasses.replace(plan, replica_weights=np.array([[3.0, 1.0, 1.0, 3.0]]))
    assert predicted_gpu_us(weighted, cluster, COUNTS).tolist() == pytest.approx([17.0, 30.0])


@pytest.mark.parametrize("with_weights", [True, False])
def test_the_plans_own_lost_gpus_get_no_tokens_in_the_prediction(with_weights):
    """A plan that names a lost GPU in extra 'down_gpus' (GPU 1: prediction [22, 20],
    above), with its replica weights zeroed there (as the repair writes it) or not (a
    hand-written plan file): observed times equal to that prediction are no drift."""
    cluster = two_gpus()
    plan = both_on_both()
    weights = live_weights(plan, [1]) if with_weights else None
    plan = dataclasses.replace(plan, replica_weights=weights, extra={"down_gpus": [1]})
    det = HardwareDriftDetector(cluster, plan, window=1)
    assert det.update(np.array([22.0, 20.0]), COUNTS) is None
    assert det.update(np.array([22.0 * 1.5, 20.0]), COUNTS).ratio == {0: pytest.approx(1.5)}


def test_scale_gpus_scales_curve_and_overhead_and_marks_lost_gpus_down_keeping_their_keys():
    cluster = two_gpus()
    gpus = [dataclasses.replace(g, extra={"serial": f"s{g.rank}"}) for g in cluster.gpus]
    out = scale_gpus(cluster.with_gpus(gpus), {1: 2.0}, lost=[0])
    assert out.gpus[1].latency_us.tolist() == [4.0, 400.0] and out.gpus[1].overhead_us == 40.0
    assert out.gpus[0].latency_us.tolist() == [1.0, 100.0] and out.gpus[0].overhead_us == 10.0
    assert out.gpus[0].extra == {"serial": "s0", "state": "down"}
    assert out.gpus[1].extra == {"serial": "s1"}
    assert out.down_ranks() == (0,)


def gpu(rank, tokens, us, overhead=5.0) -> GpuProfile:
    return GpuProfile(rank, 0, np.array(tokens, dtype=np.float64), np.array(us, dtype=np.float64), overhead)


def test_curve_ratios_reports_the_median_ratio_of_changed_gpus_only():
    """GPU 0: 2 us per token on [1, 100]; GPU 1: 2 us per token on [1, 200]. The common
    grid is [1, 100, 200]; the cost model extends GPU 0 linearly to 400 us at 200."""
    old = Cluster((gpu(0, [1, 100], [2, 200]), gpu(1, [1, 200], [2, 400])))
    assert curve_ratios(old, old) == {}
    assert curve_ratios(old, scale_gpus(old, {1: 1.5})) == {1: pytest.approx(1.5)}
    # the same function given at one more point: no change (the new grid differs from the old)
    again = Cluster((gpu(0, [1, 50, 100], [2, 100, 200]), gpu(1, [1, 200], [2, 400])))
    assert curve_ratios(old, again) == {}
    # at other points and twice as slow: ratio 2 on the old grid
    slower = Cluster((gpu(0, [1, 50, 100], [4, 200, 400]), gpu(1, [1, 200], [2, 400])))
    assert curve_ratios(old, slower) == {0: pytest.approx(2.0)}
    # one point of three moved: 400 -> 600 at 200 tokens; ratios (1, 1, 1.5), median 1
    bent = Cluster((gpu(0, [1, 100, 200], [2, 200, 600]), gpu(1, [1, 200], [2, 400])))
    assert curve_ratios(old, bent) == {0: pytest.approx(1.0)}


def test_curve_ratios_tells_apart_changes_of_a_millionth_of_curve_or_overhead():
    old = Cluster((gpu(0, [1, 100], [2, 200]), gpu(1, [1, 200], [2, 400])))
    def changed(**kw):
        return old.with_gpus([dataclasses.replace(old.gpus[0], **kw), old.gpus[1]])

    g0 = old.gpus[0]
    assert curve_ratios(old, changed(latency_us=g0.latency_us * (1 + 1e-6))) == \
        {0: pytest.approx(1 + 1e-6, rel=1e-12)}
    assert curve_ratios(old, scale_gpus(old, {0: 1 + 1e-12})) == {}
    # the overhead moved by a millionth, the curve did not: reported, with the curve's ratio 1
    assert curve_ratios(old, changed(overhead_us=5.0 * (1 + 1e-6))) == {0: pytest.approx(1.0)}


def test_hardware_drift_describe():
    d = HardwareDrift({1: 1.2, 0: 0.8}, (3,), two_gpus())
    assert d.describe() == "hardware drift: GPU 0 0.800x the predicted time, GPU 1 1.200x the predicted time, " \
                           "GPU 3 lost"
    assert d.describe("cluster file changed", "its old curve") == \
        "cluster file changed: GPU 0 0.800x its old curve, GPU 1 1.200x its old curve, GPU 3 lost"
    assert HardwareDrift({}, (2, 5), two_gpus()).describe() == "hardware drift: GPU 2 lost, GPU 5 lost"


# ---- the hardware detector on predicted times ----------------------------------------------
def detector(**kw) -> HardwareDriftDetector:
    return HardwareDriftDetector(two_gpus(), both_on_both(), **kw)


def feed(det, observed, predicted=(4.0, 4.0)):
    return [det.update(np.array(o, dtype=np.float64), predicted_us=np.array(predicted)) for o in observed]


def test_a_ratio_exactly_at_the_threshold_is_no_drift():
    """Threshold 0.25, predicted 4 us: observed 5 is ratio 1.25 = 1 + 0.25 and 3 is 0.75 =
    1 - 0.25, not beyond; 5.5 (1.375) and 2.5 (0.625) are."""
    det = detector(threshold=0.25, window=2)
    assert feed(det, [[5.0, 3.0]] * 4) == [None] * 4
    det = detector(threshold=0.25, window=2)
    out = feed(det, [[5.5, 2.5]] * 2)
    assert out[0] is None and out[1].ratio == {0: 1.375, 1: 0.625} and out[1].lost == ()
    assert out[1].cluster.gpus[0].overhead_us == pytest.approx(13.75)  # 10 x 1.375


def test_persistent_means_eighty_percent_of_the_window():
    """Window 5, ratios over it (1.5 x4, 1.0): the 20% quantile (linear, at position 0.8 of
    the sorted [1, 1.5, 1.5, 1.5, 1.5]) is 1.4 > 1.05: slow, median 1.5. Two normal ratios
    (sorted [1, 1, 1.5, 1.5, 1.5]): quantile 1.0: not persistent."""
    det = detector(window=5)
    out = feed(det, [[6.0, 4.0]] * 2 + [[4.0, 4.0]] + [[6.0, 4.0]] * 2)
    assert out[:4] == [None] * 4 and out[4].ratio == {0: 1.5}
    det = detector(window=5)
    assert feed(det, [[6.0, 4.0], [4.0, 4.0], [6.0, 4.0], [4.0, 4.0], [6.0, 4.0]]) == [None] * 5


def test_small_predicted_times_are_compared_and_zero_ones_give_no_ratio():
    """Predicted 0.5 us: observed 0.6 is ratio 1.2. A GPU predicted at 0 us has no ratio
    (and raises no floating-point error, even with numpy set to raise): never reported."""
    det = detector(window=2)
    assert feed(det, [[0.6, 0.5]] * 2, predicted=(0.5, 0.5))[1].ratio == {0: pytest.approx(1.2)}
    det = detector(window=2)
    with np.errstate(all="raise"):
        assert feed(det, [[0.0, 5.0]] * 3, predicted=(0.0, 0.0)) == [None] * 3


def test_a_gpu_with_a_missing_report_in_the_window_is_not_judged():
    """Window 3: GPU 1 misses one report (NaN), fewer than missing_after 3: not lost, and
    with fewer than a full window of ratios it is neither slow nor fast; GPU 0 is."""
    det = detector(window=3)
    out = feed(det, [[6.0, 8.0], [6.0, np.nan], [6.0, 8.0]])
    assert out[:2] == [None, None] and out[2].ratio == {0: 1.5} and out[2].lost == ()


def test_missing_reports_must_be_consecutive_to_lose_a_gpu():
    """missing_after 2: missed, reported, missed: the count restarts, not lost; a second
    miss in a row loses it, reported once, and the new cluster marks it down."""
    det = detector(missing_after=2, window=8)
    assert feed(det, [[4.0, np.nan], [4.0, 4.0], [4.0, np.nan]]) == [None] * 3
    d = feed(det, [[4.0, np.nan]])[0]
    assert d.lost == (1,) and d.ratio == {} and d.cluster.down_ranks() == (1,)
    assert det.pending_lost() == []


def test_gpus_marked_down_elsewhere_are_reported_by_the_next_update():
    det = detector()
    assert det.pending_lost() == []
    det.mark_down([np.int64(1)])
    assert det.pending_lost() == [1]
    d = det.update()
    assert d.lost == (1,) and d.cluster.down_ranks() == (1,) and det.pending_lost() == []
    assert det.update() is None


@pytest.mark.parametrize("kwargs", [dict(threshold=0.0), dict(threshold=1.0), dict(threshold=1.5),
                                    dict(window=0), dict(missing_after=0)])
def test_hardware_detector_settings_out_of_range_are_refused(kwargs):
    with pytest.raises(VibeError) as exc:
        detector(**kwargs)
    assert str(exc.value) == "threshold must lie in (0, 1), window and missing_after must be >= 1"


def test_hardware_detector_boundary_settings_are_accepted():
    det = detector(threshold=0.5, window=1, missing_after=1)
    assert (det.threshold, det.window, det.missing_after) == (0.5, 1, 1)
    d = feed(det, [[4.0, np.nan]])[0]  # missing_after 1: lost at the first miss
    assert d.lost == (1,)


def test_hardware_detector_refuses_times_of_another_gpu_count_or_without_counts():
    det = detector()
    with pytest.raises(InputError) as exc:
        det.update(np.ones(3), predicted_us=np.ones(3))
    assert str(exc.value) == "gpu_us: 3 GPU times for a 2-GPU cluster"
    with pytest.raises(VibeError) as exc:
        det.update(np.ones(2))
    assert str(exc.value) == "per-GPU times need that step's counts (or predicted times) to compare"
