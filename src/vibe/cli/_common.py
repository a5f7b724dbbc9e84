"""Argument helpers shared by the command modules: the consoles, operating points, and
the validation layer for numbers and sizes at the CLI edge.

Every numeric flag goes through one of the `type=` functions below (`positive_int`,
`nonneg_int`, `seed_int`, `int_range`, `finite_float`), so NaN, inf, negative, fractional and
absurd values stop at parsing with one line naming the flag. Sizes that would allocate
too much or run too long are refused by `check_size` / `check_slots` before any work.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from rich.console import Console

from vibe.cost import DEFAULT_TOKENS_PER_GPU, default_batch_tokens
from vibe.errors import VibeError


def _console(stderr: bool = False) -> Console:
    # Into a pipe or a file, lines are not wrapped or cut at 80 columns: `| tail -1`
    # and `> out.txt` get whole lines. A terminal keeps its own width.
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(highlight=False, stderr=stderr, width=None if tty else 10_000, soft_wrap=not tty)


console = _console()
err_console = _console(stderr=True)


# ---- numbers -------------------------------------------------------------------------
MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy both take this
_MAX_INT = 2**53  # counts beyond this are no real input and overflow int64 / float64 maths


def _int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if math.isfinite(value) and value.is_integer():
        return int(value)  # "8.0", "1e3"
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")


def int_range(lo: int | None = None, hi: int | None = None):
    """argparse type: an integer in lo..hi (either bound may be None)."""

    def parse(text: str) -> int:
        value = _int(text)
        if lo is not None and value < lo and (hi is None or hi >= _MAX_INT):
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"{lo}..{hi}" if lo is not None and hi is not None else f"<= {hi}"
            raise argparse.ArgumentTypeError(f"must be {'in ' if '..' in span else ''}{span}, got {text}")
        return value

    parse.__name__ = "integer"  # what argparse names in its messages
    return parse


positive_int = int_range(1, _MAX_INT)
nonneg_int = int_range(0, _MAX_INT)
seed_int = int_range(0, MAX_SEED)


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite number in [lo, hi] (`lo_open`/`hi_open`: the bound excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text}")
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_float = finite_float(0, lo_open=True)
nonneg_float = finite_float(0)


# ---- sizes ---------------------------------------------------------------------------
# Default ceiling on what one command may allocate; VIBE_MAX_MEMORY_GB raises it.
DEFAULT_MAX_MEMORY_GB = 8.0


def max_memory_bytes() -> float:
    raw = os.environ.get("VIBE_MAX_MEMORY_GB")
    try:
        gb = float(raw) if raw else DEFAULT_MAX_MEMORY_GB
    except ValueError:
        raise VibeError(f"VIBE_MAX_MEMORY_GB={raw!r} is not a number") from None
    return (gb if math.isfinite(gb) and gb > 0 else DEFAULT_MAX_MEMORY_GB) * 2**30


def check_size(nbytes: float, what: str, flags: str) -> None:
    """Refuse work whose estimated memory `nbytes` exceeds the limit, naming the flags
    that set its size and how to raise the limit."""
    limit = max_memory_bytes()
    if nbytes > limit:
        raise VibeError(f"{what} needs about {nbytes / 2**30:,.1f} GiB, over the {limit / 2**30:g} GiB limit: "
                        f"lower {flags} (or raise the limit with VIBE_MAX_MEMORY_GB)")


# A GPU holding two copies of one expert gains nothing, so E experts on G GPUs use at
# most E * G slots per layer; the solvers' time grows with the slots, and past that
# bound --redundant only burns time and memory.
MAX_GPUS = 8192


def check_slots(num_experts: int, redundant: int, num_gpus: int, num_layers: int = 1) -> None:
    """Refuse a --redundant beyond one replica of every expert on every GPU, and slot
    tables too big to hold."""
    most = num_experts * (num_gpus - 1)
    if redundant > most:
        raise VibeError(f"--redundant {redundant}: at most {most} for {num_experts} experts on {num_gpus} GPUs "
                        "(one replica of every expert on every GPU)")
    # [L, slots] maps plus [L, slots, G]-sized solver scratch, 8 bytes each
    check_size(8.0 * num_layers * (num_experts + redundant) * max(num_gpus, 1) * 4,
               f"{num_layers} layers x {num_experts + redundant} slots on {num_gpus} GPUs", "--redundant or --gpus")


# ---- output paths ----------------------------------------------------------------------
def check_outputs(outputs, inputs=()) -> None:
    """Before any work: every output path (None skipped) can take a file, none is one of
    the inputs, and no two are the same path."""
    from vibe.io import check_not_input, check_output

    outs = [o for o in outputs if o is not None]
    for o in outs:
        check_output(o)
    check_not_input(outs, inputs)
    real = [os.path.realpath(o) for o in outs]
    for i, o in enumerate(outs):
        if real[i] in real[:i]:
            raise VibeError(f"{o}: named for two outputs; give each output its own path")


# ---- operating points ----------------------------------------------------------------
MIN_POINT_TOKENS = 1e-3  # below a thousandth of a token per step, times per token pass the float range


def add_operating_points(p: argparse.ArgumentParser) -> None:
    points = p.add_mutually_exclusive_group()
    points.add_argument("--batch-tokens", type=finite_float(MIN_POINT_TOKENS, 1e12), nargs="+", default=None, metavar="B",
                        help="tokens entering each MoE layer per step across the EP group (absolute)")
    points.add_argument("--tokens-per-gpu", type=finite_float(MIN_POINT_TOKENS, 1e9), nargs="+", default=None, metavar="T",
                        help="operating points in tokens per GPU per step, scaled by the EP size (default: "
                             f"{' '.join(str(t) for t in DEFAULT_TOKENS_PER_GPU)}: prefill- and decode-sized; "
                             "8192 and 256 tokens per step at 8 GPUs)")
    p.add_argument("--weights", type=nonneg_float, nargs="+", default=None, metavar="W",
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


# ---- the communication term ----------------------------------------------------------
COMM_HELP = ("all-to-all in the per-GPU time: 'file' (default) when the cluster file has a "
             "network block, 'on' with the documented defaults for missing fields, 'off' never")


def add_comm_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--comm", choices=("file", "on", "off"), default="file", help=COMM_HELP)


def load_cluster(path: str, comm: str = "file"):
    """The cluster file at `path`, with its network block as `--comm` says."""
    from vibe.model import Cluster

    cluster = Cluster.load(path)
    if comm == "on":
        return cluster.with_network()
    if comm == "off":
        return cluster.with_gpus(cluster.gpus, network=None)
    return cluster
