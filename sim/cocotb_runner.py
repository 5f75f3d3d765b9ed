"""Shared cocotb runner: Amaranth component → Verilog → Verilator build → cocotb test module.

Every gateware test goes through :func:`run_cocotb`::

    run_cocotb(TimeTagger(channels=4, phases=4), "tests.hdl.tb_time_tagger",
               params={"channels": 4, "phases": 4})

* The component is converted with :func:`amaranth.back.verilog.convert`; its ports become the
  Verilog top-level ports (``clk`` and ``rst`` are added by Amaranth for the ``sync`` domain).
* The Verilator build lives in ``build/cocotb/<toplevel>-<hash of the Verilog>/`` and is reused
  when the generated Verilog is unchanged, so tests of one parameter set share one build.
  A file lock makes concurrent pytest-xdist workers wait instead of building twice.
* ``params`` reach the cocotb test module as JSON in ``MOZI_PARAMS`` (see :func:`test_params`).
* ``SEED=<n>`` replays a run (cocotb prints the seed it uses); ``WAVES=1`` writes ``dump.vcd``
  (VCD) into the test directory.
* The runner fails the calling pytest test unless every cocotb test passed and at least one ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mozi.sim.verilator_build import (
    BUILD_ARGS,
    MAKE_VARS,
    REPO_ROOT,
    cached_build,
    make_flags,
    verilator_path,
)

__all__ = ["REPO_ROOT", "run_cocotb", "test_params", "verilator_path"]


def _waves() -> bool:
    return os.environ.get("WAVES", "0") not in ("", "0")


def run_cocotb(
    component,
    test_module: str,
    *,
    sources: Mapping[str, str] | None = None,
    params: Mapping[str, object] | None = None,
    toplevel: str | None = None,
    testcase: str | list[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    run_dir: Path | None = None,
    ports_only: bool = False,
) -> Path:
    """Build ``component`` under Verilator (cached) and run the cocotb ``test_module`` on it.

    Returns the results XML path. Raises ``AssertionError`` if any cocotb test failed or
    none ran. ``run_dir`` (default: under the build, named by the test module and params)
    receives the run's results and waveforms; concurrent runs of one build need their own.
    ``ports_only`` makes only the top-level ports visible to cocotb (instead of every signal,
    cocotb's default): Verilator may then optimise across the design, which runs a large
    top several times faster. Testbenches that look inside the design cannot use it.

    ``component`` may also be Verilog text (a design built outside Amaranth's ``convert``,
    such as a board top with its vendor cells); ``sources`` adds Verilog files, by name and
    text, that the design needs (models of those cells). Both are part of the cache key.
    """
    from amaranth.back import verilog
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    verilator_path()
    if isinstance(component, str):
        assert toplevel, "a Verilog design needs its toplevel named"
        text = component
    else:
        toplevel = toplevel or type(component).__name__.lower()
        text = verilog.convert(component, name=toplevel, emit_src=False)
    extra = dict(sources or {})
    waves = _waves()
    flags = f"waves={waves} {MAKE_VARS} {' '.join(BUILD_ARGS)} ports_only={ports_only}"
    flags += "".join(f"\0{name}\0{body}" for name, body in sorted(extra.items()))

    runner = get_runner("verilator")
    if ports_only:
        runner = _ports_only(runner)
    with cached_build("cocotb", toplevel, text + flags) as (build_dir, fresh):
        if fresh:
            source = build_dir / f"{toplevel}.v"
            source.write_text(text)
            for name, body in extra.items():
                (build_dir / name).write_text(body)
            with make_flags():
                runner.build(
                    sources=[source, *(build_dir / name for name in sorted(extra))],
                    hdl_toplevel=toplevel,
                    build_dir=build_dir,
                    build_args=list(BUILD_ARGS),
                    waves=waves,
                    always=True,
                    log_file=build_dir / "build.log",
                )
        # else: the executable in build_dir was built from this Verilog; runner.test reuses it.

    env = dict(extra_env or {})
    env["MOZI_PARAMS"] = json.dumps(dict(params or {}), sort_keys=True)
    # The runner hands this process's sys.path to the simulator as PYTHONPATH.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    seed = os.environ.get("SEED")
    tag = hashlib.sha256(env["MOZI_PARAMS"].encode()).hexdigest()[:8]
    name = f"{test_module.rsplit('.', 1)[-1]}-{tag}"
    test_dir = Path(run_dir) if run_dir is not None else build_dir / "runs" / name
    test_dir.mkdir(parents=True, exist_ok=True)
    results = runner.test(
        test_module=test_module,
        hdl_toplevel_lang="verilog",
        hdl_toplevel=toplevel,
        testcase=testcase,
        seed=int(seed) if seed else None,
        extra_env=env,
        waves=waves,
        build_dir=build_dir,
        test_dir=test_dir,
        results_xml=str(test_dir / "results.xml"),
    )
    num_tests, num_failed = get_results(Path(results))
    assert num_tests > 0, f"no cocotb test ran in {test_module}"
    assert num_failed == 0, f"{num_failed} of {num_tests} cocotb tests failed in {test_module}"
    return Path(results)


def _ports_only(runner):
    """The runner with cocotb's ``--public-flat-rw`` replaced by public top-level ports."""
    build_command = runner._build_command

    def command():
        cmds = build_command()
        for cmd in cmds:
            if "--public-flat-rw" in cmd:
                at = cmd.index("--public-flat-rw")
                cmd[at:at + 1] = ["--public-depth", "1"]
        return cmds
    runner._build_command = command
    return runner


def test_params() -> dict:
    """Inside a cocotb test module: the ``params`` given to :func:`run_cocotb`."""
    return json.loads(os.environ.get("MOZI_PARAMS", "{}"))


test_params.__test__ = False  # not a pytest test despite the name
