"""A query text embedded without torch gives the transformers model's vectors, and a search that
reranks nothing (or a similar-image search of an indexed photo) starts without torch."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blipsearch import Library
from blipsearch.models.retrieval import load_retrieval_model
from blipsearch.models.textquery import TextQueryEncoder, Unsupported, _erf

TEXTS = ["a red circle left of a blue square", "A DOG, running!  on the beach...", "x",
         "word " * 80, "a garden at night", "  padded   text\twith tabs "]


def test_vectors_and_tokens_match_the_transformers_model(tiny_model: Path) -> None:
    model = load_retrieval_model(str(tiny_model), "cpu")
    encoder = TextQueryEncoder(tiny_model)
    ours, theirs = encoder.embed_texts(TEXTS), model.embed_texts(TEXTS)
    assert np.abs(ours - theirs).max() < 1e-5
    # Distinct texts, distinct vectors: the agreement is not that of a model that maps all to one.
    cosines = theirs @ theirs.T
    assert cosines[~np.eye(len(TEXTS), dtype=bool)].max() < 0.99
    # One at a time as in a batch (padding is masked), truncated as the tokenizer truncates.
    for text, row in zip(TEXTS, ours):
        assert np.abs(encoder.embed_texts([text])[0] - row).max() < 1e-5
        ids, _ = encoder.tokenize([text])
        assert ids.tolist() == model.tokenize([text])["input_ids"].tolist()
    assert encoder.embed_texts([]).shape == (0, model.dim)


def test_the_error_function_is_exact_to_float32() -> None:
    x = np.linspace(-6, 6, 24001, dtype=np.float32)
    reference = np.array([math.erf(float(v)) for v in x])
    assert np.abs(_erf(x) - reference).max() < 1e-7


def test_checkpoints_it_can_not_read_take_the_torch_path(tiny_model: Path, tmp_path: Path, photos: Path) -> None:
    copy = tmp_path / "no-fast-tokenizer"
    shutil.copytree(tiny_model, copy)
    (copy / "tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(Unsupported):
        TextQueryEncoder(copy)
    with Library(tmp_path / "lib", model=str(copy)) as lib:
        lib.index([photos])
        hits = lib.search("a red square", 3, rerank_hits=False)
        assert len(hits) == 3 and lib._model is not None  # embedded by the loaded model instead


def test_no_rerank_search_and_similar_start_without_torch(tiny_model: Path, photos: Path,
                                                           library_dir: Path) -> None:
    with Library(library_dir, model=str(tiny_model)) as lib:
        lib.index([photos])
        expected = [(h.id, h.score) for h in lib.search("a red square", 5, rerank_hits=False)]
        alike = [h.id for h in lib.similar(photos / "garden" / "img07.png", 4)]
    code = (
        "import json, sys\n"
        "from blipsearch import Library\n"
        "lib = Library(sys.argv[1], create=False)\n"
        "hits = [(h.id, h.score) for h in lib.search('a red square', 5, rerank_hits=False)]\n"
        "alike = [h.id for h in lib.similar(sys.argv[2], 4)]\n"
        "print(json.dumps({'hits': hits, 'alike': alike, 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(library_dir), str(photos / "garden" / "img07.png")],
                          capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(done.stdout)
    assert result["torch"] is False
    assert [i for i, _ in result["hits"]] == [i for i, _ in expected]
    assert np.allclose([s for _, s in result["hits"]], [s for _, s in expected], atol=1e-5)
    assert len({round(s, 4) for _, s in expected}) == len(expected)  # an order of distinct scores, not of ties
    assert result["alike"] == alike
