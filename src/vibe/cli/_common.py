"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse

from rich.console import Console

from vibe.cost import DEFAULT_BATCH_TOKENS

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def add_operating_points(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-tokens", type=float, nargs="+", default=list(DEFAULT_BATCH_TOKENS), metavar="B",
                   help="tokens entering each MoE layer per step across the EP group "
                        f"(default: {' '.join(str(b) for b in DEFAULT_BATCH_TOKENS)}: prefill- and decode-sized)")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="weight of each operating point in the objective (default: policy's choice)")


def fmt_us(us: float) -> str:
    return f"{us / 1000:,.3f} ms" if us >= 10_000 else f"{us:,.1f} us"
