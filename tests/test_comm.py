"""The communication term: each GPU's dispatch + combine time from the tokens it receives
(vibe.cost.CommModel), the cluster file's optional network block, the solver balancing
compute + comm, and the simulator's all-to-all calling the same function."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vibe.cli import main
from vibe.cost import (comm_model, comm_times_from_slot_tokens, evaluate, gpu_times, gpu_times_from_slot_tokens,
                       slot_tokens, weighted_moe_time)
from vibe.errors import InputError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.model.cluster import DEFAULT_HIDDEN, NETWORK_DEFAULTS
from vibe.policies import PlacementOptions, place
from vibe.sim.models import PRESETS
from vibe.sim.predictor import Predictor
from vibe.synth import synth_cluster, synth_loads, synth_loads_for_model

# The worked example (docs/cost-model.md): 2 nodes x 2 GPUs, hidden 1000, fp8 dispatch
# (1 B) + bf16 combine (2 B) = 3000 B per token, NVLink 400 GB/s, network 50 GB/s, 5 us
# per all-to-all. A GPU receiving r tokens gets r/4 from itself, r/4 from its node peer
# and r/2 from the other node: C = 2 * 5 + r * 3000 * (1/4 / 400e9 + 2/4 / 50e9) s.
NET = {"intra_node_GBps": 400, "inter_node_GBps": 50, "latency_us": 5, "hidden": 1000,
       "dispatch_bytes": 1, "combine_bytes": 2}


def two_by_two(network=NET) -> Cluster:
    # t(n) = n / 10 us from 100 tokens up (flat 10 us below), no overhead
    c = Cluster.init_by_curves([100, 1000], np.tile([10.0, 100.0], (4, 1)), nodes=[0, 0, 1, 1])
    return c if network is None else c.with_network(network)


def test_worked_example_rate_and_latency():
    cm = comm_model(two_by_two())
    # 1000 tokens: 250 x 3000 B over 400 GB/s = 1.875 us, 500 x 3000 B over 50 GB/s = 30 us
    assert cm.times(np.array([1000.0, 0, 0, 0])) == pytest.approx([41.875, 10, 10, 10], rel=1e-12)
    assert cm.us_per_token == pytest.approx(np.full(4, 0.031875), rel=1e-12)


def test_worked_example_through_a_placement():
    loads = ExpertLoads(counts=np.array([[4.0, 2.0, 1.0, 1.0]]), top_k=1, layer_ids=(0,))
    plan = Placement.init_by_mapping(np.array([[0, 1, 2, 3]]), 4, 4, (0,), "linear")
    # B = 800: experts get 400, 200, 100, 100 tokens; compute 40, 20, 10, 10 us
    T = gpu_times(plan, loads, two_by_two(), 800)
    assert T[0] == pytest.approx([40 + 22.75, 20 + 16.375, 10 + 13.1875, 10 + 13.1875], rel=1e-12)
    assert gpu_times(plan, loads, two_by_two(None), 800)[0] == pytest.approx([40, 20, 10, 10], rel=1e-12)


def test_unequal_nodes_and_one_gpu():
    # node 0 holds 3 GPUs, node 1 one: the lone GPU gets everything but its own share over the network
    c = Cluster.init_by_curves([1, 2], np.ones((4, 2)), nodes=[0, 0, 0, 1]).with_network(NET)
    rate = comm_model(c).us_per_token
    assert rate[:3] == pytest.approx(1e6 * 3000 * (2 / 4 / 400e9 + 1 / 4 / 50e9), rel=1e-12)
    assert rate[3] == pytest.approx(1e6 * 3000 * (3 / 4 / 50e9), rel=1e-12)
    one = Cluster.init_by_curves([1, 2], np.ones((1, 2))).with_network(NET)
    assert comm_model(one).times(np.array([123.0])) == pytest.approx([0.0])  # no all-to-all on one GPU


def test_file_without_network_block_has_no_comm_term(tmp_path):
    c = synth_cluster(16, scenario="fleet", seed=1)
    c.save(tmp_path / "c.json")
    back = Cluster.load(tmp_path / "c.json")
    assert back.network is None and comm_model(back) is None and "network" not in json.loads(
        (tmp_path / "c.json").read_text())
    tok = np.random.default_rng(0).random((3, 16 * 4)) * 50
    assert np.array_equal(comm_times_from_slot_tokens(back, tok), np.zeros((3, 16)))
    assert np.array_equal(gpu_times_from_slot_tokens(back, tok, comm=True), gpu_times_from_slot_tokens(back, tok))


def test_empty_network_block_takes_documented_defaults(tmp_path):
    c = synth_cluster(16, scenario="fleet", seed=1, gpus_per_node=8)  # expert.hidden 7168
    obj = c.to_dict()
    obj["network"] = {}
    (tmp_path / "c.json").write_text(json.dumps(obj))
    back = Cluster.load(tmp_path / "c.json")
    assert back.network == {} and back.network_params()["hidden"] == DEFAULT_HIDDEN
    d = NETWORK_DEFAULTS
    want = 1e6 * 7168 * 3 * (7 / 16 / (d["intra_node_GBps"] * 1e9) + 8 / 16 / (d["inter_node_GBps"] * 1e9))
    assert comm_model(back).us_per_token == pytest.approx(np.full(16, want), rel=1e-12)
    assert comm_model(back).latency_us == pytest.approx(np.full(16, 2 * d["latency_us"]))
    back.save(tmp_path / "again.json")  # the block survives a rewrite
    assert Cluster.load(tmp_path / "again.json").network == {}


def test_hidden_from_expert_block_network_block_wins():
    c = synth_cluster(8, scenario="identical").with_gpus(synth_cluster(8, scenario="identical").gpus,
                                                        expert={"hidden": 4096})
    assert c.with_network().network_params()["hidden"] == 4096
    assert c.with_network({"hidden": 2048}).network_params()["hidden"] == 2048
    # the simulator's model hidden size only fills a gap the file leaves
    bare = Cluster.init_by_curves([1, 2], np.ones((8, 2))).with_network()
    assert comm_model(bare, hidden=1000).us_per_token[0] == pytest.approx(1e6 * 3000 * 7 / 8 / 450e9, rel=1e-12)


@pytest.mark.parametrize("key,value", [("inter_node_GBps", -50), ("intra_node_GBps", 0), ("latency_us", -1),
                                       ("dispatch_bytes", "1"), ("hidden", True), ("combine_bytes", float("nan"))])
def test_bad_network_values_one_line_error_naming_the_file(tmp_path, key, value):
    obj = synth_cluster(4, scenario="identical").to_dict()
    obj["network"] = {key: value}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(InputError) as exc:
        Cluster.load(path)
    msg = str(exc.value)
    assert str(path) in msg and f"network.{key}" in msg and "\n" not in msg


def test_bad_network_block_from_the_cli(tmp_path, capsys):
    obj = synth_cluster(4, scenario="identical").to_dict()
    obj["network"] = {"inter_node_GBps": -50}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    synth_loads(2, 8, 2, seed=0).save(tmp_path / "l.json")
    rc = main(["place", "--cluster", str(path), "--loads", str(tmp_path / "l.json"), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert rc != 0 and "bad.json" in err and "inter_node_GBps" in err and not (tmp_path / "p.json").exists()
    obj["network"] = [1, 2]
    path.write_text(json.dumps(obj))
    with pytest.raises(InputError, match="'network' must be an object"):
        Cluster.load(path)


@pytest.mark.parametrize("G,per_node,scenario,redundant", [(16, 8, "fleet", 0), (32, 8, "power-cap", 0),
                                                          (16, 4, "fleet", 16), (8, 8, "identical", 8)])
def test_vibe_never_worse_than_eplb_under_the_comm_model(G, per_node, scenario, redundant):
    cluster = synth_cluster(G, scenario=scenario, seed=2, gpus_per_node=per_node).with_network()
    loads = synth_loads(3, 64, 8, seed=G)
    opts = PlacementOptions(redundant=redundant, batch_tokens=(128.0 * G, 16.0 * G))
    f = {p: weighted_moe_time(evaluate(place(loads, cluster, p, opts), loads, cluster, opts.batch_tokens,
                                       with_lower_bound=False)) for p in ("vibe", "eplb")}
    assert f["vibe"] <= f["eplb"] * (1 + 1e-9)


def test_comm_aware_plan_balances_what_the_comm_model_charges():
    # 32 GPUs, decode-sized step: the all-to-all is a large share; planning with it beats planning without
    cluster = synth_cluster(32, scenario="fleet", seed=3, gpus_per_node=8)
    loads = synth_loads(4, 256, 8, seed=3)
    opts = PlacementOptions(batch_tokens=(32.0 * 128,))
    on = cluster.with_network()
    blind = place(loads, cluster, "vibe", opts)
    aware = place(loads, on, "vibe", opts)
    f = [evaluate(p, loads, on, opts.batch_tokens, with_lower_bound=False)[0].moe_time_us for p in (blind, aware)]
    assert f[1] < f[0]


def test_simulator_all_to_all_is_the_cost_function():
    model = PRESETS["deepseek-v2-lite"]
    loads = synth_loads_for_model("deepseek-v2-lite", seed=0)
    cluster = synth_cluster(16, scenario="power-cap", seed=3, gpus_per_node=8).with_network({"latency_us": 7})
    placement = place(loads, cluster, "eplb", PlacementOptions(redundant=0))
    pred = Predictor(model, cluster, placement)
    counts = loads.expert_tokens(4096)
    st = pred.step(4096, 0.0, counts)
    slot = slot_tokens(placement, loads, 4096)
    T = gpu_times_from_slot_tokens(cluster, slot)
    C = comm_times_from_slot_tokens(cluster, slot, hidden=model.hidden)
    assert st.moe_us == pytest.approx(T.max(axis=1).sum(), rel=1e-12)
    assert st.moe_us + st.a2a_us == pytest.approx((T + C).max(axis=1).sum(), rel=1e-12)
    # the synth cluster states hidden 7168, so place/evaluate and the simulator see the same C
    assert (st.moe_us + st.a2a_us) == pytest.approx(gpu_times(placement, loads, cluster, 4096).max(axis=1).sum(),
                                                    rel=1e-12)


def test_simulator_without_network_block_keeps_its_old_estimate():
    model = PRESETS["deepseek-v2-lite"]
    loads = synth_loads_for_model("deepseek-v2-lite", seed=0)
    cluster = synth_cluster(16, scenario="fleet", seed=3, gpus_per_node=8)
    placement = place(loads, cluster, "eplb")
    pred = Predictor(model, cluster, placement)
    st = pred.step(4096, 0.0, loads.expert_tokens(4096))
    g = pred.gpu
    recv = slot_tokens(placement, loads, 4096).reshape(placement.num_layers, 16, -1).sum(axis=2).max(axis=1)
    per_token = 1e6 * model.hidden * g.a2a_bytes_per_token * (7 / 16 / g.nvlink_bytes_s + 8 / 16 / g.net_bytes_s)
    assert st.a2a_us == pytest.approx(float((2 * g.a2a_latency_us + recv * per_token).sum()), rel=1e-12)


def test_cli_comm_switch(tmp_path, capsys):
    cluster = tmp_path / "c.json"
    synth_cluster(16, scenario="fleet", seed=1, gpus_per_node=8).save(cluster)
    synth_loads(2, 32, 4, seed=1).save(tmp_path / "l.json")
    plan = tmp_path / "p.json"
    assert main(["place", "--cluster", str(cluster), "--loads", str(tmp_path / "l.json"), "--out", str(plan),
                 "--policy", "eplb"]) == 0
    capsys.readouterr()

    def moe(*extra):
        assert main(["evaluate", "--cluster", str(cluster), "--loads", str(tmp_path / "l.json"), "--placement",
                     str(plan), "--no-lower-bound", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["weighted_moe_time_us"]

    base, on, off = moe(), moe("--comm", "on"), moe("--comm", "off")
    assert base == off < on
