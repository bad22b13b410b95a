"""Image-to-text lookup over a text collection, zero-shot tags, and their CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import draw_image
from transformers import AutoTokenizer, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.errors import InputPathError, LibraryError
from blipsearch.text import pre_caption
from blipsearch.texts import TextEntry, TextStore, read_text_file

TEXTS = ["a dog on the beach", "a red circle left of a blue square", "two people in the snow",
         "a small boat on the river", "a house with a tree", "a yellow flower", "a cat sitting on a car",
         "a bird in the sky"]


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, tiny_captioner: Path, db_url: str | None) -> Library:
    with Library(library_dir, db_url=db_url, model=str(tiny_model), caption_model=str(tiny_captioner),
                 device="cpu") as library:
        yield library


def test_read_text_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert [e.text for e in read_text_file(tmp_path / "a.txt")] == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"id": 7, "text": "seven", "price": 3}\n{"text": "eight"}\n')
    assert read_text_file(tmp_path / "b.jsonl") == [TextEntry("seven", "7", {"price": 3}), TextEntry("eight")]
    (tmp_path / "c.csv").write_text("id,text,color\nsku-1,a red shirt,red\nsku-2,blue jeans,\n")
    assert read_text_file(tmp_path / "c.csv") == [TextEntry("a red shirt", "sku-1", {"color": "red"}),
                                                  TextEntry("blue jeans", "sku-2")]
    (tmp_path / "d.csv").write_text("name\nx\n")
    with pytest.raises(InputPathError, match="no 'text' column"):
        read_text_file(tmp_path / "d.csv")
    (tmp_path / "e.jsonl").write_text('{"name": 1}\n')
    with pytest.raises(InputPathError, match="line 1"):
        read_text_file(tmp_path / "e.jsonl")
    (tmp_path / "f.jsonl").write_text('{"text": "fine"}\n{"text": null}\n')
    with pytest.raises(InputPathError, match="line 2"):
        read_text_file(tmp_path / "f.jsonl")
    # Excel's "CSV UTF-8" starts with a byte-order mark; a long description is one field.
    long = "a very long description " * 8000
    (tmp_path / "g.csv").write_text(f"id,text\nsku-1,{long}\n", encoding="utf-8-sig")
    assert read_text_file(tmp_path / "g.csv") == [TextEntry(long.strip(), "sku-1")]


def test_texts_are_embedded_once(lib: Library) -> None:
    assert lib.add_texts([TextEntry(t) for t in TEXTS[:5]]) == (5, 0)
    assert lib.add_texts([TextEntry(t) for t in TEXTS]) == (3, 5)
    assert TextStore(lib.db).embed_missing(lib.model) == 0
    vectors = {r.text: np.frombuffer(r.vector, np.float32) for r in lib.texts()}
    np.testing.assert_allclose(np.stack([vectors[t] for t in TEXTS]), lib.model.embed_texts(TEXTS), atol=1e-6)
    assert lib.remove_texts([str(lib.texts()[0].id)]) == 1 and len(lib.texts()) == 7
    # Only plain ASCII numbers that fit an id are ids ('²' is a digit to Python, 20 digits overflow).
    second = lib.texts()[0].id
    assert lib.remove_texts(["²", "9" * 20, chr(0xFF10 + second)]) == 0 and len(lib.texts()) == 7


def _direct(tiny_model: Path, image_path: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ITC cosines and [ENC] ITM logits of one image against texts, straight from transformers."""
    from PIL import Image

    net = BlipForImageTextRetrieval.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    pixels = BlipImageProcessorPil.from_pretrained(tiny_model)(images=Image.open(image_path).convert("RGB"),
                                                              return_tensors="pt")["pixel_values"]
    itc, logits = [], []
    with torch.no_grad():
        tokens = net.vision_model(pixel_values=pixels).last_hidden_state
        image = torch.nn.functional.normalize(net.vision_proj(tokens[:, 0]), dim=-1)
        for text in texts:
            batch = tok([pre_caption(text)], return_tensors="pt")
            vec = torch.nn.functional.normalize(net.text_proj(net.text_encoder(**batch).last_hidden_state[:, 0]), dim=-1)
            itc.append(float(vec @ image.T))
            ids = batch["input_ids"].clone()
            ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
            out = net.text_encoder(input_ids=ids, attention_mask=batch["attention_mask"], encoder_hidden_states=tokens,
                                   encoder_attention_mask=torch.ones(tokens.shape[:-1], dtype=torch.long))
            logits.append(net.itm_head(out.last_hidden_state[:, 0])[0].numpy())
    return np.array(itc), np.array(logits)


def test_lookup_matches_a_direct_computation(lib: Library, tiny_model: Path, tmp_path: Path) -> None:
    image = tmp_path / "query.png"
    draw_image(21).save(image)
    lib.add_texts([TextEntry(t, f"ext-{i}") for i, t in enumerate(TEXTS)])
    itc, logits = _direct(tiny_model, image, TEXTS)
    depth = 5
    head = np.argsort(-itc)[:depth]
    final = logits[head, 1] + itc[head]
    expected = [TEXTS[i] for i in head[np.argsort(-final)]] + [TEXTS[i] for i in np.argsort(-itc)[depth:]]
    assert expected[:depth] != [TEXTS[i] for i in head], "reranking must reorder for the test to mean anything"
    hits = lib.lookup(image, k=8, rerank_depth=depth)
    assert [h.text for h in hits] == expected
    probs = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    for hit in hits[:depth]:
        i = TEXTS.index(hit.text)
        assert hit.score == pytest.approx(logits[i, 1] + itc[i], abs=1e-4)
        assert hit.itm == pytest.approx(probs[i], abs=1e-5) and hit.external_id == f"ext-{i}"
    assert all(h.itm is None for h in hits[depth:])
    plain = lib.lookup(image, k=3, rerank_hits=False)
    assert [h.text for h in plain] == [TEXTS[i] for i in np.argsort(-itc)[:3]]
    np.testing.assert_allclose([h.itc for h in plain], np.sort(itc)[::-1][:3], atol=1e-5)


def test_lookup_needs_texts_and_can_use_captions(lib: Library, photos: Path) -> None:
    with pytest.raises(LibraryError, match="texts add"):
        lib.lookup(photos / "holiday" / "img00.png")
    lib.index([photos])
    with pytest.raises(LibraryError, match="--captions"):
        lib.lookup(photos / "holiday" / "img00.png", source="captions")
    lib.caption_library()
    captions = {d.text for d in lib.caption(sorted(photos.rglob("*.png")))}
    hits = lib.lookup(photos / "holiday" / "img00.png", k=12, source="captions")
    assert {h.text for h in hits} == captions


def test_tags_rank_labels_and_filter_search(lib: Library, photos: Path, tiny_model: Path) -> None:
    labels = ["dog", "cat", "car", "tree", "beach", "snow"]
    image = photos / "holiday" / "img03.png"
    result = lib.tag([image], labels, k=6, rerank_depth=6)[0]
    itc, logits = _direct(tiny_model, image, [f"a photo of a {label}" for label in labels])
    order = np.argsort(-(logits[:, 1] + itc))
    assert [t.label for t in result.tags] == [labels[i] for i in order]
    assert [t.rank for t in result.tags] == list(range(1, 7))
    lib.index([photos])
    assert lib.tag_library(labels, k=2) == 12
    assert lib.tag_library(labels, k=2) == 0  # already tagged with this vocabulary
    wanted = result.tags[0].label
    tagged = lib.search("a photo", k=12, rerank_hits=False, tag=wanted)
    assert str(image) in [h.path for h in tagged]
    for hit in tagged:
        assert wanted in [t.label for t in lib.tag([hit.path], labels, k=2, rerank_depth=16)[0].tags]
    assert len(tagged) < 12 and lib.search("a photo", tag="unicorn") == []
    shutil.move(image, photos / "holiday" / "renamed.png")  # tags follow the content
    lib.index([photos])
    assert str(photos / "holiday" / "renamed.png") in [h.path for h in lib.search("x", k=12, tag=wanted,
                                                                                  rerank_hits=False)]


def test_cli_texts_lookup_tag(library_dir: Path, tiny_model: Path, photos: Path, tmp_path: Path) -> None:
    base = ["--library", str(library_dir), "--model", str(tiny_model)]
    runner = CliRunner()
    (tmp_path / "texts.csv").write_text("id,text\n" + "".join(f"t{i},{t}\n" for i, t in enumerate(TEXTS)))
    out = runner.invoke(main, ["texts", "add", str(tmp_path / "texts.csv"), "--json", *base])
    assert json.loads(out.stdout) == {"added": 8, "already_present": 0}
    listed = [json.loads(line) for line in runner.invoke(main, ["texts", "list", "--json", *base]).stdout.splitlines()]
    assert [r["external_id"] for r in listed] == [f"t{i}" for i in range(8)]
    out = runner.invoke(main, ["lookup", str(photos / "garden" / "img06.png"), "-k", "3", "--json", *base])
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all({"rank", "id", "text", "score", "itc", "itm"} <= set(h) for h in hits)
    assert runner.invoke(main, ["texts", "remove", "t0", "t1", *base]).stdout.startswith("2 removed")
    assert runner.invoke(main, ["texts", "remove", "nope", *base]).exit_code == 1
    (tmp_path / "labels.txt").write_text("dog\ncat\ntree\n")
    out = runner.invoke(main, ["tag", str(photos / "garden" / "img06.png"), "--labels", str(tmp_path / "labels.txt"),
                               "-k", "2", "--json", *base])
    row = json.loads(out.stdout)
    assert [t["rank"] for t in row["tags"]] == [1, 2] and all(0 <= t["itm"] <= 1 for t in row["tags"])
    out = runner.invoke(main, ["index", str(photos), "--tags", str(tmp_path / "labels.txt"), "--json", *base])
    assert json.loads(out.stdout.splitlines()[-1])["tagged"] == 12
    out = runner.invoke(main, ["search", "x", "--tag", row["tags"][0]["label"], "--paths", "--no-rerank", *base])
    assert str(photos / "garden" / "img06.png") in out.stdout.splitlines()


def test_a_label_is_a_tag_only_above_its_match_probability(lib: Library, photos: Path) -> None:
    from blipsearch.filters import Filters

    labels = ["dog", "cat", "car", "tree", "beach", "snow"]
    lib.index([photos])
    lib.tag_library(labels, k=3)
    results = {r.path: r.tags for r in lib.tag(sorted(photos.rglob("*.png")), labels, k=3)}
    probabilities = sorted(t.itm for tags in results.values() for t in tags)
    middle = probabilities[len(probabilities) // 2]  # random weights: a threshold that splits this set
    assert probabilities[0] < middle < probabilities[-1]
    for label in labels:
        for threshold in (0.0, middle, 1.0):
            expected = sorted(p for p, tags in results.items()
                              if any(t.label == label and t.itm >= threshold for t in tags))
            found = lib.search("a photo", k=50, rerank_hits=False,
                               filters=Filters.make(tag=label, min_probability=threshold))
            assert sorted(h.path for h in found) == expected, (label, threshold)
    counts = dict(lib.labels(middle))
    assert sum(counts.values()) == sum(t.itm >= middle for tags in results.values() for t in tags)
    row = lib.db.image_by_path(os.fsencode(sorted(results)[0]))
    assert row is not None
    shown = lib.image(row.id).tags
    assert [(t["label"], t["kept"]) for t in shown] == [(t.label, t.itm >= 0.5) for t in results[sorted(results)[0]]]
