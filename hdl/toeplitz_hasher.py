"""Streaming GF(2) Toeplitz hasher with runtime n and m (privacy amplification in gateware).

Computes ``y = T x`` with ``T[i, j] = s[i - j + n - 1]`` exactly as
:func:`mozi.sim.model.toeplitz_hash` (see DESIGN.md), for any ``1 <= n <= max_n`` and
``1 <= m <= max_m`` chosen per job.

Data flow
---------
A *job* is one ``cfg`` beat ``(n, m)``, then one seed packet on ``seed`` (``n + m - 1`` bits,
``lanes`` bits per beat, ``last`` on the final beat), then one input packet on ``x`` (``n``
bits, ``lanes`` per beat, ``last`` on the final beat). The core answers with ``m`` output bits
on ``y`` (``lanes`` per beat, ``last`` on the final beat) and then exactly one ``status`` beat.
Within every beat bit ``l`` is element ``beat * lanes + l`` (LSB first); bits past the end of
a packet in its final beat are ignored on input and are 0 on output.

The seed is buffered once per job in a :class:`~amaranth.lib.memory.Memory`, stored already
re-aligned to ``n mod lanes`` so that every later read is one aligned word, and so is ``x``,
which the core takes (at up to one beat per clock) right after the seed. The column view
``y = XOR_{j : x_j = 1} s[n-1-j : n-1-j+m]`` is used: every pass replays ``x`` from its buffer
in natural order while a window register of the seed slides *down* by ``lanes`` bits per
clock, and ``tile`` accumulators (rows ``p*tile … p*tile+tile-1`` of pass ``p``) XOR in every
selected window. Both buffers are read through a prefetching streamer (memory → four
registers → FIFO), so that block-RAM clock-to-out never shares a clock period with the
datapath, and each pass first lets both streamers fill their FIFOs, so that the pass then
runs without a single stall: the datapath needs no shift enable, and its inputs pass from
block to block along free-running registers. After each pass the accumulators shift out on
``y`` as a wave and are left cleared.

Cycle count of a job when every stream is always valid/ready (verified by the testbench)::

    cycles = 4 + ceil((n + m - 1) / lanes) + ceil(n / lanes)
             + passes * (ceil(n / lanes) + 2 * tile / lanes + PRIME_CYCLES + 2 + settle)
             + final_beats

counted from the cycle ``cfg`` is accepted to the cycle ``status`` is accepted, inclusive,
with ``passes = ceil(m / tile)``, ``settle <= tile / lanes + 3`` and ``final_beats``
the ``y`` beats of the final pass (see :func:`job_cycles`).

Errors
------
Nothing is dropped silently. The ``status`` beat carries a :class:`ToeplitzStatus`; when it
is not ``OK`` no ``y`` beat is produced for the job, and the core still consumes exactly one
seed packet and one ``x`` packet (up to their ``last``), so the streams stay framed and the
next job starts cleanly.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = [
    "ToeplitzHasher",
    "ToeplitzStatus",
    "bits_layout",
    "hash_config_layout",
    "hash_status_layout",
    "job_cycles",
]


class ToeplitzStatus(enum.Enum, shape=3):
    """Outcome of one hashing job, reported on ``status``.

    The first error detected in a job wins.
    """

    #: The ``m`` output bits were sent on ``y``.
    OK = 0
    #: ``n`` was 0 or larger than ``max_n``.
    BAD_N = 1
    #: ``m`` was 0 or larger than ``max_m``.
    BAD_M = 2
    #: The seed packet ended (``last``) before ``ceil((n + m - 1) / lanes)`` beats.
    SEED_SHORT = 3
    #: The seed packet had more than ``ceil((n + m - 1) / lanes)`` beats.
    SEED_LONG = 4
    #: The ``x`` packet ended (``last``) before ``ceil(n / lanes)`` beats.
    X_SHORT = 5
    #: The ``x`` packet had more than ``ceil(n / lanes)`` beats.
    X_LONG = 6


def hash_config_layout(max_n: int, max_m: int) -> data.StructLayout:
    """``cfg`` payload: the job's input length ``n`` (low bits) and output length ``m``."""
    return data.StructLayout({
        "n": unsigned(max_n.bit_length()),
        "m": unsigned(max_m.bit_length()),
    })


def bits_layout(lanes: int) -> data.StructLayout:
    """``seed``, ``x`` and ``y`` payload: ``lanes`` bits (bit ``l`` = element ``l``), ``last``."""
    return data.StructLayout({"data": lanes, "last": 1})


def hash_status_layout() -> data.StructLayout:
    """``status`` payload: the job's :class:`ToeplitzStatus`."""
    return data.StructLayout({"status": ToeplitzStatus})


def job_cycles(n: int, m: int, *, lanes: int, tile: int, karatsuba_base: int = 8) -> int:
    """Cycles of one successful job with every stream always valid/ready.

    From the cycle ``cfg`` is accepted to the cycle ``status`` is accepted, both included::

        4 + ceil((n+m-1)/lanes) + ceil(n/lanes)
          + passes * (ceil(n/lanes) + 2*tile/lanes + PRIME_CYCLES + 2 + settle)
          + final_beats

    with ``passes = ceil(m/tile)``: ``cfg``, the seed beats, one cycle to store the seed's
    last word, the ``x`` beats (stored whole), then per pass one cycle to start the buffer
    streamers, :data:`PRIME_CYCLES`, ``tile/lanes + 1`` window fill cycles, the ``x`` beats,
    ``settle`` cycles for the last beat to reach every block (2 without a Karatsuba split;
    with one, ``lanes > karatsuba_base``, ``tile/lanes + 2`` since the last block runs
    ``tile/lanes - 1`` cycles behind the first and the products are registered, ``+ 1``
    with two levels or more, whose recombination is registered halfway) and ``tile/lanes``
    dump cycles; at the end the dump wave brings the final pass's ``final_beats`` y beats out
    of block 0 and the output FIFO in ``final_beats + 2`` cycles, the last one ``status``'s.
    The testbench checks the RTL against this count.
    """
    passes = -(-m // tile)
    blocks = tile // lanes
    settle = _settle_cycles(blocks, _split_levels(lanes, karatsuba_base))
    n_beats = -(-n // lanes)
    final_beats = -(-m // lanes) - (passes - 1) * blocks   # y beats of the final pass
    return (4 + -(-(n + m - 1) // lanes) + n_beats
            + passes * (n_beats + 2 * blocks + PRIME_CYCLES + 2 + settle) + final_beats)


def _settle_cycles(blocks: int, levels: int) -> int:
    """Cycles from a pass's last x beat until the top block may dump (see ``SETTLE``): 2
    without a split; with one, the last block's skew (``blocks - 1``), the leaf registers and
    the products, and the halfway recombination when there are two levels or more."""
    if levels == 0:
        return 2
    return blocks + 2 + (levels >= 2)


def _split_levels(k: int, base: int) -> int:
    """How many times :func:`toeplitz_block` halves a ``k``-lane block."""
    levels = 0
    while _splits(k, base):
        k //= 2
        levels += 1
    return levels


def _splits(k: int, base: int) -> bool:
    return k > base and k % 2 == 0


def split_seed(w, k: int, *, base: int, bind=lambda v: v) -> list:
    """Seeds of the leaf blocks of a ``k × k`` Toeplitz block with seed ``w`` (see
    :func:`toeplitz_block`), in the order :func:`combine_leaves` expects."""
    if not _splits(k, base):
        return [w]
    h = k // 2
    a, b, c = w[h:h + k - 1], w[:k - 1], w[k:2 * k - 1]
    return (split_seed(a, h, base=base, bind=bind)
            + split_seed(bind(b ^ a), h, base=base, bind=bind)
            + split_seed(bind(c ^ a), h, base=base, bind=bind))


def split_x(x, k: int, *, base: int, bind=lambda v: v) -> list:
    """The vectors the leaf blocks of :func:`split_seed` multiply, in the same order."""
    if not _splits(k, base):
        return [x]
    h = k // 2
    x0, x1 = x[:h], x[h:]
    return (split_x(bind(x0 ^ x1), h, base=base, bind=bind)
            + split_x(x1, h, base=base, bind=bind)
            + split_x(x0, h, base=base, bind=bind))


def leaf_product(w, x, *, gate):
    """Direct product of a square Toeplitz block (seed ``w``) with ``x``: ``k**2`` AND terms."""
    k = len(x)
    out = None
    for lane in range(k):
        term = gate(w[k - 1 - lane:2 * k - 1 - lane], x[lane])
        out = term if out is None else out ^ term
    return out


def combine_leaves(products: list, k: int, *, base: int, cat, bind=lambda v: v):
    """The ``k``-bit block product from its leaf products (consumed from the front)."""
    if not _splits(k, base):
        return products.pop(0)
    h = k // 2
    p0 = combine_leaves(products, h, base=base, cat=cat, bind=bind)
    p1 = combine_leaves(products, h, base=base, cat=cat, bind=bind)
    p2 = combine_leaves(products, h, base=base, cat=cat, bind=bind)
    return bind(cat(p0 ^ p1, p0 ^ p2))


def toeplitz_block(w, x, *, base: int, gate, cat, bind=lambda v: v):
    """Product of a square Toeplitz block with a vector, by Karatsuba-style splitting.

    With ``k = len(x)`` and ``len(w) = 2k - 1`` returns ``out`` (``k`` bits) with
    ``out[t] = XOR_l x[l] & w[t - l + k - 1]``. Works on anything that slices and XORs like a
    bit vector; ``gate(v, b)`` is ``v`` AND the single bit ``b``, ``cat(lo, hi)`` joins two
    vectors and ``bind(v)`` names an intermediate (a wire in gateware, so that it is built
    once however often it is sliced), so the same code builds gateware (Amaranth values) and
    is checked with numpy.

    Blocks of ``k <= base`` (or odd ``k``) are computed directly, ``k**2`` AND terms. A larger
    block splits in two halves (``A`` the diagonal sub-blocks, ``B`` above, ``C`` below)::

        [out0]   [A B] [x0]      P0 = A (x0 + x1)      out0 = P0 + P1
        [out1] = [C A] [x1]      P1 = (B + A) x1       out1 = P0 + P2
                                 P2 = (C + A) x0

    where every sum of two Toeplitz blocks is again Toeplitz (its seed is the XOR of theirs),
    so three half-size products replace four: ``d`` levels cost ``(3/4)**d`` of the AND terms
    plus ``O(k)`` XORs per level. The three steps (:func:`split_seed` and :func:`split_x`, the
    :func:`leaf_product` of each leaf, :func:`combine_leaves`) are separate functions so that
    the gateware can register between them.
    """
    k = len(x)
    seeds = split_seed(w, k, base=base, bind=bind)
    xs = split_x(x, k, base=base, bind=bind)
    products = [bind(leaf_product(ws, xv, gate=gate)) for ws, xv in zip(seeds, xs, strict=True)]
    return combine_leaves(products, k, base=base, cat=cat, bind=bind)


def _below(value, width: int):
    """``width`` bits, bit ``i`` set when ``i < value``: a thermometer code made of equality
    decoders (small LUTs) rather than ``width`` magnitude comparators (carry chains)."""
    bits = len(value)
    if bits <= 4:
        return Cat(*[Cat(*[value == j for j in range(i + 1, 2 ** bits)]).any()
                     for i in range(width)])
    lo_bits = bits // 2
    lo, hi = value[:lo_bits], value[lo_bits:]
    lo_below = _below(lo, 2 ** lo_bits)
    hi_below = _below(hi, 2 ** (bits - lo_bits))
    return Cat(*[hi_below[i >> lo_bits] | ((hi == (i >> lo_bits)) & lo_below[i & ~(-1 << lo_bits)])
                 for i in range(width)])


def _last_beat_mask(rem, lanes: int):
    """Valid lanes of a packet's last beat when its length is ``rem`` (mod ``lanes``)."""
    return Mux(rem == 0, ~0, _below(rem, lanes))


def _buffer_port(lanes: int, addr_width: int, count_max: int) -> wiring.Signature:
    """What :class:`_HashController` drives of a :class:`_LaneBuffer`: its write port and the
    start of a read stream (``count`` words from ``start_addr``)."""
    return wiring.Signature({
        "w_addr": Out(addr_width),
        "w_data": Out(lanes),
        "w_en": Out(1),
        "start": Out(1),
        "start_addr": Out(addr_width),
        "count": Out(range(count_max + 1)),
    })


def _datapath_port(lanes: int) -> wiring.Signature:
    """What :class:`_HashController` drives of a :class:`_TileDatapath`, and what it reads back."""
    return wiring.Signature({
        "shift": Out(1),            # take a seed chunk this clock (FILL and RUN)
        "consume": Out(1),          # an x beat enters the products this clock (RUN)
        "dump": Out(1),             # shift the accumulators down by one row block
        "emit": Out(1),             # ... and send the rows that leave block 0 on y
        "last": Out(1),             # ... as y's last beat
        "last_mask": Out(lanes),    # lanes of y's last beat inside m
        "room": In(1),              # the output FIFO has room for one more emitted beat
        "drained": In(1),           # every emitted beat has left on y
    })


class _LaneBuffer(wiring.Component):
    """Buffer memory with a registered write port and a prefetching read streamer.

    With ``sliced`` the memory is one ``slice_width``-bit :class:`~amaranth.lib.memory.Memory`
    per ``slice_width`` lanes and ``bank_depth`` words (one ECP5 block RAM each when
    ``slice_width * bank_depth`` is 16384), every bank with its own output register, so that
    block-RAM clock-to-out (≈ 6 ns on ECP5, no output register is inferred) only has to reach
    a neighbouring flip-flop; otherwise it is one ``lanes``-bit memory. The bank multiplexer
    and a second register follow, then a small FIFO, so no memory path shares a clock period
    with the consumer's logic.

    Ports
    -----
    ctl : In(_buffer_port(...))
        ``w_addr``, ``w_data``, ``w_en``: the write port, applied two clocks later.
        ``start``: begin streaming ``count`` words from ``start_addr``, in descending order if
        the buffer was built ``descending``; the previous stream must have been read whole.
        Addresses wrap modulo ``2**len(w_addr)``.
    o : Out(stream.Signature(lanes))
        The words, in order.
    """

    #: Clocks from a word's issue to its FIFO write: the memory's read, q1, q1b, q2 and q3.
    LATENCY = 5
    #: Clocks from a FIFO write to the word at the FIFO's output (``SyncFIFOBuffered``).
    FIFO_LATENCY = 2
    #: FIFO words, the fewest for a stream read at one word per clock without running dry
    #: once it has been primed (see :data:`PRIME_CYCLES`): the word issued after the first
    #: read (a clock later, when the FIFO's ``level`` shows the read) reaches the output
    #: ``LATENCY + FIFO_LATENCY`` clocks after that, while the consumer reads the FIFO's words.
    FIFO_DEPTH = LATENCY + FIFO_LATENCY + 1

    def __init__(self, lanes: int, depth: int, count_max: int, *, descending: bool,
                 sliced: bool, bank_depth: int, slice_width: int):
        self.lanes = lanes
        self.depth = depth
        self.descending = descending
        self.sliced = sliced
        self.bank_depth = bank_depth
        self.slice_width = slice_width
        super().__init__({
            "ctl": In(_buffer_port(lanes, max(ceil_log2(depth), 1), count_max)),
            "o": Out(stream.Signature(lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        ctl = self.ctl
        # Write pipeline: two registers, so that the write port can sit anywhere on the chip
        # (a wide buffer's block RAMs fill whole rows of them). The second stage decodes the
        # bank enables.
        w_addr = Signal.like(ctl.w_addr)
        w_data = Signal(L)
        w_en = Signal()
        m.d.sync += [w_addr.eq(ctl.w_addr), w_data.eq(ctl.w_data), w_en.eq(ctl.w_en)]
        w_addr2 = Signal.like(ctl.w_addr)
        w_data2 = Signal(L)
        m.d.sync += [w_addr2.eq(w_addr), w_data2.eq(w_data)]

        r_addr = Signal.like(ctl.start_addr)
        left = Signal.like(ctl.count)
        # Read pipeline (LATENCY): memory data (1) → q1 (2) → q1b (3) → q2 (4) → q3 (5) →
        # FIFO. A sliced buffer is made of banks of bank_depth words per slice of slice_width
        # lanes, each one block RAM with its own q1 and q1b registers (two hops to cross the
        # chip from a block RAM, whose clock-to-out alone takes most of a period); the bank
        # multiplexer sits between q1b and q2, and q3 carries the word to the consumer.
        # Data registers need no reset (``valid`` says what they hold), which keeps a LUT out
        # of the path from each block RAM to its register.
        q2 = Signal(L, reset_less=True)
        q3 = Signal(L, reset_less=True)
        m.d.sync += q3.eq(q2)
        if self.sliced:
            bank_bits = ceil_log2(self.bank_depth)
            banks = -(-self.depth // self.bank_depth)
            hi = Signal(max(len(r_addr) - bank_bits, 1))
            hi_d1 = Signal.like(hi, reset_less=True)
            hi_d2 = Signal.like(hi, reset_less=True)
            hi_d3 = Signal.like(hi, reset_less=True)
            m.d.comb += hi.eq(r_addr[bank_bits:])
            m.d.sync += [hi_d1.eq(hi), hi_d2.eq(hi_d1), hi_d3.eq(hi_d2)]
            bank_en = Signal(banks)
            m.d.sync += bank_en.eq(Cat(w_en & (w_addr[bank_bits:] == bank)
                                       for bank in range(banks)))
            W = self.slice_width
            for sl in range(L // W):
                bits = slice(sl * W, sl * W + W)
                q1s = []
                for bank in range(banks):
                    depth = min(self.bank_depth, self.depth - bank * self.bank_depth)
                    mem = Memory(shape=W, depth=depth, init=[])
                    m.submodules[f"mem{sl}_{bank}"] = mem
                    wp = mem.write_port()
                    rp = mem.read_port()
                    q1 = Signal(W, name=f"q1_{sl}_{bank}", reset_less=True)
                    q1b = Signal(W, name=f"q1b_{sl}_{bank}", reset_less=True)
                    m.d.comb += [
                        wp.addr.eq(w_addr2[:bank_bits]),
                        wp.data.eq(w_data2[bits]),
                        wp.en.eq(bank_en[bank]),
                        rp.addr.eq(r_addr[:bank_bits]),
                    ]
                    m.d.sync += [q1.eq(rp.data), q1b.eq(q1)]
                    q1s.append(q1b)
                with m.Switch(hi_d3):
                    for bank, q1 in enumerate(q1s):
                        with m.Case(bank):
                            m.d.sync += q2[bits].eq(q1)
                    with m.Default():
                        m.d.sync += q2[bits].eq(0)
        else:
            w_en2 = Signal()
            m.d.sync += w_en2.eq(w_en)
            mem = Memory(shape=L, depth=self.depth, init=[])
            m.submodules.mem = mem
            wp = mem.write_port()
            rp = mem.read_port()
            q1 = Signal(L, reset_less=True)
            q1b = Signal(L, reset_less=True)
            m.d.comb += [
                wp.addr.eq(w_addr2),
                wp.data.eq(w_data2),
                wp.en.eq(w_en2),
                rp.addr.eq(r_addr),
            ]
            m.d.sync += [q1.eq(rp.data), q1b.eq(q1), q2.eq(q1b)]

        m.submodules.fifo = fifo = SyncFIFOBuffered(width=L, depth=self.FIFO_DEPTH)
        valid = Signal(self.LATENCY)   # issued 1 … LATENCY cycles ago
        issue = Signal()
        in_flight = sum(valid[i] for i in range(self.LATENCY))
        m.d.comb += issue.eq((left != 0) & (fifo.level + in_flight < self.FIFO_DEPTH))
        m.d.sync += valid.eq(Cat(issue, valid[:-1]))
        with m.If(ctl.start):
            m.d.sync += [r_addr.eq(ctl.start_addr), left.eq(ctl.count)]
        with m.Elif(issue):
            m.d.sync += [
                r_addr.eq(r_addr - 1 if self.descending else r_addr + 1),
                left.eq(left - 1),
            ]
        m.d.comb += [
            fifo.w_data.eq(q3),
            fifo.w_en.eq(valid[-1]),
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        return m


#: Clocks a pass waits after starting its two buffer streamers before it reads them, the
#: fewest for which neither runs dry while the pass takes one word from each per clock: the
#: streamer issues its first word the clock after its start, and a word reaches the FIFO's
#: output ``LATENCY + FIFO_LATENCY`` clocks after its issue. Once the first word is there in
#: time, so is every later one, because the FIFO's :attr:`~_LaneBuffer.FIFO_DEPTH` covers
#: the refill.
PRIME_CYCLES = _LaneBuffer.LATENCY + _LaneBuffer.FIFO_LATENCY


class _TileDatapath(wiring.Component):
    """The ``tile``-row product and its accumulators: each clock a seed chunk enters the
    seed window and an ``x`` beat (or 0) is multiplied with it into every row block; a dump
    shifts the accumulators out on ``y`` by ``lanes`` rows per clock.

    It has no control inputs while a pass runs: both its input streams are read every clock
    the controller says (``shift``, ``consume``) without looking at their ``valid`` — the
    controller primes the buffers so that they never run dry — so the seed window slides one
    chunk every clock and the blocks' inputs pass along free-running registers. Its
    registers have no reset: after a reset the controller dumps it :attr:`clear_dumps` times.
    The only control is the dump, which travels along the blocks as a wave through one
    register per block, so that no net spans the array.

    Ports
    -----
    seed, x : In(stream.Signature(lanes))
        The seed chunks (from the top of the pass's seed downwards) and the ``x`` beats.
    ctl : In(_datapath_port(lanes))
        The controller's commands, and the output FIFO's ``room`` and ``drained``.
    y : Out(stream.Signature(bits_layout(lanes)))
        The rows shifted out of block 0 by an ``emit`` dump, through a FIFO of
        :attr:`y_depth` beats.
    """

    def __init__(self, lanes: int, tile: int, karatsuba_base: int):
        self.lanes = lanes
        self.tile = tile
        self.karatsuba_base = karatsuba_base
        #: Row blocks of the tile, ``lanes`` rows each.
        self.blocks = tile // lanes
        #: Seed chunks a pass reads before its first ``x`` beat (the controller's ``FILL``), so
        #: that every block's products see seed bits of this pass.
        self.window_chunks = self.blocks + 1
        #: Times the Karatsuba split halves a ``lanes``-wide block.
        self.levels = levels = _split_levels(lanes, karatsuba_base)
        #: Clocks from an ``x`` beat's entry until its product is in the top block's
        #: accumulators: the end of a pass waits this long before the dump.
        self.settle = _settle_cycles(self.blocks, levels)
        #: Dumps that clear every accumulator after a reset (``x`` enters as 0 from the
        #: clock after it): the top block's products are 0 from ``settle`` clocks on, and
        #: each dump moves the zeros that enter at the top one block down, so block 0 has
        #: them after ``blocks`` dumps.
        self.clear_dumps = max(self.settle, self.blocks)
        #: Output FIFO beats: one pass's dump wave emits at most ``blocks`` beats, each of
        #: which reaches the FIFO ``blocks`` clocks after its dump, so with a ready sink the
        #: dump never waits for room.
        self.y_depth = self.blocks
        super().__init__({
            "seed": In(stream.Signature(lanes)),
            "x": In(stream.Signature(lanes)),
            "ctl": In(_datapath_port(lanes)),
            "y": Out(stream.Signature(bits_layout(lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        L, T, B = self.lanes, self.tile, self.blocks
        ctl = self.ctl
        levels = self.levels

        window = Signal(T + 2 * L, reset_less=True)
        x_reg = Signal(L, reset_less=True)            # x beat that entered the cycle before
        seed_in = Signal(L, reset_less=True)          # the chunk shifted in
        x_in = Signal(L, reset_less=True)             # x beat, 0 if none
        m.d.comb += [
            self.seed.ready.eq(ctl.shift),
            self.x.ready.eq(ctl.consume),
        ]
        m.d.sync += [
            seed_in.eq(self.seed.payload),
            x_in.eq(Mux(ctl.consume, self.x.payload, 0)),
        ]

        # Seed window: each chunk from the seed streamer enters at the bottom. Chunks come
        # from descending addresses and wrap harmlessly below 0: such bits only ever meet
        # x bits past n, which are 0. Between passes the window fills with whatever the
        # streamer shows; the pass's first tile/lanes + 1 chunks replace all that is read.
        m.d.sync += window.eq(Cat(seed_in, window[:-L]))

        # Products. x_reg holds the beat that entered the datapath (x_in) one cycle
        # earlier, when the window was one chunk higher:
        # acc[t] ^= XOR_l x[l] & s[D + t - l] = window[t - l + 2L - 1]. Rows jL … jL+L-1 are
        # one square Toeplitz block whose seed is window[jL + L : jL + 3L - 1].
        def bind(value):
            wire = Signal(len(value))
            m.d.comb += wire.eq(value)
            return wire

        def gate(vector, bit):
            return vector & bit.replicate(len(vector))

        base = self.karatsuba_base
        m.d.sync += x_reg.eq(x_in)
        if levels:
            # Each block's product is split by Karatsuba (toeplitz_block) into leaf products
            # of leaf seeds (XORs of seed bits) and leaf x vectors (XORs of x bits), which are
            # registered, multiplied, registered again and recombined (with a register
            # halfway up when there are two levels or more) into mac, then accumulated. As
            # the window slides by one block per clock, block j's leaf seeds are block j-1's
            # of the clock before: they are computed once, for the block entering at the
            # bottom, and then passed along the blocks. Nothing is broadcast to all blocks:
            # block j runs j cycles behind block 0 (a wavefront), receiving the x leaves and
            # the leaf seeds from block j-1, the leaf seeds through two registers (block j-1
            # has already moved on by one chunk when block j takes them).
            entering = split_seed(window[:2 * L - 1], L, base=base, bind=bind)
            widths = [len(v) for v in entering]
            x_leaves = split_x(x_in, L, base=base, bind=bind)
            x_widths = [len(v) for v in x_leaves]   # also the widths of the leaf products

            def unpack(vector, sizes):
                parts, pos = [], 0
                for size in sizes:
                    parts.append(vector[pos:pos + size])
                    pos += size
                return parts

            blocks = []
            seeds_in, x_in_leaves = Cat(*entering), Cat(*x_leaves)
            for j in range(B):
                leaf_seeds = Signal(sum(widths), name=f"leaf_seeds{j}", reset_less=True)
                leaf_x = Signal(sum(x_widths), name=f"leaf_x{j}", reset_less=True)
                products = Signal(sum(x_widths), name=f"products{j}", reset_less=True)
                m.d.sync += [
                    leaf_seeds.eq(seeds_in),
                    leaf_x.eq(x_in_leaves),
                    products.eq(Cat(*[
                        leaf_product(ws, xv, gate=gate)
                        for ws, xv in zip(unpack(leaf_seeds, widths),
                                          unpack(leaf_x, x_widths), strict=True)])),
                ]
                leaves = unpack(products, x_widths)
                top_base = base
                if levels >= 2:
                    # register the recombination halfway up as well
                    lower = (levels + 1) // 2
                    top_base = (L >> levels) << lower
                    parts = [combine_leaves(leaves, top_base, base=base, cat=Cat, bind=bind)
                             for _ in range(3 ** (levels - lower))]
                    partial = Signal(top_base * len(parts), name=f"partial{j}",
                                     reset_less=True)
                    m.d.sync += partial.eq(Cat(*parts))
                    leaves = unpack(partial, [top_base] * len(parts))
                blocks.append(combine_leaves(leaves, L, base=top_base, cat=Cat, bind=bind))
                assert not leaves
                # inputs of block j+1
                seeds_prev = Signal.like(leaf_seeds, name=f"leaf_seeds{j}_prev")
                m.d.sync += seeds_prev.eq(leaf_seeds)
                seeds_in, x_in_leaves = seeds_prev, leaf_x
        else:
            blocks = [leaf_product(window[j * L + L:j * L + 3 * L - 1], x_reg, gate=gate)
                      for j in range(B)]

        # Accumulators, one L-row block per row block of the tile. A dump shifts every block
        # down by one (block 0 leaves on y, zeros enter at the top) as a wave from the top:
        # block j shifts one cycle after block j+1 and so takes block j+1's rows as they were
        # a cycle earlier (acc_above), which is exactly what block j+1 held before its own
        # shift. The dump, emit and last flags travel down with the wave.
        dump_wave = Signal(B)       # bit j: block j shifts this cycle
        emit_wave = Signal(B)       # ... and (at block 0) the rows leave on y
        last_wave = Signal(B)       # ... as y's last beat
        m.d.sync += [
            dump_wave.eq(Cat(dump_wave[1:], ctl.dump)),
            emit_wave.eq(Cat(emit_wave[1:], ctl.dump & ctl.emit)),
            last_wave.eq(Cat(last_wave[1:], ctl.last)),
        ]
        acc = [Signal(L, name=f"acc{j}", reset_less=True) for j in range(B)]
        for j in range(B):
            mac = Signal(L, name=f"mac{j}", reset_less=True)
            m.d.sync += mac.eq(blocks[j])
            if j + 1 < B:
                acc_above = Signal(L, name=f"acc{j + 1}_prev", reset_less=True)
                m.d.sync += acc_above.eq(acc[j + 1])
            else:
                acc_above = 0
            with m.If(dump_wave[j]):
                m.d.sync += acc[j].eq(acc_above)
            with m.Else():
                m.d.sync += acc[j].eq(acc[j] ^ mac)

        # Output: L rows per beat, rows past m read as 0. The rows leaving block 0 go through
        # a FIFO with room for every beat of the dump wave in flight (pending), so y.ready
        # never reaches the accumulators.
        m.submodules.y_fifo = y_fifo = SyncFIFO(width=L + 1, depth=self.y_depth)
        pending = Signal(range(self.y_depth + 1))     # emitted, not yet in the FIFO
        y_data = Signal(L)
        m.d.sync += pending.eq(pending + (ctl.dump & ctl.emit) - emit_wave[0])
        m.d.comb += [
            y_data.eq(acc[0] & Mux(last_wave[0], ctl.last_mask, ~0)),
            y_fifo.w_en.eq(emit_wave[0]),
            y_fifo.w_data.eq(Cat(y_data, last_wave[0])),
            ctl.room.eq(y_fifo.level + pending < self.y_depth),
            ctl.drained.eq(~y_fifo.r_rdy & (pending == 0)),
            self.y.valid.eq(y_fifo.r_rdy),
            self.y.payload.eq(y_fifo.r_data),
            y_fifo.r_en.eq(self.y.ready),
        ]
        return m


class _HashController(wiring.Component):
    """The job sequence of a :class:`ToeplitzHasher`: takes ``cfg``, checks the job, stores
    the seed (re-aligned) and ``x`` in their buffers, then runs each pass — start both
    streamers, prime them, fill the seed window, stream ``x``, let the last products settle,
    dump — and answers with ``status``.

    Ports: ``cfg``, ``seed``, ``x`` and ``status`` as the hasher's; ``x_buf`` and ``s_buf``
    drive the buffers (:func:`_buffer_port`); ``datapath`` drives the
    :class:`_TileDatapath` (:func:`_datapath_port`).
    """

    def __init__(self, *, lanes: int, max_n: int, max_m: int, datapath: _TileDatapath,
                 x_buf: _LaneBuffer, s_buf: _LaneBuffer):
        self.lanes = lanes
        self.max_n = max_n
        self.max_m = max_m
        self.blocks = datapath.blocks
        self.window_chunks = datapath.window_chunks
        self.settle = datapath.settle
        self.clear_dumps = datapath.clear_dumps
        self.x_depth = x_buf.depth
        self.s_depth = s_buf.depth
        super().__init__({
            "cfg": In(stream.Signature(hash_config_layout(max_n, max_m))),
            "seed": In(stream.Signature(bits_layout(lanes))),
            "x": In(stream.Signature(bits_layout(lanes))),
            "status": Out(stream.Signature(hash_status_layout())),
            "x_buf": Out(x_buf.ctl.signature.flip()),
            "s_buf": Out(s_buf.ctl.signature.flip()),
            "datapath": Out(datapath.ctl.signature.flip()),
        })

    def elaborate(self, platform):
        m = Module()
        L, B = self.lanes, self.blocks
        lg = ceil_log2(L)
        K = self.window_chunks
        x_depth, s_depth = self.x_depth, self.s_depth
        x_buf, s_buf, dp = self.x_buf, self.s_buf, self.datapath

        # Job registers.
        n = Signal.like(self.cfg.payload.n)
        err = Signal(ToeplitzStatus)
        n_beats = Signal(range(x_depth + 2))          # ceil(n / L)
        n_last = Signal(range(x_depth + 2))           # ceil(n / L) - 1: index of x's last beat
        # Comparisons with the counters are registered flags, updated a beat ahead, so that
        # no wide equality sits in the stream handshakes.
        n_last2 = Signal(range(x_depth + 2))          # n_last - 1 (wraps when n_last is 0)
        s_last2 = Signal(range(s_depth + 2))          # ceil((n + m - 1) / L) - 2 (wraps too)
        x_final = Signal()                            # x_cnt == n_last
        s_final = Signal()                            # s_cnt is the seed's last beat
        r = Signal(range(L)) if L > 1 else Const(0, 1)  # n mod L: seed re-alignment
        # Per-stream counters.
        s_cnt = Signal(range(s_depth + 2))
        s_prev = Signal(L)                            # previous seed beat (re-alignment)
        x_cnt = Signal(range(x_depth + 2))
        clear_end = self.clear_dumps + B              # see CLEAR
        phase_cnt = Signal(range(max(clear_end, PRIME_CYCLES, self.settle, K, B) + 1))
        tile_word = Signal(range(-(-self.max_m // L) + B + 1))  # p * tile / L
        y_beats = Signal(range(-(-self.max_m // L) + 1))  # y beats not yet emitted
        y_one = Signal()                              # y_beats == 1
        y_zero = Signal()                             # y_beats == 0
        x_last_mask = Signal(L)                       # lanes of x's last beat inside n
        y_last_mask = Signal(L)                       # lanes of y's last beat inside m

        # The pass's stream reads are registered flags, set and cleared a cycle ahead: no
        # handshake logic lies between them and the FIFOs they read.
        shift = Signal()
        consume = Signal()
        m.d.comb += [
            dp.shift.eq(shift),
            dp.consume.eq(consume),
            dp.last.eq(y_one),
            dp.last_mask.eq(y_last_mask),
        ]

        # x buffer: the whole x packet is stored before the first pass.
        last_lane_ok = Signal(L)
        m.d.comb += [
            last_lane_ok.eq(Mux(x_final, x_last_mask, ~0)),
            x_buf.w_addr.eq(x_cnt),
            x_buf.w_data.eq(self.x.payload.data & last_lane_ok),
        ]

        # Seed buffer: word b = s[(b-1)L + r : bL + r], i.e. beats re-aligned by r = n mod L,
        # so that the chunk starting at any seed index E = r (mod L) is word (E - r)/L + 1.
        aligned = Signal(L)
        m.d.comb += [
            aligned.eq(Cat(s_prev, self.seed.payload.data).bit_select(r, L)),
            s_buf.w_data.eq(aligned),
            s_buf.w_addr.eq(s_cnt),
        ]
        m.d.comb += self.status.payload.status.eq(err)

        # The pass's top seed chunk starts at E = p*tile + n - L + tile.
        addr_top = tile_word + (n >> lg) + B
        cfg = self.cfg.payload
        with m.FSM(init="CLEAR"):
            with m.State("CLEAR"):
                # After a reset the datapath's registers hold what they held: x enters as 0
                # from the first clock, and clear_dumps dumps leave every accumulator 0. Then
                # the wave drains from the blocks.
                m.d.comb += dp.dump.eq(phase_cnt < self.clear_dumps)
                m.d.sync += phase_cnt.eq(phase_cnt + 1)
                with m.If(phase_cnt == clear_end):
                    m.d.sync += phase_cnt.eq(0)
                    m.next = "IDLE"

            with m.State("IDLE"):
                m.d.comb += self.cfg.ready.eq(1)
                with m.If(self.cfg.valid):
                    m.d.sync += [
                        n.eq(cfg.n),
                        n_beats.eq((cfg.n + (L - 1)) >> lg),
                        n_last.eq(((cfg.n + (L - 1)) >> lg) - 1),
                        n_last2.eq(((cfg.n + (L - 1)) >> lg) - 2),
                        s_last2.eq(((cfg.n + cfg.m + (L - 2)) >> lg) - 2),
                        x_final.eq(((cfg.n + (L - 1)) >> lg) == 1),
                        s_final.eq(((cfg.n + cfg.m + (L - 2)) >> lg) == 1),
                        y_zero.eq(((cfg.m + (L - 1)) >> lg) == 0),
                        y_one.eq(((cfg.m + (L - 1)) >> lg) == 1),
                        s_cnt.eq(0),
                        s_prev.eq(0),
                        x_cnt.eq(0),
                        tile_word.eq(0),
                        y_beats.eq((cfg.m + (L - 1)) >> lg),
                    ]
                    if L > 1:
                        m.d.sync += [
                            r.eq(cfg.n[:lg]),
                            x_last_mask.eq(_last_beat_mask(cfg.n[:lg], L)),
                            y_last_mask.eq(_last_beat_mask(cfg.m[:lg], L)),
                        ]
                    else:
                        m.d.sync += [x_last_mask.eq(1), y_last_mask.eq(1)]
                    with m.If((cfg.n == 0) | (cfg.n > self.max_n)):
                        m.d.sync += err.eq(ToeplitzStatus.BAD_N)
                    with m.Elif((cfg.m == 0) | (cfg.m > self.max_m)):
                        m.d.sync += err.eq(ToeplitzStatus.BAD_M)
                    with m.Else():
                        m.d.sync += err.eq(ToeplitzStatus.OK)
                    m.next = "SEED"

            with m.State("SEED"):
                m.d.comb += self.seed.ready.eq(1)
                with m.If(self.seed.valid):
                    final = s_final
                    ok = err == ToeplitzStatus.OK
                    m.d.comb += s_buf.w_en.eq(ok)
                    m.d.sync += [
                        s_cnt.eq(s_cnt + 1),
                        s_final.eq(s_cnt == s_last2),
                        s_prev.eq(self.seed.payload.data),
                    ]
                    with m.If(ok & self.seed.payload.last & ~final):
                        m.d.sync += err.eq(ToeplitzStatus.SEED_SHORT)
                    with m.If(ok & ~self.seed.payload.last & final):
                        m.d.sync += err.eq(ToeplitzStatus.SEED_LONG)
                    with m.If(self.seed.payload.last):
                        with m.If(ok & final):
                            m.next = "SEED_FLUSH"
                        with m.Else():
                            m.next = "DRAIN_X"

            with m.State("SEED_FLUSH"):
                # the last word holds the top bits of the final beat
                m.d.comb += [
                    aligned.eq(Cat(s_prev, Const(0, L)).bit_select(r, L)),
                    s_buf.w_en.eq(1),
                ]
                m.next = "LOAD_X"

            with m.State("LOAD_X"):
                # store x (lanes past n as 0); the passes replay it from the buffer
                final = x_final
                m.d.comb += [
                    self.x.ready.eq(1),
                    x_buf.w_en.eq(self.x.valid),
                ]
                with m.If(self.x.valid):
                    m.d.sync += [
                        x_cnt.eq(x_cnt + 1),
                        x_final.eq(x_cnt == n_last2),
                    ]
                    with m.If(self.x.payload.last & ~final):
                        m.d.sync += err.eq(ToeplitzStatus.X_SHORT)
                        m.next = "STATUS"
                    with m.Elif(~self.x.payload.last & final):
                        m.d.sync += err.eq(ToeplitzStatus.X_LONG)
                        m.next = "DRAIN_X"
                    with m.Elif(final):
                        m.next = "PASS"

            with m.State("DRAIN_X"):
                m.d.comb += self.x.ready.eq(1)
                with m.If(self.x.valid & self.x.payload.last):
                    m.next = "STATUS"

            with m.State("PASS"):
                # start the seed streamer: the pass's chunks downwards from the top
                m.d.comb += [
                    s_buf.start.eq(1),
                    s_buf.start_addr.eq(addr_top),
                    s_buf.count.eq(n_beats + K),
                ]
                m.d.sync += [
                    x_cnt.eq(0),
                    x_final.eq(n_last == 0),
                    phase_cnt.eq(0),
                ]
                m.next = "PRIME"

            with m.State("PRIME"):
                # start the x streamer a cycle later (in the first pass, x's last word is
                # written to its memory two cycles after LOAD_X took it); x is read K cycles
                # after the seed, so PRIME_CYCLES primes both
                m.d.comb += [
                    x_buf.start.eq(phase_cnt == 0),
                    x_buf.start_addr.eq(0),
                    x_buf.count.eq(n_beats),
                ]
                m.d.sync += phase_cnt.eq(phase_cnt + 1)
                with m.If(phase_cnt == PRIME_CYCLES - 1):
                    m.d.sync += [
                        phase_cnt.eq(0),
                        shift.eq(1),
                    ]
                    m.next = "FILL"

            # From here both streams are read every clock without looking at their valid:
            # primed FIFOs fed at one word per clock never run dry (a design invariant, which
            # every testbench job checks: one stale word would corrupt its hash).
            with m.State("FILL"):
                m.d.sync += phase_cnt.eq(phase_cnt + 1)
                with m.If(phase_cnt == K - 1):
                    m.d.sync += [
                        phase_cnt.eq(0),
                        consume.eq(1),
                    ]
                    m.next = "RUN"

            with m.State("RUN"):
                m.d.sync += [
                    x_cnt.eq(x_cnt + 1),
                    x_final.eq(x_cnt == n_last2),
                ]
                with m.If(x_final):
                    m.d.sync += [
                        shift.eq(0),
                        consume.eq(0),
                    ]
                    m.next = "SETTLE"

            with m.State("SETTLE"):
                # the last beat reaches the top block's accumulators settle - 1 cycles later
                m.d.sync += phase_cnt.eq(phase_cnt + 1)
                with m.If(phase_cnt == self.settle - 1):
                    m.d.sync += phase_cnt.eq(0)
                    m.next = "DUMP"

            with m.State("DUMP"):
                emit = ~y_zero
                dump = ~emit | dp.room
                m.d.comb += [dp.emit.eq(emit), dp.dump.eq(dump)]
                with m.If(dump):
                    m.d.sync += phase_cnt.eq(phase_cnt + 1)
                    with m.If(emit):
                        m.d.sync += [
                            y_beats.eq(y_beats - 1),
                            y_one.eq(y_beats == 2),
                            y_zero.eq(y_one),
                        ]
                    with m.If(phase_cnt == B - 1):
                        m.d.sync += [
                            phase_cnt.eq(0),
                            tile_word.eq(tile_word + B),
                        ]
                        with m.If(y_zero | y_one):
                            m.next = "STATUS"
                        with m.Else():
                            m.next = "PASS"

            with m.State("STATUS"):
                # after the last y beat has left the FIFO
                m.d.comb += self.status.valid.eq(dp.drained)
                with m.If(self.status.valid & self.status.ready):
                    m.next = "IDLE"

        return m


class ToeplitzHasher(wiring.Component):
    """Streaming GF(2) Toeplitz hash ``y = T x`` with runtime ``n`` and ``m``.

    Parameters
    ----------
    lanes : int
        Input (and output) bits per clock: a power of two from 1 to 256.
    tile : int
        Number of accumulators, i.e. output rows computed per pass over ``x``; a multiple of
        ``lanes``. A job makes ``ceil(m / tile)`` passes.
    max_n : int
        Largest ``n``; sizes the ``x`` buffer (``ceil(max_n / lanes)`` words of ``lanes`` bits).
    max_m : int
        Largest ``m``; with ``max_n`` sizes the seed buffer
        (``ceil((max_n + max_m - 1) / lanes) + 1`` words of ``lanes`` bits).
    slice_memory : bool or None
        Build each buffer as one ``slice_width``-bit-wide memory per ``slice_width`` lanes
        (deep, narrow block RAMs with small output multiplexers, for the best Fmax) rather
        than one ``lanes``-bit memory, which the tools build from wide, shallow block RAMs
        cascaded through LUT multiplexers. ``None`` (default) slices when the ``x`` buffer is
        deeper than :attr:`SLICE_DEPTH` words (one 512 × 36 block RAM of an ECP5).
    bank_depth : int
        With ``slice_memory``, words per memory bank (a power of two). Each bank has its own
        output register. ``slice_width * bank_depth = 16384`` makes each bank one ECP5 DP16KD.
    slice_width : int
        With ``slice_memory``, lanes per memory (a power of two dividing ``lanes``): 1
        (16384 × 1 block RAMs), 2, 4 … trade block RAMs for fewer, shallower banks.
    karatsuba_base : int
        The ``tile × lanes`` product is computed as ``tile / lanes`` square Toeplitz blocks,
        each split by :func:`toeplitz_block` until it is at most ``karatsuba_base`` lanes
        wide: ``lanes = 2**d · karatsuba_base`` costs ``(3/4)**d`` of the ``tile · lanes``
        AND terms of the direct product, plus a few XORs per level.

    Ports
    -----
    cfg : In(stream.Signature(hash_config_layout(max_n, max_m)))
        Starts a job: ``n`` input bits, ``m`` output bits. Accepted only when idle.
    seed : In(stream.Signature(bits_layout(lanes)))
        The seed ``s``, ``n + m - 1`` bits, ``lanes`` per beat, ``last`` on the final beat.
        Consumed right after ``cfg``.
    x : In(stream.Signature(bits_layout(lanes)))
        The input ``x``, ``n`` bits, ``lanes`` per beat, ``last`` on the final beat. Consumed
        after the whole seed, at up to one beat per clock, and stored before the first pass.
    y : Out(stream.Signature(bits_layout(lanes)))
        The output ``y``, ``m`` bits, ``lanes`` per beat (bits past ``m`` are 0), ``last`` on
        the final beat. Emitted in ``tile``-row bursts at the end of each pass.
    status : Out(stream.Signature(hash_status_layout()))
        One beat per job, after its last ``y`` beat: :class:`ToeplitzStatus`. The core waits
        for it to be taken before accepting the next ``cfg``.

    It is three components: two :class:`_LaneBuffer` (``x`` and the seed), the
    :class:`_TileDatapath` and the :class:`_HashController` that sequences them.
    """

    def __init__(self, *, lanes: int = 8, tile: int = 64, max_n: int = 4096, max_m: int = 1024,
                 slice_memory: bool | None = None, bank_depth: int = 16384,
                 slice_width: int = 1, karatsuba_base: int = 8):
        for name, value in (("lanes", lanes), ("tile", tile), ("max_n", max_n),
                            ("max_m", max_m)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TypeError(f"{name} must be a positive integer, not {value!r}")
        if lanes & (lanes - 1) or lanes > 256:
            raise ValueError(f"lanes must be a power of two from 1 to 256, not {lanes}")
        if tile % lanes:
            raise ValueError(f"tile must be a multiple of lanes ({lanes}), not {tile}")
        if not isinstance(bank_depth, int) or isinstance(bank_depth, bool) or bank_depth < 1:
            raise TypeError(f"bank_depth must be a positive integer, not {bank_depth!r}")
        if bank_depth & (bank_depth - 1):
            raise ValueError(f"bank_depth must be a power of two, not {bank_depth}")
        if not isinstance(slice_width, int) or isinstance(slice_width, bool) or slice_width < 1:
            raise TypeError(f"slice_width must be a positive integer, not {slice_width!r}")
        if slice_width & (slice_width - 1) or lanes % slice_width:
            raise ValueError(f"slice_width must be a power of two dividing lanes ({lanes}), "
                             f"not {slice_width}")
        if not isinstance(karatsuba_base, int) or isinstance(karatsuba_base, bool) \
                or karatsuba_base < 1:
            raise TypeError(f"karatsuba_base must be a positive integer, not {karatsuba_base!r}")
        if slice_memory is None:
            slice_memory = lanes > 1 and -(-max_n // lanes) > self.SLICE_DEPTH
        elif not isinstance(slice_memory, bool):
            raise TypeError(f"slice_memory must be a bool or None, not {slice_memory!r}")
        self.lanes = lanes
        self.tile = tile
        self.max_n = max_n
        self.max_m = max_m
        self.slice_memory = slice_memory
        self.bank_depth = bank_depth
        self.slice_width = slice_width
        self.karatsuba_base = karatsuba_base
        super().__init__({
            "cfg": In(stream.Signature(hash_config_layout(max_n, max_m))),
            "seed": In(stream.Signature(bits_layout(lanes))),
            "x": In(stream.Signature(bits_layout(lanes))),
            "y": Out(stream.Signature(bits_layout(lanes))),
            "status": Out(stream.Signature(hash_status_layout())),
        })

    #: Buffer depth (words) above which ``slice_memory=None`` slices the buffers.
    SLICE_DEPTH = 512

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        x_depth = -(-self.max_n // L)
        s_depth = -(-(self.max_n + self.max_m - 1) // L) + 1
        m.submodules.datapath = datapath = _TileDatapath(L, self.tile, self.karatsuba_base)
        memory = {"sliced": self.slice_memory, "bank_depth": self.bank_depth,
                  "slice_width": self.slice_width}
        # x is read upwards once per pass; the seed downwards, a window fill more than x
        m.submodules.x_buf = x_buf = _LaneBuffer(L, x_depth, x_depth, descending=False,
                                                 **memory)
        m.submodules.s_buf = s_buf = _LaneBuffer(L, s_depth, x_depth + datapath.window_chunks,
                                                 descending=True, **memory)
        m.submodules.controller = controller = _HashController(
            lanes=L, max_n=self.max_n, max_m=self.max_m, datapath=datapath,
            x_buf=x_buf, s_buf=s_buf)
        for name in ("cfg", "seed", "x"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(controller, name))
        wiring.connect(m, controller.status, wiring.flipped(self.status))
        wiring.connect(m, controller.x_buf, x_buf.ctl)
        wiring.connect(m, controller.s_buf, s_buf.ctl)
        wiring.connect(m, controller.datapath, datapath.ctl)
        wiring.connect(m, x_buf.o, datapath.x)
        wiring.connect(m, s_buf.o, datapath.seed)
        wiring.connect(m, datapath.y, wiring.flipped(self.y))
        return m
