"""Synthetic 256-d vector sets the vector-index benchmarks share: clustered vectors, and the harder
sets (low-rank, spread-N) whose nearest neighbours an approximate index finds less easily."""

from __future__ import annotations

import numpy as np


def hard_set(name: str, n: int, seed: int, dim: int = 256) -> np.ndarray:
    """Vectors of the set ``name``: the same distribution for any ``seed`` (the seed draws the rows)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    if name == "low-rank":
        basis = np.random.default_rng(11).standard_normal((dim, 32)).astype(np.float32)
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            x = rng.standard_normal((m, 32)).astype(np.float32) @ basis.T
            out[start : start + m] = x + 0.5 * np.sqrt(32) * rng.standard_normal((m, dim)).astype(np.float32)
    else:
        spread = float(name.split("-")[1])
        centres = np.random.default_rng(12).standard_normal((50_000, dim)).astype(np.float32)
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            out[start : start + m] = (centres[rng.integers(0, len(centres), m)]
                                      + spread * rng.standard_normal((m, dim)).astype(np.float32))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def clustered(n: int, dim: int = 256, clusters: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(0, clusters, m)] + 0.7 * rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
