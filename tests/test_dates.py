"""Capture times: each source and offset case, the stored wall clock, offset and instant, and what the
date filters keep (instants where the offset is known, wall clocks where it is not)."""

from __future__ import annotations

import glob
import os
import struct
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import draw_image
from PIL import Image

from blipsearch import Library
from blipsearch.filters import Filters
from blipsearch.metadata import METADATA_VERSION
from blipsearch.metadata.dates import (
    capture_time,
    media_created,
    parse_iso,
    parse_offset,
)
from blipsearch.store.schema import ImageRow

EXIF_IFD = 0x8769
# EXIF tags by name (Exif IFD)
ORIGINAL, DIGITIZED = 0x9003, 0x9004
SUBSEC_ORIGINAL, SUBSEC_DIGITIZED = 0x9291, 0x9292
OFFSET_ORIGINAL, OFFSET_DIGITIZED = 0x9011, 0x9012
MODIFY_DATE = 0x0132  # IFD0's DateTime

# name -> (IFD0 tags, Exif IFD tags), then (wall clock, offset in minutes, instant in UTC, source)
CASES = {
    "iphone": (({}, {ORIGINAL: "2021:04:11 15:47:53", SUBSEC_ORIGINAL: "123", OFFSET_ORIGINAL: "-05:00"}),
               (datetime(2021, 4, 11, 15, 47, 53, 123000), -300, datetime(2021, 4, 11, 20, 47, 53, 123000),
                "DateTimeOriginal")),
    "no-offset": (({}, {ORIGINAL: "2021:04:11 15:47:53"}),
                  (datetime(2021, 4, 11, 15, 47, 53), None, None, "DateTimeOriginal")),
    "create-date": (({MODIFY_DATE: "2024:01:02 03:04:05"},
                     {DIGITIZED: "2008:05:06 07:08:09", SUBSEC_DIGITIZED: "5", OFFSET_DIGITIZED: "+09:00"}),
                    (datetime(2008, 5, 6, 7, 8, 9, 500000), 540, datetime(2008, 5, 5, 22, 8, 9, 500000),
                     "CreateDate")),
    "half-hour": (({}, {ORIGINAL: "2022:12:31 23:30:00", OFFSET_ORIGINAL: "+05:30"}),
                  (datetime(2022, 12, 31, 23, 30), 330, datetime(2022, 12, 31, 18, 0), "DateTimeOriginal")),
    "bad-offset": (({}, {ORIGINAL: "2022:06:01 08:00:00", OFFSET_ORIGINAL: "+25:00"}),
                   (datetime(2022, 6, 1, 8, 0), None, None, "DateTimeOriginal")),
    "modify-only": (({MODIFY_DATE: "2024:01:02 03:04:05"}, {}), (None, None, None, None)),
}
FILE_TIME = datetime(2019, 3, 3, 12, 0)


def _jpeg(path: Path, seed: int, tags: tuple[dict[int, str], dict[int, str]]) -> None:
    exif = Image.Exif()
    for tag, value in tags[0].items():
        exif[tag] = value
    for tag, value in tags[1].items():
        exif.get_ifd(EXIF_IFD)[tag] = value
    draw_image(seed, 32).save(path, exif=exif)
    os.utime(path, (FILE_TIME.timestamp(), FILE_TIME.timestamp()))


@pytest.fixture
def dated(library_dir: Path, tiny_model: Path, tmp_path: Path, db_url: str | None) -> tuple[Library, dict[str, int]]:
    folder = tmp_path / "dated"
    folder.mkdir()
    for seed, (name, (tags, _)) in enumerate(CASES.items()):
        _jpeg(folder / f"{name}.jpg", seed, tags)
    with Library(library_dir, db_url=db_url, model=str(tiny_model), device="cpu") as lib:
        lib.index([folder])
        with lib.db.reader() as session:
            ids = {Path(os.fsdecode(r.path)).stem: r.id for r in session.query(ImageRow)}
        yield lib, ids


def _rows(lib: Library) -> dict[str, ImageRow]:
    with lib.db.reader() as session:
        return {Path(os.fsdecode(r.path)).stem: r for r in session.query(ImageRow)}


def test_each_source_and_offset_is_stored(dated: tuple[Library, dict[str, int]]) -> None:
    lib, _ = dated
    rows = _rows(lib)
    for name, (_, expected) in CASES.items():
        row = rows[name]
        assert (row.taken_at, row.taken_offset, row.taken_utc, row.taken_source) == expected, name
        assert row.metadata_version == METADATA_VERSION


# (after, before) -> the photos kept
BOUNDS = [
    # instants: the iPhone photo by its instant, the one without an offset by its wall clock (15:47)
    (("2021-04-11T15:00-05:00", "2021-04-11T16:00-05:00"), {"iphone", "no-offset"}),
    (("2021-04-11T20:00Z", "2021-04-11T21:00Z"), {"iphone"}),
    (("2021-04-11T22:47+02:00", "2021-04-11T22:48+02:00"), {"iphone"}),
    # wall clocks: every photo by the wall clock where it was taken
    (("2021-04-11T15:00", "2021-04-11T16:00"), {"iphone", "no-offset"}),
    (("2021-04-11T20:00", "2021-04-11T21:00"), set()),
    # sub-seconds count
    (("2021-04-11T15:47:53.100", "2021-04-11T15:47:53.200"), {"iphone"}),
    # 23:30 at +05:30 is of 31 December by its wall clock, of the 31st in UTC too (18:00)
    (("2022-12-31", "2023-01-01"), {"half-hour"}),
    (("2022-12-31T18:00Z", "2022-12-31T18:01Z"), {"half-hour"}),
    # a photo without a capture time is dated by its file (local time)
    (("2019-03-03", "2019-03-04"), {"modify-only"}),
    (("2008-05-05T22:00Z", "2008-05-05T23:00Z"), {"create-date"}),
]


@pytest.mark.parametrize(("bounds", "kept"), BOUNDS)
def test_date_filters_compare_instants_where_known_and_wall_clocks_elsewhere(
        dated: tuple[Library, dict[str, int]], bounds: tuple[str, str], kept: set[str]) -> None:
    lib, ids = dated
    found = set(lib.db.filtered_ids(lib.db.library().model_fingerprint, Filters.make(after=bounds[0],
                                                                                    before=bounds[1])).tolist())
    assert {name for name, i in ids.items() if i in found} == kept


def _python_3_10() -> str | None:
    """A Python 3.10 on this machine (``requires-python`` takes it), or None."""
    for exe in ["python3.10", *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python")))]:
        try:
            done = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                  text=True, timeout=30, check=False)
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == "(3, 10)":
            return exe
    return None


def test_date_bounds_read_the_same_under_python_3_10() -> None:
    """Python 3.10's datetime.fromisoformat takes neither Z nor a fraction of 1, 2, 4 or 5 digits, which
    the HTTP API's document allows and 3.11 reads: every bound above, and those, parse the same there."""
    from blipsearch.filters import parse_date

    python = _python_3_10()
    if python is None:
        pytest.skip("no Python 3.10 here")
    texts = sorted({b for bounds, _ in BOUNDS for b in bounds} | {
        "2021-04-11T15:47:53.5Z", "2021-04-11T15:47:53.12345-05:00", "2021-04-11 15:47:53.1", "2021-04-11T15:47z"})
    script = ("import sys; from blipsearch.filters import parse_date; "
              "print(repr([parse_date(t) for t in sys.argv[1:]]))")
    done = subprocess.run([python, "-c", script, *texts], capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).parents[1], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr([parse_date(t) for t in texts])
    assert parse_date("2021-04-11T15:47:53.5Z") == datetime(2021, 4, 11, 15, 47, 53, 500000, tzinfo=timezone.utc)


def test_parsers() -> None:
    assert parse_offset("+05:30") == 330 and parse_offset("-0800") == -480 and parse_offset("Z") is None
    assert parse_offset("+14:30") is None and parse_offset(None) is None
    assert parse_iso("2021-04-11T15:47:53.12-05:00") == (datetime(2021, 4, 11, 15, 47, 53, 120000), -300)
    assert parse_iso("2021-04-11T15:47Z") == (datetime(2021, 4, 11, 15, 47), 0)
    assert parse_iso("2021-04") == (datetime(2021, 4, 1), None)
    assert parse_iso("2021:04:11 15:47:53") == (datetime(2021, 4, 11, 15, 47, 53), None)
    assert parse_iso("2021-02-31") is None and parse_iso("yesterday") is None and parse_iso(7) is None


def test_xmp_dates_follow_exif_and_lend_it_their_offset() -> None:
    xmp = [("photoshop:DateCreated", "2020-01-01"), ("xmp:CreateDate", "2021-04-11T15:47:53-05:00")]
    # no EXIF: the preferred XMP field, with its offset
    taken = capture_time(None, xmp)
    assert taken is not None and (taken.local, taken.offset, taken.source) == (
        datetime(2021, 4, 11, 15, 47, 53), -300, "xmp:CreateDate")
    # EXIF first; an XMP date of the same wall clock gives it the offset EXIF lacked
    taken = capture_time({"DateTimeOriginal": "2021:04:11 15:47:53"}, xmp)
    assert taken is not None and (taken.offset, taken.source) == (-300, "DateTimeOriginal")
    taken = capture_time({"DateTimeOriginal": "2021:04:11 09:00:00"}, xmp)
    assert taken is not None and taken.offset is None
    assert capture_time(None, [("xmp:ModifyDate", "2021-04-11")]) is None


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def test_an_iso_media_files_creation_time_is_a_utc_instant() -> None:
    seconds = int((datetime(2023, 7, 1, 10, 30) - datetime(1904, 1, 1)).total_seconds())
    mvhd = _box(b"mvhd", bytes(4) + struct.pack(">II", seconds, seconds) + bytes(88))
    data = _box(b"ftyp", b"heic" + bytes(4) + b"mif1msf1") + _box(b"moov", mvhd)
    assert media_created(data) == datetime(2023, 7, 1, 10, 30)
    taken = capture_time(None, (), media_created(data))
    assert taken is not None and (taken.offset, taken.source, taken.utc) == (0, "QuickTime:CreateDate",
                                                                              datetime(2023, 7, 1, 10, 30))
    unset = _box(b"ftyp", b"heic" + bytes(8)) + _box(b"moov", _box(b"mvhd", bytes(100)))
    assert media_created(unset) is None
    assert media_created(b"\xff\xd8\xff\xe0" + bytes(100)) is None
    assert media_created(_box(b"ftyp", b"heic") + struct.pack(">I4s", 999, b"moov")) is None  # truncated


def test_an_old_librarys_metadata_is_read_again_without_embedding(dated: tuple[Library, dict[str, int]]) -> None:
    lib, _ = dated
    before = _rows(lib)
    with lib.db.transaction() as session:  # as revision 0003 leaves the rows of an older library
        session.query(ImageRow).update({ImageRow.metadata_version: None, ImageRow.taken_offset: None,
                                        ImageRow.taken_utc: None, ImageRow.taken_source: None})
    folder = Path(os.fsdecode(before["iphone"].path)).parent
    report = lib.index([folder])
    assert report.refreshed == len(CASES) and report.embedded == 0 and report.unchanged == len(CASES)
    after = _rows(lib)
    for name, (_, expected) in CASES.items():
        assert (after[name].taken_at, after[name].taken_offset, after[name].taken_utc,
                after[name].taken_source) == expected
        assert after[name].vector == before[name].vector and after[name].indexed_at == before[name].indexed_at
    assert lib.index([folder]).refreshed == 0  # read once
