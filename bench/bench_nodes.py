"""Networked nodes and key delivery on loopback: authentication overhead per session, and
ETSI GS QKD 014 requests/s and latency with 10 concurrent SAEs.

* ``sessions``: the satellite and one station as real ``mozi node`` processes, one session per
  slice of the Micius 2017 pass (30 s and 120 s): key bits the Wegman–Carter channel consumed
  (and the session replenished from its own key) against the key produced, frames and public
  (Cascade) bytes on the wire, wall time.
* ``kms``: two ``mozi kms serve`` processes on stores sharing 4 Mbit; 10 SAE threads, each
  with its own mutual-TLS connection, call ``enc_keys`` (one 256-bit key per call) at Moscow,
  then 10 call ``dec_keys`` for those keys at Urumqi, then ``status``: requests/s, p50 and p99
  latency per call (connections set up first; their first requests, handshakes included,
  reported apart); every key must be distinct, handed out once and equal at both ends.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from mozi.host.keys.keystore import KeyStore, init_link, key_layout, new_key_ids
from mozi.host.kms.certs import init_pki
from mozi.host.kms.client import KmeClient
from mozi.sim import link, passes
from mozi.sim.tagfile import write_tags

TITLE = "Nodes and KMS on loopback: authentication overhead, ETSI 014 requests/s and p99"

SLICES_S = (30.0, 120.0)
SAES = 10
CALLS_PER_SAE = 60


def _mozi(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mozi.host.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _port(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(proc.stderr.read())
    return json.loads(line)["port"]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def _session(folder: Path, seconds: float) -> dict:
    r = link.simulate_pass(passes.micius2017(), seed=2017, t_start=100.0,
                           t_stop=100.0 + seconds)
    meta = r.metadata()
    meta.pop("seed")
    tags, alice = folder / "moscow.tags", folder / "alice.json"
    write_tags(tags, r.tags_ps, r.channels, metadata=meta)
    link.write_alice(alice, r)
    with KeyStore(folder / "sat.db", party="satellite") as a, \
            KeyStore(folder / "moscow.db", party="moscow") as b:
        init_link("sat-moscow", a, b)
    station = _mozi("node", "station", "--name", "moscow", "--store", str(folder / "moscow.db"),
                    "--tags", str(tags))
    port = _port(station)
    t0 = time.perf_counter()
    sat = subprocess.run([sys.executable, "-m", "mozi.host.cli", "node", "satellite",
                          "--store", str(folder / "sat.db"), "--station",
                          f"moscow=127.0.0.1:{port}", "--pass", f"moscow={alice}"],
                         capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    _stop(station)
    event = json.loads([ln for ln in station.stdout.read().splitlines() if ln][-1])
    s = json.loads(sat.stdout)["sessions"][0]
    key = s["final_key_bits"]
    return {"slice_s": seconds, "final_key_bits": key,
            "auth_bits_consumed": s["auth_bits_consumed"],
            "auth_bits_replenished": s["auth_bits_replenished"],
            "auth_overhead": round(s["auth_bits_consumed"] / key, 4) if key else None,
            "frames_station_sent": event["frames_sent"],
            "frames_station_received": event["frames_received"],
            "wall_s": round(wall, 2), "aborted": s["aborted"]}


def _percentiles(lat: list[float]) -> dict:
    a = np.sort(np.asarray(lat)) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2)}


def _load(call, n_threads: int, jobs: list) -> tuple[list, list[float], float]:
    """Run ``call(client_index, job)`` for every job on ``n_threads`` threads."""
    lat: list[float] = []
    lock = threading.Lock()
    out = []

    def worker(i, chunk):
        got = []
        for job in chunk:
            t = time.perf_counter()
            got.append(call(i, job))
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
        return got

    chunks = [jobs[i::n_threads] for i in range(n_threads)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        for got in pool.map(worker, range(n_threads), chunks):
            out += got
    return out, lat, time.perf_counter() - t0


def _kms(folder: Path) -> dict:
    pki = init_pki(folder / "certs")
    bits = np.frombuffer(np.random.default_rng(14).bytes(1 << 19), np.uint8)
    key = np.unpackbits(bits)                                     # 4 Mbit
    with KeyStore(folder / "moscow.db", party="moscow") as a, \
            KeyStore(folder / "urumqi.db", party="urumqi") as b:
        layout = key_layout(key.size, ("moscow", "urumqi"))
        ids = new_key_ids(len(layout))
        a.add_key("moscow-urumqi", key, peer="urumqi", layout=layout, key_ids=ids)
        b.add_key("moscow-urumqi", key, peer="moscow", layout=layout, key_ids=ids)
    kmes = {p: _mozi("kms", "serve", "--store", str(folder / f"{p}.db"), "--certs",
                     str(pki.root)) for p in ("moscow", "urumqi")}
    try:
        urls = {p: f"https://127.0.0.1:{_port(k)}" for p, k in kmes.items()}
        masters = [KmeClient(urls["moscow"], pki, "sae-moscow") for _ in range(SAES)]
        slaves = [KmeClient(urls["urumqi"], pki, "sae-urumqi") for _ in range(SAES)]
        # connections set up (TLS handshakes) before the clock runs
        _, hs_lat, _ = _load(lambda i, _: (masters[i].status("sae-urumqi"),
                                           slaves[i].status("sae-moscow")), SAES,
                             list(range(SAES)))
        sent, enc_lat, enc_s = _load(lambda i, _: masters[i].enc_keys("sae-urumqi")[0], SAES,
                                     list(range(SAES * CALLS_PER_SAE)))
        got, dec_lat, dec_s = _load(lambda i, k: slaves[i].dec_keys("sae-moscow", [k[0]])[0],
                                    SAES, sent)
        _, st_lat, st_s = _load(lambda i, _: masters[i].status("sae-urumqi"), SAES,
                                list(range(SAES * CALLS_PER_SAE)))
        for c in masters + slaves:
            c.close()
    finally:
        for k in kmes.values():
            _stop(k)
    n = len(sent)
    distinct = len({k for k, _ in sent}) == n and len({v for _, v in sent}) == n
    return {
        "saes": SAES, "requests_per_call": n,
        "first_request_with_handshakes": _percentiles(hs_lat),
        "enc_keys": {"requests_per_s": round(n / enc_s, 1), **_percentiles(enc_lat)},
        "dec_keys": {"requests_per_s": round(n / dec_s, 1), **_percentiles(dec_lat)},
        "status": {"requests_per_s": round(n / st_s, 1), **_percentiles(st_lat)},
        "keys_distinct": distinct, "keys_equal_at_both_ends": dict(sent) == dict(got),
    }


def run() -> dict:
    with tempfile.TemporaryDirectory() as d:
        sessions = []
        for i, seconds in enumerate(SLICES_S):
            folder = Path(d) / f"s{i}"
            folder.mkdir()
            sessions.append(_session(folder, seconds))
        (Path(d) / "kms").mkdir()
        kms = _kms(Path(d) / "kms")
    return {"sessions": sessions, "kms": kms}
