"""The one exception type for bad user input: the CLI prints its message and exits non-zero, without a traceback."""


class DmhError(ValueError):
    """Bad input (configuration, file, argument), reported before any work starts."""
