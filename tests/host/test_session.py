"""The session engine on slices of the simulated Micius 2017 pass."""

import json

import numpy as np
import pytest
from mozi.host.keystore import KeyStore
from mozi.host.session import SessionConfig, SessionResult, run_session
from mozi.sim import link, passes
from mozi.sim.errors import MoziError
from mozi.sim.eve import InterceptResend
from mozi.sim.tagfile import TagData


def _simulate(t_start, t_stop, seed=7, eve=None):
    r = link.simulate_pass(passes.micius2017(), seed=seed, t_start=t_start, t_stop=t_stop,
                           eve=eve)
    tags = TagData(r.tags_ps, r.channels, 1, ("H", "V", "D", "A"), {})
    return tags, link.AliceFile(r.alice, r.metadata()), r


@pytest.fixture(scope="module")
def slice30():
    """30 s around the pass's closest approach (≈ 290 k sifted bits)."""
    return _simulate(120.0, 150.0)


@pytest.fixture(scope="module")
def session30(slice30, tmp_path_factory):
    tags, alice, _ = slice30
    d = tmp_path_factory.mktemp("stores")
    sa, sb = KeyStore(d / "alice.db"), KeyStore(d / "bob.db")
    res = run_session(tags, alice, link="sat-xinglong", store_alice=sa, store_bob=sb,
                      config=SessionConfig(seed=2017))
    return res, sa, sb


def _keys(store, ids):
    return [store.get(k) for k in ids]


def test_positive_finite_key_and_identical_stores(session30, slice30):
    res, sa, sb = session30
    sim = slice30[2]
    assert not res.aborted, res.abort_reason
    assert res.final_key_bits > 1000
    assert res.verification_ok
    assert res.key_ids
    ka, kb = _keys(sa, res.key_ids), _keys(sb, res.key_ids)
    bits_a = np.concatenate([k.bits for k in ka])
    bits_b = np.concatenate([k.bits for k in kb])
    assert bits_a.size == res.final_key_bits
    np.testing.assert_array_equal(bits_a, bits_b)
    assert 0.4 < bits_a.mean() < 0.6
    assert [k.key_id for k in ka] == [k.key_id for k in kb] == res.key_ids
    assert all(k.link == "sat-xinglong" and k.eps_sec == 1e-10 for k in ka + kb)
    # figures consistent with the simulator's ground truth
    assert res.alignment["shift"] == -100        # 1 µs clock offset = 100 slots
    assert abs(res.timing["drift"] - 5e-8) < 1e-9
    assert res.in_window_fraction > 0.95
    assert abs(res.sifted_bits - sim.totals["sifted_bits"]) < 0.03 * sim.totals["sifted_bits"]
    assert 0.005 < res.qber_z < 0.02 and 0.005 < res.qber_x < 0.02
    assert 1.0 < res.ec_efficiency < 1.2
    assert res.ec_leaked_bits == res.finite_key["lambda_ec"]
    assert res.finite_key["length"] == res.final_key_bits
    assert res.auth_bits_consumed > 0
    assert [b["t_s"] for b in res.profile] == [120.0, 130.0, 140.0]
    assert all(8 < b["sifted_kbps"] < 12 and b["qber"] < 0.02 for b in res.profile)


def test_result_is_json(session30):
    res = session30[0]
    doc = res.to_json()
    text = json.dumps(doc)
    back = json.loads(text)
    for key in ("link", "detections", "in_window_fraction", "sifted_bits", "qber_z", "qber_x",
                "ec_leaked_bits", "ec_efficiency", "verification_ok", "auth_bits_consumed",
                "final_key_bits", "aborted", "abort_reason", "key_ids", "finite_key",
                "profile", "timings"):
        assert key in back
    assert back["final_key_bits"] == res.final_key_bits
    assert isinstance(res, SessionResult)


def test_same_seed_same_key(slice30, session30, tmp_path):
    tags, alice, _ = slice30
    first, sa, _ = session30
    sa2, sb2 = KeyStore(tmp_path / "a.db"), KeyStore(tmp_path / "b.db")
    again = run_session(tags, alice, link="sat-xinglong", store_alice=sa2, store_bob=sb2,
                        config=SessionConfig(seed=2017))
    assert again.final_key_bits == first.final_key_bits
    assert again.ec_leaked_bits == first.ec_leaked_bits
    a1 = np.concatenate([k.bits for k in _keys(sa, first.key_ids)])
    a2 = np.concatenate([k.bits for k in _keys(sb2, again.key_ids)])
    np.testing.assert_array_equal(a1, a2)


def test_intercept_resend_aborts_and_stores_nothing(tmp_path):
    tags, alice, sim = _simulate(130.0, 140.0, seed=11, eve=InterceptResend(1.0))
    assert sim.totals["qber"] > 0.2
    sa, sb = KeyStore(tmp_path / "a.db"), KeyStore(tmp_path / "b.db")
    res = run_session(tags, alice, link="sat-eve", store_alice=sa, store_bob=sb,
                      config=SessionConfig(seed=1))
    assert res.aborted
    assert res.final_key_bits == 0 and res.key_ids == []
    assert "QBER" in res.abort_reason or "alignment" in res.abort_reason
    assert sa.list() == [] and sb.list() == []
    json.dumps(res.to_json())


def test_qber_threshold_just_below_the_observed_qber_aborts(slice30, tmp_path):
    tags, alice, _ = slice30
    sa, sb = KeyStore(tmp_path / "a.db"), KeyStore(tmp_path / "b.db")
    res = run_session(tags, alice, link="x", store_alice=sa, store_bob=sb,
                      config=SessionConfig(seed=3, qber_threshold=0.0105))
    assert res.aborted and "QBER" in res.abort_reason
    assert sa.list() == [] and sb.list() == []


def test_unusable_input_raises(slice30, tmp_path):
    tags, alice, _ = slice30
    sa, sb = KeyStore(tmp_path / "a.db"), KeyStore(tmp_path / "b.db")
    few = TagData(tags.timestamps_ps[:50], tags.channels[:50])
    with pytest.raises(MoziError, match="too few"):
        run_session(few, alice, link="x", store_alice=sa, store_bob=sb)
    odd = TagData(tags.timestamps_ps, tags.channels, 1, ("H", "V", "D", "Q"))
    with pytest.raises(MoziError, match="channel"):
        run_session(odd, alice, link="x", store_alice=sa, store_bob=sb)
    with pytest.raises(MoziError, match="device"):
        run_session(tags, alice, link="x", store_alice=sa, store_bob=sb,
                    config=SessionConfig(device="rtl"))
    assert sa.list() == [] and sb.list() == []


@pytest.mark.parametrize("bad", [dict(eps_sec=0.0), dict(eps_cor=1.0), dict(qber_threshold=0.6),
                                 dict(seed=-1), dict(alignment_sample=4)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SessionConfig(**bad)


class _FailingStore:
    """A key store whose writes fail (disk full, locked …)."""

    def add_key(self, *args, **kwargs):
        from mozi.host.errors import KeyStoreError
        raise KeyStoreError("disk full")


def test_a_key_never_stays_at_one_end_only(slice30, tmp_path):
    tags, alice, _ = slice30
    sa = KeyStore(tmp_path / "a.db")
    with pytest.raises(MoziError, match="disk full"):
        run_session(tags, alice, link="x", store_alice=sa, store_bob=_FailingStore(),
                    config=SessionConfig(seed=5))
    records = sa.list()
    assert records and all(r.state == "consumed" for r in records)
    assert all(sa.get(r.key_id).bits is None for r in records)


def test_alignment_center_for_tags_from_another_epoch(tmp_path):
    tags, alice, _ = _simulate(135.0, 143.0, seed=21)
    late = TagData(tags.timestamps_ps + 10**12, tags.channels)      # Bob's clock 1 s ahead
    sa, sb = KeyStore(tmp_path / "a.db"), KeyStore(tmp_path / "b.db")
    lost = run_session(late, alice, link="x", store_alice=sa, store_bob=sb,
                       config=SessionConfig(seed=1))
    assert lost.aborted and "alignment" in lost.abort_reason
    found = run_session(late, alice, link="x", store_alice=sa, store_bob=sb,
                        config=SessionConfig(seed=1, alignment_center=-10**8))
    # Bob counts slots of his (0.05 ppm fast) period: the extra second is 10^8 − 5 of them
    assert found.alignment["shift"] == -(10**8 - 5) - 100
    assert found.qber_x < 0.02


def test_profile_divides_partial_bins_by_the_time_they_cover():
    from mozi.host.session import _profile
    rate = 1000.0                               # slots per second
    slots = np.arange(5_000, 25_000, 2)         # 500 detections/s from t = 5 s to t = 25 s
    flags = np.zeros(slots.size, bool)
    points = _profile(10.0, rate, slots, flags, flags, (5_000, 25_000))
    assert [p["t_s"] for p in points] == [0.0, 10.0, 20.0]
    assert [p["duration_s"] for p in points] == [5.0, 10.0, 5.0]
    assert [p["sifted_kbps"] for p in points] == [0.5, 0.5, 0.5]
