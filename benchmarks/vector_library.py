"""A library's own vector index past the memory budget: built from its database a chunk at a time, and
memory-mapped by the processes that search it.

    python benchmarks/vector_library.py [--count 2000000] [--budget-mb 1024] [--readers 4] [--workdir DIR]

Fills a SQLite library database with ``--count`` vectors of the hard ``low-rank`` set of
``benchmarks/vector_index.py`` (float32 blobs, as an index run stores them), with a memory budget that
makes the index compressed (``ivf-pq``, as libraries of over 4M images get with the default 4 GB).
Then, each in a fresh process, so that peak memory is its own:

1. ``whole``: the same build given every vector in one array, as rebuilds read them before (their
   tuning's second, exact copy of the vectors, now gone too, not counted);
2. ``build``: the same index as a library rebuilds it (``VectorMirror.rebuild``: training sample, chunks of
   rows, tuning with exact top-10 streamed over the chunks), saved to the vector file;
3. ``recall``: recall@10 of the saved index on 1,000 held-out queries against exact search over the
   database's vectors;
4. ``latency``: one process alone, with one FAISS thread, answering 200 single queries (re-scored from
   the database): p50 / p95;
5. ``--readers`` processes at once, each loading the vector file and answering 200 single queries
   (re-scored from the database, as searches are); each reports its resident and proportional
   memory (``Rss``/``Pss`` of ``/proc/self/smaps_rollup``) with the file mapped, then with the index
   copied into memory (as version 1 files were read).

Reports the time and peak RSS of 1 and 2, the recall of 3, the latency of 4, and per-reader memory
and p50 latency of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402
from vector_data import hard_set  # noqa: E402

FP = "bench-model"
DIM = 256


def _memory() -> dict[str, float]:
    """This process's peak RSS (VmHWM) and its Rss / Pss now, in GB."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["peak_rss_gb"] = int(line.split()[1]) / 2**20
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name = line.split(":")[0]
        if name in ("Rss", "Pss"):
            out[f"{name.lower()}_gb"] = int(line.split()[1]) / 2**20
    return {k: round(v, 3) for k, v in out.items()}


def _fill(url: str, count: int) -> None:
    from blipsearch.store.database import Database, utcnow, vector_to_bytes

    db = Database(url)
    db.fulltext = False
    now = utcnow()
    step = 50_000
    for start in range(0, count, step):
        m = min(step, count - start)
        vectors = hard_set("low-rank", m, seed=start // step)
        with db.transaction() as session:
            session.execute(text("INSERT INTO images (path, size, mtime_ns, content_hash, model, vector, "
                                 "indexed_at, generation) VALUES (:p, 1, 0, :h, :m, :v, :t, 0)"),
                            [{"p": f"/photos/{start + i:08d}.jpg".encode(), "h": f"{start + i:064x}", "m": FP,
                              "v": vector_to_bytes(v), "t": now} for i, v in enumerate(vectors)])
    with db.transaction() as session:
        session.execute(text("UPDATE library SET model_fingerprint = :m, dim = :d"), {"m": FP, "d": DIM})
    db.engine.dispose()


def _child(args: argparse.Namespace) -> None:
    from blipsearch.ann import index as vectors_module
    from blipsearch.ann.index import VectorIndex
    from blipsearch.ann.mirror import VectorMirror
    from blipsearch.store.database import Database, bytes_to_vectors

    vectors_module.DEFAULT_MEMORY_BUDGET = args.budget_mb << 20
    db = Database(args.url)
    path = Path(args.vector_file)
    result: dict[str, object] = {}
    began = time.perf_counter()
    if args.step == "build":
        index = VectorMirror(db, path, "bench").rebuild(FP)
    elif args.step == "whole":
        ids, parts = [], []
        for chunk_ids, blobs in db.iter_vectors(FP):
            ids.append(chunk_ids)
            parts.append(bytes_to_vectors(blobs, DIM))
        all_ids, everything = np.concatenate(ids), np.concatenate(parts)
        del parts
        index = VectorIndex.build(DIM, all_ids, everything)
    elif args.step == "recall":  # of the file's index on held-out queries, against exact search
        from blipsearch.ann.index import _streamed_top
        loaded = VectorIndex.load(path)
        assert loaded is not None
        index = loaded[0]
        queries = hard_set("low-rank", 1000, seed=10**6)
        truth = _streamed_top(queries, ((i, bytes_to_vectors(b, DIM)) for i, b in db.iter_vectors(FP)), 10)
        _, found = index.search(queries, 10, exact=lambda wanted: db.vectors_by_ids(list(wanted), FP, DIM))
        result["held_out_recall_at_10"] = round(float(np.mean(
            [len(set(t) & set(f)) / 10 for t, f in zip(truth.tolist(), found.tolist())])), 3)
    else:
        loaded = VectorIndex.load(path)
        assert loaded is not None
        index = loaded[0]
        if args.step == "serve-in-memory":
            index._own()
        if args.step == "latency":  # one process alone, one query thread
            import faiss
            faiss.omp_set_num_threads(1)
        queries = hard_set("low-rank", 200, seed=10**6)
        exact = lambda wanted: db.vectors_by_ids(list(wanted), FP, DIM)
        times = []
        for query in queries:
            start = time.perf_counter()
            index.search(query[None], 10, exact=exact)
            times.append(1000 * (time.perf_counter() - start))
        result["p50_ms"] = round(statistics.median(times), 1)
        result["p95_ms"] = round(float(np.percentile(times, 95)), 1)
        result["mapped"] = index.mapped
    result["seconds"] = round(time.perf_counter() - began, 1)
    result.update(kind=index.kind, count=len(index), nprobe=index.nprobe,
                  refine=getattr(index, "refine", 8), recall_at_10=index.recall)  # (8: code of before)
    if args.step == "build":
        result["tuning"] = index.tuning
    result.update(_memory())
    print(json.dumps(result))


def _run(args: argparse.Namespace, step: str, count: int = 1) -> list[dict[str, object]]:
    command = [sys.executable, __file__, "--child", step, "--url", args.url, "--vector-file", args.vector_file,
               "--budget-mb", str(args.budget_mb)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{step} failed ({proc.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    print(step, out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2_000_000)
    parser.add_argument("--budget-mb", type=int, default=1024)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--skip-whole", action="store_true",
                        help="no build from one array (it holds 1 KB of RAM per vector)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--vector-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.step = args.child
        return _child(args)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="blipsearch-vector-library-"))
    work.mkdir(parents=True, exist_ok=True)
    database = work / f"library-{args.count}.db"
    args.url = f"sqlite:///{database}"
    args.vector_file = str(work / "vectors.faiss")
    began = time.perf_counter()
    if not database.exists():
        _fill(args.url, args.count)
    fill_s = time.perf_counter() - began
    print(f"filled in {fill_s:.0f} s", flush=True)
    whole = None if args.skip_whole else _run(args, "whole")[0]
    build = _run(args, "build")[0]  # (its file is the one the readers map)
    recall = _run(args, "recall")[0]["held_out_recall_at_10"]
    latency = _run(args, "latency")[0]
    mapped = _run(args, "serve", args.readers)
    in_memory = _run(args, "serve-in-memory", args.readers)
    result = {
        "count": args.count, "budget_mb": args.budget_mb, "database_gb": round(os.path.getsize(database) / 2**30, 2),
        "vector_file_mb": round(os.path.getsize(args.vector_file) / 2**20, 1),
        "build_from_chunks": build, "build_from_one_array": whole, "held_out_recall_at_10": recall,
        "one_reader_one_thread": latency,
        "readers": args.readers, "readers_mapped": mapped, "readers_in_memory": in_memory,
        "pss_sum_mapped_gb": round(sum(float(r["pss_gb"]) for r in mapped), 2),  # type: ignore[arg-type]
        "pss_sum_in_memory_gb": round(sum(float(r["pss_gb"]) for r in in_memory), 2),  # type: ignore[arg-type]
    }
    print(save("vector_library" if args.count == 2_000_000 else f"vector_library_{args.count}", result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
