"""vibe's vLLM policy through vLLM's own code (the pinned release in .venv-engines):
the `vllm.general_plugins` entry point found by vLLM's plug-in loader, the registry entry
it replaces, the policy's output fed to `compute_logical_maps` and to the weight
rearrangement (`move_to_buffer` / `move_from_buffer`, all EP ranks simulated in one
process), at DeepSeek-V3 shape; plan quality against vLLM's DefaultEplbPolicy by vibe's
cost model."""

from __future__ import annotations

import numpy as np
import pytest
from _engine import engine_module


torch = engine_module("torch")
vllm = engine_module("vllm")
policy_mod = engine_module("vllm.distributed.eplb.policy")
eplb_state = engine_module("vllm.distributed.eplb.eplb_state")
rebalance_execute = engine_module("vllm.distributed.eplb.rebalance_execute")

from vibe.engines import vllm_plugin  # noqa: E402
from vibe.engines.rebalance import layer_objective, loads_from_weight  # noqa: E402
from vibe.engines.vllm import policy_class  # noqa: E402
from vibe.model import Placement  # noqa: E402
from vibe.synth.cluster import synth_cluster  # noqa: E402
from vibe.synth.loads import synth_loads  # noqa: E402

DEFAULT = policy_mod.EPLB_POLICIES.get("vllm_default", policy_mod.DefaultEplbPolicy)


@pytest.fixture(scope="module")
def dsv3_weight():
    """DeepSeek-V3-shaped loads: 58 MoE layers x 256 experts, top-8 (synthetic, seeded)."""
    return synth_loads(58, 256, 8, seed=0).counts


def test_entry_point_found_by_vllm_and_replaces_default(monkeypatch):
    from vllm.plugins import load_plugins_by_group

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    plugins = load_plugins_by_group("vllm.general_plugins")
    assert plugins.get("vibe") is vllm_plugin.register
    policies = dict(policy_mod.EPLB_POLICIES)
    monkeypatch.setattr(policy_mod, "EPLB_POLICIES", policies)
    saved = dict(policy_mod.EPLB_POLICIES)
    plugins["vibe"]({"VIBE_EPLB": "1"})
    real = __import__("vllm.distributed.eplb.policy", fromlist=["EPLB_POLICIES"]).EPLB_POLICIES
    assert real is policies and real["default"] is policy_class() and "vllm_default" in real
    assert issubclass(real["default"], policy_mod.AbstractEplbPolicy)
    assert saved  # the registry the module-level assert checked still has "default"


def test_config_keeps_default_policy_name():
    """eplb_config.policy is a Literal: only "default" passes, hence the entry replacement."""
    from typing import get_args

    from vllm.config.parallel import EPLBPolicyOption

    assert set(get_args(EPLBPolicyOption)) == {"default"}


def simulate_rearrangement(old: np.ndarray, new: np.ndarray, num_ranks: int, hidden: int = 3) -> list:
    """Run vLLM's move_to_buffer / move_from_buffer for every rank of one layer, with a
    communicator that hands each receive the sender's real weight row. Returns each rank's
    weights afterwards ([S, hidden], row value = logical expert id)."""
    P = old.shape[0]
    S = P // num_ranks
    weights = [torch.tensor(old[r * S:(r + 1) * S], dtype=torch.float32)[:, None].repeat(1, hidden).contiguous()
               for r in range(num_ranks)]
    buffers = [torch.full((S, hidden), -1.0) for _ in range(num_ranks)]
    sends, recvs = {}, []

    class Comm(rebalance_execute.EplbCommunicator if hasattr(rebalance_execute, "EplbCommunicator")
               else __import__("vllm.distributed.eplb.eplb_communicator", fromlist=["x"]).EplbCommunicator):
        def __init__(self, rank):
            self.rank = rank

        def add_send(self, tensors, dst_rank, expert_id):
            sends.setdefault((self.rank, dst_rank, expert_id), [t.clone() for t in tensors])

        def add_recv(self, tensors, src_rank, expert_id):
            recvs.append((tensors, src_rank, self.rank, expert_id))

        def execute(self):
            pass

    metas = []
    for r in range(num_ranks):
        metas.append(rebalance_execute.move_to_buffer(
            num_local_experts=S, old_indices=old, new_indices=new, expert_weights=[weights[r]],
            expert_weights_buffers=[buffers[r]], stream=None, ep_rank=r, communicator=Comm(r), layer_idx=0))
    for tensors, src, dst, e in recvs:  # every receive vLLM posts has its matching send
        sent = sends[(src, dst, e)]
        for t, s in zip(tensors, sent):
            t.copy_(s)
    for r in range(num_ranks):
        rebalance_execute.move_from_buffer(expert_weights=[weights[r]], expert_weights_buffers=[buffers[r]],
                                           transfer_metadata=metas[r], new_indices=new, ep_rank=r)
    return weights


@pytest.mark.parametrize("slots,ranks", [(288, 32), (320, 64)])
def test_dsv3_shape_through_vllm_callers(dsv3_weight, slots, ranks):
    policy = policy_class()
    weight = torch.from_numpy(dsv3_weight.astype(np.int64))
    old = DEFAULT.rebalance_experts(weight.roll(3, dims=1), slots, 8, max(1, ranks // 8), ranks)
    old = old[0] if isinstance(old, tuple) else old
    out = policy.rebalance_experts(weight, slots, 8, max(1, ranks // 8), ranks, old)
    phy = out[0] if isinstance(out, tuple) else out
    assert isinstance(phy, torch.Tensor) and phy.dtype == torch.int64 and tuple(phy.shape) == (58, slots)
    log2phy, logcnt = eplb_state.compute_logical_maps(phy, 256)  # vLLM's own consumer
    assert (logcnt >= 1).all() and (logcnt.sum(dim=1) == slots).all()
    assert log2phy.shape[:2] == (58, 256) and ((log2phy >= 0).sum(dim=2) == logcnt).all()
    assert ((log2phy >= -1) & (log2phy < slots)).all()
    for layer in (0, 57):
        w = simulate_rearrangement(old[layer].numpy(), phy[layer].numpy(), ranks)
        got = torch.cat(w)[:, 0].long()
        assert torch.equal(got, phy[layer]), "vLLM's rearrangement did not land the vibe layout"


@pytest.mark.parametrize("slots,ranks,hierarchy", [(288, 32, "auto"), (320, 64, "off")])
def test_quality_vs_vllm_default(dsv3_weight, tmp_path, monkeypatch, slots, ranks, hierarchy):
    """At a prefill-sized step (1024 tokens per rank, vibe.cost): identical GPUs at least as
    good as vLLM's default, one rank 20% slow >= 10% better. (64 ranks = 8 nodes with
    DeepSeek-V3's 8 groups leaves one group per node, where hierarchical mode cannot shed
    the slow node's work: VIBE_HIERARCHY=off, see docs/engines.md.)"""
    B = (1024.0 * ranks,)
    monkeypatch.setenv("VIBE_BATCH_TOKENS", str(B[0]))
    monkeypatch.setenv("VIBE_HIERARCHY", hierarchy)
    weight = torch.from_numpy(dsv3_weight.astype(np.int64))
    loads = loads_from_weight(dsv3_weight, 8)
    nodes = ranks // 8
    ref = DEFAULT.rebalance_experts(weight, slots, 8, nodes, ranks)
    ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()

    def cost(phy, cluster):
        return layer_objective(phy, loads, cluster, B).sum()

    same = synth_cluster(ranks, scenario="identical", gpus_per_node=8)
    ours = policy_class().rebalance_experts(weight, slots, 8, nodes, ranks)
    ours = (ours[0] if isinstance(ours, tuple) else ours).numpy()
    assert cost(ours, same) <= cost(ref, same)
    slow = synth_cluster(ranks, scenario="power-cap", spread=0.0, slow_rank=7, gpus_per_node=8)
    slow.save(tmp_path / "cluster.json")
    monkeypatch.setenv("VIBE_CLUSTER", str(tmp_path / "cluster.json"))
    ours = policy_class().rebalance_experts(weight, slots, 8, nodes, ranks)
    ours = (ours[0] if isinstance(ours, tuple) else ours).numpy()
    assert cost(ours, slow) <= 0.9 * cost(ref, slow)


def test_plan_hook_installs_the_plan_once(tmp_path, dsv3_weight):
    """The VIBE_PLAN wrappers on a stand-in of EplbState that calls the policy as vLLM's
    rearrange does (vLLM's real add_model needs an EP process group)."""
    plan = Placement.init_by_mapping(np.tile(np.arange(288) % 256, (58, 1))[:, ::-1].copy(), 32, 256)
    path = tmp_path / "plan.json"
    plan.save(path)

    class Model:
        num_moe_layers, num_physical_experts, num_logical_experts = 58, 288, 256

    class State(eplb_state.EplbState):
        def __init__(self):
            self.policy = DEFAULT

        def add_model(self, model, model_config=None, model_name=None):
            self.expert_rearrangement_step, self.expert_rearrangement_step_interval = 2250, 3000

        def rearrange(self, is_profile=False, rank_mapping=None):
            out = self.policy.rebalance_experts(torch.from_numpy(dsv3_weight.astype(np.int64)), 288, 8, 4, 32)
            return out[0] if isinstance(out, tuple) else out

    vllm_plugin.install_plan_hook(State, str(path))
    s = State()
    s.add_model(Model(), None)
    assert s.expert_rearrangement_step == 2999  # the first step triggers the rearrangement
    assert not torch.equal(s.rearrange(is_profile=True), torch.from_numpy(plan.physical_to_logical_map))
    assert torch.equal(s.rearrange(), torch.from_numpy(plan.physical_to_logical_map))
    assert not torch.equal(s.rearrange(), torch.from_numpy(plan.physical_to_logical_map))
    Model.num_physical_experts = 320
    with pytest.raises(Exception, match="plan.json: plan of 58 MoE layers x 288 slots"):
        State().add_model(Model(), None)


def test_older_release_with_the_triple_return(dsv3_weight):
    """vLLM 0.14.0's AbstractEplbPolicy declares (phy2log, log2phy, logcnt); its caller pads
    log2phy to num_redundant + 1 columns. The file comes from the 0.14.0 wheel (make test-engines)."""
    import importlib.util
    from pathlib import Path

    from vibe.engines.vllm import make_policy_class

    path = Path(__file__).resolve().parents[2] / ".venv-engines" / "vllm-0.14.0-abstract.py"
    if not path.exists():
        pytest.fail(f"{path} missing: run make test-engines") if os.environ.get("VIBE_ENGINE_TESTS") == "1" \
            else pytest.skip(f"{path} missing")
    spec = importlib.util.spec_from_file_location("vllm014_abstract", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cls = make_policy_class(mod.AbstractEplbPolicy)
    assert cls.returns_maps and issubclass(cls, mod.AbstractEplbPolicy)
    phy, log2phy, logcnt = cls.rebalance_experts(torch.from_numpy(dsv3_weight.astype(np.int64)), 288, 8, 4, 32)
    assert phy.shape == (58, 288) and logcnt.shape == (58, 256) and log2phy.shape[:2] == (58, 256)
    assert log2phy.shape[-1] <= 288 - 256 + 1  # the 0.14 caller's assert
    ref_l2p, ref_cnt = eplb_state.compute_logical_maps(phy, 256)
    assert torch.equal(ref_cnt.long(), logcnt) and torch.equal(ref_l2p.long(), log2phy)


def test_plugins_load_in_a_fresh_process(tmp_path):
    """What a vLLM process does at start-up: load_general_plugins() with the two settings."""
    import subprocess
    import sys

    plan = tmp_path / "plan.json"
    Placement.init_by_mapping(np.tile(np.arange(10) % 8, (3, 1)), 2, 8).save(plan)
    code = ("from vllm.plugins import load_general_plugins; load_general_plugins(); "
            "from vllm.distributed.eplb.eplb_state import EplbState; "
            "from vllm.distributed.eplb.policy import EPLB_POLICIES; "
            "print(EplbState._vibe_plan_hook, EPLB_POLICIES['default'].__name__)")
    env = dict(os.environ, VIBE_PLAN=str(plan), VIBE_EPLB="1")
    env.pop("VLLM_PLUGINS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == [str(plan), "VibeEplbPolicy"]
