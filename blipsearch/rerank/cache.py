"""A persistent cache of vision-encoder outputs for reranking.

Reranking a candidate costs one vision-encoder pass (about 1 s on two CPU
cores at base size) plus one cross-attention pass (about 0.16 s). Caching
the encoder's tokens (577 x 768 at base size, fp16: 0.9 MB an image) leaves
only the second. Files are memory-mapped .npy, one per image content and
model, written atomically; when the cache outgrows its budget the least
recently used files are deleted.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..system import atomic_write

if TYPE_CHECKING:
    import torch


class TokenCache:
    """Never fails a search or an index run: a damaged, vanished or unwritable file is a miss.

    Several processes may share one folder (a search beside an index run):
    each evicts what it finds on disk, and files another one deleted first
    are simply gone.
    """

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = folder
        self.budget = budget_bytes
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self._size = sum(size for _, _, size in self._files())

    def _path(self, content_hash: str, model: str) -> Path:
        return self.folder / f"{model}-{content_hash}.npy"

    def _files(self) -> list[tuple[int, Path, int]]:
        """(mtime, path, size) of the cached files still there."""
        found = []
        for path in self.folder.glob("*.npy"):
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((st.st_mtime_ns, path, st.st_size))
        return found

    def get(self, content_hash: str, model: str) -> torch.Tensor | None:
        path = self._path(content_hash, model)
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
            if tokens.ndim != 2 or tokens.dtype != np.float16:
                raise ValueError(f"unexpected tokens {tokens.dtype} {tokens.shape}")
            array = np.array(tokens, dtype=np.float32)
            os.utime(path)  # least recently used = oldest mtime
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - empty (a crash mid-write), truncated or foreign: drop it
            path.unlink(missing_ok=True)
            return None
        import torch

        return torch.from_numpy(array)

    def put(self, content_hash: str, model: str, tokens: torch.Tensor) -> None:
        path = self._path(content_hash, model)
        if self.budget <= 0 or path.exists():  # same content and model: same tokens
            return
        import torch

        array = tokens.detach().to("cpu", torch.float16).numpy()
        try:
            atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False), point="token-cache")
            size = path.stat().st_size
        except OSError:  # a full disk or a read-only folder: no cache, not no search
            return
        with self._lock:
            self._size += size
            if self._size > self.budget:
                self._evict()

    def _evict(self) -> None:
        files = sorted(self._files())
        total = sum(size for _, _, size in files)
        for _, path, size in files:
            if total <= 0.9 * self.budget:
                break
            path.unlink(missing_ok=True)
            total -= size
        self._size = total

    @property
    def size(self) -> int:
        return self._size
