"""Small helpers shared by the cores: parameter checks, a saturating counter, and a
registered read of a block RAM that synthesis need not guard against collisions."""

from amaranth import Module, Signal

__all__ = ["check_int", "collision_free_read", "saturating_counter"]


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
