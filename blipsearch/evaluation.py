"""Retrieval evaluation with the BLIP paper's protocol: Recall@1/5/10 both ways.

Captions come as JSON lines (``{"image": relative path, "captions": [...]}``),
as BLIP's own annotation list (``[{"image": ..., "caption": [...]}]``), or as a
Karpathy-split COCO / Flickr30k file (``{"images": [{"filename", "filepath",
"split", "sentences": [{"raw": ...}]}]}``).

The images are indexed into a library like any photo folder (so the numbers
measure the engine users run), then every text is ranked against every image
and every image against every text by ITC cosine. For reranking, the top
``rerank_depth`` of each ranking are rescored with ITM logit + ITC cosine, as
in the paper (k=256 on COCO, 128 on Flickr30k).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .errors import InputPathError
from .library import Library
from .models.base import RetrievalModel
from .options import DEFAULT_RERANK_DEPTH
from .progress import ProgressFactory, no_progress
from .rerank.itm import match_scores
from .similarity import text_image_scores
from .store.database import bytes_to_query_vectors

KS = (1, 5, 10)


@dataclass(frozen=True)
class EvalSet:
    images: list[Path]
    texts: list[str]
    text_image: npt.NDArray[np.int64]  # index into images, one per text


def load_captions(images_dir: Path, captions_file: Path, split: str = "test") -> EvalSet:
    """Read any of the three caption formats; paths are relative to ``images_dir``."""
    try:
        raw = captions_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputPathError(f"Can't read {captions_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputPathError(f"{captions_file} is not UTF-8 text.") from None
    entries: list[tuple[str, list[str]]] = []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = None
    try:
        if isinstance(data, dict) and "images" in data:  # Karpathy split
            for item in data["images"]:
                if item.get("split") != split:
                    continue
                rel = os.path.join(item.get("filepath", ""), item["filename"])
                entries.append((rel, [s["raw"] for s in item["sentences"]]))
        elif isinstance(data, list):  # BLIP annotation list
            for item in data:
                captions = item["caption"] if "caption" in item else item["captions"]
                entries.append((item["image"], [captions] if isinstance(captions, str) else list(captions)))
        else:  # JSON lines
            for line in raw.splitlines():
                if line.strip():
                    item = json.loads(line)
                    captions = item["captions"]
                    entries.append((item["image"], [captions] if isinstance(captions, str) else list(captions)))
        for rel, captions in entries:
            if not isinstance(rel, str) or not all(isinstance(c, str) for c in captions):
                raise TypeError(f"image paths and captions must be strings: {rel!r}: {captions!r}")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise InputPathError(
            f"{captions_file} is not a captions file this command reads ({type(exc).__name__}: {exc}); "
            'expected JSON lines {"image": ..., "captions": [...]} or a Karpathy-split JSON.'
        ) from None
    if not entries:
        raise InputPathError(f"{captions_file} lists no images" + (f" in split {split!r}." if data else "."))
    if not any(captions for _, captions in entries):
        raise InputPathError(f"{captions_file} lists images but no captions: nothing to search for.")
    images, texts, owner = [], [], []
    for number, (rel, captions) in enumerate(entries):
        images.append((images_dir / rel).absolute())
        for caption in captions:
            texts.append(caption)
            owner.append(number)
    return EvalSet(images, texts, np.asarray(owner, np.int64))


def recall_at(ranks: npt.NDArray[np.int64]) -> dict[str, float]:
    """``ranks`` are 0-based positions of the first correct item."""
    return {f"R@{k}": float(np.mean(ranks < k)) for k in KS}


class _TokenCache:
    """Vision-encoder outputs per image, computed once per evaluation.

    Kept in fp16 (the model's dtype on a GPU): 0.9 MB an image at base size,
    4.4 GB for COCO's 5k test images rather than 8.9 GB in fp32.
    """

    def __init__(self, model: RetrievalModel, paths: list[Path]) -> None:
        from .images.decode import load_pixels

        self.model, self.paths, self._load = model, paths, load_pixels
        self.tokens: dict[int, torch.Tensor] = {}

    def get(self, indices: list[int]) -> torch.Tensor:
        todo = [i for i in dict.fromkeys(indices) if i not in self.tokens]
        for start in range(0, len(todo), 16):
            chunk = todo[start : start + 16]
            pixels = np.stack([self._load(self.paths[i], self.model.image_spec) for i in chunk])
            for i, tok in zip(chunk, self.model.image_tokens(pixels)):
                self.tokens[i] = tok.to(torch.float16)
        return torch.stack([self.tokens[i] for i in indices]).to(self.model.dtype)


def _itm_plus_itc(model: RetrievalModel, texts: list[str], tokens: torch.Tensor, itc: np.ndarray,
                  batch: int = 64) -> np.ndarray:
    """ITM logit + ITC cosine per pair; ``tokens`` is one image per text, or one image for all."""
    scores = []
    for start in range(0, len(texts), batch):
        chunk = tokens if len(tokens) == 1 else tokens[start : start + batch]
        logits = model.itm_logits(texts[start : start + batch], chunk)
        scores.append(match_scores(logits)[0])
    return np.concatenate(scores) + itc


def evaluate(
    library: Library,
    images_dir: str | os.PathLike[str],
    captions_file: str | os.PathLike[str],
    *,
    split: str = "test",
    rerank_depth: int = DEFAULT_RERANK_DEPTH,
    batch_size: int | None = None,
    progress: ProgressFactory = no_progress,
) -> dict[str, Any]:
    """Index the evaluation images into ``library`` and measure retrieval both ways."""
    dataset = load_captions(Path(images_dir), Path(captions_file), split)
    missing = [p for p in dataset.images if not p.is_file()]
    if missing:
        raise InputPathError(f"{len(missing)} listed images are missing, e.g. {missing[0]}.")
    report = library.index([str(p) for p in dataset.images], batch_size=batch_size, progress=progress)
    model = library.model
    keys = [os.fsencode(p) for p in dataset.images]
    blobs = library.db.vectors_for_paths(keys, model.fingerprint)
    failed = [os.fsdecode(k) for k in keys if k not in blobs]
    if failed:
        raise InputPathError(
            f"{len(failed)} images could not be indexed, e.g. {failed[0]} (see `blipsearch failures`)."
        )
    image_vecs = bytes_to_query_vectors([blobs[k] for k in keys], model.dim)

    text_vecs = np.concatenate([model.embed_texts(dataset.texts[s : s + 256])
                                for s in range(0, len(dataset.texts), 256)])
    sims = text_image_scores(text_vecs, image_vecs)  # (texts, images), BLIP-2's best query per image
    truth = dataset.text_image
    n_texts, n_images = sims.shape
    depth = min(rerank_depth, n_images)
    cache = _TokenCache(model, dataset.images)

    # Text -> image.
    order = np.argsort(-sims, axis=1, kind="stable")
    t2i_itc = np.argmax(order == truth[:, None], axis=1)
    t2i_rerank = t2i_itc.copy()
    queries = np.unique(truth)  # images with captions: the image -> text queries
    bar = progress(n_texts + len(queries), "Reranking")
    for t in range(n_texts):
        top = order[t, :depth]
        scores = _itm_plus_itc(model, [dataset.texts[t]] * depth, cache.get(top.tolist()), sims[t, top])
        reranked = top[np.argsort(-scores, kind="stable")]
        hit = np.flatnonzero(reranked == truth[t])
        t2i_rerank[t] = hit[0] if len(hit) else max(t2i_itc[t], depth)
        bar.update(1)

    # Image -> text: correct when any of the image's captions is found. Images listed without
    # captions are distractors for text -> image only.
    order_t = np.argsort(-sims.T[queries], axis=1, kind="stable")
    correct = truth[order_t] == queries[:, None]
    i2t_itc = np.argmax(correct, axis=1)
    i2t_rerank = i2t_itc.copy()
    depth_t = min(rerank_depth, n_texts)
    for q, i in enumerate(queries):
        top = order_t[q, :depth_t]
        scores = _itm_plus_itc(model, [dataset.texts[t] for t in top], cache.get([int(i)]), sims.T[i, top])
        reranked = top[np.argsort(-scores, kind="stable")]
        hit = np.flatnonzero(truth[reranked] == i)
        i2t_rerank[q] = hit[0] if len(hit) else max(i2t_itc[q], depth_t)
        bar.update(1)
    bar.close()

    return {
        "text_to_image": {"itc": recall_at(t2i_itc), "rerank": recall_at(t2i_rerank)},
        "image_to_text": {"itc": recall_at(i2t_itc), "rerank": recall_at(i2t_rerank)},
        "images": n_images,
        "texts": n_texts,
        "image_queries": len(queries),
        "rerank_depth": rerank_depth,
        "model": model.spec,
        "itm_token": model.itm_token,
        "indexed": report.counts(),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['images']} images, {result['texts']} texts, model {result['model']}, "
        f"rerank depth {result['rerank_depth']}",
        f"{'':30}{'R@1':>8}{'R@5':>8}{'R@10':>8}",
    ]
    for direction, label in (("text_to_image", "text->image"), ("image_to_text", "image->text")):
        for method, name in (("itc", "ITC"), ("rerank", "ITC + ITM rerank")):
            row = result[direction][method]
            lines.append(f"{label + '  ' + name:30}" + "".join(f"{100 * row[f'R@{k}']:8.1f}" for k in KS))
    return "\n".join(lines)


__all__ = ["EvalSet", "evaluate", "format_table", "load_captions", "recall_at"]
