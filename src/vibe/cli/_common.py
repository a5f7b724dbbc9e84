"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse

from rich.console import Console

from vibe.cost import DEFAULT_TOKENS_PER_GPU, default_batch_tokens

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def add_operating_points(p: argparse.ArgumentParser) -> None:
    points = p.add_mutually_exclusive_group()
    points.add_argument("--batch-tokens", type=float, nargs="+", default=None, metavar="B",
                        help="tokens entering each MoE layer per step across the EP group (absolute)")
    points.add_argument("--tokens-per-gpu", type=float, nargs="+", default=None, metavar="T",
                        help="operating points in tokens per GPU per step, scaled by the EP size (default: "
                             f"{' '.join(str(t) for t in DEFAULT_TOKENS_PER_GPU)}: prefill- and decode-sized; "
                             "8192 and 256 tokens per step at 8 GPUs)")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="weight of each operating point in the objective (default: 0.7 / 0.3 for the default "
                        "points, else equal)")


def operating_points(args: argparse.Namespace, num_gpus: int) -> tuple[float, ...]:
    """Tokens per step of each operating point from --batch-tokens / --tokens-per-gpu,
    else the defaults scaled by the EP size (vibe.cost.default_batch_tokens)."""
    if getattr(args, "batch_tokens", None):
        return tuple(float(b) for b in args.batch_tokens)
    if getattr(args, "tokens_per_gpu", None):
        return tuple(float(t) * num_gpus for t in args.tokens_per_gpu)
    return default_batch_tokens(num_gpus)


def fmt_us(us: float) -> str:
    return f"{us / 1000:,.3f} ms" if us >= 10_000 else f"{us:,.1f} us"
