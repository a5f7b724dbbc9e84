"""TensorRT-LLM: the MoE load-balancer YAML (`moe_config: {load_balancer: file.yaml}`).

Exactly three keys: num_slots, layer_updates_per_iter (0 = static placement) and
initial_global_assignments keyed by decoder layer index.
"""

from __future__ import annotations

import os

import yaml

from vibe.io import write_text_atomic
from vibe.model import Placement


def placement_to_trtllm(placement: Placement) -> dict:
    return {
        "num_slots": int(placement.num_slots),
        "layer_updates_per_iter": 0,
        "initial_global_assignments": {
            int(layer): [int(e) for e in row]
            for layer, row in zip(placement.layer_ids, placement.physical_to_logical_map)
        },
    }


def write_trtllm_placement(placement: Placement, path: str | os.PathLike) -> None:
    text = yaml.safe_dump(placement_to_trtllm(placement), default_flow_style=None, sort_keys=False, width=1 << 20)
    write_text_atomic(path, text)
