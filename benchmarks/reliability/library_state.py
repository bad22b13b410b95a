"""What the reliability campaigns check in a library after each kill or fault, and the workload
they run on it.

``problems(library)`` lists what is wrong (an empty list: consistent); ``snapshot(library)``
is everything a user would see stored (rows by path, vectors, captions, tags, texts,
failures), so that a library that went through kills and faults can be compared with one
built by clean runs.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from blipsearch.ann.index import VectorIndex  # noqa: E402
from blipsearch.store.location import DB_FILE  # noqa: E402
from blipsearch.workspace import VECTORS_FILE  # noqa: E402

BLIPSEARCH = [str(Path(sys.executable).parent / "blipsearch")]
LABELS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple square"]
TEXTS = ["a red circle left of a blue square", "two green triangles", "a yellow star above a red circle",
         "a purple square", "an orange circle right of a green star"]
VECTOR_TOLERANCE = 1e-5  # the same image embedded in another batch may differ in the last bits


@dataclass
class Workload:
    """A photo folder with a few broken files, labels, texts and a second model to re-index with."""

    folder: Path
    photos: Path = field(init=False)
    labels: Path = field(init=False)
    texts: Path = field(init=False)
    second_model: Path = field(init=False)

    def __post_init__(self) -> None:
        self.photos = self.folder / "photos"
        self.labels = self.folder / "labels.txt"
        self.texts = self.folder / "texts.txt"
        self.second_model = self.folder / "tiny-model"

    def make(self, images: int) -> Workload:
        from tiny_blip import make_tiny_retrieval

        if not self.photos.exists():
            subprocess.run([*BLIPSEARCH, "demo-photos", str(self.photos), "--count", str(images)],
                           check=True, capture_output=True)
            first = sorted((self.photos / "images").iterdir())[0]
            (self.photos / "images" / "zz-truncated.jpg").write_bytes(first.read_bytes()[:3000])
            (self.photos / "images" / "zz-not-an-image.png").write_text("not an image")
        self.labels.write_text("\n".join(LABELS) + "\n")
        self.texts.write_text("\n".join(TEXTS) + "\n")
        if not self.second_model.exists():
            make_tiny_retrieval(self.second_model)
        return self

    def steps(self, library: Path) -> list[tuple[str, list[str]]]:
        """The commands of one full workload, in order: (name, argv)."""
        lib = ["--library", str(library)]
        return [
            ("index", [*BLIPSEARCH, "index", str(self.photos), "--model", "builtin:shapes", "--captions",
                       "--tags", str(self.labels), "--token-cache-gb", "1", "--json", *lib]),
            ("texts-add", [*BLIPSEARCH, "texts", "add", str(self.texts), *lib]),
            ("search-rebuild", [*BLIPSEARCH, "search", "a red circle left of a blue square", "-k", "3",
                                "--json", *lib]),
            ("reindex", [*BLIPSEARCH, "index", str(self.photos), "--model", str(self.second_model),
                         "--reindex", "--no-thumbnails", "--json", *lib]),
        ]


def prepare_step(name: str, library: Path) -> None:
    """What a step needs beforehand: the search step starts without a vector file, so it rebuilds it."""
    if name == "search-rebuild":
        (library / VECTORS_FILE).unlink(missing_ok=True)


def clean_run(steps: list[tuple[str, list[str]]], log_dir: Path,
              env: dict[str, str] | None = None) -> tuple[dict[str, float], dict[str, Counter[str]]]:
    """Run ``steps`` once, unharmed: each one's duration and the failpoints it passes (how often)."""
    durations, points = {}, {}
    for name, argv in steps:
        prepare_step(name, Path(argv[argv.index("--library") + 1]))
        log = log_dir / f"{name}.points"
        log.unlink(missing_ok=True)
        start = time.perf_counter()
        done = run(argv, env={**(env or {}), "BLIPSEARCH_FAILPOINTS_LOG": str(log)})
        durations[name] = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"clean run of {name} failed ({done.returncode}): {done.stderr[-2000:]}")
        points[name] = Counter(log.read_text().split()) if log.exists() else Counter()
    return durations, points


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _connect(library: Path) -> sqlite3.Connection:
    con = sqlite3.connect(library / DB_FILE, timeout=30)
    con.execute("PRAGMA busy_timeout = 30000")
    return con


def problems(library: Path) -> list[str]:
    """What is inconsistent in ``library`` (nothing, when it is sound):

    - the database fails ``PRAGMA integrity_check`` or can't be opened;
    - an image row of the library's model has no vector, or a vector of another size;
    - the vector file, where it claims to mirror the database now, holds other ids;
    - the vector index the library would search with (the file, or rebuilt) holds other ids;
    - a search through the Python API fails.
    """
    found: list[str] = []
    if not (library / DB_FILE).exists():
        return found  # killed before it made anything: nothing to be inconsistent
    try:
        con = _connect(library)
        integrity = [row[0] for row in con.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            found.append(f"integrity_check: {integrity[:3]}")
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "library" not in tables or "images" not in tables:
            con.close()
            return found + [f"tables missing: {sorted(tables)}"]
        record = con.execute("SELECT model_fingerprint, dim, generation FROM library WHERE id = 1").fetchone()
        if record is None:
            con.close()
            return found  # the schema was made, the first row not yet committed
        fp, dim, generation = record
        rows = con.execute("SELECT id, length(vector) FROM images WHERE model = ?", (fp,)).fetchall()
        con.close()
    except sqlite3.Error as exc:
        return found + [f"database: {exc}"]
    bad = [i for i, size in rows if size != 4 * (dim or 256)]
    if bad:
        found.append(f"{len(bad)} rows of the model without a proper vector (ids {bad[:5]})")
    ids = np.sort(np.array([i for i, _ in rows], np.int64))
    loaded = VectorIndex.load(library / VECTORS_FILE)
    if loaded is not None:
        index, header = loaded
        if header.generation == generation and header.model == fp and not np.array_equal(np.sort(index.ids()), ids):
            found.append(f"vector file of generation {generation} holds {len(index)} ids, the database {len(ids)}")
    if fp is None:
        return found
    try:
        from blipsearch.library import Library

        with Library(library, create=False) as lib:
            held = np.sort(lib.vectors.current(fp).ids())
            if not np.array_equal(held, ids):
                found.append(f"the searched index holds {len(held)} ids, the database {len(ids)}")
            if len(ids):
                lib.search("a red circle", k=3, rerank_hits=False)
    except Exception as exc:  # noqa: BLE001 - any error here is what the campaign looks for
        found.append(f"search: {type(exc).__name__}: {exc}")
    return found


def leftovers(library: Path) -> list[Path]:
    """Temporary files of cut-short writes still in the library folder."""
    return sorted(library.rglob(".*.tmp"))


def snapshot(library: Path) -> dict[str, object]:
    """Everything stored that a user sees, keyed by content rather than by row id."""
    con = _connect(library)
    fp, dim = con.execute("SELECT model_fingerprint, dim FROM library WHERE id = 1").fetchone()
    images = {}
    for path, size, mtime, digest, width, height, exif, model, vector in con.execute(
            "SELECT path, size, mtime_ns, content_hash, width, height, exif, model, vector FROM images"):
        images[path] = (size, mtime, digest, width, height, exif, model,
                        None if vector is None else np.frombuffer(vector, np.float32).copy())
    state = {
        "model": fp,
        "dim": dim,
        "images": images,
        "failures": {p: r for p, r in con.execute("SELECT path, reason FROM failures")},
        "captions": set(con.execute("SELECT content_hash, model, prompt, caption FROM captions")),
        "tags": {(h, m, v, label): (rank, score) for h, m, v, label, rank, score in con.execute(
            "SELECT content_hash, model, vocabulary, label, rank, score FROM tags")},
        "texts": {(s, t): (e, m, None if v is None else np.frombuffer(v, np.float32).copy())
                  for s, e, t, m, v in con.execute("SELECT source, external_id, text, model, vector FROM texts")},
    }
    con.close()
    return state


def differences(got: dict[str, object], want: dict[str, object]) -> list[str]:
    """Where two snapshots differ (vectors and scores within ``VECTOR_TOLERANCE``)."""
    found = []
    for key in ("model", "dim", "failures", "captions"):
        if got[key] != want[key]:
            found.append(f"{key} differ")
    for key, position in (("images", 7), ("texts", 2)):
        a, b = got[key], want[key]
        assert isinstance(a, dict) and isinstance(b, dict)
        if a.keys() != b.keys():
            found.append(f"{key}: {len(a.keys() ^ b.keys())} keys differ")
            continue
        for name in a:
            x, y = a[name], b[name]
            if x[:position] + x[position + 1:] != y[:position] + y[position + 1:]:
                found.append(f"{key}: {name!r} differs")
            elif (x[position] is None) != (y[position] is None) or (
                    x[position] is not None and np.abs(x[position] - y[position]).max() > VECTOR_TOLERANCE):
                found.append(f"{key}: {name!r} vector differs")
    tags_a, tags_b = got["tags"], want["tags"]
    assert isinstance(tags_a, dict) and isinstance(tags_b, dict)
    if tags_a.keys() != tags_b.keys() or any(
            tags_a[k][0] != tags_b[k][0] or abs(tags_a[k][1] - tags_b[k][1]) > 1e-4 for k in tags_a):
        found.append("tags differ")
    return found


def workdir_for(given: Path | None, name: str) -> Path:
    """The campaign's working folder: ``given``, or a new temporary one."""
    import tempfile

    folder = given or Path(tempfile.mkdtemp(prefix=f"blipsearch-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def finish(result: dict[str, object], out: Path, table: str, failures: list[str]) -> None:
    """Write a campaign's results, print its table and its first failures, exit 1 if there are any."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table)
    for line in failures[:30]:
        print("  ", line)
    sys.exit(1 if failures else 0)
