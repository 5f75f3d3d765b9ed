"""The receivers verified from their pins (issue: boards, part 5).

The board top as it is built into the bitstream, converted to Verilog with its vendor cells,
runs under Verilator with models of those cells (Yosys's for the iCE40; ours, from Lattice's
descriptions, for the ECP5); simulated detections drive its detector pins and the host reads
them back over its UART pins (tests/boards/tb_pins.py).
"""

from pathlib import Path

import pytest
from mozi.boards.build import simulation_verilog
from mozi.boards.icebreaker import EXTERNAL_SAMPLE_HZ, PLL, PLL_EXTERNAL, SAMPLE_HZ
from mozi.sim.cocotb_runner import run_cocotb

from tests.boards.ice40_models import cell_models


@pytest.mark.parametrize("f_in, pll, f_out", [(12e6, PLL, SAMPLE_HZ),
                                               (10e6, PLL_EXTERNAL, EXTERNAL_SAMPLE_HZ)])
def test_pll_divisors_give_the_sampling_clock(f_in, pll, f_out):
    # the PLL model passes the pad's clock through: the real divisors must make the clock
    # (the UP5K's PLL: phase detector 10-133 MHz, VCO 533-1066 MHz)
    assert 10e6 <= f_in / (pll["DIVR"] + 1) <= 133e6
    f_vco = f_in * (pll["DIVF"] + 1) / (pll["DIVR"] + 1)
    assert 533e6 <= f_vco <= 1066e6
    assert f_vco / 2 ** pll["DIVQ"] == f_out


@pytest.mark.cocotb
def test_icebreaker_receiver_from_its_pins():
    run_cocotb(simulation_verilog("icebreaker", "receiver"), "tests.boards.tb_pins",
               toplevel="top", sources=cell_models(), params={"board": "icebreaker"})


@pytest.mark.cocotb
def test_ulx3s_receiver_from_its_pins():
    """With models of the ECP5 cells (the wiring, clocks, 4-phase tagging and UART of the
    board top; the gearbox's own order and latency are the model's assumption)."""
    models = {"ecp5_models.v": (Path(__file__).parent / "ecp5_models.v").read_text()}
    run_cocotb(simulation_verilog("ulx3s", "receiver"), "tests.boards.tb_pins",
               toplevel="top", sources=models, params={"board": "ulx3s"})
