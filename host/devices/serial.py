"""The ``serial:PORT`` device backend: a board's UART (or a co-simulation on a pseudo-terminal).

:class:`SerialTransport` opens the port with pyserial (8N1, raw) and carries the link
protocol's bytes; the drivers are the same as on the ``model`` and ``rtl`` backends.
:func:`serve_pty` puts a role top's co-simulation behind a pseudo-terminal, so that this very
backend is tested without a board (``python -m mozi.host.devices.serial --role receiver``
prints the terminal's path and serves it until interrupted).
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import threading
import tty

from mozi.firmware import protocol as proto
from mozi.host.devices.device import DeviceError, DeviceUnavailable, Transport

__all__ = ["DEFAULT_BAUD", "PtyServer", "SerialTransport"]

#: The rate the boards' UARTs run at after configuration.
DEFAULT_BAUD = proto.LINK_BAUD


class SerialTransport(Transport):
    """A serial port as a transport.

    Parameters
    ----------
    port : str
        Device path (``/dev/ttyUSB1``, a pseudo-terminal …).
    baudrate : int
    read_timeout : float
        Seconds :meth:`read` waits for the first byte.
    response_timeout : float
        Seconds without a byte after which a driver sends its request again.
    """

    def __init__(self, port: str, *, baudrate: int = DEFAULT_BAUD, read_timeout: float = 0.02,
                 response_timeout: float = 5.0):
        import serial
        try:
            self._port = serial.Serial(port, baudrate=baudrate, bytesize=8, parity="N",
                                       stopbits=1, timeout=read_timeout, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceUnavailable(f"device 'serial:{port}': {exc}") from None
        self.port = port
        self.idle_reads = max(1, round(response_timeout / read_timeout))

    def write(self, data: bytes) -> None:
        """Send bytes to the board."""
        if self.closed:
            raise DeviceError("the serial device is closed")
        import serial
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"serial:{self.port}: {exc}") from None

    def read(self) -> bytes:
        """Bytes received, waiting up to the read timeout for the first."""
        if self.closed:
            raise DeviceError("the serial device is closed")
        import serial
        try:
            data = self._port.read(1)
            if data and self._port.in_waiting:
                data += self._port.read(self._port.in_waiting)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"serial:{self.port}: {exc}") from None
        return data

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._port.close()


class PtyServer:
    """A role top's co-simulation served on a pseudo-terminal (a stand-in for a board).

    Parameters
    ----------
    role : {"receiver", "transmitter"}

    Attributes
    ----------
    path : str
        The terminal to open with :class:`SerialTransport`.
    """

    def __init__(self, role: str = "receiver"):
        from mozi.host.devices.rtl import RtlTransport
        self._sim = RtlTransport(role=role, read_timeout=0.01)
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        # bytes move as soon as either end has some; the timeout only bounds how long a
        # close() waits for the thread
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master, self._sim], [], [], 0.1)
            if self._master in ready:
                try:
                    data = os.read(self._master, 1 << 16)
                except OSError:
                    break
                if data:
                    self._sim.write(data)
            if self._sim in ready:
                out = memoryview(self._sim.read())
                while out:                          # a terminal may take part of a write
                    out = out[os.write(self._master, out):]

    def close(self) -> None:
        """Stop serving and end the simulation."""
        self._stop.set()
        self._thread.join()
        os.close(self._master)
        os.close(self._slave)
        self._sim.close()

    def __enter__(self) -> PtyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mozi.host.devices.serial",
                                     description="serve a role top's co-simulation on a pty")
    parser.add_argument("--role", choices=("receiver", "transmitter"), default="receiver")
    args = parser.parse_args(argv)
    with PtyServer(args.role) as server:
        print(server.path, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
