"""The cores placed by :mod:`bench.synth`, with the parameters each row uses."""

from mozi.firmware.receiver import Receiver, ReceiverCores
from mozi.firmware.transmitter import Transmitter
from mozi.hdl.alice_sifter import AliceSifter
from mozi.hdl.basis_decoder import BasisDecoder
from mozi.hdl.pattern_generator import PatternGenerator
from mozi.hdl.slot_assigner import SlotAssigner
from mozi.hdl.time_tagger import TimeTagger
from mozi.hdl.toeplitz_hasher import ToeplitzHasher

from bench.synth import CoreSpec

CORES = [
    CoreSpec("TimeTagger", lambda: TimeTagger(channels=4, phases=2),
             params={"channels": 4, "phases": 2, "timestamp_width": 48},
             note="one event per clock"),
    CoreSpec("SlotAssigner", lambda: SlotAssigner(period_width=32),
             params={"timestamp_width": 48, "frac_bits": 16, "period_width": 32},
             note="chunk-serial, bit-serial divider: 84 - 16 s clocks per event "
                  "(s zero chunks skipped)"),
    CoreSpec("BasisDecoder", lambda: BasisDecoder(),
             params={"slot_width": 48}, note="one event per clock"),
    CoreSpec("AliceSifter", lambda: AliceSifter(lanes=4), devices=("ecp5-85f",),
             params={"slot_width": 48, "lanes": 4},
             note="1 + B + R' + E clocks per block of B beats: ~lanes slots per clock"),
    CoreSpec("PatternGenerator", lambda: PatternGenerator(), devices=("ecp5-85f",),
             params={}, note="one slot per clock: 100 M slots/s at 100 MHz"),
    CoreSpec("ReceiverCores", lambda: ReceiverCores(phases=2), devices=("ice40up5k",),
             params={"phases": 2}, note="tagger + slot assigner + decoder, must reach 48 MHz"),
    # lanes 128 × tile 1024 (131 072 MACs per clock, 777 505 cycles per (10^6, 10^5) job)
    # is what 100 Mbit/s needs; nextpnr-ecp5 has not finished routing it (over two hours for
    # the previous datapath, half the arcs still unrouted after 31 minutes for this one; see
    # docs/gateware-toeplitz.md), so the table carries the same architecture at a quarter of
    # the datapath.
    CoreSpec("ToeplitzHasher",
             lambda: ToeplitzHasher(lanes=128, tile=1024, max_n=10**6, max_m=10**5,
                                    karatsuba_base=8, slice_memory=True, slice_width=4,
                                    bank_depth=4096),
             devices=("ecp5-85f",),
             params={"lanes": 128, "tile": 1024, "max_n": 10**6, "max_m": 10**5,
                     "karatsuba_base": 8, "slice_memory": True, "slice_width": 4,
                     "bank_depth": 4096},
             note="4 + ceil((n+m-1)/lanes) + ceil(n/lanes) + ceil(m/tile)·(ceil(n/lanes)"
                  " + 3·tile/lanes + 12) + final_beats (job_cycles)",
             # XOR trees and the seed re-alignment shifter map to fewer LUT4s without the
             # PFUMX/L6MUX wide-LUT cells: 38 105 LUT4 against 42 759 LUT4 + 7 529 wide-LUT
             # multiplexers for the same 128 × 1024 netlist (before the dump wave)
             synth_options="-nowidelut"),
    CoreSpec("ToeplitzHasherDefault", lambda: ToeplitzHasher(), devices=("ice40up5k",),
             params={"lanes": 8, "tile": 64, "max_n": 4096, "max_m": 1024},
             note="small configuration for an iCE40 receiver"),
    # the tagger samples the pins at 48 MHz (DDR: 2 phases, 10.4 ns ticks); the slot assigner,
    # decoder and link run at half that, as the iCEBreaker's PLL gives both (GENCLK_HALF)
    CoreSpec("ReceiverTop", lambda: Receiver(phases=2, uart=True), devices=("ice40up5k",),
             params={"phases": 2, "uart": True, "max_payload": 4096, "sample_clock": True},
             note="receiver firmware: cores, random FIFO, link with UART; tagger at 48 MHz, "
                  "the rest at 24 MHz",
             clocks={"clk": 24.0, "sample_clk": 48.0}),
    CoreSpec("TransmitterTop", lambda: Transmitter(uart=True), devices=("ecp5-85f",),
             params={"uart": True, "max_payload": 4096, "records": 65536, "segments": 1024},
             note="transmitter firmware: AliceSifter, record memory, link with UART"),
]
