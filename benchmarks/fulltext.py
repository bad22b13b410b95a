"""Full-text upkeep at library scale: the whole text-index build against an index run's commit that
keeps it up incrementally.

    python benchmarks/fulltext.py [--images 1000000] [--batch 1000] [--url sqlite:///...]

Fills a library's database with synthetic rows (photo-like paths in dated, named folders, one
caption of 8 to 14 words per content, 5% of files sharing content), then measures:

- the whole build of the text index from every row: what the first search after any change paid
  before the index was kept up per commit (holding the write lock), and what a schema upgrade pays once;
- an index run's commit of ``--batch`` new images, as many moved files and as many new captions, with
  the text rows kept up in it, against the same commit with the triggers dropped and no upkeep;
- the full-text query time afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

from blipsearch.store import fulltext  # noqa: E402
from blipsearch.store.database import Database, utcnow  # noqa: E402

PLACES = ["Venice", "Paris", "Lisbon", "Kyoto", "garden", "beach", "mountains", "wedding", "birthday", "school",
          "concert", "harbour", "forest", "museum", "market", "snow", "lake", "desert", "city", "village"]
WORDS = ("dog cat child woman man boat car bicycle tree flower cake table window street bridge river sky cloud "
         "sunset beach sand wave mountain snow road house church tower train bus horse bird kite ball balloon "
         "umbrella chair sofa lamp book phone laptop guitar piano plate cup pizza bread fruit apple banana "
         "red blue green yellow white black small large old young sitting standing running holding").split()


def _paths(rng: np.random.Generator, start: int, count: int) -> list[bytes]:
    years = rng.integers(2005, 2027, count)
    places = rng.integers(0, len(PLACES), count)
    return [f"/photos/{y}/{PLACES[p]} {y}/IMG_{start + i:07d}.jpg".encode() for i, (y, p) in
            enumerate(zip(years, places))]


def _caption(rng: np.random.Generator) -> str:
    return "a picture of " + " ".join(WORDS[w] for w in rng.integers(0, len(WORDS), rng.integers(8, 15)))


def _fill(db: Database, rng: np.random.Generator, start: int, count: int) -> list[str]:
    now = utcnow()
    hashes = [f"{start + i:064x}" for i in range(count)]
    for i in np.flatnonzero(rng.random(count) < 0.05):  # copies of an earlier file
        hashes[i] = hashes[int(rng.integers(0, i + 1))]
    with db.transaction() as session:
        rows = [{"path": p, "size": 3_000_000, "mtime_ns": start + i, "content_hash": h, "indexed_at": now}
                for i, (p, h) in enumerate(zip(_paths(rng, start, count), hashes))]
        session.execute(text("INSERT INTO images (path, size, mtime_ns, content_hash, indexed_at) "
                             "VALUES (:path, :size, :mtime_ns, :content_hash, :indexed_at)"), rows)
        _add_captions(session, rng, sorted(set(hashes)), now)
    return hashes


def _add_captions(session, rng, hashes, now) -> None:  # type: ignore[no-untyped-def]
    session.execute(text("INSERT INTO captions (content_hash, model, prompt, caption, model_spec, created_at) "
                         "VALUES (:h, 'm', 'p', :c, 'm', :t)"),
                    [{"h": h, "c": _caption(rng), "t": now} for h in hashes])


def _commit(db: Database, rng: np.random.Generator, start: int, batch: int, upkeep: bool) -> float:
    """One index run's commit: ``batch`` new images (captioned), ``batch`` files moved to a new folder."""
    now = utcnow()
    began = time.perf_counter()
    db.fulltext = upkeep
    with db.transaction() as session:
        db.bump_generation(session)
        if not upkeep:
            for name in ("text_pending_image_added", "text_pending_image_changed", "text_pending_image_gone",
                         "text_pending_caption_added", "text_pending_caption_changed", "text_pending_caption_gone"):
                if db.engine.dialect.name == "sqlite":
                    session.execute(text(f"DROP TRIGGER {name}"))
            if db.engine.dialect.name == "postgresql":
                session.execute(text("ALTER TABLE images DISABLE TRIGGER text_pending_image"))
                session.execute(text("ALTER TABLE captions DISABLE TRIGGER text_pending_caption"))
        hashes = [f"{start + i:064x}" for i in range(batch)]
        session.execute(text("INSERT INTO images (path, size, mtime_ns, content_hash, indexed_at) "
                             "VALUES (:path, 1, 0, :h, :t)"),
                        [{"path": p, "h": h, "t": now} for p, h in zip(_paths(rng, start, batch), hashes)])
        _add_captions(session, rng, hashes, now)
        moved = rng.choice(start // 2, batch, replace=False) + 1
        session.execute(text("UPDATE images SET path = :path WHERE id = :id"),
                        [{"id": int(i), "path": f"/photos/sorted {start}/IMG_{int(i):07d}.jpg".encode()}
                         for i in moved])
        if not upkeep:
            if db.engine.dialect.name == "sqlite":
                fulltext.install(session.connection())  # the triggers back, inside the same transaction
            else:
                session.execute(text("ALTER TABLE images ENABLE TRIGGER text_pending_image"))
                session.execute(text("ALTER TABLE captions ENABLE TRIGGER text_pending_caption"))
    elapsed = time.perf_counter() - began
    db.fulltext = True
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--url", help="a database URL (default: a new SQLite file in a temporary folder)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="blipsearch-fulltext-"))
    db = Database(args.url or f"sqlite:///{folder / 'library.db'}")
    rng = np.random.default_rng(0)

    db.fulltext = False  # fill without upkeep: every row queued, then built whole below
    began = time.perf_counter()
    step = 50_000
    for start in range(0, args.images, step):
        _fill(db, rng, start, min(step, args.images - start))
    fill_s = time.perf_counter() - began
    print(f"filled {args.images} rows in {fill_s:.1f} s", flush=True)
    db.fulltext = True
    began = time.perf_counter()
    with db.transaction() as session:
        db.bump_generation(session, by=0)
        fulltext.apply_pending(session)
    whole_s = time.perf_counter() - began
    print(f"whole build: {whole_s:.1f} s", flush=True)

    start = args.images
    kept, plain = [], []
    for _ in range(args.commits):
        for upkeep, times in ((True, kept), (False, plain)):
            times.append(_commit(db, rng, start, args.batch, upkeep))
            start += args.batch
    with db.reader() as session:  # every commit with upkeep left nothing queued
        assert session.scalar(text("SELECT count(*) FROM text_pending")) == 0
    index = fulltext.TextIndex(db)
    queries = ["venice", "birthday cake", "dog on the beach", "red boat harbour", "snow mountain 2019",
               "child holding balloon", "kyoto temple", "guitar concert", "white horse", "sorted"]
    latencies = []
    for query in queries * 3:
        began = time.perf_counter()
        index.search(query, 200)
        latencies.append(time.perf_counter() - began)
    result = {
        "database": db.engine.dialect.name, "images": args.images, "batch": args.batch, "commits": args.commits,
        "fill_s": round(fill_s, 1), "whole_build_s": round(whole_s, 1),
        "commit_with_upkeep_s": [round(t, 3) for t in kept], "commit_without_upkeep_s": [round(t, 3) for t in plain],
        "upkeep_median_s": round(statistics.median(kept) - statistics.median(plain), 3),
        "query_p50_ms": round(1000 * statistics.median(latencies), 1),
        "query_max_ms": round(1000 * max(latencies), 1),
    }
    db.engine.dispose()
    if not args.url:
        shutil.rmtree(folder)
    name = "fulltext" if result["database"] == "sqlite" else f"fulltext_{result['database']}"
    print(save(name, result))
    print(result)


if __name__ == "__main__":
    main()
