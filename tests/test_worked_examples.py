"""Worked examples: tiny inputs whose every answer is derived by hand in the comments.

They run without ../shared data and in well under a second each. Each one pins a value
that a plausible bug would move: the simulator recording a step at its start, TTFT
measured from time 0, unserved requests counted as TTFT 0, a cost-model segment off by
one, a bound that is not tight where it must be, a local search that makes a plan worse
(or is gone), and the boundaries of placement validation.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import vibe.sim.engine as sim_engine
from vibe.cost import evaluate, gpu_times, layer_lower_bounds
from vibe.errors import InputError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions, place
from vibe.policies import _timebalance as tb
from vibe.sim.models import ModelSpec
from vibe.sim.predictor import StepTime
from vibe.sim.scheduler import SchedulerConfig
from vibe.sim.requests import Workload


# ---- the serving simulator with a fixed step time -------------------------------------
# Every step takes STEP_S = 1/64 s = 15.625 ms: a power of two, so every time below is
# exact in binary floating point and the asserts can use ==.
STEP_S = 1 / 64
STEP_US = STEP_S * 1e6  # 15625 us


class FixedStepPredictor:
    """Stands in for vibe.sim.predictor.Predictor: every step takes STEP_US, split into
    MoE 10000 + all-to-all 625 + dense 5000 us, with 25% idle at the barrier and GPU 1
    the slowest. It records the (tokens, context) of every step it is asked about."""

    calls: list[tuple[int, float]] = []
    seen: list[tuple] = []  # (routed counts, factors, dense_scale) of every step

    def __init__(self, model, cluster, placement, gpu, table_tokens=0):
        FixedStepPredictor.calls, FixedStepPredictor.seen = [], []

    def step(self, tokens, context, counts, factors=None, dense_scale=1.0) -> StepTime:
        FixedStepPredictor.calls.append((int(tokens), float(context)))
        FixedStepPredictor.seen.append((np.array(counts), None if factors is None else np.array(factors), dense_scale))
        return StepTime(STEP_US, 10000.0, 625.0, 5000.0, 0.25, np.array([1]))


def _tiny_setup():
    """One MoE layer of 2 experts on 2 GPUs; shapes only (the predictor is fixed)."""
    cluster = Cluster.init_by_curves([1.0, 2.0], [[1.0, 2.0], [1.0, 2.0]])
    loads = ExpertLoads(np.array([[1.0, 1.0]]), top_k=1)
    placement = Placement.init_by_mapping(np.array([[0, 1]]), 2)
    model = ModelSpec("tiny", 1, (0,), 2, 1, 8, 8, 0.0, 0.0, 0.0, 0.0)
    return cluster, loads, placement, model


# R0 arrives at 0 (4-token prompt, 3 output tokens); R1 at 23.4375 ms = 3/128 s (10-token
# prompt, 2 output tokens), i.e. during the second step; R2 at 1 s (2-token prompt, 1
# output token), long after the others are done. Budget: 8 tokens per step.
WORKLOAD = Workload(np.array([0.0, 3 / 128, 1.0]), np.array([4, 10, 2]), np.array([3, 2, 1]), "worked")
BUDGET = SchedulerConfig(max_batch_tokens=8, max_running=4)


def _simulate(monkeypatch, **kw):
    monkeypatch.setattr(sim_engine, "Predictor", FixedStepPredictor)
    cluster, loads, placement, model = _tiny_setup()
    return sim_engine.simulate(WORKLOAD, cluster, loads, placement, model, scheduler=BUDGET,
                               **{"routing": "expected", **kw})


def test_three_requests_every_time_by_hand(monkeypatch):
    # Steps (each 15.625 ms, times in ms at the step's end):
    #   1 [0      - 15.625 ] R0 prefills 4 (whole prompt) -> R0's first token at 15.625
    #   2 [15.625 - 31.25  ] R0 decodes (R1 has not arrived at 15.625)   R0 token 2
    #   3 [31.25  - 46.875 ] R0 decodes 1, R1 arrived: chunk of 8-1 = 7   R0 token 3: done
    #   4 [46.875 - 62.5   ] R1 prefills its last 3 -> R1's first token at 62.5
    #   5 [62.5   - 78.125 ] R1 decodes                                   R1 done
    #   idle until R2 arrives at 1000
    #   6 [1000   - 1015.625] R2 prefills 2 -> first token and done (1 output token)
    res = _simulate(monkeypatch)
    assert FixedStepPredictor.calls[0][0] == 4 and [c[0] for c in FixedStepPredictor.calls] == [4, 1, 8, 3, 1, 2]
    # Attended context per step: a chunk [a, a+c) attends c*a + c(c+1)/2 pairs, a decode
    # its whole context + itself: 1) 0+10 = 10; 2) R0 has 4+1 tokens: 5+1 = 6;
    # 3) R0 4+2: 7, R1 chunk [0,7): 28 -> 35; 4) chunk [7,10): 3*7 + 6 = 27;
    # 5) R1 10+1: 12; 6) chunk [0,2): 3.
    assert [c[1] for c in FixedStepPredictor.calls] == [10, 6, 35, 27, 12, 3]
    ms = lambda x: x * 1e3
    assert ms(res.first_token_s).tolist() == [15.625, 62.5, 1015.625]
    assert ms(res.finish_s).tolist() == [46.875, 78.125, 1015.625]
    assert res.end_s == 1.015625
    # TTFT = first token - arrival: 15.625; 62.5 - 23.4375 = 39.0625; 15.625.
    assert ms(res.ttft_s()).tolist() == [15.625, 39.0625, 15.625]
    # TPOT = (finish - first) / (output - 1): (46.875 - 15.625) / 2 = 15.625; 15.625 / 1; R2: 0.
    assert ms(res.tpot_s()).tolist() == [15.625, 15.625, 0.0]
    # End to end = finish - arrival: 46.875; 78.125 - 23.4375 = 54.6875; 15.625.
    assert ms(res.e2e_s()).tolist() == [46.875, 54.6875, 15.625]

    s = sim_engine.summarize(res, slo_ttft_ms=15.625, slo_tpot_ms=15.625)
    # SLO limits are inclusive: R0 and R2 meet TTFT 15.625 exactly, R1 (39.0625) misses.
    assert s["slo_attainment"] == pytest.approx(2 / 3)
    assert sim_engine.summarize(res, 39.0625, 15.625)["slo_attainment"] == 1.0
    assert sim_engine.summarize(res, 39.0625, 15.624)["slo_attainment"] == pytest.approx(1 / 3)  # only R2 (TPOT 0)
    assert s["requests"] == 3 and s["finished"] == 3
    assert s["ttft_ms"]["p50"] == 15.625 and s["ttft_ms"]["mean"] == pytest.approx((15.625 * 2 + 39.0625) / 3)
    assert s["e2e_ms"]["p50"] == 46.875
    # 3 + 2 + 1 = 6 tokens generated in 1.015625 s.
    assert s["throughput_tok_s"] == pytest.approx(6 / 1.015625)
    st = s["steps"]
    # 6 steps of 19 tokens in all; MoE 10000 / 15625 = 0.64 of the time, a2a 0.04;
    # idle 0.25 of MoE time; GPU 1 was the slowest in every step.
    assert st["steps"] == 6 and st["mean_batch_tokens"] == pytest.approx(19 / 6)
    assert st["mean_step_ms"] == 15.625
    assert st["moe_share"] == pytest.approx(0.64, rel=1e-12) and st["a2a_share"] == pytest.approx(0.04, rel=1e-12)
    assert st["idle_at_barrier"] == pytest.approx(0.25, rel=1e-12)
    assert set(s) == {"requests", "finished", "ttft_ms", "tpot_ms", "e2e_ms", "slo_attainment", "slo_ttft_ms",
                      "slo_tpot_ms", "throughput_tok_s", "simulated_s", "steps"}
    assert (s["slo_ttft_ms"], s["slo_tpot_ms"], s["simulated_s"]) == (15.625, 15.625, 1.015625)
    assert st["straggler_share"] == [0.0, 1.0] and st["top_straggler_gpu"] == 1
    # 15.625 ms lies in the log-histogram bin whose upper edge is the first edge >= it.
    edges = sim_engine._HIST_EDGES_MS
    assert st["p50_step_ms"] == st["p99_step_ms"] == edges[np.searchsorted(edges, 15.625)]


def test_cut_off_run_counts_unserved_requests_as_waiting(monkeypatch):
    # Stop at 40 ms of simulated time: steps 1-3 run (step 3 starts at 31.25 < 40) and the
    # run ends at 46.875 ms. R0 finished (TTFT 15.625, TPOT 15.625); R1 arrived at
    # 23.4375 and prefilled 7 of 10 tokens but has no token yet: its TTFT counts the
    # time it waited, 46.875 - 23.4375 = 23.4375 ms (a lower bound, not 0), its TPOT 0
    # (no interval between tokens yet), its e2e also 23.4375. R2 has not arrived yet.
    res = _simulate(monkeypatch, max_time_s=0.040)
    assert res.end_s == 0.046875
    assert res.finished.tolist() == [True, False, False]
    ttft = res.ttft_s()[:2] * 1e3
    assert ttft.tolist() == [15.625, 23.4375]
    assert (res.tpot_s()[:2] * 1e3).tolist() == [15.625, 0.0]
    assert (res.e2e_s()[:2] * 1e3).tolist() == [46.875, 23.4375]
    # R2 arrives at 1 s, after the run stopped: it waited for nothing yet (never a negative
    # time), and as an unfinished request it still misses the SLO below.
    assert res.ttft_s()[2] == 0.0 and res.e2e_s()[2] == 0.0 and res.tpot_s()[2] == 0.0
    # Unfinished requests never meet the SLO, however generous: 1 of 3.
    s = sim_engine.summarize(res, slo_ttft_ms=1e9, slo_tpot_ms=1e9)
    assert s["finished"] == 1 and s["slo_attainment"] == pytest.approx(1 / 3)
    # Generated tokens count only finished requests: R0's 3 in 46.875 ms.
    assert s["throughput_tok_s"] == pytest.approx(3 / 0.046875)


def test_cut_off_before_a_prompt_is_served(monkeypatch):
    # Stop at 20 ms: steps 1 and 2 run, the run ends at 31.25 ms. R1 arrived at 23.4375
    # and waited 7.8125 ms without a token: TTFT 7.8125 (a request left unserved must not
    # look as fast as TTFT 0, nor count from time 0, 31.25).
    res = _simulate(monkeypatch, max_time_s=0.020)
    assert res.end_s == 0.03125
    assert np.isnan(res.first_token_s[1])
    assert res.ttft_s()[1] * 1e3 == 7.8125
    assert res.e2e_s()[1] * 1e3 == 7.8125


def test_drift_factors_reach_each_step_and_the_dense_part(monkeypatch):
    # Both GPUs drift from t = 0 to 1.5x over a 1/32 s ramp (two steps), no jitter:
    # factor(t) = 1 + 0.5 * clip(t / (1/32), 0, 1) at each step's start: steps 1-3 start
    # at 0, 1/64, 2/64 -> 1, 1.25, 1.5; later steps 1.5. Identical GPUs: the dense part
    # is scaled by the slowest factor, the same numbers.
    from vibe.sim.hardware import HardwareModel

    hw = HardwareModel(drift_gpus=2, drift_slowdown=0.5, drift_start_s=0.0, drift_ramp_s=1 / 32)
    _simulate(monkeypatch, hardware=hw)
    factors = [f.tolist() for _, f, _ in FixedStepPredictor.seen]
    assert factors == [[1.0, 1.0], [1.25, 1.25], [1.5, 1.5], [1.5, 1.5], [1.5, 1.5], [1.5, 1.5]]
    assert [d for _, _, d in FixedStepPredictor.seen] == [1.0, 1.25, 1.5, 1.5, 1.5, 1.5]
    # static hardware: no factors at all, dense part at the static speed (1 here)
    _simulate(monkeypatch)
    assert all(f is None and d == 1.0 for _, f, d in FixedStepPredictor.seen)


def test_same_seed_same_random_steps_other_seed_other_ones(monkeypatch):
    # Jitter and sampled routing both come from the seed; the default seed is 0.
    from vibe.sim.hardware import HardwareModel

    hw = HardwareModel(jitter_cv=0.1)

    def draws(**kw):
        _simulate(monkeypatch, hardware=hw, routing="sample", **kw)
        return [(c.tolist(), f.tolist()) for c, f, _ in FixedStepPredictor.seen]

    a = draws(seed=3)
    assert a == draws(seed=3) and a != draws(seed=4)
    assert draws() == draws(seed=0)
    monkeypatch.setattr(sim_engine, "Predictor", FixedStepPredictor)
    cluster, loads, placement, model = _tiny_setup()
    sim_engine.simulate(WORKLOAD, cluster, loads, placement, model, scheduler=BUDGET, hardware=hw, seed=3)
    assert [(c.tolist(), f.tolist()) for c, f, _ in FixedStepPredictor.seen] == a  # the default is "sample"
    jitter = [tuple(f) for _, f in a]
    assert len(set(jitter)) == len(jitter)  # a fresh draw every step
    # sampled routing: each step routes its tokens x top-1 over the 2 experts
    assert [int(np.sum(c)) for c, _ in a] == [4, 1, 8, 3, 1, 2]


def test_a_routing_trace_drives_the_routed_counts(monkeypatch):
    # A trace in which every token of layer 0 picks expert 1: each step routes all its
    # tokens there (whole sequences of one token, re-sampled).
    from vibe.model import RoutingTrace

    trace = RoutingTrace(np.ones((1, 5, 1), np.int16), np.arange(6), 2, (0,))
    _simulate(monkeypatch, trace=trace, routing="sample")
    assert [c.tolist() for c, _, _ in FixedStepPredictor.seen] == [[[0, n]] for n in (4, 1, 8, 3, 1, 2)]
    with pytest.raises(InputError, match="layer ids"):
        _simulate(monkeypatch, trace=RoutingTrace(np.ones((1, 5, 1), np.int16), np.arange(6), 2, (7,)), routing="sample")


def test_progress_is_reported_every_256_steps_and_at_the_end(monkeypatch):
    # One request, 1-token prompt, 300 output tokens: 300 steps. Progress after step 256
    # and once at the end.
    monkeypatch.setattr(sim_engine, "Predictor", FixedStepPredictor)
    cluster, loads, placement, model = _tiny_setup()
    # A second request (1 output token) finishes in the first step: 1 done at step 256.
    w = Workload(np.array([0.0, 0.0]), np.array([1, 1]), np.array([300, 1]))
    seen = []
    res = sim_engine.simulate(w, cluster, loads, placement, model, routing="expected",
                              progress=lambda done, total: seen.append((done, total, len(FixedStepPredictor.calls))))
    assert seen == [(1, 2, 256), (2, 2, 300)]
    assert res.steps.steps == 300 and res.end_s == 300 / 64


def test_default_time_limit_is_three_times_the_last_arrival_plus_60_s(monkeypatch):
    # A request arriving at 10 s that would need a million steps: the run stops at the
    # first step end at or past 3 * 10 + 60 = 90 s; steps end at 10 + k/64 s, so at 90.
    monkeypatch.setattr(sim_engine, "Predictor", FixedStepPredictor)
    cluster, loads, placement, model = _tiny_setup()
    w = Workload(np.array([10.0]), np.array([1]), np.array([10**6]))
    res = sim_engine.simulate(w, cluster, loads, placement, model, routing="expected")
    assert res.end_s == 90.0 and not res.finished[0]
    assert res.steps.steps == 80 * 64


def test_a_model_of_another_shape_is_refused_naming_the_loads():
    cluster, loads, placement, model = _tiny_setup()
    other = ModelSpec("other", 1, (0,), 2, 2, 8, 8, 0.0, 0.0, 0.0, 0.0)  # top-2, loads are top-1
    with pytest.raises(InputError) as exc:
        sim_engine.simulate(WORKLOAD, cluster, loads, placement, other)
    assert str(exc.value) == "loads: has top_k=1, model other routes top-2"


def test_step_statistics_by_hand():
    from vibe.sim.engine import StepStats

    edges = sim_engine._HIST_EDGES_MS  # 0.1 ms * 10^(k/20): 1.0 at k = 20, 10 at 40, 100 at 60
    s = StepStats(3)
    assert s.step_percentile_ms(50) == 0.0 and s.to_dict()["steps"] == 0
    # 50 steps of 1.05 ms, 49 of 10.5 ms, 1 of 105 ms: bins k = 21, 41, 61 (edges 1.12, 11.2, 112)
    def st(ms, slowest):
        return StepTime(ms * 1e3, ms * 500.0, ms * 100.0, ms * 400.0, 0.1, np.array(slowest))

    for _ in range(50):
        s.add(st(1.05, [0, 0]), 10)
    for _ in range(49):
        s.add(st(10.5, [1, 0]), 20)
    s.add(st(105.0, [2, 2]), 30)
    assert s.hist[21] == 50 and s.hist[41] == 49 and s.hist[61] == 1 and s.hist.sum() == 100
    # p50: the 50th step is the last 1.05 ms one; p51 and p99 fall in the 10.5 ms bin; p100 in 105
    assert s.step_percentile_ms(50) == edges[21] == pytest.approx(10 ** 0.05)
    assert s.step_percentile_ms(51) == s.step_percentile_ms(99) == edges[41]
    assert s.step_percentile_ms(100) == edges[61]
    d = s.to_dict()
    busy_ms = 50 * 1.05 + 49 * 10.5 + 105.0  # 672.0
    assert d["steps"] == 100 and d["mean_step_ms"] == pytest.approx(busy_ms / 100)
    assert d["mean_batch_tokens"] == pytest.approx((500 + 980 + 30) / 100)
    assert d["moe_share"] == pytest.approx(0.5) and d["a2a_share"] == pytest.approx(0.1)
    assert s.dense_us == pytest.approx(busy_ms * 400.0)
    assert d["idle_at_barrier"] == pytest.approx(0.1)
    # slowest GPU per layer: GPU 0 50*2 + 49 = 149 times, GPU 1 49, GPU 2 2, of 200
    assert s.slowest.tolist() == [149, 49, 2]
    assert d["straggler_share"] == [0.745, 0.245, 0.01] and d["top_straggler_gpu"] == 0
    assert d["p50_step_ms"] == edges[21] and d["p99_step_ms"] == edges[41]
    # one step beyond the histogram (1000 s) reads as its last edge, 100 s; its mean is itself
    one = StepStats(1)
    one.add(st(1e6, [0]), 1)
    assert one.step_percentile_ms(50) == edges[-1] == 1e5 and one.hist[-1] == 1
    assert one.to_dict()["mean_step_ms"] == 1e6 and one.to_dict()["straggler_share"] == [1.0]
    # 1.0005 ms lies just above the 1 ms edge: bin 21, not 20
    near = StepStats(3)
    for g in range(3):
        near.add(st(1.0005, [g]), 1)
    assert near.hist[21] == 3 and near.to_dict()["straggler_share"] == [0.3333, 0.3333, 0.3333]
    # 202 steps, 100 of 1.05 ms then 102 of 10.5 ms: the median (the 101st) is 10.5 ms
    half = StepStats(1)
    for ms in [1.05] * 100 + [10.5] * 102:
        half.add(st(ms, [0]), 1)
    assert half.step_percentile_ms(50) == edges[41]


# ---- the cost model on hand-made curves -----------------------------------------------
# GPU 0: t(n) = 10 us up to 10 tokens (flat below the first point), then 0.5 us per
# token up to 110 tokens (60 us) and on past it. GPU 1: twice as slow. Overheads 1, 2 us.
HAND = Cluster.init_by_curves([10.0, 110.0], [[10.0, 60.0], [20.0, 120.0]], [1.0, 2.0])


def test_cost_model_on_hand_made_curves():
    # One layer, 4 experts, top-1, B = 100 tokens: n = 100 * [0.5, 0.25, 0.25, 0] = [50, 25, 25, 0].
    loads = ExpertLoads(np.array([[2.0, 1.0, 1.0, 0.0]]), top_k=1)
    # GPU 0 holds experts 0, 3; GPU 1 holds 1, 2.
    p = Placement.init_by_mapping(np.array([[0, 3, 1, 2]]), 2)
    T = gpu_times(p, loads, HAND, 100.0)
    # GPU 0: 1 + t0(50) + 0 (expert 3 gets no token) = 1 + 10 + 0.5 * 40 = 31.
    # GPU 1: 2 + 2 * t1(25) = 2 + 2 * 2 * (10 + 0.5 * 15) = 72.
    assert T.tolist() == [[31.0, 72.0]]
    m = evaluate(p, loads, HAND, [100.0], with_lower_bound=False)[0]
    assert m.moe_time_us == 72.0
    assert m.imbalance == pytest.approx(72.0 / 51.5)  # max / mean of (31, 72)
    assert m.idle_fraction == pytest.approx(1 - 51.5 / 72.0)
    # Flat below the first point: B = 8 gives n = [4, 2, 2, 0]: GPU 0 1 + 10 = 11,
    # GPU 1 2 + 20 + 20 = 42. Past the last point: B = 400 gives n = [200, 100, 100, 0]:
    # GPU 0 1 + 60 + 0.5 * 90 = 106; GPU 1 2 + 2 * 2 * (10 + 0.5 * 90) = 222.
    assert gpu_times(p, loads, HAND, 8.0).tolist() == [[11.0, 42.0]]
    assert gpu_times(p, loads, HAND, 400.0).tolist() == [[106.0, 222.0]]


def test_cost_model_with_weighted_replicas_and_two_points():
    # 3 experts in 4 slots: expert 0 has replicas on GPU 0 (weight 3) and GPU 1 (weight 1).
    loads = ExpertLoads(np.array([[4.0, 2.0, 2.0]]), top_k=2)
    p = Placement.init_by_mapping(np.array([[0, 1, 0, 2]]), 2, replica_weights=np.array([[3.0, 1.0, 1.0, 1.0]]))
    # B = 50, top-2: n = 100 * [0.5, 0.25, 0.25] = [50, 25, 25]; expert 0 splits 37.5 / 12.5.
    # GPU 0: 1 + t0(37.5) + t0(25) = 1 + (10 + 0.5 * 27.5) + (10 + 0.5 * 15) = 42.25.
    # GPU 1: 2 + t1(12.5) + t1(25) = 2 + 2 * (10 + 1.25) + 2 * 17.5 = 59.5.
    assert gpu_times(p, loads, HAND, 50.0).tolist() == [[42.25, 59.5]]
    # B = 5: n = [5, 2.5, 2.5] -> [3.75, 2.5 | 1.25, 2.5] all below 10 tokens:
    # GPU 0: 1 + 10 + 10 = 21; GPU 1: 2 + 20 + 20 = 42. Weights 3 : 1 -> 0.75, 0.25.
    pts = evaluate(p, loads, HAND, [50.0, 5.0], [3.0, 1.0], with_lower_bound=False)
    assert [q.moe_time_us for q in pts] == [59.5, 42.0]
    assert [q.weight for q in pts] == [0.75, 0.25]
    from vibe.cost import weighted_moe_time

    assert weighted_moe_time(pts) == pytest.approx(0.75 * 59.5 + 0.25 * 42.0)


# ---- lower bounds where the optimum is known ------------------------------------------
# t(n) = n us on both GPUs from 1 token on (the curve through (1, 1) and (100, 100)).
UNIT = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0], [1.0, 100.0]])


def _all_plans(E: int, G: int):
    """Every assignment of E experts to G GPUs, E / G each, as physical maps [1, E]."""
    for perm in itertools.permutations(range(E)):  # over-counts (slot order): fine for E <= 6
        yield np.array([perm])


def test_bound_is_tight_where_the_optimum_is_known():
    # Experts of 4, 3, 2, 1 us on two identical GPUs, 2 slots each: {4, 1} and {3, 2}
    # both take 5 us, and no plan does better than half of the 10 us of work: 5 is
    # both the optimum and the bound.
    loads = ExpertLoads(np.array([[4.0, 3.0, 2.0, 1.0]]), top_k=1)
    lb = layer_lower_bounds(loads, UNIT, 10.0, 4)
    assert lb.tolist() == pytest.approx([5.0])
    best = min(gpu_times(Placement.init_by_mapping(m, 2), loads, UNIT, 10.0).max() for m in _all_plans(4, 2))
    assert best == pytest.approx(5.0)
    for policy in ("vibe", "exact"):
        p = place(loads, UNIT, policy, PlacementOptions(batch_tokens=(10.0,)))
        assert gpu_times(p, loads, UNIT, 10.0).max() == pytest.approx(5.0), policy


def test_bound_never_above_the_optimum_with_a_slow_gpu():
    # GPU 1 twice as slow: costs [4, 3, 2, 1] on GPU 0, [8, 6, 4, 2] on GPU 1. Of the six
    # ways to split them 2 / 2, GPU 0 {4, 3} + GPU 1 {2, 1} gives max(7, 6) = 7, the
    # others max(6, 8) = 8, max(5, 10), max(4, 12), ... : the optimum is 7.
    slow = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0], [2.0, 200.0]])
    loads = ExpertLoads(np.array([[4.0, 3.0, 2.0, 1.0]]), top_k=1)
    best = min(gpu_times(Placement.init_by_mapping(m, 2), loads, slow, 10.0).max() for m in _all_plans(4, 2))
    assert best == pytest.approx(7.0)
    lb = float(layer_lower_bounds(loads, slow, 10.0, 4)[0])
    # The fluid bound alone: GPU 0 does 1 token/us, GPU 1 0.5: 10 tokens need z * 1.5 >= 10.
    assert 10 / 1.5 - 1e-9 <= lb <= 7.0 + 1e-9
    for policy in ("vibe", "exact"):
        p = place(loads, slow, policy, PlacementOptions(batch_tokens=(10.0,)))
        assert gpu_times(p, loads, slow, 10.0).max() == pytest.approx(7.0), policy


def test_slot_floor_bound_binds_when_every_slot_pays_the_floor():
    # A flat curve: any token count costs 10 us on one GPU. 4 experts with tokens, 2
    # slots per GPU on 2 GPUs: each GPU runs 2 slots, 20 us, whatever the plan.
    flat = Cluster.init_by_curves([1.0, 100.0], [[10.0, 10.0], [10.0, 10.0]])
    loads = ExpertLoads(np.array([[5.0, 1.0, 1.0, 1.0]]), top_k=1)
    assert float(layer_lower_bounds(loads, flat, 8.0, 4)[0]) == pytest.approx(20.0)
    # With 2 replicas more (6 slots, 3 per GPU), 4 active experts still need 4 slots: a
    # GPU runs at least 2 of them, so 20 us again.
    assert float(layer_lower_bounds(loads, flat, 8.0, 6)[0]) == pytest.approx(20.0)


# ---- the local search never worsens its start, and finds what the greedy misses -------
def _row_problem(costs_eg: np.ndarray, S: int):
    """One row, one scenario: costs [E, G] -> arguments of construct / local_search."""
    E, G = costs_eg.shape
    costs = costs_eg[None, None].astype(np.float64)  # [K=1, X=1, E, G]
    items = np.arange(E)[None]  # one item per expert
    return costs, np.ones(1), items, np.zeros((1, G)), S


def _objective(costs, w, items, gpu, over) -> float:
    return float(tb.objective(tb.gpu_times(costs, items, gpu, over), w)[0])


def test_local_search_repairs_a_greedy_mistake():
    # Identical GPUs A, B with 3 slots each; item times 8, 7, 6, 5, 4, 0 (sum 30, so 15 is
    # the best possible: {8, 7, 0} and {6, 5, 4}). The construction takes the largest
    # first, to the GPU whose makespan grows least (ties: the one finishing earlier,
    # then the lower index): 8 -> A; 7 -> B (makespan 8, not 15); 6 -> B (13 < 14);
    # 5 -> A (13 < 18); 4 -> A (17 either way, same finish: lower index); 0 -> B (A is
    # full). A {8, 5, 4} = 17, B {7, 6, 0} = 13: makespan 17. Swapping 8 and 6 gives
    # A {6, 5, 4} = 15, B {8, 7, 0} = 15: the optimum, one swap away.
    c = np.array([8.0, 7.0, 6.0, 5.0, 4.0, 0.0])[:, None].repeat(2, axis=1)
    costs, w, items, over, S = _row_problem(c, 3)
    start = tb.construct(costs, w, items, over, S)
    assert _objective(costs, w, items, start, over) == 17.0
    better = tb.local_search(costs, w, items, start, over)
    assert _objective(costs, w, items, better, over) == 15.0
    assert np.bincount(better[0], minlength=2).tolist() == [3, 3]  # still 3 slots each
    # and through the policy, which runs construct + local search:
    loads = ExpertLoads(np.array([[8.0, 7.0, 6.0, 5.0, 4.0, 0.0]]), top_k=1)
    p = place(loads, UNIT, "vibe", PlacementOptions(batch_tokens=(30.0,)))
    # n = 30 * share = the item times; t(n) = n from 1 token on, 0 for the empty expert.
    assert gpu_times(p, loads, UNIT, 30.0).max() == pytest.approx(15.0)


@pytest.mark.parametrize("seed", range(8))
def test_local_search_never_worsens_and_ends_at_a_swap_optimum(seed):
    rng = np.random.default_rng(seed)
    K, G, S = int(rng.integers(1, 3)), int(rng.integers(2, 5)), int(rng.integers(1, 4))
    E = G * S
    costs = rng.gamma(1.5, 10.0, size=(K, 1, E, 1)) * rng.uniform(0.7, 1.5, size=(1, 1, 1, G))
    w = rng.dirichlet(np.ones(K))
    items = np.arange(E)[None]
    over = rng.uniform(0, 3, size=(1, G))
    start = tb.construct(costs, w, items, over, S)
    f0 = _objective(costs, w, items, start, over)
    gpu = tb.local_search(costs, w, items, start, over)
    f1 = _objective(costs, w, items, gpu, over)
    assert f1 <= f0 * (1 + 1e-12)
    assert np.bincount(gpu[0], minlength=G).tolist() == [S] * G
    # No single swap of two items on different GPUs lowers the weighted makespan.
    for a, b in itertools.combinations(range(E), 2):
        if gpu[0, a] == gpu[0, b]:
            continue
        trial = gpu.copy()
        trial[0, a], trial[0, b] = gpu[0, b], gpu[0, a]
        assert _objective(costs, w, items, trial, over) >= f1 * (1 - 1e-9), (a, b)


def test_local_search_stops_when_no_swap_gains(monkeypatch):
    # Four identical GPUs, 8 items of 5 us each, 2 per GPU: every GPU takes 10 us and
    # every swap changes nothing (df = 0, psi unchanged). The search must see that in
    # its first round and stop, not trade equal items until its round limit.
    c = np.full((8, 4), 5.0)
    costs, w, items, over, S = _row_problem(c, 2)
    start = tb.construct(costs, w, items, over, S)
    rounds = []
    real = tb._best_swaps
    monkeypatch.setattr(tb, "_best_swaps", lambda *a, **k: rounds.append(1) or real(*a, **k))
    gpu = tb.local_search(costs, w, items, start, over)
    assert np.array_equal(gpu, start)
    assert len(rounds) == 1


# ---- placement validation at its boundaries -------------------------------------------
def test_expert_id_equal_to_the_expert_count_is_rejected():
    # 2 experts: ids 0 and 1 are valid, 2 == E is not (nor -1).
    Placement(np.array([[0, 1, 1, 0]]), 2, 2)
    for bad in ([[0, 1, 2, 0]], [[0, 1, -1, 0]]):
        with pytest.raises(InputError, match="expert ids must lie in 0..1"):
            Placement(np.array(bad), 2, 2)
    # two layers, the bad id in the first row only
    with pytest.raises(InputError, match="expert ids"):
        Placement(np.array([[0, 2, 1, 0], [0, 1, 1, 0]]), 2, 2)


def test_one_expert_without_replica_weight_is_rejected():
    # Expert 0's two replicas both weigh 0 while expert 1's weigh 1: expert 0 would get
    # no share of its tokens, so the plan is invalid although not every expert is at 0.
    with pytest.raises(InputError, match="sum to more than 0"):
        Placement(np.array([[0, 0, 1, 1]]), 2, 2, replica_weights=np.array([[0.0, 0.0, 1.0, 1.0]]))
    # one replica at 0 is fine: its sibling takes all the tokens
    p = Placement(np.array([[0, 0, 1, 1]]), 2, 2, replica_weights=np.array([[0.0, 2.0, 1.0, 1.0]]))
    assert p.slot_share().tolist() == [[0.0, 1.0, 0.5, 0.5]]


# ---- metrics and weights of the cost model, by hand ----------------------------------
def test_point_metrics_by_hand():
    from vibe.cost import metrics_from_gpu_times

    # two layers: max 0.5 and 0.25 (sum 0.75); means 0.375 and 0.25 (sum 0.625)
    T = np.array([[0.5, 0.25], [0.25, 0.25]])
    m = metrics_from_gpu_times(T, 64, 0.5, np.array([0.25, 0.125]))
    assert m.moe_time_us == 0.75 and m.imbalance == pytest.approx(0.75 / 0.625)
    assert m.idle_fraction == pytest.approx(1 - 0.625 / 0.75)
    assert m.layer_times_us.tolist() == [0.5, 0.25] and m.gpu_times_us is T
    assert m.ratio_to_lb == pytest.approx(0.75 / 0.375)
    assert m.to_dict() == {"batch_tokens": 64.0, "weight": 0.5, "moe_time_us": 0.75, "lower_bound_us": 0.375,
                           "ratio_to_lb": 2.0, "imbalance": pytest.approx(1.2),
                           "idle_fraction": pytest.approx(1 / 6)}
    # nothing to do at all: balanced by definition, no idle time, no ratio
    z = metrics_from_gpu_times(np.zeros((1, 2)), 8)
    assert (z.imbalance, z.idle_fraction, z.lower_bound_us, z.ratio_to_lb, z.weight) == (1.0, 0.0, None, None, 1.0)


def test_weights_are_checked_and_normalized():
    from vibe.cost import normalize_weights
    from vibe.errors import VibeError

    assert normalize_weights([100, 10], [1, 3]).tolist() == [0.25, 0.75]
    assert normalize_weights([100, 10], [0, 2]).tolist() == [0.0, 1.0]  # a zero weight is allowed
    assert normalize_weights([100, 10], [0.5, 0.5]).tolist() == [0.5, 0.5]
    assert normalize_weights([100, 10], None).tolist() == [0.5, 0.5]
    cases = [([], None, "at least one operating point (--batch-tokens) is needed"),
             ([0], None, "batch tokens must be > 0"), ([-5, 10], None, "batch tokens must be > 0"),
             ([1, 2], [1], "1 weights for 2 batch sizes"),
             ([1, 2], [-1, 2], "weights must be >= 0 and not all zero"),
             ([1, 2], [0, 0], "weights must be >= 0 and not all zero"),
             ([1, 2], [np.nan, 1], "weights must be >= 0 and not all zero"),
             ([1, 2], [np.inf, 1], "weights must be >= 0 and not all zero")]
    for b, w, msg in cases:
        with pytest.raises(VibeError) as exc:
            normalize_weights(b, w)
        assert str(exc.value) == msg, (b, w)


def test_gpu_times_take_leading_axes():
    from vibe.cost import gpu_times_from_slot_tokens

    # [K=2, L=1, P=4] slots on the two HAND GPUs (2 slots each) = each [L, P] on its own
    tokens = np.array([[[50.0, 0.0, 25.0, 25.0]], [[4.0, 0.0, 2.0, 2.0]]])
    T = gpu_times_from_slot_tokens(HAND, tokens)
    assert T.shape == (2, 1, 2)
    assert T.tolist() == [[[31.0, 72.0]], [[11.0, 42.0]]]  # as in test_cost_model_on_hand_made_curves


# ---- the step-time predictor, by hand --------------------------------------------------
def _predictor_setup(num_gpus: int = 4):
    """4 GPUs on 2 nodes; t(n) = n us (GPU 3: 2n) from 1 token on, no overhead; one slot
    per GPU holding experts 0..3 in both MoE layers of a 3-layer model (layer 0 dense)."""
    from vibe.sim.predictor import GpuSpec, Predictor

    us = np.array([[1.0, 100.0]] * num_gpus)
    us[-1] *= 2
    cluster = Cluster.init_by_curves([1.0, 100.0], us, 0.0, nodes=[g // 2 for g in range(num_gpus)])
    E = 4
    placement = Placement.init_by_mapping(np.tile(np.arange(E), (2, 1)), num_gpus, layer_ids=(1, 2))
    model = ModelSpec("hand", 3, (1, 2), E, 1, 1000, 8, 1e6, 2e6, 100.0, 10.0, 2.0)
    gpu = GpuSpec(flops=1e12, hbm_bytes_s=1e12, layer_overhead_us=10.0, gpus_per_node=2, nvlink_bytes_s=1e9,
                  net_bytes_s=0.5e9, a2a_latency_us=5.0, a2a_bytes_per_token=3.0)
    return Predictor(model, cluster, placement, gpu, table_tokens=64)


def test_dense_part_by_hand():
    pred = _predictor_setup()
    # 400 tokens attending 8000 context pairs over 4 GPUs: t = 100, c = 2000 per GPU.
    # MoE layer (1e6 params): flops 2e6 * 100 + 10 * 2000 = 2.0002e8 -> 200.02 us; bytes
    # 2e6 + 100 * 2000 = 2.2e6 -> 2.2 us; compute-bound: 10 + 200.02 = 210.02 us.
    # Dense layer (2e6): 4.0002e8 -> 400.02 us -> 410.02 us. Two MoE + one dense: 830.06.
    assert pred.dense_us(400, 8000) == pytest.approx(830.06, rel=1e-12)
    assert pred.dense_us(400, 8000, 2.0) == pytest.approx(1660.12, rel=1e-12)
    # No token, context 16e6 (4e6 per GPU): bytes 2e6 + 100 * 4e6 = 4.02e8 -> 402 us against
    # flops 10 * 4e6 -> 40 us: memory-bound, 412 us; dense 4e6 + 4e8 -> 404 + 10 = 414.
    assert pred.dense_us(0, 16e6) == pytest.approx(2 * 412 + 414, rel=1e-12)
    # nothing at all: the weights are still read, 2 bytes each: 2 + 10 and 4 + 10 us
    assert pred.dense_us(0, 0) == pytest.approx(2 * 12 + 14, rel=1e-12)


def test_step_time_by_hand():
    pred = _predictor_setup()
    counts = np.array([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 0.0, 8.0]])
    st = pred.step(400, 8000, counts)
    # MoE: layer 1 [10, 20, 30, 2 * 40] -> 80 (GPU 3); layer 2 [0, 0, 0, 16] -> 16 (GPU 3).
    assert st.moe_us == 96.0 and st.slowest_gpu.tolist() == [3, 3]
    # idle: mean GPU times 35 and 4, so 1 - 39 / 96
    assert st.idle_fraction == pytest.approx(1 - 39 / 96, rel=1e-12)
    # all-to-all per layer: 2 x 5 us + the most tokens one GPU receives x 1000 hidden x 3 B
    # x (1/4 of them over NVLink at 1e9 B/s + 2/4 over the network at 0.5e9 B/s)
    # = 3.75 us per token: (10 + 40 * 3.75) + (10 + 8 * 3.75) = 160 + 40 = 200
    assert st.a2a_us == pytest.approx(200.0, rel=1e-12)
    assert st.dense_us == pytest.approx(830.06, rel=1e-12)
    assert st.total_us == pytest.approx(96 + 200 + 830.06, rel=1e-12)
    # GPU 3 four times faster for now: layer 1 [10, 20, 30, 20] -> 30 (GPU 2), layer 2 -> 4
    fast = pred.step(400, 8000, counts, np.array([1.0, 1.0, 1.0, 0.25]), dense_scale=2.0)
    assert fast.moe_us == 34.0 and fast.slowest_gpu.tolist() == [2, 3]
    assert fast.dense_us == pytest.approx(1660.12, rel=1e-12)
    # a fractional count is interpolated, not looked up: 2.5 tokens take 2.5 us
    half = pred.step(1, 0, np.array([[2.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert half.moe_us == 2.5 and half.idle_fraction == pytest.approx(1 - 2.5 / 4 / 2.5, rel=1e-12)
    # past the 64-token table: 100 tokens on GPU 0 take 100 us
    assert pred.step(1, 0, np.array([[100.0, 0, 0, 0], [0, 0, 0, 0]])).moe_us == 100.0
    # no token routed: no MoE time and no idle time
    assert pred.step(1, 0, np.zeros((2, 4))).idle_fraction == 0.0


def test_one_gpu_has_no_all_to_all():
    from vibe.sim.predictor import GpuSpec, Predictor

    cluster = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0]])
    placement = Placement.init_by_mapping(np.array([[0, 1]]), 1)
    model = ModelSpec("one", 1, (0,), 2, 1, 1000, 8, 0.0, 0.0, 0.0, 0.0)
    st = Predictor(model, cluster, placement, GpuSpec(layer_overhead_us=0.0)).step(3, 0, np.array([[1.0, 2.0]]))
    assert st.a2a_us == 0.0 and st.moe_us == 3.0 and st.idle_fraction == 0.0 and st.total_us == 3.0
    # two GPUs on one node: all-to-all over NVLink only, 1000 x 3 B x (1/2) / 300e9 B/s per token
    two = Cluster.init_by_curves([1.0, 100.0], [[1.0, 100.0]] * 2)
    st = Predictor(model, two, Placement.init_by_mapping(np.array([[0, 1]]), 2), GpuSpec(layer_overhead_us=0.0)
                   ).step(3, 0, np.array([[1.0, 2.0]]))
    assert st.a2a_us == pytest.approx(2 * 15.0 + 2 * 1e6 * 1000 * 3.0 * 0.5 / 300e9, rel=1e-12)
    # a placement for another model is refused, naming the placement
    with pytest.raises(InputError) as exc:
        Predictor(ModelSpec("three", 1, (0,), 3, 1, 1000, 8, 0.0, 0.0, 0.0, 0.0), cluster, placement)
    assert str(exc.value) == "placement: is for 1 MoE layers x 2 experts, but model three has 1 x 3"


def test_routers_by_mode():
    from vibe.errors import VibeError
    from vibe.model import RoutingTrace
    from vibe.sim.predictor import make_router

    loads = ExpertLoads(np.array([[1.0, 3.0], [2.0, 2.0]]), top_k=1)
    placement = Placement.init_by_mapping(np.array([[0, 1], [0, 1]]), 2)
    rng = np.random.default_rng(0)
    # expected: B * top_k * share, no noise
    assert make_router(loads, placement, mode="expected")(8, rng).tolist() == [[2.0, 6.0], [4.0, 4.0]]
    # sample without a trace: 8 routings per layer drawn from the shares
    c = make_router(loads, placement)(8, rng)
    assert c.sum(axis=1).tolist() == [8.0, 8.0] and (c >= 0).all()
    assert make_router(loads, placement)(0, rng).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # sample with a trace: whole sequences of it (here every token picks expert 0, then 1)
    trace = RoutingTrace(np.array([[[0]] * 3, [[1]] * 3], np.int16), np.arange(4), 2, (0, 1))
    assert make_router(loads, placement, trace)(3, rng).tolist() == [[3.0, 0.0], [0.0, 3.0]]
    with pytest.raises(VibeError) as exc:
        make_router(loads, placement, mode="typo")
    assert str(exc.value) == "unknown routing mode 'typo' (sample, expected)"


def test_profile_router_above_the_exact_limit_keeps_mean_and_total(tmp_path):
    from vibe.model import RoutingTrace
    from vibe.sim.predictor import load_routing_trace, profile_router

    # 1000 routings over 2 experts (far above 2 per expert): the Gaussian limit, rounded.
    # Each count is rounded once, so a layer's total is 1000 within 1; the mean over 400
    # draws is 250 / 750 within 4 standard errors (sd of one draw: sqrt(1000 * 0.1875) = 13.7).
    loads = ExpertLoads(np.array([[1.0, 3.0]]), top_k=1)
    route, rng = profile_router(loads), np.random.default_rng(1)
    draws = np.stack([route(1000, rng) for _ in range(400)])[:, 0]
    assert np.all(np.abs(draws.sum(axis=1) - 1000) <= 1) and np.all(draws == np.rint(draws))
    assert np.all(np.abs(draws.mean(axis=0) - [250, 750]) < 4 * 13.7 / np.sqrt(400))
    assert 10 < draws[:, 0].std() < 17
    # a trace file is read back through the simulator's loader
    trace = RoutingTrace(np.array([[[0]] * 3], np.int16), np.arange(4), 2, (5,))
    trace.save(tmp_path / "t.npz")
    back = load_routing_trace(tmp_path / "t.npz")
    assert back.layer_ids == (5,) and np.array_equal(back.experts, trace.experts)
