"""The HTTP API against its own document: ``blipsearch serve`` in a subprocess, on loopback, over a
small shapes-world library, and Schemathesis (its command line, from this Python's environment)
against the served ``/openapi.json`` with every check and every phase, stateful included.

Shared by ``tests/test_api_contract.py`` (about a minute, in the suite) and
``benchmarks/reliability/api_fuzz.py`` (the long run). The hooks the runs load, and the two
rules they apply, are in ``tests/api_contract_hooks.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HOOKS = Path(__file__).with_name("api_contract_hooks.py")
PHASES = ("examples", "coverage", "fuzzing", "stateful")


def make_library(root: Path, count: int = 36, seed: int = 11) -> Path:
    """``count`` shapes-world scenes in two folders with file times over six months, three of them with
    XMP sidecars (keywords, a rating); a camera's JPEG (EXIF make, model, capture time and offset, a GPS
    position in Paris; a sidecar with a title, a description, keywords, a rating and a label); a broken
    file. No name that is not UTF-8: Schemathesis 4.32.5 stops with a runtime error when it reuses such
    a path from an answer in a request (``test_web_api`` checks those answers). Indexed with
    ``builtin:shapes``, captioned, tagged with their own descriptions and with a text collection: every
    route has something to answer."""
    from photo_files import camera_exif, write_sidecar

    from blipsearch import Library
    from blipsearch.shapes.world import generate
    from blipsearch.text import TextEntry

    photos = root / "photos"
    scenes = generate("test", count, seed=seed)
    for n, scene in enumerate(scenes):
        folder = photos / ("trip-a" if n % 2 else "trip-b")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"scene-{n:03d}.png"
        scene.image.save(path)
        taken = datetime(2024, 1 + n % 6, 1 + n % 28, 12).timestamp()
        os.utime(path, (taken, taken))
        if n < 3:
            write_sidecar(path, {"keywords": ["Places|France|Paris", f"Trip {n}"], "rating": n + 2})
    exif = camera_exif(48.8584, 2.2945, offset=120)
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D"
    exif.get_ifd(0x8769)[36867] = "2023:06:01 10:00:00"
    scenes[0].image.convert("RGB").save(photos / "camera.jpg", exif=exif)
    write_sidecar(photos / "camera.jpg", {"title": "Tour Eiffel", "description": "From the river",
                                          "keywords": ["Família", "Beach"], "rating": 5, "label": "Red"})
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    descriptions = sorted({text for scene in scenes for text in scene.captions})
    with Library(root / "library", model="builtin:shapes", device="cpu") as lib:
        lib.index([photos])
        lib.caption_library()
        lib.tag_library(sorted({scene.captions[0] for scene in scenes})[:12], template="{}", k=1)
        lib.add_texts([TextEntry(text, external_id=f"t{n}") for n, text in enumerate(descriptions[:40])])
    return root / "library"


class Server:
    """``blipsearch serve --library LIBRARY --port 0`` (loopback), until :meth:`stop`; its stderr in ``log``."""

    def __init__(self, library: Path, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "blipsearch.cli", "serve", "--library", str(library), "--port", "0"],
                stdout=subprocess.DEVNULL, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while not (found := re.search(r"at http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"blipsearch serve did not start: {log.read_text(errors='replace')}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{found.group(1)}"
        with urllib.request.urlopen(f"{self.url}/api/status", timeout=60) as answer:
            self.status = json.loads(answer.read())

    def stop(self) -> int | None:
        """Stop it as a service manager does (SIGTERM); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode



@contextmanager
def serving(library: Path, log: Path) -> Iterator[Server]:
    """A :class:`Server` over ``library`` while the block runs."""
    server = Server(library, log)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Run:
    """A Schemathesis run: its JSON report, what it printed, its exit status, its wall time, and the
    failures the hooks' rules dropped (each time a hook dropped one: shrinking replays some)."""

    report: dict[str, Any]
    output: str
    returncode: int
    seconds: float
    dropped: list[dict[str, str]]

    @property
    def cases(self) -> int:
        return int(self.report["test_cases"]["generated"])

    @property
    def findings(self) -> int:
        """Distinct failures and errors Schemathesis reports (what fails a run)."""
        return int(self.report["test_cases"]["unique_failures"]) + len(self.report["errors"])

    def summary(self) -> str:
        """The end of its output, where the failures and the summary are."""
        return self.output[-12_000:]


def schemathesis(url: str, out: Path, *, max_time: int, max_examples: int, workers: int = 1,
                 seed: int | None = None) -> Run:
    """Schemathesis against ``url``'s ``/openapi.json``: every check (``--checks all``), every phase,
    ``max_examples`` cases per operation and phase, fuzzing and the stateful phase repeated until
    ``max_time`` seconds are spent; its files in ``out``. One worker by default: with several, its
    threads call ``ast.parse`` at once (Hypothesis describing a filter), which CPython before 3.11.8
    and 3.12.1 can fail with "SystemError: AST constructor recursion depth mismatch" (gh-106905)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
               "--checks", "all", "--phases", ",".join(PHASES), "--max-examples", str(max_examples),
               "--max-time", str(max_time), "--workers", str(workers), "--request-timeout", "120",
               "--generation-database", "none", "--report", "json", "--report-dir", str(out), "--no-color"]
    if seed is not None:
        command += ["--seed", str(seed)]
    dropped = out / "dropped.jsonl"
    dropped.unlink(missing_ok=True)
    started = time.monotonic()
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "BLIPSEARCH_CONTRACT_DROPPED": str(dropped)}
    done = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=max_time + 600, check=False,
                          env=env)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    (out / "output.txt").write_text(output)
    reports = sorted(out.glob("json-*.json"))
    if not reports:
        raise RuntimeError(f"Schemathesis wrote no report (exit {done.returncode}):\n{output[-5000:]}")
    lines = dropped.read_text(encoding="utf-8").splitlines() if dropped.exists() else []
    return Run(json.loads(reports[-1].read_text()), output, done.returncode, seconds, [json.loads(x) for x in lines])
