# amaranth: UnusedElaboratable=no
"""AliceSifter: parameter checks, and the cocotb suite under Verilator per parameter set."""

import pytest
from mozi.hdl.alice_sifter import AliceSifter, SiftError
from mozi.sim.cocotb_runner import run_cocotb

pytestmark = pytest.mark.cocotb


@pytest.mark.parametrize("slot_width, lanes", [(48, 1), (24, 4)])
def test_alice_sifter_rtl(slot_width, lanes):
    run_cocotb(AliceSifter(slot_width=slot_width, lanes=lanes), "tests.hdl.tb_alice_sifter",
               params={"slot_width": slot_width, "lanes": lanes})


def test_defaults_and_ports():
    core = AliceSifter()
    assert core.slot_width == 48 and core.lanes == 1
    assert set(core.signature.members) == {
        "records", "reports", "first_slot", "o", "error", "error_code", "dropped"}
    assert SiftError.NONE.value == 0


@pytest.mark.parametrize("kwargs, exc", [
    ({"slot_width": 0}, TypeError),
    ({"lanes": 0}, TypeError),
    ({"lanes": 2.0}, TypeError),
    ({"lanes": 3}, ValueError),
    ({"lanes": 6}, ValueError),
])
def test_rejects_bad_parameters(kwargs, exc):
    with pytest.raises(exc):
        AliceSifter(**kwargs)
