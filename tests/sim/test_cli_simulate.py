"""``mozi simulate``: JSON output, the two output files, and user errors."""

import json

import numpy as np
import pytest
from mozi.host import cli
from mozi.sim.link import read_alice
from mozi.sim.tagfile import read_tags


@pytest.fixture(autouse=True)
def only_simulate(monkeypatch):
    """Dispatch through the real CLI, loading only this subcommand (others may be absent)."""
    monkeypatch.setattr(cli, "COMMANDS", ("simulate",))


def run(capsys, *argv):
    code = cli.main(["simulate", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_and_files(tmp_path, capsys):
    out_dir = tmp_path / "run" / "a"
    code, out, err = run(capsys, "--t-start", "120", "--t-stop", "121.5", "--seed", "42",
                         "--json", "--out", str(out_dir))
    assert code == 0, err
    doc = json.loads(out)                     # exactly one JSON document on stdout
    assert doc["pass"] == "micius2017" and doc["seed"] == 42 and doc["eve"] is None
    assert [set(r) >= {"t_s", "detections", "sifted_kbps", "qber"} for r in doc["profile"]] \
        == [True]
    assert doc["totals"]["sifted_bits"] > 10_000
    assert 0.005 < doc["totals"]["qber"] < 0.02
    assert sorted(p.name for p in out_dir.iterdir()) == ["alice.json", "bob.tags"]

    tags = read_tags(out_dir / "bob.tags")
    assert len(tags) == doc["totals"]["detections"]
    assert tags.channel_names == ("H", "V", "D", "A")
    assert "seed" not in tags.metadata                 # Bob does not get Alice's QRNG output
    assert tags.metadata["first_slot"] == doc["first_slot"] == 12_000_000_000
    assert tags.metadata["timing"]["drift_ppm"] == 0.05

    alice = read_alice(out_dir / "alice.json")
    assert alice.source.seed == 42
    assert alice.metadata["n_slots"] == doc["n_slots"] == 150_000_000
    rec = alice.source.records(doc["first_slot"], 16)
    assert rec.dtype == np.uint8 and rec.max() < 12


def test_table_output_and_defaults(capsys):
    code, out, err = run(capsys, "--t-start", "200", "--t-stop", "200.5")
    assert code == 0, err
    assert out.startswith("pass micius2017  seed 1  eve none")
    assert "QBER" in out and "total:" in out


def test_intercept_resend_raises_qber(capsys):
    code, out, _ = run(capsys, "--t-start", "130", "--t-stop", "131", "--json",
                       "--eve", "intercept-resend")
    assert code == 0
    doc = json.loads(out)
    assert doc["eve"] == {"type": "intercept-resend", "fraction": 1.0, "resend_mu": None}
    assert 0.22 < doc["totals"]["qber"] < 0.29


def test_station_pass(capsys):
    code, out, _ = run(capsys, "--pass", "nanshan", "--t-start", "150", "--t-stop", "150.5",
                       "--json", "--eve", "pns")
    assert code == 0
    doc = json.loads(out)
    assert doc["pass"] == "nanshan" and doc["eve"]["type"] == "pns"
    assert doc["totals"]["detections"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--pass", "mars"], "unknown pass 'mars'"),
    (["--t-start", "10", "--t-stop", "5"], "time range"),
    (["--t-start", "250", "--t-stop", "400"], "time range"),
    (["--seed", "-3", "--t-stop", "0.1"], "seed"),
    (["--eve-fraction", "0.5", "--t-stop", "0.1"], "--eve-fraction"),
    (["--eve", "intercept-resend", "--eve-fraction", "2", "--t-stop", "0.1"], "fraction"),
])
def test_user_errors_are_one_line(tmp_path, capsys, argv, message):
    code, out, err = run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert code == 1 and out == ""
    assert err.startswith("mozi simulate: error:") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o" / "bob.tags").exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run(capsys, "--t-stop", "0.1", "--out", str(blocker / "sub"))
    assert code == 1 and "cannot create output directory" in err
    code, out, err = run(capsys, "--t-stop", "0.1", "--out", str(blocker))
    assert code == 1 and "not a directory" in err
    assert blocker.read_text() == "x"
