"""Query latency on a 100k-image library: text search, with and without ITM reranking.

    python benchmarks/query_latency.py [--images 100000] [--queries 20]

Base-size BLIP (random weights: the real cost) on the CPU. The library's rows
and vectors are synthetic (clustered 256-d vectors), its files hard links to
a few real 12 MP JPEGs, so that reranking decodes real photos. Reranking the
top 16 is measured twice: recomputing the vision encoder for each candidate,
and with the vision-token cache holding the candidates.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, save, synthetic_library  # noqa: E402

QUERIES = ["a dog running on the beach", "two people in the snow", "a red car in the street at night",
           "a birthday cake with candles", "a sailing boat on a lake", "a cat sleeping on a sofa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--rerank-queries", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from blipsearch import Library

    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    library = synthetic_library(args.workdir, args.images, checkpoint, "latency-library")
    with Library(library, model=str(checkpoint), device="cpu", token_cache_gb=1.0) as lib:
        lib.search("warm up", k=10, rerank_hits=False)  # builds the vector index once

        def measure(n: int, **kwargs) -> list[float]:  # type: ignore[no-untyped-def]
            times = []
            for q in range(n):
                start = time.perf_counter()
                lib.search(QUERIES[q % len(QUERIES)], k=10, **kwargs)
                times.append(time.perf_counter() - start)
            return times

        plain = measure(args.queries, rerank_hits=False)
        cache, lib.token_cache = lib.token_cache, None
        no_cache = measure(args.rerank_queries, rerank_depth=16)
        lib.token_cache = cache
        measure(args.rerank_queries, rerank_depth=16)  # the cache now holds these candidates
        cached = measure(args.rerank_queries, rerank_depth=16)
    result = {
        "images": args.images,
        "text_search_p50_ms": 1000 * statistics.median(plain),
        "rerank16_recompute_p50_s": statistics.median(no_cache),
        "rerank16_token_cache_p50_s": statistics.median(cached),
        "token_cache_mb_per_image": cache.size / 1e6 / max(1, len(list(cache.folder.glob("*.npy"))))
        if cache else None,
    }
    path = save("query_latency_cpu", result)
    print("| query | p50 |\n|---|---|")
    print(f"| text, no reranking | {result['text_search_p50_ms']:.0f} ms |")
    print(f"| text, ITM rerank top 16, vision encoder recomputed | {result['rerank16_recompute_p50_s']:.2f} s |")
    print(f"| text, ITM rerank top 16, token cache | {result['rerank16_token_cache_p50_s']:.2f} s |")
    print(f"written to {path}")
    shutil.rmtree(library, ignore_errors=True)


if __name__ == "__main__":
    main()
