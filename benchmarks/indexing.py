"""Indexing throughput: `blipsearch index` vs the model cards' plain loop vs the model alone.

    python benchmarks/indexing.py [--images 16] [--batch-size 2] [--device cpu] [--rounds 3]

All three on the same base-size BLIP (random weights: the real cost), fp32 on
CPU, in one run, on 12 MP camera-like JPEGs:

- plain loop: open the full image, the BLIP image processor, vision encoder +
  projection of a plain ``from_pretrained`` model, one image at a time (the
  model cards' recipe);
- blipsearch index: a fresh library, end to end (walk, hash, decode in
  threads with JPEG draft decoding, batches, database, vector index);
- model only: the same model and batch size on tensors decoded beforehand.

Also reports how far draft decoding moves the vectors (cosine to full decoding).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, photo_like_jpegs, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=2, help="blipsearch's CPU default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; figures are medians")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from PIL import Image
    from transformers import BlipForImageTextRetrieval
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from blipsearch import Library
    from blipsearch.models.retrieval import load_retrieval_model
    from blipsearch.store.schema import ImageRow

    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    photos = photo_like_jpegs(args.workdir / "photos", args.images)
    model = load_retrieval_model(str(checkpoint), args.device)
    # The plain loop runs the model exactly as the model cards load it
    # (transformers' own attention), not blipsearch's loaded copy.
    net = BlipForImageTextRetrieval.from_pretrained(checkpoint).to(model.device, model.dtype).eval()
    processor = BlipImageProcessorPil.from_pretrained(checkpoint)

    def plain_loop() -> tuple[float, list[torch.Tensor]]:
        vectors = []
        start = time.perf_counter()
        for path in photos:
            image = Image.open(path).convert("RGB")
            pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
            with torch.inference_mode():
                tokens = net.vision_model(pixel_values=pixels).last_hidden_state
                vectors.append(torch.nn.functional.normalize(net.vision_proj(tokens[:, 0]).float(), dim=-1)[0])
        return time.perf_counter() - start, vectors

    def index_run() -> tuple[float, dict[str, np.ndarray]]:
        library = args.workdir / "library"
        shutil.rmtree(library, ignore_errors=True)
        with Library(library, model=str(checkpoint), device=args.device) as lib:
            lib._model = model  # the same loaded weights; loading time is not throughput
            start = time.perf_counter()
            report = lib.index(list(photos), batch_size=args.batch_size)
            seconds = time.perf_counter() - start
            with lib.db.reader() as session:
                stored = {Path(r.path.decode()).name: np.frombuffer(r.vector, np.float32)
                          for r in session.query(ImageRow).all()}
        assert report.embedded == args.images, report
        return seconds, stored

    # The model alone, on tensors decoded beforehand, same batch size.
    decoded = np.stack([model.image_spec.to_pixels(Image.open(p).convert("RGB")) for p in photos])

    def model_only() -> float:
        start = time.perf_counter()
        for i in range(0, len(decoded), args.batch_size):
            model.embed_images(decoded[i : i + args.batch_size])
        return time.perf_counter() - start

    # The three routes take turns, round after round, so that a slow spell of a
    # shared machine falls on all of them; ratios are taken within a round.
    rounds = []
    for r in range(args.rounds):
        plain_s, plain_vectors = plain_loop()
        index_s, stored = index_run()
        model_s = model_only()
        rounds.append({"plain_s": plain_s, "index_s": index_s, "model_s": model_s,
                       "index_vs_plain": plain_s / index_s, "index_vs_model_only": model_s / index_s})
        print(f"round {r + 1}: plain {plain_s:.1f} s, index {index_s:.1f} s, model only {model_s:.1f} s; "
              f"index/plain {plain_s / index_s:.2f}x, index/model-only {model_s / index_s:.2f}", flush=True)

    def median(key: str) -> float:
        return float(np.median([r[key] for r in rounds]))

    cosines = [float(stored[p.name] @ v.cpu().numpy()) for p, v in zip(photos, plain_vectors)]
    result = {
        "images": args.images,
        "image_size": list(Image.open(photos[0]).size),
        "mean_file_mb": float(np.mean([p.stat().st_size for p in photos]) / 1e6),
        "batch_size": args.batch_size,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "rounds": rounds,
        "plain_loop_img_per_s": args.images / median("plain_s"),
        "blipsearch_index_img_per_s": args.images / median("index_s"),
        "model_only_img_per_s": args.images / median("model_s"),
        "index_vs_plain": median("index_vs_plain"),
        "index_vs_model_only": median("index_vs_model_only"),
        "draft_vs_full_decode_cosine_min": min(cosines),
        "draft_vs_full_decode_cosine_mean": float(np.mean(cosines)),
    }
    path = save(f"indexing_{model.device.type}", result)
    print("| route | images/s |\n|---|---|")
    print(f"| plain loop (full decode, one at a time) | {result['plain_loop_img_per_s']:.3f} |")
    print(f"| blipsearch index (end to end) | {result['blipsearch_index_img_per_s']:.3f} |")
    print(f"| model only (pre-decoded, batch {args.batch_size}) | {result['model_only_img_per_s']:.3f} |")
    print(f"medians of {args.rounds} rounds: index / plain = {result['index_vs_plain']:.2f}x; index / model-only = {result['index_vs_model_only']:.2f}; "
          f"cosine draft vs full: min {result['draft_vs_full_decode_cosine_min']:.4f}; written to {path}")


if __name__ == "__main__":
    main()
