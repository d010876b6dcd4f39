"""The one exception type for user mistakes."""


class SplitfedError(Exception):
    """A mistake in what the user asked for (config, flags, data files).

    The CLI prints it as a single line on stderr and exits with status 2; anything else that
    escapes is a bug and keeps its traceback.
    """
