"""Captioning and question answering over files, with the caption cache in the database."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import ImageError
from ..images.decode import ImageSpec, hash_bytes, pixels_from_bytes, read_file
from ..options import AnswerSettings, CaptionSettings
from ..progress import ProgressFactory, no_progress
from ..store.database import Database
from .blip import Answerer, Captioner
from .decoding import ChoiceScore


@dataclass(frozen=True)
class Described:
    """A caption or an answer for one file, or why there is none."""

    path: str
    text: str | None
    error: str | None = None
    choices: list[ChoiceScore] | None = None  # an answer ranked from a list: every choice's scores


def _read(path: bytes) -> tuple[bytes | None, str | None]:
    try:
        return read_file(path), None
    except ImageError as exc:
        return None, str(exc)


def _decode(
    chunk: Sequence[tuple[bytes, bytes, str | None]], spec: ImageSpec, results: dict[bytes, Described]
) -> tuple[list[tuple[bytes, str | None]], npt.NDArray[np.float32] | None]:
    """Pixels of each (path, file bytes, content hash) that decodes; failures go into ``results``."""
    ready, pixels = [], []
    for path, data, content_hash in chunk:
        try:
            pixels.append(pixels_from_bytes(data, spec))
            ready.append((path, content_hash))
        except ImageError as exc:
            results[path] = Described(os.fsdecode(path), None, str(exc))
    return ready, (np.stack(pixels) if pixels else None)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:  # type: ignore[type-arg]
    for start in range(0, len(items), size):
        yield items[start : start + size]


def caption_paths(
    db: Database | None,
    captioner: Captioner,
    paths: Sequence[bytes],
    settings: CaptionSettings = CaptionSettings(),
    batch_size: int = 8,
    progress: ProgressFactory = no_progress,
) -> list[Described]:
    """Captions for ``paths``: from the cache when this model already captioned the same
    content with the same prompt and decoding settings, else generated in batches and cached."""
    fp = captioner.fingerprint
    results: dict[bytes, Described] = {}
    todo: list[tuple[bytes, bytes, str]] = []  # path, file bytes, content hash
    for path in paths:
        data, error = _read(path)
        if data is None:
            results[path] = Described(os.fsdecode(path), None, error)
            continue
        todo.append((path, data, hash_bytes(data)))
    cached = db.captions(list({h for _, _, h in todo}), fp, settings.cache_key) if db is not None else {}
    missing = [t for t in todo if t[2] not in cached]
    for path, _, content_hash in todo:
        if content_hash in cached:
            results[path] = Described(os.fsdecode(path), cached[content_hash])
    bar = progress(len(missing), "Captioning")
    try:
        for chunk in _batches(missing, batch_size):
            ready, pixels = _decode(chunk, captioner.checkpoint.image_spec, results)
            texts = captioner.caption(pixels, settings) if pixels is not None else []
            made = {}
            for (path, content_hash), text in zip(ready, texts):
                results[path] = Described(os.fsdecode(path), text)
                made[str(content_hash)] = text
            if db is not None and made:
                db.save_captions(made, fp, captioner.checkpoint.spec, settings.cache_key)
            bar.update(len(chunk))
    finally:
        bar.close()
    return [results[p] for p in paths]


def answer_paths(
    answerer: Answerer,
    paths: Sequence[bytes],
    question: str,
    settings: AnswerSettings = AnswerSettings(),
    batch_size: int = 8,
) -> list[Described]:
    """One answer to ``question`` per file: generated, or the best of ``settings.choices``."""
    results: dict[bytes, Described] = {}
    for chunk in _batches(list(paths), batch_size):
        readable = []
        for path in chunk:
            data, error = _read(path)
            if data is None:
                results[path] = Described(os.fsdecode(path), None, error)
            else:
                readable.append((path, data, None))
        ready, pixels = _decode(readable, answerer.checkpoint.image_spec, results)
        if pixels is None:
            continue
        if settings.choices:
            for (path, _), ranked in zip(ready, answerer.rank(pixels, question, settings)):
                results[path] = Described(os.fsdecode(path), ranked.answer, choices=ranked.choices)
        else:
            for (path, _), answer in zip(ready, answerer.answer(pixels, question, settings)):
                results[path] = Described(os.fsdecode(path), answer)
    return [results[p] for p in paths]
