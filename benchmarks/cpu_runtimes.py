"""Other CPU runtimes for the vision encoder, beside blipsearch's fp32 and int8 routes.

    pip install onnxruntime onnx        # only this benchmark needs them
    python benchmarks/cpu_runtimes.py [--images 16] [--rounds 3]

Routes, each timed on the same preprocessed photo-like images, interleaved
round by round (this machine's speed drifts; compare medians):

- ``torch fp32``: blipsearch's default CPU route (fused vision attention);
- ``torch int8``: blipsearch's ``--quantize int8`` (dynamic int8 linear layers);
- ``onnxruntime fp32``: the same encoder exported to ONNX (opset 18);
- ``onnxruntime int8 dynamic``: ``quantize_dynamic`` of that export (int8 weights);
- ``onnxruntime int8 static``: ``quantize_static`` (QDQ, per-channel weights,
  uint8 activations calibrated on 8 other photos).

Speed-ups are against torch fp32 in the same round; fidelity is the cosine of
each route's vectors to torch fp32. Base-size BLIP with random, widened weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, photo_like_jpegs, save

CALIBRATION_IMAGES = 8


def export_onnx(net, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pixels -> L2-normalized ITC vectors, dynamic batch."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision, self.proj = net.vision_model, net.vision_proj

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            hidden = self.vision(pixel_values=pixel_values).last_hidden_state
            return torch.nn.functional.normalize(self.proj(hidden[:, 0]), dim=-1)

    size = net.config.vision_config.image_size
    torch.onnx.export(Encoder().eval(), (torch.zeros(2, 3, size, size),), str(path), input_names=["pixel_values"],
                      output_names=["embedding"], dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=18,
                      dynamo=False)


def onnx_routes(net, calibration: np.ndarray, workdir: Path, threads: int) -> dict[str, Callable]:  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, dynamic, prepared, static = (workdir / f"vision.{n}.onnx" for n in ("fp32", "dynamic", "pre", "static"))
    export_onnx(net, fp32)
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"pixel_values": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.rows, None)

    quantize_static(str(prepared), str(static), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def route(path: Path) -> Callable:  # type: ignore[type-arg]
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"pixel_values": x})[0]

    return {"onnxruntime fp32": route(fp32), "onnxruntime int8 dynamic": route(dynamic),
            "onnxruntime int8 static": route(static)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2, help="blipsearch's CPU default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from blipsearch.models.retrieval import load_retrieval_model

    threads = torch.get_num_threads()
    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    photos = photo_like_jpegs(args.workdir / "photos", args.images + CALIBRATION_IMAGES)
    fp32 = load_retrieval_model(str(checkpoint), "cpu")
    pixels = np.stack([fp32.image_spec.to_pixels(Image.open(p).convert("RGB")) for p in photos]).astype(np.float32)
    calibration, pixels = pixels[:CALIBRATION_IMAGES], pixels[CALIBRATION_IMAGES:]
    int8 = load_retrieval_model(str(checkpoint), "cpu", quantize="int8")
    routes: dict[str, Callable] = {"torch fp32": fp32.embed_images, "torch int8": int8.embed_images}  # type: ignore[type-arg]
    start = time.perf_counter()
    routes.update(onnx_routes(fp32.net, calibration, args.workdir, threads))
    prepare_s = time.perf_counter() - start

    vectors: dict[str, np.ndarray] = {}
    rates: dict[str, list[float]] = {name: [] for name in routes}
    for name, fn in routes.items():  # warm-up, and the vectors compared below
        vectors[name] = np.concatenate([fn(pixels[i : i + args.batch_size])
                                        for i in range(0, len(pixels), args.batch_size)])
    for r in range(args.rounds):
        for name, fn in routes.items():
            t = time.perf_counter()
            for i in range(0, len(pixels), args.batch_size):
                fn(pixels[i : i + args.batch_size])
            rates[name].append(len(pixels) / (time.perf_counter() - t))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in rates.items()), file=sys.stderr)

    base = vectors["torch fp32"]
    rows = {}
    for name in routes:
        speedups = [a / b for a, b in zip(rates[name], rates["torch fp32"])]
        cos = np.sum(vectors[name] * base, axis=1)
        rows[name] = {"img_per_s_median": statistics.median(rates[name]), "speedup_median": statistics.median(speedups),
                      "speedup_range": [min(speedups), max(speedups)], "cosine_min": float(cos.min()),
                      "cosine_mean": float(cos.mean())}
    result = {"images": len(pixels), "batch_size": args.batch_size, "rounds": args.rounds, "threads": threads,
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
              "onnx_export_and_quantize_s": round(prepare_s, 1), "routes": rows}
    path = save("cpu_runtimes", result)
    print("| route | images/s | vs torch fp32 (rounds) | cosine min |\n|---|---|---|---|")
    for name, row in rows.items():
        lo, hi = row["speedup_range"]
        print(f"| {name} | {row['img_per_s_median']:.2f} | {row['speedup_median']:.2f}x ({lo:.2f}-{hi:.2f}) "
              f"| {row['cosine_min']:.4f} |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
