"""vibe as SGLang's EPLB algorithm, without SGLang: the dispatch drop-in on SGLang's
argument and return conventions, the fallback to the original for other algorithms,
the plug-in staying inert unless asked. The run through SGLang's code is tests/engines/."""

from __future__ import annotations

import enum
import sys

import numpy as np
import pytest

from vibe.engines.sglang import make_sglang_rebalance, sglang_flags, sglang_rebalance_np
from vibe.engines.sglang_plugin import register
from vibe.model import Placement

torch = pytest.importorskip("torch")


class Algo(enum.Enum):
    deepseek = 1
    deepseek_hierarchical = 2
    elasticity_aware = 3


def test_shapes_dense_rows_and_window_axis(rng):
    counts = np.zeros((3, 5, 16))  # [window, decoder layers, experts], layer 0 dense
    counts[:, 1:] = rng.integers(0, 100, size=(3, 4, 16))
    phy, log2phy, logcnt = sglang_rebalance_np(counts, 24, 3, 4, 2, True, env={})
    assert phy.shape == (5, 24) and logcnt.shape == (5, 16) and (logcnt >= 1).all()
    assert (logcnt.sum(axis=1) == 24).all() and log2phy.shape[:2] == (5, 16)


def test_drop_in_answers_deepseek_and_delegates_the_rest():
    calls = []
    fn = make_sglang_rebalance(lambda *a: calls.append(a[-1]) or "original")
    tokens = torch.randint(0, 50, (2, 3, 8))
    phy, log2phy, logcnt = fn(tokens, 12, 3, None, 1, Algo.deepseek)
    assert phy.dtype == torch.int64 and tuple(phy.shape) == (3, 12) and int(logcnt.sum()) == 36
    assert fn(tokens, 12, 3, None, 1, Algo.elasticity_aware) == "original" and calls == [Algo.elasticity_aware]


def test_plugin_inert_and_flags():
    before = "sglang" in sys.modules
    register({})
    assert ("sglang" in sys.modules) == before
    p = Placement.init_by_mapping(np.tile(np.arange(72) % 64, (2, 1)), 8, 64)
    assert sglang_flags(p, "x.json") == "--ep-size 8 --ep-num-redundant-experts 8 --init-expert-location x.json"
