"""What photo metadata costs an index run: reading it again for a library of an older blipsearch (the
rows revision 0003 leaves with ``metadata_version`` NULL), and the no-op run beside it.

    python benchmarks/metadata_refresh.py [--files 2000]

A folder of small JPEGs, each with EXIF (capture time with its offset, camera, a GPS position), half
of them with a darktable sidecar (keywords, rating, an XMP date), is indexed with a tiny model
(tests/tiny_blip.py). Then: a no-op run (only stats; the sidecars seen by the walk), every row's
metadata marked as read by an older blipsearch, and the run that reads it again without embedding.
Each run is the console script, so its wall time includes starting Python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import save  # noqa: E402

SIDECAR = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmp:Rating="{rating}" xmp:CreateDate="2021-04-11T15:47:53-05:00">
   <dc:subject><rdf:Bag><rdf:li>beach</rdf:li><rdf:li>photo {i}</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Portugal|Lisbon</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def _photos(folder: Path, files: int) -> None:
    from conftest import draw_image
    from PIL import Image
    from PIL.TiffImagePlugin import IFDRational

    for i in range(files):
        sub = folder / f"{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R6"
        ifd = exif.get_ifd(0x8769)
        ifd[0x9003], ifd[0x9011] = f"2021:04:{1 + i % 28:02d} 15:47:53", "-05:00"
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = "N", (IFDRational(38, 1), IFDRational(43, 1), IFDRational(0, 1))
        gps[3], gps[4] = "W", (IFDRational(9, 1), IFDRational(8, 1), IFDRational(0, 1))
        path = sub / f"{i:05d}.jpg"
        draw_image(i, 64).save(path, quality=85, exif=exif)
        if i % 2 == 0:
            (sub / f"{i:05d}.jpg.xmp").write_text(SIDECAR.format(rating=i % 6, i=i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from tiny_blip import make_tiny_retrieval

    model = make_tiny_retrieval(args.workdir / "tiny-model")
    folder = args.workdir / f"metadata-{args.files}"
    if not folder.exists():
        _photos(folder, args.files)
    library = args.workdir / "metadata-library"
    shutil.rmtree(library, ignore_errors=True)
    env = {**os.environ, "BLIPSEARCH_LIBRARY": str(library), "BLIPSEARCH_MODEL": str(model),
           "BLIPSEARCH_ENGINE": "off"}
    script = str(Path(sys.executable).with_name("blipsearch"))

    def run() -> tuple[float, dict]:
        start = time.perf_counter()
        done = subprocess.run([script, "index", str(folder), "--json"], env=env, capture_output=True, check=True)
        return time.perf_counter() - start, json.loads(done.stdout.splitlines()[-1])

    first_s, first = run()
    noop_s, noop = run()
    with sqlite3.connect(library / "library.db") as db:  # as revision 0003 leaves an older library's rows
        db.execute("UPDATE images SET metadata_version = NULL")
    refresh_s, refreshed = run()
    after_s, after = run()
    per_photo_ms = 1000 * (refresh_s - after_s) / max(1, refreshed.get("refreshed", 0))
    result = {"files": args.files, "sidecars": (args.files + 1) // 2, "first_run_s": first_s, "noop_run_s": noop_s,
              "refresh_run_s": refresh_s, "noop_after_s": after_s, "refresh_per_photo_ms": per_photo_ms,
              "counts": {"first": first, "noop": noop, "refresh": refreshed, "after": after}}
    path = save("metadata_refresh", result)
    print(f"{args.files} photos: first run {first_s:.1f} s; no-op {noop_s:.2f} s; metadata read again for "
          f"{refreshed.get('refreshed', 0)} in {refresh_s:.2f} s ({per_photo_ms:.2f} ms a photo over the no-op "
          f"run's {after_s:.2f} s); written to {path}")


if __name__ == "__main__":
    main()
