"""BLIP checkpoints in their original layouts, written out in the Hugging Face layout.

Two layouts are read:

- **salesforce**: the BLIP repository's ``model_base_retrieval_coco.pth`` and friends
  (``{"model": state_dict, ...}``; the ViT as ``visual_encoder.blocks.N``, BERT as
  ``text_encoder`` / ``text_decoder``, with momentum copies and queues that only
  training uses);
- **mmpretrain**: OpenMMLab's ``blip-base_3rdparty_*.pth`` (``{"state_dict": ...,
  "meta": ...}``; mmpretrain's ViT as ``vision_backbone.layers.N`` (``visual_encoder.layers.N``
  in the captioner), BERT as ``text_backbone`` / ``multimodal_backbone`` /
  ``seq_gen_head.decoder`` / ``vqa_head.decoder``, projections in necks, the ITM head
  in ``multimodal_head``).

Every key is mapped by one rule, dropped as training-only state (listed in
:data:`TRAINING_ONLY`), or set aside as belonging to another head (a pre-trained
checkpoint holds the encoder *and* the decoder). A key no rule knows is an error:
a converter that skipped it would hand back a model with random weights.

Files are read with ``torch.load(weights_only=True)``: tensors and plain
containers, never arbitrary pickled objects. The result is a folder as the hub
has it: ``config.json``, ``model.safetensors``, the tokenizer (with BLIP's
``[DEC]`` and ``[ENC]`` added, ids 30522 and 30523 for ``bert-base-uncased``)
and ``preprocessor_config.json`` (the image size read from the position table).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InputPathError, ModelLoadError

if TYPE_CHECKING:
    import torch

Head = Literal["retrieval", "caption", "vqa"]
Layout = Literal["salesforce", "mmpretrain"]
HEADS: tuple[Head, ...] = ("retrieval", "caption", "vqa")
DEFAULT_TOKENIZER = "google-bert/bert-base-uncased"
VISION_EPS = 1e-6  # the original ViT's LayerNorm (transformers' default is 1e-5)
TEXT_EPS = 1e-12  # BERT's
HEAD_WIDTH = 64  # every BLIP attention head, ViT-B/L and BERT-base alike

# (original, Hugging Face): "{n}" is a layer number; a pattern ending in "." is a prefix, any other a whole key.
SALESFORCE_RULES: tuple[tuple[str, str], ...] = (
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
    ("visual_encoder.blocks.{n}.norm1.", "vision_model.encoder.layers.{n}.layer_norm1."),
    ("visual_encoder.blocks.{n}.attn.qkv.", "vision_model.encoder.layers.{n}.self_attn.qkv."),
    ("visual_encoder.blocks.{n}.attn.proj.", "vision_model.encoder.layers.{n}.self_attn.projection."),
    ("visual_encoder.blocks.{n}.norm2.", "vision_model.encoder.layers.{n}.layer_norm2."),
    ("visual_encoder.blocks.{n}.mlp.fc1.", "vision_model.encoder.layers.{n}.mlp.fc1."),
    ("visual_encoder.blocks.{n}.mlp.fc2.", "vision_model.encoder.layers.{n}.mlp.fc2."),
    ("visual_encoder.norm.", "vision_model.post_layernorm."),
    ("text_encoder.embeddings.", "text_encoder.embeddings."),
    ("text_encoder.encoder.", "text_encoder.encoder."),
    ("text_decoder.bert.embeddings.", "text_decoder.bert.embeddings."),
    ("text_decoder.bert.encoder.", "text_decoder.bert.encoder."),
    ("text_decoder.cls.predictions.", "text_decoder.cls.predictions."),
    ("vision_proj.", "vision_proj."),
    ("text_proj.", "text_proj."),
    ("itm_head.", "itm_head."),
)


def _mmpretrain_rules(head: Head) -> tuple[tuple[str, str], ...]:
    """(mmpretrain, original) for one of mmpretrain's BLIP classes: ``BlipRetrieval`` (vision_backbone,
    text_backbone, necks, multimodal_head), ``BlipCaption`` (visual_encoder, seq_gen_head) or ``BlipVQA``
    (vision_backbone, multimodal_backbone, vqa_head). Its ViT is mmpretrain's own (``layers.N.ln1``, ``ffn``)."""
    vit = "visual_encoder." if head == "caption" else "vision_backbone."
    rules = [
        (vit + "cls_token", "visual_encoder.cls_token"),
        (vit + "pos_embed", "visual_encoder.pos_embed"),
        (vit + "patch_embed.projection.", "visual_encoder.patch_embed.proj."),
        (vit + "layers.{n}.ln1.", "visual_encoder.blocks.{n}.norm1."),
        (vit + "layers.{n}.attn.qkv.", "visual_encoder.blocks.{n}.attn.qkv."),
        (vit + "layers.{n}.attn.proj.", "visual_encoder.blocks.{n}.attn.proj."),
        (vit + "layers.{n}.ln2.", "visual_encoder.blocks.{n}.norm2."),
        (vit + "layers.{n}.ffn.layers.0.0.", "visual_encoder.blocks.{n}.mlp.fc1."),
        (vit + "layers.{n}.ffn.layers.1.", "visual_encoder.blocks.{n}.mlp.fc2."),
        (vit + "ln1.", "visual_encoder.norm."),  # the final norm (a layer's first is layers.N.ln1)
    ]
    if head == "retrieval":
        rules += [("text_backbone.", "text_encoder."), ("vision_neck.", "vision_proj."),
                  ("text_neck.", "text_proj."), ("multimodal_head.fc.", "itm_head.")]
    elif head == "caption":
        rules += [("seq_gen_head.decoder.", "text_decoder.")]
    else:
        rules += [("multimodal_backbone.", "text_encoder."), ("vqa_head.decoder.", "text_decoder.")]
    return tuple(rules)


# Every mmpretrain class's rules at once: their prefixes never collide.
MMPRETRAIN_RULES: tuple[tuple[str, str], ...] = tuple(
    dict.fromkeys(rule for head in ("retrieval", "caption", "vqa") for rule in _mmpretrain_rules(head)))

# What training alone uses: momentum encoders, the contrastive queues and their pointer, the
# temperature (mmpretrain also holds it as head.temp), position-id buffers, preprocessing buffers.
TRAINING_ONLY = re.compile(
    r"^(?:\w+_m\.|(?:head\.)?(?:(?:image|text|idx|ptr)_queue|queue_ptr|temp)$|data_preprocessor\.|.*\.position_ids$)"
)

# Which original parts each head keeps.
_PARTS: dict[Head, tuple[str, ...]] = {
    "retrieval": ("visual_encoder.", "text_encoder.", "vision_proj.", "text_proj.", "itm_head."),
    "caption": ("visual_encoder.", "text_decoder."),
    "vqa": ("visual_encoder.", "text_encoder.", "text_decoder."),
}


def _compile(rules: tuple[tuple[str, str], ...], reverse: bool = False) -> list[tuple[re.Pattern[str], str]]:
    compiled = []
    for source, target in rules:
        if reverse:
            source, target = target, source
        pattern = re.escape(source).replace(re.escape("{n}"), r"(?P<n>\d+)")
        compiled.append((re.compile("^" + pattern + ("" if source.endswith(".") else "$")),
                         target.replace("{n}", r"\g<n>")))
    return compiled


def _rename(state: dict[str, Any], rules: tuple[tuple[str, str], ...], what: str,
            reverse: bool = False) -> dict[str, Any]:
    """Every key through the first rule that matches; training-only state dropped; others an error."""
    compiled = _compile(rules, reverse)
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state.items():
        if TRAINING_ONLY.match(key):
            continue
        for pattern, target in compiled:
            if pattern.match(key):
                new = pattern.sub(target, key, count=1)
                if new in out:
                    raise ModelLoadError(f"Two keys of the {what} checkpoint map to {new}: it is not a BLIP "
                                         "checkpoint.")
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ModelLoadError(
            f"{len(unknown)} keys of the {what} checkpoint have no place in a BLIP model "
            f"({', '.join(sorted(unknown)[:4])}{', ...' if len(unknown) > 4 else ''}): it is another "
            "kind of model, or a layout this converter does not know."
        )
    return out


def detect_layout(keys: list[str]) -> Layout:
    if any(k.startswith("visual_encoder.blocks.") for k in keys):
        return "salesforce"
    if any(k.startswith(("vision_backbone.layers.", "visual_encoder.layers.")) for k in keys):
        return "mmpretrain"
    raise ModelLoadError("This file is neither a Salesforce BLIP checkpoint (visual_encoder.blocks.*) nor an "
                         "mmpretrain BLIP checkpoint (vision_backbone.layers.* or visual_encoder.layers.*).")


def to_original(state: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """Map a Salesforce or mmpretrain checkpoint's weights to the Salesforce names."""
    return state if layout == "salesforce" else _rename(state, MMPRETRAIN_RULES, "mmpretrain")


def heads_present(original: dict[str, Any]) -> list[Head]:
    """The heads whose every part the checkpoint holds, most specific first."""
    prefixes = {k.split(".", 1)[0] + "." for k in original}
    return [h for h in ("vqa", "retrieval", "caption") if all(p in prefixes for p in _PARTS[h])]


def choose_head(original: dict[str, Any], wanted: Head | None, source: str) -> Head:
    present = heads_present(original)
    if wanted is not None:
        if wanted not in present:
            missing = [p.rstrip(".") for p in _PARTS[wanted] if not any(k.startswith(p) for k in original)]
            raise ModelLoadError(f"{source} can't make a BLIP {wanted} model: it has no {', '.join(missing)} "
                                 f"weights{' (it holds a ' + ' or '.join(present) + ' model)' if present else ''}.")
        return wanted
    # A retrieval fine-tune has no decoder, a captioner no encoder; a VQA model both without the ITM head.
    if present in (["retrieval"], ["caption"], ["vqa"]):
        return present[0]
    if "vqa" in present and "retrieval" not in present:
        return "vqa"
    if not present:
        raise ModelLoadError(f"{source} holds no complete BLIP model (vision encoder plus a text encoder or decoder).")
    raise ModelLoadError(f"{source} holds several BLIP heads ({', '.join(present)}; a pre-trained checkpoint): "
                         "say which with --head.")


def to_hugging_face(original: dict[str, Any], head: Head) -> tuple[dict[str, Any], list[str]]:
    """The Hugging Face state dict of ``head``, and the original parts set aside as other heads'."""
    kept = {k: v for k, v in original.items() if k.startswith(_PARTS[head]) and not TRAINING_ONLY.match(k)}
    parts = {k.split(".", 1)[0] for k in original if not TRAINING_ONLY.match(k)}
    aside = sorted(parts - {k.split(".", 1)[0] for k in kept})
    return _rename(kept, SALESFORCE_RULES, "BLIP"), aside


def from_hugging_face(state: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """The inverse mapping: a Hugging Face BLIP's weights under the original names of ``layout``."""
    original = _rename(state, SALESFORCE_RULES, "Hugging Face", reverse=True)
    if layout == "salesforce":
        return original
    head: Head = "retrieval" if "itm_head.weight" in original else \
        "vqa" if "text_encoder.embeddings.word_embeddings.weight" in original else "caption"
    return _rename(original, _mmpretrain_rules(head), "original", reverse=True)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file, unwrapped from ``model`` / ``state_dict`` / ``module``."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} holds Python objects beyond tensors, which blipsearch does not unpickle "
                             f"(torch.load with weights_only=True said: {first}).") from None
    except Exception as exc:  # noqa: BLE001 - whatever torch.load makes of a file that is no checkpoint
        raise ModelLoadError(f"Can't read {path} as a PyTorch checkpoint: {exc}") from None
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} is not a state dict of tensors (nor one wrapped in 'model' or 'state_dict').")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _shape(state: dict[str, Any], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ModelLoadError(f"The checkpoint lacks {key}: it is not a complete BLIP model.")
    return tuple(state[key].shape)


def _layers(state: dict[str, Any], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))) or not found:
        raise ModelLoadError(f"The checkpoint's {prefix}N layers are not numbered 0..N-1: it is incomplete.")
    return len(found)


def _heads(width: int, what: str) -> int:
    if width % HEAD_WIDTH:
        raise ModelLoadError(f"The {what} is {width} wide, not a multiple of BLIP's {HEAD_WIDTH}-wide heads: "
                             "pass its config with --config.")
    return width // HEAD_WIDTH


@dataclass(frozen=True)
class TokenIds:
    vocab: int
    pad: int
    bos: int
    sep: int


def infer_config(hf: dict[str, Any], head: Head, tokens: TokenIds) -> dict[str, Any]:
    """A ``BlipConfig`` dict read from the weights' shapes (head width 64, the original LayerNorm epsilons)."""
    width = _shape(hf, "vision_model.embeddings.class_embedding")[-1]
    positions = _shape(hf, "vision_model.embeddings.position_embedding")[1]
    patch = _shape(hf, "vision_model.embeddings.patch_embedding.weight")[-1]
    side = round((positions - 1) ** 0.5)
    if side * side != positions - 1:
        raise ModelLoadError(f"The vision encoder's {positions} positions are not a square grid plus one.")
    vision = {
        "hidden_size": width,
        "intermediate_size": _shape(hf, "vision_model.encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": _layers(hf, "vision_model.encoder.layers."),
        "num_attention_heads": _heads(width, "vision encoder"),
        "image_size": side * patch,
        "patch_size": patch,
        "layer_norm_eps": VISION_EPS,
    }
    text_prefix = "text_encoder." if head != "caption" else "text_decoder.bert."
    text_width = _shape(hf, text_prefix + "embeddings.word_embeddings.weight")[1]
    vocab = _shape(hf, text_prefix + "embeddings.word_embeddings.weight")[0]
    if vocab != tokens.vocab:
        raise ModelLoadError(f"The text model's vocabulary has {vocab} words and the tokenizer {tokens.vocab} "
                             "(with [DEC] and [ENC]): pass the tokenizer it was trained with (--tokenizer).")
    text = {
        "vocab_size": vocab,
        "hidden_size": text_width,
        "encoder_hidden_size": _shape(hf, text_prefix + "encoder.layer.0.crossattention.self.key.weight")[1],
        "intermediate_size": _shape(hf, text_prefix + "encoder.layer.0.intermediate.dense.weight")[0],
        "num_hidden_layers": _layers(hf, text_prefix + "encoder.layer."),
        "num_attention_heads": _heads(text_width, "text model"),
        "max_position_embeddings": _shape(hf, text_prefix + "embeddings.position_embeddings.weight")[0],
        "layer_norm_eps": TEXT_EPS,
        "pad_token_id": tokens.pad,
        "bos_token_id": tokens.bos,
        "sep_token_id": tokens.sep,
    }
    config: dict[str, Any] = {"vision_config": vision, "text_config": text}
    if head == "retrieval":
        config["image_text_hidden_size"] = _shape(hf, "vision_proj.weight")[0]
    return config


def _model_class(head: Head) -> Any:
    import transformers

    return getattr(transformers, {"retrieval": "BlipForImageTextRetrieval", "caption": "BlipForConditionalGeneration",
                                  "vqa": "BlipForQuestionAnswering"}[head])


def blip_tokenizer(spec: str) -> Any:
    """The tokenizer named by ``spec`` with BLIP's two extra tokens: ``[DEC]`` (bos) then ``[ENC]``."""
    from transformers import AutoTokenizer, BertTokenizer

    from .hub import resolve_tokenizer_dir

    folder = resolve_tokenizer_dir(spec)
    try:
        if (folder / "tokenizer_config.json").is_file() or not (folder / "vocab.txt").is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder)
        else:  # a bare vocabulary: BLIP's tokenizer is BERT's, lower-cased
            tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Can't load the tokenizer {spec}: {exc}") from None
    if tokenizer.convert_tokens_to_ids("[DEC]") in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    else:
        tokenizer.bos_token = "[DEC]"
    if tokenizer.convert_tokens_to_ids("[ENC]") in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def image_processor_config(size: int) -> dict[str, Any]:
    """BLIP's image preprocessing at ``size`` px, as the hub's ``preprocessor_config.json`` says it."""
    return {
        "image_processor_type": "BlipImageProcessor",
        "processor_class": "BlipProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }


@dataclass
class Converted:
    source: Path
    out: Path
    layout: Layout
    head: Head
    weights: int  # tensors written
    dropped: int  # training-only tensors left out
    set_aside: list[str] = field(default_factory=list)  # parts of other heads

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "out": str(self.out), "layout": self.layout, "head": self.head,
                "weights": self.weights, "dropped": self.dropped, "set_aside": self.set_aside}


def convert(source: Path, out: Path, head: Head | None = None, tokenizer: str = DEFAULT_TOKENIZER,
            config: Path | None = None) -> Converted:
    """Write ``source`` (a Salesforce or mmpretrain BLIP ``.pth``) to ``out`` in the Hugging Face layout.

    The folder appears whole or not at all: it is written beside ``out`` and renamed into place.
    ``config``: a ``config.json`` to use instead of the one read from the weights' shapes.
    """
    import torch

    source = Path(source)
    if not source.is_file():
        raise InputPathError(f"{source} is not a file: give the .pth checkpoint to convert.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputPathError(f"{out} already exists and is not an empty folder: choose another output folder.")
    state = read_state(source)
    layout = detect_layout(list(state))
    original = to_original(state, layout)
    chosen = choose_head(original, head, str(source))
    hf, aside = to_hugging_face(original, chosen)
    tok = blip_tokenizer(tokenizer)
    ids = TokenIds(len(tok), int(tok.pad_token_id), int(tok.convert_tokens_to_ids("[DEC]")), int(tok.sep_token_id))
    if config is not None:
        try:
            config_dict = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputPathError(f"Can't read the config {config}: {exc}") from None
    else:
        config_dict = infer_config(hf, chosen, ids)
    from transformers import BlipConfig

    from .hub import quiet_transformers

    model = _model_class(chosen)(BlipConfig(**config_dict))
    result = model.load_state_dict(hf, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"{source} does not fill a BLIP {chosen} model: "
            + "; ".join(f"{what}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                        for what, keys in (("missing", missing), ("unexpected", result.unexpected_keys)) if keys)
        )
    for key, value in model.state_dict().items():
        if key in hf and value.shape != hf[key].shape:  # load_state_dict raised for these already
            raise ModelLoadError(f"{key} has shape {tuple(hf[key].shape)}, the model {tuple(value.shape)}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with torch.no_grad(), quiet_transformers():
            model.save_pretrained(staging)
            tok.save_pretrained(staging)
        size = int(model.config.vision_config.image_size)
        (staging / "preprocessor_config.json").write_text(json.dumps(image_processor_config(size), indent=2) + "\n")
        (staging / "converted_from.json").write_text(json.dumps(
            {"source": os.path.basename(source), "layout": layout, "head": chosen}, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    dropped = sum(1 for k in state if TRAINING_ONLY.match(k))
    return Converted(source, out, layout, chosen, len(hf), dropped, aside)
