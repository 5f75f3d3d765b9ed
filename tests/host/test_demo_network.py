"""``mozi demo --network --quick``: the scenario between real node processes and KMEs on
loopback — sessions, relay over the network, and both images through the ETSI 014 KMEs."""

import json
import subprocess
import sys

from mozi.host.demo import STORE_FILES
from mozi.host.keys.keystore import KeyStore

from tests.host.nodes import key_rows


def test_network_demo_moves_both_images_through_the_kmes(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "mozi.host.cli", "demo", "--network", "--quick",
                        "--json", "--no-progress", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["insecure_reproducible"] is False and doc["network"]["kms"]
    for d in doc["links"]:
        assert not d["aborted"] and d["final_key_bits"] > 10_000
        assert key_rows(out / STORE_FILES["satellite"], d["link"]) == \
            key_rows(out / STORE_FILES[d["link"].split("-")[1]], d["link"])
    assert doc["relay_key_bits"] > 10_000
    assert key_rows(out / "moscow.db", "moscow-urumqi") == \
        key_rows(out / "urumqi.db", "moscow-urumqi")
    assert {im["name"]: im["decrypted_identical"] for im in doc["images"]} == \
        {"mozi-logo.png": True, "mozi-map.png": True}
    # every key a KME handed out by enc_keys went out once more, by dec_keys at the peer
    with KeyStore(out / "moscow.db", create=False) as m, \
            KeyStore(out / "urumqi.db", create=False) as u:
        mine, theirs = m.kms_handed_out(), u.kms_handed_out()
    for a, b in ((mine, theirs), (theirs, mine)):
        enc = {k for k, side, *_ in a if side == "enc"}
        dec = {k for k, side, *_ in b if side == "dec"}
        assert enc and enc == dec
    used = [k for im in doc["images"] for k in im["key_ids"]]
    assert len(used) == len(set(used)) == len(mine)
    # the stations never saw the simulation seed
    for party in ("moscow", "urumqi"):
        head = (out / f"{party}.tags").read_bytes()[:4096]
        assert b'"pass"' in head and b'"seed"' not in head
