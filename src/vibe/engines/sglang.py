"""SGLang: placement files for `--init-expert-location`.

SGLang splats the JSON object into a constructor, so the file holds
`physical_to_logical_map` and no other key. Its layer axis counts every decoder layer
(dense ones included); rows of layers without routed experts get the identity layout.
"""

from __future__ import annotations

import os

import numpy as np

from vibe.errors import VibeError
from vibe.io import write_json_atomic
from vibe.model import Placement


def placement_to_sglang(placement: Placement, num_hidden_layers: int | None = None) -> dict:
    """-> {"physical_to_logical_map": [num_hidden_layers, num_physical]}."""
    ids = list(placement.layer_ids)
    n = max(ids) + 1 if num_hidden_layers is None else int(num_hidden_layers)
    if min(ids) < 0 or max(ids) >= n:
        raise VibeError(f"layer ids {min(ids)}..{max(ids)} do not fit {n} decoder layers")
    P = placement.num_slots
    full = np.tile(np.arange(P) % placement.num_logical_experts, (n, 1))
    full[ids] = placement.physical_to_logical_map
    return {"physical_to_logical_map": full.tolist()}


def write_sglang_placement(placement: Placement, path: str | os.PathLike,
                           num_hidden_layers: int | None = None) -> None:
    write_json_atomic(path, placement_to_sglang(placement, num_hidden_layers))
