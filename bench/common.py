"""What several benchmarks share: one simulated pass post-processed between fresh stores."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mozi.host.keys.keystore import KeyStore, init_link
from mozi.host.postprocessing.session import SessionConfig, SessionResult, run_session
from mozi.sim import link
from mozi.sim.tagfile import TagData


def session_on(sim: link.SimResult, config: SessionConfig) -> tuple[SessionResult, float]:
    """Run one session on a simulated pass between two new key stores: (result, wall s)."""
    tags = TagData(sim.tags_ps, sim.channels, 1, ("H", "V", "D", "A"), {})
    alice = link.AliceFile(sim.alice, sim.metadata())
    with tempfile.TemporaryDirectory() as d:
        sa = KeyStore(Path(d) / "alice.db", party="micius")
        sb = KeyStore(Path(d) / "bob.db", party="xinglong")
        try:
            init_link("bench", sa, sb)
            t0 = time.perf_counter()
            res = run_session(tags, alice, link="bench", store_alice=sa, store_bob=sb,
                              config=config)
            return res, time.perf_counter() - t0
        finally:
            sa.close()
            sb.close()
