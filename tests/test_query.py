"""Composite queries against a brute-force numpy computation: weighted texts and images, negatives
subtracted in ITC, their ITM logits weighed in the rerank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.errors import InputPathError
from blipsearch.images.decode import load_pixels
from blipsearch.rerank.itm import match_scores
from blipsearch.search.query import Term, image_term, text_term, weighted
from blipsearch.store.schema import ImageRow


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, photos: Path) -> Library:
    with Library(library_dir, model=str(tiny_model), device="cpu") as library:
        library.index([photos])
        yield library


def _vectors(lib: Library) -> tuple[list[str], np.ndarray]:
    with lib.db.reader() as session:
        rows = list(session.query(ImageRow).order_by(ImageRow.id).all())
    return [os.fsdecode(r.path) for r in rows], np.stack([np.frombuffer(r.vector, np.float32) for r in rows])


def test_weighted_texts_and_images_rank_as_their_vector_sum(lib: Library, photos: Path) -> None:
    like = photos / "garden" / "img07.png"
    terms = [Term(text="a blue square", weight=2.0), Term(text="a green circle", weight=-1.0),
             Term(image=os.fsencode(like), weight=0.5)]
    model = lib.model
    paths, vectors = _vectors(lib)
    texts = model.embed_texts(["a red circle", "a blue square", "a green circle"])
    query = texts[0] + 2 * texts[1] - texts[2] + 0.5 * vectors[paths.index(str(like))]
    query /= np.linalg.norm(query)
    cosines = vectors @ query
    order = np.argsort(-cosines, kind="stable")
    hits = lib.search("a red circle", k=12, rerank_hits=False, terms=terms)
    assert [h.path for h in hits] == [paths[i] for i in order]
    np.testing.assert_allclose([h.itc for h in hits], cosines[order], atol=1e-5)
    # Not the single text's ranking: the terms change it.
    plain = lib.search("a red circle", k=12, rerank_hits=False)
    assert [h.path for h in plain] != [h.path for h in hits]

    # Reranked: cosine + (logit(text) + 2 logit(blue) - logit(green)) / (1 + 2).
    reranked = lib.search("a red circle", k=5, rerank_depth=5, terms=terms)
    expected = {}
    for i in order[:5]:
        tokens = model.image_tokens(load_pixels(paths[i], model.image_spec)[None])
        logits = [match_scores(model.itm_logits([t], tokens))[0][0] for t in
                  ("a red circle", "a blue square", "a green circle")]
        expected[paths[i]] = cosines[i] + (logits[0] + 2 * logits[1] - logits[2]) / 3
    best = sorted(expected, key=lambda p: -expected[p])
    assert [h.path for h in reranked] == best
    np.testing.assert_allclose([h.score for h in reranked], [expected[p] for p in best], atol=1e-4)
    assert len({round(v, 3) for v in expected.values()}) == 5  # distinct scores: an order, not ties


def test_terms_from_the_command_line(lib: Library, photos: Path) -> None:
    assert weighted("2*sunset") == (2.0, "sunset") and weighted("0.5 * x") == (0.5, "x")
    assert weighted("3 dogs") == (1.0, "3 dogs") and weighted(".5*y") == (0.5, "y")
    assert text_term("2*sunset", -1) == Term(text="sunset", weight=-2.0)
    like = photos / "garden" / "img07.png"
    assert image_term(str(like)) == Term(image=os.fsencode(like))
    assert image_term("3*" + str(like), -1) == Term(image=os.fsencode(like), weight=-3.0)
    assert image_term("7") == Term(image=7)
    for bad in (lambda: image_term(str(photos / "nope.png")), lambda: text_term("2*   "),
                lambda: Term(text="x", weight=0.0), lambda: Term()):
        with pytest.raises(InputPathError):
            bad()
    with pytest.raises(InputPathError, match="cancel"):
        lib.search("a red circle", terms=[Term(text="a red circle", weight=-1.0)])

    args = ["search", "a red circle", "--and", "2*a blue square", "--not", "a green circle", "--like",
            "0.5*" + str(like), "--no-rerank", "-k", "12", "--json", "--library", str(lib.location)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0
    terms = [Term(text="a blue square", weight=2.0), Term(text="a green circle", weight=-1.0),
             Term(image=os.fsencode(like), weight=0.5)]
    expected = [h.path for h in lib.search("a red circle", k=12, rerank_hits=False, terms=terms)]
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == expected
    bad = CliRunner().invoke(main, ["search", "x", "--like", "/no/such.png", "--library", str(lib.location)])
    assert bad.exit_code == 2 and "not a file" in bad.output

