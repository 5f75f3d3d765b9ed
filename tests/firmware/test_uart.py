"""The UART build of a role top: its cocotb suite under Verilator."""

import pytest
from mozi.firmware.receiver import Receiver
from mozi.sim.cocotb_runner import run_cocotb


@pytest.mark.cocotb
def test_receiver_over_uart_rtl():
    run_cocotb(Receiver(uart=True), "tests.firmware.tb_uart", toplevel="receiver_uart")
