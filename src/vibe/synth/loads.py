"""Synthetic expert loads with the statistics of real routers, no download needed.

Each MoE layer gets its own popularity profile: expert shares proportional to
exp(sigma_l * z_e) with z_e ~ N(0, 1) (log-normal), which matches the real router profiles
in ../shared/data/routing/esft-dsv2lite (26 layers x 64 experts, top-6): there the busiest
expert is 2.0-6.9x the mean per layer (median 3.3-4.4 by domain), the coefficient of
variation over experts 0.3-1.1, the coldest expert 0.01-0.4x the mean; a log-normal with
sigma ~0.7 gives a peak ~4x and a CV ~0.8 over 64 experts. Instead of drawing sigma, we
draw each layer's peak-to-mean ratio (log-normal around PEAK_MEDIAN, truncated to
PEAK_RANGE = 3..8x) and solve for the sigma that hits it, so the skew is both realistic
and guaranteed. A token picks top_k *distinct* experts, so no expert can take more than
1/top_k of the routings: the peak is also capped at 0.9 * E / top_k.
"""

from __future__ import annotations

import numpy as np

from vibe.errors import VibeError
from vibe.model import ExpertLoads
from vibe.sim.models import PRESETS as SIM_PRESETS
from vibe.loadstats.stats import max_over_mean

PEAK_RANGE = (3.0, 8.0)  # busiest expert over the mean, per layer
PEAK_MEDIAN = 4.0  # ESFT layers: median 3.3-4.4 by domain
PEAK_SIGMA = 0.3  # log-spread of the per-layer peak around its median
PROFILED_TOKENS = 8192  # tokens in the profiled window (ESFT: ~8.2k per domain)

# name -> (MoE layers, routed experts, top_k, first MoE decoder layer): the simulator's
# presets (vibe.sim.models, the one place a model's shape is stated), plus the shapes of
# models the simulator has no full preset for, from their configs.
_SHAPE_ONLY: dict[str, tuple[int, int, int, int]] = {
    "deepseek-v2": (59, 160, 6, 1),
    "qwen3-30b-a3b": (48, 128, 8, 0),
    "gpt-oss-120b": (36, 128, 4, 0),
}
MODEL_PRESETS: dict[str, tuple[int, int, int, int]] = {
    **{name: (m.num_moe_layers, m.num_experts, m.top_k, min(m.moe_layer_ids)) for name, m in SIM_PRESETS.items()},
    **_SHAPE_ONLY,
}
_MODEL_NAMES = {"deepseek-v3": "DeepSeek-V3", "deepseek-v2": "DeepSeek-V2", "deepseek-v2-lite": "DeepSeek-V2-Lite",
                "qwen3-30b-a3b": "Qwen3-30B-A3B", "qwen3-235b-a22b": "Qwen3-235B-A22B",
                "gpt-oss-120b": "gpt-oss-120b", "mixtral-8x7b": "Mixtral-8x7B"}


def draw_peaks(num_layers: int, rng: np.random.Generator, peak_range=PEAK_RANGE,
               median: float = PEAK_MEDIAN, sigma: float = PEAK_SIGMA) -> np.ndarray:
    """[L] per-layer peak-to-mean targets: log-normal around `median`, truncated to `peak_range`."""
    lo, hi = (np.log(np.asarray(peak_range, dtype=np.float64)) - np.log(median)) / sigma
    from scipy.stats import norm  # deferred: slow to import

    u = rng.uniform(norm.cdf(lo), norm.cdf(hi), num_layers)
    return median * np.exp(sigma * norm.ppf(u))


def lognormal_shares(z: np.ndarray, peak: float) -> np.ndarray:
    """[E] standard normal scores -> [E] shares exp(sigma z) / sum with peak ratio `peak`.

    The peak ratio grows monotonically with sigma (its log-derivative is z_max minus a
    weighted mean of z), so a bracketing root finder gets sigma exactly.
    """
    z = z - z.max()  # keeps exp() in range; shares are unchanged

    def shares(sigma: float) -> np.ndarray:
        w = np.exp(sigma * z)
        return w / w.sum()

    if peak <= 1.0:
        return shares(0.0)
    hi = 1.0
    while max_over_mean(shares(hi)) < peak and hi < 1e3:
        hi *= 2.0
    if max_over_mean(shares(hi)) <= peak:  # peak at (or past) what E experts allow
        return shares(hi)
    from scipy.optimize import brentq

    sigma = brentq(lambda s: max_over_mean(shares(s)) - peak, 0.0, hi, xtol=1e-10)
    return shares(sigma)


def integer_counts(shares: np.ndarray, total: int) -> np.ndarray:
    """[E] shares summing to 1 -> [E] integer counts summing to `total` (largest remainder)."""
    raw = shares * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(counts - raw, kind="stable")[:short]] += 1
    return counts


def synth_loads(num_layers: int, num_experts: int, top_k: int, *, seed: int = 0,
                tokens: int = PROFILED_TOKENS, peak_range: tuple[float, float] = PEAK_RANGE,
                peak_median: float = PEAK_MEDIAN, layer_ids=None, model: str = "") -> ExpertLoads:
    """Skewed, layer-varying loads: counts [num_layers, num_experts] of `tokens` * top_k
    routings per layer; the busiest expert of each layer is peak_range (3-8x) the mean,
    capped at 0.9 * E / top_k where that is lower. Same arguments and seed -> same loads."""
    _check_args(num_layers, num_experts, top_k, tokens, peak_range)
    rng = np.random.default_rng(seed)
    cap = 0.9 * num_experts / top_k
    lo, hi = min(peak_range[0], cap), min(peak_range[1], cap)
    peaks = draw_peaks(num_layers, rng, (lo, hi), float(np.clip(peak_median, lo, hi)))
    z = rng.standard_normal((num_layers, num_experts))
    counts = np.stack([integer_counts(lognormal_shares(z[l], peaks[l]), tokens * top_k)
                       for l in range(num_layers)])
    ids = tuple(range(num_layers)) if layer_ids is None else tuple(layer_ids)
    return ExpertLoads(counts, top_k, ids, model,
                       extra={"synth": {"seed": seed, "tokens": tokens, "peak_range": list(peak_range)}})


def synth_loads_for_model(name: str, seed: int = 0, **kw) -> ExpertLoads:
    """Loads shaped like a known model's MoE layers (layer ids = decoder layer indices)."""
    key = name.lower()
    if key not in MODEL_PRESETS:
        raise VibeError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    num_layers, num_experts, top_k, first = MODEL_PRESETS[key]
    return synth_loads(num_layers, num_experts, top_k, seed=seed,
                       layer_ids=range(first, first + num_layers), model=_MODEL_NAMES[key], **kw)


def _check_args(num_layers, num_experts, top_k, tokens, peak_range) -> None:
    for what, v in (("layers", num_layers), ("experts", num_experts), ("top_k", top_k), ("tokens", tokens)):
        if int(v) != v or v < 1:
            raise VibeError(f"number of {what} must be a positive integer, got {v}")
    if top_k > num_experts:
        raise VibeError(f"top_k={top_k} exceeds the {num_experts} experts")
    lo, hi = peak_range
    if not (1.0 <= lo <= hi):
        raise VibeError(f"peak range must satisfy 1 <= low <= high, got {lo}..{hi}")
