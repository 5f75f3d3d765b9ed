# amaranth: UnusedElaboratable=no
"""BasisDecoder: parameter checks, and the cocotb suite under Verilator per parameter set."""

import pytest
from mozi.hdl.basis_decoder import BasisDecoder
from mozi.sim.cocotb_runner import run_cocotb

pytestmark = pytest.mark.cocotb


@pytest.mark.parametrize("slot_width, channels", [(48, 4), (20, 5)])
def test_basis_decoder_rtl(slot_width, channels):
    run_cocotb(BasisDecoder(slot_width=slot_width, channels=channels),
               "tests.hdl.tb_basis_decoder",
               params={"slot_width": slot_width, "channels": channels})


def test_defaults_and_ports():
    core = BasisDecoder()
    assert core.slot_width == 48 and core.channels == 4
    assert set(core.signature.members) == {"i", "rand", "o", "dropped", "drop"}


@pytest.mark.parametrize("kwargs, exc", [
    ({"slot_width": 0}, TypeError),
    ({"slot_width": 4.0}, TypeError),
    ({"channels": 3}, ValueError),
    ({"channels": "4"}, TypeError),
])
def test_rejects_bad_parameters(kwargs, exc):
    with pytest.raises(exc):
        BasisDecoder(**kwargs)
