"""`blipsearch eval`: caption formats, recall arithmetic, and the protocol against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import draw_image

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.errors import InputPathError
from blipsearch.evaluation import evaluate, load_captions, recall_at
from blipsearch.images.decode import load_pixels
from blipsearch.rerank.itm import match_scores

CAPTIONS = [
    ["a red circle left of a blue square", "a blue square right of a red circle"],
    ["a dog on the beach"],
    ["two people in the snow", "snow and people"],
    ["a small boat on the river"],
    ["a green tree by a house", "a house"],
    ["a yellow flower"],
    [],  # a distractor: searched for, never a query
]


@pytest.fixture
def evalset(tmp_path: Path) -> Path:
    root = tmp_path / "evalset"
    (root / "img").mkdir(parents=True)
    lines = []
    for i, captions in enumerate(CAPTIONS):
        draw_image(100 + i).save(root / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "captions": captions}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_three_caption_formats_agree(evalset: Path, tmp_path: Path) -> None:
    jsonl = load_captions(evalset, evalset / "captions.jsonl")
    blip = tmp_path / "blip.json"
    blip.write_text(json.dumps([{"image": f"img/{i}.png", "caption": c} for i, c in enumerate(CAPTIONS)]))
    karpathy = tmp_path / "karpathy.json"
    images = [{"filepath": "img", "filename": f"{i}.png", "split": "test",
               "sentences": [{"raw": t} for t in c]} for i, c in enumerate(CAPTIONS)]
    images.append({"filepath": "img", "filename": "train.png", "split": "train", "sentences": [{"raw": "x"}]})
    karpathy.write_text(json.dumps({"images": images}))
    for other in (load_captions(evalset, blip), load_captions(evalset, karpathy, "test")):
        assert other.images == jsonl.images and other.texts == jsonl.texts
        assert other.text_image.tolist() == jsonl.text_image.tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5]
    with pytest.raises(InputPathError, match="no images"):
        load_captions(evalset, karpathy, "val")
    for bad in ('{"picture": 1}\n', '{"images": ["x"]}', '{"image": "a.png", "captions": [null]}\n'):
        (tmp_path / "bad.jsonl").write_text(bad)
        with pytest.raises(InputPathError, match="not a captions file"):
            load_captions(evalset, tmp_path / "bad.jsonl")
    (tmp_path / "bare.jsonl").write_text('{"image": "img/0.png", "captions": []}\n')
    with pytest.raises(InputPathError, match="no captions"):
        load_captions(evalset, tmp_path / "bare.jsonl")
    (tmp_path / "one.jsonl").write_text('{"image": "img/0.png", "captions": "a red circle"}\n')
    assert load_captions(evalset, tmp_path / "one.jsonl").texts == ["a red circle"]


def test_recall_arithmetic() -> None:
    assert recall_at(np.array([0, 1, 4, 5, 9, 10, 30, 0])) == {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75}


def test_protocol_matches_brute_force(evalset: Path, tmp_path: Path, tiny_model: Path) -> None:
    depth = 3
    with Library(tmp_path / "lib", model=str(tiny_model), device="cpu") as lib:
        result = evaluate(lib, evalset, evalset / "captions.jsonl", rerank_depth=depth)
        model = lib.model
        data = load_captions(evalset, evalset / "captions.jsonl")
        pixels = np.stack([load_pixels(p, model.image_spec) for p in data.images])
        img = model.embed_images(pixels)
        txt = model.embed_texts(data.texts)
        tokens = model.image_tokens(pixels)
        # Every (text, image) ITM logit, one pair at a time.
        itm = np.array([[match_scores(model.itm_logits([t], tokens[i : i + 1]))[0][0]
                         for i in range(len(img))] for t in data.texts])
    sims = txt @ img.T
    assert np.ptp(sims) > 1e-3 and np.ptp(itm) > 1e-3

    def ranks(scores: np.ndarray, correct) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
        itc_ranks, rerank_ranks = [], []
        for q, row in enumerate(scores):
            order = list(np.argsort(-row, kind="stable"))
            itc_ranks.append(next(r for r, c in enumerate(order) if correct(q, c)))
            top = order[:depth]
            final = sorted(top, key=lambda c: -(itm_score(q, c) + row[c]))
            hit = [r for r, c in enumerate(final) if correct(q, c)]
            rerank_ranks.append(hit[0] if hit else max(itc_ranks[-1], depth))
        return itc_ranks, rerank_ranks

    itm_score = lambda t, i: itm[t, i]  # noqa: E731
    t2i = ranks(sims, lambda t, i: data.text_image[t] == i)
    itm_score = lambda i, t: itm[t, i]  # noqa: E731
    i2t = ranks(sims.T[:6], lambda i, t: data.text_image[t] == i)  # the distractor asks nothing
    for got, (itc_r, rerank_r) in ((result["text_to_image"], t2i), (result["image_to_text"], i2t)):
        assert got["itc"] == pytest.approx(recall_at(np.array(itc_r)))
        assert got["rerank"] == pytest.approx(recall_at(np.array(rerank_r)))
    assert t2i[0] != t2i[1] or i2t[0] != i2t[1], "reranking must move something for the test to mean anything"
    assert result["images"] == 7 and result["texts"] == 9 and result["image_queries"] == 6


def test_eval_command_json(evalset: Path, tiny_model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["eval", str(evalset), str(evalset / "captions.jsonl"), "--model",
                                       str(tiny_model), "--json", "--rerank-depth", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out["text_to_image"]) == {"itc", "rerank"}
    assert set(out["image_to_text"]["rerank"]) == {"R@1", "R@5", "R@10"}
    assert out["images"] == 7 and out["texts"] == 9
    (evalset / "img" / "2.png").unlink()
    result = CliRunner().invoke(main, ["eval", str(evalset), str(evalset / "captions.jsonl"), "--model",
                                       str(tiny_model)])
    assert result.exit_code == 1 and "missing" in result.output
