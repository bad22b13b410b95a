"""The Ray engine against the local one on this machine: whole `blipsearch index` runs, same photos,
same base-size BLIP (random weights: the real cost), fp32 on the CPU.

    python benchmarks/ray_overhead.py [--images 32] [--rounds 2]

- local: ``blipsearch index`` (its decode threads, batches of 2, both cores for the model);
- ray: ``blipsearch index --engine ray`` on a local Ray cluster started by the command itself
  (2 actors of one core each, batches of 2): Ray's start, the actors' model loads, the data
  pipeline and the results' way back to the driver included.

Each run starts a new process and a fresh library; wall time of the whole command, median of the
rounds (interleaved). Both embed the same 12 MP camera-like JPEGs and store the same vectors (checked).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, photo_like_jpegs, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()
    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    photos = photo_like_jpegs(args.workdir / "photos", args.images)
    folder = args.workdir / f"ray-photos-{args.images}"
    folder.mkdir(exist_ok=True)
    for photo in photos:
        if not (folder / photo.name).exists():
            (folder / photo.name).symlink_to(photo)
    blipsearch = str(Path(sys.executable).with_name("blipsearch"))
    times: dict[str, list[float]] = {"local": [], "ray": []}
    vectors: dict[str, dict[bytes, np.ndarray]] = {}
    for _ in range(args.rounds):
        for engine in times:
            library = args.workdir / f"library-{engine}"
            shutil.rmtree(library, ignore_errors=True)
            command = [blipsearch, "index", str(folder), "--library", str(library), "--model", str(checkpoint),
                       "--device", "cpu", "--batch-size", "2", "--no-thumbnails", "--json", "--engine", engine]
            began = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[engine].append(time.perf_counter() - began)
            with sqlite3.connect(library / "library.db") as conn:
                vectors[engine] = {bytes(p): np.frombuffer(v, np.float32)
                                   for p, v in conn.execute("SELECT path, vector FROM images")}
            print(f"{engine}: {times[engine][-1]:.1f} s", flush=True)
    assert vectors["local"].keys() == vectors["ray"].keys() and len(vectors["local"]) == args.images
    difference = max(float(np.abs(vectors["local"][k] - vectors["ray"][k]).max()) for k in vectors["local"])
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    result = {"images": args.images, "rounds": args.rounds, "local_s": round(local, 1), "ray_s": round(ray, 1),
              "local_s_per_image": round(local / args.images, 3), "ray_s_per_image": round(ray / args.images, 3),
              "ray_over_local": round(ray / local, 2), "max_vector_difference": difference,
              "runs_s": {k: [round(t, 1) for t in v] for k, v in times.items()}}
    print(save("ray_overhead", result))
    print(result)


if __name__ == "__main__":
    main()
