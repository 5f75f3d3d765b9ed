"""SkidBuffer (hdl.common): its cocotb suite under Verilator."""

import pytest
from mozi.hdl.common import SkidBuffer
from mozi.sim.cocotb_runner import run_cocotb


@pytest.mark.cocotb
def test_skid_buffer_rtl():
    run_cocotb(SkidBuffer(8), "tests.hdl.tb_skid_buffer", toplevel="skid_buffer")
