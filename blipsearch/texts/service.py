"""A library's text collection and tags: texts added, listed and removed, image-to-text lookup,
and zero-shot tags for any image or for every indexed one."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputPathError, LibraryError
from ..filters import DEFAULT_MIN_PROBABILITY
from ..images.decode import load_pixels
from ..models.loading import ModelIdentity
from ..options import DEFAULT_RERANK_DEPTH
from ..progress import ProgressFactory, no_progress
from ..results import ImageQuery
from ..search.images import query_image
from ..store.schema import TextRow
from ..system import root_path
from . import CAPTIONS, USER, TextEntry, TextHit, TextStore, rank_texts
from .tags import DEFAULT_TEMPLATE, TagResult, Vocabulary

if TYPE_CHECKING:
    from ..workspace import Workspace


class Texts:
    """The texts and tags of the library of ``ws``."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def add(self, entries: list[TextEntry]) -> tuple[int, int]:
        """Add texts to the library's collection; returns (added, already there)."""
        return TextStore(self.ws.db).add(entries, self.ws.texts_model())

    def list(self) -> list[TextRow]:
        """The texts of the library's collection, by id."""
        return TextStore(self.ws.db).list()

    def remove(self, keys: list[str]) -> int:
        """Remove texts by id, or by the id they had in their file; returns how many went."""
        return TextStore(self.ws.db).remove(keys)

    def lookup(self, image: ImageQuery, k: int = 10, *, rerank_depth: int = DEFAULT_RERANK_DEPTH,
               rerank_hits: bool = True, source: str = "texts") -> list[TextHit]:
        """Image to text: the texts (or, with ``source="captions"``, the generated captions) that best
        match ``image``."""
        ws = self.ws
        model = ws.texts_model()
        store = TextStore(ws.db)
        kind = CAPTIONS if source == "captions" else USER
        if kind == CAPTIONS:
            store.sync_captions(model)
        else:
            store.embed_missing(model)
        rows, text_vectors = store.vectors(model.fingerprint, model.dim, kind)
        if not rows:
            raise LibraryError(
                f"The library has no generated captions yet: run {ws.hint('blipsearch index --captions PATH')}."
                if kind == CAPTIONS else
                f"The library has no texts yet: add some with {ws.hint('blipsearch texts add FILE')}."
            )
        depth = rerank_depth if rerank_hits else 0
        vector, tokens = query_image(ws, model, image, need_tokens=depth > 0)
        ids = list(rows)
        texts = [rows[i].text for i in ids]
        ranked = rank_texts(model, vector, tokens, texts, text_vectors, k, depth)
        return [
            TextHit(rank=n + 1, id=ids[j], text=texts[j], score=score, itc=itc, itm=itm,
                    external_id=rows[ids[j]].external_id)
            for n, (j, score, itc, itm) in enumerate(ranked)
        ]

    def tag(self, images: list[str | os.PathLike[str] | bytes], labels: list[str], *,
            template: str = DEFAULT_TEMPLATE, k: int = 5, rerank_depth: int = DEFAULT_RERANK_DEPTH) -> list[TagResult]:
        """Zero-shot tagging: rank ``labels`` for each image (written into ``template``)."""
        model = self.ws.model
        vocabulary = Vocabulary.make(model, labels, template)
        results = []
        for image in images:
            shown = os.fsdecode(os.path.abspath(os.fsencode(image)))  # as every command prints paths
            try:
                vector, tokens = query_image(self.ws, model, image, need_tokens=rerank_depth > 0)
            except InputPathError as exc:
                results.append(TagResult(shown, None, str(exc)))
                continue
            results.append(TagResult(shown, vocabulary.rank(vector, tokens, k, rerank_depth)))
        return results

    def tag_library(self, labels: list[str], paths: list[str | os.PathLike[str] | bytes] | None = None, *,
                    template: str = DEFAULT_TEMPLATE, k: int = 5, rerank_depth: int = DEFAULT_RERANK_DEPTH,
                    progress: ProgressFactory = no_progress) -> int:
        """Store the top ``k`` labels of every indexed image (below ``paths``) not tagged yet with this
        vocabulary. The model loads only when an image is not tagged yet."""
        ws = self.ws
        roots = [root_path(p) for p in paths] if paths else None
        recorded = ws.db.library().model_fingerprint
        identity = ws.loaded_model or ModelIdentity.of(ws.model_spec, ws.quantize)
        if recorded is not None and identity.fingerprint == recorded and not ws.db.untagged(
                roots, recorded, Vocabulary.key_of(Vocabulary.checked(labels, template), template)):
            return 0
        model = ws.texts_model()
        vocabulary = Vocabulary.make(model, labels, template)
        todo = ws.db.untagged(roots, model.fingerprint, vocabulary.key)
        bar = progress(len(todo), "Tagging")
        tagged = 0
        try:
            for content_hash, path, vector in todo:
                tokens = None
                if rerank_depth > 0:
                    try:
                        tokens = model.image_tokens(load_pixels(path, model.image_spec)[None])
                    except Exception:  # noqa: BLE001 - unreadable now: tag by the stored vector alone
                        tokens = None
                tags = vocabulary.rank(np.frombuffer(vector, np.float32), tokens, k, rerank_depth)
                ws.db.save_tags(content_hash, model.fingerprint, vocabulary.key, tags)
                tagged += 1
                bar.update(1)
        finally:
            bar.close()
        return tagged

    def labels(self, min_probability: float = DEFAULT_MIN_PROBABILITY) -> list[tuple[str, int]]:
        """The tag labels of the library's images with the number of images they are a tag of."""
        fp = self.ws.db.library().model_fingerprint
        return self.ws.db.labels(fp, min_probability) if fp else []
