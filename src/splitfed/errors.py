"""The one exception type for user mistakes."""


class SplitfedError(Exception):
    """A mistake in what the user asked for (config, flags, data files).

    The CLI prints it as a single line on stderr and exits with ``exit_code`` (2; a deployed role that
    gave up waiting, 3); anything else that escapes is a bug and keeps its traceback.
    """

    exit_code = 2
