"""The training data: rendered scenes in a pool of pixels, batches of them, and the texts and
compositional negatives drawn for each scene."""


from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from blipsearch.shapes import world
from blipsearch.shapes.checkpoint import CLIP_MEAN, CLIP_STD

# ----------------------------------------------------------------------------- data


class Pool:
    """Pre-rendered training scenes as a uint8 tensor plus their object indices."""

    def __init__(self, scenes: Sequence[world.Scene]) -> None:
        self.objects = world.all_objects()
        index = {o: i for i, o in enumerate(self.objects)}
        self.images = torch.from_numpy(np.stack([np.asarray(s.image, dtype=np.uint8) for s in scenes])).permute(0, 3, 1, 2).contiguous()
        self.left = torch.tensor([index[s.left] for s in scenes])
        self.right = torch.tensor([index[s.right] for s in scenes])
        n = len(self.objects)
        self.keys = self.left * n + self.right

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Same arithmetic as BlipImageProcessor at native size: rescale by 1/255, then normalize."""
        x = self.images[idx].to(device).float() * (1 / 255)
        mean = torch.tensor(CLIP_MEAN, device=device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=device)[:, None, None]
        return (x - mean) / std

    def pair(self, i: int) -> tuple[world.Obj, world.Obj]:
        return self.objects[int(self.left[i])], self.objects[int(self.right[i])]


def _render_chunk(args: tuple[str, int, int, int]) -> list[world.Scene]:
    split, count, seed, start = args
    return world.generate(split, count, seed, start=start)


def render_scenes(split: str, count: int, seed: int, workers: int | None = None) -> list[world.Scene]:
    """``world.generate`` spread over processes; identical output, since scene i depends only on (seed, split, i)."""
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if count >= 2000 else 1
    if workers <= 1:
        return world.generate(split, count, seed)
    step = -(-count // (4 * workers))
    chunks = [(split, min(step, count - i), seed, i) for i in range(0, count, step)]
    with ProcessPoolExecutor(workers) as ex:
        return [scene for part in ex.map(_render_chunk, chunks) for scene in part]


def batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches of indices, reshuffled every epoch (all ``n`` in each when there
    are fewer than ``batch``)."""
    if n <= 0:
        raise ValueError("no training examples")
    batch = min(batch, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def describe(left: world.Obj, right: world.Obj, rng: np.random.Generator, alt_prob: float) -> str:
    if rng.random() < alt_prob:
        alts = world.alternative_captions(left, right)
        return alts[int(rng.integers(len(alts)))]
    return world.canonical_caption(left, right)


def perturb(left: world.Obj, right: world.Obj, rng: np.random.Generator) -> tuple[world.Obj, world.Obj]:
    """A different scene content built from this one: the compositional hard negative.

    Swaps colors between the objects, swaps shapes, swaps sides, or changes one
    attribute of one object.
    """
    (lc, ls), (rc, rs) = left, right
    options: list[tuple[world.Obj, world.Obj]] = [(right, left)]
    if lc != rc:
        options.append(((rc, ls), (lc, rs)))
    if ls != rs:
        options.append(((lc, rs), (rc, ls)))
    options.append(change_one(left, right, rng))
    options = [o for o in options if o != (left, right) and o[0] != o[1]]
    return options[int(rng.integers(len(options)))]


def change_one(left: world.Obj, right: world.Obj, rng: np.random.Generator, shape_prob: float = 0.5) -> tuple[world.Obj, world.Obj]:
    """The scene with one attribute of one object replaced (the two objects stay different)."""
    while True:
        side = int(rng.integers(2))
        obj = [left, right][side]
        if rng.random() < shape_prob:
            others = [s for s in world.SHAPES if s != obj[1]]
            new = (obj[0], others[int(rng.integers(len(others)))])
        else:
            others = [c for c in world.COLORS if c != obj[0]]
            new = (others[int(rng.integers(len(others)))], obj[1])
        out = (new, right) if side == 0 else (left, new)
        if out[0] != out[1]:
            return out


def absent_object(left: world.Obj, right: world.Obj, rng: np.random.Generator, hard_prob: float = 0.75) -> world.Obj:
    """An object the scene does not show, the partial description's negative: with ``hard_prob``
    one that shares a color or a shape with an object it shows (another color of its shape,
    another shape of its color, its one object's color on the other's shape), else any."""
    present = (left, right)
    if rng.random() < hard_prob:
        options = [(c, o[1]) for o in present for c in world.COLORS] + [(o[0], s) for o in present for s in world.SHAPES]
    else:
        options = world.all_objects()
    options = [o for o in dict.fromkeys(options) if o not in present]
    return options[int(rng.integers(len(options)))]
