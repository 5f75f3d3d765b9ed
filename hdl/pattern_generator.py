"""Pattern generator: one random word per slot → the four laser triggers, the decoy-intensity
select and Alice's record of the slot.

Bit-exact with :func:`mozi.sim.model.alice_choices`, :func:`mozi.sim.model.laser_triggers` and
:func:`mozi.sim.model.alice_record`, the mapping the simulator's source uses::

    bit = w[63]     basis = w[32:63] >= t_basis     intensity = (u >= t_int0) + (u >= t_int1)

with ``u = w[0:32]`` (intensity 0 signal, 1 decoy, 2 vacuum). At every ``slot`` strobe (while
``enable``) the core takes a word from ``rand`` and, on the next clock, pulses the laser of the
chosen state for one clock — bit ``2 * basis + bit`` of ``lasers`` (H, V, D, A), none for a
vacuum slot — sets ``intensity`` for the slot (held until the next slot), and offers the
slot's 4-bit record on ``records``. A slot whose strobe finds no word is *dark*: no laser
fires, ``intensity`` reads vacuum, the record is that of a vacuum slot (which is what was
sent), and ``underruns`` counts it. A record that finds ``records`` still holding the previous
one is lost and counted in ``records_lost``; the host must treat a session with lost records
as failed. Both counters saturate.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import saturating_counter

__all__ = ["VACUUM", "PatternGenerator"]

#: Intensity code of a vacuum (and of a dark) slot.
VACUUM = 2


class PatternGenerator(wiring.Component):
    """Random words → laser triggers, intensity select and records, one slot per strobe.

    Ports
    -----
    rand : In(stream.Signature(64))
        Random words (a QRNG, or a keyed generator), one per slot.
    slot : In(1)
        Strobe: a slot begins (at most one per clock).
    enable : In(1)
        Strobes are ignored while low (no word taken, nothing counted).
    t_basis : In(32)
        X basis iff ``w[32:63] >= t_basis`` (``p_z * 2**31``).
    t_int0, t_int1 : In(33)
        Intensity thresholds on ``w[0:32]`` (``p_signal * 2**32``, ``(p_signal + p_decoy) *
        2**32``).
    lasers : Out(4)
        One-clock trigger pulse of the slot's laser (H, V, D, A), the clock after its strobe.
    intensity : Out(2, init=2)
        The slot's intensity select, from the clock after its strobe to the next slot's.
    records : Out(stream.Signature(4))
        Each slot's record, ``bit | basis << 1 | intensity << 2``.
    underruns, records_lost : Out(32)
        Dark slots (no word at the strobe), and records dropped because the previous one had
        not been taken.
    """

    rand: In(stream.Signature(64))
    slot: In(1)
    enable: In(1)
    t_basis: In(32)
    t_int0: In(33)
    t_int1: In(33)
    lasers: Out(4)
    intensity: Out(2, init=VACUUM)
    records: Out(stream.Signature(4))
    underruns: Out(32)
    records_lost: Out(32)

    def elaborate(self, platform):
        m = Module()
        w = self.rand.payload
        strobe = self.slot & self.enable
        have = Signal()
        m.d.comb += [self.rand.ready.eq(strobe), have.eq(strobe & self.rand.valid)]
        bit = w[63]
        basis = w[32:63] >= self.t_basis
        u = w[:32]
        ge0, ge1 = u >= self.t_int0, u >= self.t_int1
        intensity = Mux(have, Mux(ge0 & ge1, 2, Mux(ge0 | ge1, 1, 0)), VACUUM)
        fire = have & ~(ge0 & ge1)
        m.d.sync += self.lasers.eq(0)
        with m.If(strobe):
            m.d.sync += self.intensity.eq(intensity)
            with m.If(fire):
                m.d.sync += self.lasers.eq(Const(1, 4) << Cat(bit, basis))
            m.d.sync += [self.records.payload.eq(Cat(bit & have, basis & have, intensity)),
                         self.records.valid.eq(1)]
        with m.Elif(self.records.ready):
            m.d.sync += self.records.valid.eq(0)
        saturating_counter(m, self.underruns, strobe & ~self.rand.valid)
        saturating_counter(m, self.records_lost,
                           strobe & self.records.valid & ~self.records.ready)
        return m
