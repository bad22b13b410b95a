"""Train the three tiny shapes-world BLIP checkpoints shipped in ``blipsearch/builtin/shapes``.

Usage::

    python -m blipsearch.shapes.train --out blipsearch/builtin/shapes --seed 0

Writes, each in the Hugging Face hub layout and loadable with ``from_pretrained``
like Salesforce's BLIP checkpoints:

- ``retrieval/`` ``BlipForImageTextRetrieval``, trained with ITC (symmetric
  InfoNCE, learnable temperature, scene-identity soft targets) plus ITM with
  hard negatives: ITC-similarity-mined in-batch images and texts, and captions
  whose colors, shapes or sides are swapped;
- ``caption/`` ``BlipForConditionalGeneration``, language modelling of
  ``"a picture of " + caption``;
- ``vqa/`` ``BlipForQuestionAnswering``, answer generation from ``[ENC]`` + question;

plus ``TRAINING.json`` (command, seed, wall time, data sizes, hyperparameters,
held-out test metrics). As in BLIP, the captioning and VQA models start from
the retrieval model's weights (vision encoder; text encoder for their text
modules). Last, the retrieval model's text encoder and ITM head get more ITC +
ITM steps with the vision encoder frozen (ITM refinement; ``--refine-only``
runs just this stage on a saved checkpoint).

Runs on CUDA when available, else CPU. Training times and the figures of the
shipped checkpoints are in ``blipsearch/builtin/shapes/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertTokenizer,
    BlipForImageTextRetrieval,
)

from blipsearch.shapes import evaluate, world
from blipsearch.shapes.checkpoint import (
    build_tokenizer,
    image_processor,
    save_checkpoint,
)
from blipsearch.shapes.data import Pool, render_scenes
from blipsearch.shapes.objectives import (
    image_tokens,
    log,
    refine_itm,
    train_caption,
    train_retrieval,
    train_vqa,
)
from blipsearch.shapes.recipe import Hyper, override
from blipsearch.shapes.report import write_readme

# ----------------------------------------------------------------------------- main


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def size_mb(directory: Path) -> float:
    return round((directory / "model.safetensors").stat().st_size / 2**20, 2)


def _prepare(hp: Hyper, seed: int) -> tuple[torch.device, Pool, list[world.Scene]]:
    """Device and torch settings for training, the rendered training pool and the test scenes."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # TF32 matrix products on GPUs that have them; CPU arithmetic is unaffected.
    torch.backends.cuda.matmul.allow_tf32 = True
    # Subnormal floats make CPU matmuls many times slower once weights and
    # activations get tiny; flushing them to zero keeps step times steady.
    torch.set_flush_denormal(True)
    log(f"rendering {hp.train_images} training scenes")
    return device, Pool(render_scenes("train", hp.train_images, seed)), render_scenes("test", hp.test_images, seed)


def run(out: Path, seed: int, hp: Hyper, command: str) -> dict[str, Any]:
    t0 = time.time()
    device, pool, test = _prepare(hp, seed)
    tokenizer = build_tokenizer(out / "retrieval")
    processor = image_processor()

    timings: dict[str, float] = {"render": round(time.time() - t0, 1)}
    t = time.time()
    retrieval = train_retrieval(pool, tokenizer, hp, seed, device)
    timings["retrieval"] = round(time.time() - t, 1)
    save_checkpoint(retrieval, tokenizer, out / "retrieval")

    t = time.time()
    tokens = image_tokens(retrieval, pool, device)
    caption = train_caption(pool, tokens, retrieval, tokenizer, hp, seed, device)
    timings["caption"] = round(time.time() - t, 1)
    save_checkpoint(caption, tokenizer, out / "caption")

    t = time.time()
    vqa = train_vqa(pool, tokens, retrieval, tokenizer, hp, seed, device)
    timings["vqa"] = round(time.time() - t, 1)
    save_checkpoint(vqa, tokenizer, out / "vqa")

    if hp.itm_refine_steps > 0:
        t = time.time()
        refine_itm(retrieval, pool, tokens, tokenizer, hp, seed, device)
        timings["itm_refine"] = round(time.time() - t, 1)
        save_checkpoint(retrieval, tokenizer, out / "retrieval")
    train_wall = time.time() - t0

    t = time.time()
    metrics = {
        "retrieval": evaluate.retrieval_metrics(retrieval, tokenizer, processor, test, k=hp.rerank_k),
        "partial": evaluate.partial_metrics(retrieval, tokenizer, processor, test),
        "caption": evaluate.caption_metrics(caption, tokenizer, processor, test, num_beams=hp.eval_beams),
        "caption_greedy": evaluate.caption_metrics(caption, tokenizer, processor, test, num_beams=1),
        "vqa": evaluate.vqa_metrics(vqa, tokenizer, processor, test, num_beams=hp.eval_beams),
        "vqa_cls_first_token": evaluate.vqa_metrics(vqa, tokenizer, processor, test, num_beams=hp.eval_beams, first_token=None),
    }
    timings["evaluation"] = round(time.time() - t, 1)
    report = {
        "command": command,
        "seed": seed,
        "device": describe_device(device),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "python": platform.python_version()},
        "wall_time_s": {"training_total": round(train_wall, 1), **timings},
        "data": {
            "image_size": world.IMAGE_SIZE,
            "train_images": hp.train_images,
            "train_combinations": len(world.train_pairs()),
            "all_combinations": len(world.all_pairs()),
            "held_out_triples": sorted(list(t) for t in world.HELD_OUT),
            "test_split_seed": seed,
            "test_images": hp.test_images,
            "test_images_with_held_out_triples": sum(s.held_out for s in test),
            "retrieval_gallery": "test scenes with pairwise distinct canonical captions; exactly one correct item per query",
        },
        "hyperparameters": asdict(hp),
        "parameters": {
            "retrieval": sum(p.numel() for p in retrieval.parameters()),
            "caption": sum(p.numel() for p in caption.parameters()),
            "vqa": sum(p.numel() for p in vqa.parameters()),
        },
        "checkpoint_mb": {name: size_mb(out / name) for name in ("retrieval", "caption", "vqa")},
        "metrics": metrics,
    }
    (out / "TRAINING.json").write_text(json.dumps(report, indent=2) + "\n")
    write_readme(out, report)
    return report


def run_refinement(out: Path, seed: int, hp: Hyper, command: str) -> dict[str, Any]:
    """Only the ITM refinement, on the retrieval checkpoint already in ``out``; updates it and TRAINING.json.

    For checkpoints whose earlier stages were trained before the refinement
    stage existed (or elsewhere): the result equals what a full run does last.
    """
    t0 = time.time()
    report_path = out / "TRAINING.json"
    report = json.loads(report_path.read_text())
    device, pool, test = _prepare(hp, seed)
    tokenizer = BertTokenizer.from_pretrained(out / "retrieval")
    model = BlipForImageTextRetrieval.from_pretrained(out / "retrieval", use_safetensors=True).to(device).eval()
    processor = image_processor()
    tokens = image_tokens(model, pool, device)
    before = evaluate.retrieval_metrics(model, tokenizer, processor, test, k=hp.rerank_k)
    partial_before = evaluate.partial_metrics(model, tokenizer, processor, test)
    t = time.time()
    refine_itm(model, pool, tokens, tokenizer, hp, seed, device)
    refine_s = round(time.time() - t, 1)
    save_checkpoint(model, tokenizer, out / "retrieval")
    report["metrics"]["retrieval"] = evaluate.retrieval_metrics(model, tokenizer, processor, test, k=hp.rerank_k)
    report["metrics"]["partial"] = evaluate.partial_metrics(model, tokenizer, processor, test)
    if "itm_refinement" in report:  # a checkpoint refined before: that run stays on record
        report.setdefault("earlier_itm_refinements", []).append(report.pop("itm_refinement"))
    report["itm_refinement"] = {
        "command": command,
        "device": describe_device(device),
        "wall_time_s": {"total": round(time.time() - t0, 1), "itm_refine": refine_s},
        "settings": {k: v for k, v in asdict(hp).items() if k.startswith("itm_refine")},
        "retrieval_before": before,
        "partial_before": partial_before,
    }
    report["checkpoint_mb"]["retrieval"] = size_mb(out / "retrieval")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    write_readme(out, report)
    return report


def reevaluate_retrieval(out: Path, seed: int, hp: Hyper) -> dict[str, Any]:
    """Retrieval figures of the checkpoint already in ``out``, recomputed; updates TRAINING.json and README.md.

    No training: for figures added to the evaluation after a checkpoint was made.
    """
    report_path = out / "TRAINING.json"
    report = json.loads(report_path.read_text())
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cpu")
    model = BlipForImageTextRetrieval.from_pretrained(out / "retrieval", use_safetensors=True).eval()
    tokenizer = BertTokenizer.from_pretrained(out / "retrieval")
    test = render_scenes("test", hp.test_images, seed)
    metrics = evaluate.retrieval_metrics(model, tokenizer, image_processor(), test, k=hp.rerank_k)
    report["metrics"]["retrieval"] = metrics
    report["metrics"]["partial"] = evaluate.partial_metrics(model, tokenizer, image_processor(), test)
    report["retrieval_evaluated_on"] = describe_device(device)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    write_readme(out, report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blipsearch.shapes.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("blipsearch/builtin/shapes"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply all step counts (quick trials: 0.1)")
    parser.add_argument(
        "--refine-only",
        action="store_true",
        help="run only the last stage (ITM refinement) on the retrieval checkpoint already in --out",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: recompute the retrieval figures of the checkpoint in --out (on the CPU)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one hyperparameter, e.g. --set retrieval_steps=2000 --set sizes.patch_size=4 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = Hyper()
    for item in args.overrides:
        try:
            override(hp, item)
        except (AttributeError, ValueError) as exc:
            parser.error(f"--set {item}: {exc}")
    if args.scale != 1.0:
        hp.retrieval_steps = max(1, int(hp.retrieval_steps * args.scale))
        hp.caption_steps = max(1, int(hp.caption_steps * args.scale))
        hp.vqa_steps = max(1, int(hp.vqa_steps * args.scale))
        hp.itm_refine_steps = max(1, int(hp.itm_refine_steps * args.scale))
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m blipsearch.shapes.train", *map(shlex.quote, argv_list)])
    if args.evaluate_only:
        report = reevaluate_retrieval(args.out, args.seed, hp)
        print(json.dumps(report["metrics"]["retrieval"], indent=2))
        return
    if args.refine_only:
        report = run_refinement(args.out, args.seed, hp, command)
        print(json.dumps(report["metrics"]["retrieval"], indent=2))
        return
    report = run(args.out, args.seed, hp, command)
    print(json.dumps(report["metrics"], indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
