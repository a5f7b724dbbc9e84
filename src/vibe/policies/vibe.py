"""`vibe`: time-balanced, variability-aware binning of experts (the ViBE placement).

Per MoE layer, minimize the predicted makespan max_g T[l, g] with each GPU's own latency
curve, so hot experts go to fast GPUs, cold ones to slow GPUs, and all GPUs reach the
layer barrier together. Steps (all in `_timebalance`, vectorized over layers):

1. replicas (--redundant R): each extra slot goes to the expert whose extra replica
   lowers the predicted time most (not the most tokens), at most one replica per GPU;
2. construction: largest cost first, onto the GPU whose finish time grows least;
3. local search: best swap between a critical GPU and any other until none gains (or
   a swap budget is spent); optional seeded restarts (`extras["restarts"]`) kept only
   where they pay; the same search also starts from EPLB's plan, and per layer the
   better plan is kept, so vibe is never slower than eplb under the cost model;
4. --split speed: replica_weights that give faster GPUs a larger share.

The objective is the weighted sum of makespans over the operating points (default
8192 and 256 tokens weighted 0.7 / 0.3; the CLI scales them by the EP size), or with --robust the expected per-step
makespan over re-sampled batches. --num-groups keeps expert groups inside a node.
"""

from __future__ import annotations

import dataclasses

from vibe.policies._timebalance import solve_placement, speed_split
from vibe.policies.base import register_policy


@register_policy("vibe")
def vibe(loads, cluster, options):
    placement, tokens, weights = solve_placement(loads, cluster, options, "vibe")
    if options.split == "speed" and placement.num_redundant > 0:
        placement = dataclasses.replace(placement, replica_weights=speed_split(placement, cluster, tokens, weights))
    return placement
