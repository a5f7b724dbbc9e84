"""Bad input anywhere gives one line, exit 2 and nothing written (or, where the input is
fine, the right thing): one test per kind of failure, then the writes that go *to* the
path (symlinks, FIFOs, umask, outputs that are inputs), pipes, and `vibe cluster edit`."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vibe.cli import main
from vibe.errors import InputError
from vibe.io import atomic_path, check_not_input, write_text_atomic
from vibe.synth import synth_cluster, synth_loads, synth_loads_for_model


@pytest.fixture
def files(tmp_path):
    c, l = tmp_path / "cluster.json", tmp_path / "loads.json"
    synth_cluster(4, scenario="power-cap", seed=0).save(c)
    synth_loads_for_model("mixtral-8x7b", seed=0).save(l)  # small, and a serving-model preset
    p = tmp_path / "plan.json"
    assert main(["place", "--cluster", str(c), "--loads", str(l), "--policy", "linear", "--out", str(p)]) == 0
    return {"cluster": str(c), "loads": str(l), "plan": str(p), "dir": tmp_path}


def fails(argv, capsys, *fragments, out: Path | None = None, within_s: float = 5.0):
    """exit 2, one line `vibe: error: ...` holding `fragments`, `out` not written, fast."""
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = main([str(a) for a in argv])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("vibe: error:"), err
    for f in fragments:
        assert f in err, err
    if out is not None:
        assert not Path(out).exists()
    assert took < within_s
    return err


# ---- numbers at the CLI edge (table row "traceback" / "silent wrong result") ---------
@pytest.mark.parametrize("argv, words", [
    (["cluster", "synth", "--gpus", "4", "--seed", "-1"], "--seed: must be >= 0"),
    (["cluster", "synth", "--gpus", "1000000000000"], "--gpus: must be in 1..8192"),
    (["cluster", "synth", "--gpus", "2.5"], "--gpus: expected an integer"),
    (["cluster", "synth", "--gpus", "4", "--spread", "nan"], "--spread: must be a finite number"),
    (["loads", "synth", "--layers", "2", "--experts", "8", "--top-k", "2.5"], "--top-k: expected an integer"),
    (["loads", "synth", "--layers", "100000", "--experts", "100000", "--top-k", "2"], "--layers: must be in 1..4096"),
    (["loads", "synth", "--layers", "4096", "--experts", "65536", "--top-k", "2"],
     "over the 8 GiB limit: lower --layers or --experts"),
])
def test_bad_numbers_stop_at_parsing(argv, words, tmp_path, capsys):
    out = tmp_path / "x.json"
    fails([*argv, "--out", out], capsys, words, out=out)


@pytest.mark.parametrize("extra, words", [
    (["--duration", "nan"], "--duration: must be a finite number"),
    (["--duration", "inf"], "--duration: must be a finite number"),
    (["--jitter", "nan"], "--jitter: must be a finite number"),
    (["--drift-slowdown", "nan"], "--drift-slowdown: must be a finite number"),
    (["--seed", "-3"], "--seed"),
    (["--qps", "1e6", "--duration", "1e6"], "requests, over the 1,000,000"),
    (["--output-len", "10000000"], "steps (limit 1,000,000)"),
])
def test_simulate_numbers(files, capsys, extra, words):
    argv = ["simulate", "--cluster", files["cluster"], "--loads", files["loads"], "--placement", files["plan"],
            "--qps", "5", *extra]
    fails(argv, capsys, words)


@pytest.mark.parametrize("extra, words", [
    (["--batch-tokens", "nan"], "--batch-tokens: must be a finite number"),
    (["--redundant", "4096"], "--redundant 4096: at most 24"),
    (["--redundant", "1000000"], "--redundant 1000000: at most 24"),
    (["--seed", "-1"], "--seed"),
    (["--split", "speed"], "--split speed shares tokens between replicas"),
])
def test_place_numbers(files, capsys, extra, words):
    out = files["dir"] / "new.json"
    fails(["place", "--cluster", files["cluster"], "--loads", files["loads"], "--out", out, *extra],
          capsys, words, out=out)


def test_split_speed_with_a_policy_that_ignores_it_says_so(files, capsys):
    out = files["dir"] / "e.json"
    assert main(["place", "--cluster", files["cluster"], "--loads", files["loads"], "--policy", "eplb",
                 "--redundant", "4", "--split", "speed", "--out", str(out)]) == 0
    assert "ignores --split speed" in capsys.readouterr().err and out.exists()


def test_esft_and_profile_import_refuse_zero_counts(tmp_path, capsys):
    out = tmp_path / "x.json"
    fails(["loads", "import", "--format", "esft", tmp_path, "--num-experts", "0", "--out", out], capsys,
          "--num-experts: must be >= 1", out=out)
    fails(["profile", "import", tmp_path / "t.parquet", "--num-gpus", "0", "--out", out], capsys,
          "--num-gpus: must be in 1..", out=out)


def test_drift_past_the_end_of_the_run_warns(files, capsys):
    rc = main(["simulate", "--cluster", files["cluster"], "--loads", files["loads"], "--placement", files["plan"],
               "--qps", "20", "--duration", "1", "--input-len", "16", "--output-len", "4", "--drift-gpus", "1",
               "--json"])
    cap = capsys.readouterr()
    assert rc == 0 and "--drift-start 120 s is past the end" in cap.err
    json.loads(cap.out)


# ---- data-model checks -----------------------------------------------------------------
def _edit_json(path, fn):
    obj = json.loads(Path(path).read_text())
    fn(obj)
    Path(path).write_text(json.dumps(obj))


def test_fractional_top_k_and_rank_are_refused(files, capsys):
    _edit_json(files["loads"], lambda o: o.update(top_k=2.5))
    fails(["loads", "stats", files["loads"]], capsys, "'top_k' must be a positive integer, got 2.5")
    _edit_json(files["cluster"], lambda o: o["gpus"][2].update(rank=2.5))
    fails(["evaluate", "--cluster", files["cluster"], "--loads", files["loads"], "--placement", files["plan"]],
          capsys, "gpus[2].rank", "2.5")


def test_huge_curve_is_refused_not_inf(files, capsys):
    _edit_json(files["cluster"], lambda o: o["gpus"][1]["latency"].update(
        us=[1e308] * len(o["gpus"][1]["latency"]["us"])))
    fails(["evaluate", "--cluster", files["cluster"], "--loads", files["loads"], "--placement", files["plan"]],
          capsys, files["cluster"], "implausibly large")


def test_all_zero_loads_have_no_skew(tmp_path, capsys):
    p = tmp_path / "zero.json"
    p.write_text(json.dumps({"schema": "vibe.loads/v1", "top_k": 1, "counts": [[0, 0], [0, 0]]}))

    fails(["loads", "stats", p], capsys, "every count is zero")
    p.write_text(json.dumps({"schema": "vibe.loads/v1", "top_k": 1, "counts": [[0, 0], [3, 1]]}))
    assert main(["loads", "stats", str(p), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["entropy"][0] is None and st["empty_layers"] == [0] and st["summary"]["gini"]["max"] > 0


def test_nan_rows_of_a_parquet_table_are_reported(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 6
    cols = {"num_tokens": [1.0, 2, 4, 8, 16, 32], "hidden_size": [8] * n, "inter_size": [8] * n, "topk": [1] * n,
            "num_experts": [1] * n, "moe_tp_size": [1] * n, "moe_ep_size": [1] * n,
            "distribution": ["balanced"] * n, "moe_dtype": ["bf16"] * n,
            "latency": [0.1, 0.2, float("nan"), 0.4, float("inf"), 0.6]}
    pq.write_table(pa.table(cols), tmp_path / "t.parquet")
    out = tmp_path / "c.json"
    fails(["profile", "import", tmp_path / "t.parquet", "--hidden", "8", "--out", out], capsys,
          "2 row(s) hold NaN or inf in column 'latency' (first: row 2)", out=out)


def test_unknown_fleet_column_is_named(tmp_path, capsys, files):
    csv = tmp_path / "fleet.csv"
    csv.write_text("uuid,perf\na,1.0\nb,1.1\n")
    out = tmp_path / "c.json"
    fails(["profile", "import", csv, "--base", files["cluster"], "--fleet-column", "nope", "--out", out], capsys,
          "has no column 'nope' (--fleet-column)", out=out)


def test_one_row_trace_is_named_with_its_extension(files, capsys):
    one = files["dir"] / "one.csv"
    one.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,100,20\n")
    fails(["simulate", "--cluster", files["cluster"], "--loads", files["loads"], "--placement", files["plan"],
           "--trace", one, "--qps", "5"], capsys, f"{one}: its requests all arrive at one instant")


# ---- messages that name the real problem ----------------------------------------------
@pytest.mark.parametrize("argv_of, words", [
    (lambda d: ["loads", "import", "--format", "sglang", d / "x.pt", "--top-k", "2"], "is a folder, expected a .pt"),
    (lambda d: ["loads", "import", "--format", "npy", d / "x.npy", "--top-k", "2"], "is a folder, expected a .npy"),
    (lambda d: ["profile", "import", d / "x.parquet"], "is a folder, expected a .parquet"),
    (lambda d: ["loads", "stats", d / "x.npz"], "is a folder, expected a .npz trace"),
])
def test_a_folder_is_called_a_folder(tmp_path, capsys, argv_of, words):
    for name in ("x.pt", "x.npy", "x.parquet", "x.npz"):
        (tmp_path / name).mkdir()
    argv = argv_of(tmp_path)
    if argv[0] != "loads" or argv[1] != "stats":
        argv += ["--out", tmp_path / "o.json"]
    fails(argv, capsys, words, out=tmp_path / "o.json")


def test_three_random_bytes_are_not_a_torch_file(tmp_path, capsys):
    pt = tmp_path / "r.pt"
    pt.write_bytes(b"\x13\xa7\x02")
    fails(["loads", "import", "--format", "sglang", pt, "--top-k", "2", "--out", tmp_path / "o.json"], capsys,
          "not a torch file", out=tmp_path / "o.json")


# ---- output paths ----------------------------------------------------------------------
def test_outputs_are_checked_before_the_work(files, capsys):
    a_file = files["dir"] / "a-file"
    a_file.write_text("keep me")
    fails(["demo", "--out-dir", a_file], capsys, "is a file, not a folder")
    fails(["sweep", "--cluster", files["cluster"], "--loads", files["loads"], "--qps", "5", "--out", a_file],
          capsys, "is a file, not a folder")
    assert a_file.read_text() == "keep me"


def test_an_output_that_is_an_input_is_refused(files, capsys):
    before = Path(files["loads"]).read_text()
    fails(["place", "--cluster", files["cluster"], "--loads", files["loads"], "--out", files["loads"]], capsys,
          "is also an input")
    link = files["dir"] / "link.json"
    link.symlink_to(files["cluster"])
    fails(["loads", "export", files["loads"], "--format", "json", "--out", files["loads"]], capsys, "is also an input")
    fails(["cluster", "edit", files["cluster"], "--down", "1", "--out", link], capsys, "is also an input")
    assert Path(files["loads"]).read_text() == before
    with pytest.raises(InputError):
        check_not_input([link], [files["cluster"]])


def test_writes_follow_symlinks_and_the_umask(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    old = os.umask(0o022)
    try:
        write_text_atomic(link, "new")
        fresh = tmp_path / "fresh.txt"
        write_text_atomic(fresh, "x")
    finally:
        os.umask(old)
    assert link.is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    target.chmod(0o600)  # a replaced file keeps its own mode
    write_text_atomic(target, "again")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.txt", "link.json", "real.json"]


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    with atomic_path(fifo) as p:
        assert p == fifo
        with open(p, "w") as fh:
            fh.write("hello")
    reader.join(5)
    assert got == ["hello"] and stat.S_ISFIFO(fifo.stat().st_mode)
    # a link to a pipe (what /dev/stdout is in `vibe ... --out /dev/stdout | cat`)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    write_text_atomic(link, "through the link")
    reader.join(5)
    assert got[-1] == "through the link" and link.is_symlink() and stat.S_ISFIFO(fifo.stat().st_mode)


# ---- pipes, help, cluster edit ------------------------------------------------------------
def test_lines_into_a_pipe_are_not_wrapped(files, capsys):
    long = files["dir"] / ("x" * 120 + ".json")
    synth_loads_for_model("mixtral-8x7b", seed=6).save(long)
    assert main(["loads", "diff", files["loads"], str(long)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("32 common layers: TV median") and "cosine median" in out[-1]
    assert any(str(long) in line for line in out)  # the title holds the whole path


def test_help_shows_defaults_and_required(capsys):
    assert main(["simulate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--slo-ttft-ms SLO_TTFT_MS (default: 2000.0)" in text
    assert "--seed SEED (default: 0)" in text and "--placement PLACEMENT vibe.placement/v1 file (required)" in text
    assert "--qps QPS request rate; required without --trace" in text
    assert main(["sweep", "--help"]) == 0
    assert "(required)" in " ".join(capsys.readouterr().out.split()).split("--qps X [X ...]")[-1][:40]
    assert main(["profile", "import", "--help"]) == 0
    assert "--top-k TOPK, --topk TOPK" in capsys.readouterr().out


def test_cluster_edit_derates_and_marks_down(files, capsys):
    out = files["dir"] / "derated.json"
    assert main(["cluster", "edit", files["cluster"], "--scale", "2=1.25", "--down", "3", "--out", str(out)]) == 0
    a, b = json.loads(Path(files["cluster"]).read_text()), json.loads(out.read_text())
    np.testing.assert_allclose(b["gpus"][2]["latency"]["us"], 1.25 * np.array(a["gpus"][2]["latency"]["us"]))
    assert b["gpus"][1]["latency"] == a["gpus"][1]["latency"] and b["gpus"][2]["derated"] == [1.25]
    assert b["gpus"][3]["state"] == "down" and "state" not in b["gpus"][2]
    again = files["dir"] / "up.json"
    assert main(["cluster", "edit", str(out), "--up", "3", "--out", str(again)]) == 0
    assert "state" not in json.loads(again.read_text())["gpus"][3]
    bad = files["dir"] / "bad.json"
    fails(["cluster", "edit", files["cluster"], "--scale", "9=2", "--out", bad], capsys, "has no GPU rank 9", out=bad)
    fails(["cluster", "edit", files["cluster"], "--scale", "1=0", "--out", bad], capsys, "--scale: must be > 0",
          out=bad)
    fails(["cluster", "edit", files["cluster"], "--scale", "1", "--out", bad], capsys, "RANK=FACTOR", out=bad)


@pytest.mark.parametrize("kind, key", [("loads", "counts"), ("plan", "physical_to_logical_map")])
def test_an_integer_past_float_range_is_one_line(files, capsys, kind, key):
    """JSON integers have no size limit; one past float range must not crash the parser."""
    bad = files["dir"] / f"huge-{kind}.json"
    obj = json.loads(Path(files[kind]).read_text())
    obj[key][0][0] = 10**400
    bad.write_text(json.dumps(obj))
    args = {"loads": files["loads"], "plan": files["plan"], kind: bad}
    fails(["evaluate", "--cluster", files["cluster"], "--loads", args["loads"], "--placement", args["plan"]],
          capsys, bad.name, f"'{key}' holds a number too large for a float")
