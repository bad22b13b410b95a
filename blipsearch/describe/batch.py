"""Captioning and question answering over files, with the caption cache in the database."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ImageError
from ..index.images import hash_bytes, pixels_from_bytes, read_file
from ..index.indexer import ProgressFactory, no_progress
from ..store.database import Database
from . import Answerer, AnswerSettings, Captioner, CaptionSettings


@dataclass(frozen=True)
class Described:
    """A caption or an answer for one file, or why there is none."""

    path: str
    text: str | None
    error: str | None = None


def _read(path: bytes) -> tuple[bytes | None, str | None]:
    try:
        return read_file(path), None
    except ImageError as exc:
        return None, str(exc)


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
    content with the same prompt, else generated in batches and cached."""
    fp = captioner.fingerprint
    results: dict[bytes, Described] = {}
    todo: list[tuple[bytes, str, bytes]] = []  # path, content hash, file bytes
    for path in paths:
        data, error = _read(path)
        if data is None:
            results[path] = Described(os.fsdecode(path), None, error)
            continue
        todo.append((path, hash_bytes(data), data))
    cached = db.captions(list({h for _, h, _ in todo}), fp, settings.prompt) if db is not None else {}
    missing = [t for t in todo if t[1] not in cached]
    for path, content_hash, _ in todo:
        if content_hash in cached:
            results[path] = Described(os.fsdecode(path), cached[content_hash])
    bar = progress(len(missing), "Captioning")
    try:
        for chunk in _batches(missing, batch_size):
            ready, pixels = [], []
            for path, content_hash, data in chunk:
                try:
                    pixels.append(pixels_from_bytes(data, captioner.checkpoint.image_spec))
                    ready.append((path, content_hash))
                except ImageError as exc:
                    results[path] = Described(os.fsdecode(path), None, str(exc))
            texts = captioner.caption(np.stack(pixels), settings) if pixels else []
            made = {}
            for (path, content_hash), text in zip(ready, texts):
                results[path] = Described(os.fsdecode(path), text)
                made[content_hash] = text
            if db is not None and made:
                db.save_captions(made, fp, captioner.checkpoint.spec, settings.prompt)
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
    """One answer to ``question`` per file."""
    results: dict[bytes, Described] = {}
    for chunk in _batches(list(paths), batch_size):
        ready, pixels = [], []
        for path in chunk:
            data, error = _read(path)
            try:
                if data is None:
                    raise ImageError(error or "unreadable")
                pixels.append(pixels_from_bytes(data, answerer.checkpoint.image_spec))
                ready.append(path)
            except ImageError as exc:
                results[path] = Described(os.fsdecode(path), None, str(exc))
        answers = answerer.answer(np.stack(pixels), question, settings) if pixels else []
        for path, answer in zip(ready, answers):
            results[path] = Described(os.fsdecode(path), answer)
    return [results[p] for p in paths]
