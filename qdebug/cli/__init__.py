"""Command-line interface: the `qdebug` parser, its explicit subcommand list, and the entry point `main`."""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
import warnings

from qdebug import __version__
from qdebug.cli import bisect, compare, doctor, promote, report
from qdebug.cli.guard import check_outputs, run_inputs
from qdebug.cli.terminal import STDERR, STDOUT, err_console, mk
from qdebug.errors import QDebugError

# Each module's register(sub) adds its subparser and sets `func`; this order is the order in --help.
COMMANDS = {"compare": compare, "promote": promote, "bisect": bisect, "report": report, "doctor": doctor}


class UsageError(QDebugError):
    """A command line argparse refuses (unknown option, bad value, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `qdebug: error:` line like every other error (subparsers inherit it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, where=self.prog, fix=f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    """The `qdebug` argument parser with every subcommand registered."""
    ap = _Parser(prog="qdebug", description="Layer-level quantization debugger for ONNX models "
                                 "deployed to edge NPUs.")
    ap.add_argument("--version", action="version", version=f"qdebug {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    return ap


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    err_console.print(mk("[yellow]warning:[/] {}", " ".join(str(message).split())), soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `qdebug` console script; user errors become one line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except UsageError as exc:
        err_console.print(mk("[bold red]qdebug: error:[/] {}", exc.one_line()), soft_wrap=True)
        return exc.exit_code
    args.command_line = "qdebug " + " ".join(shlex.quote(a) for a in argv)
    STDOUT.failed = STDERR.failed = None
    try:
        args.run_inputs = run_inputs(args)
        check_outputs(args, args.run_inputs)
        with warnings.catch_warnings():  # library warnings (data notes, onnx) as one line each, not two
            warnings.showwarning = _one_line_warning
            code = int(args.func(args) or 0)
        fail = STDOUT.failed
        if fail is not None and fail.errno != errno.EPIPE:  # a closed pipe (`| head`) is the reader's choice
            err_console.print(mk("qdebug: warning: standard output could not be written ({}); the output files "
                                 "were written", fail.strerror or fail), soft_wrap=True)
        return code
    except QDebugError as exc:
        err_console.print(mk("[bold red]qdebug: error:[/] {}", exc.one_line()), soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("qdebug: interrupted")
        return 130
    except MemoryError:
        err_console.print("[bold red]qdebug: error:[/] out of memory (fix: use fewer --samples or a smaller --size)")
        return 3
