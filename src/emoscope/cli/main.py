"""``emoscope`` entry point.

Subcommands live in ``emoscope/cli/cmd_*.py``; each module defines
``register(subparsers) -> None`` and sets ``func`` on its parser. They are discovered here,
so adding a stage never edits this file.

Errors a user can cause (``EmoscopeError``) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings
from collections.abc import Sequence

import emoscope.cli as _cli_pkg
from emoscope.errors import EmoscopeError

__all__ = ["main", "build_parser"]


def one_line(message: str) -> str:
    """``message`` on one line: control characters a user typed (newlines, carriage returns,
    escapes) are shown escaped, so an error is always exactly one line.

    >>> one_line("bad value 'a\\rb'")
    "bad value 'a\\\\rb'"
    """
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(message))


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print the error alone, on one line.

    A subcommand may defer adding its arguments (``cli.common.lazy_arguments``): they are
    added the first time that subcommand is parsed or asked for help.
    """

    def _populate(self) -> None:
        add = self.__dict__.pop("_emoscope_populate", None)
        if add is not None:
            add(self)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        self._populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._populate()
        return super().format_help()

    def format_usage(self) -> str:
        self._populate()
        return super().format_usage()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


_SHOW_WARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """emoscope's own warnings (truncated texts, data problems) as one line; others as Python shows them."""
    if not getattr(category, "__module__", "").startswith("emoscope."):
        _SHOW_WARNING(message, category, filename, lineno, file, line)
        return
    print(f"emoscope: warning: {one_line(message)}", file=file or sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    from emoscope import __version__

    parser = _OneLineParser(
        prog="emoscope",
        description="Find, measure and steer emotion and concept representations in language models.",
    )
    parser.add_argument("--version", action="version", version=f"emoscope {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    for info in sorted(pkgutil.iter_modules(_cli_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"emoscope.cli.{info.name}").register(sub)
    return parser


def _silence_bare_bars(argv: Sequence[str]) -> None:
    """With ``--quiet`` (or ``EMOSCOPE_QUIET=1``), also silence the bars other libraries draw with a
    bare tqdm: transformers' GGUF dequantising bar is not behind its logging switch. tqdm reads
    ``TQDM_*`` defaults when it is first imported, and parsing a command's arguments may import
    it, so this runs before the parser is built."""
    head = []
    for a in argv:  # the global flags come before the command
        if not a.startswith("-"):
            break
        head.append(a)
    if "--quiet" in head or "-q" in head or os.environ.get("EMOSCOPE_QUIET", "") not in ("", "0"):
        os.environ["TQDM_DISABLE"] = "1"


def main(argv: Sequence[str] | None = None) -> int:
    from emoscope.cli.common import reset_notes

    reset_notes()  # a renamed flag's note is printed once per command
    _silence_bare_bars(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version, or a usage error (already printed)
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if args.quiet:
        from emoscope import _progress

        _progress.set_quiet(True)
    try:
        with warnings.catch_warnings():  # a warning is one line too: "emoscope: warning: ..."
            warnings.showwarning = _show_warning
            rc = args.func(args)
    except EmoscopeError as e:
        print(f"emoscope: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emoscope: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
