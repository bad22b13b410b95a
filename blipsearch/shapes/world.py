"""A tiny synthetic "shapes world" for training and testing BLIP-style models.

Every scene is a 64x64 RGB image holding two objects, one in the left half and
one in the right half. Each object has a color and a shape; sizes, positions,
color shades and the light background vary from image to image. A scene comes
with a canonical caption (``"a red circle left of a blue square"``), alternative
phrasings of the same content, and question/answer pairs. ``satisfies`` is the exact
ground truth of any text the world knows: those captions, and partial descriptions
naming one object (``"a red circle"``: every scene with one, on either side).

Some (color, shape, side) triples are held out: no training scene ever shows,
say, a blue circle on the left, while test scenes do. Metrics computed on
those test scenes measure composition of known attributes rather than memory.

Generation is deterministic: scene ``i`` of a split depends only on
``(seed, split, i)``, so a shorter list is a prefix of a longer one.

Command line (writes PNGs plus ``captions.jsonl``)::

    python -m blipsearch.shapes.world OUT_DIR --count 300 --split test --seed 0
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# Scenes are laid out on a 64-unit grid, drawn this many times larger and
# downsampled to IMAGE_SIZE, for smooth edges.
_GRID = 64
_SUPERSAMPLE = 4

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 25),
    "purple": (135, 55, 180),
    "orange": (245, 130, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIDES: tuple[str, ...] = ("left", "right")

# (color, shape, side) triples that never occur in the "train" split. Each
# color is held out once and every shape at least once, each on one side only,
# so the attributes themselves are all seen in training.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("blue", "circle", "left"),
        ("red", "triangle", "right"),
        ("green", "star", "left"),
        ("yellow", "square", "right"),
        ("purple", "circle", "right"),
        ("orange", "triangle", "left"),
    }
)

SPLITS: tuple[str, ...] = ("train", "test")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "yesno")
EXAMPLE_QUESTION = "what shape is on the left?"  # one of the question forms, true of every scene

Obj = tuple[str, str]
"""An object: (color, shape)."""


@dataclass(frozen=True)
class QA:
    """A question about a scene, its one correct answer and its type."""

    question: str
    answer: str
    kind: str  # one of QUESTION_TYPES


@dataclass
class Scene:
    """One generated scene: the image and everything known about its content."""

    image: Image.Image
    left: Obj
    right: Obj
    caption: str
    alt_captions: list[str]
    qa: list[QA] = field(default_factory=list)

    @property
    def key(self) -> tuple[Obj, Obj]:
        """Content identity: two scenes with equal keys have the same canonical caption."""
        return (self.left, self.right)

    @property
    def captions(self) -> list[str]:
        """Canonical caption first, then the alternatives."""
        return [self.caption, *self.alt_captions]

    def satisfies(self, text: str) -> bool:
        """Whether this scene fits ``text``: see :func:`satisfies`."""
        return satisfies(self.left, self.right, text)

    @property
    def held_out(self) -> bool:
        """True when the scene contains a triple that the train split never shows."""
        return is_held_out(self.left, self.right)


def all_objects() -> list[Obj]:
    return [(c, s) for c in COLORS for s in SHAPES]


def all_pairs() -> list[tuple[Obj, Obj]]:
    """Every (left, right) combination of two different objects, in a fixed order."""
    return [(a, b) for a, b in itertools.product(all_objects(), repeat=2) if a != b]


def is_held_out(left: Obj, right: Obj) -> bool:
    return (*left, "left") in HELD_OUT or (*right, "right") in HELD_OUT


def train_pairs() -> list[tuple[Obj, Obj]]:
    return [p for p in all_pairs() if not is_held_out(*p)]


def article(color: str) -> str:
    """The indefinite article for a noun phrase starting with ``color``."""
    return "an" if color[0] in "aeiou" else "a"


def phrase(obj: Obj) -> str:
    """``("orange", "star")`` -> ``"an orange star"``."""
    return f"{article(obj[0])} {obj[0]} {obj[1]}"


def canonical_caption(left: Obj, right: Obj) -> str:
    return f"{phrase(left)} left of {phrase(right)}"


def alternative_captions(left: Obj, right: Obj) -> list[str]:
    """Other phrasings with exactly the same content as the canonical caption."""
    lp, rp = phrase(left), phrase(right)
    return [f"{rp} right of {lp}", f"{lp} to the left of {rp}", f"{rp} to the right of {lp}"]


def partial_descriptions() -> list[str]:
    """Texts naming one object by color and shape (``"a red circle"``), one per object, in
    ``all_objects()`` order. A scene satisfies one when it shows that object on either side."""
    return [phrase(o) for o in all_objects()]


@functools.cache
def _caption_contents() -> dict[str, tuple[Obj, Obj]]:
    return {text: (left, right) for left, right in all_pairs()
            for text in (canonical_caption(left, right), *alternative_captions(left, right))}


@functools.cache
def _partial_objects() -> dict[str, Obj]:
    return {phrase(o): o for o in all_objects()}


def satisfies(left: Obj, right: Obj, text: str) -> bool:
    """The exact ground truth: whether a scene showing ``left`` and ``right`` fits ``text``.

    A full caption (canonical or alternative phrasing) is satisfied by the scenes of exactly
    that content; a partial description (``partial_descriptions()``) by every scene with that
    object on either side. Any other text is a ``ValueError``: the world cannot judge it.
    """
    if text in _partial_objects():
        return _partial_objects()[text] in (left, right)
    content = _caption_contents().get(text)
    if content is None:
        raise ValueError(f"not a shapes-world caption or partial description: {text!r}")
    return content == (left, right)


def questions(left: Obj, right: Obj, rng: np.random.Generator) -> list[QA]:
    """Two color, two shape and two yes/no questions (one yes, one no)."""
    qa = [
        QA(f"what color is the {left[1]} on the left?", left[0], "color"),
        QA(f"what color is the {right[1]} on the right?", right[0], "color"),
        QA(EXAMPLE_QUESTION, left[1], "shape"),
        QA("what shape is on the right?", right[1], "shape"),
    ]
    present = [left, right]
    yes = present[int(rng.integers(2))]
    # Half of the "no" questions recombine the scene's own colors and shapes
    # (the binding trap); the rest name any absent object.
    swapped = [o for o in ((left[0], right[1]), (right[0], left[1])) if o not in present]
    if swapped and rng.random() < 0.5:
        no = swapped[int(rng.integers(len(swapped)))]
    else:
        absent = [o for o in all_objects() if o not in present]
        no = absent[int(rng.integers(len(absent)))]
    qa.append(QA(f"is there {phrase(yes)}?", "yes", "yesno"))
    qa.append(QA(f"is there {phrase(no)}?", "no", "yesno"))
    return qa


def _jitter_color(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    # Shade changes stay small enough that no color drifts into a neighbour.
    delta = rng.integers(-18, 19, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + delta, 0, 255))  # type: ignore[return-value]


def _background(rng: np.random.Generator) -> np.ndarray:
    """A light, mildly textured background: pastel tint, linear gradient, noise."""
    size = _GRID
    base = rng.uniform(215, 252, size=3)
    tint = rng.uniform(-22, 22, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    img = base + ramp * tint + rng.normal(0, 3.0, size=(size, size, 3))
    return np.clip(img, 0, 255)


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        pts = [(-math.pi / 2 + k * 2 * math.pi / 3 + rot) for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * 0.15 + r * math.sin(a)) for a in pts]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5 + rot
            rad = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(f"not a polygon shape: {shape}")


def render(left: Obj, right: Obj, rng: np.random.Generator) -> Image.Image:
    """Draw one scene: left object in the left half, right object in the right half."""
    s = _SUPERSAMPLE
    bg = _background(rng).astype(np.uint8)
    canvas = Image.fromarray(bg).resize((_GRID * s, _GRID * s), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    # Radii and centers are sampled until the two objects keep a gap, so the
    # left/right relation is never ambiguous.
    while True:
        r1, r2 = rng.uniform(8.5, 12.5, size=2)
        x1 = rng.uniform(4 + r1, 30 - r1 * 0.3)
        x2 = rng.uniform(34 + r2 * 0.3, 60 - r2)
        if x2 - x1 >= r1 + r2 + 3:
            break
    y1, y2 = rng.uniform(14, 50, size=2)
    for (color, shape), cx, cy, r in ((left, x1, y1, r1), (right, x2, y2, r2)):
        fill = _jitter_color(COLORS[color], rng)
        # Small rotations only: a square turned 45 degrees would read as a diamond.
        rot = float(rng.uniform(-0.25, 0.25))
        if shape == "circle":
            draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=fill)
        else:
            poly = _shape_polygon(shape, cx, cy, r, rot if shape != "square" else 0.0)
            draw.polygon([(x * s, y * s) for x, y in poly], fill=fill)
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def pair_for(split: str, seed: int, index: int) -> tuple[Obj, Obj]:
    """Content of scene ``index``: random for train, a fixed permutation for test.

    The test split walks through a seeded permutation of all combinations, so
    the first ``len(all_pairs())`` test scenes have pairwise distinct captions
    (a retrieval gallery with exactly one correct image per caption).
    """
    if split == "train":
        pairs = train_pairs()
        return pairs[int(_scene_rng(seed, split, index).integers(len(pairs)))]
    if split == "test":
        pairs = all_pairs()
        # A stable per-seed permutation; the crc keeps it independent of index.
        perm = np.random.default_rng([seed, zlib.crc32(b"test-order")]).permutation(len(pairs))
        return pairs[int(perm[index % len(pairs)])]
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def make_scene(split: str, seed: int, index: int) -> Scene:
    left, right = pair_for(split, seed, index)
    # Separate streams for drawing and questions, so changing one never shifts the other.
    draw_rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
    qa_rng = np.random.default_rng([seed, SPLITS.index(split), index, 2])
    return Scene(
        image=render(left, right, draw_rng),
        left=left,
        right=right,
        caption=canonical_caption(left, right),
        alt_captions=alternative_captions(left, right),
        qa=questions(left, right, qa_rng),
    )


def generate(split: str, count: int, seed: int = 0, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start+count-1`` of ``split`` for ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [make_scene(split, seed, i) for i in range(start, start + count)]


def write_folder(out_dir: str | Path, scenes: Sequence[Scene], captions_name: str = "captions.jsonl") -> Path:
    """Write ``images/NNNNN.png`` and a JSON-lines captions file; returns the captions path.

    Each line is ``{"image": "images/00000.png", "captions": [canonical, *alternatives]}``
    with the image path relative to the captions file's folder.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, scene in enumerate(scenes):
        rel = f"images/{i:05d}.png"
        scene.image.save(out / rel)
        lines.append(json.dumps({"image": rel, "captions": scene.captions}))
    path = out / captions_name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blipsearch.shapes.world",
        description="Write a folder of shapes-world PNGs plus captions.jsonl.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_folder(args.out_dir, generate(args.split, args.count, args.seed))
    print(f"wrote {args.count} images and {path}")


if __name__ == "__main__":
    main()
