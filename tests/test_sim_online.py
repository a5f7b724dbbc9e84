"""Time-varying routing, lost GPUs and online policies in the simulator (vibe.sim.scenario,
vibe.sim.online): switch times, no tokens on a lost GPU, move / stall accounting, the plot.

All but the last test use synthetic inputs (no ../shared needed): the Mixtral-8x7B shape
(32 layers x 8 experts, top-2) on 4 GPUs, small enough for a repair in milliseconds."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from vibe.cli import main
from vibe.model import ExpertLoads, Placement
from vibe.policies import PlacementOptions, place
from vibe.sim import PRESETS, HardwareModel, Workload, poisson_workload, simulate
from vibe.sim.engine import online_totals, summarize, summarize_windows
from vibe.sim.hardware import Throttle, speed_factors, plan_drift
from vibe.sim.online import (OnlineConfig, changed_slots_per_gpu, make_online, migration_stall_s,
                             model_expert_bytes)
from vibe.sim.predictor import Predictor
from vibe.sim.scenario import GpuLoss, RoutingSwitch, Scenario, orphans, phase_at
from vibe.synth import synth_cluster

MIX = PRESETS["mixtral-8x7b"]
L, E = 32, 8


def _loads(hot: int, skew: float = 50.0) -> ExpertLoads:
    """Every layer sends `skew` x more tokens to expert `hot` than to each other expert."""
    c = np.ones((L, E))
    c[:, hot] = skew
    return ExpertLoads(c, 2, tuple(range(L)))


@pytest.fixture(scope="module")
def setup():
    cluster = synth_cluster(4, scenario="power-cap", seed=0)
    loads = _loads(0, 3.0)
    plan = place(loads, cluster, "vibe", PlacementOptions(redundant=4))  # 3 slots per GPU: survives a loss
    return cluster, loads, plan


class Recorder:
    """An online policy that changes nothing and records what the engine shows it."""

    name = "record"

    def __init__(self, placement: Placement):
        self.placement = placement
        self.steps: list[tuple[float, np.ndarray, Placement]] = []  # (clock after the step, counts, plan)
        self.lost: list[tuple[tuple[int, ...], Placement]] = []

    def observe(self, t_s, counts, gpu_us):
        self.steps.append((t_s, np.array(counts), self.placement))
        return None

    def gpu_lost(self, down, placement):
        self.placement = placement
        self.lost.append((down, placement))
        return None


def _one_long_request(output_len: int) -> Workload:
    """One request at t = 0 decoding back to back: every step starts where the last ended."""
    return Workload(np.array([0.0]), np.array([8]), np.array([output_len]))


def test_phase_at_worked_example():
    times = np.array([1.0, 2.5])
    assert [phase_at(times, t) for t in (0.0, 0.99, 1.0, 2.0, 2.5, 9.0)] == [0, 0, 1, 1, 2, 2]


def test_switches_route_from_their_time_on(setup):
    cluster, loads, plan = setup
    t1, t2 = 0.05, 0.12
    sc = Scenario((RoutingSwitch(t2, _loads(2)), RoutingSwitch(t1, _loads(1))))  # given out of order
    rec = Recorder(plan)
    res = simulate(_one_long_request(600), cluster, _loads(0), plan, MIX, routing="expected", scenario=sc, online=rec)
    starts = [0.0] + [t for t, _, _ in rec.steps[:-1]]
    hot = [int(np.argmax(c[0])) for _, c, _ in rec.steps]
    want = [phase_at(np.array([t1, t2]), s) for s in starts]  # expert k is hot in phase k
    assert hot == want and set(hot) == {0, 1, 2}
    assert [e["t_s"] for e in res.events if e["kind"] == "switch"] == [t1, t2]


def test_lost_gpu_gets_no_tokens_after_the_loss(setup):
    cluster, loads, plan = setup
    at, detect = 0.05, 0.3
    sc = Scenario(losses=(GpuLoss(1, at),), detect_s=detect)
    rec = Recorder(plan)
    w = poisson_workload(40, 1.0, 64, 16, seed=0)
    res = simulate(w, cluster, loads, plan, MIX, scenario=sc, online=rec)
    assert res.finished.all()  # serving continued
    (down, after), = rec.lost
    assert down == (1,) and not orphans(after, down).any()
    lost_slots = after.gpu_of_slot == 1
    before_tokens, prev, after_steps = 0.0, 0.0, 0
    for t, counts, p in rec.steps:
        slot = Predictor(MIX, cluster, p, table_tokens=0).slot_tokens(counts)
        if t <= at:
            before_tokens += slot[:, lost_slots].sum()
        elif prev >= at:  # a step begun after the loss (the one in flight at `at` completes)
            assert t >= at + detect  # serving stalled until the loss was detected
            assert slot[:, lost_slots].sum() == 0
            after_steps += 1
        prev = t
    assert after_steps > 10
    assert before_tokens > 0  # the GPU did serve before
    ev = {e["kind"]: e for e in res.events}
    assert ev["loss"]["stall_s"] == pytest.approx(detect, abs=0.05)
    assert ev["rehome"]["moves"] == int(orphans(plan, (1,)).sum()) > 0


def test_throttle_multiplies_from_its_start():
    plan = plan_drift(HardwareModel(throttles=(Throttle(2, 10.0, 0.3, ramp_s=4.0),)), 4)
    rng = np.random.default_rng(0)
    assert speed_factors(plan, 9.9, rng).tolist() == [1, 1, 1, 1]
    assert speed_factors(plan, 12.0, rng)[2] == pytest.approx(1.15)
    assert speed_factors(plan, 20.0, rng).tolist() == pytest.approx([1, 1, 1.3, 1])


def test_stall_and_changed_slots_worked_example():
    assert migration_stall_s(np.array([3, 1, 0]), 10**9, 50.0) == pytest.approx(0.06)
    old = Placement.init_by_mapping(np.array([[0, 1, 2, 3], [0, 1, 2, 3]]), 2)
    new = Placement.init_by_mapping(np.array([[0, 1, 3, 2], [1, 0, 2, 3]]), 2)
    assert changed_slots_per_gpu(old, new).tolist() == [2, 2]
    assert model_expert_bytes(MIX) == 3 * 4096 * 14336 * 2


class Timed:
    """Wraps a policy: records (clock at observe, action) to check the engine charges stalls."""

    def __init__(self, inner):
        self.inner, self.name, self.log = inner, inner.name, []

    def observe(self, t_s, counts, gpu_us):
        a = self.inner.observe(t_s, counts, gpu_us)
        self.log.append((t_s, a))
        return a

    def gpu_lost(self, down, placement):
        return self.inner.gpu_lost(down, placement)


@pytest.mark.parametrize("policy", ["periodic", "vibe"])
def test_policies_move_and_are_charged_their_stall(setup, policy):
    cluster, loads, plan = setup
    cfg = OnlineConfig(policy, period_steps=40, max_moves=6, link_gbps=200.0, observe_tokens=64, detect_window=4,
                       rounds=3, round_gap_steps=20, options=PlacementOptions(redundant=4))
    pol = Timed(make_online(cfg, cluster, loads, plan, MIX))
    sc = Scenario((RoutingSwitch(0.3, _loads(5)),))
    w = poisson_workload(60, 1.5, 64, 16, seed=1)
    res = simulate(w, cluster, loads, plan, MIX, scenario=sc, online=pol)
    acts = [(t, a) for t, a in pol.log if a is not None]
    assert acts, "the policy never acted"
    size = model_expert_bytes(MIX)
    for _, a in acts:
        assert a.bytes == a.moves * size and a.stall_s > 0
        assert a.stall_s <= a.moves * size / 200e9 + 1e-12  # the busiest GPU's share, not more
    clocks = [t for t, _ in pol.log]
    for k, (t, a) in enumerate(pol.log[:-1]):
        if a is not None:
            assert clocks[k + 1] - t >= a.stall_s  # the next step starts after the stall
    tot = online_totals(res)
    assert tot["moves"] == sum(a.moves for _, a in acts) and tot["actions"] == len(acts)
    assert tot["stall_s"] == pytest.approx(sum(a.stall_s for _, a in acts))
    if policy == "vibe":
        assert all(a.moves <= 6 for _, a in acts)
        assert all(t >= 0.3 for t, _ in acts)  # fired by the switch, not before
        kinds = ["round" if a.reason.startswith("repair round") else "drift" for _, a in acts]
        assert kinds[0] == "drift" and "round" in kinds  # 6 moves do not finish the job: more rounds
        runs, k = [], 0  # rounds after each drift: at most rounds - 1 = 2
        for x in kinds:
            k = 0 if x == "drift" else k + 1
            runs.append(k)
        assert max(runs) <= 2
    else:
        steps = summarize(res, 1e9, 1e9)["steps"]["steps"]
        assert len(acts) <= steps // 40


def test_static_policy_never_moves(setup):
    cluster, loads, plan = setup
    pol = make_online(OnlineConfig("none"), cluster, loads, plan, MIX)
    sc = Scenario((RoutingSwitch(0.1, _loads(5)),))
    res = simulate(poisson_workload(40, 0.5, 64, 16, seed=0), cluster, loads, plan, MIX, scenario=sc, online=pol)
    assert online_totals(res)["moves"] == 0 and pol.placement is plan


def test_windows_split_requests_by_arrival(setup):
    cluster, loads, plan = setup
    w = poisson_workload(40, 2.0, 64, 16, seed=0)
    res = simulate(w, cluster, loads, plan, MIX)
    rows = summarize_windows(res, 1e9, 1e9, 0.5)
    assert [r["start_s"] for r in rows] == [0.0, 0.5, 1.0, 1.5]
    assert sum(r["requests"] for r in rows) == w.num_requests
    assert all(r["slo_attainment"] == 1.0 for r in rows)  # SLOs no run can miss
    tight = summarize_windows(res, 1e-6, 1e9, 0.5)
    assert all(r["slo_attainment"] == 0.0 for r in tight)


def test_cli_online_plot_and_json(tmp_path, capsys, setup):
    cluster, loads, plan = setup
    cluster.save(tmp_path / "c.json")
    loads.save(tmp_path / "l.json")
    _loads(6).save(tmp_path / "l6.json")
    plan.save(tmp_path / "p.json")
    args = ["simulate", "--cluster", str(tmp_path / "c.json"), "--loads", str(tmp_path / "l.json"),
            "--placement", str(tmp_path / "p.json"), "--qps", "40", "--duration", "1.2", "--input-len", "64",
            "--output-len", "16", "--switch", f"0.4:{tmp_path / 'l6.json'}", "--lose-gpu", "3:0.8",
            "--throttle", "0:0.6:0.2", "--detect-delay", "0.1", "--online", "none", "vibe", "--window", "0.3",
            "--plot", str(tmp_path / "slo.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "switch: routing -> l6.json" in out and "GPU 3 lost" in out and "| vibe |" in out
    png = (tmp_path / "slo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert main(args + ["--json"]) == 0
    js = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert set(js["policies"]) == {"none", "vibe"}
    assert [e["kind"] for e in js["events"]].count("loss") == 1
    assert len(js["policies"]["vibe"]["windows"]) == 4
    bad = args[:-2] + ["--lose-gpu", "9:0.5"]
    assert main(bad) == 2
    assert "not a rank" in capsys.readouterr().err
    assert main(args[:-2] + ["--switch", "x:y"]) == 2


def test_esft_switch_drifts_vibe_repairs_on_6_of_26_layers(esft_loads, esft_law_loads):
    """Real ESFT routing: a plan for 'intent' meets 'law' traffic; the vibe policy's
    workload detector fires after the switch and its repair lowers the predicted time.
    On 6 of the 26 MoE layers (1, 6, ..., 26: every 5th, the first to the last) and
    DeepSeek-V2-Lite with just those MoE layers: an ESFT repair costs about 0.1 s a layer,
    and this is the one test of the detector and the repair on real traffic in the
    simulator. One repair round (the rounds are tested above)."""
    rows = range(0, 26, 5)
    intent, law = esft_loads.select_layers(rows), esft_law_loads.select_layers(rows)
    assert intent.layer_ids == law.layer_ids == (1, 6, 11, 16, 21, 26)
    cluster = synth_cluster(8, scenario="power-cap", seed=0)
    opts = PlacementOptions()  # no replicas: the repair's chain search is 3x cheaper on 8 slots per GPU than on 10
    plan = place(intent, cluster, "vibe", opts)
    lite = PRESETS["deepseek-v2-lite"]
    dense = lite.num_dense_layers
    model = dataclasses.replace(lite, num_layers=dense + len(rows), moe_layer_ids=tuple(range(dense, dense + len(rows))))
    pol = Timed(make_online(OnlineConfig("vibe", max_moves=16, rounds=1, options=opts), cluster, intent, plan, model))
    sc = Scenario((RoutingSwitch(0.6, law),))
    simulate(poisson_workload(100, 1.5, 512, 16, seed=0), cluster, intent, plan, model, scenario=sc, online=pol)
    acts = [(t, a) for t, a in pol.log if a is not None]
    assert acts and all(t > 0.6 for t, _ in acts) and all(a.moves <= 16 for _, a in acts)
    assert "workload drift" in acts[0][1].reason
    before, after = (float(x.replace(",", "")) for x in re.search(r"predicted ([\d,.]+) -> ([\d,.]+) us",
                                                                   acts[0][1].reason).groups())
    assert after < before


def test_events_past_the_end_of_the_arrivals_warn(tmp_path, capsys, setup):
    cluster, loads, plan = setup
    for name, obj in (("c.json", cluster), ("l.json", loads), ("p.json", plan)):
        obj.save(tmp_path / name)
    base = ["simulate", "--cluster", str(tmp_path / "c.json"), "--loads", str(tmp_path / "l.json"),
            "--placement", str(tmp_path / "p.json"), "--qps", "40", "--duration", "0.5", "--input-len", "64",
            "--output-len", "8", "--window", "0.25"]
    assert main(base + ["--switch", f"2:{tmp_path / 'l.json'}", "--throttle", "0:0.1:0.2"]) == 0
    err = capsys.readouterr().err
    assert "--switch at 2 s is past the end of the arrivals" in err and "--throttle" not in err
    assert main(base + ["--lose-gpu", "1:0.5"]) == 0
    assert "--lose-gpu at 0.5 s is past the end" in capsys.readouterr().err
