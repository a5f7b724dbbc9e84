"""`vibe simulate` and `vibe sweep`: JSON output, report folder, bad input -> one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vibe.cli import main
from vibe.model import ExpertLoads
from vibe.policies import place
from vibe.synth import synth_cluster, synth_loads_for_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Synthetic loads of the DeepSeek-V2-Lite shape (the layer ids and experts of the ESFT
    traces), so the CLI is tested without ../shared."""
    d = tmp_path_factory.mktemp("sim")
    cluster = synth_cluster(8, scenario="power-cap", seed=1)
    cluster.save(d / "cluster.json")
    loads = synth_loads_for_model("deepseek-v2-lite", seed=0)
    loads.save(d / "loads.json")
    place(loads, cluster, "eplb").save(d / "eplb.json")
    v3 = ExpertLoads(np.ones((58, 256)), 8, tuple(range(3, 61)))
    place(v3, cluster, "linear").save(d / "v3.json")
    return d


def _sim(files, *extra):
    return ["simulate", "--cluster", str(files / "cluster.json"), "--loads", str(files / "loads.json"),
            "--placement", str(files / "eplb.json"), *extra]


def test_simulate_json(files, capsys):
    args = _sim(files, "--qps", "60", "--input-len", "1024", "--output-len", "32", "--duration", "2",
                "--slo-ttft-ms", "100", "--slo-tpot-ms", "30", "--seed", "1", "--json")
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ttft_ms", "tpot_ms"):
        assert set(out[key]) >= {"p50", "p90", "p99"} and out[key]["p50"] <= out[key]["p90"] <= out[key]["p99"]
    assert out["requests"] > 50 and 0 <= out["slo_attainment"] <= 1 and out["throughput_tok_s"] > 0
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == out  # same seed, same output


def test_simulate_azure_trace_with_routing_trace(files, shared_data, esft_dir, capsys):
    trace = shared_data / "request-traces" / "AzureLLMInferenceTrace_conv.csv"
    assert main(_sim(files, "--trace", str(trace), "--qps", "30", "--duration", "2",
                     "--routing-trace", str(esft_dir / "intent"))) == 0
    out = capsys.readouterr().out
    assert "SLO attainment" in out and "TTFT" in out


def test_sweep_writes_report(files, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["sweep", "--cluster", str(files / "cluster.json"), "--loads", str(files / "loads.json"),
               "--policies", "linear", "eplb", "--qps", "40", "120", "--seeds", "0", "--duration", "1.5",
               "--output-len", "32", "--slo-ttft-ms", "100", "--slo-tpot-ms", "30", "--workers", "2",
               "--out", str(out)])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["p90_ttft_vs_qps.png", "results.json", "slo_vs_qps.png", "table.md"]
    res = json.loads((out / "results.json").read_text())
    assert {(r["policy"], r["qps"]) for r in res["rows"]} == {(p, q) for p in ("linear", "eplb") for q in (40, 120)}
    assert set(res["sustained_qps_at_90pct"]) == {"linear", "eplb"}
    assert (out / "slo_vs_qps.png").read_bytes()[:4] == b"\x89PNG"
    assert "highest QPS at 90% SLO attainment" in (out / "table.md").read_text()


def _fails(args, capsys, *words):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vibe: error:")
    for w in words:
        assert w in err
    return err


@pytest.mark.parametrize("qps", ["0", "-1"])
def test_bad_qps(files, capsys, qps):
    _fails(_sim(files, "--qps", qps), capsys, "argument --qps: must be > 0")


def test_empty_and_malformed_trace(files, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _fails(_sim(files, "--trace", str(empty)), capsys, str(empty), "is empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,12,3\n")
    _fails(_sim(files, "--trace", str(bad)), capsys, str(bad), "line 2")


def test_placement_for_another_model(files, capsys):
    args = _sim(files, "--qps", "5")
    args[args.index(str(files / "eplb.json"))] = str(files / "v3.json")
    _fails(args, capsys, "v3.json", "256")


def test_model_that_does_not_fit_the_loads(files, capsys):
    _fails(_sim(files, "--qps", "5", "--model", "deepseek-v3"), capsys, "deepseek-v3")


def test_bad_routing_trace(files, tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    _fails(_sim(files, "--qps", "5", "--routing-trace", str(junk)), capsys, str(junk))


def test_ray_address_without_ray(files, tmp_path, capsys):
    pytest.importorskip("numpy")
    try:
        import ray  # noqa: F401
        pytest.skip("ray is installed here")
    except ImportError:
        pass
    _fails(["sweep", "--cluster", str(files / "cluster.json"), "--loads", str(files / "loads.json"),
            "--policies", "linear", "--qps", "5", "--ray-address", "auto", "--out", str(tmp_path / "r")],
           capsys, "ray")
    assert not (tmp_path / "r").exists()


def test_sweep_adds_the_placement_ceiling(files, tmp_path, capsys):
    out = tmp_path / "ceiling"
    rc = main(["sweep", "--cluster", str(files / "cluster.json"), "--loads", str(files / "loads.json"),
               "--policies", "eplb", "--ceiling", "--qps", "60", "--duration", "1", "--output-len", "16",
               "--workers", "1", "--out", str(out)])
    assert rc == 0
    rows = {r["policy"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"eplb", "ceiling"}
    assert rows["ceiling"]["steps"]["idle_at_barrier"] == 0.0 < rows["eplb"]["steps"]["idle_at_barrier"]
    assert rows["ceiling"]["e2e_ms"]["mean"] <= rows["eplb"]["e2e_ms"]["mean"]
    capsys.readouterr()


def test_sweep_compares_placement_files(files, tmp_path, capsys):
    out = tmp_path / "files"
    rc = main(["sweep", "--cluster", str(files / "cluster.json"), "--loads", str(files / "loads.json"),
               "--policies", "eplb", "--placements", str(files / "eplb.json"), "--qps", "60", "--duration", "1",
               "--output-len", "16", "--workers", "1", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["policy"] for r in res["rows"]} == {"eplb", "eplb.json"}
    # The same placement under the same seed gives the same numbers.
    a, b = res["rows"]
    assert a["ttft_ms"] == b["ttft_ms"]
    capsys.readouterr()
    _fails(["sweep", "--cluster", str(files / "cluster.json"), "--loads", str(files / "loads.json"),
            "--placements", str(files / "v3.json"), "--qps", "5", "--out", str(tmp_path / "x")], capsys, "v3.json")
