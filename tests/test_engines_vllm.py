"""vLLM adapter pieces that run without vLLM: return-type detection, the plug-in staying
inert unless asked, plan checks. The run through vLLM's own code is tests/engines/."""

from __future__ import annotations

import sys
from typing import Tuple

import numpy as np
import pytest

from vibe.engines.vllm import check_plan_fits, returns_maps
from vibe.engines.vllm_plugin import register
from vibe.errors import InputError
from vibe.model import Placement


class NewAbstract:
    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None) -> "torch.Tensor":  # noqa: F821
        raise NotImplementedError


class OldAbstract:
    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes,
                          num_ranks) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":  # noqa: F821
        raise NotImplementedError


class OldTyping:
    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks) -> Tuple[int, int, int]:
        raise NotImplementedError


def test_return_kind_detection():
    assert not returns_maps(NewAbstract)
    assert returns_maps(OldAbstract) and returns_maps(OldTyping)


def test_plugin_is_inert_without_settings():
    before = "vllm" in sys.modules
    register({})
    assert ("vllm" in sys.modules) == before


def test_plan_must_fit_the_model():
    plan = Placement.init_by_mapping(np.tile(np.arange(10) % 8, (3, 1)), 2, 8)
    assert check_plan_fits(plan, 3, 10, 8, "p.json").shape == (3, 10)
    with pytest.raises(InputError, match=r"p.json: .*2 MoE layers x 12 physical experts.*num_redundant_experts to 2"):
        check_plan_fits(plan, 2, 12, 8, "p.json")


def test_policy_dumps_the_load_window(tmp_path):
    from vibe.engines.vllm import rebalance_np
    from vibe.model import ExpertLoads

    w = np.arange(2 * 12, dtype=float).reshape(2, 12)
    out = tmp_path / "window.json"
    phy = rebalance_np(w, 16, 4, 2, 8, env={"VIBE_LOADS_OUT": str(out), "VIBE_TOP_K": "2"})
    assert phy.shape == (2, 16)
    loads = ExpertLoads.load(out)
    assert loads.top_k == 2 and np.array_equal(loads.counts, w) and loads.layer_ids == (0, 1)
    out.unlink()
    rebalance_np(np.zeros((2, 12)), 16, 4, 2, 8, env={"VIBE_LOADS_OUT": str(out)})
    assert not out.exists()  # empty windows (start-up, profile runs) are not written
