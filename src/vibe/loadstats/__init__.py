"""Load statistics: statistics of expert loads and routing traces, and drift between them."""

from vibe.loadstats.stats import (coactivation, compare_loads, cosine_distance, entropy, gini,
                                 layer_skew, max_over_mean, top_pairs, tv_distance)

__all__ = ["coactivation", "compare_loads", "cosine_distance", "entropy", "gini", "layer_skew",
           "max_over_mean", "top_pairs", "tv_distance"]
