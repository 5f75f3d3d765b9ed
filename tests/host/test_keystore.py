"""Key store: identical IDs and senders at both ends, atomic writes, every block used once, by
one sender; keys at rest readable by their owner only and erased when consumed."""

import multiprocessing
import os
import signal
import sqlite3
import stat
import time
import uuid

import numpy as np
import pytest
from mozi.host.crypto.auth import AuthenticatedChannel, MemoryTransport
from mozi.host.errors import KeyStoreError
from mozi.host.keys.keystore import (
    DEFAULT_BLOCK_BITS,
    KeyStore,
    block_sizes,
    default_store_path,
    init_link,
    key_layout,
    new_key_ids,
)

from tests.host.keys import share_key

SEED = 20261126
ME, PEER = "moscow", "satellite"


def _key(n, seed=SEED):
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def _mine(n, block_bits=None):
    """Layout of an n-bit key that this store's party (ME) may send with, all of it."""
    return [(ME, s) for s in block_sizes(n, block_bits)]


def _peers(n, block_bits=None):
    return [(PEER, s) for s in block_sizes(n, block_bits)]


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "keys.db", party=ME) as s:
        yield s


def test_block_sizes_and_layout():
    assert block_sizes(1) == [1]
    assert block_sizes(DEFAULT_BLOCK_BITS) == [DEFAULT_BLOCK_BITS]
    assert block_sizes(2 * DEFAULT_BLOCK_BITS + 5) == [DEFAULT_BLOCK_BITS] * 2 + [5]
    assert block_sizes(10, 3) == [3, 3, 3, 1]
    with pytest.raises(ValueError):
        block_sizes(0)
    with pytest.raises(ValueError):
        block_sizes(10, 0)
    assert key_layout(10, ("a", "b"), block_bits=3) == [("a", 3), ("a", 2), ("b", 3),
                                                         ("b", 2)]
    assert key_layout(10, ("a", "b"), first_share=1.0) == [("a", 10)]
    assert key_layout(10, ("a", "b"), first_share=0.0) == [("b", 10)]
    assert key_layout(10, ("a", "b"), first_share=0.25) == [("a", 2), ("b", 8)]
    for bad in (dict(first_share=1.5), dict(first_share=-0.1)):
        with pytest.raises(ValueError):
            key_layout(10, ("a", "b"), **bad)
    with pytest.raises(ValueError):
        key_layout(10, ("a", "a"))
    ids = new_key_ids(4)
    assert len(ids) == 4 and len(set(ids)) == 4
    assert all(str(uuid.UUID(k)) == k for k in ids)


def test_default_store_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MOZI_KEYSTORE", str(tmp_path / "x.db"))
    assert default_store_path() == tmp_path / "x.db"
    monkeypatch.delenv("MOZI_KEYSTORE")
    assert default_store_path().name == "mozi-keys.db"


def test_add_split_and_get_roundtrip(store):
    key = _key(3 * 1000 + 17)
    layout = key_layout(key.size, (ME, PEER), first_share=2017 / 3017, block_bits=1000)
    ids = store.add_key("sat-moscow", key, peer=PEER, layout=layout,
                        meta={"pass_id": "2017-12-01", "eps_sec": 1e-10, "eps_cor": 1e-15,
                              "qber": 0.012})
    assert len(ids) == 4
    got = [store.get(k) for k in ids]
    assert [(r.sender, r.n_bits) for r in got] == [(ME, 1000), (ME, 1000), (ME, 17),
                                                    (PEER, 1000)]
    np.testing.assert_array_equal(np.concatenate([r.bits for r in got]), key)
    r = got[0]
    assert (r.link, r.state, r.pass_id, r.eps_sec, r.eps_cor) == \
        ("sat-moscow", "available", "2017-12-01", 1e-10, 1e-15)
    assert r.meta == {"qber": 0.012}
    assert "bits" not in r.to_dict() and r.to_dict()["sender"] == ME
    assert store.get(ids[0]).state == "available"               # get consumes nothing
    assert store.available_bits("sat-moscow") == key.size
    assert store.sendable_bits("sat-moscow") == 2017
    assert store.links() == {"sat-moscow": PEER} and store.peer("sat-moscow") == PEER


def test_both_parties_store_identical_keys_under_identical_ids(tmp_path):
    key = _key(20000)
    with KeyStore(tmp_path / "alice.db", party="alice") as a, \
            KeyStore(tmp_path / "bob.db", party="bob") as b:
        ids = share_key(a, b, "link", key, block_bits=4096)
        assert [a.get(k).sender for k in ids] == [b.get(k).sender for k in ids]
        got_a = dict(a.reserve("link", 10_000))
        got_b = b.consume_many(list(got_a), sender="alice")
        for bits_a, bits_b in zip(got_a.values(), got_b, strict=True):
            np.testing.assert_array_equal(bits_a, bits_b)
        assert a.status()["link"]["send_bits"] == b.status()["link"]["receive_bits"] == 0


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "1234"])
def test_invalid_key_ids_rejected(store, bad):
    with pytest.raises(KeyStoreError, match="invalid key ID"):
        store.add_key("l", _key(10), peer=PEER, layout=_mine(10), key_ids=[bad])


def test_add_is_atomic_on_duplicate_id(store):
    ids = store.add_key("l", _key(30), peer=PEER, layout=_mine(30, 10))
    fresh = [str(uuid.uuid4()), ids[1], str(uuid.uuid4())]
    with pytest.raises(KeyStoreError, match="already in"):
        store.add_key("l", _key(30, 1), peer=PEER, layout=_mine(30, 10), key_ids=fresh)
    assert len(store.list()) == 3      # nothing of the failed key was stored
    with pytest.raises(KeyStoreError, match="unknown key ID"):
        store.get(fresh[0])
    with pytest.raises(KeyStoreError, match="given twice"):
        store.add_key("l", _key(20), peer=PEER, layout=_mine(20, 10),
                      key_ids=[fresh[0], fresh[0]])
    with pytest.raises(KeyStoreError, match="1 key IDs given for a key of 2"):
        store.add_key("l", _key(20), peer=PEER, layout=_mine(20, 10), key_ids=[fresh[0]])


def test_add_validates_input(store):
    with pytest.raises(ValueError):
        store.add_key("l", np.array([0, 2, 1], np.uint8), peer=PEER, layout=_mine(3))
    with pytest.raises(ValueError):
        store.add_key("l", np.zeros(0, np.uint8), peer=PEER, layout=[])
    with pytest.raises(KeyStoreError, match="invalid link name"):
        store.add_key("", _key(8), peer=PEER, layout=_mine(8))
    with pytest.raises(ValueError, match="eps_sec"):
        store.add_key("l", _key(8), peer=PEER, layout=_mine(8), meta={"eps_sec": 2.0})
    with pytest.raises(ValueError, match="JSON"):
        store.add_key("l", _key(8), peer=PEER, layout=_mine(8), meta={"x": object()})
    with pytest.raises(ValueError, match="covers 7 bits"):
        store.add_key("l", _key(8), peer=PEER, layout=_mine(7))
    with pytest.raises(KeyStoreError, match="neither 'moscow' nor the peer"):
        store.add_key("l", _key(8), peer=PEER, layout=[("urumqi", 8)])
    with pytest.raises(KeyStoreError, match="with itself"):
        store.add_key("l", _key(8), peer=ME, layout=_mine(8))
    assert store.list() == []


def test_a_link_has_one_peer(store):
    store.add_key("sat-moscow", _key(8), peer=PEER, layout=_mine(8))
    with pytest.raises(KeyStoreError, match="shared with 'satellite', not 'urumqi'"):
        store.add_key("sat-moscow", _key(8), peer="urumqi", layout=[("urumqi", 8)])


def test_numpy_metadata_is_stored_as_plain_json(store):
    (kid,) = store.add_key("l", _key(8), peer=PEER, layout=_mine(8),
                           meta={"n": np.int64(7), "q": np.float32(0.5), "v": np.arange(3),
                                 "eps_sec": np.float64(1e-9)})
    r = store.get(kid)
    assert r.meta == {"n": 7, "q": 0.5, "v": [0, 1, 2]} and r.eps_sec == 1e-9


def test_consume_once_as_receiver(store):
    key = _key(64)
    (kid,) = store.add_key("l", key, peer=PEER, layout=_peers(64))
    np.testing.assert_array_equal(store.consume(kid, sender=PEER, purpose="test"), key)
    with pytest.raises(KeyStoreError, match=f"key {kid} already used"):
        store.consume(kid, sender=PEER)
    r = store.get(kid)
    assert r.state == "consumed" and r.bits is None and r.purpose == "test"
    assert r.consumed_at is not None
    raw = sqlite3.connect(store.path).execute(
        "SELECT bits FROM keys WHERE key_id = ?", (kid,)).fetchone()[0]
    assert raw is None                                # the key material is erased


def test_receiving_checks_the_sender(store):
    """A block is consumed by ID only for a message from its sender, which is the peer."""
    mine = store.add_key("l", _key(64), peer=PEER, layout=_mine(64))
    theirs = store.add_key("l", _key(64, 1), peer=PEER, layout=_peers(64))
    with pytest.raises(KeyStoreError, match="own key blocks"):
        store.consume_many(mine, sender=ME)
    with pytest.raises(KeyStoreError, match="for messages from 'moscow', not from 'satellite'"):
        store.consume_many(mine, sender=PEER)
    with pytest.raises(KeyStoreError, match="for messages from 'satellite', not from 'x'"):
        store.consume_many(theirs, sender="x")
    assert all(store.get(k).state == "available" for k in mine + theirs)
    store.consume_many(theirs, sender=PEER)


def test_unknown_id(store):
    with pytest.raises(KeyStoreError, match="unknown key ID"):
        store.consume(str(uuid.uuid4()), sender=PEER)
    with pytest.raises(KeyStoreError, match="unknown key ID"):
        store.get(str(uuid.uuid4()))


def test_consume_many_all_or_nothing(store):
    ids = store.add_key("l", _key(40), peer=PEER, layout=_peers(40, 10))
    store.consume(ids[2], sender=PEER)
    with pytest.raises(KeyStoreError, match="already used"):
        store.consume_many(ids, sender=PEER)
    assert [store.get(k).state for k in ids] == ["available", "available", "consumed",
                                                 "available"]
    with pytest.raises(KeyStoreError, match="unknown"):
        store.consume_many([ids[0], str(uuid.uuid4())], sender=PEER)
    assert store.get(ids[0]).state == "available"


def test_reserve_takes_this_partys_oldest_blocks(store):
    first = store.add_key("a", _key(300, 1), peer=PEER, layout=_mine(300, 100))
    other = store.add_key("b", _key(300, 2), peer=PEER, layout=_mine(300, 100))
    theirs = store.add_key("a", _key(300, 4), peer=PEER, layout=_peers(300, 100))
    second = store.add_key("a", _key(300, 3), peer=PEER, layout=_mine(300, 100))
    got = store.reserve("a", 250)
    assert [k for k, _ in got] == first
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), _key(300, 1))
    got = store.reserve("a", 101)
    assert [k for k, _ in got] == second[:2]                 # the peer's blocks are skipped
    with pytest.raises(KeyStoreError, match="not enough key on link 'a' for 'moscow' to send "
                                            "with: 101 bits needed, 100 available; 300 more "
                                            "are the peer's"):
        store.reserve("a", 101)
    assert store.get(second[2]).state == "available"     # failed reserve consumed nothing
    assert all(store.get(k).state == "available" for k in other + theirs)
    with pytest.raises(KeyStoreError, match="not enough"):
        store.reserve("nope", 1)


def test_list_and_status(store):
    store.add_key("x", _key(25), peer=PEER, layout=key_layout(25, (ME, PEER),
                                                                 block_bits=10))
    ids = store.add_key("y", _key(8), peer="urumqi", layout=[("urumqi", 8)])
    store.consume(ids[0], sender="urumqi")
    assert [r.link for r in store.list()] == ["x"] * 4 + ["y"]
    assert len(store.list("x")) == 4 and len(store.list("x", sender=ME)) == 2
    assert [r.key_id for r in store.list(state="consumed")] == ids
    assert all(r.bits is None for r in store.list())
    assert store.status() == {
        "x": {"peer": PEER, "available_blocks": 4, "available_bits": 25,
              "consumed_blocks": 0, "consumed_bits": 0, "send_bits": 12, "receive_bits": 13},
        "y": {"peer": "urumqi", "available_blocks": 0, "available_bits": 0,
              "consumed_blocks": 1, "consumed_bits": 8, "send_bits": 0, "receive_bits": 0},
    }
    with pytest.raises(ValueError):
        store.list(state="gone")


def test_persistence_wal_and_secure_delete(tmp_path):
    path = tmp_path / "k.db"
    with KeyStore(path, party=ME) as s:
        ids = s.add_key("l", _key(50), peer=PEER, layout=_mine(50))
        assert s._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    with KeyStore(path, create=False) as s:
        np.testing.assert_array_equal(s.get(ids[0]).bits, _key(50))
        assert s.party == ME
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_party_is_named_once(tmp_path):
    with pytest.raises(KeyStoreError, match="needs the name of its party"):
        KeyStore(tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()
    with KeyStore(tmp_path / "k.db", party=ME):
        pass
    with pytest.raises(KeyStoreError, match="belongs to 'moscow', not 'urumqi'"):
        KeyStore(tmp_path / "k.db", party="urumqi")
    with pytest.raises(KeyStoreError, match="invalid party name"):
        KeyStore(tmp_path / "x.db", party="mos cow")


def test_missing_or_foreign_file(tmp_path):
    with pytest.raises(KeyStoreError, match="no key store"):
        KeyStore(tmp_path / "missing.db", create=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KeyStoreError, match="not a usable key store"):
        KeyStore(junk, party=ME)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(KeyStoreError, match="not a Mozi key store"):
        KeyStore(other, party=ME)


def test_a_store_of_the_old_schema_is_refused_and_left_unchanged(tmp_path):
    """Stores of schema 1 have blocks without a sender; using them could reuse a pad."""
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE keys (seq INTEGER PRIMARY KEY, key_id TEXT, bits BLOB)")
    db.execute("INSERT INTO keys (key_id, bits) VALUES ('k', x'abcd')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    before = old.read_bytes()
    with pytest.raises(KeyStoreError, match="schema version 1.*no sender.*left unchanged"):
        KeyStore(old, party=ME)
    assert old.read_bytes() == before


def test_two_objects_on_one_file_never_share_a_key(tmp_path):
    path = tmp_path / "k.db"
    a, b = KeyStore(path, party=ME), KeyStore(path)
    theirs = a.add_key("l", _key(10), peer=PEER, layout=_peers(10))
    ids = a.add_key("l", _key(100), peer=PEER, layout=_mine(100, 10))
    a.consume(theirs[0], sender=PEER)
    with pytest.raises(KeyStoreError, match="already used"):
        b.consume(theirs[0], sender=PEER)
    got_a = [k for k, _ in a.reserve("l", 30)]
    got_b = [k for k, _ in b.reserve("l", 30)]
    assert not set(got_a) & set(got_b)
    assert got_a == ids[0:3] and got_b == ids[3:6]
    a.close()
    b.close()


def _worker(path, ids, barrier, queue):
    store = KeyStore(path)
    barrier.wait()
    won = []
    for kid in ids:
        try:
            store.consume(kid, sender=PEER)
            won.append(kid)
        except KeyStoreError:
            pass
    while True:
        try:
            won.extend(k for k, _ in store.reserve("l", 1))
        except KeyStoreError:
            break
    store.close()
    queue.put(won)


def test_processes_never_hand_out_a_key_twice(tmp_path):
    path = tmp_path / "k.db"
    with KeyStore(path, party=ME) as s:
        contested = s.add_key("l", _key(240), peer=PEER, layout=_peers(240, 4))  # 60 by ID
        ids = contested + s.add_key("l", _key(160, 1), peer=PEER,
                                    layout=_mine(160, 4))                     # 40 by reserve
    ctx = multiprocessing.get_context("fork")
    n = 3
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, contested[::(-1) ** i], barrier, queue))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    handed = [k for r in results for k in r]
    assert sorted(handed) == sorted(ids)                 # every block exactly once
    with KeyStore(path) as s:
        assert s.status()["l"]["available_blocks"] == 0


def test_reserve_many_is_all_or_nothing(store):
    a = store.add_key("a", _key(100, 1), peer=PEER, layout=_mine(100, 50))
    b = store.add_key("b", _key(100, 2), peer=PEER, layout=_mine(100, 50))
    with pytest.raises(KeyStoreError, match="not enough key on link 'b'"):
        store.reserve_many({"a": 60, "b": 101})
    assert store.available_bits("a") == 100          # link a untouched by the failed call
    got = store.reserve_many({"a": 60, "b": 40}, purpose="relay")
    assert [k for k, _ in got["a"]] == a and [k for k, _ in got["b"]] == b[:1]
    assert store.get(a[0]).purpose == "relay"
    with pytest.raises(ValueError):
        store.reserve_many({"a": 0})


def test_discard_erases_blocks_of_either_sender(store):
    ids = store.add_key("l", _key(20), peer=PEER, layout=key_layout(20, (ME, PEER)))
    store.discard(ids, reason="peer failed")
    assert all(store.get(k).state == "consumed" for k in ids)
    assert store.get(ids[0]).purpose == "discarded: peer failed"


def test_derive_key_is_atomic(store):
    """The relay's station step: consume received blocks, store the derived key, or nothing."""
    src = store.add_key("sat-moscow", _key(300), peer=PEER, layout=_peers(300, 100))
    new = new_key_ids(2)
    layout = [(ME, 150), ("urumqi", 100)]
    with pytest.raises(KeyStoreError, match="hold 300 bits, 400 announced"):
        store.derive_key(src, sender=PEER, n_bits=400, derive=lambda b: b, link="relay",
                         peer="urumqi", layout=layout, new_ids=new)
    store.add_key("other", _key(8), peer="x", layout=[("x", 8)], key_ids=[new[1]])
    with pytest.raises(KeyStoreError, match="already in"):
        store.derive_key(src, sender=PEER, n_bits=250, derive=lambda b: b, link="relay",
                         peer="urumqi", layout=layout, new_ids=new)
    assert all(store.get(k).state == "available" for k in src)   # nothing consumed
    new = new_key_ids(2)
    got = store.derive_key(src, sender=PEER, n_bits=250, derive=lambda b: 1 - b, link="relay",
                           peer="urumqi", layout=layout, new_ids=new)
    bits = np.concatenate([store.get(k).bits for k in got])
    np.testing.assert_array_equal(bits, 1 - _key(300)[:250])
    assert all(store.get(k).state == "consumed" for k in src)


# -- keys at rest --------------------------------------------------------------------------


def test_store_files_are_private(tmp_path):
    """Defect 4 of the security issue: stores (and their -wal and -shm files) were created
    0644, world-readable, keys in clear. Now the file is created 0600 before SQLite opens it,
    SQLite gives its journal files the same mode, and a missing folder is made 0700."""
    old = os.umask(0o022)
    try:
        with KeyStore(tmp_path / "new" / "dir" / "k.db", party=ME) as s:
            s.add_key("l", _key(100), peer=PEER, layout=_mine(100))
            files = [s.path, s.path.with_name("k.db-wal"), s.path.with_name("k.db-shm")]
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_an_existing_store_with_loose_permissions_is_tightened(tmp_path):
    path = tmp_path / "k.db"
    KeyStore(path, party=ME).close()
    os.chmod(path, 0o644)
    with KeyStore(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _files_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir()
                    if p.name.startswith(path.name))


def test_consumed_key_leaves_no_copy_in_the_files(tmp_path):
    """Defect 4: consumed key bytes stayed in the -wal file (and in the database pages) until
    a checkpoint, and ``secure_delete`` was never set. Now every erasing transaction zeroes
    the freed bytes and checkpoints and truncates the log before it returns."""
    path = tmp_path / "k.db"
    with KeyStore(path, party=ME) as s:
        blocks = [_key(1024, i) for i in range(8)]
        ids = [s.add_key("l", b, peer=PEER, layout=_mine(1024))[0] for b in blocks]
        raw = [np.packbits(b).tobytes() for b in blocks]
        assert all(r in _files_bytes(path) for r in raw)           # stored keys are there
        s.reserve("l", 3 * 1024)                                     # sender side
        s.discard(ids[3:5], reason="test")                           # aborted storage
        data = _files_bytes(path)
        assert [r in data for r in raw] == [False] * 5 + [True] * 3
        assert (tmp_path / "k.db-wal").stat().st_size == 0


def _consume_forever(path, ready):
    store = KeyStore(path)
    ready.set()
    while True:
        try:
            store.reserve("l", 1)
        except KeyStoreError:
            time.sleep(0.01)


def test_consumed_key_leaves_no_copy_after_random_kills(tmp_path):
    """Defect 4: after random SIGKILLs of a process consuming key, the consumed blocks' bytes
    were found in the -wal file after 58 of 60 kills. Now no consumed block survives in any
    file once the store is opened again (opening checkpoints a log a killed process left)."""
    path = tmp_path / "k.db"
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    blocks = [_key(1024, 1000 + i) for i in range(240)]
    raw = [np.packbits(b).tobytes() for b in blocks]
    with KeyStore(path, party=ME) as s:
        for b in blocks:
            s.add_key("l", b, peer=PEER, layout=_mine(1024))
    ctx = multiprocessing.get_context("fork")
    kills = 0
    while kills < 60:
        ready = ctx.Event()
        proc = ctx.Process(target=_consume_forever, args=(path, ready))
        proc.start()
        assert ready.wait(30)
        time.sleep(float(rng.uniform(0.0, 0.02)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        kills += 1
        with KeyStore(path) as s:
            consumed = {r.key_id for r in s.list(state="consumed")}
            order = [r.key_id for r in s.list()]
        data = _files_bytes(path)
        leaked = [i for i, kid in enumerate(order) if kid in consumed and raw[i] in data]
        assert leaked == [], f"kill {kills}: consumed blocks {leaked} still on disk"
    assert len(consumed) > 60                # the kills landed while keys were being consumed


# -- authentication keys -------------------------------------------------------------------


def test_auth_key_pairs_and_persistence(tmp_path):
    a, b = KeyStore(tmp_path / "a.db", party="a"), KeyStore(tmp_path / "b.db", party="b")
    pads = init_link("ab", a, b, key_bits=128 + 2 * 64 * 10)
    assert pads == 10
    with pytest.raises(KeyStoreError, match="already"):
        init_link("ab", a, b)
    sa, sb = a.auth_status()["ab"], b.auth_status()["ab"]
    assert (sa["role"], sb["role"], sa["peer"], sb["peer"]) == (0, 1, "b", "a")
    assert sa["pad_bits"] == sb["pad_bits"] == [640, 640]
    pa = a.auth_key("ab")
    pa.use(0, 2)                                  # pads 0 and 1 burned, 2 used
    with KeyStore(tmp_path / "a.db") as again:
        st = again.auth_status()["ab"]
        assert st["next_seq"] == [3, 0] and st["pad_bits"] == [448, 640]
        assert st["used_bits"] == 192
        assert again.auth_key("ab").pad(0, 3) == pa.pad(0, 3)
    with pytest.raises(KeyStoreError, match="no authentication key for link 'x'"):
        a.auth_key("x")
    a.close()
    b.close()


def test_an_auth_key_is_never_used_by_two_objects_at_once(tmp_path):
    """Two channels on one link (two processes, two KeyStore objects) would pick the same pad:
    the second to write is refused (optimistic locking on the row's version)."""
    a, b = KeyStore(tmp_path / "a.db", party="a"), KeyStore(tmp_path / "b.db", party="b")
    init_link("ab", a, b)
    first, second = a.auth_key("ab"), KeyStore(tmp_path / "a.db").auth_key("ab")
    c1 = AuthenticatedChannel(first, MemoryTransport.pair()[0])
    c2 = AuthenticatedChannel(second, MemoryTransport.pair()[0])
    c1.open()
    with pytest.raises(KeyStoreError, match="used by another process"):
        c2.open()
    assert a.auth_status()["ab"]["next_seq"] == [1, 0]


def test_init_link_installs_both_or_neither(tmp_path):
    a, b = KeyStore(tmp_path / "a.db", party="a"), KeyStore(tmp_path / "b.db", party="b")
    b.add_key("ab", _key(8), peer="zz", layout=[("zz", 8)])     # ab leads elsewhere at b
    with pytest.raises(KeyStoreError, match="shared with 'zz'"):
        init_link("ab", a, b)
    assert not a.has_auth_key("ab") and not b.has_auth_key("ab")
    assert a.links() == {}                                  # no trace of the attempt at a
    with pytest.raises(ValueError, match="tag_bits"):
        init_link("cd", a, b, tag_bits=32)
