"""SIGTERM and Ctrl-C to a command whose work has nothing to save midway: one line and an exit code
that says what is done, from the command's first line on, whatever phase it is in (loading its
libraries, reading a checkpoint, compiling, computing, writing files that are each whole or absent).

Standard library only, so a command installs it before importing anything slow, and calls it again
as its phase changes what the line must say (analyze: nothing written, then writing, then written).
The trainer (`main`, `preemption`) and `prepare` have their own, since they save before they stop;
`reproduce` hands this over to its suite's own handler once its runs start.

os._exit, not sys.exit: a SystemExit raised while the interpreter runs a gc callback or a __del__ is
swallowed ("Exception ignored in ...") and the command would go on.
"""
from __future__ import annotations

import os
import signal
import sys


_said = None  # (line, code) of the installed handler; None until a command installs it


def exit_on_signals(line: str, code: int = 1) -> None:
    """From now on SIGTERM and SIGINT print `line` (its "{signal}" the signal's name) and exit `code`."""
    global _said
    _said = (line, code)

    def stop(signum, frame):
        try:
            sys.stdout.flush()
        except (OSError, RuntimeError, ValueError):  # RuntimeError: the signal came in the middle of a print
            pass
        os.write(2, (_said[0].format(signal=signal.Signals(signum).name) + "\n").encode())
        os._exit(_said[1])
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)


def now_say(line: str, code: int = 1) -> None:
    """What the installed handler says from now on; nothing where none is installed (a test that calls a
    command's `main` in its own process keeps its own handlers)."""
    global _said
    if _said is not None:
        _said = (line, code)
