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
re-aligned to ``n mod lanes`` so that every later read is one aligned word. The column view
``y = XOR_{j : x_j = 1} s[n-1-j : n-1-j+m]`` is used: ``x`` streams in natural order and a
window register of the seed slides *down* by ``lanes`` bits per consumed ``x`` beat, while
``tile`` accumulators (rows ``p*tile … p*tile+tile-1`` of pass ``p``) XOR in every selected
window. ``x`` is written into a second memory as it streams during pass 0 (so the first pass
costs nothing extra) and replayed from it for passes ``1 … ceil(m/tile) - 1``. After each
pass the accumulators shift out on ``y`` and are left cleared.

Cycle count of a job when every stream is always valid/ready (verified by the testbench)::

    cycles = 3 + ceil((n + m - 1) / lanes) + passes * (ceil(n / lanes) + 2 * tile / lanes + 3)

counted from the cycle ``cfg`` is accepted to the cycle ``status`` is accepted, inclusive,
with ``passes = ceil(m / tile)``.

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


def job_cycles(n: int, m: int, *, lanes: int, tile: int) -> int:
    """Cycles of one successful job with every stream always valid/ready.

    From the cycle ``cfg`` is accepted to the cycle ``status`` is accepted, both included.
    ``3 + ceil((n+m-1)/lanes) + passes * (ceil(n/lanes) + 2*tile/lanes + 3)`` with
    ``passes = ceil(m/tile)``; the testbench checks the RTL against it.
    """
    passes = -(-m // tile)
    return 3 + -(-(n + m - 1) // lanes) + passes * (-(-n // lanes) + 2 * tile // lanes + 3)


class ToeplitzHasher(wiring.Component):
    """Streaming GF(2) Toeplitz hash ``y = T x`` with runtime ``n`` and ``m``.

    Parameters
    ----------
    lanes : int
        Input (and output) bits per clock: a power of two from 1 to 64.
    tile : int
        Number of accumulators, i.e. output rows computed per pass over ``x``; a multiple of
        ``lanes``. A job makes ``ceil(m / tile)`` passes.
    max_n : int
        Largest ``n``; sizes the ``x`` buffer (``ceil(max_n / lanes)`` words of ``lanes`` bits).
    max_m : int
        Largest ``m``; with ``max_n`` sizes the seed buffer
        (``ceil((max_n + max_m - 1) / lanes) + 1`` words of ``lanes`` bits).

    Ports
    -----
    cfg : In(stream.Signature(hash_config_layout(max_n, max_m)))
        Starts a job: ``n`` input bits, ``m`` output bits. Accepted only when idle.
    seed : In(stream.Signature(bits_layout(lanes)))
        The seed ``s``, ``n + m - 1`` bits, ``lanes`` per beat, ``last`` on the final beat.
        Consumed right after ``cfg``.
    x : In(stream.Signature(bits_layout(lanes)))
        The input ``x``, ``n`` bits, ``lanes`` per beat, ``last`` on the final beat. Consumed
        after the whole seed, at one beat per clock while the first pass runs.
    y : Out(stream.Signature(bits_layout(lanes)))
        The output ``y``, ``m`` bits, ``lanes`` per beat (bits past ``m`` are 0), ``last`` on
        the final beat. Emitted in ``tile``-row bursts at the end of each pass.
    status : Out(stream.Signature(hash_status_layout()))
        One beat per job, after its last ``y`` beat: :class:`ToeplitzStatus`. The core waits
        for it to be taken before accepting the next ``cfg``.
    busy : Out(1)
        A job is in progress (from ``cfg`` accepted until ``status`` taken).
    """

    def __init__(self, *, lanes: int = 8, tile: int = 64, max_n: int = 4096, max_m: int = 1024):
        for name, value in (("lanes", lanes), ("tile", tile), ("max_n", max_n),
                            ("max_m", max_m)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TypeError(f"{name} must be a positive integer, not {value!r}")
        if lanes & (lanes - 1) or lanes > 64:
            raise ValueError(f"lanes must be a power of two from 1 to 64, not {lanes}")
        if tile % lanes:
            raise ValueError(f"tile must be a multiple of lanes ({lanes}), not {tile}")
        self.lanes = lanes
        self.tile = tile
        self.max_n = max_n
        self.max_m = max_m
        super().__init__({
            "cfg": In(stream.Signature(hash_config_layout(max_n, max_m))),
            "seed": In(stream.Signature(bits_layout(lanes))),
            "x": In(stream.Signature(bits_layout(lanes))),
            "y": Out(stream.Signature(bits_layout(lanes))),
            "status": Out(stream.Signature(hash_status_layout())),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L, T = self.lanes, self.tile
        lg = ceil_log2(L)
        x_depth = -(-self.max_n // L)
        s_depth = -(-(self.max_n + self.max_m - 1) // L) + 1

        m.submodules.x_mem = x_mem = Memory(shape=L, depth=x_depth, init=[])
        m.submodules.s_mem = s_mem = Memory(shape=L, depth=s_depth, init=[])
        x_wr = x_mem.write_port()
        x_rd = x_mem.read_port()
        s_wr = s_mem.write_port()
        s_rd = s_mem.read_port()

        # Job registers.
        n = Signal.like(self.cfg.payload.n)
        mm = Signal.like(self.cfg.payload.m)
        err = Signal(ToeplitzStatus)
        n_beats = Signal(range(x_depth + 2))          # ceil(n / L)
        s_beats = Signal(range(s_depth + 2))          # ceil((n + m - 1) / L)
        r = Signal(range(L)) if L > 1 else Const(0, 1)  # n mod L: seed re-alignment
        # Per-stream counters.
        s_cnt = Signal(range(s_depth + 2))
        s_prev = Signal(L)                            # previous seed beat (re-alignment)
        x_cnt = Signal(range(x_depth + 2))
        phase_cnt = Signal(range(T // L + 2))         # fill / dump beats
        first_pass = Signal()
        tile_word = Signal(range(-(-self.max_m // L) + T // L + 1))  # p * tile / L
        rows_left = Signal(range(self.max_m + 1))     # output rows not yet emitted
        s_addr = Signal(s_rd.addr.shape())           # address of the chunk in s_rd.data
        # Datapath.
        window = Signal(T + 2 * L)
        acc = Signal(T)
        x_reg = Signal(L)                             # x beat consumed in the previous cycle

        shift = Signal()        # shift the seed window down by one chunk
        consume = Signal()      # an x beat enters the datapath this cycle
        x_data = Signal(L)
        dump = Signal()         # shift the accumulators out by L rows

        m.d.comb += self.busy.eq(~self.cfg.ready)

        # Seed window: the chunk in s_rd.data enters at the bottom; the read port then
        # fetches the next lower chunk (addresses descend during a pass, wrapping harmlessly
        # below 0: such bits only ever meet x bits past n, which are 0).
        m.d.comb += [
            s_rd.en.eq(shift),
            s_rd.addr.eq(s_addr - 1),
        ]
        with m.If(shift):
            m.d.sync += [
                window.eq(Cat(s_rd.data, window[:-L])),
                s_addr.eq(s_addr - 1),
            ]

        # Accumulators. x_reg holds the beat consumed one cycle earlier, when the window
        # was one chunk higher: acc[t] ^= XOR_l x[l] & s[D + t - l] = window[t - l + 2L - 1].
        terms = [window[2 * L - 1 - l:2 * L - 1 - l + T] & x_reg[l].replicate(T)
                 for l in range(L)]
        mac = terms[0]
        for term in terms[1:]:
            mac = mac ^ term
        m.d.sync += x_reg.eq(Mux(consume, x_data, 0))
        with m.If(dump):
            m.d.sync += acc.eq(acc >> L)
        with m.Else():
            m.d.sync += acc.eq(acc ^ mac)

        # x buffer: written while the first pass streams, replayed by later passes.
        last_lane_ok = Signal(L)
        rem = n[:lg] if L > 1 else Const(0, 1)
        for lane in range(L):
            m.d.comb += last_lane_ok[lane].eq((x_cnt != n_beats - 1) | (rem == 0) |
                                              (Const(lane, lg + 1) < rem))
        m.d.comb += [
            x_wr.addr.eq(x_cnt),
            x_wr.data.eq(x_data),
            x_rd.addr.eq(Mux(consume, x_cnt + 1, 0)),
        ]

        # Seed buffer: word b = s[(b-1)L + r : bL + r], i.e. beats re-aligned by r = n mod L,
        # so that the chunk starting at any seed index E = r (mod L) is word (E - r)/L + 1.
        aligned = Signal(L)
        m.d.comb += [
            aligned.eq(Cat(s_prev, self.seed.payload.data).bit_select(r, L)),
            s_wr.data.eq(aligned),
            s_wr.addr.eq(s_cnt),
        ]

        # Output: L rows per beat, rows past m read as 0.
        lane_ok = Signal(L)
        for lane in range(L):
            m.d.comb += lane_ok[lane].eq(Const(lane, len(rows_left)) < rows_left)
        m.d.comb += [
            self.y.payload.data.eq(acc[:L] & lane_ok),
            self.y.payload.last.eq(rows_left <= L),
            self.status.payload.status.eq(err),
        ]

        addr_top = (tile_word + (n >> lg) + T // L)[:len(s_addr)]
        cfg = self.cfg.payload
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cfg.ready.eq(1)
                with m.If(self.cfg.valid):
                    m.d.sync += [
                        n.eq(cfg.n),
                        mm.eq(cfg.m),
                        n_beats.eq((cfg.n + (L - 1)) >> lg),
                        s_beats.eq((cfg.n + cfg.m + (L - 2)) >> lg),
                        s_cnt.eq(0),
                        s_prev.eq(0),
                        x_cnt.eq(0),
                        first_pass.eq(1),
                        tile_word.eq(0),
                        rows_left.eq(cfg.m),
                    ]
                    if L > 1:
                        m.d.sync += r.eq(cfg.n[:lg])
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
                    final = s_cnt == s_beats - 1
                    ok = err == ToeplitzStatus.OK
                    m.d.comb += s_wr.en.eq(ok)
                    m.d.sync += [
                        s_cnt.eq(s_cnt + 1),
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
                    s_wr.en.eq(1),
                ]
                m.next = "PASS"

            with m.State("PASS"):
                # prime both read ports: top chunk of this pass's seed range, x word 0
                m.d.comb += [
                    s_rd.addr.eq(addr_top),
                    s_rd.en.eq(1),
                ]
                m.d.sync += [
                    s_addr.eq(addr_top),
                    x_cnt.eq(0),
                    phase_cnt.eq(0),
                ]
                m.next = "FILL"

            with m.State("FILL"):
                m.d.comb += shift.eq(1)
                m.d.sync += phase_cnt.eq(phase_cnt + 1)
                with m.If(phase_cnt == T // L):
                    m.next = "RUN"

            with m.State("RUN"):
                final = x_cnt == n_beats - 1
                with m.If(first_pass):
                    m.d.comb += [
                        self.x.ready.eq(1),
                        consume.eq(self.x.valid),
                        x_data.eq(self.x.payload.data & last_lane_ok),
                        x_wr.en.eq(self.x.valid),
                    ]
                    with m.If(self.x.valid):
                        with m.If(self.x.payload.last & ~final):
                            m.d.sync += err.eq(ToeplitzStatus.X_SHORT)
                            m.next = "SETTLE"
                        with m.Elif(~self.x.payload.last & final):
                            m.d.sync += err.eq(ToeplitzStatus.X_LONG)
                            m.next = "DRAIN_X"
                        with m.Elif(final):
                            m.next = "SETTLE"
                with m.Else():
                    m.d.comb += [
                        consume.eq(1),
                        x_data.eq(x_rd.data),
                    ]
                    with m.If(final):
                        m.next = "SETTLE"
                m.d.comb += shift.eq(consume)
                with m.If(consume):
                    m.d.sync += x_cnt.eq(x_cnt + 1)

            with m.State("DRAIN_X"):
                m.d.comb += self.x.ready.eq(1)
                with m.If(self.x.valid & self.x.payload.last):
                    m.next = "SETTLE"

            with m.State("SETTLE"):
                # the last consumed beat reaches the accumulators in this cycle
                m.d.sync += phase_cnt.eq(0)
                m.next = "DUMP"

            with m.State("DUMP"):
                emit = (err == ToeplitzStatus.OK) & (rows_left != 0)
                m.d.comb += [
                    self.y.valid.eq(emit),
                    dump.eq(~emit | self.y.ready),
                ]
                with m.If(dump):
                    m.d.sync += phase_cnt.eq(phase_cnt + 1)
                    with m.If(emit):
                        m.d.sync += rows_left.eq(Mux(rows_left > L, rows_left - L, 0))
                    with m.If(phase_cnt == T // L - 1):
                        m.d.sync += [
                            first_pass.eq(0),
                            tile_word.eq(tile_word + T // L),
                        ]
                        with m.If((err != ToeplitzStatus.OK) | (rows_left <= L)):
                            m.next = "STATUS"
                        with m.Else():
                            m.next = "PASS"

            with m.State("STATUS"):
                m.d.comb += self.status.valid.eq(1)
                with m.If(self.status.ready):
                    m.next = "IDLE"

        return m
