"""The FAISS vector index: derived from the database, saved atomically, rebuilt when stale.

The file holds a small JSON header (generation, model fingerprint, dimension,
count) followed by the serialized FAISS index. The header's generation is
compared with the database's: any difference means the file is stale (an
interrupted or concurrent run) and it is rebuilt from the stored vectors.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

_MAGIC = b"BLIPSVEC"
_VERSION = 1


@dataclass(frozen=True)
class IndexHeader:
    generation: int
    model: str
    dim: int
    count: int


class VectorIndex:
    """Exact inner-product search over L2-normalized vectors, keyed by database ids."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))

    def remove(self, ids: list[int] | npt.NDArray[np.int64]) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, np.int64))

    def replace(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        self.remove(ids)
        self.add(ids, vectors)

    def search(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top ``k`` (cosine, id) per query; rows are cut to the hits that exist."""
        k = min(k, len(self))
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids

    def vectors_of(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """The stored vectors of ``ids`` (which must be in the index)."""
        out = np.zeros((len(ids), self.dim), np.float32)
        for row, image_id in enumerate(ids):
            out[row] = self.index.reconstruct(int(image_id))
        return out

    # -- persistence ----------------------------------------------------------------
    def save(self, path: Path, generation: int, model: str) -> None:
        """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``."""
        header = json.dumps(
            {"version": _VERSION, "generation": generation, "model": model, "dim": self.dim, "count": len(self)}
        ).encode()
        payload = faiss.serialize_index(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + struct.pack("<I", len(header)) + header)
                fh.write(payload.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, IndexHeader] | None:
        """The saved index and its header, or ``None`` if the file is missing or unreadable."""
        try:
            data = path.read_bytes()
            if data[:8] != _MAGIC:
                return None
            (length,) = struct.unpack("<I", data[8:12])
            meta = json.loads(data[12 : 12 + length])
            if meta.get("version") != _VERSION:
                return None
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8, offset=12 + length))
            header = IndexHeader(int(meta["generation"]), str(meta["model"]), int(meta["dim"]), int(meta["count"]))
        except (OSError, ValueError, KeyError, struct.error, RuntimeError):
            return None
        if index.ntotal != header.count or index.d != header.dim:
            return None
        return cls(header.dim, index), header


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
