"""SlotAssigner: constructor checks, and the cocotb suite under Verilator per parameter set."""

import gc

import pytest
from amaranth.back import rtlil
from mozi.hdl.layouts import slot_event_layout, tag_event_layout
from mozi.hdl.slot_assigner import SlotAssigner
from mozi.sim.cocotb_runner import run_cocotb

# constructor-only tests build components they never elaborate
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

# One Verilator build per parameter set: the receiver's widths (48-bit timestamps and slots,
# 16 fractional bits), and narrow widths where timestamps and slots wrap within the test and
# the rejected counter saturates.
PARAMS = [
    {"timestamp_width": 48, "slot_width": 48, "frac_bits": 16, "channels": 4, "period_width": 24},
    {"timestamp_width": 12, "slot_width": 6, "frac_bits": 3, "channels": 4,
     "period_width": 10, "rejected_width": 4},
]


@pytest.fixture(autouse=True)
def _collect_unused():
    yield
    gc.collect()  # drop them while the filter above is in force


@pytest.mark.cocotb
@pytest.mark.parametrize("params", PARAMS,
                         ids=lambda p: f"t{p['timestamp_width']}-s{p['slot_width']}")
def test_slot_assigner_rtl(params):
    run_cocotb(SlotAssigner(**params), "tests.hdl.tb_slot_assigner", params=params)


def test_defaults_elaborate():
    sa = SlotAssigner()
    assert sa.i.payload.shape() == tag_event_layout(48, 4)
    assert sa.o.payload.shape() == slot_event_layout(48, 4)
    assert len(sa.offset) == 48 + 16 + 1 and sa.offset.shape().signed
    assert len(sa.period) == 24
    assert (sa.base_cycles, sa.reject_cycles) == (84, 14)  # as measured by the cocotb suite
    assert sa.event_cycles(3 << 30, from_base=True) == 84 - 16 * 2
    assert "module" in rtlil.convert(SlotAssigner(), name="slot_assigner")


@pytest.mark.parametrize("kwargs, exc", [
    ({"timestamp_width": 0}, ValueError),
    ({"slot_width": 1.5}, TypeError),
    ({"frac_bits": -1}, ValueError),
    ({"channels": False}, TypeError),
    ({"period_width": 0}, ValueError),
])
def test_bad_parameters(kwargs, exc):
    with pytest.raises(exc):
        SlotAssigner(**kwargs)
