"""Trusted relay: Urumqi derives K_SM; each input block is consumed exactly once."""

import numpy as np
import pytest
from mozi.host.auth import AuthKeyPool, make_channel_pair
from mozi.host.errors import AuthenticationError, FileFormatError, KeyStoreError
from mozi.host.keystore import KeyStore
from mozi.host.relay import (
    RelayAnnouncement,
    derive_relayed_key,
    moscow_accept,
    relay_announcement,
    relay_keys,
    satellite_announce,
    urumqi_accept,
)

SEED = 4338


def _bits(n, seed):
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def test_bit_level_relay():
    k_sm, k_su = _bits(1000, 1), _bits(1000, 2)
    ann = relay_announcement(k_sm, k_su)
    np.testing.assert_array_equal(derive_relayed_key(k_su, ann), k_sm)
    # the announcement alone is not the key (it is K_SM masked by K_SU)
    assert np.mean(ann == k_sm) < 0.6
    with pytest.raises(ValueError, match="equal lengths"):
        relay_announcement(k_sm, k_su[:-1])
    with pytest.raises(ValueError):
        derive_relayed_key(k_su[:10], ann)
    with pytest.raises(ValueError):
        relay_announcement(np.array([0, 2]), np.array([0, 1]))


@pytest.fixture
def stores(tmp_path):
    sat, mos, uru = (KeyStore(tmp_path / f"{n}.db") for n in ("sat", "moscow", "urumqi"))
    k_sm = _bits(10_000, SEED)
    k_su = _bits(7_000, SEED + 1)
    ids_sm = sat.add_key("sat-moscow", k_sm, block_bits=3000,
                         meta={"pass_id": "zvenigorod-1", "eps_sec": 1e-10, "eps_cor": 1e-15})
    mos.add_key("sat-moscow", k_sm, key_ids=ids_sm, block_bits=3000,
                meta={"pass_id": "zvenigorod-1", "eps_sec": 1e-10, "eps_cor": 1e-15})
    ids_su = sat.add_key("sat-urumqi", k_su, block_bits=2000,
                         meta={"pass_id": "nanshan-1", "eps_sec": 2e-10, "eps_cor": 1e-15})
    uru.add_key("sat-urumqi", k_su, key_ids=ids_su, block_bits=2000,
                meta={"pass_id": "nanshan-1", "eps_sec": 2e-10, "eps_cor": 1e-15})
    yield sat, mos, uru, k_sm, ids_sm, ids_su
    for s in (sat, mos, uru):
        s.close()


def test_store_relay_gives_identical_keys_under_identical_ids(stores):
    sat, mos, uru, k_sm, ids_sm, ids_su = stores
    ann = relay_keys(sat, mos, uru, block_bits=4096)
    assert ann.n_bits == 7000                       # the shorter link bounds the relay
    assert ann.sm_key_ids == tuple(ids_sm[:3]) and ann.su_key_ids == tuple(ids_su)
    assert ann.eps_sec == pytest.approx(3e-10) and ann.eps_cor == pytest.approx(2e-15)
    m = mos.list("moscow-urumqi")
    u = uru.list("moscow-urumqi")
    assert [r.key_id for r in m] == [r.key_id for r in u] == list(ann.key_ids)
    assert [r.n_bits for r in m] == [4096, 2904]
    km = np.concatenate([mos.get(k).bits for k in ann.key_ids])
    ku = np.concatenate([uru.get(k).bits for k in ann.key_ids])
    np.testing.assert_array_equal(km, ku)
    np.testing.assert_array_equal(km, k_sm[:7000])
    assert m[0].eps_sec == pytest.approx(3e-10) and m[0].meta["relayed"] is True
    # every input block consumed once, in every store; the unused K_SM block survives
    assert sat.status()["sat-moscow"] == {"available_blocks": 1, "available_bits": 1000,
                                          "consumed_blocks": 3, "consumed_bits": 9000}
    assert sat.status()["sat-urumqi"]["available_blocks"] == 0
    assert [r.state for r in mos.list("sat-moscow")] == ["consumed"] * 3 + ["available"]
    assert all(r.state == "consumed" for r in uru.list("sat-urumqi"))


def test_announcement_cannot_be_applied_twice(stores):
    sat, mos, uru, *_ = stores
    ann = satellite_announce(sat, n_bits=5000)
    moscow_accept(mos, ann)
    urumqi_accept(uru, ann)
    with pytest.raises(KeyStoreError, match="already used"):
        urumqi_accept(uru, ann)
    with pytest.raises(KeyStoreError, match="already used"):
        moscow_accept(mos, ann)


def test_relay_of_explicit_length_then_exhaustion(stores):
    sat, mos, uru, *_ = stores
    ann = relay_keys(sat, mos, uru, n_bits=1500)
    assert ann.n_bits == 1500 and len(ann.key_ids) == 1
    # blocks are whole: 1 of 3000 (sat-moscow) and 1 of 2000 (sat-urumqi) were spent
    assert sat.available_bits("sat-moscow") == 7000
    assert sat.available_bits("sat-urumqi") == 5000
    with pytest.raises(KeyStoreError, match="cannot relay"):
        satellite_announce(sat, n_bits=6000)
    with pytest.raises(KeyStoreError, match="cannot relay"):
        satellite_announce(sat, n_bits=0)
    assert sat.available_bits("sat-urumqi") == 5000   # a refused relay consumes nothing


def test_tampered_announcement_gives_different_keys(stores):
    sat, mos, uru, *_ = stores
    ann = satellite_announce(sat, n_bits=100)
    moscow_accept(mos, ann)
    ann.announcement[3] ^= 1              # a flipped public bit is not detected by the relay
    urumqi_accept(uru, ann)               # itself: the stations' key check must catch it
    (kid,) = ann.key_ids
    assert np.sum(mos.get(kid).bits != uru.get(kid).bits) == 1


def test_announcement_travels_over_the_authenticated_channel(stores):
    sat, mos, uru, *_ = stores
    ann = satellite_announce(sat, n_bits=2500, block_bits=1000)
    boot = _bits(1024, 9)
    to_moscow = make_channel_pair(AuthKeyPool(boot), AuthKeyPool(boot.copy()))
    frame = to_moscow[0].send("relay", ann.to_bytes())
    bad = bytearray(frame)
    bad[-20] ^= 1                          # a bit of the announcement itself
    with pytest.raises(AuthenticationError):
        to_moscow[1].verify_frame(bytes(bad))
    kind, payload = to_moscow[1].receive()
    got = RelayAnnouncement.from_bytes(payload)
    assert (got.n_bits, got.block_bits, got.key_ids, got.sm_key_ids, got.su_key_ids,
            got.eps_sec, got.eps_cor) == (ann.n_bits, ann.block_bits, ann.key_ids,
                                           ann.sm_key_ids, ann.su_key_ids, ann.eps_sec,
                                           ann.eps_cor)
    np.testing.assert_array_equal(got.announcement, ann.announcement)
    assert moscow_accept(mos, got) == urumqi_accept(uru, got) == list(ann.key_ids)
    with pytest.raises(FileFormatError):
        RelayAnnouncement.from_bytes(payload[:-1])
    with pytest.raises(FileFormatError):
        RelayAnnouncement.from_bytes(b"XXXX" + payload[4:])
