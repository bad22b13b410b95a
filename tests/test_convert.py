"""Original BLIP checkpoints (Salesforce's and mmpretrain's layouts) converted to the Hugging Face layout.

Each test writes a tiny random Hugging Face BLIP out in an original layout with the inverse mapping
(training-only state added, as the released files have it), converts it back, and compares weights
and outputs with the model it started from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import draw_image
from tiny_blip import widen, write_tokenizer

from blipsearch.cli import main
from blipsearch.errors import ModelLoadError, ModelUnavailableError
from blipsearch.images.decode import ImageSpec
from blipsearch.models import convert as conv
from blipsearch.models.retrieval import load_retrieval_model

SIZE = 32
CLASSES = {"retrieval": "BlipForImageTextRetrieval", "caption": "BlipForConditionalGeneration",
           "vqa": "BlipForQuestionAnswering"}


def _config(tokenizer, vision_width: int = 128):  # type: ignore[no-untyped-def]
    from transformers import BlipConfig

    # Heads 64 wide, as in every released BLIP, so that the converter can read their number from widths.
    return BlipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 128, "encoder_hidden_size": vision_width,
                     "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 40, "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
                     "pad_token_id": tokenizer.pad_token_id, "sep_token_id": tokenizer.sep_token_id},
        vision_config={"hidden_size": vision_width, "intermediate_size": 160, "num_hidden_layers": 3,
                       "num_attention_heads": vision_width // 64, "image_size": SIZE, "patch_size": 8,
                       "layer_norm_eps": 1e-6},
        image_text_hidden_size=24,
    )


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bert-tokenizer")
    write_tokenizer(path)
    return path


def _hf_model(head: str, tokenizer_dir: Path, seed: int = 0):  # type: ignore[no-untyped-def]
    import transformers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # BLIP's VQA decoder attends to the question encoder's output: the widths agree there.
    config = _config(tokenizer, vision_width=128 if head == "vqa" else 192)
    torch.manual_seed(seed)
    model = getattr(transformers, CLASSES[head])(config).eval()
    widen(model, seed)
    return model


def _write_original(model: torch.nn.Module, layout: str, path: Path, extras: bool = True) -> Path:
    state = conv.from_hugging_face({k: v.clone() for k, v in model.state_dict().items()}, layout)  # type: ignore[arg-type]
    if layout == "salesforce":
        if extras and "itm_head.weight" in state:  # a retrieval fine-tune's training state
            for key in [k for k in state if k.startswith(("visual_encoder.", "vision_proj."))]:
                state[key.replace("visual_encoder.", "visual_encoder_m.").replace("vision_proj.", "vision_proj_m.")] = \
                    state[key] + 1
            state["image_queue"] = torch.randn(24, 57)
            state["idx_queue"] = torch.zeros(1, 57, dtype=torch.long)
            state["ptr_queue"] = torch.zeros(1, dtype=torch.long)
            state["temp"] = torch.tensor(0.07)
        if extras:
            state["text_decoder.bert.embeddings.position_ids" if "text_decoder.cls.predictions.bias" in state
                  else "text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
        torch.save({"model": state, "config": {"vit": "base", "image_size": SIZE}, "epoch": 5}, path)
    else:
        if extras and "multimodal_head.fc.weight" in state:  # BlipRetrieval's momentum copies and ITC head
            for key in [k for k in state if k.startswith(("vision_backbone.", "text_neck."))]:
                state[key.replace("vision_backbone.", "vision_backbone_m.").replace("text_neck.", "text_neck_m.")] = \
                    state[key] - 1
            state["temp"] = state["head.temp"] = torch.tensor(0.07)
            state["head.text_queue"] = torch.randn(24, 57)
            state["head.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        if extras:
            state[next(k for k in state if k.endswith("embeddings.word_embeddings.weight")).replace(
                "word_embeddings.weight", "position_ids")] = torch.arange(40)[None]
        torch.save({"state_dict": state, "meta": {"mmpretrain_version": "1.0.0", "epoch": 1}}, path)
    return path


def _pixels(spec: ImageSpec, seeds: range) -> np.ndarray:
    return np.stack([spec.to_pixels(draw_image(s, SIZE)) for s in seeds])


@pytest.mark.parametrize("layout", ["salesforce", "mmpretrain"])
@pytest.mark.parametrize("head", ["retrieval", "caption", "vqa"])
def test_round_trip_gives_the_same_weights(head: str, layout: str, tokenizer_dir: Path, tmp_path: Path) -> None:
    import transformers

    model = _hf_model(head, tokenizer_dir)
    source = _write_original(model, layout, tmp_path / f"blip_{head}.pth")
    done = conv.convert(source, tmp_path / "out", tokenizer=str(tokenizer_dir))
    assert (done.layout, done.head) == (layout, head)
    back = getattr(transformers, CLASSES[head]).from_pretrained(tmp_path / "out").eval()
    mine, theirs = model.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    assert back.config.vision_config.layer_norm_eps == 1e-6
    assert back.config.vision_config.num_attention_heads == model.config.vision_config.num_attention_heads
    assert back.config.text_config.num_attention_heads == 2
    saved = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": SIZE, "width": SIZE}
    if head == "retrieval":
        assert done.dropped > 4  # momentum copies, queues, temperature, position ids
    prefixes = {k.split(".")[0] for k in torch.load(source, weights_only=True)["model" if layout == "salesforce"
                                                                                 else "state_dict"]}
    expected = {("salesforce", "retrieval"): "visual_encoder", ("salesforce", "caption"): "text_decoder",
                ("mmpretrain", "retrieval"): "multimodal_head", ("mmpretrain", "caption"): "seq_gen_head",
                ("mmpretrain", "vqa"): "vqa_head", ("salesforce", "vqa"): "text_encoder"}[layout, head]
    assert expected in prefixes  # the file has its layout's own names


def test_converted_retrieval_model_gives_the_original_outputs(tokenizer_dir: Path, tmp_path: Path) -> None:
    model = _hf_model("retrieval", tokenizer_dir, seed=3)
    source = _write_original(model, "salesforce", tmp_path / "model_base_retrieval_coco.pth")
    conv.convert(source, tmp_path / "blip", tokenizer=str(tokenizer_dir))
    loaded = load_retrieval_model(str(tmp_path / "blip"), device="cpu")
    pixels = _pixels(loaded.image_spec, range(4))
    mine = loaded.embed_images(pixels)
    with torch.no_grad():
        states = model.vision_model(pixel_values=torch.as_tensor(pixels))[0]
        ref = torch.nn.functional.normalize(model.vision_proj(states[:, 0]), dim=-1).numpy()
    np.testing.assert_allclose(mine, ref, atol=1e-5)
    sims = mine @ mine.T
    assert np.ptp(sims[np.triu_indices(4, 1)]) > 0.05  # content decides the scores: no ties to hide behind
    texts = ["a red circle", "two dogs on the beach"]
    assert loaded.enc_token_id == loaded.tokenizer.convert_tokens_to_ids("[ENC]")
    logits = loaded.itm_logits(texts, loaded.image_tokens(pixels[:1]).expand(2, -1, -1))
    ids = loaded.tokenize(texts, for_itm=True)
    with torch.no_grad():
        out = model.text_encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                                 encoder_hidden_states=states[:1].expand(2, -1, -1))[0]
        ref_itm = model.itm_head(out[:, 0]).numpy()
    np.testing.assert_allclose(logits, ref_itm, atol=1e-4)


def test_a_pth_given_as_the_model_is_converted_once(tokenizer_dir: Path, tmp_path: Path, photos: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = _hf_model("retrieval", tokenizer_dir, seed=1)
    source = _write_original(model, "mmpretrain", tmp_path / "blip-base_3rdparty_coco-retrieval.pth")
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(photos), "--model", str(source), "--library", str(tmp_path / "lib")])
    assert result.exit_code == 1 and "BLIPSEARCH_TOKENIZER" in result.output  # offline: no bert tokenizer
    assert "google-bert/bert-base-uncased" in result.output
    monkeypatch.setenv("BLIPSEARCH_TOKENIZER", str(tokenizer_dir))
    result = runner.invoke(main, ["index", str(photos), "--model", str(source), "--library", str(tmp_path / "lib")])
    assert result.exit_code == 0, result.output
    calls = []
    monkeypatch.setattr(conv, "convert", lambda *a, **k: calls.append(a))
    result = runner.invoke(main, ["search", "a red circle", "--model", str(source), "--library",
                                  str(tmp_path / "lib"), "--json", "-k", "3"])
    assert result.exit_code == 0, result.output
    assert calls == []  # the cached folder served
    assert len(result.output.strip().splitlines()) == 3


def test_unknown_keys_are_an_error_not_a_skip(tokenizer_dir: Path, tmp_path: Path) -> None:
    model = _hf_model("retrieval", tokenizer_dir)
    state = conv.from_hugging_face(dict(model.state_dict()), "salesforce")
    state["visual_encoder.blocks.0.attn.rel_pos_bias"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "odd.pth")
    with pytest.raises(ModelLoadError, match=r"1 keys .* no place .*rel_pos_bias"):
        conv.convert(tmp_path / "odd.pth", tmp_path / "out", tokenizer=str(tokenizer_dir))
    del state["visual_encoder.blocks.0.attn.rel_pos_bias"]
    del state["visual_encoder.blocks.1.mlp.fc2.weight"]
    torch.save({"model": state}, tmp_path / "short.pth")
    with pytest.raises(ModelLoadError, match="missing: vision_model.encoder.layers.1.mlp.fc2.weight"):
        conv.convert(tmp_path / "short.pth", tmp_path / "out", tokenizer=str(tokenizer_dir))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # no half-written folder left


def test_pickled_objects_are_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    import pathlib

    torch.save({"model": {"x": torch.zeros(1)}, "args": pathlib.PurePosixPath("/x")}, tmp_path / "pickled.pth")
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        conv.convert(tmp_path / "pickled.pth", tmp_path / "out", tokenizer=str(tokenizer_dir))


def test_a_pretrained_checkpoint_needs_a_head_named(tokenizer_dir: Path, tmp_path: Path) -> None:
    retrieval = conv.from_hugging_face(dict(_hf_model("retrieval", tokenizer_dir).state_dict()), "salesforce")
    caption = conv.from_hugging_face(dict(_hf_model("caption", tokenizer_dir).state_dict()), "salesforce")
    torch.save({"model": {**retrieval, **caption}}, tmp_path / "model_base.pth")
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(tmp_path / "model_base.pth"), str(tmp_path / "out"),
                                  "--tokenizer", str(tokenizer_dir)])
    assert result.exit_code == 1 and "--head" in result.output
    result = runner.invoke(main, ["convert", str(tmp_path / "model_base.pth"), str(tmp_path / "out"),
                                  "--tokenizer", str(tokenizer_dir), "--head", "caption", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["set_aside"] == ["itm_head", "text_encoder", "text_proj", "vision_proj"]
    result = runner.invoke(main, ["convert", str(tmp_path / "model_base.pth"), str(tmp_path / "out"),
                                  "--tokenizer", str(tokenizer_dir), "--head", "caption"])
    assert result.exit_code == 1 and "already exists" in result.output


def test_the_default_tokenizer_offline_is_a_clear_error(tokenizer_dir: Path, tmp_path: Path) -> None:
    source = _write_original(_hf_model("caption", tokenizer_dir), "salesforce", tmp_path / "cap.pth")
    with pytest.raises(ModelUnavailableError, match="Tokenizer 'google-bert/bert-base-uncased' is not on this"):
        conv.convert(source, tmp_path / "out")


def test_vocabulary_and_tokenizer_must_agree(tokenizer_dir: Path, tmp_path: Path) -> None:
    model = _hf_model("caption", tokenizer_dir)
    source = _write_original(model, "salesforce", tmp_path / "cap.pth")
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    with pytest.raises(ModelLoadError, match="vocabulary has .* words and the tokenizer 9"):
        conv.convert(source, tmp_path / "out", tokenizer=str(other))
