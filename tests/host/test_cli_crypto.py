"""``mozi keys / encrypt / decrypt``: JSON output, one-line errors, exit codes, no partial files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mozi.host import cli
from mozi.host.cli import main
from mozi.host.keys.keystore import KeyStore
from mozi.host.sample_images import sample_path

from tests.host.keys import share_key
from tests.host.keys import stores as party_stores

LINK = "moscow-urumqi"
MINE = ("keys", "encrypt", "decrypt", "link")


@pytest.fixture(autouse=True)
def only_crypto_commands(monkeypatch):
    """Build the real parser with only these commands, so a half-written sibling command
    module elsewhere in the tree cannot break these tests."""
    monkeypatch.setattr(cli, "COMMANDS", MINE)


@pytest.fixture
def stores(tmp_path):
    """Moscow's and Urumqi's stores sharing 120 kbit on LINK, half for each to send with."""
    key = np.random.default_rng(77).integers(0, 2, 120_000, dtype=np.uint8)
    mos, uru = party_stores(tmp_path, "moscow", "urumqi")
    share_key(mos, uru, LINK, key,
              meta={"pass_id": "relay-2017", "eps_sec": 3e-10, "eps_cor": 2e-15})
    mos.close()
    uru.close()
    return tmp_path / "moscow.db", tmp_path / "urumqi.db"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _error_line(capsys, command, *argv):
    code, out, err = _run(capsys, command, *argv)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mozi {command}: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_keys_status_and_list(stores, capsys):
    mos, _ = stores
    doc = _json(capsys, "keys", "--store", mos)
    assert doc["party"] == "moscow"
    assert doc["links"] == {LINK: {"peer": "urumqi", "available_blocks": 16,
                                   "available_bits": 120_000, "consumed_blocks": 0,
                                   "consumed_bits": 0, "send_bits": 60_000,
                                   "receive_bits": 60_000}}
    assert doc["total"]["available_bits"] == 120_000
    doc = _json(capsys, "keys", "list", "--store", mos)
    assert len(doc["keys"]) == 16
    k = doc["keys"][0]
    assert (k["link"], k["sender"], k["n_bits"], k["state"], k["pass_id"], k["eps_sec"]) == \
        (LINK, "moscow", 8192, "available", "relay-2017", 3e-10)
    assert "bits" not in k                                  # never key material
    code, out, _ = _run(capsys, "keys", "status", "--store", mos)
    assert code == 0 and LINK in out and "120,000" in out and "60,000" in out
    assert "(moscow)" in out and "urumqi" in out
    code, out, _ = _run(capsys, "keys", "list", "--store", mos, "--link", "none")
    assert code == 0 and "no key blocks" in out
    assert _json(capsys, "keys", "list", "--store", mos, "--state", "consumed")["keys"] == []
    assert _json(capsys, "keys", "--store", mos, "--link", "other")["links"] == {}


def test_keys_default_store_from_environment(stores, capsys, monkeypatch):
    monkeypatch.setenv("MOZI_KEYSTORE", str(stores[0]))
    assert LINK in _json(capsys, "keys")["links"]


def test_keys_missing_store_is_one_line_and_not_created(tmp_path, capsys):
    line = _error_line(capsys, "keys", "--store", tmp_path / "none.db")
    assert "no key store" in line
    assert not (tmp_path / "none.db").exists()


def test_encrypt_decrypt_both_images_bit_exact(stores, tmp_path, capsys):
    mos, uru = stores
    for name, mode in (("mozi-logo.png", "otp"), ("mozi-map.png", "aes-gcm")):
        src = sample_path(name)
        enc = _json(capsys, "encrypt", src, tmp_path / f"{name}.mzc", "--store", mos,
                    "--link", LINK)
        assert enc["mode"] == mode and enc["plaintext_bytes"] == src.stat().st_size
        dec = _json(capsys, "decrypt", tmp_path / f"{name}.mzc", tmp_path / name,
                    "--store", uru)
        assert dec["authenticated"] is True and dec["key_ids"] == enc["key_ids"]
        assert (tmp_path / name).read_bytes() == src.read_bytes()
    m = _json(capsys, "keys", "--store", mos)["links"][LINK]
    u = _json(capsys, "keys", "--store", uru)["links"][LINK]
    assert (m["available_bits"], m["consumed_bits"], m["send_bits"], m["receive_bits"]) == \
        (u["available_bits"], u["consumed_bits"], u["receive_bits"], u["send_bits"])


def test_text_output(stores, tmp_path, capsys):
    mos, uru = stores
    code, out, _ = _run(capsys, "encrypt", sample_path("mozi-logo.png"), tmp_path / "c",
                        "--store", mos, "--link", LINK, "--mode", "otp")
    assert code == 0 and "one-time pad" in out
    code, out, _ = _run(capsys, "decrypt", tmp_path / "c", tmp_path / "p", "--store", uru)
    assert code == 0 and "authenticated and decrypted" in out


def test_tampered_ciphertext_one_error_no_output(stores, tmp_path, capsys):
    mos, uru = stores
    _json(capsys, "encrypt", sample_path("mozi-logo.png"), tmp_path / "c", "--store", mos,
          "--link", LINK, "--mode", "otp")
    data = bytearray((tmp_path / "c").read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "bad").write_bytes(bytes(data))
    line = _error_line(capsys, "decrypt", tmp_path / "bad", tmp_path / "out.png",
                       "--store", uru)
    assert "authentication failed" in line
    assert not (tmp_path / "out.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_wrong_key_id_and_reuse_one_error_no_output(stores, tmp_path, capsys):
    mos, uru = stores
    _json(capsys, "encrypt", sample_path("mozi-logo.png"), tmp_path / "c", "--store", mos,
          "--link", LINK)
    with KeyStore(tmp_path / "other.db", party="urumqi") as s:
        s.add_key(LINK, np.ones(50_000, np.uint8), peer="moscow", layout=[("moscow", 50_000)])
    line = _error_line(capsys, "decrypt", tmp_path / "c", tmp_path / "o1", "--store",
                       tmp_path / "other.db")
    assert "unknown key ID" in line
    _json(capsys, "decrypt", tmp_path / "c", tmp_path / "o2", "--store", uru)
    line = _error_line(capsys, "decrypt", tmp_path / "c", tmp_path / "o3", "--store", uru)
    assert "already used" in line
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_truncated_and_foreign_input(stores, tmp_path, capsys):
    mos, uru = stores
    _json(capsys, "encrypt", sample_path("mozi-logo.png"), tmp_path / "c", "--store", mos,
          "--link", LINK)
    (tmp_path / "t").write_bytes((tmp_path / "c").read_bytes()[:-7])
    assert "truncated" in _error_line(capsys, "decrypt", tmp_path / "t", tmp_path / "o",
                                      "--store", uru)
    line = _error_line(capsys, "decrypt", sample_path("mozi-logo.png"), tmp_path / "o",
                       "--store", uru)
    assert "not a Mozi ciphertext" in line
    line = _error_line(capsys, "decrypt", tmp_path / "missing", tmp_path / "o", "--store", uru)
    assert "cannot read" in line
    assert not (tmp_path / "o").exists()


def test_encrypt_errors(stores, tmp_path, capsys):
    mos, _ = stores
    line = _error_line(capsys, "encrypt", sample_path("mozi-map.png"), tmp_path / "c",
                       "--store", mos, "--link", LINK, "--mode", "otp")
    assert "one-time pad needs" in line and "--mode aes-gcm" in line
    line = _error_line(capsys, "encrypt", sample_path("mozi-logo.png"), tmp_path / "c",
                       "--store", mos, "--link", "nowhere")
    assert "not enough key" in line
    line = _error_line(capsys, "encrypt", sample_path("mozi-logo.png"), tmp_path / "c",
                       "--store", tmp_path / "absent.db", "--link", LINK)
    assert "no key store" in line
    assert not (tmp_path / "c").exists() and not (tmp_path / "absent.db").exists()
    assert _json(capsys, "keys", "--store", mos)["links"][LINK]["consumed_blocks"] == 0


def test_output_permissions(stores, tmp_path, capsys):
    mos, uru = stores
    old = os.umask(0o027)
    try:
        _json(capsys, "encrypt", sample_path("mozi-logo.png"), tmp_path / "c", "--store",
              mos, "--link", LINK)
        _json(capsys, "decrypt", tmp_path / "c", tmp_path / "p", "--store", uru)
    finally:
        os.umask(old)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o640        # the public ciphertext
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o600        # the secret plaintext


def test_console_script_exit_status(stores, tmp_path):
    """The CLI in a fresh process: one stderr line and exit status 1."""
    _, uru = stores
    (tmp_path / "junk").write_bytes(b"junk")
    code = (f"import sys; from mozi.host import cli; cli.COMMANDS = {MINE!r}; "
            "sys.exit(cli.main())")
    proc = subprocess.run([sys.executable, "-c", code, "decrypt",
                           str(tmp_path / "junk"), str(tmp_path / "o"), "--store", str(uru)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "mozi decrypt: error: not a Mozi ciphertext (file too short)"
    assert not (tmp_path / "o").exists()


def test_both_stations_encrypt_at_the_same_time_and_both_files_decrypt(stores, tmp_path,
                                                                       capsys):
    """The reproduction of defect 1 (two-time pad) from the CLI: each station encrypts a
    200-byte file with ``--mode otp`` on the relay link before decrypting the other's. The
    old code gave both files the same key ID (``c_A ⊕ c_B = p_A ⊕ p_B``) and the second
    decryption failed with "already used"; now the key IDs differ and both decrypt."""
    mos, uru = stores
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(os.urandom(200))
    enc_m = _json(capsys, "encrypt", tmp_path / "a", tmp_path / "a.mzc", "--store", mos,
                  "--link", LINK, "--mode", "otp")
    enc_u = _json(capsys, "encrypt", tmp_path / "b", tmp_path / "b.mzc", "--store", uru,
                  "--link", LINK, "--mode", "otp")
    assert not set(enc_m["key_ids"]) & set(enc_u["key_ids"])
    assert (enc_m["sender"], enc_u["sender"]) == ("moscow", "urumqi")
    _json(capsys, "decrypt", tmp_path / "a.mzc", tmp_path / "a.out", "--store", uru)
    _json(capsys, "decrypt", tmp_path / "b.mzc", tmp_path / "b.out", "--store", mos)
    assert (tmp_path / "a.out").read_bytes() == (tmp_path / "a").read_bytes()
    assert (tmp_path / "b.out").read_bytes() == (tmp_path / "b").read_bytes()
    line = _error_line(capsys, "decrypt", tmp_path / "a.mzc", tmp_path / "x", "--store", mos)
    assert "encrypted by 'moscow' itself" in line


def test_link_init_and_status(tmp_path, capsys):
    a, b = tmp_path / "keys" / "satellite.db", tmp_path / "moscow.db"
    doc = _json(capsys, "link", "init", "sat-moscow", f"satellite={a}", f"moscow={b}",
                "--bits", 128 + 2 * 64 * 100)
    assert doc["pads_per_direction"] == 100 and doc["tag_bits"] == 64
    assert a.stat().st_mode & 0o777 == 0o600 and a.parent.stat().st_mode & 0o777 == 0o700
    st_a = _json(capsys, "link", "status", "--store", a)
    st_b = _json(capsys, "link", "status", "--store", b)
    assert st_a["party"] == "satellite" and st_b["party"] == "moscow"
    la, lb = st_a["links"]["sat-moscow"], st_b["links"]["sat-moscow"]
    assert (la["peer"], la["role"], lb["peer"], lb["role"]) == ("moscow", 0, "satellite", 1)
    assert la["pad_bits"] == lb["pad_bits"] == [6400, 6400]
    code, out, _ = _run(capsys, "link", "status", "--store", a)
    assert code == 0 and "sat-moscow: with moscow" in out and "100 pads" in out
    line = _error_line(capsys, "link", "init", "sat-moscow", f"satellite={a}", f"moscow={b}")
    assert "already" in line
    line = _error_line(capsys, "link", "init", "x", f"satellite={a}", f"urumqi={b}")
    assert "belongs to 'moscow', not 'urumqi'" in line
    line = _error_line(capsys, "link", "init", "y", f"p={tmp_path}/p.db", f"q={tmp_path}/q.db",
                       "--tag-bits", 32)
    assert "tag_bits" in line
    assert not (tmp_path / "p.db").exists() or _json(
        capsys, "link", "status", "--store", tmp_path / "p.db")["links"] == {}
    with pytest.raises(SystemExit) as exc:
        main(["link", "init", "z", "nonsense"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
