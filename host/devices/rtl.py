"""The ``rtl`` device backend: a role top running under Verilator, reached through its bytes.

:class:`RtlTransport` listens on a Unix socket in a private temporary folder, starts
``python -m mozi.sim.rtl_server`` for the role top (the Verilator build is made once per
design and cached under ``build/rtl/``), and then moves the link protocol's bytes between
the host driver and the running simulation. The same drivers run on it as on the ``model``
backend, byte for byte.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mozi.host.devices.device import DeviceError, DeviceUnavailable, Transport

__all__ = ["RtlTransport"]

#: Seconds to wait for the simulation to start (the first build of a top takes minutes).
START_TIMEOUT = 1800.0


class RtlTransport(Transport):
    """The role top's co-simulation as a transport.

    Parameters
    ----------
    role : {"receiver", "transmitter"}
        Which role top to simulate.
    read_timeout : float
        Seconds :meth:`read` waits for bytes before returning ``b""``.
    response_timeout : float
        Seconds without a byte after which a driver sends its request again.
    """

    def __init__(self, *, role: str = "receiver", read_timeout: float = 0.05,
                 response_timeout: float = 10.0):
        from mozi.sim.rtl_server import ROLES
        if role not in ROLES:
            raise DeviceUnavailable(f"no role top {role!r} for the rtl device "
                                    f"(expected one of {', '.join(ROLES)})")
        self.role = role
        self.read_timeout = read_timeout
        self.idle_reads = max(1, round(response_timeout / read_timeout))
        self._dir = Path(tempfile.mkdtemp(prefix="mozi-rtl-"))
        self.log_path = self._dir / "simulation.log"
        self._stats_path = self._dir / "stats.json"
        #: Figures of the finished simulation (after :meth:`close`): cycles, bytes, wall_s.
        self.stats: dict | None = None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self._dir / "link.sock"))
        listener.listen(1)
        env = dict(os.environ)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mozi.sim.rtl_server", "--role", role,
                 "--socket", str(self._dir / "link.sock"), "--stats", str(self._stats_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                ready, _, _ = select.select([listener], [], [], 0.5)
                if ready:
                    self._sock, _ = listener.accept()
                    break
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    tail = self._log_tail()
                    self._stop()
                    raise DeviceUnavailable(f"the {role} co-simulation did not start: {tail}")
        finally:
            listener.close()

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                     if ln.strip()]
        except OSError:
            return "no log"
        errors = [ln for ln in lines if "rror" in ln]
        return (errors or lines or ["no output"])[-1].strip()[:300]

    def write(self, data: bytes) -> None:
        """Send bytes to the simulated device."""
        if self.closed:
            raise DeviceError("the rtl device is closed")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise DeviceError(f"the {self.role} co-simulation stopped: {exc}; "
                              f"{self._log_tail()}") from None

    def read(self) -> bytes:
        """Bytes the device has sent, waiting up to ``read_timeout`` for the first."""
        if self.closed:
            raise DeviceError("the rtl device is closed")
        ready, _, _ = select.select([self._sock], [], [], self.read_timeout)
        if not ready:
            return b""
        data = self._sock.recv(1 << 20)
        if not data:
            raise DeviceError(f"the {self.role} co-simulation ended: {self._log_tail()}")
        return data

    def fileno(self) -> int:
        """The socket to the simulation (readable when the device has sent bytes)."""
        return self._sock.fileno()

    def _stop(self) -> None:
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        """End the simulation (closing its socket) and collect its figures."""
        if self.closed:
            return
        super().close()
        self._sock.close()
        self._stop()
        try:
            self.stats = json.loads(self._stats_path.read_text())
        except (OSError, ValueError):
            self.stats = None
        shutil.rmtree(self._dir, ignore_errors=True)
