"""Captions, answers and explanations for a library's photos and for any image file."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import ImageError, InputPathError
from ..images.decode import open_image, pixels_from_bytes
from ..options import AnswerSettings, CaptionSettings
from ..progress import ProgressFactory, no_progress
from ..rerank.itm import match_scores
from ..results import Explanation, Hit, ImageQuery
from ..search.images import image_bytes
from ..system import root_path
from ..text import same_answer
from . import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_VQA_MODEL,
    Answerer,
    Captioner,
    load_answerer,
    load_captioner,
)
from .batch import Described, answer_paths, caption_paths

if TYPE_CHECKING:
    from ..workspace import Workspace

# The photo an explanation is drawn over is decoded to at least this size (JPEG drafts).
EXPLAIN_SIZE = 1024


class Describing:
    """Words about the photos of the library of ``ws`` (and any image file), from its caption
    and VQA models."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._captioner: Captioner | None = None
        self._answerer: Answerer | None = None

    @property
    def captioner(self) -> Captioner:
        if self._captioner is None:
            ws = self.ws
            with ws.load_lock:
                if self._captioner is None:
                    self._captioner = load_captioner(self._caption_spec(), ws.device)
        return self._captioner

    def loaded(self) -> list[str]:
        """Which of its models are loaded: ``"caption"``, ``"vqa"``."""
        return [kind for kind, model in (("caption", self._captioner), ("vqa", self._answerer)) if model is not None]

    def _caption_spec(self) -> str:
        return self.ws.companion(self.ws.requested_caption_model, DEFAULT_CAPTION_MODEL)

    def caption_fingerprint(self) -> str:
        """The caption model's fingerprint: the loaded one's, else read from its files, no weights loaded.
        Finding the files is what fails for a model that is missing (offline, mistyped), within seconds."""
        if self._captioner is not None:
            return self._captioner.fingerprint
        from ..models.loading import fingerprint, model_family, resolve_model_dir

        spec = self._caption_spec()
        model_family(spec, "caption")  # a config that is no BLIP (-2) checkpoint is refused here too
        return fingerprint(resolve_model_dir(spec, "caption"))

    @property
    def answerer(self) -> Answerer:
        if self._answerer is None:
            ws = self.ws
            with ws.load_lock:
                if self._answerer is None:
                    self._answerer = load_answerer(ws.companion(ws.requested_vqa_model, DEFAULT_VQA_MODEL),
                                                   ws.device)
        return self._answerer

    def caption(self, images: list[str | os.PathLike[str] | bytes], settings: CaptionSettings = CaptionSettings(),
                *, batch_size: int = 8, progress: ProgressFactory = no_progress) -> list[Described]:
        """Captions for any image files; cached by content, model, prompt and decoding settings."""
        return caption_paths(self.ws.db, self.captioner, [root_path(p) for p in images], settings, batch_size,
                             progress)

    def ask(self, images: list[str | os.PathLike[str] | bytes], question: str,
            settings: AnswerSettings = AnswerSettings(), *, batch_size: int = 8) -> list[Described]:
        """One answer to ``question`` per image file."""
        if not question.strip():
            raise InputPathError("The question is empty.")
        return answer_paths(self.answerer, [root_path(p) for p in images], question, settings, batch_size)

    def caption_library(self, paths: list[str | os.PathLike[str] | bytes] | None = None,
                        settings: CaptionSettings = CaptionSettings(), *, batch_size: int = 8,
                        progress: ProgressFactory = no_progress) -> int:
        """Caption every indexed image (below ``paths``) that has no caption from this model and settings;
        the model loads only when one needs a caption."""
        ws = self.ws
        todo = ws.db.uncaptioned([root_path(p) for p in paths] if paths else None, self.caption_fingerprint(),
                                 settings.cache_key)
        if not todo:
            return 0
        self.captioner.check(settings)
        done = caption_paths(ws.db, self.captioner, [p for _, p in todo], settings, batch_size, progress)
        return sum(d.text is not None for d in done)

    def describe(self, hits: list[Hit], caption: CaptionSettings | None = None,
                 question: str | None = None, answers: AnswerSettings = AnswerSettings()) -> list[Hit]:
        """The hits with ``caption`` and/or ``answer`` filled in."""
        if question is not None and not question.strip():
            raise InputPathError("The question is empty.")
        paths = [os.fsencode(h.path) for h in hits]
        if caption is not None:
            texts = caption_paths(self.ws.db, self.captioner, paths, caption)
            hits = [replace(h, caption=d.text) for h, d in zip(hits, texts)]
        if question is not None:
            said = answer_paths(self.answerer, paths, question, answers)
            hits = [replace(h, answer=d.text) for h, d in zip(hits, said)]
        return hits

    @staticmethod
    def keep_answer(hits: list[Hit], expected: str) -> list[Hit]:
        """The hits whose answer is ``expected`` (case and final punctuation ignored), renumbered."""
        kept = [h for h in hits if h.answer is not None and same_answer(h.answer, expected)]
        return [replace(h, rank=n + 1) for n, h in enumerate(kept)]

    def explain(self, image: ImageQuery, text: str, *, layer: int | None = None) -> Explanation:
        """Where in ``image`` the ITM head finds ``text`` (see :mod:`blipsearch.models.explain`)."""
        from ..models.explain import explain_match

        if not text.strip():
            raise InputPathError("The text to explain is empty.")
        model = self.ws.model
        data = image_bytes(self.ws, image)
        try:
            pixels = pixels_from_bytes(data, model.image_spec)
            photo, _ = open_image(data, (EXPLAIN_SIZE, EXPLAIN_SIZE))
        except ImageError as exc:
            raise InputPathError(f"Can't read this image: {exc}") from None
        heat, logits = explain_match(model, text, pixels, layer)
        _, probability = match_scores(logits[None])
        return Explanation(heat, float(probability[0]), photo)
