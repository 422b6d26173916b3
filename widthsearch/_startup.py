"""What Ctrl-C during start-up does when widthsearch runs as the command line.

Importing torch takes seconds, and a Ctrl-C then would print a long traceback from deep
inside torch. When this process is the `widthsearch` command (the console script or
`python -m widthsearch`), the interrupt ends it with one line and exit code 130; when
widthsearch is imported as a library, the KeyboardInterrupt propagates as usual.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_INTERRUPTED = 130


def running_as_command() -> bool:
    """Whether this process was started as the widthsearch command line."""
    argv = list(getattr(sys, "orig_argv", []))
    if argv[1:3] == ["-m", "widthsearch"]:
        return True
    return bool(sys.argv) and Path(sys.argv[0]).name == "widthsearch"


def interrupted_while_starting() -> None:
    """Exit with one line and code 130 if running as the command; else return."""
    if running_as_command():
        print("interrupted while starting; nothing was written", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
