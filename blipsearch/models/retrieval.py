"""Loading a retrieval model of either family, by what its ``config.json`` says it is."""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from ..options import DEFAULT_MODEL
from .base import RetrievalModel
from .blip import BlipRetrievalModel
from .blip2 import Blip2RetrievalModel
from .checkpoint import ItmToken, load_checkpoint, quantize_vision_int8, select_device
from .loading import check_route, model_family, route_fingerprint


def load_retrieval_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    itm_token: ItmToken = "enc",
    dtype: torch.dtype | None = None,
    quantize: str = "none",
) -> RetrievalModel:
    """Load a BLIP ITM checkpoint (hub id, local folder or ``builtin:NAME``).

    ``quantize="int8"`` runs the vision encoder with int8 weights on the CPU;
    the route becomes part of the model's fingerprint.
    """
    from transformers import Blip2ForImageTextRetrieval, BlipForImageTextRetrieval

    check_route(quantize)
    if quantize == "int8" and select_device(device).type != "cpu":
        raise ModelLoadError("--quantize int8 is a CPU route: use it with --device cpu.")
    blip2 = model_family(spec) == "blip-2"
    model_class = Blip2ForImageTextRetrieval if blip2 else BlipForImageTextRetrieval
    ckpt = load_checkpoint(spec, "retrieval", model_class, "BLIP-2 image-text retrieval" if blip2 else
                           "BLIP image-text retrieval", "Salesforce/blip2-itm-vit-g-coco" if blip2 else DEFAULT_MODEL,
                           device, dtype)
    if quantize == "int8":
        quantize_vision_int8(ckpt.net)
    fp = route_fingerprint(ckpt.fingerprint, quantize)
    if blip2:
        return Blip2RetrievalModel(**{**vars(ckpt), "fingerprint": fp}, itm_token="cls")
    return BlipRetrievalModel(**{**vars(ckpt), "fingerprint": fp}, itm_token=itm_token)
