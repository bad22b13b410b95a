"""Metadata in index runs: sidecars written and edited by exiftool are read by the next run without
embedding the photo again; XMP dates date photos without EXIF; hostile sidecars are warnings; a
sidecar that goes takes its keywords with it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import draw_image, exiftool, needs_exiftool
from sqlalchemy import select

from blipsearch import Library
from blipsearch.store.schema import ImageRow, KeywordRow


def _row(lib: Library, name: str) -> ImageRow:
    with lib.db.reader() as session:
        return next(r for r in session.scalars(select(ImageRow)) if os.fsdecode(r.path).endswith(name))


def _terms(lib: Library, image_id: int) -> set[str]:
    with lib.db.reader() as session:
        return set(session.scalars(select(KeywordRow.term).where(KeywordRow.image_id == image_id)))


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, db_url: str | None) -> Library:
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as library:
        yield library


@needs_exiftool
def test_a_sidecar_edited_by_exiftool_is_read_again_without_embedding(lib: Library, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    draw_image(1, 32).save(folder / "IMG_1.jpg")
    draw_image(2, 32).save(folder / "IMG_2.jpg")
    first = lib.index([folder])
    assert first.added == 2 and first.refreshed == 0
    before = _row(lib, "IMG_1.jpg")
    assert before.keywords is None and before.sidecar is None

    # darktable's naming, written by exiftool; the photo itself is not touched
    sidecar = folder / "IMG_1.jpg.xmp"
    exiftool("-XMP-dc:Subject=Beach", "-XMP-dc:Subject=Été", "-XMP-xmp:Rating=4", "-XMP-xmp:Label=Red",
             "-XMP-dc:Title=Summer", "-XMP-dc:Description=Two of us on the sand",
             "-XMP-xmp:CreateDate=2021-04-11T15:47:53-05:00", "-o", sidecar, folder / "IMG_1.jpg")
    again = lib.index([folder])
    assert (again.refreshed, again.embedded, again.unchanged, again.skipped) == (1, 0, 2, 0)
    row = _row(lib, "IMG_1.jpg")
    assert row.vector == before.vector and row.indexed_at == before.indexed_at
    assert (row.keywords, row.rating, row.label, row.title, row.description) == (
        ["Beach", "Été"], 4, "Red", "Summer", "Two of us on the sand")
    assert (row.taken_source, row.taken_offset) == ("xmp:CreateDate", -300)
    assert _terms(lib, row.id) == {"beach", "ete"}
    assert lib.index([folder]).refreshed == 0  # read once

    # edited by exiftool in place: a hierarchical keyword, another rating
    exiftool("-overwrite_original", "-XMP-lr:HierarchicalSubject=Places|France|Paris", "-XMP-xmp:Rating=2",
             sidecar)
    edited = lib.index([folder])
    assert (edited.refreshed, edited.embedded) == (1, 0)
    row = _row(lib, "IMG_1.jpg")
    assert row.rating == 2 and "Places|France|Paris" in row.keywords and row.vector == before.vector
    assert {"places", "france", "paris", "places|france|paris", "beach"} <= _terms(lib, row.id)
    assert _row(lib, "IMG_2.jpg").keywords is None

    # the sidecar goes: so do its keywords
    sidecar.unlink()
    gone = lib.index([folder])
    assert gone.refreshed == 1
    row = _row(lib, "IMG_1.jpg")
    assert row.keywords is None and row.rating is None and row.sidecar is None and _terms(lib, row.id) == set()


def test_lightroom_naming_and_hostile_sidecars_are_warnings_not_losses(lib: Library, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        draw_image(i, 32).save(folder / f"P{i}.png")
    (folder / "P0.xmp").write_text(  # Lightroom names a sidecar after the photo without its extension
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:photoshop='
        '"http://ns.adobe.com/photoshop/1.0/" photoshop:DateCreated="2008-05-06T07:08:09">'
        '<dc:subject><rdf:Bag><rdf:li>Lisbon</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>')
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
              ']><x:xmpmeta xmlns:x="adobe:ns:meta/">&lol2;</x:xmpmeta>')
    (folder / "P1.png.xmp").write_text(laughs)
    (folder / "P2.png.xmp").write_bytes(b"\xff\xfe\x00<not xml" * 1000)
    report = lib.index([folder])
    assert (report.added, report.failed, report.skipped) == (3, 0, 0)
    lisbon = _row(lib, "P0.png")
    assert lisbon.keywords == ["Lisbon"] and lisbon.taken_source == "photoshop:DateCreated"
    assert lisbon.taken_offset is None and lisbon.taken_at.year == 2008
    for name in ("P1.png", "P2.png"):
        row = _row(lib, name)
        assert row.vector is not None and row.keywords is None
        assert row.metadata_warnings and all(isinstance(w, str) and w.endswith(".") for w in row.metadata_warnings)
    assert len(lib.search("a red circle", k=10, rerank_hits=False)) == 3
