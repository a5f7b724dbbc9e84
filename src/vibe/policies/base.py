"""The policy interface: a pure function (loads, cluster, options) -> Placement, and a
registry. Adding a policy is one new file in this folder that decorates its function
with `@register_policy("name")`; the package imports every module here at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vibe.cost import DEFAULT_BATCH_TOKENS
from vibe.errors import VibeError
from vibe.model import Cluster, ExpertLoads, Placement


@dataclass(frozen=True)
class PlacementOptions:
    """Everything a policy may be told besides the loads and the cluster."""

    redundant: int = 0  # extra physical slots per layer, beyond one per logical expert
    num_groups: int | None = None  # expert groups kept inside a node (hierarchical mode)
    batch_tokens: tuple[float, ...] = DEFAULT_BATCH_TOKENS  # operating points
    weights: tuple[float, ...] | None = None  # their weights (None: equal)
    seed: int = 0
    split: str = "even"  # how replicas share tokens: "even" (engines) or "speed"
    robust: bool = False  # optimise expected per-step makespan over re-sampled batches
    time_limit_s: float = 60.0  # for policies that search (exact)
    extras: dict[str, Any] = field(default_factory=dict)  # policy-specific knobs, e.g. traces


PolicyFn = Callable[[ExpertLoads, Cluster, PlacementOptions], Placement]
_REGISTRY: dict[str, PolicyFn] = {}


def register_policy(name: str) -> Callable[[PolicyFn], PolicyFn]:
    """Decorator: make `fn` available as policy `name` (CLI `--policy name`)."""

    def wrap(fn: PolicyFn) -> PolicyFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"policy {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


def get_policy(name: str) -> PolicyFn:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VibeError(f"unknown policy {name!r}; available: {', '.join(available_policies())}") from None


def place(loads: ExpertLoads, cluster: Cluster, policy: str = "vibe",
          options: PlacementOptions | None = None) -> Placement:
    """Run policy `policy` after checking that the slot layout is possible."""
    options = options or PlacementOptions()
    fn = get_policy(policy)
    slots_per_gpu(loads, cluster, options)
    placement = fn(loads, cluster, options)
    placement.check_fits(cluster)
    placement.check_matches(loads)
    return placement


def slots_per_gpu(loads: ExpertLoads, cluster: Cluster, options: PlacementOptions) -> int:
    """Slots per GPU for E + R slots on G GPUs, or a clear error."""
    if options.redundant < 0:
        raise VibeError("--redundant must be >= 0")
    num_slots = loads.num_experts + options.redundant
    G = cluster.num_gpus
    if num_slots % G:
        lo = (-loads.num_experts) % G
        raise VibeError(f"{loads.num_experts} experts + {options.redundant} redundant = {num_slots} slots "
                        f"cannot be split evenly over {G} GPUs (use --redundant {lo}, {lo + G}, ...)")
    return num_slots // G
