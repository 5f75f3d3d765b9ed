"""TimeTagger: constructor checks, and the cocotb suite under Verilator per parameter set."""

import gc

import pytest
from amaranth.back import rtlil
from mozi.hdl.layouts import tag_event_layout
from mozi.hdl.time_tagger import TimeTagger
from mozi.sim.cocotb_runner import run_cocotb

# constructor-only tests build components they never elaborate
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


@pytest.fixture(autouse=True)
def _collect_unused():
    yield
    gc.collect()  # drop them while the filter above is in force

# One Verilator build per parameter set: plain pins with a deep FIFO; SERDES-like 4 and 8
# phases (IDDRX2F-class inputs); DDR with a 10-bit timestamp (wraps within the test) and an
# 8-bit total that saturates.
PARAMS = [
    {"channels": 4, "phases": 1, "timestamp_width": 48, "fifo_depth": 16},
    {"channels": 4, "phases": 4, "timestamp_width": 48, "fifo_depth": 8},
    {"channels": 4, "phases": 8, "timestamp_width": 48, "fifo_depth": 8},
    {"channels": 4, "phases": 2, "timestamp_width": 10, "fifo_depth": 4,
     "lost_count_width": 8},
    # the output on a clock of its own (an AsyncEventFIFO, deeper than the round trip of its
    # pointers through the synchronisers): half the tagger's rate, as on the iCEBreaker, and
    # faster than the tagger
    {"channels": 4, "phases": 2, "timestamp_width": 48, "fifo_depth": 16, "read_period": 20},
    {"channels": 4, "phases": 1, "timestamp_width": 48, "fifo_depth": 16, "read_period": 7},
]


def _tagger(params):
    kwargs = {k: v for k, v in params.items() if k != "read_period"}
    if "read_period" in params:
        kwargs["o_domain"] = "read"
    return TimeTagger(**kwargs)


@pytest.mark.cocotb
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"p{p['phases']}-w{p['timestamp_width']}"
                         + (f"-read{p['read_period']}ns" if "read_period" in p else ""))
def test_time_tagger_rtl(params):
    run_cocotb(_tagger(params), "tests.hdl.tb_time_tagger", params=params)


def test_defaults_elaborate():
    tagger = TimeTagger()
    assert tagger.o.payload.shape() == tag_event_layout(48, 4)
    assert len(tagger.pins) == 4
    assert "module" in rtlil.convert(TimeTagger(phases=2), name="tagger")


def test_ports_follow_parameters():
    tagger = TimeTagger(channels=3, phases=8, timestamp_width=20, dead_time_width=5)
    assert len(tagger.pins) == 24
    assert len(tagger.dead_time) == 5
    assert tagger.o.payload.shape() == tag_event_layout(20, 3)


@pytest.mark.parametrize("kwargs, exc", [
    ({"phases": 3}, ValueError),
    ({"phases": 2.0}, TypeError),
    ({"channels": 0}, ValueError),
    ({"channels": True}, TypeError),
    ({"phases": 8, "timestamp_width": 3}, ValueError),
    ({"fifo_depth": 1}, ValueError),
    ({"dead_time_width": "16"}, TypeError),
])
def test_bad_parameters(kwargs, exc):
    with pytest.raises(exc):
        TimeTagger(**kwargs)
