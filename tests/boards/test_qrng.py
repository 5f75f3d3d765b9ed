"""SerialRandomInput (boards.qrng), the transmitter boards' QRNG input: cocotb under Verilator."""

import pytest
from mozi.boards.qrng import SerialRandomInput
from mozi.sim.cocotb_runner import run_cocotb


@pytest.mark.cocotb
def test_serial_random_input_rtl():
    run_cocotb(SerialRandomInput(), "tests.boards.tb_qrng", toplevel="serial_random_input")
