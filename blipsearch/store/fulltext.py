"""Full-text search over captions, the XMP title, description and keywords, file and folder names.

SQLite uses an FTS5 table ranked by BM25; PostgreSQL uses its own full-text search (a ``tsvector``
column with a GIN index, ranked by ``ts_rank_cd``). The text index is derived data kept in step with
the tables in the same commits, never rebuilt whole: triggers on ``images`` and ``captions`` queue the
ids of the images whose path, content, captions, title, description or keywords changed (``text_pending``), and every write
transaction rewrites those images' text rows before it commits (:func:`apply_pending`). A search only
reads, so a read-only library is searched as it is.
"""

from __future__ import annotations

import os
import re

from sqlalchemy import Connection, column, delete, inspect, select, table, text
from sqlalchemy.orm import Session

from ..errors import LibraryError
from .schema import CaptionRow, ImageRow, TextPendingRow

# Words that would match nearly every caption ("a picture of a ...").
STOPWORDS = frozenset(
    "a an the of on in at to and or with is are was be it its this that there picture photo image".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)
# The words of a query matched, the first ones: a pasted page would make a query PostgreSQL can't
# parse (stack depth) and that SQLite ranks slowly; the search text's vector reads 30 words anyway.
MAX_QUERY_WORDS = 100
# Queued images rewritten per step, and ids per IN list.
PENDING_STEP = 5000
_IN_LIST = 900
# The PostgreSQL transaction lock a commit's text rows are written under ("blipstxt"): a commit reads
# what the one before it wrote, so two writers' changes to one image end up both in its row.
TEXT_LOCK_KEY = 0x626C69707374_7874

_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS text_pending_image_added AFTER INSERT ON images "
    "BEGIN INSERT INTO text_pending (image_id) VALUES (NEW.id); END",
    "CREATE TRIGGER IF NOT EXISTS text_pending_image_changed AFTER UPDATE OF {columns} ON images "
    "WHEN {changed} "
    "BEGIN INSERT INTO text_pending (image_id) VALUES (NEW.id); END",
    "CREATE TRIGGER IF NOT EXISTS text_pending_image_gone AFTER DELETE ON images "
    "BEGIN INSERT INTO text_pending (image_id) VALUES (OLD.id); END",
    "CREATE TRIGGER IF NOT EXISTS text_pending_caption_added AFTER INSERT ON captions "
    "BEGIN INSERT INTO text_pending (image_id) SELECT id FROM images WHERE content_hash = NEW.content_hash; END",
    "CREATE TRIGGER IF NOT EXISTS text_pending_caption_changed AFTER UPDATE OF caption, content_hash ON captions "
    "BEGIN INSERT INTO text_pending (image_id) SELECT id FROM images "
    "WHERE content_hash IN (OLD.content_hash, NEW.content_hash); END",
    "CREATE TRIGGER IF NOT EXISTS text_pending_caption_gone AFTER DELETE ON captions "
    "BEGIN INSERT INTO text_pending (image_id) SELECT id FROM images WHERE content_hash = OLD.content_hash; END",
)
_POSTGRES_TRIGGERS = (
    """CREATE OR REPLACE FUNCTION blipsearch_text_pending_image() RETURNS trigger AS $$
    BEGIN
      IF TG_OP = 'DELETE' THEN
        INSERT INTO text_pending (image_id) VALUES (OLD.id);
      ELSIF TG_OP = 'INSERT' OR {changed} THEN
        INSERT INTO text_pending (image_id) VALUES (NEW.id);
      END IF;
      RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    """CREATE OR REPLACE FUNCTION blipsearch_text_pending_caption() RETURNS trigger AS $$
    BEGIN
      IF TG_OP <> 'INSERT' THEN
        INSERT INTO text_pending (image_id) SELECT id FROM images WHERE content_hash = OLD.content_hash;
      END IF;
      IF TG_OP <> 'DELETE' THEN
        INSERT INTO text_pending (image_id) SELECT id FROM images WHERE content_hash = NEW.content_hash;
      END IF;
      RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    "CREATE OR REPLACE TRIGGER text_pending_image AFTER INSERT OR UPDATE OF {columns} OR DELETE "
    "ON images FOR EACH ROW EXECUTE FUNCTION blipsearch_text_pending_image()",
    "CREATE OR REPLACE TRIGGER text_pending_caption AFTER INSERT OR UPDATE OF caption, content_hash OR DELETE "
    "ON captions FOR EACH ROW EXECUTE FUNCTION blipsearch_text_pending_caption()",
)


# The columns of ``images`` whose change rewrites its text row: path and content (name, folders,
# captions), and since schema 8 the XMP title, description and keywords.
_TEXT_COLUMNS = ("path", "content_hash")
_METADATA_COLUMNS = ("title", "description", "keywords")


def _triggers(dialect: str, columns: tuple[str, ...]) -> list[str]:
    if dialect == "sqlite":
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns)
        return [t.replace("{columns}", ", ".join(columns)).replace("{changed}", changed) for t in _SQLITE_TRIGGERS]
    # (json has no equality: keywords are compared as text)
    changed = " OR ".join(f"OLD.{c}::text IS DISTINCT FROM NEW.{c}::text" if c == "keywords"
                          else f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
    return [t.replace("{columns}", ", ".join(columns)).replace("{changed}", changed) for t in _POSTGRES_TRIGGERS]


def query_words(query: str) -> list[str]:
    words = [w for w in _WORD.findall(query.lower()) if w not in STOPWORDS]
    return list(dict.fromkeys(words))


def _path_words(path: bytes) -> tuple[str, str]:
    """(file name words, folder words) of a stored path."""
    decoded = os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    folder, name = os.path.split(decoded)
    stem = os.path.splitext(name)[0]
    return " ".join(_WORD.findall(stem.replace("_", " "))), " ".join(_WORD.findall(folder.replace("_", " ")))


def supported(dialect: str) -> bool:
    return dialect in ("sqlite", "postgresql")


def _has_fts5() -> bool:
    import sqlite3

    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE probe USING fts5(body)")
    except sqlite3.Error:
        return False
    return True


def install(conn: Connection, *, rebuild: bool = False) -> bool:
    """Create the text index and the triggers that queue its changes (idempotent). With ``rebuild``,
    an existing text index is dropped and every image queued, for the next commit to write. Returns
    whether this database has full-text search (not: another database, or a SQLite without FTS5)."""
    dialect = conn.dialect.name
    if not supported(dialect):
        return False
    if rebuild:
        conn.execute(text("DROP TABLE IF EXISTS text_index"))
    if dialect == "sqlite":
        if not _has_fts5():
            return False  # a SQLite built without FTS5: no hybrid search (a search says so)
        conn.execute(text(
            "CREATE VIRTUAL TABLE IF NOT EXISTS text_index USING "
            "fts5(caption, name, folders, tokenize='unicode61 remove_diacritics 2')"
        ))
        # (a trigger of an older schema is replaced: CREATE TRIGGER IF NOT EXISTS would keep it)
        conn.execute(text("DROP TRIGGER IF EXISTS text_pending_image_changed"))
    else:
        conn.execute(text(
            "CREATE TABLE IF NOT EXISTS text_index (id BIGINT PRIMARY KEY, body TEXT NOT NULL, "
            "doc tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED)"
        ))
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_text_index_doc ON text_index USING GIN (doc)"))
    have = {c["name"] for c in inspect(conn).get_columns("images")}
    columns = _TEXT_COLUMNS + tuple(c for c in _METADATA_COLUMNS if c in have)  # (revision 0002 runs before 0003)
    for statement in _triggers(dialect, columns):
        conn.execute(text(statement))
    if rebuild:
        conn.execute(text("DELETE FROM text_pending"))
        conn.execute(text("INSERT INTO text_pending (image_id) SELECT id FROM images"))
    return True


def _chunks(items: list, size: int = _IN_LIST) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def apply_pending(session: Session) -> int:
    """Rewrite the text rows of every queued image, in the caller's transaction (just before it
    commits); returns how many images were rewritten."""
    dialect = session.get_bind().dialect.name
    if session.execute(select(TextPendingRow.seq).limit(1)).first() is None:
        return 0
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": TEXT_LOCK_KEY})
    done = 0
    while True:
        queued = session.execute(select(TextPendingRow.seq, TextPendingRow.image_id)
                                 .order_by(TextPendingRow.seq).limit(PENDING_STEP)).all()
        if not queued:
            return done
        ids = sorted({int(image_id) for _, image_id in queued})
        for chunk in _chunks(ids):
            _rewrite(session, dialect, chunk)
        session.execute(delete(TextPendingRow).where(TextPendingRow.seq <= queued[-1][0]))
        done += len(ids)


_TEXT_INDEX = {"sqlite": table("text_index", column("rowid")), "postgresql": table("text_index", column("id"))}


def _rewrite(session: Session, dialect: str, ids: list[int]) -> None:
    text_index = _TEXT_INDEX[dialect]
    session.execute(delete(text_index).where(list(text_index.c)[0].in_(ids)))
    images = session.execute(select(ImageRow.id, ImageRow.path, ImageRow.content_hash, ImageRow.title,
                                    ImageRow.description, ImageRow.keywords).where(ImageRow.id.in_(ids))).all()
    if not images:
        return
    captions: dict[str, list[str]] = {}
    for hashes in _chunks(sorted({row.content_hash for row in images})):
        for content_hash, caption in session.execute(
            select(CaptionRow.content_hash, CaptionRow.caption).where(CaptionRow.content_hash.in_(hashes))
            .order_by(CaptionRow.created_at, CaptionRow.model, CaptionRow.prompt)
        ):
            captions.setdefault(content_hash, []).append(caption)
    rows = []
    for image_id, path, content_hash, title, description, keywords in images:
        name, folders = _path_words(bytes(path))
        caption = " ".join(dict.fromkeys([*captions.get(content_hash, []), *_metadata_words(title, description,
                                                                                            keywords)]))
        if dialect == "sqlite":
            rows.append({"id": image_id, "caption": caption, "name": name, "folders": folders})
        else:
            rows.append({"id": image_id, "body": f"{caption} {name} {folders}"})
    session.execute(_INSERT[dialect], rows)


def _metadata_words(title: str | None, description: str | None, keywords: object) -> list[str]:
    """The title, description and keywords (their levels as words) an image's text row holds with its
    captions."""
    found = [t for t in (title, description) if t]
    if isinstance(keywords, list):
        found += [" ".join(_WORD.findall(str(k))) for k in keywords if k]
    return [t for t in found if t.strip()]


_INSERT = {
    "sqlite": text("INSERT INTO text_index (rowid, caption, name, folders) VALUES (:id, :caption, :name, :folders)"),
    "postgresql": text("INSERT INTO text_index (id, body) VALUES (:id, :body)"),
}


class TextIndex:
    def __init__(self, db) -> None:  # type: ignore[no-untyped-def]  # a blipsearch.store.database.Database
        self.db = db
        self.dialect = db.engine.dialect.name

    def search(self, query: str, limit: int) -> list[tuple[int, float]]:
        """(image id, relevance) best first; relevance is larger for better matches."""
        if not self.db.fulltext:
            if supported(self.dialect):
                raise LibraryError("This SQLite has no full-text search (FTS5), which hybrid search needs.")
            raise LibraryError(f"Hybrid search needs SQLite or PostgreSQL, not {self.dialect}.")
        words = query_words(query)[:MAX_QUERY_WORDS]
        if not words:
            return []
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
                text("SELECT id, ts_rank_cd(doc, q) AS r FROM text_index, to_tsquery('simple', :q) AS q "
                     "WHERE doc @@ q ORDER BY r DESC, id LIMIT :n"),
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
