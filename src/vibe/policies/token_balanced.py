"""`token_balanced`: balance token counts, blind to hardware. Experts (or, with
--redundant, replicas granted to the expert with most tokens per replica) are packed
largest-first onto the GPU with the fewest tokens so far, equal slots per GPU."""

import numpy as np

from vibe.model import Placement
from vibe.policies._packing import balanced_packing, replicate_by_load, slots_from_packing
from vibe.policies.base import register_policy, slots_per_gpu


@register_policy("token_balanced")
def token_balanced(loads, cluster, options):
    G, S = cluster.num_gpus, slots_per_gpu(loads, cluster, options)
    slot2e, _, count = replicate_by_load(loads.counts, G * S)
    slot_tokens = np.take_along_axis(loads.counts / count, slot2e, axis=1)
    pack, rank = balanced_packing(slot_tokens, G)
    phy = slots_from_packing(pack, rank, slot2e, S)
    return Placement.init_by_mapping(phy, G, loads.num_experts, loads.layer_ids, "token_balanced")
