"""Synthetic clusters: per-GPU latency curves from a variability model, no download needed.

Every GPU g runs one expert FFN on n tokens in

    t_g(n) = ((m_g * FLOOR_US)^P + (c_g * SLOPE_US_PER_TOKEN * n)^P)^(1/P)

a memory-bound floor (loading the expert's weights) blended into a compute-bound slope.
`m_g` and `c_g` are the GPU's memory and compute slow-down factors (1 = nominal): a power
cap or a slow SM clock stretches the compute part a lot and the memory part little, so a
capped GPU is slower at prefill-sized token counts and nearly as fast at decode-sized ones.

Where the constants come from (read once from ../shared/data; the package does not need it):

* FLOOR_US, SLOPE_US_PER_TOKEN, P: DeepSeek-V3 expert shape (hidden 7168, intermediate 2048,
  fp8_block, 256 experts, top-8) on H100, aiconfigurator's SGLang 0.5.10 wide-EP tables
  (moe-latency/h100_sxm_sglang_0.5.10_wideep_*.parquet, distribution "uniform", EP 8/16/32).
  Per-expert tokens n = num_tokens * topk / num_experts; per-expert time = latency / local
  experts. FLOOR_US = 17.3 us, the median per-expert time of the *generation* table at 2..32
  tokens per expert (flat there: memory-bound; 44 MB of fp8 weights at ~2.5 TB/s).
  SLOPE_US_PER_TOKEN = 0.094 and P = 1.72 from a least-squares fit in log space of the
  *context* table as C_ep + local_experts * t(n) with FLOOR_US fixed and a free per-layer
  constant C_ep per EP size (DeepEP's dispatch cost, which is per layer, not per expert).
  0.094 us/token is ~940 TFLOP/s of fp8 on 88 MFLOP per token.
* FLEET_QUANTILES: gpu-variability/sgemm-longhorn-agg.csv (392 V100s, 11,087 SGEMM runs):
  per-GPU median kernel time over the fleet median, at the percentiles FLEET_LEVELS
  (min 0.952, p5 0.974, p50 1.000, p95 1.027, p99 1.050, max 1.203), computed with
  numpy.percentile over the 392 per-GPU medians. SGEMM is
  compute-bound, so these are compute factors c_g; the spread is persistent per GPU.
* MEMORY_SENSITIVITY = 0.025: in gpu-variability/32gpu-variability.csv the memory-bound
  class D varies with a coefficient of variation of 0.0005 against 0.019 for class B, so a
  GPU's memory-bound time moves ~2.5% as much as its compute-bound time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vibe.errors import VibeError
from vibe.model import Cluster

FLOOR_US = 17.3  # memory-bound time of one expert (see module docstring)
SLOPE_US_PER_TOKEN = 0.094  # compute-bound time per token of one expert
BLEND_P = 1.72  # how sharply the floor turns into the slope
TOKEN_GRID = 2.0 ** np.arange(15)  # 1 .. 16384 tokens per expert; extrapolated linearly past it
OVERHEAD_US = 12.0  # fixed per-layer MoE cost of a nominal GPU (the DESIGN.md example value)
NOMINAL_POWER_W = 700  # H100 SXM power limit, reported as telemetry

FLEET_LEVELS = np.array([0, 1, 2.5, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75,
                         80, 85, 90, 95, 97.5, 99, 99.5, 100])
FLEET_QUANTILES = np.array([0.9524, 0.9636, 0.9680, 0.9739, 0.9790, 0.9832, 0.9856, 0.9881,
                            0.9902, 0.9925, 0.9949, 0.9983, 1.0000, 1.0021, 1.0032, 1.0055,
                            1.0080, 1.0112, 1.0138, 1.0163, 1.0206, 1.0270, 1.0362, 1.0500,
                            1.0627, 1.2027])
FLEET_SPREAD = 1.0270 - 0.9739  # p95 - p5 of the measured fleet: what `spread` means
MEMORY_SENSITIVITY = 0.025

SCENARIOS = ("identical", "fleet", "power-cap", "outlier")
MAX_SPREAD = 0.5


def latency_curve_us(tokens: np.ndarray, compute: np.ndarray | float = 1.0,
                     memory: np.ndarray | float = 1.0) -> np.ndarray:
    """Time of one expert FFN: tokens [P], compute/memory factors [G] (or scalars) -> us [G, P]."""
    n = np.asarray(tokens, dtype=np.float64)[None, :]
    c = np.atleast_1d(np.asarray(compute, dtype=np.float64))[:, None]
    m = np.atleast_1d(np.asarray(memory, dtype=np.float64))[:, None]
    return ((m * FLOOR_US) ** BLEND_P + (c * SLOPE_US_PER_TOKEN * n) ** BLEND_P) ** (1.0 / BLEND_P)


def fleet_compute_factors(num_gpus: int, rng: np.random.Generator, spread: float = FLEET_SPREAD) -> np.ndarray:
    """[G] compute slow-down factors drawn like the measured V100 fleet, with deviations
    from 1 scaled so that p95 - p5 equals `spread` (0 gives identical GPUs)."""
    measured = np.interp(rng.uniform(0.0, 100.0, num_gpus), FLEET_LEVELS, FLEET_QUANTILES)
    return 1.0 + (measured - 1.0) * (spread / FLEET_SPREAD)


def memory_factors(compute: np.ndarray) -> np.ndarray:
    """[G] memory-bound slow-down that goes with compute factors [G] (much smaller)."""
    return 1.0 + MEMORY_SENSITIVITY * (np.asarray(compute) - 1.0)


def synth_cluster(num_gpus: int, *, scenario: str = "fleet", seed: int = 0, gpus_per_node: int = 8,
                  spread: float | None = None, cap: float = 0.2, outlier_slowdown: float = 2.2,
                  slow_rank: int | None = None, overhead_us: float = OVERHEAD_US) -> Cluster:
    """A cluster of `num_gpus` H100-like GPUs running DeepSeek-V3-shaped experts.

    scenario: "identical" (no spread), "fleet" (measured spread), "power-cap" (fleet plus
    one GPU whose compute part is `cap` = 20% slower), "outlier" (fleet plus one GPU
    `outlier_slowdown` = 2.2x slower at everything, e.g. stuck at low clocks).
    spread: p95 - p5 of the compute factors (default: 0 for identical, the measured
    0.053 otherwise); use it for sweeps from 0 to 0.25. slow_rank: which GPU is capped or
    slow (default: drawn from the seed). Same arguments and seed -> the same cluster.
    """
    spread = _check_args(num_gpus, scenario, gpus_per_node, spread, cap, outlier_slowdown, slow_rank)
    rng = np.random.default_rng(seed)
    compute = fleet_compute_factors(num_gpus, rng, spread)
    memory = memory_factors(compute)
    power = np.full(num_gpus, float(NOMINAL_POWER_W))
    rank = int(rng.integers(num_gpus)) if slow_rank is None else slow_rank
    if scenario == "power-cap":
        compute[rank] *= 1.0 + cap
        memory[rank] *= 1.0 + MEMORY_SENSITIVITY * cap
        power[rank] *= 1.0 - cap
    elif scenario == "outlier":
        compute[rank] *= outlier_slowdown
        memory[rank] *= outlier_slowdown
    cluster = Cluster.init_by_curves(
        TOKEN_GRID, latency_curve_us(TOKEN_GRID, compute, memory), overhead_us * memory,
        nodes=np.arange(num_gpus) // gpus_per_node, name=f"synth-{scenario}-{num_gpus}xH100",
        gpu_name="NVIDIA H100 80GB HBM3 (synthetic)",
        expert={"hidden": 7168, "intermediate": 2048, "dtype": "fp8"})
    gpus = [dataclasses.replace(g, telemetry={"power_limit_w": round(float(power[g.rank]))})
            for g in cluster.gpus]
    synth = {"scenario": scenario, "seed": seed, "spread": spread,
             "slow_rank": rank if scenario in ("power-cap", "outlier") else None,
             "compute_factor": np.round(compute, 6).tolist(), "memory_factor": np.round(memory, 6).tolist()}
    return cluster.with_gpus(gpus, extra={"synth": synth})


def _check_args(num_gpus, scenario, gpus_per_node, spread, cap, outlier_slowdown, slow_rank) -> float:
    if scenario not in SCENARIOS:
        raise VibeError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    if int(num_gpus) != num_gpus or num_gpus < 1:
        raise VibeError(f"number of GPUs must be a positive integer, got {num_gpus}")
    if int(gpus_per_node) != gpus_per_node or gpus_per_node < 1:
        raise VibeError(f"GPUs per node must be a positive integer, got {gpus_per_node}")
    if spread is None:
        spread = 0.0 if scenario == "identical" else FLEET_SPREAD
    if not (0.0 <= spread <= MAX_SPREAD):
        raise VibeError(f"spread must be between 0 and {MAX_SPREAD} (p95 - p5 of GPU speed), got {spread}")
    if scenario == "identical" and spread > 0:
        raise VibeError("scenario 'identical' has no spread; use scenario 'fleet' with --spread")
    if not (0.0 <= cap < 1.0):
        raise VibeError(f"power cap must be in [0, 1), got {cap}")
    if not outlier_slowdown >= 1.0:
        raise VibeError(f"outlier slow-down must be >= 1, got {outlier_slowdown}")
    if slow_rank is not None and not (0 <= slow_rank < num_gpus):
        raise VibeError(f"slow rank {slow_rank} is not a GPU of 0..{num_gpus - 1}")
    return float(spread)
