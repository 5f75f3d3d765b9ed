"""Bob's basis decoder: detector mask → (slot, basis, bit, multi), bit-exact with the model.

The specification is :func:`mozi.sim.model.decode_basis`: clicks in one basis only give that
basis; a cross-basis multi-click takes the random basis bit; both detectors of the chosen basis
clicking take the random value bit; ``multi`` flags more than one click. One 2-bit random word
is consumed for *every* input event, including the (normally impossible) events with an empty
mask, so the gateware and the host stay in lockstep with the random source.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import StreamRegister, saturating_counter

from .layouts import LOST_WIDTH, detection_layout, slot_event_layout

__all__ = ["BasisDecoder"]


class BasisDecoder(wiring.Component):
    """Detector mask → Bob's basis and bit, one event per clock, exactly as ``decode_basis``.

    Parameters
    ----------
    slot_width : int
        Width of the slot index carried through unchanged (default 48).
    channels : int
        Width of the input detector mask (default 4, channel order H, V, D, A). Only the four
        lowest bits take part in the decoding (the model uses ``mask & 0xF``); extra channels,
        if any, are ignored.

    Ports
    -----
    i : In(stream.Signature(slot_event_layout(slot_width, channels)))
        Detection events from the slot assigner: ``slot``, ``mask``, ``lost``.
    rand : In(stream.Signature(2))
        Random words, bit 0 = random value bit, bit 1 = random basis bit. Exactly one word is
        consumed with every input event (they are transferred together), so an event waits
        while ``rand`` is starved.
    o : Out(stream.Signature(detection_layout(slot_width)))
        Decoded detections: ``slot`` unchanged, ``basis`` (0 = Z, 1 = X), ``bit``, ``multi``
        (more than one detector clicked) and ``lost``.
    dropped : Out(32)
        Number of input events with an empty mask since reset (saturating). Such events
        produce no output; their ``lost`` count is not discarded but added (saturating) to the
        ``lost`` of the next emitted detection, as for every receiver core. Counted one clock
        after the event.
    drop : Out(1)
        High for one clock per such event, as ``dropped`` counts it.

    Notes
    -----
    The output is registered (one cycle of latency) and the core sustains one event per clock
    while ``i`` and ``rand`` are valid and ``o`` is ready. The exception is the (normally
    impossible) empty-mask event: from it until the next detection is emitted, the core
    takes two clocks per event, the first to add the carried ``lost`` count in a register
    (this keeps a 16-bit adder and its saturation off the one-clock path).
    """

    def __init__(self, slot_width: int = 48, channels: int = 4):
        if not isinstance(slot_width, int) or isinstance(slot_width, bool) or slot_width < 1:
            raise TypeError(f"slot_width must be a positive integer, not {slot_width!r}")
        if not isinstance(channels, int) or isinstance(channels, bool):
            raise TypeError(f"channels must be an integer, not {channels!r}")
        if channels < 4:
            raise ValueError(f"channels must be at least 4 (H, V, D, A), not {channels}")
        self.slot_width = slot_width
        self.channels = channels
        super().__init__({
            "i": In(stream.Signature(slot_event_layout(slot_width, channels))),
            "rand": In(stream.Signature(2)),
            "o": Out(stream.Signature(detection_layout(slot_width))),
            "dropped": Out(32),
            "drop": Out(1),
        })

    def elaborate(self, platform):
        m = Module()

        mask = Signal(4)
        m.d.comb += mask.eq(self.i.payload.mask[:4])
        z = mask[0:2]
        x = mask[2:4]
        r_bit = self.rand.payload[0]
        r_basis = self.rand.payload[1]
        has_z = z.any()
        has_x = x.any()
        valid = Signal()
        m.d.comb += valid.eq(has_z | has_x)

        basis = Signal()
        m.d.comb += basis.eq(Mux(has_z & has_x, r_basis, has_x))
        pair = Signal(2)
        m.d.comb += pair.eq(Mux(basis, x, z))
        bit = Signal()
        # pair is never 0 for a valid event: 0b01 → 0, 0b10 → 1, 0b11 → random bit.
        m.d.comb += bit.eq(Mux(pair == 0b11, r_bit, pair[1]))
        multi = Signal()
        popcount = sum(mask[k] for k in range(4))
        m.d.comb += multi.eq(popcount > 1)

        # Lost counts of dropped (empty-mask) events, to be added to the next event's. The
        # add is kept off the one-clock path: while `pending`, each event is offered for a
        # clock first, in which `total = carry + lost` is registered, and taken on the next.
        # `gate` (a flip-flop) is ~pending | "total is that of the event on i".
        carry = Signal(LOST_WIDTH)
        pending = Signal()
        total = Signal(LOST_WIDTH + 1)
        gate = Signal(init=1)

        m.submodules.out = out = StreamRegister(self.o.payload.shape())
        wiring.connect(m, out.o, wiring.flipped(self.o))
        can_emit = out.i.ready
        go = Signal()
        m.d.comb += [
            go.eq(can_emit & gate),
            self.i.ready.eq(self.rand.valid & go),
            self.rand.ready.eq(self.i.valid & go),
        ]
        fire = Signal()
        m.d.comb += fire.eq(self.i.valid & self.rand.valid & go)
        m.d.sync += [
            total.eq(carry + self.i.payload.lost),
            gate.eq(Mux(fire, valid, ~pending | self.i.valid)),
        ]
        lost = Signal(LOST_WIDTH)
        m.d.comb += lost.eq(Mux(pending,
                                Mux(total[LOST_WIDTH], (1 << LOST_WIDTH) - 1,
                                    total[:LOST_WIDTH]),
                                self.i.payload.lost))

        # offered whether or not the output register can take it (it loads it when it can):
        # its o.valid stays one LUT after `offered` and `valid`
        offered = Signal()
        m.d.comb += [
            offered.eq(self.i.valid & self.rand.valid & gate),
            out.i.valid.eq(offered & valid),
            out.i.payload.slot.eq(self.i.payload.slot),
            out.i.payload.basis.eq(basis),
            out.i.payload.bit.eq(bit),
            out.i.payload.multi.eq(multi),
            out.i.payload.lost.eq(lost),
        ]
        with m.If(fire & valid):
            m.d.sync += pending.eq(0)
        with m.If(fire & ~valid):
            m.d.sync += [carry.eq(lost), pending.eq(1)]
        drop = self.drop            # counted one clock later, from a register (short paths)
        m.d.sync += drop.eq(fire & ~valid)
        saturating_counter(m, self.dropped, drop)
        return m
