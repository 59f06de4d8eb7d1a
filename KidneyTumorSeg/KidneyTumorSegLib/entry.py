"""The `kidney-tumor-seg` console entry: Ctrl+C and SIGTERM are handled before anything heavy is imported.

Standard library only, so that the signal handlers are in place within milliseconds of the start: the
command-line module imports numpy, SimpleITK and torch (seconds), and a Ctrl+C during those imports used to
print a traceback and end the process by signal. Here any SIGINT or SIGTERM, from the first import on,
raises :class:`Interrupted` (a KeyboardInterrupt), which the writers' cleanup sees like any other error and
which ends the run with one line and exit code 128 + the signal number: 130 for Ctrl+C, 143 for SIGTERM.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable, Dict, Optional, Sequence

HANDLED_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)
REPEAT_GRACE_S = 5.0  # a second Ctrl+C this soon after the first waits for the cleanup the first started
SIGNAL_NAMES = {signal.SIGINT: "Ctrl+C (SIGINT)"}
_STATE = {"first": None, "finished": False}


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_code`` is 128 + its number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """130 for Ctrl+C (a plain KeyboardInterrupt too), 128 + N for signal N."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def interrupted_message(exc: BaseException) -> str:
    """The one line an interrupted run prints."""
    signum = getattr(exc, "signum", signal.SIGINT)
    name = SIGNAL_NAMES.get(signum) or signal.Signals(signum).name
    return f"Interrupted by {name}: stopped, and no partial output was left."


def _on_signal(signum, frame):
    now = time.monotonic()
    first = _STATE["first"]
    if _STATE["finished"] or (first is not None and now - first < REPEAT_GRACE_S):
        return  # finished (outputs complete), or already stopping: let the cleanup finish
    _STATE["first"] = now
    raise Interrupted(signum)


def install_signal_handlers() -> Dict[int, Callable]:
    """Make SIGINT and SIGTERM raise :class:`Interrupted`; returns the previous handlers (for
    :func:`restore_signal_handlers`). Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _STATE.update(first=None, finished=False)
    return {s: signal.signal(s, _on_signal) for s in HANDLED_SIGNALS}


def restore_signal_handlers(previous: Dict[int, Callable]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: handlers first, then the command line (which imports the heavy libraries)."""
    install_signal_handlers()
    try:
        from .cli import main as cli_main
        return cli_main(argv)
    except KeyboardInterrupt as exc:  # during the imports, before the command line could handle it
        print(interrupted_message(exc), file=sys.stderr, flush=True)
        return exit_code(exc)
    finally:
        _STATE["finished"] = True  # a signal from now on changes nothing: the outcome is decided


if __name__ == "__main__":
    sys.exit(main())
