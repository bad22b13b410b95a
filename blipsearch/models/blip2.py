"""The BLIP-2 retrieval model (``Blip2ForImageTextRetrieval``): many ITC vectors per image, and its ITM head.

Recipes (BLIP-2 paper; transformers' forward; LAVIS's ``compute_sim_matrix``):

- image vectors: the Q-Former's query outputs (32 queries for the released models)
  cross-attending to the ViT's output -> ``vision_projection`` -> L2-normalized: one
  256-d vector per query;
- text vector: the Q-Former run on the text alone -> ``text_projection`` of the first
  token -> L2-normalized;
- ITC similarity of an image and a text: the **maximum** over the image's query vectors
  of their cosines with the text;
- ITM: the queries and the text (``[CLS]`` first, no ``[ENC]``) through the Q-Former
  together, cross-attending to the image; ``itm_head`` on each query's output, **averaged
  over the queries**. The paper reranks an ITC shortlist with it, scoring
  ITM positive logit + ITC similarity, as BLIP does.

The Q-Former and the query tokens stay in fp32 on a GPU while the ViT runs in fp16,
as transformers keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..text import MAX_TOKENS, pre_caption
from .base import RetrievalModel


@dataclass(frozen=True, eq=False)
class Blip2RetrievalModel(RetrievalModel):
    """A loaded ``Blip2ForImageTextRetrieval``: ``queries`` ITC vectors per image, one per text."""

    family = "blip-2"

    @property
    def queries(self) -> int:
        return int(self.net.config.num_query_tokens)

    # -- text ---------------------------------------------------------------
    def tokenize(self, texts: list[str], *, for_itm: bool = False) -> dict[str, torch.Tensor]:
        positions = int(self.net.config.qformer_config.max_position_embeddings)
        batch = self.tokenizer([pre_caption(t) for t in texts], padding="longest", truncation=True,  # type: ignore[operator]
                               max_length=min(MAX_TOKENS, positions), return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    @torch.inference_mode()
    def _embed_now(self, texts: list[str]) -> npt.NDArray[np.float32]:
        net: Any = self.net
        batch = self.tokenize(texts)
        with self.computing():
            hidden = net.qformer(query_embeds=net.embeddings(input_ids=batch["input_ids"]), query_length=0,
                                 attention_mask=batch["attention_mask"]).last_hidden_state
        projected = net.text_projection(hidden[:, 0].to(net.text_projection.weight.dtype))
        return torch.nn.functional.normalize(projected.float(), dim=-1).cpu().numpy()

    # -- images -------------------------------------------------------------
    def _query_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        net: Any = self.net
        queries = net.query_tokens.expand(tokens.shape[0], -1, -1)
        mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
        return net.qformer(query_embeds=queries, encoder_hidden_states=tokens,  # type: ignore[no-any-return]
                           encoder_attention_mask=mask).last_hidden_state

    @torch.inference_mode()
    def project_images(self, tokens: torch.Tensor) -> npt.NDArray[np.float32]:
        """(N, queries, dim) L2-normalized query vectors from vision-encoder outputs."""
        net: Any = self.net
        with self.computing():
            out = self._query_outputs(tokens)
        projected = net.vision_projection(out.to(net.vision_projection.weight.dtype))
        return torch.nn.functional.normalize(projected.float(), dim=-1).cpu().numpy()

    def embed_images(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if len(pixels) == 0:
            return np.zeros((0, self.queries, self.dim), np.float32)
        return self.project_images(self.image_tokens(pixels))

    # -- image-text matching -----------------------------------------------
    @torch.inference_mode()
    def itm_logits(self, texts: list[str], tokens: torch.Tensor) -> npt.NDArray[np.float32]:
        """ITM logits (N, 2) for N (text, image) pairs, averaged over the queries' outputs."""
        if tokens.shape[0] not in (1, len(texts)):
            raise ValueError("itm_logits needs one image per text, or a single image")
        net: Any = self.net
        batch = self.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        images = tokens.expand(len(texts), -1, -1) if tokens.shape[0] == 1 else tokens
        queries = net.query_tokens.expand(len(texts), -1, -1)
        n = queries.shape[1]
        with self.computing():
            embeds = net.embeddings(input_ids=ids, query_embeds=queries)
            hidden = net.qformer(
                query_embeds=embeds, query_length=n,
                attention_mask=torch.cat([mask.new_ones((len(texts), n)), mask], dim=1),
                encoder_hidden_states=images,
                encoder_attention_mask=torch.ones(images.shape[:-1], dtype=torch.long, device=images.device),
            ).last_hidden_state
        logits = net.itm_head(hidden[:, :n].to(net.itm_head.weight.dtype)).float().mean(dim=1)
        return logits.cpu().numpy()  # type: ignore[no-any-return]
