"""Fuzzed images: the indexer's decode path under mutated files, a real index run, a public corpus.

    pip install atheris                      # or: pip install -e '.[fuzz]'
    nice -n 10 python benchmarks/reliability/fuzz.py --executions 100000 [--corpus DIR]

Stages (each one is skipped with its --no-... option):

1. **Seeds.** Small valid files in JPEG, PNG, WebP, GIF, TIFF, BMP and HEIC
   (several modes and compressions each, EXIF included), written by Pillow and
   pillow-heif into ``WORKDIR/seeds``.
2. **Fuzz.** atheris (libFuzzer, coverage-guided over Pillow's, pillow-heif's
   and blipsearch's Python code) feeds mutations of the seeds to
   ``blipsearch.images.decode.decode`` with the thumbnail callback the indexer
   passes (the thumbnail is rendered; only the file write is left out), at
   BLIP-base's input (384 px, JPEG draft decoding) and Pillow's default
   decompression-bomb limit, as ``blipsearch index`` runs without
   ``--max-megapixels``. The only accepted outcomes are a well-formed result
   (finite CHW float32 pixels, positive size) and ``ImageError`` with a
   reason. Anything else is a finding, recorded with its input under
   ``WORKDIR/findings``: another exception (caught in the target, so the run
   goes on), a native crash, an input running past the per-image time limit
   (libFuzzer's -timeout), a process past the RSS limit (-rss_limit_mb), or
   an input whose own RSS growth exceeds the stated bound (measured per input
   by resetting the kernel's peak-RSS mark, ``/proc/self/clear_refs``, before
   it and reading ``VmHWM`` after). A fuzzing process ended by a native
   finding is restarted for the remaining executions.
3. **Index run.** A few hundred files from the fuzzer's corpus (the inputs it
   kept for new coverage), mutated seeds and every finding's input, named with
   the seven formats' extensions, indexed by the real command line
   (``blipsearch index FOLDER --model builtin:shapes --library LIB --json``, a
   subprocess): it must exit 0 with no traceback, and every file must be
   either indexed or listed by ``blipsearch failures --json`` with a reason
   that is not an unexpected error.
4. **Corpus** (``--corpus DIR``). Every file of a collection nobody here wrote
   is decoded through the same path, one at a time in a child process that is
   killed past the time limit or the memory cap (a hang, a crash or a memory
   blow-up is observed, not suffered), and the folder is indexed by the
   command line as well. Results per class of file (extension; Pillow's own
   fuzzer reproductions by their crash-/oom-/timeout- prefix). The corpus used
   for the published figures is Pillow's test images, from its source
   distribution on PyPI (not committed here)::

       pip download --no-binary :all: --no-deps "pillow==$(python -c 'import PIL; print(PIL.__version__)')" -d /tmp/pillow-sdist
       tar xzf /tmp/pillow-sdist/pillow-*.tar.gz -C /tmp/pillow-sdist
       python benchmarks/reliability/fuzz.py --corpus /tmp/pillow-sdist/pillow-*/Tests/images

Results go to ``benchmarks/results/NAME.json`` (``--name``, default ``fuzz``)
and a Markdown fragment ``benchmarks/results/NAME.md``, which also shows the
findings of ``fuzz_before_fixes.json`` when that file exists (a run of this
script against the code before its fixes: ``--name fuzz_before_fixes``).
``--replay DIR`` decodes the saved inputs of an earlier run's findings with the
current code. The exit status is 1 when anything was found.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SEVEN = ("jpeg", "png", "webp", "gif", "tiff", "bmp", "heic")
EXTENSION = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "tiff": ".tif", "bmp": ".bmp",
             "heic": ".heic"}
DEFAULT_TIME_LIMIT_S = 20  # per image; a legal 89 MP 16-bit PNG takes ~6 s on a busy core
DEFAULT_GROWTH_MB = 2560  # per image; the same PNG's legal decode grows RSS by ~2.4 GB
DEFAULT_RSS_LIMIT_MB = 3584  # the whole fuzzing process (baseline ~200 MB + the bound above)

# Byte strings libFuzzer may insert or overwrite with (format markers, chunk and box names, TIFF tags).
DICTIONARY = [
    b"\xff\xd8", b"\xff\xd9", b"\xff\xc0", b"\xff\xc2", b"\xff\xc4", b"\xff\xdb", b"\xff\xda", b"\xff\xe1",
    b"\xff\xdd", b"Exif\x00\x00", b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS",
    b"eXIf", b"iCCP", b"zTXt", b"iTXt", b"acTL", b"fcTL", b"fdAT", b"RIFF", b"WEBP", b"VP8 ", b"VP8L",
    b"VP8X", b"ANIM", b"ANMF", b"ALPH", b"EXIF", b"GIF89a", b"NETSCAPE2.0", b"\x21\xf9\x04", b"\x2c",
    b"II*\x00", b"MM\x00*", b"\x00\x01\x03\x00", b"\x01\x01\x03\x00", b"\x02\x01\x03\x00",
    b"\x03\x01\x03\x00", b"\x06\x01\x03\x00", b"\x11\x01\x04\x00", b"\x15\x01\x03\x00",
    b"\x16\x01\x03\x00", b"\x17\x01\x04\x00", b"\x1c\x01\x03\x00", b"\x12\x01\x03\x00", b"\x69\x87\x04\x00",
    b"BM", b"\x28\x00\x00\x00", b"\x7c\x00\x00\x00", b"ftyp", b"heic", b"mif1", b"meta", b"iinf",
    b"iloc", b"iprp", b"ipco", b"ispe", b"hvcC", b"pitm", b"iref", b"thmb", b"auxC", b"grid", b"colr",
    b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00", b"\xff\xff",
]


# -- seeds ---------------------------------------------------------------------------------------------
def _picture(width: int, height: int, mode: str = "RGB") -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (250, 240, 220))
    draw = ImageDraw.Draw(image)
    draw.ellipse((2, 2, width // 2, height - 3), fill=(200, 30, 40))
    draw.rectangle((width // 2 + 2, 4, width - 3, height - 5), fill=(30, 60, 200))
    for x in range(0, width, 3):
        draw.point((x, height // 2), fill=(x * 7 % 256, 255 - x * 5 % 256, 90))
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = Image.linear_gradient("L").resize((width, height))
        image.putalpha(alpha)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def _exif() -> bytes:
    from PIL import ExifTags, Image

    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS 5D"
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.DateTime] = "2024:07:14 12:30:00"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:07:14 12:30:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.5)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 1.0)
    return exif.tobytes()


def make_seeds() -> dict[str, bytes]:
    """Small valid files, several per format: name (``format-variant``) -> bytes."""
    import numpy as np
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    w, h = 32, 24
    rgb, rgba = _picture(w, h), _picture(w, h, "RGBA")
    grey16 = Image.fromarray((np.arange(w * h, dtype=np.uint16).reshape(h, w) * 5).astype(np.uint16))
    floats = Image.fromarray(np.linspace(-0.5, 2.0, w * h, dtype=np.float32).reshape(h, w), "F")
    exif = _exif()
    frames = [_picture(w, h).rotate(angle) for angle in (0, 90, 180)]
    cases: list[tuple[str, Any, str, dict[str, Any]]] = [
        ("jpeg-exif", rgb, "JPEG", {"quality": 85, "exif": exif}),
        ("jpeg-progressive", rgb, "JPEG", {"progressive": True, "quality": 70}),
        ("jpeg-grey", rgb.convert("L"), "JPEG", {}),
        ("jpeg-cmyk", rgb.convert("CMYK"), "JPEG", {}),
        ("jpeg-444", rgb, "JPEG", {"subsampling": 0, "optimize": True}),
        ("png-rgb", rgb, "PNG", {"exif": exif}),
        ("png-rgba", rgba, "PNG", {}),
        ("png-palette-trns", rgb.quantize(16), "PNG", {"transparency": 3}),
        ("png-la", rgba.convert("LA"), "PNG", {}),
        ("png-grey16", grey16, "PNG", {}),
        ("png-1bit", rgb.convert("1"), "PNG", {}),
        ("png-apng", frames[0], "PNG", {"save_all": True, "append_images": frames[1:], "duration": 100}),
        ("webp-lossy", rgb, "WEBP", {"quality": 60, "exif": exif}),
        ("webp-lossless-rgba", rgba, "WEBP", {"lossless": True}),
        ("webp-animated", frames[0], "WEBP", {"save_all": True, "append_images": frames[1:], "duration": 100}),
        ("gif-static", rgb, "GIF", {}),
        ("gif-animated", frames[0], "GIF", {"save_all": True, "append_images": frames[1:], "duration": 100,
                                            "loop": 0, "transparency": 0, "disposal": 2}),
        ("tiff-raw-exif", rgb, "TIFF", {"exif": exif}),
        ("tiff-lzw", rgb, "TIFF", {"compression": "tiff_lzw"}),
        ("tiff-deflate-rgba", rgba, "TIFF", {"compression": "tiff_adobe_deflate"}),
        ("tiff-packbits", rgb.convert("L"), "TIFF", {"compression": "packbits"}),
        ("tiff-jpeg", rgb, "TIFF", {"compression": "jpeg"}),
        ("tiff-grey16", grey16, "TIFF", {}),
        ("tiff-float", floats, "TIFF", {}),
        ("tiff-cmyk", rgb.convert("CMYK"), "TIFF", {}),
        ("tiff-multipage", frames[0], "TIFF", {"save_all": True, "append_images": frames[1:]}),
        ("bmp-rgb", rgb, "BMP", {}),
        ("bmp-palette", rgb.quantize(16), "BMP", {}),
        ("bmp-1bit", rgb.convert("1"), "BMP", {}),
        ("bmp-rgba", rgba, "BMP", {}),
        ("heic-rgb", rgb, "HEIF", {"quality": 50, "exif": exif}),
        ("heic-rgba", rgba, "HEIF", {"quality": 50}),
    ]
    seeds = {}
    for name, image, fmt, options in cases:
        out = io.BytesIO()
        image.save(out, fmt, **options)
        seeds[name] = out.getvalue()
    return seeds


def sniff(data: bytes) -> str:
    """The format family by magic bytes (what a mutated file still claims to be)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] == b"GIF8":
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    if data[4:8] == b"ftyp":
        return "heic"
    return "other"


def normalize_reason(reason: str) -> str:
    """A failure reason with its numbers masked, for counting reasons of the same kind."""
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "N", reason)[:110]


# -- measuring one input -----------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    path = frame.filename
    for marker in ("site-packages/", "/work/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{frame.lineno}"


class Checker:
    """Decodes one input as the indexer does and classifies the outcome; keeps the figures."""

    def __init__(self, growth_mb: float, time_limit_s: float, findings_dir: Path | None) -> None:
        import warnings

        warnings.simplefilter("ignore")  # Pillow's warnings about corrupt metadata, thousands of them
        import numpy as np
        from PIL import Image

        from blipsearch.errors import ImageError
        from blipsearch.images import decode as images
        from blipsearch.store import thumbnails

        Image.init()
        # The indexer's thumbnail callback, rendering the thumbnail but writing no file.
        thumbnails.atomic_write = lambda path, write, **kwargs: write(io.BytesIO())  # type: ignore[assignment]

        class RenderOnly(thumbnails.ThumbnailStore):
            def get(self, content_hash: str, kind: str = "thumb") -> Path | None:
                return None

        self.np, self.images, self.ImageError = np, images, ImageError
        self.thumbs = RenderOnly(Path(tempfile.mkdtemp(prefix="fuzz-thumbs-")))
        self.spec = images.ImageSpec()  # BLIP-base: 384 px, JPEG draft to 576 px
        self.growth_mb, self.time_limit_s, self.findings_dir = growth_mb, time_limit_s, findings_dir
        self.can_measure = _reset_peak()
        self.executions = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.by_format: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.reasons: collections.Counter[str] = collections.Counter()
        self.findings: dict[str, dict[str, Any]] = {}
        self.max_growth_kb = 0
        self.max_growth_input = 0
        self.slowest_s = 0.0
        self.slowest_input = 0

    def check(self, data: bytes) -> dict[str, Any]:
        """One input through ``decode``: outcome (decoded, image_error, finding), reason, time, growth."""
        self.executions += 1
        if self.can_measure:
            _reset_peak()
        before_kb = _status_kb("VmRSS:")
        start = time.perf_counter()
        out: dict[str, Any] = {"outcome": "decoded"}
        try:
            decoded = self.images.decode(data, self.spec, self.thumbs.put_decoded)
            problem = self._malformed(decoded)
            if problem:
                out = {"outcome": "finding", "type": "MalformedResult", "reason": problem, "where": "decode"}
        except self.ImageError as exc:
            reason = str(exc)
            out = {"outcome": "image_error", "reason": reason}
            if not reason.strip():
                out = {"outcome": "finding", "type": "EmptyReason", "reason": "ImageError without a reason",
                       "where": _where(exc)}
        except Exception as exc:  # noqa: BLE001 - what the campaign looks for
            out = {"outcome": "finding", "type": type(exc).__name__, "reason": str(exc)[:300],
                   "where": _where(exc), "traceback": traceback.format_exc(limit=-8)}
        seconds = time.perf_counter() - start
        growth_kb = max(0, _status_kb("VmHWM:") - before_kb) if self.can_measure else 0
        out["seconds"], out["growth_mb"] = round(seconds, 4), round(growth_kb / 1024, 1)
        if out["outcome"] != "finding" and growth_kb > self.growth_mb * 1024:
            out = {**out, "outcome": "finding", "type": "MemoryBound",
                   "reason": f"RSS grew {growth_kb / 1024:.0f} MB (bound {self.growth_mb:.0f} MB)", "where": "decode"}
        if out["outcome"] != "finding" and seconds > self.time_limit_s:
            out = {**out, "outcome": "finding", "type": "TimeLimit",
                   "reason": f"took {seconds:.1f} s (limit {self.time_limit_s:.0f} s)", "where": "decode"}
        self._count(data, out, growth_kb, seconds)
        return out

    def _malformed(self, decoded: Any) -> str | None:
        pixels = decoded.pixels
        if pixels is None or pixels.dtype != self.np.float32 or pixels.shape != (3, self.spec.height, self.spec.width):
            return f"pixels {None if pixels is None else (pixels.dtype, pixels.shape)}"
        if not self.np.isfinite(pixels).all():
            return "pixels not finite"
        if not (isinstance(decoded.width, int) and isinstance(decoded.height, int)
                and decoded.width > 0 and decoded.height > 0):
            return f"size {decoded.width}x{decoded.height}"
        return None

    def _count(self, data: bytes, out: dict[str, Any], growth_kb: int, seconds: float) -> None:
        kind = out["outcome"]
        self.outcomes[kind] += 1
        self.by_format[sniff(data)][kind] += 1
        if kind == "image_error":
            self.reasons[normalize_reason(out["reason"])] += 1
        if growth_kb > self.max_growth_kb:
            self.max_growth_kb, self.max_growth_input = growth_kb, len(data)
        if seconds > self.slowest_s:
            self.slowest_s, self.slowest_input = seconds, len(data)
            if self.findings_dir is not None and seconds > 1.0:
                (self.findings_dir.parent / "slowest.bin").write_bytes(data)
        if kind == "finding":
            key = f"{out['type']}@{out['where']}"
            if key not in self.findings:
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:80] + "-" + hashlib.sha1(data).hexdigest()[:12] + ".bin"
                entry = {k: v for k, v in out.items() if k != "outcome"}
                entry.update(input_bytes=len(data), format=sniff(data))
                if self.findings_dir is not None:
                    self.findings_dir.mkdir(parents=True, exist_ok=True)
                    (self.findings_dir / name).write_bytes(data)
                    (self.findings_dir / (name[:-4] + ".json")).write_text(json.dumps({"key": key, **entry}, indent=1))
                    entry["input"] = name
                self.findings[key] = {**entry, "count": 0}
            self.findings[key]["count"] += 1

    def stats(self) -> dict[str, Any]:
        return {
            "executions": self.executions, "outcomes": dict(self.outcomes),
            "by_format": {k: dict(v) for k, v in self.by_format.items()},
            "reasons": dict(self.reasons.most_common(60)), "findings": self.findings,
            "max_growth_mb": round(self.max_growth_kb / 1024, 1), "max_growth_input_bytes": self.max_growth_input,
            "slowest_s": round(self.slowest_s, 3), "slowest_input_bytes": self.slowest_input,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "per_input_rss_measured": self.can_measure,
        }


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# -- the atheris worker (a child process) ------------------------------------------------------------
def fuzz_worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--findings", type=Path, required=True)
    parser.add_argument("--growth-mb", type=float, required=True)
    parser.add_argument("--time-limit", type=float, required=True)
    parser.add_argument("--runs", type=int, required=True)
    args, libfuzzer = parser.parse_known_args(argv)

    import atheris
    import numpy  # noqa: F401 - imported before the instrumentation: it is not what is fuzzed

    with atheris.instrument_imports():
        import pillow_heif  # noqa: F401
        from PIL import Image

        import blipsearch.images.decode
        import blipsearch.store.thumbnails  # noqa: F401

        Image.init()  # every format plugin, imported (so instrumented) now rather than on first use

    checker = Checker(args.growth_mb, args.time_limit, args.findings)
    last = [time.monotonic()]

    def one_input(data: bytes) -> None:
        out = checker.check(data)
        now = time.monotonic()
        # libFuzzer ends the process without Python's exit handlers: the last run writes the figures.
        if out["outcome"] == "finding" or now - last[0] > 2.0 or checker.executions >= args.runs:
            last[0] = now
            _write_json(args.stats, checker.stats())

    atheris.Setup([sys.argv[0], *libfuzzer], one_input)
    atheris.Fuzz()


# -- the decode worker (a child process, for the corpus and replays) ------------------------------------
def decode_worker() -> None:
    checker = Checker(float("inf"), float("inf"), None)
    read_file, image_error = checker.images.read_file, checker.ImageError
    print(json.dumps({"ready": True, "rss_mb": _status_kb("VmRSS:") / 1024}), flush=True)
    for line in sys.stdin:
        path = json.loads(line)["path"]
        try:
            data = read_file(path)
        except image_error as exc:
            print(json.dumps({"outcome": "image_error", "reason": str(exc), "seconds": 0, "growth_mb": 0}), flush=True)
            continue
        print(json.dumps(checker.check(data)), flush=True)


class DecodeWorker:
    """A child process decoding one file at a time, killed past the time limit or the memory cap."""

    def __init__(self, log: Path, time_limit_s: float, hard_mb: float) -> None:
        self.log, self.time_limit_s, self.hard_mb = log, time_limit_s, hard_mb
        self.proc: subprocess.Popen[str] | None = None
        self.restarts = 0

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with open(self.log, "a") as err:
            proc = subprocess.Popen([sys.executable, __file__, "_decode-worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"the decode worker did not start; see {self.log}")
        return proc

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.restarts += 1

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, path: Path) -> dict[str, Any]:
        import psutil

        if self.proc is None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"path": os.fsdecode(path)}) + "\n")
        proc.stdin.flush()
        start = time.monotonic()
        watch = psutil.Process(proc.pid)
        peak_mb = 0.0
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 0.05)
            if ready:
                line = proc.stdout.readline()
                if line:
                    return json.loads(line)
                code = proc.wait()
                self.proc = None
                self.restarts += 1
                name = signal.Signals(-code).name if code < 0 else f"exit status {code}"
                return {"outcome": "crash", "type": "Crash", "reason": f"decode process died ({name})",
                        "seconds": round(time.monotonic() - start, 3)}
            elapsed = time.monotonic() - start
            try:
                peak_mb = max(peak_mb, watch.memory_info().rss / 2**20)
            except psutil.Error:
                continue
            if peak_mb > self.hard_mb:
                self._stop()
                return {"outcome": "memory", "type": "MemoryBound", "reason": f"RSS passed {self.hard_mb:.0f} MB",
                        "seconds": round(elapsed, 3), "growth_mb": round(peak_mb, 1)}
            if elapsed > self.time_limit_s:
                self._stop()
                return {"outcome": "hang", "type": "TimeLimit",
                        "reason": f"no result after {self.time_limit_s:.0f} s", "seconds": round(elapsed, 3)}


# -- stage 2: the fuzzing campaign -------------------------------------------------------------------
def _merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    total["executions"] = total.get("executions", 0) + part.get("executions", 0)
    for key in ("outcomes", "reasons"):
        bucket = total.setdefault(key, {})
        for k, v in part.get(key, {}).items():
            bucket[k] = bucket.get(k, 0) + v
    formats = total.setdefault("by_format", {})
    for fmt, counts in part.get("by_format", {}).items():
        for k, v in counts.items():
            row = formats.setdefault(fmt, {})
            row[k] = row.get(k, 0) + v
    findings = total.setdefault("findings", {})
    for key, entry in part.get("findings", {}).items():
        if key in findings:
            findings[key]["count"] += entry["count"]
        else:
            findings[key] = dict(entry)
    for key, size_key in (("max_growth_mb", "max_growth_input_bytes"), ("slowest_s", "slowest_input_bytes")):
        if part.get(key, 0) >= total.get(key, 0):
            total[key], total[size_key] = part.get(key, 0), part.get(size_key, 0)
    total["peak_rss_mb"] = max(total.get("peak_rss_mb", 0), part.get("peak_rss_mb", 0))
    total["per_input_rss_measured"] = part.get("per_input_rss_measured", False)


def run_fuzz(args: argparse.Namespace, work: Path, seeds_dir: Path, max_len: int) -> dict[str, Any]:
    corpus, artifacts, findings = work / "corpus", work / "artifacts", work / "findings"
    for folder in (corpus, artifacts, findings):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    dictionary = work / "formats.dict"
    dictionary.write_text("".join('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n' for token in DICTIONARY))
    total: dict[str, Any] = {}
    native: list[dict[str, Any]] = []
    start = time.monotonic()
    restarts = 0
    while total.get("executions", 0) < args.executions and restarts <= args.max_restarts:
        left = args.executions - total.get("executions", 0)
        stats = work / f"stats-{restarts}.json"
        log = work / f"libfuzzer-{restarts}.log"
        stats.unlink(missing_ok=True)
        command = [
            sys.executable, __file__, "_fuzz-worker", "--stats", str(stats), "--findings", str(findings),
            "--growth-mb", str(args.growth_mb), "--time-limit", str(args.time_limit), "--runs", str(left),
            f"-runs={left}", f"-timeout={int(args.time_limit)}", f"-rss_limit_mb={args.rss_limit_mb}",
            f"-max_len={max_len}", f"-seed={args.seed + restarts}", f"-dict={dictionary}",
            f"-artifact_prefix={artifacts}/", "-close_fd_mask=2", "-print_final_stats=1",
            str(corpus), str(seeds_dir),
        ]
        if args.max_seconds:
            remaining = int(args.max_seconds - (time.monotonic() - start))
            if remaining <= 0:
                break
            command.insert(-2, f"-max_total_time={remaining}")
        before = set(os.listdir(artifacts))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with open(log, "w") as err:
            code = subprocess.call(command, stdout=err, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        part = json.loads(stats.read_text()) if stats.exists() else {}
        text = log.read_text(errors="replace")
        done = re.search(r"Done (\d+) runs in (\d+) second", text)
        units = re.search(r"stat::number_of_executed_units: (\d+)", text)
        counted = max(part.get("executions", 0), int(units.group(1)) if units else 0)
        part["executions"] = counted
        _merge(total, part)
        print(f"  fuzzing process {restarts}: {counted} executions, exit {code}", file=sys.stderr)
        new = sorted(set(os.listdir(artifacts)) - before)
        if code == 0 and done:
            break
        restarts += 1
        if not new and counted == 0:
            native.append({"type": "WorkerFailed", "reason": f"exit {code}", "log": text[-2000:]})
            break
        for name in new:
            kind = name.split("-", 1)[0]
            native.append({"type": {"crash": "Crash", "timeout": "TimeLimit", "oom": "RssLimit",
                                    "slow": "Slow"}.get(kind, kind), "input": name,
                           "input_bytes": (artifacts / name).stat().st_size, "exit": code,
                           "log_tail": text[-1500:]})
    seconds = time.monotonic() - start
    executions = total.get("executions", 0)
    findings_all = [{"key": k, **v} for k, v in total.get("findings", {}).items()] + native
    return {**total, "seconds": round(seconds, 1), "exec_per_s": round(executions / seconds, 1) if seconds else 0,
            "processes": restarts + 1, "findings": findings_all, "corpus_kept": len(os.listdir(corpus)),
            "time_limit_s": args.time_limit, "growth_bound_mb": args.growth_mb,
            "rss_limit_mb": args.rss_limit_mb, "max_len": max_len, "seed": args.seed,
            "decompression_bomb_limit_px": _bomb_limit()}


def _bomb_limit() -> int | None:
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            out.extend(rng.randbytes(8))
        r, i = rng.random(), rng.randrange(len(out))
        if r < 0.4:
            out[i] = rng.randrange(256)
        elif r < 0.55:
            out[i] ^= 1 << rng.randrange(8)
        elif r < 0.7:
            del out[i:i + rng.randint(1, 32)]
        elif r < 0.8:
            out[i:i] = rng.randbytes(rng.randint(1, 16))
        elif r < 0.9:
            out[i:i + 4] = rng.choice(DICTIONARY[-5:])
        else:
            out = out[: rng.randrange(1, len(out) + 1)]
    return bytes(out)


# -- stage 3: a real index run -----------------------------------------------------------------------
def _cli() -> list[str]:
    script = Path(sys.executable).parent / "blipsearch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "blipsearch.cli"]


def _run_cli(command: list[str], timeout_s: float) -> dict[str, Any]:
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    peak = 0.0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(_cli() + command, stdout=out, stderr=err, text=True, env=env, cwd=ROOT)
        watch = psutil.Process(proc.pid)
        timed_out = False
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, watch.memory_info().rss / 2**20)
            if time.monotonic() - start > timeout_s:
                proc.kill()
                timed_out = True
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        return {"rc": proc.returncode, "stdout": out.read(), "stderr": err.read(), "timed_out": timed_out,
                "seconds": round(time.monotonic() - start, 1), "peak_rss_mb": round(peak, 1)}


def index_check(folder: Path, library: Path, expected: int | None, timeout_s: float) -> dict[str, Any]:
    """``blipsearch index`` over the folder, then ``blipsearch failures``: every file accounted for."""
    shutil.rmtree(library, ignore_errors=True)
    run = _run_cli(["index", str(folder), "--model", "builtin:shapes", "--library", str(library), "--json"],
                   timeout_s)
    counts: dict[str, Any] = {}
    with contextlib.suppress(ValueError, IndexError):
        counts = json.loads(run["stdout"].strip().splitlines()[-1])
    listed = _run_cli(["failures", "--json", "--library", str(library)], 300)
    failures = [json.loads(line) for line in listed["stdout"].splitlines() if line.strip()]
    reasons = collections.Counter(normalize_reason(f["reason"]) for f in failures)
    unexpected = [f for f in failures if f["reason"].startswith("unexpected error") or not f["reason"].strip()]
    problems = []
    if run["rc"] != 0 or run["timed_out"]:
        problems.append(f"index exited {run['rc']}{' (timed out)' if run['timed_out'] else ''}")
    if "Traceback" in run["stderr"] or "Traceback" in listed["stderr"]:
        problems.append("a traceback was printed")
    if listed["rc"] != 0:
        problems.append(f"failures exited {listed['rc']}")
    if counts and len(failures) != counts.get("failed"):
        problems.append(f"{counts.get('failed')} failed but {len(failures)} listed")
    accounted = counts.get("added", 0) + counts.get("failed", 0)
    if expected is not None and accounted != expected:
        problems.append(f"{accounted} of {expected} files indexed or failed")
    if unexpected:
        problems.append(f"{len(unexpected)} failures with an unexpected error")
    stderr = run["stderr"].splitlines()
    return {"files": expected, "rc": run["rc"], "seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"],
            "stderr_lines": len(stderr), "warning_lines": sum("Warning: " in line for line in stderr),
            "counts": counts, "failures_listed": len(failures), "unexpected": unexpected[:20],
            "top_reasons": dict(reasons.most_common(12)), "problems": problems,
            "stderr_tail": run["stderr"][-1500:] if problems else ""}


def run_index_stage(args: argparse.Namespace, work: Path, seeds: dict[str, bytes]) -> dict[str, Any]:
    folder, library = work / "index-files", work / "index-library"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(args.seed)
    kept = sorted((work / "corpus").glob("*")) if (work / "corpus").is_dir() else []
    picked = [p.read_bytes() for p in rng.sample(kept, min(len(kept), args.index_files * 2 // 3))]
    sources = {"fuzzer corpus": len(picked)}
    found = sorted((work / "findings").glob("*.bin")) + sorted((work / "artifacts").glob("*"))
    if args.replay:  # an earlier run's findings too
        found += sorted(p for p in args.replay.glob("*") if p.is_file() and p.suffix != ".json")
    picked += [p.read_bytes() for p in found]
    sources["finding inputs"] = len(found)
    names = sorted(seeds)
    mutated = 0
    while len(picked) < args.index_files + len(found):
        picked.append(_mutate(rng, seeds[rng.choice(names)]))
        mutated += 1
    sources["mutated seeds"] = mutated
    picked += list(seeds.values())  # the valid ones must be indexed
    sources["valid seeds"] = len(seeds)
    for i, data in enumerate(picked):
        family = sniff(data)
        ext = EXTENSION[family] if family in EXTENSION and rng.random() < 0.8 else EXTENSION[rng.choice(SEVEN)]
        (folder / f"{i:05d}{ext}").write_bytes(data)
    result = index_check(folder, library, len(picked), args.index_timeout)
    result["sources"] = sources
    result["valid_seeds_indexed"] = _seeds_indexed(library, folder, len(picked) - len(seeds), len(picked))
    return result


def _seeds_indexed(library: Path, folder: Path, first: int, end: int) -> str:
    listed = _run_cli(["failures", "--json", "--library", str(library)], 300)
    failed = {Path(json.loads(line)["path"]).name for line in listed["stdout"].splitlines() if line.strip()}
    missing = [i for i in range(first, end) if any(n.startswith(f"{i:05d}.") for n in failed)]
    return f"{end - first - len(missing)} of {end - first}"


# -- stage 4: a public corpus ------------------------------------------------------------------------
def corpus_class(path: Path) -> str:
    return path.suffix.lower() or "(none)"


def repro_class(path: Path) -> str | None:
    match = re.match(r"(crash|oom|timeout)-", path.name)
    return match.group(1) if match else None


def run_corpus(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    files = sorted(p for p in args.corpus.rglob("*") if p.is_file() and not p.is_symlink())
    worker = DecodeWorker(work / "decode-worker.log", args.time_limit, args.growth_mb + 400)
    per_class: dict[str, dict[str, Any]] = {}
    repros: dict[str, dict[str, Any]] = {}
    problems: list[dict[str, Any]] = []
    slowest: list[tuple[float, str]] = []
    growth: list[tuple[float, str]] = []
    start = time.monotonic()
    try:
        for n, path in enumerate(files, 1):
            out = worker.run(path)
            rel = os.fsdecode(path.relative_to(args.corpus))
            outcome = out["outcome"]
            for table, key in ((per_class, corpus_class(path)), (repros, repro_class(path))):
                if key is None:
                    continue
                row = table.setdefault(key, {"files": 0, "reasons": collections.Counter()})
                row["files"] += 1
                row[outcome] = row.get(outcome, 0) + 1
                if outcome == "image_error":
                    row["reasons"][normalize_reason(out["reason"])] += 1
            if outcome not in ("decoded", "image_error"):
                problems.append({"file": rel, **{k: v for k, v in out.items() if k != "traceback"}})
            slowest.append((out.get("seconds", 0), rel))
            growth.append((out.get("growth_mb", 0) or 0, rel))
            if n % 200 == 0:
                print(f"  corpus: {n}/{len(files)}", file=sys.stderr)
    finally:
        worker.close()
    seconds = time.monotonic() - start
    for table in (per_class, repros):
        for row in table.values():
            row["reasons"] = dict(row["reasons"].most_common(3))
    result: dict[str, Any] = {
        "path": str(args.corpus), "files": len(files), "seconds": round(seconds, 1),
        "time_limit_s": args.time_limit, "memory_cap_mb": worker.hard_mb,
        "classes": dict(sorted(per_class.items(), key=lambda kv: (-kv[1]["files"], kv[0]))),
        "fuzzer_repros": repros, "problems": problems, "worker_restarts": worker.restarts,
        "slowest": [{"seconds": s, "file": f} for s, f in sorted(slowest, reverse=True)[:5]],
        "largest_growth": [{"growth_mb": g, "file": f} for g, f in sorted(growth, reverse=True)[:5]],
        "totals": dict(sum((collections.Counter({o: n for o, n in row.items() if o not in ("files", "reasons")})
                            for row in per_class.values()), collections.Counter())),
    }
    if not args.no_index:
        walked = sum(1 for p in files if p.suffix.lower() in _walk_extensions())
        result["index"] = index_check(args.corpus, work / "corpus-library", walked, args.index_timeout)
    return result


def _walk_extensions() -> frozenset[str]:
    from blipsearch.images.formats import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def run_limits(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The legal worst cases the bounds are set from: files just under the decompression-bomb limit."""
    import numpy as np
    from PIL import Image

    side = int((Image.MAX_IMAGE_PIXELS or 0) ** 0.5)
    folder = work / "limits"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    cases = {"png-rgb.png": ("RGB", "PNG"), "png-rgba.png": ("RGBA", "PNG"), "png-grey16.png": ("I;16", "PNG"),
             "jpeg-rgb.jpg": ("RGB", "JPEG")}
    for name, (mode, fmt) in cases.items():
        if mode == "I;16":
            image = Image.fromarray(np.full((side, side), 3000, np.uint16))
        else:
            image = Image.new(mode, (side, side), (200, 120, 40, 255)[: len(mode)])
        image.save(folder / name, fmt)
        del image
    worker = DecodeWorker(work / "limits-worker.log", args.time_limit * 3, args.growth_mb * 2)
    out = []
    try:
        for name in cases:
            worker.close()  # each in a fresh process: the growth is its own
            got = worker.run(folder / name)
            out.append({"file": name, "pixels": side * side, "bytes": (folder / name).stat().st_size,
                        **{k: got.get(k) for k in ("outcome", "seconds", "growth_mb", "reason")}})
    finally:
        worker.close()
        shutil.rmtree(folder, ignore_errors=True)
    return out


def replay(folder: Path, work: Path, time_limit_s: float, hard_mb: float) -> list[dict[str, Any]]:
    """The saved inputs of an earlier run's findings, decoded by the current code."""
    worker = DecodeWorker(work / "replay-worker.log", time_limit_s, hard_mb)
    try:
        return [{"input": p.name, **{k: v for k, v in worker.run(p).items() if k != "traceback"}}
                for p in sorted(folder.glob("*")) if p.suffix != ".json"]
    finally:
        worker.close()


# -- the report ------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def _reasons(reasons: dict[str, int], n: int = 3) -> str:
    return "; ".join(f"{r.replace('|', '/')} ({c})" for r, c in list(reasons.items())[:n]) or "-"


def _row(counts: dict[str, Any]) -> list[Any]:
    return [counts.get(o, 0) for o in ("decoded", "image_error", "finding", "hang", "crash", "memory")]


def _corpus_rows(classes: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """The formats a folder walk takes, then the other classes of 4 files or more, then the rest in one row."""
    walked = _walk_extensions()
    rows, rest = [], collections.Counter()
    rest_names = []
    for name, row in classes.items():
        if name in walked or row["files"] >= 4:
            label = f"{name} (walked)" if name in walked else name
            rows.append((name not in walked, [label, row["files"], *_row(row), _reasons(row["reasons"], 2)]))
        else:
            rest_names.append(name)
            rest.update({k: v for k, v in row.items() if k != "reasons"})
    ordered = [r for _, r in sorted(rows, key=lambda kv: kv[0])]
    if rest_names:
        ordered.append([f"{len(rest_names)} other extensions ({', '.join(sorted(rest_names))})", rest["files"],
                        *_row(rest), "-"])
    return ordered


_OUTCOME_HEADER = ["decoded", "ImageError", "uncaught", "hang", "crash", "memory"]


def markdown(result: dict[str, Any], before: dict[str, Any] | None) -> str:
    versions = result["versions"]
    machine = result.get("machine", {})
    lines = [
        f"<!-- written by benchmarks/reliability/fuzz.py from benchmarks/results/{result['name']}.json -->",
        "### Fuzzed images",
        "",
        (f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores shared with other work, "
         f"run under `nice -n 10`; Pillow {versions['pillow']}, pillow-heif {versions['pillow_heif']}, "
         f"atheris {versions.get('atheris', '-')}."),
        "",
    ]
    fuzz = result.get("fuzz")
    if fuzz:
        outcomes = fuzz.get("outcomes", {})
        lines += [
            (f"**Campaign**: atheris (libFuzzer, coverage-guided over Pillow's, pillow-heif's and blipsearch's "
             f"Python code) from {len(result['seeds'])} valid seeds in the 7 formats (largest "
             f"{max(result['seeds'].values())} bytes; inputs up to {fuzz['max_len']} bytes), each input through "
             f"`blipsearch.images.decode.decode` with the indexer's thumbnail callback, at BLIP-base's 384 px "
             f"(JPEG draft decoding) and the default decompression-bomb limit "
             f"({fuzz['decompression_bomb_limit_px'] / 1e6:.1f} MP). Accepted: a well-formed result or "
             f"`ImageError` with a reason; anything else is a finding."),
            "",
        ]
        lines += _table(["figure", "value"], [
            ["executions", f"{fuzz['executions']:,}"],
            ["wall time (with start-up)", f"{fuzz['seconds']:.0f} s"],
            ["executions/s", f"{fuzz['exec_per_s']:.0f}"],
            ["decoded / ImageError", f"{outcomes.get('decoded', 0):,} / {outcomes.get('image_error', 0):,}"],
            ["findings: distinct (executions)", f"{len(fuzz['findings'])} ({outcomes.get('finding', 0)})"],
            ["fuzzing processes (restarted after a native finding)", fuzz["processes"]],
            ["inputs kept by the fuzzer for new coverage", fuzz["corpus_kept"]],
            ["per-image time limit; slowest input",
             f"{fuzz['time_limit_s']:.0f} s; {fuzz['slowest_s']:.2f} s ({fuzz['slowest_input_bytes']} bytes)"],
            ["per-image RSS growth bound; largest measured",
             f"{fuzz['growth_bound_mb']:.0f} MB; {fuzz['max_growth_mb']:.0f} MB ({fuzz['max_growth_input_bytes']} bytes)"],
            ["peak RSS of a fuzzing process (its limit)", f"{fuzz['peak_rss_mb']:.0f} MB ({fuzz['rss_limit_mb']} MB)"],
        ])
        lines += ["", "Executions by the format the input's magic bytes still claim:", ""]
        lines += _table(["format", "executions", "decoded", "ImageError", "findings"], [
            [fmt, sum(c.values()), c.get("decoded", 0), c.get("image_error", 0), c.get("finding", 0)]
            for fmt, c in sorted(fuzz.get("by_format", {}).items(), key=lambda kv: -sum(kv[1].values()))
        ])
        lines += ["", "Most common ImageError reasons (numbers masked as N): " + _reasons(fuzz.get("reasons", {}), 6),
                  ""]
    runs = [("before the fixes", before)] if before else []
    runs.append(("after the fixes" if before else "this run", result))
    rows = []
    for label, run in runs:
        found = [(f"campaign, {run['fuzz']['executions']:,} executions", f) for f in run.get("fuzz", {}).get("findings", [])]
        found += [("corpus", {"type": p.get("type", p["outcome"]), "where": p["file"], "count": 1,
                              "reason": p.get("reason", "")}) for p in run.get("corpus", {}).get("problems", [])]
        found += [("index run", {"type": "IndexRun", "where": "blipsearch index", "count": 1, "reason": problem})
                  for stage in ("index",) for problem in run.get(stage, {}).get("problems", [])]
        found += [("corpus index run", {"type": "IndexRun", "where": "blipsearch index", "count": 1, "reason": problem})
                  for problem in run.get("corpus", {}).get("index", {}).get("problems", [])]
        if not found:
            rows.append([label, "all stages", "none", "-", "-"])
        for stage, f in found:
            rows.append([label, stage, f"{f['type']} at `{f.get('where', f.get('input', '?'))}`", f.get("count", 1),
                         str(f.get("reason", ""))[:150].replace("|", "/").replace("\n", " ")])
    lines += ["**Findings**:", ""] + _table(["run", "stage", "finding", "times", "reason"], rows) + [""]
    if result.get("replay"):
        lines += ["Inputs of the findings before the fixes, decoded by the fixed code (`--replay`):", ""]
        lines += _table(["input", "outcome", "reason"], [
            [f"`{r['input'][:60]}`", r["outcome"], str(r.get("reason", ""))[:120].replace("|", "/")]
            for r in result["replay"]])
        lines.append("")
    if result.get("limits"):
        lines += [("**The bounds' basis**: files just under the decompression-bomb limit, each decoded in a fresh "
                   "child process (legal inputs: what one image may cost):"), ""]
        lines += _table(["file", "megapixels", "file bytes", "outcome", "seconds", "RSS growth"], [
            [f"`{r['file']}`", f"{r['pixels'] / 1e6:.1f}", f"{r['bytes']:,}", r["outcome"], r.get("seconds"),
             f"{r.get('growth_mb') or 0:.0f} MB"] for r in result["limits"]])
        lines.append("")
    index = result.get("index")
    if index:
        lines += [
            (f"**Index run**: `blipsearch index FOLDER --model builtin:shapes --library LIB --json` (a subprocess) "
             f"over {index['files']} files ({', '.join(f'{v} {k}' for k, v in index['sources'].items())}; named "
             f"with the 7 formats' extensions): exit status {index['rc']}, {index['seconds']:.0f} s, peak RSS "
             f"{index['peak_rss_mb']:.0f} MB, counts `{json.dumps(index['counts'])}`; "
             f"`blipsearch failures --json` lists {index['failures_listed']}, each with a reason; valid seeds "
             f"indexed: {index['valid_seeds_indexed']}; unexpected errors: {len(index['unexpected'])}; problems: "
             f"{'; '.join(index['problems']) or 'none'}. Its stderr had {index.get('stderr_lines', '?')} lines, "
             f"{index.get('warning_lines', '?')} of them Python warnings from Pillow's plugins. Most common "
             f"reasons: {_reasons(index['top_reasons'], 4)}."),
            "",
        ]
    corpus = result.get("corpus")
    if corpus:
        totals = corpus["totals"]
        lines += [
            (f"**Real-world corpus**: {corpus['source']}: {corpus['files']} files (fuzzer reproductions, truncated, "
             f"malformed and unusual files of many formats), each decoded through the same path in a child process "
             f"killed past {corpus['time_limit_s']:.0f} s or {corpus['memory_cap_mb']:.0f} MB RSS "
             f"({corpus['seconds']:.0f} s in all): {totals.get('decoded', 0)} decoded, "
             f"{totals.get('image_error', 0)} ImageError, {len(corpus['problems'])} uncaught errors, hangs, crashes "
             f"or memory blow-ups. By class (file extension; \"walked\": the formats a folder walk takes):"),
            "",
        ]
        lines += _table(["class", "files", *_OUTCOME_HEADER, "most common reasons"], _corpus_rows(corpus["classes"]))
        if corpus["fuzzer_repros"]:
            lines += ["", "Pillow's own fuzzer reproductions among them (files named crash-, oom-, timeout-):", ""]
            lines += _table(["kind", "files", *_OUTCOME_HEADER, "most common reasons"],
                            [[k, r["files"], *_row(r), _reasons(r["reasons"], 2)]
                             for k, r in corpus["fuzzer_repros"].items()])
        lines += ["", ("Slowest files: " + ", ".join(f"`{s['file']}` {s['seconds']:.2f} s" for s in corpus["slowest"][:3])
                       + "; largest RSS growth: "
                       + ", ".join(f"`{g['file']}` {g['growth_mb']:.0f} MB" for g in corpus["largest_growth"][:3])
                       + ".")]
        if corpus.get("index"):
            ci = corpus["index"]
            lines += ["", (f"The corpus folder indexed by the command line as well ({ci['files']} files with a walked "
                           f"extension): exit status {ci['rc']}, {ci['seconds']:.0f} s, peak RSS "
                           f"{ci['peak_rss_mb']:.0f} MB, counts `{json.dumps(ci['counts'])}`, unexpected errors: "
                           f"{len(ci['unexpected'])}, problems: {'; '.join(ci['problems']) or 'none'}.")]
        lines.append("")
    notes = RESULTS / "fuzz_notes.md"
    if notes.exists() and result["name"] == "fuzz":
        lines += [notes.read_text().rstrip(), ""]
    lines += [("Reproduce: `pip install atheris`, then `nice -n 10 python benchmarks/reliability/fuzz.py "
               f"--executions {fuzz['executions'] if fuzz else 100000} --corpus DIR` (how to fetch the corpus: the "
               "script's docstring).")]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_fuzz-worker":
        fuzz_worker(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_decode-worker":
        decode_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=100_000, help="fuzz executions in all")
    parser.add_argument("--max-seconds", type=int, default=0, help="stop the fuzzing earlier than that (0: no)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, help="per image, seconds")
    parser.add_argument("--growth-mb", type=float, default=DEFAULT_GROWTH_MB, help="per-image RSS growth bound")
    parser.add_argument("--rss-limit-mb", type=int, default=DEFAULT_RSS_LIMIT_MB, help="per fuzzing process")
    parser.add_argument("--max-restarts", type=int, default=20, help="fuzzing processes restarted after findings")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--index-files", type=int, default=300, help="files for the index run")
    parser.add_argument("--index-timeout", type=float, default=1800)
    parser.add_argument("--corpus", type=Path, help="a folder of images nobody here wrote")
    parser.add_argument("--corpus-source", default="Pillow {pillow} source distribution (PyPI), Tests/images",
                        help="how the report names the corpus")
    parser.add_argument("--replay", type=Path, help="a findings folder of an earlier run to decode again")
    parser.add_argument("--no-fuzz", action="store_true")
    parser.add_argument("--no-index", action="store_true")
    parser.add_argument("--no-limits", action="store_true", help="skip decoding images at the size limit")
    parser.add_argument("--name", default="fuzz", help="results file name")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite NAME.md from NAME.json")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-fuzz")
    args = parser.parse_args()

    if args.markdown_only:
        _write_markdown(json.loads((RESULTS / f"{args.name}.json").read_text()))
        return
    import PIL
    import pillow_heif

    work = args.workdir / args.name
    work.mkdir(parents=True, exist_ok=True)
    versions = {"pillow": PIL.__version__, "pillow_heif": pillow_heif.__version__}
    with contextlib.suppress(ImportError):
        from importlib.metadata import version

        import atheris  # noqa: F401

        versions["atheris"] = version("atheris")
    seeds = make_seeds()
    seeds_dir = work / "seeds"
    shutil.rmtree(seeds_dir, ignore_errors=True)
    seeds_dir.mkdir()
    for name, data in seeds.items():
        (seeds_dir / f"{name}{EXTENSION[name.split('-')[0]]}").write_bytes(data)
    result: dict[str, Any] = {"name": args.name, "versions": versions,
                              "seeds": {name: len(data) for name, data in seeds.items()}}
    print(f"{len(seeds)} seeds in {work / 'seeds'}", file=sys.stderr)
    found = 0
    if not args.no_fuzz:
        print(f"fuzzing: {args.executions} executions", file=sys.stderr)
        result["fuzz"] = run_fuzz(args, work, seeds_dir, max_len=max(4096, 2 * max(len(d) for d in seeds.values())))
        found += len(result["fuzz"]["findings"])
    if not args.no_limits:
        print("images at the size limit", file=sys.stderr)
        result["limits"] = run_limits(args, work)
        found += sum(r["outcome"] != "decoded" for r in result["limits"])
    if args.replay:
        result["replay"] = replay(args.replay, work, args.time_limit, args.growth_mb + 400)
        found += sum(r["outcome"] not in ("decoded", "image_error") for r in result["replay"])
    if not args.no_index:
        print("index run", file=sys.stderr)
        result["index"] = run_index_stage(args, work, seeds)
        found += bool(result["index"]["problems"])
    if args.corpus:
        print(f"corpus {args.corpus}", file=sys.stderr)
        result["corpus"] = run_corpus(args, work)
        result["corpus"]["source"] = args.corpus_source.format(pillow=PIL.__version__)
        found += len(result["corpus"]["problems"]) + bool(result["corpus"].get("index", {}).get("problems"))
    sys.path.insert(0, str(HERE.parent))
    from common import save

    path = save(args.name, result)
    _write_markdown(json.loads(path.read_text()))
    print(f"written to {path} and {path.with_suffix('.md')}; {found} problems", file=sys.stderr)
    sys.exit(1 if found else 0)


def _write_markdown(result: dict[str, Any]) -> None:
    before_path = RESULTS / "fuzz_before_fixes.json"
    before = json.loads(before_path.read_text()) if before_path.exists() and result["name"] != "fuzz_before_fixes" \
        else None
    (RESULTS / f"{result['name']}.md").write_text(markdown(result, before))
    print((RESULTS / f"{result['name']}.md").read_text())


if __name__ == "__main__":
    main()
