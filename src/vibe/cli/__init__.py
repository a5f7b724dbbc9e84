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


class HelpFormatter(argparse.HelpFormatter):
    """`--help` shows every option's default, and "(required)" on required options,
    unless the help text already says so."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or any(w in text for w in ("%(default)", "(default", "default:", "(required)")):
            return text
        if action.required:
            return f"{text} (required)".strip()
        if _shows_default(action.default) and action.nargs != 0:
            return f"{text} (default: %(default)s)".strip()
        return text


class Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other vibe error, and exit with code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"vibe: error: {message} (see {self.prog} --help)\n")


class Commands:
    """Owns the argparse tree; lets command modules add commands and groups."""

    def __init__(self) -> None:
        self.parser = Parser(
            prog="vibe", formatter_class=HelpFormatter,
            description="Place MoE experts on GPUs with workload skew and hardware variability in mind.")
        self.parser.add_argument("--version", action="version", version=f"vibe {_version()}")
        self._top = self.parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def command(self, name: str, help: str, func: Callable[[argparse.Namespace], int | None],
                group: str | None = None) -> argparse.ArgumentParser:
        """Add `vibe [group] name`; `func(args)` runs it."""
        subs = self._top if group is None else self._group(group)
        p = subs.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        p.set_defaults(func=func)
        return p

    def _group(self, name: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            gp = self._top.add_parser(name, help=_GROUP_HELP.get(name, f"{name} commands"), formatter_class=HelpFormatter)
            gp.set_defaults(func=lambda args, gp=gp: gp.print_help() or 2)
            self._groups[name] = gp.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        return self._groups[name]


_GROUP_HELP = {
    "cluster": "make and edit cluster files (per-GPU latency curves)",
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
    _give_every_option_help(cli.parser)
    return cli.parser


def _give_every_option_help(parser: argparse.ArgumentParser) -> None:
    # argparse prints nothing (not even the default) for an option without help text.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _give_every_option_help(sub)
        elif action.option_strings and action.help is None:
            action.help = "(required)" if action.required else (
                "(default: %(default)s)" if _shows_default(action.default) else None)


def _shows_default(default) -> bool:
    # `is` checks: a default of 0 is worth showing, False (a flag's off state) is not.
    return not (default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, list) and not default))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0): return, don't exit
        return exc.code if isinstance(exc.code, int) else 2
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
