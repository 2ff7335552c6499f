"""Errors that end a command with a one-line message instead of a traceback."""


class GradleakError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class DataError(GradleakError):
    """A data folder or file is missing, malformed or unsafe."""


class UpdateError(GradleakError):
    """An observed update does not fit the model, or holds NaN/inf."""


class ConfigError(GradleakError):
    """An option or configuration value is invalid."""


def is_int_at_least(value, minimum: int) -> bool:
    """``value`` is an ``int`` (not a ``bool``) of at least ``minimum``: for counts, sizes and steps."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on Python 3.10 (which has ``__notes__`` only by convention)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
