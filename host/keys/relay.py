"""Trusted relay: the satellite joins two ground stations that never see each other.

Micius shares a key ``K_SM`` with Moscow (Zvenigorod) and a key ``K_SU`` with Urumqi
(Nanshan), each from its own QKD pass. It then publishes ``K_SM ⊕ K_SU``; Urumqi XORs the
announcement with its ``K_SU`` and obtains ``K_SM``, which Moscow already holds. The
announcement is a one-time-pad encryption of ``K_SM`` under ``K_SU``, so it tells an
eavesdropper nothing; the satellite itself learns the relayed key, which is why it must be
*trusted*. The relayed key's ε_sec and ε_cor are the sums of those of the keys it comes from
(composability).

Direction and authentication
----------------------------
* The relay is the satellite's use of both input keys, so it takes only blocks the satellite
  may send with (``sender`` = the satellite) on both links: no station can have used them.
* The announcement (:class:`RelayAnnouncement`) names everything: the satellite, the two
  stations, their links to the satellite, the relay link, every input block, the new key IDs
  and the layout of the relayed key (which station may send with which block). The satellite
  sends the same announcement to each station as a ``relay`` message of that link's
  :class:`~mozi.host.crypto.auth.AuthenticatedChannel` (:func:`send_announcement`): a flipped bit, a
  forged or replayed announcement is rejected by the channel.
* :func:`station_accept` checks the announcement completely — it names this station and the
  link it arrived on, its input blocks exist, are unused, belong to that link and to the
  satellite, hold the announced bits, the new IDs are fresh — and then, in one transaction,
  consumes the input blocks and stores the relayed key. Any failure changes nothing.

:func:`relay_announcement` and :func:`derive_relayed_key` are the bit-level operations,
:func:`satellite_announce` the satellite's side on its key store, and :func:`relay_keys` runs
the whole relay in-process over the three stores' authentication keys.
"""

from __future__ import annotations

import math
import struct
import uuid
from dataclasses import dataclass, field

import numpy as np
from mozi.host.crypto.auth import AuthenticatedChannel, MemoryTransport
from mozi.host.errors import FileFormatError, KeyStoreError, ProtocolAbort
from mozi.host.keys.keystore import KeyStore, check_name, key_layout, new_key_ids
from mozi.sim.model import as_bits

__all__ = [
    "RELAY_MESSAGE",
    "RelayAnnouncement",
    "apply_announcement",
    "derive_relayed_key",
    "relay_announcement",
    "relay_keys",
    "relayed_already",
    "satellite_announce",
    "send_announcement",
    "station_accept",
]

#: Message kind of the announcement on the authenticated channel.
RELAY_MESSAGE = "relay"

_ANN_MAGIC = b"MZRL"
_ANN_VERSION = 2
_ANN_HEAD = struct.Struct(">4sBBQHHHdd")  # magic, version, flags, n_bits, counts, ε
_FLAG_INSECURE = 1
_BLOCK = struct.Struct(">BI")              # sender (0 first station, 1 second), n_bits


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
    """The satellite's relay message (everything in it may be published).

    Attributes
    ----------
    satellite : str
        The relaying party.
    stations : pair of str
        The first station (whose key becomes the relayed key, e.g. Moscow) and the second
        (which derives it, e.g. Urumqi).
    links : pair of str
        Each station's link with the satellite.
    relay_link : str
        The link the two stations store the relayed key under.
    n_bits : int
        Length of the relayed key.
    input_ids : pair of tuples of str
        The satellite's blocks of each link the relay uses (oldest first; the first
        ``n_bits`` bits of their concatenation).
    key_ids : tuple of str
        IDs under which both stations store the relayed key.
    layout : tuple of (str, int)
        Sender and size of each block of the relayed key (one of the two stations).
    announcement : uint8 bit array
        ``K_1 ⊕ K_2`` (``n_bits`` bits).
    eps_sec, eps_cor : float or None
        Security parameters of the relayed key (sums over the input keys; ``None`` if any
        input block lacks them).
    insecure_reproducible : bool
        An input key came from an insecure reproducible session.
    """

    satellite: str
    stations: tuple[str, str]
    links: tuple[str, str]
    relay_link: str
    n_bits: int
    input_ids: tuple[tuple[str, ...], tuple[str, ...]]
    key_ids: tuple[str, ...]
    layout: tuple[tuple[str, int], ...]
    announcement: np.ndarray = field(repr=False, compare=False)
    eps_sec: float | None = None
    eps_cor: float | None = None
    insecure_reproducible: bool = False

    def to_bytes(self) -> bytes:
        """Serialise for the authenticated channel; see :meth:`from_bytes`."""
        names = (self.satellite, *self.stations, *self.links, self.relay_link)
        text = b"".join(bytes([len(n.encode())]) + n.encode() for n in names)
        head = _ANN_HEAD.pack(_ANN_MAGIC, _ANN_VERSION,
                              _FLAG_INSECURE if self.insecure_reproducible else 0, self.n_bits,
                              len(self.input_ids[0]), len(self.input_ids[1]), len(self.key_ids),
                              math.nan if self.eps_sec is None else self.eps_sec,
                              math.nan if self.eps_cor is None else self.eps_cor)
        ids = b"".join(uuid.UUID(k).bytes
                       for k in (*self.input_ids[0], *self.input_ids[1], *self.key_ids))
        blocks = b"".join(_BLOCK.pack(self.stations.index(s), n) for s, n in self.layout)
        return head + text + ids + blocks + np.packbits(self.announcement).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> RelayAnnouncement:
        """Parse :meth:`to_bytes` output, checking that it is consistent in itself.

        Raises
        ------
        FileFormatError
            Not a relay announcement of this version, truncated, or inconsistent (names,
            counts, a layout that does not cover ``n_bits``, repeated IDs).
        """
        data = bytes(data)
        if len(data) < _ANN_HEAD.size:
            raise FileFormatError("relay announcement too short")
        magic, version, flags, n_bits, n1, n2, n_ids, eps_sec, eps_cor = \
            _ANN_HEAD.unpack_from(data)
        if magic != _ANN_MAGIC or version != _ANN_VERSION:
            raise FileFormatError("not a relay announcement of this version")
        if flags & ~_FLAG_INSECURE:
            raise FileFormatError("relay announcement: unknown flags")
        pos, names = _ANN_HEAD.size, []
        for _ in range(6):
            if pos >= len(data) or pos + 1 + data[pos] > len(data):
                raise FileFormatError("relay announcement truncated (names)")
            try:
                names.append(data[pos + 1:pos + 1 + data[pos]].decode("utf-8"))
            except UnicodeDecodeError:
                raise FileFormatError("relay announcement: a name is not UTF-8") from None
            pos += 1 + data[pos]
        try:
            for kind, name in zip(("party", "party", "party", "link", "link", "link"), names,
                                  strict=True):
                check_name(kind, name)
        except KeyStoreError as exc:
            raise FileFormatError(f"relay announcement: {exc}") from None
        satellite, first, second, link1, link2, relay_link = names
        if len({satellite, first, second}) != 3 or len({link1, link2, relay_link}) != 3:
            raise FileFormatError("relay announcement names a party or a link twice")
        end_ids = pos + 16 * (n1 + n2 + n_ids)
        end_blocks = end_ids + _BLOCK.size * n_ids
        if n_bits < 1 or n1 < 1 or n2 < 1 or n_ids < 1 \
                or len(data) != end_blocks + (n_bits + 7) // 8:
            raise FileFormatError("relay announcement has the wrong length")
        ids = [str(uuid.UUID(bytes=data[i:i + 16])) for i in range(pos, end_ids, 16)]
        if len(set(ids)) != len(ids):
            raise FileFormatError("relay announcement names a key ID twice")
        layout = []
        for i in range(end_ids, end_blocks, _BLOCK.size):
            who, size = _BLOCK.unpack_from(data, i)
            if who > 1 or size < 1:
                raise FileFormatError("relay announcement: bad key layout")
            layout.append(((first, second)[who], size))
        if sum(n for _, n in layout) != n_bits:
            raise FileFormatError("relay announcement: the layout does not cover the key")
        for eps in (eps_sec, eps_cor):
            if not (math.isnan(eps) or 0.0 < eps < 1.0):
                raise FileFormatError("relay announcement: ε outside (0, 1)")
        bits = np.unpackbits(np.frombuffer(data, np.uint8, offset=end_blocks))[:n_bits].copy()
        return cls(satellite=satellite, stations=(first, second), links=(link1, link2),
                   relay_link=relay_link, n_bits=n_bits,
                   input_ids=(tuple(ids[:n1]), tuple(ids[n1:n1 + n2])),
                   key_ids=tuple(ids[n1 + n2:]), layout=tuple(layout), announcement=bits,
                   eps_sec=None if math.isnan(eps_sec) else eps_sec,
                   eps_cor=None if math.isnan(eps_cor) else eps_cor,
                   insecure_reproducible=bool(flags & _FLAG_INSECURE))


def _eps_sum(records, name):
    values = [getattr(r, name) for r in records]
    if not values or any(v is None for v in values):
        return None
    # blocks of one session share their ε; distinct sessions add up (union bound)
    per_session = {}
    for r, v in zip(records, values, strict=True):
        per_session[(r.link, r.pass_id, r.created)] = v
    return float(sum(per_session.values()))


def _add(a, b):
    return None if a is None or b is None else a + b


def satellite_announce(satellite: KeyStore, *, link_sm: str = "sat-moscow",
                       link_su: str = "sat-urumqi", relay_link: str = "moscow-urumqi",
                       n_bits: int | None = None, first_share: float = 0.5,
                       block_bits: int | None = None, outbox: bool = False
                       ) -> RelayAnnouncement:
    """Satellite side: consume ``n_bits`` of its own key on each link and announce their XOR.

    Parameters
    ----------
    satellite : KeyStore
        The satellite's store, holding both links.
    link_sm, link_su : str
        The first station's (e.g. Moscow's) and the second station's links.
    relay_link : str
        Link name of the relayed key in the stations' stores.
    n_bits : int, optional
        Relayed key length; default: all the key the satellite may send with on the poorer
        link.
    first_share : float
        Fraction of the relayed key the first station may send with (the rest is the
        second's), see :func:`~mozi.host.keys.keystore.key_layout`.
    block_bits : int, optional
        Block size of the relayed key.
    outbox : bool
        Also keep the announcement in the satellite's relay outbox for both stations, in the
        transaction that consumes the input key (for a satellite that sends it over the
        network and must be able to resend it after a crash).

    Returns
    -------
    RelayAnnouncement

    Raises
    ------
    KeyStoreError
        A link is unknown, the stations are not two different peers, or the satellite has too
        little key of its own on a link (nothing is consumed then).
    """
    if link_sm == link_su:
        raise ValueError("link_sm and link_su must be different links")
    first, second = satellite.peer(link_sm), satellite.peer(link_su)
    if first is None or second is None:
        raise KeyStoreError(f"the satellite's store does not know link "
                            f"{link_sm if first is None else link_su!r}")
    if first == second:
        raise KeyStoreError(f"links {link_sm!r} and {link_su!r} lead to the same station")
    check_name("link", relay_link)
    have = min(satellite.sendable_bits(link_sm), satellite.sendable_bits(link_su))
    n = have if n_bits is None else int(n_bits)
    if n < 1 or n > have:
        raise KeyStoreError(f"cannot relay {n} bits: the satellite may send with "
                            f"{satellite.sendable_bits(link_sm)} bits on {link_sm!r} and "
                            f"{satellite.sendable_bits(link_su)} on {link_su!r}")
    layout = tuple(key_layout(n, (first, second), first_share=first_share,
                              block_bits=block_bits))
    key_ids = tuple(new_key_ids(len(layout)))

    def announce(got) -> RelayAnnouncement:
        sm, su = got[link_sm], got[link_su]
        k_sm = np.concatenate([b for _, b in sm])[:n]
        k_su = np.concatenate([b for _, b in su])[:n]
        records_sm = [satellite.get(k) for k, _ in sm]
        records_su = [satellite.get(k) for k, _ in su]
        insecure = any(r.meta.get("insecure_reproducible") for r in records_sm + records_su)
        return RelayAnnouncement(
            satellite=satellite.party, stations=(first, second), links=(link_sm, link_su),
            relay_link=relay_link, n_bits=n,
            input_ids=(tuple(k for k, _ in sm), tuple(k for k, _ in su)),
            key_ids=key_ids, layout=layout,
            announcement=relay_announcement(k_sm, k_su),
            eps_sec=_add(_eps_sum(records_sm, "eps_sec"), _eps_sum(records_su, "eps_sec")),
            eps_cor=_add(_eps_sum(records_sm, "eps_cor"), _eps_sum(records_su, "eps_cor")),
            insecure_reproducible=insecure)

    made = []

    def keep(got):
        made.append(announce(got))
        msg = made[0].to_bytes()
        return key_ids[0], [(first, link_sm, msg), (second, link_su, msg)]

    got = satellite.reserve_many({link_sm: n, link_su: n}, purpose="relay",
                                 outbox=keep if outbox else None)
    return made[0] if outbox else announce(got)


def send_announcement(channel: AuthenticatedChannel, ann: RelayAnnouncement) -> None:
    """Satellite side: send the announcement over a station link's authenticated channel."""
    channel.send(RELAY_MESSAGE, ann.to_bytes())


def station_accept(store: KeyStore, channel: AuthenticatedChannel, *, link: str
                   ) -> RelayAnnouncement:
    """Station side: receive, check and apply the satellite's announcement atomically.

    Parameters
    ----------
    store : KeyStore
        The station's store.
    channel : AuthenticatedChannel
        The station's end of ``link`` (its link with the satellite).
    link : str
        That link's name.

    Returns
    -------
    RelayAnnouncement
        What was accepted; the relayed key is stored under ``key_ids`` on ``relay_link``.

    Raises
    ------
    AuthenticationError
        The channel rejected the message (tampered, replayed, forged).
    ProtocolAbort
        The announcement is malformed or does not fit this station and link.
    KeyStoreError
        An input block is unknown, used, of another sender or too short, or a new ID exists
        already. In every case nothing was consumed or stored.
    """
    try:
        ann = RelayAnnouncement.from_bytes(channel.expect(RELAY_MESSAGE))
    except FileFormatError as exc:
        raise ProtocolAbort(f"malformed relay announcement: {exc}") from None
    apply_announcement(store, ann, link=link)
    return ann


def relayed_already(store: KeyStore, ann: RelayAnnouncement) -> bool:
    """Whether ``store`` holds the relayed key of ``ann`` already (a resent announcement)."""
    try:
        records = [store.get(k) for k in ann.key_ids]
    except KeyStoreError:
        return False
    return all(r.link == ann.relay_link and r.meta.get("relayed_by") == ann.satellite
               for r in records)


def apply_announcement(store: KeyStore, ann: RelayAnnouncement, *, link: str) -> None:
    """Check an announcement that arrived on ``link`` and apply it atomically (see
    :func:`station_accept`, which receives and then applies it)."""
    peer = store.peer(link)
    if ann.satellite != peer:
        raise ProtocolAbort(f"the announcement comes from {ann.satellite!r}, but link "
                            f"{link!r} leads to {peer!r}")
    if store.party not in ann.stations:
        raise ProtocolAbort(f"the announcement relays between {ann.stations[0]!r} and "
                            f"{ann.stations[1]!r}, not for {store.party!r}")
    which = ann.stations.index(store.party)
    if ann.links[which] != link:
        raise ProtocolAbort(f"the announcement puts {store.party!r} on link "
                            f"{ann.links[which]!r}, but it arrived on {link!r}")
    if which == 0:
        def derive(bits):
            return bits                                 # K_SM is the relayed key
    else:
        def derive(bits):
            return derive_relayed_key(bits, ann.announcement)
    ids = ann.input_ids[which]
    own = [store.get(k) for k in ids]                  # unknown IDs fail before anything
    insecure = ann.insecure_reproducible or any(
        r.meta.get("insecure_reproducible") for r in own)
    if any(r.link != link for r in own):
        raise ProtocolAbort(f"the announcement names blocks that are not of link {link!r}")
    meta = {"eps_sec": ann.eps_sec, "eps_cor": ann.eps_cor, "relayed": True,
            "relayed_by": ann.satellite, "input_key_ids": [list(ann.input_ids[0]),
                                                           list(ann.input_ids[1])],
            "insecure_reproducible": bool(insecure)}
    store.derive_key(ids, sender=ann.satellite, n_bits=ann.n_bits, derive=derive,
                     link=ann.relay_link, peer=ann.stations[1 - which], layout=ann.layout,
                     new_ids=ann.key_ids, meta=meta, purpose="relay")


def relay_keys(satellite: KeyStore, moscow: KeyStore, urumqi: KeyStore, *,
               link_sm: str = "sat-moscow", link_su: str = "sat-urumqi",
               relay_link: str = "moscow-urumqi", n_bits: int | None = None,
               first_share: float = 0.5, block_bits: int | None = None,
               tap=None) -> RelayAnnouncement:
    """Run the whole relay in-process: announce, send over both links, both stations accept.

    Each link's channel uses its lasting authentication key from the two stores concerned.
    Afterwards Moscow and Urumqi hold the same ``n_bits``-bit key on ``relay_link`` under the
    same key IDs and senders, and every input block was consumed once in its store.

    Parameters
    ----------
    tap : callable, optional
        ``tap(link, frame) -> frames``: a man in the middle on the two station links (tests).

    Returns
    -------
    RelayAnnouncement
    """
    ends = {}
    for link, station in ((link_sm, moscow), (link_su, urumqi)):
        # one-way channels: only the satellite speaks (and so only it spends pads)
        t_sat, t_station = MemoryTransport.pair(tap=tap, names=(link, link))
        sat_end = AuthenticatedChannel(satellite.auth_key(link), t_sat)
        ends[link] = (sat_end, AuthenticatedChannel(station.auth_key(link), t_station))
        sat_end.open()
    ann = satellite_announce(satellite, link_sm=link_sm, link_su=link_su, relay_link=relay_link,
                             n_bits=n_bits, first_share=first_share, block_bits=block_bits)
    for link, station in ((link_sm, moscow), (link_su, urumqi)):
        send_announcement(ends[link][0], ann)
        station_accept(station, ends[link][1], link=link)
    return ann
