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
