"""Captions and answers: parity with transformers, batching, the caption cache, filters, CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import draw_image
from transformers import (
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
)

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.describe import (
    Answerer,
    AnswerSettings,
    Captioner,
    CaptionSettings,
    same_answer,
)
from blipsearch.store.schema import CaptionRow


@pytest.fixture(scope="module")
def captioner(tiny_captioner: Path) -> Captioner:
    return Captioner.load(str(tiny_captioner), device="cpu")


@pytest.fixture(scope="module")
def answerer(tiny_vqa: Path) -> Answerer:
    return Answerer.load(str(tiny_vqa), device="cpu")


def _pixels(spec, seeds) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([spec.to_pixels(draw_image(s)) for s in seeds])


def test_captions_match_transformers_and_batching(captioner: Captioner, tiny_captioner: Path) -> None:
    pixels = _pixels(captioner.checkpoint.image_spec, range(5))
    batched = captioner.caption(pixels)
    assert batched == [captioner.caption(pixels[i : i + 1])[0] for i in range(5)]
    assert len(set(batched)) == 5, "captions must depend on the picture"
    # The paper's length rule is tested against transformers 4.15 in test_decoding; today's is generate's.
    batched = captioner.caption(pixels, CaptionSettings(length_rule="transformers"))
    net = BlipForConditionalGeneration.from_pretrained(tiny_captioner).eval()
    tok = AutoTokenizer.from_pretrained(tiny_captioner)
    for i in range(2):
        ids = tok(["a picture of "], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = net.generate(pixel_values=torch.as_tensor(pixels[i : i + 1]), input_ids=ids, num_beams=3,
                               max_length=20, min_length=5)
        text = tok.decode(out[0], skip_special_tokens=True)
        assert text.startswith("a picture of")
        assert batched[i] == text[len("a picture of"):].strip()
    short = captioner.caption(pixels[:1], CaptionSettings(max_length=8, min_length=6, num_beams=1))[0]
    assert 1 <= len(short.split()) <= 8
    # A prompt whose decoded text differs from itself (spacing, punctuation) is still cut off whole.
    for prompt in ("A picture of: ", "a picture of"):
        assert not captioner.caption(pixels[:1], CaptionSettings(prompt=prompt))[0].lower().startswith("a picture")


def test_answers_use_enc_and_match_transformers(answerer: Answerer, tiny_vqa: Path) -> None:
    pixels = _pixels(answerer.checkpoint.image_spec, range(4))
    question = "Is there a dog?"
    batched = answerer.answer(pixels, question)
    assert batched == [answerer.answer(pixels[i : i + 1], question)[0] for i in range(4)]
    batched = answerer.answer(pixels, question, AnswerSettings(length_rule="transformers"))
    net = BlipForQuestionAnswering.from_pretrained(tiny_vqa).eval()
    tok = AutoTokenizer.from_pretrained(tiny_vqa)
    batch = tok(["is there a dog?"], return_tensors="pt")
    ids = batch["input_ids"].clone()
    ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
    with torch.no_grad():
        out = net.generate(input_ids=ids, attention_mask=batch["attention_mask"],
                           pixel_values=torch.as_tensor(pixels[:1]), num_beams=3, max_length=10)
    assert batched[0] == tok.decode(out[0], skip_special_tokens=True).strip()


def test_same_answer() -> None:
    assert same_answer(" Yes.", "yes") and same_answer("two  dogs", "Two dogs") and not same_answer("no", "yes")


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, tiny_captioner: Path, tiny_vqa: Path) -> Library:
    with Library(library_dir, model=str(tiny_model), caption_model=str(tiny_captioner), vqa_model=str(tiny_vqa),
                 device="cpu") as library:
        yield library


def _count_calls(monkeypatch: pytest.MonkeyPatch, captioner: Captioner) -> list[int]:
    calls: list[int] = []
    original = captioner.caption

    def counting(pixels, settings=CaptionSettings()):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        return original(pixels, settings)

    monkeypatch.setattr(captioner, "caption", counting)
    return calls


def test_captions_are_generated_once_and_follow_moved_files(lib: Library, photos: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lib.index([photos])
    calls = _count_calls(monkeypatch, lib.captioner)
    assert lib.caption_library([photos]) == 12
    assert sum(calls) == 12
    first = {d.path: d.text for d in lib.caption(sorted(photos.rglob("*.png")))}
    assert sum(calls) == 12, "cached captions must not be generated again"
    shutil.move(photos / "garden", photos / "elsewhere")
    lib.index([photos])
    assert lib.caption_library([photos]) == 0 and sum(calls) == 12
    moved = lib.caption([photos / "elsewhere" / "img07.png"])[0]
    assert moved.text == first[str(photos / "garden" / "img07.png")]
    # Another prompt is another caption.
    lib.caption([photos / "elsewhere" / "img07.png"], CaptionSettings(prompt="a photo of "))
    assert sum(calls) == 13
    # Other decoding settings make another caption too, cached on their own.
    short = CaptionSettings(max_length=8, num_beams=1)
    for _ in range(2):
        lib.caption([photos / "elsewhere" / "img07.png"], short)
    assert sum(calls) == 14
    with lib.db.reader() as session:
        assert session.query(CaptionRow).count() == 14


def test_search_hits_with_captions_and_answer_filter(lib: Library, photos: Path) -> None:
    lib.index([photos])
    hits = lib.search("a dog", k=6, rerank_depth=3)
    described = lib.describe(hits, caption=CaptionSettings(), question="is there a dog?")
    assert [h.id for h in described] == [h.id for h in hits]
    assert all(h.caption and h.answer for h in described)
    assert described[0].caption == lib.caption([hits[0].path])[0].text
    wanted = described[1].answer
    kept = Library.keep_answer(described, wanted.upper() + ".")
    assert kept and all(same_answer(h.answer, wanted) for h in kept)
    assert [h.rank for h in kept] == list(range(1, len(kept) + 1))
    assert len(kept) == sum(same_answer(h.answer, wanted) for h in described)


def test_cli_caption_ask_and_search_extras(library_dir: Path, tiny_model: Path, tiny_captioner: Path,
                                           tiny_vqa: Path, photos: Path) -> None:
    base = ["--library", str(library_dir), "--model", str(tiny_model), "--caption-model", str(tiny_captioner),
            "--vqa-model", str(tiny_vqa)]
    runner = CliRunner()
    images = [str(photos / "holiday" / "img00.png"), str(photos / "holiday" / "img01.png")]
    out = runner.invoke(main, ["caption", *images, "--json", *base])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"] for r in rows] == images and all(r["caption"] for r in rows)
    out = runner.invoke(main, ["ask", *images, "how many people are there?", "--json", *base])
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [set(r) for r in rows] == [{"path", "question", "answer"}] * 2

    out = runner.invoke(main, ["index", str(photos), "--captions", "--json", *base])
    assert json.loads(out.stdout.splitlines()[-1])["captioned"] == 10  # two were captioned above
    out = runner.invoke(main, ["search", "a dog", "-k", "3", "--caption", "--json", *base])
    assert all("caption" in json.loads(line) for line in out.stdout.splitlines())
    out = runner.invoke(main, ["search", "a dog", "-k", "2", "--ask", "is it day?", "--json", *base])
    answers = [json.loads(line)["answer"] for line in out.stdout.splitlines()]
    out = runner.invoke(main, ["search", "a dog", "-k", "2", "--ask", "is it day?", "--answer", answers[0],
                               "--examine", "2", "--json", *base])
    assert "of the top 2 hits" in out.stderr
    assert all(same_answer(json.loads(line)["answer"], answers[0]) for line in out.stdout.splitlines())
    out = runner.invoke(main, ["search", "a dog", "--answer", "yes", *base])
    assert out.exit_code == 2 and "--answer needs --ask" in out.output


def test_answer_filter_counts_every_examined_hit(library_dir: Path, tmp_path: Path) -> None:
    from blipsearch.shapes import world

    world.write_folder(tmp_path / "scenes", world.generate("test", 14, seed=5))
    base = ["--library", str(library_dir), "--model", "builtin:shapes", "--vqa-model", "builtin:shapes"]
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(tmp_path / "scenes"), *base]).exit_code == 0
    question = "what color is the shape on the left?"
    out = runner.invoke(main, ["search", "a red circle", "-k", "14", "--ask", question, "--json", *base])
    # 14 pictures, 6 colors: some answer is given more than once.
    common, count = Counter(json.loads(line)["answer"] for line in out.stdout.splitlines()).most_common(1)[0]
    assert count > 1
    out = runner.invoke(main, ["search", "a red circle", "-k", "1", "--ask", question, "--answer", common,
                               "--examine", "14", *base])
    assert f"of the top 14 hits: {count} answered {common!r} (showing 1)." in out.stderr
    assert len(out.stdout.splitlines()) == 3  # the header, the hit, and its answer under it


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_not_waited_on(library_dir: Path, tiny_captioner: Path, tmp_path: Path) -> None:
    import threading

    os.mkfifo(tmp_path / "pipe.jpg")
    results = []
    with Library(library_dir, caption_model=str(tiny_captioner), device="cpu") as lib:
        reader = threading.Thread(target=lambda: results.extend(lib.caption([tmp_path / "pipe.jpg"])), daemon=True)
        reader.start()
        reader.join(timeout=60)
    assert not reader.is_alive(), "reading the pipe waited for a writer"
    assert results[0].text is None and "not a regular file" in results[0].error


def test_caption_settings_beyond_the_model_are_clear_errors(captioner: Captioner) -> None:
    from blipsearch.errors import SettingsError

    pixels = _pixels(captioner.checkpoint.image_spec, [1])
    positions = captioner.checkpoint.net.config.text_config.max_position_embeddings
    with pytest.raises(SettingsError, match=f"beyond this model's {positions} text positions"):
        captioner.caption(pixels, CaptionSettings(max_length=positions + 1))
    with pytest.raises(SettingsError, match="leaving none for the caption"):
        captioner.caption(pixels, CaptionSettings(prompt="a picture of " * 5, max_length=10, min_length=1))


def test_an_index_run_with_nothing_to_caption_or_tag_loads_no_model(library_dir: Path, tiny_model: Path,
                                                                     tiny_captioner: Path, photos: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from blipsearch.describe import service
    from blipsearch.models import retrieval

    loaded: list[str] = []

    def counted(name: str, load):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            loaded.append(name)
            return load(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(service, "load_captioner", counted("caption", service.load_captioner))
    monkeypatch.setattr(retrieval, "load_retrieval_model", counted("retrieval", retrieval.load_retrieval_model))
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\ngreen\n")
    command = ["index", str(photos), "--captions", "--tags", str(labels), "--json", "--library", str(library_dir),
               "--model", str(tiny_model), "--caption-model", str(tiny_captioner)]

    def run() -> dict[str, int]:
        out = CliRunner().invoke(main, command)
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]

    first = run()
    assert (first["added"], first["captioned"], first["tagged"]) == (12, 12, 12)
    assert sorted(loaded) == ["caption", "retrieval"]
    loaded.clear()
    again = run()  # everything indexed, captioned and tagged: no model has work
    assert (again["unchanged"], again["captioned"], again["tagged"]) == (12, 0, 0)
    assert loaded == []
    draw_image(40).save(photos / "garden" / "new.png")  # one new photo: each model loads for it
    third = run()
    assert (third["added"], third["captioned"], third["tagged"]) == (1, 1, 1)
    assert sorted(loaded) == ["caption", "retrieval"]
