"""`vibe cluster edit`: derate or take down single GPUs of a cluster file (imported,
measured or synthesized) without writing a CSV by hand."""

from __future__ import annotations

import argparse
import dataclasses

from vibe.cli._common import check_outputs, console, finite_float, nonneg_int
from vibe.errors import InputError
from vibe.model import Cluster

_factor = finite_float(0, 1e6, lo_open=True)


def _rank_factor(text: str) -> tuple[int, float]:
    """argparse type: RANK=FACTOR, e.g. 3=1.2 (GPU 3 takes 20% longer)."""
    rank, sep, factor = str(text).partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected RANK=FACTOR (e.g. 3=1.2), got {text!r}")
    return nonneg_int(rank), _factor(factor)


def register(cli) -> None:
    e = cli.command("edit", "derate (--scale) or mark down (--down) single GPUs of a cluster file", cmd_edit,
                    group="cluster")
    e.add_argument("cluster", metavar="CLUSTER", help="vibe.cluster/v1 file to start from")
    e.add_argument("--scale", type=_rank_factor, action="append", default=[], metavar="RANK=FACTOR",
                   help="multiply GPU RANK's latency curve by FACTOR (1.2: 20%% slower); repeatable")
    e.add_argument("--down", type=nonneg_int, action="append", default=[], metavar="RANK",
                   help='mark GPU RANK as down ("state": "down" on its entry); repeatable')
    e.add_argument("--up", type=nonneg_int, action="append", default=[], metavar="RANK",
                   help="clear a GPU's down state; repeatable")
    e.add_argument("--out", required=True, help="cluster file to write (vibe.cluster/v1)")


def cmd_edit(args: argparse.Namespace) -> int:
    check_outputs([args.out], [args.cluster])
    cluster = Cluster.load(args.cluster)
    if not (args.scale or args.down or args.up):
        raise InputError("cluster edit", "nothing to do: give --scale RANK=FACTOR, --down RANK or --up RANK")
    for rank in [r for r, _ in args.scale] + args.down + args.up:
        if rank >= cluster.num_gpus:
            raise InputError(args.cluster, f"has no GPU rank {rank} (ranks 0..{cluster.num_gpus - 1})")
    both = set(args.down) & set(args.up)
    if both:
        raise InputError("cluster edit", f"GPU {min(both)} is both --down and --up")
    gpus = list(cluster.gpus)
    notes = []
    for rank, factor in args.scale:
        g = gpus[rank]
        history = list(g.extra.get("derated", [])) + [float(factor)]
        gpus[rank] = dataclasses.replace(g, latency_us=g.latency_us * factor, extra={**g.extra, "derated": history})
        notes.append(f"GPU {rank} latency x{factor:g}")
    for rank in args.down:
        gpus[rank] = dataclasses.replace(gpus[rank], extra={**gpus[rank].extra, "state": "down"})
        notes.append(f"GPU {rank} down")
    for rank in args.up:
        gpus[rank] = dataclasses.replace(gpus[rank], extra={k: v for k, v in gpus[rank].extra.items() if k != "state"})
        notes.append(f"GPU {rank} up")
    try:
        edited = cluster.with_gpus(gpus)  # validates the new curves (e.g. not implausibly large)
    except InputError as exc:
        raise InputError(args.cluster, f"after the edit: {exc.problem}") from None
    edited.save(args.out)
    console.print(f"{cluster.name}: " + ", ".join(notes))
    console.print(f"wrote {args.out}")
    return 0
