"""A loaded checkpoint of any BLIP head: its device, dtype, tokenizer and image settings, and how it loads.

The retrieval families (:mod:`.blip`, :mod:`.blip2`) and the captioning and
question-answering models (:mod:`blipsearch.describe`) are all loaded here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ModelLoadError
from ..images.decode import ImageSpec
from ..system import available_cores, use_compute_threads
from .hub import quiet_transformers
from .loading import check_memory, fingerprint, read_config, resolve_model_dir

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

