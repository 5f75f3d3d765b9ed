# amaranth: UnusedElaboratable=no
"""ToeplitzHasher: parameter checks, and the cocotb suite under Verilator per parameter set."""

import numpy as np
import pytest
from mozi.hdl.toeplitz_hasher import (
    PRIME_CYCLES,
    ToeplitzHasher,
    ToeplitzStatus,
    job_cycles,
    toeplitz_block,
)
from mozi.sim.cocotb_runner import run_cocotb

from bench.gateware_cores import CORES

pytestmark = pytest.mark.cocotb

# lanes 1/4/8/32; tile/lanes of 6, 1 (the one-chunk edge) and 3 (not powers of two);
# max_n not a multiple of lanes. The lanes-1 and lanes-8 sets force the sliced buffers
# that large configurations get by default, with tiny banks so that the bank multiplexers
# are exercised: lanes 1 in 1-bit slices (3 banks for x, 4 for the seed), lanes 8 in 2-bit
# slices (4 banks for x, 6 for the seed). The Karatsuba split of the tile product runs
# one level deep at lanes 4, two at lanes 8 and three at lanes 32; with 3 blocks the last
# one runs 2 cycles behind the first (the wavefront skew).
PARAMS = [
    {"lanes": 1, "tile": 6, "max_n": 40, "max_m": 23, "slice_memory": True, "bank_depth": 16},
    {"lanes": 4, "tile": 4, "max_n": 37, "max_m": 11, "karatsuba_base": 2},
    {"lanes": 8, "tile": 24, "max_n": 101, "max_m": 60, "slice_memory": True,
     "slice_width": 2, "bank_depth": 4, "karatsuba_base": 2},
    {"lanes": 32, "tile": 96, "max_n": 301, "max_m": 200, "karatsuba_base": 4},
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"lanes{p['lanes']}-tile{p['tile']}")
def test_toeplitz_hasher_rtl(params):
    run_cocotb(ToeplitzHasher(**params), "tests.hdl.tb_toeplitz_hasher", params=params)


def test_synthesised_configuration_rtl():
    # the 128 × 1024 core that bench.synth places on the ECP5 ((10^6, 10^5) jobs), with jobs
    # of up to 4,000 × 2,200 bits (three passes) and one that fills its 7,813-word x buffer
    spec = next(core for core in CORES if core.name == "ToeplitzHasher")
    params = {**spec.params, "job_max_n": 4000, "job_max_m": 2200}
    run_cocotb(spec.factory(), "tests.hdl.tb_toeplitz_hasher", params=params, ports_only=True)


@pytest.mark.parametrize("k", [1, 2, 3, 6, 8, 64, 256])
@pytest.mark.parametrize("base", [1, 2, 8, 32])
def test_toeplitz_block_matches_direct_product(k, base):
    # the same splitting the gateware is built from, on numpy bits, against the definition
    rng = np.random.default_rng(1000 * k + base)
    w = rng.integers(0, 2, 2 * k - 1).astype(bool)
    x = rng.integers(0, 2, k).astype(bool)
    got = toeplitz_block(w, x, base=base, gate=lambda v, b: v & b,
                         cat=lambda lo, hi: np.concatenate([lo, hi]))
    matrix = np.array([[w[t - lane + k - 1] for lane in range(k)] for t in range(k)])
    assert np.array_equal(got, (matrix.astype(int) @ x.astype(int)) % 2 == 1)


def test_memory_slicing_default():
    assert not ToeplitzHasher().slice_memory                       # 512-word x buffer
    assert ToeplitzHasher(max_n=8 * 513).slice_memory
    assert not ToeplitzHasher(lanes=1, tile=8, max_n=10**4).slice_memory
    assert ToeplitzHasher(lanes=32, tile=512, max_n=10**6, max_m=10**5).slice_memory


def test_defaults_and_ports():
    core = ToeplitzHasher()
    assert (core.lanes, core.tile, core.max_n, core.max_m) == (8, 64, 4096, 1024)
    assert set(core.signature.members) == {"cfg", "seed", "x", "y", "status"}
    # the configuration to synthesise for the (n, m) = (10^6, 10^5) figure builds its ports
    big = ToeplitzHasher(lanes=32, tile=512, max_n=10**6, max_m=10**5)
    assert len(big.cfg.payload.n) == 20
    assert len(big.cfg.payload.m) == 17
    assert len(big.x.payload.as_value()) == 33


def test_job_cycles_formula():
    # cfg 1 + seed beats + seed flush 1 + x beats (stored whole), then per pass: start 1,
    # prime PRIME_CYCLES (7), fill tile/lanes + 1, x beats, settle, dump tile/lanes; then
    # the final pass's y beats come down the dump wave, + 2 until status is taken. settle is
    # 2, or tile/lanes + 2 when the blocks are split (the last one runs tile/lanes - 1
    # cycles behind the first, and the leaf products are registered), + 1 with two levels
    # of splitting or more (the recombination is registered halfway).
    assert PRIME_CYCLES == 7
    assert job_cycles(1, 1, lanes=1, tile=1) == 1 + 1 + 1 + 1 + (1 + 7 + 2 + 1 + 2 + 1) + 1 + 2
    assert job_cycles(10**6, 10**5, lanes=32, tile=512) == \
        4 + 34375 + 31250 + 196 * (31250 + 32 + 7 + 2 + 19) + 5   # final pass: 5 row blocks
    assert job_cycles(10**6, 10**5, lanes=32, tile=512, karatsuba_base=32) == \
        4 + 34375 + 31250 + 196 * (31250 + 32 + 7 + 2 + 2) + 5
    assert job_cycles(64, 48, lanes=8, tile=24) == 4 + 14 + 8 + 2 * (8 + 6 + 7 + 2 + 2) + 3
    assert job_cycles(64, 40, lanes=8, tile=24, karatsuba_base=4) == \
        4 + 13 + 8 + 2 * (8 + 6 + 7 + 2 + 5) + 2
    assert ToeplitzStatus.OK.value == 0


@pytest.mark.parametrize("kwargs, exc", [
    ({"lanes": 0}, TypeError),
    ({"lanes": 8.0}, TypeError),
    ({"lanes": True}, TypeError),
    ({"lanes": 3, "tile": 6}, ValueError),
    ({"lanes": 512, "tile": 512}, ValueError),
    ({"lanes": 8, "tile": 12}, ValueError),
    ({"tile": -8}, TypeError),
    ({"max_n": 0}, TypeError),
    ({"max_m": "10"}, TypeError),
    ({"slice_memory": 1}, TypeError),
    ({"bank_depth": 0}, TypeError),
    ({"bank_depth": 12}, ValueError),
    ({"slice_width": 0}, TypeError),
    ({"slice_width": 3}, ValueError),
    ({"lanes": 8, "slice_width": 16}, ValueError),
    ({"karatsuba_base": 0}, TypeError),
    ({"karatsuba_base": 2.0}, TypeError),
])
def test_rejects_bad_parameters(kwargs, exc):
    with pytest.raises(exc):
        ToeplitzHasher(**kwargs)
