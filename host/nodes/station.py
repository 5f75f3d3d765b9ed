"""A ground station node: a long-lived asyncio server that the satellite connects to.

``mozi node station --name moscow --store moscow.db --listen 127.0.0.1:7001 --tags T.tags …``
listens on one TCP port. Each connection starts with the hello of :mod:`mozi.host.nodes.wire`
naming the link; the station accepts it only for a link its key store shares with the party
the hello names, and one connection per link at a time. Then:

* ``session``: Bob's half of a QKD session (:func:`~mozi.host.postprocessing.session.
  bob_session`) in a worker thread, with the station's own detections of the pass Alice
  announces (found among the ``--tags`` files by pass name and slot range). A pass is
  post-processed once: a second session on it is refused.
* ``relay``: the satellite's relay announcement is checked and applied
  (:func:`~mozi.host.keys.relay.apply_announcement`) and confirmed; an announcement resent
  after a crash is confirmed again without being applied twice.

Every connection ends with one JSON line on stdout (``event``: ``session``, ``relay``,
``refused``, or ``error`` for input of the station's own that cannot be used); the first
line says where the station listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from mozi.host.crash import crashpoint
from mozi.host.crypto.auth import AuthenticatedChannel, AuthKeyPoolExhausted, ChannelEmpty
from mozi.host.errors import AuthenticationError, KeyStoreError, ProtocolAbort
from mozi.host.keys.keystore import KeyStore
from mozi.host.keys.relay import (
    RELAY_MESSAGE,
    RelayAnnouncement,
    apply_announcement,
    relayed_already,
)
from mozi.host.nodes.wire import (
    BridgeTransport,
    NodeError,
    encode_hello,
    parse_hello,
    read_frame,
    write_frame,
)
from mozi.host.postprocessing.session import PassStart, SessionConfig, bob_session, pass_key
from mozi.sim.errors import FileFormatError, MoziError
from mozi.sim.tagfile import read_tags

__all__ = ["RELAY_ACCEPTED", "Station"]

#: The station's confirmation of a relay announcement (authenticated).
RELAY_ACCEPTED = "relay-accepted"

_ABORTS = (ProtocolAbort, AuthenticationError, AuthKeyPoolExhausted, ChannelEmpty,
           KeyStoreError)


class Station:
    """One ground station node.

    Parameters
    ----------
    name : str
        The station's party name (its key store's party).
    store : path
        Its key store (must exist: ``mozi link init`` made it).
    tags : list of paths
        Its tag files, one per pass slice recorded.
    host, port : str, int
        Where to listen (port 0: any free port, reported in the first line).
    config : SessionConfig
    timeout : float
        Seconds a peer may stay silent before the connection is given up.
    """

    def __init__(self, *, name: str, store, tags=(), host: str = "127.0.0.1", port: int = 0,
                 config: SessionConfig | None = None, timeout: float = 60.0, out=None):
        self.name = name
        self.store_path = Path(store)
        KeyStore(self.store_path, party=name, create=False).close()
        self.host, self.port = host, int(port)
        self.config = config or SessionConfig()
        self.timeout = float(timeout)
        self._out = out or sys.stdout
        self._locks: dict[str, asyncio.Lock] = {}
        self._tags: dict[str, Path] = {}
        for path in map(Path, tags):
            meta = read_tags(path).metadata
            key = pass_key(meta.get("pass"), meta.get("first_slot"), meta.get("n_slots"))
            if key is None:
                raise FileFormatError(f"{path}: the tag file does not name its pass")
            self._tags[key] = path

    def _emit(self, event: dict) -> None:
        self._out.write(json.dumps(event, sort_keys=True) + "\n")
        self._out.flush()

    def tags_for(self, start: PassStart):
        """This station's detections of the pass slice Alice announces."""
        path = self._tags.get(start.pass_key)
        if path is None:
            raise ProtocolAbort(f"{self.name} has no detections of pass {start.pass_key}")
        return read_tags(path)

    async def serve(self, *, ready: asyncio.Event | None = None) -> None:
        """Listen until cancelled (SIGTERM / Ctrl-C in the CLI)."""
        server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._emit({"event": "listening", "station": self.name, "host": self.host,
                    "port": self.port})
        if ready is not None:
            ready.set()
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            hello = parse_hello(await asyncio.wait_for(read_frame(reader), self.timeout))
            link, purpose = hello["link"], hello["purpose"]
            with KeyStore(self.store_path, create=False) as store:
                peer = store.peer(link)
            if peer != hello["party"]:
                raise NodeError(f"{hello['party']!r} asked for link {link!r}, which "
                                f"{self.name} does not share with it")
            await write_frame(writer, encode_hello(self.name, link, purpose))
            lock = self._locks.setdefault(link, asyncio.Lock())
            async with lock:                 # one connection per link at a time
                transport = BridgeTransport(asyncio.get_running_loop(), reader, writer,
                                            timeout=self.timeout)
                event = await asyncio.to_thread(self._serve, purpose, link, transport)
            self._emit(event)
        except (NodeError, asyncio.IncompleteReadError, TimeoutError, ConnectionError,
                KeyStoreError) as exc:
            self._emit({"event": "refused", "station": self.name,
                        "error": str(exc) or type(exc).__name__})
        except MoziError as exc:            # input of this station's own that cannot be used
            self._emit({"event": "error", "station": self.name, "error": str(exc)})
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _serve(self, purpose: str, link: str, transport: BridgeTransport) -> dict:
        with KeyStore(self.store_path, party=self.name, create=False) as store:
            if purpose == "session":
                res = bob_session(transport, self.tags_for, link=link, store=store,
                                  config=self.config, once_per_pass=True)
                return {"event": "session", "station": self.name, "link": link,
                        "aborted": res.aborted, "abort_reason": res.abort_reason,
                        "staged": res.staged, "final_key_bits": res.final_key_bits,
                        "key_ids": res.key_ids, "frames_sent": transport.frames_sent,
                        "frames_received": transport.frames_received}
            return self._relay(store, link, transport)

    def _relay(self, store: KeyStore, link: str, transport: BridgeTransport) -> dict:
        channel = AuthenticatedChannel(store.auth_key(link), transport,
                                       max_failures=self.config.auth_max_failures)
        event = {"event": "relay", "station": self.name, "link": link}
        try:
            channel.open()
            try:
                ann = RelayAnnouncement.from_bytes(channel.expect(RELAY_MESSAGE))
            except FileFormatError as exc:
                raise ProtocolAbort(f"malformed relay announcement: {exc}") from None
            repeat = relayed_already(store, ann)
            if not repeat:
                apply_announcement(store, ann, link=link)
            crashpoint("station-relayed")
            channel.send(RELAY_ACCEPTED, ann.key_ids[0].encode())
            return {**event, "aborted": False, "repeat": repeat,
                    "relay_link": ann.relay_link, "key_ids": list(ann.key_ids)}
        except _ABORTS as exc:
            channel.abort(str(exc))
            return {**event, "aborted": True, "abort_reason": str(exc)}
