"""``mozi demo --quick``: the whole China–Russia scenario on a slice of each pass.

One quick run (about half a minute) is shared by the tests of this module; the full
``make demo`` run is checked by hand (its wall time is in docs/demo.md).
"""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
from mozi.host.cli import main
from mozi.host.cli.commands.demo import _summary
from mozi.host.crypto.imagecrypt import otp_key_bits
from mozi.host.demo import RELAY_LINK, STORE_FILES, DemoConfig, run_demo
from mozi.host.keys.keystore import KeyStore
from mozi.host.sample_images import SAMPLES

# one worker runs the whole module under `pytest -n 2 --dist loadgroup`, so the module-scoped
# fixture (a simulated run) is built once
pytestmark = pytest.mark.xdist_group("mozi-demo")

LINK_KEYS = ("link", "sifted_bits", "qber_z", "qber_x", "final_key_bits", "ec_efficiency",
             "aborted")
IMAGE_KEYS = ("name", "bytes", "mode", "decrypted_identical")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    capture = pytest.MonkeyPatch()      # capsys is per test; this run is per module
    stdout = io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    try:
        rc = main(["demo", "--quick", "--json", "--no-progress", "--out", str(out)])
    finally:
        capture.undo()
    return rc, json.loads(stdout.getvalue()), out


def test_exit_status_and_json_document(demo):
    rc, doc, _ = demo
    assert rc == 0
    assert doc["ok"] is True
    assert doc["quick"] is True
    assert [d["link"] for d in doc["links"]] == ["sat-moscow", "sat-urumqi"]
    for d in doc["links"]:
        for key in LINK_KEYS:
            assert key in d, key
        assert d["aborted"] is False
        assert d["final_key_bits"] > 0
        assert d["sifted_bits"] > d["final_key_bits"]
        assert 0.0 < d["qber_z"] < 0.03 and 0.0 < d["qber_x"] < 0.03
        assert 1.0 <= d["ec_efficiency"] <= 1.10
        assert d["profile"] and {"t_s", "sifted_kbps", "qber"} <= set(d["profile"][0])
        assert d["pass"]["duration_s"] < d["pass"]["full_pass_s"]


def test_relay_key(demo):
    _, doc, out = demo
    shortest = min(d["final_key_bits"] for d in doc["links"])
    assert doc["relay_key_bits"] == shortest
    stores = {}
    for party in ("moscow", "urumqi"):
        with KeyStore(out / STORE_FILES[party], create=False) as store:
            stores[party] = {r.key_id: (r.n_bits, r.state) for r in store.list(RELAY_LINK)}
    assert stores["moscow"] == stores["urumqi"]
    assert sum(n for n, _ in stores["moscow"].values()) == doc["relay_key_bits"]
    assert sorted(stores["moscow"]) == sorted(doc["relay_key_ids"])


def test_images_decrypted_bit_exact(demo):
    _, doc, out = demo
    assert sorted(im["name"] for im in doc["images"]) == sorted(SAMPLES)
    for im in doc["images"]:
        for key in IMAGE_KEYS:
            assert key in im, key
        assert im["decrypted_identical"] is True
        original = (out / "images" / im["name"]).read_bytes()
        assert im["bytes"] == len(original)
        assert (out / "images" / f"decrypted-{im['name']}").read_bytes() == original
        cipher = (out / "images" / f"{im['name']}.mozi").read_bytes()
        assert cipher[:8] == b"MOZICRYP"
        assert original not in cipher
    modes = {im["name"]: im for im in doc["images"]}
    # Moscow sends the logo, Urumqi the map, each with relayed blocks only it may send with
    assert (modes["mozi-logo.png"]["from"], modes["mozi-logo.png"]["to"]) == ("moscow", "urumqi")
    assert (modes["mozi-map.png"]["from"], modes["mozi-map.png"]["to"]) == ("urumqi", "moscow")
    assert modes["mozi-map.png"]["mode"] == "aes-gcm"          # larger than any pass's key
    # the logo gets the one-time pad when Moscow's half of the relayed key suffices (it does
    # with the embedded defaults: ~50 kbit relayed in --quick mode)
    logo = modes["mozi-logo.png"]
    assert doc["relay_key_bits"] // 2 >= otp_key_bits(logo["bytes"]), \
        "the quick demo no longer relays enough key for the logo's one-time pad"
    assert logo["mode"] == "otp"
    assert logo["key_bits_used"] == otp_key_bits(logo["bytes"])
    with KeyStore(out / STORE_FILES["moscow"], create=False) as mos:
        assert {mos.get(k).sender for k in logo["key_ids"]} == {"moscow"}
        assert {mos.get(k).sender for k in modes["mozi-map.png"]["key_ids"]} == {"urumqi"}


def test_demo_is_marked_insecure_and_stores_are_private(demo):
    _, doc, out = demo
    assert doc["insecure_reproducible"] is True
    assert all(d["insecure_reproducible"] for d in doc["links"])
    assert "Insecure reproducible run" in (out / "report.md").read_text()
    for name in STORE_FILES.values():
        assert (out / name).stat().st_mode & 0o077 == 0
        with KeyStore(out / name, create=False) as store:
            assert all(r.meta["insecure_reproducible"] for r in store.list())
    for spec in ("sat-moscow", "sat-urumqi"):
        with KeyStore(out / "satellite.db", create=False) as sat:
            st = sat.auth_status()[spec]
            # refilled after the session; the relay then spent two pads (open + relay)
            assert st["pad_bits"] == [st["target_bits"][0] - 2 * 64, st["target_bits"][1]]


def test_output_files(demo):
    _, doc, out = demo
    names = set(os.listdir(out))
    expected = {"demo.json", "report.png", "report.md", "report.html", "images",
                "sat-moscow.alice.json", "sat-urumqi.alice.json", *STORE_FILES.values()}
    assert expected <= names
    assert not [n for n in names if n.startswith(".")]          # no work folder or temp file
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sat-moscow" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    saved = json.loads((out / "demo.json").read_text())
    assert saved["links"] == doc["links"]
    assert saved["images"] == doc["images"]


def test_text_summary(demo):
    _, doc, _ = demo
    text = _summary(doc)
    assert text.count("identical") == 2
    assert "Moscow and Urumqi share" in text
    assert "sat-urumqi" in text


def test_output_folder_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    rc = main(["demo", "--quick", "--no-progress", "--out", str(target)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("mozi demo: error: ")   # no warning either
    assert target.read_text() == "x"


def test_link_keys_in_stores(demo):
    # each link's key sits in the satellite's and the station's store under the same IDs,
    # and the relay consumed (at least) relay_key_bits of it at both ends
    _, doc, out = demo
    for d, party in zip(doc["links"], ("moscow", "urumqi"), strict=True):
        with KeyStore(out / "satellite.db", create=False) as sat, \
                KeyStore(out / STORE_FILES[party], create=False) as ground:
            for store in (sat, ground):
                records = store.list(d["link"])
                assert {r.sender for r in records} == {"satellite"}   # all for the relay
                assert sorted(r.key_id for r in records) == sorted(d["key_ids"])
                assert sum(r.n_bits for r in records) == d["final_key_bits"]
                consumed = sum(r.n_bits for r in records if r.state == "consumed")
                assert consumed >= doc["relay_key_bits"]
                if d["final_key_bits"] == doc["relay_key_bits"]:
                    assert consumed == d["final_key_bits"]


def test_too_short_slices_abort_and_skip_relay(tmp_path):
    # 3 s of each pass is too little for a positive finite-key length: both sessions abort,
    # there is no relay and no image, the report says so and nothing is stored
    doc = run_demo(tmp_path, DemoConfig(quick=True, quick_window_s=3.0), progress=False)
    assert doc["ok"] is False
    assert all(d["aborted"] and d["abort_reason"] and d["final_key_bits"] == 0
               for d in doc["links"])
    assert doc["relay_key_bits"] == 0 and doc["images"] == []
    assert "No image was exchanged" in (tmp_path / "report.md").read_text()
    for name in STORE_FILES.values():
        with KeyStore(tmp_path / name, create=False) as store:
            assert store.list() == []
    assert _summary({**doc, "out": str(tmp_path)}).count("ABORTED") == 2
