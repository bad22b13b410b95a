"""A text query's ITC vector without torch: BLIP's text encoder, or BLIP-2's Q-Former, in numpy.

A search that reranks nothing needs one thing from the model: the query's 256-d
vector. Both retrieval families compute it with the same BERT layers in the same
order (post-LayerNorm self-attention, then a GELU feed-forward), under other names:

- BLIP (``BlipForImageTextRetrieval``): ``text_proj(text_encoder(ids, mask)[:, 0])``,
  the text encoder without its cross-attention (no image attached);
- BLIP-2 (``Blip2ForImageTextRetrieval``): ``text_projection(qformer(embeddings(ids),
  query_length=0)[:, 0])``, the Q-Former on the text alone: no query tokens, so no
  cross-attention and its text feed-forward (``intermediate``/``output``, not the
  queries' ``*_query``); the embeddings' LayerNorm is the Q-Former's ``layernorm``.

Then L2-normalized. Importing torch and transformers and loading the whole
checkpoint takes most of the seconds a fresh ``blipsearch search --no-rerank``
spends (BLIP-2's: a 1.17-billion-weight model, nearly all of it the ViT-g). This
maps the checkpoint's safetensors, one file or the shards its
``model.safetensors.index.json`` names, and reads only these layers' tensors (never
the vision encoder's: the names read are kept in :attr:`TextQueryEncoder.read`);
it tokenizes with the checkpoint's own ``tokenizer.json`` (the ``tokenizers``
library, no transformers) and runs the layers in float32 (16-bit weights widened as
torch widens them). Tests hold it to the transformers models' vectors.

It is used when a process has not loaded the model anyway (a reranked search
loads it to rerank, and then embeds the text with it). Checkpoints it can't read
(no ``tokenizer.json``, pickled weights, another architecture) take the torch
path, unchanged.
"""

from __future__ import annotations

import json
import math
import mmap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..text import MAX_TOKENS, pre_caption


class Unsupported(Exception):
    """The checkpoint is not one this encoder reads; the torch model will embed the text."""


@dataclass(frozen=True)
class _Layout:
    """Where a family's checkpoint keeps its text path: the config section and tensor names."""

    config: str  # the text encoder's section of config.json
    embeddings: str  # holds word_embeddings and position_embeddings
    embed_norm: str  # the LayerNorm after them
    layers: str  # the encoder's layers, numbered from 0
    self_attention: str  # a layer's self-attention (query, key, value) under it
    projection: str  # first token -> ITC vector


LAYOUTS = {
    "blip": _Layout("text_config", "text_encoder.embeddings.", "text_encoder.embeddings.LayerNorm",
                    "text_encoder.encoder.layer.", "attention.self.", "text_proj"),
    "blip-2": _Layout("qformer_config", "embeddings.", "qformer.layernorm",
                      "qformer.encoder.layer.", "attention.attention.", "text_projection"),
}


# safetensors dtypes read, as numpy's (the format is little-endian); bfloat16 is read as its 16 bits.
_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}
_MAX_HEADER = 100 << 20  # the format's own limit


class _Tensors:
    """A checkpoint's tensors by name, from ``model.safetensors`` or from the shard that
    ``model.safetensors.index.json`` names for each, as float32; ``read`` lists those asked for.

    The files are memory-mapped and a float32 tensor is a read-only view of its bytes (the
    safetensors layout: an 8-byte header length, a JSON header of dtypes, shapes and offsets,
    the data): nothing is copied, and only the pages of the tensors used are ever read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, tuple[mmap.mmap, int, dict[str, Any]]] = {}
        self.read: list[str] = []
        single, index = path / "model.safetensors", path / "model.safetensors.index.json"
        try:
            if single.is_file():
                self.where = dict.fromkeys(self._file(single.name)[2], single.name)
            elif index.is_file():
                shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                self.where = {str(name): str(file) for name, file in shards.items()}
            else:
                raise Unsupported("no model.safetensors or model.safetensors.index.json")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Unsupported(f"weights: {exc}") from None

    def _file(self, name: str) -> tuple[mmap.mmap, int, dict[str, Any]]:
        if name not in self.files:
            if Path(name).name != name or not (self.path / name).is_file():
                raise Unsupported(f"no weights file {name!r}")
            with open(self.path / name, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if size > _MAX_HEADER:
                    raise Unsupported(f"{name} is not a safetensors file")
                header = json.loads(fh.read(size))
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            header.pop("__metadata__", None)
            self.files[name] = (mapped, 8 + size, header)
        return self.files[name]

    def __call__(self, name: str) -> npt.NDArray[np.float32]:
        if name not in self.where:
            raise Unsupported(f"no tensor {name}")
        try:
            mapped, start, header = self._file(self.where[name])
            info = header[name]
            kind = info["dtype"]
            dtype = np.dtype(_DTYPES[kind])
            begin, end = (int(n) for n in info["data_offsets"])
            array = np.frombuffer(mapped, dtype, (end - begin) // dtype.itemsize, start + begin).reshape(info["shape"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Unsupported(f"{name}: {exc!r}") from None
        self.read.append(name)
        if kind == "BF16":  # the upper half of a float32
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array if array.dtype == np.float32 else array.astype(np.float32)

    def linear(self, name: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Weight and bias (a LayerNorm's too)."""
        return self(name + ".weight"), self(name + ".bias")


@dataclass(frozen=True)
class _Layer:
    # Weights as stored, (out, in): products take their transposes as views, copying nothing.
    query: npt.NDArray[np.float32]
    query_bias: npt.NDArray[np.float32]
    key: npt.NDArray[np.float32]
    key_bias: npt.NDArray[np.float32]
    value: npt.NDArray[np.float32]
    value_bias: npt.NDArray[np.float32]
    out: npt.NDArray[np.float32]
    out_bias: npt.NDArray[np.float32]
    norm1: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
    up: npt.NDArray[np.float32]
    up_bias: npt.NDArray[np.float32]
    down: npt.NDArray[np.float32]
    down_bias: npt.NDArray[np.float32]
    norm2: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


class TextQueryEncoder:
    """ITC vectors of texts from a BLIP or BLIP-2 retrieval checkpoint folder, in numpy."""

    def __init__(self, path: Path) -> None:
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            layout = LAYOUTS.get(config.get("model_type"))
            if layout is None:
                raise Unsupported(f"a {config.get('model_type')} model")
            text = config[layout.config]
            self.heads = int(text["num_attention_heads"])
            self.eps = float(text.get("layer_norm_eps", 1e-12))
            activation = text.get("hidden_act", "gelu")
            layers = int(text["num_hidden_layers"])
            self.dim = int(config.get("image_text_hidden_size", 256))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Unsupported(f"config: {exc}") from None
        if activation != "gelu" or text.get("position_embedding_type", "absolute") != "absolute":
            raise Unsupported(f"activation {activation!r}")
        tokenizer = path / "tokenizer.json"
        if not tokenizer.is_file():
            raise Unsupported("no tokenizer.json")

        from tokenizers import Tokenizer

        get = _Tensors(path)
        self.words = get(layout.embeddings + "word_embeddings.weight")
        self.positions = get(layout.embeddings + "position_embeddings.weight")
        self.embed_norm = get.linear(layout.embed_norm)
        self.layers = []
        for n in range(layers):
            at = f"{layout.layers}{n}."
            self.layers.append(_Layer(
                *get.linear(at + layout.self_attention + "query"), *get.linear(at + layout.self_attention + "key"),
                *get.linear(at + layout.self_attention + "value"), *get.linear(at + "attention.output.dense"),
                get.linear(at + "attention.output.LayerNorm"), *get.linear(at + "intermediate.dense"),
                *get.linear(at + "output.dense"), get.linear(at + "output.LayerNorm"),
            ))
        self.proj, self.proj_bias = get.linear(layout.projection)
        self.read: tuple[str, ...] = tuple(get.read)
        if self.proj.shape[0] != self.dim:
            raise Unsupported(f"{layout.projection} does not give image_text_hidden_size")
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(min(MAX_TOKENS, len(self.positions)))
        self.lock = threading.Lock()  # the tokenizer's settings are shared

    def tokenize(self, texts: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Ids and mask (texts, longest), exactly as the model's tokenizer pads and truncates them."""
        with self.lock:
            encoded = self.tokenizer.encode_batch([pre_caption(t) for t in texts])
        longest = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(texts), longest), np.int64)
        mask = np.zeros((len(texts), longest), bool)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = True
        return ids, mask

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """256-d L2-normalized ITC vectors, as :meth:`blipsearch.models.base.RetrievalModel.embed_texts`."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids, mask = self.tokenize(texts)
        x = _layer_norm(self.words[ids] + self.positions[: ids.shape[1]], self.embed_norm, self.eps)
        # Padding is never attended to; a padded position's own output is never read.
        blocked = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        batch, length, hidden = x.shape
        size = hidden // self.heads
        for layer in self.layers:
            q, k, v = ((x @ w.T + b).reshape(batch, length, self.heads, size).transpose(0, 2, 1, 3)
                       for w, b in ((layer.query, layer.query_bias), (layer.key, layer.key_bias),
                                    (layer.value, layer.value_bias)))
            scores = (q @ k.transpose(0, 1, 3, 2)) / np.float32(math.sqrt(size)) + blocked
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attended = (scores / scores.sum(axis=-1, keepdims=True)) @ v
            context = attended.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
            x = _layer_norm(context @ layer.out.T + layer.out_bias + x, layer.norm1, self.eps)
            up = _gelu(x @ layer.up.T + layer.up_bias)
            x = _layer_norm(up @ layer.down.T + layer.down_bias + x, layer.norm2, self.eps)
        vectors = x[:, 0] @ self.proj.T + self.proj_bias
        return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def _layer_norm(x: npt.NDArray[np.float32], params: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
                eps: float) -> npt.NDArray[np.float32]:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / np.sqrt(variance + np.float32(eps)) * params[0] + params[1]  # type: ignore[no-any-return]


def _erf(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The error function to float32 precision (W. J. Cody's rational approximations, as in
    ``math.erf`` and the C library), elementwise, in float64."""
    z = np.abs(x.astype(np.float64))
    out = np.empty_like(z)
    small = z < 0.46875
    t = z[small] ** 2
    out[small] = z[small] * np.polyval(_ERF_P, t) / np.polyval(_ERF_Q, t)
    rest = ~small
    out[rest] = 1.0 - _erfc_large(z[rest])
    return np.copysign(out, x).astype(np.float32)  # type: ignore[no-any-return]


def _erfc_large(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.empty_like(z)
    mid = z < 4.0
    zm = z[mid]
    out[mid] = np.exp(-zm * zm) * np.polyval(_ERFC_P, zm) / np.polyval(_ERFC_Q, zm)
    zl = z[~mid]
    inv = 1.0 / (zl * zl)
    out[~mid] = np.exp(-zl * zl) / zl * (1 / math.sqrt(math.pi) + inv * np.polyval(_ERFC_R, inv) /
                                          np.polyval(_ERFC_S, inv))
    return out


# Cody (1969), "Rational Chebyshev approximations for the error function", highest degree first.
_ERF_P = [1.857777061846031526730e-1, 3.161123743870565596947e0, 1.138641541510501556495e2,
          3.774852376853020208137e2, 3.209377589138469472562e3]
_ERF_Q = [1.0, 2.360129095234412093499e1, 2.440246379344441733056e2, 1.282616526077372275645e3,
          2.844236833439170622273e3]
_ERFC_P = [2.15311535474403846343e-8, 5.64188496988670089180e-1, 8.88314979438837594118e0,
           6.61191906371416294775e1, 2.98635138197400131132e2, 8.81952221241769090411e2,
           1.71204761263407058314e3, 2.05107837782607146532e3, 1.23033935479799725272e3]
_ERFC_Q = [1.0, 1.57449261107098347253e1, 1.17693950891312499305e2, 5.37181101862009857509e2,
           1.62138957456669018874e3, 3.29079923573345962678e3, 4.36261909014324715820e3,
           3.43936767414372163696e3, 1.23033935480374942043e3]
_ERFC_R = [-1.63153871373020978498e-2, -3.05326634961232344035e-1, -3.60344899949804439429e-1,
           -1.25781726111229246204e-1, -1.60837851487422766278e-2, -6.58749161529837803157e-4]
_ERFC_S = [1.0, 2.56852019228982242072e0, 1.87295284992346725209e0, 5.27905102951428412248e-1,
           6.05183413124413191178e-2, 2.33520497626869185443e-3]


def _gelu(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return x * np.float32(0.5) * (np.float32(1.0) + _erf(x / np.float32(math.sqrt(2.0))))  # type: ignore[no-any-return]
