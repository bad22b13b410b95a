"""Filtered and paged search, and query images given by id or by bytes, against brute force."""

from __future__ import annotations

import io
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image
from PIL import Image

from blipsearch import Library
from blipsearch.errors import InputPathError, UnknownImageError
from blipsearch.filters import Filters, parse_date
from blipsearch.library import ImageData
from blipsearch.store.schema import ImageRow

QUERY = "a red circle left of a blue square"


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, photos: Path, db_url: str | None) -> Library:
    # Modification times spread over 2023 (months 1..12), so that date filters split the set.
    for i, path in enumerate(sorted(photos.rglob("*.png"))):
        stamp = datetime(2023, i + 1, 15, 12).timestamp()
        os.utime(path, (stamp, stamp))
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as library:
        library.index([photos])
        yield library


def _rows(lib: Library) -> list[ImageRow]:
    with lib.db.reader() as session:
        return list(session.query(ImageRow).order_by(ImageRow.id).all())


def _brute_force(lib: Library, keep, query: np.ndarray) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    rows = [r for r in _rows(lib) if keep(r)]
    scores = [float(np.frombuffer(r.vector, np.float32) @ query) for r in rows]
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [(os.fsdecode(rows[i].path), scores[i]) for i in order]


def _when(row: ImageRow) -> datetime:
    return row.taken_at or datetime.fromtimestamp(row.mtime_ns / 1e9)


def test_filters_rank_only_matching_images_exactly(lib: Library, photos: Path) -> None:
    query = lib.model.embed_texts([QUERY])[0]
    cases = [
        (Filters.make(folders=[photos / "garden"]), lambda r: r.path.startswith(os.fsencode(photos / "garden") + b"/")),
        (Filters.make(after="2023-04", before="2023-09"),
         lambda r: datetime(2023, 4, 1) <= _when(r) < datetime(2023, 9, 1)),
        (Filters.make(folders=[photos / "holiday"], after="2023-03"),
         lambda r: b"/holiday/" in r.path and _when(r) >= datetime(2023, 3, 1)),
    ]
    for filters, keep in cases:
        expected = _brute_force(lib, keep, query)
        assert 0 < len(expected) < 12
        hits = lib.search(QUERY, k=3, rerank_hits=False, filters=filters)
        # k=3 gives the three best *matching* images, not the matching ones among the best three.
        assert [h.path for h in hits] == [p for p, _ in expected[:3]]
        np.testing.assert_allclose([h.itc for h in hits], [s for _, s in expected[:3]], atol=1e-5)
        everything = lib.search(QUERY, k=50, rerank_hits=False, filters=filters)
        assert [h.path for h in everything] == [p for p, _ in expected]


def test_a_folder_filter_is_not_a_name_prefix(lib: Library, photos: Path, tmp_path: Path) -> None:
    twin = photos.parent / (photos.name + "-more")  # ".../photos-more" starts with ".../photos"
    twin.mkdir()
    draw_image(40).save(twin / "x.png")
    lib.index([twin])
    hits = lib.search(QUERY, k=50, rerank_hits=False, filters=Filters.make(folders=[photos]))
    assert len(hits) == 12 and not any("photos-more" in h.path for h in hits)


def test_capture_time_wins_over_file_time(lib: Library, tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    folder.mkdir()
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2019:05:01 10:00:00"
    draw_image(50, 64).save(folder / "old.jpg", exif=exif)  # file time: now; taken in 2019
    lib.index([folder])
    in_2019 = lib.search(QUERY, k=50, rerank_hits=False, filters=Filters.make(after="2019", before="2020"))
    assert [os.path.basename(h.path) for h in in_2019] == ["old.jpg"]
    # Dates beyond what file times hold are no error: everything is after year 1 and before 9999.
    for after, before, count in (("0001", None, 13), (None, "0001", 0), ("9999-12-31", None, 0), (None, "9999", 13)):
        found = lib.search(QUERY, k=50, rerank_hits=False, filters=Filters.make(after=after, before=before))
        assert len(found) == count, (after, before)
    this_year = Filters.make(after=str(datetime.now().year))
    assert "old.jpg" not in [os.path.basename(h.path) for h in lib.search(QUERY, k=50, rerank_hits=False,
                                                                          filters=this_year)]


def test_reranked_filtered_search_reranks_only_matching_images(lib: Library, photos: Path) -> None:
    filters = Filters.make(folders=[photos / "holiday"])
    hits = lib.search(QUERY, k=6, rerank_depth=4, filters=filters)
    assert all("/holiday/" in h.path for h in hits)
    assert [h.itm is not None for h in hits] == [True] * 4 + [False] * 2


def test_paging_continues_the_same_ranking(lib: Library) -> None:
    whole = lib.search(QUERY, k=12, rerank_depth=5)
    pages = [lib.search(QUERY, k=5, rerank_depth=5, offset=o) for o in (0, 5, 10)]
    assert [h.path for page in pages for h in page] == [h.path for h in whole]
    assert [h.rank for page in pages for h in page] == list(range(1, 13))
    assert lib.search(QUERY, k=5, offset=12) == []


def test_similar_by_id_and_by_bytes_equals_by_path(lib: Library, photos: Path) -> None:
    path = photos / "garden" / "img07.png"
    by_path = lib.similar(path, k=5)
    row = lib.db.image_by_path(os.fsencode(path))
    assert row is not None
    by_id = lib.similar(row.id, k=5)
    assert [(h.id, round(h.score, 5)) for h in by_id] == [(h.id, round(h.score, 5)) for h in by_path]
    assert row.id not in [h.id for h in by_id]
    upload = lib.similar(ImageData(path.read_bytes()), k=6)
    assert upload[0].id == row.id and upload[0].score == pytest.approx(1.0, abs=1e-4)  # an upload is not excluded
    assert [h.id for h in upload[1:]] == [h.id for h in by_path]
    filtered = lib.similar(row.id, k=5, filters=Filters.make(folders=[photos / "holiday"]))
    assert filtered and all("/holiday/" in h.path for h in filtered)
    with pytest.raises(UnknownImageError, match="999"):
        lib.similar(999)
    buffer = io.BytesIO(b"not an image")
    with pytest.raises(InputPathError, match="as a query"):
        lib.similar(ImageData(buffer.getvalue()))


def test_image_details(lib: Library, photos: Path) -> None:
    path = photos / "holiday" / "img02.png"
    row = lib.db.image_by_path(os.fsencode(path))
    assert row is not None
    info = lib.image(row.id)
    assert info.path == str(path) and info.size == path.stat().st_size
    assert (info.width, info.height) == (32, 32) and info.camera is None and info.taken_at is None
    assert info.modified == datetime(2023, 9, 15, 12)  # garden/ sorts first: holiday/img02 is the 9th
    assert info.to_dict()["modified"] == "2023-09-15T12:00:00"


def test_dates_parse_as_periods() -> None:
    assert parse_date("2024") == datetime(2024, 1, 1)
    assert parse_date("2024-07") == datetime(2024, 7, 1)
    assert parse_date("2024-07-14") == datetime(2024, 7, 14)
    assert parse_date("2024-07-14T18:30") == datetime(2024, 7, 14, 18, 30)
    for bad in ("yesterday", "2024-13", "2024-02-30", "24"):
        with pytest.raises(InputPathError, match="not a date"):
            parse_date(bad)
    with pytest.raises(InputPathError, match="empty"):
        Filters.make(after="2024", before="2023")
    assert not Filters.make(folders=[""], tag="  ")


def test_file_checks_refuse_a_file_replaced_since_indexing(lib: Library, photos: Path, tmp_path: Path) -> None:
    from blipsearch.errors import ImageChangedError

    path = photos / "holiday" / "img01.png"
    row = lib.db.image_by_path(os.fsencode(path))
    assert row is not None and lib.image_file(row.id) == os.fsencode(path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    path.unlink()
    path.symlink_to(secret)  # a link out of the photo folder, where an indexed photo was
    with pytest.raises(ImageChangedError, match="changed since it was indexed"):
        lib.image_file(row.id)
    path.unlink()
    with pytest.raises(ImageChangedError, match="gone"):
        lib.image_file(row.id)
    time.sleep(0)  # the vector is still there: similar-by-id needs no file
    assert lib.similar(row.id, k=3)


def test_camera_size_and_format_filters_equal_brute_force(lib: Library, photos: Path, tmp_path: Path) -> None:
    extra = photos / "camera"
    extra.mkdir()
    for i, (name, size, camera) in enumerate([("a.jpg", (64, 48), ("Canon", "Canon EOS R6")),
                                              ("b.JPG", (40, 90), ("Apple", "iPhone 13 mini")),
                                              ("c.webp", (120, 100), None), ("d.png", (100, 100), None)]):
        image = draw_image(60 + i).resize(size)
        exif = Image.Exif()
        if camera:
            exif[0x010F], exif[0x0110] = camera  # Make, Model
        image.save(extra / name, exif=exif) if camera else image.save(extra / name)
    lib.index([photos])
    query = lib.model.embed_texts([QUERY])[0]

    def ext(r: ImageRow) -> str:
        return os.path.splitext(os.fsdecode(r.path))[1].lower()

    def camera(r: ImageRow) -> str:
        exif = r.exif or {}
        return f"{exif.get('Make', '')} {exif.get('Model', '')}".lower()

    cases = [
        (Filters.make(camera="EOS r6"), lambda r: "eos r6" in camera(r)),
        (Filters.make(camera="iphone"), lambda r: "iphone" in camera(r)),
        (Filters.make(min_size="90x90"), lambda r: (r.width or 0) >= 90 and (r.height or 0) >= 90),
        (Filters.make(min_size="41x41"), lambda r: (r.width or 0) >= 41 and (r.height or 0) >= 41),
        (Filters.make(formats=["jpeg"]), lambda r: ext(r) in (".jpg", ".jpeg", ".jpe")),
        (Filters.make(formats=["webp", "jpg"]), lambda r: ext(r) in (".webp", ".jpg", ".jpeg", ".jpe")),
        (Filters.make(formats=["png"], min_size="100x100", folders=[extra]), lambda r: r.path.endswith(b"/d.png")),
    ]
    for filters, keep in cases:
        expected = _brute_force(lib, keep, query)
        assert 0 < len(expected) < 16, filters
        hits = lib.search(QUERY, k=50, rerank_hits=False, filters=filters)
        assert [h.path for h in hits] == [p for p, _ in expected], filters
        assert lib.count(filters) == len(expected)
    assert lib.search(QUERY, k=5, rerank_hits=False, filters=Filters.make(camera="nikon")) == []


@pytest.mark.parametrize("kwargs", [{"min_size": "0x-3"}, {"min_size": "big"}, {"min_size": "0x100"},
                                    {"formats": ["raw-ish"]}, {"after": "yesterdayish"}])
def test_bad_filter_values_are_one_sentence(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputPathError):
        Filters.make(**kwargs)


@pytest.mark.parametrize("args", [["--min-size", "0x-3"], ["--after", "yesterdayish"], ["--format", "raw-ish"]])
def test_bad_filter_values_are_usage_errors(args: list[str], lib: Library) -> None:
    from click.testing import CliRunner

    from blipsearch.cli import main

    result = CliRunner().invoke(main, ["search", "a dog", *args, "--library", str(lib.location)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()[-1]) > 20  # a sentence that says what is wrong
