"""Small helpers shared by the cores: parameter checks, a saturating counter, a registered
read of a block RAM that synthesis need not guard against collisions, and the two stream
registers — a core's output register and a skid buffer."""

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer", "StreamRegister", "check_int", "collision_free_read",
           "saturating_counter"]


def check_int(name: str, value, minimum: int) -> int:
    """Return ``value`` if it is an integer ``>= minimum``; raise a clear error otherwise.

    ``TypeError`` for a non-integer (``bool`` included), ``ValueError`` below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    return value


def saturating_counter(m: Module, output, increment) -> None:
    """Drive ``output`` with a count of the clocks where ``increment`` is high, saturating.

    The counter is one bit wider than ``output``; its top bit, once set, stops it and forces
    the output to all ones. So the enable comes straight from a flip-flop instead of a wide
    AND of the counter bits (which limited Fmax on the iCE40).
    """
    width = len(output)
    count = Signal(width + 1)
    with m.If(increment & ~count[width]):
        m.d.sync += count.eq(count + 1)
    m.d.comb += output.eq(count[:width] | count[width].replicate(width))


def collision_free_read(m: Module, memory, en=None):
    """A read of ``memory`` with registered data, like ``memory.read_port()``, for a memory
    whose users never read an address in a clock in which they write it.

    Returns ``(port, data)``: set ``port.addr``; ``data`` holds the word a clock later (when
    ``en`` was high, if given). It is built as an asynchronous read and a register, which yosys
    merges into the block RAM's read port, and the memory gets the ``no_rw_check`` attribute:
    yosys then adds none of the logic that gives a read colliding with a write the old word
    (for the iCE40's block RAM, whose collisions are undefined, a register on the write port
    and a bypass multiplexer — a flip-flop and a LUT for every bit of the word).
    """
    memory.attrs["no_rw_check"] = 1
    port = memory.read_port(domain="comb")
    data = Signal(memory.shape)
    if en is None:
        m.d.sync += data.eq(port.data)
    else:
        with m.If(en):
            m.d.sync += data.eq(port.data)
    return port, data


class _StreamStage(wiring.Component):
    """A stream stage of one payload shape: ``i: In(stream.Signature(shape))`` and
    ``o: Out(stream.Signature(shape))``."""

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})


class StreamRegister(_StreamStage):
    """A one-entry stream register: the output register of a core.

    ``o.valid`` and ``o.payload`` are flip-flops; ``i.ready`` is ``~o.valid | o.ready`` (one
    LUT from the consumer's ``ready``), so a word moves through in every clock the consumer
    takes one. A core computes its result on ``i`` and may make ``i.valid`` depend on
    ``i.ready`` (it then offers only what it can hand over). Use :class:`SkidBuffer` where
    the consumer's ``ready`` must not reach the producer at all.

    Parameters
    ----------
    shape : shape-castable
        The payload of ``i`` and ``o``.
    """

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        # o.valid in one expression of three signals: held while stalled, else what is offered
        m.d.sync += self.o.valid.eq(Mux(self.o.valid & ~self.o.ready, 1, self.i.valid))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += self.o.payload.eq(self.i.payload)
        return m


class SkidBuffer(_StreamStage):
    """A two-entry stream register that cuts both the payload and the ``ready`` path.

    ``i.ready`` is a flip-flop (the spare entry is free) and ``o.valid``/``o.payload`` come
    from flip-flops, so neither side's handshake logic reaches the other's: a consumer whose
    ``ready`` is the end of a long decision no longer lengthens the producer's paths. Full
    rate: a word can enter and leave in every clock; one clock of latency.

    Parameters
    ----------
    shape : shape-castable
        The payload of ``i`` and ``o``.
    """

    def elaborate(self, platform):
        m = Module()
        spare = Signal.like(self.i.payload)       # the word that arrived while o was stalled
        spare_valid = Signal()
        m.d.comb += self.i.ready.eq(~spare_valid)
        take = self.i.valid & self.i.ready
        with m.If(~self.o.valid | self.o.ready):
            # o moves on: to the spare word if there is one, else to the incoming one
            m.d.sync += [self.o.valid.eq(spare_valid | self.i.valid),
                         self.o.payload.eq(Mux(spare_valid, spare, self.i.payload)),
                         spare_valid.eq(0)]
        with m.Elif(take):
            m.d.sync += [spare.eq(self.i.payload), spare_valid.eq(1)]
        return m
