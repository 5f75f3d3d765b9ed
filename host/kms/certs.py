"""Certificates for key delivery over mutual TLS (ETSI GS QKD 014), and the TLS contexts.

``mozi kms init DIR`` (:func:`init_pki`) makes, in one step:

* a certificate authority (``ca.crt``, ``ca.key``) that signs everything below and that every
  party trusts, and nothing else;
* one server certificate per key management entity (``kme/<KME_ID>.crt``/``.key``): the KME's
  ID as common name, ``serverAuth`` only, valid for ``localhost``, ``127.0.0.1`` and the host
  names given;
* one client certificate per secure application entity (``sae/<SAE_ID>.crt``/``.key``): the
  SAE's ID as common name, ``clientAuth`` only. A KME learns who is asking from this
  certificate alone (:func:`peer_sae_id`), never from the request.
* ``kms.json``: which SAEs each KME serves.

Keys are ECDSA P-256 from the OS CSPRNG, private keys mode 0600 in folders 0700. The folder is
assembled beside ``DIR`` and renamed into place, so it either appears whole or not at all, and
an existing non-empty ``DIR`` is refused (a CA key is never overwritten).

:func:`server_context` and :func:`client_context` build the only TLS configurations the KMS
uses: TLS 1.2 or newer, the CA as the sole trust anchor, a client certificate required by the
server, and each certificate usable only in its role (an SAE certificate cannot serve, a KME
certificate cannot ask).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mozi.sim.errors import MoziError

__all__ = ["DEFAULT_KMES", "DEFAULT_SAES", "CertificateError", "Pki", "client_context",
           "init_pki", "load_pki", "peer_sae_id", "server_context"]

#: The demo's stations and their applications, when ``mozi kms init`` is given none.
DEFAULT_KMES = ("moscow", "urumqi")
DEFAULT_SAES = (("sae-moscow", "moscow"), ("sae-urumqi", "urumqi"))
DEFAULT_DAYS = 365
MANIFEST = "kms.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CertificateError(MoziError):
    """Bad names or hosts for ``mozi kms init``, an existing folder, or a folder that is not
    one ``mozi kms init`` made."""


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CertificateError(f"{kind} {name!r} is not 1-64 letters, digits, '.', '_' or '-' "
                               "(starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class Pki:
    """A folder made by :func:`init_pki`."""

    root: Path
    kmes: dict[str, list[str]]          # KME_ID → the SAE_IDs it serves

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def kme(self, kme_id: str) -> tuple[Path, Path]:
        """The KME's certificate and key files."""
        if kme_id not in self.kmes:
            raise CertificateError(f"no KME {kme_id!r} in {self.root} "
                                   f"(it has: {', '.join(sorted(self.kmes))})")
        return self.root / "kme" / f"{kme_id}.crt", self.root / "kme" / f"{kme_id}.key"

    def sae(self, sae_id: str) -> tuple[Path, Path]:
        """The SAE's certificate and key files."""
        if not any(sae_id in saes for saes in self.kmes.values()):
            raise CertificateError(f"no SAE {sae_id!r} in {self.root}")
        return self.root / "sae" / f"{sae_id}.crt", self.root / "sae" / f"{sae_id}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, days: int, ca: bool = False,
          usage=None, hosts: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    # a CA only signs certificates; everything else only signs TLS handshakes, in one role
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False), critical=True)
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=True)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    if hosts:
        names = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+", host):
        raise CertificateError(f"host {host!r} is neither an IP address nor a DNS name")
    return host.rstrip(".")


def init_pki(root, *, kmes=DEFAULT_KMES, saes=DEFAULT_SAES, hosts=(), days: int = DEFAULT_DAYS
             ) -> Pki:
    """Make the CA, the KME and SAE certificates and ``kms.json`` in the new folder ``root``.

    ``saes`` pairs each SAE_ID with the KME_ID that serves it; ``hosts`` are extra names or
    addresses the KME certificates are valid for. Raises :class:`CertificateError` for a bad
    or repeated name, an SAE of an unknown KME, or a ``root`` that exists and is not empty.
    """
    root = Path(root)
    kmes = tuple(_check_name("KME ID", k) for k in kmes)
    saes = tuple((_check_name("SAE ID", s), k) for s, k in saes)
    hosts = tuple(dict.fromkeys(("localhost", "127.0.0.1", *(_check_host(h) for h in hosts))))
    if not kmes:
        raise CertificateError("no KME named")
    ids = [*kmes, *(s for s, _ in saes)]
    if len(set(ids)) != len(ids):
        raise CertificateError(f"a name is given twice: {', '.join(ids)}")
    for sae, kme in saes:
        if kme not in kmes:
            raise CertificateError(f"SAE {sae!r} names KME {kme!r}, which is not made here")
    if not 1 <= days <= 3650:
        raise CertificateError(f"validity of {days} days is not between 1 and 3650")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CertificateError(f"{root} exists and is not an empty folder; nothing was written")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))   # mode 0700
    try:
        ca_key = _key()
        ca_cn = "Mozi KMS CA"
        ca_cert = _cert(ca_cn, ca_key, ca_cn, ca_key, days=days, ca=True)
        _write(work / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(work / "ca.key", _pem_key(ca_key), 0o600)
        for folder, names, usage, san in (
                ("kme", kmes, ExtendedKeyUsageOID.SERVER_AUTH, hosts),
                ("sae", [s for s, _ in saes], ExtendedKeyUsageOID.CLIENT_AUTH, ())):
            for name in names:
                key = _key()
                cert = _cert(name, key, ca_cn, ca_key, days=days, usage=usage, hosts=san)
                _write(work / folder / f"{name}.crt",
                       cert.public_bytes(serialization.Encoding.PEM), 0o644)
                _write(work / folder / f"{name}.key", _pem_key(key), 0o600)
        manifest = {"kmes": {k: [s for s, owner in saes if owner == k] for k in kmes},
                    "hosts": list(hosts), "days": days}
        _write(work / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)
        if root.exists():
            root.rmdir()                      # (empty: checked above)
        os.rename(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return load_pki(root)


def load_pki(root) -> Pki:
    """The folder :func:`init_pki` made (raises :class:`CertificateError` otherwise)."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        kmes = {_check_name("KME ID", k): [_check_name("SAE ID", s) for s in v]
                for k, v in manifest["kmes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CertificateError(f"{root} is not a folder made by 'mozi kms init' ({e})") from None
    return Pki(root, kmes)


def server_context(pki: Pki, kme_id: str) -> ssl.SSLContext:
    """TLS ≥ 1.2 for the KME ``kme_id``: its certificate, and a client certificate signed by
    the CA required of every peer."""
    cert, key = pki.kme(kme_id)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=pki.ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(pki: Pki, sae_id: str) -> ssl.SSLContext:
    """TLS ≥ 1.2 for the SAE ``sae_id``: its client certificate, the CA as the only trust
    anchor, the server's name checked against its certificate."""
    cert, key = pki.sae(sae_id)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=pki.ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def peer_sae_id(peercert: dict | None) -> str | None:
    """The SAE ID in a verified client certificate (``SSLSocket.getpeercert()``), or None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and _NAME.fullmatch(value):
                return value
    return None
