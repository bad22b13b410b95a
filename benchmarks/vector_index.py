"""The vector index at scale: exact vs IVF on synthetic clustered 256-d vectors.

    python benchmarks/vector_index.py [--count 1000000] [--queries 200]

Vectors are drawn around random centres and normalized, like embeddings of
real photos (uniform random vectors have no neighbours worth finding).
Recall@10 is measured against exact search on the same vectors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402


def clustered(n: int, dim: int = 256, clusters: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(0, clusters, m)] + 0.7 * rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    from blipsearch.index.vectors import VectorIndex

    data = clustered(args.count)
    ids = np.arange(1, args.count + 1, dtype=np.int64)
    queries = clustered(args.queries, seed=1)
    exact = VectorIndex(256)
    exact.add(ids, data)
    start = time.perf_counter()
    approx = VectorIndex.build(256, ids, data)
    build_s = time.perf_counter() - start
    _, truth = exact.search(queries, 10)

    def latencies(index: VectorIndex) -> tuple[list[float], np.ndarray]:
        times, found = [], []
        for q in queries:
            start = time.perf_counter()
            found.append(index.search(q[None], 10)[1][0])
            times.append(time.perf_counter() - start)
        return times, np.array(found)

    exact_t, _ = latencies(exact)
    rows = []
    for nprobe in (8, 16, 32, 64):
        approx.set_probes(nprobe)
        t, found = latencies(approx)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)]))
        rows.append({"nprobe": nprobe, "recall_at_10": recall, "p50_ms": 1000 * float(np.median(t))})
    approx.set_probes()
    t, found = latencies(approx)
    default = {"recall_at_10": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])),
               "p50_ms": 1000 * float(np.median(t))}
    result = {"count": args.count, "kind": approx.kind, "nlist": int(approx.index.nlist), "build_s": build_s,
              "exact_p50_ms": 1000 * float(np.median(exact_t)), "default_nprobe": default, "sweep": rows}
    path = save("vector_index", result)
    print(f"{args.count} vectors, {approx.kind}, nlist {result['nlist']}, built in {build_s:.1f} s; "
          f"exact p50 {result['exact_p50_ms']:.1f} ms")
    print("| nprobe | recall@10 | p50 ms |\n|---|---|---|")
    for row in rows:
        print(f"| {row['nprobe']} | {row['recall_at_10']:.3f} | {row['p50_ms']:.2f} |")
    print(f"default: recall {default['recall_at_10']:.3f}, p50 {default['p50_ms']:.2f} ms; written to {path}")


if __name__ == "__main__":
    main()
