"""Transports for host-in-the-loop tests: a recorder, and a link that injects faults.

:class:`Recording` keeps every byte written and read, so two backends can be compared byte
for byte. :class:`FaultyLink` sits between a driver and a device and, frame by frame, with
seeded randomness, corrupts a bit, truncates, duplicates, delays (to after the next request,
i.e. reorders) or precedes a request with garbage, and corrupts or truncates responses. What it
did is counted in :attr:`FaultyLink.done`.
"""

from __future__ import annotations

import random

from mozi.firmware import protocol as proto
from mozi.firmware.link import counter_port_name, register_port_name
from mozi.host.devices.device import Transport

FAULTS = ("flip", "truncate", "duplicate", "delay", "garbage", "flip_response",
          "cut_response")


class Recording(Transport):
    """Pass-through that records the byte streams."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self.idle_reads = inner.idle_reads
        self.written = bytearray()
        self.received = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data
        self.inner.write(data)

    def read(self) -> bytes:
        data = self.inner.read()
        self.received += data
        return data

    def close(self) -> None:
        super().close()
        self.inner.close()


class FaultyLink(Transport):
    """Injects one fault into about ``rate`` of the requests (the frame or its response); a
    repeated request (the same bytes: a retry) goes through unharmed.

    Parameters
    ----------
    inner : Transport
    rng : random.Random
    rate : float
    faults : sequence of str
        Kinds to choose from (:data:`FAULTS`).
    """

    def __init__(self, inner: Transport, rng: random.Random, rate: float = 0.1,
                 faults=FAULTS):
        self.inner = inner
        self.idle_reads = inner.idle_reads
        self.rng = rng
        self.rate = rate
        self.faults = tuple(faults)
        self.done = dict.fromkeys(FAULTS, 0)
        self._delayed: bytes | None = None
        self._spoil_response: str | None = None
        self._last_data = b""

    def write(self, data: bytes) -> None:
        rng = self.rng
        if set(data) == set(proto.BREAK_BYTE):  # a break: the driver's recovery, passed as is
            self.inner.write(data)
            return
        out = bytearray()
        # one fault per request: its retries (the same bytes again) go through clean
        retry = data == self._last_data
        self._last_data = bytes(data)
        fault = rng.choice(self.faults) if (rng.random() < self.rate and not retry
                                            and not self._spoil_response) else None
        if fault == "flip":
            b = bytearray(data)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            out += b
        elif fault == "truncate":
            out += data[:rng.randrange(1, len(data))]
        elif fault == "duplicate":
            out += data + data
        elif fault == "delay" and self._delayed is None:
            self._delayed = bytes(data)        # lost now, arrives after the next request
        elif fault == "garbage":
            out += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20))) + data
        elif fault in ("flip_response", "cut_response"):
            self._spoil_response = fault
            out += data
        else:
            fault = None
            out += data
        if self._delayed is not None and fault != "delay":
            out += self._delayed
            self._delayed = None
        if fault:
            self.done[fault] += 1
        self.inner.write(bytes(out))

    def read(self) -> bytes:
        data = self.inner.read()
        if data and self._spoil_response:
            b = bytearray(data)
            if self._spoil_response == "flip_response":
                b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
            else:
                del b[self.rng.randrange(len(b)):]
            self._spoil_response = None
            data = bytes(b)
        return data

    def close(self) -> None:
        super().close()
        self.inner.close()


class Shared(Recording):
    """A recorder whose close() leaves the shared (module-wide) simulation running."""

    def close(self) -> None:
        self.closed = True


def exchange(t: Recording, data: bytes) -> list[proto.Frame]:
    """Write raw bytes through ``t``; collect the frames answered until the device is quiet
    (3 empty reads of the in-process model, 30 read timeouts of a simulation)."""
    from mozi.host.devices.model import ModelTransport
    t.write(data)
    got = bytearray()
    quiet = 0
    while quiet < (3 if isinstance(t.inner, ModelTransport) else 30):
        chunk = t.read()
        quiet = 0 if chunk else quiet + 1
        got += chunk
    return frames(got)


def frames(data: bytes) -> list[proto.Frame]:
    """Every good frame of a byte stream (dropping anything else)."""
    return [f for f in proto.Deframer().feed(bytes(data)) if isinstance(f, proto.Frame)]


def check_register_ports(top, names) -> None:
    """Every register of a role top has the width (and signedness) of its link port — for a
    counter the link keeps, of its counter bank — and of the core port it drives or mirrors
    (:attr:`Register.port`, a path of attributes from the top)."""
    for name in names:
        reg = proto.register(name)
        if name in top.link.counters:
            assert top.link.counter_width == reg.width and not reg.signed, name
            assert hasattr(top.link, counter_port_name(name)), name
        else:
            port = getattr(top.link, register_port_name(name))
            assert len(port) == reg.width, name
            assert port.shape().signed == reg.signed, name
        if reg.port:
            obj = top
            for part in reg.port.split("."):
                obj = getattr(obj, part)
            assert len(obj) == reg.width, f"{name}: {reg.port} is {len(obj)} bits"
