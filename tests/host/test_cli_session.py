"""``mozi session``: one link end to end from files, PTU input, and the error cases of issue 3.

The inputs are a short slice of the Micius 2017 pass around its closest approach, simulated
once per module (a few seconds of post-processing per session).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from mozi.host.cli import main
from mozi.host.keys.keystore import KeyStore
from mozi.sim.eve import InterceptResend
from mozi.sim.link import simulate_pass, write_alice
from mozi.sim.passes import micius2017
from mozi.sim.tagfile import write_tags

from tests.host.test_ptu import HYDRAHARP2_T2, hydraharp2_records, write_ptu

# one worker runs the whole module under `pytest -n 2 --dist loadgroup`, so the module-scoped
# fixture (a simulated run) is built once
pytestmark = pytest.mark.xdist_group("mozi-session")

SEED = 4242
WINDOW = (120.0, 150.0)        # seconds of the 2017 pass, around its closest approach
SESSION_SEED = "17"


def _link(tmp_path, link, a="a.db", b="b.db"):
    """``mozi link init`` for a satellite and a station store in ``tmp_path``."""
    assert main(["link", "init", link, f"satellite={tmp_path / a}",
                 f"xinglong={tmp_path / b}"]) == 0


def _simulate(folder, *, eve=None, window=WINDOW):
    folder.mkdir(parents=True, exist_ok=True)
    sim = simulate_pass(micius2017(), seed=SEED, t_start=window[0], t_stop=window[1], eve=eve)
    write_tags(folder / "bob.tags", sim.tags_ps, sim.channels, metadata=sim.metadata())
    write_alice(folder / "alice.json", sim)
    return sim


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("session")
    sim = _simulate(folder)
    # the same detections as a HydraHarp T2 PTU file whose inputs 0..3 carry A, D, V, H
    perm = np.array([3, 2, 1, 0])            # detector index → tagger input
    write_ptu(folder / "bob.ptu", HYDRAHARP2_T2, 1e-12,
              hydraharp2_records(sim.tags_ps, perm[sim.channels]))
    return folder


def _run(capsys, *argv):
    rc = main(["session", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mozi session: error: ")
    assert "Traceback" not in err
    return lines[0]


def _store_keys(path, link):
    with KeyStore(path, create=False) as store:
        records = store.list(link)
        return {r.key_id: store.get(r.key_id).bits for r in records}


def _assert_nothing_created(tmp_path, *names):
    for name in names:
        for suffix in ("", "-wal", "-shm", "-journal"):
            assert not (tmp_path / f"{name}{suffix}").exists(), f"{name}{suffix} left behind"


def test_session_from_mozi_tags_stores_identical_keys(sim_dir, tmp_path, capsys):
    _link(tmp_path, "sat-xinglong")
    _link(tmp_path, "sat-xinglong", "a2.db", "b2.db")
    capsys.readouterr()
    rc, out, err = _run(capsys, sim_dir / "bob.tags", sim_dir / "alice.json", "--link",
                        "sat-xinglong", "--store-alice", tmp_path / "a.db", "--store-bob",
                        tmp_path / "b.db", "--insecure-seed", SESSION_SEED, "--json")
    assert rc == 0
    assert "insecure reproducible mode (seed 17)" in err
    doc = json.loads(out)
    assert doc["insecure_reproducible"] is True
    for key in ("link", "detections", "in_window_fraction", "sifted_bits", "qber_z", "qber_x",
                "ec_leaked_bits", "ec_efficiency", "verification_ok", "final_key_bits",
                "aborted", "key_ids", "finite_key", "profile"):
        assert key in doc
    assert doc["link"] == "sat-xinglong"
    assert not doc["aborted"] and doc["verification_ok"]
    assert doc["final_key_bits"] > 0
    assert 0.005 < doc["qber_z"] < 0.03
    alice = _store_keys(tmp_path / "a.db", "sat-xinglong")
    bob = _store_keys(tmp_path / "b.db", "sat-xinglong")
    assert sorted(alice) == sorted(bob) == sorted(doc["key_ids"])
    for key_id, bits in alice.items():
        np.testing.assert_array_equal(bits, bob[key_id])
    assert sum(b.size for b in alice.values()) == doc["final_key_bits"]

    # the same detections from a PTU file with a permuted channel map give the same key
    rc, out, _ = _run(capsys, sim_dir / "bob.ptu", sim_dir / "alice.json", "--link",
                      "sat-xinglong", "--store-alice", tmp_path / "a2.db", "--store-bob",
                      tmp_path / "b2.db", "--channels", "0:A,1:D,2:V,3:H", "--insecure-seed",
                      SESSION_SEED, "--json")
    assert rc == 0
    doc_ptu = json.loads(out)
    for key in ("detections", "sifted_bits", "qber_z", "qber_x", "final_key_bits"):
        assert doc_ptu[key] == doc[key], key
    key_ptu = np.concatenate(list(_store_keys(tmp_path / "b2.db", "sat-xinglong").values()))
    key_tags = np.concatenate([bob[k] for k in doc["key_ids"]])
    np.testing.assert_array_equal(np.sort(key_ptu), np.sort(key_tags))   # same multiset…
    ordered = np.concatenate([_store_keys(tmp_path / "b2.db", "sat-xinglong")[k]
                              for k in doc_ptu["key_ids"]])
    np.testing.assert_array_equal(ordered, key_tags)                      # …and same key


def test_text_summary(sim_dir, tmp_path, capsys):
    _link(tmp_path, "l")
    capsys.readouterr()
    rc, out, err = _run(capsys, sim_dir / "bob.tags", sim_dir / "alice.json", "--link", "l",
                        "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 0
    assert "secret key" in out and "stored under" in out and "refilled" in out
    assert out.startswith("link l: ") and "INSECURE" not in out
    assert "insecure" not in err                       # a real session warns of nothing


def test_stores_must_exist_and_share_the_link(sim_dir, tmp_path, capsys):
    rc, _, err = _run(capsys, sim_dir / "bob.tags", sim_dir / "alice.json", "--link", "l",
                      "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1 and "mozi link init l" in _error_line(err)
    _assert_nothing_created(tmp_path, "a.db", "b.db")
    _link(tmp_path, "other")
    capsys.readouterr()
    rc, _, err = _run(capsys, sim_dir / "bob.tags", sim_dir / "alice.json", "--link", "l",
                      "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1 and "no authentication key for link 'l'" in _error_line(err)


def test_truncated_tag_file(sim_dir, tmp_path, capsys):
    data = (sim_dir / "bob.tags").read_bytes()
    cut = tmp_path / "cut.tags"
    cut.write_bytes(data[: len(data) // 2])
    rc, out, err = _run(capsys, cut, sim_dir / "alice.json", "--link", "l", "--store-alice",
                        tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1
    assert out == ""
    assert "truncated" in _error_line(err)
    _assert_nothing_created(tmp_path, "a.db", "b.db")


@pytest.mark.parametrize("content, fmt, message", [
    (b"random" * 500, "auto", "neither a Mozi tag file nor a PicoQuant PTU file"),
    (b"random" * 500, "ptu", "not a PicoQuant PTU file"),
    (b"PQTTTR\0\0" + bytes(range(256)) * 8, "auto", "corrupt or truncated PTU header"),
])
def test_garbage_ptu_file(sim_dir, tmp_path, capsys, content, fmt, message):
    bad = tmp_path / "garbage.ptu"
    bad.write_bytes(content)
    rc, out, err = _run(capsys, bad, sim_dir / "alice.json", "--link", "l", "--format", fmt,
                        "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1
    assert out == ""
    assert message in _error_line(err)
    _assert_nothing_created(tmp_path, "a.db", "b.db")


def test_truncated_ptu_file(sim_dir, tmp_path, capsys):
    data = (sim_dir / "bob.ptu").read_bytes()
    cut = tmp_path / "cut.ptu"
    cut.write_bytes(data[:-1001])
    rc, _, err = _run(capsys, cut, sim_dir / "alice.json", "--link", "l", "--store-alice",
                      tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1
    assert "truncated PTU file" in _error_line(err)
    _assert_nothing_created(tmp_path, "a.db", "b.db")


@pytest.mark.parametrize("extra, message", [
    (["--channels", "0:H,1:Q"], "bad channel map"),
    (["--format", "mozi", "--channels", "0:H"], "applies only to PTU"),
    (["--eps-sec", "2"], "eps_sec"),
    (["--qber-threshold", "0"], "qber_threshold"),
    (["--device", "serial:/dev/null"], "serial:/dev/null"),
    (["--device", "fpga"], "unknown device"),
    (["--eps-cor", "nan"], "finite number"),
    (["--alice-share", "1.5"], "alice_share"),
    (["--insecure-seed", "-3"], "insecure_seed"),
])
def test_bad_options(sim_dir, tmp_path, capsys, extra, message):
    src = sim_dir / ("bob.ptu" if "0:H,1:Q" in extra else "bob.tags")
    rc, _, err = _run(capsys, src, sim_dir / "alice.json", "--link", "l", *extra,
                      "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1
    assert message in _error_line(err)
    _assert_nothing_created(tmp_path, "a.db", "b.db")


def test_bad_alice_file(sim_dir, tmp_path, capsys):
    rc, _, err = _run(capsys, sim_dir / "bob.tags", sim_dir / "bob.tags", "--link", "l",
                      "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1
    assert "Alice file" in _error_line(err)
    rc, _, err = _run(capsys, sim_dir / "bob.tags", tmp_path / "missing.json", "--link", "l",
                      "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db")
    assert rc == 1
    assert "no such Alice file" in _error_line(err)
    _assert_nothing_created(tmp_path, "a.db", "b.db")


def test_same_store_twice(sim_dir, tmp_path, capsys):
    rc, _, err = _run(capsys, sim_dir / "bob.tags", sim_dir / "alice.json", "--link", "l",
                      "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "a.db")
    assert rc == 1
    assert "different files" in _error_line(err)
    _assert_nothing_created(tmp_path, "a.db")


def test_intercept_resend_aborts_and_stores_nothing(tmp_path, capsys):
    folder = tmp_path / "eve"
    _simulate(folder, eve=InterceptResend(1.0), window=(130.0, 140.0))
    _link(tmp_path, "l")
    # the stores' other keys must survive untouched
    with KeyStore(tmp_path / "a.db") as store:
        old_ids = store.add_key("other", np.ones(100, np.uint8), peer="kazan",
                                layout=[("satellite", 100)])
    capsys.readouterr()
    rc, out, _ = _run(capsys, folder / "bob.tags", folder / "alice.json", "--link", "l",
                      "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db",
                      "--json")
    assert rc == 3
    doc = json.loads(out)
    assert doc["aborted"] and doc["abort_reason"]
    assert doc["final_key_bits"] == 0 and doc["key_ids"] == []
    assert sorted(_store_keys(tmp_path / "a.db", "other")) == sorted(old_ids)
    assert _store_keys(tmp_path / "a.db", "l") == {} == _store_keys(tmp_path / "b.db", "l")


def test_a_biased_basis_choice_sifts_more_key(tmp_path, capsys):
    """``mozi simulate --p-z 0.55`` then ``mozi session``: Z, the key basis, is 60 % of the
    sifted bits (0.55² against 0.45²) instead of half, and both ends store the same key.
    Whether the bias pays depends on the block: the X-basis sample bounds the phase error, and
    on a slice this short its statistics dominate (the whole pass's optimum is a ``make
    bench`` figure: basis)."""
    docs = {}
    for pz in (0.5, 0.55):
        folder = tmp_path / f"pz{pz}"
        assert main(["simulate", "--seed", str(SEED), "--t-start", str(WINDOW[0]),
                     "--t-stop", str(WINDOW[1]), "--p-z", str(pz), "--out", str(folder),
                     "--no-progress", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["p_z"] == pz
        _link(folder, "sat-xinglong")
        capsys.readouterr()
        rc, out, _ = _run(capsys, folder / "bob.tags", folder / "alice.json", "--link",
                          "sat-xinglong", "--store-alice", folder / "a.db", "--store-bob",
                          folder / "b.db", "--insecure-seed", SESSION_SEED, "--json")
        docs[pz] = json.loads(out)
        assert rc == 0, (pz, docs[pz]["abort_reason"])
        assert not docs[pz]["aborted"]
        alice = _store_keys(folder / "a.db", "sat-xinglong")
        bob = _store_keys(folder / "b.db", "sat-xinglong")
        assert alice.keys() == bob.keys()
        assert all(np.array_equal(alice[k], bob[k]) for k in alice)
    for pz, expect in ((0.5, 0.5), (0.55, 0.3025 / 0.505)):
        share = docs[pz]["sifted_z_bits"] / docs[pz]["sifted_bits"]
        assert abs(share - expect) < 0.01, (pz, share)


@pytest.mark.parametrize("pz", ["0", "1", "1.5"])
def test_p_z_must_leave_both_bases(tmp_path, capsys, pz):
    assert main(["simulate", "--p-z", pz, "--t-stop", "1", "--no-progress"]) == 1
    assert "strictly between 0 and 1" in capsys.readouterr().err


def test_ldpc_reconciliation_stores_identical_keys(sim_dir, tmp_path, capsys):
    """``--reconciliation ldpc``: the same detections distilled with LDPC give identical keys
    at both ends, a leak accounted as syndrome plus revealed bits, and a different key than
    Cascade's (another leak, another final length)."""
    _link(tmp_path, "l")
    capsys.readouterr()
    rc, out, err = _run(capsys, sim_dir / "bob.tags", sim_dir / "alice.json", "--link", "l",
                        "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db",
                        "--reconciliation", "ldpc", "--insecure-seed", SESSION_SEED, "--json")
    doc = json.loads(out)
    assert rc == 0, err
    assert not doc["aborted"] and doc["verification_ok"] and doc["final_key_bits"] > 0
    assert 1.1 < doc["ec_efficiency"] < 1.6
    alice = _store_keys(tmp_path / "a.db", "l")
    bob = _store_keys(tmp_path / "b.db", "l")
    assert sorted(alice) == sorted(bob) == sorted(doc["key_ids"])
    for key_id, bits in alice.items():
        np.testing.assert_array_equal(bits, bob[key_id])


def test_unknown_reconciliation_is_one_error_line(sim_dir, tmp_path, capsys):
    _link(tmp_path, "l")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _run(capsys, sim_dir / "bob.tags", sim_dir / "alice.json", "--link", "l",
             "--store-alice", tmp_path / "a.db", "--store-bob", tmp_path / "b.db",
             "--reconciliation", "turbo")
    assert exc.value.code == 2
    assert "invalid choice: 'turbo'" in capsys.readouterr().err
