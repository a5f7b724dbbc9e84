"""`vibe profile compare`: which GPUs changed, by how much, in which regime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vibe.cli import main
from vibe.model import Cluster
from vibe.profile import tables
from vibe.profile.compare import compare_clusters

H100 = "moe-latency/h100_sxm_vllm_0.24.0_moe_perf.parquet"


@pytest.fixture(scope="module")
def base(shared_data, tmp_path_factory):
    """8 identical GPUs with the H100 DeepSeek-V3 expert curve derived from the real table."""
    out = tmp_path_factory.mktemp("cmp") / "a.json"
    assert main(["profile", "import", str(shared_data / H100), "--num-gpus", "8", "--out", str(out)]) == 0
    return out


def _drifted(a: Cluster) -> Cluster:
    """GPU 2 power-capped (compute part 20% slower), GPU 3 with slower memory (floor +15%),
    GPU 5 10% faster everywhere; the others unchanged."""
    gpus = []
    for g in a.gpus:
        us = g.latency_us
        if g.rank == 2:
            us = tables.spread_curve(us, np.array([1.2]), "compute")[0]
        elif g.rank == 3:
            us = us + 0.15 * us[0]
        elif g.rank == 5:
            us = us * 0.9
        gpus.append(type(g)(rank=g.rank, node=g.node, tokens=g.tokens, latency_us=us,
                            overhead_us=g.overhead_us, name=g.name))
    return a.with_gpus(gpus)


def test_finds_who_changed_and_where(base):
    a = Cluster.load(base)
    rows = compare_clusters(a, _drifted(a))
    verdicts = {r["rank"]: (r["verdict"], r["regime"]) for r in rows}
    assert verdicts[2] == ("slower", "compute")
    assert verdicts[3] == ("slower", "memory")
    assert verdicts[5][0] == "faster"
    assert all(verdicts[g] == ("same", None) for g in (0, 1, 4, 6, 7))
    r2 = rows[2]
    assert r2["memory_ratio"] < 1.03 and 1.05 < r2["compute_ratio"] < 1.2
    assert abs(rows[5]["ratio"] - 0.9) < 1e-6
    assert rows[3]["memory_ratio"] > rows[3]["compute_ratio"] > 1.0


def test_self_compare_is_unchanged(base):
    a = Cluster.load(base)
    assert all(r["verdict"] == "same" and abs(r["ratio"] - 1) < 1e-12 for r in compare_clusters(a, a))


def test_cli_table_and_json(base, tmp_path, capsys):
    b = tmp_path / "b.json"
    _drifted(Cluster.load(base)).save(b)
    assert main(["profile", "compare", str(base), str(b)]) == 0
    out = capsys.readouterr().out
    assert "3 of 8 GPUs changed" in out and "slower, compute" in out and "slower, memory" in out
    assert main(["profile", "compare", str(base), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in rows].count("slower") == 2


def test_different_gpu_counts_is_an_error(base, shared_data, tmp_path, capsys):
    one = tmp_path / "one.json"
    assert main(["profile", "import", str(shared_data / H100), "--out", str(one)]) == 0
    capsys.readouterr()
    assert main(["profile", "compare", str(base), str(one)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(one) in err and "1 GPUs" in err and len(err.splitlines()) == 1


def test_bad_file(base, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["profile", "compare", str(base), str(bad)]) == 2
    assert "invalid JSON" in capsys.readouterr().err
