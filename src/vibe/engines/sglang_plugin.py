"""The SGLang plug-in (entry point `sglang.srt.plugins: vibe = vibe.engines.sglang_plugin:register`).

SGLang (0.5.2x) runs every general plug-in early in each process (`load_plugins()` in the
engine, scheduler and workers). With VIBE_EPLB=1, `register()` replaces
`sglang.srt.eplb.eplb_algorithms.rebalance_experts`, the one dispatch that SGLang's
periodic rebalancer and `--init-expert-location logical_count.json` both call (it is
looked up on the module at every call), with vibe's time-balanced placement for the
DeepSeek algorithms (`--eplb-algorithm auto | deepseek | deepseek_hierarchical`); the
elasticity-aware ones stay SGLang's. Per-rank curves: VIBE_CLUSTER=cluster.json.
Older SGLang without the plug-in group: call `register()` from a sitecustomize.py.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("vibe.sglang")

ENV_EPLB = "VIBE_EPLB"
_TRUE = ("1", "true", "yes", "on")


def install(module) -> None:
    """Put vibe's dispatch on SGLang's eplb_algorithms module (idempotent)."""
    from vibe.engines.sglang import make_sglang_rebalance

    current = module.rebalance_experts
    if getattr(current, "vibe_original", None) is None:
        module.rebalance_experts = make_sglang_rebalance(current)


def uninstall(module) -> None:
    original = getattr(module.rebalance_experts, "vibe_original", None)
    if original is not None:
        module.rebalance_experts = original


def register(env=os.environ) -> None:
    """SGLang general plug-in: install vibe's EPLB algorithm when VIBE_EPLB=1."""
    if env.get(ENV_EPLB, "").strip().lower() not in _TRUE:
        return
    from sglang.srt.eplb import eplb_algorithms

    install(eplb_algorithms)
    log.info("vibe: SGLang's DeepSeek EPLB algorithms now run vibe's time-balanced placement")
