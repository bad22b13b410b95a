"""VQA on the shapes world: answers generated (both length rules) vs ranked from the answer vocabulary.

    python benchmarks/vqa_rank_shapes.py [--scenes 300] [--seed 0]

The built-in VQA model answers every question of ``--scenes`` held-out test
scenes (6 per scene: two colors, two shapes, two yes/no) four ways: beam
search 3 with the paper's length rule and with transformers', and the paper's
ranking over the world's whole answer vocabulary (its colors, shapes, yes
and no) with the full list scored and with a first-token shortlist of 3.
Reports exact-match accuracy, overall, per question type and on scenes with
held-out combinations, answers outside the vocabulary, how many answers
differ from the first method's, and milliseconds per answer, all from one run.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from blipsearch.describe import Answerer, AnswerSettings
    from blipsearch.images.decode import pixels_from_bytes
    from blipsearch.shapes import world

    answerer = Answerer.load("builtin:shapes", "cpu")
    scenes = world.generate("test", args.scenes, seed=args.seed)
    pixels = []
    for scene in scenes:
        buf = io.BytesIO()
        scene.image.save(buf, "PNG")
        pixels.append(pixels_from_bytes(buf.getvalue(), answerer.checkpoint.image_spec))
    vocabulary = (*world.COLORS, *world.SHAPES, "yes", "no")
    by_question: dict[str, list[tuple[int, str, str]]] = defaultdict(list)  # question -> (scene, answer, kind)
    for i, scene in enumerate(scenes):
        for qa in scene.qa:
            by_question[qa.question].append((i, qa.answer, qa.kind))
    methods = {
        "generate, paper rule": AnswerSettings(),
        "generate, transformers rule": AnswerSettings(length_rule="transformers"),
        "rank, all answers": AnswerSettings(choices=vocabulary),
        "rank, shortlist 3": AnswerSettings(choices=vocabulary, shortlist=3),
    }
    out: dict[str, object] = {"scenes": args.scenes, "questions": sum(len(v) for v in by_question.values()),
                              "vocabulary": list(vocabulary)}
    results = {}
    said_by: dict[str, list[str]] = {}
    for name, settings in methods.items():
        hits: dict[str, list[bool]] = defaultdict(list)
        every: list[str] = []
        outside = 0
        start = time.perf_counter()
        for question, rows in by_question.items():
            batch = np.stack([pixels[i] for i, _, _ in rows])
            for start_row in range(0, len(rows), 64):
                part = rows[start_row : start_row + 64]
                said = answerer.answer(batch[start_row : start_row + 64], question, settings)
                every.extend(said)
                for (i, answer, kind), got in zip(part, said):
                    ok = got == answer
                    hits["all"].append(ok)
                    hits[kind].append(ok)
                    if scenes[i].held_out:
                        hits["held_out"].append(ok)
                    outside += got not in vocabulary
        seconds = time.perf_counter() - start
        said_by[name] = every
        first = next(iter(said_by.values()))
        results[name] = {
            "answers_unlike_the_first_method": sum(a != b for a, b in zip(first, every)),
            **{f"accuracy_{k}": round(sum(v) / len(v), 4) for k, v in sorted(hits.items())},
            "answers_outside_vocabulary": outside,
            "ms_per_answer": round(1000 * seconds / len(hits["all"]), 2),
        }
        print(name, results[name], flush=True)
    out["results"] = results
    print(save("vqa_rank_shapes", out))


if __name__ == "__main__":
    main()
