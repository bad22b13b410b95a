"""Shared pieces of the benchmark scripts: base-size random models, timing, reports.

Random weights on the real architecture have the real cost, so timings need
no downloaded checkpoint. Results go to ``benchmarks/results/NAME.json`` and
a markdown table to stdout.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def base_config(vocab_size: int = 30524):  # type: ignore[no-untyped-def]
    """The BLIP base architecture (ViT-B/16 at 384 px, BERT-base text), as in blip-itm-base-coco."""
    from transformers import BlipConfig

    return BlipConfig(
        text_config={"vocab_size": vocab_size, "num_attention_heads": 12, "bos_token_id": 30522},
        vision_config={"image_size": 384, "patch_size": 16, "layer_norm_eps": 1e-6},
        image_text_hidden_size=256,
    )


def timed(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeat}


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def make_base_checkpoint(path: Path, seed: int = 0) -> Path:
    """A base-size BLIP retrieval checkpoint with random, widened weights, in the hub layout.

    Widened like the tests' tiny models, so that different images get clearly
    different vectors and fidelity measurements (cosines) mean something.
    """
    import sys

    from transformers import BertTokenizer, BlipForImageTextRetrieval

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from tiny_blip import widen, write_image_processor

    if (path / "model.safetensors").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30517)] + ["[DEC]", "[ENC]"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(path / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(base_config(len(vocab))).eval()
    widen(model, seed)
    model.save_pretrained(path)
    write_image_processor(path, 384)
    return path


def photo_like_jpegs(folder: Path, count: int, size: tuple[int, int] = (4000, 3000), seed: int = 0) -> list[Path]:
    """Camera-sized JPEGs with smooth light, shapes and sensor-like noise (about 2-4 MB each)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"IMG_{i:04d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([seed, i])  # each picture its own, however many exist already
        low = rng.random((6, 8, 3)) * 255
        image = Image.fromarray(low.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            r = int(rng.integers(100, 900))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=color)
        image = image.filter(ImageFilter.GaussianBlur(3))
        noise = rng.normal(0, 6, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return paths


def synthetic_library(workdir: Path, images: int, checkpoint: Path, name: str = "serve-library") -> Path:
    """A library of ``images`` rows with clustered synthetic vectors from ``checkpoint``'s fingerprint
    (read from its files; the model is not loaded), one per image, or one per query for BLIP-2,
    its files hard links to 16 camera-sized JPEGs (so that reranking decodes real photos)."""
    import shutil

    from vector_data import clustered

    from blipsearch import Library
    from blipsearch.models.loading import ModelIdentity, model_family
    from blipsearch.store.database import utcnow, vector_to_bytes
    from blipsearch.store.schema import ImageRow

    photos = photo_like_jpegs(workdir / "photos", 16)
    library = workdir / name
    shutil.rmtree(library, ignore_errors=True)
    links = library / "files"
    links.mkdir(parents=True)
    model = ModelIdentity.of(str(checkpoint))
    vectors = clustered(images * model.queries, model.dim).reshape(images, model.queries, model.dim)
    with Library(library, model=str(checkpoint), device="cpu") as lib:
        lib.db.set_model(str(checkpoint), model.fingerprint, model.dim, model_family(str(checkpoint)), model.queries)
        now = utcnow()
        for start in range(0, images, 10_000):
            with lib.db.transaction() as session:
                for i in range(start, min(images, start + 10_000)):
                    path = links / f"{i:06d}.jpg"
                    os.link(photos[i % len(photos)], path)
                    st = path.stat()
                    session.add(ImageRow(path=os.fsencode(path), size=st.st_size, mtime_ns=st.st_mtime_ns,
                                         content_hash=f"{i:064x}", model=model.fingerprint,
                                         vector=vector_to_bytes(vectors[i]), indexed_at=now))
        lib.rebuild_vectors()
    return library
