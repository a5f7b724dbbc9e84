"""vibe: place Mixture-of-Experts experts on GPUs with workload skew and hardware
variability in mind.

Pipeline: profile hardware -> Cluster; profile workload -> ExpertLoads;
place (a policy) -> Placement; evaluate (vibe.cost), simulate, run, export.
"""

from vibe.errors import VibeError, InputError
from vibe.model import Cluster, ExpertLoads, Placement, GpuProfile

__version__ = "0.1.0"
__all__ = ["VibeError", "InputError", "Cluster", "ExpertLoads", "Placement", "GpuProfile"]
