"""Skew, co-activation and drift statistics, checked against direct definitions and on
the real ESFT domains."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vibe.cli import main
from vibe.model import ExpertLoads
from vibe.loadstats import coactivation, compare_loads, cosine_distance, entropy, gini, max_over_mean, top_pairs, tv_distance


def test_extremes():
    E = 8
    uniform, single = np.ones((1, E)), np.eye(1, E)
    assert gini(uniform)[0] == pytest.approx(0) and gini(single)[0] == pytest.approx((E - 1) / E)
    assert entropy(uniform)[0] == pytest.approx(1) and entropy(single)[0] == pytest.approx(0)
    assert entropy(uniform, normalized=False)[0] == pytest.approx(3.0)
    assert max_over_mean(uniform)[0] == pytest.approx(1) and max_over_mean(single)[0] == pytest.approx(E)
    assert tv_distance(single, np.eye(1, E, 3))[0] == pytest.approx(1)
    assert cosine_distance(single, np.eye(1, E, 3))[0] == pytest.approx(1)


counts_rows = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)),
                     elements=st.floats(0, 1e6)).filter(lambda a: np.all(a.sum(axis=1) > 0))


@settings(max_examples=60, deadline=None)
@given(counts_rows)
def test_gini_matches_the_mean_absolute_difference_definition(c):
    for row, g in zip(c, gini(c)):
        p = row / row.sum()
        direct = np.abs(p[:, None] - p[None, :]).sum() / (2 * len(p) * p.sum())
        assert g == pytest.approx(direct, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(counts_rows, st.integers(0, 2**31))
def test_distances_are_symmetric_bounded_and_scale_free(a, seed):
    b = np.random.default_rng(seed).permutation(a, axis=1)
    for f in (tv_distance, cosine_distance):
        d = f(a, b)
        assert np.allclose(d, f(b, a)) and np.all(d > -1e-12) and np.all(d < 1 + 1e-12)
        assert np.allclose(f(a, 7 * a), 0, atol=1e-12)


def test_coactivation_matches_one_hot_products():
    rng = np.random.default_rng(0)
    E, k, T = 12, 3, 500
    ex = np.stack([rng.choice(E, k, replace=False) for _ in range(T)])
    onehot = np.zeros((T, E), np.int64)
    np.put_along_axis(onehot, ex, 1, axis=1)
    assert np.array_equal(coactivation(ex, E), onehot.T @ onehot)


def test_top_pairs_finds_a_planted_pair():
    rng = np.random.default_rng(1)
    E, T = 16, 2000
    ex = np.stack([rng.choice(E, 2, replace=False) for _ in range(T)])
    ex[::4] = [3, 11]  # a quarter of the tokens pick 3 and 11 together
    (a, b, n, lift), *_ = top_pairs(coactivation(ex, E), T, n=3)
    assert (a, b) == (3, 11) and n >= T // 4 and lift > 2


def test_esft_domains_differ_as_the_data_shows(esft_dir):
    """Per-layer TV distance between domains is about 0.28-0.44 at the median, far above the
    distance between two halves of one domain's sequences."""
    from vibe.engines.esft import load_esft_trace

    traces = {d: load_esft_trace(esft_dir / d) for d in ("intent", "law", "summary")}
    loads = {d: t.to_loads() for d, t in traces.items()}
    for a, b in itertools.combinations(loads, 2):
        r = compare_loads(loads[a], loads[b])
        assert r["layer_ids"] == list(range(1, 27))
        assert 0.28 <= r["overall"]["tv_median"] <= 0.44, (a, b, r["overall"])
        assert r["overall"]["cosine_all"] > 0.2
    t = traces["intent"]
    half = t.seq_offsets[t.num_sequences // 2]
    first = ExpertLoads(t.counts(slice(0, half)), 6, t.layer_ids)
    second = ExpertLoads(t.counts(slice(half, t.num_tokens)), 6, t.layer_ids)
    assert compare_loads(first, second)["overall"]["tv_median"] < 0.2


def test_esft_skew_is_in_the_measured_range(esft_loads):
    m = max_over_mean(esft_loads.counts)
    assert 3.0 < np.median(m) < 5.6 and m.max() < 7.7 + 1e-9
    assert np.all(gini(esft_loads.counts) > 0.1) and np.all(entropy(esft_loads.counts) < 1)


def test_cli_stats_and_diff(esft_dir, tmp_path, capsys):
    a, b, trace = tmp_path / "intent.json", tmp_path / "law.json", tmp_path / "intent.npz"
    assert main(["loads", "import", "--format", "esft", str(esft_dir / "intent"), "--out", str(a), "--trace", str(trace)]) == 0
    assert main(["loads", "import", "--format", "esft", str(esft_dir / "law"), "--out", str(b)]) == 0
    capsys.readouterr()
    assert main(["loads", "diff", str(a), str(b), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["tv"]) == 26 and 0.28 <= r["overall"]["tv_median"] <= 0.44
    assert main(["loads", "diff", str(trace), str(a), "--json"]) == 0  # a trace is its own loads
    assert json.loads(capsys.readouterr().out)["overall"]["tv_max"] == pytest.approx(0, abs=1e-12)
    assert main(["loads", "stats", str(trace), "--json", "--pairs", "2"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert len(s["gini"]) == 26 and len(s["top_pairs"]) == 26 and len(s["top_pairs"][0]) == 2
    assert s["top_pairs"][0][0]["lift"] > 1
    assert main(["loads", "stats", str(a)]) == 0
    assert "median layer" in capsys.readouterr().out


def test_cli_diff_without_common_layers(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    ExpertLoads(np.ones((2, 4)), 2, (0, 1)).save(a)
    ExpertLoads(np.ones((2, 4)), 2, (5, 6)).save(b)
    assert main(["loads", "diff", str(a), str(b)]) == 2
    assert "share no layer" in capsys.readouterr().err
