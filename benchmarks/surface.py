"""The whole user-visible surface of blipsearch, recorded on the offline demo library: every CLI
command (its argv, exit code, stdout, stderr) and every HTTP route (status, content type, headers,
body), so that two snapshots (before and after a refactor, say) can be compared byte for byte.

    PYTHONPATH=SRC python benchmarks/surface.py OUT.json [--workdir DIR]
    python benchmarks/surface.py --compare A.json B.json

The product is driven only from outside: `python -m blipsearch.cli ...` subprocesses (with the
caller's PYTHONPATH passed through, so PYTHONPATH picks the source tree under test) and HTTP
requests to a real `python -m blipsearch.cli serve --port 0`. Nothing of blipsearch is imported
here, so the script works with any internal layout of the package.

What it does, in order (all in DIR, default /tmp/blipsearch-surface, wiped first):

1. builds `make demo`'s library: `demo-photos DIR/photos`, then `index DIR/photos --model
   builtin:shapes --library DIR/library --captions`; adds a text collection (csv, jsonl, lines),
   tags (`index --tags`) and a folder `extra/` with a byte copy, a resized copy, a JPEG with EXIF
   camera and date, a broken file and a non-image (for duplicates, filters and failures).
   Commands that need no library (`--help` of every command, `--version`, `eval`, `convert`,
   `demo-photos`, a brief `watch` on a folder of its own, usage errors) run beside the build;
2. runs every command with BLIPSEARCH_IN_PROCESS=1, the read-only ones two at a time (--jobs):
   each command that loads a model a few times (every output form and code path once), the
   cheap ones (--no-rerank, filters, duplicates, status, ...) and error cases in full; then, one
   at a time, the commands that write (caption, texts remove, index --recall-target, ...);
3. starts `serve` and requests every route with typical and bad parameters; while it runs, the
   commands it answers (search, similar, lookup, caption, ask) run again through its engine
   socket (without BLIPSEARCH_IN_PROCESS), with the whole option matrix, since there each costs
   0.3 s instead of the 5 s of loading a model; then a second server with --token and
   --allow-host, and a serve on a port in use.

Outputs are normalized for what differs between two runs of the same code: the work folder
(`<WORK>`), the package's own folder (`<SRC>`), the servers' ports (`<PORT>`), and the times of
the run in JSON bodies (`modified`, `indexed_at`: `<TIME>`); headers `date`, `content-length`,
`last-modified`, and the etag of static files (made from their mtime), are left out. The
environment of every command is fixed (see ``environment``). Compare snapshots made with the same
--workdir: `--hybrid`'s keyword scores count the words of the paths, the work folder's included.
Per-command times go to DIR/timings.json, not into the snapshot.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = Path("/tmp/blipsearch-surface")
QUERY = "a red circle left of a blue square"
TEXT_TYPES = ("text/", "application/json", "application/javascript", "image/svg+xml")
MAX_TEXT_BODY = 200_000  # larger text bodies (swagger-ui's bundle) are recorded by hash
# Headers that say when or how long, not what: the date, the length (its body is compared), and the
# file times (of the package's static files, of thumbnails made during the run).
SKIPPED_HEADERS = {"date", "content-length", "last-modified"}


# Times of the run itself in JSON bodies: the files' modification times (the pictures are written by
# the run) and when each image was indexed.
TIME_KEYS = {"modified", "indexed_at"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- normalization ----------------------------------------------------------------------------------
class Normalizer:
    def __init__(self, work: Path) -> None:
        self.replacements: list[tuple[str, str]] = []
        self.ports: set[int] = set()
        for path in {str(work), os.path.realpath(work)}:
            self.add(path, "<WORK>")

    def add(self, value: str, token: str) -> None:
        for variant in (value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value),
                        urllib.parse.quote_plus(value), json.dumps(value)[1:-1]):
            if variant and (variant, token) not in self.replacements:
                self.replacements.append((variant, token))
        self.replacements.sort(key=lambda r: -len(r[0]))  # longest first: a path before its parents

    def text(self, value: str) -> str:
        for old, new in self.replacements:
            value = value.replace(old, new)
        for port in sorted(self.ports, reverse=True):
            value = re.sub(rf"(?<![0-9]){port}(?![0-9])", "<PORT>", value)
        return value

    def value(self, value: Any) -> Any:
        """A parsed JSON body: strings normalized, file times masked."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: ("<TIME>" if k in TIME_KEYS and v is not None else self.value(v)) for k, v in value.items()}
        return value


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# -- the recorder -------------------------------------------------------------------------------------
class Surface:
    def __init__(self, work: Path, python: str) -> None:
        self.work = work
        self.python = python
        self.norm = Normalizer(work)
        self.entries: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.env = environment(work)
        self.engine_times: list[float] = []
        self.timings: dict[str, float] = {}  # not part of the snapshot: written beside it, for tuning

    # names are reserved in call order, so the snapshot's order does not depend on the pool's timing
    def reserve(self, name: str) -> str:
        with self.lock:
            base, n = name, 2
            while name in self.entries:
                name, n = f"{base} #{n}", n + 1
            self.entries[name] = {}
            return name

    def store(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.entries[name] = entry
        return entry

    # -- the command line --------------------------------------------------------------------------
    def cli_task(self, *args: str | bytes | Path, engine: bool = False, files: tuple[Path, ...] = (),
                 exists: tuple[Path, ...] = (), timeout: float = 300, name: str | None = None,
                 env: dict[str, str] | None = None) -> Callable[[], dict[str, Any]]:
        """A command to run later (in a pool); its entry's place in the snapshot is taken now."""
        argv = [a if isinstance(a, bytes) else str(a) for a in args]
        shown = ["blipsearch", *[self.norm.text(decode(a) if isinstance(a, bytes) else a) for a in argv]]
        key = self.reserve(name or ("cli" + (" [engine]" if engine else "") + ": " + " ".join(shown[1:])))

        def run() -> dict[str, Any]:
            command_env = dict(self.env)
            if engine:
                command_env.pop("BLIPSEARCH_IN_PROCESS", None)
            command_env.update(env or {})
            start = time.perf_counter()
            done = subprocess.run([self.python, "-m", "blipsearch.cli", *argv], env=command_env,
                                  cwd=self.work, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  check=False)
            took = time.perf_counter() - start
            self.timings[key] = took
            if engine:
                self.engine_times.append(took)
            entry: dict[str, Any] = {"kind": "cli", "argv": shown,
                                     "in_process": not engine, "exit_code": done.returncode,
                                     "stdout": self.norm.text(decode(done.stdout)),
                                     "stderr": self.norm.text(decode(done.stderr))}
            if env:
                entry["env"] = env
            if files:
                entry["files"] = {self.norm.text(str(f)): (sha256(f.read_bytes()) if f.is_file() else None)
                                  for f in files}
            if exists:
                entry["exists"] = {self.norm.text(str(p)): p.exists() for p in exists}
            return self.store(key, entry)

        return run

    def cli(self, *args: str | bytes | Path, **options: Any) -> dict[str, Any]:
        return self.cli_task(*args, **options)()

    def note(self, name: str, entry: dict[str, Any]) -> None:
        self.store(self.reserve(name), entry)

    # -- HTTP ----------------------------------------------------------------------------------------
    def http(self, port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, name: str | None = None, server: str = "serve") -> dict[str, Any]:
        shown = self.norm.text(path)
        key = self.reserve(name or f"http [{server}]: {method} {shown}" + (
            " " + self.norm.text(json.dumps(headers, sort_keys=True)) if headers else ""))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        entry: dict[str, Any] = {"kind": "http", "server": server, "method": method, "path": shown}
        if headers:
            entry["request_headers"] = {k: self.norm.text(v) for k, v in headers.items()}
        if body is not None:
            entry["request_body"] = {"sha256": sha256(body), "size": len(body)}
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            entry["error"] = type(exc).__name__
            return self.store(key, entry)
        finally:
            connection.close()
        kind = response.getheader("content-type", "")
        entry["status"] = response.status
        entry["content_type"] = kind
        found = {k.lower(): v for k, v in response.getheaders()}
        static = path.startswith(("/static/", "/docs/assets/"))  # StaticFiles' etag is made from the mtime
        skipped = SKIPPED_HEADERS | ({"etag"} if static else set())
        entry["headers"] = {k: self.norm.text(v) for k, v in sorted(found.items()) if k not in skipped}
        if kind.startswith("application/json") and len(data) <= MAX_TEXT_BODY:
            entry["json"] = self.norm.value(json.loads(data))
        elif kind.startswith(TEXT_TYPES) and len(data) <= MAX_TEXT_BODY:
            entry["text"] = self.norm.text(decode(data))
        else:
            entry["sha256"], entry["size"] = sha256(data), len(data)
        return self.store(key, entry)

    def snapshot(self) -> dict[str, Any]:
        return {"format": "blipsearch-surface/1", "entries": self.entries}


def environment(work: Path) -> dict[str, str]:
    """The same environment for every command of every run: the caller's, without any BLIPSEARCH_*
    setting, with the user folders inside the work folder (runtime socket, caches, the default
    library), one compute thread (the same numbers whatever else the machine does), UTC, a fixed
    terminal width for --help, a fixed hash seed, and no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLIPSEARCH_")}
    env.update({
        "BLIPSEARCH_IN_PROCESS": "1",
        "BLIPSEARCH_ENGINE": "off",  # (commands run without BLIPSEARCH_IN_PROCESS start no background engine)
        "BLIPSEARCH_THREADS": "1",
        "XDG_RUNTIME_DIR": str(work / "run"),
        "XDG_CACHE_HOME": str(work / "cache"),
        "XDG_DATA_HOME": str(work / "data"),
        "XDG_CONFIG_HOME": str(work / "config"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "COLUMNS": "80",
        "LINES": "24",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TERM": "dumb",
    })
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    return env


# -- inputs -----------------------------------------------------------------------------------------
def make_inputs(work: Path, photos: Path) -> dict[str, Path]:
    """Text files and extra pictures (Pillow only: it comes with the package's requirements)."""
    from PIL import Image

    images = photos / "images"
    inputs = {
        "texts_csv": work / "inputs" / "texts.csv",
        "texts_jsonl": work / "inputs" / "texts.jsonl",
        "texts_lines": work / "inputs" / "texts.txt",
        "labels": work / "inputs" / "labels.txt",
        "colors": work / "inputs" / "colors.txt",
        "shapes": work / "inputs" / "shapes.txt",
        "empty": work / "inputs" / "empty.txt",
        "bad_csv": work / "inputs" / "bad.csv",
        "not_utf8": work / "inputs" / "latin1.txt",
        "captions8": work / "inputs" / "captions8.jsonl",
        "bad_pth": work / "inputs" / "bad.pth",
        "outside": work / "inputs" / "outside.png",
        "big": work / "inputs" / "big.png",
    }
    (work / "inputs").mkdir()
    inputs["texts_csv"].write_text("id,text,color\nsku-1,an orange square left of a green star,orange\n"
                                   "sku-2,a blue square left of a yellow square,blue\n"
                                   "sku-3,a green star left of a green square,green\n")
    inputs["texts_jsonl"].write_text('{"id": "j-1", "text": "a red circle left of a blue square", "shop": "a"}\n'
                                     '{"text": "a yellow triangle right of a purple circle"}\n')
    inputs["texts_lines"].write_text("a purple star left of a red triangle\n\nan orange circle\n"
                                     "a blue square left of a yellow square\n")
    inputs["labels"].write_text("red circle\nblue square\ngreen star\nyellow triangle\norange square\n")
    inputs["colors"].write_text("red\nblue\ngreen\nyellow\norange\npurple\n")
    inputs["shapes"].write_text("circle\nsquare\nstar\ntriangle\n")
    inputs["empty"].write_text("\n\n")
    inputs["bad_csv"].write_text("name,colour\na,b\n")
    inputs["not_utf8"].write_bytes(b"caf\xe9 au lait\n")
    lines = (photos / "captions.jsonl").read_text().splitlines()[:8]
    inputs["captions8"].write_text("\n".join(lines) + "\n")
    inputs["bad_pth"].write_bytes(b"this is not a checkpoint\n" * 4)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(inputs["outside"])
    Image.new("RGB", (1200, 1000), (10, 120, 200)).save(inputs["big"])

    extra = work / "extra"
    extra.mkdir()
    shutil.copyfile(images / "00001.png", extra / "copy-of-00001.png")
    with Image.open(images / "00002.png") as im:
        im.resize((128, 128), Image.BICUBIC).save(extra / "00002-large.png")
        exif = Image.Exif()
        exif[0x010F] = "Canon"
        exif[0x0110] = "Canon EOS 5D"
        exif.get_ifd(0x8769)[0x9003] = "2021:06:15 12:30:00"
        im.convert("RGB").save(extra / "camera.jpg", "JPEG", quality=95, exif=exif.tobytes())
    (extra / "broken.png").write_bytes((images / "00003.png").read_bytes()[:120])
    (extra / "notes.txt").write_text("not a picture\n")
    return inputs


# -- the run ----------------------------------------------------------------------------------------
def run(out: Path, work: Path, python: str, jobs: int) -> None:
    started = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "run").mkdir(mode=0o700)
    os.chmod(work / "run", 0o700)
    s = Surface(work, python)
    where = subprocess.run([python, "-c", "import blipsearch, os; print(os.path.dirname(blipsearch.__file__))"],
                           env=s.env, capture_output=True, text=True, check=True).stdout.strip()
    print(f"blipsearch from {where}", file=sys.stderr)
    s.norm.add(where, "<SRC>")
    s.norm.add(os.path.dirname(where), "<SRC_ROOT>")

    photos, lib, extra = work / "photos", work / "library", work / "extra"
    images = photos / "images"
    img1, img2, img3 = images / "00001.png", images / "00002.png", images / "00003.png"
    L = ("--library", str(lib))
    missing = work / "no-such-library"

    def phase(title: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {title}", file=sys.stderr, flush=True)

    # Every entry's place in the snapshot is taken here, in this order, before anything runs side by side.
    phase("the demo pictures")
    s.cli("demo-photos", photos)
    inputs = make_inputs(work, photos)

    # 1. the demo library as `make demo` builds it; then texts, tags, and the extra folder (one after another)
    build: list[Callable[[], Any]] = []
    b = build.append
    b(s.cli_task("index", photos, "--model", "builtin:shapes", *L, "--captions"))
    b(s.cli_task("status", *L))
    b(s.cli_task("status", *L, "--json"))
    b(s.cli_task("texts", "list", *L))
    b(s.cli_task("texts", "add", inputs["texts_csv"], *L))
    b(s.cli_task("texts", "add", inputs["texts_jsonl"], *L, "--json"))
    b(s.cli_task("texts", "add", inputs["texts_lines"], "--format", "lines", *L))
    b(s.cli_task("index", photos, extra, *L, "--tags", inputs["labels"], "--template", "a {}", "--tags-k", "3"))
    b(s.cli_task("index", photos, extra, *L, "--json"))
    b(s.cli_task("index", img3, *L))
    b(s.cli_task("lookup", img2, *L, "--source", "captions", "-k", "3"))  # embeds the captions, before the readers

    # commands that need no library, or refuse their arguments before opening one: beside the build
    free: list[Callable[[], Any]] = []
    f = free.append
    f(s.cli_task("--version"))
    f(s.cli_task("--help"))
    f(s.cli_task("-h"))
    f(s.cli_task())
    f(s.cli_task("no-such-command"))
    for path in commands(s):  # --help of every command and subcommand
        f(s.cli_task(*path, "--help"))
    f(watch_task(s, work, images))
    f(s.cli_task("eval", photos, inputs["captions8"], "--model", "builtin:shapes", "--json"))
    f(s.cli_task("eval", photos, inputs["captions8"], "--model", "builtin:shapes", "--rerank-depth", "4"))
    f(s.cli_task("eval", photos, work / "no-such.jsonl", "--model", "builtin:shapes"))
    f(s.cli_task("convert", inputs["bad_pth"], work / "converted", "--json"))
    f(s.cli_task("convert", work / "no-such.pth", work / "converted"))
    f(s.cli_task("convert", inputs["bad_pth"], work / "converted", "--head", "everything"))
    small = work / "demo-small"
    f(s.cli_task("demo-photos", small, "--count", "3", "--seed", "2",
                 files=(small / "captions.jsonl", small / "images" / "00000.png", small / "images" / "00001.png",
                        small / "images" / "00002.png")))
    f(s.cli_task("demo-photos", photos))
    f(s.cli_task("demo-photos", work / "demo-zero", "--count", "0"))
    f(s.cli_task("status", name="cli: status (the default library, which does not exist)", exists=(work / "data",)))
    f(s.cli_task("status", "--library", missing, exists=(missing,)))
    f(s.cli_task("upgrade", "--library", missing, exists=(missing,)))
    f(s.cli_task("texts", "list", "--library", missing, exists=(missing,)))
    f(s.cli_task("duplicates", "--library", missing, exists=(missing,)))
    f(s.cli_task("search", QUERY, "--library", missing, exists=(missing,)))
    f(s.cli_task("similar", img1, "--library", missing, exists=(missing,)))
    f(s.cli_task("serve", "--library", missing, exists=(missing,)))
    f(s.cli_task("index", work / "no-such-folder", "--library", work / "lib-x", exists=(work / "lib-x",)))
    f(s.cli_task("watch", work / "no-such-folder", *L))
    f(s.cli_task("watch", img1, *L))
    f(s.cli_task("serve", *L, "--port", "70000"))
    f(s.cli_task("serve", *L, "--max-upload-mb", "0"))
    f(s.cli_task("index", *L))
    f(s.cli_task("index", photos, *L, "--recall-target", "1.5"))
    f(s.cli_task("index", photos, *L, "--engine", "spark"))
    f(s.cli_task("search"))
    f(s.cli_task("search", "", *L))
    f(s.cli_task("search", "   ", *L))
    f(s.cli_task("search", QUERY, *L, "-k", "0"))
    f(s.cli_task("search", QUERY, *L, "-k", "abc"))
    f(s.cli_task("search", QUERY, *L, "--rerank-depth", "-1"))
    f(s.cli_task("search", QUERY, *L, "--after", "yesterdayish"))
    f(s.cli_task("search", QUERY, *L, "--min-size", "0x-3"))
    f(s.cli_task("search", QUERY, *L, "--format", "bogus"))
    f(s.cli_task("search", QUERY, *L, "--min-probability", "-1", "--tag", "x"))
    f(s.cli_task("search", QUERY, *L, "--json", "--paths"))
    f(s.cli_task("search", QUERY, *L, "--max-megapixels", "0"))
    f(s.cli_task("search", b"caf\xe9", *L, "--no-rerank"))
    f(s.cli_task("similar", work / "no-such.png", *L))
    f(s.cli_task("duplicates", *L, "--threshold", "0"))
    f(s.cli_task("lookup", work / "no-such.png", *L))
    f(s.cli_task("lookup", img2, *L, "--source", "everything"))
    f(s.cli_task("tag", img2, *L))
    f(s.cli_task("ask", img1, *L))
    f(s.cli_task("explain", img1, "", "--out", work / "x.png", *L))
    f(s.cli_task("explain", img1, "a green star", *L))
    f(s.cli_task("explain", img1, "a green star", "--out", work / "x.png", "--size", "8", *L))
    f(s.cli_task("caption", img1, *L, "--beams", "0"))
    f(s.cli_task("texts", "add", work / "no-such.txt", *L))
    f(s.cli_task("texts", "add", inputs["texts_csv"], *L, "--format", "xml"))
    f(s.cli_task("texts", "remove", *L))
    f(s.cli_task("texts", "frobnicate", *L))

    # 2. the commands that read the library, in-process: each command once with the model (the option
    # matrix runs again, cheaply, through a running server's engine below), and the cheap paths in full
    reads: list[Callable[[], Any]] = []
    r = reads.append
    r(s.cli_task("search", QUERY, *L, "-k", "5"))
    r(s.cli_task("search", QUERY, *L, "-k", "6", "--json", "--rerank-depth", "4"))
    r(s.cli_task("search", "a square", *L, "--and", "2*a green star", "--not", "a blue square", "--like", img1,
                 "--unlike", "5", "--hybrid", "-k", "5", "--json"))
    r(s.cli_task("search", QUERY, *L, "--ask", "is there a red circle?", "--answer", "yes", "-k", "3",
                 "--examine", "20", "--caption"))
    r(s.cli_task("search", QUERY, *L, "--ask", "what color is the circle on the left?", "--answer", "red",
                 "--choices", inputs["colors"], "-k", "3", "--json"))
    r(s.cli_task("search", QUERY, *L, "--no-rerank", "--json"))
    r(s.cli_task("search", QUERY, *L, "--no-rerank", "-k", "25"))
    r(s.cli_task("search", QUERY, *L, "--rerank-depth", "0", "-k", "3", "--paths"))
    r(s.cli_task("search", QUERY, *L, "--no-rerank", "-k", "3", "-0"))
    r(s.cli_task("search", "copy", *L, "--hybrid", "--no-rerank", "-k", "3"))
    r(s.cli_task("search", "a square", *L, "--like", "0.5*" + str(img2), "--unlike", "3", "--no-rerank", "-k", "3"))
    r(s.cli_task("search", "a square", *L, "--tag", "blue square", "--min-probability", "0", "--no-rerank", "-k", "3"))
    r(s.cli_task("search", "a square", *L, "--tag", "blue square", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--folder", extra, "--no-rerank", "--json"))
    r(s.cli_task("search", QUERY, *L, "--folder", extra, "--folder", images, "--no-rerank", "-k", "3"))
    r(s.cli_task("search", QUERY, *L, "--after", "2021", "--before", "2022", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--after", "2021-06-15T12:00", "--before", "2021-07", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--camera", "canon", "--no-rerank", "--json"))
    r(s.cli_task("search", QUERY, *L, "--camera", "nikon", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--min-size", "100x100", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--format", "jpeg", "--no-rerank", "--paths"))
    r(s.cli_task("search", QUERY, *L, "--format", "png,jpeg", "--format", "webp", "--no-rerank", "-k", "3"))
    r(s.cli_task("search", QUERY, *L, "--answer", "yes"))
    r(s.cli_task("search", QUERY, *L, "--choices", inputs["colors"]))
    r(s.cli_task("search", QUERY, *L, "--ask", "what color?", "--answer", "pink", "--choices", inputs["colors"]))
    r(s.cli_task("search", QUERY, *L, "--ask", "what color?", "--choices", inputs["empty"]))
    r(s.cli_task("search", QUERY, *L, "--like", "99999", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--like", work / "no-such.png", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--and", "", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--model", "builtin:nope", "--no-rerank"))
    r(s.cli_task("search", QUERY, *L, "--device", "cuda:7", "-k", "2"))
    r(s.cli_task("similar", img1, *L, "-k", "5"))
    r(s.cli_task("similar", img1, *L, "-k", "3", "--json"))
    r(s.cli_task("similar", img1, *L, "-k", "3", "--paths0"))
    r(s.cli_task("similar", img1, *L, "--folder", extra, "--json"))
    r(s.cli_task("similar", img1, *L, "--tag", "green star", "--min-probability", "0", "-k", "3"))
    r(s.cli_task("similar", inputs["outside"], *L, "-k", "3"))
    r(s.cli_task("similar", extra / "notes.txt", *L))
    r(s.cli_task("duplicates", *L))
    r(s.cli_task("duplicates", *L, "--json"))
    r(s.cli_task("duplicates", *L, "--paths"))
    r(s.cli_task("duplicates", *L, "-0", "--threshold", "0.97"))
    r(s.cli_task("duplicates", *L, "--threshold", "0.999", "--folder", extra, "--json"))
    r(s.cli_task("duplicates", *L, "--threshold", "1"))
    r(s.cli_task("duplicates", *L, "--format", "jpeg"))
    r(s.cli_task("duplicates", *L, "--threshold", "1.5"))
    r(s.cli_task("lookup", img2, *L, "-k", "4", "--json"))
    r(s.cli_task("tag", img1, img2, "--labels", inputs["labels"], *L, "-k", "3"))
    r(s.cli_task("tag", img2, extra / "notes.txt", "--labels", inputs["labels"], *L, "--template", "a {}", "--json",
                 "--rerank-depth", "0"))
    r(s.cli_task("ask", img1, img2, "what shape is on the right?", *L))
    r(s.cli_task("ask", img1, extra / "notes.txt", "is there a red star?", *L, "--choices", inputs["shapes"],
                 "--shortlist", "2", "--json"))
    r(s.cli_task("ask", img1, "what?", *L, "--choices", inputs["empty"]))
    r(s.cli_task("ask", img1, "what?", *L, "--choices", inputs["not_utf8"]))
    r(s.cli_task("ask", img1, "", *L))
    heat1, heat2 = work / "heat.png", work / "heat-small.png"
    r(s.cli_task("explain", img1, "a green star", "--out", heat1, *L, "--json", files=(heat1,)))
    r(s.cli_task("explain", img2, QUERY, "--out", heat2, "--size", "64", *L, files=(heat2,)))
    r(s.cli_task("status", *L))
    r(s.cli_task("status", *L, "--json"))
    r(s.cli_task("upgrade", *L))
    r(s.cli_task("upgrade", *L, "--json"))
    r(s.cli_task("failures", *L))
    r(s.cli_task("failures", *L, "--json"))
    r(s.cli_task("texts", "list", *L, "--json"))
    r(s.cli_task("texts", "add", inputs["bad_csv"], *L))
    r(s.cli_task("texts", "add", inputs["not_utf8"], *L))
    r(s.cli_task("texts", "remove", "no-such-id", "424242", *L))
    r(s.cli_task("index", photos, *L, "--tags", inputs["labels"], "--template", "no braces"))
    r(s.cli_task("index", photos, *L, "--ray-address", "auto"))
    r(s.cli_task("caption", img1, *L, "--min-length", "30", "--max-length", "10"))
    r(s.cli_task("index", photos, *L, "--min-length", "30", "--max-length", "10"))

    # 3. commands that write to the library, one at a time, after the readers
    writes: list[Callable[[], Any]] = []
    w = writes.append
    w(s.cli_task("caption", img1, img2, extra / "camera.jpg", inputs["outside"], *L))
    w(s.cli_task("caption", img1, *L, "--prompt", "a photo of ", "--beams", "1", "--max-length", "12",
                 "--length-rule", "transformers", "--json"))
    w(s.cli_task("texts", "remove", "sku-3", *L))
    w(s.cli_task("texts", "remove", "1", "j-1", *L))
    w(s.cli_task("texts", "list", *L))
    w(s.cli_task("index", photos, extra, *L, "--recall-target", "0.9", "--json"))
    w(s.cli_task("status", *L, "--json"))
    w(s.cli_task("index", photos, extra, *L, "--retry-failed", "--no-thumbnails"))
    w(lambda: (extra / "broken.png").unlink())
    w(s.cli_task("index", extra, *L, "--json"))
    w(s.cli_task("failures", *L))
    w(s.cli_task("status", *L))

    phase(f"{len(build)} commands building the library, {len(free)} beside them")
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        chain = pool.submit(lambda: [task() for task in build])
        pending = [pool.submit(task) for task in free]
        chain.result()
        phase(f"{len(reads)} commands reading the library")
        pending += [pool.submit(task) for task in reads]
        for future in pending:
            future.result()
    phase(f"{len(writes) - 1} commands writing to it")
    for task in writes:
        task()

    # 4. the web app, and the terminal's engine ---------------------------------------------------------
    phase("serve, and the commands it answers")
    exercise_server(s, lib, photos, extra, inputs)
    phase("serve with a token")
    exercise_token_server(s, lib)

    engine_times = sorted(s.engine_times)
    if engine_times and engine_times[len(engine_times) // 2] > 2.5:
        print(f"warning: commands run with `serve` took {engine_times} s: the engine socket was probably not "
              "used", file=sys.stderr)
    out.write_text(json.dumps(s.snapshot(), indent=1, ensure_ascii=True) + "\n")
    (work / "timings.json").write_text(json.dumps(dict(sorted(s.timings.items(), key=lambda kv: -kv[1])), indent=1))
    cli_n = sum(e.get("kind") == "cli" for e in s.entries.values())
    http_n = sum(e.get("kind") == "http" for e in s.entries.values())
    phase(f"done: {len(s.entries)} entries ({cli_n} CLI, {http_n} HTTP, "
          f"{len(s.entries) - cli_n - http_n} serve) written to {out}")


def commands(s: Surface) -> list[list[str]]:
    """Every command path: those `--help` lists (groups' subcommands too), and those this script
    knows, so that one gone missing is still asked for (and shows as an error)."""
    known = ["index", "watch", "search", "caption", "ask", "similar", "duplicates", "texts", "lookup", "tag",
             "demo-photos", "convert", "status", "upgrade", "failures", "serve", "explain", "eval"]
    known_sub = {"texts": ["add", "list", "remove"]}

    def listed(*path: str) -> list[str]:
        done = subprocess.run([s.python, "-m", "blipsearch.cli", *path, "--help"], env=s.env, capture_output=True,
                              text=True, check=False)
        names, inside = [], False
        for line in done.stdout.splitlines():
            if line.strip() == "Commands:":
                inside = True
            elif inside and line.startswith("  ") and line.strip():
                if not line.startswith("   "):
                    names.append(line.split()[0])
            elif inside and line.strip():
                inside = False
        return names

    found = listed()
    paths: list[list[str]] = []
    for name in dict.fromkeys(found + known):
        paths.append([name])
        subs = listed(name) if name in found else []
        for sub in dict.fromkeys(subs + known_sub.get(name, [])):
            paths.append([name, sub])
    return paths


def watch_task(s: Surface, work: Path, images: Path) -> Callable[[], None]:
    """`watch` on a folder of its own: its first run, then a file moved in, then Ctrl-C."""
    folder, library = work / "watched", work / "watch-library"
    argv = ["watch", str(folder), "--model", "builtin:shapes", "--library", str(library), "--settle", "0.5",
            "--json"]
    shown = ["blipsearch", *[s.norm.text(a) for a in argv]]
    key = s.reserve("cli: " + " ".join(shown[1:]) + " (then a file moved in, then SIGINT)")

    def run() -> None:
        folder.mkdir()
        for name in ("00010.png", "00011.png", "00012.png"):
            shutil.copyfile(images / name, folder / name)
        process = subprocess.Popen([s.python, "-m", "blipsearch.cli", *argv], env=s.env, cwd=work,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        lines: list[bytes] = []
        errors: list[bytes] = []
        got = threading.Condition()

        def read(stream: Any, into: list[bytes]) -> None:
            for line in stream:
                with got:
                    into.append(line)
                    got.notify_all()

        readers = [threading.Thread(target=read, args=(process.stdout, lines), daemon=True),
                   threading.Thread(target=read, args=(process.stderr, errors), daemon=True)]
        for reader in readers:
            reader.start()

        def wait_for(count: int, timeout: float) -> bool:
            with got:
                return got.wait_for(lambda: len(lines) >= count or process.poll() is not None, timeout)

        ok = wait_for(1, 180)
        if ok and process.poll() is None:
            staged = work / "staged.png"
            shutil.copyfile(images / "00013.png", staged)
            os.rename(staged, folder / "moved-in.png")  # one event: the file appears whole
            ok = wait_for(2, 60)
        if process.poll() is None:
            time.sleep(0.3)
            process.send_signal(signal.SIGINT)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        for reader in readers:
            reader.join(10)
        s.store(key, {"kind": "cli", "argv": shown, "in_process": True, "exit_code": code,
                      "stdout": s.norm.text(decode(b"".join(lines))),
                      "stderr": s.norm.text(decode(b"".join(errors))), "timed_out": not ok})

    return run


class Server:
    """`blipsearch serve --port 0 ...` in a subprocess: its address from the line that says "Serving"."""

    def __init__(self, s: Surface, *args: str) -> None:
        self.s = s
        self.argv = ["serve", "--port", "0", *args]
        self.process = subprocess.Popen([s.python, "-m", "blipsearch.cli", *self.argv], env=s.env, cwd=s.work,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.err: list[bytes] = []
        self.out: list[bytes] = []
        assert self.process.stderr is not None and self.process.stdout is not None
        while True:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError("blipsearch serve did not start:\n" + decode(b"".join(self.err)))
            self.err.append(line)
            if b"Serving" in line:
                break
        match = re.search(rb"http://[^/\s]+:(\d+)/", line)
        assert match, line
        self.port = int(match.group(1))
        s.norm.ports.add(self.port)
        self.readers = [threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
                        threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True)]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[bytes]) -> None:
        into.extend(stream)

    def stop(self, name: str) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for reader in self.readers:
            reader.join(10)
        self.s.note(name, {"kind": "serve", "argv": ["blipsearch", *[self.s.norm.text(a) for a in self.argv]],
                           "exit_code": code, "stdout": self.s.norm.text(decode(b"".join(self.out))),
                           "stderr": self.s.norm.text(decode(b"".join(self.err)))})


def exercise_server(s: Surface, lib: Path, photos: Path, extra: Path, inputs: dict[str, Path]) -> None:
    server = Server(s, "--library", str(lib), "--max-upload-mb", "1", "--max-upload-megapixels", "1")
    port = server.port
    q = urllib.parse.quote
    try:
        def get(path: str, **options: Any) -> dict[str, Any]:
            return s.http(port, "GET", path, **options)

        def post(path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
            return s.http(port, "POST", path, body=body, headers=headers)

        found = get("/api/images?k=500")["json"]["images"]
        ids = {s.norm.text(image["path"]).replace("<WORK>/", ""): image["id"] for image in found}
        i1 = ids["photos/images/00001.png"]
        i2 = ids["photos/images/00002.png"]
        camera = ids["extra/camera.jpg"]
        unknown = 999_999
        # pages and documents
        get("/")
        get(f"/?q={q(QUERY)}&folder={q(str(photos))}&after=2021&tag=blue+square")
        get(f"/?like={i1}&image={i2}")
        get("/failures")
        get("/docs")
        get("/openapi.json")
        for asset in ("/static/app.js", "/static/style.css", "/static/docs.js", "/static/favicon.svg",
                      "/docs/assets/swagger-ui.css", "/docs/assets/swagger-ui-bundle.js", "/static/no-such.js"):
            get(asset)
        # search
        base = f"/api/search?q={q(QUERY)}"
        for query in ("", "&k=5", "&k=3&offset=2", "&k=5&no_rerank=true", "&k=5&rerank_depth=4",
                      "&k=5&rerank_depth=0", "&k=3&hybrid=true", f"&k=5&and={q('2*a green star')}&not=a+blue+square",
                      f"&k=5&like={i1}&unlike={i2}", "&k=3&tag=blue+square&min_probability=0", "&k=3&tag=blue+square",
                      f"&folder={q(str(extra))}&no_rerank=true", f"&folder={q(str(extra))}&folder={q(str(photos))}&k=3",
                      "&after=2021&before=2022", "&camera=canon", "&min_size=100x100&no_rerank=true",
                      "&format=jpeg", "&format=png&format=jpeg&k=3&no_rerank=true", "&k=500&no_rerank=true&offset=190"):
            get(base + query)
        for bad in ("/api/search", "/api/search?q=", f"{base}&k=0", f"{base}&k=abc", f"{base}&k=501",
                    f"{base}&offset=-1", f"{base}&rerank_depth=1001", f"{base}&after=yesterdayish",
                    f"{base}&min_size=0x-3", f"{base}&format=bogus", f"{base}&like={unknown}", f"{base}&like=abc",
                    f"{base}&min_probability=2&tag=x", f"{base}&no_rerank=maybe", "/api/search?q=" + "a" * 2001,
                    f"{base}&and=", "/api/search?q=%FF"):
            get(bad)
        # search by image
        picture = inputs["outside"].read_bytes()
        post("/api/search/image?k=3", picture, {"Content-Type": "image/png"})
        post(f"/api/search/image?k=3&folder={q(str(extra))}", (photos / "images" / "00001.png").read_bytes(),
             {"Content-Type": "image/png"})
        post("/api/search/image?k=2&offset=1", picture, {"Content-Type": "application/octet-stream"})
        post("/api/search/image?k=3", picture)
        post("/api/search/image", b"", {"Content-Type": "image/png"})
        post("/api/search/image", b"not an image at all", {"Content-Type": "image/png"})
        post("/api/search/image", picture, {"Content-Type": "application/json"})
        post("/api/search/image", picture, {"Content-Type": "text/plain"})
        post("/api/search/image", inputs["big"].read_bytes(), {"Content-Type": "image/png"})
        post("/api/search/image", bytes(range(256)) * 4097, {"Content-Type": "image/png"})
        post("/api/search/image?k=0", picture, {"Content-Type": "image/png"})
        get("/api/search/image")
        # browse
        for query in ("", "?k=5", "?k=5&offset=3", f"?folder={q(str(extra))}", "?tag=blue+square&min_probability=0",
                      "?camera=canon", "?format=jpeg", "?after=2021&before=2022", "?k=0", "?offset=100001",
                      "?after=never"):
            get("/api/images" + query)
        # one image
        for image_id in (i1, camera):
            get(f"/api/images/{image_id}")
        for bad in (str(unknown), "0", "-1", "abc", str(2**63)):
            get(f"/api/images/{bad}")
        get(f"/api/images/{i1}/similar?k=5")
        get(f"/api/images/{i1}/similar?k=3&offset=1&folder={q(str(extra))}")
        get(f"/api/images/{i1}/similar?tag=green+star&min_probability=0&k=3")
        get(f"/api/images/{unknown}/similar")
        get(f"/api/images/{i1}/similar?k=0")
        details = s.entries[f"http [serve]: GET /api/images/{i1}"]["json"]
        version = details["thumbnail"].split("?v=")[1] if "?v=" in details["thumbnail"] else ""
        for kind in ("thumbnail", "preview"):
            get(f"/api/images/{i1}/{kind}")
            got = get(f"/api/images/{i1}/{kind}?v={version}")
            get(f"/api/images/{i1}/{kind}", headers={"If-None-Match": got["headers"].get("etag", '"x"')})
            get(f"/api/images/{i1}/{kind}?v=00000000")
            get(f"/api/images/{unknown}/{kind}")
        get(f"/api/images/{camera}/thumbnail")
        get(f"/api/images/{i1}/original")
        got = get(f"/api/images/{camera}/original")
        get(f"/api/images/{camera}/original", headers={"If-None-Match": got["headers"].get("etag", '"x"')})
        get(f"/api/images/{unknown}/original")
        # describe
        post(f"/api/images/{i1}/caption")
        post(f"/api/images/{camera}/caption")
        post(f"/api/images/{unknown}/caption")
        get(f"/api/images/{i1}/caption")
        ask = f"/api/images/{i1}/ask"
        json_type = {"Content-Type": "application/json"}
        post(ask, b'{"question": "what shape is on the right?"}', json_type)
        post(ask, b'{"question": "what color is the circle on the left?"}', json_type)
        post(ask, b'{"question": ""}', json_type)
        post(ask, b'{}', json_type)
        post(ask, b'not json', json_type)
        post(ask, json.dumps({"question": "x" * 501}).encode(), json_type)
        post(f"/api/images/{unknown}/ask", b'{"question": "what shape?"}', json_type)
        for query in ("", "?k=3", "?k=3&no_rerank=true", "?source=captions&k=3", "?source=everything", "?k=0",
                      "?k=101"):
            get(f"/api/images/{i2}/lookup{query}")
        get(f"/api/images/{unknown}/lookup")
        get(f"/api/images/{i1}/explain?q={q('a green star')}")
        get(f"/api/images/{i2}/explain?q={q(QUERY)}")
        get(f"/api/images/{i1}/explain")
        get(f"/api/images/{i1}/explain?q=")
        get(f"/api/images/{unknown}/explain?q=x")
        # the library
        get("/api/status")
        get("/api/failures")
        get("/api/tags")
        # not routes, wrong methods, refusals
        get("/no-such-page")
        get("/api/no-such-route")
        post("/api/status", b"{}", json_type)
        s.http(port, "DELETE", f"/api/images/{i1}")
        get("/", headers={"Host": "evil.example"})
        get("/api/status", headers={"Host": "evil.example"})
        get("/api/status", headers={"Host": f"localhost:{port}"})
        post(f"/api/images/{i1}/caption", headers={"Origin": "http://evil.example"})
        post(f"/api/images/{i1}/caption", headers={"Origin": "null"})
        post(f"/api/images/{i1}/caption", headers={"Origin": f"http://127.0.0.1:{port}"})
        post(f"/api/images/{i1}/caption", headers={"Sec-Fetch-Site": "cross-site"})
        post(ask, b"question=what", {"Content-Type": "application/x-www-form-urlencoded"})
        get("/?token=abc")

        # the commands a running server answers, through its socket
        phase_engine(s, lib, photos, extra, inputs)
    finally:
        server.stop("serve: --library <WORK>/library (stopped by SIGTERM)")


def phase_engine(s: Surface, lib: Path, photos: Path, extra: Path, inputs: dict[str, Path]) -> None:
    L = ("--library", str(lib))
    img1, img2 = photos / "images" / "00001.png", photos / "images" / "00002.png"
    runtime = s.work / "run" / "blipsearch"
    if not any(runtime.glob("*.sock")):
        print(f"warning: no engine socket in {runtime}", file=sys.stderr)
    i1, i2, out, notes = str(img1), str(img2), str(inputs["outside"]), str(extra / "notes.txt")
    colors, shapes = str(inputs["colors"]), str(inputs["shapes"])
    for args in (
        ("search", QUERY, *L, "-k", "5"),
        ("search", QUERY, *L, "-k", "3", "--json"),
        ("search", QUERY, *L, "-k", "3", "--paths"),
        ("search", QUERY, *L, "-k", "3", "-0"),
        ("search", QUERY, *L, "--no-rerank", "--json"),
        ("search", QUERY, *L, "--no-rerank", "-k", "25"),
        ("search", QUERY, *L, "--rerank-depth", "4", "-k", "6", "--json"),
        ("search", QUERY, *L, "--rerank-depth", "0", "-k", "3"),
        ("search", "a green star", *L, "--hybrid", "-k", "5", "--json"),
        ("search", "copy", *L, "--hybrid", "--no-rerank", "-k", "3"),
        ("search", "a square", *L, "--and", "2*a green star", "--not", "a blue square", "-k", "5"),
        ("search", "a square", *L, "--like", i1, "--unlike", "5", "-k", "5", "--json"),
        ("search", "a square", *L, "--like", "0.5*" + i2, "--no-rerank", "-k", "3"),
        ("search", "a square", *L, "--like", out, "--no-rerank", "-k", "3"),
        ("search", "a square", *L, "--tag", "blue square", "--min-probability", "0", "-k", "3"),
        ("search", "a square", *L, "--tag", "blue square", "-k", "3"),
        ("search", "a square", *L, "--tag", "no such label", "--no-rerank"),
        ("search", QUERY, *L, "--folder", str(extra), "--no-rerank", "--json"),
        ("search", QUERY, *L, "--folder", str(extra), "-k", "2"),
        ("search", QUERY, *L, "--after", "2021", "--before", "2022", "--no-rerank"),
        ("search", QUERY, *L, "--camera", "canon", "--no-rerank"),
        ("search", QUERY, *L, "--min-size", "100x100", "--format", "png"),
        ("search", QUERY, *L, "--format", "jpeg", "--no-rerank", "--paths"),
        ("search", QUERY, *L, "--caption", "-k", "3"),
        ("search", QUERY, *L, "--caption", "-k", "2", "--json"),
        ("search", QUERY, *L, "--ask", "what shape is on the right?", "-k", "3"),
        ("search", QUERY, *L, "--ask", "is there a red circle?", "--answer", "yes", "-k", "3", "--examine", "20"),
        ("search", QUERY, *L, "--ask", "what color is the circle on the left?", "--answer", "red",
         "--choices", colors, "-k", "3", "--json", "--caption"),
        ("search", QUERY, *L, "--ask", "what color?", "--choices", colors, "-k", "2"),
        ("search", QUERY, *L, "--ask", "   ", "-k", "2"),
        ("search", QUERY, *L, "--like", "99999", "--no-rerank"),
        ("search", QUERY, *L, "--answer", "yes"),
        ("search", "", *L),
        ("similar", i1, *L, "-k", "5"),
        ("similar", i1, *L, "-k", "3", "--json"),
        ("similar", i1, *L, "-k", "3", "--paths0"),
        ("similar", out, *L, "-k", "3"),
        ("similar", i1, *L, "--folder", str(extra), "--json"),
        ("similar", i1, *L, "--tag", "green star", "--min-probability", "0", "-k", "3"),
        ("similar", notes, *L),
        ("lookup", i2, *L, "-k", "3"),
        ("lookup", i2, *L, "--json"),
        ("lookup", i2, *L, "--no-rerank", "-k", "4", "--json"),
        ("lookup", out, *L, "--rerank-depth", "2", "-k", "3"),
        ("lookup", i1, *L, "--source", "captions", "--json", "-k", "3"),
        ("lookup", notes, *L),
        ("caption", i1, *L),
        ("caption", i1, i2, str(extra / "camera.jpg"), *L, "--json"),
        ("caption", i1, *L, "--prompt", "a photo of ", "--beams", "1", "--max-length", "12"),
        ("caption", i2, *L, "--length-rule", "transformers", "--json"),
        ("caption", i1, notes, *L),
        ("ask", i1, i2, "what shape is on the right?", *L),
        ("ask", i1, "what color is the circle on the left?", *L, "--json", "--beams", "1"),
        ("ask", i1, i2, "what shape is on the right?", *L, "--choices", shapes, "--json"),
        ("ask", i1, "is there a red star?", *L, "--choices", shapes, "--shortlist", "2"),
        ("ask", i1, notes, "what shape?", *L),
        ("ask", i1, "", *L),
        ("status", *L),
        ("texts", "list", *L),
    ):
        s.cli(*args, engine=True)
    # other library options than the server's: the command works by itself
    s.cli("search", QUERY, *L, "-k", "3", "--itm-token", "cls", engine=True)


def exercise_token_server(s: Surface, lib: Path) -> None:
    token = "surface-token"
    server = Server(s, "--library", str(lib), "--token", token, "--allow-host", "photos.example")
    port = server.port
    try:
        def get(path: str, headers: dict[str, str] | None = None) -> None:
            s.http(port, "GET", path, headers=headers, server="serve --token")

        get("/api/status")
        get("/")
        get("/api/status", {"Authorization": f"Bearer {token}"})
        get("/api/status", {"Authorization": "Bearer wrong"})
        get(f"/?token={token}&q=a+star")
        get("/?token=wrong")
        get("/api/tags", {"Cookie": f"blipsearch_token={token}"})
        get("/api/tags", {"Cookie": "blipsearch_token=wrong"})
        get("/api/status", {"Authorization": f"Bearer {token}", "Host": "photos.example"})
        get("/api/status", {"Authorization": f"Bearer {token}", "Host": "evil.example"})
    finally:
        server.stop("serve: --library <WORK>/library --token ... --allow-host photos.example (stopped by SIGTERM)")
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    s.norm.ports.add(busy)
    try:
        s.cli("serve", "--library", str(lib), "--port", str(busy), name="cli: serve --library <WORK>/library "
              "--port <PORT> (a port in use)")
    finally:
        taken.close()


# -- comparing ---------------------------------------------------------------------------------------
def render(entry: dict[str, Any]) -> list[str]:
    """An entry as lines: multi-line strings one line each, so a diff shows the lines that changed."""
    lines: list[str] = []
    for key, value in entry.items():
        if isinstance(value, str) and "\n" in value:
            lines.append(f"{key}:")
            lines += [f"  | {line}" for line in value.split("\n")]
        elif isinstance(value, (dict, list)):
            lines.append(f"{key}:")
            lines += ["  " + line for line in json.dumps(value, indent=1, ensure_ascii=True).split("\n")]
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=True)}")
    return lines


def compare(a_path: Path, b_path: Path) -> int:
    a = json.loads(a_path.read_text())["entries"]
    b = json.loads(b_path.read_text())["entries"]
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    changed = [k for k in a if k in b and a[k] != b[k]]
    for key in only_a:
        print(f"--- only in {a_path}: {key}")
    for key in only_b:
        print(f"+++ only in {b_path}: {key}")
    for key in changed:
        print(f"=== {key}")
        for line in difflib.unified_diff(render(a[key]), render(b[key]), str(a_path), str(b_path), lineterm="", n=2):
            print(line)
    order_differs = not (only_a or only_b) and list(a) != list(b)
    if order_differs:
        print("(the same entries, in another order)")
    same = len(a) - len(only_a) - len(changed)
    print(f"{same} entries identical, {len(changed)} differ, {len(only_a)} only in {a_path.name}, "
          f"{len(only_b)} only in {b_path.name}")
    return 1 if only_a or only_b or changed or order_differs else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, help="Where to write the snapshot (JSON).")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"Work folder, wiped first (default {DEFAULT_WORKDIR}).")
    parser.add_argument("--python", default=sys.executable, help="The interpreter that runs blipsearch.")
    parser.add_argument("--jobs", type=int, default=2, help="Read-only commands run side by side (default 2).")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                        help="Print how snapshot B differs from A, entry by entry; exit 1 if it does.")
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if args.out is None:
        parser.error("give OUT.json, or --compare A.json B.json")
    run(args.out.resolve(), args.workdir.resolve(), args.python, max(1, args.jobs))


if __name__ == "__main__":
    main()
