"""Continuous batching: token budget, chunked prefill, FCFS, caps, every token served."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.errors import VibeError
from vibe.sim.scheduler import Scheduler, SchedulerConfig
from vibe.sim.requests import Workload


def _run(w: Workload, cfg: SchedulerConfig, step_s: float = 0.01, check=None) -> Scheduler:
    s, t = Scheduler(w, cfg), 0.0
    while not s.done:
        b = s.schedule(t)
        if b.requests.size == 0:
            t = s.next_arrival()
            continue
        if check:
            check(s, b, t)
        t += step_s
        s.commit(b, t)
    return s


def _workload(n=40, seed=0) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload(np.sort(rng.uniform(0, 0.5, n)), rng.integers(1, 3000, n), rng.integers(1, 50, n))


def test_budget_caps_and_every_token_served():
    w = _workload()
    cfg = SchedulerConfig(max_batch_tokens=2048, max_running=8, kv_capacity_tokens=20_000)

    def check(s, b, t):
        assert b.num_tokens <= cfg.max_batch_tokens
        assert s.running.size <= cfg.max_running
        assert 0 <= s.kv_used <= cfg.kv_capacity_tokens
        assert np.all(w.arrival_s[b.requests] <= t)
        assert len(set(b.requests.tolist())) == b.requests.size

    s = _run(w, cfg, check=check)
    assert np.all(s.prefilled == w.input_len) and np.all(s.generated == w.output_len)
    assert np.all(s.first_token_s > w.arrival_s) and np.all(s.finish_s >= s.first_token_s)
    assert s.kv_used == 0


def test_long_prompt_is_chunked_and_decodes_come_first():
    w = Workload(np.array([0.0, 0.0]), np.array([5000, 100]), np.array([3, 3]))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=2048))
    b = s.schedule(0.0)
    assert b.requests.tolist() == [0] and b.tokens.tolist() == [2048]  # FCFS: no skipping ahead
    s.commit(b, 1.0)
    b = s.schedule(1.0)
    assert b.tokens.tolist() == [2048]
    s.commit(b, 2.0)
    b = s.schedule(2.0)
    assert b.requests.tolist() == [0, 1] and b.tokens.tolist() == [904, 100]
    s.commit(b, 3.0)
    assert s.first_token_s.tolist() == [3.0, 3.0]  # last chunk emits the first token
    b = s.schedule(3.0)
    assert b.tokens.tolist() == [1, 1]  # both decode


def test_fcfs_order_of_first_tokens():
    w = Workload(np.linspace(0, 0.1, 30), np.full(30, 700), np.full(30, 4))
    s = _run(w, SchedulerConfig(max_batch_tokens=1024, max_running=4))
    assert np.all(np.diff(s.first_token_s) >= 0)


def test_context_counts_attention_pairs():
    w = Workload(np.array([0.0]), np.array([4]), np.array([2]))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=3))
    b = s.schedule(0.0)
    assert b.context == 1 + 2 + 3  # chunk [0, 3)
    s.commit(b, 1.0)
    b = s.schedule(1.0)
    assert b.context == 4  # chunk [3, 4)
    s.commit(b, 2.0)
    assert s.schedule(2.0).context == 4 + 1 + 1  # decode of token 6 attends 5 + itself


def test_request_larger_than_kv_capacity_is_refused():
    w = Workload(np.array([0.0]), np.array([900]), np.array([200]))
    with pytest.raises(VibeError, match="KV tokens"):
        Scheduler(w, SchedulerConfig(kv_capacity_tokens=1000))


# ---- boundaries (each value below is worked out by hand) ------------------------------
def test_limits_of_one_are_allowed_and_zero_is_refused():
    w = Workload(np.array([0.0]), np.array([2]), np.array([1]))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=1, max_running=1))
    assert s.schedule(0.0).tokens.tolist() == [1]  # a 2-token prompt in 1-token chunks
    for cfg in (SchedulerConfig(max_batch_tokens=0), SchedulerConfig(max_running=0)):
        with pytest.raises(VibeError, match="^--max-batch-tokens and --max-running must be >= 1$"):
            Scheduler(w, cfg)


def test_kv_capacity_exactly_one_request_fits_and_the_error_names_the_request():
    w = Workload(np.array([0.0, 0.0]), np.array([800, 900]), np.array([200, 200]))
    # request 1 needs 900 + 200 = 1100 tokens: it fits a capacity of exactly 1100, not 1099
    Scheduler(w, SchedulerConfig(kv_capacity_tokens=1100))
    with pytest.raises(VibeError, match="request 1 needs 1100 KV tokens, more than the capacity 1099"):
        Scheduler(w, SchedulerConfig(kv_capacity_tokens=1099))


def test_kv_capacity_admits_requests_that_exactly_fill_it():
    # Each request holds 3 + 2 = 5 KV tokens. Capacity 10: the first two fit exactly
    # (5 + 5 = 10), the third waits until one of them finishes and frees its 5.
    w = Workload(np.zeros(3), np.full(3, 3), np.full(3, 2))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=100, kv_capacity_tokens=10))
    b = s.schedule(0.0)
    assert b.requests.tolist() == [0, 1] and s.kv_used == 10
    s.commit(b, 1.0)  # both prefilled: first tokens
    b = s.schedule(1.0)
    assert b.requests.tolist() == [0, 1] and b.tokens.tolist() == [1, 1]  # still no room for 2
    s.commit(b, 2.0)  # both emit their 2nd token: done, 10 KV tokens freed
    assert s.finish_s[:2].tolist() == [2.0, 2.0] and s.kv_used == 0
    b = s.schedule(2.0)
    assert b.requests.tolist() == [2] and s.kv_used == 5


def test_kv_room_counts_what_is_already_used():
    # Capacity 12, requests of 4 + 2 = 6 KV tokens; the second arrives later, when 6 are
    # used: 6 + 6 = 12 fits. The third (also 6) then finds 0 free and waits.
    w = Workload(np.array([0.0, 0.5, 0.5]), np.full(3, 4), np.full(3, 2))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=100, kv_capacity_tokens=12))
    s.commit(s.schedule(0.0), 0.1)
    b = s.schedule(0.5)
    assert b.requests.tolist() == [0, 1] and b.tokens.tolist() == [1, 4] and s.kv_used == 12


def test_one_token_of_budget_left_still_admits_a_request():
    # Budget 2: request 0 decodes (1 token) and request 1, arrived meanwhile, gets the
    # last token as a 1-token chunk of its 3-token prompt.
    w = Workload(np.array([0.0, 0.5]), np.array([2, 3]), np.array([3, 1]))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=2))
    s.commit(s.schedule(0.0), 0.1)  # request 0 prefills 2, first token
    b = s.schedule(1.0)
    assert b.requests.tolist() == [0, 1] and b.tokens.tolist() == [1, 1]


def test_all_arrived_requests_that_fit_are_admitted_at_once():
    # Three 2-token prompts, budget 8: all three in the first step (6 tokens).
    w = Workload(np.zeros(3), np.full(3, 2), np.full(3, 1))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=8))
    b = s.schedule(0.0)
    assert b.requests.tolist() == [0, 1, 2] and b.num_tokens == 6


def test_fill_hands_out_the_budget_in_order():
    from vibe.sim.scheduler import _fill

    # budget 10 over wants 8, 8, 8: 8, then the 2 left, then nothing (never negative)
    assert _fill(np.array([8, 8, 8]), 10).tolist() == [8, 2, 0]
    assert _fill(np.array([3, 4]), 0).tolist() == [0, 0]
    assert _fill(np.array([3, 4]), 100).tolist() == [3, 4]
    assert _fill(np.zeros(0, np.int64), 5).tolist() == []


def test_requests_without_tokens_stay_out_of_the_batch():
    # Budget 10, two 8-token prompts: the first takes 8, the second a 2-token chunk; a
    # third request arrived too but gets no token, so it is neither admitted nor batched.
    w = Workload(np.zeros(3), np.full(3, 8), np.full(3, 1))
    s = Scheduler(w, SchedulerConfig(max_batch_tokens=10))
    b = s.schedule(0.0)
    assert b.requests.tolist() == [0, 1] and b.tokens.tolist() == [8, 2] and s.running.tolist() == [0, 1]
    s.commit(b, 1.0)
    # request 0 is done (1 output token); request 1 needs 6 more, request 2 gets the last 4
    b = s.schedule(1.0)
    assert b.requests.tolist() == [1, 2] and b.tokens.tolist() == [6, 4]


def test_next_arrival_after_everyone_is_admitted_is_infinite():
    w = Workload(np.array([0.0, 2.0]), np.array([1, 1]), np.array([5, 5]))
    s = Scheduler(w, SchedulerConfig())
    assert s.next_arrival() == 0.0
    s.commit(s.schedule(0.0), 0.5)
    assert s.next_arrival() == 2.0
    s.commit(s.schedule(2.0), 2.5)
    assert s.next_arrival() == np.inf and not s.done
