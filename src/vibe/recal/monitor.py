"""`vibe monitor`: watch live statistics, detect drift, repair the plan, write it out.

Each poll reads what is new from the source (vibe.recal.sources), feeds the workload
and hardware detectors, re-reads the cluster file when it changed (a GPU marked
`"state": "down"` there is lost), and on drift repairs the current plan
(vibe.recal.repair) for the window's loads on the re-profiled cluster. A repair is
written only when it is worth its stall (vibe.recal.repair.worth_it), or always when a
GPU was lost (the old plan can no longer serve). Every decision is one log line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement
from vibe.policies.base import PlacementOptions
from vibe.recal.drift import HardwareDrift, HardwareDriftDetector, WorkloadDriftDetector, curve_ratios, scale_gpus
from vibe.recal.repair import (DEFAULT_HORIZON_STEPS, DEFAULT_LINK_GBPS, Repair, min_gain_per_move,
                               repair_placement, stall_us, worth_it)
from vibe.recal.sources import JsonlStream, Observation, open_source


def plan_outputs(placement: Placement, out: Path, formats: Sequence[str], num_hidden_layers: int | None,
                 extra: dict | None = None) -> list[tuple[Path, str]]:
    """The files `vibe place --format` writes for a plan, built in memory: the plan at
    `out`, OUT.sglang.json and OUT.trtllm.yaml when asked, and OUT.moves.json (`extra`)."""
    from vibe.cli.place import engine_paths
    from vibe.engines.sglang import placement_to_sglang
    from vibe.engines.trtllm import trtllm_placement_yaml
    from vibe.io import json_default

    paths = engine_paths(out)
    outputs = [(out, json.dumps(placement.to_dict(), default=json_default) + "\n")]
    if "sglang" in formats:
        outputs.append((paths["sglang"], json.dumps(placement_to_sglang(placement, num_hidden_layers)) + "\n"))
    if "trtllm" in formats:
        outputs.append((paths["trtllm"], trtllm_placement_yaml(placement)))
    if extra is not None:
        outputs.append((moves_path(out), json.dumps(extra, default=json_default) + "\n"))
    return outputs


def moves_path(out: Path) -> Path:
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return Path(f"{stem}.moves.json")


def write_outputs(outputs: list[tuple[Path, str]]) -> list[str]:
    """Check every target, then write each atomically: a failure leaves no file behind."""
    from vibe.io import write_text_atomic

    for path, _ in outputs:
        if path.is_dir():
            raise VibeError(f"{path}: is a folder, cannot write the plan there")
    for path, text in outputs:
        write_text_atomic(path, text)
    return [str(p) for p, _ in outputs]


def repair_report(repair: Repair, horizon_steps: float, link_gbps: float) -> dict:
    """The moves file / --json object of one repair (times in us per step)."""
    finite = np.isfinite(repair.before_us)
    return {"schema": "vibe.moves/v1", "before_us": float(repair.before_us) if finite else None,
            "after_us": repair.after_us, "num_moves": len(repair.moves), "bytes": repair.bytes_moved,
            "stall_us": stall_us(repair.bytes_moved, link_gbps), "horizon_steps": horizon_steps,
            "link_gbps": link_gbps, "worth_it": bool(worth_it(repair, horizon_steps, link_gbps)) if finite else True,
            "down_gpus": repair.placement.extra.get("down_gpus", []),
            "moves": [m.to_dict() for m in repair.moves]}


@dataclass
class MonitorConfig:
    max_moves: int | None = 30
    max_bytes: float | None = None
    horizon_steps: float = DEFAULT_HORIZON_STEPS
    link_gbps: float = DEFAULT_LINK_GBPS
    formats: tuple[str, ...] = ("vibe",)
    num_hidden_layers: int | None = None
    workload: dict = field(default_factory=dict)  # WorkloadDriftDetector keyword arguments
    hardware: dict = field(default_factory=dict)  # HardwareDriftDetector keyword arguments


class Monitor:
    """The state of one `vibe monitor` run; `poll()` does one round and returns its log lines."""

    def __init__(self, source_path: str | os.PathLike, input_format: str | None, cluster_path: str | os.PathLike,
                 placement: Placement, profile: ExpertLoads, options: PlacementOptions, out_dir: str | os.PathLike,
                 config: MonitorConfig, log: Callable[[str], None] = print):
        self.cluster_path = Path(cluster_path)
        self.cluster = Cluster.load(self.cluster_path)
        placement.check_fits(self.cluster, "placement")
        placement.check_matches(profile, "placement")
        self.placement, self.profile, self.options, self.config, self.log = placement, profile, options, config, log
        self.out_dir = Path(out_dir)
        self.source = open_source(source_path, input_format, placement, profile.top_k, self.cluster.num_gpus)
        self.workload = WorkloadDriftDetector(profile, **config.workload)
        self.hardware = HardwareDriftDetector(self.cluster, placement, **config.hardware)
        self._cluster_key = self._key()
        self.last_counts: np.ndarray | None = None
        self.plans_written = 0

    def _key(self):
        try:
            st = self.cluster_path.stat()
            return st.st_size, st.st_mtime_ns
        except OSError:
            return None

    def _reread_cluster(self) -> None:
        """A cluster file edited while we run: its lost GPUs are re-homed at the next
        update, changed curves are repaired for at once."""
        key = self._key()
        if key == self._cluster_key:
            return
        self._cluster_key = key
        try:
            fresh = Cluster.load(self.cluster_path)
            if fresh.num_gpus != self.cluster.num_gpus:
                raise VibeError(f"{self.cluster_path}: now has {fresh.num_gpus} GPUs, the plan "
                                f"{self.cluster.num_gpus}")
        except VibeError as exc:
            self.log(f"skipped {self.cluster_path}: {exc}")
            return
        down = sorted(set(fresh.down_ranks()) - self.hardware.lost)
        ratio = curve_ratios(self.cluster, fresh)
        if not ratio:
            self.hardware.mark_down(down)  # reported (and repaired) by the next update
            return
        # new curves in the file (re-profiled, or `vibe cluster edit --scale`): repair on them
        self.hardware.lost.update(down)
        drift = HardwareDrift(ratio, tuple(down), scale_gpus(fresh, {}, sorted(self.hardware.lost)))
        self._repair(str(self.cluster_path), drift.describe("cluster file changed", "its old curve"), None, drift)

    def poll(self) -> int:
        """One round: read what is new, decide, write. Returns the observations used."""
        self._reread_cluster()
        observations = self.source.poll()
        used = quiet = 0
        for obs in observations:
            if obs.error:
                self.log(f"skipped {obs.error}")
                continue
            used += 1
            if not self._observe(obs):
                quiet += 1
                if not isinstance(self.source, JsonlStream):  # one line per dump; steps are summed up below
                    self.log(f"{obs.source}: no drift{self._distance()}")
        if quiet and isinstance(self.source, JsonlStream):
            self.log(f"{self.source.path}: {quiet} steps, no drift{self._distance()}")
        if self.hardware.pending_lost():  # marked down in the cluster file, no report needed
            self._observe(Observation(str(self.cluster_path)))
        return used

    def _distance(self) -> str:
        tv = self.workload.last_tv
        return "" if tv is None else f" (TV median {np.median(tv):.3f}, max {tv.max():.3f})"

    def _observe(self, obs: Observation) -> bool:
        """Feed one observation to the detectors; True when it led to a decision."""
        wdrift = hdrift = None
        try:
            if obs.counts is not None:
                self.last_counts = obs.counts
                wdrift = self.workload.update(obs.counts)
            counts = obs.counts if obs.counts is not None else self.last_counts
            if obs.gpu_us is not None and counts is None:
                self.log(f"skipped {obs.source}: per-GPU times before any counts to predict them from")
                return True
            hdrift = self.hardware.update(obs.gpu_us, counts) if obs.gpu_us is not None else self.hardware.update()
        except VibeError as exc:
            self.log(f"skipped {obs.source}: {exc}")
            return True
        if wdrift is None and hdrift is None:
            return False
        what = "; ".join(d.describe() for d in (wdrift, hdrift) if d is not None)
        self._repair(obs.source, what, wdrift, hdrift)
        return True

    def _repair(self, source: str, what: str, wdrift, hdrift) -> None:
        cluster = hdrift.cluster if hdrift is not None else self.cluster
        loads = wdrift.loads if wdrift is not None else self.profile
        lost = bool(hdrift is not None and hdrift.lost)
        cfg = self.config
        try:
            repair = repair_placement(self.placement, loads, cluster, self.options, cfg.max_moves, cfg.max_bytes,
                                      min_gain_us=0.0 if lost else min_gain_per_move(cluster, cfg.horizon_steps,
                                                                                      cfg.link_gbps))
        except VibeError as exc:
            self.log(f"{source}: {what} -> cannot repair: {exc}")
            return
        report = repair_report(repair, cfg.horizon_steps, cfg.link_gbps)
        gain = (f"predicted {repair.before_us:,.1f} -> {repair.after_us:,.1f} us/step "
                f"({100 * (repair.after_us / repair.before_us - 1):+.1f}%)" if np.isfinite(repair.before_us)
                else f"predicted {repair.after_us:,.1f} us/step with the lost GPU's experts re-homed")
        head = f"{source}: {what} -> {len(repair.moves)} moves, {repair.bytes_moved / 1e9:.2f} GB, {gain}"
        # the detectors now compare against what the plan is made for, whether or not it moves
        self.cluster = cluster
        if not report["worth_it"] and not lost:  # a lost GPU's slots must stop getting tokens: always write
            self.log(f"{head}; not worth it (stall {report['stall_us'] / 1000:.1f} ms > gain over "
                     f"{cfg.horizon_steps:g} steps): plan kept")
            self.workload.rebase(loads)
            self.hardware.rebase(cluster, self.placement)
            return
        self.plans_written += 1
        out = self.out_dir / f"plan-{self.plans_written:04d}.json"
        report["drift"] = what
        try:
            written = write_outputs(plan_outputs(repair.placement, out, cfg.formats, cfg.num_hidden_layers, report))
        except VibeError as exc:
            self.log(f"{head}; cannot write: {exc}")
            self.plans_written -= 1
            return
        if hdrift is not None:
            cluster_out = self.out_dir / f"cluster-{self.plans_written:04d}.json"
            cluster.save(cluster_out)
            written.append(str(cluster_out))
        self.placement, self.profile = repair.placement, loads
        self.workload.rebase(loads)
        self.hardware.rebase(cluster, repair.placement)
        self.log(f"{head}; wrote {', '.join(written)}")

    def run(self, interval_s: float, max_iterations: int | None, once: bool, sleep=None) -> int:
        """Poll until `max_iterations` rounds (or one round with `once`)."""
        import time

        sleep = sleep or time.sleep
        rounds = 0
        while True:
            self.poll()
            rounds += 1
            if once or (max_iterations is not None and rounds >= max_iterations):
                return rounds
            sleep(interval_s)
