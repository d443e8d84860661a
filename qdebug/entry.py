"""The `qdebug` console script: signals and a closed stdout handled before the heavy imports start.

Ctrl-C while numpy/onnxruntime are still importing, SIGTERM from a job scheduler, and `qdebug ... | head`
end with one line and the conventional exit code (130, 143, 0), never a traceback; SIGTERM unwinds like
Ctrl-C, so temp files of a write in progress are removed.
"""

from __future__ import annotations

import os
import signal
import sys


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup (`finally`, temp-file removal) runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run() -> None:
    """Entry point of the console script (`qdebug = qdebug.entry:run`)."""
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread: keep the default
        pass
    try:
        from qdebug.cli import main

        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("qdebug: interrupted\n")
        code = 130
    except Terminated:
        sys.stderr.write("qdebug: terminated\n")
        code = 143
    for sig in (signal.SIGINT, signal.SIGTERM):  # the work is done: a late signal must not turn into a crash
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    try:
        sys.stdout.flush()
    except OSError:
        _quiet_stdout()
    sys.exit(code)
