"""The BLIP paper's decoders, where transformers' ``generate`` no longer follows them.

**Beam search, the paper's length rule.** BLIP's published captions and
answers came from transformers 4.15's beam search. It ranks a finished
beam by its summed log-probability divided by the length of the whole
sequence, prompt tokens included and the end token ([SEP]) not, and it
stops a row once no running beam, divided by the current length, can beat
the worst kept one. transformers 5 divides by the generated tokens with the
end token included, which picks a different winner among the same
candidates whenever lengths differ. :func:`beam_search` is 4.15's search,
step for step (same candidates per step, same ties, same stopping test), on
today's models with their key/value cache.

**Answers ranked from a list.** The paper's VQA numbers rank a fixed list
of answers instead of generating (``BLIP_VQA.rank_answer``): every answer's
first token is scored after ``[DEC]``, the ``k`` answers whose first token
is most probable are kept, and each is scored by the negative of its
summed token cross-entropy with label smoothing 0.1 (the original's
``BertLMHeadModel`` loss), ``[SEP]`` included. :func:`rank_answers` does
that and also returns the plain log-likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads with the model: a command that only reads results needs none of it
    import torch

LABEL_SMOOTHING = 0.1  # the original decoder's loss, which its answer ranking uses as the score


class _Hypotheses:
    """The best finished beams of one row, ranked by the paper's length rule."""

    def __init__(self, num_beams: int) -> None:
        self.num_beams = num_beams
        self.beams: list[tuple[float, list[int]]] = []
        self.worst = 1e9

    def add(self, tokens: list[int], summed: float) -> None:
        score = summed / len(tokens)  # the whole sequence, prompt included, no end token
        if len(self.beams) < self.num_beams or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def done(self, best_running: float, length: int) -> bool:
        return len(self.beams) >= self.num_beams and self.worst >= best_running / length

    def best(self) -> tuple[float, list[int]]:
        return sorted(self.beams, key=lambda b: b[0])[-1]  # noqa: FURB192 - as 4.15: the last added of equals


@dataclass(frozen=True)
class Decoded:
    """One row's best sequence (prompt included, end token not) and its length-normalized score."""

    tokens: list[int]
    score: float


def beam_search(decoder: Any, prompt: torch.Tensor, states: torch.Tensor, states_mask: torch.Tensor | None,
                *, num_beams: int, min_length: int, max_length: int, eos_id: int) -> list[Decoded]:
    """The paper's beam search for each row of ``prompt`` (B, P) over ``states`` (B, L, D).

    ``decoder`` is a BLIP text decoder (``BlipTextLMHeadModel``). Lengths count
    the prompt, as ``generate``'s do. Rows finish independently; a finished row
    leaves the batch, which changes no other row's result.
    """
    import torch

    if num_beams < 2:
        raise ValueError("beam_search needs at least 2 beams (one beam is greedy decoding).")
    with torch.no_grad():
        return _beam_search(decoder, prompt, states, states_mask, num_beams, min_length, max_length, eos_id)


def _beam_search(decoder: Any, prompt: torch.Tensor, states: torch.Tensor, states_mask: torch.Tensor | None,
                 num_beams: int, min_length: int, max_length: int, eos_id: int) -> list[Decoded]:
    import torch

    nb = num_beams
    rows = prompt.shape[0]
    device = prompt.device
    ids = prompt.repeat_interleave(nb, 0)
    enc = states.repeat_interleave(nb, 0)
    enc_mask = (states_mask if states_mask is not None
                else torch.ones(states.shape[:2], dtype=torch.long, device=device)).repeat_interleave(nb, 0)
    scores = torch.zeros(rows, nb, device=device)
    scores[:, 1:] = -1e9  # every row starts from one beam
    scores = scores.view(-1)
    hyps = [_Hypotheses(nb) for _ in range(rows)]
    live = list(range(rows))  # rows still searching, in batch order
    cache = None
    step = ids
    while True:
        out = decoder(input_ids=step, attention_mask=torch.ones_like(ids), encoder_hidden_states=enc,
                      encoder_attention_mask=enc_mask, cache=cache, use_cache=True, return_dict=True,
                      logits_to_keep=1)
        cache = out.cache
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        length = ids.shape[1]
        if length < min_length:
            logp[:, eos_id] = -float("inf")
        vocab = logp.shape[-1]
        total = (logp + scores[:, None]).view(len(live), nb * vocab)
        top, flat = total.topk(2 * nb, dim=1, largest=True, sorted=True)
        top_l, flat_l = top.tolist(), flat.tolist()
        picked, picked_scores, picked_tokens, keep = [], [], [], []
        for local, row in enumerate(live):
            chosen = 0
            for rank, (value, code) in enumerate(zip(top_l[local], flat_l[local])):
                beam, token = local * nb + code // vocab, code % vocab
                if token == eos_id:
                    if rank < nb:  # an end among the top nb candidates finishes that beam
                        hyps[row].add(ids[beam].tolist(), value)
                    continue
                picked.append(beam)
                picked_scores.append(value)
                picked_tokens.append(token)
                chosen += 1
                if chosen == nb:
                    break
            if hyps[row].done(max(top_l[local]), length):
                del picked[-nb:], picked_scores[-nb:], picked_tokens[-nb:]
            else:
                keep.append(local)
        next_live = [live[i] for i in keep]
        if not next_live:
            break
        index = torch.tensor(picked, device=device)
        tokens = torch.tensor(picked_tokens, device=device).view(-1, 1)
        ids = torch.cat([ids[index], tokens], dim=1)
        scores = torch.tensor(picked_scores, device=device)
        enc, enc_mask = enc[index], enc_mask[index]
        cache.reorder_cache(index)
        live, step = next_live, tokens
        if ids.shape[1] >= max_length:
            for local, row in enumerate(live):
                for b in range(nb):
                    hyps[row].add(ids[local * nb + b].tolist(), float(scores[local * nb + b]))
            break
    return [Decoded(tokens, score) for score, tokens in (h.best() for h in hyps)]


@dataclass(frozen=True)
class ChoiceScore:
    """How one candidate answer scored for one image.

    ``score`` is the paper's ranking score (minus the label-smoothed summed
    cross-entropy), ``log_likelihood`` the plain summed log-probability of the
    answer's tokens and [SEP]; both are None for an answer left out of the
    first-token shortlist. ``first_token`` is the probability of its first token.
    """

    answer: str
    first_token: float
    score: float | None
    log_likelihood: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "score": self.score, "log_likelihood": self.log_likelihood,
                "first_token": self.first_token}


@dataclass(frozen=True)
class Ranking:
    """One image's answer ranked from a list, and every choice's scores (in the given order)."""

    answer: str
    choices: list[ChoiceScore]


def rank_answers(decoder: Any, states: torch.Tensor, states_mask: torch.Tensor, answer_ids: torch.Tensor,
                 answer_mask: torch.Tensor, choices: Sequence[str], shortlist: int) -> list[Ranking]:
    """``choices`` ranked for each row of question states (B, L, D).

    ``answer_ids`` (A, T) are the choices tokenized with [DEC] first and [SEP]
    last, right-padded (``answer_mask`` 0 on padding). The winner is the
    shortlisted choice of highest score, the likelier first token among equals.
    """
    import torch

    with torch.no_grad():
        return _rank_answers(decoder, states, states_mask, answer_ids, answer_mask, choices, shortlist)


def _rank_answers(decoder: Any, states: torch.Tensor, states_mask: torch.Tensor, answer_ids: torch.Tensor,
                  answer_mask: torch.Tensor, choices: Sequence[str], shortlist: int) -> list[Ranking]:
    import torch

    rows, n = states.shape[0], answer_ids.shape[0]
    k = min(shortlist, n)
    start = answer_ids[:1, :1].repeat(rows, 1)
    first = decoder(input_ids=start, encoder_hidden_states=states, encoder_attention_mask=states_mask,
                    use_cache=False, return_dict=True).logits[:, 0, :].float()
    first_prob = torch.softmax(first, dim=-1).index_select(1, answer_ids[:, 1])  # (B, A)
    top = first_prob.topk(k, dim=1).indices  # (B, k), likeliest first token first
    flat = top.reshape(-1)
    ids, mask = answer_ids[flat], answer_mask[flat]
    logits = decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=states.repeat_interleave(k, 0),
                     encoder_attention_mask=states_mask.repeat_interleave(k, 0), use_cache=False,
                     return_dict=True).logits[:, :-1, :].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = ids[:, 1:]
    real = mask[:, 1:].bool()
    nll = -logp.gather(2, target.unsqueeze(2)).squeeze(2)
    smoothed = (1 - LABEL_SMOOTHING) * nll - LABEL_SMOOTHING * logp.mean(dim=2)
    score = -(smoothed * real).sum(1).view(rows, k)
    loglik = -(nll * real).sum(1).view(rows, k)
    out = []
    for r in range(rows):
        shortlisted = top[r].tolist()
        full = {a: (float(score[r, j]), float(loglik[r, j])) for j, a in enumerate(shortlisted)}
        winner = shortlisted[int(score[r].argmax())]
        out.append(Ranking(choices[winner], [ChoiceScore(choices[a], float(first_prob[r, a]),
                                                          *full.get(a, (None, None))) for a in range(n)]))
    return out
