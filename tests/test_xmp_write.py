"""Writing captions and tags to XMP sidecars (`blipsearch xmp`, Library.write_sidecars): exiftool
reads back what was written, other tools' fields stay byte for byte, a second run changes nothing,
--remove takes out only blipsearch's part, --dry-run writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import exiftool, needs_exiftool

from blipsearch import Library
from blipsearch.metadata.xmp import read_sidecar
from blipsearch.metadata.xmpedit import XmpEditError, edit

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["red circle", "blue square", "green triangle"]



def read_back(sidecar: Path) -> dict:  # type: ignore[type-arg]
    (found,) = json.loads(exiftool("-j", "-XMP:all", sidecar))
    return found  # type: ignore[no-any-return]


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [] if value is None else [value]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Six demo pictures indexed with the built-in model, captioned and tagged: (photos, library)."""
    from blipsearch.shapes.world import generate, write_folder

    root = tmp_path_factory.mktemp("xmp")
    write_folder(root / "demo", generate("test", 6, 1))
    with Library(root / "library", model="builtin:shapes", device="cpu") as lib:
        lib.index([root / "demo" / "images"])
        lib.caption_library()
        lib.tag_library(LABELS, k=2, rerank_depth=0)  # by cosine alone: every stored label is kept
    yield root / "demo" / "images", root / "library"


@pytest.fixture
def world(shapes: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Library, Path]]:
    """The shapes library over a fresh copy of its photos (each test writes its own sidecars)."""
    photos, library = shapes
    lib_copy, photos_copy = tmp_path / "library", photos
    shutil.copytree(library, lib_copy)
    for sidecar in photos.glob("*.xmp"):
        sidecar.unlink()
    with Library(lib_copy, create=False) as lib:
        yield lib, photos_copy
    for sidecar in photos.glob("*.xmp"):
        sidecar.unlink()


def expected(lib: Library, photo: Path) -> tuple[str | None, list[str]]:
    row = lib.db.image_by_path(os.fsencode(photo))
    assert row is not None
    info = lib.image(row.id)
    tags = [t["label"] for t in info.tags if t["kept"]]
    captions = [d.text for d in lib.caption([photo])]
    return captions[0], tags


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@needs_exiftool
def test_written_sidecars_read_back_with_exiftool(world: tuple[Library, Path]) -> None:
    lib, photos = world
    report = lib.write_sidecars()
    assert report.counts["created"] == 6 and not report.changes[0].reason
    tagged = 0
    for photo in sorted(photos.glob("*.png")):
        caption, tags = expected(lib, photo)
        found = read_back(photo.with_name(photo.name + ".xmp"))
        assert found["Description"] == caption
        assert as_list(found.get("Subject")) == tags
        assert as_list(found.get("HierarchicalSubject")) == [f"blipsearch|{t}" for t in tags]
        tagged += bool(tags)
        facts = read_sidecar(os.fsencode(photo) + b".xmp")  # and blipsearch's own reader agrees
        assert facts.description == caption and facts.warnings == ()
    assert tagged, "no image kept a tag: the test shows nothing"
    before = snapshot(photos)
    time.sleep(0.01)
    assert lib.write_sidecars().counts["unchanged"] == 6 and snapshot(photos) == before  # bytes and mtimes
    assert lib.write_sidecars(remove=True).counts["deleted"] == 6
    assert not list(photos.glob("*.xmp"))  # blipsearch's own sidecars, left empty, are gone


@needs_exiftool
def test_other_tools_fields_are_kept_byte_for_byte(world: tuple[Library, Path], tmp_path: Path) -> None:
    lib, photos = world
    photo = min(photos.glob("*.png"))
    _, tags = expected(lib, photo)
    assert tags
    sidecar = photo.with_name(photo.name + ".xmp")
    config = tmp_path / "ns.config"
    config.write_text("%Image::ExifTool::UserDefined = ('Image::ExifTool::XMP::Main' => { acme => {\n"
                      "  SubDirectory => { TagTable => 'Image::ExifTool::UserDefined::acme' } } });\n"
                      "%Image::ExifTool::UserDefined::acme = (GROUPS => { 0 => 'XMP', 1 => 'XMP-acme', 2 => 'Image' },\n"
                      "  NAMESPACE => { 'acme' => 'http://ns.acme.example/1.0/' }, WRITABLE => 'string', Project => { });\n1;\n")
    exiftool("-config", config, "-q", "-XMP-xmp:Rating=4", "-XMP-xmp:Label=Red", f"-XMP-dc:Subject={tags[0]}",
             "-XMP-dc:Subject=Holiday", "-XMP-dc:Description=My own words", "-XMP-acme:Project=Secret",
             "-o", sidecar)
    original = sidecar.read_bytes()
    for _ in range(2):
        lib.write_sidecars([photo])
    written = sidecar.read_bytes()
    found = read_back(sidecar)
    assert found["Description"] == "My own words"  # the user's description is never replaced
    assert "Caption" not in found  # and blipsearch records no caption of its own
    assert found["Rating"] == 4 and found["Label"] == "Red" and found["Project"] == "Secret"
    assert as_list(found["Subject"]) == [tags[0], "Holiday", *tags[1:]]
    assert as_list(found["HierarchicalSubject"]) == [f"blipsearch|{t}" for t in tags]
    # Every line of the original is still there, in order, untouched: only whole elements were added.
    lines = iter(written.splitlines())
    assert all(any(line == other for other in lines) for line in original.splitlines())
    # --remove gives back the file exiftool wrote, byte for byte; the user's plain keyword stays.
    report = lib.write_sidecars([photo], remove=True)
    assert report.counts["updated"] == 1 and sidecar.read_bytes() == original
    assert lib.write_sidecars([photo], remove=True).counts["unchanged"] == 1


def test_a_previous_caption_is_replaced_and_an_edited_one_kept() -> None:
    first = edit(None, "a red circle", ["circle"])
    assert first is not None
    second = edit(first, "a blue square", ["square"])
    assert second is not None and b"a red circle" not in second and b"blipsearch|circle" not in second
    assert read_sidecar_bytes(second).description == "a blue square"
    edited = second.replace(b'x-default">a blue square', b'x-default">my words')
    third = edit(edited, "a green triangle", ["square"])
    assert third is not None and read_sidecar_bytes(third).description == "my words"
    assert b"blipsearch:Caption" not in third  # the description is no longer blipsearch's
    assert edit(third, None, ()) is not None and b"my words" in edit(third, None, ())  # type: ignore[operator]
    # --no-captions / --no-tags leave that part alone.
    assert edit(first, None, [], captions=False) == edit(first, "a red circle", [])
    assert edit(first, "other", [], tagging=False) == edit(first, "other", ["circle"])


def read_sidecar_bytes(data: bytes):  # type: ignore[no-untyped-def]
    from blipsearch.metadata.xmp import read_packet

    return read_packet(data, "test.xmp")


def test_what_cant_be_edited_safely_is_left_alone() -> None:
    for bad in (b"<x:xmpmeta><oops", b"<!DOCTYPE x [<!ENTITY e 'e'>]><x>&e;</x>", b"caf\xe9",
                "<x/>".encode("utf-16"), b"<html/>",
                (b"<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#' "
                 b"xmlns:dc='http://purl.org/dc/elements/1.1/'><rdf:Description><dc:subject>flat</dc:subject>"
                 b"</rdf:Description></rdf:RDF>")):
        with pytest.raises(XmpEditError):
            edit(bad, "caption", ["tag"])
    # Compact (one-line) packets, CRLF ones and an empty bag are edited in their own style.
    compact = (b"<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#' "
               b"xmlns:dc='http://purl.org/dc/elements/1.1/'><rdf:Description rdf:about=''>"
               b"<dc:subject><rdf:Bag/></dc:subject></rdf:Description></rdf:RDF>")
    done = edit(compact, None, ["a & b"])
    assert done is not None and b"\n" not in done and read_sidecar_bytes(done).keywords == ("a & b", "blipsearch|a & b")
    assert edit(done, None, ()) == compact.replace(b"<dc:subject><rdf:Bag/></dc:subject>", b"")
    crlf = edit(None, "x", ["y"]).replace(b"\n", b"\r\n")  # type: ignore[union-attr]
    again = edit(crlf, "x", ["y", "z"])
    assert again is not None and b"\n" not in again.replace(b"\r\n", b"")


def test_dry_run_name_and_the_command_line(world: tuple[Library, Path]) -> None:
    lib, photos = world
    before = snapshot(photos)
    report = lib.write_sidecars(dry_run=True)
    assert report.counts["created"] == 6 and snapshot(photos) == before
    photo = min(photos.glob("*.png"))
    lib.write_sidecars([photo], name="photo.xmp")
    assert photo.with_suffix(".xmp").exists() and not photo.with_name(photo.name + ".xmp").exists()
    # The existing sidecar is the one written to afterwards, whatever its naming.
    assert lib.write_sidecars([photo]).changes == []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "blipsearch.cli", "xmp", "--library", str(lib.location), "--json",
                          "--no-captions", str(photos)], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    # The sidecar written above has its tags already: unchanged, so not listed.
    assert [line["action"] for line in lines] == ["created"] * 5
    leftovers = [p.name for p in photos.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []  # atomic writes leave no temporary file
    run = subprocess.run([sys.executable, "-m", "blipsearch.cli", "xmp", "--library", str(lib.location), "--remove",
                          "--dry-run"], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0 and "would delete" in run.stdout and "dry run, nothing written" in run.stdout
    assert len(list(photos.glob("*.xmp"))) == 6
    run = subprocess.run([sys.executable, "-m", "blipsearch.cli", "xmp", "--library", str(lib.location),
                          "--no-captions", "--no-tags"], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 2 and "nothing to write" in run.stderr


def test_writing_many_sidecars_is_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    for i in range(1000):
        path = tmp_path / f"{i}.xmp"
        data = edit(None, f"caption {i}", ["red circle", "blue square"])
        assert data is not None
        path.write_bytes(data)
        assert edit(path.read_bytes(), f"caption {i}", ["red circle", "blue square"]) == data
    assert time.perf_counter() - started < 10
