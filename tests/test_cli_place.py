"""`vibe place` and `vibe evaluate` end to end: the files they write, the --json they
print, the engine exports, and bad input (one line naming the file, exit 2, no output)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from vibe.cli import main
from vibe.model import Placement
from vibe.synth import synth_cluster, synth_loads

POINT_KEYS = {"batch_tokens", "moe_time_us", "lower_bound_us", "ratio_to_lb", "imbalance", "idle_fraction"}


@pytest.fixture
def files(tmp_path):
    cluster = tmp_path / "cluster.json"
    loads = tmp_path / "loads.json"
    synth_cluster(8, scenario="power-cap", seed=3, gpus_per_node=4).save(cluster)
    synth_loads(4, 32, 4, seed=3, layer_ids=[1, 2, 4, 5]).save(loads)
    return tmp_path, str(cluster), str(loads)


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def place_args(cluster, loads, out, *extra):
    return ["place", "--cluster", cluster, "--loads", loads, "--out", out, *extra]


@pytest.mark.parametrize("policy,redundant", [("linear", 0), ("eplb", 8), ("token_balanced", 8)])
def test_place_then_evaluate_json(files, capsys, policy, redundant):
    tmp, cluster, loads = files
    out = tmp / "plan.json"
    rc, text, _ = run(place_args(cluster, loads, out, "--policy", policy, "--redundant", redundant), capsys)
    assert rc == 0 and "wrote" in text
    plan = Placement.load(out)
    assert plan.policy == policy and plan.num_slots == 32 + redundant and plan.layer_ids == (1, 2, 4, 5)
    rc, text, _ = run(["evaluate", "--cluster", cluster, "--loads", loads, "--placement", out,
                       "--batch-tokens", 8192, 256, "--json"], capsys)
    assert rc == 0
    doc = json.loads(text)
    points = doc["operating_points"]
    assert [p["batch_tokens"] for p in points] == [8192, 256]
    for p in points:
        assert POINT_KEYS <= set(p)
        assert 0 < p["lower_bound_us"] <= p["moe_time_us"]
        assert p["ratio_to_lb"] == pytest.approx(p["moe_time_us"] / p["lower_bound_us"])
        assert p["imbalance"] >= 1 and 0 <= p["idle_fraction"] < 1


def test_evaluate_table_and_no_lower_bound(files, capsys):
    tmp, cluster, loads = files
    out = tmp / "plan.json"
    assert run(place_args(cluster, loads, out, "--policy", "eplb"), capsys)[0] == 0
    rc, text, _ = run(["evaluate", "--cluster", cluster, "--loads", loads, "--placement", out], capsys)
    assert rc == 0 and "eplb on" in text and "ratio" in text and "8192" in text and "256" in text
    rc, text, _ = run(["evaluate", "--cluster", cluster, "--loads", loads, "--placement", out,
                       "--no-lower-bound", "--json"], capsys)
    assert rc == 0
    assert all(p["lower_bound_us"] is None and p["ratio_to_lb"] is None for p in json.loads(text)["operating_points"])


def test_engine_formats(files, capsys):
    tmp, cluster, loads = files
    out = tmp / "plan.json"
    rc, _, _ = run(place_args(cluster, loads, out, "--policy", "eplb", "--redundant", 8,
                              "--format", "vibe", "sglang", "trtllm", "--num-hidden-layers", 7), capsys)
    assert rc == 0
    plan = Placement.load(out)
    sglang = json.loads((tmp / "plan.sglang.json").read_text())
    assert set(sglang) == {"physical_to_logical_map"}  # SGLang splats it: no other key
    full = np.array(sglang["physical_to_logical_map"])
    assert full.shape == (7, 40)  # every decoder layer, dense ones included
    assert np.array_equal(full[[1, 2, 4, 5]], plan.physical_to_logical_map)
    trt = yaml.safe_load((tmp / "plan.trtllm.yaml").read_text())
    assert set(trt) == {"num_slots", "layer_updates_per_iter", "initial_global_assignments"}
    assert trt["num_slots"] == 40 and trt["layer_updates_per_iter"] == 0
    assert sorted(trt["initial_global_assignments"]) == [1, 2, 4, 5]
    for layer, row in zip(plan.layer_ids, plan.physical_to_logical_map):
        assert trt["initial_global_assignments"][layer] == row.tolist()
        assert set(row.tolist()) == set(range(32))


def test_subprocess_evaluate(files, capsys):
    """The installed entry point, once, as a user runs it."""
    tmp, cluster, loads = files
    out = tmp / "plan.json"
    assert run(place_args(cluster, loads, out, "--policy", "round_robin"), capsys)[0] == 0
    proc = subprocess.run([sys.executable, "-m", "vibe", "evaluate", "--cluster", cluster, "--loads", loads,
                           "--placement", str(out), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert POINT_KEYS <= set(json.loads(proc.stdout)["operating_points"][0])
    bad = tmp / "bad.json"
    bad.write_text("{")
    proc = subprocess.run([sys.executable, "-m", "vibe", "evaluate", "--cluster", str(bad), "--loads", loads,
                           "--placement", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and str(bad) in proc.stderr


# ---- bad input -----------------------------------------------------------------------
def corrupt(path, edit):
    doc = json.loads(open(path).read())
    edit(doc)
    open(path, "w").write(json.dumps(doc))


def _bad_curve(d):
    d["gpus"][2]["latency"]["us"][5] = 0.5


def _neg_count(d):
    d["counts"][1][3] = -1


def _drop_expert(d):
    d["physical_to_logical_map"][0] = [1] + d["physical_to_logical_map"][0][1:]
    if 0 in d["physical_to_logical_map"][0]:
        d["physical_to_logical_map"][0] = [x if x != 0 else 1 for x in d["physical_to_logical_map"][0]]


def assert_refused(rc, out, err, bad_path, *words):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vibe: error:") and str(bad_path) in lines[0], err
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("which,edit,word", [("cluster", _bad_curve, "not monotone"),
                                             ("loads", _neg_count, "negative count")])
def test_place_refuses_bad_files_and_writes_nothing(files, capsys, which, edit, word):
    tmp, cluster, loads = files
    bad = cluster if which == "cluster" else loads
    corrupt(bad, edit)
    out = tmp / "plan.json"
    rc, text, err = run(place_args(cluster, loads, out, "--policy", "eplb", "--format", "sglang", "trtllm"), capsys)
    assert_refused(rc, text, err, bad, word)
    assert not out.exists() and not (tmp / "plan.sglang.json").exists() and not (tmp / "plan.trtllm.yaml").exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["cluster.json", "loads.json"]  # no temp file left


@pytest.mark.parametrize("which", ["cluster", "loads", "placement"])
def test_evaluate_refuses_bad_files(files, capsys, which):
    tmp, cluster, loads = files
    plan = tmp / "plan.json"
    assert run(place_args(cluster, loads, plan, "--policy", "linear"), capsys)[0] == 0
    bad = {"cluster": cluster, "loads": loads, "placement": str(plan)}[which]
    corrupt(bad, {"cluster": _bad_curve, "loads": _neg_count, "placement": _drop_expert}[which])
    rc, text, err = run(["evaluate", "--cluster", cluster, "--loads", loads, "--placement", plan, "--json"], capsys)
    assert_refused(rc, text, err, bad)
    assert text == ""


def test_evaluate_refuses_a_placement_for_another_cluster(files, capsys, tmp_path):
    tmp, cluster, loads = files
    plan = tmp / "plan.json"
    other = tmp / "other.json"
    synth_cluster(4, seed=1).save(other)
    assert run(place_args(str(other), loads, plan, "--policy", "linear"), capsys)[0] == 0
    rc, text, err = run(["evaluate", "--cluster", cluster, "--loads", loads, "--placement", plan], capsys)
    assert_refused(rc, text, err, plan, "4 GPUs")


@pytest.mark.parametrize("extra,word", [(["--policy", "nope"], "unknown policy"),
                                        (["--policy", "eplb", "--redundant", 3], "--redundant"),
                                        (["--policy", "eplb", "--num-groups", 3], "--num-groups"),
                                        (["--policy", "linear", "--format", "sglang", "--num-hidden-layers", 2],
                                         "decoder layers")])
def test_place_refuses_bad_arguments_and_writes_nothing(files, capsys, extra, word):
    tmp, cluster, loads = files
    out = tmp / "plan.json"
    rc = main(place_args(cluster, loads, str(out), *[str(x) for x in extra]))
    err = capsys.readouterr().err
    assert rc == 2 and word in err and err.strip().count("\n") == 0
    assert not out.exists()


def test_missing_file_is_named(files, capsys):
    tmp, cluster, loads = files
    missing = tmp / "nowhere.json"
    rc, text, err = run(place_args(str(missing), loads, tmp / "p.json"), capsys)
    assert_refused(rc, text, err, missing, "no such file")


@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_unwritable_output_is_a_one_line_error(files, capsys, where):
    tmp, cluster, loads = files
    out = tmp / "loads.json" / "plan.json" if where == "under-a-file" else tmp
    rc, text, err = run(place_args(cluster, loads, out, "--policy", "linear"), capsys)
    assert_refused(rc, text, err, out)
    assert sorted(p.name for p in tmp.iterdir()) == ["cluster.json", "loads.json"]


def test_operating_points_in_tokens_per_gpu(files, capsys):
    tmp, cluster, loads = files
    out = tmp / "plan.json"
    assert run(place_args(cluster, loads, out, "--tokens-per-gpu", 128), capsys)[0] == 0
    ev = ["evaluate", "--cluster", cluster, "--loads", loads, "--placement", out, "--no-lower-bound", "--json"]
    rc, text, _ = run(ev + ["--tokens-per-gpu", 128, 4], capsys)
    assert rc == 0 and [p["batch_tokens"] for p in json.loads(text)["operating_points"]] == [1024, 32]
    rc, text, _ = run(ev, capsys)  # defaults: 1024 and 32 tokens per GPU on these 8 GPUs, weighted 0.7 / 0.3
    points = json.loads(text)["operating_points"]
    assert [p["batch_tokens"] for p in points] == [8192, 256] and [p["weight"] for p in points] == [0.7, 0.3]
    rc, _, err = run(ev + ["--tokens-per-gpu", 128, "--batch-tokens", 1024], capsys)  # one way, not both
    assert rc == 2 and "not allowed with argument" in err and len(err.strip().splitlines()) == 1
