"""Errors a user can hit. The CLI turns any :class:`MoziError` into one line and exit 1."""


class MoziError(Exception):
    """Base class of every error meant for the user (bad input, corrupt file, refused op)."""


class FileFormatError(MoziError):
    """An input file is corrupt, truncated or not of the expected format."""


def short_repr(value, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: for error messages that echo input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
