"""Continuous batching like vLLM's: FCFS, chunked prefill under a token budget.

Every step: each running request that finished its prompt decodes one token; the
remaining budget goes, in arrival order, to prompts still being prefilled and then to
newly admitted requests (chunked: a long prompt spans several steps). A request is
admitted while fewer than `max_running` run and its whole KV footprint (prompt +
output tokens) fits the free KV capacity; reserving it up front means no preemption.
The step that completes a prompt also emits its first token (TTFT); each later step
emits one more (TPOT).

State is a few arrays over all requests plus the running set, so a step costs a handful
of numpy operations on at most `max_running` entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vibe.errors import VibeError
from vibe.sim.requests import Workload


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int = 8192  # token budget per step (prefill chunks + decodes)
    max_running: int = 256  # requests holding KV cache at once
    kv_capacity_tokens: int | None = None  # KV tokens of the EP group (None: unlimited)


@dataclass(frozen=True)
class Batch:
    requests: np.ndarray  # [n] request indices in the step
    tokens: np.ndarray  # [n] tokens each contributes (prefill chunk, or 1 for a decode)
    context: float  # total (query, context) token pairs attended: attention work

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.sum())


class Scheduler:
    """FCFS continuous batching over one workload; `schedule(now)` then `commit(batch, t)`."""

    def __init__(self, workload: Workload, config: SchedulerConfig = SchedulerConfig()):
        if config.max_batch_tokens < 1 or config.max_running < 1:
            raise VibeError("--max-batch-tokens and --max-running must be >= 1")
        w = workload
        need = w.input_len + w.output_len
        if config.kv_capacity_tokens is not None and need.max() > config.kv_capacity_tokens:
            i = int(np.argmax(need))
            raise VibeError(f"request {i} needs {need[i]} KV tokens, more than the capacity "
                            f"{config.kv_capacity_tokens}")
        self.cfg = config
        self.arrival, self.input_len, self.output_len = w.arrival_s, w.input_len.astype(np.int64), \
            w.output_len.astype(np.int64)
        n = w.num_requests
        self.prefilled = np.zeros(n, np.int64)
        self.generated = np.zeros(n, np.int64)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.running = np.zeros(0, np.int64)  # admission (= arrival) order
        self.next_new = 0  # first request not admitted yet
        self.kv_used = 0

    @property
    def done(self) -> bool:
        return self.next_new == len(self.arrival) and self.running.size == 0

    def next_arrival(self) -> float:
        return float(self.arrival[self.next_new]) if self.next_new < len(self.arrival) else np.inf

    def schedule(self, now: float) -> Batch:
        budget = self.cfg.max_batch_tokens
        run = self.running
        decoding = self.prefilled[run] == self.input_len[run]
        dec = run[decoding][:budget]
        budget -= dec.size
        pre = run[~decoding]
        pre_chunk = _fill(self.input_len[pre] - self.prefilled[pre], budget)
        budget -= int(pre_chunk.sum())
        new, new_chunk = self._admit(now, budget)
        reqs = np.concatenate([dec, pre, new])
        toks = np.concatenate([np.ones(dec.size, np.int64), pre_chunk, new_chunk])
        keep = toks > 0
        reqs, toks = reqs[keep], toks[keep]
        # A decode attends its whole context; a chunk [a, a+c) attends c*a + c(c+1)/2 pairs.
        is_dec = np.arange(reqs.size) < dec.size
        a = np.where(is_dec, self.input_len[reqs] + self.generated[reqs], self.prefilled[reqs])
        context = float((toks * a + toks * (toks + 1) / 2).sum())
        return Batch(reqs, toks, context)

    def _admit(self, now: float, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Admit arrived requests FCFS while slots, KV and token budget allow."""
        if budget <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        arrived = int(np.searchsorted(self.arrival, now, side="right"))
        room = self.cfg.max_running - self.running.size
        cand = np.arange(self.next_new, min(arrived, self.next_new + room))
        if cand.size == 0:
            return cand, cand
        # Stop at the first request that no longer gets a prefill token (FCFS: no skipping).
        prompt = self.input_len[cand]
        before = np.concatenate([[0], np.cumsum(prompt)[:-1]])
        n = int(np.searchsorted(before, budget, side="left"))
        if self.cfg.kv_capacity_tokens is not None:
            kv = np.cumsum(prompt + self.output_len[cand])
            n = min(n, int(np.searchsorted(kv, self.cfg.kv_capacity_tokens - self.kv_used, side="right")))
        cand = cand[:n]
        self.next_new += n
        self.kv_used += int((prompt[:n] + self.output_len[cand]).sum())
        self.running = np.concatenate([self.running, cand])
        return cand, _fill(prompt[:n], budget)

    def commit(self, batch: Batch, t_end: float) -> tuple[np.ndarray, np.ndarray]:
        """Apply a finished step at time `t_end`; returns (first-token requests, finished)."""
        r, c = batch.requests, batch.tokens
        was_decoding = self.prefilled[r] == self.input_len[r]
        self.prefilled[r] += np.where(was_decoding, 0, c)
        emits = was_decoding | (self.prefilled[r] == self.input_len[r])  # decode or last chunk
        r = r[emits]
        self.generated[r] += 1
        first = r[self.generated[r] == 1]
        self.first_token_s[first] = t_end
        fin = r[self.generated[r] >= self.output_len[r]]
        if fin.size:
            self.finish_s[fin] = t_end
            self.kv_used -= int((self.input_len[fin] + self.output_len[fin]).sum())
            self.running = self.running[~np.isin(self.running, fin)]
        return first, fin


def _fill(want: np.ndarray, budget: int) -> np.ndarray:
    """Give each entry, in order, min(want, what is left of budget): [n] -> [n]."""
    before = np.concatenate([[0], np.cumsum(want)[:-1]]) if want.size else want
    return np.clip(budget - before, 0, want).astype(np.int64)
