"""Workloads: the real Azure traces rescaled to a QPS, Poisson arrivals, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.errors import InputError, VibeError
from vibe.sim.requests import poisson_workload, read_azure_trace, rescale


@pytest.fixture(scope="module")
def conv(shared_data):
    return read_azure_trace(shared_data / "request-traces" / "AzureLLMInferenceTrace_conv.csv")


def test_azure_trace_reads_real_requests(conv):
    assert conv.num_requests == 19_366  # every data row (the file has no final newline)
    assert conv.arrival_s[0] == 0 and np.all(np.diff(conv.arrival_s) >= 0)
    assert conv.input_len.min() >= 1 and conv.output_len.min() >= 1
    assert 500 < np.median(conv.input_len) < 2000  # conversation prompts: ~1k tokens


@pytest.mark.parametrize("qps", [0.5, 4.0, 20.0])
def test_rescale_hits_the_target_rate_and_keeps_burstiness(conv, qps):
    w = rescale(conv, qps)
    assert w.qps == pytest.approx(qps, rel=1e-9)
    gaps, orig = np.diff(w.arrival_s), np.diff(conv.arrival_s)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(np.std(orig) / np.mean(orig), rel=1e-9)
    short = rescale(conv, qps, duration_s=30.0)
    assert short.arrival_s.max() < 30.0 and short.num_requests < conv.num_requests


def test_poisson_rate_and_lengths():
    w = poisson_workload(10.0, 400.0, 1024, 128, seed=1)
    assert w.num_requests == pytest.approx(4000, rel=0.05)
    assert set(w.input_len.tolist()) == {1024} and set(w.output_len.tolist()) == {128}
    gaps = np.diff(w.arrival_s)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.05)  # exponential gaps
    same = poisson_workload(10.0, 400.0, 1024, 128, seed=1)
    np.testing.assert_array_equal(w.arrival_s, same.arrival_s)


@pytest.mark.parametrize("qps", [0.0, -3.0, float("nan")])
def test_bad_qps(qps):
    with pytest.raises(VibeError, match="QPS must be a positive number"):
        poisson_workload(qps, 10.0, 10, 10)


@pytest.mark.parametrize("text, problem", [
    ("", "is empty"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "holds no request"),
    ("time,prompt,output\n1,2,3\n", "header must name"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47,abc,3\n",
     "line 3"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n0.5,-3,2\n", ">= 0"),
])
def test_bad_trace_files(tmp_path, text, problem):
    f = tmp_path / "trace.csv"
    f.write_text(text)
    with pytest.raises(InputError, match=problem) as exc:
        read_azure_trace(f)
    assert str(f) in str(exc.value)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_rate_near_the_float_limit_is_a_clean_error():
    # found by a float-limit sweep of the CLI flags: gaps of ~1e308 s overflowed the cumsum
    with pytest.raises(VibeError, match=r"^no request arrives in 0.5 s at 1e-308 QPS$"):
        poisson_workload(1e-308, 0.5, 16, 4)
