"""How fast the indexer's decode stage runs with 1, 2, 4 ... threads: the feed rate a GPU can get.

    python benchmarks/decode_scaling.py [--images 24] [--rounds 3]

Each image goes through exactly what an indexing worker thread does to a new
file: hash, JPEG draft decoding, EXIF, resize and normalization to the
model's input (BLIP-base: 384 px). Thread counts double up to the cores this
process may use. No model runs, so the figure is the ceiling on images per
second that indexing can reach on this machine however fast the model is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, photo_like_jpegs, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; figures are medians")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from blipsearch.images.decode import decode
    from blipsearch.models.loading import ModelIdentity
    from blipsearch.system import available_cores

    spec = ModelIdentity.of(str(make_base_checkpoint(args.workdir / "blip-base-random")), "none").image_spec
    files = [p.read_bytes() for p in photo_like_jpegs(args.workdir / "photos", args.images)]
    cores = available_cores()
    counts = sorted({min(2**i, cores) for i in range(cores.bit_length() + 1)})

    rates: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            with ThreadPoolExecutor(n) as pool:
                start = time.perf_counter()
                for _ in pool.map(lambda data: decode(data, spec), files):
                    pass
                rates[n].append(len(files) / (time.perf_counter() - start))
    medians = {n: statistics.median(r) for n, r in rates.items()}
    rows = {str(n): {"img_per_s_median": medians[n], "img_per_s_rounds": rates[n],
                     "scaling_vs_1_thread": medians[n] / medians[1]} for n in counts}
    megapixels = 4000 * 3000 / 1e6
    result = {"images": len(files), "megapixels": megapixels, "input_size": [spec.height, spec.width], "rounds": args.rounds,
              "cores": cores, "threads": rows}
    path = save("decode_scaling", result)
    print("| decode threads | images/s | vs 1 thread |\n|---|---|---|")
    for n in counts:
        print(f"| {n} | {medians[n]:.1f} | {medians[n] / medians[1]:.2f}x |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
