"""BLIP-2 libraries: max-sim ITC over the query vectors and the ITM head, against transformers'
``Blip2ForImageTextRetrieval.forward`` and brute force, on a tiny random checkpoint made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import draw_image
from tiny_blip2 import QUERIES, make_tiny_blip2_retrieval

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.errors import ModelMismatchError, SettingsError
from blipsearch.models.retrieval import load_retrieval_model
from blipsearch.store.database import bytes_to_query_vectors

TEXTS = ["a red circle", "two dogs on the beach", "a blue square left of a green car", "snow on the mountain"]


@pytest.fixture(scope="module")
def blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_blip2_retrieval(tmp_path_factory.mktemp("blip2-itm"), seed=4)


@pytest.fixture(scope="module")
def reference(blip2: Path):  # type: ignore[no-untyped-def]
    from transformers import Blip2ForImageTextRetrieval

    return Blip2ForImageTextRetrieval.from_pretrained(blip2).eval()


def _forward(net, pixels: np.ndarray, ids: dict, itm: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return net(pixel_values=torch.as_tensor(pixels), input_ids=ids["input_ids"],  # type: ignore[no-any-return]
                   attention_mask=ids["attention_mask"], use_image_text_matching_head=itm).logits_per_image.numpy()


def test_itc_and_itm_equal_transformers(blip2: Path, reference) -> None:  # type: ignore[no-untyped-def]
    model = load_retrieval_model(str(blip2), device="cpu")
    assert (model.family, model.queries, model.dim) == ("blip-2", QUERIES, 24)
    pixels = np.stack([model.image_spec.to_pixels(draw_image(s)) for s in range(6)])
    images = model.embed_images(pixels)
    assert images.shape == (6, QUERIES, 24)
    np.testing.assert_allclose(np.linalg.norm(images, axis=-1), 1, atol=1e-5)
    texts = model.embed_texts(TEXTS)
    ids = model.tokenize(TEXTS)
    ours = (texts @ images.reshape(-1, 24).T).reshape(len(TEXTS), 6, QUERIES).max(axis=2)
    np.testing.assert_allclose(ours, _forward(reference, pixels, ids, itm=False).T, atol=1e-5)
    assert np.ptp(ours) > 0.2  # content decides: no ties
    tokens = model.image_tokens(pixels)
    for i in range(2):  # one image against every text, and each text against its own image
        logits = model.itm_logits(TEXTS, tokens[i : i + 1])
        expected = _forward(reference, np.repeat(pixels[i : i + 1], len(TEXTS), 0), ids, itm=True)
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    paired = model.itm_logits(TEXTS, tokens[: len(TEXTS)])
    np.testing.assert_allclose(paired, _forward(reference, pixels[: len(TEXTS)], ids, itm=True), atol=1e-5)


@pytest.fixture
def library(blip2: Path, library_dir: Path, photos: Path) -> Library:
    lib = Library(library_dir, model=str(blip2), device="cpu")
    lib.index([photos])
    return lib


def test_search_equals_brute_force_max_sim(library: Library, reference) -> None:  # type: ignore[no-untyped-def]
    model = library.model
    paths = sorted(Path(p) for p in (r.path.decode() for r in library.db.refs_by_id(
        library.db.vector_ids(model.fingerprint).tolist()).values()))
    pixels = np.stack([model.image_spec.to_pixels(draw_image(int(p.stem[3:]))) for p in paths])
    for text in TEXTS:
        ids = model.tokenize([text])
        itc = _forward(reference, pixels, ids, itm=False)[:, 0]  # (images,) best query's cosine
        hits = library.search(text, k=12, rerank_hits=False)
        assert [Path(h.path) for h in hits] == [paths[i] for i in np.argsort(-itc, kind="stable")]
        np.testing.assert_allclose([h.score for h in hits], np.sort(itc)[::-1], atol=1e-5)
        reranked = library.search(text, k=4, rerank_depth=4)
        top = np.argsort(-itc, kind="stable")[:4]
        itm = _forward(reference, pixels[top], model.tokenize([text] * 4), itm=True)[:, 1]
        expected = itm + itc[top]  # the paper's score: ITM positive logit + ITC
        assert [Path(h.path) for h in reranked] == [paths[top[j]] for j in np.argsort(-expected, kind="stable")]
        np.testing.assert_allclose([h.score for h in reranked], np.sort(expected)[::-1], atol=1e-4)


def test_a_shortlist_smaller_than_the_library_is_scored_exactly(library: Library,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import blipsearch.search.searcher as module

    full = library.search("a red circle", k=12, rerank_hits=False)
    monkeypatch.setattr(module, "MULTI_SHORTLIST", 5)
    monkeypatch.setattr(module, "MULTI_FACTOR", 1)
    short = library.search("a red circle", k=3, rerank_hits=False)
    exact = {h.id: h.score for h in full}
    assert len(short) == 3
    for hit in short:  # candidates from the pooled index, each with its exact max-sim score
        assert hit.score == pytest.approx(exact[hit.id], abs=1e-6)
    assert [h.score for h in short] == sorted((h.score for h in short), reverse=True)


def test_similar_duplicates_lookup_and_tags(library: Library, photos: Path, tmp_path: Path) -> None:
    model = library.model
    ids = library.db.vector_ids(model.fingerprint).tolist()
    stored = library.db.vectors_by_ids(ids, model.fingerprint, model.dim, queries=True)
    assert stored.shape == (12, QUERIES, 24)
    pooled = stored.mean(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    query = ids[0]
    hits = library.similar(query, k=11)
    expected = [ids[j] for j in np.argsort(-(pooled[1:] @ pooled[0]), kind="stable") + 1]
    assert [h.id for h in hits] == expected  # image to image: cosine of pooled vectors
    from blipsearch.texts import TextEntry

    library.add_texts([TextEntry(text=t) for t in TEXTS])
    found = library.lookup(query, k=4, rerank_hits=False)
    texts = model.embed_texts(TEXTS)
    best = (texts @ stored[0].T).max(axis=1)
    assert [h.text for h in found] == [TEXTS[j] for j in np.argsort(-best, kind="stable")]
    np.testing.assert_allclose([h.score for h in found], np.sort(best)[::-1], atol=1e-5)
    path = library.db.refs_by_id([query])[query].path.decode()
    tags = library.tag([path], ["circle", "dog", "car", "snow"], template="a photo of a {}", k=4, rerank_depth=0)
    labels = model.embed_texts([f"a photo of a {w}" for w in ["circle", "dog", "car", "snow"]])
    assert [t.label for t in tags[0].tags] == [["circle", "dog", "car", "snow"][j]
                                                for j in np.argsort(-(labels @ stored[0].T).max(1), kind="stable")]
    status = library.status()
    assert (status["family"], status["vectors_per_image"]) == ("blip-2", QUERIES)
    with pytest.raises(SettingsError, match="BLIP-2"):
        library.explain(query, "a red circle")


def test_eval_and_cli_with_blip2(blip2: Path, tmp_path: Path, tiny_model: Path, photos: Path) -> None:
    folder = tmp_path / "eval"
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(6):
        draw_image(i).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "captions": [TEXTS[i % 4], TEXTS[(i + 1) % 4] + " at night"]}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(folder / "images"), str(folder / "captions.jsonl"), "--model",
                                  str(blip2), "--library", str(tmp_path / "evallib"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    model = load_retrieval_model(str(blip2), device="cpu")
    images = model.embed_images(np.stack([model.image_spec.to_pixels(draw_image(i)) for i in range(6)]))
    captions = [c for i in range(6) for c in (TEXTS[i % 4], TEXTS[(i + 1) % 4] + " at night")]
    sims = (model.embed_texts(captions) @ images.reshape(-1, 24).T).reshape(12, 6, QUERIES).max(axis=2)
    truth = np.repeat(np.arange(6), 2)
    assert report["text_to_image"]["itc"]["R@1"] == pytest.approx(np.mean(sims.argmax(axis=1) == truth))
    assert report["image_to_text"]["itc"]["R@1"] == pytest.approx(np.mean(truth[sims.argmax(axis=0)] == np.arange(6)))
    lib = tmp_path / "mixed"
    assert runner.invoke(main, ["index", str(photos), "--model", str(tiny_model), "--library", str(lib)]).exit_code == 0
    result = runner.invoke(main, ["search", "a red circle", "--model", str(blip2), "--library", str(lib)])
    assert result.exit_code == 1 and "can't be compared" in result.output
    with pytest.raises(ModelMismatchError):
        Library(lib, model=str(blip2), device="cpu").search("a red circle")


def test_vectors_are_stored_whole(library: Library) -> None:
    fp = library.model.fingerprint
    ids, blobs = next(library.db.iter_vectors(fp))
    assert all(len(b) == QUERIES * 24 * 4 for b in blobs)
    assert bytes_to_query_vectors(blobs, 24).shape == (len(blobs), QUERIES, 24)
