"""Clean measured latency points into a monotone curve, and say how well it fits.

Two models of one expert's FFN time t(n) on n tokens:

* isotonic: the closest non-decreasing curve to the medians (relative least squares,
  scipy's pool-adjacent-violators). It removes noise that makes a curve dip without
  imposing a shape, so it is the curve written to the cluster file by default.
* hinge ("memory floor plus slope"): t(n) = floor + slope * max(0, n - knee). Below the
  knee the kernel streams the expert's weights and the token count barely matters
  (memory-bound); above it time grows with the tokens (compute-bound). Three numbers
  that `vibe profile compare` uses to tell the two regimes apart.

Fit error = max over points of |fitted / median - 1| (also reported: the median of it).
numpy/scipy only: no torch here.
"""

from __future__ import annotations

import numpy as np

FIT_METHODS = ("isotonic", "hinge")


def isotonic_fit(tokens: np.ndarray, us: np.ndarray) -> np.ndarray:
    """[P] medians at increasing `tokens` -> [P] closest non-decreasing curve.

    Weights 1/us^2 make the least squares relative, so the fast points of the curve
    count as much as the slow ones.
    """
    y = np.asarray(us, dtype=np.float64)
    from scipy.optimize import isotonic_regression  # deferred: slow to import

    return isotonic_regression(y, weights=1.0 / y**2, increasing=True).x


def hinge_fit(tokens: np.ndarray, us: np.ndarray) -> dict:
    """Fit t(n) = floor + slope * max(0, n - knee) to [P] points (relative least squares).

    The knee is searched over the measured token counts; for each candidate, floor and
    slope (>= 0) come from a weighted linear solve. Returns floor_us, slope_us_per_token,
    knee_tokens.
    """
    n = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(us, dtype=np.float64)
    w = 1.0 / y
    best = None
    for knee in n[:-1]:
        ramp = np.maximum(0.0, n - knee)
        A = np.stack([np.ones_like(n), ramp], axis=1) * w[:, None]
        (floor, slope), *_ = np.linalg.lstsq(A, y * w, rcond=None)
        if slope < 0 or floor <= 0:  # not a floor-then-rise shape: the best positive hinge is flat
            floor, slope = float(np.exp(np.mean(np.log(y)))), 0.0
        err = float(np.sum((w * (floor + slope * ramp - y)) ** 2))
        if best is None or err < best[0]:
            best = (err, float(floor), float(slope), float(knee))
    _, floor, slope, knee = best
    return {"floor_us": floor, "slope_us_per_token": slope, "knee_tokens": knee}


def hinge_eval(params: dict, tokens: np.ndarray) -> np.ndarray:
    """[...] token counts -> [...] time of the hinge model `params` (us)."""
    n = np.asarray(tokens, dtype=np.float64)
    return params["floor_us"] + params["slope_us_per_token"] * np.maximum(0.0, n - params["knee_tokens"])


def fit_errors(fitted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """(max, median) of |fitted / measured - 1| over the points."""
    rel = np.abs(np.asarray(fitted) / np.asarray(measured) - 1.0)
    return float(rel.max()), float(np.median(rel))


def fit_curve(tokens: np.ndarray, us: np.ndarray, method: str = "isotonic") -> tuple[np.ndarray, dict]:
    """Fit [P] medians with `method`; returns ([P] fitted, report).

    The report holds the method, its max and median relative error, and the hinge
    parameters (always computed: they say where the memory-bound floor ends).
    """
    if method not in FIT_METHODS:
        raise ValueError(f"unknown fit method {method!r}; choose one of {FIT_METHODS}")
    tok = np.asarray(tokens, dtype=np.float64)
    med = np.asarray(us, dtype=np.float64)
    hinge = hinge_fit(tok, med)
    hinge_curve = hinge_eval(hinge, tok)
    fitted = isotonic_fit(tok, med) if method == "isotonic" else hinge_curve
    max_err, med_err = fit_errors(fitted, med)
    hinge_max, _ = fit_errors(hinge_curve, med)
    report = {"method": method, "max_rel_error": max_err, "median_rel_error": med_err,
              **hinge, "hinge_max_rel_error": hinge_max}
    return fitted, report
