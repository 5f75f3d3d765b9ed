"""An SAE's client of a KME (ETSI GS QKD 014), for ``mozi encrypt/decrypt --kms``.

It speaks only what the standard defines — ``status``, ``enc_keys``, ``dec_keys`` under
``/api/v1/keys/`` — over HTTPS with the SAE's client certificate from a ``mozi kms init``
folder, trusting that folder's CA alone.
"""

from __future__ import annotations

import base64

import httpx
from mozi.host.kms.certs import Pki, client_context
from mozi.sim.errors import MoziError

__all__ = ["KmeClient", "KmsError"]


class KmsError(MoziError):
    """The KME refused a request (``status``: its HTTP status) or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class KmeClient:
    """``KmeClient("https://127.0.0.1:8443", pki, "sae-moscow")``."""

    def __init__(self, url: str, pki: Pki, sae_id: str, *, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.sae_id = sae_id
        self._http = httpx.Client(base_url=self.url + "/api/v1/keys",
                                  verify=client_context(pki, sae_id), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KmeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw) -> dict:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise KmsError(f"KME {self.url}: {exc}") from None
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        if r.status_code != 200:
            raise KmsError(f"KME {self.url} answered {r.status_code}: "
                           f"{doc.get('message', r.reason_phrase)}", r.status_code)
        return doc

    def status(self, slave: str) -> dict:
        return self._call("GET", f"/{slave}/status")

    def enc_keys(self, slave: str, *, number: int = 1, size: int | None = None
                 ) -> list[tuple[str, bytes]]:
        body = {"number": int(number)} | ({} if size is None else {"size": int(size)})
        return _keys(self._call("POST", f"/{slave}/enc_keys", json=body))

    def dec_keys(self, master: str, key_ids) -> list[tuple[str, bytes]]:
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return _keys(self._call("POST", f"/{master}/dec_keys", json=body))


def _keys(doc: dict) -> list[tuple[str, bytes]]:
    try:
        return [(k["key_ID"], base64.b64decode(k["key"], validate=True)) for k in doc["keys"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise KmsError(f"malformed key container from the KME ({exc})") from None
