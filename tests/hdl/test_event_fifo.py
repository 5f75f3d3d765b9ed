"""The TimeTagger's FIFO against Amaranth's ``SyncFIFOBuffered``, in lockstep under Verilator.

``_EventFIFO`` accepts a write whenever fewer than ``depth`` words are held, one clock more
often than ``SyncFIFOBuffered`` (which refuses while a word moves from its memory to its
output register). So both FIFOs of one depth are written only when both are ready, and read
with the same ``r_en``; the testbench (``tests/hdl/tb_event_fifo.py``) checks at every clock
that ``r_rdy`` and (while ``r_rdy``) ``r_data`` are equal, that ``_EventFIFO`` is ready
whenever ``SyncFIFOBuffered`` is, and that it is ready exactly while it holds fewer than
``depth`` words — under random enables that fill, drain and hold the FIFOs and visit every
fill level. Depths 2–5 and 8 (the tagger's own is 256) cover a memory deeper than
``depth - 1`` words and one exactly as deep.
"""

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from mozi.hdl.time_tagger import _EventFIFO
from mozi.sim.cocotb_runner import run_cocotb

WIDTH = 8


class FifoPair(wiring.Component):
    """An ``_EventFIFO`` and a ``SyncFIFOBuffered`` of ``depth``, fed the same inputs; a write
    reaches them only when both are ready."""

    w_data: In(WIDTH)
    w_en: In(1)
    r_en: In(1)
    a_w_rdy: Out(1)
    a_r_rdy: Out(1)
    a_r_data: Out(WIDTH)
    b_w_rdy: Out(1)
    b_r_rdy: Out(1)
    b_r_data: Out(WIDTH)

    def __init__(self, depth: int):
        self.depth = depth
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.a = a = _EventFIFO(width=WIDTH, depth=self.depth)
        m.submodules.b = b = SyncFIFOBuffered(width=WIDTH, depth=self.depth)
        for fifo in (a, b):
            m.d.comb += [fifo.w_data.eq(self.w_data),
                         fifo.w_en.eq(self.w_en & a.w_rdy & b.w_rdy), fifo.r_en.eq(self.r_en)]
        m.d.comb += [self.a_w_rdy.eq(a.w_rdy), self.a_r_rdy.eq(a.r_rdy),
                     self.a_r_data.eq(a.r_data), self.b_w_rdy.eq(b.w_rdy),
                     self.b_r_rdy.eq(b.r_rdy), self.b_r_data.eq(b.r_data)]
        return m


@pytest.mark.cocotb
@pytest.mark.parametrize("depth", [2, 3, 4, 5, 8])
def test_event_fifo_equals_sync_fifo_buffered(depth):
    run_cocotb(FifoPair(depth), "tests.hdl.tb_event_fifo", toplevel=f"fifopair{depth}",
               params={"depth": depth})
