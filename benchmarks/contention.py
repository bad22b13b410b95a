"""Model latency on a busy machine: alone, and beside one and two CPU-bound processes.

    python benchmarks/contention.py [--workdir DIR] [--competitors 0,1,2]

Base-size BLIP (random weights: the real cost), or ``--model``, on the CPU. Three pieces of work:
a text query's embedding, an ITM rerank of 16 candidates whose vision tokens
are cached (what a reranked search costs beyond the vision encoder), and
indexing (the vision encoder on batches of 2 preprocessed images, images/s).
Each is measured with torch's threads fixed at one per core (torch's default,
``BLIPSEARCH_THREADS``) and with blipsearch's policy (the cores idle before
each pass), alone and with the competitors (``python -c "while True: pass"``)
running. Ratios are to the same policy alone, from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, save

TEXT = "a dog running on the beach"


def competitors(n: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0)  # running before anything is measured
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    parser.add_argument("--competitors", default="0,1,2")
    parser.add_argument("--model", default=None, help="Another model (builtin:shapes, say); default base size.")
    parser.add_argument("--budget-s", type=float, default=20.0,
                        help="Stop repeating one measurement after this long (the slow cases are very slow).")
    args = parser.parse_args()

    from blipsearch.models.retrieval import load_retrieval_model
    from blipsearch.system import THREADS_ENV, available_cores

    spec = args.model or str(make_base_checkpoint(args.workdir / "blip-base-random"))
    model = load_retrieval_model(spec, "cpu")
    rng = np.random.default_rng(0)
    spec = model.image_spec
    pixels = rng.standard_normal((16, 3, spec.height, spec.width)).astype(np.float32)
    tokens = model.image_tokens(pixels[:2])
    tokens = tokens.repeat(8, 1, 1)  # 16 candidates' vision tokens, as read from the cache
    cores = available_cores()

    work = {
        "text_query_ms": (lambda: model.embed_texts([TEXT]), 1000.0, 8),
        "rerank16_cached_ms": (lambda: model.itm_logits([TEXT] * 16, tokens), 1000.0, 3),
        "index_s_per_image": (lambda: model.embed_images(pixels[:2]), 0.5, 3),  # 2 images a call
    }

    def measure(fn, scale: float, repeat: int) -> float:  # type: ignore[no-untyped-def]
        fn()  # warm: the thread count settles
        times: list[float] = []
        started = time.perf_counter()
        # At least ``repeat`` runs and two seconds of them (short work varies most), at most the budget.
        while (len(times) < repeat or time.perf_counter() - started < 2.0) and (
                not times or time.perf_counter() - started < args.budget_s):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * scale

    policies = {"fixed": str(cores), "idle_cores": ""}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for n in [int(c) for c in args.competitors.split(",")]:
        procs = competitors(n)
        try:
            for policy, env in policies.items():
                if env:
                    os.environ[THREADS_ENV] = env
                else:
                    os.environ.pop(THREADS_ENV, None)
                row = {name: measure(fn, scale, repeat) for name, (fn, scale, repeat) in work.items()}
                results.setdefault(policy, {})[str(n)] = row
                print(f"{n} competing, {policy}: {row}", flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    os.environ.pop(THREADS_ENV, None)

    ratios = {policy: {n: {k: v / by_n["0"][k] for k, v in row.items()} for n, row in by_n.items()}
              for policy, by_n in results.items()}
    name = "contention" if args.model is None else "contention_" + args.model.replace("builtin:", "")
    path = save(name, {"model": args.model or "base size, random weights", "cores": cores, "results": results, "ratios_to_alone": ratios})
    print("| work | competing | threads fixed | ratio | idle cores | ratio |\n|---|---|---|---|---|---|")
    for name in work:
        for n in results["fixed"]:
            fixed, idle = results["fixed"][n][name], results["idle_cores"][n][name]
            print(f"| {name} | {n} | {fixed:.3g} | {ratios['fixed'][n][name]:.1f}x | {idle:.3g} | "
                  f"{ratios['idle_cores'][n][name]:.1f}x |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
