"""What every retrieval family implements: ITC vectors for texts and images, and ITM logits.

:class:`RetrievalModel` holds what BLIP (:mod:`.blip`) and BLIP-2 (:mod:`.blip2`)
share: the vision encoder's tokens, batching of query texts, batch sizes and
decode threads. Each family says how a text is tokenized and embedded, how
vision tokens become ITC vectors, and how its ITM head scores a pair.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from ..system import LONG_OPERATION, Coalescer
from .checkpoint import Checkpoint, ItmToken, decode_workers


@dataclass(frozen=True, eq=False)
class RetrievalModel(Checkpoint, ABC):
    """A loaded retrieval checkpoint: ITC embeddings for both modalities and an ITM head."""

    itm_token: ItmToken = "enc"
    text_batches: Coalescer[list[str], npt.NDArray[np.float32]] = field(init=False, compare=False, repr=False)

    family: ClassVar[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_batches", Coalescer(self.lock, self._embed_batches))

    @property
    def dim(self) -> int:
        return int(self.net.config.image_text_hidden_size)

    @property
    @abstractmethod
    def queries(self) -> int:
        """ITC vectors per image: one for BLIP, one per Q-Former query for BLIP-2."""

    @property
    def batch_size(self) -> int:
        """Images per vision-encoder call when indexing and reranking: the ViT at 384 px runs
        fastest in small batches on a CPU (benchmarks/indexing.py), larger ones keep a GPU busy,
        and small models (the built-in one) are dominated by per-call costs, so they batch more."""
        if self.device.type != "cpu":
            return 16
        return 2 if self.vision_work(1) >= LONG_OPERATION // 2 else 16

    def vision_work(self, images: int, height: int | None = None, width: int | None = None) -> int:
        """Multiply-adds of one of the vision encoder's linear layers for ``images`` images."""
        vision: Any = self.net.config.vision_config
        h, w = height or self.image_spec.height, width or self.image_spec.width
        tokens = (h // vision.patch_size) * (w // vision.patch_size) + 1
        return int(images * tokens * vision.hidden_size**2)

    @property
    def decode_workers(self) -> int:
        return decode_workers(self.device)

    # -- text ---------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: list[str], *, for_itm: bool = False) -> dict[str, torch.Tensor]:
        """Token ids and attention masks for texts (the family's text preprocessing applied)."""

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """256-d L2-normalized ITC vectors for texts (BLIP text preprocessing applied).

        Threads calling at once share forward passes: whoever gets the model next embeds
        every text waiting by then in one batch. A few query texts cost about as much as
        one (the encoder's weights are read once either way), so a server under load
        answers several searches for the price of one. Padding is masked: a text's vector
        does not depend on what it was batched with (up to float rounding).
        """
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.text_batches(list(texts))

    def _embed_batches(self, requests: list[list[str]]) -> list[npt.NDArray[np.float32]]:
        vectors = self._embed_now([text for texts in requests for text in texts])
        ends = np.cumsum([len(texts) for texts in requests])
        return np.split(vectors, ends[:-1])

    @abstractmethod
    def _embed_now(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """ITC vectors of texts, in one forward pass (the coalescer holds the model's lock)."""

    # -- images -------------------------------------------------------------
    @torch.inference_mode()
    def image_tokens(self, pixels: npt.NDArray[np.float32] | torch.Tensor) -> torch.Tensor:
        """The vision encoder's full output (batch, tokens, hidden), on the model's device."""
        values = self.pixel_values(pixels)
        work = self.vision_work(values.shape[0], values.shape[-2], values.shape[-1])
        with self.computing(long_operations=work >= LONG_OPERATION):
            return self.net.vision_model(pixel_values=values).last_hidden_state

    @abstractmethod
    def project_images(self, tokens: torch.Tensor) -> npt.NDArray[np.float32]:
        """ITC vectors from vision tokens: (N, dim) for one vector per image, (N, queries, dim) for several."""

    def embed_images(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """L2-normalized ITC vectors for a batch of preprocessed images (N, 3, H, W)."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.project_images(self.image_tokens(pixels))

    # -- image-text matching -----------------------------------------------
    @abstractmethod
    def itm_logits(self, texts: list[str], tokens: torch.Tensor) -> npt.NDArray[np.float32]:
        """ITM logits (N, 2) for N (text, image) pairs: ``tokens`` one image per text, or one for all."""
