"""Explain a match: where in a photo the ITM head found the query text (Grad-CAM).

The recipe of the BLIP and ALBEF papers' visualisations: in one layer of the
text encoder, keep the cross-attention probabilities from the text's tokens to
the image's patches; take the gradient of the positive ITM logit with respect
to them; weight each probability by its gradient where that gradient is
positive (attention that raised the match score), average over the heads and
over the text's word tokens, drop the image's CLS token and lay the rest out
on the ViT's patch grid.

Default layer. The last layer can't explain anything: after its cross-attention
only position-wise layers follow, so the word tokens' attention there never
reaches the ITM head on the first position and its gradient is exactly zero.
On the built-in shapes-world model (4 text layers), ``benchmarks/explain_shapes.py``
measured every layer on a validation set (the first 276 scenes of the shapes
test split; the tests use the other 276): layer 1 put more than half of the
map's mass on the queried object's half of the picture in the most scenes
(75 % for left objects, 55 % for right ones), layer 0 came close (66 %, 63 %),
layer 2 put the mass on the wrong half for most left objects (23 %). For BLIP-base (12 layers) LAVIS uses block 6.
:func:`default_layer` is the last layer of the encoder's first half: 1 of 4 as
measured here, 5 of 12, next to LAVIS's choice (no BLIP-base weights were at
hand to measure it). ``layer=`` overrides it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import InputPathError, SettingsError
from ..images.heat import COLORMAP, overlay  # noqa: F401 - drawn without torch, named here too
from .base import RetrievalModel
from .blip import CrossAttention


def default_layer(depth: int) -> int:
    """The text-encoder layer whose cross-attention explains a match: the last of the first half (see the module)."""
    return max(0, depth // 2 - 1)


def heat_map(
    model: RetrievalModel, text: str, pixels: npt.NDArray[np.float32], layer: int | None = None
) -> npt.NDArray[np.float32]:
    """The map of :func:`explain_match` alone."""
    return explain_match(model, text, pixels, layer)[0]


def explain_match(
    model: RetrievalModel, text: str, pixels: npt.NDArray[np.float32], layer: int | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(heat map, the pair's two ITM logits). Grad-CAM of the ITM match between ``text`` and one preprocessed image (3, H, W).

    Returns the ViT patch grid (grid_h, grid_w) as a float32 distribution: non-negative,
    summing to 1, so maps of different photos and texts compare on one scale. Where no
    attention raised the match score (every gradient <= 0), or where the text has no word
    left once read (only BLIP's punctuation, control or format characters: a search takes
    such a text too), the map is uniform: nothing to point at. The forward pass is the engine's own layer-by-layer ITM (same weights,
    same [ENC]/[CLS] first token), so the map explains the score that search reports.
    """
    if model.queries > 1:
        raise SettingsError("Explaining a match reads BLIP's text-encoder cross-attention; BLIP-2 matches "
                            "through its Q-Former, which explain does not map yet.")
    if not text.strip():
        raise InputPathError("The text to explain is empty.")
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"heat_map needs one preprocessed image (3, H, W), got shape {pixels.shape}")
    encoder: Any = model.net.text_encoder
    layers = encoder.encoder.layer
    index = default_layer(len(layers)) if layer is None else layer
    if not 0 <= index < len(layers):
        raise SettingsError(f"Layer {layer} does not exist: the text encoder has layers 0 to {len(layers) - 1}.")
    net: Any = model.net
    patch = int(net.config.vision_config.patch_size)
    grid = (pixels.shape[1] // patch, pixels.shape[2] // patch)

    target = layers[index].crossattention.self
    kept: list[torch.Tensor] = []

    with model.computing():
        image = model.image_tokens(pixels[None])
        # Inference tensors (the vision encoder's output, or anything made under a caller's
        # inference_mode) can't be saved for backward: the image tokens are copied and the text
        # tokenized outside inference mode, with grad mode on whatever the caller's.
        with torch.inference_mode(False), torch.enable_grad():
            image = image.clone()[0]
            batch = model.tokenize([text], for_itm=True)
            words = int(batch["attention_mask"].sum()) - 2  # without the first token and the final [SEP]
            hidden = model._text_encoder_layers(batch["input_ids"], batch["attention_mask"],
                                                _keeping_probabilities(image, target, kept))
            logits = net.itm_head(hidden[:, 0])[0]
            if words < 1:
                return _uniform(grid), logits.detach().float().cpu().numpy()
            # Only the kept probabilities: no parameter gradient is computed or accumulated.
            (grad,) = torch.autograd.grad(logits[1], kept[0])
    pair = logits.detach().float().cpu().numpy()
    probs = kept[0].detach()

    # (heads, L, S): text positions 1 .. L-2 are the words; image position 0 is its CLS token.
    cam = (probs.float() * grad.float().clamp(min=0))[0, :, 1 : words + 1, 1:]
    if cam.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"{cam.shape[-1]} image patches do not fill a {grid[0]}x{grid[1]} grid")
    heat = cam.mean(dim=0).mean(dim=0).reshape(grid).cpu().numpy().astype(np.float32)
    total = float(heat.sum())
    if not math.isfinite(total) or total <= 0:
        return _uniform(grid), pair
    return heat / np.float32(total), pair


def _uniform(grid: tuple[int, int]) -> npt.NDArray[np.float32]:
    return np.full(grid, 1.0 / (grid[0] * grid[1]), np.float32)


def _keeping_probabilities(image: torch.Tensor, target: Any, kept: list[torch.Tensor]) -> CrossAttention:
    """Plain cross-attention to ``image`` (S, width) that keeps the ``target`` layer's probabilities.

    Keys and values are the image's own projections, as in the model's forward: the
    probabilities must be the very tensor the context is computed from, so that their
    gradient is the match score's.
    """

    def attend(cross: Any, states: torch.Tensor) -> torch.Tensor:
        heads, size = cross.num_attention_heads, cross.attention_head_size
        n, length = states.shape[:2]
        query = cross.query(states).view(n, length, heads, size).transpose(1, 2)
        key = cross.key(image).view(-1, heads, size).transpose(0, 1)
        value = cross.value(image).view(-1, heads, size).transpose(0, 1)
        probs = (query @ key.transpose(-1, -2) / math.sqrt(size)).softmax(dim=-1)
        if cross is target:
            kept.append(probs)
        return (probs @ value).transpose(1, 2).flatten(2)

    return attend


