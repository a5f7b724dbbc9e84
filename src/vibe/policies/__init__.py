"""Placement policies behind one registry.

Each policy is a pure function (ExpertLoads, Cluster, PlacementOptions) -> Placement in
its own module; importing this package imports every module here, which registers them.
"""

import importlib
import pkgutil

from vibe.policies.base import (PlacementOptions, available_policies, get_policy, place,
                                register_policy, slots_per_gpu)

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["PlacementOptions", "available_policies", "get_policy", "place", "register_policy", "slots_per_gpu"]
