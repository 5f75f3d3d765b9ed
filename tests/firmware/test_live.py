"""The receiver top in live mode: its cocotb suite under Verilator."""

import pytest
from mozi.firmware.receiver import Receiver
from mozi.sim.cocotb_runner import run_cocotb


@pytest.mark.cocotb
def test_receiver_live_mode_rtl():
    run_cocotb(Receiver(phases=2), "tests.firmware.tb_live", toplevel="receiver_live")
