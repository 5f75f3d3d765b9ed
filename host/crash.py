"""Crash points: where a test may kill this process with SIGKILL, to prove crash safety.

A node reads ``MOZI_CRASH_AT=name`` or ``name#k`` from its environment and kills itself (with
``SIGKILL``: no clean-up, no ``finally``, no flush) the ``k``-th time (default the first) it
reaches :func:`crashpoint` ``(name)``. Names are the session's storage steps
(``bob-staged``, ``alice-before-commit``, ``alice-committed``, ``bob-confirmed``, …) and
``send`` / ``recv`` before every frame a node sends and after every frame it receives, so a
test can stop either node at any message of a session. Without the variable a crash point
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crashpoint"]

#: Environment variable naming the crash point.
CRASH_ENV = "MOZI_CRASH_AT"

_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Die here by SIGKILL if :data:`CRASH_ENV` names this point and this is its turn."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("#")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
