"""The model wrapper against direct transformers computations (BLIP-NOTES recipes)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw_image
from PIL import Image
from tiny_blip import make_tiny_retrieval
from transformers import AutoTokenizer, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from blipsearch.errors import InputPathError, ModelLoadError, ModelUnavailableError
from blipsearch.images.decode import ImageSpec
from blipsearch.models.blip import _absorbed_attention, _shared_image_attention
from blipsearch.models.loading import resolve_model_dir
from blipsearch.models.retrieval import load_retrieval_model
from blipsearch.text import pre_caption

TEXTS = ["a red circle left of a blue square", "A dog, running on the beach!", "two people in the snow"]


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    net = BlipForImageTextRetrieval.from_pretrained(tiny_model).eval()
    return net, AutoTokenizer.from_pretrained(tiny_model), BlipImageProcessorPil.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model: Path):
    return load_retrieval_model(str(tiny_model), device="cpu")


def _normalize(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=-1).numpy()


def test_preprocessing_matches_the_blip_image_processor(reference) -> None:
    _, _, processor = reference
    spec = ImageSpec(height=32, width=32)
    for size in (32, 57, 200):
        image = draw_image(size).resize((size, size + 9))
        ours = spec.to_pixels(image)
        theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_transparent_and_deep_grey_images_are_shown_as_a_viewer_shows_them(reference) -> None:
    _, _, processor = reference
    spec = ImageSpec(height=32, width=32)
    rgba = draw_image(7, 40).convert("RGBA")
    alpha = np.zeros((40, 40), np.uint8)
    alpha[8:32, 8:32] = 255  # an opaque square on a transparent background
    rgba.putalpha(Image.fromarray(alpha))
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = 0
    for image in (rgba, rgba.convert("LA"), palette):
        ours = spec.to_pixels(image)
        theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    white = spec.to_pixels(Image.new("RGB", (40, 40), "white"))
    assert np.allclose(spec.to_pixels(rgba)[:, 0, 0], white[:, 0, 0])  # the transparent corner is white

    levels = np.tile(np.linspace(0, 255, 40), (40, 1))
    eight = spec.to_pixels(Image.fromarray(levels.round().astype(np.uint8)))
    for deep in (Image.fromarray((levels * 257).round().astype(np.uint16)),
                 Image.fromarray((levels * 257).round().astype(np.int32)),
                 Image.fromarray((levels / 255).astype(np.float32))):
        np.testing.assert_allclose(spec.to_pixels(deep), eight, atol=0.02, err_msg=deep.mode)
    # Fewer bits in a 16-bit file (a 12-bit sensor: 0..4095), and floats in any range, reach white too.
    for deep in (Image.fromarray((levels * 4095 / 255).round().astype(np.uint16)),
                 Image.fromarray((levels * 1023 / 255).round().astype(np.uint16)),
                 Image.fromarray((levels * 2 * np.pi / 255 - np.pi).astype(np.float32)),
                 Image.fromarray((levels * 4000).astype(np.float32))):
        np.testing.assert_allclose(spec.to_pixels(deep), eight, atol=0.02, err_msg=f"{deep.mode} {deep.getextrema()}")
    png = io.BytesIO()
    Image.fromarray((levels * 4095 / 255).round().astype(np.uint16)).save(png, "PNG")  # 16 bits in the file
    np.testing.assert_allclose(spec.to_pixels(Image.open(png)), eight, atol=0.02)


def test_fused_vision_attention_equals_transformers_eager(model, reference) -> None:
    # Every vision attention module runs the fused kernel, and the whole token
    # sequence equals transformers' own (eager) attention.
    net, _, processor = reference
    layers = model.net.vision_model.encoder.layers
    assert all(type(layer.self_attn).__name__ == "FusedBlipAttention" for layer in layers)
    assert all(type(layer.self_attn).__name__ == "BlipAttention" for layer in net.vision_model.encoder.layers)
    pixels = processor(images=[draw_image(i) for i in range(3)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = net.vision_model(pixel_values=pixels).last_hidden_state
        ours = model.net.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_image_vectors_match_transformers(model, reference) -> None:
    net, _, processor = reference
    images = [draw_image(i) for i in range(6)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = _normalize(net.vision_proj(net.vision_model(pixel_values=pixels).last_hidden_state[:, 0]))
    ours = model.embed_images(np.stack([model.image_spec.to_pixels(im) for im in images]))
    assert ours.shape == (6, 256)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # The weights are wide enough that pictures are told apart: no ties to hide behind.
    sims = ours @ ours.T
    assert sims[~np.eye(6, dtype=bool)].max() < 0.999
    assert np.ptp(sims[~np.eye(6, dtype=bool)]) > 0.01


def test_text_vectors_match_transformers_with_blip_preprocessing(model, reference) -> None:
    net, tokenizer, _ = reference
    batch = tokenizer([pre_caption(t) for t in TEXTS], padding="longest", truncation=True, max_length=35,
                      return_tensors="pt")
    with torch.no_grad():
        hidden = net.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        expected = _normalize(net.text_proj(hidden.last_hidden_state[:, 0]))
    ours = model.embed_texts(TEXTS)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # Preprocessing is applied: case and BLIP's punctuation don't change the vector.
    np.testing.assert_allclose(model.embed_texts(["A DOG, running (on) the beach."]), ours[1:2], atol=1e-6)
    assert not np.allclose(ours[0], ours[2], atol=1e-3)


def test_pre_caption_follows_the_paper() -> None:
    assert pre_caption('  A "Dog"; running!!  on the (beach)~ ') == "a dog running on the beach"
    assert len(pre_caption(" ".join(["word"] * 50)).split()) == 30


def test_batched_vectors_equal_single(model) -> None:
    pixels = np.stack([model.image_spec.to_pixels(draw_image(i)) for i in range(5)])
    batched = model.embed_images(pixels)
    for i in range(5):
        np.testing.assert_allclose(model.embed_images(pixels[i : i + 1])[0], batched[i], atol=1e-6)
    texts = model.embed_texts(TEXTS)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(model.embed_texts([text])[0], texts[i], atol=1e-6)


def _direct_itm(net, tokenizer, text: str | list[str], pixels: torch.Tensor, first_token: int) -> np.ndarray:
    texts = [text] * len(pixels) if isinstance(text, str) else text
    batch = tokenizer([pre_caption(t) for t in texts], return_tensors="pt", max_length=35, truncation=True,
                      padding="longest")
    ids = batch["input_ids"].clone()
    ids[:, 0] = first_token
    with torch.no_grad():
        tokens = net.vision_model(pixel_values=pixels).last_hidden_state
        out = net.text_encoder(input_ids=ids, attention_mask=batch["attention_mask"], encoder_hidden_states=tokens,
                               encoder_attention_mask=torch.ones(tokens.shape[:-1], dtype=torch.long))
        return net.itm_head(out.last_hidden_state[:, 0]).numpy()


def test_texts_embedded_at_once_by_several_threads_share_one_pass(model, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    texts = [["a dog"], ["two people in the snow", "a red car"], ["a cat on a sofa at night with a lamp"],
             ["a boat"], ["a big river", "a small river", "a tree"], ["sky"]]
    alone = [model.embed_texts(t) for t in texts]
    passes: list[int] = []
    real = type(model)._embed_now
    monkeypatch.setattr(type(model), "_embed_now", lambda self, batch: passes.append(len(batch)) or real(self, batch))
    results: dict[int, np.ndarray] = {}
    with model.lock:  # the model is busy: every caller waits for it, and then one pass serves all
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, model.embed_texts(texts[n])))
                   for n in range(len(texts))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while model.text_batches.queued < len(texts) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    assert passes == [sum(len(t) for t in texts)]
    for n, vectors in enumerate(alone):
        np.testing.assert_allclose(results[n], vectors, atol=1e-5)  # padding to the longest is masked


def test_itm_uses_the_enc_token_and_matches_transformers(model, reference) -> None:
    net, tokenizer, processor = reference
    images = [draw_image(i) for i in range(4)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    enc = tokenizer.convert_tokens_to_ids("[ENC]")
    assert model.enc_token_id == enc != tokenizer.cls_token_id
    expected = _direct_itm(net, tokenizer, TEXTS[0], pixels, enc)
    ours = model.itm_logits([TEXTS[0]] * 4, model.image_tokens(pixels.numpy()))
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    with_cls = _direct_itm(net, tokenizer, TEXTS[0], pixels, tokenizer.cls_token_id)
    assert not np.allclose(with_cls, expected, atol=1e-3), "[ENC] and [CLS] must give different scores"
    assert np.ptp(expected[:, 1]) > 1e-3, "ITM scores must differ between images"

    cls_model = load_retrieval_model(str(model.path), device="cpu", itm_token="cls")
    np.testing.assert_allclose(cls_model.itm_logits([TEXTS[0]] * 4, cls_model.image_tokens(pixels.numpy())),
                               with_cls, atol=1e-5)


def test_enc_falls_back_to_the_last_vocab_id(tmp_path: Path, tiny_model: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    # The hub's converted checkpoints ship a plain BERT tokenizer without [ENC].
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    vocab = (plain / "vocab.txt").read_text().splitlines()
    (plain / "vocab.txt").write_text("\n".join(v for v in vocab if v not in ("[ENC]", "[DEC]")) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (plain / name).unlink(missing_ok=True)
    loaded = load_retrieval_model(str(plain), device="cpu")
    assert loaded.enc_token_id == loaded.net.config.text_config.vocab_size - 1
    # A vocabulary without BLIP's two extra ids: the last id is an ordinary word, so [CLS] it is.
    (plain / "vocab.txt").write_text("\n".join(v for v in vocab if v != "[ENC]") + "\n")
    with caplog.at_level(logging.WARNING):
        loaded = load_retrieval_model(str(plain), device="cpu")
    assert loaded.enc_token_id == loaded.tokenizer.cls_token_id and "[CLS] instead" in caplog.text


def test_nested_processor_config_is_accepted(tmp_path: Path) -> None:
    path = make_tiny_retrieval(tmp_path / "nested", seed=3, nested_processor_config=True)
    assert not (path / "preprocessor_config.json").exists()
    assert ImageSpec.from_model_dir(path).height == 32


def test_missing_processor_config_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError, match="preprocessor_config.json"):
        load_retrieval_model(str(broken), device="cpu")


def test_non_retrieval_checkpoint_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration

    path = tmp_path / "captioner"
    shutil.copytree(tiny_model, path)
    (path / "model.safetensors").unlink()
    BlipForConditionalGeneration(BlipConfig.from_pretrained(tiny_model)).save_pretrained(path)
    with pytest.raises(ModelLoadError, match="not a BLIP image-text retrieval checkpoint"):
        load_retrieval_model(str(path), device="cpu")


def test_offline_hub_id_fails_fast_with_advice() -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model_dir("Salesforce/blip-itm-base-coco")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "--model PATH" in message and "HF_HUB_OFFLINE" in message and "hf download" in message
    assert "model=PATH in Python" in message  # the README's Python users are told their argument too
    # ... and only they: the command line's words name the option alone.
    assert "--model PATH" in info.value.command_line and "in Python" not in info.value.command_line
    # The advice names the option of the model that is missing.
    for role, option in (("caption", "--caption-model"), ("vqa", "--vqa-model")):
        with pytest.raises(ModelUnavailableError) as info:
            resolve_model_dir("Salesforce/blip-vqa-base", role)
        assert f"{option} PATH" in str(info.value) and "--model PATH" not in str(info.value)
        assert f"{option[2:].replace('-', '_')}=PATH in Python" in str(info.value)


def test_bad_model_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist: check --model"):
        resolve_model_dir("./no/such/model")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputPathError, match="is a file: a model is a folder"):
        resolve_model_dir(str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelUnavailableError, match="built-in"):
        resolve_model_dir("builtin:nonexistent")


def test_fingerprint_tracks_weights(tiny_model: Path, other_model: Path, tmp_path: Path) -> None:
    a = load_retrieval_model(str(tiny_model), device="cpu").fingerprint
    b = load_retrieval_model(str(other_model), device="cpu").fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert a != b
    assert load_retrieval_model(str(copy), device="cpu").fingerprint == a
    config = json.loads((copy / "config.json").read_text())
    config["vision_config"]["layer_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config))
    assert load_retrieval_model(str(copy), device="cpu").fingerprint != a


def test_fingerprint_is_remembered_across_processes_until_a_file_changes(tiny_model: Path, tmp_path: Path) -> None:
    from blipsearch.models import loading

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    true = loading.fingerprint(copy)
    cache_file = loading._fingerprint_cache_path()
    cache = json.loads(cache_file.read_text())
    (entry,) = [v for k, v in cache.items() if k == os.path.realpath(copy)]
    assert entry["fingerprint"] == true
    # A new process (no in-memory cache) takes the stored value while the files' stamps hold:
    entry["fingerprint"] = "from-the-cache"
    cache_file.write_text(json.dumps(cache))
    loading._fingerprint_cached.cache_clear()
    assert loading.fingerprint(copy) == "from-the-cache"
    # Weights rewritten with the same size and their old modification time: hashed again.
    weights = copy / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    loading._fingerprint_cached.cache_clear()
    changed = loading.fingerprint(copy)
    assert changed not in ("from-the-cache", true)
    assert changed == loading._hash_files(str(copy), sorted(n for n, *_ in json.loads(
        cache_file.read_text())[os.path.realpath(copy)]["stamp"]))
    # A damaged cache file is ignored, then replaced.
    cache_file.write_text("{not json")
    loading._fingerprint_cached.cache_clear()
    assert loading.fingerprint(copy) == changed
    assert json.loads(cache_file.read_text())[os.path.realpath(copy)]["fingerprint"] == changed


def test_one_image_many_texts_reuses_image_keys_and_values(model) -> None:
    tokens = model.image_tokens(model.image_spec.to_pixels(draw_image(11))[None])
    texts = TEXTS + ["a cat", "a big house with a tree"]
    shared = model.itm_logits(texts, tokens)
    plain = model.itm_logits(texts, tokens.expand(len(texts), -1, -1).contiguous())
    np.testing.assert_allclose(shared, plain, atol=1e-5)
    assert np.ptp(plain[:, 1]) > 1e-3
    with pytest.raises(ValueError):
        model.itm_logits(texts, tokens.expand(2, -1, -1))


def test_itm_cross_attention_shortcuts_equal_transformers(model, reference) -> None:
    # Both ways of skipping the image key/value projections give transformers' own ITM logits,
    # for texts of one length and for a padded batch of several.
    net, tokenizer, processor = reference
    pixels = processor(images=[draw_image(i) for i in range(4)], return_tensors="pt")["pixel_values"]
    tokens = model.image_tokens(pixels.numpy())
    enc = model.enc_token_id
    config = model.net.text_encoder.config
    head_size = config.hidden_size // config.num_attention_heads
    for texts in (["a cat"] * 4, [TEXTS[0]] * 4, ["a cat", *TEXTS]):
        expected = _direct_itm(net, tokenizer, texts, pixels, enc)
        assert np.ptp(expected[:, 1]) > 1e-3
        batch = model.tokenize(texts, for_itm=True)
        with torch.no_grad():
            hidden = model._text_encoder_layers(batch["input_ids"], batch["attention_mask"], _absorbed_attention(tokens))
            np.testing.assert_allclose(model.net.itm_head(hidden[:, 0]).numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(model.itm_logits(texts, tokens), expected, atol=1e-5)
        one_image = _direct_itm(net, tokenizer, texts, pixels[:1].expand(4, -1, -1, -1), enc)
        with torch.no_grad():
            hidden = model._text_encoder_layers(batch["input_ids"], batch["attention_mask"],
                                                _shared_image_attention(tokens[0]))
            np.testing.assert_allclose(model.net.itm_head(hidden[:, 0]).numpy(), one_image, atol=1e-5)
    # A short query takes the absorbed route through the public call.
    assert model.tokenize(["a cat"], for_itm=True)["input_ids"].shape[1] < head_size


def test_devices_that_cannot_run_the_model_are_clear_errors() -> None:
    from blipsearch.models.checkpoint import select_device

    names = ["xla", "meta", "banana", "cuda"] if not torch.cuda.is_available() else ["xla", "meta", "banana"]
    if not torch.backends.mps.is_available():
        names.append("mps")
    for name in names:
        with pytest.raises(ModelLoadError, match="device"):
            select_device(name)
    assert select_device("cpu").type == "cpu"
