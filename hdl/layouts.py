"""Payload layouts shared by the receiver cores, so that ``connect()`` joins them directly.

The receiver chain is ``TimeTagger.o → SlotAssigner.i``, ``SlotAssigner.o → BasisDecoder.i``.
Packet markers live inside the payload: ``lost`` is the number of events dropped (for lack of
room downstream) immediately before this event, saturating at its maximum; a lost count is
never silently discarded by a later core — it is carried forward (summed, saturating) onto the
next event that core emits.
"""

from amaranth.lib import data

__all__ = ["LOST_WIDTH", "detection_layout", "slot_event_layout", "tag_event_layout"]

#: Width of the in-band ``lost`` counter on every receiver stream.
LOST_WIDTH = 16


def tag_event_layout(timestamp_width: int = 48, channels: int = 4) -> data.StructLayout:
    """TimeTagger output: one event per clock at most.

    ``timestamp`` in ticks (coarse counter × phases + phase of the earliest edge, wrapping),
    ``mask`` the channels that fired in that clock, ``lost`` as in the module docstring.
    """
    return data.StructLayout({
        "timestamp": timestamp_width,
        "mask": channels,
        "lost": LOST_WIDTH,
    })


def slot_event_layout(slot_width: int = 48, channels: int = 4) -> data.StructLayout:
    """SlotAssigner output: an accepted detection with its slot index (same-slot events merged)."""
    return data.StructLayout({
        "slot": slot_width,
        "mask": channels,
        "lost": LOST_WIDTH,
    })


def detection_layout(slot_width: int = 48) -> data.StructLayout:
    """BasisDecoder output: Bob's (slot, basis, bit) with the multi-click flag."""
    return data.StructLayout({
        "slot": slot_width,
        "basis": 1,
        "bit": 1,
        "multi": 1,
        "lost": LOST_WIDTH,
    })
