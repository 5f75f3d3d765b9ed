"""Helpers for tests that need party stores, shared keys and link authentication keys."""

from __future__ import annotations

import numpy as np
from mozi.host.keys.keystore import KeyStore, init_link, key_layout, new_key_ids


def random_bits(n: int, seed: int) -> np.ndarray:
    """``n`` reproducible test bits."""
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def stores(tmp_path, *parties: str) -> list[KeyStore]:
    """A new key store ``<party>.db`` in ``tmp_path`` for each party."""
    return [KeyStore(tmp_path / f"{p}.db", party=p) for p in parties]


def share_key(a: KeyStore, b: KeyStore, link: str, key, *, first_share: float = 0.5,
              block_bits: int | None = None, meta: dict | None = None) -> list[str]:
    """Store ``key`` on ``link`` at both ends, the first ``first_share`` for ``a`` to send with.

    Returns the key IDs (the same at both ends).
    """
    layout = key_layout(len(key), (a.party, b.party), first_share=first_share,
                        block_bits=block_bits)
    ids = new_key_ids(len(layout))
    a.add_key(link, key, peer=b.party, layout=layout, key_ids=ids, meta=meta)
    b.add_key(link, key, peer=a.party, layout=layout, key_ids=ids, meta=meta)
    return ids


def linked_stores(tmp_path, link: str, first: str, second: str, **init) -> list[KeyStore]:
    """Two parties' new stores holding a matching authentication key for ``link``."""
    a, b = stores(tmp_path, first, second)
    init_link(link, a, b, **init)
    return [a, b]
