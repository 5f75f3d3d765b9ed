"""Image encryption: bit-exact round trips, tamper detection, single use, no partial output."""

import struct

import numpy as np
import pytest
from mozi.host.crypto.imagecrypt import (
    MAGIC,
    FileAccessError,
    decrypt_file,
    encrypt_file,
    otp_key_bits,
    read_header,
)
from mozi.host.errors import AuthenticationError, FileFormatError, KeyStoreError
from mozi.host.keys.keystore import KeyStore
from mozi.host.sample_images import SAMPLES, logo_image, map_image, sample_path
from PIL import Image

from tests.host.keys import share_key, stores

SEED = 8675309
LINK = "moscow-urumqi"


def _bits(n, seed=SEED):
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


@pytest.fixture
def pair(tmp_path):
    """Moscow's and Urumqi's stores sharing 200 kbit on LINK in 8192-bit blocks: the first
    100 kbit for Moscow to send with, the rest for Urumqi."""
    mos, uru = stores(tmp_path, "moscow", "urumqi")
    share_key(mos, uru, LINK, _bits(200_000))
    yield mos, uru
    mos.close()
    uru.close()


def _files(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".db", "-wal",
                                                                              "-shm")))


def test_otp_round_trip_logo_bit_exact(pair, tmp_path):
    mos, uru = pair
    src = sample_path("mozi-logo.png")
    res = encrypt_file(src, tmp_path / "logo.mzc", mos, link=LINK, mode="otp")
    size = src.stat().st_size
    assert res.mode == "otp" and res.plaintext_bytes == size
    assert res.key_bits_used == otp_key_bits(size) == 8 * size + 256
    assert res.key_bits_consumed == 8192 * len(res.key_ids) >= res.key_bits_used
    assert mos.sendable_bits(LINK) == 100_000 - res.key_bits_consumed
    assert res.sender == "moscow"
    assert all(mos.get(k).sender == "moscow" for k in res.key_ids)
    cipher = (tmp_path / "logo.mzc").read_bytes()
    assert cipher.startswith(MAGIC) and src.read_bytes() not in cipher
    out = decrypt_file(tmp_path / "logo.mzc", tmp_path / "logo.png", uru)
    assert out.mode == "otp" and out.key_ids == res.key_ids
    assert (tmp_path / "logo.png").read_bytes() == src.read_bytes()
    assert (tmp_path / "logo.png").stat().st_mode & 0o077 == 0     # the plaintext is private
    for link, s in uru.status().items():                          # the same blocks are gone
        m = mos.status()[link]
        assert (s["available_bits"], s["send_bits"], s["receive_bits"]) == \
            (m["available_bits"], m["receive_bits"], m["send_bits"])


def test_otp_pad_is_the_key(pair, tmp_path):
    """Ciphertext body = plaintext XOR key bits 256 … (the pad follows the MAC keys)."""
    mos, uru = pair
    plain = bytes(range(200))
    (tmp_path / "p").write_bytes(plain)
    res = encrypt_file(tmp_path / "p", tmp_path / "c", mos, link=LINK, mode="otp")
    key = np.concatenate([uru.get(k).bits for k in res.key_ids])
    pad = np.packbits(key[256:256 + 8 * len(plain)]).tobytes()
    parsed = read_header((tmp_path / "c").read_bytes())
    body = parsed.body[:len(plain)]
    assert bytes(a ^ b for a, b in zip(body, pad, strict=True)) == plain


def test_aes_gcm_round_trip_map_bit_exact(pair, tmp_path):
    mos, uru = pair
    src = sample_path("mozi-map.png")
    res = encrypt_file(src, tmp_path / "map.mzc", mos, link=LINK, mode="auto")
    assert res.mode == "aes-gcm" and len(res.key_ids) == 1 and res.key_bits_used == 256
    decrypt_file(tmp_path / "map.mzc", tmp_path / "map.png", uru)
    assert (tmp_path / "map.png").read_bytes() == src.read_bytes()


def test_auto_picks_otp_when_key_suffices(pair, tmp_path):
    mos, _ = pair
    (tmp_path / "small").write_bytes(b"x" * 1000)
    assert encrypt_file(tmp_path / "small", tmp_path / "c", mos, link=LINK).mode == "otp"


@pytest.mark.parametrize("size", [0, 1, 17])
def test_tiny_files(pair, tmp_path, size):
    mos, uru = pair
    (tmp_path / "p").write_bytes(b"\xa5" * size)
    for mode in ("otp", "aes-gcm"):
        encrypt_file(tmp_path / "p", tmp_path / "c", mos, link=LINK, mode=mode)
        decrypt_file(tmp_path / "c", tmp_path / "q", uru)
        assert (tmp_path / "q").read_bytes() == b"\xa5" * size


def test_otp_refuses_short_key(pair, tmp_path):
    mos, _ = pair
    (tmp_path / "big").write_bytes(bytes(15_000))          # 120 kbit > Moscow's 100 kbit
    with pytest.raises(KeyStoreError, match="one-time pad needs 120256 key bits .* 'moscow' "
                                            "may send with 100000"):
        encrypt_file(tmp_path / "big", tmp_path / "c", mos, link=LINK, mode="otp")
    assert not (tmp_path / "c").exists()
    assert mos.available_bits(LINK) == 200_000             # nothing consumed
    with pytest.raises(KeyStoreError, match="not enough key"):
        encrypt_file(tmp_path / "big", tmp_path / "c", mos, link="other", mode="aes-gcm")


@pytest.mark.parametrize("mode", ["otp", "aes-gcm"])
def test_tampering_anywhere_is_rejected_without_output_or_key_use(pair, tmp_path, mode):
    mos, uru = pair
    src = sample_path("mozi-logo.png")
    encrypt_file(src, tmp_path / "c", mos, link=LINK, mode=mode)
    good = (tmp_path / "c").read_bytes()
    before = uru.status()
    parsed = read_header(good)
    positions = [len(parsed.header) - 1,                     # last key ID byte → wrong key
                 len(parsed.header) + 3, len(good) // 2, len(good) - 1]
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x01
        (tmp_path / "bad").write_bytes(bytes(bad))
        with pytest.raises((AuthenticationError, KeyStoreError)):
            decrypt_file(tmp_path / "bad", tmp_path / "out.png", uru)
        assert not (tmp_path / "out.png").exists()
    # the plaintext length in the header is authenticated too (and checked against the body)
    bad = bytearray(good)
    bad[12:20] = struct.pack(">Q", parsed.length - 1)
    (tmp_path / "bad").write_bytes(bytes(bad))
    with pytest.raises(FileFormatError):
        decrypt_file(tmp_path / "bad", tmp_path / "out.png", uru)
    assert uru.status() == before                          # nothing consumed
    assert sorted(_files(tmp_path)) == ["bad", "c"]        # no temp files left behind
    decrypt_file(tmp_path / "c", tmp_path / "out.png", uru)
    assert (tmp_path / "out.png").read_bytes() == src.read_bytes()


def test_payload_substitution_with_tag_kept_is_rejected(pair, tmp_path):
    """Flipping ciphertext bits flips plaintext bits under a bare OTP; the MAC stops it."""
    mos, uru = pair
    (tmp_path / "p").write_bytes(b"PAY 100 ROUBLES")
    encrypt_file(tmp_path / "p", tmp_path / "c", mos, link=LINK, mode="otp")
    data = bytearray((tmp_path / "c").read_bytes())
    start = len(read_header(bytes(data)).header)
    delta = bytes(a ^ b for a, b in zip(b"PAY 100", b"PAY 900", strict=True))
    for i, d in enumerate(delta):
        data[start + i] ^= d
    (tmp_path / "c2").write_bytes(bytes(data))
    with pytest.raises(AuthenticationError, match="authentication failed"):
        decrypt_file(tmp_path / "c2", tmp_path / "q", uru)
    assert not (tmp_path / "q").exists()


def test_key_used_once_and_unknown_ids(pair, tmp_path):
    mos, uru = pair
    (tmp_path / "p").write_bytes(b"hello")
    encrypt_file(tmp_path / "p", tmp_path / "c", mos, link=LINK, mode="otp")
    decrypt_file(tmp_path / "c", tmp_path / "q1", uru)
    with pytest.raises(KeyStoreError, match="already used"):
        decrypt_file(tmp_path / "c", tmp_path / "q2", uru)
    assert not (tmp_path / "q2").exists()
    with KeyStore(tmp_path / "empty.db", party="urumqi") as empty:
        with pytest.raises(KeyStoreError, match="unknown key ID"):
            decrypt_file(tmp_path / "c", tmp_path / "q3", empty)
    assert not (tmp_path / "q3").exists()
    # the sender cannot reuse the key either: the next file gets fresh blocks
    res1 = encrypt_file(tmp_path / "p", tmp_path / "d", mos, link=LINK, mode="otp")
    res2 = encrypt_file(tmp_path / "p", tmp_path / "e", mos, link=LINK, mode="otp")
    assert not set(res1.key_ids) & set(res2.key_ids)


def test_key_of_another_link_rejected(tmp_path):
    key = _bits(5000)
    a, b = stores(tmp_path, "a", "b")
    layout = [("a", 5000)]
    ids = a.add_key("l1", key, peer="b", layout=layout)
    b.add_key("l2", key, peer="a", layout=layout, key_ids=ids)
    (tmp_path / "p").write_bytes(b"abc")
    encrypt_file(tmp_path / "p", tmp_path / "c", a, link="l1", mode="otp")
    with pytest.raises(KeyStoreError, match="belongs to link 'l2'"):
        decrypt_file(tmp_path / "c", tmp_path / "q", b)
    a.close()
    b.close()


@pytest.mark.parametrize("mode", ["otp", "aes-gcm"])
def test_truncated_and_foreign_files(pair, tmp_path, mode):
    mos, uru = pair
    (tmp_path / "p").write_bytes(b"some image bytes" * 10)
    encrypt_file(tmp_path / "p", tmp_path / "c", mos, link=LINK, mode=mode)
    good = (tmp_path / "c").read_bytes()
    for cut in (0, 5, 30, len(good) - 1):
        (tmp_path / "t").write_bytes(good[:cut])
        with pytest.raises(FileFormatError):
            decrypt_file(tmp_path / "t", tmp_path / "q", uru)
    (tmp_path / "t").write_bytes(good + b"\x00")
    with pytest.raises(FileFormatError):
        decrypt_file(tmp_path / "t", tmp_path / "q", uru)
    (tmp_path / "t").write_bytes(b"\x89PNG" + good[4:])
    with pytest.raises(FileFormatError, match="bad magic"):
        decrypt_file(tmp_path / "t", tmp_path / "q", uru)
    v = bytearray(good)
    v[8] = 9
    (tmp_path / "t").write_bytes(bytes(v))
    with pytest.raises(FileFormatError, match="version 9"):
        decrypt_file(tmp_path / "t", tmp_path / "q", uru)
    assert not (tmp_path / "q").exists()


def test_missing_input_and_unwritable_output(pair, tmp_path):
    mos, uru = pair
    with pytest.raises(FileAccessError, match="cannot read"):
        encrypt_file(tmp_path / "nope", tmp_path / "c", mos, link=LINK)
    (tmp_path / "p").write_bytes(b"abc")
    with pytest.raises(FileAccessError, match="cannot write"):
        encrypt_file(tmp_path / "p", tmp_path / "no" / "dir" / "c", mos, link=LINK, mode="otp")
    with pytest.raises(ValueError):
        encrypt_file(tmp_path / "p", tmp_path / "c", mos, link=LINK, mode="rot13")


def test_committed_sample_images_match_their_generator():
    for name, make in (("mozi-logo.png", logo_image), ("mozi-map.png", map_image)):
        with Image.open(sample_path(name)) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), make())
    assert logo_image().shape == (64, 256, 3)
    assert map_image().shape == (768, 1024, 3)
    assert set(SAMPLES) == {"mozi-logo.png", "mozi-map.png"}
    with pytest.raises(KeyError):
        sample_path("lena.png")


@pytest.mark.parametrize("mode", ["otp", "aes-gcm"])
def test_both_stations_encrypting_at_once_use_different_blocks(pair, tmp_path, mode):
    """Defect 1 of the security issue (two-time pad). ``KeyStore.reserve`` used to take the
    oldest available block of the link at either end, with no notion of direction: Moscow and
    Urumqi each encrypting a file before decrypting the other's took the *same* block, so
    ``c_A ⊕ c_B = p_A ⊕ p_B`` (and the one-time MAC key and the AES key were shared), and
    the second decryption failed with "already used". Now each party sends only with its own
    blocks: the two files name disjoint key IDs, and both decrypt."""
    mos, uru = pair
    p_m, p_u = bytes(range(200)), bytes(reversed(range(200)))
    (tmp_path / "pm").write_bytes(p_m)
    (tmp_path / "pu").write_bytes(p_u)
    res_m = encrypt_file(tmp_path / "pm", tmp_path / "cm", mos, link=LINK, mode=mode)
    res_u = encrypt_file(tmp_path / "pu", tmp_path / "cu", uru, link=LINK, mode=mode)
    assert not set(res_m.key_ids) & set(res_u.key_ids)
    assert (res_m.sender, res_u.sender) == ("moscow", "urumqi")
    c_m, c_u = read_header((tmp_path / "cm").read_bytes()), read_header(
        (tmp_path / "cu").read_bytes())
    xor = bytes(a ^ b for a, b in zip(c_m.body[:200], c_u.body[:200], strict=True))
    assert xor != bytes(a ^ b for a, b in zip(p_m, p_u, strict=True))
    decrypt_file(tmp_path / "cm", tmp_path / "qm", uru)
    decrypt_file(tmp_path / "cu", tmp_path / "qu", mos)
    assert (tmp_path / "qm").read_bytes() == p_m and (tmp_path / "qu").read_bytes() == p_u


def test_a_file_sent_back_to_its_sender_is_refused(pair, tmp_path):
    """Reflection: Moscow's own ciphertext fed back to Moscow names Moscow's blocks; a party
    never decrypts with the blocks it sends with (old code: "already used" only by luck of
    the consumption order, and a forged header naming an unused Moscow block got further)."""
    mos, uru = pair
    (tmp_path / "p").write_bytes(b"to urumqi")
    encrypt_file(tmp_path / "p", tmp_path / "c", mos, link=LINK, mode="otp")
    with pytest.raises(KeyStoreError, match="encrypted by 'moscow' itself"):
        decrypt_file(tmp_path / "c", tmp_path / "q", mos)
    assert not (tmp_path / "q").exists()


def test_header_naming_another_sender_is_refused_before_any_key_use(pair, tmp_path):
    """The header's sender must own every block it names; Urumqi's own blocks cannot be
    presented to Urumqi as Moscow's (checked before authentication, nothing consumed)."""
    mos, uru = pair
    (tmp_path / "p").write_bytes(b"x" * 50)
    res = encrypt_file(tmp_path / "p", tmp_path / "c", uru, link=LINK, mode="otp")
    data = bytearray((tmp_path / "c").read_bytes())
    sender_at = 8 + 1 + 1 + 2 + 8 + 1 + len(LINK)
    assert data[sender_at + 1:sender_at + 1 + 6] == b"urumqi"
    data[sender_at + 1:sender_at + 1 + 6] = b"moscow"   # claim Moscow sent Urumqi's blocks
    (tmp_path / "c2").write_bytes(bytes(data))
    before = mos.status()
    with pytest.raises(KeyStoreError, match="encrypted by 'moscow' itself"):
        decrypt_file(tmp_path / "c2", tmp_path / "q", mos)
    data[sender_at + 1:sender_at + 1 + 6] = b"kazan!"
    (tmp_path / "c3").write_bytes(bytes(data))
    with pytest.raises(KeyStoreError, match="for messages from 'urumqi'"):
        decrypt_file(tmp_path / "c3", tmp_path / "q", mos)
    assert mos.status() == before and not (tmp_path / "q").exists()
    assert mos.get(res.key_ids[0]).state == "available"
