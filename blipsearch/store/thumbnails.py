"""Small renditions of indexed images for viewing: thumbnails for grids, previews for a detail view.

One file per image content and size, in the library folder
(``thumbnails/thumb/ab/abcd....webp``): moved and copied photos share theirs,
and a changed photo gets a new one. Thumbnails are made while indexing, from
the image already decoded for the model, or on first request; previews only
on request. Files are written atomically; a failure to write one never fails
an index run or a request that can be answered from the original.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ..images.decode import open_image
from ..system import atomic_write

# Longest side in pixels. A grid tile is ~160-240 CSS pixels; a preview fills a screen.
SIZES = {"thumb": 320, "preview": 1600}
FORMAT, SUFFIX, MEDIA_TYPE = "WEBP", ".webp", "image/webp"
QUALITY = 80


def render(image: Image.Image, kind: str) -> bytes:
    """The encoded rendition of an upright RGB image (never larger than the image itself)."""
    size = SIZES[kind]
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, FORMAT, quality=QUALITY, method=4)
    return out.getvalue()


class ThumbnailStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, content_hash: str, kind: str = "thumb") -> Path:
        if kind not in SIZES or not content_hash.isalnum():
            raise ValueError(f"no rendition {kind!r} of {content_hash!r}")
        return self.folder / kind / content_hash[:2] / f"{content_hash}{SUFFIX}"

    def get(self, content_hash: str, kind: str = "thumb") -> Path | None:
        path = self.path(content_hash, kind)
        return path if path.is_file() else None

    def put(self, content_hash: str, image: Image.Image, kind: str = "thumb") -> Path | None:
        """Write the rendition of ``image`` unless it exists; ``None`` when it can't be written."""
        path = self.path(content_hash, kind)
        if path.is_file():
            return path
        try:
            data = render(image, kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda fh: fh.write(data), point="thumbnail")
        except OSError:  # a full disk or a read-only library: the original can still be shown
            return None
        return path

    def put_decoded(self, content_hash: str, data: bytes, image: Image.Image, full_size: tuple[int, int]) -> None:
        """The thumbnail of an image decoded for a model, possibly at a reduced JPEG draft
        size: decoded again, large enough, only when that draft is smaller than a thumbnail."""
        if self.get(content_hash) is not None:
            return
        size = SIZES["thumb"]
        if max(image.size) < min(size, max(full_size)):
            image = open_image(data, (size, size))[0]
        self.put(content_hash, image)

    def prune(self, keep: Iterable[str]) -> int:
        """Delete the renditions of contents no longer indexed; returns how many went."""
        wanted = set(keep)
        removed = 0
        for kind in SIZES:
            for path in (self.folder / kind).glob(f"*/*{SUFFIX}"):
                if path.name[: -len(SUFFIX)] not in wanted:
                    try:
                        os.unlink(path)
                        removed += 1
                    except OSError:
                        pass
        return removed
