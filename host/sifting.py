"""Sifting over the authenticated classical channel, with decoy-state bookkeeping.

Messages, in order (each one an :class:`~mozi.host.auth.AuthenticatedChannel` message, so its
authentication cost is counted in ``consumed_bits``):

1. ``sift-report`` Bob → Alice: Bob's ``(slot, basis)`` for every detection (Alice's slot
   numbering; wire records of :func:`mozi.firmware.protocol.encode_reports`).
2. Alice runs her sifter (the device's ``SIFT_REPORTS``, :class:`~mozi.host.device.
   TransmitterDriver`) and answers ``sift-flags`` Alice → Bob: one match bit per report
   (packed MSB first).
3. ``sift-intensity`` Alice → Bob: her intensity code of every *matched* slot (2-bit words,
   :func:`mozi.firmware.protocol.pack_words2`). Announced only after the bases are fixed.
4. ``x-bits`` Bob → Alice: Bob's bits of every matched X-basis detection (the test basis: all
   of them are disclosed for the phase-error estimate, none enters the key).
5. ``x-errors`` Alice → Bob: the X-basis error count per intensity (3 × u32), so both sides
   hold the same :class:`~mozi.host.finite_key.DecoyStatistics`.

The Z-basis matched detections form the sifted key: Alice's bits come from her sifter, Bob's
from his basis decoder. Both sides end with the same slot list and per-intensity counts.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import numpy as np
from mozi.firmware import protocol as proto
from mozi.host.auth import AuthenticatedChannel
from mozi.host.device import TransmitterDriver
from mozi.host.errors import ProtocolAbort
from mozi.host.finite_key import DecoyStatistics
from mozi.sim.model import BASIS_X, BASIS_Z

__all__ = [
    "AliceReport",
    "AliceSifted",
    "BobSifted",
    "SiftingError",
    "alice_answer_report",
    "alice_count_x_errors",
    "bob_disclose_x_bits",
    "bob_receive_flags",
    "bob_receive_x_errors",
    "bob_send_report",
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
    got, payload = channel.receive()
    if got != kind:
        raise SiftingError(f"expected a {kind!r} message, got {got!r}")
    return payload


def _packbits(bits: np.ndarray) -> bytes:
    return struct.pack(">I", bits.size) + np.packbits(bits.astype(np.uint8)).tobytes()


def _unpackbits(payload: bytes, what: str) -> np.ndarray:
    if len(payload) < 4:
        raise SiftingError(f"{what} message too short")
    (n,) = struct.unpack_from(">I", payload)
    if len(payload) != 4 + (n + 7) // 8:
        raise SiftingError(f"{what} message length does not match its {n} bits")
    return np.unpackbits(np.frombuffer(payload, np.uint8, offset=4))[:n].copy()


# --------------------------------------------------------------------------------------------
# The two parties' steps
# --------------------------------------------------------------------------------------------

def bob_send_report(channel: AuthenticatedChannel, slots: np.ndarray, basis: np.ndarray) -> None:
    """Step 1 (Bob): send ``(slot, basis)`` of every detection, slots strictly increasing."""
    slots = np.asarray(slots, np.int64)
    if slots.size > 1 and np.any(np.diff(slots) <= 0):
        raise ValueError("reported slots must be strictly increasing")
    channel.send("sift-report", proto.encode_reports(slots, basis))


def alice_answer_report(channel: AuthenticatedChannel, transmitter: TransmitterDriver,
                        records_at: Callable[[np.ndarray], np.ndarray]) -> AliceReport:
    """Steps 1–3 (Alice): receive the report, sift it on the device, send flags and intensities.

    Returns
    -------
    AliceReport
        What Alice keeps (her bits are never sent).
    """
    try:
        slots, basis = proto.decode_reports(_expect(channel, "sift-report"))
    except proto.FrameError as exc:
        raise SiftingError(f"malformed report: {exc}") from None
    slots = slots.astype(np.int64)
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
    (count,) = struct.unpack_from(">I", payload)
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


def alice_count_x_errors(channel: AuthenticatedChannel, report: AliceReport) -> AliceSifted:
    """Steps 4–5 (Alice): compare Bob's X bits with hers, announce errors per intensity."""
    match = report.match
    rb = report.basis[match]
    m_slots, m_bit, m_int = report.slots[match], report.bit[match], report.intensity[match]
    z = rb == BASIS_Z
    x = rb == BASIS_X
    bob_x = _unpackbits(_expect(channel, "x-bits"), "x-bits")
    if bob_x.size != int(x.sum()):
        raise SiftingError(f"{bob_x.size} X bits disclosed for {int(x.sum())} X detections")
    err = bob_x != m_bit[x]
    x_int = m_int[x]
    m_x = np.bincount(x_int[err], minlength=3)[:3]
    n_x = np.bincount(x_int, minlength=3)[:3]
    n_z = np.bincount(m_int[z], minlength=3)[:3]
    channel.send("x-errors", struct.pack(">III", *(int(v) for v in m_x)))
    return AliceSifted(slots=m_slots[z], key=m_bit[z], intensity=m_int[z], x_slots=m_slots[x],
                       x_bits=m_bit[x], x_intensity=x_int,
                       stats=DecoyStatistics(n_z=n_z, n_x=n_x, m_x=m_x))


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
