"""Recalibration: notice when a plan went stale, and fix it with few moves (numpy only).

- `vibe.recal.repair`: `repair_placement(placement, loads, cluster, options, max_moves,
  max_bytes, down_gpus) -> Repair` (greedy moves, every step a valid plan),
  `count_moves(old, new)`, `full_resolve(...)`, the worth-it rule.
"""

from vibe.recal.repair import (Move, Repair, align_slots, apply_moves, count_moves, expert_bytes, full_resolve,
                               move_steps, repair_placement, worth_it)

__all__ = ["Move", "Repair", "align_slots", "apply_moves", "count_moves", "expert_bytes", "full_resolve",
           "move_steps", "repair_placement", "worth_it"]
