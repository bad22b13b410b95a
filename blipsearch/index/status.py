"""What a library holds: counts of images, searchable vectors, failures and images still to embed,
its model, and the state of its vector index. Reads only: nothing is rebuilt here."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..ann.index import RECALL_TARGET, VectorIndex
from ..filters import NO_FILTERS, Filters
from ..results import Failure
from ..texts import TextStore

if TYPE_CHECKING:
    from ..workspace import Workspace


class LibraryState:
    """The state of the library of ``ws``."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many searchable images pass ``filters`` (all of them without): what a search ranks."""
        db = self.ws.db
        fp = db.library().model_fingerprint
        if fp is None:
            return 0
        if filters:
            return len(db.filtered_ids(fp, filters))
        return db.counts(fp)[1]

    def unsearchable(self) -> tuple[int, int]:
        """(indexed images without a vector from the library's model, indexed images)."""
        images, searchable, _ = self.ws.db.counts(self.ws.db.library().model_fingerprint)
        return images - searchable, images

    def status(self) -> dict[str, Any]:
        """Counts, the model, the vector index, and where the library and its database are (see
        :meth:`blipsearch.library.Library.status`)."""
        ws = self.ws
        record = ws.db.library()
        images, stored_vectors, failures = ws.db.counts(record.model_fingerprint)
        searchable = 0
        index: dict[str, Any] = {"index": None}
        if record.model_fingerprint:  # read-only: a stale file is rebuilt by the next search or index run
            header = VectorIndex.read_header(ws.vectors.path)
            fresh = header is not None and ws.vectors.mirrors(header, record.generation, record.model_fingerprint)
            searchable = header.count if fresh and header else stored_vectors
            if header is not None:
                # The vector index: exact, or approximate with the lists it scans and the recall@10
                # measured on this library's vectors when it was built.
                index = {"index": "exact" if header.kind == "flat" else header.kind}
                if header.kind != "flat":
                    index |= {"index_nprobe": header.nprobe or None, "index_recall_at_10": header.recall,
                              "index_filtered_nprobe": header.filtered_nprobe or None,
                              "index_filtered_recall_at_10": header.filtered_recall}
        index["recall_target"] = record.recall_target or RECALL_TARGET
        return {
            "images": images,
            "vectors": searchable,
            "failures": failures,
            "stale": images - stored_vectors,
            "texts": TextStore(ws.db).count(),
            "model": record.model,
            "model_fingerprint": record.model_fingerprint,
            "dim": record.dim,
            "family": record.family,
            "vectors_per_image": record.queries,
            **index,
            "library": str(ws.location),
            "database": ws.db.display_url,
        }

    def failures(self) -> list[Failure]:
        """The files that could not be indexed, with the reason, by path."""
        return [Failure(os.fsdecode(f.path), f.reason, "every run" if f.size is None else "once changed")
                for f in self.ws.db.failures()]
