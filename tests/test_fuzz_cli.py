"""Property tests over every reader and every numeric flag, in-process through
`vibe.cli.main`: random and mutated files, values that are NaN, inf, negative, huge,
fractional or empty. The property: exit 0 with a valid output, or exit 2 with one line
`vibe: error: ...` and nothing written.

`make test` draws a small fixed set (profile "ci"); `make fuzz` (VIBE_HYPOTHESIS_PROFILE=
fuzz) draws twenty times as many random examples."""

from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vibe.cli import main
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.model.traces import RoutingTrace
from vibe.synth import synth_cluster, synth_loads, synth_loads_for_model

from _docs import with_entry

FUZZ = os.environ.get("VIBE_HYPOTHESIS_PROFILE") == "fuzz"


def examples(n: int):
    """`n` examples in `make test`, 20x that in `make fuzz`; no per-example deadline
    (the shared CI machine is noisy)."""
    return settings(max_examples=n * 20 if FUZZ else n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-base")
    paths = {k: d / k for k in ("cluster.json", "loads.json", "plan.json", "small.json", "trace.npz", "mix.json",
                                "mixplan.json")}
    synth_cluster(4, scenario="power-cap", seed=0).save(paths["cluster.json"])
    synth_loads(2, 8, 2, seed=0, layer_ids=(1, 2)).save(paths["loads.json"])
    synth_loads_for_model("mixtral-8x7b", seed=0).save(paths["mix.json"])
    rng = np.random.default_rng(0)
    RoutingTrace(rng.integers(0, 8, size=(2, 60, 2)).astype(np.int16), np.arange(0, 61, 10), 8,
                 (1, 2)).save(paths["trace.npz"])
    for loads, plan in (("loads.json", "plan.json"), ("mix.json", "mixplan.json")):
        assert main(["place", "--cluster", str(paths["cluster.json"]), "--loads", str(paths[loads]), "--policy",
                     "linear", "--out", str(paths[plan])]) == 0
    return {k: str(v) for k, v in paths.items()}


# A numpy warning printed on the way to an error is a failure: pytest would otherwise
# capture it, and only a terminal (or `make property-runs`, without that plugin) shows it.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

READERS = {".json": None, "cluster": Cluster.load, "loads": ExpertLoads.load, "placement": Placement.load}


def check_run(argv, out: Path | None = None, kind=None) -> int:
    """Run `vibe argv` and assert the property; returns the exit code."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        rc = main([str(a) for a in argv])
    err = [line for line in stderr.getvalue().splitlines() if line.strip() and not line.startswith("vibe: warning:")]
    assert rc in (0, 2), (rc, argv, stderr.getvalue())
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("vibe: error:"), (argv, stderr.getvalue())
        if out is not None:
            assert not Path(out).exists(), argv
    else:
        assert not err, (argv, stderr.getvalue())
        if out is not None and kind is not None:
            READERS[kind](out)  # what was written reads back as a valid file
    return rc


# ---- values ---------------------------------------------------------------------------------
NASTY = ["", " ", "nan", "-nan", "inf", "-inf", "1e400", "-0", "0", "-1", "2.5", "1e3", "0x10", "abc", "1_000",
         "9" * 30, "-9" * 3, "1e-320", "3.0"]
numbers = st.one_of(
    st.sampled_from(NASTY),
    st.integers(-(10**6), 10**6).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-50, max_value=50).map(lambda x: f"{x:.3g}"),
)


CLUSTER_SYNTH = ["--gpus", "--spread", "--gpus-per-node", "--seed"]
LOADS_SYNTH = ["--layers", "--experts", "--top-k", "--tokens", "--seed"]


@examples(25)
@given(flag=st.sampled_from(CLUSTER_SYNTH), value=numbers)
def test_cluster_synth_numbers(flag, value):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "c.json"
        argv = {"--gpus": "4", "--seed": "0"}
        argv[flag] = value
        check_run(["cluster", "synth", *(x for kv in argv.items() for x in kv), "--out", out], out, "cluster")


@examples(25)
@given(flag=st.sampled_from(LOADS_SYNTH), value=numbers)
def test_loads_synth_numbers(flag, value):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "l.json"
        argv = {"--layers": "2", "--experts": "8", "--top-k": "2"}
        argv[flag] = value
        check_run(["loads", "synth", *(x for kv in argv.items() for x in kv), "--out", out], out, "loads")


PLACE_FLAGS = ["--redundant", "--num-groups", "--batch-tokens", "--weights", "--seed", "--samples", "--time-limit"]


@examples(30)
@given(flag=st.sampled_from(PLACE_FLAGS), values=st.lists(numbers, min_size=1, max_size=2),
       policy=st.sampled_from(["linear", "eplb", "vibe"]))
def test_place_numbers(base, flag, values, policy):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "p.json"
        values = values if flag in ("--batch-tokens", "--weights") else values[:1]
        check_run(["place", "--cluster", base["cluster.json"], "--loads", base["loads.json"], "--policy", policy,
                   flag, *values, "--out", out], out, "placement")


@examples(20)
@given(flag=st.sampled_from(["--batch-tokens", "--weights", "--samples", "--seed"]),
       values=st.lists(numbers, min_size=1, max_size=2))
def test_evaluate_numbers(base, flag, values):
    values = values if flag in ("--batch-tokens", "--weights") else values[:1]
    check_run(["evaluate", "--cluster", base["cluster.json"], "--loads", base["loads.json"], "--placement",
               base["plan.json"], "--no-lower-bound", flag, *values])


SIM_FLAGS = ["--qps", "--duration", "--jitter", "--drift-gpus", "--drift-slowdown", "--drift-start", "--slo-ttft-ms",
             "--slo-tpot-ms", "--max-running", "--kv-tokens", "--seed", "--max-requests"]
small_numbers = st.one_of(st.sampled_from(NASTY), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                          st.integers(-5, 5000).map(str))


@examples(20)
@given(flag=st.sampled_from(SIM_FLAGS), value=small_numbers)
def test_simulate_numbers(base, flag, value):
    argv = {"--qps": "20", "--duration": "0.5", "--input-len": "16", "--output-len": "4", "--max-requests": "3"}
    argv[flag] = value
    check_run(["simulate", "--cluster", base["cluster.json"], "--loads", base["mix.json"], "--placement",
               base["mixplan.json"], "--json", *(x for kv in argv.items() for x in kv)])


# ---- files ----------------------------------------------------------------------------------
leaf_values = st.sampled_from([float("nan"), float("inf"), -1, 0, 1e308, 2.5, "x", None, [], {}, True, 10**30, -0.5])


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list) and obj:
        # a list's first, last and one middle element stand for the rest
        for i in sorted({0, len(obj) // 2, len(obj) - 1}):
            yield from _leaves(obj[i], path + (i,))
    yield path



@st.composite
def mutated_json(draw, text: str):
    obj = json.loads(text)
    leaves = list(_leaves(obj))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(leaves))
        try:
            obj = with_entry(obj, path, draw(leaf_values))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change removed that path
        leaves = list(_leaves(obj))
    return json.dumps(obj).encode()


@st.composite
def mutated_bytes(draw, data: bytes):
    how = draw(st.sampled_from(["random", "truncate", "flip", "empty"]))
    if how == "random":
        return draw(st.binary(max_size=64))
    if how == "empty":
        return b""
    if how == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


def _fuzzed(base, name: str, draw_from) -> bytes:
    data = Path(base[name]).read_bytes()
    return draw_from(mutated_json(data.decode()) if name.endswith(".json") else mutated_bytes(data))


@examples(30)
@given(data=st.data(), which=st.sampled_from(["cluster.json", "loads.json", "plan.json"]))
def test_mutated_model_files(base, data, which):
    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / which
        blob = _fuzzed(base, which, data.draw) if data.draw(st.booleans()) else data.draw(
            mutated_bytes(Path(base[which]).read_bytes()))
        bad.write_bytes(blob)
        files = {**base, which: str(bad)}
        out = Path(d) / "out.json"
        if which == "cluster.json":
            check_run(["cluster", "edit", files["cluster.json"], "--scale", "1=1.1", "--out", out], out, "cluster")
        if which == "loads.json":
            check_run(["loads", "stats", files["loads.json"]])
            check_run(["loads", "export", files["loads.json"], "--format", "json", "--out", out], out)
        check_run(["evaluate", "--cluster", files["cluster.json"], "--loads", files["loads.json"], "--placement",
                   files["plan.json"], "--no-lower-bound"])


@examples(20)
@given(data=st.data(), fmt=st.sampled_from(["npy", "json", "sglang"]))
def test_mutated_count_files(base, data, fmt):
    counts = ExpertLoads.load(base["loads.json"]).counts.astype(np.int64)
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, counts)
    elif fmt == "json":
        buf.write(json.dumps({"counts": counts.tolist(), "top_k": 2}).encode())
    else:
        torch = pytest.importorskip("torch")
        torch.save({"logical_count": torch.from_numpy(counts[None])}, buf)
    blob = data.draw(mutated_json(buf.getvalue().decode()) if fmt == "json" else mutated_bytes(buf.getvalue()))
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / {"npy": "c.npy", "json": "c.json", "sglang": "c.pt"}[fmt]
        src.write_bytes(blob)
        out = Path(d) / "loads.json"
        check_run(["loads", "import", "--format", fmt, src, "--top-k", "2", "--out", out], out, "loads")


@examples(15)
@given(data=st.data())
def test_mutated_trace(base, data):
    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "t.npz"
        bad.write_bytes(data.draw(mutated_bytes(Path(base["trace.npz"]).read_bytes())))
        check_run(["loads", "stats", bad])
        out = Path(d) / "p.json"
        check_run(["place", "--cluster", base["cluster.json"], "--loads", base["loads.json"], "--traces", bad,
                   "--samples", "2", "--out", out], out, "placement")


csv_cell = st.one_of(st.sampled_from(["", "nan", "inf", "-1", "0", "1.0", "x", "1e308", "2023-11-16 18:17:03.97"]),
                     st.floats(allow_nan=True).map(repr), st.integers(-5, 10**6).map(str))


@pytest.mark.parametrize("rows, error", [
    # a seed of the test below: medians near the float limit overflowed with a warning
    ([["a", "1e308"], ["a", "1e308"], ["b", "1e308"]], None),
    ([["a", "1"], ["b", "1e308"], ["b", "1e308"]], "GPU b: perf is 1e+308 x the fleet's median, not a plausible spread"),
    # another: a ratio that underflows to 0 leaked a divide-by-zero warning from the log
    ([["", "1e308"], ["nan", "2.225073858507e-311"]], "GPU nan: perf is 0 x the fleet's median, not a plausible spread"),
])
def test_fleet_tables_near_the_float_limit(base, tmp_path, rows, error):
    fleet, out = tmp_path / "fleet.csv", tmp_path / "c.json"
    fleet.write_text("\n".join(["uuid,perf", *(",".join(r) for r in rows)]) + "\n")
    rc = check_run(["profile", "import", fleet, "--base", base["cluster.json"], "--num-gpus", "2", "--out", out],
                   out, "cluster")
    assert rc == (0 if error is None else 2)


@examples(15)
@given(rows=st.lists(st.lists(csv_cell, min_size=2, max_size=3), max_size=5),
       header=st.sampled_from(["uuid,perf", "GPU_ID,PerfVar_classA", "a,b", ""]))
def test_random_fleet_tables(base, rows, header):
    with tempfile.TemporaryDirectory() as d:
        fleet = Path(d) / "fleet.csv"
        fleet.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
        out = Path(d) / "c.json"
        check_run(["profile", "import", fleet, "--base", base["cluster.json"], "--num-gpus", "2", "--out", out],
                  out, "cluster")


@examples(10)
@given(rows=st.lists(st.lists(csv_cell, min_size=3, max_size=3), max_size=4), qps=st.sampled_from([None, "5"]))
def test_random_request_traces(base, rows, qps):
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "req.csv"
        trace.write_text("\n".join(["TIMESTAMP,ContextTokens,GeneratedTokens", *(",".join(r) for r in rows)]) + "\n")
        check_run(["simulate", "--cluster", base["cluster.json"], "--loads", base["mix.json"], "--placement",
                   base["mixplan.json"], "--trace", trace, "--max-requests", "3", "--max-batch-tokens", "65536",
                   "--json", *(["--qps", qps] if qps else [])])


@pytest.mark.parametrize("stamps", [["0", "inf"], ["nan", "1"], ["-inf", "inf"]])
def test_a_request_trace_with_a_timestamp_that_is_not_finite_is_one_line(base, tmp_path, capsys, stamps):
    """A seed of the test above found it: float() reads 'inf' and 'nan', and inf - inf
    leaked a numpy warning before the error. Now the line is named."""
    trace = tmp_path / "req.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},8,2\n" for t in stamps))
    rc = main(["simulate", "--cluster", base["cluster.json"], "--loads", base["mix.json"], "--placement",
               base["mixplan.json"], "--trace", str(trace)])
    bad = 2 + next(k for k, t in enumerate(stamps) if t not in ("0", "1"))
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"vibe: error: {trace}: line {bad}: the timestamp must be a finite number"


@examples(10)
@given(lines=st.lists(st.text(alphabet="0123456789\t -x.", max_size=30), min_size=0, max_size=4))
def test_random_esft_folders(lines):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "domain"
        folder.mkdir()
        (folder / "expert_weights_1.txt").write_text("\n".join(lines) + "\n")
        out = Path(d) / "l.json"
        check_run(["loads", "import", "--format", "esft", folder, "--top-k", "2", "--num-experts", "8", "--out", out],
                  out, "loads")


@examples(12)
@given(data=st.data(), which=st.sampled_from(["meta_info.json", "rank0.safetensors"]))
def test_mutated_trtllm_folders(data, which):
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "stats"
        folder.mkdir()
        (folder / "meta_info.json").write_text(json.dumps({"num_experts": 4, "num_experts_per_token": 2}))
        save_file({"0_1": np.array([1, 2, 3, 4]), "1_1": np.array([4, 3, 2, 1])}, str(folder / "rank0.safetensors"))
        good = (folder / which).read_bytes()
        blob = data.draw(mutated_json(good.decode()) if which.endswith(".json") else mutated_bytes(good))
        (folder / which).write_bytes(blob)
        out = Path(d) / "l.json"
        check_run(["loads", "import", "--format", "trtllm", folder, "--out", out], out, "loads")


def _moe_table_columns(n: int = 6) -> dict:
    return {"num_tokens": [1.0, 2, 4, 8, 16, 32], "hidden_size": [8] * n, "inter_size": [8] * n, "topk": [1] * n,
            "num_experts": [1] * n, "moe_tp_size": [1] * n, "moe_ep_size": [1] * n,
            "distribution": ["balanced"] * n, "moe_dtype": ["bf16"] * n,
            "latency": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}


def test_a_parquet_table_with_a_damaged_column_name_is_one_line(tmp_path):
    """A seed of the test below found it: a column name that is no longer UTF-8 (one byte of
    'latency' in the footer flipped) fails when pyarrow decodes the names, after the read."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(_moe_table_columns()), buf)
    blob = buf.getvalue().to_pybytes()
    spots = [k for k in range(len(blob)) if blob.startswith(b"latency", k)]
    assert spots  # the name is stored in plain bytes (the Arrow schema copy is base64)
    for k in spots:
        table, out = tmp_path / f"t{k}.parquet", tmp_path / f"c{k}.json"
        table.write_bytes(blob[:k] + b"\x80" + blob[k + 1:])
        check_run(["profile", "import", table, "--hidden", "8", "--out", out], out, "cluster")


def test_a_parquet_table_with_a_damaged_text_value_is_one_line(tmp_path):
    """A seed of the test below found it: a 'moe_dtype' value that is no longer UTF-8
    ('bf16' -> b'\\x80f16' in a data page) fails when pyarrow decodes the column."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(_moe_table_columns()), buf, compression="none")
    blob = buf.getvalue().to_pybytes()
    k = blob.index(b"\x04\x00\x00\x00bf16") + 4  # the dictionary page's value (length-prefixed)
    table, out = tmp_path / "t.parquet", tmp_path / "c.json"
    table.write_bytes(blob[:k] + b"\x80" + blob[k + 1:])
    assert check_run(["profile", "import", table, "--hidden", "8", "--out", out], out, "cluster") == 2
    from vibe.errors import InputError
    from vibe.profile.tables import read_moe_table

    with pytest.raises(InputError, match="column 'moe_dtype' is not readable"):
        read_moe_table(table)


@examples(12)
@given(data=st.data())
def test_mutated_parquet_tables(data):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 6
    cols = _moe_table_columns(n)
    # one column's values replaced by drawn numbers (NaN, inf, negative, huge included)
    col = data.draw(st.sampled_from(["num_tokens", "latency", "hidden_size", "moe_ep_size"]))
    cols[col] = data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), buf)
    blob = buf.getvalue().to_pybytes()
    if data.draw(st.booleans()):
        blob = data.draw(mutated_bytes(blob))
    with tempfile.TemporaryDirectory() as d:
        table = Path(d) / "t.parquet"
        table.write_bytes(blob)
        out = Path(d) / "c.json"
        check_run(["profile", "import", table, "--hidden", "8", "--out", out], out, "cluster")


@pytest.mark.parametrize("command, value, rc", [
    # found by a sweep of every numeric flag at the float limits (1.7e308 .. 5e-324):
    # 1e-308 tokens a step overflowed the fluid bound's time per token, 1e-308 QPS the
    # arrival gaps; both printed numpy warnings before their result
    ("evaluate", "1e-308", 2), ("evaluate", "5e-324", 2), ("evaluate", "0.001", 0), ("simulate", "1e-308", 2)])
def test_numbers_at_the_float_limit(base, command, value, rc):
    if command == "evaluate":
        argv = ["evaluate", "--cluster", base["cluster.json"], "--loads", base["loads.json"], "--placement",
                base["plan.json"], "--batch-tokens", value]
    else:
        argv = ["simulate", "--cluster", base["cluster.json"], "--loads", base["mix.json"], "--placement",
                base["mixplan.json"], "--duration", "0.5", "--max-requests", "3", "--qps", value]
    assert check_run(argv) == rc
