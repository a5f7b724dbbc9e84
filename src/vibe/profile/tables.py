"""Turn measured vendor tables into cluster files (`vibe profile import`).

Two kinds of tables:

1. MoE latency tables (parquet, one GPU each; ../shared/data/moe-latency, from
   aiconfigurator's collectors). One row = the latency (ms) of a whole MoE layer's
   expert computation on one GPU, for `num_tokens` tokens, a model shape (hidden_size,
   inter_size, num_experts, topk), a parallel layout (moe_tp_size, moe_ep_size), a
   routing distribution and a kernel.

   How a per-expert curve is derived (rows of one shape, kernel, dtype, TP size):
   * routing: only the unskewed rows ('balanced' / 'uniform'); then every expert gets
     n = num_tokens * topk / num_experts tokens, and a GPU with EP size P holds
     E_loc = num_experts / P experts. With n < 1 only some experts are hit: we count
     a = max(1, E_loc * n) active experts of one token each.
   * layer model (the cost model's): L = overhead + (active experts) * t(n).
   * overhead: at one token per active expert, L = c + a * t(1) is a line in a; its
     intercept over every row with n <= 1 (all EP sizes of the kernel) is the fixed
     per-layer cost; the slope is the one-token expert time. Clipped at 0.
   * curve: on the rows of one EP size where every local expert is hit (n >= 1),
     t(n) = (L - overhead) / E_loc.
   * which EP size: vLLM's single-GPU 'moe' tables feed all num_tokens tokens to the
     kernel, and at EP > 1 the kernel still permutes the tokens of remote experts, so
     the default is the smallest EP size (all experts local: pure expert work). The
     SGLang wide-EP tables (DeepEP) count tokens over the whole EP group and each rank
     only receives its own, so the default is the largest EP size (fewest local experts).
   With no shape flags the DeepSeek-V3 shape is taken (hidden 7168, intermediate 2048,
   256 experts, top-8) when the table has it.

2. Fleet tables (csv; ../shared/data/gpu-variability): per-GPU kernel times of real
   fleets. A GPU's factor = its median time / the fleet median (>1 = slower); a
   seeded sample of G GPUs spreads one curve over a realistic fleet.

numpy and pyarrow only.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from vibe.errors import InputError
from vibe.io import require_file

DEEPSEEK_V3 = {"hidden": 7168, "intermediate": 2048, "num_experts": 256, "topk": 8}
MOE_COLUMNS = ("num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
               "moe_ep_size", "distribution", "moe_dtype", "latency")
TEXT_COLUMNS = ("framework", "version", "device", "op_name", "kernel_source")
UNSKEWED = ("balanced", "uniform")
REGIMES = ("compute", "all")

# flag name -> table column, for shape selection and messages
_SHAPE = {"hidden": "hidden_size", "intermediate": "inter_size", "num_experts": "num_experts", "topk": "topk"}


# ---- MoE latency tables ------------------------------------------------------------------
def read_moe_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a MoE latency parquet table into {column: [rows] array}, or raise InputError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    require_file(p, "a .parquet MoE latency table")
    try:
        table = pq.read_table(p)
        names = table.column_names  # decoded lazily: a damaged name fails here
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a damaged footer fails in many ways
        raise InputError(p, f"not a readable parquet table ({str(exc).splitlines()[0]})") from None
    missing = [c for c in MOE_COLUMNS if c not in names]
    if missing:
        raise InputError(p, f"not a MoE latency table: missing columns {', '.join(missing)}")
    cols = {}
    for c in MOE_COLUMNS + TEXT_COLUMNS:
        if c not in names:
            continue
        try:  # text is decoded here: a damaged string fails as an ArrowException
            cols[c] = table.column(c).to_numpy(zero_copy_only=False)
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            raise InputError(p, f"column {c!r} is not readable ({str(exc).splitlines()[0]})") from None
    try:
        for c in MOE_COLUMNS:
            if c not in ("distribution", "moe_dtype"):
                cols[c] = cols[c].astype(np.float64)
    except (TypeError, ValueError):
        raise InputError(p, f"column {c!r} is not numeric") from None
    # A broken measurement is reported, never dropped: a curve silently built from the
    # remaining rows would look like a real one.
    for c in MOE_COLUMNS:
        if c in ("distribution", "moe_dtype"):
            continue
        bad = np.flatnonzero(~np.isfinite(cols[c]) | (cols[c] <= 0 if c in ("latency", "num_tokens") else False))
        if bad.size:
            what = "NaN or inf" if not np.isfinite(cols[c][bad[0]]) else "a value <= 0"
            raise InputError(p, f"{bad.size} row(s) hold {what} in column {c!r} (first: row {bad[0]})")
    # Plausible physical ranges (a nanosecond to a day; up to a trillion tokens): past them
    # the curve fit squares and multiplies its way to inf.
    for c, lo, hi in (("latency", 1e-6, 8.64e7), ("num_tokens", 1, 1e12)):
        bad = np.flatnonzero((cols[c] < lo) | (cols[c] > hi))
        if bad.size:
            raise InputError(p, f"{bad.size} row(s) hold a {c} outside {lo:g} .. {hi:g} (first: row {bad[0]}, "
                                f"{cols[c][bad[0]]:g})")
    for c in ("hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size"):
        bad = np.flatnonzero((cols[c] < 1) | (cols[c] > 2**31) | (cols[c] != np.round(cols[c])))
        if bad.size:
            raise InputError(p, f"{bad.size} row(s) hold a {c} that is not a positive integer (first: row {bad[0]})")
    if not len(cols["latency"]):
        raise InputError(p, "holds no row")
    return cols


def table_shapes(table: dict) -> list[tuple[int, int, int, int]]:
    """Distinct (hidden, intermediate, num_experts, topk) of a table, sorted."""
    keys = np.stack([table[_SHAPE[k]] for k in _SHAPE], axis=1).astype(np.int64)
    return [tuple(int(v) for v in row) for row in np.unique(keys, axis=0)]


def _shape_text(shapes) -> str:
    return "; ".join(f"--hidden {h} --intermediate {i} --num-experts {e} --top-k {k}" for h, i, e, k in shapes)


def _pick(values: np.ndarray, mask: np.ndarray, wanted, flag: str, source, default=None):
    """The one value of `values[mask]` to use: `wanted`, else `default`, else the only one."""
    present = sorted({v.item() if hasattr(v, "item") else v for v in values[mask]}, key=str)
    if wanted is not None:
        if wanted not in present:
            raise InputError(source, f"no rows with {flag} {wanted} for this selection; present: "
                                     f"{', '.join(map(str, present))}")
        return wanted
    if default is not None and default in present:
        return default
    if len(present) == 1:
        return present[0]
    raise InputError(source, f"several {flag} values in the table ({', '.join(map(str, present))}); pick one "
                             f"with {flag}")


def select_rows(table: dict, source, hidden=None, intermediate=None, num_experts=None, topk=None,
                dtype=None, kernel=None, tp=None, ep=None, distribution=None) -> tuple[np.ndarray, dict]:
    """Pick the rows of one model shape, dtype, kernel, TP size and unskewed distribution.

    Returns (mask over rows [N] of that selection, all EP sizes; the selection as a dict
    including the EP size the curve is taken from).
    """
    given = {"hidden": hidden, "intermediate": intermediate, "num_experts": num_experts, "topk": topk}
    shapes = table_shapes(table)
    if all(v is None for v in given.values()):
        if tuple(DEEPSEEK_V3.values()) not in shapes:
            raise InputError(source, f"the table has no DeepSeek-V3 rows; choose a shape: {_shape_text(shapes)}")
        given = dict(DEEPSEEK_V3)
    match = [s for s in shapes if all(v is None or s[i] == v for i, v in enumerate(given.values()))]
    if len(match) != 1:
        what = "no shape matches" if not match else "several shapes match"
        raise InputError(source, f"{what} the shape flags; shapes in the table: {_shape_text(match or shapes)}")
    shape = dict(zip(given, match[0]))
    mask = np.ones(len(table["latency"]), dtype=bool)
    for k, col in _SHAPE.items():
        mask &= table[col] == shape[k]
    dists = set(table["distribution"][mask])
    dist = distribution or next((d for d in UNSKEWED if d in dists), None)
    if dist is None or dist not in dists:
        raise InputError(source, f"no unskewed ('balanced'/'uniform') rows for this shape; pick one of "
                                 f"{', '.join(sorted(dists))} with --distribution")
    mask &= table["distribution"] == dist
    tp = _pick(table["moe_tp_size"], mask, tp, "--tp", source, default=1.0)
    mask &= table["moe_tp_size"] == tp
    dtype = _pick(table["moe_dtype"], mask, dtype, "--table-dtype", source)
    mask &= table["moe_dtype"] == dtype
    op = _pick(table["op_name"], mask, None, "op_name", source) if "op_name" in table else "moe"
    eps = np.unique(table["moe_ep_size"][mask])
    if ep is None:
        # Which rows hold pure expert work: see the module docstring.
        ep = float(eps.min() if op == "moe" else eps.max())
    ep = _pick(table["moe_ep_size"], mask, float(ep), "--ep", source)
    if "kernel_source" in table:
        kernel = _pick(table["kernel_source"], mask & (table["moe_ep_size"] == ep), kernel, "--kernel", source)
        mask &= table["kernel_source"] == kernel
    info = {**shape, "dtype": str(dtype), "kernel": kernel, "tp": int(tp), "ep": int(ep),
            "distribution": str(dist), "op_name": str(op)}
    for c in ("device", "framework", "version"):
        if c in table:
            info[c] = str(table[c][mask][0])
    return mask, info


def per_expert_curve(table: dict, mask: np.ndarray, info: dict, source) -> dict:
    """Derive one expert's curve from the selected rows (see the module docstring).

    Returns tokens [P] (tokens per expert), us [P] (per-expert time, raw, us), and
    overhead_us with the one-token expert time of the overhead regression.
    """
    E, k = info["num_experts"], info["topk"]
    N = table["num_tokens"][mask]
    L = table["latency"][mask] * 1000.0  # ms -> us
    e_loc = E / table["moe_ep_size"][mask]
    n = N * k / E
    active = np.maximum(1.0, e_loc * np.minimum(1.0, n))
    one = n <= 1.0
    overhead, t1 = 0.0, None
    if len(np.unique(active[one])) >= 2:
        t1, c = np.polyfit(active[one], L[one], 1)
        overhead = float(np.clip(c, 0.0, 0.9 * L.min()))
    rows = (table["moe_ep_size"][mask] == info["ep"]) & (n >= 1.0)
    if rows.sum() < 2:
        raise InputError(source, f"fewer than 2 rows with every expert hit at EP {info['ep']}; try another --ep")
    tokens, inverse = np.unique(n[rows], return_inverse=True)
    per_expert = (L[rows] - overhead) / e_loc[rows]
    us = np.array([np.median(per_expert[inverse == i]) for i in range(len(tokens))])
    return {"tokens": tokens, "us": us, "overhead_us": overhead,
            "one_token_expert_us": None if t1 is None else float(t1)}


def curve_from_table(path: str | os.PathLike, **selection) -> tuple[dict, dict]:
    """Read a MoE latency table and derive a per-expert curve: (curve, selection info)."""
    table = read_moe_table(path)
    mask, info = select_rows(table, path, **selection)
    return per_expert_curve(table, mask, info, path), info


# ---- fleet tables --------------------------------------------------------------------------
def read_fleet(path: str | os.PathLike, column: str | None = None) -> tuple[list[str], np.ndarray]:
    """Per-GPU slowdown factors of a fleet CSV: (GPU ids [G], factor [G], 1 = fleet median).

    Kernel-time tables (columns uuid, perf: SGEMM/ResNet fleets): a GPU's median time
    over the fleet's median. Multiplier tables (PerfVar_class* columns): the chosen
    class's multiplier (`column`, default the first class) over the fleet median.
    """
    p = Path(path)
    require_file(p, "a fleet table (.csv)")
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(p, f"not a readable CSV ({exc})") from None
    classes = [h for h in header if h.startswith("PerfVar_")]
    if column is not None and column not in header:
        raise InputError(p, f"has no column {column!r} (--fleet-column); its columns: {', '.join(header[:12])}")
    if column is None:
        column = "perf" if {"uuid", "perf"} <= set(header) else (classes[0] if classes else None)
    if column is None or column not in header:
        raise InputError(p, f"not a fleet table: expected columns uuid+perf or PerfVar_class* "
                            f"(got {', '.join(header[:8]) or 'no header'})")
    id_col = "uuid" if "uuid" in header else next((h for h in ("GPU_UUID", "GPU_ID") if h in header), None)
    if id_col is None:
        raise InputError(p, "no GPU id column (uuid, GPU_UUID or GPU_ID)")
    per_gpu: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        try:
            value = float(row[column])
        except (TypeError, ValueError):
            raise InputError(p, f"row {i + 2}: {column} is not a number ({row.get(column)!r})") from None
        if np.isfinite(value) and value > 0:
            per_gpu.setdefault(row[id_col], []).append(value)
    if len(per_gpu) < 2:
        raise InputError(p, f"need at least 2 GPUs with a positive {column}")
    ids = sorted(per_gpu)
    med = np.array([_median(per_gpu[g]) for g in ids])
    rel = med / _median(med)
    if not np.all((rel > 1e-3) & (rel < 1e3)):  # also what would overflow the curves
        with np.errstate(divide="ignore"):  # rel may underflow to 0 (1e-311 against 1e308)
            g = ids[int(np.argmax(np.abs(np.log(rel))))]
        raise InputError(p, f"GPU {g}: {column} is {rel[ids.index(g)]:.3g} x the fleet's median, "
                            "not a plausible spread")
    return ids, rel


def _median(values) -> float:
    """np.median that cannot overflow on finite positive values near the float limit."""
    x = np.asarray(values, dtype=np.float64)
    top = float(x.max())
    return float(np.median(x / top)) * top


def sample_fleet(factors: np.ndarray, num_gpus: int, seed: int, source) -> np.ndarray:
    """Indices of `num_gpus` distinct fleet GPUs, drawn with `seed`."""
    if not 1 <= num_gpus <= len(factors):
        raise InputError(source, f"--num-gpus must be 1..{len(factors)} (GPUs in the fleet), got {num_gpus}")
    return np.sort(np.random.default_rng(seed).choice(len(factors), size=num_gpus, replace=False))


def spread_curve(us: np.ndarray, factors: np.ndarray, regime: str = "compute") -> np.ndarray:
    """[P] curve x [G] factors -> [G, P] curves.

    'all' scales the whole curve. 'compute' scales only the time above the curve's
    first point (the memory-bound floor): clock and power differences, which is what
    these fleets measure, slow compute-bound kernels and barely touch weight streaming.
    """
    us = np.asarray(us, dtype=np.float64)
    f = np.asarray(factors, dtype=np.float64)[:, None]
    if regime == "all":
        return us[None, :] * f
    if regime != "compute":
        raise ValueError(f"regime must be one of {REGIMES}")
    return us[0] + f * (us[None, :] - us[0])
