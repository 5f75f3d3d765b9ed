"""The counter bank of the role tops' links: its cocotb suite under Verilator."""

import gc

import pytest
from mozi.firmware.counter_bank import CounterBank
from mozi.sim.cocotb_runner import run_cocotb

PARAMS = [
    {"increments": [1, 2, 5, 1], "cleared": [True, False, True, True], "width": 10},
    {"increments": [3], "cleared": [True], "width": 10},     # one counter: padded to three
]


@pytest.mark.cocotb
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"n{len(p['increments'])}")
def test_counter_bank_rtl(params):
    bank = CounterBank(params["increments"], cleared=params["cleared"], width=params["width"])
    run_cocotb(bank, "tests.firmware.tb_counter_bank", params=params)


# a component whose constructor raises is never elaborated
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_counter_bank_parameters_are_checked():
    with pytest.raises(ValueError, match="at least one counter"):
        CounterBank([])
    with pytest.raises(ValueError, match="one entry per counter"):
        CounterBank([1, 1], cleared=[True])
    with pytest.raises(TypeError, match="increment width"):
        CounterBank([1.5])
    gc.collect()                      # the half-built components, while the filter holds
