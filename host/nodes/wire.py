"""The nodes' wire: length-prefixed frames over TCP, a versioned hello, and the bridge that
lets a session half (blocking code in a worker thread) use an asyncio connection.

Framing
-------
Every frame on a node connection is ``length (u32, big-endian) | bytes``, at most
:data:`MAX_FRAME` bytes. The first frame each way is the *hello*, a JSON object::

    {"protocol": "mozi-node", "version": 1, "party": "satellite", "link": "sat-moscow",
     "purpose": "session" | "relay"}

It only routes the connection (which link, what for); it is not authenticated, and nothing in
it is trusted: the frames after it are those of the link's
:class:`~mozi.host.crypto.auth.AuthenticatedChannel`, whose first authenticated message says
what the session is (``pass-start``, ``relay``), and a hello that lies only makes that message
fail. A peer of another protocol version is refused with one line.
"""

from __future__ import annotations

import asyncio
import json
import struct

from mozi.host.crash import crashpoint
from mozi.host.crypto.auth import ChannelEmpty, frame_kind
from mozi.host.errors import ProtocolAbort
from mozi.host.keys.keystore import check_name
from mozi.sim.errors import MoziError

__all__ = [
    "MAX_FRAME",
    "NODE_PROTOCOL",
    "NODE_VERSION",
    "PURPOSES",
    "BridgeTransport",
    "NodeError",
    "encode_hello",
    "parse_hello",
    "read_frame",
    "write_frame",
]

NODE_PROTOCOL = "mozi-node"
NODE_VERSION = 1
#: Largest frame accepted: a sifting report of a whole pass fits many times over.
MAX_FRAME = 1 << 28
#: What a connection is for.
PURPOSES = ("session", "relay")

_LEN = struct.Struct(">I")


class NodeError(MoziError):
    """A node could not talk to its peer (refused, wrong protocol, unknown link)."""


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame; :class:`asyncio.IncompleteReadError` at the end of the stream."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if n > MAX_FRAME:
        raise NodeError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    return await reader.readexactly(n)


async def write_frame(writer: asyncio.StreamWriter, frame: bytes) -> None:
    if len(frame) > MAX_FRAME:
        raise NodeError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME}-byte limit")
    writer.write(_LEN.pack(len(frame)) + bytes(frame))
    await writer.drain()


def encode_hello(party: str, link: str, purpose: str) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    return json.dumps({"protocol": NODE_PROTOCOL, "version": NODE_VERSION, "party": party,
                       "link": link, "purpose": purpose}, sort_keys=True).encode()


def parse_hello(frame: bytes) -> dict:
    """The peer's hello, checked; :class:`NodeError` for anything else."""
    try:
        doc = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NodeError("the peer's first frame is not a mozi-node hello") from None
    if not isinstance(doc, dict) or doc.get("protocol") != NODE_PROTOCOL:
        raise NodeError("the peer's first frame is not a mozi-node hello")
    if doc.get("version") != NODE_VERSION:
        raise NodeError(f"the peer speaks mozi-node version {doc.get('version')!r}, this node "
                        f"version {NODE_VERSION}")
    if doc.get("purpose") not in PURPOSES:
        raise NodeError(f"unknown connection purpose {doc.get('purpose')!r}")
    try:
        check_name("party", doc.get("party"))
        check_name("link", doc.get("link"))
    except MoziError as exc:
        raise NodeError(f"bad hello: {exc}") from None
    return doc


class BridgeTransport:
    """A frame transport for blocking code in a worker thread over an asyncio connection.

    ``send`` and ``recv`` hand the I/O to the event loop and wait for it; a peer that stays
    silent for ``timeout`` seconds, or a connection that closes, is
    :class:`~mozi.host.crypto.auth.ChannelEmpty` (the session aborts, or — for a key that
    is staged already — waits for the next session to settle it). Every frame passes
    :func:`~mozi.host.crash.crashpoint` ``("send")`` and ``("send:KIND")`` before it leaves
    and ``("recv")`` and ``("recv:KIND")`` after it arrives (``KIND`` as :func:`~mozi.host.
    crypto.auth.frame_kind` reads it: ``recv:key-ids``, ``send:public``, …).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, timeout: float):
        self._loop = loop
        self._reader = reader
        self._writer = writer
        self.timeout = float(timeout)
        self.frames_sent = 0
        self.frames_received = 0

    def send(self, frame: bytes) -> None:
        crashpoint("send")
        crashpoint(f"send:{frame_kind(frame)}")
        fut = asyncio.run_coroutine_threadsafe(write_frame(self._writer, frame), self._loop)
        try:
            fut.result(self.timeout)
        except (ConnectionError, TimeoutError, OSError) as exc:
            fut.cancel()
            raise ChannelEmpty(f"the connection to the peer failed ({exc or 'timeout'})") \
                from None
        self.frames_sent += 1

    def recv(self) -> bytes:
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(read_frame(self._reader), self.timeout), self._loop)
        try:
            frame = fut.result()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, OSError):
            raise ChannelEmpty("no message from the peer (connection closed or silent)") \
                from None
        except NodeError as exc:
            raise ProtocolAbort(str(exc)) from None
        self.frames_received += 1
        crashpoint("recv")
        crashpoint(f"recv:{frame_kind(frame)}")
        return frame
