"""Match sets: how good is "every photo ITM matches", found without scoring the whole library?

    python benchmarks/match_sets.py [--scenes 1000] [--queries 60] [--latency]

On the shapes world (held-out test scenes, the built-in model), each query has an exact ground
truth (``world.satisfies``): a full caption ("a red circle left of a blue square") is satisfied by
the scenes of that content, a partial description ("a red circle") by every scene with that object
on either side.
For each kind of query, the set's precision, recall and F1 (summed over the queries' photos) for:

- ``search --all``: the stopping rule (``blipsearch.search.searcher``), and how many photos it scored;
- ITM over every photo (p >= 0.5): what the rule could reach at best (its recall loss is the gap);
- the best single ITC cosine cut-off, chosen with hindsight on the same queries: what a CLIP-style
  tool's similarity threshold could do at best.

With ``--latency``, the seconds a match set takes on the BLIP-base architecture (random weights:
the cost, not the quality) for sets that stop after 48 photos without the vision-token cache, and
after 48 and 112 photos with the cache holding them (``max_check``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402


def prf(found: int, truth: int, both: int) -> dict[str, float]:
    precision = both / found if found else 1.0
    recall = both / truth if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def best_threshold(cosines: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, dict[str, float]]:
    """The one cosine cut-off with the best pooled F1 over all queries, and its figures."""
    values = np.concatenate(cosines)
    labels = np.concatenate(truths)
    order = np.argsort(-values)
    hits = np.cumsum(labels[order])
    found = np.arange(1, len(values) + 1)
    f1 = 2 * hits / (found + labels.sum())
    best = int(np.argmax(f1))
    return float(values[order][best]), prf(best + 1, int(labels.sum()), int(hits[best]))


def quality(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    from blipsearch import Library
    from blipsearch.rerank.itm import rerank
    from blipsearch.shapes import world

    scenes = world.generate("test", args.scenes, seed=7)
    world.write_folder(workdir / "photos", scenes)
    lib = Library(workdir / "library", model="builtin:shapes", device="cpu", token_cache_gb=1.0)
    lib.index([workdir / "photos"])
    paths = {str((workdir / "photos" / "images" / f"{n:05d}.png").resolve()): s for n, s in enumerate(scenes)}
    ids = sorted(lib.db.refs_by_id(list(range(1, args.scenes + 10))))
    rows = lib.db.refs_by_id(ids)
    scene_of = {i: paths[str(Path(rows[i].path.decode()).resolve())] for i in ids}
    rng = np.random.default_rng(0)
    full = sorted({s.caption for s in scenes})
    kinds = {
        "full caption": [full[i] for i in rng.choice(len(full), min(args.queries, len(full)), replace=False)],
        "partial (one object)": world.partial_descriptions(),
    }
    result: dict[str, object] = {"scenes": args.scenes}
    model = lib.model
    for kind, texts in kinds.items():
        rule = [0, 0, 0]  # found, truth, both
        brute = [0, 0, 0]
        rule_in_brute = 0
        checked, seconds, cosines, truths = [], [], [], []
        query_vectors = model.embed_texts(texts)
        vectors = lib.db.vectors_by_ids(ids, model.fingerprint, model.dim)
        for text, query in zip(texts, query_vectors):
            truth = {i for i in ids if scene_of[i].satisfies(text)}
            start = time.perf_counter()
            found = lib.search(text, all=True)
            seconds.append(time.perf_counter() - start)
            checked.append(found.checked)
            got = {h.id for h in found}
            every = {r.id for r in rerank(model, text, [(i, 0.0) for i in ids], rows, cache=lib.token_cache)
                     if r.itm is not None and r.itm >= 0.5}
            rule_in_brute += len(got & every)
            for tally, ids_found in ((rule, got), (brute, every)):
                tally[0] += len(ids_found)
                tally[1] += len(truth)
                tally[2] += len(ids_found & truth)
            cosines.append(vectors @ query)
            truths.append(np.array([i in truth for i in ids]))
        threshold, by_cosine = best_threshold(cosines, truths)
        result[kind] = {
            "queries": len(texts),
            "matching photos per query": round(rule[1] / len(texts), 1),
            "search --all": prf(*rule),
            "ITM over every photo": prf(*brute),
            "recall of the rule against ITM over every photo": round(rule_in_brute / brute[0], 4) if brute[0] else 1.0,
            "best cosine cut-off (hindsight)": {**by_cosine, "cut-off": round(threshold, 4)},
            "photos checked, median": int(np.median(checked)),
            "photos checked, max": int(np.max(checked)),
            "seconds per set, median": round(float(np.median(seconds)), 3),
        }
    lib.close()
    return result


def latency(workdir: Path) -> dict[str, object]:
    from common import make_base_checkpoint, synthetic_library

    from blipsearch import Library

    checkpoint = make_base_checkpoint(workdir / "blip-base-random")
    library = synthetic_library(workdir, 2000, checkpoint, "match-library")
    out: dict[str, object] = {}
    for cache in (False, True):
        with Library(library, device="cpu", token_cache_gb=1.0 if cache else 0.0) as lib:
            lib.warm()
            depths = (48, 112) if cache else (48,)  # without the cache each photo costs a vision-encoder pass
            if cache:
                lib.search("a red circle", all=True, min_match=0.0, max_check=max(depths))  # fills the cache
            for depth in depths:
                start = time.perf_counter()
                found = lib.search("a red circle", all=True, min_match=0.0, max_check=depth)  # all match: no stop
                out[f"{depth} photos, {'token cache' if cache else 'no cache'}"] = {
                    "seconds": round(time.perf_counter() - start, 2), "checked": found.checked}
    shutil.rmtree(library, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="only the latency figures")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-match-sets")
    args = parser.parse_args()
    shutil.rmtree(args.workdir / "photos", ignore_errors=True)
    shutil.rmtree(args.workdir / "library", ignore_errors=True)
    if args.latency_only:
        result: dict[str, object] = {"latency": latency(args.workdir)}
        path = save("match_sets_latency", result)
    else:
        result = {"quality": quality(args, args.workdir)}
        if args.latency:
            result["latency"] = latency(args.workdir)
        path = save("match_sets" if args.scenes >= 1000 else "match_sets_short", result)
        for kind, row in result["quality"].items():  # type: ignore[union-attr]
            if isinstance(row, dict):
                print(kind, row)
    if "latency" in result:
        print(result["latency"])
    print(f"written to {path}")


if __name__ == "__main__":
    main()
