"""Train the three tiny shapes-world BLIP checkpoints shipped in ``blipsearch/builtin/shapes``.

Usage::

    python -m blipsearch.shapes.train --out blipsearch/builtin/shapes --seed 0

Writes, each in the Hugging Face hub layout and loadable with ``from_pretrained``
like Salesforce's BLIP checkpoints:

- ``retrieval/`` ``BlipForImageTextRetrieval``, trained with ITC (symmetric
  InfoNCE, learnable temperature, scene-identity soft targets) plus ITM with
  hard negatives: ITC-similarity-mined in-batch images and texts, and captions
  whose colors, shapes or sides are swapped;
- ``caption/`` ``BlipForConditionalGeneration``, language modelling of
  ``"a picture of " + caption``;
- ``vqa/`` ``BlipForQuestionAnswering``, answer generation from ``[ENC]`` + question;

plus ``TRAINING.json`` (command, seed, wall time, data sizes, hyperparameters,
held-out test metrics). As in BLIP, the captioning and VQA models start from
the retrieval model's weights (vision encoder; text encoder for their text
modules). Last, the retrieval model's text encoder and ITM head get more ITC +
ITM steps with the vision encoder frozen (ITM refinement; ``--refine-only``
runs just this stage on a saved checkpoint).

Runs on CUDA when available, else CPU. Training times and the figures of the
shipped checkpoints are in ``blipsearch/builtin/shapes/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipImageProcessorPil,
    BlipTextConfig,
    BlipVisionConfig,
)

from blipsearch.shapes import evaluate, world

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Punctuation the BERT basic tokenizer splits off; in the vocab so that user
# queries with it do not turn into [UNK].
_PUNCTUATION = ["?", ",", ".", "!", "'", "-"]


@dataclass
class Sizes:
    """Transformer sizes shared by the three models."""

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 8
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    max_positions: int = 64


@dataclass
class Hyper:
    """Everything that determines a training run besides the seed."""

    sizes: Sizes = field(default_factory=Sizes)
    train_images: int = 50000
    test_images: int = 400
    rerank_k: int = 16
    retrieval_steps: int = 1200
    retrieval_batch: int = 256
    retrieval_lr: float = 1e-3
    temp_init: float = 0.07
    itm_weight: float = 2.0
    # ITC also contrasts each image against its caption with one attribute
    # changed (mostly the shape): in-batch negatives rarely differ from a
    # scene only in shape, so without these the embedding learns colors long
    # before shapes. Swaps (binding) are left to ITM.
    itc_changed_negatives: bool = True
    itc_shape_change_prob: float = 0.7
    # Share of ITC-mined ITM negatives replaced by uniformly drawn ones: easy
    # negatives get the matcher off the "always no" plateau early on.
    itm_easy_frac: float = 0.5
    # ITM refinement: more ITC + ITM steps on the frozen vision encoder (text side only).
    itm_refine_steps: int = 3000
    itm_refine_batch: int = 64
    itm_refine_lr: float = 3e-4
    itm_refine_temp: float = 0.04
    itm_refine_easy_frac: float = 0.2
    caption_steps: int = 1500
    caption_batch: int = 128
    caption_lr: float = 5e-4
    vqa_steps: int = 1500
    vqa_batch: int = 128
    vqa_lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    # Probability that an ITC/ITM text is an alternative phrasing rather than the canonical one.
    alt_caption_prob: float = 0.25
    eval_beams: int = 3


# ----------------------------------------------------------------------------- vocabulary


def world_vocabulary() -> list[str]:
    """Special tokens, then every word and punctuation mark the world's texts use."""
    texts: list[str] = [evaluate.CAPTION_PROMPT, "yes no"]
    rng = np.random.default_rng(0)
    for left, right in world.all_pairs():
        texts += [world.canonical_caption(left, right), *world.alternative_captions(left, right)]
        texts += [qa.question + " " + qa.answer for qa in world.questions(left, right, rng)]
    words: set[str] = set()
    for t in texts:
        words.update(re.findall(r"\w+|[^\w\s]", t.lower()))
    return SPECIAL_TOKENS + sorted(words | set(_PUNCTUATION))


def build_tokenizer(directory: Path) -> BertTokenizer:
    """A WordPiece BertTokenizer over the world's vocabulary, with BLIP's [DEC] bos and [ENC] tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(world_vocabulary()) + "\n", encoding="utf-8")
    return BertTokenizer(
        str(vocab),
        do_lower_case=True,
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
        model_max_length=512,
    )


# ----------------------------------------------------------------------------- config and I/O


def make_config(tokenizer: BertTokenizer, sizes: Sizes) -> BlipConfig:
    sep = tokenizer.sep_token_id
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.text_hidden,
        encoder_hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=sizes.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=sep,
        eos_token_id=sep,
    )
    vision = BlipVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=world.IMAGE_SIZE,
        patch_size=sizes.patch_size,
        layer_norm_eps=1e-6,
        # The class default (1e-10) would start position embeddings at zero.
        initializer_range=0.02,
    )
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=256)


def preprocessor_config() -> dict[str, Any]:
    """BlipImageProcessor settings: square bicubic resize to the model size, CLIP normalization."""
    return {
        "image_processor_type": "BlipImageProcessor",
        "processor_class": "BlipProcessor",
        "do_resize": True,
        "size": {"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }


def image_processor() -> BlipImageProcessorPil:
    """The processor that ``preprocessor_config()`` describes, for evaluation."""
    return BlipImageProcessorPil(**{k: v for k, v in preprocessor_config().items() if k not in ("image_processor_type", "processor_class")})


def save_checkpoint(model: torch.nn.Module, tokenizer: BertTokenizer, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2) + "\n")


# ----------------------------------------------------------------------------- data


class Pool:
    """Pre-rendered training scenes as a uint8 tensor plus their object indices."""

    def __init__(self, scenes: Sequence[world.Scene]) -> None:
        self.objects = world.all_objects()
        index = {o: i for i, o in enumerate(self.objects)}
        self.images = torch.from_numpy(np.stack([np.asarray(s.image, dtype=np.uint8) for s in scenes])).permute(0, 3, 1, 2).contiguous()
        self.left = torch.tensor([index[s.left] for s in scenes])
        self.right = torch.tensor([index[s.right] for s in scenes])
        n = len(self.objects)
        self.keys = self.left * n + self.right

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Same arithmetic as BlipImageProcessor at native size: rescale by 1/255, then normalize."""
        x = self.images[idx].to(device).float() * (1 / 255)
        mean = torch.tensor(CLIP_MEAN, device=device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=device)[:, None, None]
        return (x - mean) / std

    def pair(self, i: int) -> tuple[world.Obj, world.Obj]:
        return self.objects[int(self.left[i])], self.objects[int(self.right[i])]


def _render_chunk(args: tuple[str, int, int, int]) -> list[world.Scene]:
    split, count, seed, start = args
    return world.generate(split, count, seed, start=start)


def render_scenes(split: str, count: int, seed: int, workers: int | None = None) -> list[world.Scene]:
    """``world.generate`` spread over processes; identical output, since scene i depends only on (seed, split, i)."""
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if count >= 2000 else 1
    if workers <= 1:
        return world.generate(split, count, seed)
    step = -(-count // (4 * workers))
    chunks = [(split, min(step, count - i), seed, i) for i in range(0, count, step)]
    with ProcessPoolExecutor(workers) as ex:
        return [scene for part in ex.map(_render_chunk, chunks) for scene in part]


def batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches of indices, reshuffled every epoch (all ``n`` in each when there
    are fewer than ``batch``)."""
    if n <= 0:
        raise ValueError("no training examples")
    batch = min(batch, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def describe(left: world.Obj, right: world.Obj, rng: np.random.Generator, alt_prob: float) -> str:
    if rng.random() < alt_prob:
        alts = world.alternative_captions(left, right)
        return alts[int(rng.integers(len(alts)))]
    return world.canonical_caption(left, right)


def perturb(left: world.Obj, right: world.Obj, rng: np.random.Generator) -> tuple[world.Obj, world.Obj]:
    """A different scene content built from this one: the compositional hard negative.

    Swaps colors between the objects, swaps shapes, swaps sides, or changes one
    attribute of one object.
    """
    (lc, ls), (rc, rs) = left, right
    options: list[tuple[world.Obj, world.Obj]] = [(right, left)]
    if lc != rc:
        options.append(((rc, ls), (lc, rs)))
    if ls != rs:
        options.append(((lc, rs), (rc, ls)))
    options.append(change_one(left, right, rng))
    options = [o for o in options if o != (left, right) and o[0] != o[1]]
    return options[int(rng.integers(len(options)))]


def change_one(left: world.Obj, right: world.Obj, rng: np.random.Generator, shape_prob: float = 0.5) -> tuple[world.Obj, world.Obj]:
    """The scene with one attribute of one object replaced (the two objects stay different)."""
    while True:
        side = int(rng.integers(2))
        obj = [left, right][side]
        if rng.random() < shape_prob:
            others = [s for s in world.SHAPES if s != obj[1]]
            new = (obj[0], others[int(rng.integers(len(others)))])
        else:
            others = [c for c in world.COLORS if c != obj[0]]
            new = (others[int(rng.integers(len(others)))], obj[1])
        out = (new, right) if side == 0 else (left, new)
        if out[0] != out[1]:
            return out


# ----------------------------------------------------------------------------- training helpers


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, extra: Sequence[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Norms, biases and embeddings are not decayed, as in BERT/ViT training.
        (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay + list(extra), "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# Per tokenizer object (weakly held, so a new tokenizer never sees another's ids).
_TOKEN_CACHE: weakref.WeakKeyDictionary[BertTokenizer, dict[str, list[int]]] = weakref.WeakKeyDictionary()


def tokenize(tokenizer: BertTokenizer, texts: Sequence[str], device: torch.device, first: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ids and mask, as ``evaluate.tokenize`` gives; each distinct text is tokenized once.

    The world has a few thousand distinct texts, so training steps reuse them.
    """
    cache = _TOKEN_CACHE.setdefault(tokenizer, {})
    missing = [t for t in dict.fromkeys(texts) if t not in cache]
    if missing:
        ids, mask = evaluate.tokenize(tokenizer, missing)
        for t, row, m in zip(missing, ids, mask):
            cache[t] = row[: int(m.sum())].tolist()
    rows = [cache[t] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    if tokenizer.pad_token_id:
        ids.masked_fill_(mask == 0, tokenizer.pad_token_id)
    if first is not None:
        ids[:, 0] = first
    return ids.to(device), mask.to(device)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- retrieval


class RetrievalObjective:
    """ITC + ITM loss of one batch, shared by the main retrieval stage and the ITM refinement.

    ``image_tokens`` are the vision encoder's outputs for the batch: computed
    with gradients in the main stage, read from a frozen cache in refinement.
    """

    def __init__(self, model: BlipForImageTextRetrieval, pool: Pool, tokenizer: BertTokenizer, hp: Hyper, seed: int, device: torch.device, temp_init: float) -> None:
        self.model, self.pool, self.tokenizer, self.hp, self.device = model, pool, tokenizer, hp, device
        # Learnable temperature, kept only for training (inference uses plain cosine).
        self.log_temp = torch.nn.Parameter(torch.tensor(math.log(temp_init), device=device))
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.enc_id = tokenizer.convert_tokens_to_ids("[ENC]")

    def text_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(self.tokenizer, texts, self.device)
        hidden = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return F.normalize(self.model.text_proj(hidden[:, 0]), dim=-1), ids, mask

    def __call__(self, idx: torch.Tensor, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ITC loss, ITM loss, temperature) for the scenes ``idx``."""
        model, pool, hp, rng, gen, device = self.model, self.pool, self.hp, self.rng, self.gen, self.device
        b = len(idx)
        pairs = [pool.pair(int(i)) for i in idx]
        keys = pool.keys[idx].to(device)
        same = keys[:, None] == keys[None, :]

        image_feat = F.normalize(model.vision_proj(image_tokens[:, 0]), dim=-1)
        text_feat, ids, mask = self.text_features([describe(l, r, rng, hp.alt_caption_prob) for l, r in pairs])

        # ITC: scenes with equal content in one batch are all positives (soft targets).
        temp = self.log_temp.exp().clamp(0.01, 0.5)
        sim_i2t = image_feat @ text_feat.T / temp
        targets = same.float() / same.float().sum(1, keepdim=True)
        i2t_logits, i2t_targets = sim_i2t, targets
        if hp.itc_changed_negatives:
            changed = [change_one(l, r, rng, hp.itc_shape_change_prob) for l, r in pairs]
            cfeat, _, _ = self.text_features([describe(l, r, rng, hp.alt_caption_prob) for l, r in changed])
            n_obj = len(pool.objects)
            ckeys = torch.tensor([pool.objects.index(l) * n_obj + pool.objects.index(r) for l, r in changed], device=device)
            # A changed caption can describe another image of the batch: then it is a positive there.
            csame = keys[:, None] == ckeys[None, :]
            i2t_logits = torch.cat([sim_i2t, image_feat @ cfeat.T / temp], dim=1)
            extra = torch.cat([same, csame], dim=1).float()
            i2t_targets = extra / extra.sum(1, keepdim=True)
        loss_itc = 0.5 * (
            -(F.log_softmax(i2t_logits, 1) * i2t_targets).sum(1).mean()
            - (F.log_softmax(sim_i2t.T, 1) * targets).sum(1).mean()
        )

        # ITM negatives mined from ITC similarity, never of the same content.
        with torch.no_grad():
            w_i2t = F.softmax(sim_i2t.detach().float(), 1).masked_fill(same, 0) + 1e-8 * (~same)
            w_t2i = F.softmax(sim_i2t.detach().T.float(), 1).masked_fill(same, 0) + 1e-8 * (~same)
            if hp.itm_easy_frac > 0:
                easy = (torch.rand(b, 1, generator=gen) < hp.itm_easy_frac).to(device)
                uniform = (~same).float()
                w_i2t = torch.where(easy, uniform, w_i2t)
                w_t2i = torch.where(easy, uniform, w_t2i)
            neg_text = torch.multinomial(w_i2t.cpu(), 1, generator=gen).squeeze(1).to(device)
            neg_image = torch.multinomial(w_t2i.cpu(), 1, generator=gen).squeeze(1).to(device)
        # Compositional negatives: this image against its own caption with swapped attributes/sides.
        swapped = [describe(*perturb(l, r, rng), rng, hp.alt_caption_prob) for l, r in pairs]
        sids, smask = tokenize(self.tokenizer, swapped, device)

        enc_ids = ids.clone()
        enc_ids[:, 0] = self.enc_id
        sids[:, 0] = self.enc_id
        width = max(enc_ids.shape[1], sids.shape[1])
        pad = lambda t: F.pad(t, (0, width - t.shape[1]))  # noqa: E731
        all_ids = torch.cat([pad(enc_ids), pad(enc_ids[neg_text]), pad(enc_ids), pad(sids)])
        all_mask = torch.cat([pad(mask), pad(mask[neg_text]), pad(mask), pad(smask)])
        all_img = torch.cat([image_tokens, image_tokens, image_tokens[neg_image], image_tokens])
        hidden = model.text_encoder(
            input_ids=all_ids,
            attention_mask=all_mask,
            encoder_hidden_states=all_img,
            encoder_attention_mask=torch.ones(all_img.shape[:-1], dtype=torch.long, device=device),
        ).last_hidden_state
        logits = model.itm_head(hidden[:, 0])
        labels = torch.cat([torch.ones(b), torch.zeros(3 * b)]).long().to(device)
        return loss_itc, F.cross_entropy(logits, labels), temp


def _optimize(model: torch.nn.Module, objective: RetrievalObjective, tokens_of: Callable[[torch.Tensor], torch.Tensor], name: str, steps: int, batch: int, lr: float, hp: Hyper) -> None:
    """The retrieval training loop: AdamW, warmup + cosine schedule, clipped gradients."""
    opt = make_optimizer(model, lr, hp.weight_decay, [objective.log_temp])
    model.train()
    start = time.time()
    for step, idx in zip(range(steps), batches(len(objective.pool), batch, objective.gen)):
        set_lr(opt, lr_at(step, steps, lr, hp.warmup_frac))
        loss_itc, loss_itm, temp = objective(idx, tokens_of(idx))
        loss = loss_itc + hp.itm_weight * loss_itm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"{name} {step:5d} itc {loss_itc.item():.3f} itm {loss_itm.item():.3f} temp {temp.item():.3f} {time.time() - start:.0f}s")
    model.eval()


def train_retrieval(pool: Pool, tokenizer: BertTokenizer, hp: Hyper, seed: int, device: torch.device) -> BlipForImageTextRetrieval:
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(make_config(tokenizer, hp.sizes)).to(device)
    objective = RetrievalObjective(model, pool, tokenizer, hp, seed, device, hp.temp_init)

    def tokens_of(idx: torch.Tensor) -> torch.Tensor:
        return model.vision_model(pixel_values=pool.pixels(idx, device)).last_hidden_state

    _optimize(model, objective, tokens_of, "retrieval", hp.retrieval_steps, hp.retrieval_batch, hp.retrieval_lr, hp)
    return model


def refine_itm(model: BlipForImageTextRetrieval, pool: Pool, tokens: torch.Tensor, tokenizer: BertTokenizer, hp: Hyper, seed: int, device: torch.device) -> BlipForImageTextRetrieval:
    """More ITC + ITM training with the vision encoder and image projection frozen.

    The image side is read from ``tokens`` (the frozen encoder's outputs), so a
    step costs the text encoder only; image embeddings do not change.
    """
    torch.manual_seed(seed + 3)
    objective = RetrievalObjective(model, pool, tokenizer, replace(hp, itm_easy_frac=hp.itm_refine_easy_frac), seed + 3, device, hp.itm_refine_temp)
    model.vision_model.requires_grad_(False)
    model.vision_proj.requires_grad_(False)
    _optimize(model, objective, lambda idx: tokens[idx].to(device), "itm-refine", hp.itm_refine_steps, hp.itm_refine_batch, hp.itm_refine_lr, hp)
    model.requires_grad_(True)
    return model


# ----------------------------------------------------------------------------- captioning and VQA


def _image_tokens(model: BlipForImageTextRetrieval, pool: Pool, device: torch.device) -> torch.Tensor:
    """Vision token sequences of the whole pool; the vision encoder is frozen after retrieval training."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pool), 512):
            idx = torch.arange(i, min(i + 512, len(pool)))
            out.append(model.vision_model(pixel_values=pool.pixels(idx, device)).last_hidden_state)
    return torch.cat(out)


def _init_text_from(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy every same-named, same-shaped tensor (BLIP's encoder -> decoder initialization)."""
    src = source.state_dict()
    own = target.state_dict()
    own.update({k: v for k, v in src.items() if k in own and own[k].shape == v.shape})
    target.load_state_dict(own)


def train_caption(pool: Pool, tokens: torch.Tensor, base: BlipForImageTextRetrieval, tokenizer: BertTokenizer, hp: Hyper, seed: int, device: torch.device) -> BlipForConditionalGeneration:
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(make_config(tokenizer, hp.sizes)).to(device)
    model.vision_model.load_state_dict(base.vision_model.state_dict())
    _init_text_from(model.text_decoder.bert, base.text_encoder)
    model.vision_model.requires_grad_(False)
    opt = make_optimizer(model, hp.caption_lr, hp.weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    prompt_len = len(tokenizer(evaluate.CAPTION_PROMPT)["input_ids"]) - 1  # [CLS] + prompt words
    model.train()
    start = time.time()
    for step, idx in zip(range(hp.caption_steps), batches(len(pool), hp.caption_batch, gen)):
        set_lr(opt, lr_at(step, hp.caption_steps, hp.caption_lr, hp.warmup_frac))
        texts = [evaluate.CAPTION_PROMPT + world.canonical_caption(*pool.pair(int(i))) for i in idx]
        ids, mask = tokenize(tokenizer, texts, device, first=tokenizer.bos_token_id)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :prompt_len] = -100  # no loss on the prompt, as in BLIP
        out = model.text_decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=tokens[idx],
            labels=labels,
            reduction="mean",
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == hp.caption_steps - 1:
            log(f"caption {step:5d} loss {out.loss.item():.3f} {time.time() - start:.0f}s")
    model.vision_model.requires_grad_(True)
    model.eval()
    return model


def train_vqa(pool: Pool, tokens: torch.Tensor, base: BlipForImageTextRetrieval, tokenizer: BertTokenizer, hp: Hyper, seed: int, device: torch.device) -> BlipForQuestionAnswering:
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(make_config(tokenizer, hp.sizes)).to(device)
    model.vision_model.load_state_dict(base.vision_model.state_dict())
    _init_text_from(model.text_encoder, base.text_encoder)
    _init_text_from(model.text_decoder.bert, base.text_encoder)
    model.vision_model.requires_grad_(False)
    opt = make_optimizer(model, hp.vqa_lr, hp.weight_decay)
    gen = torch.Generator().manual_seed(seed + 2)
    rng = np.random.default_rng(seed + 2)
    enc_id = tokenizer.convert_tokens_to_ids("[ENC]")
    model.train()
    start = time.time()
    for step, idx in zip(range(hp.vqa_steps), batches(len(pool), hp.vqa_batch, gen)):
        set_lr(opt, lr_at(step, hp.vqa_steps, hp.vqa_lr, hp.warmup_frac))
        qas = []
        for i in idx:
            options = world.questions(*pool.pair(int(i)), rng)
            qas.append(options[int(rng.integers(len(options)))])
        q_ids, q_mask = tokenize(tokenizer, [qa.question for qa in qas], device)
        # BLIP puts [ENC] first; callers that keep the tokenizer's [CLS] should
        # still get answers, so a quarter of the questions keep [CLS].
        use_enc = torch.from_numpy(rng.random(len(qas)) < 0.75).to(device)
        q_ids[:, 0] = torch.where(use_enc, enc_id, q_ids[:, 0])
        a_ids, a_mask = tokenize(tokenizer, [qa.answer for qa in qas], device, first=tokenizer.bos_token_id)
        img = tokens[idx]
        question = model.text_encoder(
            input_ids=q_ids,
            attention_mask=q_mask,
            encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long, device=device),
        ).last_hidden_state
        out = model.text_decoder(
            input_ids=a_ids,
            attention_mask=a_mask,
            encoder_hidden_states=question,
            encoder_attention_mask=q_mask,
            labels=a_ids.masked_fill(a_mask == 0, -100),
            reduction="mean",
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == hp.vqa_steps - 1:
            log(f"vqa {step:5d} loss {out.loss.item():.3f} {time.time() - start:.0f}s")
    model.vision_model.requires_grad_(True)
    model.eval()
    return model


# ----------------------------------------------------------------------------- main


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def size_mb(directory: Path) -> float:
    return round((directory / "model.safetensors").stat().st_size / 2**20, 2)


def _prepare(hp: Hyper, seed: int) -> tuple[torch.device, Pool, list[world.Scene]]:
    """Device and torch settings for training, the rendered training pool and the test scenes."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # TF32 matrix products on GPUs that have them; CPU arithmetic is unaffected.
    torch.backends.cuda.matmul.allow_tf32 = True
    # Subnormal floats make CPU matmuls many times slower once weights and
    # activations get tiny; flushing them to zero keeps step times steady.
    torch.set_flush_denormal(True)
    log(f"rendering {hp.train_images} training scenes")
    return device, Pool(render_scenes("train", hp.train_images, seed)), render_scenes("test", hp.test_images, seed)


def run(out: Path, seed: int, hp: Hyper, command: str) -> dict[str, Any]:
    t0 = time.time()
    device, pool, test = _prepare(hp, seed)
    tokenizer = build_tokenizer(out / "retrieval")
    processor = image_processor()

    timings: dict[str, float] = {"render": round(time.time() - t0, 1)}
    t = time.time()
    retrieval = train_retrieval(pool, tokenizer, hp, seed, device)
    timings["retrieval"] = round(time.time() - t, 1)
    save_checkpoint(retrieval, tokenizer, out / "retrieval")

    t = time.time()
    tokens = _image_tokens(retrieval, pool, device)
    caption = train_caption(pool, tokens, retrieval, tokenizer, hp, seed, device)
    timings["caption"] = round(time.time() - t, 1)
    save_checkpoint(caption, tokenizer, out / "caption")

    t = time.time()
    vqa = train_vqa(pool, tokens, retrieval, tokenizer, hp, seed, device)
    timings["vqa"] = round(time.time() - t, 1)
    save_checkpoint(vqa, tokenizer, out / "vqa")

    if hp.itm_refine_steps > 0:
        t = time.time()
        refine_itm(retrieval, pool, tokens, tokenizer, hp, seed, device)
        timings["itm_refine"] = round(time.time() - t, 1)
        save_checkpoint(retrieval, tokenizer, out / "retrieval")
    train_wall = time.time() - t0

    t = time.time()
    metrics = {
        "retrieval": evaluate.retrieval_metrics(retrieval, tokenizer, processor, test, k=hp.rerank_k),
        "caption": evaluate.caption_metrics(caption, tokenizer, processor, test, num_beams=hp.eval_beams),
        "caption_greedy": evaluate.caption_metrics(caption, tokenizer, processor, test, num_beams=1),
        "vqa": evaluate.vqa_metrics(vqa, tokenizer, processor, test, num_beams=hp.eval_beams),
        "vqa_cls_first_token": evaluate.vqa_metrics(vqa, tokenizer, processor, test, num_beams=hp.eval_beams, first_token=None),
    }
    timings["evaluation"] = round(time.time() - t, 1)
    report = {
        "command": command,
        "seed": seed,
        "device": describe_device(device),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "python": platform.python_version()},
        "wall_time_s": {"training_total": round(train_wall, 1), **timings},
        "data": {
            "image_size": world.IMAGE_SIZE,
            "train_images": hp.train_images,
            "train_combinations": len(world.train_pairs()),
            "all_combinations": len(world.all_pairs()),
            "held_out_triples": sorted(list(t) for t in world.HELD_OUT),
            "test_split_seed": seed,
            "test_images": hp.test_images,
            "test_images_with_held_out_triples": sum(s.held_out for s in test),
            "retrieval_gallery": "test scenes with pairwise distinct canonical captions; exactly one correct item per query",
        },
        "hyperparameters": asdict(hp),
        "parameters": {
            "retrieval": sum(p.numel() for p in retrieval.parameters()),
            "caption": sum(p.numel() for p in caption.parameters()),
            "vqa": sum(p.numel() for p in vqa.parameters()),
        },
        "checkpoint_mb": {name: size_mb(out / name) for name in ("retrieval", "caption", "vqa")},
        "metrics": metrics,
    }
    (out / "TRAINING.json").write_text(json.dumps(report, indent=2) + "\n")
    write_readme(out, report)
    return report


def run_refinement(out: Path, seed: int, hp: Hyper, command: str) -> dict[str, Any]:
    """Only the ITM refinement, on the retrieval checkpoint already in ``out``; updates it and TRAINING.json.

    For checkpoints whose earlier stages were trained before the refinement
    stage existed (or elsewhere): the result equals what a full run does last.
    """
    t0 = time.time()
    report_path = out / "TRAINING.json"
    report = json.loads(report_path.read_text())
    device, pool, test = _prepare(hp, seed)
    tokenizer = BertTokenizer.from_pretrained(out / "retrieval")
    model = BlipForImageTextRetrieval.from_pretrained(out / "retrieval", use_safetensors=True).to(device).eval()
    processor = image_processor()
    tokens = _image_tokens(model, pool, device)
    before = evaluate.retrieval_metrics(model, tokenizer, processor, test, k=hp.rerank_k)
    t = time.time()
    refine_itm(model, pool, tokens, tokenizer, hp, seed, device)
    refine_s = round(time.time() - t, 1)
    save_checkpoint(model, tokenizer, out / "retrieval")
    report["metrics"]["retrieval"] = evaluate.retrieval_metrics(model, tokenizer, processor, test, k=hp.rerank_k)
    report["itm_refinement"] = {
        "command": command,
        "device": describe_device(device),
        "wall_time_s": {"total": round(time.time() - t0, 1), "itm_refine": refine_s},
        "settings": {k: v for k, v in asdict(hp).items() if k.startswith("itm_refine")},
        "retrieval_before": before,
    }
    report["checkpoint_mb"]["retrieval"] = size_mb(out / "retrieval")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    write_readme(out, report)
    return report


def reevaluate_retrieval(out: Path, seed: int, hp: Hyper) -> dict[str, Any]:
    """Retrieval figures of the checkpoint already in ``out``, recomputed; updates TRAINING.json and README.md.

    No training: for figures added to the evaluation after a checkpoint was made.
    """
    report_path = out / "TRAINING.json"
    report = json.loads(report_path.read_text())
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cpu")
    model = BlipForImageTextRetrieval.from_pretrained(out / "retrieval", use_safetensors=True).eval()
    tokenizer = BertTokenizer.from_pretrained(out / "retrieval")
    test = render_scenes("test", hp.test_images, seed)
    metrics = evaluate.retrieval_metrics(model, tokenizer, image_processor(), test, k=hp.rerank_k)
    report["metrics"]["retrieval"] = metrics
    report["retrieval_evaluated_on"] = describe_device(device)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    write_readme(out, report)
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _target_note(ret: dict[str, Any]) -> str:
    """States plainly which of the project's retrieval targets a run misses."""
    itc, itm = ret["t2i"]["itc"]["r1"], ret["t2i"]["itm"]["r1"]
    missed = []
    if itc < 0.6:
        missed.append(f"text -> image ITC R@1 is {_pct(itc)} % (target >= 60 %)")
    if itm < itc + 0.10:
        missed.append(f"ITM reranking moves R@1 by {100 * (itm - itc):+.1f} points (target >= +10)")
    if not missed:
        return ""
    return "**Below target:** " + "; ".join(missed) + ".\n\n"


def _errors_note(ret: dict[str, Any]) -> str:
    """What the wrong text -> image top hits get wrong, ITC and reranked."""
    errors = ret.get("top1_errors", {}).get("t2i")
    if not errors:
        return ""

    def part(kinds: dict[str, int]) -> str:
        return f"{sum(kinds.values())} (" + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")"

    return (f"Wrong text -> image top hits, by what they get wrong: ITC {part(errors['itc'])}; "
            f"reranked {part(errors['itm'])}. *binding* is a picture with the query's colors and shapes "
            "arranged differently (sides or attributes swapped), the errors a cross-attention matcher "
            "is there to fix; *color* and *shape* are pictures that show another color or shape.\n\n")


def _refinement_note(report: dict[str, Any]) -> str:
    ref = report.get("itm_refinement")
    if not ref:
        return ""
    before = ref["retrieval_before"]["t2i"]
    first = "The run above did not include this stage (it predates it). " if "itm_refine_steps" not in report["hyperparameters"] else ""
    return f"""
{first}The ITM refinement (the last stage) was run by itself on the saved
retrieval checkpoint, {ref['device']}, {ref['wall_time_s']['itm_refine'] / 60:.1f} minutes:

    {ref['command']}

Before it, text -> image R@1 was {_pct(before['itc']['r1'])} % (ITC) and {_pct(before['itm']['r1'])} % (reranked).
"""


def write_readme(out: Path, report: dict[str, Any]) -> None:
    """A short human-readable summary of TRAINING.json next to the checkpoints."""
    m = report["metrics"]
    ret, cap, vqa = m["retrieval"], m["caption"], m["vqa"]
    data = report["data"]
    rows = []
    for direction, label in (("t2i", "text -> image"), ("i2t", "image -> text")):
        for method, name in (("itc", "ITC cosine"), ("itm", f"ITC top-{ret['rerank_k']} + ITM rerank")):
            r = ret[direction][method]
            held = ret.get("held_out", {}).get(direction, {}).get(method, {})
            rows.append(f"| {label} | {name} | {_pct(r['r1'])} | {_pct(r['r5'])} | {_pct(r['r10'])} | {_pct(held.get('r1'))} |")
    held_out = ", ".join(f"{c} {s} on the {side}" for c, s, side in data["held_out_triples"])
    text = f"""# Shapes-world BLIP checkpoints

Three tiny BLIP models trained from scratch by `blipsearch.shapes.train` on the
synthetic scenes of `blipsearch.shapes.world` (two colored shapes, one left and
one right, on a light background, {data['image_size']}x{data['image_size']} px). They use
transformers' own classes and the Hugging Face hub layout, so they load exactly
like Salesforce's BLIP checkpoints, and let tests and demos show real retrieval,
captioning and VQA behaviour without downloading anything.

| folder | class | parameters | size (MB, fp32) |
|---|---|---|---|
| `retrieval/` | `BlipForImageTextRetrieval` (ITC 256-d + ITM) | {report['parameters']['retrieval']:,} | {report['checkpoint_mb']['retrieval']} |
| `caption/` | `BlipForConditionalGeneration` (prompt `"a picture of "`) | {report['parameters']['caption']:,} | {report['checkpoint_mb']['caption']} |
| `vqa/` | `BlipForQuestionAnswering` (question starts with `[ENC]`) | {report['parameters']['vqa']:,} | {report['checkpoint_mb']['vqa']} |

Each folder holds `config.json`, `model.safetensors`, a WordPiece vocabulary of
the world's words with BLIP's `[DEC]` (bos) and `[ENC]` tokens, and a
`BlipImageProcessor` config (bicubic resize to {data['image_size']} px, CLIP mean/std).

## How they were made

    {report['command']}

Seed {report['seed']}, {report['device']}, {report['wall_time_s']['training_total'] / 60:.1f} minutes of training
({data['train_images']:,} rendered training scenes over {data['train_combinations']} of the {data['all_combinations']} possible
object pairs). Retrieval: ITC (symmetric InfoNCE, learnable temperature, plus
each image against its caption with one attribute changed) and ITM with hard
negatives (ITC-mined in-batch images and texts, and captions with colors,
shapes or sides swapped). Captioning and VQA start from the retrieval model's
weights, as in BLIP, and train their text decoders on a frozen vision encoder.
Last, the retrieval model's text side gets more ITC + ITM steps on the frozen
vision encoder (ITM refinement). All settings and figures are in `TRAINING.json`.
{_refinement_note(report)}
Held out of training entirely: {held_out}. The test scenes below include them.

## Figures

Test split, {data['test_images']} scenes with pairwise distinct captions (one
correct item per query), {ret['held_out_queries']} of them containing a held-out combination.
Recall in percent; the last column is R@1 on the held-out queries only.

| direction | scoring | R@1 | R@5 | R@10 | held-out R@1 |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Captioning exact match (beam {cap['num_beams']}): {_pct(cap['exact_match'])} % (held-out scenes: {_pct(cap['exact_match_held_out'])} %).
VQA accuracy (beam {vqa['num_beams']}, {vqa['n_questions']} questions): {_pct(vqa['accuracy'])} %; color {_pct(vqa['per_type']['color'])} %,
shape {_pct(vqa['per_type']['shape'])} %, yes/no {_pct(vqa['per_type']['yesno'])} % (held-out scenes: {_pct(vqa['accuracy_held_out'])} %).
Chance: color 1/6, shape 1/{len(world.SHAPES)}, yes/no 1/2.

{_errors_note(ret)}{_target_note(ret)}These are toy models for a toy world: they know {len(world.COLORS)} colors, {len(world.SHAPES)} shapes and two
positions, and nothing else.
"""
    (out / "README.md").write_text(text)


def override(hp: Hyper, item: str) -> None:
    """Apply one ``NAME=VALUE`` (``sizes.NAME`` for model sizes), converting VALUE to the field's type."""
    name, sep, value = item.partition("=")
    if not sep:
        raise ValueError("expected NAME=VALUE")
    *path, last = name.strip().split(".")
    target: Any = hp
    for part in path:
        target = getattr(target, part)
    current = getattr(target, last)  # AttributeError names an unknown field
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{value!r} is not true/false")
        setattr(target, last, value.lower() in ("true", "1"))
    elif isinstance(current, (int, float)):
        setattr(target, last, type(current)(value))
    else:
        raise ValueError(f"{name} is not a number or flag")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blipsearch.shapes.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("blipsearch/builtin/shapes"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply all step counts (quick trials: 0.1)")
    parser.add_argument(
        "--refine-only",
        action="store_true",
        help="run only the last stage (ITM refinement) on the retrieval checkpoint already in --out",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: recompute the retrieval figures of the checkpoint in --out (on the CPU)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one hyperparameter, e.g. --set retrieval_steps=2000 --set sizes.patch_size=4 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = Hyper()
    for item in args.overrides:
        try:
            override(hp, item)
        except (AttributeError, ValueError) as exc:
            parser.error(f"--set {item}: {exc}")
    if args.scale != 1.0:
        hp.retrieval_steps = max(1, int(hp.retrieval_steps * args.scale))
        hp.caption_steps = max(1, int(hp.caption_steps * args.scale))
        hp.vqa_steps = max(1, int(hp.vqa_steps * args.scale))
        hp.itm_refine_steps = max(1, int(hp.itm_refine_steps * args.scale))
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m blipsearch.shapes.train", *map(shlex.quote, argv_list)])
    if args.evaluate_only:
        report = reevaluate_retrieval(args.out, args.seed, hp)
        print(json.dumps(report["metrics"]["retrieval"], indent=2))
        return
    if args.refine_only:
        report = run_refinement(args.out, args.seed, hp, command)
        print(json.dumps(report["metrics"]["retrieval"], indent=2))
        return
    report = run(args.out, args.seed, hp, command)
    print(json.dumps(report["metrics"], indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
