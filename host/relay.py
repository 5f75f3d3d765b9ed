"""Trusted relay: the satellite joins two ground stations that never see each other.

Micius shares a key ``K_SM`` with Moscow (Zvenigorod) and a key ``K_SU`` with Urumqi
(Nanshan), each from its own QKD pass. It then publishes ``K_SM ⊕ K_SU`` over the public
channel; Urumqi XORs the announcement with its ``K_SU`` and obtains ``K_SM``, which Moscow
already holds. The announcement is a one-time-pad encryption of ``K_SM`` under ``K_SU`` (and
vice versa), so it tells an eavesdropper nothing; the satellite itself learns the relayed key,
which is why it must be *trusted*. The relayed key's ε_sec and ε_cor are the sums of those of
the two keys it comes from (composability).

:func:`relay_announcement` and :func:`derive_relayed_key` are the bit-level operations;
:func:`satellite_announce`, :func:`moscow_accept`, :func:`urumqi_accept` do the same on key
stores (each side consumes its input blocks exactly once and stores the relayed key under
the same new key IDs), and :func:`relay_keys` runs all three. The announcement is public but
must be *authenticated*: send :meth:`RelayAnnouncement.to_bytes` over an
:class:`~mozi.host.auth.AuthenticatedChannel` — a flipped bit in it would otherwise silently
give the two stations different keys.
"""

from __future__ import annotations

import math
import struct
import uuid
from dataclasses import dataclass, field

import numpy as np
from mozi.host.errors import FileFormatError, KeyStoreError
from mozi.host.keystore import KeyStore, block_sizes, new_key_ids
from mozi.sim.model import as_bits

__all__ = [
    "RelayAnnouncement",
    "derive_relayed_key",
    "moscow_accept",
    "relay_announcement",
    "relay_keys",
    "satellite_announce",
    "urumqi_accept",
]


_ANN_MAGIC = b"MZRL"
_ANN_HEAD = struct.Struct(">4sQIHHHdd")



def relay_announcement(k_sm, k_su) -> np.ndarray:
    """What the satellite publishes: ``K_SM ⊕ K_SU``.

    Parameters
    ----------
    k_sm, k_su : uint8 bit arrays of equal length
        The satellite's keys with Moscow and with Urumqi.

    Returns
    -------
    uint8 bit array
    """
    a, b = as_bits(k_sm, "k_sm"), as_bits(k_su, "k_su")
    if a.size != b.size:
        raise ValueError(f"relayed keys must have equal lengths, not {a.size} and {b.size}")
    return a ^ b


def derive_relayed_key(k_su, announcement) -> np.ndarray:
    """Urumqi's side: ``K_SM = K_SU ⊕ announcement``.

    Parameters
    ----------
    k_su : uint8 bit array
        Urumqi's key with the satellite.
    announcement : uint8 bit array, same length
        From :func:`relay_announcement`.

    Returns
    -------
    uint8 bit array
        ``K_SM``.
    """
    a, b = as_bits(k_su, "k_su"), as_bits(announcement, "announcement")
    if a.size != b.size:
        raise ValueError(f"announcement has {b.size} bits, the key {a.size}")
    return a ^ b


@dataclass(frozen=True)
class RelayAnnouncement:
    """The satellite's public relay message (everything in it may be published).

    Attributes
    ----------
    n_bits : int
        Length of the relayed key.
    sm_key_ids, su_key_ids : tuple of str
        Blocks of the Moscow and Urumqi links the relayed key is made of (oldest first; only
        the first ``n_bits`` bits of their concatenation are used).
    key_ids : tuple of str
        IDs under which both stations store the relayed key.
    block_bits : int
        Block size of the relayed key in the stations' stores.
    announcement : uint8 bit array
        ``K_SM ⊕ K_SU`` (``n_bits`` bits).
    eps_sec, eps_cor : float or None
        Security parameters of the relayed key (sums over the input blocks; ``None`` if any
        input block lacks them).
    """

    n_bits: int
    sm_key_ids: tuple[str, ...]
    su_key_ids: tuple[str, ...]
    key_ids: tuple[str, ...]
    block_bits: int
    announcement: np.ndarray = field(repr=False, compare=False)
    eps_sec: float | None = None
    eps_cor: float | None = None

    def to_bytes(self) -> bytes:
        """Serialise for the (authenticated) classical channel; see :meth:`from_bytes`."""
        head = _ANN_HEAD.pack(_ANN_MAGIC, self.n_bits, self.block_bits, len(self.sm_key_ids),
                              len(self.su_key_ids), len(self.key_ids),
                              math.nan if self.eps_sec is None else self.eps_sec,
                              math.nan if self.eps_cor is None else self.eps_cor)
        ids = b"".join(uuid.UUID(k).bytes
                       for k in (*self.sm_key_ids, *self.su_key_ids, *self.key_ids))
        return head + ids + np.packbits(self.announcement).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> RelayAnnouncement:
        """Parse :meth:`to_bytes` output.

        Raises
        ------
        FileFormatError
            Not a relay announcement, or truncated.
        """
        data = bytes(data)
        if len(data) < _ANN_HEAD.size:
            raise FileFormatError("relay announcement too short")
        magic, n_bits, block_bits, n_sm, n_su, n_ids, eps_sec, eps_cor = \
            _ANN_HEAD.unpack_from(data)
        if magic != _ANN_MAGIC:
            raise FileFormatError("not a relay announcement")
        end = _ANN_HEAD.size + 16 * (n_sm + n_su + n_ids)
        if len(data) != end + (n_bits + 7) // 8 or n_bits < 1 or block_bits < 1:
            raise FileFormatError("relay announcement has the wrong length")
        ids = [str(uuid.UUID(bytes=data[i:i + 16])) for i in range(_ANN_HEAD.size, end, 16)]
        bits = np.unpackbits(np.frombuffer(data[end:], np.uint8))[:n_bits].copy()
        return cls(n_bits=n_bits, block_bits=block_bits, sm_key_ids=tuple(ids[:n_sm]),
                   su_key_ids=tuple(ids[n_sm:n_sm + n_su]), key_ids=tuple(ids[n_sm + n_su:]),
                   announcement=bits, eps_sec=None if math.isnan(eps_sec) else eps_sec,
                   eps_cor=None if math.isnan(eps_cor) else eps_cor)


def _eps_sum(records, name):
    values = [getattr(r, name) for r in records]
    if not values or any(v is None for v in values):
        return None
    # blocks of one session share their ε; distinct sessions add up (union bound)
    per_session = {}
    for r, v in zip(records, values, strict=True):
        per_session[(r.link, r.pass_id, r.created)] = v
    return float(sum(per_session.values()))


def satellite_announce(
    satellite: KeyStore,
    *,
    link_sm: str = "sat-moscow",
    link_su: str = "sat-urumqi",
    n_bits: int | None = None,
    block_bits: int | None = None,
) -> RelayAnnouncement:
    """Satellite side: consume ``n_bits`` of each link's key and announce their XOR.

    Parameters
    ----------
    satellite : KeyStore
        The satellite's store, holding both links.
    link_sm, link_su : str
        Link names (as in the ground stations' stores).
    n_bits : int, optional
        Relayed key length; default: all the key the shorter link has available.
    block_bits : int, optional
        Block size of the relayed key (default :data:`~mozi.host.keystore.DEFAULT_BLOCK_BITS`).

    Returns
    -------
    RelayAnnouncement

    Raises
    ------
    KeyStoreError
        Not enough key on one of the links (nothing is consumed then).
    """
    available = min(satellite.available_bits(link_sm), satellite.available_bits(link_su))
    n = available if n_bits is None else int(n_bits)
    if n < 1 or n > available:
        raise KeyStoreError(f"cannot relay {n} bits: links {link_sm!r} and {link_su!r} have "
                            f"{satellite.available_bits(link_sm)} and "
                            f"{satellite.available_bits(link_su)} bits available")
    if link_sm == link_su:
        raise ValueError("link_sm and link_su must be different links")
    got = satellite.reserve_many({link_sm: n, link_su: n}, purpose="relay")
    sm, su = got[link_sm], got[link_su]
    k_sm = np.concatenate([b for _, b in sm])[:n]
    k_su = np.concatenate([b for _, b in su])[:n]
    ids = new_key_ids(n, block_bits)
    block = block_sizes(n, block_bits)[0]
    records_sm = [satellite.get(k) for k, _ in sm]
    records_su = [satellite.get(k) for k, _ in su]
    return RelayAnnouncement(
        n_bits=n, sm_key_ids=tuple(k for k, _ in sm), su_key_ids=tuple(k for k, _ in su),
        key_ids=tuple(ids), block_bits=block, announcement=relay_announcement(k_sm, k_su),
        eps_sec=_add(_eps_sum(records_sm, "eps_sec"), _eps_sum(records_su, "eps_sec")),
        eps_cor=_add(_eps_sum(records_sm, "eps_cor"), _eps_sum(records_su, "eps_cor")))


def _add(a, b):
    return None if a is None or b is None else a + b


def _station_key(store: KeyStore, key_ids, n_bits: int) -> np.ndarray:
    blocks = store.consume_many(list(key_ids), purpose="relay")
    bits = np.concatenate(blocks) if blocks else np.zeros(0, np.uint8)
    if bits.size < n_bits:
        raise KeyStoreError(f"relay blocks hold {bits.size} bits, {n_bits} announced")
    return bits[:n_bits]


def _meta(ann: RelayAnnouncement) -> dict:
    return {"eps_sec": ann.eps_sec, "eps_cor": ann.eps_cor, "relayed": True,
            "sm_key_ids": list(ann.sm_key_ids), "su_key_ids": list(ann.su_key_ids)}


def moscow_accept(store: KeyStore, ann: RelayAnnouncement, *,
                  relay_link: str = "moscow-urumqi") -> list[str]:
    """Moscow side: its own ``K_SM`` becomes the relayed key, stored under ``ann.key_ids``.

    The ``K_SM`` blocks are consumed from ``store`` (they must not serve anything else).

    Returns
    -------
    key_ids : list of str
    """
    k_sm = _station_key(store, ann.sm_key_ids, ann.n_bits)
    return store.add_key(relay_link, k_sm, key_ids=list(ann.key_ids),
                         block_bits=ann.block_bits, meta=_meta(ann))


def urumqi_accept(store: KeyStore, ann: RelayAnnouncement, *,
                  relay_link: str = "moscow-urumqi") -> list[str]:
    """Urumqi side: derive ``K_SM = K_SU ⊕ announcement`` and store it under ``ann.key_ids``.

    The ``K_SU`` blocks are consumed from ``store``.

    Returns
    -------
    key_ids : list of str
    """
    k_su = _station_key(store, ann.su_key_ids, ann.n_bits)
    k_sm = derive_relayed_key(k_su, ann.announcement)
    return store.add_key(relay_link, k_sm, key_ids=list(ann.key_ids),
                         block_bits=ann.block_bits, meta=_meta(ann))


def relay_keys(
    satellite: KeyStore,
    moscow: KeyStore,
    urumqi: KeyStore,
    *,
    link_sm: str = "sat-moscow",
    link_su: str = "sat-urumqi",
    relay_link: str = "moscow-urumqi",
    n_bits: int | None = None,
    block_bits: int | None = None,
) -> RelayAnnouncement:
    """Run the whole relay on three stores: announce, then both stations accept.

    Afterwards Moscow and Urumqi hold the same ``n_bits``-bit key on ``relay_link`` under
    the same key IDs, and every input block was consumed once in its store (the satellite's
    blocks of both links, Moscow's ``K_SM`` blocks, Urumqi's ``K_SU`` blocks).

    Returns
    -------
    RelayAnnouncement
        What was published (``key_ids`` names the relayed key).
    """
    ann = satellite_announce(satellite, link_sm=link_sm, link_su=link_su, n_bits=n_bits,
                             block_bits=block_bits)
    moscow_accept(moscow, ann, relay_link=relay_link)
    urumqi_accept(urumqi, ann, relay_link=relay_link)
    return ann
