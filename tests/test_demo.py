"""`vibe demo` end to end: every fast policy placed, compared and plotted, files written."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from vibe.cli import main
from vibe.model import Placement
from vibe.policies import base as policy_base
from vibe.policies import get_policy
from vibe.report import demo as demo_mod
from vibe.report.demo import DemoRun, add_demo_section, demo_policies, run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def reversed_linear(loads, cluster, options):
    """A stand-in for a policy registered after the demo was written."""
    p = get_policy("linear")(loads, cluster, options)
    return Placement.init_by_mapping(p.physical_to_logical_map[:, ::-1], p.num_gpus, p.num_logical_experts,
                                     p.layer_ids, "late_policy")


def never_called(loads, cluster, options):
    raise AssertionError("the demo must skip slow search policies")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run, with a late policy and a slow 'exact' registered for the occasion."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    text = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(policy_base._REGISTRY, "late_policy", reversed_linear)
        mp.setitem(policy_base._REGISTRY, "exact", never_called)
        run = run_demo(out, console=Console(file=text, width=120, highlight=False))
    return run, out, text.getvalue()


def test_demo_writes_the_png_and_files(demo):
    run, out, _ = demo
    png = out / "worst-layer-gpu-times.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    for name in run.placements:
        assert Placement.load(out / f"placement-{name}.json").num_gpus == 8
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == set(run.placements)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_demo_uses_every_fast_policy(demo):
    run, _, text = demo
    assert "late_policy" in run.placements and "exact" not in run.placements
    assert {"linear", "round_robin", "token_balanced", "eplb"} <= set(run.placements)
    for name in run.placements:
        assert name in text


def test_demo_reports_both_operating_points_against_the_bound(demo):
    run, _, text = demo
    assert "prefill-sized" in text and "decode-sized" in text
    for name, (prefill, decode) in run.points.items():
        assert prefill.batch_tokens > decode.batch_tokens
        for p in (prefill, decode):
            assert p.ratio_to_lb >= 1.0 - 1e-9 and p.imbalance >= 1.0 - 1e-9 and 0 <= p.idle_fraction < 1


def test_demo_cluster_has_one_power_capped_gpu_that_matters_at_prefill(demo):
    run, _, _ = demo
    assert run.cluster.num_gpus == 8 and len(run.slow_ranks) == 1
    assert run.loads.model == "DeepSeek-V2-Lite"
    # The contiguous layout ignores load and hardware: it is clearly off the bound at
    # prefill, and the load-balancing baselines beat it.
    linear = run.points["linear"][0]
    assert linear.ratio_to_lb > 1.2
    assert run.points["eplb"][0].moe_time_us < linear.moe_time_us
    assert run.points["token_balanced"][0].moe_time_us < linear.moe_time_us
    # Decode-sized batches are memory-bound: placement matters much less there.
    assert run.points["linear"][1].ratio_to_lb - 1 < (linear.ratio_to_lb - 1) / 3


def test_demo_policies_skip_slow_searches(monkeypatch):
    monkeypatch.setitem(policy_base._REGISTRY, "exact", never_called)
    assert "exact" not in demo_policies() and "linear" in demo_policies()


def test_sections_can_be_appended(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_mod, "DEMO_SECTIONS", [demo_mod.section_inputs])
    seen = []

    def serving(run: DemoRun) -> None:
        seen.append(run.cluster.num_gpus)

    add_demo_section(serving)
    add_demo_section(serving)  # idempotent
    assert demo_mod.DEMO_SECTIONS == [demo_mod.section_inputs, serving]
    run_demo(tmp_path, num_gpus=4, console=Console(file=io.StringIO()))
    assert seen == [4]


def test_cli_demo_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--gpus", "3", "--out-dir", str(out)]) == 2  # 64 experts do not split over 3 GPUs
    assert main(["demo", "--gpus", "0", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vibe: error:") for line in err)
    assert not out.exists()


def test_demo_is_deterministic(demo, tmp_path):
    run, _, _ = demo
    again = run_demo(tmp_path, console=Console(file=io.StringIO()), sections=[demo_mod.section_inputs])
    assert again.cluster.to_dict() == run.cluster.to_dict()
    assert np.array_equal(again.loads.counts, run.loads.counts)
