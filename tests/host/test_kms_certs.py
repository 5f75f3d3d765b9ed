"""Certificates and TLS contexts of ETSI 014 key delivery (mozi.host.kms.certs, mozi kms init).

Every claim is tested with a real TLS handshake on 127.0.0.1: the server learns the SAE's ID
from its certificate; a client without a certificate, with one from another CA, or with a KME's
certificate is refused; an SAE's certificate cannot serve; TLS below 1.2 is refused.
"""

import socket
import ssl
import stat
import subprocess
import sys
import threading

import pytest
from mozi.host.kms.certs import (
    CertificateError,
    client_context,
    init_pki,
    load_pki,
    peer_sae_id,
    server_context,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("kms") / "pki")


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
               host: str = "127.0.0.1") -> dict:
    """One connection on loopback; what each side saw (``error`` when a side failed)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    seen: dict = {}

    def serve():
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["sae"] = peer_sae_id(tls.getpeercert())
                seen["version"] = tls.version()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            seen["server_error"] = e
        finally:
            listener.close()
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=host) as tls:
            seen["reply"] = tls.recv(2)
    except (ssl.SSLError, OSError) as e:
        seen["client_error"] = e
    thread.join(10)
    return seen


def test_init_writes_private_keys_and_a_manifest(pki):
    assert pki.kmes == {"moscow": ["sae-moscow"], "urumqi": ["sae-urumqi"]}
    assert load_pki(pki.root) == pki
    for key in [pki.root / "ca.key", *(pki.root / "kme").glob("*.key"),
                *(pki.root / "sae").glob("*.key")]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for folder in (pki.root, pki.root / "kme", pki.root / "sae"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_mutual_tls_names_the_sae(pki):
    seen = _handshake(server_context(pki, "moscow"), client_context(pki, "sae-moscow"))
    assert seen.get("reply") == b"ok", seen
    assert seen["sae"] == "sae-moscow"
    assert seen["version"] in ("TLSv1.2", "TLSv1.3")
    seen = _handshake(server_context(pki, "urumqi"), client_context(pki, "sae-moscow"),
                      host="localhost")
    assert seen.get("reply") == b"ok" and seen["sae"] == "sae-moscow", seen


def test_a_client_without_a_certificate_is_refused(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.ca)
    seen = _handshake(server_context(pki, "moscow"), ctx)
    assert "server_error" in seen and "sae" not in seen, seen


def test_a_certificate_of_another_ca_is_refused(pki, tmp_path):
    other = init_pki(tmp_path / "other")
    seen = _handshake(server_context(pki, "moscow"), client_context(other, "sae-moscow"))
    assert "server_error" in seen and "sae" not in seen, seen
    # and an SAE does not trust a KME of another CA
    seen = _handshake(server_context(other, "moscow"), client_context(pki, "sae-moscow"))
    assert "client_error" in seen and "sae" not in seen, seen


def test_an_sae_certificate_cannot_serve(pki):
    cert, key = pki.sae("sae-urumqi")
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    impostor.load_cert_chain(cert, key)
    client = client_context(pki, "sae-moscow")
    client.check_hostname = False            # (refused for its purpose, not for its name)
    seen = _handshake(impostor, client)
    assert isinstance(seen.get("client_error"), ssl.SSLCertVerificationError), seen
    assert "unsuitable certificate purpose" in str(seen["client_error"])


def test_a_kme_certificate_cannot_ask_for_keys(pki):
    cert, key = pki.kme("urumqi")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.ca)
    ctx.load_cert_chain(cert, key)
    seen = _handshake(server_context(pki, "moscow"), ctx)
    assert "server_error" in seen and "sae" not in seen, seen
    assert "unsuitable certificate purpose" in str(seen["server_error"])


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_below_1_2_is_refused(pki):
    ctx = client_context(pki, "sae-moscow")
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    seen = _handshake(server_context(pki, "moscow"), ctx)
    assert "reply" not in seen and "sae" not in seen, seen


def test_an_existing_folder_is_never_overwritten(pki):
    before = {p: p.read_bytes() for p in pki.root.rglob("*") if p.is_file()}
    with pytest.raises(CertificateError, match="not an empty folder"):
        init_pki(pki.root)
    assert {p: p.read_bytes() for p in pki.root.rglob("*") if p.is_file()} == before
    assert not [p for p in pki.root.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kwargs, message", [
    ({"kmes": ("../up",)}, "KME ID"),
    ({"kmes": ("a b",)}, "KME ID"),
    ({"kmes": ()}, "no KME"),
    ({"kmes": ("k",), "saes": (("k", "k"),)}, "given twice"),
    ({"kmes": ("k",), "saes": (("s", "other"),)}, "not made here"),
    ({"hosts": ("bad host",)}, "host"),
    ({"days": 0}, "days"),
])
def test_bad_names_write_nothing(tmp_path, kwargs, message):
    with pytest.raises(CertificateError, match=message):
        init_pki(tmp_path / "pki", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path):
    def mozi(*args):
        return subprocess.run([sys.executable, "-m", "mozi.host.cli", "kms", *args],
                              capture_output=True, text=True, timeout=60)
    done = mozi("init", str(tmp_path / "pki"), "--kme", "k1", "--kme", "k2",
                "--sae", "app@k2", "--host", "kme.example", "--json")
    assert done.returncode == 0, done.stderr
    assert load_pki(tmp_path / "pki").kmes == {"k1": [], "k2": ["app"]}
    again = mozi("init", str(tmp_path / "pki"))
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    bad = mozi("init", str(tmp_path / "x"), "--sae", "no-kme")
    assert bad.returncode == 2 and "SAE_ID@KME_ID" in bad.stderr
    assert not (tmp_path / "x").exists()
