"""The China–Russia experiment replayed in software (``mozi demo``).

Micius (Alice on both links) makes one pass over Zvenigorod near Moscow and one over Nanshan
near Urumqi. Each pass is simulated (:func:`mozi.sim.passes.geometric_pass`,
:func:`mozi.sim.link.simulate_pass`) and post-processed into a finite-key-secure key
(:func:`mozi.host.postprocessing.session.run_session`), stored in the satellite's and the
station's key stores; each link's classical channel is authenticated with a pre-shared key
made for the scenario (:func:`mozi.host.keys.keystore.init_link`, as ``mozi link init`` does).
The satellite
then acts as a trusted relay (:func:`mozi.host.keys.relay.relay_keys`): it sends ``K_SM ⊕ K_SU``
over both authenticated links and Urumqi derives Moscow's key. With that shared key the
stations exchange the two sample images (:mod:`mozi.host.sample_images`,
:mod:`mozi.host.crypto.imagecrypt`): Moscow sends the logo to Urumqi, Urumqi sends the map to
Moscow, each with the relayed blocks only it may send with; the demo checks both arrive bit-exact. A
report (plot, Markdown, HTML) and the JSON document of the run are written to the output
folder.

The demo is a replay: its sessions run in the insecure reproducible mode
(``SessionConfig.insecure_seed``), so the same seed gives the same keys, and every key it
stores is marked ``insecure_reproducible`` — demo keys must not protect real data.

Everything is first written to a hidden work folder inside the output folder and moved into
place only when the run has finished, so an interrupted or failed run leaves no half-written
output (and no key store with half a scenario in it) behind.

Output folder after a run::

    demo.json                  the document `mozi demo --json` prints
    report.md, report.html     summary; report.png: sifted rate, QBER and key along each pass
    satellite.db, moscow.db, urumqi.db   key stores (mozi.host.keys.keystore)
    sat-moscow.alice.json, sat-urumqi.alice.json   Alice's record of each simulated pass
    images/mozi-logo.png …     originals; images/*.mozi ciphertexts; images/decrypted-*
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mozi.host import sample_images
from mozi.host.crypto import imagecrypt
from mozi.host.keys import relay
from mozi.host.keys.keystore import KeyStore, init_link
from mozi.host.postprocessing.session import SessionConfig, run_session
from mozi.host.report import atomic_write, write_report
from mozi.sim import link as simlink
from mozi.sim.errors import MoziError
from mozi.sim.model import CHANNELS
from mozi.sim.passes import STATIONS, geometric_pass
from mozi.sim.tagfile import TagData

__all__ = [
    "DEFAULT_SEED",
    "LINKS",
    "RELAY_LINK",
    "STORE_FILES",
    "DemoConfig",
    "DemoLink",
    "DemoOutputError",
    "json_text",
    "run_demo",
]

DEFAULT_SEED = 20200619
"""Seed of the whole scenario (every pass, session and relay draw derives from it)."""

RELAY_LINK = "moscow-urumqi"
"""Link name of the relayed Moscow–Urumqi key in the two stations' stores."""

STORE_FILES = {"satellite": "satellite.db", "moscow": "moscow.db", "urumqi": "urumqi.db"}
"""Key store file of each party, in the output folder."""

DEMO_JSON = "demo.json"
IMAGES_DIR = "images"


class DemoOutputError(MoziError):
    """The demo's output folder cannot be created or written."""


@dataclass(frozen=True)
class DemoLink:
    """One satellite–station link of the scenario.

    Attributes
    ----------
    link : str
        Link name in the key stores (as :mod:`mozi.host.keys.relay` expects it).
    station : str
        Ground station, a key of :data:`mozi.sim.passes.STATIONS`.
    party : str
        Key store of the station, a key of :data:`STORE_FILES`.
    place : str
        Human-readable place name.
    max_elevation_deg : float
        Culmination elevation of the simulated pass.
    """

    link: str
    station: str
    party: str
    place: str
    max_elevation_deg: float


LINKS = (
    DemoLink("sat-moscow", "zvenigorod", "moscow", "Zvenigorod (Moscow)", 55.0),
    DemoLink("sat-urumqi", "nanshan", "urumqi", "Nanshan (Urumqi)", 70.0),
)
"""The two links of the China–Russia scenario (Moscow first: it is the relay's K_SM)."""


@dataclass(frozen=True)
class DemoConfig:
    """Embedded defaults of the demo.

    Attributes
    ----------
    seed : int
        Scenario seed.
    quick : bool
        Process only a ``quick_window_s`` slice of each pass around its culmination (for tests
        and a first look); the full demo processes whole passes above the elevation mask.
    quick_window_s : float
        Length of that slice.
    elevation_mask_deg : float
        Passes run while the satellite is above this elevation.
    eps_sec, eps_cor, qber_threshold : float
        Security parameters and abort threshold of each session.
    satellite_share : float
        Fraction of each satellite–station key the satellite may send with: all of it, since
        the scenario uses these keys only for the relay, which the satellite initiates.
    relay_first_share : float
        Fraction of the relayed key Moscow may send with (Urumqi has the rest).
    links : tuple of DemoLink
    """

    seed: int = DEFAULT_SEED
    quick: bool = False
    quick_window_s: float = 50.0
    elevation_mask_deg: float = 15.0
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_threshold: float = 0.11
    satellite_share: float = 1.0
    relay_first_share: float = 0.5
    links: tuple[DemoLink, ...] = field(default=LINKS)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"mozi demo: {message}", file=sys.stderr, flush=True)


def _window(profile, config: DemoConfig) -> tuple[float, float]:
    t = profile.times_s
    if not config.quick:
        return float(t[0]), float(t[-1])
    # a slice around the culmination, on whole profile bins (multiples of 10 s of pass time)
    # so that no bin of the rate profile is only partly covered
    peak = float(t[int(np.argmin(profile.distance_km))])
    bin_s = simlink.PROFILE_BIN_S
    start = max(float(t[0]), bin_s * round((peak - config.quick_window_s / 2) / bin_s))
    return start, min(float(t[-1]), start + config.quick_window_s)


def _simulate(index: int, spec: DemoLink, config: DemoConfig, progress: bool):
    """Simulate one link's pass: (seed, profile, t0, t1, simulation, wall seconds)."""
    seed = config.seed * 10 + index + 1
    _log(progress, f"{spec.link}: Micius pass over {spec.place}, "
                   f"culminating at {spec.max_elevation_deg:.0f}°")
    profile = geometric_pass(spec.station, elevation_mask_deg=config.elevation_mask_deg,
                             max_elevation_deg=spec.max_elevation_deg)
    t0, t1 = _window(profile, config)
    t_sim = time.perf_counter()
    sim = simlink.simulate_pass(profile, seed=seed, t_start=t0, t_stop=t1, progress=progress)
    return seed, profile, t0, t1, sim, time.perf_counter() - t_sim


def _link_doc(doc: dict, spec: DemoLink, seed: int, profile, t0: float, t1: float, sim,
              wall: dict, progress: bool) -> dict[str, Any]:
    """A session's document with the pass and simulation figures of its link."""
    if doc.get("aborted"):
        _log(progress, f"{spec.link}: session ABORTED ({doc.get('abort_reason')})")
    else:
        _log(progress, f"{spec.link}: {doc.get('final_key_bits', 0):,} secret key bits")
    k = int(np.argmin(profile.distance_km))
    doc.update({
        "link": spec.link,
        "station": spec.station,
        "place": spec.place,
        "pass": {
            "t_start_s": round(t0, 3),
            "t_stop_s": round(t1, 3),
            "duration_s": round(t1 - t0, 3),
            "full_pass_s": round(profile.duration_s, 3),
            "max_elevation_deg": spec.max_elevation_deg,
            "min_distance_km": round(float(profile.distance_km[k]), 1),
            "loss_db_range": [round(float(profile.loss_db.min()), 2),
                              round(float(profile.loss_db.max()), 2)],
            "latitude_deg": STATIONS[spec.station].latitude_deg,
            "longitude_deg": STATIONS[spec.station].longitude_deg,
        },
        "simulation": {"seed": seed, "totals": sim.totals, "profile": sim.profile},
        "wall_time_s": {k: round(v, 3) for k, v in wall.items()},
    })
    if not doc.get("profile"):
        doc["profile"] = [{"t_s": p["t_s"], "sifted_kbps": p["sifted_kbps"], "qber": p["qber"]}
                          for p in sim.profile]
    return doc


def _run_link(index: int, spec: DemoLink, config: DemoConfig, work: Path,
              stores: dict[str, KeyStore], progress: bool) -> dict[str, Any]:
    seed, profile, t0, t1, sim, t_sim = _simulate(index, spec, config, progress)
    alice_path = work / f"{spec.link}.alice.json"
    simlink.write_alice(alice_path, sim)
    alice = simlink.read_alice(alice_path)
    tags = TagData(timestamps_ps=sim.tags_ps, channels=sim.channels, resolution_ps=1,
                   channel_names=tuple(CHANNELS), metadata=sim.metadata())

    _log(progress, f"{spec.link}: {len(tags):,} detections in {t1 - t0:.0f} s; "
                   f"post-processing")
    session_cfg = SessionConfig(eps_sec=config.eps_sec, eps_cor=config.eps_cor,
                                qber_threshold=config.qber_threshold, insecure_seed=seed,
                                alice_share=config.satellite_share)
    t_post = time.perf_counter()
    result = run_session(tags, alice, link=spec.link, store_alice=stores["satellite"],
                         store_bob=stores[spec.party], config=session_cfg, progress=progress)
    t_post = time.perf_counter() - t_post
    return _link_doc(result.to_json(), spec, seed, profile, t0, t1, sim,
                     {"simulate": t_sim, "post_process": t_post}, progress)


#: Who sends which sample image: (image, sending party, receiving party).
IMAGE_ROUTES = (("mozi-logo.png", "moscow", "urumqi"), ("mozi-map.png", "urumqi", "moscow"))


def _exchange_images(work: Path, encrypt, decrypt, progress: bool) -> list[dict[str, Any]]:
    """Send each image of :data:`IMAGE_ROUTES`: ``encrypt(src, cipher, sender, receiver)``,
    ``decrypt(cipher, plain, receiver)`` (both return a CryptResult)."""
    folder = work / IMAGES_DIR
    originals = {p.name: p for p in sample_images.write_samples(folder)}
    images = []
    for name, sender, receiver in IMAGE_ROUTES:
        src = originals[name]
        cipher = folder / f"{src.name}.mozi"
        plain = folder / f"decrypted-{src.name}"
        entry: dict[str, Any] = {"name": src.name, "bytes": src.stat().st_size,
                                 "from": sender, "to": receiver}
        try:
            # auto: the one-time pad when the sender's share of the relayed key suffices
            enc = encrypt(src, cipher, sender, receiver)
            dec = decrypt(cipher, plain, receiver)
        except MoziError as exc:
            entry.update({"mode": None, "decrypted_identical": False, "error": str(exc)})
            _log(progress, f"{src.name}: FAILED: {exc}")
        else:
            same = plain.read_bytes() == src.read_bytes()
            entry.update({
                "mode": enc.mode,
                "decrypted_identical": bool(same and dec.mode == enc.mode),
                "ciphertext_bytes": enc.ciphertext_bytes,
                "key_bits_used": enc.key_bits_used,
                "key_bits_consumed": enc.key_bits_consumed,
                "key_ids": list(enc.key_ids),
            })
            _log(progress, f"{src.name}: {entry['bytes']:,} bytes, {enc.mode}, encrypted at "
                           f"{sender.capitalize()}, decrypted at {receiver.capitalize()}: "
                           f"{'identical' if entry['decrypted_identical'] else 'DIFFERENT'}")
        images.append(entry)
    images.sort(key=lambda e: e["bytes"])
    return images


def _move_into_place(work: Path, out: Path) -> None:
    for src in sorted(work.rglob("*")):
        if src.is_dir():
            continue
        dst = out / src.relative_to(work)
        dst.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):     # a replaced store's stale journal must go too
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{dst}{suffix}")
        os.replace(src, dst)


def run_demo(out_dir: str | os.PathLike[str], config: DemoConfig | None = None, *,
             progress: bool = True,
             on_link: Callable[[dict[str, Any]], None] | None = None,
             on_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the whole China–Russia scenario and write its outputs into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created if missing). Files of an earlier demo run there are replaced,
        other files are left alone.
    config : DemoConfig, optional
        Defaults to the embedded scenario (:class:`DemoConfig()`).
    progress : bool
        Progress bars and one-line status messages on stderr.
    on_link : callable, optional
        Called with each link's document as soon as its session has finished.
    on_start : callable, optional
        Called once the output folder is ready, before the first pass is simulated.

    Returns
    -------
    dict
        The JSON-ready demo document: ``links`` (per link ``link``, ``sifted_bits``,
        ``qber_z``, ``qber_x``, ``final_key_bits``, ``ec_efficiency``, ``aborted`` and the rest
        of the session result, plus the pass and simulation figures), ``relay_key_bits``,
        ``images`` (``name``, ``bytes``, ``mode``, ``decrypted_identical``, …), ``ok`` (a key
        on both links and every image bit-exact), ``outputs`` and ``wall_time_s``.

    Raises
    ------
    DemoOutputError
        The output folder cannot be created or written.
    """
    config = config or DemoConfig()
    started = time.perf_counter()
    out, work = _work_folder(out_dir)
    if on_start is not None:
        on_start()

    try:
        stores: dict[str, KeyStore] = {}
        try:
            for party, name in STORE_FILES.items():
                stores[party] = KeyStore(work / name, party=party)
            for spec in config.links:        # the scenario's pre-shared authentication keys
                init_link(spec.link, stores["satellite"], stores[spec.party])
            links = []
            for i, spec in enumerate(config.links):
                links.append(_run_link(i, spec, config, work, stores, progress))
                if on_link is not None:
                    on_link(links[-1])

            relay_bits, relay_ids, images = 0, [], []
            if all(not d.get("aborted") and d.get("final_key_bits", 0) > 0 for d in links):
                ann = relay.relay_keys(stores["satellite"], stores["moscow"], stores["urumqi"],
                                       link_sm=config.links[0].link,
                                       link_su=config.links[1].link, relay_link=RELAY_LINK,
                                       first_share=config.relay_first_share)
                relay_bits, relay_ids = ann.n_bits, list(ann.key_ids)
                _log(progress, f"relay: satellite sent K_SM ⊕ K_SU over both authenticated "
                               f"links; Moscow and Urumqi share {relay_bits:,} bits")
                images = _exchange_images(
                    work, lambda src, dst, sender, _: imagecrypt.encrypt_file(
                        src, dst, stores[sender], link=RELAY_LINK, mode="auto"),
                    lambda src, dst, receiver: imagecrypt.decrypt_file(
                        src, dst, stores[receiver]), progress)
            else:
                _log(progress, "relay skipped: a link produced no key")
            status = {party: store.status() for party, store in stores.items()}
        finally:
            for store in stores.values():
                store.close()

        doc = _document(config, links, relay_bits, relay_ids, images, status)
        _finish(work, out, doc, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _log(progress, f"done in {doc['wall_time_s']:.0f} s; report in {out / 'report.html'}")
    return doc


def _document(config: DemoConfig, links, relay_bits: int, relay_ids, images, status, *,
              network: dict | None = None) -> dict[str, Any]:
    """The demo's JSON document."""
    ok = bool(images) and all(im["decrypted_identical"] for im in images)
    doc: dict[str, Any] = {
        "title": "Mozi demo — Micius China–Russia relay, replayed in software",
        "description": (
            "Micius (Alice) shares a finite-key-secure key with Zvenigorod near Moscow "
            "and with Nanshan near Urumqi, one simulated pass each; as trusted relay it "
            "announces K_SM ⊕ K_SU so Urumqi obtains Moscow's key; Moscow sends one image "
            "to Urumqi and Urumqi one to Moscow, each encrypted with relayed key only it "
            "may send with."
            + (" Quick run: only a slice of each pass around its culmination."
               if config.quick else "")),
        "quick": config.quick,
        "seed": config.seed,
        "insecure_reproducible": True,
        "qber_threshold": config.qber_threshold,
        "settings": {k: v for k, v in asdict(config).items() if k != "links"},
        "links": links,
        "relay_link": RELAY_LINK,
        "relay_key_bits": int(relay_bits),
        "relay_key_ids": relay_ids,
        "images": images,
        "key_stores": {party: {"file": STORE_FILES[party], "status": status[party]}
                       for party in STORE_FILES},
        "ok": ok,
    }
    if network is not None:
        doc["insecure_reproducible"] = False
        doc["network"] = network
        doc["description"] += (" Over the network: the satellite and the stations ran as "
                               "separate node processes on loopback, and the images moved "
                               "through the stations' ETSI GS QKD 014 KMEs.")
    return doc


def _work_folder(out_dir) -> tuple[Path, Path]:
    """The output folder and a fresh hidden work folder inside it."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return out, Path(tempfile.mkdtemp(prefix=".demo-", dir=out))
    except OSError as exc:
        raise DemoOutputError(f"cannot use output folder {out}: {exc.strerror or exc}") from None


def _finish(work: Path, out: Path, doc: dict, started: float) -> None:
    """Write the report and ``demo.json`` in ``work``, then move everything into ``out``."""
    doc["wall_time_s"] = round(time.perf_counter() - started, 3)
    outputs = write_report(work, doc)
    doc["outputs"] = {kind: p.name for kind, p in outputs.items()}
    doc["outputs"]["json"] = DEMO_JSON
    doc["wall_time_s"] = round(time.perf_counter() - started, 3)
    atomic_write(work / DEMO_JSON, json_text(doc))
    try:
        _move_into_place(work, out)
    except OSError as exc:
        raise DemoOutputError(f"cannot write into {out}: {exc.strerror or exc}") from None


def json_text(doc: Any) -> str:
    """The demo document as indented JSON text (numpy scalars and arrays converted)."""
    return json.dumps(doc, indent=2, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not math.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# -- the same scenario over the network ------------------------------------------------------

#: Seconds any node or KME of ``mozi demo --network`` may take to answer.
NETWORK_TIMEOUT_S = 600.0


class _Process:
    """A ``mozi`` subprocess whose first stdout line is a JSON ``listening`` event."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "mozi.host.cli", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        if not first:
            err = self.proc.stderr.read().strip().splitlines()
            self.proc.wait(30)
            raise MoziError(f"mozi {args[0]} {args[1]} did not start: "
                            f"{err[-1] if err else 'no output'}")
        self.port = int(json.loads(first)["port"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def run_network_demo(out_dir: str | os.PathLike[str], config: DemoConfig | None = None, *,
                     progress: bool = True) -> dict[str, Any]:
    """The scenario of :func:`run_demo` with real nodes and KMEs on loopback.

    The two stations run as ``mozi node station`` processes with their own detections only
    (tag files without the simulation seed), the satellite as ``mozi node satellite`` with
    Alice's records, each with its own key store, sharing nothing but messages; the relay goes
    over the network; then each station runs a KME (``mozi kms serve``, certificates from
    ``mozi kms init``) and the images go from SAE to SAE with keys from ``enc_keys`` and
    ``dec_keys``. The sessions use the CSPRNG, so the keys are not reproducible. Output as
    :func:`run_demo`, plus ``kms/`` (the certificates) and the tag files.
    """
    from mozi.host.kms.certs import DEFAULT_SAES, init_pki
    from mozi.host.kms.client import KmeClient
    from mozi.sim.tagfile import write_tags

    config = config or DemoConfig()
    started = time.perf_counter()
    out, work = _work_folder(out_dir)
    procs: list[_Process] = []
    try:
        with contextlib.ExitStack() as opened:
            stores = {party: opened.enter_context(KeyStore(work / name, party=party))
                      for party, name in STORE_FILES.items()}
            for spec in config.links:
                init_link(spec.link, stores["satellite"], stores[spec.party])
        sims, passes = [], []
        for i, spec in enumerate(config.links):
            seed, profile, t0, t1, sim, t_sim = _simulate(i, spec, config, progress)
            alice_path = work / f"{spec.link}.alice.json"
            simlink.write_alice(alice_path, sim)
            meta = sim.metadata()
            meta.pop("seed", None)                 # the station must not learn Alice's draws
            write_tags(work / f"{spec.party}.tags", sim.tags_ps, sim.channels, metadata=meta)
            sims.append((seed, profile, t0, t1, sim, t_sim))
            passes += ["--pass", f"{spec.party}={alice_path}"]
        share = ["--alice-share", str(config.satellite_share),
                 "--timeout", str(NETWORK_TIMEOUT_S)]
        stations = {}
        for spec in config.links:
            stations[spec.party] = _Process(
                "node", "station", "--name", spec.party, "--store",
                str(work / STORE_FILES[spec.party]), "--tags", str(work / f"{spec.party}.tags"),
                *share)
            procs.append(stations[spec.party])
        _log(progress, "nodes: " + ", ".join(f"{n} on 127.0.0.1:{p.port}"
                                             for n, p in stations.items()))
        t_post = time.perf_counter()
        sat = subprocess.run(
            [sys.executable, "-m", "mozi.host.cli", "node", "satellite", "--store",
             str(work / STORE_FILES["satellite"]), *passes, *share,
             "--relay", ",".join(spec.party for spec in config.links[:2]),
             *(x for n, p in stations.items() for x in ("--station", f"{n}=127.0.0.1:{p.port}"))],
            capture_output=True, text=True, timeout=2 * NETWORK_TIMEOUT_S)
        t_post = time.perf_counter() - t_post
        for p in procs:
            p.stop()
        procs.clear()
        if sat.returncode not in (0, 3):
            err = sat.stderr.strip().splitlines()
            raise MoziError(f"mozi node satellite failed: {err[-1] if err else sat.returncode}")
        report = json.loads(sat.stdout)
        links = [_link_doc(dict(s), spec, seed, profile, t0, t1, sim,
                           {"simulate": t_sim, "post_process": t_post}, progress)
                 for s, spec, (seed, profile, t0, t1, sim, t_sim)
                 in zip(report["sessions"], config.links, sims, strict=True)]
        relay_doc = report.get("relay") or {}
        images = []
        if relay_doc:
            _log(progress, f"relay: Moscow and Urumqi share {relay_doc['n_bits']:,} bits")
            pki = init_pki(work / "kms")
            kmes = {}
            for party in ("moscow", "urumqi"):
                kmes[party] = _Process("kms", "serve", "--store",
                                       str(work / STORE_FILES[party]), "--certs",
                                       str(pki.root))
                procs.append(kmes[party])
            sae = {kme: s for s, kme in DEFAULT_SAES}

            def client(party):
                return KmeClient(f"https://127.0.0.1:{kmes[party].port}", pki, sae[party])

            def encrypt(src, dst, sender, receiver):
                with client(sender) as kme:
                    return imagecrypt.encrypt_file_kms(src, dst, kme, slave=sae[receiver])

            def decrypt(src, dst, receiver):
                with client(receiver) as kme:
                    return imagecrypt.decrypt_file_kms(src, dst, kme)

            images = _exchange_images(work, encrypt, decrypt, progress)
            for p in procs:
                p.stop()
            procs.clear()
        else:
            _log(progress, "relay skipped: a link produced no key")
        with contextlib.ExitStack() as opened:
            status = {party: opened.enter_context(KeyStore(work / name, create=False)).status()
                      for party, name in STORE_FILES.items()}
        network = {"satellite_exit_status": sat.returncode,
                   "stations": {n: "127.0.0.1" for n in stations},
                   "relay": relay_doc, "kms": bool(relay_doc)}
        doc = _document(config, links, relay_doc.get("n_bits", 0),
                        relay_doc.get("key_ids", []), images, status, network=network)
        _finish(work, out, doc, started)
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    _log(progress, f"done in {doc['wall_time_s']:.0f} s; report in {out / 'report.html'}")
    return doc
