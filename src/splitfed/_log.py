"""Where the "splitfed" logger writes while a command or a sweep worker runs, and how its progress lines
write a duration."""

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logging_only_to(handler: logging.Handler, level: int) -> Iterator[None]:
    """While it lasts, the "splitfed" logger writes to ``handler`` alone, at ``level``; then it is left
    exactly as it was. ``cli.main()`` and sweep workers may run inside a Python process whose logging is
    the user's (a notebook, the tests): a logger left non-propagating would hide its records from them."""
    log = logging.getLogger("splitfed")
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


def clock(seconds: float) -> str:
    """A duration as a progress line shows it: MM:SS, or H:MM:SS from an hour on."""
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"
