"""The v1 data model: round trips of the three JSON files and the trace .npz, and every
validation rule turning bad input into a one-line InputError that names the file."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from vibe.errors import InputError
from vibe.model import Cluster, ExpertLoads, Placement, RoutingTrace

from _docs import DELETE, with_entry

GRID = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def curve(speed: float) -> list[float]:
    """A measured-looking curve: memory-bound floor, then a compute-bound slope."""
    return [float(max(20.0, speed * 0.1 * n)) for n in GRID]


def cluster_doc() -> dict:
    return {"schema": "vibe.cluster/v1", "name": "4xH100-test", "site": "kept on rewrite",
            "expert": {"hidden": 7168, "intermediate": 2048, "dtype": "fp8"},
            "gpus": [{"rank": g, "node": g // 2, "name": "NVIDIA H100 80GB HBM3", "overhead_us": 12.0 + g,
                      "latency": {"tokens": list(GRID), "us": curve(1.0 + 0.1 * g)},
                      "telemetry": {"sm_clock_mhz": 1980, "power_limit_w": 700}} for g in range(4)]}


def loads_doc() -> dict:
    return {"schema": "vibe.loads/v1", "model": "toy", "top_k": 2, "layer_ids": [1, 2],
            "counts": [[5, 0, 3, 9, 1, 2, 7, 4], [1, 1, 1, 1, 8, 8, 0, 2]]}


def placement_doc() -> dict:
    return {"schema": "vibe.placement/v1", "policy": "hand", "num_gpus": 4, "slots_per_gpu": 3,
            "layer_ids": [1, 2],
            "physical_to_logical_map": [[0, 1, 2, 3, 4, 5, 6, 7, 3, 0, 6, 3],
                                        [7, 6, 5, 4, 3, 2, 1, 0, 4, 5, 4, 0]],
            "replica_weights": None}


def write(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def assert_one_line_error(exc: pytest.ExceptionInfo, path: str, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(path), msg
    for w in words:
        assert w in msg, msg


# ---- round trips ---------------------------------------------------------------------
def test_cluster_round_trip(tmp_path):
    src = write(tmp_path, "c.json", cluster_doc())
    c = Cluster.load(src)
    assert c.num_gpus == 4 and c.num_nodes == 2
    assert np.allclose(c.overhead_us, [12, 13, 14, 15])
    c.save(tmp_path / "c2.json")
    c2 = Cluster.load(tmp_path / "c2.json")
    assert c2.to_dict() == c.to_dict()
    assert c2.extra == {"site": "kept on rewrite"} and c2.gpus[1].telemetry["power_limit_w"] == 700
    grid, us = c2.latency_table()
    assert np.array_equal(grid, GRID) and np.allclose(us[2], curve(1.2))


def test_latency_table_merges_grids_without_changing_curves():
    a = Cluster.init_by_curves([1, 10, 100], [[5, 6, 15]])
    b = Cluster.init_by_curves([2, 50], [[4, 8]])
    c = a.with_gpus([a.gpus[0], dict_gpu(b.gpus[0], rank=1)])
    grid, us = c.latency_table()
    assert grid.tolist() == [1, 2, 10, 50, 100]
    # GPU 1 sampled on GPU 0's points: flat before 2, linear, extrapolated past 50.
    assert np.allclose(us[1], [4, 4, 4 + 8 * 4 / 48, 8, 8 + 50 * 4 / 48])
    assert np.allclose(us[0], [5, 5 + 1 / 9, 6, 6 + 40 / 90 * 9, 15])


def dict_gpu(gpu, **changes):
    import dataclasses

    return dataclasses.replace(gpu, **changes)


def test_loads_round_trip(tmp_path):
    loads = ExpertLoads.load(write(tmp_path, "l.json", loads_doc()))
    assert loads.counts.shape == (2, 8) and loads.layer_ids == (1, 2) and loads.top_k == 2
    assert np.allclose(loads.shares().sum(axis=1), 1)
    assert np.allclose(loads.expert_tokens(100).sum(axis=1), 200)
    loads.save(tmp_path / "l2.json")
    doc = json.loads((tmp_path / "l2.json").read_text())
    assert doc["counts"] == loads_doc()["counts"]  # integers stay integers
    assert ExpertLoads.load(tmp_path / "l2.json").to_dict() == loads.to_dict()


def test_zero_layer_has_zero_shares():
    loads = ExpertLoads(np.array([[0, 0, 0], [1, 2, 3]]), 1)
    assert loads.shares()[0].tolist() == [0, 0, 0] and loads.expert_tokens(10)[0].sum() == 0


@pytest.mark.parametrize("weights", [None, "uneven"])
def test_placement_round_trip_and_derived_maps(tmp_path, weights):
    doc = placement_doc()
    if weights:
        doc["replica_weights"] = [[1.0 + (p % 5) for p in range(12)] for _ in range(2)]
    p = Placement.load(write(tmp_path, "p.json", doc))
    assert (p.num_gpus, p.slots_per_gpu, p.num_slots, p.num_logical_experts) == (4, 3, 12, 8)
    p.save(tmp_path / "p2.json")
    p2 = Placement.load(tmp_path / "p2.json")
    assert p2.to_dict() == p.to_dict()
    phy = p.physical_to_logical_map
    cnt = p.logical_count()
    assert cnt[0].tolist() == [2, 1, 1, 3, 1, 1, 2, 1] and cnt.sum(axis=1).tolist() == [12, 12]
    l2p = p.logical_to_physical_map()
    for l in range(2):
        for e in range(8):
            slots = l2p[l, e][l2p[l, e] >= 0]
            assert sorted(slots.tolist()) == np.flatnonzero(phy[l] == e).tolist()
    share = p.slot_share()
    per_expert = np.zeros((2, 8))
    np.add.at(per_expert, (np.arange(2)[:, None].repeat(12, 1), phy), share)
    assert np.allclose(per_expert, 1.0)
    if weights is None:
        assert np.allclose(share, 1.0 / cnt[np.arange(2)[:, None], phy])


def test_trace_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ex = rng.integers(0, 8, size=(3, 50, 2)).astype(np.int16)
    t = RoutingTrace(ex, [0, 10, 30, 50], 8, (1, 2, 3), "toy")
    t.save(tmp_path / "t.npz")
    t2 = RoutingTrace.load(tmp_path / "t.npz")
    assert np.array_equal(t2.experts, ex) and t2.seq_offsets.tolist() == [0, 10, 30, 50]
    assert t2.layer_ids == (1, 2, 3) and t2.num_experts == 8 and t2.model == "toy"
    loads = t2.to_loads()
    assert loads.counts.sum() == 3 * 50 * 2 and loads.top_k == 2
    idx = t2.sample_token_indices(25, np.random.default_rng(1))
    assert len(idx) == 25 and idx.min() >= 0 and idx.max() < 50
    assert np.array_equal(t2.sample_batch_counts(25, np.random.default_rng(1)), t2.counts(idx))


# ---- validation: one line, names the file --------------------------------------------

CLUSTER_CASES = [
    ("wrong schema", ("schema",), "vibe.cluster/v2", "schema"),
    ("no gpus", ("gpus",), [], "gpus"),
    ("ragged curve", ("gpus", 0, "latency", "tokens"), [[1, 2], [3]], "ragged"),
    ("lengths differ", ("gpus", 0, "latency", "us"), [1.0, 2.0], "differ in length"),
    ("non-finite", ("gpus", 1, "latency", "us", 3), float("nan"), "non-finite"),
    ("infinite", ("gpus", 1, "latency", "us", 3), float("inf"), "non-finite"),
    ("non-monotone", ("gpus", 2, "latency", "us", 9), 1.0, "not monotone"),
    ("tokens not increasing", ("gpus", 0, "latency", "tokens", 2), 2, "strictly increasing"),
    ("negative overhead", ("gpus", 0, "overhead_us"), -1.0, "overhead_us"),
    ("ranks", ("gpus", 3, "rank"), 7, "ranks"),
    ("no latency", ("gpus", 0, "latency"), DELETE, "latency"),
    ("text in curve", ("gpus", 0, "latency", "us", 0), "fast", "not numeric"),
]


@pytest.mark.parametrize("name,path,value,word", CLUSTER_CASES, ids=[c[0] for c in CLUSTER_CASES])
def test_cluster_validation(tmp_path, name, path, value, word):
    src = write(tmp_path, "bad-cluster.json", with_entry(cluster_doc(), path, value))
    with pytest.raises(InputError) as exc:
        Cluster.load(src)
    assert_one_line_error(exc, src, word)


LOADS_CASES = [
    ("wrong schema", ("schema",), "vibe.cluster/v1", "schema"),
    ("ragged", ("counts",), [[1, 2, 3], [1, 2]], "ragged"),
    ("1-D", ("counts",), [1, 2, 3], "2-D"),
    ("non-finite", ("counts", 0, 2), float("nan"), "non-finite"),
    ("negative", ("counts", 1, 3), -4, "negative count at layer row 1, expert 3"),
    ("top_k", ("top_k",), 0, "top_k"),
    ("top_k too big", ("top_k",), 9, "top_k"),
    ("layer ids", ("layer_ids",), [1, 2, 3], "layer_ids"),
    ("repeated ids", ("layer_ids",), [1, 1], "repeat"),
    ("no counts", ("counts",), DELETE, "counts"),
    ("overflowing total", ("counts", 0), [1e308] * 8, "overflows"),
]


@pytest.mark.parametrize("name,path,value,word", LOADS_CASES, ids=[c[0] for c in LOADS_CASES])
def test_loads_validation(tmp_path, name, path, value, word):
    src = write(tmp_path, "bad-loads.json", with_entry(loads_doc(), path, value))
    with pytest.raises(InputError) as exc:
        ExpertLoads.load(src)
    assert_one_line_error(exc, src, word)


PLACEMENT_CASES = [
    ("wrong schema", ("schema",), None, "schema"),
    ("missing expert", ("physical_to_logical_map", 1), [7, 6, 5, 4, 3, 2, 1, 1, 4, 5, 4, 1], "missing expert 0"),
    ("not divisible", ("physical_to_logical_map",), [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1]] * 2, "not divisible"),
    ("slots_per_gpu", ("slots_per_gpu",), 2, "slots_per_gpu"),
    ("ragged", ("physical_to_logical_map", 0), [0, 1], "ragged"),
    ("fractional id", ("physical_to_logical_map", 0, 0), 0.5, "integers"),
    ("id out of range", ("physical_to_logical_map", 0, 11), -1, "expert ids"),
    ("weights shape", ("replica_weights",), [[1.0] * 12], "replica_weights"),
    ("negative weight", ("replica_weights",), [[-1.0] * 12] * 2, "replica_weights"),
    ("zero weights", ("replica_weights",), [[0.0] * 12] * 2, "replica_weights"),
    ("layer ids", ("layer_ids",), [1], "layer_ids"),
    ("num_gpus", ("num_gpus",), 0, "num_gpus"),
    ("num_logical_experts text", ("num_logical_experts",), "eight", "num_logical_experts"),
    ("num_logical_experts list", ("num_logical_experts",), [8], "num_logical_experts"),
    ("too few experts", ("num_logical_experts",), 9, "missing expert 8"),
]


@pytest.mark.parametrize("name,path,value,word", PLACEMENT_CASES, ids=[c[0] for c in PLACEMENT_CASES])
def test_placement_validation(tmp_path, name, path, value, word):
    doc = placement_doc()
    if name == "not divisible":
        doc.pop("slots_per_gpu")
    src = write(tmp_path, "bad-placement.json", with_entry(doc, path, value))
    with pytest.raises(InputError) as exc:
        Placement.load(src)
    assert_one_line_error(exc, src, word)


@pytest.mark.parametrize("loader", [Cluster.load, ExpertLoads.load, Placement.load])
def test_unreadable_files(tmp_path, loader):
    for name, text, word in [("empty.json", "", "invalid JSON"), ("list.json", "[1, 2]", "expected a JSON object"),
                             ("trunc.json", '{"schema": ', "invalid JSON")]:
        src = write(tmp_path, name, text)
        with pytest.raises(InputError) as exc:
            loader(src)
        assert_one_line_error(exc, src, word)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(InputError) as exc:
        loader(missing)
    assert_one_line_error(exc, missing, "no such file")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(InputError) as exc:
        loader(str(tmp_path / "bin.json"))
    assert_one_line_error(exc, str(tmp_path / "bin.json"))


def test_mismatched_shapes_name_the_placement(tmp_path):
    loads = ExpertLoads.load(write(tmp_path, "l.json", loads_doc()))
    cluster = Cluster.load(write(tmp_path, "c.json", cluster_doc()))
    p_path = write(tmp_path, "p.json", placement_doc())
    p = Placement.load(p_path)
    p.check_matches(loads, p_path)
    p.check_fits(cluster, p_path)
    with pytest.raises(InputError) as exc:
        p.check_fits(cluster.with_gpus(cluster.gpus[:2]), p_path)
    assert_one_line_error(exc, p_path, "4 GPUs", "2")
    with pytest.raises(InputError) as exc:
        p.check_matches(loads.select_layers([0]), p_path)
    assert_one_line_error(exc, p_path, "layers")
    other = ExpertLoads(np.ones((2, 9)), 2, (1, 2))
    with pytest.raises(InputError) as exc:
        p.check_matches(other, p_path)
    assert_one_line_error(exc, p_path, "8 experts")
    with pytest.raises(InputError) as exc:
        p.check_matches(ExpertLoads(loads.counts, 2, (5, 6)), p_path)
    assert_one_line_error(exc, p_path, "layer_ids")


def test_trace_validation(tmp_path):
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError) as exc:
        RoutingTrace.load(bad)
    assert_one_line_error(exc, str(bad), "npz")
    # A pickled object array must be refused, never unpickled.
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, schema=np.array("vibe.trace/v1"), experts=np.array([object()], dtype=object),
             seq_offsets=np.array([0, 1]), layer_ids=np.array([0]), num_experts=np.array(2))
    with pytest.raises(InputError) as exc:
        RoutingTrace.load(pickled)
    assert_one_line_error(exc, str(pickled))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, schema=np.array("vibe.loads/v1"))
    with pytest.raises(InputError) as exc:
        RoutingTrace.load(wrong)
    assert_one_line_error(exc, str(wrong), "vibe.trace/v1")
    ok = RoutingTrace(np.zeros((1, 4, 2), np.int16), [0, 4], 3)
    for change, word in [(dict(seq_offsets=[0, 5]), "seq_offsets"), (dict(num_experts=0), "expert ids"),
                         (dict(layer_ids=(1, 2)), "layer_ids")]:
        args = dict(experts=ok.experts, seq_offsets=ok.seq_offsets, num_experts=3, layer_ids=(0,))
        args.update(change)
        path = tmp_path / "t.npz"
        np.savez(path, schema=np.array("vibe.trace/v1"), experts=args["experts"],
                 seq_offsets=np.asarray(args["seq_offsets"]), layer_ids=np.asarray(args["layer_ids"]),
                 num_experts=np.array(args["num_experts"]))
        with pytest.raises(InputError) as exc:
            RoutingTrace.load(path)
        assert_one_line_error(exc, str(path), word)


def test_constructors_validate_too():
    with pytest.raises(InputError):
        Cluster.init_by_curves([1, 2, 3], [[3, 2, 1]])
    with pytest.raises(InputError):
        ExpertLoads(np.array([[1, -1]]), 1)
    with pytest.raises(InputError):
        Placement.init_by_mapping(np.array([[0, 0, 2, 2]]), 2, 3)
    doc = copy.deepcopy(placement_doc())
    assert Placement.from_dict(doc).policy == "hand"


def test_examples_in_docs_formats_are_valid(tmp_path):
    """docs/formats.md's JSON examples are real files: each loads and round-trips."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, flags=re.S)]
    kinds = {"vibe.cluster/v1": Cluster, "vibe.loads/v1": ExpertLoads, "vibe.placement/v1": Placement}
    assert sorted(b["schema"] for b in blocks) == sorted(kinds)
    loaded = {}
    for b in blocks:
        path = write(tmp_path, "example.json", b)
        obj = kinds[b["schema"]].load(path)
        assert obj.to_dict() == kinds[b["schema"]].from_dict(obj.to_dict()).to_dict()
        loaded[b["schema"]] = obj
    plan, loads, cluster = (loaded[k] for k in ("vibe.placement/v1", "vibe.loads/v1", "vibe.cluster/v1"))
    plan.check_matches(loads)
    plan.check_fits(cluster)


# ---- placements: exact messages and exact derived maps, worked out by hand -----------
# placement_doc(): 2 layers x 12 slots on 4 GPUs (3 slots each), experts 0..7.
PLACEMENT_MESSAGES = [
    (("num_gpus",), 0, "'num_gpus' must be a positive integer, got 0"),
    (("num_gpus",), "four", "'num_gpus' must be a positive integer, got 'four'"),
    (("slots_per_gpu",), 2, "slots_per_gpu=2 x num_gpus=4 != 12 slots per layer"),
    (("slots_per_gpu",), "three", "'slots_per_gpu' must be an integer, got 'three'"),
    (("physical_to_logical_map",), [list(range(8)) + [0, 1]] * 2, "10 slots per layer are not divisible by 4 GPUs"),
    (("num_logical_experts",), "eight", "'num_logical_experts' must be an integer, got 'eight'"),
    (("num_logical_experts",), 13, "13 logical experts cannot fill 12 slots"),
    (("num_logical_experts",), 0, "0 logical experts cannot fill 12 slots"),
    (("physical_to_logical_map", 0, 11), -1, "expert ids must lie in 0..7"),
    (("physical_to_logical_map", 1), [7, 6, 5, 4, 3, 2, 1, 1, 4, 5, 4, 1], "layer row 1 is missing expert 0"),
    (("layer_ids",), [1], "1 layer_ids for 2 layers"),
    (("replica_weights",), [[1.0] * 12], "replica_weights shape [1, 12] != map shape [2, 12]"),
    (("replica_weights",), [[1.0] * 11 + [-1.0]] * 2, "replica_weights must be finite and >= 0"),
    # expert 0 is in slots 0, 9 of layer 0 and 7, 11 of layer 1: one of each pair at 0 is valid
    (("replica_weights",), [[1.0] * 9 + [0.0, 1.0, 1.0], [1.0] * 11 + [0.0]], None),
    (("replica_weights",), [[0.0] * 8 + [1.0] * 4] * 2,  # layer 0: experts 1, 2, 4, 5, 7 weigh 0
     "every expert's replica_weights must sum to more than 0"),
    (("replica_weights",), [[1.0] * 12, [1.0] * 11], "'replica_weights' is ragged or not numeric"),
    (("layer_ids",), ["a", "b"], "'layer_ids' is ragged or not numeric"),
    (("layer_ids",), [1.5, 2], "'layer_ids' must hold integers"),
    (("physical_to_logical_map",), [0, 1, 2], "'physical_to_logical_map' must be a 2-D array, got shape [3]"),
]


@pytest.mark.parametrize("path,value,problem", PLACEMENT_MESSAGES)
def test_placement_errors_say_exactly_what_is_wrong(tmp_path, path, value, problem):
    src = write(tmp_path, "p.json", with_entry(placement_doc(), path, value))
    if problem is None:
        Placement.load(src)
        return
    with pytest.raises(InputError) as exc:
        Placement.load(src)
    assert str(exc.value) == f"{src}: {problem}"


def test_placement_constructor_errors_name_the_placement():
    cases = [((np.array([[0, 1]]), 0, 2), "num_gpus must be >= 1"),
             ((np.array([[0, 1, 2]]), 1, 2), "expert ids must lie in 0..1"),
             ((np.zeros((1, 0), np.int64), 1, 1), "physical_to_logical_map must be a non-empty [layers, slots] "
                                                   "matrix, got shape [1, 0]"),
             ((np.zeros((0, 2), np.int64), 1, 1), "physical_to_logical_map must be a non-empty [layers, slots] "
                                                   "matrix, got shape [0, 2]"),
             ((np.array([0, 1]), 1, 2), "physical_to_logical_map must be a non-empty [layers, slots] "
                                        "matrix, got shape [2]"),
             ((np.array([[0, 1, 1]]), 2, 2), "3 slots per layer are not divisible by 2 GPUs"),
             ((np.array([[0, 1]]), 1, 3), "3 logical experts cannot fill 2 slots"),
             ((np.array([[0, 0, 1]]), 1, 3), "layer row 0 is missing expert 2"),
             ((np.array([[0, 1]]), 1, 2, (1, 2)), "2 layer_ids for 1 layers"),
             ((np.array([[0, 1]]), 1, 2, (), "", np.ones((2, 2))), "replica_weights shape [2, 2] != map shape [1, 2]"),
             ((np.array([[0, 1]]), 1, 2, (), "", np.array([[1.0, -1.0]])), "replica_weights must be finite and >= 0"),
             ((np.array([[0, 1]]), 1, 2, (), "", np.array([[1.0, 0.0]])),
              "every expert's replica_weights must sum to more than 0")]
    for args, problem in cases:
        with pytest.raises(InputError) as exc:
            Placement(*args)
        assert str(exc.value) == f"placement: {problem}"
    # one GPU and one expert are allowed
    assert Placement(np.array([[0]]), 1, 1).slots_per_gpu == 1
    # inputs are normalised: an int64 map, a tuple of int layer ids, float replica weights
    p = Placement(np.array([[0.0, 1.0]]), 1, 2, [np.int32(4)], "", [[1, 3]])
    assert p.physical_to_logical_map.dtype == np.int64 and p.layer_ids == (4,)
    assert p.replica_weights.dtype == np.float64 and p.slot_share().tolist() == [[1.0, 1.0]]
    with pytest.raises(InputError, match="missing expert 2"):  # 3 experts asked, ids only reach 1
        Placement.init_by_mapping(np.array([[0, 1, 0, 1]]), 2, 3)


def test_placement_to_dict_and_extra_keys_by_hand():
    p = Placement.init_by_mapping(np.array([[1, 0, 1, 2]]), 2, layer_ids=(5,), policy="hand",
                                  replica_weights=np.array([[3.0, 1.0, 1.0, 1.0]]))
    assert p.to_dict() == {"schema": "vibe.placement/v1", "policy": "hand", "num_gpus": 2, "slots_per_gpu": 2,
                           "num_logical_experts": 3, "layer_ids": [5],
                           "physical_to_logical_map": [[1, 0, 1, 2]],
                           "replica_weights": [[3.0, 1.0, 1.0, 1.0]]}
    # expert 1's replicas split 3 : 1 -> 0.75, 0.25; the others hold all of theirs
    assert p.slot_share().tolist() == [[0.75, 1.0, 0.25, 1.0]]
    doc = p.to_dict() | {"note": "kept"}
    back = Placement.from_dict(doc)
    assert back.extra == {"note": "kept"} and back.to_dict() == doc
    # no policy in the file: an empty one; no num_logical_experts: the largest id + 1
    doc = {k: v for k, v in placement_doc().items() if k != "policy"}
    assert Placement.from_dict(doc).policy == "" and Placement.from_dict(doc).num_logical_experts == 8
    with pytest.raises(InputError) as exc:
        Placement.from_dict({"schema": "vibe.placement/v1", "num_gpus": 1, "physical_to_logical_map": [[]]}, "p.json")
    assert str(exc.value) == "p.json: physical_to_logical_map must be a non-empty [layers, slots] matrix, got shape [1, 0]"
    one_gpu = dict(placement_doc(), num_gpus=1, slots_per_gpu=12)
    assert Placement.from_dict(one_gpu).num_gpus == 1
    q = Placement.init_by_mapping(np.array([[0, 1]]), 1)
    assert q.policy == "" and q.layer_ids == (0,) and q.num_logical_experts == 2
    assert Placement.init_by_mapping(np.array([[0, 1, 0, 1]]), 2, 2, layer_ids=(3,)).layer_ids == (3,)


def test_logical_to_physical_map_by_hand():
    # layer 0: expert 0 in slots 1, 3; expert 1 in 0; expert 2 in 2 (padding -1)
    # layer 1: expert 2 in slots 0, 1; expert 0 in 2; expert 1 in 3
    p = Placement.init_by_mapping(np.array([[1, 0, 2, 0], [2, 2, 0, 1]]), 2, 3)
    assert p.logical_to_physical_map().tolist() == [[[1, 3], [0, -1], [2, -1]],
                                                    [[2, -1], [3, -1], [0, 1]]]
    assert p.logical_count().tolist() == [[2, 1, 1], [1, 1, 2]]
    assert p.logical_to_physical_map().dtype == np.int64  # engines' files want integers
    # without replicas the table is one slot wide
    one = Placement.init_by_mapping(np.array([[2, 0, 1, 3]]), 2)
    assert one.logical_to_physical_map().tolist() == [[[1], [2], [0], [3]]]


def test_check_matches_and_fits_messages():
    p = Placement.init_by_mapping(np.array([[0, 1], [1, 0]]), 2, layer_ids=(1, 2))
    with pytest.raises(InputError) as exc:
        p.check_matches(ExpertLoads(np.ones((2, 2)), 1, (1, 3)), "p.json")
    assert str(exc.value) == "p.json: placement layer_ids differ from the loads' layer_ids"
    with pytest.raises(InputError) as exc:
        p.check_matches(ExpertLoads(np.ones((2, 4)), 1, (1, 2)))
    assert str(exc.value) == "placement: placement is for 2 experts, loads have 4"
    with pytest.raises(InputError) as exc:
        p.check_matches(ExpertLoads(np.ones((3, 2)), 1, (1, 2, 3)))
    assert str(exc.value) == "placement: placement has 2 layers, loads have 3"
    p.check_matches(ExpertLoads(np.ones((2, 2)), 1, (1, 2)))
    with pytest.raises(InputError) as exc:
        p.check_fits(Cluster.init_by_curves([1, 2], [[1, 2]] * 3), "p.json")
    assert str(exc.value) == "p.json: placement is for 2 GPUs, cluster has 3"
    p.check_fits(Cluster.init_by_curves([1, 2], [[1, 2]] * 2))
    with pytest.raises(InputError) as exc:
        p.check_fits(Cluster.init_by_curves([1, 2], [[1, 2]] * 3))
    assert str(exc.value) == "placement: placement is for 2 GPUs, cluster has 3"
    with pytest.raises(InputError) as exc:
        Placement.from_dict({"schema": "vibe.placement/v1", "num_gpus": 0, "physical_to_logical_map": [[0]]})
    assert str(exc.value) == "placement: 'num_gpus' must be a positive integer, got 0"
