"""IVF-PQ at 10M vectors: trained on a sample, filled shard by shard, merged into on-disk inverted lists
and memory-mapped for serving, so that no step holds all raw vectors in RAM.

    python benchmarks/vector_index_10m.py [--count 10000000] [--set low-rank] [--workdir DIR]

The vectors are those of ``benchmarks/vector_index.py`` (``low-rank``: normalize(A z + 0.5 e), A 256x32,
or ``spread-S``), drawn shard by shard and kept on disk in float16 (the full vectors a library keeps in
its database, for the exact re-scoring of a compressed index's shortlist). Steps, each timed:

1. exact top 10 of 1,000 held-out queries, streamed over every shard;
2. an ``IVF{nlist},PQ{m}`` index (inner product) trained on a random sample;
3. each shard added to a copy of the empty trained index and written to disk;
4. the shards' inverted lists merged into one ``.ivfdata`` file (FAISS's ``OnDiskInvertedLists``).

Serving runs in a fresh process that maps the merged index (``IO_FLAG_MMAP``): recall@10 against the
exact top 10, single-query p50 / p95 over the 1,000 queries at several nprobe, with the PQ scores alone
and with the shortlist (``--refine`` candidates) re-scored from the full vectors, read with ``pread``
as rows are read from a database; peak RSS of that process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402
from vector_data import hard_set  # noqa: E402

DIM = 256
SHARD = 1_000_000


def _peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _vectors_file(work: Path, name: str, count: int) -> Path:
    path = work / f"{name}-{count}.f16"
    if path.exists() and path.stat().st_size == count * DIM * 2:
        return path
    out = np.lib.format.open_memmap(work / "tmp.npy", mode="w+", dtype=np.float16, shape=(count, DIM))
    for shard, start in enumerate(range(0, count, SHARD)):
        m = min(SHARD, count - start)
        out[start : start + m] = hard_set(name, m, seed=1000 + shard)
    out.flush()
    del out
    raw = np.load(work / "tmp.npy", mmap_mode="r")
    raw.tofile(path)  # headerless, for pread by row
    del raw
    (work / "tmp.npy").unlink()
    return path


def _shards(path: Path, count: int):  # type: ignore[no-untyped-def]
    """(first id, float32 rows) a shard at a time, read (not mapped: the file stays out of this process)."""
    for start in range(0, count, SHARD):
        rows = np.fromfile(path, np.float16, min(SHARD, count - start) * DIM, offset=start * DIM * 2)
        yield start, rows.reshape(-1, DIM).astype(np.float32)


def _truth(path: Path, count: int, queries: np.ndarray, k: int = 10) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start, chunk in _shards(path, count):
        for sub in range(0, len(chunk), 50_000):
            block = chunk[sub : sub + 50_000]
            scores = queries @ block.T
            top = np.argpartition(-scores, k, axis=1)[:, :k]
            cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
            cand_i = np.concatenate([best_i, top + start + sub], axis=1)
            order = np.argsort(-cand_s, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def build(args: argparse.Namespace) -> dict:
    import faiss

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    path = _vectors_file(work, args.set, args.count)
    timings["vectors_s"] = time.perf_counter() - began
    queries = hard_set(args.set, args.queries, seed=7)
    began = time.perf_counter()
    if not (work / "truth.npy").exists() or not np.array_equal(np.load(work / "queries.npy"), queries):
        np.save(work / "queries.npy", queries)
        np.save(work / "truth.npy", _truth(path, args.count, queries))
        timings["exact_truth_s"] = time.perf_counter() - began

    began = time.perf_counter()
    rng = np.random.default_rng(0)
    share = args.train / args.count
    sample = np.concatenate([chunk[rng.random(len(chunk)) < share] for _, chunk in _shards(path, args.count)])
    index = faiss.index_factory(DIM, f"IVF{args.nlist},PQ{args.m}", faiss.METRIC_INNER_PRODUCT)
    # (index_factory turns on polysemous training, which made training 20x slower and is not used here)
    faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    index.train(sample)
    del sample
    faiss.write_index(index, str(work / "trained.index"))
    timings["train_s"] = time.perf_counter() - began
    rss_train = _peak_rss_gb()

    began = time.perf_counter()
    shard_files = []
    for start, chunk in _shards(path, args.count):
        shard = faiss.read_index(str(work / "trained.index"))
        shard.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
        name = str(work / f"shard-{start // SHARD}.index")
        faiss.write_index(shard, name)
        shard_files.append(name)
        del shard, chunk
        print(f"  shard {len(shard_files)} added ({time.perf_counter() - began:.0f} s)", flush=True)
    timings["add_s"] = time.perf_counter() - began

    began = time.perf_counter()
    from faiss.contrib.ondisk import merge_ondisk

    merged = faiss.read_index(str(work / "trained.index"))
    (work / "merged.ivfdata").unlink(missing_ok=True)
    merge_ondisk(merged, shard_files, str(work / "merged.ivfdata"))
    faiss.write_index(merged, str(work / "merged.index"))
    del merged
    for name in shard_files:
        os.unlink(name)
    timings["merge_s"] = time.perf_counter() - began
    return {
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "build_s": round(timings["train_s"] + timings["add_s"] + timings["merge_s"], 1),
        "build_peak_rss_gb": round(_peak_rss_gb(), 2), "train_peak_rss_gb": round(rss_train, 2),
        "index_bytes": (work / "merged.index").stat().st_size + (work / "merged.ivfdata").stat().st_size,
        "vectors_f16_bytes": path.stat().st_size,
    }


def serve(args: argparse.Namespace) -> dict:
    """In its own process: map the merged index and measure recall and single-query latency."""
    import faiss

    work = args.workdir
    # (its OnDiskInvertedLists map merged.ivfdata: the codes are paged in from disk as lists are scanned)
    index = faiss.read_index(str(work / "merged.index"))
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    row_bytes = DIM * 2
    fd = os.open(work / f"{args.set}-{args.count}.f16", os.O_RDONLY)

    def full(ids: np.ndarray) -> np.ndarray:  # rows by id, as a database returns them
        return np.frombuffer(b"".join(os.pread(fd, row_bytes, int(i) * row_bytes) for i in ids),
                             np.float16).reshape(len(ids), DIM).astype(np.float32)

    rows = []
    ivf = faiss.extract_index_ivf(index)
    for threads in args.threads:
        # One thread: the lists one query scans, in order; two: split between the cores (parallel_mode 1).
        ivf.parallel_mode = 0 if threads == 1 else 1
        faiss.omp_set_num_threads(threads)
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            for refine in (0, args.refine):
                latencies, found = [], 0
                for q in range(len(queries)):
                    began = time.perf_counter()
                    _, ids = index.search(queries[q : q + 1], refine or 10)
                    ids = ids[0][ids[0] >= 0]
                    if refine:
                        ids = ids[np.argsort(-(full(ids) @ queries[q]))[:10]]
                    latencies.append(time.perf_counter() - began)
                    found += len(set(ids[:10].tolist()) & set(truth[q].tolist()))
                latencies.sort()
                rows.append({"threads": threads, "nprobe": nprobe, "refine": refine,
                             "recall_at_10": round(found / truth.size, 4),
                             "p50_ms": round(1000 * statistics.median(latencies), 2),
                             "p95_ms": round(1000 * latencies[int(0.95 * len(latencies))], 2)})
                print(f"  {rows[-1]}", flush=True)
    os.close(fd)
    return {"serving": rows, "serve_peak_rss_gb": round(_peak_rss_gb(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000_000)
    parser.add_argument("--set", default="low-rank")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nlist", type=int, default=8192)
    parser.add_argument("--m", type=int, default=32, help="PQ bytes per vector")
    parser.add_argument("--train", type=int, default=300_000, help="training sample")
    parser.add_argument("--refine", type=int, default=200, help="shortlist re-scored from the full vectors")
    parser.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128])
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                        help="threads one query uses")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/blipsearch-10m"))
    parser.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-again", action="store_true",
                        help="measure the serving of the index built last time again (results merged in)")
    args = parser.parse_args()
    if args.serve_only:
        print(json.dumps(serve(args)))
        return
    if args.serve_again:
        from common import RESULTS

        previous = RESULTS / ("vector_index_10m.json" if args.count == 10_000_000 else
                              f"vector_index_10m_{args.count}.json")
        result = json.loads(previous.read_text())
        result.pop("benchmark", None), result.pop("machine", None)
        command = [sys.executable, __file__, "--serve-only", *[a for a in sys.argv[1:] if a != "--serve-again"]]
        served = subprocess.run(command, check=True, capture_output=True, text=True)
        result |= json.loads(served.stdout.strip().splitlines()[-1])
        print(save(previous.stem, result))
        return
    result = {"set": args.set, "count": args.count, "nlist": args.nlist, "pq_bytes": args.m, "train": args.train,
              "queries": args.queries, **build(args)}
    print(json.dumps(result), flush=True)
    command = [sys.executable, __file__, "--serve-only", *sys.argv[1:]]
    served = subprocess.run(command, check=True, capture_output=True, text=True)
    result |= json.loads(served.stdout.strip().splitlines()[-1])
    suffix = "" if args.count == 10_000_000 else f"_{args.count}"
    print(save(f"vector_index_10m{suffix}", result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
