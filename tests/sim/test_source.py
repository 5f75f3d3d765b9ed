"""Alice's random-access source: bit-exact generator specification, records, statistics."""

import json

import numpy as np
import pytest
from mozi.sim.errors import MoziError
from mozi.sim.model import alice_record, unpack_alice_record
from mozi.sim.source import AliceSource, ConfigurationError, SourceConfig

M64 = (1 << 64) - 1


def _mix(z: int) -> int:
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_choice(seed: int, slot: int, cfg: SourceConfig) -> tuple[int, int, int]:
    """The generator exactly as documented in mozi.sim.source, in plain Python integers."""
    key = _mix(seed ^ 0x6A09E667F3BCC909)
    w = _mix((key + (slot + 1) * 0x9E3779B97F4A7C15) & M64)
    bit = w >> 63
    basis = int(((w >> 32) & 0x7FFFFFFF) >= round(cfg.p_z * 2 ** 31))
    u = w & 0xFFFFFFFF
    p = cfg.probabilities
    intensity = int(u >= round(p[0] * 2 ** 32)) + int(u >= round((p[0] + p[1]) * 2 ** 32))
    return basis, bit, intensity


@pytest.mark.parametrize("seed", [0, 1, 12345, M64])
@pytest.mark.parametrize("cfg", [SourceConfig(), SourceConfig(p_z=0.9,
                                                              probabilities=(0.7, 0.2, 0.1))])
def test_choices_match_reference_spec(seed, cfg):
    rng = np.random.default_rng(seed & 0xFFFF)
    slots = np.concatenate([[0, 1, 2, 27_400_000_000, 2 ** 62],
                            rng.integers(0, 30_000_000_000, 200)])
    print("seed", seed)
    basis, bit, intensity = AliceSource(seed, cfg).choices(slots)
    ref = np.array([ref_choice(seed, int(s), cfg) for s in slots], np.uint8)
    np.testing.assert_array_equal(basis, ref[:, 0])
    np.testing.assert_array_equal(bit, ref[:, 1])
    np.testing.assert_array_equal(intensity, ref[:, 2])


def test_records_are_model_records_and_random_access():
    a = AliceSource(99)
    first = 12_345_678_901
    rec = a.records(first, 5000)
    assert rec.dtype == np.uint8 and rec.shape == (5000,)
    np.testing.assert_array_equal(rec, alice_record(*a.choices(np.arange(first, first + 5000))))
    # any sub-range, in any order, reads the same values
    picks = np.array([4999, 0, 17, 17, 2500])
    basis, bit, intensity = unpack_alice_record(rec[picks])
    b2, x2, i2 = a.choices(picks + first)
    np.testing.assert_array_equal(basis, b2)
    np.testing.assert_array_equal(bit, x2)
    np.testing.assert_array_equal(intensity, i2)
    assert a.records(first + 100, 10).tolist() == rec[100:110].tolist()
    assert a.records(0, 0).size == 0


@pytest.mark.parametrize("p_z,probs", [(0.5, (0.5, 0.25, 0.25)), (0.8, (0.6, 0.3, 0.1))])
def test_statistics_follow_configuration(p_z, probs):
    n = 400_000
    basis, bit, intensity = AliceSource(5, SourceConfig(p_z=p_z, probabilities=probs)) \
        .choices(np.arange(10 ** 9, 10 ** 9 + n))
    tol = 5 * np.sqrt(0.25 / n)
    assert abs((basis == 0).mean() - p_z) < tol
    assert abs(bit.mean() - 0.5) < tol
    freq = np.bincount(intensity, minlength=3) / n
    np.testing.assert_allclose(freq, probs, atol=tol)
    # bit, basis and intensity are not correlated with each other or with the next slot
    assert abs(np.corrcoef(bit[:-1], bit[1:])[0, 1]) < tol * 2
    assert abs(np.corrcoef(bit, basis)[0, 1]) < tol * 2


def test_seeds_give_independent_streams_and_reproduce():
    slots = np.arange(100_000)
    b1 = AliceSource(1).choices(slots)[1]
    b2 = AliceSource(2).choices(slots)[1]
    assert 0.48 < (b1 == b2).mean() < 0.52
    np.testing.assert_array_equal(AliceSource(1).choices(slots)[1], b1)


def test_dict_round_trip_is_json():
    a = AliceSource(2 ** 63 + 5, SourceConfig(rep_rate_hz=50e6, intensities=(0.6, 0.2, 0.0),
                                              probabilities=(0.8, 0.1, 0.1), p_z=0.75))
    d = json.loads(json.dumps(a.to_dict()))
    b = AliceSource.from_dict(d)
    assert b == a
    np.testing.assert_array_equal(b.records(77, 100), a.records(77, 100))
    assert a.config.slot_period_ps == 20_000.0


@pytest.mark.parametrize("kwargs", [
    {"rep_rate_hz": 0}, {"intensities": (0.8, -0.1, 0.0)}, {"intensities": (0.8, 0.1)},
    {"probabilities": (0.5, 0.5, 0.5)}, {"probabilities": (1.1, -0.1, 0.0)}, {"p_z": 1.5},
])
def test_bad_source_config_is_a_user_error(kwargs):
    with pytest.raises(ConfigurationError) as info:
        SourceConfig(**kwargs)
    assert isinstance(info.value, MoziError)


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 1.5, "7", True])
def test_bad_seed(seed):
    with pytest.raises(ConfigurationError):
        AliceSource(seed)


def test_bad_description():
    with pytest.raises(ConfigurationError):
        AliceSource.from_dict({"seed": 1})
    with pytest.raises(ConfigurationError):
        SourceConfig.from_dict({"rep_rate_hz": 1e8})


def test_negative_slots_rejected():
    with pytest.raises(ValueError):
        AliceSource(1).choices(np.array([3, -1]))
    with pytest.raises(ValueError):
        AliceSource(1).records(-5, 3)
