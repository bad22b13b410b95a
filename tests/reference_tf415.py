"""transformers 4.15's beam search, the one BLIP's published captions and answers came from, as a reference.

Its own ``BeamSearchScorer`` and ``MinLengthLogitsProcessor`` are loaded from the
transformers 4.15.0 wheel (``make test`` downloads it into the virtualenv's
``reference/`` folder; ``BLIPSEARCH_REFERENCE_DIR`` names another folder), without
installing it beside today's transformers: only those two modules are read, with
the two helpers they import stood in for. The loop that drives them follows
4.15's ``GenerationMixin.beam_search`` step for step, and runs the decoder over
the whole sequence at every step (no key/value cache).
"""

from __future__ import annotations

import logging
import os
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

WHEEL = "transformers-4.15.0-py3-none-any.whl"


def wheel_path() -> Path | None:
    folder = Path(os.environ.get("BLIPSEARCH_REFERENCE_DIR") or Path(sys.prefix) / "reference")
    path = folder / WHEEL
    return path if path.is_file() else None


def load() -> types.SimpleNamespace:
    """4.15's scorer and min-length processor; skips (or fails, under BLIPSEARCH_REQUIRE_REFERENCE=1)
    when the wheel is not there."""
    path = wheel_path()
    if path is None:
        message = f"{WHEEL} not found (make test downloads it)"
        if os.environ.get("BLIPSEARCH_REQUIRE_REFERENCE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    package = types.ModuleType("tf415")
    package.__path__ = []
    file_utils = types.ModuleType("tf415.file_utils")
    file_utils.add_start_docstrings = lambda *docs: (lambda fn: fn)  # type: ignore[attr-defined]
    utils = types.ModuleType("tf415.utils")
    utils.__path__ = []  # type: ignore[attr-defined]
    utils_logging = types.ModuleType("tf415.utils.logging")
    utils_logging.get_logger = logging.getLogger  # type: ignore[attr-defined]
    stand_ins = {"tf415": package, "tf415.file_utils": file_utils, "tf415.utils": utils,
                 "tf415.utils.logging": utils_logging}
    loaded = {}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        with zipfile.ZipFile(path) as wheel:
            for name in ("generation_beam_search", "generation_logits_process"):
                module = types.ModuleType(f"tf415.{name}")
                module.__package__ = "tf415"
                sys.modules[module.__name__] = module
                source = compile(wheel.read(f"transformers/{name}.py"), f"{WHEEL}/{name}.py", "exec")
                exec(source, module.__dict__)  # noqa: S102 - the released module, read from its wheel
                loaded[name] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return types.SimpleNamespace(BeamSearchScorer=loaded["generation_beam_search"].BeamSearchScorer,
                                 MinLengthLogitsProcessor=loaded["generation_logits_process"].MinLengthLogitsProcessor)


@torch.no_grad()
def beam_search(ref: types.SimpleNamespace, decoder: Any, prompt: torch.Tensor, states: torch.Tensor, *,
                num_beams: int, min_length: int, max_length: int, eos_id: int, pad_id: int) -> list[list[int]]:
    """Each row's best sequence as 4.15 returns it: prompt included, then the end token when shorter
    than ``max_length``, then padding to the batch's longest."""
    batch = prompt.shape[0]
    ids = prompt.repeat_interleave(num_beams, 0)
    enc = states.repeat_interleave(num_beams, 0)
    enc_mask = torch.ones(enc.shape[:2], dtype=torch.long)
    scorer = ref.BeamSearchScorer(batch_size=batch, num_beams=num_beams, device=torch.device("cpu"))
    min_len = ref.MinLengthLogitsProcessor(min_length, eos_id)
    beam_scores = torch.zeros((batch, num_beams))
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    while True:
        logits = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=enc,
                         encoder_attention_mask=enc_mask, use_cache=False, return_dict=True,
                         logits_to_keep=1).logits[:, -1, :]
        scores = min_len(ids, torch.log_softmax(logits, dim=-1))
        scores = scores + beam_scores[:, None].expand_as(scores)
        vocab = scores.shape[-1]
        scores, tokens = torch.topk(scores.view(batch, num_beams * vocab), 2 * num_beams, dim=1,
                                    largest=True, sorted=True)
        indices = torch.div(tokens, vocab, rounding_mode="floor")
        tokens = tokens % vocab
        out = scorer.process(ids, scores, tokens, indices, pad_token_id=pad_id, eos_token_id=eos_id)
        beam_scores = out["next_beam_scores"]
        ids = torch.cat([ids[out["next_beam_indices"], :], out["next_beam_tokens"].unsqueeze(-1)], dim=-1)
        if scorer.is_done or ids.shape[-1] >= max_length:
            break
    seqs = scorer.finalize(ids, beam_scores, tokens, indices, pad_token_id=pad_id, eos_token_id=eos_id,
                           max_length=max_length)["sequences"]
    return seqs.tolist()  # type: ignore[no-any-return]


def as_returned(rows: list[list[int]], *, max_length: int, eos_id: int, pad_id: int) -> list[list[int]]:
    """Best sequences (prompt included, no end token) laid out as 4.15's ``finalize`` returns them."""
    width = min(max(len(r) for r in rows) + 1, max_length)
    out = []
    for row in rows:
        row = row + [eos_id] if len(row) < max_length else list(row)
        out.append(row + [pad_id] * (width - len(row)))
    return out
