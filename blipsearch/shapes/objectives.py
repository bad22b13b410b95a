"""The training stages: optimizer and schedule, ITC + ITM for retrieval (with hard and compositional
negatives) and its ITM refinement, language modelling for captions and VQA."""


from __future__ import annotations

import math
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    BertTokenizer,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
)

from blipsearch.shapes import evaluate, world
from blipsearch.shapes.checkpoint import make_config
from blipsearch.shapes.data import Pool, absent_object, batches, change_one, describe, perturb
from blipsearch.shapes.recipe import Hyper

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

    def __init__(self, model: BlipForImageTextRetrieval, pool: Pool, tokenizer: BertTokenizer, hp: Hyper, seed: int, device: torch.device, temp_init: float, partial: float = 0.0, partial_itc: float | None = None) -> None:
        self.model, self.pool, self.tokenizer, self.hp, self.device = model, pool, tokenizer, hp, device
        # Weights of the partial descriptions' ITM and ITC losses ("a red circle"); 0: whole captions only.
        self.partial, self.partial_itc = partial, partial if partial_itc is None else partial_itc
        self.last_partial: tuple[float, float] | None = None
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
        loss_itm = F.cross_entropy(logits, labels)
        if self.partial > 0:
            p_itc, p_itm = self.partial_losses(idx, image_tokens, image_feat, temp)
            self.last_partial = (p_itc.item(), p_itm.item())
            loss_itc = loss_itc + self.partial_itc * p_itc
            loss_itm = loss_itm + self.partial * p_itm
        return loss_itc, loss_itm, temp

    def partial_losses(self, idx: torch.Tensor, image_tokens: torch.Tensor, image_feat: torch.Tensor, temp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ITC, ITM) losses of partial descriptions, one object by color and shape (``world.satisfies``).

        Each scene gets the description of one of its objects. ITC: text -> image over the batch,
        every scene that shows the object a positive. ITM: the scene with its description (yes),
        with an object it does not show, mostly one sharing a color or shape with it (no), and the
        description with a batch scene that does not show the object, mostly one sharing a color
        or shape with it (no; labels come from the ground truth, so a tiny batch stays right), and
        the scene with a few words the world does not know (no).
        """
        pool, rng, gen, device = self.pool, self.rng, self.gen, self.device
        b = len(idx)
        left, right = pool.left[idx], pool.right[idx]
        side = torch.from_numpy(rng.random(b) < 0.5)
        obj = torch.where(side, left, right)
        absent = torch.tensor([pool.objects.index(absent_object(*pool.pair(int(i)), rng)) for i in idx])
        # Words the world does not know ([UNK] to the tokenizer), 1-5 of them: a short text is not a
        # match for being short.
        unknown = [" ".join(["zzz"] * int(k)) for k in rng.integers(1, 6, size=b)]
        texts = [world.phrase(pool.objects[int(o)]) for o in torch.cat([obj, absent])] + unknown
        feat, ids, mask = self.text_features(texts)
        sat = (left[None, :] == obj[:, None]) | (right[None, :] == obj[:, None])  # [text, scene]
        targets = sat.float().to(device)
        logits = feat[:b] @ image_feat.T / temp  # (the absent objects' and unknown words' features go unused)
        loss_itc = -(F.log_softmax(logits, 1) * targets / targets.sum(1, keepdim=True)).sum(1).mean()

        n = len(world.SHAPES)
        color, shape = (obj // n)[:, None], (obj % n)[:, None]
        near = (left // n == color) | (left % n == shape) | (right // n == color) | (right % n == shape)
        hard = (torch.rand(b, 1, generator=gen) < 0.75) & (near & ~sat).any(1, keepdim=True)
        weights = torch.where(hard, near & ~sat, ~sat).float() + 1e-6
        neg_image = torch.multinomial(weights, 1, generator=gen).squeeze(1)
        ids = ids.clone()
        ids[:, 0] = self.enc_id
        rows = torch.cat([torch.arange(b), torch.arange(b, 2 * b), torch.arange(b), torch.arange(2 * b, 3 * b)]).to(device)
        images = torch.cat([torch.arange(b), torch.arange(b), neg_image, torch.arange(b)]).to(device)
        img = image_tokens[images]
        hidden = self.model.text_encoder(
            input_ids=ids[rows],
            attention_mask=mask[rows],
            encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long, device=device),
        ).last_hidden_state
        labels = torch.cat([torch.ones(b), torch.zeros(b), sat[torch.arange(b), neg_image].float(), torch.zeros(b)]).long()
        return loss_itc, F.cross_entropy(self.model.itm_head(hidden[:, 0]), labels.to(device))


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
            partial = "" if objective.last_partial is None else " (partial itc {:.3f} itm {:.3f})".format(*objective.last_partial)
            log(f"{name} {step:5d} itc {loss_itc.item():.3f} itm {loss_itm.item():.3f}{partial} temp {temp.item():.3f} {time.time() - start:.0f}s")
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
    """More ITC + ITM training with the vision encoder and image projection frozen, with partial
    descriptions ("a red circle") beside the whole captions (weights ``itm_refine_partial`` for
    ITM, ``itm_refine_partial_itc`` for ITC).

    The image side is read from ``tokens`` (the frozen encoder's outputs), so a
    step costs the text encoder only; image embeddings do not change.
    """
    torch.manual_seed(seed + 3)
    objective = RetrievalObjective(model, pool, tokenizer, replace(hp, itm_easy_frac=hp.itm_refine_easy_frac), seed + 3, device,
                                   hp.itm_refine_temp, partial=hp.itm_refine_partial, partial_itc=hp.itm_refine_partial_itc)
    model.vision_model.requires_grad_(False)
    model.vision_proj.requires_grad_(False)
    _optimize(model, objective, lambda idx: tokens[idx].to(device), "itm-refine", hp.itm_refine_steps, hp.itm_refine_batch, hp.itm_refine_lr, hp)
    model.requires_grad_(True)
    return model


# ----------------------------------------------------------------------------- captioning and VQA


def image_tokens(model: BlipForImageTextRetrieval, pool: Pool, device: torch.device) -> torch.Tensor:
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
