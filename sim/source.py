"""Alice's decoy-state BB84 source with random-access choices.

Alice's per-slot choices (basis, bit, intensity) stand in for her stored QRNG output. They come
from a *counter-based* generator keyed by a seed, so the choices of any slot can be read
without generating the ~2.7·10^10 pulses of a pass that precede it.

Generator (the exact specification; other implementations must match it bit for bit):

* ``key = splitmix64_mix(seed XOR 0x6A09E667F3BCC909)`` with ``seed`` an unsigned 64-bit
  integer;
* the word of slot ``k`` is ``w = splitmix64_mix(key + (k + 1) * 0x9E3779B97F4A7C15 mod 2**64)``
  — i.e. the ``k``-th output of a SplitMix64 generator seeded with ``key``; where
  ``splitmix64_mix(z)`` is ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
  z *= 0x94D049BB133111EB; z ^= z >> 31`` (all mod ``2**64``);
* ``bit = w >> 63``;
* ``basis = 1 (X) if ((w >> 32) & 0x7FFFFFFF) >= round(p_z * 2**31) else 0 (Z)``;
* with ``u = w & 0xFFFFFFFF`` and thresholds ``c0 = round(p_signal * 2**32)``,
  ``c1 = round((p_signal + p_decoy) * 2**32)``:
  ``intensity = (u >= c0) + (u >= c1)`` (0 signal, 1 decoy, 2 vacuum).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from mozi.sim.errors import MoziError, short_repr
from mozi.sim.model import alice_choices, alice_record

__all__ = ["AliceSource", "ConfigurationError", "SourceConfig", "splitmix64_mix"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SEED_SALT = 0x6A09E667F3BCC909
_MASK64 = (1 << 64) - 1


class ConfigurationError(MoziError, ValueError):
    """A simulator parameter is out of range or inconsistent."""


def splitmix64_mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic); returns a new array."""
    z = np.array(z, dtype=np.uint64, copy=True, ndmin=1)
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


@dataclass(frozen=True)
class SourceConfig:
    """Decoy-state BB84 source settings (Micius defaults).

    Attributes
    ----------
    rep_rate_hz : float
        Pulse repetition rate; the slot period is ``1 / rep_rate_hz``.
    intensities : tuple of 3 floats
        Mean photon numbers of the signal, decoy and vacuum states.
    probabilities : tuple of 3 floats
        Probabilities of choosing signal, decoy and vacuum (sum 1).
    p_z : float
        Probability that Alice encodes in the Z basis (0.5 = unbiased; biased basis choice
        allowed).
    """

    rep_rate_hz: float = 100e6
    intensities: tuple[float, float, float] = (0.8, 0.1, 0.0)
    probabilities: tuple[float, float, float] = (0.5, 0.25, 0.25)
    p_z: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "intensities", tuple(float(x) for x in self.intensities))
        object.__setattr__(self, "probabilities", tuple(float(x) for x in self.probabilities))
        if not (np.isfinite(self.rep_rate_hz) and self.rep_rate_hz > 0):
            raise ConfigurationError(f"rep_rate_hz must be positive, not "
                                     f"{short_repr(self.rep_rate_hz)}")
        if len(self.intensities) != 3 or any(not 0 <= m < 1e3 for m in self.intensities):
            raise ConfigurationError("intensities must be three mean photon numbers >= 0")
        p = self.probabilities
        if len(p) != 3 or not all(0.0 <= x <= 1.0 for x in p) or not abs(sum(p) - 1.0) <= 1e-9:
            raise ConfigurationError(
                "probabilities must be three non-negative numbers summing to 1")
        if not 0.0 <= self.p_z <= 1.0:
            raise ConfigurationError(f"p_z must lie in [0, 1], not {short_repr(self.p_z)}")

    @property
    def slot_period_ps(self) -> float:
        """Slot period in picoseconds."""
        return 1e12 / self.rep_rate_hz

    @property
    def mean_photon_number(self) -> float:
        """Average mean photon number per pulse."""
        return float(np.dot(self.intensities, self.probabilities))

    def thresholds(self) -> tuple[int, int, int]:
        """``(t_basis, t_int0, t_int1)`` of :func:`mozi.sim.model.alice_choices` for these
        probabilities (the pattern generator's ``PG_T_*`` registers)."""
        p = self.probabilities
        return (round(self.p_z * 2 ** 31), min(round(p[0] * 2 ** 32), 2 ** 32),
                min(round((p[0] + p[1]) * 2 ** 32), 2 ** 32))

    def to_dict(self) -> dict:
        """JSON-able form (lists for tuples)."""
        d = asdict(self)
        d["intensities"] = list(self.intensities)
        d["probabilities"] = list(self.probabilities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SourceConfig:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(rep_rate_hz=float(d["rep_rate_hz"]),
                       intensities=tuple(d["intensities"]),
                       probabilities=tuple(d["probabilities"]),
                       p_z=float(d["p_z"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ConfigurationError(f"bad source description: {exc}") from None


class AliceSource:
    """Alice's choices for every slot, generated on demand from a seed.

    Parameters
    ----------
    seed : int
        Key of the counter-based generator, ``0 <= seed < 2**64``.
    config : SourceConfig
        Probabilities that shape the choices (intensities only matter to the channel).
    """

    def __init__(self, seed: int, config: SourceConfig = SourceConfig()) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) \
                or not 0 <= int(seed) <= _MASK64:
            raise ConfigurationError(f"seed must be an integer in [0, 2**64), not "
                                     f"{short_repr(seed)}")
        self.seed = int(seed)
        self.config = config
        self._key = np.uint64(int(splitmix64_mix(np.uint64(self.seed ^ _SEED_SALT))[0]))
        self._t_basis, self._t_int0, self._t_int1 = config.thresholds()

    def __repr__(self) -> str:
        return f"AliceSource(seed={self.seed}, config={self.config!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AliceSource) and (self.seed, self.config) == \
            (other.seed, other.config)

    def __hash__(self) -> int:
        return hash((self.seed, self.config))

    def words(self, slots) -> np.ndarray:
        """The raw 64-bit generator word of each slot (uint64 array)."""
        s = np.asarray(slots)
        if s.size and s.dtype.kind == "i" and s.min() < 0:
            raise ValueError("slot numbers must be non-negative")
        s = s.astype(np.uint64)
        return splitmix64_mix((s + np.uint64(1)) * _GAMMA + self._key).reshape(s.shape)

    def choices(self, slots) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Alice's choices at the given slots.

        Parameters
        ----------
        slots : integer array-like
            Slot numbers (any order, repeats allowed), ``>= 0``.

        Returns
        -------
        basis, bit, intensity : uint8 arrays shaped like ``slots``
            Basis 0 = Z, 1 = X; bit 0/1; intensity 0 signal, 1 decoy, 2 vacuum.
        """
        return alice_choices(self.words(slots), self._t_basis, self._t_int0, self._t_int1)

    def records(self, first_slot: int, count: int) -> np.ndarray:
        """Alice's 4-bit records (:func:`mozi.sim.model.alice_record`) for consecutive slots.

        Parameters
        ----------
        first_slot : int
            Slot of ``records[0]``.
        count : int
            Number of slots.

        Returns
        -------
        uint8 array of length ``count``
        """
        if first_slot < 0 or count < 0:
            raise ValueError("first_slot and count must be non-negative")
        out = np.empty(count, np.uint8)
        block = 1 << 18                      # keep the temporaries in cache
        for i in range(0, count, block):
            n = min(block, count - i)
            slots = np.arange(first_slot + i, first_slot + i + n, dtype=np.uint64)
            out[i:i + n] = alice_record(*self.choices(slots))
        return out

    def to_dict(self) -> dict:
        """JSON-able form: the seed and the source configuration."""
        return {"seed": self.seed, "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> AliceSource:
        """Inverse of :meth:`to_dict`."""
        try:
            seed, config = d["seed"], d["config"]
        except (KeyError, TypeError) as exc:
            raise ConfigurationError(f"bad Alice source description: {exc}") from None
        return cls(seed, SourceConfig.from_dict(config))
