"""Recalibration: notice when a plan went stale, and fix it with few moves (numpy only).

- `vibe.recal.drift`: detectors fed one observation at a time, each `update` returning
  None or a report, once per drift episode:
  `WorkloadDriftDetector(profile).update(counts [L, E]) -> WorkloadDrift | None`
  (which layers, TV and cosine distances, the window's loads to repair for) and
  `HardwareDriftDetector(cluster, placement).update(gpu_us [G], counts [L, E])
  -> HardwareDrift | None` (observed/predicted ratios, lost GPUs, a re-profiled Cluster);
  `rebase(...)` after a repair.
- `vibe.recal.repair`: `repair_placement(placement, loads, cluster, options, max_moves,
  max_bytes, down_gpus) -> Repair(placement, moves, before_us, after_us, step_us)`:
  greedy moves and swaps, every step a valid plan; `count_moves(old, new)` (slots
  relabelled within GPUs), `full_resolve(...)`, `apply_moves`, `move_steps`, the
  worth-it rule (`worth_it`, `min_gain_per_move`, `stall_us`, `expert_bytes`).
- `vibe.recal.sources` / `vibe.recal.monitor`: what `vibe monitor` watches and does.
"""

from vibe.recal.drift import HardwareDrift, HardwareDriftDetector, WorkloadDrift, WorkloadDriftDetector
from vibe.recal.repair import (Move, Repair, align_slots, apply_moves, count_moves, expert_bytes, full_resolve,
                               move_steps, repair_placement, worth_it)

__all__ = ["HardwareDrift", "HardwareDriftDetector", "Move", "Repair", "WorkloadDrift", "WorkloadDriftDetector",
           "align_slots", "apply_moves", "count_moves", "expert_bytes", "full_resolve", "move_steps",
           "repair_placement", "worth_it"]
