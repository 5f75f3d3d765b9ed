"""Helpers for tests that run real KMEs (``mozi kms serve``) on loopback, and an SAE client
written from the ETSI GS QKD 014 text alone (httpx, mutual TLS), not from Mozi's client."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import warnings
from pathlib import Path

import httpx


class KmeProcess:
    """``mozi kms serve`` in a subprocess on a free loopback port."""

    def __init__(self, store: Path, certs: Path, kme: str | None = None):
        args = [sys.executable, "-m", "mozi.host.cli", "kms", "serve", "--store", str(store),
                "--certs", str(certs), "--host", "127.0.0.1", "--port", "0"]
        if kme:
            args += ["--kme", kme]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"KME did not start: {self.proc.stderr.read()}")
        doc = json.loads(first)
        self.kme_id, self.port = doc["kme"], doc["port"]
        self.url = f"https://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(30)

    def __enter__(self) -> KmeProcess:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def sae_context(certs: Path, sae: str | None, *, tls_max=None) -> ssl.SSLContext:
    """The TLS client side an SAE would set up from its certificate files."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if sae is not None:
        ctx.load_cert_chain(certs / "sae" / f"{sae}.crt", certs / "sae" / f"{sae}.key")
    if tls_max is not None:        # an old client: the KME must refuse it, not our side
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = tls_max
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


class Sae:
    """An SAE's calls, each straight from the standard's section 5 and 6."""

    def __init__(self, kme_url: str, certs: Path, sae: str | None, **ctx):
        self.http = httpx.Client(base_url=f"{kme_url}/api/v1/keys",
                                 verify=sae_context(certs, sae, **ctx), timeout=30)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Sae:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def status(self, slave: str) -> httpx.Response:
        return self.http.get(f"/{slave}/status")

    def enc_keys(self, slave: str, *, get: bool = False, **params) -> httpx.Response:
        if get:
            return self.http.get(f"/{slave}/enc_keys", params=params)
        return self.http.post(f"/{slave}/enc_keys", json=params)

    def dec_keys(self, master: str, key_ids, *, get: bool = False) -> httpx.Response:
        if get:
            return self.http.get(f"/{master}/dec_keys",
                                 params=[("key_ID", k) for k in key_ids])
        return self.http.post(f"/{master}/dec_keys",
                              json={"key_IDs": [{"key_ID": k} for k in key_ids]})


def keys_of(response: httpx.Response) -> dict[str, str]:
    """``{key_ID: base64 key}`` of a 200 Key container."""
    assert response.status_code == 200, response.text
    return {k["key_ID"]: k["key"] for k in response.json()["keys"]}
