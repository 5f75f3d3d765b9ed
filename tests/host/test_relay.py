"""Trusted relay: Urumqi derives K_SM over authenticated links; every check happens before any
key is consumed; each input block is consumed exactly once, and only the satellite's."""

import dataclasses

import numpy as np
import pytest
from mozi.host.crypto.auth import AuthenticatedChannel, MemoryTransport
from mozi.host.errors import AuthenticationError, FileFormatError, KeyStoreError, ProtocolAbort
from mozi.host.keys.keystore import init_link
from mozi.host.keys.relay import (
    RelayAnnouncement,
    derive_relayed_key,
    relay_announcement,
    relay_keys,
    satellite_announce,
    send_announcement,
    station_accept,
)

from tests.host.keys import random_bits, share_key, stores

SEED = 4338
SM, SU, MU = "sat-moscow", "sat-urumqi", "moscow-urumqi"


def test_bit_level_relay():
    k_sm, k_su = random_bits(1000, 1), random_bits(1000, 2)
    ann = relay_announcement(k_sm, k_su)
    np.testing.assert_array_equal(derive_relayed_key(k_su, ann), k_sm)
    assert np.mean(ann == k_sm) < 0.6         # the announcement alone is not the key
    with pytest.raises(ValueError, match="equal lengths"):
        relay_announcement(k_sm, k_su[:-1])
    with pytest.raises(ValueError):
        derive_relayed_key(k_su[:10], ann)
    with pytest.raises(ValueError):
        relay_announcement(np.array([0, 2]), np.array([0, 1]))


@pytest.fixture
def net(tmp_path):
    """Satellite, Moscow and Urumqi with authenticated links; on each satellite link 80 % of
    the key is the satellite's to send with, the rest the station's."""
    sat, mos, uru = stores(tmp_path, "satellite", "moscow", "urumqi")
    init_link(SM, sat, mos)
    init_link(SU, sat, uru)
    k_sm, k_su = random_bits(12_500, SEED), random_bits(8_750, SEED + 1)
    meta_sm = {"pass_id": "zvenigorod-1", "eps_sec": 1e-10, "eps_cor": 1e-15}
    meta_su = {"pass_id": "nanshan-1", "eps_sec": 2e-10, "eps_cor": 1e-15}
    ids_sm = share_key(sat, mos, SM, k_sm, first_share=0.8, block_bits=3000, meta=meta_sm)
    ids_su = share_key(sat, uru, SU, k_su, first_share=0.8, block_bits=2000, meta=meta_su)
    yield sat, mos, uru, k_sm, ids_sm, ids_su
    for s in (sat, mos, uru):
        s.close()


def _channel(sat, station, link, tap=None):
    """The satellite's and the station's ends of one link, the satellite's opened."""
    t_sat, t_st = MemoryTransport.pair()
    sat_end = AuthenticatedChannel(sat.auth_key(link), t_sat)
    sat_end.open()
    return sat_end, AuthenticatedChannel(station.auth_key(link), t_st)


def _snapshot(*stores_):
    return [s.status() for s in stores_]


def test_relay_gives_identical_keys_under_identical_ids(net):
    sat, mos, uru, k_sm, ids_sm, ids_su = net
    ann = relay_keys(sat, mos, uru, block_bits=4096)
    assert ann.n_bits == 7000                # the satellite's share of the poorer link
    assert ann.input_ids == (tuple(ids_sm[:3]), tuple(ids_su[:4]))
    assert ann.eps_sec == pytest.approx(3e-10) and ann.eps_cor == pytest.approx(2e-15)
    m, u = mos.list(MU), uru.list(MU)
    assert [r.key_id for r in m] == [r.key_id for r in u] == list(ann.key_ids)
    assert [(r.sender, r.n_bits) for r in m] == [(r.sender, r.n_bits) for r in u] == \
        [("moscow", 3500), ("urumqi", 3500)]
    km = np.concatenate([mos.get(k).bits for k in ann.key_ids])
    ku = np.concatenate([uru.get(k).bits for k in ann.key_ids])
    np.testing.assert_array_equal(km, ku)
    np.testing.assert_array_equal(km, k_sm[:7000])
    assert m[0].eps_sec == pytest.approx(3e-10) and m[0].meta["relayed"] is True
    assert mos.peer(MU) == "urumqi" and uru.peer(MU) == "moscow"
    # every input block consumed once in every store; the stations' own blocks untouched
    assert sat.status()[SM]["send_bits"] == 1000 and sat.status()[SU]["send_bits"] == 0
    assert mos.status()[SM]["send_bits"] == 2500 and uru.status()[SU]["send_bits"] == 1750
    assert [r.state for r in mos.list(SM)] == ["consumed"] * 3 + ["available"] * 2
    assert all(r.state == "consumed" for r in uru.list(SU, sender="satellite"))


def test_the_relay_uses_only_the_satellites_own_blocks(net):
    """A station may have used its own blocks of the link already: the relay never takes
    them (else the relayed key could equal a pad the station used)."""
    sat, mos, uru, *_ = net
    with pytest.raises(KeyStoreError, match="cannot relay 7001 bits"):
        satellite_announce(sat, n_bits=7001)
    assert _snapshot(sat)[0][SM]["send_bits"] == 10_000


def test_a_flipped_bit_is_rejected_and_nothing_consumed(net):
    """Defect 3 of the security issue: ``relay_keys`` handed the announcement object to the
    stations directly, so a flipped bit was accepted silently and the stations ended one bit
    apart. Now it crosses each link's authenticated channel: the flipped frame is rejected
    and the station's store is unchanged."""
    sat, mos, uru, *_ = net
    ann = satellite_announce(sat, n_bits=100)
    sat_end, mos_end = _channel(sat, mos, SM)
    send_announcement(sat_end, ann)
    frame = bytearray(mos_end.transport.inbox[-1])
    frame[-12] ^= 1                                      # a bit of the announcement itself
    mos_end.transport.inbox[-1] = bytes(frame)
    mos_end.max_failures = 1
    before = _snapshot(mos)
    with pytest.raises(AuthenticationError, match="failed authentication"):
        station_accept(mos, mos_end, link=SM)
    assert _snapshot(mos) == before and MU not in mos.status()


def test_an_authentic_announcement_naming_blocks_of_another_link_is_refused(net):
    """Defect 3: a forged announcement could name blocks of another link and so turn them
    into relay key. The station now checks that every input block belongs to the link the
    announcement arrived on — and to the satellite — before it consumes anything."""
    sat, mos, uru, *_ = net
    other = stores(mos.path.parent, "kazan")[0]
    theirs = share_key(mos, other, "moscow-kazan", random_bits(4000, 9), first_share=0.0)
    ann = satellite_announce(sat, n_bits=3000)
    forged = dataclasses.replace(ann, input_ids=(tuple(theirs), ann.input_ids[1]))
    sat_end, mos_end = _channel(sat, mos, SM)
    send_announcement(sat_end, forged)
    before = _snapshot(mos)
    with pytest.raises(ProtocolAbort, match="not of link 'sat-moscow'"):
        station_accept(mos, mos_end, link=SM)
    assert _snapshot(mos) == before
    # blocks of the right link that the station may send with are refused too
    own = [r.key_id for r in mos.list(SM, sender="moscow")]
    send_announcement(sat_end, dataclasses.replace(ann, input_ids=(tuple(own[:1]),
                                                                   ann.input_ids[1])))
    with pytest.raises(KeyStoreError, match="for messages from 'moscow', not from "
                                            "'satellite'"):
        station_accept(mos, mos_end, link=SM)
    assert _snapshot(mos) == before


def test_a_wrong_key_id_count_consumes_nothing(net):
    """Defect 3: the input blocks were consumed before validation, so an announcement with
    too few key IDs destroyed key and stored none. Now the check comes first."""
    sat, mos, uru, *_ = net
    ann = satellite_announce(sat, n_bits=5000)
    short = dataclasses.replace(ann, input_ids=(ann.input_ids[0][:1], ann.input_ids[1]))
    sat_end, mos_end = _channel(sat, mos, SM)
    send_announcement(sat_end, short)
    before = _snapshot(mos)
    with pytest.raises(KeyStoreError, match="hold 3000 bits, 5000 announced"):
        station_accept(mos, mos_end, link=SM)
    assert _snapshot(mos) == before
    send_announcement(sat_end, ann)                      # the genuine one still works
    station_accept(mos, mos_end, link=SM)
    assert mos.available_bits(MU) == 5000


def test_replayed_announcement_is_rejected(net):
    """The same frame again fails the channel's sequence check; the same content in a new
    frame finds its input blocks used; either way nothing changes."""
    sat, mos, uru, *_ = net
    ann = satellite_announce(sat, n_bits=5000)
    sat_end, mos_end = _channel(sat, mos, SM)
    send_announcement(sat_end, ann)
    frame = mos_end.transport.inbox[-1]
    station_accept(mos, mos_end, link=SM)
    after = _snapshot(mos)
    mos_end.transport.inbox.append(frame)
    mos_end.max_failures = 1
    with pytest.raises(AuthenticationError, match="replayed"):
        station_accept(mos, mos_end, link=SM)
    mos_end2 = _channel(sat, mos, SM)
    send_announcement(mos_end2[0], ann)
    with pytest.raises(KeyStoreError, match="already used"):
        station_accept(mos, mos_end2[1], link=SM)
    assert _snapshot(mos) == after


def test_announcement_for_another_station_or_link_is_refused(net):
    sat, mos, uru, *_ = net
    ann = satellite_announce(sat, n_bits=2000)
    sat_end, mos_end = _channel(sat, mos, SM)
    swapped = dataclasses.replace(ann, links=(SU, SM))
    send_announcement(sat_end, swapped)
    with pytest.raises(ProtocolAbort, match="puts 'moscow' on link 'sat-urumqi'"):
        station_accept(mos, mos_end, link=SM)
    other = dataclasses.replace(ann, stations=("kazan", "urumqi"),
                                layout=tuple(("kazan" if s == "moscow" else s, n)
                                             for s, n in ann.layout))
    send_announcement(sat_end, other)
    with pytest.raises(ProtocolAbort, match="not for 'moscow'"):
        station_accept(mos, mos_end, link=SM)
    assert MU not in mos.status()


def test_relay_of_explicit_length_then_exhaustion(net):
    sat, mos, uru, *_ = net
    ann = relay_keys(sat, mos, uru, n_bits=1500)
    assert ann.n_bits == 1500 and len(ann.key_ids) == 2
    # blocks are whole: 1 of 3000 (sat-moscow) and 1 of 2000 (sat-urumqi) were spent
    assert sat.sendable_bits(SM) == 7000
    assert sat.sendable_bits(SU) == 5000
    with pytest.raises(KeyStoreError, match="cannot relay"):
        satellite_announce(sat, n_bits=6000)
    with pytest.raises(KeyStoreError, match="cannot relay"):
        satellite_announce(sat, n_bits=0)
    assert sat.sendable_bits(SU) == 5000              # a refused relay consumes nothing


def test_relay_over_a_tapped_link_fails_closed(net):
    """A man in the middle who rewrites the announcement on its way to Urumqi: Urumqi's
    channel rejects it and stores nothing; Moscow, reached untouched, has the key; Urumqi
    simply never gets it (no key that differs by a bit)."""
    sat, mos, uru, *_ = net

    def tap(link, frame):
        if link == SU and frame[13:18] == b"relay":
            bad = bytearray(frame)
            bad[-9] ^= 0x80
            return [bytes(bad)] * 3
        return [frame]

    with pytest.raises(AuthenticationError, match="closed"):
        relay_keys(sat, mos, uru, n_bits=2000, tap=tap)
    assert mos.available_bits(MU) == 2000 and MU not in uru.status()
    assert all(r.state == "available" for r in uru.list(SU))


def test_announcement_format_round_trip_and_errors(net):
    sat, *_ = net
    ann = satellite_announce(sat, n_bits=2500, block_bits=1000)
    raw = ann.to_bytes()
    got = RelayAnnouncement.from_bytes(raw)
    assert got == ann
    np.testing.assert_array_equal(got.announcement, ann.announcement)
    for bad in (raw[:-1], raw + b"\x00", b"XXXX" + raw[4:], raw[:10]):
        with pytest.raises(FileFormatError):
            RelayAnnouncement.from_bytes(bad)
    v = bytearray(raw)
    v[4] = 1                                            # the old format
    with pytest.raises(FileFormatError, match="version"):
        RelayAnnouncement.from_bytes(bytes(v))
