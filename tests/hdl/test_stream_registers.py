"""StreamRegister and SkidBuffer (hdl.common): their cocotb suite under Verilator."""

import pytest
from mozi.hdl.common import SkidBuffer, StreamRegister
from mozi.sim.cocotb_runner import run_cocotb


@pytest.mark.cocotb
@pytest.mark.parametrize("kind", ["register", "skid"])
def test_stream_register_rtl(kind):
    core = SkidBuffer(8) if kind == "skid" else StreamRegister(8)
    run_cocotb(core, "tests.hdl.tb_stream_registers", toplevel=f"stream_{kind}",
               params={"kind": kind})
