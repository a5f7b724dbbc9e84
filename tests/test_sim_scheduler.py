"""Continuous batching: token budget, chunked prefill, FCFS, caps, every token served."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.errors import VibeError
from vibe.sim.scheduler import Scheduler, SchedulerConfig
from vibe.sim.workload import Workload


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
