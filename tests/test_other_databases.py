"""The same engine on another SQLAlchemy database: a real PostgreSQL (see ``postgres_url`` in
conftest.py: a throw-away server, or BLIPSEARCH_TEST_DB_URL)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import draw_image

from blipsearch import Library


def test_index_and_search_match_sqlite(postgres_url: str, photos: Path, tmp_path: Path, tiny_model: Path) -> None:
    odd = os.path.join(os.fsencode(photos), b"holiday", b"\xe9t\xe9.png")
    with open(odd, "wb") as fh:
        draw_image(60).save(fh, "PNG")
    with Library(tmp_path / "sqlite", model=str(tiny_model), device="cpu") as reference, \
            Library(tmp_path / "other", db_url=postgres_url, model=str(tiny_model), device="cpu") as lib:
        assert lib.db.engine.dialect.name != "sqlite"
        assert reference.index([photos]).counts() == lib.index([photos]).counts()
        assert lib.index([photos]).embedded == 0
        expected = [(h.path, round(h.score, 4)) for h in reference.search("a red circle", k=13, rerank_depth=4)]
        assert [(h.path, round(h.score, 4)) for h in lib.search("a red circle", k=13, rerank_depth=4)] == expected
        assert odd in [os.fsencode(h.path) for h in lib.search("a dog", k=13, rerank_hits=False)]
        draw_image(61).save(photos / "holiday" / "birthday_cake.png")
        lib.index([photos])
        hit = lib.search("birthday", k=1, rerank_hits=False, hybrid=True)[0]
        assert hit.path.endswith("birthday_cake.png") and hit.keyword > 0
        (photos / "holiday" / "birthday_cake.png").unlink()

        shutil.move(photos / "garden", photos / "garden-moved")
        (photos / "holiday" / "img00.png").unlink()
        counts = lib.index([photos]).counts()
        assert counts["moved"] == 6 and counts["removed"] == 2  # img00 and birthday_cake
        status = lib.status()
        assert status["images"] == status["vectors"] == 12
        assert "postgresql" in status["database"]
