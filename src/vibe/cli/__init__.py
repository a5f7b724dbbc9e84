"""The `vibe` command.

Every module in this folder (not starting with "_") has `register(cli: Commands)`, which
adds its sub-commands; groups such as `vibe loads ...` may be extended by several modules.
Errors a user can fix (VibeError) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Callable, Sequence

from vibe.errors import VibeError


class Commands:
    """Owns the argparse tree; lets command modules add commands and groups."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(
            prog="vibe",
            description="Place MoE experts on GPUs with workload skew and hardware variability in mind.")
        self.parser.add_argument("--version", action="version", version=f"vibe {_version()}")
        self._top = self.parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def command(self, name: str, help: str, func: Callable[[argparse.Namespace], int | None],
                group: str | None = None) -> argparse.ArgumentParser:
        """Add `vibe [group] name`; `func(args)` runs it."""
        subs = self._top if group is None else self._group(group)
        p = subs.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def _group(self, name: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            gp = self._top.add_parser(name, help=_GROUP_HELP.get(name, f"{name} commands"))
            gp.set_defaults(func=lambda args, gp=gp: gp.print_help() or 2)
            self._groups[name] = gp.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        return self._groups[name]


_GROUP_HELP = {
    "cluster": "make cluster files (per-GPU latency curves)",
    "loads": "make, import, inspect and compare expert-load files",
    "profile": "measure hardware and workloads for real",
}


def _version() -> str:
    from vibe import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    cli = Commands()
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}").register(cli)
    return cli.parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except VibeError as exc:
        print(f"vibe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vibe: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())


def console_main() -> None:
    sys.exit(main())
