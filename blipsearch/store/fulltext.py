"""Full-text search over captions, file names and folder names.

SQLite uses an FTS5 table ranked by BM25; PostgreSQL uses its own full-text
search (``to_tsvector``/``ts_rank_cd``). The text index is derived data, like
the vector index: it is rebuilt from the tables whenever images or captions
changed since it was last built.
"""

from __future__ import annotations

import os
import re

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from ..errors import LibraryError
from .database import Database
from .schema import CaptionRow, ImageRow, LibraryRow, TextIndexState

# Words that would match nearly every caption ("a picture of a ...").
STOPWORDS = frozenset(
    "a an the of on in at to and or with is are was be it its this that there picture photo image".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)
# The words of a query matched, the first ones: a pasted page would make a query PostgreSQL can't
# parse (stack depth) and that SQLite ranks slowly; the search text's vector reads 30 words anyway.
MAX_QUERY_WORDS = 100


def query_words(query: str) -> list[str]:
    words = [w for w in _WORD.findall(query.lower()) if w not in STOPWORDS]
    return list(dict.fromkeys(words))


def _path_words(path: bytes) -> tuple[str, str]:
    """(file name words, folder words) of a stored path."""
    decoded = os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    folder, name = os.path.split(decoded)
    stem = os.path.splitext(name)[0]
    return " ".join(_WORD.findall(stem.replace("_", " "))), " ".join(_WORD.findall(folder.replace("_", " ")))


class TextIndex:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.dialect = db.engine.dialect.name

    def _marker(self, session: Session) -> str:
        generation = session.scalar(select(LibraryRow.generation).where(LibraryRow.id == 1))
        captions = session.execute(select(func.count(), func.max(CaptionRow.created_at))).one()
        return f"{generation}:{captions[0]}:{captions[1]}"

    def _create(self, session: Session) -> None:
        if self.dialect == "sqlite":
            try:
                session.execute(text(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS text_index USING "
                    "fts5(caption, name, folders, tokenize='unicode61 remove_diacritics 2')"
                ))
            except Exception as exc:  # noqa: BLE001 - a SQLite built without FTS5
                raise LibraryError(f"This SQLite has no full-text search (FTS5): {exc}") from None
        elif self.dialect == "postgresql":
            session.execute(text("CREATE TABLE IF NOT EXISTS text_index (id BIGINT PRIMARY KEY, body TEXT)"))
        else:
            raise LibraryError(f"Hybrid search needs SQLite or PostgreSQL, not {self.dialect}.")

    def _fresh(self, session: Session) -> tuple[bool, str, TextIndexState | None]:
        """Whether the text index is up to date; the current marker; the stored state."""
        marker = self._marker(session)
        state = session.get(TextIndexState, 1)
        return state is not None and state.marker == marker, marker, state

    def refresh(self) -> None:
        """Rebuild the text index if images or captions changed since it was built."""
        with self.db.reader() as session:
            if self._fresh(session)[0]:
                return
        with self.db.transaction() as session:
            # One rebuild at a time: the library row's write lock, then look again (another
            # search may have rebuilt it meanwhile; PostgreSQL reads committed rows).
            self.db.bump_generation(session, by=0)
            fresh, marker, state = self._fresh(session)
            if fresh:
                return
            self._create(session)
            session.execute(text("DELETE FROM text_index"))
            captions: dict[str, list[str]] = {}
            for content_hash, caption in session.execute(select(CaptionRow.content_hash, CaptionRow.caption)):
                captions.setdefault(content_hash, []).append(caption)
            rows = []
            for image_id, path, content_hash in session.execute(
                select(ImageRow.id, ImageRow.path, ImageRow.content_hash)
            ):
                name, folders = _path_words(path)
                caption = " ".join(dict.fromkeys(captions.get(content_hash, [])))
                if self.dialect == "sqlite":
                    rows.append({"id": image_id, "caption": caption, "name": name, "folders": folders})
                else:
                    rows.append({"id": image_id, "body": f"{caption} {name} {folders}"})
            if rows:
                if self.dialect == "sqlite":
                    session.execute(text("INSERT INTO text_index (rowid, caption, name, folders) "
                                         "VALUES (:id, :caption, :name, :folders)"), rows)
                else:
                    session.execute(text("INSERT INTO text_index (id, body) VALUES (:id, :body)"), rows)
            if state is None:
                session.add(TextIndexState(id=1, marker=marker))
            else:
                state.marker = marker

    def search(self, query: str, limit: int) -> list[tuple[int, float]]:
        """(image id, relevance) best first; relevance is larger for better matches."""
        words = query_words(query)[:MAX_QUERY_WORDS]
        if not words:
            return []
        self.refresh()
        with self.db.reader() as session:
            if self.dialect == "sqlite":
                match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
                result = session.execute(
                    text("SELECT rowid, bm25(text_index) AS rank FROM text_index WHERE text_index MATCH :q "
                         "ORDER BY rank LIMIT :n"),
                    {"q": match, "n": limit},
                )
                return [(int(i), -float(r)) for i, r in result]
            result = session.execute(
                text("SELECT id, ts_rank_cd(to_tsvector('simple', body), to_tsquery('simple', :q)) AS r "
                     "FROM text_index WHERE to_tsvector('simple', body) @@ to_tsquery('simple', :q) "
                     "ORDER BY r DESC, id LIMIT :n"),
                {"q": " | ".join(words), "n": limit},
            )
            return [(int(i), float(r)) for i, r in result]


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60) -> dict[int, float]:
    """RRF: each list adds 1 / (k + rank) to each id it ranks (rank from 1)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return fused
