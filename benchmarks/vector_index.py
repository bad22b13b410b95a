"""The vector index at scale, on data hard enough to tell settings apart.

    python benchmarks/vector_index.py [--count 1000000] [--queries 1000] [--sets low-rank,spread-1.0,spread-1.5]

Three sets of L2-normalized 256-d vectors (the easy well-separated clusters
that every setting searched perfectly are gone):

- ``low-rank``: x = normalize(A z + 0.5 e), A 256x32, z and e standard normal;
- ``spread-1.0`` / ``spread-1.5``: 50,000 random centres, each vector a centre
  plus that much noise per dimension (relative to the centre's spread).

For each: `VectorIndex.build` as a library makes it (an IVF index above
FLAT_LIMIT, its probes tuned to RECALL_TARGET on a sample of the vectors
themselves, or exact search when that is no slower), the build time, the
index's size, what the tuner picked and measured; then, on held-out queries
drawn from the same distribution (truth from exact inner-product search),
recall@10 and single-query p50/p95 at several probe counts, and exact search;
and filtered search (random filters keeping 6, 10 and 30 % of the ids, those
above the exact-subset limit) at the tuned setting and, for comparison, at the
unfiltered number of lists.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save
from vector_data import hard_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--sets", default="low-rank,spread-1.0,spread-1.5")
    args = parser.parse_args()

    import faiss

    from blipsearch.ann import index as vectors_module
    from blipsearch.ann.index import VectorIndex

    result: dict[str, object] = {"count": args.count, "recall_target": vectors_module.RECALL_TARGET}
    for name in args.sets.split(","):
        data = hard_set(name, args.count, seed=0)
        ids = np.arange(1, args.count + 1, dtype=np.int64)
        queries = hard_set(name, args.queries, seed=1)
        exact = faiss.IndexFlatIP(256)
        exact.add(data)
        _, truth = exact.search(queries, 10)
        truth_ids = truth + 1

        start = time.perf_counter()
        built = VectorIndex.build(256, ids, data)
        build_s = time.perf_counter() - start
        picked = {"kind": built.kind, "nprobe": built.nprobe, "tuned_recall_at_10": built.recall,
                  "tuning": built.tuning, "build_s": build_s, "single_query_ms": built.single_ms,
                  "filtered_nprobe": built.filtered_nprobe, "filtered_tuned_recall_at_10": built.filtered_recall,
                  "filtered_tuning": built.filtered_tuning,
                  "size_mb": len(faiss.serialize_index(built.index)) / 1e6}

        def measure(index: VectorIndex, queries: np.ndarray = queries, truth_ids: np.ndarray = truth_ids) -> dict[str, float]:
            _, found = index.search(queries, 10)
            recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth_ids, found)]))
            times = []
            for q in queries[: args.latency_queries]:
                t = time.perf_counter()
                index.search(q[None], 10)
                times.append(1000 * (time.perf_counter() - t))
            return {"recall_at_10": recall, "p50_ms": statistics.median(times),
                    "p95_ms": float(np.percentile(times, 95))}

        picked["held_out"] = measure(built)

        def filtered(index: VectorIndex, fraction: float, ids: np.ndarray = ids, data: np.ndarray = data,
                     queries: np.ndarray = queries) -> dict[str, float]:
            """Recall@10 and p50 of held-out queries under a random filter keeping ``fraction`` of the ids."""
            among = np.sort(np.random.default_rng(7).choice(ids, int(fraction * len(ids)), replace=False))
            inner = faiss.IndexFlatIP(256)
            inner.add(data[among - 1])
            _, rows = inner.search(queries, 10)
            truth = among[rows]
            _, found = index.search(queries, 10, among=among)
            times = []
            for q in queries[: args.latency_queries // 4]:
                t = time.perf_counter()
                index.search(q[None], 10, among=among)
                times.append(1000 * (time.perf_counter() - t))
            return {"fraction": fraction, "ids": len(among),
                    "recall_at_10": float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])),
                    "p50_ms": statistics.median(times)}

        fractions = [f for f in (0.06, 0.1, 0.3) if f * args.count > vectors_module.EXACT_SUBSET_LIMIT]
        picked["filtered"] = [filtered(built, f) for f in fractions]
        if built.kind != "flat":  # what the unfiltered setting alone would give
            kept_filtered = built.filtered_nprobe
            built.filtered_nprobe = 0
            picked["filtered_at_unfiltered_nprobe"] = [filtered(built, f) for f in fractions]
            built.filtered_nprobe = kept_filtered
        kept = vectors_module.PREFER_EXACT, vectors_module.FLAT_LIMIT
        vectors_module.PREFER_EXACT, vectors_module.FLAT_LIMIT = False, min(kept[1], args.count // 2)
        ivf = built if built.kind != "flat" else VectorIndex.build(256, ids, data)
        vectors_module.PREFER_EXACT, vectors_module.FLAT_LIMIT = kept
        sweep = []
        for nprobe in (16, 64, 128, 256, 512, 1024):
            ivf.set_probes(nprobe)
            sweep.append({"nprobe": nprobe, **measure(ivf)})
        flat = VectorIndex(256)
        flat.add(ids, data)
        row = {"picked": picked, "sweep": sweep, "exact": measure(flat),
               "nlist": int(faiss.extract_index_ivf(ivf.index).nlist)}
        result[name] = row
        print(name, {k: v for k, v in picked.items() if k != "tuning"}, flush=True)
        del flat, ivf, built, exact
    path = save("vector_index", result)
    for name in args.sets.split(","):
        row = result[name]  # type: ignore[index]
        p = row["picked"]
        print(f"\n{name}: built {p['kind']} in {p['build_s']:.0f} s ({p['size_mb']:.0f} MB), nprobe {p['nprobe']}, "
              f"tuned recall {p['tuned_recall_at_10']}, held-out recall {p['held_out']['recall_at_10']:.3f}, "
              f"p50 {p['held_out']['p50_ms']:.1f} ms")
        print("| setting | recall@10 | p50 | p95 |\n|---|---|---|---|")
        for r in row["sweep"]:
            print(f"| IVF nprobe {r['nprobe']} | {r['recall_at_10']:.3f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms |")
        e = row["exact"]
        print(f"| exact | {e['recall_at_10']:.3f} | {e['p50_ms']:.1f} ms | {e['p95_ms']:.1f} ms |")
        print(f"single query, tuned vs exact: {p['single_query_ms']}; filtered nprobe {p['filtered_nprobe']} "
              f"(tuned recall {p['filtered_tuned_recall_at_10']})")
        for f in p["filtered"]:
            print(f"  filter {f['fraction']:.0%} ({f['ids']:,} ids): recall {f['recall_at_10']:.3f}, p50 {f['p50_ms']:.1f} ms")
        for f in p.get("filtered_at_unfiltered_nprobe", []):
            print(f"  ... at the unfiltered nprobe: recall {f['recall_at_10']:.3f}, p50 {f['p50_ms']:.1f} ms")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
