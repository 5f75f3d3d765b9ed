"""Golden models: bit-exact numpy specifications of what the gateware computes.

Every gateware core in ``mozi.hdl`` has a function here with the same inputs and outputs; the
cocotb testbenches compare the RTL against these functions, and the host's ``model`` device
backend *is* these functions. Integer semantics (widths, rounding, wrap-around) are stated per
function; the gateware must match them exactly.

Conventions (see DESIGN.md):

* bits are ``numpy.uint8`` arrays of 0/1;
* detector channel order is H, V, D, A; a detector *mask* has bit 0 = H, bit 1 = V, bit 2 = D,
  bit 3 = A;
* basis 0 = Z (H: 0, V: 1), basis 1 = X (D: 0, A: 1);
* intensity codes: 0 = signal, 1 = decoy, 2 = vacuum (3 unused).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BASIS_X",
    "BASIS_Z",
    "CHANNELS",
    "INTENSITY_DECOY",
    "INTENSITY_SIGNAL",
    "INTENSITY_VACUUM",
    "alice_record",
    "as_bits",
    "assign_slots",
    "decode_basis",
    "merge_slot_events",
    "sift_alice",
    "tag_edges",
    "toeplitz_hash",
    "unpack_alice_record",
]

CHANNELS = ("H", "V", "D", "A")
BASIS_Z = 0
BASIS_X = 1
INTENSITY_SIGNAL = 0
INTENSITY_DECOY = 1
INTENSITY_VACUUM = 2


def as_bits(a, name: str) -> np.ndarray:
    """Check that ``a`` is a 1-D array of 0/1 and return it as ``uint8`` (no copy if it is).

    Raises ``ValueError`` naming ``name`` otherwise. Shared by every API that takes bits.
    """
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D bit array")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"{name} must hold only 0 and 1")
    return a.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------------------------
# Time tagging
# --------------------------------------------------------------------------------------------

def tag_edges(
    samples: np.ndarray,
    *,
    phases: int,
    dead_time: int = 0,
    width: int = 48,
    initial: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Time tagger: oversampled detector pins → (timestamp, channel mask) events.

    Parameters
    ----------
    samples : uint8 array, shape (cycles, channels, phases)
        The level of each detector pin at each sample; ``samples[c, ch, p]`` is sample ``p`` of
        clock cycle ``c`` (phase 0 is the earliest).
    phases : int
        Samples per clock (1 with plain pins, 2/4/8 with DDR/SERDES inputs).
    dead_time : int
        Per-channel dead time in ticks: after an accepted edge at tick ``t`` a channel ignores
        further rising edges at ticks ``< t + dead_time`` (0 disables it).
    width : int
        Timestamp width in bits; timestamps wrap modulo ``2**width``.
    initial : uint8 array, shape (channels,), optional
        Pin levels before cycle 0 (default all 0), so an edge at cycle 0 phase 0 is seen.

    Returns
    -------
    timestamps : uint64 array
        ``(cycle * phases + phase) mod 2**width`` in ticks, where ``phase`` is the earliest
        accepted edge of that clock cycle over all channels.
    masks : uint8 array (uint16/uint32 for more than 8/16 channels)
        The channels with an accepted rising edge anywhere in that clock cycle.

    Notes
    -----
    * A rising edge is a 0 → 1 transition between consecutive samples of one channel, across
      the clock boundary too (last phase of cycle ``c-1`` → phase 0 of cycle ``c``).
    * Per channel, only the first rising edge in a clock cycle is considered, and it is
      accepted only if it lies at least ``dead_time`` ticks after that channel's previous
      accepted edge.
    * One event per clock cycle with at least one accepted edge: edges of one cycle are merged
      (simultaneous within the clock period) and the event carries the earliest tick. So the
      tagger produces at most one event per clock, which the gateware sustains; when its
      output backs up it drops whole events, counts them and reports the count in-band.
    """
    samples = np.asarray(samples, dtype=np.uint8)
    if samples.ndim != 3 or samples.shape[2] != phases:
        raise ValueError("samples must have shape (cycles, channels, phases)")
    cycles, channels, _ = samples.shape
    prev_last = np.zeros(channels, np.uint8) if initial is None else \
        np.asarray(initial, np.uint8).reshape(channels)
    # the previous sample of every sample, carrying the last phase of cycle c-1 into c
    prev = np.empty_like(samples)
    prev[:, :, 1:] = samples[:, :, :-1]
    if cycles:
        prev[0, :, 0] = prev_last
        prev[1:, :, 0] = samples[:-1, :, -1]
    rising = (samples == 1) & (prev == 0)                  # (cycles, channels, phases)
    has = rising.any(axis=2)                                # (cycles, channels)
    first = np.argmax(rising, axis=2)                       # first edge phase per channel
    tick = np.arange(cycles, dtype=np.int64)[:, None] * phases + first
    accepted = has.copy()
    if dead_time > 0:
        for ch in range(channels):
            last = -(1 << 62)
            for c in np.flatnonzero(has[:, ch]):
                t = int(tick[c, ch])
                if t >= last + dead_time:
                    last = t
                else:
                    accepted[c, ch] = False
    cyc = np.flatnonzero(accepted.any(axis=1))
    acc = accepted[cyc]
    earliest = np.where(acc, first[cyc], phases).min(axis=1)
    ticks = cyc.astype(np.uint64) * np.uint64(phases) + earliest.astype(np.uint64)
    if width < 64:
        ticks %= np.uint64(1 << width)
    weights = 1 << np.arange(channels, dtype=np.uint64)
    masks = (acc.astype(np.uint64) * weights).sum(axis=1)
    mask_dtype = np.uint8 if channels <= 8 else np.uint16 if channels <= 16 else np.uint32
    return ticks, masks.astype(mask_dtype)

# --------------------------------------------------------------------------------------------
# Time-bin (slot) assignment
# --------------------------------------------------------------------------------------------

def assign_slots(
    timestamps: np.ndarray,
    *,
    period: int,
    offset: int,
    window_start: int,
    window_end: int,
    frac_bits: int,
    slot_width: int = 48,
) -> tuple[np.ndarray, np.ndarray]:
    """Slot assigner: timestamp (ticks) → slot index and in-window flag.

    All of ``period``, ``offset``, ``window_start`` and ``window_end`` are fixed-point numbers
    in units of ``2**-frac_bits`` ticks (the gateware registers hold exactly these integers).

    With ``phase = timestamp * 2**frac_bits - offset`` (exact integer arithmetic):

    * ``phase < 0`` → before slot 0: ``slot = 0``, ``in_window = False`` (rejected);
    * otherwise ``slot = (phase // period) mod 2**slot_width`` and
      ``residue = phase mod period``; ``in_window = window_start <= residue < window_end``.

    Parameters
    ----------
    timestamps : integer array (ticks, unsigned)
    period : int, > 0
        Slot period (e.g. 10 ns at 4 ticks/ns ⇒ ``40 << frac_bits``, plus drift correction).
    offset : int (signed)
        Time of the start of slot 0.
    window_start, window_end : int
        Acceptance window, relative to the start of each slot; ``0 <= start < end <= period``.
    frac_bits : int, >= 0
    slot_width : int
        Slot counter width in bits.

    Returns
    -------
    slots : uint64 array
    in_window : bool array

    Notes
    -----
    Drift is corrected by the host reprogramming ``period`` and ``offset`` between blocks of
    events; to keep slot numbers continuous across an update at slot ``S`` starting at phase
    ``B``, the host sets ``offset = B - S * period_new`` (which may be negative).
    """
    if period <= 0:
        raise ValueError("period must be positive")
    if not 0 <= window_start < window_end <= period:
        raise ValueError("window must satisfy 0 <= window_start < window_end <= period")
    ts = np.asarray(timestamps)
    # Python ints keep this exact for any width; vectorise through object arithmetic only
    # when the int64 range could overflow.
    hi = int(ts.max()) if ts.size else 0
    bound = (hi << frac_bits) + abs(offset) + period
    if bound < (1 << 62):
        phase = (ts.astype(np.int64) << np.int64(frac_bits)) - np.int64(offset)
        ok = phase >= 0
        p = np.where(ok, phase, 0)
        slots = (p // period).astype(np.uint64)
        residue = p % period
    else:
        phase = np.array([(int(t) << frac_bits) - offset for t in ts], dtype=object)
        ok = np.array([x >= 0 for x in phase], dtype=bool)
        p = np.where(ok, phase, 0)
        slots = np.array([x // period for x in p], dtype=object)
        residue = np.array([x % period for x in p], dtype=np.int64)
        slots = np.array([int(s) & ((1 << 64) - 1) for s in slots], dtype=np.uint64)
    if slot_width < 64:
        slots &= np.uint64((1 << slot_width) - 1)
    in_window = ok & (residue >= window_start) & (residue < window_end)
    slots = np.where(ok, slots, np.uint64(0)).astype(np.uint64)
    return slots, in_window


def merge_slot_events(
    slots: np.ndarray, masks: np.ndarray, in_window: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slot assigner output stage: drop rejected events, OR-merge events of the same slot.

    Out-of-window events are dropped (the gateware counts them). Consecutive accepted events
    with the same slot index become one event whose mask is the OR of theirs, so a
    multi-click spread over several ticks of one slot reaches the basis decoder as one
    multi-click. (Events arrive in time order, so equal slots are always consecutive.) The
    gateware holds the latest event until an event of another slot arrives or the packet ends
    (``last``), then emits it.

    Returns
    -------
    slots : uint64 array, strictly increasing (before wrap)
    masks : same dtype as ``masks``
    """
    keep = np.asarray(in_window, bool)
    s = np.asarray(slots, np.uint64)[keep]
    m = np.asarray(masks)[keep]
    if s.size == 0:
        return s, m
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    return s[starts], np.bitwise_or.reduceat(m, starts).astype(m.dtype)


def carry_lost(lost: np.ndarray, keep: np.ndarray, carry: int = 0, *,
               maximum: int = (1 << 16) - 1) -> tuple[np.ndarray, int]:
    """The receiver's one rule for in-band loss counts: a dropped event's count rides on.

    Every receiver core that drops an event (rejected by the window, merged into an earlier
    one, empty mask) adds its ``lost`` count to the next event it emits, so no loss is ever
    hidden. Sums saturate at ``maximum`` (the ``lost`` field's largest value).

    Parameters
    ----------
    lost : integer array
        In-band lost count of each input event.
    keep : bool array
        The events the core emits.
    carry : int
        Count carried in from before (state kept by the core across calls).
    maximum : int
        Saturation value (:data:`mozi.hdl.layouts.LOST_WIDTH` bits by default).

    Returns
    -------
    kept_lost : int64 array
        The ``lost`` of each emitted event: its own count plus every dropped count since the
        previous emitted event (plus ``carry`` for the first), saturated.
    carry : int
        The count left after the last emitted event (saturated), for the next call.
    """
    lost = np.asarray(lost, np.int64)
    idx = np.flatnonzero(np.asarray(keep, bool))
    cum = np.concatenate([[0], np.cumsum(lost)])
    ends = idx + 1
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    kept = cum[ends] - cum[starts]
    if kept.size:
        kept[0] += carry
        rest = int(cum[-1] - cum[ends[-1]])
    else:
        rest = int(cum[-1]) + carry
    return np.minimum(kept, maximum), min(rest, maximum)


# --------------------------------------------------------------------------------------------
# Bob's basis decoding
# --------------------------------------------------------------------------------------------

def decode_basis(masks: np.ndarray, random_bits: np.ndarray) -> tuple[np.ndarray, ...]:
    """Basis decoder: detector mask → (valid, basis, bit, multi) per event.

    Parameters
    ----------
    masks : uint8 array
        4-bit detector masks (bit 0 = H, 1 = V, 2 = D, 3 = A).
    random_bits : uint8 array, same length
        One 2-bit random word per event (bit 0 = random bit value, bit 1 = random basis),
        consumed for *every* event whether or not it is needed, so the host and the gateware
        stay in lockstep with the random source.

    Returns
    -------
    valid : bool array
        ``mask & 0xF != 0``.
    basis : uint8 array
        Clicks in one basis only → that basis. Clicks in both bases (a cross-basis
        multi-click) → the random basis bit.
    bit : uint8 array
        In the chosen basis: one click → its value (H, D: 0; V, A: 1); both detectors of the
        basis clicked → the random value bit; (no click in the chosen basis cannot happen).
    multi : bool array
        More than one detector clicked.

    Notes
    -----
    This is the squashing-compatible rule for a passive four-detector receiver: multi-clicks
    are kept and given random values, never discarded (discarding them opens a
    detector-blinding / efficiency-mismatch loophole). Invalid events (mask 0) report
    basis 0 and bit 0.
    """
    m = np.asarray(masks).astype(np.uint8) & 0xF
    r = np.asarray(random_bits).astype(np.uint8) & 0x3
    if m.shape != r.shape:
        raise ValueError("masks and random_bits must have the same shape")
    z = m & 0x3
    x = (m >> 2) & 0x3
    r_bit = r & 1
    r_basis = (r >> 1) & 1
    has_z = z != 0
    has_x = x != 0
    basis = np.where(has_z & has_x, r_basis, np.where(has_x, 1, 0)).astype(np.uint8)
    pair = np.where(basis == 1, x, z)
    bit = np.where(pair == 3, r_bit, np.where(pair == 2, 1, 0)).astype(np.uint8)
    valid = m != 0
    bit = np.where(valid, bit, 0).astype(np.uint8)
    basis = np.where(valid, basis, 0).astype(np.uint8)
    popcount = (m & 1) + ((m >> 1) & 1) + ((m >> 2) & 1) + ((m >> 3) & 1)
    return valid, basis, bit, popcount > 1


# --------------------------------------------------------------------------------------------
# Alice's sifting
# --------------------------------------------------------------------------------------------

def alice_record(basis: np.ndarray, bit: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Pack Alice's per-slot choices into the 4-bit record the gateware streams.

    ``record = bit | basis << 1 | intensity << 2`` (intensity: 0 signal, 1 decoy, 2 vacuum).
    """
    return (np.asarray(bit, np.uint8) & 1) | ((np.asarray(basis, np.uint8) & 1) << 1) | \
        ((np.asarray(intensity, np.uint8) & 3) << 2)


def alice_choices(words, t_basis: int, t_int0: int, t_int1: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alice's choices from one 64-bit random word per slot (the simulator's source and the
    pattern generator both map words this way).

    ``bit = w[63]``; ``basis = 1`` (X) iff ``w[32:63] >= t_basis``; with ``u = w[0:32]``,
    ``intensity = (u >= t_int0) + (u >= t_int1)`` (0 signal, 1 decoy, 2 vacuum). So
    ``t_basis = p_z * 2**31``, ``t_int0 = p_signal * 2**32`` and ``t_int1 = (p_signal +
    p_decoy) * 2**32``.

    Returns
    -------
    basis, bit, intensity : uint8 arrays shaped like ``words``
    """
    w = np.asarray(words, np.uint64)
    bit = (w >> np.uint64(63)).astype(np.uint8)
    basis = (((w >> np.uint64(32)) & np.uint64(0x7FFFFFFF)) >= np.uint64(t_basis)) \
        .astype(np.uint8)
    u = w & np.uint64(0xFFFFFFFF)
    intensity = (u >= np.uint64(t_int0)).astype(np.uint8) + \
        (u >= np.uint64(t_int1)).astype(np.uint8)
    return basis, bit, intensity


def laser_triggers(basis, bit, intensity) -> np.ndarray:
    """The pattern generator's laser mask per slot: bit ``2 * basis + bit`` (H, V, D, A) set,
    none for a vacuum slot (intensity 2)."""
    basis, bit, intensity = (np.asarray(a, np.uint8) for a in (basis, bit, intensity))
    return np.where(intensity >= 2, 0, 1 << (2 * (basis & 1) + (bit & 1))).astype(np.uint8)


def unpack_alice_record(record: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`alice_record`: (basis, bit, intensity)."""
    r = np.asarray(record, np.uint8)
    return (r >> 1) & 1, r & 1, (r >> 2) & 3


def sift_alice(
    records: np.ndarray,
    report_slots: np.ndarray,
    report_basis: np.ndarray,
    *,
    first_slot: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alice's sifter: merge-join of her per-slot records with Bob's (slot, basis) reports.

    Parameters
    ----------
    records : uint8 array
        Alice's 4-bit records (:func:`alice_record`) for consecutive slots
        ``first_slot, first_slot + 1, …``.
    report_slots : integer array
        Bob's reported slots, strictly increasing, each within the records' range.
    report_basis : uint8 array
        Bob's basis per reported slot.
    first_slot : int
        Slot index of ``records[0]``.

    Returns
    -------
    match : bool array
        Alice's basis equals Bob's for that slot (the flag sent back to Bob).
    bit : uint8 array
        Alice's bit in that slot (kept by Alice, never sent).
    intensity : uint8 array
        Alice's intensity code in that slot (announced later for parameter estimation).

    Raises
    ------
    ValueError
        Reports not strictly increasing, or outside ``[first_slot, first_slot + len(records))``
        — the gateware flags the same conditions as a protocol error.
    """
    rec = np.asarray(records, np.uint8)
    slots = np.asarray(report_slots).astype(np.int64)
    rb = np.asarray(report_basis, np.uint8) & 1
    if slots.shape != rb.shape:
        raise ValueError("report_slots and report_basis must have the same shape")
    if slots.size > 1 and np.any(np.diff(slots) <= 0):
        raise ValueError("Bob's reported slots must be strictly increasing")
    idx = slots - first_slot
    if idx.size and (idx[0] < 0 or idx[-1] >= rec.size):
        raise ValueError("a reported slot lies outside Alice's records")
    basis, bit, intensity = unpack_alice_record(rec[idx])
    return basis == rb, bit.astype(np.uint8), intensity.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Toeplitz hashing
# --------------------------------------------------------------------------------------------

def toeplitz_hash(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    """Reference GF(2) Toeplitz hash ``y = T x``, the specification for every other version.

    Parameters
    ----------
    x : uint8 bit array of length n
    s : uint8 bit array of length n + m - 1
        Seed; ``T[i, j] = s[i - j + n - 1]`` (so ``s[n-1]`` is the main diagonal,
        ``s[0]`` is ``T[0, n-1]`` and ``s[n+m-2]`` is ``T[m-1, 0]``).
    m : int
        Output length, ``1 <= m``.

    Returns
    -------
    y : uint8 bit array of length m, ``y[i] = XOR_j T[i, j] & x[j]``.

    Notes
    -----
    ``y[i] = XOR_j s[i + n - 1 - j] x[j]``: the i-th output is the parity of ``x`` AND the
    reversed seed window ``s[i : i + n]``. Computed here with packed 64-bit words in
    O(n·m/64), exact and simple; fast versions live in the host (FFT) and the gateware.
    """
    x = as_bits(x, "x")
    s = as_bits(s, "s")
    n = x.size
    if m < 1 or n < 1:
        raise ValueError("n and m must be positive")
    if s.size != n + m - 1:
        raise ValueError(f"seed must have n + m - 1 = {n + m - 1} bits, not {s.size}")
    xr = x[::-1]  # y[i] = XOR_k s[i + k] * xr[k]
    pad = (-n) % 8
    xp = np.packbits(np.concatenate([xr, np.zeros(pad, np.uint8)]))
    y = np.empty(m, np.uint8)
    for i in range(m):
        win = np.packbits(np.concatenate([s[i:i + n], np.zeros(pad, np.uint8)]))
        y[i] = np.bitwise_count(np.bitwise_and(win, xp)).sum() & 1
    return y
