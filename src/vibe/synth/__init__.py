"""Synthesizers: realistic clusters and expert loads without any download.

`synth_cluster` draws per-GPU latency curves from a variability model fitted to measured
fleets and MoE kernels; `synth_loads` / `synth_loads_for_model` draw skewed, layer-varying
expert loads with the statistics of real routers. Both are seeded (numpy only, no torch).
"""

from vibe.synth.cluster import SCENARIOS, latency_curve_us, synth_cluster
from vibe.synth.loads import MODEL_PRESETS, synth_loads, synth_loads_for_model

__all__ = ["SCENARIOS", "MODEL_PRESETS", "latency_curve_us", "synth_cluster", "synth_loads",
           "synth_loads_for_model"]
