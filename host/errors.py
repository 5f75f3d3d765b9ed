"""Host-side errors; all derive from :class:`mozi.sim.errors.MoziError`."""

from mozi.sim.errors import FileFormatError, MoziError

__all__ = ["AuthenticationError", "FileFormatError", "KeyStoreError", "MoziError",
           "ProtocolAbort"]


class KeyStoreError(MoziError):
    """Unknown key ID, key already consumed, or not enough key material."""


class AuthenticationError(MoziError):
    """A MAC or tag did not verify: the data was tampered with or the wrong key was used."""


class ProtocolAbort(MoziError):
    """The QKD protocol aborted (QBER above threshold, no positive key length, …)."""
