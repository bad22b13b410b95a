"""Searching images that have many ITC vectors (BLIP-2: 32 per image): how many candidates from the
pooled-vector index must be scored exactly to equal brute-force max-sim.

    python benchmarks/multivector.py [--images 100000 1000000] [--queries 200]

Synthetic BLIP-2-like vectors that are not trivially clustered: an image's content is a
mixture of two of 500 overlapping topics plus its own detail; each of its 32 query
vectors is that content plus a direction shared by that query slot across all images,
plus noise of its own. A text query is its target's content as one query slot sees it
(content plus that slot's direction) plus noise: a caption about one aspect, which
one of the 32 vectors carries best, the case a pooled shortlist can miss.

Truth is brute-force max-sim over every vector, streamed in chunks (1M images hold
32M vectors, 32 GB in fp32). The candidate stage is exact inner-product search over the
pooled vectors (what a flat library index does; an IVF index adds its own recall
loss, measured in benchmarks/vector_index.py). Reported per shortlist size: recall@10
of the exactly rescored shortlist against brute force, and the time to score it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

DIM, QUERIES, TOPICS, CHUNK = 256, 32, 500, 20_000
SHORTLISTS = (100, 300, 1000, 3000, 10000)
# Lengths of an image's detail beside its topics, of a query slot's shared direction, of a query
# vector's own noise, and of a text's noise around the query vector it aims at (all unit directions).
DETAIL, SLOT, OWN, TEXT_NOISE = 0.4, 0.5, 1.0, 1.2
MODES = ("aspect", "vector")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class World:
    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.topics = _unit(rng.standard_normal((TOPICS, DIM)))
        self.slots = _unit(rng.standard_normal((QUERIES, DIM)))

    def chunk(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(count, QUERIES, DIM) vectors of images start..start+count, the same on every call, and
        each image's content vector (count, DIM)."""
        rng = np.random.default_rng([self.seed, start])
        pick = rng.integers(0, TOPICS, (count, 2))
        mix = rng.random((count, 1))
        content = _unit(mix * self.topics[pick[:, 0]] + (1 - mix) * self.topics[pick[:, 1]]
                        + DETAIL * _unit(rng.standard_normal((count, DIM))))
        vectors = (content[:, None, :] + SLOT * self.slots[None, :, :]
                   + OWN * _unit(rng.standard_normal((count, QUERIES, DIM))))
        return _unit(vectors), content


def run(images: int, n_queries: int, seed: int = 0) -> dict:
    world = World(seed)
    rng = np.random.default_rng(seed + 1)
    targets = np.sort(rng.choice(images, n_queries, replace=False))
    slot = rng.integers(0, QUERIES, n_queries)
    began = time.perf_counter()
    pooled = np.zeros((images, DIM), np.float32)
    aspect = np.zeros((n_queries, DIM), np.float32)
    aimed = np.zeros((n_queries, DIM), np.float32)
    for start in range(0, images, CHUNK):
        block, content = world.chunk(start, min(CHUNK, images - start))
        pooled[start : start + len(block)] = _unit(block.mean(axis=1))
        inside = (targets >= start) & (targets < start + len(block))
        # "aspect": the target's content as one query slot sees it; "vector": one of its query
        # vectors itself, own noise included (what only that vector carries).
        aspect[inside] = content[targets[inside] - start] + SLOT * world.slots[slot[inside]]
        aimed[inside] = block[targets[inside] - start, slot[inside]]
    texts = _unit(np.concatenate([aspect, aimed]) + TEXT_NOISE * _unit(rng.standard_normal((2 * n_queries, DIM))))
    n_queries *= 2
    generate_s = time.perf_counter() - began

    index = faiss.IndexFlatIP(DIM)
    index.add(pooled)
    t0 = time.perf_counter()
    _, candidates = index.search(texts, max(SHORTLISTS))
    candidate_ms = 1000 * (time.perf_counter() - t0) / n_queries

    # One streamed pass: every image's max-sim for every query (the truth), kept as top 10, and the
    # exact scores of each query's candidates, looked up as their chunks pass.
    best = np.full((n_queries, 10), -np.inf, np.float32)
    best_ids = np.full((n_queries, 10), -1, np.int64)
    cand_scores = np.zeros(candidates.shape, np.float32)
    t0 = time.perf_counter()
    for start in range(0, images, CHUNK):
        block, _ = world.chunk(start, min(CHUNK, images - start))
        scores = (texts @ block.reshape(-1, DIM).T).reshape(n_queries, len(block), QUERIES).max(axis=2)
        merged = np.concatenate([best, scores], axis=1)
        merged_ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + len(block)),
                                                               (n_queries, len(block)))], axis=1)
        top = np.argpartition(-merged, 9, axis=1)[:, :10]
        best, best_ids = np.take_along_axis(merged, top, 1), np.take_along_axis(merged_ids, top, 1)
        inside = (candidates >= start) & (candidates < start + len(block))
        rows, cols = np.nonzero(inside)
        cand_scores[rows, cols] = scores[rows, candidates[rows, cols] - start]
    truth_s = time.perf_counter() - t0

    modes = {}
    half = n_queries // 2
    for m, mode in enumerate(MODES):
        part = slice(m * half, (m + 1) * half)
        rows = []
        for size in SHORTLISTS:
            if size > images:
                continue
            ids, sc = candidates[part, :size], cand_scores[part, :size]
            found = np.take_along_axis(ids, np.argsort(-sc, axis=1)[:, :10], 1)
            recall = float(np.mean([len(set(f) & set(t)) / 10
                                    for f, t in zip(found.tolist(), best_ids[part].tolist())]))
            # The exact stage alone (vectors in RAM): a size x 32 x 256 product per query.
            block, _ = world.chunk(0, size)
            t0 = time.perf_counter()
            for q in texts[:20]:
                (block.reshape(-1, DIM) @ q).reshape(size, QUERIES).max(axis=1)
            score_ms = 1000 * (time.perf_counter() - t0) / 20
            rows.append({"shortlist": size, "recall_at_10": round(recall, 4), "exact_scoring_ms": round(score_ms, 2),
                         "stored_mb_read": round(size * QUERIES * DIM * 4 / 2**20, 1)})
            print(f"{images:>9,} images  {mode:>6} texts  shortlist {size:>6}: recall@10 {recall:.4f}  "
                  f"exact scoring {score_ms:.1f} ms  ({rows[-1]['stored_mb_read']} MB of vectors)", flush=True)
        target_r10 = float(np.mean([t in set(b) for t, b in zip(targets.tolist(), best_ids[part].tolist())]))
        modes[mode] = {"brute_force_target_recall_at_10": round(target_r10, 4), "shortlists": rows}
    return {"images": images, "vectors": images * QUERIES, "queries_per_mode": half,
            "generate_s": round(generate_s, 1), "brute_force_s": round(truth_s, 1),
            "candidate_search_ms": round(candidate_ms, 2), "texts": modes}


def database_fetch(images: int, shortlists: tuple[int, ...], repeat: int = 5) -> list[dict]:
    """Time to read a shortlist's stored vectors (32 x 256 floats per image) from a SQLite library database
    of ``images`` rows, as a search does (Database.vectors_by_ids), page cache warm."""
    import os
    import tempfile

    from blipsearch.store.database import Database, utcnow, vector_to_bytes
    from blipsearch.store.schema import ImageRow

    world = World(7)
    folder = Path(tempfile.mkdtemp(prefix="multivector-db-"))
    db = Database(f"sqlite:///{folder / 'library.db'}")
    db.set_model("synthetic", "fp", DIM, "blip-2", QUERIES)
    now = utcnow()
    for start in range(0, images, CHUNK):
        block, _ = world.chunk(start, min(CHUNK, images - start))
        with db.transaction() as session:
            for i, vectors in enumerate(block, start):
                session.add(ImageRow(path=f"/photos/{i:07d}.jpg".encode(), size=1, mtime_ns=1, content_hash=f"{i:064x}",
                                     model="fp", vector=vector_to_bytes(vectors), indexed_at=now))
    rng = np.random.default_rng(0)
    rows = []
    for size in shortlists:
        ids = [rng.choice(images, size, replace=False).tolist() for _ in range(repeat + 1)]
        db.vectors_by_ids(ids[0], "fp", DIM, queries=True)
        times = []
        for chosen in ids[1:]:
            t0 = time.perf_counter()
            db.vectors_by_ids([i + 1 for i in chosen], "fp", DIM, queries=True)
            times.append(1000 * (time.perf_counter() - t0))
        rows.append({"shortlist": size, "fetch_ms_median": round(float(np.median(times)), 1)})
        print(f"database of {images:,} images: reading {size} images' vectors takes {rows[-1]['fetch_ms_median']} ms",
              flush=True)
    size_mb = round(os.path.getsize(folder / "library.db") / 2**20)
    db.engine.dispose()
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return [{"database_mb": size_mb}, *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--db-images", type=int, default=100_000,
                        help="Rows of the SQLite database the fetch of shortlisted vectors is timed on (0: skip).")
    parser.add_argument("--out", default="multivector")
    args = parser.parse_args()
    fetch = database_fetch(args.db_images, (100, 300, 1000, 3000)) if args.db_images else []
    results = [run(n, args.queries) for n in args.images]
    print(save(args.out, {"dim": DIM, "queries_per_image": QUERIES, "topics": TOPICS,
                          "lengths": {"detail": DETAIL, "slot": SLOT, "own": OWN, "text_noise": TEXT_NOISE},
                          "database_fetch": fetch, "runs": results}))


if __name__ == "__main__":
    main()
