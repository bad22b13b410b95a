"""A query text embedded without torch gives the transformers model's vectors (BLIP's text encoder,
BLIP-2's Q-Former text path), and a search that reranks nothing (or a similar-image search of an
indexed photo) starts without torch."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image

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


# -- BLIP-2: the Q-Former's text path, without the ViT-g ---------------------------------------------

@pytest.fixture(scope="module")
def blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_blip2 import make_tiny_blip2_retrieval

    return make_tiny_blip2_retrieval(tmp_path_factory.mktemp("blip2-text"), seed=4)


def _text_embeds(folder: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray, object]:
    """transformers' own ITC text embeddings (``Blip2ForImageTextRetrieval.forward(...).text_embeds``) and
    the cosines of texts with its image query vectors, for the engine's token ids."""
    import torch
    from transformers import Blip2ForImageTextRetrieval

    net = Blip2ForImageTextRetrieval.from_pretrained(folder, dtype=torch.float32).eval()
    model = load_retrieval_model(str(folder), "cpu")
    pixels = np.stack([model.image_spec.to_pixels(draw_image(s)) for s in range(6)])
    with torch.no_grad():
        out = net(pixel_values=torch.as_tensor(pixels), **model.tokenize(texts), use_image_text_matching_head=False)
    return out.text_embeds.numpy(), out.logits_per_text.numpy(), model


TEXT_PATH = ("embeddings.", "qformer.layernorm.", "qformer.encoder.layer.", "text_projection.")


def test_blip2_vectors_equal_transformers_text_embeds(blip2: Path) -> None:
    theirs, itc, model = _text_embeds(blip2, TEXTS)
    encoder = TextQueryEncoder(blip2)
    ours = encoder.embed_texts(TEXTS)
    assert ours.shape == (len(TEXTS), 24)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(ours - model.embed_texts(TEXTS)).max() < 1e-5  # the engine's torch path
    # Content decides: distinct texts get distinct vectors, and each image ranks the texts
    # by clearly different scores (no ties).
    cosines = theirs @ theirs.T
    assert cosines[~np.eye(len(TEXTS), dtype=bool)].max() < 0.99
    assert np.ptp(itc, axis=0).min() > 0.05 and len({tuple(np.argsort(-itc[:, i])) for i in range(6)}) > 1
    for text, row in zip(TEXTS, ours):
        assert np.abs(encoder.embed_texts([text])[0] - row).max() < 1e-5
        assert encoder.tokenize([text])[0].tolist() == model.tokenize([text])["input_ids"].tolist()
    # Only the text path is read: no vision encoder, query tokens, cross-attention, query feed-forward.
    assert encoder.read and all(n.startswith(TEXT_PATH) for n in encoder.read)
    assert not [n for n in encoder.read if "crossattention" in n or "_query" in n]


def test_blip2_parity_fails_on_the_wrong_weights(blip2: Path, tmp_path: Path) -> None:
    """The comparison can tell: the queries' feed-forward for the text's, or another projection,
    move the vectors far past the tolerance."""
    from safetensors.numpy import load_file, save_file

    reference = TextQueryEncoder(blip2).embed_texts(TEXTS)
    weights = load_file(str(blip2 / "model.safetensors"))
    swaps = {"query feed-forward": lambda n: re.sub(r"(layer\.\d+\.)(intermediate|output)\.", r"\1\2_query.", n),
             "vision projection": lambda n: n.replace("text_projection", "vision_projection")}
    for what, source in swaps.items():
        copy = tmp_path / what.replace(" ", "-")
        shutil.copytree(blip2, copy)
        save_file({n: weights[source(n)] for n in weights}, str(copy / "model.safetensors"))
        assert np.abs(TextQueryEncoder(copy).embed_texts(TEXTS) - reference).max() > 0.05, what


def test_blip2_sharded_checkpoint(blip2: Path, tmp_path: Path) -> None:
    from transformers import Blip2ForImageTextRetrieval

    sharded = tmp_path / "sharded"
    Blip2ForImageTextRetrieval.from_pretrained(blip2).save_pretrained(sharded, max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "preprocessor_config.json"):
        shutil.copy(blip2 / name, sharded / name)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (sharded / "model.safetensors").exists()
    encoder = TextQueryEncoder(sharded)
    assert np.abs(encoder.embed_texts(TEXTS) - TextQueryEncoder(blip2).embed_texts(TEXTS)).max() < 1e-7
    assert sorted(encoder.read) == sorted(TextQueryEncoder(blip2).read)
    theirs, _, _ = _text_embeds(sharded, TEXTS)
    assert np.abs(encoder.embed_texts(TEXTS) - theirs).max() < 1e-5
    # A tensor the index names in a missing shard: the torch path.
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["text_projection.weight"] = "model-gone.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(Unsupported):
        TextQueryEncoder(sharded)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_blip2_half_precision_weights(blip2: Path, tmp_path: Path, dtype: str) -> None:
    """Weights stored in 16 bits are widened to float32 as torch widens them (numpy has no bfloat16:
    its bits are the upper half of a float32's)."""
    import torch
    from safetensors.torch import load_file, save_file

    half = tmp_path / dtype
    shutil.copytree(blip2, half)
    save_file({n: t.to(getattr(torch, dtype)) for n, t in load_file(str(blip2 / "model.safetensors")).items()},
              str(half / "model.safetensors"))
    ours = TextQueryEncoder(half).embed_texts(TEXTS)
    theirs, _, _ = _text_embeds(half, TEXTS)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(ours - TextQueryEncoder(blip2).embed_texts(TEXTS)).max() > 1e-4  # other (rounded) weights


def test_blip2_no_rerank_search_loads_no_model(blip2: Path, photos: Path, library_dir: Path) -> None:
    with Library(library_dir, model=str(blip2), device="cpu") as lib:
        lib.index([photos])
        assert lib._model is not None
        expected = [(h.path, h.score) for h in lib.search("a red square", 6, rerank_hits=False)]  # torch's vector
    assert len({round(s, 4) for _, s in expected}) == len(expected)  # an order of distinct scores, not of ties
    with Library(library_dir, create=False) as lib:  # the real path, in this process
        hits = lib.search("a red square", 6, rerank_hits=False)
        assert lib._model is None  # no torch model was built, so no ViT weights were loaded
        read = lib.parts._text_query[1].read  # type: ignore[index]
        assert read and all(n.startswith(TEXT_PATH) for n in read)
    assert [h.path for h in hits] == [p for p, _ in expected]
    assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
    # The command line, a fresh process: neither torch nor transformers is imported.
    code = (
        "import json, sys\n"
        "from blipsearch.cli import main\n"
        "try:\n"
        "    main(['search', 'a red square', '-k', '6', '--no-rerank', '--json', '--library', sys.argv[1]])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))\n"
    )
    env = {**os.environ, "BLIPSEARCH_IN_PROCESS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(library_dir)], capture_output=True, text=True,
                          check=True, timeout=120, env=env)
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"torch": False, "transformers": False}
    found = [json.loads(line) for line in lines[:-1]]
    assert [h["path"] for h in found] == [p for p, _ in expected]
    assert np.allclose([h["score"] for h in found], [s for _, s in expected], atol=1e-5)
