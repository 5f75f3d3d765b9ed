"""Helpers for tests that run real node processes on loopback: passes on disk, station
processes, the satellite's command, and a man in the middle on a node connection."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

from mozi.host.crypto.auth import frame_kind
from mozi.host.keys.keystore import KeyStore, init_link
from mozi.sim import link, passes
from mozi.sim.tagfile import write_tags

#: Each station's pass slices: (simulation seed, start s); 30 s give a positive key.
SLICES = {"moscow": ((7, 120.0), (17, 150.0)), "urumqi": ((8, 125.0), (18, 155.0))}
SLICE_S = 30.0
NODE_TIMEOUT_S = 120


def write_passes(folder: Path) -> dict[str, list[tuple[Path, Path]]]:
    """Simulate every slice once: ``{station: [(tags, alice), …]}``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for station, slices in SLICES.items():
        out[station] = []
        for i, (seed, t0) in enumerate(slices):
            r = link.simulate_pass(passes.micius2017(), seed=seed, t_start=t0,
                                   t_stop=t0 + SLICE_S)
            meta = r.metadata()
            meta.pop("seed")
            tags, alice = folder / f"{station}-{i}.tags", folder / f"alice-{station}-{i}.json"
            write_tags(tags, r.tags_ps, r.channels, metadata=meta)
            link.write_alice(alice, r)
            out[station].append((tags, alice))
    return out


def make_stores(folder: Path, stations=("moscow", "urumqi")) -> dict[str, Path]:
    """The satellite's and the stations' stores, one authentication key per station link."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.db" for name in ("satellite", *stations)}
    with KeyStore(paths["satellite"], party="satellite") as sat:
        for st in stations:
            with KeyStore(paths[st], party=st) as store:
                init_link(f"sat-{st}", sat, store)
    return paths


def _cli() -> list[str]:
    return [sys.executable, "-m", "mozi.host.cli", "node"]


def _env(crash: str | None) -> dict:
    env = dict(os.environ)
    env.pop("MOZI_CRASH_AT", None)
    if crash:
        env["MOZI_CRASH_AT"] = crash
    return env


class StationProcess:
    """``mozi node station`` in a subprocess on a free loopback port."""

    def __init__(self, name: str, store: Path, tags: list[Path], *, crash: str | None = None,
                 timeout: float = 30.0, port: int = 0, extra: tuple[str, ...] = ()):
        args = [*_cli(), "station", "--name", name, "--store", str(store), "--listen",
                f"127.0.0.1:{port}", "--timeout", str(timeout), *extra]
        for t in tags:
            args += ["--tags", str(t)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env(crash))
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"station {name} did not start: {self.proc.stderr.read()}")
        self.port = json.loads(first)["port"]
        self.name = name
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    @property
    def address(self) -> str:
        return f"{self.name}=127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(30)
        self._reader.join(10)
        return rc

    def __enter__(self) -> StationProcess:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def satellite_command(store: Path, stations: list[str], passes_: list[tuple[str, Path]], *,
                      relay: tuple[str, str] | None = None, timeout: float = 30.0,
                      extra: tuple[str, ...] = ()) -> list[str]:
    """The ``mozi node satellite`` command line."""
    args = [*_cli(), "satellite", "--store", str(store), "--timeout", str(timeout),
            "--connect-for", "20", *extra]
    for st in stations:
        args += ["--station", st]
    for name, alice in passes_:
        args += ["--pass", f"{name}={alice}"]
    if relay:
        args += ["--relay", ",".join(relay)]
    return args


def run_satellite(store: Path, stations: list[str], passes_: list[tuple[str, Path]], *,
                  relay: tuple[str, str] | None = None, crash: str | None = None,
                  timeout: float = 30.0, extra: tuple[str, ...] = ()
                  ) -> subprocess.CompletedProcess:
    """``mozi node satellite`` to completion (or to its crash point)."""
    return subprocess.run(satellite_command(store, stations, passes_, relay=relay,
                                            timeout=timeout, extra=extra),
                          capture_output=True, text=True, env=_env(crash),
                          timeout=NODE_TIMEOUT_S)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode in (0, 3), proc.stderr
    return json.loads(proc.stdout)


_LEN = struct.Struct(">I")


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Proxy:
    """A man in the middle on one node connection at a time: forwards frames, each through
    ``mutate(direction, index, frame) -> frames`` (``direction`` "to-station" or
    "to-satellite", ``index`` counting that direction's frames from 0, the hello included)."""

    def __init__(self, target_port: int, mutate):
        self.target = ("127.0.0.1", target_port)
        self.mutate = mutate
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.frames: dict[str, list[bytes]] = {"to-station": [], "to-satellite": []}
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def address(self, name: str) -> str:
        return f"{name}=127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            pumps = [threading.Thread(target=self._pump, args=(a, b, d), daemon=True)
                     for a, b, d in ((client, upstream, "to-station"),
                                     (upstream, client, "to-satellite"))]
            for p in pumps:
                p.start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        index = 0
        try:
            while True:
                head = _read_exactly(src, _LEN.size)
                if head is None:
                    break
                frame = _read_exactly(src, _LEN.unpack(head)[0])
                if frame is None:
                    break
                self.frames[direction].append(frame)
                for f in self.mutate(direction, index, frame):
                    dst.sendall(_LEN.pack(len(f)) + f)
                index += 1
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


def kind(frame: bytes) -> bytes:
    """The message kind of an authenticated frame (b"" for a public frame or the hello)."""
    k = frame_kind(frame)
    return b"" if k == "public" else k.encode()


def key_rows(store_path: Path, link_name: str) -> list[tuple]:
    """(key ID, sender, size, state, bits) of every block of a link, in ID order."""
    with KeyStore(store_path, create=False) as store:
        rows = []
        for r in sorted(store.list(link_name), key=lambda r: r.key_id):
            bits = store.get(r.key_id).bits
            rows.append((r.key_id, r.sender, r.n_bits, r.state,
                         None if bits is None else bits.tobytes()))
        return rows
