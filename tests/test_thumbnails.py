"""Thumbnails and previews: made while indexing or on request, upright, small, one per content."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image
from PIL import Image

from blipsearch import Library
from blipsearch.errors import ImageChangedError


def _thumbs(library_dir: Path, kind: str = "thumb") -> list[Path]:
    return sorted((library_dir / "thumbnails" / kind).glob("*/*.webp"))


def _id(lib: Library, path: Path) -> int:
    row = lib.db.image_by_path(os.fsencode(path))
    assert row is not None
    return row.id


def test_index_makes_one_thumbnail_per_content(library_dir: Path, tiny_model: Path, photos: Path) -> None:
    shutil.copy(photos / "garden" / "img06.png", photos / "garden" / "copy.png")
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos])
        thumbs = _thumbs(library_dir)
        assert len(thumbs) == 12  # 13 files, 12 contents
        path, content_hash = lib.rendition(_id(lib, photos / "garden" / "copy.png"))
        assert path == lib.rendition(_id(lib, photos / "garden" / "img06.png"))[0] and content_hash in path.name
        with Image.open(path) as thumb:
            assert thumb.format == "WEBP" and thumb.size == (32, 32)  # never enlarged
        # A file deleted, one changed: their old thumbnails go when no image has that content any more.
        (photos / "garden" / "img07.png").unlink()
        draw_image(77).save(photos / "garden" / "img08.png")
        lib.index([photos])
        assert len(_thumbs(library_dir)) == 11


def test_large_photo_thumbnail_is_small_and_upright(library_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated 90 degrees clockwise
    sideways = Image.fromarray(np.tile(np.linspace(0, 255, 2000, dtype=np.uint8), (1500, 1))).convert("RGB")
    sideways.save(folder / "big.jpg", exif=exif, quality=90)
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([folder])
        image_id = _id(lib, folder / "big.jpg")
        thumb, _ = lib.rendition(image_id)
        preview, _ = lib.rendition(image_id, "preview")
        with Image.open(thumb) as small, Image.open(preview) as large:
            assert small.size == (240, 320)  # upright: portrait, longest side 320
            assert large.size == (1200, 1600)  # 1500 x 2000 upright, fitted into 1600
            # Upright means the gradient now runs top to bottom.
            column = np.asarray(small.convert("L"))[:, 120].astype(int)
            assert column[5] < column[-5] - 100
        assert thumb.stat().st_size < 30_000 < (folder / "big.jpg").stat().st_size


def test_thumbnail_on_request_for_an_older_library(library_dir: Path, tiny_model: Path, photos: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos], thumbnails=False)
        assert _thumbs(library_dir) == []
        path, _ = lib.rendition(_id(lib, photos / "holiday" / "img03.png"))
        assert _thumbs(library_dir) == [path]
        with Image.open(path) as thumb, Image.open(photos / "holiday" / "img03.png") as original:
            diff = np.abs(np.asarray(thumb.convert("RGB"), int) - np.asarray(original.convert("RGB"), int))
            assert diff.mean() < 8  # WebP at quality 80, same size


def test_no_thumbnail_of_a_file_changed_since_indexing(library_dir: Path, tiny_model: Path, photos: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos], thumbnails=False)
        image_id = _id(lib, photos / "holiday" / "img04.png")
        draw_image(123).save(photos / "holiday" / "img04.png")
        with pytest.raises(ImageChangedError, match="run `blipsearch index` again"):
            lib.rendition(image_id)

