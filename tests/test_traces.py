"""RoutingTrace: the fast batch sampler, sampling from whole sequences, .npz round trips."""

from __future__ import annotations

import numpy as np
import pytest

import vibe.model.traces as traces_mod
from vibe.errors import InputError
from vibe.model import RoutingTrace
from vibe.model.traces import concat_traces


def small_trace(seed=0, lengths=(5, 1, 8, 3, 6), L=3, E=10, k=2) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    T = sum(lengths)
    experts = np.stack([np.stack([rng.choice(E, k, replace=False) for _ in range(T)]) for _ in range(L)])
    return RoutingTrace(experts.astype(np.int16), np.concatenate([[0], np.cumsum(lengths)]), E, (1, 2, 3), "toy")


@pytest.mark.parametrize("B", [1, 4, 17, 40, 500])
def test_batch_counts_equal_counting_the_sampled_tokens(B):
    t = small_trace()
    fast = t.sample_batch_counts(B, np.random.default_rng(9))
    slow = t.counts(t.sample_token_indices(B, np.random.default_rng(9)))
    assert np.array_equal(fast, slow)
    assert np.all(fast.sum(axis=1) == B * t.top_k)


def test_batches_are_whole_sequences_cut_at_the_end():
    t = small_trace()
    idx = t.sample_token_indices(19, np.random.default_rng(2))
    assert len(idx) == 19
    starts = set(t.seq_offsets[:-1].tolist())
    runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)
    for run in runs[:-1]:
        seq = np.searchsorted(t.seq_offsets, run[0], side="right") - 1
        # a run may hold several consecutive whole sequences; each starts at a sequence start
        assert run[0] in starts and run[-1] + 1 in set(t.seq_offsets.tolist()), (run, seq)
    assert runs[-1][0] in starts


def test_sampling_is_seeded():
    t = small_trace()
    a = t.sample_batch_counts(33, np.random.default_rng(5))
    b = t.sample_batch_counts(33, np.random.default_rng(5))
    c = t.sample_batch_counts(33, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_large_traces_fall_back_to_token_counting(monkeypatch):
    monkeypatch.setattr(traces_mod, "SEQUENCE_COUNTS_MAX_ENTRIES", 0)
    t = small_trace(seed=4)
    assert t.sequence_counts is None
    got = t.sample_batch_counts(23, np.random.default_rng(1))
    assert np.array_equal(got, t.counts(t.sample_token_indices(23, np.random.default_rng(1))))


def test_rejects_bad_batch_size():
    with pytest.raises(ValueError):
        small_trace().sample_batch_counts(0, np.random.default_rng(0))


def test_real_trace_sampler_matches_token_count_and_long_run_shares(esft_trace, esft_loads):
    t = esft_trace
    assert np.array_equal(t.counts(), esft_loads.counts)
    rng = np.random.default_rng(0)
    for B in (1, 256, 10_000):
        seed = int(rng.integers(1 << 30))
        assert np.array_equal(t.sample_batch_counts(B, np.random.default_rng(seed)),
                              t.counts(t.sample_token_indices(B, np.random.default_rng(seed))))
    # Re-sampled batches (4 sequences of 256 tokens) are noisy per step but average back to
    # the long-run shares.
    batches = np.stack([t.sample_batch_counts(256, rng) for _ in range(300)])
    shares = esft_loads.shares()
    mean_share = batches.sum(axis=0) / batches.sum(axis=(0, 2))[:, None]
    tv_of_mean = 0.5 * np.abs(mean_share - shares).sum(axis=1)
    tv_per_step = 0.5 * np.abs(batches / batches.sum(axis=2, keepdims=True) - shares).sum(axis=2)
    assert np.median(tv_of_mean) < 0.03 < np.median(tv_per_step)


def test_save_load_round_trip(tmp_path, esft_trace):
    path = tmp_path / "t.npz"
    esft_trace.save(path)
    back = RoutingTrace.load(path)
    assert np.array_equal(back.experts, esft_trace.experts)
    assert np.array_equal(back.seq_offsets, esft_trace.seq_offsets)
    assert back.layer_ids == esft_trace.layer_ids and back.num_experts == 64 and back.top_k == 6
    assert not list(tmp_path.glob(".*tmp"))


def test_load_rejects_malformed_files(tmp_path):
    good = tmp_path / "good.npz"
    small_trace().save(good)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="cut.npz"):
        RoutingTrace.load(truncated)
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, schema=np.array("vibe.trace/v1"), experts=np.array([object()], dtype=object))
    with pytest.raises(InputError, match="obj.npz"):
        RoutingTrace.load(pickled)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, experts=np.zeros((1, 2, 1), np.int16))
    with pytest.raises(InputError, match="not a vibe.trace/v1"):
        RoutingTrace.load(wrong)
    with pytest.raises(InputError, match="expert ids must lie"):
        RoutingTrace(np.full((1, 2, 1), 7, np.int16), np.array([0, 2]), 4)


def test_concat_keeps_every_sequence():
    a, b = small_trace(0), small_trace(1, lengths=(2, 2))
    j = concat_traces([a, b])
    assert j.num_sequences == a.num_sequences + b.num_sequences
    assert np.array_equal(j.counts(), a.counts() + b.counts())
    with pytest.raises(InputError):
        concat_traces([a, small_trace(0, E=12)])


def test_trace_must_match_layers_ids_and_experts_of_loads_and_placements():
    from vibe.model import ExpertLoads, Placement
    from vibe.model.traces import check_trace_matches

    t = small_trace(L=3, E=10)  # layers 1, 2, 3; 10 experts
    loads = ExpertLoads(np.ones((3, 10)), 2, (1, 2, 3))
    placement = Placement.init_by_mapping(np.tile(np.arange(10), (3, 1)), 2, layer_ids=(1, 2, 3))
    check_trace_matches(t, loads)
    check_trace_matches(t, placement)
    with pytest.raises(InputError, match="is for 3 layers x 10 experts, the loads for 3 x 12"):
        check_trace_matches(t, ExpertLoads(np.ones((3, 12)), 2))
    with pytest.raises(InputError, match="the placement for 2 x 10"):
        check_trace_matches(t, Placement.init_by_mapping(np.tile(np.arange(10), (2, 1)), 2))
    # same shape, other layer ids: the trace is of other layers (the simulator's check
    # used to let this through)
    with pytest.raises(InputError, match="layer ids"):
        check_trace_matches(t, Placement.init_by_mapping(np.tile(np.arange(10), (3, 1)), 2))  # ids 0, 1, 2
    with pytest.raises(InputError, match="layer ids"):
        check_trace_matches(t, ExpertLoads(np.ones((3, 10)), 2, (0, 2, 3)))
