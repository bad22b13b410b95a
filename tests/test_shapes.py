"""The shapes world generator and, when present, the trained shapes checkpoints.

The checkpoint tests load each model from ``blipsearch/builtin/shapes`` with
transformers' ``from_pretrained`` and measure it on a freshly generated test
split (a seed other than the one used in training); the floors sit a little
below the figures recorded in ``TRAINING.json``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from blipsearch.shapes import evaluate, world

BUILTIN = Path(__file__).resolve().parents[1] / "blipsearch" / "builtin" / "shapes"
EVAL_SEED = 7
EVAL_SCENES = 200

# ---------------------------------------------------------------------------- generator


def test_same_seed_same_scenes() -> None:
    a = world.generate("train", 6, seed=3)
    b = world.generate("train", 6, seed=3)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert x.captions == y.captions
        assert x.qa == y.qa
    c = world.generate("train", 6, seed=4)
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(z.image)) for x, z in zip(a, c))


def test_shorter_list_is_prefix() -> None:
    long = world.generate("test", 5, seed=1)
    short = world.generate("test", 2, seed=1)
    assert [s.caption for s in short] == [s.caption for s in long[:2]]
    assert np.array_equal(np.asarray(short[1].image), np.asarray(long[1].image))


def test_image_format() -> None:
    scene = world.generate("test", 1, seed=0)[0]
    assert scene.image.mode == "RGB"
    assert scene.image.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
    assert scene.caption == f"{world.phrase(scene.left)} left of {world.phrase(scene.right)}"
    assert scene.left != scene.right


def test_held_out_combinations_only_in_test() -> None:
    train = world.generate("train", 400, seed=0)
    for s in train:
        assert (*s.left, "left") not in world.HELD_OUT
        assert (*s.right, "right") not in world.HELD_OUT
    assert not any(world.is_held_out(*p) for p in world.train_pairs())
    # The test split walks through every combination: all held-out triples appear.
    test = world.generate("test", len(world.all_pairs()), seed=0)
    assert len({s.key for s in test}) == len(world.all_pairs())
    seen = {(*s.left, "left") for s in test} | {(*s.right, "right") for s in test}
    assert world.HELD_OUT <= seen
    assert any(s.held_out for s in world.generate("test", EVAL_SCENES, seed=EVAL_SEED))


def test_held_out_attributes_are_still_trained() -> None:
    # Every held-out triple's color and shape do occur on that side in training.
    pairs = world.train_pairs()
    for color, shape, side in world.HELD_OUT:
        objs = [p[0] if side == "left" else p[1] for p in pairs]
        assert any(o[0] == color for o in objs)
        assert any(o[1] == shape for o in objs)


def test_questions_match_scene() -> None:
    for s in world.generate("test", 60, seed=2):
        present = {s.left, s.right}
        kinds = [qa.kind for qa in s.qa]
        assert set(kinds) == set(world.QUESTION_TYPES)
        for qa in s.qa:
            q = qa.question
            if q.startswith("what color is the"):
                side = s.left if q.endswith("on the left?") else s.right
                assert q == f"what color is the {side[1]} on the {'left' if side is s.left else 'right'}?"
                assert qa.answer == side[0]
            elif q.startswith("what shape is on the"):
                assert qa.answer == (s.left if q.endswith("left?") else s.right)[1]
            else:
                words = q.rstrip("?").split()
                assert words[:2] == ["is", "there"]
                obj = (words[3], words[4])
                assert qa.answer == ("yes" if obj in present else "no")
        assert sorted(qa.answer for qa in s.qa if qa.kind == "yesno") == ["no", "yes"]


def test_alternative_captions_name_the_same_objects() -> None:
    s = world.generate("test", 1, seed=0)[0]
    for cap in s.alt_captions:
        assert world.phrase(s.left) in cap and world.phrase(s.right) in cap
    assert "right of" in s.alt_captions[0]


def test_satisfies_is_the_ground_truth_of_captions_and_partial_descriptions() -> None:
    left, right = ("red", "circle"), ("blue", "square")
    assert world.satisfies(left, right, "a red circle left of a blue square")
    assert world.satisfies(left, right, "a blue square to the right of a red circle")
    assert not world.satisfies(left, right, "a blue square left of a red circle")  # sides swapped
    assert world.satisfies(left, right, "a red circle") and world.satisfies(left, right, "a blue square")
    assert not world.satisfies(left, right, "a red square")  # its color, its other shape: not shown
    assert not world.satisfies(left, right, "a green circle")
    texts = world.partial_descriptions()
    assert len(texts) == len(world.all_objects()) == 24 and "an orange star" in texts
    assert sum(world.satisfies(left, right, t) for t in texts) == 2
    scene = world.generate("test", 1, seed=5)[0]
    assert scene.satisfies(world.phrase(scene.right)) and all(scene.satisfies(c) for c in scene.captions)
    with pytest.raises(ValueError):
        world.satisfies(left, right, "a red bicycle")


def test_absent_objects_are_not_shown_and_mostly_near_misses() -> None:
    from blipsearch.shapes.data import absent_object

    rng = np.random.default_rng(0)
    left, right = ("red", "circle"), ("blue", "square")
    drawn = [absent_object(left, right, rng) for _ in range(400)]
    assert not {left, right} & set(drawn)
    near = sum(o[0] in ("red", "blue") or o[1] in ("circle", "square") for o in drawn)
    assert near / len(drawn) > 0.75  # hard negatives, plus the uniform draws that happen to be near
    assert len(set(drawn)) > 12  # and far ones too


def test_write_folder(tmp_path: Path) -> None:
    scenes = world.generate("test", 3, seed=0)
    path = world.write_folder(tmp_path, scenes)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["captions"][0] for r in rows] == [s.caption for s in scenes]
    for r in rows:
        assert (tmp_path / r["image"]).is_file()


def test_cli(tmp_path: Path) -> None:
    world.main([str(tmp_path), "--count", "2", "--split", "test", "--seed", "1"])
    assert len(list((tmp_path / "images").glob("*.png"))) == 2
    assert len((tmp_path / "captions.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------------------- training helpers


def test_parallel_rendering_equals_serial() -> None:
    from blipsearch.shapes import data

    serial = world.generate("train", 6, seed=5)
    parallel = data.render_scenes("train", 6, seed=5, workers=2)
    assert [s.key for s in parallel] == [s.key for s in serial]
    for a, b in zip(parallel, serial):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_cached_tokenization_equals_tokenizer(tmp_path: Path) -> None:
    from blipsearch.shapes import checkpoint, objectives

    tok = checkpoint.build_tokenizer(tmp_path)
    texts = ["a red circle left of a blue square", "an orange star to the right of a green triangle", "what shape is on the left?"]
    for first in (None, tok.bos_token_id):
        ids, mask = objectives.tokenize(tok, texts + texts[:1], torch.device("cpu"), first=first)
        ref_ids, ref_mask = evaluate.tokenize(tok, texts + texts[:1])
        if first is not None:
            ref_ids[:, 0] = first
        assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    assert ids.shape[0] == 4 and mask[0].sum() < mask[1].sum()  # padded to the longest
    # Another tokenizer (same words, other ids) gets its own ids, not the cached ones.
    words = (tmp_path / "vocab.txt").read_text().split()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "vocab.txt").write_text("\n".join(words[:7] + words[7:][::-1]) + "\n")
    other = type(tok)(str(tmp_path / "other" / "vocab.txt"), do_lower_case=True)
    other_ids, _ = objectives.tokenize(other, texts, torch.device("cpu"))
    assert torch.equal(other_ids, evaluate.tokenize(other, texts)[0])
    assert not torch.equal(other_ids, objectives.tokenize(tok, texts, torch.device("cpu"))[0])


def test_hyperparameter_overrides() -> None:
    from blipsearch.shapes import recipe

    hp = recipe.Hyper()
    recipe.override(hp, "retrieval_steps=12")
    recipe.override(hp, "sizes.patch_size=4")
    recipe.override(hp, "alt_caption_prob=0.1")
    recipe.override(hp, "itc_changed_negatives=false")
    assert (hp.retrieval_steps, hp.sizes.patch_size, hp.alt_caption_prob, hp.itc_changed_negatives) == (12, 4, 0.1, False)
    assert isinstance(hp.retrieval_steps, int)
    for bad in ("retrieval_steps", "no_such_field=1", "retrieval_steps=many", "itc_changed_negatives=maybe"):
        with pytest.raises((AttributeError, ValueError)):
            recipe.override(hp, bad)


def test_world_module_does_not_load_the_library() -> None:
    import subprocess
    import sys

    code = "import sys, blipsearch.shapes.train; print(any(m in sys.modules for m in ('sqlalchemy', 'faiss', 'blipsearch.library')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- checkpoints


def _have(name: str) -> bool:
    return (BUILTIN / name / "model.safetensors").is_file()


needs_checkpoints = pytest.mark.skipif(
    not all(_have(n) for n in ("retrieval", "caption", "vqa")), reason="shapes checkpoints not built"
)


@pytest.fixture(scope="module")
def eval_scenes() -> list[world.Scene]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return world.generate("test", EVAL_SCENES, seed=EVAL_SEED)


def _load(name: str, cls: type) -> tuple:
    from transformers import BertTokenizer, BlipImageProcessorPil

    directory = BUILTIN / name
    model = cls.from_pretrained(directory, use_safetensors=True).eval()
    return model, BertTokenizer.from_pretrained(directory), BlipImageProcessorPil.from_pretrained(directory)


@needs_checkpoints
def test_checkpoint_layout() -> None:
    for name in ("retrieval", "caption", "vqa"):
        d = BUILTIN / name
        for f in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "preprocessor_config.json"):
            assert (d / f).is_file(), f"{name}/{f}"
        cfg = json.loads((d / "config.json").read_text())
        vocab = (d / "vocab.txt").read_text().split("\n")
        assert vocab[0] == "[PAD]" and "[ENC]" in vocab and "[DEC]" in vocab
        text = cfg["text_config"]
        assert text["vocab_size"] == len([v for v in vocab if v])
        assert text["bos_token_id"] == vocab.index("[DEC]")
        assert text["sep_token_id"] == vocab.index("[SEP]")
        assert text["pad_token_id"] == 0
        assert "num_attention_heads" in text
        assert "layer_norm_eps" in cfg["vision_config"]
        assert cfg["image_text_hidden_size"] == 256
        pre = json.loads((d / "preprocessor_config.json").read_text())
        assert pre["image_processor_type"] == "BlipImageProcessor"
        assert pre["resample"] == 3
        assert pre["size"] == {"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE}
        assert (d / "model.safetensors").stat().st_size < 20 * 2**20


@pytest.fixture(scope="module")
def retrieval_results(eval_scenes: list[world.Scene]) -> dict:
    from transformers import BlipForImageTextRetrieval

    model, tok, proc = _load("retrieval", BlipForImageTextRetrieval)
    return evaluate.retrieval_metrics(model, tok, proc, eval_scenes, k=16)


@needs_checkpoints
def test_retrieval_quality_floor(retrieval_results: dict) -> None:
    # Floors under the current checkpoints' figures (chance R@1 is 1/200).
    m = retrieval_results
    assert m["t2i"]["itc"]["r1"] >= RETRIEVAL_R1_FLOOR, m
    assert m["t2i"]["itc"]["r5"] >= RETRIEVAL_R5_FLOOR, m
    assert m["i2t"]["itc"]["r5"] >= RETRIEVAL_R5_FLOOR, m
    assert m["t2i"]["itm"]["r5"] >= RETRIEVAL_R5_FLOOR, m
    # Reranking with the ITM head must not lose to ITC alone (+5 and +5.5 points measured).
    assert m["t2i"]["itm"]["r1"] >= m["t2i"]["itc"]["r1"], m
    assert m["i2t"]["itm"]["r1"] >= m["i2t"]["itc"]["r1"], m


@needs_checkpoints
def test_partial_descriptions_match_the_scenes_that_show_them() -> None:
    # Each of the 24 one-object texts ("a red circle") against 48 held-out scenes by ITM (p >= 0.5):
    # every scene that shows the object on either side should match, and few others.
    from transformers import BlipForImageTextRetrieval

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, tok, proc = _load("retrieval", BlipForImageTextRetrieval)
    m = evaluate.partial_metrics(model, tok, proc, world.generate("test", 48, seed=EVAL_SEED))
    assert m["precision"] >= PARTIAL_PRECISION_FLOOR, m
    assert m["recall"] >= PARTIAL_RECALL_FLOOR, m


@needs_checkpoints
def test_itc_embeddings_are_256d_and_normalized(eval_scenes: list[world.Scene]) -> None:
    from transformers import BlipForImageTextRetrieval

    model, tok, proc = _load("retrieval", BlipForImageTextRetrieval)
    _, img = evaluate.encode_images(model, evaluate.pixel_values(proc, [s.image for s in eval_scenes[:4]]))
    txt = evaluate.encode_texts(model, tok, [s.caption for s in eval_scenes[:4]])
    assert img.shape == txt.shape == (4, 256)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)


@needs_checkpoints
def test_caption_quality(eval_scenes: list[world.Scene]) -> None:
    from transformers import BlipForConditionalGeneration

    model, tok, proc = _load("caption", BlipForConditionalGeneration)
    m = evaluate.caption_metrics(model, tok, proc, eval_scenes, num_beams=1)
    assert m["exact_match"] >= CAPTION_FLOOR, m


@needs_checkpoints
def test_vqa_quality(eval_scenes: list[world.Scene]) -> None:
    from transformers import BlipForQuestionAnswering

    model, tok, proc = _load("vqa", BlipForQuestionAnswering)
    m = evaluate.vqa_metrics(model, tok, proc, eval_scenes[:100], num_beams=1)
    assert m["accuracy"] >= VQA_FLOOR, m
    for kind, floor in VQA_TYPE_FLOORS.items():
        assert m["per_type"][kind] >= floor, (kind, m)


# Measured on this split with the shipped checkpoints (greedy decoding):
# t2i R@1 ITC 0.865, reranked 0.89 (before partial descriptions: 0.845, 0.895); i2t R@1 0.815 / 0.87;
# caption exact match 0.84; VQA 0.88 (color 1.0, shape 0.845, yes/no 0.795).
# Chance: R@1 0.005, caption about 1/552, color 1/6, shape 1/4, yes/no 1/2.
# RETRIEVAL_R1_FLOOR is the project's target for text -> image ITC R@1.
# Partial descriptions, the 24 one-object texts against the first 48 scenes of seed 7: precision
# 0.593, recall 0.833 (before training with them: 0.667 and 0.021).
PARTIAL_PRECISION_FLOOR = 0.5
PARTIAL_RECALL_FLOOR = 0.75
RETRIEVAL_R1_FLOOR = 0.6
RETRIEVAL_R5_FLOOR = 0.95
CAPTION_FLOOR = 0.75
VQA_FLOOR = 0.8
VQA_TYPE_FLOORS = {"color": 0.95, "shape": 0.75, "yesno": 0.7}


def test_training_command_end_to_end(tmp_path: Path) -> None:
    # The documented command at a tiny scale: three loadable checkpoints and a
    # report; then --refine-only changes the retrieval weights and records itself.
    import subprocess
    import sys

    from safetensors.torch import load_file

    out = tmp_path / "shapes"
    # (fewer training images than a batch: every batch is all of them)
    small = ["--scale", "0.002", "--set", "train_images=100", "--set", "test_images=12", "--threads", "2"]
    cmd = [sys.executable, "-m", "blipsearch.shapes.train", "--out", str(out), "--seed", "0", *small]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    report = json.loads((out / "TRAINING.json").read_text())
    assert report["hyperparameters"]["train_images"] == 100
    assert report["metrics"]["retrieval"]["gallery_size"] == 12
    assert "itm_refine" in report["wall_time_s"]
    for name in ("retrieval", "caption", "vqa"):
        assert (out / name / "model.safetensors").is_file()
    before = load_file(out / "retrieval" / "model.safetensors")

    subprocess.run([*cmd, "--refine-only"], check=True, capture_output=True, text=True)
    report = json.loads((out / "TRAINING.json").read_text())
    assert "--refine-only" in report["itm_refinement"]["command"]
    after = load_file(out / "retrieval" / "model.safetensors")
    vision = [k for k in before if k.startswith("vision_model.")]
    text = [k for k in before if k.startswith("text_encoder.")]
    assert all(torch.equal(before[k], after[k]) for k in vision)  # frozen
    assert any(not torch.equal(before[k], after[k]) for k in text)
    assert "ITM refinement (the last stage)" in (out / "README.md").read_text()


def test_batches_smaller_sets_than_a_batch() -> None:
    from blipsearch.shapes.data import batches

    drawn = list(itertools.islice(batches(10, 256, torch.Generator().manual_seed(0)), 3))
    assert [sorted(b.tolist()) for b in drawn] == [list(range(10))] * 3
    assert [len(b) for b in itertools.islice(batches(1000, 256, torch.Generator()), 5)] == [256] * 5


def test_error_kinds_separate_binding_from_perception() -> None:
    def scene(left: world.Obj, right: world.Obj) -> world.Scene:
        return world.Scene(image=None, left=left, right=right, caption="", alt_captions=[])  # type: ignore[arg-type]

    q = scene(("red", "circle"), ("blue", "square"))
    assert evaluate.error_kind(q, scene(("blue", "square"), ("red", "circle"))) == "binding"  # sides swapped
    assert evaluate.error_kind(q, scene(("blue", "circle"), ("red", "square"))) == "binding"  # colors swapped
    assert evaluate.error_kind(q, scene(("red", "square"), ("blue", "circle"))) == "binding"  # shapes swapped
    assert evaluate.error_kind(q, scene(("red", "star"), ("blue", "square"))) == "shape"
    assert evaluate.error_kind(q, scene(("red", "circle"), ("green", "square"))) == "color"
    assert evaluate.error_kind(q, scene(("green", "star"), ("blue", "square"))) == "color+shape"
    assert evaluate.error_kind(q, scene(("blue", "circle"), ("blue", "square"))) == "color"
