"""ETSI GS QKD 014 key delivery: two real KMEs over HTTPS with mutual TLS on loopback, the
stations' real key stores, and an SAE client written from the standard's text (httpx)."""

import base64
import concurrent.futures
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import httpx
import pytest
from mozi.host.keys.keystore import KeyStore
from mozi.host.kms.keyid import make_key_id

from tests.host.keys import random_bits, share_key
from tests.host.kmes import KmeProcess, Sae, keys_of, sae_context

LINK = "moscow-urumqi"
KEY_BITS = 16 * 8192
STATUS_FIELDS = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID",
                 "key_size", "stored_key_count", "max_key_count", "max_key_per_request",
                 "max_key_size", "min_key_size", "max_SAE_ID_count"}


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    """Certificates, the two stations' stores sharing 128 kbit on ``moscow-urumqi`` (half
    for each to send with) and their KMEs; SAE ``sae-eve`` is a third application that the
    Urumqi KME serves too."""
    root = tmp_path_factory.mktemp("kms")
    certs = root / "certs"
    subprocess.run([sys.executable, "-m", "mozi.host.cli", "kms", "init", str(certs),
                    "--kme", "moscow", "--kme", "urumqi", "--sae", "sae-moscow@moscow",
                    "--sae", "sae-urumqi@urumqi", "--sae", "sae-eve@urumqi"], check=True,
                   capture_output=True)
    with KeyStore(root / "moscow.db", party="moscow") as a, \
            KeyStore(root / "urumqi.db", party="urumqi") as b:
        share_key(a, b, LINK, random_bits(KEY_BITS, 14))
    with KmeProcess(root / "moscow.db", certs) as m, KmeProcess(root / "urumqi.db", certs) as u:
        saes = {name: Sae(kme.url, certs, name) for name, kme in
                (("sae-moscow", m), ("sae-urumqi", u), ("sae-eve", u))}
        yield {"certs": certs, "moscow": m, "urumqi": u, "root": root, **saes}
        for s in saes.values():
            s.close()


def test_status_has_every_field_of_the_standard(kms):
    r = kms["sae-moscow"].status("sae-urumqi")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == STATUS_FIELDS
    assert (doc["source_KME_ID"], doc["target_KME_ID"]) == ("moscow", "urumqi")
    assert (doc["master_SAE_ID"], doc["slave_SAE_ID"]) == ("sae-moscow", "sae-urumqi")
    assert doc["key_size"] == 256 and doc["max_SAE_ID_count"] == 0
    # Moscow may send with half the shared key, in 8192-bit blocks less 256 reserved bits
    assert doc["max_key_size"] == 8192 - 256
    assert doc["stored_key_count"] == 8 * ((8192 - 256) // 256)


@pytest.mark.parametrize("get", [False, True], ids=["POST", "GET"])
def test_a_key_from_enc_keys_is_fetched_once_by_dec_keys_at_the_peer(kms, get):
    sent = keys_of(kms["sae-moscow"].enc_keys("sae-urumqi", get=get, number=3, size=512))
    assert len(sent) == 3 and all(len(base64.b64decode(k)) == 64 for k in sent.values())
    got = keys_of(kms["sae-urumqi"].dec_keys("sae-moscow", list(sent), get=get))
    assert got == sent
    # never handed out again, at either end
    again = kms["sae-urumqi"].dec_keys("sae-moscow", list(sent)[:1])
    assert again.status_code == 400 and "handed out already" in again.json()["message"]
    more = keys_of(kms["sae-moscow"].enc_keys("sae-urumqi", number=3, size=512))
    assert not set(more) & set(sent) and not set(more.values()) & set(sent.values())


def test_keys_in_the_two_directions_come_from_different_blocks(kms):
    a = keys_of(kms["sae-moscow"].enc_keys("sae-urumqi", number=4))
    b = keys_of(kms["sae-urumqi"].enc_keys("sae-moscow", number=4))
    assert keys_of(kms["sae-moscow"].dec_keys("sae-urumqi", list(b))) == b
    assert keys_of(kms["sae-urumqi"].dec_keys("sae-moscow", list(a))) == a
    assert not {k[:13] for k in a} & {k[:13] for k in b}        # block prefixes differ
    with KeyStore(kms["root"] / "moscow.db", create=False) as m:
        sides = {kid: side for kid, side, *_ in m.kms_handed_out()}
    assert all(sides[k] == "enc" for k in a) and all(sides[k] == "dec" for k in b)


@pytest.mark.parametrize(("params", "needle"), [
    ({"size": 12}, "multiple of 8"),
    ({"size": 8192}, "not enough key"),                 # larger than any block holds
    ({"size": 0}, "multiple of 8"),
    ({"number": 0}, "number must lie"),
    ({"number": 129}, "number must lie"),
    ({"number": 128, "size": 7936}, "not enough key"),   # more than is stored
    ({"number": "two"}, "integer"),
    ({"additional_slave_SAE_IDs": ["sae-eve"]}, "not supported"),
    ({"extension_mandatory": [{"abc_route_type": "direct"}]}, "extension_mandatory"),
    ({"colour": "red"}, "unknown request fields"),
])
def test_bad_enc_keys_requests_are_400(kms, params, needle):
    before = kms["sae-moscow"].status("sae-urumqi").json()["stored_key_count"]
    r = kms["sae-moscow"].enc_keys("sae-urumqi", **params)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert needle in doc["message"] and isinstance(doc["details"], list)
    assert kms["sae-moscow"].status("sae-urumqi").json()["stored_key_count"] == before


def test_extension_optional_is_ignored(kms):
    r = kms["sae-moscow"].enc_keys("sae-urumqi", number=1, extension_optional=[{"x": 1}])
    assert len(keys_of(r)) == 1


@pytest.mark.parametrize(("body", "needle"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"key_IDs": []}', "non-empty list"),
    (b'{"key_IDs": [{"key_ID": "not-a-uuid"}]}', "not a UUID"),
    (b'{"key_IDs": [{"key_ID": "6f1c3e0a-0000-4000-8000-000000000000"}]}', "not issued by"),
    (b'{"key_IDs": [{"key_ID": "6f1c3e0a-0000-8000-8000-000000000000"}]}', "empty key"),
    (b'{"key_IDs": [{"key_ID": "%s"}]}' % make_key_id(
        "6f1c3e0a-1234-4000-8000-000000000000", bytes(32), 32, 32, master="sae-moscow",
        slave="sae-urumqi").encode(), "unknown key_ID"),
    (b'{"key_IDs": [{"key_ID": 7}]}', "must be a string"),
    (b'{"keys": []}', "unknown request fields"),
])
def test_malformed_dec_keys_requests_are_400(kms, body, needle):
    r = kms["sae-urumqi"].http.post("/sae-moscow/dec_keys", content=body,
                                    headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"]


def test_an_sae_gets_only_keys_it_was_named_for(kms):
    sent = keys_of(kms["sae-moscow"].enc_keys("sae-urumqi", number=2))
    ids = list(sent)
    # another application at the same station, with a valid certificate of its own
    r = kms["sae-eve"].dec_keys("sae-moscow", ids)
    assert r.status_code == 401 and "not issued for" in r.json()["message"]
    # claiming the key was made for it by another master does not help either
    r = kms["sae-urumqi"].dec_keys("sae-eve", ids)
    assert r.status_code == 400                 # sae-eve is served by this very KME
    # a forged key ID: the right block, another offset
    forged = ids[0][:-1] + ("0" if ids[0][-1] != "0" else "1")
    r = kms["sae-urumqi"].dec_keys("sae-moscow", [forged])
    assert r.status_code == 401
    # the rightful slave still gets both, once
    assert keys_of(kms["sae-urumqi"].dec_keys("sae-moscow", ids)) == sent


def test_an_sae_is_served_only_by_its_own_kme(kms):
    with Sae(kms["moscow"].url, kms["certs"], "sae-urumqi") as stray:
        for r in (stray.status("sae-moscow"), stray.enc_keys("sae-moscow"),
                  stray.dec_keys("sae-moscow", ["6f1c3e0a-0000-8000-8000-000000000000"])):
            assert r.status_code == 401 and "not served by KME 'moscow'" in r.json()["message"]


def test_unknown_resources_and_saes(kms):
    sae = kms["sae-moscow"]
    assert sae.status("sae-nobody").status_code == 400
    assert sae.http.get("/sae-urumqi/keys").status_code == 404
    assert sae.http.get("/../../etc/passwd").status_code == 404
    assert sae.http.post("/sae-urumqi/status").status_code == 405


def test_tls_needs_a_client_certificate_of_the_ca_and_tls_1_2(kms, tmp_path):
    url = kms["moscow"].url
    with Sae(url, kms["certs"], None) as anonymous, pytest.raises(httpx.HTTPError):
        anonymous.status("sae-urumqi")
    with Sae(url, kms["certs"], "sae-moscow", tls_max=ssl.TLSVersion.TLSv1_1) as old, \
            pytest.raises(httpx.HTTPError):
        old.status("sae-urumqi")
    # a certificate from another CA, with the right name
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "mozi.host.cli", "kms", "init", str(other)],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=str(kms["certs"] / "ca.crt"))
    ctx.load_cert_chain(other / "sae" / "sae-moscow.crt", other / "sae" / "sae-moscow.key")
    with httpx.Client(verify=ctx) as c, pytest.raises(httpx.HTTPError):
        c.get(f"{url}/api/v1/keys/sae-urumqi/status")


def test_ten_concurrent_saes_never_get_a_key_twice(kms):
    """10 clients × 10 requests of 2 keys at Moscow, then all fetched at Urumqi by 10
    clients: 200 distinct keys, each fetched once and equal at both ends."""
    url_m, url_u, certs = kms["moscow"].url, kms["urumqi"].url, kms["certs"]

    def run_master(_):
        with Sae(url_m, certs, "sae-moscow") as sae:
            return [keys_of(sae.enc_keys("sae-urumqi", number=2, size=128)) for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        batches = [b for r in pool.map(run_master, range(10)) for b in r]
    sent = {k: v for b in batches for k, v in b.items()}
    assert len(sent) == 200 and len(set(sent.values())) == 200

    def run_slave(batch):
        with Sae(url_u, certs, "sae-urumqi") as sae:
            return keys_of(sae.dec_keys("sae-moscow", list(batch)))

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        got = {k: v for r in pool.map(run_slave, batches) for k, v in r.items()}
    assert got == sent


def _mozi(*args):
    return subprocess.run([sys.executable, "-m", "mozi.host.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["otp", "aes-gcm"])
def test_a_file_moves_through_the_two_kmes(kms, tmp_path, mode):
    """``mozi encrypt --kms`` at Moscow, ``mozi decrypt --kms`` at Urumqi; a second decrypt
    and a tampered copy fail with one line and leave no output."""
    plain = tmp_path / "image.png"
    plain.write_bytes(bytes(range(256)) * 12)
    enc, out = tmp_path / "image.mzc", tmp_path / "back.png"
    certs = kms["certs"]
    r = _mozi("encrypt", plain, enc, "--kms", kms["moscow"].url, "--certs", certs, "--sae",
              "sae-moscow", "--slave", "sae-urumqi", "--mode", mode, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == mode and doc["sender"] == "sae-moscow"
    assert len(doc["key_ids"]) == (1 if mode == "aes-gcm" else -(-(8 * 3072 + 256) // 256))
    bad = tmp_path / "bad.mzc"
    data = bytearray(enc.read_bytes())
    data[-20] ^= 1
    bad.write_bytes(bytes(data))
    dec = ("--kms", kms["urumqi"].url, "--certs", certs, "--sae", "sae-urumqi")
    r = _mozi("decrypt", enc, out, *dec)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == plain.read_bytes()
    out.unlink()
    for again in (enc, bad):          # the keys were handed out once: both refused
        r = _mozi("decrypt", again, out, *dec)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
        assert "handed out already" in r.stderr and not out.exists()
    # the file is for sae-urumqi only
    r = _mozi("decrypt", enc, out, "--kms", kms["urumqi"].url, "--certs", certs, "--sae",
              "sae-eve")
    assert r.returncode == 1 and "is for SAE 'sae-urumqi'" in r.stderr


def test_kms_options_are_checked(kms, tmp_path):
    plain = tmp_path / "x"
    plain.write_bytes(b"x")
    r = _mozi("encrypt", plain, tmp_path / "y", "--kms", kms["moscow"].url, "--certs",
              kms["certs"], "--sae", "sae-moscow")
    assert r.returncode == 1 and "--slave" in r.stderr
    r = _mozi("encrypt", plain, tmp_path / "y", "--kms", "http://127.0.0.1:1", "--certs",
              kms["certs"], "--sae", "sae-moscow", "--slave", "sae-urumqi")
    assert r.returncode == 1 and "https://" in r.stderr
    r = _mozi("decrypt", plain, tmp_path / "y")
    assert r.returncode == 1 and "--store" in r.stderr


def test_bodies_without_a_usable_length_are_refused(kms):
    sae = kms["sae-moscow"]
    r = sae.http.post("/sae-urumqi/enc_keys", content=iter([b'{"number": 1}']))  # chunked
    assert r.status_code == 411
    # what httpx will not send: a raw request over the same mutual TLS
    ctx = sae_context(kms["certs"], "sae-moscow")
    for length in ("-5", "abc", str(1 << 30)):
        with socket.create_connection(("127.0.0.1", kms["moscow"].port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"POST /api/v1/keys/sae-urumqi/enc_keys HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {length}\r\n\r\n{{}}".encode())
            answer = b""
            while chunk := tls.recv(4096):      # the KME closes: the body was not read
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400") and b"bad Content-Length" in answer, length


def test_a_kme_started_before_the_relay_serves_its_key_afterwards(kms, tmp_path):
    with KeyStore(tmp_path / "moscow.db", party="moscow") as a, \
            KeyStore(tmp_path / "urumqi.db", party="urumqi") as b:
        with KmeProcess(tmp_path / "moscow.db", kms["certs"]) as m, \
                Sae(m.url, kms["certs"], "sae-moscow") as sae:
            r = sae.status("sae-urumqi")
            assert r.status_code == 400 and "shares no key" in r.json()["message"]
            share_key(a, b, LINK, random_bits(4 * 8192, 3))       # the relay happens now
            assert sae.status("sae-urumqi").json()["stored_key_count"] == 2 * 31


def test_a_kme_killed_under_load_never_hands_a_key_out_twice(kms, tmp_path):
    """SIGKILL of the master's KME while 4 SAEs take keys, a restart on the same store, more
    keys: every key an SAE received is distinct, recorded as handed out, and fetched once at
    the peer KME with the same bits."""
    with KeyStore(tmp_path / "moscow.db", party="moscow") as a, \
            KeyStore(tmp_path / "urumqi.db", party="urumqi") as b:
        share_key(a, b, LINK, random_bits(64 * 8192, 9))
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def take(url, stop):
        with Sae(url, kms["certs"], "sae-moscow") as sae:
            while not stop.is_set():
                try:
                    keys = keys_of(sae.enc_keys("sae-urumqi", number=2))
                except (httpx.HTTPError, AssertionError):
                    return                  # the KME died under this request
                with lock:
                    got.extend(keys.items())

    for round_ in range(2):
        kme = KmeProcess(tmp_path / "moscow.db", kms["certs"])
        stop = threading.Event()
        workers = [threading.Thread(target=take, args=(kme.url, stop)) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        if round_ == 0:
            kme.proc.send_signal(signal.SIGKILL)
            kme.proc.wait(30)
        stop.set()
        for w in workers:
            w.join(30)
        kme.stop()
    ids = [k for k, _ in got]
    assert len(ids) > 20 and len(set(ids)) == len(ids)
    assert len({v for _, v in got}) == len(got)
    with KeyStore(tmp_path / "moscow.db", create=False) as m:
        handed = {k for k, side, *_ in m.kms_handed_out() if side == "enc"}
    assert set(ids) <= handed                   # answered only after it was recorded
    with KmeProcess(tmp_path / "urumqi.db", kms["certs"]) as u, \
            Sae(u.url, kms["certs"], "sae-urumqi") as slave:
        fetched = {}
        for i in range(0, len(ids), 100):
            fetched |= keys_of(slave.dec_keys("sae-moscow", ids[i:i + 100]))
    assert fetched == dict(got)
