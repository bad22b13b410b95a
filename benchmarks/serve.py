"""`blipsearch serve` under load: a 100k-image library, the server warm, clients in another process.

    python benchmarks/serve.py [--images 100000] [--seconds 60] [--clients 16]

Base-size BLIP (random weights: the real cost) on the CPU. The library's rows
and vectors are synthetic (clustered 256-d vectors), its files hard links to
a few real camera-sized JPEGs. The server is the real command
(`blipsearch serve`) in its own process; this script is the client. It
measures, from here:

1. text searches without reranking (the page's first results), one at a time;
2. thumbnails: made on first request (no thumbnail yet), then served, then
   revalidated (304);
3. ``--clients`` clients for ``--seconds`` s, each loading result pages as the
   page does (one search, then the first 8 thumbnails): throughput, latency
   and errors;
4. the same while `blipsearch index` adds new photos in a third process,
   and whether the server's results include them without a restart.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, photo_like_jpegs, save, synthetic_library  # noqa: E402

QUERIES = ["a dog running on the beach", "two people in the snow", "a red car in the street at night",
           "a birthday cake with candles", "a sailing boat on a lake", "a cat sleeping on a sofa",
           "an old man reading a newspaper", "children playing football in a park"]


class Client:
    """One keep-alive connection; ``get`` returns (status, seconds, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, target: str, headers: dict[str, str] | None = None) -> tuple[int, float, bytes]:
        for attempt in (1, 2):  # a keep-alive connection the server closed while idle is opened again
            start = time.perf_counter()
            try:
                self.conn.request("GET", target, headers=headers or {})
                response = self.conn.getresponse()
                body = response.read()
                return response.status, time.perf_counter() - start, body
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return 0, time.perf_counter() - start, b""


def search_target(n: int) -> str:
    return "/api/search?" + urlencode({"q": QUERIES[n % len(QUERIES)], "k": 40, "no_rerank": "true"})


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load(port: int, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads loading result pages for ``seconds``."""
    stop = time.monotonic() + seconds
    searches: list[float] = []
    thumbs: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        client = Client(port)
        k = n
        while time.monotonic() < stop:
            status, took, body = client.get(search_target(k))
            k += clients
            if status != 200:
                with lock:
                    errors.append(f"search {status}")
                continue
            hits = json.loads(body)["hits"][:8]
            with lock:
                searches.append(took)
            for hit in hits:
                status, took, _ = client.get(hit["thumbnail"])
                with lock:
                    (thumbs.append(took) if status == 200 else errors.append(f"thumbnail {status}"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {
        "seconds": round(elapsed, 1),
        "searches": len(searches),
        "searches_per_s": round(len(searches) / elapsed, 2),
        "thumbnails": len(thumbs),
        "thumbnails_per_s": round(len(thumbs) / elapsed, 1),
        "search_p50_ms": round(ms(searches, 0.5), 1) if searches else None,
        "search_p95_ms": round(ms(searches, 0.95), 1) if searches else None,
        "thumbnail_p50_ms": round(ms(thumbs, 0.5), 1) if thumbs else None,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--new-photos", type=int, default=60, help="photos the concurrent index run adds")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    started = time.perf_counter()
    library = synthetic_library(args.workdir, args.images, checkpoint)
    print(f"library of {args.images} images built in {time.perf_counter() - started:.0f} s", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "blipsearch.cli", "serve", "--library", str(library),
                               "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
    result: dict[str, object] = {"images": args.images, "clients": args.clients}
    try:
        assert server.stderr is not None
        match = re.search(r"127\.0\.0\.1:(\d+)/", server.stderr.readline())
        assert match, "the server did not start"
        port = int(match.group(1))
        client = Client(port)
        deadline = time.monotonic() + 300
        while client.get(search_target(0))[0] != 200:  # the model and vector index load at start
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.5)
        for n in range(5):
            client.get(search_target(n))

        # 1. One search at a time.
        times = []
        for n in range(args.queries):
            status, took, _ = client.get(search_target(n))
            assert status == 200
            times.append(took)
        result["search_no_rerank_p50_ms"] = round(ms(times, 0.5), 1)
        result["search_no_rerank_p95_ms"] = round(ms(times, 0.95), 1)
        rerank = [client.get("/api/search?" + urlencode({"q": QUERIES[n], "k": 40, "rerank_depth": 16}))[1]
                  for n in range(3)]
        result["search_rerank16_p50_s"] = round(statistics.median(rerank), 2)

        # 2. Thumbnails: made on first request, then served, then revalidated.
        hits = json.loads(client.get("/api/search?" + urlencode({"q": "thumbnails", "k": 100,
                                                                   "no_rerank": "true"}))[2])["hits"]
        made, served, revalidated = [], [], []
        etags = {}
        for hit in hits:
            status, took, _ = client.get(hit["thumbnail"])
            assert status == 200
            made.append(took)
        for hit in hits:
            start = time.perf_counter()
            client.conn.request("GET", hit["thumbnail"])
            response = client.conn.getresponse()
            response.read()
            served.append(time.perf_counter() - start)
            etags[hit["thumbnail"]] = response.getheader("etag")
        for target, etag in etags.items():
            status, took, _ = client.get(target, {"If-None-Match": etag})
            assert status == 304
            revalidated.append(took)
        result["thumbnail_made_on_request_p50_ms"] = round(ms(made, 0.5), 1)
        result["thumbnail_served_p50_ms"] = round(ms(served, 0.5), 1)
        result["thumbnail_served_p95_ms"] = round(ms(served, 0.95), 1)
        result["thumbnail_revalidated_p50_ms"] = round(ms(revalidated, 0.5), 1)
        print(json.dumps(result, indent=1), flush=True)

        # 3. Concurrent clients.
        result["load"] = load(port, args.clients, args.seconds)
        print(json.dumps(result["load"], indent=1), flush=True)

        # 4. The same while an index run adds photos.
        new = photo_like_jpegs(args.workdir / "new-photos", args.new_photos, size=(2000, 1500), seed=7)
        before = json.loads(client.get("/api/status")[2])["vectors"]
        indexer = subprocess.Popen([sys.executable, "-m", "blipsearch.cli", "index", str(new[0].parent),
                                    "--library", str(library), "--json"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=env)
        time.sleep(5)  # its model loading; then batches commit while the clients search
        result["load_while_indexing"] = load(port, args.clients, args.seconds)
        print(json.dumps(result["load_while_indexing"], indent=1), flush=True)
        found_new = 0
        for hit in json.loads(client.get("/api/search?" + urlencode({"q": "new", "k": 500, "no_rerank": "true",
                                                                       "folder": str(new[0].parent)}))[2])["hits"]:
            found_new += 1
        indexer.terminate()
        indexer.wait(60)
        result["load_while_indexing"]["new_photos_searchable_at_end"] = found_new  # type: ignore[index]
        result["load_while_indexing"]["vectors_before"] = before  # type: ignore[index]
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(library, ignore_errors=True)
        shutil.rmtree(args.workdir / "new-photos", ignore_errors=True)
    path = save("serve_cpu", result)
    print("| measure | value |\n|---|---|")
    for key in ("search_no_rerank_p50_ms", "search_no_rerank_p95_ms", "search_rerank16_p50_s",
                "thumbnail_made_on_request_p50_ms", "thumbnail_served_p50_ms", "thumbnail_revalidated_p50_ms"):
        print(f"| {key} | {result[key]} |")
    for phase in ("load", "load_while_indexing"):
        print(f"| {phase} | {json.dumps(result[phase])} |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
