"""Where the "splitfed" logger writes: one handler of bare lines (stdout, or a sweep worker's log file),
set up for a command or a sweep worker (``logging_only_to``) or for a ``run()`` called from Python
(``printing``); the Python warnings a command holds until its first line (``HeldWarnings``); and how its
progress lines write a duration."""

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("splitfed")


def message_handler(path: str | Path | None = None) -> logging.Handler:
    """The records' messages alone, one a line, on stdout (progress and tables are output, not
    diagnostics), or appended to the file ``path`` (a sweep worker's run log)."""
    handler = logging.StreamHandler(sys.stdout) if path is None else logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


@contextlib.contextmanager
def logging_only_to(handler: logging.Handler, level: int) -> Iterator[None]:
    """While it lasts, the "splitfed" logger writes to ``handler`` alone, at ``level``; then it is left
    exactly as it was. ``cli.main()`` and sweep workers may run inside a Python process whose logging is
    the user's (a notebook, the tests): a logger left non-propagating would hide its records from them."""
    level_before, propagate_before = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level_before)
        log.propagate = propagate_before


def interactive() -> bool:
    """Whether a person is likely watching: stdout is a terminal, or this runs in a Jupyter kernel."""
    if getattr(sys.stdout, "isatty", lambda: False)():  # some IDEs' replacements have no isatty
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


@contextlib.contextmanager
def printing(progress: bool | None) -> Iterator[None]:
    """While a ``run`` lasts: with ``progress`` on (None: ``interactive()``), the "splitfed" logger's
    INFO lines (setup, a line per round, the table) reach stdout, through the logging configuration if
    there is one, else the ``message_handler``; off, logging is left as configured (by default: silent)."""
    if not (interactive() if progress is None else progress):
        yield
        return
    handler = None
    if not log.hasHandlers():
        handler = message_handler()
        log.addHandler(handler)
    level = log.level
    if not log.isEnabledFor(logging.INFO):
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.setLevel(level)
        if handler is not None:
            log.removeHandler(handler)


class HeldWarnings:
    """Python warnings held back until the command has passed its checks, then shown as they come.

    A user mistake is reported as one line saying what to change. Warnings raised on the way to it
    are consequences of the same mistake (torch's "Initializing zero-element tensors" for an input too
    small for the model, a checkpoint format's FutureWarning) and would bury that line, so they are
    dropped with it. Once the command logs its first line (a run logs after all its checks and the
    creation of its directory) or ends well, the held warnings are shown and later ones pass at once:
    a warning during a long run is not delayed to its end.
    """

    def __init__(self) -> None:
        self._show = warnings.showwarning
        self._held: list[tuple[Any, ...]] | None = []  # None once released

    def show(self, *warning: Any) -> None:
        if self._held is None:
            self._show(*warning)
        else:
            self._held.append(warning)

    def release(self) -> None:
        held, self._held = self._held or [], None
        for warning in held:
            self._show(*warning)

    def release_on_first_record(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "before_checks", False):  # a config's deprecation note comes before them
            self.release()
        return True

    def discard(self) -> None:
        self._held = []


def clock(seconds: float) -> str:
    """A duration as a progress line shows it: MM:SS, or H:MM:SS from an hour on."""
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"
