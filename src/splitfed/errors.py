"""The one exception type for user mistakes."""


class SplitfedError(Exception):
    """A mistake in what the user asked for (config, flags, data files).

    The CLI prints it as a single line on stderr and exits with ``exit_code`` (2; a deployed role that
    gave up waiting, 3); anything else that escapes is a bug and keeps its traceback.
    """

    exit_code = 2


class Diverged(SplitfedError):
    """Training turned non-finite (NaN or inf). Run again with the same settings, it would again: the run
    directory keeps the message in ``diverged.txt``, and a sweep counts the run as tried, not to redo."""


class StopAlgorithm(Exception):  # a signal, like StopIteration, not an error
    """Raised from ``run(on_round=...)`` to stop the algorithm whose round was just reported (early
    stopping, a budget): its rounds so far are kept, its record carries ``"stopped": true`` and a resumed
    run keeps it stopped; the run goes on with the next algorithm."""
