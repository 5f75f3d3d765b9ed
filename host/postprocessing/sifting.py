"""Sifting over the authenticated classical channel, with decoy-state bookkeeping.

Messages, in order (each one an :class:`~mozi.host.crypto.auth.AuthenticatedChannel` message, so its
authentication cost is counted in ``consumed_bits``):

1. ``sift-report`` Bob → Alice: Bob's ``(slot, basis)`` for every detection (Alice's slot
   numbering), compactly: :func:`encode_report` (slot differences as LEB128 varints, bases as
   packed bits — about 2.6 bytes per detection instead of 7, which matters because every byte
   is hashed for authentication).
2. Alice runs her sifter (the device's ``SIFT_REPORTS``, :class:`~mozi.host.devices.device.
   TransmitterDriver`) and answers ``sift-flags`` Alice → Bob: one match bit per report
   (packed MSB first).
3. ``sift-intensity`` Alice → Bob: her intensity code of every *matched* slot (2-bit words,
   :func:`mozi.firmware.protocol.pack_words2`). Announced only after the bases are fixed.
4. ``x-bits`` Bob → Alice: Bob's bits of every matched X-basis detection (the test basis: all
   of them are disclosed for the phase-error estimate, none enters the key).
5. ``x-errors`` Alice → Bob: the X-basis error count per intensity (3 × u32), so both sides
   hold the same :class:`~mozi.host.postprocessing.finite_key.DecoyStatistics`.

The Z-basis matched detections form the sifted key: Alice's bits come from her sifter, Bob's
from his basis decoder. Both sides end with the same slot list and per-intensity counts.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import numpy as np
from mozi.firmware import protocol as proto
from mozi.host.crypto.auth import AuthenticatedChannel
from mozi.host.devices.device import TransmitterDriver
from mozi.host.errors import ProtocolAbort
from mozi.host.postprocessing.finite_key import DecoyStatistics
from mozi.sim.model import BASIS_X, BASIS_Z

__all__ = [
    "AliceReport",
    "AliceSifted",
    "BobSifted",
    "SiftingError",
    "alice_answer_report",
    "alice_count_x_errors",
    "alice_sifted",
    "bob_disclose_x_bits",
    "bob_receive_flags",
    "bob_receive_x_errors",
    "bob_send_report",
    "decode_report",
    "encode_report",
    "run_sifting",
]


class SiftingError(ProtocolAbort):
    """A sifting message is malformed or inconsistent with the previous ones."""


@dataclasses.dataclass
class BobSifted:
    """Bob's view after sifting.

    Attributes
    ----------
    slots : int64 array
        Alice-numbered slots of the Z-basis sifted key, increasing.
    key : uint8 array
        Bob's sifted Z bits.
    intensity : uint8 array
        Alice's announced intensity of each key bit.
    stats : DecoyStatistics or None
        Per-intensity counts (filled by :func:`bob_receive_x_errors`).
    x_slots, x_intensity : arrays
        The matched X-basis detections (disclosed).
    """

    slots: np.ndarray
    key: np.ndarray
    intensity: np.ndarray
    x_slots: np.ndarray
    x_bits: np.ndarray
    x_intensity: np.ndarray
    stats: DecoyStatistics | None = None


@dataclasses.dataclass
class AliceReport:
    """What Alice holds after sifting Bob's report (one entry per reported slot).

    Attributes
    ----------
    slots : int64 array
    basis : uint8 array
        Bob's reported basis.
    match : bool array
    bit, intensity : uint8 arrays
        Alice's bit and intensity code in that slot.
    """

    slots: np.ndarray
    basis: np.ndarray
    match: np.ndarray
    bit: np.ndarray
    intensity: np.ndarray


@dataclasses.dataclass
class AliceSifted:
    """Alice's view after sifting (same slots as Bob's).

    Attributes
    ----------
    slots, key, intensity : arrays
        Z-basis sifted key, as in :class:`BobSifted` (Alice's bits).
    x_slots, x_bits, x_intensity : arrays
        Matched X-basis detections with Alice's bits.
    stats : DecoyStatistics or None
    """

    slots: np.ndarray
    key: np.ndarray
    intensity: np.ndarray
    x_slots: np.ndarray
    x_bits: np.ndarray
    x_intensity: np.ndarray
    stats: DecoyStatistics | None = None


def _expect(channel: AuthenticatedChannel, kind: str) -> bytes:
    try:
        return channel.expect(kind)
    except ProtocolAbort as exc:
        raise SiftingError(str(exc)) from None


def _packbits(bits: np.ndarray) -> bytes:
    return struct.pack(">I", bits.size) + np.packbits(bits.astype(np.uint8)).tobytes()


def _unpackbits(payload: bytes, what: str) -> np.ndarray:
    if len(payload) < 4:
        raise SiftingError(f"{what} message too short")
    (n,) = struct.unpack_from(">I", payload)
    if len(payload) != 4 + (n + 7) // 8:
        raise SiftingError(f"{what} message length does not match its {n} bits")
    return np.unpackbits(np.frombuffer(payload, np.uint8, offset=4))[:n].copy()


def encode_report(slots: np.ndarray, basis: np.ndarray) -> bytes:
    """Bob's report as bytes: count u32, first slot i64, then varint slot differences, bases.

    Parameters
    ----------
    slots : integer array
        Strictly increasing slots.
    basis : uint8 array
        Basis per slot.

    Returns
    -------
    bytes
        ``count`` (u32), ``slots[0]`` (i64, absent for an empty report), the differences
        ``slots[i] − slots[i−1] ≥ 1`` as unsigned LEB128 varints (7 bits per byte, low group
        first, high bit = more bytes follow), then the bases packed MSB first.
    """
    s = np.asarray(slots, np.int64)
    b = np.asarray(basis, np.uint8)
    if s.shape != b.shape or s.ndim != 1:
        raise ValueError("slots and basis must be 1-D arrays of the same length")
    if s.size > 1 and np.any(np.diff(s) <= 0):
        raise ValueError("reported slots must be strictly increasing")
    head = struct.pack(">I", s.size)
    if s.size == 0:
        return head
    d = np.diff(s).astype(np.uint64)
    nbytes = np.ones(d.size, np.int64)
    for k in range(1, 10):
        nbytes += d >= np.uint64(1) << np.uint64(7 * k)
    start = np.cumsum(nbytes) - nbytes
    out = np.zeros(int(nbytes.sum()), np.uint8)
    for k in range(int(nbytes.max()) if d.size else 0):
        m = nbytes > k
        group = ((d[m] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        out[start[m] + k] = group | np.where(nbytes[m] > k + 1, 0x80, 0).astype(np.uint8)
    return head + struct.pack(">q", int(s[0])) + out.tobytes() + np.packbits(b & 1).tobytes()


def decode_report(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_report`: (slots int64, basis uint8).

    Raises
    ------
    SiftingError
        Truncated or inconsistent payload.
    """
    if len(payload) < 4:
        raise SiftingError("sift-report message too short")
    (n,) = struct.unpack_from(">I", payload)
    if n == 0:
        if len(payload) != 4:
            raise SiftingError("empty sift-report with trailing bytes")
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    nb = (n + 7) // 8
    if len(payload) < 12 + (n - 1) + nb:
        raise SiftingError("sift-report message truncated")
    (first,) = struct.unpack_from(">q", payload, 4)
    raw = np.frombuffer(payload, np.uint8, len(payload) - 12 - nb, 12)
    ends = np.flatnonzero((raw & 0x80) == 0)
    if ends.size != n - 1 or (raw.size and (not ends.size or ends[-1] != raw.size - 1)):
        raise SiftingError("sift-report slot differences are malformed")
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    pos = np.arange(raw.size) - np.repeat(starts, np.diff(np.concatenate([starts, [raw.size]])))
    if raw.size and pos.max() > 9:
        raise SiftingError("sift-report slot difference too long")
    vals = (raw & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    d = np.add.reduceat(vals, starts) if raw.size else np.zeros(0, np.uint64)
    if np.any(d == 0):
        raise SiftingError("sift-report slots are not strictly increasing")
    # the int64 cumulative sum below must not wrap: bound it in floating point first (its
    # rounding error, < 2**11 here, stays far inside the margin)
    if first + float(d.astype(np.float64).sum()) > 2.0 ** 63 - 2.0 ** 12:
        raise SiftingError("sift-report slot numbers out of range")
    slots = np.concatenate([[first], first + np.cumsum(d.astype(np.int64))]).astype(np.int64)
    basis = np.unpackbits(np.frombuffer(payload, np.uint8, nb, len(payload) - nb))[:n]
    return slots, basis.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The two parties' steps
# --------------------------------------------------------------------------------------------

def bob_send_report(channel: AuthenticatedChannel, slots: np.ndarray, basis: np.ndarray) -> None:
    """Step 1 (Bob): send ``(slot, basis)`` of every detection, slots strictly increasing."""
    channel.send("sift-report", encode_report(slots, basis))


def alice_answer_report(channel: AuthenticatedChannel, transmitter: TransmitterDriver,
                        records_at: Callable[[np.ndarray], np.ndarray]) -> AliceReport:
    """Steps 1–3 (Alice): receive the report, sift it on the device, send flags and intensities.

    Returns
    -------
    AliceReport
        What Alice keeps (her bits are never sent).
    """
    slots, basis = decode_report(_expect(channel, "sift-report"))
    out = transmitter.sift(slots, basis, records_at)
    channel.send("sift-flags", _packbits(out.match))
    channel.send("sift-intensity", struct.pack(">I", int(out.match.sum()))
                 + proto.pack_words2(out.intensity[out.match]))
    return AliceReport(slots, basis.astype(np.uint8), out.match, out.bit, out.intensity)


def bob_receive_flags(channel: AuthenticatedChannel, slots: np.ndarray, basis: np.ndarray,
                      bits: np.ndarray) -> BobSifted:
    """Steps 2–3 (Bob): match flags and intensities → his sifted Z key and X detections."""
    slots = np.asarray(slots, np.int64)
    match = _unpackbits(_expect(channel, "sift-flags"), "sift-flags").astype(bool)
    if match.size != slots.size:
        raise SiftingError(f"{match.size} match flags for {slots.size} reports")
    payload = _expect(channel, "sift-intensity")
    count = struct.unpack_from(">I", payload)[0] if len(payload) >= 4 else -1
    if count != int(match.sum()) or len(payload) != 4 + (count + 3) // 4:
        raise SiftingError("intensity announcement does not match the flags")
    inten = proto.unpack_words2(payload[4:], count)
    if np.any(inten > 2):
        raise SiftingError("intensity code 3 announced")
    b = np.asarray(basis, np.uint8)[match]
    z = b == BASIS_Z
    x = b == BASIS_X
    m_slots = slots[match]
    m_bits = np.asarray(bits, np.uint8)[match]
    return BobSifted(slots=m_slots[z], key=m_bits[z], intensity=inten[z], x_slots=m_slots[x],
                     x_bits=m_bits[x], x_intensity=inten[x])


def bob_disclose_x_bits(channel: AuthenticatedChannel, bob: BobSifted) -> None:
    """Step 4 (Bob): disclose the bits of all matched X detections."""
    channel.send("x-bits", _packbits(bob.x_bits))


def alice_sifted(report: AliceReport) -> AliceSifted:
    """Alice's sifted Z key and X detections from her report (no statistics yet; when both
    bases give key, nothing more is exchanged at sifting)."""
    match = report.match
    rb = report.basis[match]
    m_slots, m_bit, m_int = report.slots[match], report.bit[match], report.intensity[match]
    z = rb == BASIS_Z
    x = rb == BASIS_X
    return AliceSifted(slots=m_slots[z], key=m_bit[z], intensity=m_int[z], x_slots=m_slots[x],
                       x_bits=m_bit[x], x_intensity=m_int[x])


def alice_count_x_errors(channel: AuthenticatedChannel, report: AliceReport) -> AliceSifted:
    """Steps 4–5 (Alice): compare Bob's X bits with hers, announce errors per intensity."""
    alice = alice_sifted(report)
    bob_x = _unpackbits(_expect(channel, "x-bits"), "x-bits")
    if bob_x.size != alice.x_bits.size:
        raise SiftingError(f"{bob_x.size} X bits disclosed for {alice.x_bits.size} X "
                           f"detections")
    err = bob_x != alice.x_bits
    m_x = np.bincount(alice.x_intensity[err], minlength=3)[:3]
    n_x = np.bincount(alice.x_intensity, minlength=3)[:3]
    n_z = np.bincount(alice.intensity, minlength=3)[:3]
    channel.send("x-errors", struct.pack(">III", *(int(v) for v in m_x)))
    alice.stats = DecoyStatistics(n_z=n_z, n_x=n_x, m_x=m_x)
    return alice


def bob_receive_x_errors(channel: AuthenticatedChannel, bob: BobSifted) -> BobSifted:
    """Step 5 (Bob): the X error counts complete his decoy statistics."""
    payload = _expect(channel, "x-errors")
    if len(payload) != 12:
        raise SiftingError("x-errors message must hold 3 counts")
    m_x = np.array(struct.unpack(">III", payload), np.int64)
    n_x = np.bincount(bob.x_intensity, minlength=3)[:3]
    n_z = np.bincount(bob.intensity, minlength=3)[:3]
    if np.any(m_x > n_x):
        raise SiftingError("more X errors announced than X detections")
    bob.stats = DecoyStatistics(n_z=n_z, n_x=n_x, m_x=m_x)
    return bob


def run_sifting(alice_channel: AuthenticatedChannel, bob_channel: AuthenticatedChannel,
                transmitter: TransmitterDriver, records_at: Callable[[np.ndarray], np.ndarray],
                slots: np.ndarray, basis: np.ndarray, bits: np.ndarray
                ) -> tuple[AliceSifted, BobSifted]:
    """Both parties' sifting steps in protocol order (in-process).

    Parameters
    ----------
    alice_channel, bob_channel : AuthenticatedChannel
        The two ends of one channel.
    transmitter : TransmitterDriver
        Alice's device.
    records_at : callable
        Alice's 4-bit records of given slots (her device's record stream).
    slots, basis, bits : arrays
        Bob's detections: Alice-numbered slots (strictly increasing), basis and bit.

    Returns
    -------
    alice, bob : AliceSifted, BobSifted
        Identical slots and statistics on both sides.
    """
    bob_send_report(bob_channel, slots, basis)
    report = alice_answer_report(alice_channel, transmitter, records_at)
    bob = bob_receive_flags(bob_channel, slots, basis, bits)
    bob_disclose_x_bits(bob_channel, bob)
    alice = alice_count_x_errors(alice_channel, report)
    bob = bob_receive_x_errors(bob_channel, bob)
    if not np.array_equal(alice.slots, bob.slots):
        raise SiftingError("Alice's and Bob's sifted slots differ")
    return alice, bob
