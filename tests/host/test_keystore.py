"""Key store: identical IDs at both ends, atomic writes, every block handed out once."""

import multiprocessing
import sqlite3
import uuid

import numpy as np
import pytest
from mozi.host.errors import KeyStoreError
from mozi.host.keystore import (
    DEFAULT_BLOCK_BITS,
    KeyStore,
    block_sizes,
    default_store_path,
    new_key_ids,
)

SEED = 20261126


def _key(n, seed=SEED):
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "keys.db") as s:
        yield s


def test_block_sizes():
    assert block_sizes(1) == [1]
    assert block_sizes(DEFAULT_BLOCK_BITS) == [DEFAULT_BLOCK_BITS]
    assert block_sizes(2 * DEFAULT_BLOCK_BITS + 5) == [DEFAULT_BLOCK_BITS] * 2 + [5]
    assert block_sizes(10, 3) == [3, 3, 3, 1]
    with pytest.raises(ValueError):
        block_sizes(0)
    with pytest.raises(ValueError):
        block_sizes(10, 0)
    ids = new_key_ids(10, 3)
    assert len(ids) == 4 and len(set(ids)) == 4
    assert all(str(uuid.UUID(k)) == k for k in ids)


def test_default_store_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MOZI_KEYSTORE", str(tmp_path / "x.db"))
    assert default_store_path() == tmp_path / "x.db"
    monkeypatch.delenv("MOZI_KEYSTORE")
    assert default_store_path().name == "mozi-keys.db"


def test_add_split_and_get_roundtrip(store):
    key = _key(3 * 1000 + 17)
    ids = store.add_key("sat-moscow", key, block_bits=1000,
                        meta={"pass_id": "2017-12-01", "eps_sec": 1e-10, "eps_cor": 1e-15,
                              "qber": 0.012})
    assert len(ids) == 4
    got = [store.get(k) for k in ids]
    assert [r.n_bits for r in got] == [1000, 1000, 1000, 17]
    np.testing.assert_array_equal(np.concatenate([r.bits for r in got]), key)
    r = got[0]
    assert (r.link, r.state, r.pass_id, r.eps_sec, r.eps_cor) == \
        ("sat-moscow", "available", "2017-12-01", 1e-10, 1e-15)
    assert r.meta == {"qber": 0.012}
    assert "bits" not in r.to_dict()
    # get consumes nothing
    assert store.get(ids[0]).state == "available"
    assert store.available_bits("sat-moscow") == key.size


def test_default_block_size_is_documented_value(store):
    ids = store.add_key("l", _key(DEFAULT_BLOCK_BITS * 2 + 1))
    assert [store.get(k).n_bits for k in ids] == [DEFAULT_BLOCK_BITS] * 2 + [1]


def test_both_parties_store_identical_keys_under_identical_ids(tmp_path):
    key = _key(20000)
    ids = new_key_ids(key.size, 4096)
    with KeyStore(tmp_path / "alice.db") as a, KeyStore(tmp_path / "bob.db") as b:
        assert a.add_key("link", key, key_ids=ids, block_bits=4096) == ids
        assert b.add_key("link", key, key_ids=ids, block_bits=4096) == ids
        for k in ids:
            np.testing.assert_array_equal(a.consume(k), b.consume(k))


def test_single_key_id_shorthand(store):
    kid = str(uuid.uuid4())
    assert store.add_key("l", _key(100), key_id=kid) == [kid]
    with pytest.raises(KeyStoreError, match="1 key IDs given for a key of 2"):
        store.add_key("l", _key(100), key_id=str(uuid.uuid4()), block_bits=50)
    with pytest.raises(ValueError, match="not both"):
        store.add_key("l", _key(10), key_id=kid, key_ids=[kid])


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "1234"])
def test_invalid_key_ids_rejected(store, bad):
    with pytest.raises(KeyStoreError, match="invalid key ID"):
        store.add_key("l", _key(10), key_ids=[bad])


def test_add_is_atomic_on_duplicate_id(store):
    ids = store.add_key("l", _key(30), block_bits=10)
    fresh = [str(uuid.uuid4()), ids[1], str(uuid.uuid4())]
    with pytest.raises(KeyStoreError, match="already in"):
        store.add_key("l", _key(30, 1), key_ids=fresh, block_bits=10)
    assert len(store.list()) == 3      # nothing of the failed key was stored
    with pytest.raises(KeyStoreError, match="unknown key ID"):
        store.get(fresh[0])
    with pytest.raises(KeyStoreError, match="given twice"):
        store.add_key("l", _key(20), key_ids=[fresh[0], fresh[0]], block_bits=10)


def test_add_validates_input(store):
    with pytest.raises(ValueError):
        store.add_key("l", np.array([0, 2, 1], np.uint8))
    with pytest.raises(ValueError):
        store.add_key("l", np.zeros(0, np.uint8))
    with pytest.raises(ValueError):
        store.add_key("", _key(8))
    with pytest.raises(ValueError, match="eps_sec"):
        store.add_key("l", _key(8), meta={"eps_sec": 2.0})
    with pytest.raises(ValueError, match="JSON"):
        store.add_key("l", _key(8), meta={"x": object()})
    assert store.list() == []


def test_numpy_metadata_is_stored_as_plain_json(store):
    (kid,) = store.add_key("l", _key(8), meta={"n": np.int64(7), "q": np.float32(0.5),
                                                "v": np.arange(3), "eps_sec": np.float64(1e-9)})
    r = store.get(kid)
    assert r.meta == {"n": 7, "q": 0.5, "v": [0, 1, 2]} and r.eps_sec == 1e-9


def test_consume_once(store):
    key = _key(64)
    (kid,) = store.add_key("l", key)
    np.testing.assert_array_equal(store.consume(kid, purpose="test"), key)
    with pytest.raises(KeyStoreError, match=f"key {kid} already used"):
        store.consume(kid)
    r = store.get(kid)
    assert r.state == "consumed" and r.bits is None and r.purpose == "test"
    assert r.consumed_at is not None
    # the key material is erased from the database file
    raw = sqlite3.connect(store.path).execute(
        "SELECT bits FROM keys WHERE key_id = ?", (kid,)).fetchone()[0]
    assert raw is None


def test_unknown_id(store):
    with pytest.raises(KeyStoreError, match="unknown key ID"):
        store.consume(str(uuid.uuid4()))
    with pytest.raises(KeyStoreError, match="unknown key ID"):
        store.get(str(uuid.uuid4()))


def test_consume_many_all_or_nothing(store):
    ids = store.add_key("l", _key(40), block_bits=10)
    store.consume(ids[2])
    with pytest.raises(KeyStoreError, match="already used"):
        store.consume_many(ids)
    assert [store.get(k).state for k in ids] == ["available", "available", "consumed",
                                                 "available"]
    with pytest.raises(KeyStoreError, match="unknown"):
        store.consume_many([ids[0], str(uuid.uuid4())])
    assert store.get(ids[0]).state == "available"


def test_reserve_takes_oldest_blocks_of_the_link(store):
    first = store.add_key("a", _key(300, 1), block_bits=100)
    other = store.add_key("b", _key(300, 2), block_bits=100)
    second = store.add_key("a", _key(300, 3), block_bits=100)
    got = store.reserve("a", 250)
    assert [k for k, _ in got] == first
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), _key(300, 1))
    got = store.reserve("a", 101)
    assert [k for k, _ in got] == second[:2]
    with pytest.raises(KeyStoreError, match="not enough key on link 'a': 101 bits needed, "
                                            "100 available"):
        store.reserve("a", 101)
    assert store.get(second[2]).state == "available"     # failed reserve consumed nothing
    assert all(store.get(k).state == "available" for k in other)
    with pytest.raises(KeyStoreError, match="not enough"):
        store.reserve("nope", 1)


def test_list_and_status(store):
    store.add_key("x", _key(25), block_bits=10)
    ids = store.add_key("y", _key(8))
    store.consume(ids[0])
    assert [r.link for r in store.list()] == ["x", "x", "x", "y"]
    assert len(store.list("x")) == 3
    assert [r.key_id for r in store.list(state="consumed")] == ids
    assert all(r.bits is None for r in store.list())
    assert store.status() == {
        "x": {"available_blocks": 3, "available_bits": 25, "consumed_blocks": 0,
              "consumed_bits": 0},
        "y": {"available_blocks": 0, "available_bits": 0, "consumed_blocks": 1,
              "consumed_bits": 8},
    }
    with pytest.raises(ValueError):
        store.list(state="gone")


def test_persistence_and_wal(tmp_path):
    path = tmp_path / "k.db"
    with KeyStore(path) as s:
        ids = s.add_key("l", _key(50))
    with KeyStore(path, create=False) as s:
        np.testing.assert_array_equal(s.get(ids[0]).bits, _key(50))
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_missing_or_foreign_file(tmp_path):
    with pytest.raises(KeyStoreError, match="no key store"):
        KeyStore(tmp_path / "missing.db", create=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KeyStoreError, match="not a usable key store"):
        KeyStore(junk)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(KeyStoreError, match="not a Mozi key store"):
        KeyStore(other)
    with pytest.raises(KeyStoreError):
        KeyStore(tmp_path / "no-such-dir" / "k.db")


def test_two_objects_on_one_file_never_share_a_key(tmp_path):
    path = tmp_path / "k.db"
    a, b = KeyStore(path), KeyStore(path)
    ids = a.add_key("l", _key(100), block_bits=10)
    a.consume(ids[0])
    with pytest.raises(KeyStoreError, match="already used"):
        b.consume(ids[0])
    got_a = [k for k, _ in a.reserve("l", 30)]
    got_b = [k for k, _ in b.reserve("l", 30)]
    assert not set(got_a) & set(got_b)
    assert got_a == ids[1:4] and got_b == ids[4:7]
    a.close()
    b.close()


def _worker(path, ids, barrier, queue):
    store = KeyStore(path)
    barrier.wait()
    won = []
    for kid in ids:
        try:
            store.consume(kid)
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
    with KeyStore(path) as s:
        ids = s.add_key("l", _key(400), block_bits=4)   # 100 blocks
    contested = ids[:60]                                 # consumed by ID, the rest by reserve
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
    a = store.add_key("a", _key(100, 1), block_bits=50)
    b = store.add_key("b", _key(100, 2), block_bits=50)
    with pytest.raises(KeyStoreError, match="not enough key on link 'b'"):
        store.reserve_many({"a": 60, "b": 101})
    assert store.available_bits("a") == 100          # link a untouched by the failed call
    got = store.reserve_many({"a": 60, "b": 40}, purpose="relay")
    assert [k for k, _ in got["a"]] == a and [k for k, _ in got["b"]] == b[:1]
    assert store.get(a[0]).purpose == "relay"
    with pytest.raises(ValueError):
        store.reserve_many({"a": 0})
