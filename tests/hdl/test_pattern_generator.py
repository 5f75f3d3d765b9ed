# amaranth: UnusedElaboratable=no
"""PatternGenerator: its ports, and the cocotb suite under Verilator."""

import pytest
from mozi.hdl.pattern_generator import PatternGenerator
from mozi.sim.cocotb_runner import run_cocotb

pytestmark = pytest.mark.cocotb


def test_pattern_generator_rtl():
    run_cocotb(PatternGenerator(), "tests.hdl.tb_pattern_generator")


def test_ports():
    core = PatternGenerator()
    assert set(core.signature.members) == {
        "rand", "slot", "enable", "t_basis", "t_int0", "t_int1", "lasers", "intensity",
        "records", "underruns", "records_lost"}
    assert len(core.t_basis) == 32 and len(core.t_int0) == 33 and len(core.lasers) == 4
