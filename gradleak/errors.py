"""Errors that end a command with a one-line message instead of a traceback."""


class GradleakError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class DataError(GradleakError):
    """A data folder or file is missing, malformed or unsafe."""


class UpdateError(GradleakError):
    """An observed update does not fit the model, or holds NaN/inf."""


class ConfigError(GradleakError):
    """An option or configuration value is invalid."""
