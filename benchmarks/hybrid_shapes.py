"""Does hybrid (keyword + vector) search help? Measured on the shapes world.

    python benchmarks/hybrid_shapes.py [--images 200] [--rerank-depth 16]

Indexes a held-out shapes-world set with the built-in retrieval model,
captions it with the built-in captioner (`index --captions`), then queries
each picture's canonical caption and reports text->image Recall@1/5 for the
vector ranking alone and for the hybrid ranking (full text over captions,
file and folder names, fused by reciprocal rank fusion), with and without
ITM reranking. Pictures sharing a caption all count as correct.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rerank-depth", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    from blipsearch import Library
    from blipsearch.shapes.world import generate, write_folder

    scenes = generate("test", args.images, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp) / "photos", scenes)
        with Library(Path(tmp) / "lib", model="builtin:shapes", device="cpu") as lib:
            lib.index([Path(tmp) / "photos"])
            lib.caption_library()
            captions = [d.text for d in lib.caption(sorted((Path(tmp) / "photos" / "images").glob("*.png")))]
            caption_exact = float(np.mean([c == s.caption for c, s in zip(captions, scenes)]))
            truth: dict[str, set[str]] = {}
            for i, scene in enumerate(scenes):
                truth.setdefault(scene.caption, set()).add(str(Path(tmp) / "photos" / "images" / f"{i:05d}.png"))
            rows = {}
            for name, hybrid, depth in (("vector", False, 0), ("hybrid", True, 0),
                                        ("vector + ITM", False, args.rerank_depth),
                                        ("hybrid + ITM", True, args.rerank_depth)):
                ranks = []
                for query, correct in truth.items():
                    hits = lib.search(query, k=10, rerank_depth=depth, rerank_hits=depth > 0, hybrid=hybrid)
                    ranks.append(next((n for n, h in enumerate(hits) if h.path in correct), 10))
                ranks_a = np.array(ranks)
                rows[name] = {"R@1": float(np.mean(ranks_a < 1)), "R@5": float(np.mean(ranks_a < 5))}
    result = {"images": args.images, "queries": len(truth), "rerank_depth": args.rerank_depth,
              "caption_exact_match": caption_exact, "recall": rows}
    path = save("hybrid_shapes", result)
    print(f"{args.images} images, {len(truth)} distinct caption queries; "
          f"generated captions exactly right: {100 * caption_exact:.1f}%")
    print("| ranking | R@1 | R@5 |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['R@1']:.1f} | {100 * r['R@5']:.1f} |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
