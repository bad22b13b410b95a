"""The int8 CPU route vs the fp32 vision encoder: speed and fidelity.

    python benchmarks/quantize.py [--images 16] [--batch-size 8]

Base-size BLIP with random, widened weights (the real cost; distinct vectors).
Fidelity: cosine between each image's int8 and fp32 vectors, and whether the
ranking of every image against every other (image-to-image) is kept.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, photo_like_jpegs, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from blipsearch.models.retrieval import load_retrieval_model

    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    photos = photo_like_jpegs(args.workdir / "photos", args.images)
    fp32 = load_retrieval_model(str(checkpoint), "cpu")
    int8 = load_retrieval_model(str(checkpoint), "cpu", quantize="int8")
    pixels = np.stack([fp32.image_spec.to_pixels(Image.open(p).convert("RGB")) for p in photos])

    def run(model):  # type: ignore[no-untyped-def]
        model.embed_images(pixels[: args.batch_size])  # warm-up
        start = time.perf_counter()
        out = np.concatenate([model.embed_images(pixels[i : i + args.batch_size])
                              for i in range(0, len(pixels), args.batch_size)])
        return out, time.perf_counter() - start

    a, t_fp32 = run(fp32)
    b, t_int8 = run(int8)
    cos = np.sum(a * b, axis=1)
    same_top1 = float(np.mean(np.argsort(-(a @ a.T), axis=1)[:, 1] == np.argsort(-(b @ b.T), axis=1)[:, 1]))
    result = {
        "images": args.images,
        "batch_size": args.batch_size,
        "fp32_img_per_s": args.images / t_fp32,
        "int8_img_per_s": args.images / t_int8,
        "speedup": t_fp32 / t_int8,
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "image_to_image_top1_agreement": same_top1,
    }
    path = save("quantize_cpu", result)
    print("| route | images/s |\n|---|---|")
    print(f"| fp32 | {result['fp32_img_per_s']:.3f} |\n| int8 (dynamic, linear layers) | {result['int8_img_per_s']:.3f} |")
    print(f"speed-up {result['speedup']:.2f}x, cosine min {result['cosine_min']:.4f}; written to {path}")


if __name__ == "__main__":
    main()
