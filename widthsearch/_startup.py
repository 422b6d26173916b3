"""What Ctrl-C during start-up does when widthsearch runs as the command line.

Importing torch takes seconds, and a Ctrl-C then would print a long traceback from deep
inside torch. When this process is the `widthsearch` command (the console script or
`python -m widthsearch`), a SIGINT handler installed before the imports ends it with one
line and exit code 130 (nothing has been written yet); `cli.main` puts Python's own
handler back as soon as it runs. When widthsearch is imported as a library nothing changes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

EXIT_INTERRUPTED = 130


def running_as_command() -> bool:
    """Whether this process was started as the widthsearch command line."""
    argv = list(getattr(sys, "orig_argv", []))
    if argv[1:3] == ["-m", "widthsearch"]:
        return True
    return bool(sys.argv) and Path(sys.argv[0]).name == "widthsearch"


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"interrupted while starting; nothing was written\n")
    os._exit(EXIT_INTERRUPTED)


def quiet_interrupt_while_starting() -> None:
    """Install the start-up SIGINT handler when running as the command line."""
    if running_as_command() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_quietly)


def restore_interrupt() -> None:
    """Python's own Ctrl-C (KeyboardInterrupt) once the command is running."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is _exit_quietly):
        signal.signal(signal.SIGINT, signal.default_int_handler)
