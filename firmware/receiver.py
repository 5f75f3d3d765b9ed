"""The ground-station receiver's protocol cores, chained: pins → detections.

``TimeTagger → SlotAssigner → BasisDecoder``, joined stream to stream with ``connect()``. The
receiver firmware top wraps this with the host link and the register file of
:mod:`mozi.firmware.protocol`; :mod:`bench.synth` places it alone to check that a receiver's
set of cores fits the iCE40UP5K at 48 MHz or more.

Throughput: the tagger takes one event per clock into its FIFO; the slot assigner then needs
``16 + 3 k`` clocks per event (``k`` the bit length of the gap to the previous event in
slots), about 28 clocks at typical detection rates, i.e. ~1.7 M detections/s at 48 MHz — well
above the ~10^5/s of a satellite pass. Bursts above that rate queue in the tagger FIFO; when
it is full, events are dropped and counted (``lost_count``) and reported in-band on the next
event that gets through. Losses with no later event (at the very end of a block) appear only
in ``lost_count``, so the host reads the counters at the end of every block.
"""

from amaranth import Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect
from mozi.hdl.basis_decoder import BasisDecoder
from mozi.hdl.layouts import detection_layout
from mozi.hdl.slot_assigner import SlotAssigner
from mozi.hdl.time_tagger import TimeTagger

__all__ = ["ReceiverCores"]


class ReceiverCores(wiring.Component):
    """TimeTagger, SlotAssigner and BasisDecoder in one stream pipeline.

    Parameters
    ----------
    phases : int
        Samples per clock and detector (1 with plain pins, 2 with DDR inputs, 4/8 with SERDES).
    timestamp_width, slot_width, frac_bits, period_width : int
        As for :class:`~mozi.hdl.time_tagger.TimeTagger` and
        :class:`~mozi.hdl.slot_assigner.SlotAssigner`.

    Ports
    -----
    pins : In(4 * phases)
        Detector samples, channel-major (H, V, D, A), phase 0 earliest.
    dead_time : In(16)
        Per-channel dead time in ticks.
    period, offset, window_start, window_end : In
        Slot assigner registers (fixed point, ``frac_bits`` fractional bits).
    flush : In(1)
        Emit the detection held by the slot assigner (end of a block).
    rand : In(stream.Signature(2))
        Random words for the multi-click rule, one per detection.
    o : Out(stream.Signature(detection_layout(slot_width)))
        Bob's detections: slot, basis, bit, multi-click flag, lost count.
    lost_count, rejected_count, dropped_count : Out(32)
        Events dropped by the tagger (output backed up), rejected by the window, and dropped
        by the decoder (empty mask).
    """

    def __init__(self, *, phases: int = 2, timestamp_width: int = 48, slot_width: int = 48,
                 frac_bits: int = 16, period_width: int = 32):
        self.tagger = TimeTagger(channels=4, phases=phases, timestamp_width=timestamp_width)
        self.assigner = SlotAssigner(timestamp_width=timestamp_width, slot_width=slot_width,
                                     frac_bits=frac_bits, channels=4, period_width=period_width)
        self.decoder = BasisDecoder(slot_width=slot_width, channels=4)
        super().__init__({
            "pins": In(4 * phases),
            "dead_time": In(len(self.tagger.dead_time)),
            "period": In(period_width),
            "offset": In(signed(len(self.assigner.offset))),
            "window_start": In(period_width),
            "window_end": In(period_width),
            "flush": In(1),
            "rand": In(stream.Signature(2)),
            "o": Out(stream.Signature(detection_layout(slot_width))),
            "lost_count": Out(32),
            "rejected_count": Out(32),
            "dropped_count": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.tagger = tagger = self.tagger
        m.submodules.assigner = assigner = self.assigner
        m.submodules.decoder = decoder = self.decoder
        connect(m, tagger=tagger.o, assigner=assigner.i)
        connect(m, assigner=assigner.o, decoder=decoder.i)
        connect(m, wiring.flipped(self.rand), decoder.rand)
        connect(m, decoder.o, wiring.flipped(self.o))
        m.d.comb += [
            tagger.pins.eq(self.pins),
            tagger.dead_time.eq(self.dead_time),
            assigner.period.eq(self.period),
            assigner.offset.eq(self.offset),
            assigner.window_start.eq(self.window_start),
            assigner.window_end.eq(self.window_end),
            assigner.flush.eq(self.flush),
            self.lost_count.eq(tagger.lost_count),
            self.rejected_count.eq(assigner.rejected_count),
            self.dropped_count.eq(decoder.dropped),
        ]
        return m
