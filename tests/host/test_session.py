"""The session engine on slices of the simulated Micius 2017 pass."""

import json

import numpy as np
import pytest
from mozi.host.errors import KeyStoreError
from mozi.host.keys.keystore import KeyStore
from mozi.host.postprocessing.session import (
    SessionConfig,
    SessionResult,
    decode_align_sample,
    decode_key_ids,
    decode_verify,
    run_session,
)
from mozi.sim import link, passes
from mozi.sim.errors import MoziError
from mozi.sim.eve import InterceptResend
from mozi.sim.tagfile import TagData

from tests.host.keys import linked_stores
from tests.host.nodes import kind

LINK = "sat-xinglong"


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
def slice10():
    """10 s: too short for a positive key, but the whole protocol runs up to that check."""
    return _simulate(130.0, 140.0, seed=11)


def _stores(tmp_path, link=LINK):
    return linked_stores(tmp_path, link, "satellite", "xinglong")


@pytest.fixture(scope="module")
def session30(slice30, tmp_path_factory):
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path_factory.mktemp("stores"))
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                      config=SessionConfig(insecure_seed=2017))
    return res, sa, sb


def _keys(store, ids):
    return [store.get(k) for k in ids]


def _same_keys(res, sa, sb) -> int:
    """Both stores hold the session's blocks with the same bits; returns their total size."""
    ka, kb = _keys(sa, res.key_ids), _keys(sb, res.key_ids)
    for a, b in zip(ka, kb, strict=True):
        np.testing.assert_array_equal(a.bits, b.bits)
    return sum(k.bits.size for k in ka)


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
    assert all(k.link == LINK and k.eps_sec == 1e-10 for k in ka + kb)
    # Alice and Bob may each send with half the key; the layout is the same at both ends
    assert [k.sender for k in ka] == [k.sender for k in kb] == res.key_senders
    assert abs(sa.status()[LINK]["send_bits"] - res.final_key_bits / 2) <= 1
    assert sa.status()[LINK]["send_bits"] == sb.status()[LINK]["receive_bits"]
    # figures consistent with the simulator's ground truth
    assert res.alignment["shift"] == -100        # 1 µs clock offset = 100 slots
    assert abs(res.timing["drift"] - 5e-8) < 1e-9
    assert res.in_window_fraction > 0.95
    assert abs(res.sifted_bits - sim.totals["sifted_bits"]) < 0.03 * sim.totals["sifted_bits"]
    assert 0.005 < res.qber_z < 0.02 and 0.005 < res.qber_x < 0.02
    assert 1.0 < res.ec_efficiency < 1.2
    assert res.ec_leaked_bits == res.finite_key["lambda_ec"]
    assert res.finite_key["length"] == res.final_key_bits + res.auth_bits_replenished
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
                "auth_bits_replenished", "final_key_bits", "aborted", "abort_reason",
                "key_ids", "key_senders", "finite_key", "profile", "timings",
                "insecure_reproducible"):
        assert key in back
    assert back["final_key_bits"] == res.final_key_bits
    assert isinstance(res, SessionResult)


def test_same_insecure_seed_same_key_and_marked(slice30, session30, tmp_path):
    tags, alice, _ = slice30
    first, sa, _ = session30
    sa2, sb2 = _stores(tmp_path)
    again = run_session(tags, alice, link=LINK, store_alice=sa2, store_bob=sb2,
                        config=SessionConfig(insecure_seed=2017))
    assert again.final_key_bits == first.final_key_bits
    assert again.ec_leaked_bits == first.ec_leaked_bits
    assert again.key_ids == first.key_ids               # the IDs replay too
    a1 = np.concatenate([k.bits for k in _keys(sa, first.key_ids)])
    a2 = np.concatenate([k.bits for k in _keys(sb2, again.key_ids)])
    np.testing.assert_array_equal(a1, a2)
    assert first.insecure_reproducible and first.insecure_seed == 2017
    assert all(k.meta["insecure_reproducible"] is True and k.meta["insecure_seed"] == 2017
               for k in _keys(sa, first.key_ids))


def test_intercept_resend_aborts_and_stores_nothing(tmp_path):
    tags, alice, sim = _simulate(130.0, 140.0, seed=11, eve=InterceptResend(1.0))
    assert sim.totals["qber"] > 0.2
    sa, sb = _stores(tmp_path, "sat-eve")
    res = run_session(tags, alice, link="sat-eve", store_alice=sa, store_bob=sb)
    assert res.aborted
    assert res.final_key_bits == 0 and res.key_ids == []
    assert "QBER" in res.abort_reason or "alignment" in res.abort_reason
    assert sa.list() == [] and sb.list() == []
    json.dumps(res.to_json())


def test_qber_threshold_just_below_the_observed_qber_aborts(slice30, tmp_path):
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                      config=SessionConfig(qber_threshold=0.0105))
    assert res.aborted and "QBER" in res.abort_reason
    assert sa.list() == [] and sb.list() == []


def test_unusable_input_raises(slice30, tmp_path):
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    few = TagData(tags.timestamps_ps[:50], tags.channels[:50])
    with pytest.raises(MoziError, match="too few"):
        run_session(few, alice, link=LINK, store_alice=sa, store_bob=sb)
    odd = TagData(tags.timestamps_ps, tags.channels, 1, ("H", "V", "D", "Q"))
    with pytest.raises(MoziError, match="channel"):
        run_session(odd, alice, link=LINK, store_alice=sa, store_bob=sb)
    with pytest.raises(MoziError, match="device"):
        run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                    config=SessionConfig(device="bogus"))
    with pytest.raises(MoziError, match="no authentication key for link 'other'"):
        run_session(tags, alice, link="other", store_alice=sa, store_bob=sb)
    assert sa.list() == [] and sb.list() == []


def test_stores_of_another_link_pair_are_refused(slice10, tmp_path):
    tags, alice, _ = slice10
    sa, _ = _stores(tmp_path / "one")
    _, sb = _stores(tmp_path / "two")                    # a different pre-shared key
    with pytest.raises(MoziError, match="do not match"):
        run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb)
    with pytest.raises(MoziError, match="both belong"):
        run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sa)


@pytest.mark.parametrize("bad", [dict(eps_sec=0.0), dict(eps_cor=1.0), dict(qber_threshold=0.6),
                                 dict(insecure_seed=-1), dict(insecure_seed=True),
                                 dict(alignment_sample=4), dict(alice_share=1.5),
                                 dict(auth_max_failures=0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SessionConfig(**bad)


class _FailingStore(KeyStore):
    """A key store whose session staging fails (disk full, locked …)."""

    def stage_session(self, *args, **kwargs):
        raise KeyStoreError("disk full")


def test_a_key_never_stays_at_one_end_only(slice30, tmp_path):
    """Bob stages the key before Alice commits hers: when his store fails, Alice hears it
    and stores nothing either, and the two authentication keys stay in step."""
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    sb.close()
    sb = _FailingStore(tmp_path / "xinglong.db")
    with pytest.raises(MoziError, match="disk full"):
        run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb)
    assert sa.list() == [] and sb.list() == []
    st_a, st_b = sa.auth_status()[LINK], sb.auth_status()[LINK]
    assert st_a["added_bits"] == st_b["added_bits"]
    assert [s["state"] for s in sa.sessions()] == [s["state"] for s in sb.sessions()] \
        == ["aborted"]
    nxt = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=_stores_b(tmp_path))
    assert not nxt.aborted and nxt.final_key_bits > 0


def _stores_b(tmp_path):
    return KeyStore(tmp_path / "xinglong.db")


def test_alignment_center_for_tags_from_another_epoch(tmp_path):
    tags, alice, _ = _simulate(135.0, 143.0, seed=21)
    late = TagData(tags.timestamps_ps + 10**12, tags.channels)      # Bob's clock 1 s ahead
    sa, sb = _stores(tmp_path)
    lost = run_session(late, alice, link=LINK, store_alice=sa, store_bob=sb)
    assert lost.aborted and "alignment" in lost.abort_reason
    found = run_session(late, alice, link=LINK, store_alice=sa, store_bob=sb,
                        config=SessionConfig(alignment_center=-10**8))
    # Bob counts slots of his (0.05 ppm fast) period: the extra second is 10^8 − 5 of them
    assert found.alignment["shift"] == -(10**8 - 5) - 100
    assert found.qber_x < 0.02


def test_profile_divides_partial_bins_by_the_time_they_cover():
    from mozi.host.postprocessing.session import _profile
    rate = 1000.0                               # slots per second
    slots = np.arange(5_000, 25_000, 2)         # 500 detections/s from t = 5 s to t = 25 s
    flags = np.zeros(slots.size, bool)
    points = _profile(10.0, rate, slots, flags, flags, (5_000, 25_000))
    assert [p["t_s"] for p in points] == [0.0, 10.0, 20.0]
    assert [p["duration_s"] for p in points] == [5.0, 10.0, 5.0]
    assert [p["sifted_kbps"] for p in points] == [0.5, 0.5, 0.5]


# -- secret randomness (defect 2 of the security issue) ----------------------------------------


def _published_integers(doc, records):
    """Every integer an eavesdropper can read in the result and the keys' metadata."""
    found = set()

    def walk(x):
        if isinstance(x, bool):
            return
        if isinstance(x, int) and x >= 0:
            found.add(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    for r in records:
        walk(r.to_dict())
    return found


def _old_decoder_words(seed: int, n: int) -> np.ndarray:
    """How Mozi 0.1 derived Bob's squashing words from the published session seed."""
    child = np.random.SeedSequence(seed).spawn(5)[0]
    decoder_seed = int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))
    rng = np.random.default_rng(decoder_seed)
    out = np.zeros(0, np.uint8)
    while out.size < n:
        out = np.concatenate([out, rng.integers(0, 4, 1 << 16, dtype=np.uint8)])
    return out[:n]


def test_squashing_words_cannot_be_predicted_from_published_data(slice30, tmp_path,
                                                                 monkeypatch):
    """Defect 2: Bob's random basis and bit for multi-click events came from numpy.random
    seeded by the session seed, published in the result and in every key's metadata — so the
    words (and with them Bob's bits of every cross-basis multi-click) could be recomputed
    from public data. Now they are ChaCha20 under a key from the OS CSPRNG that is never
    published: no published integer, by the old derivation or as a plain numpy seed,
    reproduces them."""
    from mozi.host.devices import device

    used = []
    take = device.RandomWordSource.take
    monkeypatch.setattr(device.RandomWordSource, "take",
                        lambda self, n: used.append(take(self, n)) or used[-1])
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb)
    assert not res.aborted and not res.insecure_reproducible and res.insecure_seed is None
    words = np.concatenate(used)[:4096]
    doc = res.to_json()
    assert "seed" not in doc and "session_seed" not in json.dumps(doc)
    candidates = _published_integers(doc, sa.list())
    assert candidates
    best = 0.0
    for c in sorted(candidates)[:2000]:
        for guess in (_old_decoder_words(c, words.size),
                      np.random.default_rng(c).integers(0, 4, words.size, dtype=np.uint8)):
            best = max(best, float(np.mean(guess == words)))
    assert best < 0.35, f"a published integer predicts {best:.0%} of Bob's squashing words"


def test_secure_sessions_on_the_same_data_give_unrelated_keys(slice30, session30, tmp_path):
    """Without the insecure seed, the hashing seeds and the key IDs are fresh each time."""
    tags, alice, _ = slice30
    first, sa1, _ = session30
    sa, sb = _stores(tmp_path)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb)
    assert not set(res.key_ids) & set(first.key_ids)
    k1 = np.concatenate([k.bits for k in _keys(sa1, first.key_ids)])
    k2 = np.concatenate([k.bits for k in _keys(sa, res.key_ids)])
    n = min(k1.size, k2.size)
    assert 0.45 < np.mean(k1[:n] == k2[:n]) < 0.55
    assert all(k.meta["insecure_reproducible"] is False and "insecure_seed" not in k.meta
               for k in _keys(sa, res.key_ids))


# -- the lasting authentication key (defect 5) ------------------------------------------------


def test_the_session_consumes_and_refills_the_lasting_key_exactly(session30):
    """Defect 5: each session drew a fresh bootstrap key in-process and nothing refilled or
    persisted it; the bits used for authentication were not subtracted from the stored key.
    Now the session authenticates with the stores' lasting key, the refill comes out of the
    final key, and both are reported exactly."""
    res, sa, sb = session30
    st_a, st_b = sa.auth_status()[LINK], sb.auth_status()[LINK]
    assert st_a["used_bits"] == st_b["used_bits"] == res.auth_bits_consumed
    assert res.auth_bits_replenished == res.auth_bits_consumed      # back to the full pool
    assert st_a["pad_bits"] == st_b["pad_bits"] == st_a["target_bits"]
    assert st_a["added_bits"] - res.auth_bits_replenished == sum(st_a["target_bits"]) + 128
    assert res.final_key_bits == res.finite_key["length"] - res.auth_bits_replenished
    assert st_a["next_seq"] == st_b["next_seq"] and min(st_a["next_seq"]) > 5


def _recorder(log):
    def tap(direction, frame):
        log.append((direction, frame))
        return [frame]
    return tap


def test_a_replayed_frame_of_an_earlier_session_aborts_the_session(slice10, tmp_path):
    """Defect 5: a channel rebuilt from the same bootstrap accepted a replayed old frame. In
    the second session a frame of the first is injected before a genuine one: it is rejected
    (and counted), the session aborts at both ends and stores nothing, and the link's next
    session runs to its own end."""
    tags, alice, _ = slice10
    sa, sb = _stores(tmp_path)
    log = []
    first = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                        tap=_recorder(log))
    old = [f for d, f in log if d == "alice->bob" and kind(f) == b"cascade-seed"][0]

    def replay(direction, frame):
        if direction == "alice->bob" and kind(frame) == b"cascade-seed":
            return [old, frame]
        return [frame]

    again = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb, tap=replay)
    assert first.aborted and "secret key length" in first.abort_reason
    assert again.aborted and "replayed message" in again.abort_reason
    assert sb.auth_status()[LINK]["failures"] == 1
    assert sa.list() == [] and sb.list() == []
    third = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb)
    assert third.aborted and "secret key length" in third.abort_reason


def _forged_sift_flags(copies: int):
    """A tap that puts ``copies`` forged copies of ``sift-flags`` before the genuine one."""
    def tap(direction, frame):
        if kind(frame) == b"sift-flags":
            bad = bytearray(frame)
            bad[40] ^= 1
            return [bytes(bad)] * copies + [frame]
        return [frame]
    return tap


@pytest.mark.parametrize("copies", [1, 3])
def test_tampered_frames_abort_the_session_then_the_link_recovers(slice10, tmp_path, copies):
    """A forged copy of a message, even followed by the genuine one, aborts the session at
    both ends, which store nothing. The two ends' pools stay in step, so the next session
    runs normally."""
    tags, alice, _ = slice10
    sa, sb = _stores(tmp_path)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                      tap=_forged_sift_flags(copies))
    assert res.aborted and "closed after 1 rejected frame" in res.abort_reason
    assert res.final_key_bits == 0 and sa.list() == [] and sb.list() == []
    nxt = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb)
    assert nxt.aborted and "secret key length" in nxt.abort_reason   # got to the very end
    assert sb.auth_status()[LINK]["failures"] == 1


def test_a_session_may_tolerate_rejected_frames(slice10, tmp_path):
    """With ``auth_max_failures=3`` two forged copies are skipped and the genuine frame
    behind them is taken; the third closes the channel."""
    tags, alice, _ = slice10
    sa, sb = _stores(tmp_path)
    config = SessionConfig(auth_max_failures=3)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb, config=config,
                      tap=_forged_sift_flags(2))
    assert res.aborted and "secret key length" in res.abort_reason    # went on to the end
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb, config=config,
                      tap=_forged_sift_flags(3))
    assert res.aborted and "closed after 3 rejected frames" in res.abort_reason
    assert sb.auth_status()[LINK]["failures"] == 5


def test_a_dropped_message_aborts_the_session(slice10, tmp_path):
    tags, alice, _ = slice10
    sa, sb = _stores(tmp_path)

    def drop(direction, frame):
        return [] if kind(frame) == b"x-errors" else [frame]

    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb, tap=drop)
    assert res.aborted and "out-of-order message" in res.abort_reason   # the next one came


def test_exhausted_authentication_key_aborts_cleanly(slice10, tmp_path):
    tags, alice, _ = slice10
    sa, sb = _stores(tmp_path)
    sa.close()
    sb.close()
    sa, sb = linked_stores(tmp_path / "small", LINK, "satellite", "xinglong",
                           key_bits=128 + 2 * 64 * 4)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb)
    assert res.aborted and "authentication key is exhausted" in res.abort_reason


def test_malformed_session_messages_are_protocol_aborts():
    from mozi.host.errors import ProtocolAbort

    ok = np.arange(3, dtype=">i8").tobytes() + bytes([0, 1, 0]) + bytes([1, 1, 0])
    slots, basis, bits = decode_align_sample(ok)
    assert slots.tolist() == [0, 1, 2] and basis.tolist() == [0, 1, 0]
    for bad in (b"", ok[:-1], ok[:24] + bytes([2, 0, 0]) + ok[27:]):
        with pytest.raises(ProtocolAbort, match="align-sample"):
            decode_align_sample(bad)
    with pytest.raises(ProtocolAbort, match="verify"):
        decode_verify(b"\x00\x00", 10, 50)
    with pytest.raises(ProtocolAbort, match="verify"):
        decode_verify((58).to_bytes(4, "big") + bytes(8), 10, 50)
    assert decode_key_ids(bytes(16)) == (0, 0, [])
    with pytest.raises(ProtocolAbort, match="key-ids"):
        decode_key_ids(bytes(20))


def _shows(frames, kcv: str) -> bool:
    """Whether any frame holds the check value, as bytes or as hex text (either case)."""
    raw = bytes.fromhex(kcv)
    return any(raw in f or kcv.encode() in f.lower() for f in frames)


def test_key_check_values_never_cross_the_classical_channel(slice30, tmp_path):
    """Check values are a function of the key, so Mozi shows them to the key's owner and never
    sends them: every frame of a session, both directions, is searched for every stored key's
    check value, raw and as hex text."""
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    log = []
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                      config=SessionConfig(insecure_seed=2017), tap=_recorder(log))
    assert not res.aborted and res.key_check_values
    frames = [f for _, f in log]
    assert {d for d, _ in log} == {"alice->bob", "bob->alice"}
    kcvs = [r.check_value for r in sb.list(LINK)]
    assert kcvs == res.key_check_values
    # the search finds a check value wherever a frame would carry it
    assert _shows([b"x" + bytes.fromhex(kcvs[0]) + b"y"], kcvs[0])
    assert _shows([b"kcv=" + kcvs[0].upper().encode()], kcvs[0])
    for kcv in kcvs:
        assert not _shows(frames, kcv), kcv


# -- key from both bases ------------------------------------------------------------------------

def test_both_bases_give_key_with_nothing_disclosed(session30, slice30, tmp_path):
    """``key_bases="zx"``: no X bit crosses the channel (no ``x-bits`` frame), both bases are
    corrected and distilled, each tested by the other's corrected errors with ε_sec/2, and
    the stores hold the same, longer key than the Z-only session of the same detections."""
    z_only = session30[0]
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    log = []
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb, tap=_recorder(log),
                      config=SessionConfig(insecure_seed=2017, key_bases="zx"))
    assert not res.aborted, res.abort_reason
    kinds = [kind(frame).decode() for _, frame in log]
    assert "x-bits" not in kinds and "x-errors" not in kinds and "ec-errors" in kinds
    assert kinds.count("cascade-seed") == 2
    fz, fx = res.finite_key, res.finite_key_x
    assert fz["length"] > 0 and fx["length"] > 0
    # each key's own leak, the other's errors as its test (per intensity, so the totals)
    assert fz["lambda_ec"] + fx["lambda_ec"] == res.ec_leaked_bits
    assert fz["qber_x"] == pytest.approx(res.qber_x) and fx["qber_x"] == pytest.approx(res.qber_z)
    assert fz["n_z_total"] + fx["n_z_total"] == res.sifted_bits
    # the X errors error correction found are the X QBER the Z-only session disclosed
    assert res.qber_x == pytest.approx(z_only.qber_x, abs=2e-3)
    assert res.final_key_bits > 1.6 * z_only.final_key_bits
    assert _same_keys(res, sa, sb) == res.final_key_bits


def test_both_bases_split_the_secrecy_parameter(slice30, tmp_path):
    """Each basis's bound runs at ε_sec/2: the security cost of each key part is that of
    ε_sec/2, so the whole is ε_sec-secret."""
    from mozi.host.postprocessing.finite_key import FiniteKeyParams, security_cost
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                      config=SessionConfig(insecure_seed=5, key_bases="zx", eps_sec=1e-9))
    half = security_cost(FiniteKeyParams(eps_sec=5e-10))
    assert res.finite_key["security_bits"] == pytest.approx(half)
    assert res.finite_key_x["security_bits"] == pytest.approx(half)


def test_intercept_resend_is_caught_with_both_bases_as_key(tmp_path):
    tags, alice, sim = _simulate(130.0, 140.0, seed=11, eve=InterceptResend(1.0))
    sa, sb = _stores(tmp_path, "sat-eve")
    res = run_session(tags, alice, link="sat-eve", store_alice=sa, store_bob=sb,
                      config=SessionConfig(key_bases="zx"))
    assert res.aborted and res.final_key_bits == 0
    assert "QBER" in res.abort_reason or "alignment" in res.abort_reason
    assert sa.list() == [] and sb.list() == []


def test_both_bases_with_ldpc(slice30, tmp_path):
    """Both bases as key, each corrected by LDPC (the X key's code rate from the Z QBER just
    measured): identical stores, each part's leak its syndromes and reveals."""
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb,
                      config=SessionConfig(insecure_seed=4, key_bases="zx",
                                           reconciliation="ldpc"))
    assert not res.aborted, res.abort_reason
    assert res.final_key_bits > 0 and res.finite_key_x is not None
    assert res.ec_efficiency > 1.1
    assert _same_keys(res, sa, sb) == res.final_key_bits


def test_an_undecoded_ldpc_frame_falls_back_to_cascade(session30, slice30, tmp_path,
                                                        monkeypatch):
    """LDPC leaving a frame undecoded (here: codes of 16 checks, one round) does not abort the
    session nor drop the frame: the key part is corrected by Cascade, and λ_EC is the LDPC
    syndromes plus Cascade's parities."""
    from mozi.host.postprocessing import ldpc
    monkeypatch.setattr(ldpc, "checks_for", lambda n, q: 16)
    monkeypatch.setattr(ldpc, "MAX_ROUNDS", 1)
    tags, alice, _ = slice30
    sa, sb = _stores(tmp_path)
    log = []
    res = run_session(tags, alice, link=LINK, store_alice=sa, store_bob=sb, tap=_recorder(log),
                      config=SessionConfig(insecure_seed=2017, reconciliation="ldpc"))
    assert not res.aborted, res.abort_reason
    kinds = [kind(frame).decode() for _, frame in log]
    assert "ldpc-syndromes" in kinds and "cascade-seed" in kinds and "ldpc-flips" not in kinds
    # the same seed draws the same Cascade seed as the Cascade-only session: its parities
    # plus the 16 syndrome bits of each frame, exactly
    frames = len(ldpc.frame_sizes(res.sifted_z_bits))
    cascade_only = session30[0]
    assert res.ec_leaked_bits == cascade_only.ec_leaked_bits + 16 * frames
    assert res.qber_z == cascade_only.qber_z
    assert _same_keys(res, sa, sb) == res.final_key_bits
