"""Request arrivals: real Azure LLM traces rescaled to a target QPS, or Poisson arrivals
with fixed prompt / output lengths (the paper's 1024-in / 128-out "sonnet" shape).

A workload is three arrays sorted by arrival time; lengths are in tokens, times in s.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from vibe.errors import InputError, VibeError
from vibe.io import require_file


@dataclass(frozen=True)
class Workload:
    arrival_s: np.ndarray  # [N] float, non-decreasing
    input_len: np.ndarray  # [N] int >= 1 prompt tokens
    output_len: np.ndarray  # [N] int >= 1 generated tokens
    name: str = "workload"

    @property
    def num_requests(self) -> int:
        return len(self.arrival_s)

    @property
    def qps(self) -> float:
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if self.num_requests > 1 else 0.0
        return (self.num_requests - 1) / span if span > 0 else float("nan")


def check_qps(qps: float) -> float:
    if not (qps > 0 and np.isfinite(qps)):
        raise VibeError(f"QPS must be a positive number, got {qps}")
    return float(qps)


def poisson_workload(qps: float, duration_s: float, input_len: int, output_len: int, seed: int = 0,
                     max_requests: int | None = None) -> Workload:
    """Poisson arrivals at `qps` over [0, duration_s), fixed lengths."""
    qps = check_qps(qps)
    if duration_s <= 0:
        raise VibeError(f"duration must be > 0 s, got {duration_s}")
    if input_len < 1 or output_len < 1:
        raise VibeError("input and output lengths must be >= 1 token")
    rng = np.random.default_rng(seed)
    n = int(qps * duration_s * 1.2 + 10 * np.sqrt(qps * duration_s) + 10)  # enough gaps, trimmed below
    with np.errstate(over="ignore"):  # at ~1e-308 QPS the gaps pass the float range: inf, no arrival
        t = np.cumsum(rng.exponential(1.0 / qps, size=n))
    t = t[t < duration_s][:max_requests]
    if t.size == 0:
        raise VibeError(f"no request arrives in {duration_s} s at {qps} QPS")
    k = t.size
    return Workload(t, np.full(k, int(input_len)), np.full(k, int(output_len)),
                    f"poisson {qps:g} QPS {input_len}-in/{output_len}-out")


def read_azure_trace(path: str | os.PathLike) -> Workload:
    """An Azure LLM inference trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens) at its own rate."""
    p = Path(path)
    require_file(p, "a request trace (.csv)")
    try:
        with open(p, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(p, f"cannot read ({exc.__class__.__name__})") from None
    if not rows:
        raise InputError(p, "is empty")
    head = [c.strip() for c in rows[0]]
    want = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    if any(w not in head for w in want):
        raise InputError(p, f"header must name {', '.join(want)}, got {','.join(head)[:80]!r}")
    cols = [head.index(w) for w in want]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise InputError(p, "holds no request")
    t, inp, out = np.empty(len(body)), np.empty(len(body), np.int64), np.empty(len(body), np.int64)
    for i, r in enumerate(body):
        try:
            t[i] = _seconds(r[cols[0]])
            inp[i], out[i] = int(r[cols[1]]), int(r[cols[2]])
        except (IndexError, ValueError):
            raise InputError(p, f"line {i + 2}: expected a timestamp and two token counts") from None
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:  # float() reads 'inf' and 'nan'
        raise InputError(p, f"line {int(bad[0]) + 2}: the timestamp must be a finite number")
    if np.any(inp < 0) or np.any(out < 0):
        raise InputError(p, "token counts must be >= 0")
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order[0]]
    # A request needs one prompt token to be scheduled and yields at least one token.
    return Workload(t, np.maximum(inp[order], 1), np.maximum(out[order], 1), p.stem)


def _seconds(stamp: str) -> float:
    """Azure timestamps ('2023-11-16 18:17:03.9799600', 7 fractional digits) or plain seconds."""
    s = stamp.strip()
    try:
        return float(s)
    except ValueError:
        pass
    day, _, frac = s.partition(".")
    base = datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def rescale(workload: Workload, qps: float | None = None, duration_s: float | None = None,
            max_requests: int | None = None) -> Workload:
    """Stretch or squeeze the arrival times to a mean rate of `qps` (keeping the bursts),
    then keep the requests that arrive before `duration_s` (and the first `max_requests`)."""
    t = workload.arrival_s
    if qps is not None:
        native = workload.qps
        if not np.isfinite(native):
            raise VibeError(f"{workload.name}: cannot rescale a trace whose requests all arrive at once")
        t = t * (native / check_qps(qps))
    keep = np.ones(len(t), bool) if duration_s is None else t < duration_s
    idx = np.flatnonzero(keep)[:max_requests]
    if idx.size == 0:
        raise VibeError(f"{workload.name}: no request arrives within {duration_s} s")
    return Workload(t[idx], workload.input_len[idx], workload.output_len[idx], workload.name)
