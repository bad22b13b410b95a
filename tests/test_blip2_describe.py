"""BLIP-2 captions and answers (OPT and Flan-T5 language models) against transformers' own processor
and ``generate``, on tiny random checkpoints made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import draw_image
from tiny_blip2 import QUERIES, make_tiny_blip2_generator

from blipsearch.cli import main
from blipsearch.describe import (
    AnswerSettings,
    CaptionSettings,
    load_answerer,
    load_captioner,
)
from blipsearch.describe.blip2 import Blip2Answerer, Blip2Captioner
from blipsearch.errors import ModelLoadError
from blipsearch.models import loading


@pytest.fixture(scope="module", params=["opt", "t5"])
def blip2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_blip2_generator(tmp_path_factory.mktemp(f"blip2-{request.param}"), request.param, seed=2)


def _reference(path: Path):  # type: ignore[no-untyped-def]
    from transformers import (
        AutoTokenizer,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    processor = Blip2Processor(BlipImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                               num_query_tokens=QUERIES)
    return Blip2ForConditionalGeneration.from_pretrained(path).eval(), processor


def _direct(path: Path, images, prompt: str, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    net, processor = _reference(path)
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt")
    with torch.no_grad():
        out = net.generate(**inputs, do_sample=False, **kwargs)
    if net.config.use_decoder_only_language_model:
        out = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]


def test_captions_and_answers_equal_generate(blip2: Path) -> None:
    captioner = load_captioner(str(blip2), device="cpu")
    answerer = load_answerer(str(blip2), device="cpu")
    assert isinstance(captioner, Blip2Captioner) and isinstance(answerer, Blip2Answerer)
    images = [draw_image(s) for s in range(4)]
    pixels = np.stack([captioner.checkpoint.image_spec.to_pixels(im) for im in images])
    settings = CaptionSettings(prompt="a photo of", num_beams=3, max_length=12, min_length=2)
    captions = captioner.caption(pixels, settings)
    assert captions == _direct(blip2, images, "a photo of", num_beams=3, max_new_tokens=12, min_new_tokens=2)
    assert len(set(captions)) > 1  # the image decides the words
    assert [captioner.caption(pixels[i : i + 1], settings)[0] for i in range(4)] == captions
    answers = answerer.answer(pixels, "what color is the car ?", AnswerSettings(num_beams=2, max_length=6))
    assert answers == _direct(blip2, images, "Question: what color is the car ? Answer:", num_beams=2,
                              max_new_tokens=6, min_new_tokens=1)


def test_choices_are_ranked_by_their_log_probability(blip2: Path) -> None:
    answerer = load_answerer(str(blip2), device="cpu")
    pixels = np.stack([answerer.checkpoint.image_spec.to_pixels(draw_image(s)) for s in range(2)])
    choices = ("red", "a big dog", "blue", "two people on the beach")
    rankings = answerer.rank(pixels, "what is it ?", AnswerSettings(choices=choices))
    net, processor = _reference(answerer.checkpoint.path)
    prompt = processor(images=[draw_image(0)], text=["Question: what is it ? Answer:"], return_tensors="pt")
    eos = processor.tokenizer.eos_token_id
    for c, choice in enumerate(choices):  # one choice at a time, unpadded, as transformers computes it
        answer = processor.tokenizer(" " + choice, add_special_tokens=False)["input_ids"] + [eos]
        with torch.no_grad():
            if net.config.use_decoder_only_language_model:
                ids = torch.cat([prompt["input_ids"], torch.tensor([answer])], dim=1)
                logits = net(pixel_values=prompt["pixel_values"], input_ids=ids).logits
                logp = torch.log_softmax(logits[0, prompt["input_ids"].shape[1] - 1 : -1], -1)
            else:
                logits = net(**prompt, labels=torch.tensor([answer])).logits
                logp = torch.log_softmax(logits[0], -1)
        expected = float(logp.gather(1, torch.tensor(answer)[:, None]).sum())
        assert rankings[0].choices[c].log_likelihood == pytest.approx(expected, abs=1e-4)
    scores = [s.log_likelihood for s in rankings[0].choices]
    assert rankings[0].answer == choices[int(np.argmax(scores))]
    assert len(set(scores)) == len(choices)


def test_cli_captions_answers_and_index_with_blip2(blip2: Path, tiny_model: Path, photos: Path,
                                                   library_dir: Path) -> None:
    runner = CliRunner()
    common = ["--library", str(library_dir), "--model", str(tiny_model)]
    image = str(next(photos.rglob("*.png")))
    result = runner.invoke(main, ["caption", image, "--caption-model", str(blip2), "--json", *common])
    assert result.exit_code == 0, result.output
    caption = json.loads(result.output)["caption"]
    result = runner.invoke(main, ["ask", image, "what is it ?", "--vqa-model", str(blip2), "--json", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["answer"]
    result = runner.invoke(main, ["index", str(photos), "--captions", "--caption-model", str(blip2), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["search", "a red circle", "--caption", "--caption-model", str(blip2), "--json",
                                  "-k", "12", *common])
    assert result.exit_code == 0, result.output
    hits = {Path(h["path"]).name: h["caption"] for h in map(json.loads, result.output.splitlines())}
    assert hits[Path(image).name] == caption  # stored by index --captions, the same as `caption` gave


def test_a_blip2_captioner_is_not_a_retrieval_model(blip2: Path, library_dir: Path, photos: Path) -> None:
    result = CliRunner().invoke(main, ["index", str(photos), "--library", str(library_dir), "--model", str(blip2)])
    assert result.exit_code == 1
    assert "BLIP-2" in result.output and "Traceback" not in result.output


def test_a_model_too_large_for_free_memory_is_refused_before_loading(blip2: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "available_memory", lambda: 100 << 20)  # a machine with 100 MiB free
    loaded = []
    monkeypatch.setattr("transformers.Blip2ForConditionalGeneration.from_pretrained",
                        lambda *a, **k: loaded.append(a))
    with pytest.raises(ModelLoadError, match=r"needs 0\.\d GiB .* has 0\.1 GiB of RAM free"):
        load_captioner(str(blip2), device="cpu")
    assert loaded == []
    from safetensors.torch import load_file

    assert loading.weight_count(blip2) == sum(t.numel() for t in load_file(blip2 / "model.safetensors").values())


@pytest.mark.parametrize(("option", "spec"), [("--model", "Salesforce/blip2-itm-vit-g-coco"),
                                              ("--caption-model", "Salesforce/blip2-opt-2.7b"),
                                              ("--vqa-model", "Salesforce/blip2-flan-t5-xl")])
def test_blip2_hub_ids_fail_fast_offline(option: str, spec: str, photos: Path, library_dir: Path,
                                         tiny_model: Path) -> None:
    image = str(next(photos.rglob("*.png")))
    command = {"--model": ["index", str(photos)], "--caption-model": ["caption", image],
               "--vqa-model": ["ask", image, "what is it?"]}[option]
    model = [] if option == "--model" else ["--model", str(tiny_model)]
    result = CliRunner().invoke(main, [*command, option, spec, *model, "--library", str(library_dir)])
    assert result.exit_code == 1
    assert f"Model '{spec}' is not on this machine" in result.output and f"{option} PATH" in result.output
    assert "Traceback" not in result.output
