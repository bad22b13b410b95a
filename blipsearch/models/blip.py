"""The BLIP retrieval model (``BlipForImageTextRetrieval``): ITC embeddings for both modalities and the ITM head.

Recipes (see the project's BLIP notes):

- image vector: ``vision_proj(vision_model(pixels).last_hidden_state[:, 0])``, L2-normalized;
- text vector: ``text_proj(text_encoder(ids, mask).last_hidden_state[:, 0])``, L2-normalized
  (unimodal: no image attached);
- ITM: the text's first token replaced by ``[ENC]``, the text encoder cross-attending
  to all image tokens, ``itm_head`` on the first position.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..text import MAX_TOKENS, pre_caption
from .base import RetrievalModel


@dataclass(frozen=True, eq=False)
class BlipRetrievalModel(RetrievalModel):
    """A loaded ``BlipForImageTextRetrieval``: ITC embeddings for both modalities and the ITM head."""

    family = "blip"

    @property
    def queries(self) -> int:
        """ITC vectors per image: one for BLIP (BLIP-2 has one per Q-Former query)."""
        return 1

    # -- text ---------------------------------------------------------------
    def tokenize(self, texts: list[str], *, for_itm: bool = False) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            [pre_caption(t) for t in texts],
            padding="longest",
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        ids = batch["input_ids"].clone()
        if for_itm and self.itm_token == "enc":
            ids[:, 0] = self.enc_token_id
        return {"input_ids": ids.to(self.device), "attention_mask": batch["attention_mask"].to(self.device)}

    @torch.inference_mode()
    def _embed_now(self, texts: list[str]) -> npt.NDArray[np.float32]:
        batch = self.tokenize(texts)
        with self.computing():  # the coalescer holds the lock already; this takes the threads
            hidden = self.net.text_encoder(**batch).last_hidden_state
        vectors = torch.nn.functional.normalize(self.net.text_proj(hidden[:, 0]).float(), dim=-1)
        return vectors.cpu().numpy()

    # -- images -------------------------------------------------------------
    @torch.inference_mode()
    def project_images(self, tokens: torch.Tensor) -> npt.NDArray[np.float32]:
        vectors = torch.nn.functional.normalize(self.net.vision_proj(tokens[:, 0]).float(), dim=-1)
        return vectors.cpu().numpy()

    # -- image-text matching -----------------------------------------------
    @torch.inference_mode()
    def itm_logits(self, texts: list[str], tokens: torch.Tensor) -> npt.NDArray[np.float32]:
        """ITM logits (N, 2) for N (text, image) pairs.

        ``tokens`` are vision-encoder outputs: one per text, or a single image
        (batch of 1) matched against every text. The text encoder runs layer by
        layer here so that cross-attention can skip most of its work (see
        :func:`_shared_image_attention` and :func:`_absorbed_attention`); texts
        as long as an attention head is wide take the model's own forward.
        Same layers and weights either way: tests check all paths agree.
        """
        if tokens.shape[0] not in (1, len(texts)):
            raise ValueError("itm_logits needs one image per text, or a single image")
        batch = self.tokenize(texts, for_itm=True)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        config: Any = self.net.text_encoder.config  # type: ignore[union-attr]
        head_size = config.hidden_size // config.num_attention_heads
        with self.computing():
            if tokens.shape[0] == 1 and len(texts) > 1:
                hidden = self._text_encoder_layers(ids, mask, _shared_image_attention(tokens[0]))
            elif ids.shape[1] < head_size:
                hidden = self._text_encoder_layers(ids, mask, _absorbed_attention(tokens))
            else:
                image_mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
                hidden = self.net.text_encoder(
                    **batch, encoder_hidden_states=tokens, encoder_attention_mask=image_mask
                ).last_hidden_state
            return self.net.itm_head(hidden[:, 0]).float().cpu().numpy()

    def _text_encoder_layers(self, ids: torch.Tensor, mask: torch.Tensor, cross_attend: CrossAttention) -> torch.Tensor:
        """BLIP's text encoder forward with image cross-attention computed by ``cross_attend``."""
        encoder = self.net.text_encoder
        hidden = encoder.embeddings(input_ids=ids)
        dtype = hidden.dtype
        # Additive mask over padded text positions, as the model's eager attention expects.
        self_mask = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        for layer in encoder.encoder.layer:
            attended, _ = layer.attention(hidden, attention_mask=self_mask)
            context = cross_attend(layer.crossattention.self, attended)
            attended = layer.crossattention.output(context, attended)
            hidden = layer.feed_forward_chunk(attended)
        return hidden


# Computes a cross-attention layer's context (before its output projection)

# for text states (N, L, hidden), from the layer's query/key/value modules.
CrossAttention = Callable[[Any, torch.Tensor], torch.Tensor]  # (BlipTextSelfAttention, states)


def _queries(cross: Any, states: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The layer's queries (N, L, heads, head size), with the head count and size."""
    heads, size = cross.num_attention_heads, cross.attention_head_size
    return cross.query(states).view(*states.shape[:2], heads, size), heads, size


def _shared_image_attention(image: torch.Tensor) -> CrossAttention:
    """N texts against one image (S, width): the image's keys and values computed once per layer.

    Projecting an image's tokens to keys and values in every layer is about
    two thirds of a pair's cost and depends only on the image. The texts'
    queries attend to them through one batched product per head
    (broadcasting them over the texts would copy them once per text).
    """

    def attend(cross: Any, states: torch.Tensor) -> torch.Tensor:
        query, heads, size = _queries(cross, states)
        key = cross.key(image).view(-1, heads, size)
        value = cross.value(image).view(-1, heads, size)
        scores = torch.einsum("nlhd,shd->nhls", query, key) / math.sqrt(size)
        return torch.einsum("nhls,shd->nlhd", scores.softmax(dim=-1), value).flatten(2)

    return attend


def _absorbed_attention(images: torch.Tensor) -> CrossAttention:
    """N texts, each against its own image (N, S, width), without projecting the images' tokens.

    A head's score ``q . (W_k x + b_k)`` equals ``(W_k^T q) . x`` plus a term
    that is the same for every image token and so cancels in the softmax; and
    since softmax weights sum to one, ``sum_s p_s (W_v x_s + b_v)`` equals
    ``W_v (sum_s p_s x_s) + b_v``. Per pair and layer, attending in the
    image's own width costs about 2 x heads x text length x tokens x width
    multiply-adds, where projecting the tokens costs 2 x tokens x width x
    hidden: ~3x less in all for a 12-token query on BLIP-base, break-even
    when the text is as long as a head is wide. Exact up to float
    rounding; needs every image token visible (no image mask), as here.
    """

    def attend(cross: Any, states: torch.Tensor) -> torch.Tensor:
        query, heads, size = _queries(cross, states)
        n, length = states.shape[:2]
        # (N, heads * L, width): each head's queries carried into the image tokens' width.
        reach = torch.einsum("nlhd,hdc->nhlc", query, cross.key.weight.view(heads, size, -1)) / math.sqrt(size)
        weights = (reach.flatten(1, 2) @ images.transpose(1, 2)).softmax(dim=-1)
        mixed = (weights @ images).view(n, heads, length, -1)
        context = torch.einsum("nhlc,hdc->nlhd", mixed, cross.value.weight.view(heads, size, -1))
        return (context + cross.value.bias.view(heads, size)).flatten(2)

    return attend

