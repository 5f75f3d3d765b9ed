"""A key management entity (KME): ETSI GS QKD 014 V1.1.1 key delivery over mutual TLS.

``mozi kms serve --store moscow.db --certs DIR --host 127.0.0.1 --port 8443`` serves, to the
secure application entities (SAEs) the folder ``DIR`` (``mozi kms init``) says it serves:

``GET /api/v1/keys/{slave_SAE_ID}/status``
    Status of the key the asking SAE (the master) can get for ``slave_SAE_ID``.
``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys``
    ``number`` keys of ``size`` bits (query parameters, or a JSON body that may also carry
    ``additional_slave_SAE_IDs`` — not supported: 400 — and ``extension_mandatory`` — none
    supported: 400 — and ``extension_optional``, ignored).
``GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys``
    The keys with the given IDs (``key_ID`` query parameter, or ``{"key_IDs": [{"key_ID":
    …}]}``) that ``master_SAE_ID``'s KME handed out for the asking SAE (the slave).

Keys are ``{"keys": [{"key_ID": UUID, "key": base64}]}``; errors ``{"message": …,
"details": [{…}]}`` with 400 (bad request), 401 (the SAE may not have that) and 503 (the key
store failed). The SAE is whoever its client certificate (signed by the folder's CA) names,
never what a request says. The key comes from the station's key store: the relayed link with
the slave's (or master's) KME, the master's station's blocks for keys it sends with
(:meth:`~mozi.host.keys.keystore.KeyStore.kms_issue`), key IDs the peer KME checks on its own
(:mod:`mozi.host.kms.keyid`); each key is handed out once by ``enc_keys`` and once by
``dec_keys`` at the peer, and never again at either.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mozi.host.errors import KeyStoreError
from mozi.host.keys.keystore import KeyRequestRefused, KeyStore
from mozi.host.kms.certs import Pki, peer_sae_id, server_context
from mozi.host.kms.keyid import (
    MAX_KEY_BYTES,
    RESERVED_BYTES,
    check_key_id,
    make_key_id,
    parse_key_id,
)

__all__ = ["DEFAULT_KEY_SIZE", "MAX_KEY_PER_REQUEST", "Kme", "KmeError"]

#: ``size`` when a request gives none (bits).
DEFAULT_KEY_SIZE = 256
MAX_KEY_PER_REQUEST = 128
MIN_KEY_SIZE = 8
_MAX_BODY = 1 << 20
_PREFIX = "/api/v1/keys/"


class KmeError(Exception):
    """A request the KME answers with an error status."""

    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status = int(status)
        self.details = [details] if details else []


class Kme:
    """One KME: the station's key store and its place in the folder of certificates.

    Parameters
    ----------
    store : path
        The station's key store.
    pki : Pki
    kme_id : str, optional
        This KME's ID in ``pki`` (default: the store's party).
    """

    def __init__(self, store, pki: Pki, kme_id: str | None = None):
        self.store_path = Path(store)
        # one connection, one request at a time on it: no waits on SQLite's busy handler
        self._store = KeyStore(self.store_path, create=False)
        self._lock = threading.Lock()
        self.party = self._store.party
        self._links = {peer: link for link, peer in self._store.links().items()}
        self.kme_id = kme_id or self.party
        self.pki = pki
        self.saes = set(pki.kmes.get(self.kme_id, ()))
        if self.kme_id not in pki.kmes:
            pki.kme(self.kme_id)                      # raises CertificateError with the list
        self._kme_of = {sae: kme for kme, saes in pki.kmes.items() for sae in saes}

    # -- who may ask what --------------------------------------------------------------------

    def _local(self, sae: str | None) -> str:
        if sae is None or sae not in self.saes:
            raise KmeError(401, f"SAE {sae!r} is not served by KME {self.kme_id!r}")
        return sae

    def _remote(self, sae: str) -> tuple[str, str]:
        """(KME of the other SAE, the link this station shares with it)."""
        kme = self._kme_of.get(sae)
        if kme is None:
            raise KmeError(400, f"unknown SAE {sae!r}", SAE_ID=sae)
        if kme == self.kme_id:
            raise KmeError(400, f"SAE {sae!r} is served by this KME itself: keys are for "
                           f"SAEs at two stations")
        link = self._links.get(kme)
        if link is None:                # a relay since the KME started may have made it
            with self._lock:
                self._links = {peer: name for name, peer in self._store.links().items()}
            link = self._links.get(kme)
        if link is None:
            raise KmeError(400, f"this station shares no key with KME {kme!r}")
        return kme, link

    # -- the three calls ---------------------------------------------------------------------

    def status(self, master: str | None, slave: str) -> dict:
        master = self._local(master)
        kme, link = self._remote(slave)
        count, largest = self._capacity(link, DEFAULT_KEY_SIZE // 8)
        return {"source_KME_ID": self.kme_id, "target_KME_ID": kme, "master_SAE_ID": master,
                "slave_SAE_ID": slave, "key_size": DEFAULT_KEY_SIZE,
                "stored_key_count": count, "max_key_count": count,
                "max_key_per_request": MAX_KEY_PER_REQUEST,
                "max_key_size": 8 * min(largest, MAX_KEY_BYTES), "min_key_size": MIN_KEY_SIZE,
                "max_SAE_ID_count": 0}

    def _capacity(self, link: str, size: int) -> tuple[int, int]:
        with self._lock:
            return self._store.kms_capacity(link, size=size, reserve=RESERVED_BYTES)

    def close(self) -> None:
        with self._lock:
            self._store.close()

    def enc_keys(self, master: str | None, slave: str, request: dict) -> dict:
        master = self._local(master)
        _, link = self._remote(slave)
        unknown = set(request) - {"number", "size", "additional_slave_SAE_IDs",
                                  "extension_mandatory", "extension_optional"}
        if unknown:
            raise KmeError(400, f"unknown request fields: {', '.join(sorted(unknown))}")
        if request.get("additional_slave_SAE_IDs"):
            raise KmeError(400, "additional_slave_SAE_IDs are not supported "
                           "(max_SAE_ID_count is 0)")
        mandatory = request.get("extension_mandatory")
        if mandatory:
            names = [k for e in mandatory if isinstance(e, dict) for k in e] \
                if isinstance(mandatory, list) else [str(mandatory)]
            raise KmeError(400, "not supported extension_mandatory parameters",
                           extension_mandatory_unsupported=names)
        number = _integer(request.get("number", 1), "number")
        size = _integer(request.get("size", DEFAULT_KEY_SIZE), "size")
        if not 1 <= number <= MAX_KEY_PER_REQUEST:
            raise KmeError(400, f"number must lie in 1 … {MAX_KEY_PER_REQUEST}, not {number}")
        if size % 8 or not MIN_KEY_SIZE <= size <= 8 * MAX_KEY_BYTES:
            raise KmeError(400, f"size must be a multiple of 8 in {MIN_KEY_SIZE} … "
                           f"{8 * MAX_KEY_BYTES} bits, not {size}")
        try:
            with self._lock:
                keys = self._store.kms_issue(
                    link, size=size // 8, number=number, reserve=RESERVED_BYTES, master=master,
                    slave=slave, make_id=lambda b, r, o, s: make_key_id(
                        b, r, o, s, master=master, slave=slave))
        except KeyRequestRefused as exc:
            raise KmeError(exc.status, f"{exc}: see status for stored_key_count and "
                           f"max_key_size") from None
        return _keys(keys)

    def dec_keys(self, slave: str | None, master: str, key_ids) -> dict:
        slave = self._local(slave)
        kme, link = self._remote(master)
        if not isinstance(key_ids, list) or not key_ids:
            raise KmeError(400, "key_IDs must be a non-empty list")
        if len(key_ids) > MAX_KEY_PER_REQUEST:
            raise KmeError(400, f"at most {MAX_KEY_PER_REQUEST} key_IDs per request")
        requests = []
        for entry in key_ids:
            kid = entry.get("key_ID") if isinstance(entry, dict) else None
            try:
                requests.append(parse_key_id(kid))
            except ValueError as exc:
                raise KmeError(400, str(exc), key_ID=str(kid)[:60]) from None
        if len({r[0] for r in requests}) != len(requests):
            raise KmeError(400, "the same key_ID is asked twice")
        try:
            with self._lock:
                keys = self._store.kms_fetch(
                    link, requests, peer=kme, reserve=RESERVED_BYTES, master=master,
                    slave=slave, check_id=lambda k, b, r: check_key_id(
                        k, b, r, master=master, slave=slave))
        except KeyRequestRefused as exc:
            raise KmeError(exc.status, str(exc)) from None
        return _keys(keys)

    # -- HTTP ------------------------------------------------------------------------------

    def dispatch(self, method: str, target: str, body: bytes, sae: str | None) -> dict:
        """Answer one request (``target``: path and query) for the SAE ``sae``."""
        url = urllib.parse.urlsplit(target)
        if not url.path.startswith(_PREFIX):
            raise KmeError(404, f"no such resource {url.path[:100]!r}")
        other, _, call = url.path[len(_PREFIX):].partition("/")
        other = urllib.parse.unquote(other)
        if call not in ("status", "enc_keys", "dec_keys") or not other:
            raise KmeError(404, f"no such resource {url.path[:100]!r}")
        if call == "status":
            if method != "GET":
                raise KmeError(405, "status is GET only")
            return self.status(sae, other)
        if method == "GET":
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            if call == "enc_keys":
                req = {k: v[-1] for k, v in query.items()}
                return self.enc_keys(sae, other, req)
            ids = query.get("key_ID", [])
            return self.dec_keys(sae, other, [{"key_ID": k} for k in ids])
        try:
            req = json.loads(body.decode("utf-8")) if body.strip() else {}
        except (UnicodeDecodeError, ValueError):
            raise KmeError(400, "the request body is not JSON") from None
        if not isinstance(req, dict):
            raise KmeError(400, "the request body must be a JSON object")
        if call == "enc_keys":
            return self.enc_keys(sae, other, req)
        unknown = set(req) - {"key_IDs"}
        if unknown:
            raise KmeError(400, f"unknown request fields: {', '.join(sorted(unknown))}")
        return self.dec_keys(sae, other, req.get("key_IDs"))

    def server(self, host: str = "127.0.0.1", port: int = 0) -> _Server:
        """An HTTPS server for this KME (call ``serve_forever``, or ``start`` for a thread)."""
        return _Server(self, host, port, server_context(self.pki, self.kme_id))


def _integer(value, name: str) -> int:
    if isinstance(value, bool):
        raise KmeError(400, f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise KmeError(400, f"{name} must be an integer, not {str(value)[:40]!r}")


def _keys(keys) -> dict:
    return {"keys": [{"key_ID": kid, "key": base64.b64encode(key).decode()}
                     for kid, key in keys]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # one response, not headers then a delayed body
    server_version = "mozi-kme/1"
    timeout = 30

    def setup(self) -> None:
        super().setup()
        # the TLS handshake runs here, in the request's own thread
        self.connection.do_handshake()

    def log_message(self, format, *args) -> None:      # one JSON line per request instead
        pass

    def _answer(self, method: str) -> None:
        sae = peer_sae_id(self.connection.getpeercert())
        length = self.headers.get("Content-Length")
        try:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True        # the body cannot be skipped
                raise KmeError(411, "a request body needs a Content-Length")
            try:
                n = int(length or 0)
            except ValueError:
                n = -1
            if not 0 <= n <= _MAX_BODY:
                self.close_connection = True
                raise KmeError(400, f"bad Content-Length {str(length)[:20]!r} (at most "
                               f"{_MAX_BODY} bytes)")
            body = self.rfile.read(n) if n else b""
            status, doc = 200, self.server.kme.dispatch(method, self.path, body, sae)
        except KmeError as exc:
            status, doc = exc.status, {"message": str(exc), "details": exc.details}
        except KeyStoreError as exc:
            status, doc = 503, {"message": f"the key store failed: {exc}", "details": []}
        data = json.dumps(doc).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, kme: Kme, host: str, port: int, context: ssl.SSLContext):
        self.kme = kme
        self._context = context
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    def get_request(self):
        sock, addr = self.socket.accept()
        return self._context.wrap_socket(sock, server_side=True,
                                         do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address) -> None:
        pass                     # a failed handshake or a dropped client is not an event

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> _Server:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self.kme.close()
