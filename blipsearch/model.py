"""The BLIP retrieval model: ITC embeddings for both modalities and the ITM head.

Recipes (see the project's BLIP notes):

- image vector: ``vision_proj(vision_model(pixels).last_hidden_state[:, 0])``, L2-normalized;
- text vector: ``text_proj(text_encoder(ids, mask).last_hidden_state[:, 0])``, L2-normalized
  (unimodal: no image attached);
- ITM: the text's first token replaced by ``[ENC]``, the text encoder cross-attending
  to all image tokens, ``itm_head`` on the first position.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from .errors import ModelLoadError
from .index.images import ImageSpec
from .loading import (
    check_memory,
    check_route,
    fingerprint,
    model_family,
    quiet_transformers,
    read_config,
    resolve_model_dir,
    route_fingerprint,
)
from .options import DEFAULT_MODEL
from .system import LONG_OPERATION, Coalescer, available_cores, use_compute_threads
from .text import MAX_TOKENS, pre_caption

ItmToken = Literal["enc", "cls"]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but this torch build sees no CUDA GPU.")
    if device.type == "mps" and not _mps_available():
        raise ModelLoadError("--device mps was asked for, but this machine or torch build has no Apple GPU (MPS).")
    return device


def decode_workers(device: torch.device) -> int:
    """Threads reading and decoding images for a model on ``device``.

    On a CPU the model needs the cores: at about 1 image/s for BLIP-base on two
    cores, up to 4 decode threads (about 15 camera photos/s each) never starve it. A
    GPU embeds hundreds of images a second, so every core decodes; Pillow
    releases the GIL while it decodes and resizes.
    """
    cores = available_cores()
    return min(4, cores) if device.type == "cpu" else cores


def default_dtype(device: torch.device) -> torch.dtype:
    # Half precision on GPUs; on CPUs without native bf16/fp16 it is ~10x slower than fp32.
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


@dataclass(frozen=True)
class Checkpoint:
    """A BLIP model of any head, loaded with its tokenizer and image settings."""

    spec: str
    path: Path
    fingerprint: str
    net: torch.nn.Module
    tokenizer: object
    image_spec: ImageSpec
    device: torch.device
    dtype: torch.dtype
    # One forward pass at a time: threads sharing the model (the web server's requests) queue per
    # call, so a short text embedding waits for one batch of a rerank, not for the whole rerank.
    lock: threading.RLock = field(default_factory=threading.RLock, compare=False, repr=False)

    @property
    def enc_token_id(self) -> int:
        return _enc_token_id(self.tokenizer, int(self.net.config.text_config.vocab_size))

    def pixel_values(self, pixels: npt.NDArray[np.float32] | torch.Tensor) -> torch.Tensor:
        """Preprocessed images (N, 3, H, W) as the model's input, on its device and in its dtype."""
        return torch.as_tensor(pixels).to(self.device, self.dtype)

    @contextmanager
    def computing(self, long_operations: bool = False) -> Iterator[None]:
        """The model for a forward pass: its lock, and on a CPU as many threads as cores are idle
        now, or every core for the vision encoder (see :func:`blipsearch.system.compute_threads`)."""
        with self.lock:
            if self.device.type == "cpu":
                use_compute_threads(long_operations)
            yield


@dataclass(frozen=True, eq=False)
class RetrievalModel(Checkpoint):
    """A loaded ``BlipForImageTextRetrieval``: ITC embeddings for both modalities and the ITM head."""

    itm_token: ItmToken = "enc"
    text_batches: Coalescer[list[str], npt.NDArray[np.float32]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_batches", Coalescer(self.lock, self._embed_batches))

    @property
    def dim(self) -> int:
        return int(self.net.config.image_text_hidden_size)

    family = "blip"

    @property
    def queries(self) -> int:
        """ITC vectors per image: one for BLIP (BLIP-2 has one per Q-Former query)."""
        return 1

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

    @torch.inference_mode()
    def _embed_now(self, texts: list[str]) -> npt.NDArray[np.float32]:
        batch = self.tokenize(texts)
        with self.computing():  # the coalescer holds the lock already; this takes the threads
            hidden = self.net.text_encoder(**batch).last_hidden_state
        vectors = torch.nn.functional.normalize(self.net.text_proj(hidden[:, 0]).float(), dim=-1)
        return vectors.cpu().numpy()

    # -- images -------------------------------------------------------------
    @torch.inference_mode()
    def image_tokens(self, pixels: npt.NDArray[np.float32] | torch.Tensor) -> torch.Tensor:
        """The vision encoder's full output (batch, tokens, hidden), on the model's device."""
        values = self.pixel_values(pixels)
        work = self.vision_work(values.shape[0], values.shape[-2], values.shape[-1])
        with self.computing(long_operations=work >= LONG_OPERATION):
            return self.net.vision_model(pixel_values=values).last_hidden_state

    @torch.inference_mode()
    def project_images(self, tokens: torch.Tensor) -> npt.NDArray[np.float32]:
        vectors = torch.nn.functional.normalize(self.net.vision_proj(tokens[:, 0]).float(), dim=-1)
        return vectors.cpu().numpy()

    def embed_images(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """256-d L2-normalized ITC vectors for a batch of preprocessed images (N, 3, H, W)."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.project_images(self.image_tokens(pixels))

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


def _enc_token_id(tokenizer: object, vocab_size: int) -> int:
    token_id = tokenizer.convert_tokens_to_ids("[ENC]")  # type: ignore[attr-defined]
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:  # type: ignore[attr-defined]
        return token_id
    # The hub's converted checkpoints ship a plain bert tokenizer without [ENC];
    # BLIP's text encoder put it last in its vocabulary (id 30523 of 30524),
    # after [DEC]: two ids past the tokenizer's own.
    if vocab_size == len(tokenizer) + 2:  # type: ignore[arg-type]
        return vocab_size - 1
    logging.getLogger(__name__).warning(
        "The tokenizer has no [ENC] token and the text encoder's vocabulary (%d) is not BLIP's layout "
        "(the tokenizer's %d words, then [DEC] and [ENC]): image-text matching starts with [CLS] instead.",
        vocab_size, len(tokenizer))  # type: ignore[arg-type]
    return int(tokenizer.cls_token_id)  # type: ignore[attr-defined]


def check_family(spec: str, path: Path, model_class: type) -> None:
    """A BLIP-2 checkpoint where BLIP is wanted, or the reverse, is refused by name before loading."""
    wanted = "blip-2" if model_class.__name__.startswith("Blip2") else "blip"
    found = read_config(path).get("model_type")
    if found != wanted:
        names = {"blip": "BLIP", "blip-2": "BLIP-2"}
        raise ModelLoadError(f"{spec} is a {names.get(str(found), str(found))} checkpoint, and this needs a "
                             f"{names[wanted]} one ({model_class.__name__}).")


def load_checkpoint(
    spec: str, role: str, model_class: type, description: str, example: str,
    device: str = "auto", dtype: torch.dtype | None = None,
) -> Checkpoint:
    """Resolve ``spec`` (hub id, folder or ``builtin:NAME``) and load it as ``model_class``.

    A checkpoint of another head (say a captioner given where a retrieval model
    is needed) lacks weights that would silently be random: it is refused.
    """
    from transformers import AutoTokenizer
    path = resolve_model_dir(spec, role)
    torch_device = select_device(device)
    image_spec = ImageSpec.from_model_dir(path)
    torch_dtype = dtype or default_dtype(torch_device)
    check_family(spec, path, model_class)
    check_memory(spec, path, torch.empty((), dtype=torch_dtype).element_size(), torch_device)
    try:
        with quiet_transformers():
            net, info = model_class.from_pretrained(path, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"Can't load a {description} from {path}: {exc}") from None
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ModelLoadError(
            f"{spec} is not a {description} checkpoint: it lacks {len(missing)} weights "
            f"({', '.join(sorted(missing)[:3])}, ...). Use a model such as {example}."
        )
    net = net.to(torch_device, torch_dtype).eval()
    for name in getattr(net, "_keep_in_fp32_modules", None) or ():  # BLIP-2's Q-Former, as transformers keeps it
        part = getattr(net, name, None)
        if isinstance(part, torch.nn.Module):
            part.float()
        elif isinstance(part, torch.nn.Parameter):
            part.data = part.data.float()
    use_fused_attention(net)
    logging.getLogger(__name__).debug("loaded %s on %s (%s)", spec, torch_device, torch_dtype)
    return Checkpoint(spec, path, fingerprint(path), net, tokenizer, image_spec, torch_device, torch_dtype)


def use_fused_attention(net: torch.nn.Module) -> int:
    """Compute BLIP's vision self-attention with torch's fused ``scaled_dot_product_attention``.

    transformers' ``BlipAttention`` multiplies, scales, softmaxes and multiplies
    again in separate passes over a (heads, 577, 577) score tensor per image;
    the fused kernel does the same arithmetic in one, about 1.1-1.2x faster for
    the whole ViT-B/16 at 384 px on a 2-core CPU (outputs within 1e-5). Same
    weights; modules of an unexpected layout are left alone. Returns how many
    modules were switched.
    """
    from transformers.models.blip.modeling_blip import BlipAttention

    class FusedBlipAttention(BlipAttention):
        def forward(self, hidden_states: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, None]:
            if self.training and self.dropout.p > 0:
                return super().forward(hidden_states, **kwargs)
            bsz, n, dim = hidden_states.shape
            qkv = self.qkv(hidden_states).reshape(bsz, n, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
            context = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
            return self.projection(context.transpose(1, 2).reshape(bsz, n, dim)), None

    switched = 0
    for module in net.modules():
        if type(module) is BlipAttention and all(hasattr(module, a) for a in ("qkv", "projection", "scale", "num_heads", "dropout")):
            module.__class__ = FusedBlipAttention
            switched += 1
    return switched


def quantize_vision_int8(net: torch.nn.Module) -> None:
    """Dynamic int8 quantization of the vision encoder's linear layers (CPU only).

    Image vectors move a little (cosine to fp32 >= 0.99 in benchmarks/quantize.py),
    so a library records the route and refuses to mix it with fp32 vectors.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        net.vision_model = torch.ao.quantization.quantize_dynamic(
            net.vision_model, {torch.nn.Linear}, dtype=torch.qint8
        )


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
        from .blip2 import Blip2RetrievalModel

        return Blip2RetrievalModel(**{**vars(ckpt), "fingerprint": fp}, itm_token="cls")
    return RetrievalModel(**{**vars(ckpt), "fingerprint": fp}, itm_token=itm_token)
