"""`vibe profile import` of the real MoE latency tables and fleet tables in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.cli import main
from vibe.cost import expert_time_us
from vibe.errors import InputError
from vibe.model import Cluster
from vibe.profile import tables

H100 = "moe-latency/h100_sxm_vllm_0.24.0_moe_perf.parquet"
H200 = "moe-latency/h200_sxm_vllm_0.24.0_moe_perf.parquet"
SGL_GEN = "moe-latency/h100_sxm_sglang_0.5.10_wideep_generation_moe_perf.parquet"
A100 = "moe-latency/a100_sxm_vllm_0.14.0_moe_perf.parquet"
SGEMM = "gpu-variability/sgemm-longhorn-agg.csv"
GPU32 = "gpu-variability/32gpu-variability.csv"


@pytest.fixture(scope="module")
def h100(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "h100.json"
    assert main(["profile", "import", str(shared_data / H100), "--out", str(out)]) == 0
    return Cluster.load(out)


@pytest.fixture(scope="module")
def h200(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "h200.json"
    assert main(["profile", "import", str(shared_data / H200), "--out", str(out)]) == 0
    return Cluster.load(out)


def test_default_is_deepseek_v3_shape(h100):
    assert h100.expert == {"hidden": 7168, "intermediate": 2048, "dtype": "fp8_block"}
    src = h100.extra["source"]
    assert (src["num_experts"], src["topk"], src["ep"], src["tp"]) == (256, 8, 1, 1)
    assert src["distribution"] == "balanced" and src["device"] == "NVIDIA H100 80GB HBM3"


def test_curve_is_floor_then_slope(h100, h200):
    for c in (h100, h200):
        g = c.gpus[0]
        t = lambda n: float(expert_time_us(c, 0, np.array([n]))[0])  # noqa: E731
        assert np.all(np.diff(g.latency_us) >= 0) and np.all(g.latency_us > 0)
        assert t(8) / t(1) < 1.25  # memory-bound floor: 8x the tokens, about the same time
        assert 1.7 < t(512) / t(256) < 2.3  # compute-bound: time grows with the tokens
        fit = g.extra["fit"]
        assert 1 <= fit["knee_tokens"] <= 64 and fit["max_rel_error"] < 0.05


def test_curve_reproduces_the_table(shared_data, h100):
    """overhead + (experts per GPU) * t(n) gives back the table's layer latency."""
    table = tables.read_moe_table(shared_data / H100)
    mask, info = tables.select_rows(table, H100)
    rows = mask & (table["moe_ep_size"] == 1) & (table["num_tokens"] >= 32)
    n = table["num_tokens"][rows] * 8 / 256
    predicted = h100.gpus[0].overhead_us + 256 * expert_time_us(h100, 0, n)
    measured = table["latency"][rows] * 1000
    assert rows.sum() >= 20
    assert np.max(np.abs(predicted / measured - 1)) < 0.02


def test_h200_floor_below_h100_same_slope(h100, h200):
    """H200: same compute as H100, more memory bandwidth."""
    f100, f200 = h100.gpus[0].extra["fit"], h200.gpus[0].extra["fit"]
    assert f200["floor_us"] < 0.85 * f100["floor_us"]
    assert abs(f200["slope_us_per_token"] / f100["slope_us_per_token"] - 1) < 0.15


def test_wide_ep_table_uses_largest_ep(shared_data):
    curve, info = tables.curve_from_table(shared_data / SGL_GEN)
    assert info["ep"] == 256 and info["op_name"] == "moe_generation" and info["distribution"] == "uniform"
    assert curve["overhead_us"] > 0 and np.all(np.diff(curve["tokens"]) > 0)
    assert curve["us"][-1] > 5 * curve["us"][0]


def test_shape_flags(shared_data):
    curve, info = tables.curve_from_table(shared_data / H100, hidden=4096, intermediate=1536,
                                          num_experts=128, topk=8, dtype="bfloat16")
    assert (info["hidden"], info["intermediate"], info["num_experts"]) == (4096, 1536, 128)
    with pytest.raises(InputError, match="several shapes match"):
        tables.curve_from_table(shared_data / H100, hidden=4096)
    with pytest.raises(InputError, match="no shape matches"):
        tables.curve_from_table(shared_data / H100, hidden=12345)


def test_table_without_unskewed_rows_says_what_to_pick(shared_data):
    with pytest.raises(InputError, match="--distribution"):
        tables.curve_from_table(shared_data / A100)
    curve, info = tables.curve_from_table(shared_data / A100, distribution="power_law_1.01")
    assert info["distribution"] == "power_law_1.01" and len(curve["tokens"]) >= 5


def test_fleet_factors_match_the_measured_spread(shared_data):
    ids, f = tables.read_fleet(shared_data / SGEMM)
    assert len(ids) == 392 and abs(np.median(f) - 1) < 1e-9
    # The spread the data README reports for this fleet: p5 0.974, p95 1.027, max 1.203.
    assert abs(np.percentile(f, 5) - 0.974) < 0.005 and abs(np.percentile(f, 95) - 1.027) < 0.005
    assert abs(f.max() - 1.203) < 0.005
    ids32, f32 = tables.read_fleet(shared_data / GPU32)
    assert len(ids32) == 32 and f32.min() > 0.8


def test_import_with_fleet(shared_data, tmp_path, h100):
    out = tmp_path / "fleet.json"
    argv = ["profile", "import", str(shared_data / H100), "--fleet", str(shared_data / SGEMM),
            "--num-gpus", "16", "--seed", "5", "--out", str(out)]
    assert main(argv) == 0
    c = Cluster.load(out)
    assert c.num_gpus == 16 and c.nodes.tolist() == [0] * 8 + [1] * 8
    base = h100.gpus[0].latency_us
    factors = np.array([g.extra["fleet"]["factor"] for g in c.gpus])
    _, us = c.latency_table()
    assert np.allclose(us[:, 0], base[0])  # memory floor untouched ('compute' regime)
    assert np.allclose(us[:, -1] - base[0], factors * (base[-1] - base[0]))
    # Same seed, same GPUs; another seed, others.
    again = tmp_path / "again.json"
    assert main(argv[:-1] + [str(again)]) == 0
    assert [g.extra["fleet"]["id"] for g in Cluster.load(again).gpus] == [g.extra["fleet"]["id"] for g in c.gpus]
    other = tmp_path / "other.json"
    assert main(argv[:-3] + ["6", "--out", str(other)]) == 0
    assert [g.extra["fleet"]["id"] for g in Cluster.load(other).gpus] != [g.extra["fleet"]["id"] for g in c.gpus]


def test_fleet_csv_as_table_spreads_a_base(shared_data, tmp_path, h100):
    base = tmp_path / "base.json"
    h100.save(base)
    out = tmp_path / "f.json"
    assert main(["profile", "import", str(shared_data / GPU32), "--base", str(base), "--num-gpus", "4",
                 "--regime", "all", "--out", str(out)]) == 0
    c = Cluster.load(out)
    f = np.array([g.extra["fleet"]["factor"] for g in c.gpus])
    assert np.allclose(c.latency_table()[1], f[:, None] * h100.gpus[0].latency_us[None, :])


@pytest.mark.parametrize("make, argv_extra, words", [
    (lambda p: p.write_text("not parquet"), [], "not a readable parquet table"),
    (lambda p: p.write_text("a,b\n1,2\n"), ["--base", "x.json"], "not a fleet table"),
    (lambda p: p.write_text("uuid,perf\ng1,1.0\ng2,1.1\n"), [], "needs --base"),
    (None, [], "no such file"),
])
def test_bad_tables(tmp_path, capsys, make, argv_extra, words, shared_data):
    suffix = ".parquet" if "parquet" in words or make is None else ".csv"
    path = tmp_path / f"t{suffix}"
    if make is not None:
        make(path)
    if "--base" in argv_extra:
        base = tmp_path / "x.json"
        assert main(["profile", "import", str(shared_data / H100), "--out", str(base)]) == 0
        argv_extra = ["--base", str(base)]
    out = tmp_path / "out.json"
    assert main(["profile", "import", str(path), *argv_extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and str(path) in err[0]
    assert not out.exists()


def test_too_many_fleet_gpus(shared_data, tmp_path, capsys):
    out = tmp_path / "o.json"
    assert main(["profile", "import", str(shared_data / H100), "--fleet", str(shared_data / GPU32),
                 "--num-gpus", "64", "--out", str(out)]) == 2
    assert "--num-gpus must be 1..32" in capsys.readouterr().err and not out.exists()
