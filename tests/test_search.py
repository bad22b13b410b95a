"""Search results against brute-force reference computations."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw_image
from transformers import AutoTokenizer, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from blipsearch import Library
from blipsearch.errors import InputPathError, LibraryError
from blipsearch.text import pre_caption

QUERY = "a red circle left of a blue square"


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, photos: Path) -> Library:
    with Library(library_dir, model=str(tiny_model), device="cpu") as library:
        library.index([photos])
        yield library


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    net = BlipForImageTextRetrieval.from_pretrained(tiny_model).eval()
    return net, AutoTokenizer.from_pretrained(tiny_model), BlipImageProcessorPil.from_pretrained(tiny_model)


def _reference_scores(reference, photos: Path, text: str):
    """Every image's ITC cosine and [ENC] ITM logits, computed directly with transformers."""
    from PIL import Image

    net, tokenizer, processor = reference
    paths = sorted(str(p) for p in photos.rglob("*.png"))
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    batch = tokenizer([pre_caption(text)], return_tensors="pt")
    with torch.no_grad():
        tokens = net.vision_model(pixel_values=pixels).last_hidden_state
        image_vec = torch.nn.functional.normalize(net.vision_proj(tokens[:, 0]), dim=-1)
        text_hidden = net.text_encoder(**batch).last_hidden_state
        text_vec = torch.nn.functional.normalize(net.text_proj(text_hidden[:, 0]), dim=-1)
        itc = (image_vec @ text_vec.T)[:, 0].numpy()
        ids = batch["input_ids"].repeat(len(paths), 1)
        ids[:, 0] = tokenizer.convert_tokens_to_ids("[ENC]")
        out = net.text_encoder(input_ids=ids, attention_mask=batch["attention_mask"].repeat(len(paths), 1),
                               encoder_hidden_states=tokens,
                               encoder_attention_mask=torch.ones(tokens.shape[:-1], dtype=torch.long))
        logits = net.itm_head(out.last_hidden_state[:, 0]).numpy()
    return paths, itc, logits, image_vec.numpy()


def test_itc_ranking_equals_brute_force(lib: Library, photos: Path, reference) -> None:
    paths, itc, _, _ = _reference_scores(reference, photos, QUERY)
    order = np.argsort(-itc)
    assert np.min(np.abs(np.diff(itc[order]))) > 1e-6, "reference scores must not tie"
    hits = lib.search(QUERY, k=12, rerank_hits=False)
    assert [h.path for h in hits] == [paths[i] for i in order]
    np.testing.assert_allclose([h.itc for h in hits], itc[order], atol=1e-5)
    assert all(h.itm is None and h.score == h.itc for h in hits)
    assert [h.rank for h in hits] == list(range(1, 13))


def test_rerank_uses_itm_logit_plus_itc(lib: Library, photos: Path, reference) -> None:
    paths, itc, logits, _ = _reference_scores(reference, photos, QUERY)
    depth = 8
    shortlist = np.argsort(-itc)[:depth]
    final = logits[shortlist, 1] + itc[shortlist]
    expected = [paths[i] for i in shortlist[np.argsort(-final)]]
    assert expected != [paths[i] for i in shortlist], "reranking must change this order for the test to mean anything"
    hits = lib.search(QUERY, k=10, rerank_depth=depth)
    assert [h.path for h in hits[:depth]] == expected
    probs = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    by_path = {p: i for i, p in enumerate(paths)}
    for hit in hits[:depth]:
        i = by_path[hit.path]
        assert hit.score == pytest.approx(logits[i, 1] + itc[i], abs=1e-4)
        assert hit.itm == pytest.approx(probs[i], abs=1e-5)
    # Beyond the rerank depth: ITC order, no ITM.
    tail = [paths[i] for i in np.argsort(-itc)[depth:10]]
    assert [h.path for h in hits[depth:]] == tail and all(h.itm is None for h in hits[depth:])


def test_rerank_survives_a_vanished_file(lib: Library, photos: Path) -> None:
    top = lib.search(QUERY, k=3, rerank_depth=3)
    os.unlink(top[0].path)
    hits = lib.search(QUERY, k=3, rerank_depth=3)
    assert hits[-1].path == top[0].path and hits[-1].itm is None
    assert all(h.itm is not None for h in hits[:-1])


def test_similar_equals_brute_force_and_skips_the_query(lib: Library, photos: Path, reference) -> None:
    paths, _, _, vectors = _reference_scores(reference, photos, QUERY)
    query = 4
    sims = vectors @ vectors[query]
    order = [i for i in np.argsort(-sims) if i != query][:5]
    hits = lib.similar(paths[query], k=5)
    assert [h.path for h in hits] == [paths[i] for i in order]
    np.testing.assert_allclose([h.score for h in hits], sims[order], atol=1e-5)


def test_similar_accepts_an_unindexed_image(lib: Library, photos: Path, tmp_path: Path, reference) -> None:
    from conftest import draw_image

    outside = tmp_path / "query.png"
    draw_image(4).save(outside)  # same pixels as img04, different file
    hits = lib.similar(outside, k=1)
    assert hits[0].path == str(photos / "holiday" / "img04.png")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputPathError):
        lib.similar(tmp_path / "missing.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(InputPathError, match="query image"):
        lib.similar(tmp_path / "text.jpg")


def test_empty_library_says_what_to_do(library_dir: Path, tiny_model: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        with pytest.raises(LibraryError, match="blipsearch index"):
            lib.search("anything")
        assert lib.status()["images"] == 0


def test_k_larger_than_the_library(lib: Library) -> None:
    hits = lib.search(QUERY, k=100, rerank_depth=4)
    assert len(hits) == 12 and len({h.id for h in hits}) == 12
    assert [h.itm is not None for h in hits] == [True] * 4 + [False] * 8


def test_token_cache_gives_the_same_ranking_and_stays_in_budget(library_dir: Path, tiny_model: Path,
                                                                 photos: Path, tmp_path: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu") as plain:
        plain.index([photos])
        expected = plain.search(QUERY, k=8, rerank_depth=8)
    per_image = (1 + 16) * 48 * 2 + 128  # tokens x hidden, fp16, plus the .npy header
    with Library(tmp_path / "cached", model=str(tiny_model), device="cpu",
                 token_cache_gb=12.5 * per_image / 2**30) as lib:
        lib.index([photos])
        assert len(list((tmp_path / "cached" / "tokens").glob("*.npy"))) == 12  # filled while indexing
        for hit in expected:  # the images must not be decoded again: make them unreadable
            os.rename(hit.path, hit.path + ".away")
        hits = lib.search(QUERY, k=8, rerank_depth=8)
        assert [h.path for h in hits] == [h.path for h in expected]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=2e-3)  # fp16 tokens
        assert all(h.itm is not None for h in hits)
        draw_image(300).save(photos / "new.png")
        lib.index([photos])
        files = list((tmp_path / "cached" / "tokens").glob("*.npy"))
        assert len(files) <= 12 and lib.token_cache.size <= 12.5 * per_image


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_partly_cached_shortlist_reranks_like_an_uncached_one(device: str, library_dir: Path, tiny_model: Path,
                                                               photos: Path, tmp_path: Path) -> None:
    """Cached tokens come back on the CPU; fresh ones on the model's device: both must meet there."""
    with Library(library_dir, model=str(tiny_model), device=device) as plain:
        plain.index([photos])
        expected = plain.search(QUERY, k=8, rerank_depth=8)
    with Library(tmp_path / "cached", model=str(tiny_model), device=device, token_cache_gb=0.01) as lib:
        lib.index([photos])
        cached = sorted((tmp_path / "cached" / "tokens").glob("*.npy"))
        assert len(cached) == 12
        for path in cached[::2]:
            path.unlink()
        hits = lib.search(QUERY, k=8, rerank_depth=8)
    assert [h.path for h in hits] == [h.path for h in expected]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=2e-3)


def test_damaged_token_cache_files_are_misses(lib: Library, library_dir: Path, tiny_model: Path,
                                              tmp_path: Path) -> None:
    expected = lib.search(QUERY, k=4, rerank_depth=4)
    with Library(library_dir, model=str(tiny_model), device="cpu", token_cache_gb=0.01) as cached:
        cached.search(QUERY, k=4, rerank_depth=4)
        files = sorted((library_dir / "tokens").glob("*.npy"))
        assert len(files) == 4
        files[0].write_bytes(b"")  # a crash mid-write
        files[1].write_bytes(files[1].read_bytes()[:100])  # truncated
        np.save(files[2], np.zeros(3, np.float64))  # not tokens
        hits = cached.search(QUERY, k=4, rerank_depth=4)
    assert [h.path for h in hits] == [h.path for h in expected]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=2e-3)


def test_token_cache_shared_by_two_writers_never_fails(tmp_path: Path) -> None:
    import threading

    from blipsearch.rerank.cache import TokenCache

    tokens = torch.ones(17, 48)
    per_file = 17 * 48 * 2 + 128
    caches = [TokenCache(tmp_path / "tokens", 20 * per_file) for _ in range(2)]
    errors: list[BaseException] = []

    def fill(cache: TokenCache, offset: int) -> None:
        try:
            for n in range(300):
                cache.put(f"{offset + n:064x}", "model", tokens)
                cache.get(f"{offset + n // 2:064x}", "model")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fill, args=(c, 1000 * i)) for i, c in enumerate(caches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list((tmp_path / "tokens").glob("*.npy"))) <= 2 * 20


def test_searches_arriving_together_share_one_vector_search(lib: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from blipsearch.ann.index import VectorIndex

    texts = ["a dog", "a red circle", "two people in the snow", "a boat on a lake", "a cat"]
    alone = {t: [(h.id, round(h.itc, 5)) for h in lib.search(t, k=3 + n, rerank_hits=False)]
             for n, t in enumerate(texts)}
    calls: list[int] = []
    real = VectorIndex.search
    monkeypatch.setattr(VectorIndex, "search", lambda self, q, *a, **kw: calls.append(len(q)) or real(self, q, *a, **kw))
    together: dict[str, list[tuple[int, float]]] = {}

    def run(n: int, text: str) -> None:
        together[text] = [(h.id, round(h.itc, 5)) for h in lib.search(text, k=3 + n, rerank_hits=False)]

    with lib.vectors.lock:  # the index is busy: the searches queue, then go as one
        threads = [threading.Thread(target=run, args=(n, t)) for n, t in enumerate(texts)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while lib.vectors._searches.queued < len(texts) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    assert calls == [len(texts)]
    assert together == alone
