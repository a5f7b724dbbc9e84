"""`vibe loads import | stats | diff | export`: expert loads in from engines and traces,
their skew, the drift between two profiles, and loads out to SGLang."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from vibe.cli._common import check_outputs, console, nonneg_int, positive_int
from vibe.errors import InputError, VibeError
from vibe.model import ExpertLoads, Placement, RoutingTrace

IMPORT_FORMATS = ("sglang", "trtllm", "esft", "json", "npy")
EXPORT_FORMATS = ("sglang", "json", "npy")


def register(cli) -> None:
    p = cli.command("import", "import expert loads from an engine dump, routing traces or a plain matrix",
                    cmd_import, group="loads")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="sglang: recorder dumps (.pt stat/per_pass); trtllm: EXPERT_STATISTIC_PATH folders; "
                        "esft: domain folders; json/npy: count matrices. Several paths are summed.")
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    p.add_argument("--out", required=True, help="loads file to write (vibe.loads/v1)")
    p.add_argument("--trace", default=None, metavar="NPZ", help="esft: also write the token-level trace (.npz)")
    p.add_argument("--top-k", type=positive_int, default=None, help="experts per token (when the files do not say)")
    p.add_argument("--num-experts", type=positive_int, default=None,
                   help="routed experts per layer of the model (esft default 64); trtllm: refuses statistics "
                        "that count slots (load balancer on) unless --placement folds them")
    p.add_argument("--moe-layers", default=None, metavar="SPEC",
                   help="decoder layer ids of the MoE layers, e.g. 1-26: selects them from a decoder-indexed "
                        "dump (SGLang) or labels the rows of a MoE-indexed one (vLLM, npy)")
    p.add_argument("--placement", default=None,
                   help="trtllm: fold per-slot counts back to experts through this vibe.placement/v1 file")
    p.add_argument("--model", default=None, help="model name to record")

    s = cli.command("stats", "skew of a profile per layer (max/mean, Gini, entropy) and co-activation",
                    cmd_stats, group="loads")
    s.add_argument("path", metavar="LOADS_OR_TRACE", help="vibe.loads/v1 file or trace .npz (co-activation needs a trace)")
    s.add_argument("--pairs", type=nonneg_int, default=1, metavar="N", help="most co-activated pairs to show per layer")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    d = cli.command("diff", "distance between two profiles per layer and overall (total variation, cosine)",
                    cmd_diff, group="loads")
    d.add_argument("a", metavar="A", help="vibe.loads/v1 file or trace .npz")
    d.add_argument("b", metavar="B", help="vibe.loads/v1 file or trace .npz")
    d.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    e = cli.command("export", "write loads for an engine: SGLang logical_count (.pt or .json), plain json or npy",
                    cmd_export, group="loads")
    e.add_argument("path", metavar="LOADS", help="vibe.loads/v1 file")
    e.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    e.add_argument("--out", required=True, help="sglang: .pt or .json; json: counts object; npy: [layers, experts]")
    e.add_argument("--num-hidden-layers", type=positive_int, default=None,
                   help="sglang: decoder layers of the model (default: last MoE layer + 1)")


# ---- import -------------------------------------------------------------------------
def import_loads(args: argparse.Namespace) -> tuple[ExpertLoads, RoutingTrace | None]:
    """Read args.paths in args.format -> (loads, trace or None). Writes nothing."""
    from vibe.engines.layers import parse_layer_spec
    from vibe.engines.plain import merge_raw, read_json_counts, read_npy_counts

    moe_layers = parse_layer_spec(args.moe_layers) if args.moe_layers else None
    if args.trace and args.format != "esft":
        raise VibeError("--trace needs token-level input: --format esft (or `vibe profile loads`)")
    if args.placement and args.format != "trtllm":
        raise VibeError("--placement only applies to --format trtllm")
    if args.format == "esft":
        return _import_esft(args, moe_layers)
    if args.format == "sglang":
        from vibe.engines.sglang import load_sglang_loads

        return load_sglang_loads(args.paths, args.top_k, moe_layers, args.num_experts, args.model or ""), None
    if args.format == "trtllm":
        from vibe.engines.trtllm import load_trtllm_loads

        placement = Placement.load(args.placement) if args.placement else None
        return load_trtllm_loads(args.paths, args.top_k, moe_layers, placement, args.model or "",
                                 args.num_experts), None
    reader = read_json_counts if args.format == "json" else read_npy_counts
    return merge_raw([reader(p) for p in args.paths], args.top_k, moe_layers, args.model,
                     {"source": args.format}), None


def _import_esft(args: argparse.Namespace, moe_layers) -> tuple[ExpertLoads, RoutingTrace]:
    from vibe.engines.esft import load_esft_traces

    kw = {"top_k": args.top_k or 6, "num_experts": args.num_experts or 64}
    if args.model:
        kw["model"] = args.model
    trace = load_esft_traces(args.paths, **kw)
    if moe_layers is not None:
        from vibe.engines.layers import apply_moe_layers

        rows = np.arange(trace.num_layers)[:, None]
        picked, ids = apply_moe_layers(rows, trace.layer_ids, moe_layers, args.paths[0])
        trace = RoutingTrace(trace.experts[picked[:, 0]], trace.seq_offsets, trace.num_experts, ids, trace.model)
    source = "esft:" + "+".join(Path(p).name for p in args.paths)
    return trace.to_loads(source), trace


def cmd_import(args: argparse.Namespace) -> int:
    from vibe.loadstats import max_over_mean

    check_outputs([args.out, args.trace], [*args.paths, args.placement])
    loads, trace = import_loads(args)
    if args.format == "trtllm" and args.num_experts is None and args.placement is None:
        console.print(f"note: read as {loads.num_experts} experts per layer; statistics recorded with TensorRT-LLM's "
                      f"load balancer on count slots: pass --num-experts (the model's) to check, --placement to fold")
    if trace is not None and args.trace:
        trace.save(args.trace)
    loads.save(args.out)
    ids = loads.layer_ids
    console.print(f"wrote {args.out}: {loads.num_layers} MoE layers ({ids[0]}..{ids[-1]}) x {loads.num_experts} "
                  f"experts, top-{loads.top_k}, {loads.counts.sum(axis=1).mean() / loads.top_k:,.0f} tokens per layer; "
                  f"busiest expert "
                  f"{np.median(max_over_mean(loads.counts)):.2f}x the mean (median layer)")
    if trace is not None and args.trace:
        console.print(f"wrote {args.trace}: {trace.num_sequences} sequences, {trace.num_tokens:,} tokens")
    return 0


# ---- stats / diff -------------------------------------------------------------------
def read_profile(path: str) -> tuple[ExpertLoads, RoutingTrace | None]:
    """A vibe.loads/v1 file, or a trace .npz (its loads are its routing counts)."""
    if str(path).endswith(".npz"):
        trace = RoutingTrace.load(path)
        return trace.to_loads(f"trace:{Path(path).name}"), trace
    return ExpertLoads.load(path), None


def profile_stats(loads: ExpertLoads, trace: RoutingTrace | None, pairs: int, source: object = "loads") -> dict:
    from vibe.loadstats import coactivation, layer_skew, top_pairs

    seen = loads.counts.sum(axis=1) > 0
    if not seen.any():
        raise InputError(source, "every count is zero: no token was routed, so there is no skew to report")
    # A layer that saw no token has no skew: null in JSON, "-" in the table, left out of
    # the summary (the stats functions would call it uniform).
    skew = layer_skew(loads)
    out = {"model": loads.model, "top_k": loads.top_k, "num_experts": loads.num_experts,
           "layer_ids": list(loads.layer_ids),
           **{k: [float(x) if s else None for x, s in zip(v, seen)] for k, v in skew.items()},
           "empty_layers": [l for l, s in zip(loads.layer_ids, seen) if not s],
           "summary": {k: {"min": float(v[seen].min()), "median": float(np.median(v[seen])),
                           "max": float(v[seen].max())} for k, v in skew.items()}}
    if trace is not None and pairs > 0:
        out["top_pairs"] = [[{"a": a, "b": b, "tokens": n, "lift": lift}
                             for a, b, n, lift in top_pairs(coactivation(trace.experts[l], trace.num_experts),
                                                            trace.num_tokens, pairs)]
                            for l in range(trace.num_layers)]
    return out


def cmd_stats(args: argparse.Namespace) -> int:
    loads, trace = read_profile(args.path)
    st = profile_stats(loads, trace, args.pairs, args.path)
    if args.json:
        print(json.dumps(st))
        return 0
    t = Table(title=f"{args.path}: {loads.num_layers} layers x {loads.num_experts} experts, top-{loads.top_k}")
    for col in ("layer", "max/mean", "Gini", "entropy"):
        t.add_column(col, justify="right")
    if "top_pairs" in st:
        t.add_column("top co-activated pair (tokens, lift)", justify="left")
    for i, layer in enumerate(loads.layer_ids):
        if st["max_over_mean"][i] is None:
            row = [str(layer), "-", "-", "-  (no token)"]
        else:
            row = [str(layer), f"{st['max_over_mean'][i]:.2f}", f"{st['gini'][i]:.3f}", f"{st['entropy'][i]:.3f}"]
        if "top_pairs" in st:
            row.append("  ".join(f"{p['a']}+{p['b']} ({p['tokens']}, {p['lift']:.1f}x)" for p in st["top_pairs"][i]))
        t.add_row(*row)
    console.print(t)
    sm = st["summary"]
    console.print("median layer: busiest expert {:.2f}x the mean, Gini {:.3f}, entropy {:.3f} of uniform".format(
        sm["max_over_mean"]["median"], sm["gini"]["median"], sm["entropy"]["median"]))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from vibe.loadstats import compare_loads

    a, _ = read_profile(args.a)
    b, _ = read_profile(args.b)
    r = compare_loads(a, b)
    if args.json:
        print(json.dumps({"layer_ids": r["layer_ids"], "tv": r["tv"].tolist(), "cosine": r["cosine"].tolist(),
                          "overall": r["overall"]}))
        return 0
    t = Table(title=f"{args.a} vs {args.b}")
    for col in ("layer", "TV distance", "cosine distance"):
        t.add_column(col, justify="right")
    for layer, tv, cos in zip(r["layer_ids"], r["tv"], r["cosine"]):
        t.add_row(str(layer), f"{tv:.3f}", f"{cos:.3f}")
    console.print(t)
    o = r["overall"]
    console.print(f"{len(r['layer_ids'])} common layers: TV median {o['tv_median']:.3f} (mean {o['tv_mean']:.3f}, "
                  f"max {o['tv_max']:.3f}); cosine median {o['cosine_median']:.3f}, all layers {o['cosine_all']:.3f}")
    return 0


# ---- export -------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    check_outputs([args.out], [args.path])
    loads = ExpertLoads.load(args.path)
    out = Path(args.out)
    if args.format == "sglang":
        from vibe.engines.sglang import write_sglang_logical_count

        if out.suffix not in (".pt", ".json"):
            raise VibeError(f"{out}: SGLang reads logical_count from a .pt or .json file")
        write_sglang_logical_count(loads, out, args.num_hidden_layers)
        what = "SGLang logical_count (decoder-layer rows)"
    elif args.format == "json":
        from vibe.engines.plain import write_counts_json

        write_counts_json(loads, out)
        what = "counts"
    else:
        from vibe.engines.plain import write_npy

        write_npy(loads.counts.astype(np.int64) if np.all(loads.counts == np.rint(loads.counts)) else loads.counts, out)
        what = f"[{loads.num_layers}, {loads.num_experts}] counts of layers {loads.layer_ids[0]}..{loads.layer_ids[-1]}"
    console.print(f"wrote {out}: {what}")
    return 0
