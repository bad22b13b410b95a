"""Load while indexing: search processes and the HTTP server query a library while an index run writes it.

    python benchmarks/reliability/load.py [--readers 8] [--images 200] [--new 200] [--workdir DIR]

A library of ``--images`` shapes-world pictures (built-in model) is indexed first. Then, at
once: ``blipsearch serve`` on it with a client thread here, ``--readers`` processes that each
open the library through the Python API and search it (ITC, then ITM reranking) in a loop, and
``blipsearch index --captions`` adding ``--new`` pictures, which commits batch after batch.
When the index run ends, everything stops. Counted: every query's outcome (errors by kind,
"database is locked" among them: target 0), the latency of the queries (p50/p95), and
whether the readers and the server find the new pictures once the run has committed (without
a restart). Results: ``benchmarks/results/load.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).parent))
from library_state import BLIPSEARCH, ROOT, TEXTS, Workload, run

RESULTS = ROOT / "benchmarks" / "results"


def reader(library: Path, stop: Path, out: Path, seed: int) -> None:
    """One search process: query until ``stop`` exists, then write what happened to ``out``."""
    from blipsearch.library import Library

    rng = random.Random(seed)
    latencies: list[float] = []
    errors: list[str] = []
    counts: list[int] = []
    with Library(library, create=False) as lib:
        while not stop.exists():
            start = time.perf_counter()
            try:
                lib.search(rng.choice(TEXTS), k=10)
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - every error is what this campaign counts
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
        fp = lib.db.library().model_fingerprint or ""
        counts.append(len(lib.vectors.current(fp)))  # the vectors it searches, caught up without a restart
    out.write_text(json.dumps({"latencies": latencies, "errors": errors, "images_seen_at_end": counts[-1]}))


def http_client(port: int, stop: threading.Event, record: dict[str, list]) -> None:  # type: ignore[type-arg]
    rng = random.Random(0)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            connection.request("GET", f"/api/search?q={quote(rng.choice(TEXTS))}&k=10")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                record["errors"].append(f"HTTP {response.status}: {body[:200]!r}")
            else:
                record["latencies"].append(time.perf_counter() - start)
        except (OSError, http.client.HTTPException) as exc:
            record["errors"].append(f"{type(exc).__name__}: {exc}")
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1) if len(values) > 1 \
        else round(1000 * values[0], 1)


def campaign(readers: int, images: int, new: int, workdir: Path) -> dict[str, object]:
    workload = Workload(workdir).make(images)
    library = workdir / "library"
    first = run([*BLIPSEARCH, "index", str(workload.photos), "--model", "builtin:shapes", "--library",
                 str(library), "--json"])
    if first.returncode != 0:
        raise SystemExit(f"the first index run failed: {first.stderr[-1000:]}")
    added = workdir / "new-photos"
    if not added.exists():
        run([*BLIPSEARCH, "demo-photos", str(added), "--count", str(new), "--seed", "7"])
    stop = workdir / "stop"
    stop.unlink(missing_ok=True)
    server = subprocess.Popen([*BLIPSEARCH, "serve", "--library", str(library), "--port", "0"],
                              stderr=subprocess.PIPE, text=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        assert server.stderr is not None
        match = re.search(r"127\.0\.0\.1:(\d+)/", server.stderr.readline())
        if not match:
            raise SystemExit("the server did not start")
        port = int(match.group(1))
        threading.Thread(target=lambda: server.stderr.read() if server.stderr else None, daemon=True).start()
        outs = [workdir / f"reader-{n}.json" for n in range(readers)]
        for n, out in enumerate(outs):
            out.unlink(missing_ok=True)
            procs.append(subprocess.Popen([sys.executable, __file__, "--reader", str(library), "--stop", str(stop),
                                           "--out", str(out), "--seed", str(n)]))
        record: dict[str, list] = {"latencies": [], "errors": []}  # type: ignore[type-arg]
        stop_http = threading.Event()
        client = threading.Thread(target=http_client, args=(port, stop_http, record))
        client.start()
        time.sleep(5)  # the readers load their model and search before the writer starts
        start = time.perf_counter()
        index = run([*BLIPSEARCH, "index", str(added), "--library", str(library), "--captions", "--json"],
                    timeout=3600)
        index_seconds = time.perf_counter() - start
        time.sleep(3)  # a few more queries after the last commit
        stop.touch()
        stop_http.set()
        client.join()
        for proc in procs:
            proc.wait(timeout=300)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/api/status")
        served_images = json.loads(connection.getresponse().read()).get("images")
    finally:
        stop.touch()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.terminate()
        server.wait(timeout=60)
    results = [json.loads(out.read_text()) if out.exists() else {"latencies": [], "errors": ["no result"],
                                                                   "images_seen_at_end": None} for out in outs]
    latencies = [t for r in results for t in r["latencies"]]
    errors = [e for r in results for e in r["errors"]]
    everything = images + new
    return {
        "readers": readers,
        "images_before": images,
        "images_added": new,
        "index_exit": index.returncode,
        "index_stderr_tail": index.stderr.strip()[-300:] if index.returncode else "",
        "index_seconds": round(index_seconds, 1),
        "reader_queries": len(latencies) + len(errors),
        "reader_errors": len(errors),
        "database_is_locked": sum("database is locked" in e for e in errors + record["errors"]),
        "reader_error_examples": sorted(set(errors))[:5],
        "reader_p50_ms": percentile(latencies, 50),
        "reader_p95_ms": percentile(latencies, 95),
        "readers_seeing_all_new_images": sum(r["images_seen_at_end"] == everything for r in results),
        "http_queries": len(record["latencies"]) + len(record["errors"]),
        "http_errors": len(record["errors"]),
        "http_error_examples": sorted(set(record["errors"]))[:5],
        "http_p50_ms": percentile(record["latencies"], 50),
        "http_p95_ms": percentile(record["latencies"], 95),
        "server_images_at_end": served_images,
        "images_expected_at_end": everything,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--new", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    parser.add_argument("--reader", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        reader(args.reader, args.stop, args.out, args.seed)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="blipsearch-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = campaign(args.readers, args.images, args.new, workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    bad = (result["reader_errors"] or result["http_errors"] or result["index_exit"]
           or result["server_images_at_end"] != result["images_expected_at_end"])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
