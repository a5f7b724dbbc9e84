"""The data model word for word: every validation rule of the cluster, loads and trace
files as the exact one-line message a user sees (the file, then the problem), each
validator at its boundary (the last accepted value and the first refused one), and the
derived quantities (latency table, network parameters, expert tokens, trace sampling)
on small inputs whose answers are worked out by hand in the comments."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import vibe.model.traces as traces_mod
from vibe.errors import InputError
from vibe.model import Cluster, ExpertLoads, RoutingTrace
from vibe.model.cluster import MAX_CURVE_TOKENS, MAX_LATENCY_US, GpuProfile
from vibe.model.traces import check_trace_matches, concat_traces

from _docs import DELETE, with_entry




def _write(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---- cluster ---------------------------------------------------------------------------
def cluster_doc() -> dict:
    """Two GPUs on two nodes; GPU 0 has 3 curve points, GPU 1 two."""
    return {"schema": "vibe.cluster/v1", "name": "two", "site": "lab",
            "expert": {"hidden": 4096},
            "gpus": [{"rank": 0, "node": 0, "name": "A", "overhead_us": 1.5,
                      "latency": {"tokens": [1, 10, 100], "us": [5.0, 6.0, 15.0]}},
                     {"rank": 1, "node": 1, "name": "B", "overhead_us": 2.5,
                      "latency": {"tokens": [2, 50], "us": [4.0, 8.0]}}]}


BIG = "latency curve is implausibly large (over 8.64e+10 us or 1e+12 tokens); the cost model would overflow"
CLUSTER_MESSAGES = [
    (("gpus",), [], "'gpus' must be a non-empty list"),
    (("gpus",), {"0": {}}, "'gpus' must be a non-empty list"),
    (("gpus", 1), 3, "gpus[1] must be an object"),
    (("gpus", 1, "latency"), DELETE, "gpus[1] has no 'latency' object"),
    (("gpus", 1, "latency"), [[2, 50], [4, 8]], "gpus[1] has no 'latency' object"),
    (("gpus", 1, "latency", "tokens"), DELETE, "missing 'gpus[1].latency.tokens'"),
    (("gpus", 1, "latency", "us"), ["fast", "slow"], "'gpus[1].latency.us' is ragged or not numeric"),
    (("gpus", 1, "latency", "us"), [4.0, float("nan")], "'gpus[1].latency.us' holds non-finite values"),
    (("gpus", 1, "rank"), -1, "'gpus[1].rank' must be an integer >= 0, got -1"),
    (("gpus", 1, "rank"), 1.5, "'gpus[1].rank' must be an integer >= 0, got 1.5"),
    (("gpus", 1, "node"), -1, "'gpus[1].node' must be an integer >= 0, got -1"),
    (("gpus", 1, "node"), "n1", "'gpus[1].node' must be an integer >= 0, got 'n1'"),
    (("gpus", 1, "overhead_us"), "2.5", "gpus[1]: overhead_us must be a number"),
    (("gpus", 1, "overhead_us"), True, "gpus[1]: overhead_us must be a number"),
    (("gpus", 1, "overhead_us"), None, "gpus[1]: overhead_us must be a number"),
    (("gpus", 1, "overhead_us"), -0.5, "gpu rank 1: overhead_us must be finite and >= 0"),
    (("gpus", 1, "overhead_us"), 10**400, f"gpu rank 1: {BIG}"),  # an integer past float range
    (("gpus", 1, "overhead_us"), -10**400, "gpu rank 1: overhead_us must be finite and >= 0"),
    (("gpus", 1, "overhead_us"), MAX_LATENCY_US * 1.01, f"gpu rank 1: {BIG}"),
    (("gpus", 1, "telemetry"), [], "gpus[1].telemetry must be an object"),
    (("gpus", 1, "telemetry"), 0, "gpus[1].telemetry must be an object"),
    (("expert",), [], "'expert' must be an object"),
    (("expert",), "fp8", "'expert' must be an object"),
    (("network",), [1, 2], "'network' must be an object"),
    (("gpus", 1, "rank"), 0, "GPU ranks must be 0..1 in order, got [0, 0]"),
    (("gpus", 1, "rank"), 2, "GPU ranks must be 0..1 in order, got [0, 2]"),
    (("gpus", 1, "latency", "us"), [4.0, 8.0, 9.0], "gpu rank 1: latency tokens and us differ in length"),
    (("gpus", 1, "latency"), {"tokens": [2], "us": [4.0]}, "gpu rank 1: a latency curve needs at least 2 points"),
    (("gpus", 1, "latency", "tokens"), [0, 50], "gpu rank 1: latency tokens must be positive and strictly increasing"),
    (("gpus", 1, "latency", "tokens"), [-2, 50], "gpu rank 1: latency tokens must be positive and strictly increasing"),
    (("gpus", 1, "latency", "tokens"), [50, 50], "gpu rank 1: latency tokens must be positive and strictly increasing"),
    (("gpus", 1, "latency", "us"), [0.0, 8.0], "gpu rank 1: latency must be positive"),
    (("gpus", 1, "latency", "us"), [4.0, MAX_LATENCY_US * 1.01], f"gpu rank 1: {BIG}"),
    # only the last token count is too large; the point before it is small
    (("gpus", 0, "latency", "tokens"), [1, 2, MAX_CURVE_TOKENS * 2], f"gpu rank 0: {BIG}"),
    # diffs 0.5, 0, -1.5: the drop is after the third point (100 tokens), not the flat step
    (("gpus", 0, "latency"), {"tokens": [1, 10, 100, 1000], "us": [5.0, 5.5, 5.5, 4.0]},
     "gpu rank 0: latency curve is not monotone (drops after 100 tokens)"),
]


@pytest.mark.parametrize("path,value,problem", CLUSTER_MESSAGES)
def test_cluster_file_errors_word_for_word(tmp_path, path, value, problem):
    src = _write(tmp_path, "c.json", with_entry(cluster_doc(), path, value))
    assert _message(Cluster.load, src) == f"{src}: {problem}"


def test_cluster_from_dict_names_the_cluster_by_default():
    assert _message(Cluster.from_dict, with_entry(cluster_doc(), ("gpus",), [])) == "cluster: 'gpus' must be a non-empty list"


@pytest.mark.parametrize("path,value", [
    (("gpus", 1, "overhead_us"), 0.0),
    (("gpus", 1, "overhead_us"), MAX_LATENCY_US),
    (("gpus", 1, "latency", "us"), [4.0, MAX_LATENCY_US]),
    (("gpus", 1, "latency", "tokens"), [2, MAX_CURVE_TOKENS]),
    (("gpus", 1, "latency", "us"), [4.0, 4.0]),  # flat is monotone
    (("gpus", 1, "latency", "tokens"), [0.5, 50]),  # fractional token counts are fine if > 0
    (("gpus", 1, "node"), 0),
    (("expert",), None),
    (("gpus", 1, "telemetry"), None),
])
def test_cluster_boundaries_that_are_accepted(tmp_path, path, value):
    Cluster.load(_write(tmp_path, "c.json", with_entry(cluster_doc(), path, value)))


def _gpu(rank=0, tokens=(1.0, 2.0), us=(1.0, 2.0), **kw) -> GpuProfile:
    return GpuProfile(rank=rank, node=kw.pop("node", 0), tokens=np.array(tokens, float), latency_us=np.array(us, float),
                      **kw)


CONSTRUCTOR_MESSAGES = [
    ((), "a cluster needs at least one GPU"),
    ((_gpu(us=(1.0, math.nan)),), "gpu rank 0: latency curve holds non-finite values"),
    ((_gpu(tokens=(1.0, math.inf)),), "gpu rank 0: latency curve holds non-finite values"),
    ((_gpu(node=-1),), "gpu rank 0: node must be >= 0"),
    ((_gpu(overhead_us=math.nan),), "gpu rank 0: overhead_us must be finite and >= 0"),
    ((_gpu(tokens=(1.0,), us=(1.0,)),), "gpu rank 0: a latency curve needs at least 2 points"),
    ((_gpu(tokens=(1.0, 2.0, 3.0)),), "gpu rank 0: latency tokens and us differ in length"),
    ((_gpu(), _gpu(rank=1), _gpu(rank=1)), "GPU ranks must be 0..2 in order, got [0, 1, 1]"),
    ((_gpu(rank=1),), "GPU ranks must be 0..0 in order, got [1]"),
    ((_gpu(), _gpu(rank=1, us=(2.0, 1.0))), "gpu rank 1: latency curve is not monotone (drops after 1 tokens)"),
    ((_gpu(us=(0.0, 1.0)),), "gpu rank 0: latency must be positive"),
    ((_gpu(tokens=(0.0, 1.0)),), "gpu rank 0: latency tokens must be positive and strictly increasing"),
    ((_gpu(us=(1.0, 1e11)),), f"gpu rank 0: {BIG}"),
]


@pytest.mark.parametrize("gpus,problem", CONSTRUCTOR_MESSAGES)
def test_cluster_constructor_errors_name_the_cluster(gpus, problem):
    assert _message(Cluster, gpus=gpus) == f"cluster: {problem}"


def test_gpu_and_cluster_to_dict_by_hand(tmp_path):
    c = Cluster.load(_write(tmp_path, "c.json", with_entry(cluster_doc(), ("gpus", 1, "telemetry"), {"clock": 1980})))
    assert c.gpus[0].to_dict() == {"rank": 0, "node": 0, "name": "A", "overhead_us": 1.5,
                                   "latency": {"tokens": [1.0, 10.0, 100.0], "us": [5.0, 6.0, 15.0]}}
    assert c.gpus[1].to_dict()["telemetry"] == {"clock": 1980}
    d = c.to_dict()
    assert d == {"site": "lab", "schema": "vibe.cluster/v1", "name": "two", "expert": {"hidden": 4096},
                 "gpus": [g.to_dict() for g in c.gpus]}
    assert c.extra == {"site": "lab"} and c.network is None
    on = c.with_network({"latency_us": 7})
    assert on.to_dict() == d | {"network": {"latency_us": 7}}
    back = Cluster.from_dict(on.to_dict())
    assert back.network == {"latency_us": 7} and back.extra == {"site": "lab"}  # not kept twice


def test_gpu_defaults_and_extra_keys_from_a_file():
    """A GPU entry holding only its curve: rank = its index, node 0, name 'GPU', no
    overhead; keys vibe does not know stay in `extra` and come back on rewrite."""
    doc = {"schema": "vibe.cluster/v1",
           "gpus": [{"latency": {"tokens": [1, 2], "us": [1, 2]}, "state": "down"},
                    {"latency": {"tokens": [1, 2], "us": [1, 2]}, "serial": 7}]}
    c = Cluster.from_dict(doc)
    assert c.name == "cluster" and c.expert == {} and c.extra == {} and c.network is None
    assert [(g.rank, g.node, g.name, g.overhead_us, g.telemetry) for g in c.gpus] == \
        [(0, 0, "GPU", 0.0, {}), (1, 0, "GPU", 0.0, {})]
    assert [g.extra for g in c.gpus] == [{"state": "down"}, {"serial": 7}]
    assert c.down_ranks() == (0,)
    # every key vibe reads is kept out of `extra`
    full = cluster_doc()["gpus"][0] | {"telemetry": {"clock": 1}}
    assert Cluster.from_dict(dict(cluster_doc(), gpus=[full])).gpus[0].extra == {}
    # ranks out of order in the file are sorted
    swapped = with_entry(with_entry(cluster_doc(), ("gpus", 0, "rank"), 1), ("gpus", 1, "rank"), 0)
    assert [g.name for g in Cluster.from_dict(swapped).gpus] == ["B", "A"]


def test_down_ranks_reads_the_state_case_insensitively():
    gpus = [_gpu(rank=r, extra=e) for r, e in enumerate([{"state": "Down"}, {"state": "up"}, {}, {"state": "DOWN"}])]
    assert Cluster(gpus=tuple(gpus)).down_ranks() == (0, 3)
    assert Cluster(gpus=(_gpu(),)).down_ranks() == ()


def test_latency_table_by_hand():
    """GPU 0: (1, 5) (10, 6) (100, 15); GPU 1: (2, 4) (50, 8) (200, 20). Common grid
    1, 2, 10, 50, 100, 200: flat before the first point, linear between, and past the
    last point the last segment's slope (GPU 0: 9 / 90 = 0.1 per token)."""
    c = Cluster(gpus=(_gpu(0, (1, 10, 100), (5, 6, 15)), _gpu(1, (2, 50, 200), (4, 8, 20))))
    grid, us = c.latency_table()
    assert grid.tolist() == [1, 2, 10, 50, 100, 200]
    assert np.allclose(us[0], [5, 5 + 1 / 9, 6, 6 + 40 * 0.1, 15, 15 + 100 * 0.1], rtol=1e-12, atol=0)
    assert np.allclose(us[1], [4, 4, 4 + 8 * 4 / 48, 8, 8 + 50 * 12 / 150, 20], rtol=1e-12, atol=0)
    # computed once: the cost model calls it for every evaluation
    assert c.latency_table() is c.latency_table()


def test_latency_table_holds_each_curve_exactly_inside_its_range():
    """Inside a curve's own points the table holds np.interp's values bit for bit; only
    past its last point does the last segment's line take over. (GPU 0 at 5 tokens:
    2 + 5 * 2 / 7 = 24 / 7, which the line written from (10, 7) backwards rounds to a
    different last bit.)"""
    c = Cluster(gpus=(_gpu(0, (1, 3, 10), (1, 2, 7)), _gpu(1, (5, 20), (1, 2))))
    grid, us = c.latency_table()
    assert grid.tolist() == [1, 3, 5, 10, 20]
    assert us[0, :4].tolist() == np.interp(grid[:4], [1, 3, 10], [1, 2, 7]).tolist()
    assert us[1, 2:].tolist() == np.interp(grid[2:], [5, 20], [1, 2]).tolist()
    assert us[0, 4] == 7 + (5 / 7) * 10 and us[1, :2].tolist() == [1, 1]


def test_init_by_curves_by_hand():
    c = Cluster.init_by_curves([1, 4], [[2, 3], [4, 5]], overhead_us=[1, 2], nodes=[0, 1])
    assert c.name == "cluster" and c.expert == {} and [g.name for g in c.gpus] == ["GPU", "GPU"]
    assert c.nodes.tolist() == [0, 1] and c.overhead_us.tolist() == [1.0, 2.0] and c.num_nodes == 2
    g = c.gpus[1]
    assert g.tokens.dtype == np.float64 and g.latency_us.dtype == np.float64
    assert g.tokens.tolist() == [1.0, 4.0] and g.latency_us.tolist() == [4.0, 5.0]
    one = Cluster.init_by_curves([1, 4], [2, 3], overhead_us=3, name="solo", gpu_name="H100",
                                 expert={"hidden": 8})
    assert one.num_gpus == 1 and one.name == "solo" and one.gpus[0].name == "H100"
    assert one.expert == {"hidden": 8} and one.gpus[0].overhead_us == 3.0 and one.nodes.tolist() == [0]
    # with_gpus keeps the rest, or changes it too
    two = c.with_gpus(c.gpus[:1], name="half")
    assert two.num_gpus == 1 and two.name == "half"


NET_DEFAULTS = {"intra_node_GBps": 450.0, "inter_node_GBps": 50.0, "latency_us": 15.0,
                "dispatch_bytes": 1.0, "combine_bytes": 2.0}


def test_network_params_by_hand():
    c = Cluster.init_by_curves([1, 2], [1, 2], expert={"hidden": 4096})
    assert c.network_params() is None
    assert c.with_network().network == {}
    assert c.with_network().network_params() == NET_DEFAULTS | {"hidden": 4096.0}
    # keys given win; unknown keys are kept in the file but not used
    on = c.with_network({"latency_us": 7, "note": "rack 3"})
    assert on.network_params() == NET_DEFAULTS | {"latency_us": 7.0, "hidden": 4096.0}
    assert on.network == {"latency_us": 7, "note": "rack 3"}
    # a second call merges into the block already there
    more = on.with_network({"hidden": 1024})
    assert more.network == {"latency_us": 7, "note": "rack 3", "hidden": 1024}
    assert more.network_params()["hidden"] == 1024.0 and more.with_network().network == more.network
    # no hidden size anywhere: DeepSeek-V3's
    assert Cluster.init_by_curves([1, 2], [1, 2]).with_network().network_params()["hidden"] == 7168.0


NETWORK_MESSAGES = [
    ({"latency_us": -1}, {}, "network.latency_us must be a finite number >= 0, got -1"),
    ({"intra_node_GBps": 0}, {}, "network.intra_node_GBps must be a finite number > 0, got 0"),
    ({"inter_node_GBps": -0.5}, {}, "network.inter_node_GBps must be a finite number > 0, got -0.5"),
    ({"dispatch_bytes": "1"}, {}, "network.dispatch_bytes must be a finite number > 0, got '1'"),
    ({"hidden": True}, {}, "network.hidden must be a finite number > 0, got True"),
    ({"combine_bytes": math.nan}, {}, "network.combine_bytes must be a finite number > 0, got nan"),
    ({"latency_us": math.inf}, {}, "network.latency_us must be a finite number >= 0, got inf"),
    ({}, {"hidden": 0}, "expert.hidden must be a finite number > 0, got 0"),
    ({"latency_us": 3}, {"hidden": "big"}, "expert.hidden must be a finite number > 0, got 'big'"),
]


@pytest.mark.parametrize("network,expert,problem", NETWORK_MESSAGES)
def test_network_errors_word_for_word(tmp_path, network, expert, problem):
    doc = dict(cluster_doc(), network=network, expert=expert)
    src = _write(tmp_path, "c.json", doc)
    assert _message(Cluster.load, src) == f"{src}: {problem}"
    base = Cluster.init_by_curves([1, 2], [1, 2], expert=expert)
    assert _message(base.with_network, network) == f"cluster: {problem}"


@pytest.mark.parametrize("network,expert", [
    ({"latency_us": 0}, {}),  # no fixed cost is allowed
    ({"inter_node_GBps": 0.5, "dispatch_bytes": 1, "combine_bytes": 1.0}, {}),
    ({"hidden": 2048}, {}),  # the network block's hidden size needs no expert block
    ({"hidden": 2048}, {"hidden": 0}),  # and then the expert block's is not used
    ({"note": "not a number, not read"}, {"hidden": 1}),
])
def test_network_values_that_are_accepted(network, expert):
    c = Cluster.init_by_curves([1, 2], [1, 2], expert=expert).with_network(network)
    assert c.network == network


# ---- loads -----------------------------------------------------------------------------
def loads_doc() -> dict:
    """2 layers (ids 1, 2) x 4 experts, top-2."""
    return {"schema": "vibe.loads/v1", "model": "toy", "top_k": 2, "layer_ids": [1, 2],
            "counts": [[5, 0, 3, 2], [1, 1, 1, 1]]}


LOADS_MESSAGES = [
    (("counts",), DELETE, "missing 'counts'"),
    (("counts",), [1, 2, 3], "'counts' must be a 2-D array, got shape [3]"),
    (("counts",), [[1, 2], [3]], "'counts' is ragged or not numeric"),
    (("counts",), [[]], "counts must be a non-empty [layers, experts] matrix, got shape [1, 0]"),
    (("counts", 0, 2), math.nan, "'counts' holds non-finite values"),
    (("counts", 1, 3), -4, "negative count at layer row 1, expert 3"),
    (("counts",), [[1e308] * 4, [1, 1, 1, 1]], "counts too large: a layer's total overflows"),
    # each layer's total is finite, all of them together are not: the count is still refused
    (("counts",), [[1e308, 0, 0, 0], [1e308, 0, 0, 0]], "count 1e+308 at layer row 0, expert 0 is beyond 2**53"),
    # 2**53 + 2 is the first float past 2**53; the first offending entry is named
    (("counts",), [[1, 2.0**53, 2.0**53 + 2, 0], [2.0**53 + 2, 0, 0, 0]],
     "count 9.0072e+15 at layer row 0, expert 2 is beyond 2**53"),
    (("top_k",), 0, "'top_k' must be a positive integer, got 0"),
    (("top_k",), 2.5, "'top_k' must be a positive integer, got 2.5"),
    (("top_k",), DELETE, "'top_k' must be a positive integer, got None"),
    (("top_k",), 5, "top_k=5 exceeds the 4 experts"),
    (("layer_ids",), [1, 2, 3], "3 layer_ids for 2 count rows"),
    (("layer_ids",), [4, 4], "layer_ids repeat"),
    (("layer_ids",), ["a", "b"], "'layer_ids' is ragged or not numeric"),
    (("layer_ids",), [1.5, 2], "'layer_ids' must hold integers"),
    (("schema",), "vibe.loads/v2", "wrong schema tag 'vibe.loads/v2', expected 'vibe.loads/v1'"),
]


@pytest.mark.parametrize("path,value,problem", LOADS_MESSAGES)
def test_loads_file_errors_word_for_word(tmp_path, path, value, problem):
    src = _write(tmp_path, "l.json", with_entry(loads_doc(), path, value))
    assert _message(ExpertLoads.load, src) == f"{src}: {problem}"


def test_loads_from_dict_names_the_loads_by_default():
    assert _message(ExpertLoads.from_dict, with_entry(loads_doc(), ("top_k",), 5)) == "loads: top_k=5 exceeds the 4 experts"


@pytest.mark.parametrize("path,value", [
    (("top_k",), 1), (("top_k",), 4), (("top_k",), 2.0),  # top_k up to the expert count; 2.0 is 2
    (("counts", 0, 1), 2.0**53),  # the largest count allowed
    (("counts",), [[0, 0, 0, 0], [0, 0, 0, 1]]),  # a layer may see no token
])
def test_loads_boundaries_that_are_accepted(tmp_path, path, value):
    ExpertLoads.load(_write(tmp_path, "l.json", with_entry(loads_doc(), path, value)))


LOADS_CONSTRUCTOR_MESSAGES = [
    ((np.float64(3.0), 1), "counts must be a non-empty [layers, experts] matrix, got shape []"),
    ((np.ones(3), 1), "counts must be a non-empty [layers, experts] matrix, got shape [3]"),
    ((np.zeros((0, 3)), 1), "counts must be a non-empty [layers, experts] matrix, got shape [0, 3]"),
    ((np.array([[1.0, np.nan]]), 1), "counts hold non-finite values"),
    ((np.array([[1.0, np.inf]]), 1), "counts hold non-finite values"),
    ((np.array([[1.0, 2.0]]), 0), "'top_k' must be a positive integer"),
    ((np.array([[1.0, 2.0]]), 1.0), "'top_k' must be a positive integer"),
    ((np.array([[1.0, 2.0]]), 3), "top_k=3 exceeds the 2 experts"),
    ((np.ones((2, 3)), 1, (7,)), "1 layer_ids for 2 count rows"),
    ((np.ones((2, 3)), 1, (7, 7)), "layer_ids repeat"),
    ((np.array([[0.0, -1.0]]), 1), "negative count at layer row 0, expert 1"),
    ((np.array([[1e308, 1e308]]), 1), "counts too large: a layer's total overflows"),
    ((np.array([[0, 2.0**54]]), 1), "count 1.80144e+16 at layer row 0, expert 1 is beyond 2**53"),
]


@pytest.mark.parametrize("args,problem", LOADS_CONSTRUCTOR_MESSAGES)
def test_loads_constructor_errors_name_the_loads(args, problem):
    assert _message(ExpertLoads, *args) == f"loads: {problem}"


def test_overflowing_counts_are_an_error_not_a_warning():
    """The overflow check sums in float64 on purpose; numpy's RuntimeWarning about it
    must not reach the user's terminal next to the one-line error."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _message(ExpertLoads, np.array([[1e308, 1e308]]), 1) == \
            "loads: counts too large: a layer's total overflows"


def test_check_counts_returns_float64():
    from vibe.model.loads import check_counts

    got = check_counts(np.array([[1, 2], [3, 0]], dtype=np.int64), "engine.json")
    assert got.dtype == np.float64 and got.tolist() == [[1.0, 2.0], [3.0, 0.0]]
    assert _message(check_counts, np.array([[1, -2]]), "engine.json") == \
        "engine.json: negative count at layer row 0, expert 1"


def test_loads_inputs_are_normalised():
    loads = ExpertLoads([[1, 2], [3, 4]], 1, [np.int32(5), np.int64(6)])
    assert loads.counts.dtype == np.float64 and loads.layer_ids == (5, 6) and type(loads.layer_ids) is tuple
    assert all(type(i) is int for i in loads.layer_ids)
    assert ExpertLoads([[1, 2], [3, 4]], 1).layer_ids == (0, 1) and ExpertLoads([[1, 2]], 1).model == ""


def test_expert_tokens_and_shares_by_hand():
    """Layer 0 counts 5, 0, 3, 2 (total 10), top-2: at 100 tokens a layer makes 200
    routings, 50 % / 0 / 30 % / 20 % of them -> 100, 0, 60, 40 tokens. Layer 1 saw a
    single routing, all to expert 1; layer 2 none."""
    loads = ExpertLoads(np.array([[5, 0, 3, 2], [0, 1, 0, 0], [0, 0, 0, 0]]), 2)
    assert loads.shares().tolist() == [[0.5, 0, 0.3, 0.2], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert loads.expert_tokens(100).tolist() == [[100, 0, 60, 40], [0, 200, 0, 0], [0, 0, 0, 0]]
    assert loads.num_layers == 3 and loads.num_experts == 4


def test_loads_to_dict_and_select_layers_by_hand(tmp_path):
    doc = loads_doc() | {"note": "kept"}
    loads = ExpertLoads.from_dict(doc)
    assert loads.extra == {"note": "kept"} and loads.model == "toy" and loads.layer_ids == (1, 2)
    # integer counts are written as integers, fractional ones as floats
    assert json.dumps(loads.to_dict(), sort_keys=True) == json.dumps(doc, sort_keys=True)
    frac = ExpertLoads(np.array([[0.5, 2.0]]), 1, (3,), "m", {"k": 1})
    assert json.dumps(frac.to_dict()) == json.dumps({"k": 1, "schema": "vibe.loads/v1", "model": "m", "top_k": 1,
                                                     "layer_ids": [3], "counts": [[0.5, 2.0]]})
    one = loads.select_layers([1])
    assert one.counts.tolist() == [[1, 1, 1, 1]] and one.layer_ids == (2,) and one.top_k == 2
    assert one.model == "toy" and one.extra == {"note": "kept"}
    # no model and no layer_ids in the file: an empty model name and ids 0..L-1
    bare = ExpertLoads.from_dict({k: v for k, v in loads_doc().items() if k not in ("model", "layer_ids")})
    assert bare.model == "" and bare.layer_ids == (0, 1) and bare.extra == {}
    path = tmp_path / "l.json"
    loads.save(path)
    assert json.loads(path.read_text()) == loads.to_dict()


# ---- traces ----------------------------------------------------------------------------
def _trace(lengths, E=4, k=1, L=1, layer_ids=(), model="") -> RoutingTrace:
    """Token t of layer l routes to experts (t + l + j) % E, j < k."""
    T = int(sum(lengths))
    t = np.arange(T)[None, :, None] + np.arange(L)[:, None, None] + np.arange(k)[None, None, :]
    return RoutingTrace((t % E).astype(np.int16), np.concatenate([[0], np.cumsum(lengths)]), E, layer_ids, model)


TRACE_CONSTRUCTOR_MESSAGES = [
    (dict(experts=np.zeros((2, 3), np.int16)), "experts must be a non-empty [layers, tokens, top_k] array, got [2, 3]"),
    (dict(experts=np.zeros((1, 0, 2), np.int16), seq_offsets=[0]),
     "experts must be a non-empty [layers, tokens, top_k] array, got [1, 0, 2]"),
    (dict(experts=np.zeros((1, 4, 1))), "expert ids must be integers"),
    (dict(num_experts=65537), "num_experts=65537 is past 65,536"),
    (dict(num_experts=0), "expert ids must lie in 0..-1"),
    (dict(experts=np.array([[[0], [1], [3], [2]]])), "expert ids must lie in 0..2"),
    (dict(experts=np.array([[[0], [-1], [1], [2]]])), "expert ids must lie in 0..2"),
    (dict(seq_offsets=[]), "seq_offsets must rise strictly from 0 to the token count"),
    (dict(seq_offsets=[[0, 2], [2, 4]]), "seq_offsets must rise strictly from 0 to the token count"),
    (dict(seq_offsets=[1, 4]), "seq_offsets must rise strictly from 0 to the token count"),
    (dict(seq_offsets=[0, 3]), "seq_offsets must rise strictly from 0 to the token count"),
    (dict(seq_offsets=[0, 2, 2, 4]), "seq_offsets must rise strictly from 0 to the token count"),
    (dict(seq_offsets=[0, 3, 2, 4]), "seq_offsets must rise strictly from 0 to the token count"),
    (dict(layer_ids=(1, 2)), "2 layer_ids for 1 layers"),
]


@pytest.mark.parametrize("change,problem", TRACE_CONSTRUCTOR_MESSAGES)
def test_trace_constructor_errors_name_the_trace(change, problem):
    args = dict(experts=np.array([[[0], [1], [2], [2]]], np.int16), seq_offsets=[0, 1, 4], num_experts=3)
    args.update(change)
    assert _message(RoutingTrace, **args) == f"trace: {problem}"


def test_trace_boundaries_that_are_accepted():
    assert RoutingTrace(np.zeros((1, 2, 1), np.int16), [0, 2], 1).num_experts == 1  # one expert is enough
    assert RoutingTrace(np.zeros((1, 2, 1), np.int16), [0, 2], 65536).num_experts == 65536
    t = RoutingTrace([[[0], [2]]], [0.0, 1.0, 2.0], 3)  # lists and float offsets are converted
    assert isinstance(t.experts, np.ndarray) and t.seq_offsets.dtype == np.int64
    assert t.layer_ids == (0,) and t.model == "" and t.extra == {}
    u = RoutingTrace(np.zeros((2, 2, 1), np.uint8), [0, 2], 1, [np.int32(7), np.int64(9)])
    assert u.layer_ids == (7, 9) and all(type(i) is int for i in u.layer_ids)


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_trace_file_errors_word_for_word(tmp_path):
    good = dict(schema=np.array("vibe.trace/v1"), experts=np.zeros((1, 2, 1), np.int16),
                seq_offsets=np.array([0, 2]), layer_ids=np.array([0]), num_experts=np.array(2))
    cases = [
        ({"experts": None}, "missing array 'experts'"),
        ({"num_experts": np.array(np.nan)}, "num_experts and layer_ids must be integers"),
        ({"layer_ids": np.array([[0, 1]])}, "num_experts and layer_ids must be integers"),
        ({"schema": np.array("vibe.loads/v1")}, "not a vibe.trace/v1 .npz file"),
        ({"layer_ids": np.array([0, 1])}, "2 layer_ids for 1 layers"),
        # object arrays are never unpickled
        ({"experts": np.array([[[0]]], dtype=object)}, "not a readable .npz trace (ValueError)"),
    ]
    for change, problem in cases:
        arrays = {k: v for k, v in (good | change).items() if v is not None}
        path = _save_npz(tmp_path / "t.npz", **arrays)
        assert _message(RoutingTrace.load, path) == f"{path}: {problem}"
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")  # not a zip, so numpy takes it for a pickle and refuses it
    assert _message(RoutingTrace.load, junk) == f"{junk}: not a readable .npz trace (ValueError)"
    cut = _save_npz(tmp_path / "cut.npz", **good)
    cut.write_bytes(cut.read_bytes()[:40])  # a zip header with nothing after it
    assert _message(RoutingTrace.load, cut) == f"{cut}: not a readable .npz trace (BadZipFile)"
    assert _message(RoutingTrace.load, tmp_path) == f"{tmp_path}: is a folder, expected a .npz trace"
    # no model array: an empty model name
    t = RoutingTrace.load(_save_npz(tmp_path / "ok.npz", **good))
    assert t.model == "" and t.num_experts == 2 and t.layer_ids == (0,)


def test_counts_and_sequence_counts_by_hand():
    """Lengths 2, 1, 3 (tokens 0-1, 2, 3-5), E = 3, k = 2, two layers: token t of layer
    l routes to (t + l) % 3 and (t + l + 1) % 3."""
    t = _trace((2, 1, 3), E=3, k=2, L=2)
    # layer 0: tokens 0..5 -> {0,1} {1,2} {2,0} {0,1} {1,2} {2,0}: every expert 4 times
    assert t.counts().tolist() == [[4, 4, 4], [4, 4, 4]]
    # tokens 3..5 only: layer 0 {0,1} {1,2} {2,0}; layer 1 {1,2} {2,0} {0,1}
    assert t.counts(slice(3, 6)).tolist() == [[2, 2, 2], [2, 2, 2]]
    # tokens 0 and 2: layer 0 {0,1} {2,0}; layer 1 {1,2} {0,1}
    assert t.counts(np.array([0, 2])).tolist() == [[2, 1, 1], [1, 2, 1]]
    seq = t.sequence_counts
    assert seq.dtype == np.int32 and seq.shape == (3, 2, 3)
    assert seq[0].tolist() == [[1, 2, 1], [1, 1, 2]]  # tokens 0, 1
    assert seq[1].tolist() == [[1, 0, 1], [1, 1, 0]]  # token 2: layer 0 {2,0}, layer 1 {0,1}
    assert seq[2].tolist() == [[2, 2, 2], [2, 2, 2]]


def _replay(offsets: np.ndarray, B: int, rng: np.random.Generator) -> list[int]:
    """The sampler's documented rule, spelled out: draw ceil(B / mean length) * 2 + 2
    sequence ids uniformly, draw that many again while they hold fewer than B tokens,
    then take whole sequences in draw order and cut the last one at B tokens."""
    lengths = np.diff(offsets)
    n = math.ceil(B / max(lengths.mean(), 1)) * 2 + 2
    picks = list(rng.integers(0, len(lengths), size=n))
    while sum(int(lengths[p]) for p in picks) < B:
        picks += list(rng.integers(0, len(lengths), size=n))
    out: list[int] = []
    for p in picks:
        take = min(int(lengths[p]), B - len(out))
        out += range(int(offsets[p]), int(offsets[p]) + take)
        if len(out) == B:
            return out
    raise AssertionError("unreachable")


def _seed_where(pred, n: int, N: int) -> int:
    """The first seed whose first n draws in 0..N-1 satisfy `pred` (so the test really
    exercises the case it names)."""
    return next(s for s in range(1000) if pred(np.random.default_rng(s).integers(0, N, size=n)))


@pytest.mark.parametrize("lengths,B,case", [
    ((1, 1, 1, 9), 11, "top-up"),  # ceil(11 / 3) * 2 + 2 = 10 draws: ten 1-token sequences hold 10 < 11
    ((1, 1, 1, 9), 6, "exact"),  # 2 * 2 + 2 = 6 draws: six 1-token sequences hold exactly B, no top-up
    ((1, 2, 1, 1), 5, "short"),  # mean length 1.25: ceil(5 / 1.25) * 2 + 2 = 10 draws
    ((5, 1, 8, 3, 6), 19, "any"),
])
def test_sampled_batches_follow_the_draw_rule(lengths, B, case):
    t = _trace(lengths, E=5, k=2, L=2)
    n = math.ceil(B / np.mean(lengths)) * 2 + 2
    short = {i for i, n_i in enumerate(lengths) if n_i == 1}
    pred = {"top-up": lambda d: set(d.tolist()) <= short, "exact": lambda d: set(d.tolist()) <= short}.get(
        case, lambda d: True)
    seed = _seed_where(pred, n, len(lengths))
    rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
    # three batches in a row from one generator: each must also leave it where the rule does
    for _ in range(3):
        expected = _replay(t.seq_offsets, B, ref)
        assert t.sample_token_indices(B, rng).tolist() == expected
    rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(3):
        expected = t.counts(np.array(_replay(t.seq_offsets, B, ref)))
        got = t.sample_batch_counts(B, rng)
        assert got.dtype == np.int64 and got.tolist() == expected.tolist()


def test_sampling_without_the_sequence_table_follows_the_same_rule(monkeypatch):
    monkeypatch.setattr(traces_mod, "SEQUENCE_COUNTS_MAX_ENTRIES", 0)
    t = _trace((1, 1, 1, 9), E=5, k=2, L=2)
    assert t.sequence_counts is None
    rng, ref = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(3):
        assert t.sample_batch_counts(7, rng).tolist() == t.counts(np.array(_replay(t.seq_offsets, 7, ref))).tolist()


def test_bad_batch_size_message():
    t = _trace((2, 2))
    for B in (0, -3):
        with pytest.raises(ValueError) as exc:
            t.sample_token_indices(B, np.random.default_rng(0))
        assert str(exc.value) == "batch_tokens must be > 0"


def test_to_loads_by_hand():
    t = _trace((2, 1, 3), E=3, k=2, L=2, layer_ids=(4, 5), model="toy")
    plain = t.to_loads()
    assert plain.counts.tolist() == [[4, 4, 4], [4, 4, 4]] and plain.top_k == 2
    assert plain.layer_ids == (4, 5) and plain.model == "toy" and plain.extra == {}
    tagged = t.to_loads("esft/intent")
    assert tagged.extra == {"source": "esft/intent", "tokens": 6, "sequences": 3}
    assert all(type(v) is int for v in list(tagged.extra.values())[1:])


def test_concat_traces_by_hand():
    a = _trace((2, 1), E=3, k=1, L=2, layer_ids=(4, 5), model="a")
    b = _trace((3,), E=3, k=1, L=2, layer_ids=(4, 5), model="b")
    c = _trace((1, 1), E=3, k=1, L=2, layer_ids=(4, 5), model="c")
    joined = concat_traces([a, b, c])
    assert joined.seq_offsets.tolist() == [0, 2, 3, 6, 7, 8]
    assert joined.experts[0, :, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert joined.layer_ids == (4, 5) and joined.model == "a" and joined.num_experts == 3
    assert concat_traces([a, b], model="ab").model == "ab"
    for other in (_trace((3,), E=3, k=1, L=2, layer_ids=(4, 6)),  # layer ids differ
                  _trace((3,), E=4, k=1, L=2, layer_ids=(4, 5)),  # expert count differs
                  _trace((3,), E=3, k=2, L=2, layer_ids=(4, 5))):  # top_k differs
        assert _message(concat_traces, [a, other]) == "trace: traces to join differ in layers, experts or top_k"
        assert _message(concat_traces, [a, b, other]) == "trace: traces to join differ in layers, experts or top_k"


def test_check_trace_matches_messages():
    t = _trace((2, 2), E=4, L=5, layer_ids=(1, 2, 3, 4, 5))
    loads = ExpertLoads(np.ones((5, 4)), 1, (1, 2, 3, 4, 6))
    assert _message(check_trace_matches, t, loads) == \
        "routing trace: trace layer ids [1, 2, 3, 4]... differ from the loads's [1, 2, 3, 4]..."
    assert _message(check_trace_matches, t, ExpertLoads(np.ones((5, 3)), 1), "t.npz") == \
        "t.npz: is for 5 layers x 4 experts, the loads for 5 x 3"
    check_trace_matches(t, ExpertLoads(np.ones((5, 4)), 1, (1, 2, 3, 4, 5)))


def test_dataclass_copies_keep_validation():
    t = _trace((2, 2))
    with pytest.raises(InputError):
        dataclasses.replace(t, num_experts=1)
