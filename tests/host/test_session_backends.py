"""The project's strongest test: one session on every device backend stores the same key.

``mozi session`` runs on 110–170 s of the simulated Micius 2017 pass, around its closest
approach (1.2 M detections, 35 kbit of final key), three times with the same seeds: on the
``model`` backend, with both parties' devices as RTL under Verilator (``--device rtl``), and
with Bob's receiver behind a serial port (``--bob-device serial:PTY``, the co-simulation served
on a pseudo-terminal). The stored keys, their IDs and check values, and every device counter
must be identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from mozi.host.cli import main
from mozi.host.devices.serial import PtyServer
from mozi.host.keys.keystore import KeyStore
from mozi.sim.link import simulate_pass, write_alice
from mozi.sim.passes import micius2017
from mozi.sim.tagfile import write_tags

pytestmark = [pytest.mark.cocotb, pytest.mark.xdist_group("rtl-session")]

LINK = "sat-urumqi"
WINDOW = (110.0, 170.0)


@pytest.fixture(scope="module")
def pass_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pass")
    sim = simulate_pass(micius2017(), seed=7, t_start=WINDOW[0], t_stop=WINDOW[1])
    write_tags(folder / "bob.tags", sim.tags_ps, sim.channels, metadata=sim.metadata())
    write_alice(folder / "alice.json", sim)
    return folder


def _session(folder, tmp, capsys, *device_args):
    tmp.mkdir()
    assert main(["link", "init", LINK, f"satellite={tmp / 'a.db'}",
                 f"urumqi={tmp / 'b.db'}"]) == 0
    capsys.readouterr()
    rc = main(["session", "--link", LINK, "--store-alice", str(tmp / "a.db"),
               "--store-bob", str(tmp / "b.db"), "--insecure-seed", "2017", "--json",
               *device_args, str(folder / "bob.tags"), str(folder / "alice.json")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(out)
    with KeyStore(tmp / "b.db", create=False) as store:
        keys = {r.key_id: (store.get(r.key_id).bits, r.check_value) for r in store.list(LINK)}
    return result, keys


def test_model_rtl_and_serial_sessions_store_the_same_key(pass_files, tmp_path, capsys):
    runs = {"model": _session(pass_files, tmp_path / "model", capsys, "--device", "model"),
            "rtl": _session(pass_files, tmp_path / "rtl", capsys, "--device", "rtl")}
    with PtyServer("receiver") as pty:
        runs["serial"] = _session(pass_files, tmp_path / "serial", capsys,
                                  "--bob-device", f"serial:{pty.path}")
    ref, ref_keys = runs["model"]
    assert not ref["aborted"] and ref["final_key_bits"] > 30_000
    assert ref["key_check_values"] and len(ref["key_check_values"]) == len(ref["key_ids"])
    for name, (result, keys) in runs.items():
        for field in ("final_key_bits", "key_ids", "key_check_values", "device_counters",
                      "sifted_bits", "qber_z", "ec_leaked_bits"):
            assert result[field] == ref[field], f"{name}: {field}"
        assert keys.keys() == ref_keys.keys()
        for key_id, (bits, kcv) in keys.items():
            np.testing.assert_array_equal(bits, ref_keys[key_id][0], err_msg=f"{name} {key_id}")
            assert kcv == ref_keys[key_id][1]
