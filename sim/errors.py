"""Errors a user can hit. The CLI turns any :class:`MoziError` into one line and exit 1."""


class MoziError(Exception):
    """Base class of every error meant for the user (bad input, corrupt file, refused op)."""


class FileFormatError(MoziError):
    """An input file is corrupt, truncated or not of the expected format."""
