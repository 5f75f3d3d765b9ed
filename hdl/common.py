"""Small helpers shared by the cores: parameter checks and a saturating counter."""

from amaranth import Module, Signal

__all__ = ["check_int", "saturating_counter"]


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
