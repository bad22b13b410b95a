"""A no-op re-index: how long re-running `blipsearch index` over an unchanged folder takes.

    python benchmarks/noop_reindex.py [--files 10000]

Runs the console script twice over the same folder of small JPEGs with a tiny
model (tests/tiny_blip.py): the first run reads, hashes, decodes and embeds
every file; the second only stats them. With a real model the first run is
hundreds of times longer, so the ratio measured here is the pessimistic one.
Both wall times include starting Python; the first also loads the model,
which the second (nothing to embed) never does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from conftest import draw_image
    from tiny_blip import make_tiny_retrieval

    model = make_tiny_retrieval(args.workdir / "tiny-model")
    folder = args.workdir / f"noop-{args.files}"
    if not folder.exists():
        for i in range(args.files):
            sub = folder / f"{i // 500:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            draw_image(i, 64).save(sub / f"{i:05d}.jpg", quality=85)
    library = args.workdir / "noop-library"
    shutil.rmtree(library, ignore_errors=True)
    env = {**os.environ, "BLIPSEARCH_LIBRARY": str(library), "BLIPSEARCH_MODEL": str(model)}
    script = str(Path(sys.executable).with_name("blipsearch"))

    def run() -> tuple[float, dict]:
        start = time.perf_counter()
        done = subprocess.run([script, "index", str(folder), "--json"], env=env, capture_output=True, check=True)
        return time.perf_counter() - start, json.loads(done.stdout.splitlines()[-1])

    first_s, first = run()
    second_s, second = run()
    result = {"files": args.files, "first_run_s": first_s, "noop_run_s": second_s, "ratio": second_s / first_s,
              "first_counts": first, "noop_counts": second}
    path = save("noop_reindex", result)
    print(f"first run {first_s:.1f} s ({first['added']} added); no-op run {second_s:.2f} s "
          f"({second['unchanged']} unchanged, {second['added'] + second['updated']} embedded): "
          f"{100 * result['ratio']:.1f}% of the first; written to {path}")


if __name__ == "__main__":
    main()
