"""cocotb testbench for :class:`~mozi.hdl.toeplitz_hasher.ToeplitzHasher` (test_toeplitz_hasher).

Driver → monitor → model → in-order checker. Three drivers feed ``cfg``, ``seed`` and ``x``
with independent random ``valid`` gaps, two monitors apply random ``ready`` backpressure to
``y`` and ``status``, and the expected beats come from :func:`ref_job`, built on
:func:`mozi.sim.model.toeplitz_hash`. Padding bits past the end of each input packet are
random, so the core must ignore them.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge
from mozi.hdl.toeplitz_hasher import PRIME_CYCLES, ToeplitzStatus, job_cycles
from mozi.sim.cocotb_runner import test_params
from mozi.sim.model import toeplitz_hash

from tests.hdl import streams
from tests.hdl.streams import drive, start_clock

PARAMS = test_params()
LANES = PARAMS.get("lanes", 8)
TILE = PARAMS.get("tile", 64)
MAX_N = PARAMS.get("max_n", 4096)
MAX_M = PARAMS.get("max_m", 1024)
KARATSUBA_BASE = PARAMS.get("karatsuba_base", 8)
#: Largest n and m of the jobs the tests make: the core's maxima unless the parameter set
#: limits them (a job at a large core's maxima takes hundreds of thousands of clocks).
#: Either way one job has n = max_n, so the whole x buffer is used.
JOB_N = PARAMS.get("job_max_n", MAX_N)
JOB_M = PARAMS.get("job_max_m", MAX_M)
N_WIDTH = MAX_N.bit_length()
M_WIDTH = MAX_M.bit_length()
OK = ToeplitzStatus.OK.value


def pack_bits(bits: np.ndarray, rng: random.Random, *, beats: int | None = None) -> list[int]:
    """Stream beats for a bit packet: ``lanes`` bits per beat, LSB first, ``last`` on the
    final beat, random junk in the padding. ``beats`` forces a (wrong) beat count."""
    bits = [int(b) for b in bits]
    need = -(-len(bits) // LANES)
    beats = need if beats is None else beats
    words = []
    for k in range(beats):
        word = 0
        for lane in range(LANES):
            idx = k * LANES + lane
            bit = bits[idx] if idx < len(bits) else rng.getrandbits(1)
            word |= bit << lane
        words.append(word | (k == beats - 1) << LANES)
    return words


def ref_job(x: np.ndarray, s: np.ndarray, m: int) -> list[int]:
    """Expected ``y`` beats of a successful job: the model's ``m`` bits, zero padded."""
    y = toeplitz_hash(x, s, m)
    out = []
    for k in range(-(-m // LANES)):
        chunk = y[k * LANES:(k + 1) * LANES]
        word = sum(int(b) << lane for lane, b in enumerate(chunk))
        out.append(word | (k == -(-m // LANES) - 1) << LANES)
    return out


class Jobs:
    """Stimulus and expected responses of a sequence of jobs."""

    def __init__(self) -> None:
        self.cfg: list[int] = []
        self.seed: list[int] = []
        self.x: list[int] = []
        self.y: list[int] = []
        self.status: list[int] = []

    def add(self, n: int, m: int, rng: random.Random, *, x=None, s=None,
            seed_beats: int | None = None, x_beats: int | None = None,
            status: int = OK) -> None:
        """Queue one job; a non-OK ``status`` means no ``y`` beats are expected."""
        n_bits, s_bits = max(n, 1), max(n + m - 1, 1)
        if x is None:
            x = np.array([rng.getrandbits(1) for _ in range(n_bits)], np.uint8)
        if s is None:
            s = np.array([rng.getrandbits(1) for _ in range(s_bits)], np.uint8)
        self.cfg.append(n | m << N_WIDTH)
        self.seed += pack_bits(s, rng, beats=seed_beats)
        self.x += pack_bits(x, rng, beats=x_beats)
        if status == OK:
            self.y += ref_job(x, s, m)
        self.status.append(status)


async def reset(dut, clocks: int = 2) -> None:
    """Start the clock and reset the core with every stream idle."""
    start_clock(dut)
    await streams.reset(dut, ("cfg", "seed", "x"), ("y", "status"), clocks)


async def check(dut, name: str, expected: list[int], rng: random.Random, p_ready: float,
                done: list[bool]) -> None:
    """Sink for stream ``name`` with random backpressure; in-order check against ``expected``."""
    valid = getattr(dut, f"{name}__valid")
    payload = getattr(dut, f"{name}__payload")
    ready = getattr(dut, f"{name}__ready")
    k = 0
    while k < len(expected):
        ready.value = int(rng.random() < p_ready)
        await ReadOnly()
        if valid.value and ready.value:
            got = int(payload.value)
            assert got == expected[k], \
                f"{name} beat {k}: got {got:#x}, expected {expected[k]:#x}"
            k += 1
        await RisingEdge(dut.clk)
    ready.value = 0
    done.append(True)


async def run_jobs(dut, jobs: Jobs, rng: random.Random, *, p_valid: float = 0.7,
                   p_ready: float = 0.7, tail: int = 50) -> None:
    """Play ``jobs`` with the given stall probabilities; check every output beat."""
    dut._log.info("jobs=%d y beats=%d p_valid=%.2f p_ready=%.2f",
                  len(jobs.status), len(jobs.y), p_valid, p_ready)
    for name in ("cfg", "seed", "x"):
        cocotb.start_soon(drive(dut, name, getattr(jobs, name), rng, p_valid))
    done: list[bool] = []
    cocotb.start_soon(check(dut, "y", jobs.y, rng, p_ready, done))
    cocotb.start_soon(check(dut, "status", jobs.status, rng, p_ready, done))
    while len(done) < 2:
        await RisingEdge(dut.clk)
    # Nothing more may come out once every job is answered.
    dut.y__ready.value = 1
    dut.status__ready.value = 1
    for _ in range(tail):
        await ReadOnly()
        assert not dut.y__valid.value, "spurious y beat after the last job"
        assert not dut.status__valid.value, "spurious status beat after the last job"
        await RisingEdge(dut.clk)
    await ReadOnly()
    assert dut.cfg__ready.value, "core not idle after the last job"
    await RisingEdge(dut.clk)


def edge_shapes() -> list[tuple[int, int]]:
    """(n, m) edge cases: 1s, maxima, tile and lane boundaries on both sides."""
    shapes = {(1, 1), (1, JOB_M), (MAX_N, 1), (JOB_N, 1), (JOB_N, JOB_M), (2, 2)}
    for n in (LANES - 1, LANES, LANES + 1, 2 * LANES + 3, JOB_N - 1):
        for m in (TILE - 1, TILE, TILE + 1, 2 * TILE + 3, JOB_M - 1):
            if 1 <= n <= JOB_N and 1 <= m <= JOB_M:
                shapes.add((n, m))
    return sorted(shapes)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_edge_cases(dut):
    """n or m of 1, maxima, n not a multiple of lanes, m around multiples of the tile."""
    rng = random.Random(cocotb.RANDOM_SEED)
    await reset(dut)
    jobs = Jobs()
    shapes = edge_shapes()
    for n, m in shapes:
        jobs.add(n, m, rng)
    # structured vectors: all-ones, a single 1 at either end (selects one seed window)
    n, m = JOB_N, min(JOB_M, 2 * TILE + 1)
    ones_s = np.ones(n + m - 1, np.uint8)
    jobs.add(n, m, rng, x=np.ones(n, np.uint8), s=ones_s)
    for pos in (0, n - 1):
        x = np.zeros(n, np.uint8)
        x[pos] = 1
        jobs.add(n, m, rng, x=x)
    jobs.add(n, m, rng, x=np.zeros(n, np.uint8), s=ones_s)
    await run_jobs(dut, jobs, rng, p_valid=0.6, p_ready=0.5)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_random_jobs(dut):
    """Seeded random (n, m), bits and stall patterns, from no stalls to heavy stalls."""
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    await reset(dut)
    for p_valid, p_ready in ((1.0, 1.0), (0.9, 0.3), (0.3, 0.9)):
        jobs = Jobs()
        for _ in range(10):
            jobs.add(rng.randint(1, JOB_N), rng.randint(1, JOB_M), rng)
        await run_jobs(dut, jobs, rng, p_valid=p_valid, p_ready=p_ready)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_errors(dut):
    """Every error status, each followed by a good job proving the streams stayed framed."""
    rng = random.Random(cocotb.RANDOM_SEED + 2)
    await reset(dut)
    jobs = Jobs()
    n, m = min(JOB_N, 3 * LANES + 1), min(JOB_M, TILE + 2)
    s_beats = -(-(n + m - 1) // LANES)
    x_beats = -(-n // LANES)
    too_big_n = (1 << N_WIDTH) - 1
    too_big_m = (1 << M_WIDTH) - 1
    bad = [
        dict(n=0, m=m, status=ToeplitzStatus.BAD_N.value),
        dict(n=n, m=0, status=ToeplitzStatus.BAD_M.value),
        dict(n=0, m=0, status=ToeplitzStatus.BAD_N.value),
        dict(n=n, m=m, seed_beats=s_beats - 1, status=ToeplitzStatus.SEED_SHORT.value),
        dict(n=n, m=m, seed_beats=s_beats + 2, status=ToeplitzStatus.SEED_LONG.value),
        dict(n=n, m=m, x_beats=max(x_beats - 1, 1), status=ToeplitzStatus.X_SHORT.value),
        dict(n=n, m=m, x_beats=x_beats + 3, status=ToeplitzStatus.X_LONG.value),
        # the first error wins: a short seed hides the short x that follows
        dict(n=n, m=m, seed_beats=1, x_beats=1, status=ToeplitzStatus.SEED_SHORT.value),
    ]
    if too_big_n > MAX_N:
        bad.append(dict(n=too_big_n, m=m, status=ToeplitzStatus.BAD_N.value))
    if too_big_m > MAX_M:
        bad.append(dict(n=n, m=too_big_m, status=ToeplitzStatus.BAD_M.value))
    if x_beats == 1:  # a one-beat x cannot be short; make it a one-beat-long job instead
        bad = [b for b in bad if b["status"] != ToeplitzStatus.X_SHORT.value]
    for case in bad:
        case = dict(case)
        jobs.add(case.pop("n"), case.pop("m"), rng, **case)
        jobs.add(n, m, rng)
    await run_jobs(dut, jobs, rng, p_valid=0.8, p_ready=0.6)


async def count_job(dut, cycles: list[int]) -> None:
    """Append the cycles from ``cfg`` accepted to ``status`` accepted, both included."""
    await ReadOnly()
    while not (dut.cfg__valid.value and dut.cfg__ready.value):
        await RisingEdge(dut.clk)
        await ReadOnly()
    k = 1
    while not (dut.status__valid.value and dut.status__ready.value):
        await RisingEdge(dut.clk)
        await ReadOnly()
        k += 1
    cycles.append(k)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_cycle_count(dut):
    """With no stalls a job takes exactly :func:`job_cycles` cycles (throughput formula)."""
    rng = random.Random(cocotb.RANDOM_SEED + 3)
    await reset(dut)
    for n, m in ((JOB_N, JOB_M), (1, 1), (JOB_N, min(TILE + 1, JOB_M)),
                 (max(JOB_N // 3, 1), min(TILE, JOB_M))):
        jobs = Jobs()
        jobs.add(n, m, rng)
        cycles: list[int] = []
        cocotb.start_soon(count_job(dut, cycles))
        await run_jobs(dut, jobs, rng, p_valid=1.0, p_ready=1.0, tail=2)
        want = job_cycles(n, m, lanes=LANES, tile=TILE, karatsuba_base=KARATSUBA_BASE)
        dut._log.info("n=%d m=%d: %d cycles (formula %d), %.3f input bits/cycle",
                      n, m, cycles[0], want, n / cycles[0])
        assert cycles == [want], f"n={n} m={m}: {cycles} cycles, formula says {want}"


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_reset_mid_job(dut):
    """A one-clock reset in the middle of a pass or of a dump leaves nothing behind: the
    datapath registers have no reset, so the core must flush the accumulators itself (in
    the reset clock an x beat may still enter the products)."""
    rng = random.Random(cocotb.RANDOM_SEED + 4)
    await reset(dut)
    n, m = JOB_N, JOB_M
    x_beats = -(-n // LANES)
    # x is stored whole before the first pass, which runs x_beats cycles after its start,
    # the prime and the window fill: stop halfway through it and at random clocks of it,
    # and after the first y beat
    run_start = 1 + PRIME_CYCLES + TILE // LANES + 1
    points = [("x", x_beats, run_start + x_beats // 2), ("y", 1, 0)]
    points += [("x", x_beats, run_start + rng.randrange(x_beats)) for _ in range(4)]
    for stream_name, beats, extra in points:
        aborted = Jobs()
        aborted.add(n, m, rng)
        tasks = [cocotb.start_soon(drive(dut, name, getattr(aborted, name), rng, 1.0))
                 for name in ("cfg", "seed", "x")]
        dut.y__ready.value = 1
        taken = 0
        while taken < beats:
            await ReadOnly()
            valid = getattr(dut, f"{stream_name}__valid").value
            taken += bool(valid and getattr(dut, f"{stream_name}__ready").value)
            await RisingEdge(dut.clk)
        for _ in range(extra):
            await RisingEdge(dut.clk)
        for task in tasks:
            task.cancel()
        dut._log.info("reset %d cycles after %d %s beat(s) of a job", extra, taken, stream_name)
        await reset(dut, clocks=1)
        jobs = Jobs()
        for _ in range(3):
            jobs.add(rng.randint(1, JOB_N), rng.randint(1, JOB_M), rng)
        await run_jobs(dut, jobs, rng, p_valid=0.8, p_ready=0.8)
