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
    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = folder
        self.budget = budget_bytes
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self._size = sum(p.stat().st_size for p in folder.glob("*.npy"))

    def _path(self, content_hash: str, model: str) -> Path:
        return self.folder / f"{model}-{content_hash}.npy"

    def get(self, content_hash: str, model: str) -> torch.Tensor | None:
        path = self._path(content_hash, model)
        try:
            # Memory-mapped: only the pages the cross-attention reads are loaded.
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
            os.utime(path)  # least recently used = oldest mtime
        except (OSError, ValueError):
            return None
        import torch

        return torch.from_numpy(np.array(tokens, dtype=np.float32))

    def put(self, content_hash: str, model: str, tokens: torch.Tensor) -> None:
        if self.budget <= 0:
            return
        import torch

        array = tokens.detach().to("cpu", torch.float16).numpy()
        path = self._path(content_hash, model)
        atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))
        with self._lock:
            self._size += path.stat().st_size
            if self._size > self.budget:
                self._evict()

    def _evict(self) -> None:
        files = sorted(self.folder.glob("*.npy"), key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= 0.9 * self.budget:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            total -= size
        self._size = total

    @property
    def size(self) -> int:
        return self._size
