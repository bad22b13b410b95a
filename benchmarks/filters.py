"""Filtered vector search at 100k and 1M vectors: latency and recall against brute force.

    python benchmarks/filters.py [--sizes 100000,1000000] [--queries 50]

The index `blipsearch` builds for that many vectors (exact below 200,000, IVF
above; synthetic clustered 256-d vectors as in vector_index.py), searched for
the top 10 among a random 1 % and a random 10 % of the ids (what a folder or
date filter leaves). Recall@10 is against brute force over the same subset.
The filter's ids are given; the SQL query that finds them is not timed here,
and the full vectors of a small subset come from memory instead of the
database (what `Library.search` reads from SQLite for subsets up to
``EXACT_SUBSET_LIMIT``).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    from blipsearch.ann.index import EXACT_SUBSET_LIMIT, VectorIndex

    queries = clustered(args.queries, seed=1)
    result: dict[str, object] = {"exact_subset_limit": EXACT_SUBSET_LIMIT}
    for n in [int(x) for x in args.sizes.split(",")]:
        data = clustered(n)
        ids = np.arange(1, n + 1, dtype=np.int64)
        index = VectorIndex.build(256, ids, data)

        def exact(wanted: list[int]) -> np.ndarray:
            return data[np.asarray(wanted, np.int64) - 1]

        rows = {}
        for share in (0.01, 0.10):
            among = np.sort(np.random.default_rng(7).choice(ids, int(n * share), replace=False))
            times, recalls = [], []
            for q in queries:
                start = time.perf_counter()
                _, found = index.search(q[None], 10, exact=exact, among=among)
                times.append(time.perf_counter() - start)
                truth = among[np.argsort(-(data[among - 1] @ q), kind="stable")[:10]]
                recalls.append(len(set(found[0].tolist()) & set(truth.tolist())) / 10)
            rows[f"{share:.0%}"] = {"p50_ms": 1000 * float(np.median(times)), "recall_at_10": float(np.mean(recalls)),
                                    "subset": len(among)}
        unfiltered = []
        for q in queries:
            start = time.perf_counter()
            index.search(q[None], 10)
            unfiltered.append(time.perf_counter() - start)
        result[str(n)] = {"kind": index.kind, "filters": rows, "unfiltered_p50_ms": 1000 * float(np.median(unfiltered))}
        print(n, result[str(n)], flush=True)
    path = save("filters", result)
    print("| vectors | index | filter | ids left | p50 | recall@10 |\n|---|---|---|---|---|---|")
    for n, row in result.items():
        if not isinstance(row, dict):
            continue
        print(f"| {int(n):,} | {row['kind']} | none | {int(n):,} | {row['unfiltered_p50_ms']:.1f} ms | |")
        for share, r in row["filters"].items():
            print(f"| {int(n):,} | {row['kind']} | {share} | {r['subset']:,} | {r['p50_ms']:.1f} ms | "
                  f"{100 * r['recall_at_10']:.1f} % |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
