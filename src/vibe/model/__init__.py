"""Data model: the three v1 files of the pipeline (numpy only, no torch)."""

from vibe.model.cluster import CLUSTER_SCHEMA, Cluster, GpuProfile
from vibe.model.loads import LOADS_SCHEMA, ExpertLoads
from vibe.model.placement import PLACEMENT_SCHEMA, Placement
from vibe.model.traces import TRACE_SCHEMA, RoutingTrace

__all__ = ["Cluster", "GpuProfile", "ExpertLoads", "Placement",
           "RoutingTrace", "CLUSTER_SCHEMA", "LOADS_SCHEMA", "PLACEMENT_SCHEMA", "TRACE_SCHEMA"]
