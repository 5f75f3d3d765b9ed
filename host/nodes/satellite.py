"""The satellite node: runs its passes with the stations over TCP, then relays.

``mozi node satellite --store sat.db --station moscow=127.0.0.1:7001 … --pass
moscow=alice.json … [--relay moscow,urumqi]`` follows its schedule: for each pass it connects
to that station (retrying while the station is not up yet, with back-off), runs Alice's half
of the session (:func:`~mozi.host.postprocessing.session.alice_session`) in a worker thread
over the connection, and then, if asked, relays: it announces ``K_SM ⊕ K_SU``
(:func:`~mozi.host.keys.relay.satellite_announce`), keeps the announcement for each station in
its store's outbox, and sends it to each station until that station confirms it. An outbox
left by a crash is sent first, so an interrupted relay ends with both stations holding the
relayed key. The report is one JSON document on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from mozi.host.crash import crashpoint
from mozi.host.crypto.auth import AuthenticatedChannel
from mozi.host.errors import ProtocolAbort
from mozi.host.keys.keystore import KeyStore
from mozi.host.keys.relay import RELAY_MESSAGE, RelayAnnouncement, satellite_announce
from mozi.host.nodes.station import RELAY_ACCEPTED
from mozi.host.nodes.wire import (
    BridgeTransport,
    NodeError,
    encode_hello,
    parse_hello,
    read_frame,
    write_frame,
)
from mozi.host.postprocessing.session import SessionConfig, alice_session
from mozi.sim.link import read_alice

__all__ = ["Satellite"]


class Satellite:
    """The satellite node.

    Parameters
    ----------
    store : path
        The satellite's key store (holding one link per station).
    stations : dict of str to (host, port)
        Where each station listens.
    config : SessionConfig
    timeout : float
        Seconds a station may stay silent during a session.
    connect_for : float
        Seconds to keep retrying a station that does not answer yet.
    """

    def __init__(self, *, store, stations: dict[str, tuple[str, int]],
                 config: SessionConfig | None = None, timeout: float = 60.0,
                 connect_for: float = 30.0):
        self.store_path = Path(store)
        with KeyStore(self.store_path, create=False) as st:
            self.party = st.party
            self.links = {peer: link for link, peer in st.links().items()}
        self.stations = dict(stations)
        self.config = config or SessionConfig()
        self.timeout = float(timeout)
        self.connect_for = float(connect_for)

    def link_to(self, station: str) -> str:
        if station not in self.links:
            raise NodeError(f"the satellite's store has no link to {station!r}")
        if station not in self.stations:
            raise NodeError(f"no address given for station {station!r}")
        return self.links[station]

    async def connect(self, station: str, purpose: str):
        """A connection to ``station`` after the hello exchange (retried with back-off)."""
        link = self.link_to(station)
        host, port = self.stations[station]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_for
        delay = 0.1
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                break
            except OSError as exc:
                if loop.time() + delay > deadline:
                    raise NodeError(f"station {station!r} at {host}:{port} does not answer "
                                    f"({exc.strerror or exc})") from None
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
        try:
            await write_frame(writer, encode_hello(self.party, link, purpose))
            hello = parse_hello(await asyncio.wait_for(read_frame(reader), self.timeout))
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            raise NodeError(f"station {station!r} refused the connection for link "
                            f"{link!r}") from None
        if hello["party"] != station or hello["link"] != link:
            writer.close()
            raise NodeError(f"{host}:{port} is {hello['party']!r} on {hello['link']!r}, not "
                            f"{station!r} on {link!r}")
        return link, reader, writer

    async def run_pass(self, station: str, alice_file) -> dict:
        """One QKD session with ``station`` on the pass recorded in ``alice_file``."""
        alice = read_alice(alice_file)
        link, reader, writer = await self.connect(station, "session")
        transport = BridgeTransport(asyncio.get_running_loop(), reader, writer,
                                    timeout=self.timeout)
        try:
            res = await asyncio.to_thread(self._alice, link, alice, transport)
        finally:
            await _close(writer)
        return {**res.to_json(), "station": station, "link": link}

    def _alice(self, link, alice, transport):
        with KeyStore(self.store_path, party=self.party, create=False) as store:
            return alice_session(transport, alice, link=link, store=store, config=self.config,
                                 once_per_pass=True)

    async def relay(self, first: str, second: str, *, n_bits: int | None = None) -> dict:
        """Relay between ``first`` (whose key becomes the shared one) and ``second``."""
        link1, link2 = self.link_to(first), self.link_to(second)
        relay_link = f"{first}-{second}"
        with KeyStore(self.store_path, party=self.party, create=False) as store:
            pending = store.outbox()
        finished = [await self._deliver(*entry) for entry in pending]
        resumed = [e for e in pending if RelayAnnouncement.from_bytes(e[3]).relay_link
                   == relay_link]
        if resumed:                 # the relay a crash interrupted: now finished
            ann = RelayAnnouncement.from_bytes(resumed[0][3])
            return {"relay_id": ann.key_ids[0], "relay_link": relay_link,
                    "n_bits": ann.n_bits, "key_ids": list(ann.key_ids), "resumed": True,
                    "deliveries": finished}
        with KeyStore(self.store_path, party=self.party, create=False) as store:
            ann = satellite_announce(store, link_sm=link1, link_su=link2,
                                     relay_link=relay_link, n_bits=n_bits, outbox=True)
        msg, relay_id = ann.to_bytes(), ann.key_ids[0]
        crashpoint("satellite-announced")
        deliveries = [await self._deliver(relay_id, st, link, msg)
                      for st, link in ((first, link1), (second, link2))]
        return {"relay_id": relay_id, "relay_link": relay_link, "n_bits": ann.n_bits,
                "key_ids": list(ann.key_ids), "resumed": False,
                "deliveries": finished + deliveries}

    async def _deliver(self, relay_id: str, station: str, link: str, msg: bytes) -> dict:
        _, reader, writer = await self.connect(station, "relay")
        transport = BridgeTransport(asyncio.get_running_loop(), reader, writer,
                                    timeout=self.timeout)
        try:
            await asyncio.to_thread(self._send_relay, link, transport, relay_id, msg)
        finally:
            await _close(writer)
        with KeyStore(self.store_path, party=self.party, create=False) as store:
            store.outbox_done(relay_id, station)
        return {"station": station, "relay_id": relay_id}

    def _send_relay(self, link: str, transport, relay_id: str, msg: bytes) -> None:
        with KeyStore(self.store_path, party=self.party, create=False) as store:
            channel = AuthenticatedChannel(store.auth_key(link), transport,
                                           max_failures=self.config.auth_max_failures)
            channel.open()
            channel.send(RELAY_MESSAGE, msg)
            if channel.expect(RELAY_ACCEPTED) != relay_id.encode():
                raise ProtocolAbort("the station confirmed another relay")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
