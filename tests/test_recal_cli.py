"""`vibe recalibrate` and `vibe monitor` end to end: files written, --json, lost GPUs,
one-line errors with exit 2 and nothing written; the monitor skips bad dumps, never
counts a dump twice and keeps running."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vibe.cli import main
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies import PlacementOptions
from vibe.recal.monitor import Monitor, MonitorConfig
from vibe.synth import synth_cluster, synth_loads

LAYERS = (1, 2, 3, 4)


@pytest.fixture
def files(tmp_path, capsys):
    cluster, old, new = tmp_path / "cluster.json", tmp_path / "old.json", tmp_path / "new.json"
    synth_cluster(4, scenario="power-cap", seed=2).save(cluster)
    synth_loads(4, 16, 2, seed=2, layer_ids=LAYERS).save(old)
    synth_loads(4, 16, 2, seed=9, layer_ids=LAYERS).save(new)
    plan = tmp_path / "plan.json"
    assert main(["place", "--cluster", str(cluster), "--loads", str(old), "--redundant", "8", "--out", str(plan)]) == 0
    capsys.readouterr()
    return tmp_path, str(cluster), str(old), str(new), str(plan)


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def recal(cluster, loads, plan, out, *extra):
    return ["recalibrate", "--cluster", cluster, "--loads", loads, "--placement", plan, "--out", out, *extra]


def test_recalibrate_writes_the_plan_moves_and_engine_files_and_reports_json(files, capsys):
    tmp, cluster, _, new, plan = files
    out = tmp / "fixed.json"
    rc, stdout, _ = run(recal(cluster, new, plan, out, "--max-moves", 10, "--json", "--format", "sglang", "trtllm"),
                        capsys)
    assert rc == 0
    rep = json.loads(stdout)
    assert rep["num_moves"] <= 10 and rep["after_us"] < rep["before_us"]
    assert rep["full_resolve"]["num_moves"] > rep["num_moves"]
    assert rep["full_resolve"]["after_us"] <= rep["after_us"] * 1.001
    fixed = Placement.load(out)
    moves = json.loads((tmp / "fixed.moves.json").read_text())["moves"]
    assert len(moves) == rep["num_moves"]
    assert set(moves[0]) == {"layer", "slot", "old_expert", "new_expert", "bytes", "step"}
    steps = [m["step"] for m in moves]
    assert steps[0] == 0 and all(b - a in (0, 1) for a, b in zip(steps, steps[1:]))  # numbered in order
    before = Placement.load(plan).physical_to_logical_map
    assert int((fixed.physical_to_logical_map != before).sum()) == rep["num_moves"]
    assert (tmp / "fixed.sglang.json").exists() and (tmp / "fixed.trtllm.yaml").exists()


def test_recalibrate_with_a_gpu_marked_down_in_the_cluster_file(files, capsys):
    tmp, cluster, old, _, plan = files
    obj = json.loads(open(cluster).read())
    obj["gpus"][1]["state"] = "down"
    down = tmp / "down.json"
    down.write_text(json.dumps(obj))
    rc, stdout, _ = run(recal(down, old, plan, tmp / "lost.json", "--no-full"), capsys)
    assert rc == 0 and "GPUs [1] get no tokens" in stdout
    fixed = Placement.load(tmp / "lost.json")
    assert fixed.extra["down_gpus"] == [1]
    on_1 = fixed.gpu_of_slot == 1
    assert np.all(fixed.replica_weights[:, on_1] == 0)
    assert all(set(row[~on_1]) == set(range(16)) for row in fixed.physical_to_logical_map)


def failed(argv, capsys, out, needle):
    rc, _, err = run(argv, capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_recalibrate_errors_are_one_line_exit_2_and_write_nothing(files, capsys):
    tmp, cluster, _, new, plan = files
    out = tmp / "never.json"
    other = tmp / "other.json"
    synth_cluster(8, seed=0).save(other)
    failed(recal(other, new, plan, out), capsys, out, "placement is for 4 GPUs, cluster has 8")
    model = tmp / "model.json"
    synth_loads(4, 32, 2, seed=0, layer_ids=LAYERS).save(model)
    failed(recal(cluster, model, plan, out), capsys, out, "model.json: placement is for 16 experts")
    bad = tmp / "dump.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    failed(recal(cluster, bad, plan, out, "--top-k", 2), capsys, out, "dump.pt: not a readable torch file")
    failed(recal(cluster, new, plan, out, "--max-moves", -1), capsys, out, "--max-moves must be >= 0")
    failed(recal(cluster, new, plan, out, "--down", 9), capsys, out, "lost GPU 9 is not a rank")


def test_recalibrate_reads_an_sglang_dump_and_refuses_one_of_another_model(files, capsys):
    pytest.importorskip("torch")
    from vibe.engines.sglang import write_sglang_logical_count

    tmp, cluster, _, new, plan = files
    dump = tmp / "rec.pt"
    write_sglang_logical_count(ExpertLoads.load(new), dump)
    rc, stdout, _ = run(recal(cluster, dump, plan, tmp / "ok.json", "--top-k", 2, "--json", "--no-full"), capsys)
    assert rc == 0 and json.loads(stdout)["num_moves"] > 0
    short = tmp / "short.pt"
    write_sglang_logical_count(synth_loads(2, 16, 2, seed=0, layer_ids=(1, 2)), short)
    failed(recal(cluster, short, plan, tmp / "no.json", "--top-k", 2), capsys, tmp / "no.json",
           "short.pt: has no counts for the plan's MoE layer 3")


def make_monitor(tmp, cluster, old, plan, watch, lines):
    return Monitor(watch, None, cluster, Placement.load(plan), ExpertLoads.load(old), PlacementOptions(redundant=8),
                   tmp / "out", MonitorConfig(max_moves=12, workload={"window": 2, "patience": 1}),
                   log=lines.append)


def test_monitor_skips_bad_dumps_never_double_counts_and_repairs_on_drift(files):
    pytest.importorskip("torch")
    from vibe.engines.sglang import write_sglang_logical_count

    tmp, cluster, old, new, plan = files
    dumps = tmp / "dumps"
    dumps.mkdir()
    write_sglang_logical_count(ExpertLoads.load(old), dumps / "a.pt")
    (dumps / "b.pt").write_bytes(b"not a torch file")
    write_sglang_logical_count(synth_loads(2, 16, 2, seed=0, layer_ids=(1, 2)), dumps / "other-model.pt")
    lines: list[str] = []
    mon = make_monitor(tmp, cluster, old, plan, dumps, lines)
    assert mon.poll() == 1
    assert any(line.startswith("skipped") and "b.pt" in line for line in lines)
    assert any(line.startswith("skipped") and "other-model.pt: has no counts for the plan's MoE layer 3" in line
               for line in lines)
    assert any("a.pt: no drift" in line for line in lines)
    n = len(lines)
    assert mon.poll() == 0 and len(lines) == n  # the same dumps again: nothing new, nothing logged
    assert np.allclose(mon.workload.window_counts(), ExpertLoads.load(old).counts)
    write_sglang_logical_count(ExpertLoads.load(new), dumps / "c.pt")
    write_sglang_logical_count(ExpertLoads.load(new), dumps / "d.pt")
    assert mon.poll() == 2
    assert "workload drift" in lines[-1] and "wrote" in lines[-1]
    fixed = Placement.load(sorted((tmp / "out").glob("plan-*[0-9].json"))[-1])  # the latest plan is in service
    assert mon.placement.physical_to_logical_map.tolist() == fixed.physical_to_logical_map.tolist()


def test_monitor_jsonl_reads_whole_lines_once_and_catches_a_lost_gpu(files):
    tmp, cluster, old, _, plan = files
    stream = tmp / "steps.jsonl"
    counts = ExpertLoads.load(old).counts
    stream.write_text(json.dumps({"counts": counts.tolist()}) + "\n{broken\n" + '{"counts": [[1')
    lines: list[str] = []
    mon = make_monitor(tmp, cluster, old, plan, stream, lines)
    assert mon.poll() == 1  # the partial last line waits
    assert any("steps.jsonl:2" in line and "invalid JSON" in line for line in lines)
    assert mon.poll() == 0
    with open(stream, "a") as fh:
        fh.write("]]}\n")  # completes line 3: wrong shape, reported and skipped
    mon.poll()
    assert "steps.jsonl:3" in lines[-1] and "shape" in lines[-1]
    # the cluster file now marks GPU 3 down: the monitor re-homes its experts
    obj = json.loads(open(cluster).read())
    obj["gpus"][3]["state"] = "down"
    open(cluster, "w").write(json.dumps(obj))
    mon.poll()
    assert "GPU 3 lost" in lines[-1] and "wrote" in lines[-1]
    assert Placement.load(tmp / "out" / "plan-0001.json").extra["down_gpus"] == [3]


def test_monitor_cli_once_exits_cleanly(files, capsys):
    tmp, cluster, old, new, plan = files
    stream = tmp / "s.jsonl"
    stream.write_text("".join(json.dumps({"counts": ExpertLoads.load(new).counts.tolist()}) + "\n" for _ in range(3)))
    rc, out, _ = run(["monitor", stream, "--cluster", cluster, "--placement", plan, "--loads", old, "--once",
                      "--window", 1, "--patience", 1, "--out-dir", tmp / "o"], capsys)
    assert rc == 0 and "workload drift" in out
    assert (tmp / "o" / "plan-0001.json").exists()
    rc, out, _ = run(["monitor", stream, "--cluster", cluster, "--placement", plan, "--loads", old,
                      "--max-iterations", 2, "--interval", 0, "--out-dir", tmp / "o2"], capsys)
    assert rc == 0


def test_trtllm_statistics_count_only_what_the_folder_gained(files):
    from safetensors.numpy import save_file

    from vibe.recal.sources import TrtllmFolder

    tmp, _, old, _, plan = files
    folder = tmp / "stats"
    folder.mkdir()
    (folder / "meta_info.json").write_text(json.dumps({"num_experts": 16, "num_experts_per_token": 2}))
    counts = ExpertLoads.load(old).counts.astype(np.int64)
    it1 = {f"100_{l}": counts[i] for i, l in enumerate(LAYERS)}
    save_file(it1, str(folder / "rank0.safetensors"))
    src = TrtllmFolder(folder, Placement.load(plan), 2)
    first = src.poll()
    assert len(first) == 1 and np.array_equal(first[0].counts, counts)
    assert src.poll() == []  # unchanged folder: nothing new
    it2 = {f"101_{l}": 2 * counts[i] for i, l in enumerate(LAYERS)}
    save_file({**it1, **it2}, str(folder / "rank0.safetensors"))
    second = src.poll()
    assert len(second) == 1 and np.array_equal(second[0].counts, 2 * counts)  # only the new iteration


def test_monitor_reprofiles_a_gpu_that_runs_slower_than_predicted(files):
    from vibe.recal.drift import predicted_gpu_us

    tmp, cluster, old, _, plan = files
    counts = ExpertLoads.load(old).counts
    pred = predicted_gpu_us(Placement.load(plan), Cluster.load(cluster), counts)
    slow = pred.copy()
    slow[1] *= 1.25
    stream = tmp / "hw.jsonl"
    stream.write_text("".join(json.dumps({"counts": counts.tolist(), "gpu_us": slow.tolist()}) + "\n"
                              for _ in range(10)))
    lines: list[str] = []
    mon = make_monitor(tmp, cluster, old, plan, stream, lines)
    mon.poll()
    drift = [line for line in lines if "hardware drift" in line]
    assert len(drift) == 1 and "GPU 1 1.250x" in drift[0]
    fresh = Cluster.load(tmp / "out" / "cluster-0001.json")
    assert np.allclose(fresh.gpus[1].latency_us, Cluster.load(cluster).gpus[1].latency_us * 1.25)


def test_monitor_repairs_when_the_cluster_file_gets_new_curves(files):
    tmp, cluster, old, _, plan = files
    stream = tmp / "none.jsonl"
    stream.write_text("")
    lines: list[str] = []
    mon = make_monitor(tmp, cluster, old, plan, stream, lines)
    mon.poll()
    assert lines == []
    obj = json.loads(open(cluster).read())
    obj["gpus"][0]["latency"]["us"] = [1.3 * v for v in obj["gpus"][0]["latency"]["us"]]  # a re-profiled GPU 0
    open(cluster, "w").write(json.dumps(obj))
    mon.poll()
    assert len(lines) == 1 and "cluster file changed: GPU 0 1.300x its old curve" in lines[0]
    assert "wrote" in lines[0] or "not worth it" in lines[0]
    assert np.allclose(mon.cluster.gpus[0].latency_us, Cluster.load(cluster).gpus[0].latency_us)
