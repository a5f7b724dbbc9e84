"""`round_robin`: vLLM's strided layout. Slot j of GPU g holds expert (g + j*G) mod E."""

import numpy as np

from vibe.model import Placement
from vibe.policies.base import register_policy, slots_per_gpu


@register_policy("round_robin")
def round_robin(loads, cluster, options):
    G, S = cluster.num_gpus, slots_per_gpu(loads, cluster, options)
    slot = np.arange(G * S)
    row = ((slot // S) + (slot % S) * G) % loads.num_experts
    return Placement.init_by_mapping(np.tile(row, (loads.num_layers, 1)), G, loads.num_experts,
                                     loads.layer_ids, "round_robin")
