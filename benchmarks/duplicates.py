"""Near-duplicate search at scale: wall time and recall of planted copies.

    python benchmarks/duplicates.py [--sizes 100000,1000000] [--exact-check 100000]

Synthetic clustered 256-d vectors (as in vector_index.py) with 1 % of them
planted as near-copies of another (the vector plus noise: cosine 0.96-0.99 to
the original, like a resized or re-encoded photo). Measured: the pair search
and grouping of `blipsearch duplicates` (``similar_pairs`` + ``components``) at
the default threshold, exact all-against-all up to ``EXACT_LIMIT`` and the IVF
index above it, and the share of planted pairs found. At ``--exact-check`` size
both routes run, so the IVF route's misses are counted against exact search.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save
from vector_data import clustered


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    vectors = clustered(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    copies = rng.choice(n, n // 100, replace=False)
    originals = rng.integers(0, n, len(copies))
    pairs = set()
    for c, o in zip(copies.tolist(), originals.tolist()):
        if c == o:
            continue
        x = vectors[o] + rng.uniform(0.009, 0.018) * rng.standard_normal(vectors.shape[1]).astype(np.float32)
        vectors[c] = x / np.linalg.norm(x)
        pairs.add((min(c, o), max(c, o)))
    return vectors, pairs


def run(vectors: np.ndarray, pairs: set[tuple[int, int]], exact_limit: int) -> dict[str, float]:
    from blipsearch.search.duplicates import (
        DEFAULT_THRESHOLD,
        components,
        similar_pairs,
    )

    start = time.perf_counter()
    firsts, seconds = similar_pairs(vectors, DEFAULT_THRESHOLD, exact_limit)
    groups = components(len(vectors), firsts, seconds)
    wall = time.perf_counter() - start
    found = set(zip(firsts.tolist(), seconds.tolist()))
    above = {p for p in pairs if float(vectors[p[0]] @ vectors[p[1]]) >= DEFAULT_THRESHOLD}
    return {"wall_s": wall, "pairs_found": len(found), "groups": len(groups),
            "planted_pairs_at_threshold": len(above),
            "planted_recall": len(above & found) / max(1, len(above))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--exact-check", type=int, default=100_000)
    args = parser.parse_args()
    from blipsearch.search.duplicates import EXACT_LIMIT

    result: dict[str, object] = {"exact_limit": EXACT_LIMIT}
    for n in [int(x) for x in args.sizes.split(",")]:
        vectors, pairs = planted(n)
        row = {"default": run(vectors, pairs, EXACT_LIMIT)}
        if n == args.exact_check and n > EXACT_LIMIT:
            row["exact"] = run(vectors, pairs, n)
        result[str(n)] = row
        print(n, row, flush=True)
    path = save("duplicates", result)
    print("| images | route | wall time | pairs found | planted pairs found |\n|---|---|---|---|---|")
    for n, row in result.items():
        if not isinstance(row, dict):
            continue
        for route, r in row.items():
            kind = route if route == "exact" else ("exact" if int(n) <= EXACT_LIMIT else "IVF")
            print(f"| {int(n):,} | {kind} | {r['wall_s']:.1f} s | {r['pairs_found']:,} | "
                  f"{100 * r['planted_recall']:.1f} % of {r['planted_pairs_at_threshold']:,} |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
