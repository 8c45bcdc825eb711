"""`ConfigError`: what `keras-mm` prints as one line, without a traceback."""


class ConfigError(ValueError):
    """A config, run directory or data source that the user must change.

    Its message is one line naming the key (or file) and the fix; `keras-mm` prints it
    without a traceback.
    """
