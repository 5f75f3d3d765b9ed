"""Run every benchmark module ``bench/bench_*.py`` and save the numbers.

Each module provides ``run() -> dict`` (JSON-serialisable figures, printed as they come) and
may set ``TITLE``. Results are merged into ``bench/results.json`` under the module's name, with
the machine and date, so numbers from one run stay together. ``python -m bench NAME …`` runs
only the named modules.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if argv:
        wanted = {a if a.startswith("bench_") else f"bench_{a}" for a in argv}
        unknown = wanted - set(names)
        if unknown:
            print(f"bench: error: no benchmark named {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform()}
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        title = getattr(module, "TITLE", name)
        print(f"== {title}", flush=True)
        t0 = time.perf_counter()
        figures = module.run()
        figures["_seconds"] = round(time.perf_counter() - t0, 2)
        figures["_date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        for key, value in figures.items():
            if not key.startswith("_"):
                print(f"   {key}: {json.dumps(value)}", flush=True)
        results[name.removeprefix("bench_")] = figures
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        tmp.replace(RESULTS)
    print(f"saved {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
