"""How many ITC candidates to rerank with ITM: quality and latency by depth.

    python benchmarks/rerank_depth.py [--depths 8,16,32,64] [--scenes 400] [--skip-latency]

Quality: text->image and image->text Recall@1 on the shapes world's held-out
test scenes with the built-in model (`blipsearch eval`'s measure), ITC alone
and reranked at each depth. Latency: a text search over a library of 5,000
synthetic rows with base-size BLIP on the CPU (random weights: the real cost),
reranking the top N with the vision encoder recomputed for each candidate (one
search) and with the vision-token cache holding them (median of ``--repeat``).
All from one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, make_base_checkpoint, save, synthetic_library

QUERY = "a dog running on the beach"


def quality(depths: list[int], scenes: int, workdir: Path) -> dict[str, dict[str, float]]:
    from blipsearch import Library
    from blipsearch.evaluation import evaluate
    from blipsearch.shapes.world import generate, write_folder

    folder = workdir / f"shapes-test-{scenes}"
    captions = folder / "captions.jsonl"
    if not captions.exists():
        write_folder(folder, generate("test", scenes))
    out: dict[str, dict[str, float]] = {}
    with Library(workdir / f"shapes-library-{scenes}", model="builtin:shapes", device="cpu") as lib:
        for depth in depths:
            result = evaluate(lib, folder, captions, rerank_depth=depth)
            out[str(depth)] = {
                "t2i_itc_r1": result["text_to_image"]["itc"]["R@1"],
                "t2i_rerank_r1": result["text_to_image"]["rerank"]["R@1"],
                "i2t_itc_r1": result["image_to_text"]["itc"]["R@1"],
                "i2t_rerank_r1": result["image_to_text"]["rerank"]["R@1"],
                "texts": result["texts"],
                "images": result["images"],
            }
            print(f"depth {depth}: {out[str(depth)]}", flush=True)
    return out


def latency(depths: list[int], workdir: Path, images: int, repeat: int) -> dict[str, dict[str, float]]:
    from blipsearch import Library

    checkpoint = make_base_checkpoint(workdir / "blip-base-random")
    library = synthetic_library(workdir, images, checkpoint, "depth-library")
    out: dict[str, dict[str, float]] = {}
    with Library(library, model=str(checkpoint), device="cpu", token_cache_gb=4.0) as lib:
        lib.search("warm up", k=10, rerank_hits=False)
        cache = lib.token_cache

        def measure(depth: int, n: int) -> float:
            times = []
            for _ in range(n):
                start = time.perf_counter()
                lib.search(QUERY, k=10, rerank_depth=depth, rerank_hits=depth > 0)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        recomputed = {}
        lib.token_cache = None
        for depth in depths:
            recomputed[depth] = measure(depth, 1)
        lib.token_cache = cache
        measure(max(depths), 1)  # fills the cache with the deepest shortlist, which holds the others
        for depth in depths:
            out[str(depth)] = {"recomputed_s": recomputed[depth], "token_cache_s": measure(depth, repeat)}
            print(f"depth {depth}: {out[str(depth)]}", flush=True)
        plain = measure(0, 5)
    out["0"] = {"recomputed_s": plain, "token_cache_s": plain}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="8,16,32,64")
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-quality", action="store_true",
                        help="Keep the quality figures of the last run's results file (they do not depend on timing).")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)

    previous = RESULTS / "rerank_depth.json"
    if args.skip_quality and previous.exists():
        kept = json.loads(previous.read_text())["quality"]
    else:
        kept = quality(depths, args.scenes, args.workdir)
    result: dict[str, object] = {"depths": depths, "quality": kept}
    if not args.skip_latency:
        result["latency"] = latency(depths, args.workdir, args.images, args.repeat)
    path = save("rerank_depth", result)
    print("| depth | text->image R@1 | image->text R@1 | base, recomputed | base, token cache |")
    print("|---|---|---|---|---|")
    q = result["quality"]
    lat = result.get("latency", {})
    first = q[str(depths[0])]  # type: ignore[index]
    print(f"| ITC only | {100 * first['t2i_itc_r1']:.1f} % | {100 * first['i2t_itc_r1']:.1f} % | "
          + (f"{lat['0']['recomputed_s'] * 1000:.0f} ms | |" if lat else "| |"))  # type: ignore[index]
    for depth in depths:
        row = q[str(depth)]  # type: ignore[index]
        cells = [f"{100 * row['t2i_rerank_r1']:.1f} %", f"{100 * row['i2t_rerank_r1']:.1f} %"]
        if lat:
            cells += [f"{lat[str(depth)]['recomputed_s']:.1f} s", f"{lat[str(depth)]['token_cache_s']:.2f} s"]  # type: ignore[index]
        print(f"| {depth} | " + " | ".join(cells) + " |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
