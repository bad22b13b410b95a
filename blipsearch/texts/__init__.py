"""Collections of texts matched against images: image-to-text lookup and zero-shot tagging.

Texts are embedded with the text encoder and ``text_proj`` (BLIP text
preprocessing), stored with their vectors in the ``texts`` table, and never
embedded twice by the same model. Matching an image against texts follows the
paper: ITC cosine shortlist, then ITM (logit + cosine) on the best
``rerank_depth``, the image's tokens shared by every text of a batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, or_, select

from ..errors import InputPathError
from ..rerank.itm import match_scores
from ..similarity import max_sim
from ..store.database import Database, bytes_to_vectors, utcnow, vector_to_bytes
from ..store.schema import CaptionRow, TextRow
from ..text import TextEntry, checked

if TYPE_CHECKING:
    import torch

    from ..models.base import RetrievalModel

USER = "user"
CAPTIONS = "caption"


@dataclass(frozen=True)
class TextHit:
    """A text matched to an image. ``score`` is ITM logit + ITC cosine when reranked, else the cosine."""

    rank: int
    id: int
    text: str
    score: float
    itc: float
    itm: float | None
    external_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_text_file(path: str | os.PathLike[str], fmt: str = "auto") -> list[TextEntry]:
    """Plain text (one per line), JSON lines or CSV with ``text`` and optional ``id`` and metadata."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is not text
    except OSError as exc:
        raise InputPathError(f"Can't read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputPathError(f"{path} is not UTF-8 text.") from None
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = "jsonl" if suffix in (".jsonl", ".ndjson") else "csv" if suffix in (".csv", ".tsv") else "lines"
    entries: list[TextEntry] = []
    if fmt == "lines":
        entries = [TextEntry(line.strip()) for line in raw.splitlines() if line.strip()]
    elif fmt == "jsonl":
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                text = item.pop("text")
                if not isinstance(text, str):
                    raise TypeError(text)
                text = text.strip()
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                raise InputPathError(f'{path}, line {number}: expected a JSON object with a "text" string.') from None
            ext = item.pop("id", None)
            entries.append(TextEntry(text, None if ext is None else str(ext), item or None))
    elif fmt == "csv":
        dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
        csv.field_size_limit(max(csv.field_size_limit(), len(raw)))  # a long description is still one text
        reader = csv.DictReader(io.StringIO(raw), dialect=dialect)
        try:
            if not reader.fieldnames or "text" not in reader.fieldnames:
                raise InputPathError(f"{path} has no 'text' column (columns: {', '.join(reader.fieldnames or [])}).")
            for row in reader:
                text = (row.pop("text") or "").strip()
                ext = row.pop("id", None)
                meta = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                entries.append(TextEntry(text, ext or None, meta or None))
        except csv.Error as exc:
            raise InputPathError(f"{path}, line {reader.line_num}: not valid CSV ({exc}).") from None
    else:
        raise InputPathError(f"Unknown text file format {fmt!r}: use lines, jsonl or csv.")
    entries = [e for e in entries if e.text]
    if not entries:
        raise InputPathError(f"{path} holds no texts.")
    return entries


class TextStore:
    """The ``texts`` table: adding, listing, removing, embedding, and searching texts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, entries: Sequence[TextEntry], model: RetrievalModel, source: str = USER) -> tuple[int, int]:
        """Store new texts and embed them; returns (added, already present)."""
        with self.db.reader() as session:
            known = set(session.scalars(select(TextRow.text_hash).where(TextRow.source == source)))
        fresh: dict[str, TextEntry] = {}
        for entry in entries:
            digest = text_hash(entry.text)
            if digest not in known:
                fresh.setdefault(digest, entry)
        now = utcnow()
        with self.db.transaction() as session:
            session.add_all(
                TextRow(source=source, external_id=e.external_id, text=e.text, text_hash=h, meta=e.meta,
                        added_at=now)
                for h, e in fresh.items()
            )
        self.embed_missing(model)
        return len(fresh), len(entries) - len(fresh)

    def embed_missing(self, model: RetrievalModel, batch_size: int = 256) -> int:
        """Embed every text without a vector from ``model`` (new texts, or after a model change)."""
        fp = model.fingerprint
        with self.db.reader() as session:
            todo = session.execute(
                select(TextRow.id, TextRow.text).where(or_(TextRow.model.is_(None), TextRow.model != fp))
            ).all()
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            vectors = model.embed_texts([t for _, t in chunk])
            with self.db.transaction() as session:
                for (text_id, _), vector in zip(chunk, vectors):
                    row = session.get(TextRow, text_id)
                    if row is not None:
                        row.model, row.vector = fp, vector_to_bytes(vector)
        return len(todo)

    def sync_captions(self, model: RetrievalModel) -> int:
        """Make every generated caption of the library a searchable text."""
        with self.db.reader() as session:
            captions = list(dict.fromkeys(session.scalars(select(CaptionRow.caption))))
        added, _ = self.add([TextEntry(c) for c in captions], model, CAPTIONS)
        return added

    def count(self, source: str = USER) -> int:
        with self.db.reader() as session:
            return int(session.scalar(select(func.count()).select_from(TextRow).where(TextRow.source == source)) or 0)

    def list(self, source: str = USER) -> list[TextRow]:
        with self.db.reader() as session:
            return list(session.scalars(select(TextRow).where(TextRow.source == source).order_by(TextRow.id)))

    def remove(self, keys: Sequence[str], source: str = USER) -> int:
        """Remove texts by id, or by the id given in the file they came from."""
        ids = [int(k) for k in keys if k.isascii() and k.isdigit() and len(k) < 19]  # ids fit in 63 bits
        # No stored id holds a NUL (PostgreSQL can't compare one) or bytes that are not UTF-8.
        keys = [checked(k, "A text id") for k in keys if "\0" not in k]
        with self.db.transaction() as session:
            result = session.execute(
                delete(TextRow).where(
                    TextRow.source == source, or_(TextRow.id.in_(ids), TextRow.external_id.in_(list(keys)))
                )
            )
            return int(result.rowcount or 0)

    def vectors(self, fp: str, dim: int, source: str) -> tuple[dict[int, TextRow], npt.NDArray[np.float32]]:
        """The texts of ``source`` embedded by model ``fp``, by id, and their vectors in that order."""
        with self.db.reader() as session:
            rows = list(session.scalars(
                select(TextRow).where(TextRow.source == source, TextRow.model == fp, TextRow.vector.is_not(None))
            ))
        return {r.id: r for r in rows}, bytes_to_vectors([r.vector for r in rows], dim)


def rank_texts(
    model: RetrievalModel,
    image_vector: npt.NDArray[np.float32],
    tokens: torch.Tensor | None,
    texts: Sequence[str],
    text_vectors: npt.NDArray[np.float32],
    k: int,
    rerank_depth: int,
    batch_size: int = 64,
) -> list[tuple[int, float, float, float | None]]:
    """(index into ``texts``, score, itc, itm probability) best first, ``k`` of them.

    ``tokens`` (the image's vision output, batch 1) is needed when ``rerank_depth`` > 0.
    """
    itc = max_sim(text_vectors, image_vector)  # one vector per image, or BLIP-2's several
    order = np.argsort(-itc, kind="stable")
    depth = min(rerank_depth, len(order)) if tokens is not None else 0
    head = order[:depth]
    results: list[tuple[int, float, float, float | None]] = []
    if depth:
        logits = np.concatenate([
            model.itm_logits([texts[i] for i in head[s : s + batch_size]], tokens)
            for s in range(0, depth, batch_size)
        ])
        logit, prob = match_scores(logits)
        scores = logit + itc[head]
        for j in np.argsort(-scores, kind="stable"):
            results.append((int(head[j]), float(scores[j]), float(itc[head[j]]), float(prob[j])))
    results += [(int(i), float(itc[i]), float(itc[i]), None) for i in order[depth:]]
    return results[:k]
