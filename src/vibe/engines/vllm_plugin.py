"""The vLLM plug-in (entry point `vllm.general_plugins: vibe = vibe.engines.vllm_plugin:register`).

vLLM runs every general plug-in in every process before the model is built. `register()`:

- VIBE_EPLB=1: puts vibe's policy in `EPLB_POLICIES` under "default" (the original stays
  as "vllm_default" for reference only). vLLM's `eplb_config.policy` is a Literal tied
  to the registry's keys by an assert at import, and async EPLB (vLLM's default mode)
  accepts only "default", so replacing that entry is the one setting that works in both
  modes without patching vLLM. Per-rank curves: VIBE_CLUSTER=cluster.json.
- VIBE_PLAN=plan.json (a vibe.placement/v1 file with vLLM's layer axis: MoE layers in
  order, num_experts + num_redundant_experts slots): after `EplbState.add_model` checks
  the plan against the model and arms it; the next non-profile `rearrange` (pulled to the
  first engine step) gets the plan from the policy, and vLLM moves the weights there with
  its own rearrangement code (weights are first loaded in vLLM's fixed layout, whose map
  is one list for all layers). Later rebalances use the registered policy. Needs
  --enable-eplb; a large eplb step_interval keeps the plan fixed.

Importing this module does not import vLLM; register() does.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger("vibe.vllm")

ENV_EPLB = "VIBE_EPLB"
ENV_PLAN = "VIBE_PLAN"
_TRUE = ("1", "true", "yes", "on")


def install_policy(policies: dict, replace_default: bool = True) -> type:
    """Add vibe's policy to vLLM's registry dict (as "default" when replace_default)."""
    from vibe.engines.vllm import policy_class

    cls = policy_class()
    if replace_default and policies.get("default") is not cls:
        policies.setdefault("vllm_default", policies.get("default"))
        policies["default"] = cls
    return cls


def load_plan(path: str):
    """The plan at `path` (vibe.placement/v1), InputError naming the file otherwise."""
    from vibe.model import Placement

    return Placement.load(path)


def install_plan_hook(eplb_state_cls: type, path: str) -> None:
    """Wrap EplbState.add_model / rearrange so that the plan at `path` becomes the first layout."""
    if getattr(eplb_state_cls, "_vibe_plan_hook", None) == path:
        return
    from vibe.engines.vllm import check_plan_fits, plan_policy

    plan = load_plan(path)  # fail at start-up, in every process, before any GPU work
    add_model, rearrange = eplb_state_cls.add_model, eplb_state_cls.rearrange

    @functools.wraps(add_model)
    def add_model_with_plan(self, model, *args, **kwargs):
        out = add_model(self, model, *args, **kwargs)
        try:
            phy = check_plan_fits(plan, int(model.num_moe_layers), int(model.num_physical_experts),
                                  int(model.num_logical_experts), path)
        except Exception:
            if len(getattr(self, "model_states", {})) <= 1 or getattr(self, "_vibe_plan", None) is None:
                raise  # the served model itself does not fit the plan: stop at start-up
            log.info("vibe: %s does not fit a further model (e.g. an MTP drafter); it keeps vLLM's layout", path)
            return out
        holder = {"armed": False, "num_experts": int(model.num_logical_experts), "path": path}
        self._vibe_plan = holder
        self.policy = plan_policy(self.policy, phy, holder)
        # rearrange at the first engine step instead of after step_interval steps
        self.expert_rearrangement_step = max(self.expert_rearrangement_step,
                                             self.expert_rearrangement_step_interval - 1)
        return out

    @functools.wraps(rearrange)
    def rearrange_with_plan(self, *args, **kwargs):
        holder = getattr(self, "_vibe_plan", None)
        is_profile = kwargs.get("is_profile", args[0] if args else False)
        if holder is not None and not is_profile and not holder.get("delivered"):
            holder["armed"] = True
        return rearrange(self, *args, **kwargs)

    eplb_state_cls.add_model = add_model_with_plan
    eplb_state_cls.rearrange = rearrange_with_plan
    eplb_state_cls._vibe_plan_hook = path


def register(env=os.environ) -> None:
    """vLLM general plug-in: install what the environment asks for (nothing by default)."""
    want_policy = env.get(ENV_EPLB, "").strip().lower() in _TRUE
    plan = env.get(ENV_PLAN, "").strip()
    if not want_policy and not plan:
        return
    if want_policy:
        from vllm.distributed.eplb.policy import EPLB_POLICIES

        install_policy(EPLB_POLICIES)
        log.info("vibe: EPLB policy 'default' is now vibe's time-balanced policy")
    if plan:
        from vllm.distributed.eplb.eplb_state import EplbState

        install_plan_hook(EplbState, plan)
        log.info("vibe: start-up plan %s will be installed at the first EPLB step", plan)
