"""Saturating event counters kept in block RAM, read back as consistent snapshots.

A role top counts a dozen kinds of events in 32-bit saturating registers (``RX_*``,
``LINK_*``). As flip-flops each costs 33 logic cells and 32 inputs of the link's read
multiplexer — on the iCE40UP5K, where the receiver top must fit, eleven of them cost about
700 cells. :class:`CounterBank` keeps the totals in one block RAM instead and visits them in
turn, one per clock: while a counter waits for its visit its increments add up in a narrow
``pending`` register, wide enough for what ``N`` clocks can bring. A visit reads the total,
holds it a clock, adds the pending amount (saturating) and writes it back; a read asks for
the total of one counter and gets it from its next visit, so a value read is the exact count
at that clock.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import check_int, collision_free_read

__all__ = ["CounterBank"]


class CounterBank(wiring.Component):
    """``len(increments)`` saturating counters of ``width`` bits in one memory.

    Parameters
    ----------
    increments : sequence of int
        Width of each counter's increment: counter ``k`` adds ``inc[k]`` every clock.
    cleared : sequence of bool
        Which counters ``clear`` resets to 0 (the others survive it).
    width : int
        Bits of every total; a total saturates at ``2**width - 1``.

    Ports
    -----
    inc0, inc1, … : In(increments[k])
        The increments; :attr:`inc` lists them.
    clear : In(1)
        Strobe: the ``cleared`` counters restart from 0 (increments of this clock are lost,
        as under a reset).
    rd_index : In(range(count)), rd_req : In(1)
        While ``rd_req`` is high, ask for the total of counter ``rd_index``.
    rd_valid : Out(1), rd_value : Out(width)
        ``rd_value`` is the total of counter ``rd_index`` in the clock ``rd_valid`` is high
        (within ``count`` clocks of ``rd_req``, combinationally from both): every increment
        presented before that clock and after the last ``clear`` before it.
    """

    def __init__(self, increments, *, cleared=None, width: int = 32):
        self.widths = [check_int("increment width", w, 1) for w in increments]
        if not self.widths:
            raise ValueError("a counter bank needs at least one counter")
        self.cleared = [bool(c) for c in (cleared if cleared is not None
                                           else [True] * len(self.widths))]
        if len(self.cleared) != len(self.widths):
            raise ValueError("cleared needs one entry per counter")
        self.width = check_int("width", width, 1)
        # a visit writes its total two clocks after reading it: three counters at least, so
        # that the next read of the same counter sees the write and no read meets a write
        self.count = max(len(self.widths), 3)
        super().__init__({
            **{f"inc{k}": In(w) for k, w in enumerate(self.widths)},
            "clear": In(1), "rd_index": In(range(self.count)), "rd_req": In(1),
            "rd_valid": Out(1), "rd_value": Out(width),
        })
        self.inc = [getattr(self, f"inc{k}") for k in range(len(self.widths))]

    def pending_width(self, k: int) -> int:
        """Bits of counter ``k``'s pending amount: ``count`` clocks of its largest increment."""
        return (self.count * ((1 << self.widths[k]) - 1)).bit_length()

    def elaborate(self, platform):
        m = Module()
        N, W = self.count, self.width
        m.submodules.totals = mem = Memory(shape=W, depth=N, init=[],
                                           attrs={"ram_style": "block"})
        wr = mem.write_port()
        rd, rd_data = collision_free_read(m, mem)   # idx3 (written) is never idx (read)

        # A visit reads counter idx's total (stage 1), holds it in a fabric register (stage
        # 2: block-RAM clock-to-out is 5.6 ns on the ECP5), then adds its pending amount and
        # writes the sum back (stage 3); pending restarts in stage 3.
        # Out of reset the pipeline is already full — visits of counters 2, 1 and 0 in stages
        # 1, 2 and 3, whose totals are all 0 (every total is stale then) — so counter k is
        # visited, and can be read, within N clocks of any clock, the first one included.
        idx = Signal(range(N), init=2)
        idx2 = Signal(range(N), init=1)
        idx3 = Signal(range(N), init=0)
        hot = Signal(N, init=1 << 2)             # idx, one-hot
        hot3 = Signal(N)                         # idx3, one-hot
        held = Signal(W)                         # (0 out of reset: idx2's total, stale)
        hot2 = Signal(N)                         # idx2, one-hot
        m.d.sync += [idx.eq(Mux(idx == N - 1, 0, idx + 1)), hot.eq(hot.rotate_left(1)),
                     idx2.eq(idx), idx3.eq(idx2)]
        m.d.comb += [rd.addr.eq(idx), hot2.eq(hot.rotate_right(1)),
                     hot3.eq(hot.rotate_right(2))]

        cleared = Const(sum(1 << k for k, c in enumerate(self.cleared) if c), N)
        stale = Signal(N, init=(1 << N) - 1)     # totals in memory to be read as 0
        # stage 2 holds idx2's total, or 0 if it is stale (or a clear makes it so now): the
        # adder of stage 3 starts at a register
        m.d.sync += held.eq(Mux((stale & hot2).any() | (self.clear & (cleared & hot2).any()),
                                0, rd_data))
        amt = Const(0, 1)
        for k in range(len(self.widths)):
            pending = Signal(self.pending_width(k), name=f"pending{k}")
            m.d.sync += pending.eq(Mux(hot3[k], 0, pending) + self.inc[k])
            if self.cleared[k]:
                with m.If(self.clear):
                    m.d.sync += pending.eq(0)
            amt = amt | (pending & hot3[k].replicate(len(pending)))

        total = Signal(W + 1)
        value = Signal(W)
        m.d.comb += [
            total.eq(held + amt),
            value.eq(Mux(total[W], (1 << W) - 1, total[:W])),
            wr.addr.eq(idx3), wr.data.eq(value), wr.en.eq(1),
        ]
        # a clear wins over this clock's write (which is then of a total from before it)
        m.d.sync += stale.eq((stale & ~hot3) | Mux(self.clear, cleared, 0))
        m.d.comb += [self.rd_valid.eq(self.rd_req & (idx3 == self.rd_index)),
                     self.rd_value.eq(value)]
        return m
