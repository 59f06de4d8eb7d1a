"""The `kidney-tumor-seg` console entry: Ctrl+C and SIGTERM are handled before anything heavy is imported.

Standard library only, so that the signal handlers are in place within milliseconds of the start: the
command-line module imports numpy, SimpleITK and torch (seconds), and a Ctrl+C during those imports used to
print a traceback and end the process by signal. Here any SIGINT or SIGTERM, from the first import on,
raises :class:`Interrupted` (a KeyboardInterrupt), which the writers' cleanup sees like any other error and
which ends the run with one line and exit code 128 + the signal number: 130 for Ctrl+C, 143 for SIGTERM.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

HANDLED_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)
REPEAT_GRACE_S = 5.0  # a second Ctrl+C this soon after the first waits for the cleanup the first started
SIGNAL_NAMES = {signal.SIGINT: "Ctrl+C (SIGINT)"}
_STATE = {"first": None, "finished": False, "watching": False}
_WRITTEN: List[str] = []  # this run's files renamed into place complete, in that order (record_written)
_WATCH_LOCK = threading.Lock()  # the stdin watcher signals only while the handlers it relies on are in place


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_code`` is 128 + its number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """130 for Ctrl+C (a plain KeyboardInterrupt too), 128 + N for signal N."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def interrupted_message(exc: BaseException, written: Iterable[str] = ()) -> str:
    """The one line an interrupted run prints. ``written``: the files this run completed before the stop
    (:func:`written_so_far`); a signal during the final renames is handled right after them, so a set can be
    complete although the run reports the stop."""
    signum = getattr(exc, "signum", signal.SIGINT)
    name = SIGNAL_NAMES.get(signum) or signal.Signals(signum).name
    written = [str(p) for p in written]
    if not written:
        return f"Interrupted by {name}: stopped, and no partial output was left."
    folders = sorted({os.path.dirname(p) or "." for p in written})
    return (f"Interrupted by {name}: stopped after {len(written)} output file(s) were written complete "
            f"in {', '.join(folders)}; no partial output was left.")


def record_written(paths: Iterable) -> None:
    """Note files just renamed into place complete (``atomic.OutputSet`` calls it with signals deferred, so a
    set is noted whole or not at all). Kept for the whole run, so that a stop at any later moment, even after
    the case's report lines, names them."""
    _WRITTEN.extend(str(p) for p in paths)


def written_so_far() -> List[str]:
    """The files this run (since :func:`install_signal_handlers`) has renamed into place complete."""
    return list(_WRITTEN)


def _on_signal(signum, frame):
    now = time.monotonic()
    first = _STATE["first"]
    if _STATE["finished"] or (first is not None and now - first < REPEAT_GRACE_S):
        return  # finished (outputs complete), or already stopping: let the cleanup finish
    _STATE["first"] = now
    raise Interrupted(signum)


def install_signal_handlers() -> Dict[int, Callable]:
    """Make SIGINT and SIGTERM raise :class:`Interrupted`; returns the previous handlers (for
    :func:`restore_signal_handlers`). Starts a new run's list of written files. Only the main thread can set
    handlers; elsewhere only the list is started."""
    _WRITTEN.clear()
    if threading.current_thread() is not threading.main_thread():
        return {}
    _STATE.update(first=None, finished=False, watching=False)
    return {s: signal.signal(s, _on_signal) for s in HANDLED_SIGNALS}


def stop_when_stdin_closes() -> bool:
    """Stop the run as SIGTERM does (exit 143, no partial output) once standard input reaches its end.

    For a parent that keeps a pipe to this process open and writes nothing, as the Slicer module does: if the
    parent dies (a crashed Slicer), the pipe closes and the run stops instead of going on as an orphan. A daemon
    thread reads the pipe; at its end it raises SIGTERM in this process, which the handler installed by
    :func:`install_signal_handlers` turns into :class:`Interrupted` in the main thread (without that handler,
    nothing is raised; nor after :func:`restore_signal_handlers`). Meant for a process of its own: the thread
    reads standard input until its end. Returns whether standard input is watched."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no standard input (e.g. a GUI process without one)
        return False

    def watch():
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
        with _WATCH_LOCK:
            if not _STATE["watching"] or _STATE["finished"] or signal.getsignal(signal.SIGTERM) is not _on_signal:
                return
            try:  # a parent that died took the other end of stderr with it: the stop matters, not the line
                print("Standard input closed (the program that started this run has ended): stopping.",
                      file=sys.stderr, flush=True)
            except (AttributeError, OSError, ValueError):
                pass
            if os.name == "nt":  # os.kill with SIGTERM would end the process at once, with no cleanup
                signal.raise_signal(signal.SIGTERM)
            else:  # to the process, so that a main thread blocked in a system call wakes up
                os.kill(os.getpid(), signal.SIGTERM)

    _STATE["watching"] = True
    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    return True


def restore_signal_handlers(previous: Dict[int, Callable]) -> None:
    with _WATCH_LOCK:
        _STATE["watching"] = False
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: handlers first, then the command line (which imports the heavy libraries)."""
    install_signal_handlers()
    try:
        from .cli import main as cli_main
        return cli_main(argv)
    except KeyboardInterrupt as exc:  # during the imports, before the command line could handle it
        print(interrupted_message(exc, written_so_far()), file=sys.stderr, flush=True)
        return exit_code(exc)
    finally:
        _STATE["finished"] = True  # a signal from now on changes nothing: the outcome is decided


if __name__ == "__main__":
    sys.exit(main())
