"""Quality measurements for shapes-world checkpoints, computed with transformers' BLIP classes.

Every function takes a model, its tokenizer and its image processor exactly as
``from_pretrained`` returns them, and follows the BLIP paper's recipes:

- retrieval: ITC cosine over ``vision_proj``/``text_proj`` embeddings, then the
  top-k shortlist reranked by ``ITM positive logit + ITC cosine`` with the
  text's first token replaced by ``[ENC]``;
- captioning: ``generate`` with the prompt ``"a picture of "``; exact match of the
  text after the prompt against the canonical caption;
- VQA: ``generate(input_ids=question, pixel_values)``; exact match of the answer.

The retrieval gallery must hold scenes with pairwise distinct canonical
captions, so that each query has exactly one correct item.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from blipsearch.shapes.world import QUESTION_TYPES, Scene, partial_descriptions
from blipsearch.text import MAX_TOKENS, pre_caption

CAPTION_PROMPT = "a picture of "
ENC_TOKEN = "[ENC]"


def pixel_values(processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def tokenize(tokenizer: Any, texts: Sequence[str], first_token: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask for BLIP-cleaned texts; optionally replace [CLS] by another token."""
    enc = tokenizer(
        [pre_caption(t) for t in texts],
        padding="longest",
        truncation=True,
        max_length=MAX_TOKENS,
        return_tensors="pt",
    )
    ids = enc["input_ids"].clone()
    if first_token is not None:
        ids[:, 0] = tokenizer.convert_tokens_to_ids(first_token)
    return ids, enc["attention_mask"]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model: Any, pixels: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(full ViT token sequences, L2-normalized 256-d ITC embeddings)."""
    dev = _device(model)
    tokens, feats = [], []
    for i in range(0, len(pixels), batch):
        hidden = model.vision_model(pixel_values=pixels[i : i + batch].to(dev)).last_hidden_state
        tokens.append(hidden)
        feats.append(F.normalize(model.vision_proj(hidden[:, 0]), dim=-1))
    return torch.cat(tokens), torch.cat(feats)


@torch.no_grad()
def encode_texts(model: Any, tokenizer: Any, texts: Sequence[str], batch: int = 512) -> torch.Tensor:
    """L2-normalized 256-d ITC text embeddings (unimodal text encoder, [CLS] token)."""
    dev = _device(model)
    feats = []
    for i in range(0, len(texts), batch):
        ids, mask = tokenize(tokenizer, texts[i : i + batch])
        hidden = model.text_encoder(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        feats.append(F.normalize(model.text_proj(hidden[:, 0]), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def itm_logits(
    model: Any,
    image_tokens: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    batch: int = 512,
) -> torch.Tensor:
    """ITM logits (N, 2) for aligned rows of image token sequences and [ENC]-prefixed texts."""
    dev = _device(model)
    out = []
    for i in range(0, len(ids), batch):
        img = image_tokens[i : i + batch].to(dev)
        hidden = model.text_encoder(
            input_ids=ids[i : i + batch].to(dev),
            attention_mask=mask[i : i + batch].to(dev),
            encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long, device=dev),
        ).last_hidden_state
        out.append(model.itm_head(hidden[:, 0]))
    return torch.cat(out)


def _recalls(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    return {f"r{k}": round(float((ranks < k).float().mean()), 4) for k in ks}


def _rerank(
    model: Any,
    sim: torch.Tensor,
    image_tokens: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    queries_are_texts: bool,
) -> torch.Tensor:
    """Every query's items in order after ITM reranking of the top-k.

    Items outside the shortlist keep their ITC order behind the reranked ones.
    """
    n = sim.shape[0]
    k = min(k, sim.shape[1])
    order = sim.argsort(dim=1, descending=True)
    top = order[:, :k]
    q = torch.arange(n).repeat_interleave(k)
    cand = top.reshape(-1)
    if queries_are_texts:
        logits = itm_logits(model, image_tokens[cand], ids[q], mask[q])
    else:
        logits = itm_logits(model, image_tokens[q], ids[cand], mask[cand])
    score = logits[:, 1].cpu().view(n, k) + sim.gather(1, top)
    new_top = top.gather(1, score.argsort(dim=1, descending=True))
    return torch.cat([new_top, order[:, k:]], dim=1)


def _ranks(order: torch.Tensor) -> torch.Tensor:
    """Rank of the correct item (the diagonal) in each query's order."""
    return (order == torch.arange(len(order))[:, None]).float().argmax(dim=1)


def error_kind(query: Scene, found: Scene) -> str:
    """Why a wrong top hit is wrong: ``binding`` when it shows the same colors and
    shapes arranged differently (sides or attributes swapped); else which
    attributes it gets wrong (``color``, ``shape`` or ``color+shape``)."""
    if sorted(o[0] for o in query.key) == sorted(o[0] for o in found.key) and sorted(
        o[1] for o in query.key
    ) == sorted(o[1] for o in found.key):
        return "binding"  # same colors and same shapes, arranged differently
    colors = any(a[0] != b[0] for a, b in zip(query.key, found.key))
    shapes = any(a[1] != b[1] for a, b in zip(query.key, found.key))
    return "+".join(name for name, wrong in (("color", colors), ("shape", shapes)) if wrong)


def _error_kinds(scenes: Sequence[Scene], order: torch.Tensor) -> dict[str, int]:
    kinds: dict[str, int] = {"binding": 0, "color": 0, "shape": 0, "color+shape": 0}
    for i, top in enumerate(order[:, 0].tolist()):
        if top != i:
            kinds[error_kind(scenes[i], scenes[top])] += 1
    return kinds


@torch.no_grad()
def retrieval_metrics(model: Any, tokenizer: Any, processor: Any, scenes: Sequence[Scene], k: int = 16) -> dict[str, Any]:
    """Text->image and image->text Recall@1/5/10, ITC alone and ITC top-k + ITM rerank.

    Queries are the canonical captions; the gallery is the scenes' images (and,
    for image->text, their canonical captions). ``held_out`` repeats R@1 for the
    queries whose scene contains a combination never shown in training.
    """
    captions = [s.caption for s in scenes]
    if len(set(captions)) != len(captions):
        raise ValueError("retrieval gallery needs pairwise distinct canonical captions")
    image_tokens, image_feats = encode_images(model, pixel_values(processor, [s.image for s in scenes]))
    text_feats = encode_texts(model, tokenizer, captions)
    sim_t2i = (text_feats @ image_feats.T).cpu()
    image_tokens = image_tokens.cpu()
    ids, mask = tokenize(tokenizer, captions, first_token=ENC_TOKEN)

    orders = {
        ("t2i", "itc"): sim_t2i.argsort(1, descending=True),
        ("i2t", "itc"): sim_t2i.T.argsort(1, descending=True),
        ("t2i", "itm"): _rerank(model, sim_t2i, image_tokens, ids, mask, k, queries_are_texts=True),
        ("i2t", "itm"): _rerank(model, sim_t2i.T.contiguous(), image_tokens, ids, mask, k, queries_are_texts=False),
    }
    held = torch.tensor([s.held_out for s in scenes])
    out: dict[str, Any] = {"gallery_size": len(scenes), "rerank_k": k, "held_out_queries": int(held.sum())}
    for (direction, method), order in orders.items():
        r = _ranks(order)
        out.setdefault(direction, {})[method] = _recalls(r)
        if held.any():
            out.setdefault("held_out", {}).setdefault(direction, {})[method] = _recalls(r[held])
        out.setdefault("top1_errors", {}).setdefault(direction, {})[method] = _error_kinds(scenes, order)
    return out


@torch.no_grad()
def partial_metrics(model: Any, tokenizer: Any, processor: Any, scenes: Sequence[Scene], min_match: float = 0.5) -> dict[str, Any]:
    """Match sets of the partial descriptions (``"a red circle"``) by ITM over every scene.

    Each of the world's partial descriptions is scored against every scene (ITM match
    probability, ``[ENC]`` first); a scene is in the text's set at ``min_match`` or more.
    Precision, recall and F1 are pooled over all texts against ``world.satisfies``.
    """
    texts = partial_descriptions()
    image_tokens, _ = encode_images(model, pixel_values(processor, [s.image for s in scenes]))
    ids, mask = tokenize(tokenizer, texts, first_token=ENC_TOKEN)
    n = len(scenes)
    rows = torch.arange(len(texts)).repeat_interleave(n)
    probs = itm_logits(model, image_tokens.cpu().repeat(len(texts), 1, 1), ids[rows], mask[rows]).softmax(-1)[:, 1]
    found = (probs.cpu() >= min_match).view(len(texts), n)
    truth = torch.tensor([[s.satisfies(t) for s in scenes] for t in texts])
    both = int((found & truth).sum())
    precision = both / int(found.sum()) if found.any() else 1.0
    recall = both / int(truth.sum())
    return {
        "scenes": n,
        "texts": len(texts),
        "min_match": min_match,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
    }


def _decode(tokenizer: Any, seqs: torch.Tensor) -> list[str]:
    return [t.strip() for t in tokenizer.batch_decode(seqs, skip_special_tokens=True)]


@torch.no_grad()
def generate_captions(model: Any, tokenizer: Any, processor: Any, images: Sequence[Image.Image], num_beams: int = 3, batch: int = 128) -> list[str]:
    """Captions for images: the generated text after the ``"a picture of "`` prompt."""
    dev = _device(model)
    # One shared prompt for the whole batch: generate() drops the last prompt
    # token ([SEP]), which is only right when no row is padded.
    prompt = tokenizer([CAPTION_PROMPT], return_tensors="pt")["input_ids"]
    prefix = pre_caption(CAPTION_PROMPT)
    out: list[str] = []
    for i in range(0, len(images), batch):
        pv = pixel_values(processor, images[i : i + batch]).to(dev)
        ids = prompt.repeat(len(pv), 1).to(dev)
        seqs = model.generate(pixel_values=pv, input_ids=ids, num_beams=num_beams, max_length=30, min_length=5)
        for text in _decode(tokenizer, seqs):
            out.append(text[len(prefix) :].strip() if text.startswith(prefix) else text)
    return out


def caption_metrics(model: Any, tokenizer: Any, processor: Any, scenes: Sequence[Scene], num_beams: int = 3) -> dict[str, Any]:
    """Exact-match accuracy of generated captions against the canonical caption."""
    preds = generate_captions(model, tokenizer, processor, [s.image for s in scenes], num_beams=num_beams)
    hits = [p == s.caption for p, s in zip(preds, scenes)]
    held = [h for h, s in zip(hits, scenes) if s.held_out]
    return {
        "n": len(scenes),
        "num_beams": num_beams,
        "exact_match": round(sum(hits) / len(hits), 4),
        "exact_match_held_out": round(sum(held) / len(held), 4) if held else None,
    }


@torch.no_grad()
def answer_questions(
    model: Any,
    tokenizer: Any,
    processor: Any,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    num_beams: int = 3,
    first_token: str | None = ENC_TOKEN,
    batch: int = 128,
) -> list[str]:
    """Answers for aligned (image, question) lists.

    Questions are batched by token length, unpadded: ``generate`` lets the
    answer decoder attend to every question position, padding included.
    """
    dev = _device(model)
    ids_all = [tokenizer(pre_caption(q), truncation=True, max_length=MAX_TOKENS)["input_ids"] for q in questions]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(ids_all):
        groups[len(ids)].append(i)
    answers = [""] * len(questions)
    for members in groups.values():
        for j in range(0, len(members), batch):
            idx = members[j : j + batch]
            ids = torch.tensor([ids_all[i] for i in idx])
            if first_token is not None:
                ids[:, 0] = tokenizer.convert_tokens_to_ids(first_token)
            pv = pixel_values(processor, [images[i] for i in idx]).to(dev)
            seqs = model.generate(input_ids=ids.to(dev), pixel_values=pv, num_beams=num_beams, max_length=10)
            for i, text in zip(idx, _decode(tokenizer, seqs)):
                answers[i] = text
    return answers


def vqa_metrics(
    model: Any,
    tokenizer: Any,
    processor: Any,
    scenes: Sequence[Scene],
    num_beams: int = 3,
    first_token: str | None = ENC_TOKEN,
) -> dict[str, Any]:
    """Answer accuracy over all QA pairs of the scenes, overall, per type and on held-out scenes."""
    rows = [(s, qa) for s in scenes for qa in s.qa]
    preds = answer_questions(
        model, tokenizer, processor, [s.image for s, _ in rows], [qa.question for _, qa in rows], num_beams, first_token
    )
    hits = [p == qa.answer for p, (_, qa) in zip(preds, rows)]

    def acc(sel: list[bool]) -> float | None:
        chosen = [h for h, keep in zip(hits, sel) if keep]
        return round(sum(chosen) / len(chosen), 4) if chosen else None

    return {
        "n_questions": len(rows),
        "num_beams": num_beams,
        "first_token": first_token or "[CLS]",
        "accuracy": acc([True] * len(rows)),
        "per_type": {t: acc([qa.kind == t for _, qa in rows]) for t in QUESTION_TYPES},
        "accuracy_held_out": acc([s.held_out for s, _ in rows]),
    }
