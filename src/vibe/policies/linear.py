"""`linear`: vLLM's contiguous layout. GPU g holds experts g*S .. g*S+S-1; redundant
slots repeat experts 0, 1, ... (no load or hardware information)."""

import numpy as np

from vibe.model import Placement
from vibe.policies.base import register_policy, slots_per_gpu


@register_policy("linear")
def linear(loads, cluster, options):
    P = slots_per_gpu(loads, cluster, options) * cluster.num_gpus
    row = np.arange(P) % loads.num_experts
    return Placement.init_by_mapping(np.tile(row, (loads.num_layers, 1)), cluster.num_gpus,
                                     loads.num_experts, loads.layer_ids, "linear")
