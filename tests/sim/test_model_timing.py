"""Golden-model tests for the receiver timing chain: tag_edges, assign_slots, merge_slot_events.

Hand-worked small cases pin the integer semantics; naive per-sample / per-event Python
references check the vectorised models on random inputs.
"""

import numpy as np
import pytest
from mozi.sim.model import assign_slots, merge_slot_events, tag_edges


def _one_channel(levels, phases):
    """Levels of one channel, flat in time → samples of shape (cycles, 1, phases)."""
    return np.array(levels, np.uint8).reshape(-1, 1, phases)


def naive_tag_edges(samples, phases, dead_time=0, width=64, initial=None):
    """Sample-by-sample reference of :func:`tag_edges` (slow, obviously correct)."""
    cycles, channels, _ = samples.shape
    prev = [0] * channels if initial is None else [int(v) for v in initial]
    last = [None] * channels
    out = []
    for c in range(cycles):
        mask, earliest = 0, None
        for ch in range(channels):
            first = None
            for p in range(phases):
                level = int(samples[c, ch, p])
                if first is None and level == 1 and prev[ch] == 0:
                    first = p
                prev[ch] = level
            if first is None:
                continue
            t = c * phases + first
            if last[ch] is not None and t < last[ch] + dead_time:
                continue
            last[ch] = t
            mask |= 1 << ch
            earliest = first if earliest is None else min(earliest, first)
        if mask:
            out.append(((c * phases + earliest) % (1 << width), mask))
    return out


# --------------------------------------------------------------------------------------------
# tag_edges
# --------------------------------------------------------------------------------------------

def test_tag_edges_plain_pins():
    ts, masks = tag_edges(_one_channel([0, 1, 1, 0, 1], 1), phases=1)
    assert ts.tolist() == [1, 4]
    assert masks.tolist() == [1, 1]
    assert ts.dtype == np.uint64 and masks.dtype == np.uint8


def test_tag_edges_initial_level():
    assert tag_edges(_one_channel([1, 1], 1), phases=1)[0].tolist() == [0]
    assert tag_edges(_one_channel([1, 1], 1), phases=1, initial=[1])[0].size == 0


def test_tag_edges_across_clock_boundary_and_first_edge_only():
    # cycle 0: rises at phase 3; cycle 1: stays high (no edge across the boundary);
    # cycle 2: 0101 → edges at phases 1 and 3, only the first counts; cycle 3: 0 → 1 at phase 0
    levels = [0, 0, 0, 1,  1, 1, 1, 1,  0, 1, 0, 1,  1, 1, 1, 1]
    ts, _ = tag_edges(_one_channel(levels, 4), phases=4)
    assert ts.tolist() == [3, 9]      # cycle 3 phase 0 follows a 1 at the end of cycle 2
    levels[11] = 0                    # now the boundary 0 → 1 is an edge at cycle 3, phase 0
    ts, _ = tag_edges(_one_channel(levels, 4), phases=4)
    assert ts.tolist() == [3, 9, 12]


def test_tag_edges_merges_channels_with_earliest_phase():
    s = np.zeros((2, 4, 4), np.uint8)
    s[1, 0, 2:] = 1        # H rises at phase 2 of cycle 1
    s[1, 1, 1:] = 1        # V rises at phase 1
    s[1, 3, 3] = 1         # A rises at phase 3
    ts, masks = tag_edges(s, phases=4)
    assert ts.tolist() == [5]
    assert masks.tolist() == [0b1011]


def test_tag_edges_all_clicks():
    s = np.ones((1, 4, 2), np.uint8)
    ts, masks = tag_edges(s, phases=2)
    assert ts.tolist() == [0] and masks.tolist() == [15]


def test_tag_edges_dead_time_non_paralysable():
    levels = [1, 0] * 4               # edges at cycles 0, 2, 4, 6
    s = _one_channel(levels, 1)
    assert tag_edges(s, phases=1, dead_time=2)[0].tolist() == [0, 2, 4, 6]
    # dead time 3: 2 rejected; 4 >= 0 + 3 accepted (a rejected edge does not extend it)
    assert tag_edges(s, phases=1, dead_time=3)[0].tolist() == [0, 4]
    assert tag_edges(s, phases=1, dead_time=5)[0].tolist() == [0, 6]


def test_tag_edges_dead_time_is_per_channel_and_drops_from_earliest():
    s = np.zeros((3, 2, 4), np.uint8)
    s[0, 0, 0] = 1                    # H at tick 0
    s[1, 0, 0] = 1                    # H at tick 4: inside its dead time of 6
    s[1, 1, 3] = 1                    # V at tick 7: its own first edge, accepted
    ts, masks = tag_edges(s, phases=4, dead_time=6)
    assert ts.tolist() == [0, 7]      # the dead H edge does not set the event's tick
    assert masks.tolist() == [1, 2]


def test_tag_edges_wraps():
    levels = [1, 0] * 8               # an edge every other cycle, phases = 2 → ticks 0, 4, 8…
    s = _one_channel([v for v in levels for _ in range(2)], 2)
    ts, _ = tag_edges(s, phases=2, width=3)
    assert ts.tolist() == [0, 4, 0, 4, 0, 4, 0, 4]


def test_tag_edges_rejects_bad_shape():
    with pytest.raises(ValueError):
        tag_edges(np.zeros((4, 4), np.uint8), phases=1)
    with pytest.raises(ValueError):
        tag_edges(np.zeros((4, 4, 2), np.uint8), phases=4)


@pytest.mark.parametrize("phases, dead_time, width", [
    (1, 0, 64), (2, 3, 64), (4, 0, 9), (4, 7, 64), (8, 13, 12),
])
def test_tag_edges_matches_naive_reference(phases, dead_time, width):
    rng = np.random.default_rng(phases * 100 + dead_time)
    s = (rng.random((400, 4, phases)) < 0.3).astype(np.uint8)
    initial = rng.integers(0, 2, 4)
    ts, masks = tag_edges(s, phases=phases, dead_time=dead_time, width=width, initial=initial)
    expected = naive_tag_edges(s, phases, dead_time, width, initial)
    assert list(zip(ts.tolist(), masks.tolist(), strict=True)) == expected
    if width == 64:
        assert np.all(np.diff(ts.astype(np.int64)) > 0)     # at most one event per clock


# --------------------------------------------------------------------------------------------
# assign_slots
# --------------------------------------------------------------------------------------------

def test_assign_slots_integer_ticks():
    slots, ok = assign_slots(np.array([0, 9, 10, 25, 27, 28]), period=10, offset=0,
                             window_start=2, window_end=8, frac_bits=0)
    assert slots.tolist() == [0, 0, 1, 2, 2, 2]
    assert ok.tolist() == [False, False, False, True, True, False]  # residues 0 9 0 5 7 8


def test_assign_slots_fixed_point_and_negative_phase():
    # period 10.25 ticks, offset 0.75 ticks, 2 fractional bits
    slots, ok = assign_slots(np.array([0, 1, 11, 21]), period=41, offset=3, window_start=0,
                             window_end=41, frac_bits=2)
    # phases: -3 (before slot 0), 1, 41, 81 → slots 0 (rejected), 0, 1, 1 (residue 40)
    assert slots.tolist() == [0, 0, 1, 1]
    assert ok.tolist() == [False, True, True, True]


def test_assign_slots_window_edges():
    ts = np.array([12, 13, 17, 18])             # residues 2, 3, 7, 8 with period 10
    _, ok = assign_slots(ts, period=10, offset=0, window_start=3, window_end=8, frac_bits=0)
    assert ok.tolist() == [False, True, True, False]


def test_assign_slots_slot_width_wraps():
    slots, _ = assign_slots(np.array([255, 256, 300]), period=1, offset=0, window_start=0,
                            window_end=1, frac_bits=0, slot_width=8)
    assert slots.tolist() == [255, 0, 44]


def test_assign_slots_wide_values_take_the_exact_path():
    t = (1 << 48) - 1
    period = (40 << 16) + 12345
    offset = -(1 << 60) + 7
    slots, ok = assign_slots(np.array([t, 3], np.uint64), period=period, offset=offset,
                             window_start=0, window_end=period, frac_bits=16, slot_width=48)
    for k, ts in enumerate((t, 3)):
        phase = (ts << 16) - offset
        assert int(slots[k]) == (phase // period) % (1 << 48)
    assert ok.all()


@pytest.mark.parametrize("kwargs", [
    {"period": 0, "window_start": 0, "window_end": 1},
    {"period": 10, "window_start": 5, "window_end": 5},
    {"period": 10, "window_start": 0, "window_end": 11},
    {"period": 10, "window_start": -1, "window_end": 3},
])
def test_assign_slots_rejects_bad_registers(kwargs):
    with pytest.raises(ValueError):
        assign_slots(np.array([1]), offset=0, frac_bits=0, **kwargs)


def test_assign_slots_matches_python_integers():
    rng = np.random.default_rng(7)
    frac, width = 16, 20
    for _ in range(20):
        period = int(rng.integers(1, 1 << 24))
        offset = int(rng.integers(-(1 << 40), 1 << 40))
        ws = int(rng.integers(0, period))
        we = int(rng.integers(ws + 1, period + 1))
        ts = np.sort(rng.integers(0, 1 << 30, 200)).astype(np.uint64)
        slots, ok = assign_slots(ts, period=period, offset=offset, window_start=ws,
                                 window_end=we, frac_bits=frac, slot_width=width)
        for t, s, k in zip(ts.tolist(), slots.tolist(), ok.tolist(), strict=True):
            phase = (t << frac) - offset
            if phase < 0:
                assert (s, k) == (0, False)
            else:
                assert s == (phase // period) % (1 << width)
                assert k == (ws <= phase % period < we)


def test_assign_slots_offset_update_keeps_numbering():
    """The docstring's drift correction: offset = B - S * period_new continues at slot S."""
    frac = 8
    p_old, off_old = (40 << frac) + 3, 1000
    t_switch = 12345
    phase = (t_switch << frac) - off_old
    s_next = phase // p_old + 1
    b = off_old + s_next * p_old
    p_new = p_old - 2
    off_new = b - s_next * p_new
    t_after = (b >> frac) + 1                     # just after the start of slot S
    slots, _ = assign_slots(np.array([t_after]), period=p_new, offset=off_new, window_start=0,
                            window_end=p_new, frac_bits=frac)
    assert int(slots[0]) == s_next


# --------------------------------------------------------------------------------------------
# merge_slot_events
# --------------------------------------------------------------------------------------------

def test_merge_slot_events_hand_worked():
    slots = np.array([1, 1, 2, 2, 2, 5], np.uint64)
    masks = np.array([1, 2, 4, 1, 8, 3], np.uint8)
    ok = np.array([True, True, False, True, True, True])
    s, m = merge_slot_events(slots, masks, ok)
    assert s.tolist() == [1, 2, 5]
    assert m.tolist() == [3, 9, 3]
    assert m.dtype == np.uint8


def test_merge_slot_events_empty_and_all_rejected():
    s, m = merge_slot_events(np.array([3, 4], np.uint64), np.array([1, 2], np.uint8),
                             np.array([False, False]))
    assert s.size == 0 and m.size == 0
    s, m = merge_slot_events(np.array([], np.uint64), np.array([], np.uint8), np.array([], bool))
    assert s.size == 0


def test_merge_slot_events_properties():
    rng = np.random.default_rng(3)
    slots = np.sort(rng.integers(0, 300, 2000)).astype(np.uint64)
    masks = rng.integers(1, 16, 2000).astype(np.uint8)
    ok = rng.random(2000) < 0.7
    s, m = merge_slot_events(slots, masks, ok)
    assert np.all(np.diff(s.astype(np.int64)) > 0)
    for slot, mask in zip(s.tolist(), m.tolist(), strict=True):
        sel = (slots == slot) & ok
        assert mask == np.bitwise_or.reduce(masks[sel])
    assert set(s.tolist()) == set(slots[ok].tolist())
