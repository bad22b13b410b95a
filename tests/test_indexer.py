"""Incremental indexing, bad input, and what is kept when things go wrong."""

from __future__ import annotations

import io
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import StopAfterFirstBatch, draw_image, fs
from PIL import Image

from blipsearch import Library
from blipsearch.ann.index import VectorIndex
from blipsearch.errors import (
    InputPathError,
    LibraryError,
    ModelLoadError,
    ModelMismatchError,
)
from blipsearch.images.decode import load_pixels
from blipsearch.store.schema import ImageRow


def stored(lib: Library) -> dict[bytes, ImageRow]:
    with lib.db.reader() as session:
        return {row.path: row for row in session.query(ImageRow).all()}


def vector_of(lib: Library, path: Path) -> np.ndarray:
    return np.frombuffer(stored(lib)[fs(path)].vector, np.float32)


def alone(lib: Library, path: Path | bytes) -> np.ndarray:
    return lib.model.embed_images(load_pixels(path, lib.model.image_spec)[None])[0]


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path) -> Library:
    with Library(library_dir, model=str(tiny_model), device="cpu") as library:
        yield library


def test_first_run_indexes_everything_with_the_right_vectors(lib: Library, photos: Path) -> None:
    report = lib.index([photos], batch_size=5)
    assert report.counts() == {"added": 12, "updated": 0, "moved": 0, "removed": 0, "unchanged": 0, "failed": 0, "skipped": 0}
    assert report.embedded == 12
    rows = stored(lib)
    assert len(rows) == 12
    for path in photos.rglob("*.png"):
        row = rows[fs(path)]
        assert (row.width, row.height, row.size) == (32, 32, path.stat().st_size)
        np.testing.assert_allclose(np.frombuffer(row.vector, np.float32), alone(lib, path), atol=1e-6)
    status = lib.status()
    assert status["images"] == status["vectors"] == 12


def test_derived_files_get_the_mode_the_umask_gives(lib: Library, photos: Path) -> None:
    # Another user who may read the library's folder (a second search process's account) reads
    # the vector file and the thumbnails as well, as with any file the process writes.
    lib.index([photos])
    umask = os.umask(0o022)
    os.umask(umask)
    written = [lib.location / "vectors.faiss", *(lib.location / "thumbnails").rglob("*.*")]
    assert len(written) > 1
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}


def test_rerun_embeds_nothing(lib: Library, photos: Path) -> None:
    lib.index([photos])
    report = lib.index([photos])
    assert report.embedded == 0
    assert report.counts()["unchanged"] == 12
    assert sum(report.counts().values()) == 12


def test_touched_but_identical_file_is_not_reembedded(lib: Library, photos: Path) -> None:
    lib.index([photos])
    target = photos / "holiday" / "img00.png"
    os.utime(target, ns=(1, 1))
    generation, saved = lib.db.library().generation, lib.vectors.path.stat().st_mtime_ns
    report = lib.index([photos])
    assert report.embedded == 0 and report.counts()["unchanged"] == 12
    assert stored(lib)[fs(target)].mtime_ns == 1
    # No vector changed: searches elsewhere keep their index, and the file is not written again.
    assert lib.db.library().generation == generation and lib.vectors.path.stat().st_mtime_ns == saved


def test_rerun_loads_the_model_only_when_an_image_needs_embedding(lib: Library, photos: Path,
                                                                  library_dir: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"not a picture")
    lib.index([photos])
    os.utime(photos / "garden" / "img06.png", ns=(5, 5))  # touched, same content
    shutil.move(photos / "garden" / "img07.png", photos / "img07-moved.png")
    with Library(library_dir, device="cpu") as again:
        counts = again.index([photos]).counts()
        assert (counts["unchanged"], counts["moved"], counts["failed"]) == (11, 1, 1), counts
        assert again._model is None, "nothing to embed: the model's weights must not load"
        draw_image(998).save(photos / "holiday" / "img01.png")
        report = again.index([photos])
        assert report.counts()["updated"] == 1 and report.embedded == 1 and again._model is not None
    np.testing.assert_allclose(vector_of(lib, photos / "holiday" / "img01.png"),
                               alone(lib, photos / "holiday" / "img01.png"), atol=1e-6)


def test_decode_threads_follow_the_device() -> None:
    import torch

    from blipsearch.models.checkpoint import decode_workers

    cores = len(os.sched_getaffinity(0))
    assert decode_workers(torch.device("cpu")) == min(4, cores)  # the model needs the cores
    assert decode_workers(torch.device("cuda")) == cores  # a GPU needs every core decoding


def test_touched_files_need_no_usable_device(lib: Library, photos: Path, library_dir: Path) -> None:
    lib.index([photos])
    os.utime(photos / "garden" / "img06.png", ns=(5, 5))
    with Library(library_dir, device="cuda:7") as elsewhere:  # no such GPU here
        assert elsewhere.index([photos]).counts()["unchanged"] == 12
        draw_image(997).save(photos / "holiday" / "img01.png")
        with pytest.raises(ModelLoadError):  # the first image to embed says why
            elsewhere.index([photos])


def test_changed_file_is_reembedded(lib: Library, photos: Path) -> None:
    lib.index([photos])
    target = photos / "holiday" / "img01.png"
    old = vector_of(lib, target)
    old_id = stored(lib)[fs(target)].id
    draw_image(999).save(target)
    report = lib.index([photos])
    assert report.counts()["updated"] == 1 and report.embedded == 1
    assert stored(lib)[fs(target)].id == old_id
    new = vector_of(lib, target)
    assert not np.allclose(new, old)
    np.testing.assert_allclose(new, alone(lib, target), atol=1e-6)
    # The vector index follows: the new content is found, by its own vector, as the best hit.
    assert lib.similar(photos / "garden" / "img06.png", k=12)  # still searchable
    scores, ids = lib.vectors.get(lib.model.fingerprint).search(new[None], 1)
    assert ids[0][0] == old_id and scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_swapped_files_are_both_right_in_one_run(lib: Library, photos: Path) -> None:
    """The second file's content was embedded when the run began, under the first file's row,
    which an earlier batch has since changed: its vector can't be copied, so it is embedded."""
    lib.index([photos])
    files = sorted(photos.rglob("*.png"))
    first, last = files[0], files[-1]
    a, b = first.read_bytes(), last.read_bytes()
    first.write_bytes(b)
    last.write_bytes(a)
    for path in files:  # many cheap jobs: with batch size 1 they close in two batches
        os.utime(path, ns=(10**18, 10**18))
    report = lib.index([photos], batch_size=1)
    assert report.counts()["failed"] == 0 and report.counts()["updated"] == 2
    for path in (first, last):
        np.testing.assert_allclose(vector_of(lib, path), alone(lib, path), atol=1e-5)


def test_deleted_file_is_removed_everywhere(lib: Library, photos: Path) -> None:
    lib.index([photos])
    (photos / "garden" / "img07.png").unlink()
    report = lib.index([photos])
    assert report.counts()["removed"] == 1
    status = lib.status()
    assert status["images"] == status["vectors"] == 11
    assert fs(photos / "garden" / "img07.png") not in stored(lib)


def test_moved_and_renamed_files_keep_their_vectors(lib: Library, photos: Path) -> None:
    lib.index([photos])
    before = stored(lib)
    src = photos / "holiday" / "img02.png"
    dst = photos / "garden" / "renamed.png"
    shutil.move(src, dst)
    shutil.move(photos / "garden", photos / "garden-2024")
    report = lib.index([photos])
    assert report.embedded == 0
    assert report.counts()["moved"] == 7 and report.counts()["removed"] == 0 and report.counts()["added"] == 0
    after = stored(lib)
    moved = after[fs(photos / "garden-2024" / "renamed.png")]
    assert moved.id == before[fs(src)].id and moved.vector == before[fs(src)].vector
    assert lib.status()["vectors"] == 12


def test_copy_of_an_indexed_file_reuses_its_vector(lib: Library, photos: Path) -> None:
    lib.index([photos])
    shutil.copy(photos / "holiday" / "img03.png", photos / "holiday" / "copy.png")
    report = lib.index([photos])
    assert report.counts()["added"] == 1 and report.embedded == 0
    assert vector_of(lib, photos / "holiday" / "copy.png").tobytes() == vector_of(
        lib, photos / "holiday" / "img03.png"
    ).tobytes()


def test_paths_outside_this_run_are_left_alone(lib: Library, photos: Path) -> None:
    lib.index([photos / "holiday", photos / "garden"])
    shutil.rmtree(photos / "garden")
    report = lib.index([photos / "holiday"])
    assert report.counts()["removed"] == 0
    assert lib.status()["images"] == 12
    # A sibling folder whose name starts the same is not "inside" holiday.
    (photos / "holiday-extra").mkdir()
    draw_image(50).save(photos / "holiday-extra" / "x.png")
    lib.index([photos / "holiday-extra"])
    assert lib.index([photos / "holiday"]).counts()["removed"] == 0
    assert lib.status()["images"] == 13


def test_missing_root_is_an_error_and_deletes_nothing(lib: Library, photos: Path) -> None:
    lib.index([photos])
    with pytest.raises(InputPathError, match="mounted"):
        lib.index([photos, photos.parent / "unmounted-disk"])
    assert lib.status()["images"] == 12
    # An unmounted disk on Linux leaves its mount point: an empty folder.
    garden = sorted((photos / "garden").iterdir())
    for path in garden:
        path.rename(photos.parent / path.name)
    with pytest.raises(InputPathError, match=f"{len(garden)} indexed images were in it: is a disk unmounted"):
        lib.index([photos / "holiday", photos / "garden"])
    assert lib.status()["images"] == 12
    report = lib.index([photos / "garden"], allow_empty=True)
    assert report.counts()["removed"] == len(garden) and lib.status()["images"] == 12 - len(garden)


def test_unreadable_folder_deletes_nothing_below_it(lib: Library, photos: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from blipsearch.index import walk as walk_module

    lib.index([photos])
    locked = fs(photos / "garden")
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        # The OS refusing to list one folder (root can read any folder, so chmod can't show it).
        if os.fsencode(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(walk_module.os, "scandir", scandir)
    report = lib.index([photos])
    assert report.counts()["removed"] == 0 and report.counts()["failed"] == 1
    assert lib.status()["images"] == 12
    assert any("Permission denied" in f.reason for f in lib.failures())
    monkeypatch.setattr(walk_module.os, "scandir", real_scandir)
    assert lib.index([photos]).counts()["unchanged"] == 12
    assert lib.failures() == []


def _bad_files(folder: Path) -> dict[str, str]:
    """Files that must fail, by name, with a word their reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    draw_image(7, 256).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not a picture")
    Image.new("RGB", (300, 300)).save(folder / "bomb.png")
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    return {
        "truncated.jpg": "decode",
        "empty.jpg": "not an image",
        "notes.png": "not an image",
        "bomb.png": "--max-megapixels",
        "dangling.jpg": "can't read",
    }


def test_bad_files_never_stop_a_run(lib: Library, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = _bad_files(photos / "holiday")
    # Symlink loops: a link back to an ancestor, and a link to itself.
    (photos / "holiday" / "loop").symlink_to(photos)
    (photos / "garden" / "self.jpg").symlink_to(photos / "garden" / "self.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    report = lib.index([photos], batch_size=4)
    assert report.counts()["added"] == 12
    failures = {os.path.basename(f.path): f.reason for f in lib.failures()}
    for name, word in bad.items():
        assert word in failures[name], (name, failures[name])
    assert "self.jpg" in failures
    assert report.counts()["failed"] == len(failures) == len(bad) + 1
    # Good files batched with bad ones get exactly the vectors they get alone.
    for path in (photos / "holiday").glob("img*.png"):
        np.testing.assert_allclose(vector_of(lib, path), alone(lib, path), atol=1e-6)
    # Fixing a file clears its failure; deleting one forgets it.
    draw_image(77).save(photos / "holiday" / "notes.png")
    (photos / "holiday" / "empty.jpg").unlink()
    report = lib.index([photos])
    failures = {os.path.basename(f.path) for f in lib.failures()}
    assert "notes.png" not in failures and "empty.jpg" not in failures
    assert report.counts()["added"] == 1


def test_file_that_turns_bad_leaves_the_index(lib: Library, photos: Path) -> None:
    lib.index([photos])
    (photos / "garden" / "img08.png").write_bytes(b"\x89PNG garbage")
    report = lib.index([photos])
    assert report.counts()["failed"] == 1
    status = lib.status()
    assert status["images"] == status["vectors"] == 11


def test_file_that_cant_be_read_keeps_its_image(lib: Library, photos: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from blipsearch.index import indexer as indexer_module

    lib.index([photos])
    locked = photos / "garden" / "img08.png"
    os.utime(locked, ns=(10**18, 10**18))
    real_open = indexer_module.read_file

    def read_file(path):  # type: ignore[no-untyped-def]
        # The OS refusing one file (root can read any file, so chmod can't show it).
        if os.fsencode(path) == fs(locked):
            return real_open("/no/such/file/here")
        return real_open(path)

    monkeypatch.setattr(indexer_module, "read_file", read_file)
    report = lib.index([photos])
    assert report.counts()["failed"] == 1 and lib.status()["images"] == 12
    assert [f.path for f in lib.failures()] == [str(locked)]
    monkeypatch.undo()
    report = lib.index([photos])  # readable again: same content, nothing to embed
    assert report.counts()["unchanged"] == 12 and report.embedded == 0 and lib.failures() == []


def test_formats_exif_orientation_and_capture_time(lib: Library, tmp_path: Path) -> None:
    folder = tmp_path / "formats"
    folder.mkdir()
    base = draw_image(5, 64)
    for ext in ("jpg", "webp", "tiff", "bmp"):
        base.save(folder / f"pic.{ext}")
    frames = [draw_image(5, 64), draw_image(6, 64)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    # A camera that stores pixels sideways and the rotation in EXIF.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    exif.get_ifd(0x8769)[36867] = "2023:07:14 18:30:05"
    sideways = draw_image(9, 64).resize((64, 48))
    sideways.save(folder / "camera.jpg", exif=exif, quality=95)
    upright = Image.open(folder / "camera.jpg")
    upright = upright.transpose(Image.Transpose.ROTATE_270)
    upright.save(folder / "upright.png")
    try:
        import pillow_heif  # noqa: F401

        base.save(folder / "phone.heic")
        heic = True
    except Exception:  # noqa: BLE001 - an encoder may be missing from the wheel
        heic = False

    report = lib.index([folder])
    assert report.counts()["failed"] == 0
    rows = {os.path.basename(p).decode(): r for p, r in stored(lib).items()}
    assert {"pic.jpg", "pic.webp", "pic.tiff", "pic.bmp", "anim.gif", "camera.jpg"} <= set(rows)
    assert heic is ("phone.heic" in rows)
    camera = rows["camera.jpg"]
    assert (camera.width, camera.height) == (48, 64)
    assert camera.taken_at is not None and camera.taken_at.year == 2023 and camera.taken_at.hour == 18
    assert camera.exif["Orientation"] == 6
    np.testing.assert_allclose(
        np.frombuffer(camera.vector, np.float32), np.frombuffer(rows["upright.png"].vector, np.float32), atol=1e-5
    )
    gif = np.frombuffer(rows["anim.gif"].vector, np.float32)
    first = lib.model.embed_images(lib.model.image_spec.to_pixels(frames[0].convert("RGB"))[None])[0]
    np.testing.assert_allclose(gif, first, atol=1e-3)


def test_exif_zero_over_zero_is_dropped_not_stored_as_nan(tmp_path: Path) -> None:
    """float(0/0) is NaN, which PostgreSQL's JSON type refuses: it would stop the whole run there."""
    import json

    from PIL.TiffImagePlugin import IFDRational

    from blipsearch.images.decode import read_exif

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x829D] = IFDRational(0, 0)  # FNumber
    exif.get_ifd(0x8769)[0x920A] = IFDRational(50, 1)  # FocalLength
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (IFDRational(0, 0), IFDRational(0, 0), IFDRational(0, 0))
    gps[3], gps[4] = "E", (IFDRational(2, 1), IFDRational(0, 1), IFDRational(0, 1))
    draw_image(3, 32).save(tmp_path / "odd.jpg", exif=exif)
    with Image.open(tmp_path / "odd.jpg") as image:
        tags = read_exif(image)
    assert tags == {"FocalLength": 50.0}
    json.dumps(tags, allow_nan=False)


@pytest.mark.parametrize(("tags", "expected"), [
    # (IFD0 tags, Exif IFD tags) -> the capture time read
    (({0x0132: "2024:01:02 03:04:05"}, {}), None),  # ModifyDate only: an edit's time, not the capture's
    (({0x0132: "2024:01:02 03:04:05"}, {0x9004: "2008:05:06 07:08:09"}), datetime(2008, 5, 6, 7, 8, 9)),
    (({}, {0x9003: "2008:05:06 07:08:09", 0x9004: "2009:01:01 00:00:00", 0x9291: "25"}),
     datetime(2008, 5, 6, 7, 8, 9, 250_000)),  # DateTimeOriginal first, its sub-seconds kept
    (({}, {0x9003: "0000:00:00 00:00:00", 0x9004: "2008:05:06 07:08:09", 0x9292: "123456789"}),
     datetime(2008, 5, 6, 7, 8, 9, 123_456)),  # a blank original: CreateDate, microseconds at most
])
def test_the_capture_time_is_the_original_then_the_create_date_never_the_modify_date(
        tmp_path: Path, tags: tuple[dict[int, str], dict[int, str]], expected: datetime | None) -> None:
    from blipsearch.images.decode import read_exif
    from blipsearch.metadata.dates import capture_time

    exif = Image.Exif()
    for tag, value in tags[0].items():
        exif[tag] = value
    for tag, value in tags[1].items():
        exif.get_ifd(0x8769)[tag] = value
    draw_image(3, 32).save(tmp_path / "dated.jpg", exif=exif)
    with Image.open(tmp_path / "dated.jpg") as image:
        taken = capture_time(read_exif(image))
    assert (taken.local if taken else None) == expected


def test_exif_strings_end_at_their_first_nul(tmp_path: Path) -> None:
    from blipsearch.images.decode import read_exif

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "SONY\x00\x00", "ION230\x00F"
    draw_image(3, 32).save(tmp_path / "nul.jpg", exif=exif)
    with Image.open(tmp_path / "nul.jpg") as image:
        tags = read_exif(image)
    assert tags is not None and (tags["Make"], tags["Model"]) == ("SONY", "ION230")


def test_non_utf8_file_names_round_trip(lib: Library, tmp_path: Path) -> None:
    folder = fs(tmp_path / "odd")
    os.mkdir(folder)
    name = os.path.join(folder, b"caf\xe9-\xff.png")
    with open(name, "wb") as fh:
        draw_image(3).save(fh, "PNG")
    report = lib.index([folder])
    assert report.counts()["added"] == 1
    hit = lib.similar(os.path.join(fs(tmp_path), b"odd", b"caf\xe9-\xff.png"), k=1)
    assert hit == []  # the only image is the query itself
    draw_image(4).save(tmp_path / "odd" / "other.png")
    lib.index([folder])
    hits = lib.similar(tmp_path / "odd" / "other.png", k=1)
    assert os.fsencode(hits[0].path) == name
    assert os.path.exists(os.fsencode(hits[0].path))


def test_interrupted_run_keeps_finished_batches_and_resumes(lib: Library, photos: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        lib.index([photos], batch_size=4, progress=StopAfterFirstBatch)
    status = lib.status()
    assert status["images"] == status["vectors"] == 4
    report = lib.index([photos], batch_size=4)
    assert report.embedded == 8 and report.counts()["unchanged"] == 4
    status = lib.status()
    assert status["images"] == status["vectors"] == 12


def test_vector_file_is_rebuilt_when_missing_corrupt_or_stale(lib: Library, photos: Path, library_dir: Path,
                                                             tiny_model: Path) -> None:
    lib.index([photos])
    expected = [h.id for h in lib.search("a red circle", k=5, rerank_hits=False)]
    vectors = library_dir / "vectors.faiss"
    for damage in ("delete", "garbage", "header", "truncate", "stale"):
        if damage == "delete":
            vectors.unlink()
        elif damage == "garbage":
            vectors.write_bytes(b"\x00" * 100)
        elif damage == "header":  # the right magic, then a header that is JSON but not ours
            header = b'[]'
            vectors.write_bytes(vectors.read_bytes()[:8] + len(header).to_bytes(4, "little") + header)
        elif damage == "truncate":
            vectors.write_bytes(vectors.read_bytes()[:200])
        else:
            index, header = VectorIndex.load(vectors)
            index.remove([expected[0]])
            index.save(vectors, header.generation - 1, header.model, header.library)
        with Library(library_dir, model=str(tiny_model), device="cpu") as fresh:
            assert [h.id for h in fresh.search("a red circle", k=5, rerank_hits=False)] == expected
        if damage == "stale":
            # An older file of this library (a killed run's): a search catches up from it in memory and
            # leaves it to the index runs, the next of which writes it anew, even with nothing to index.
            assert len(VectorIndex.load(vectors)[0]) == 11  # type: ignore[index]
            with Library(library_dir, model=str(tiny_model), device="cpu") as writer:
                assert writer.index([photos]).counts()["unchanged"] == 12
        loaded = VectorIndex.load(vectors)
        assert loaded is not None and len(loaded[0]) == 12, damage


def test_two_databases_sharing_a_folder_never_use_each_others_vectors(photos: Path, library_dir: Path,
                                                                      tiny_model: Path, tmp_path: Path) -> None:
    others = tmp_path / "others"
    others.mkdir()
    for i in range(12):
        draw_image(500 + i).save(others / f"o{i:02d}.png")
    with Library(library_dir, model=str(tiny_model), device="cpu") as mine:
        mine.index([photos])
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with Library(library_dir, db_url=elsewhere, model=str(tiny_model), device="cpu") as theirs:
        theirs.index([others])  # same generations and ids as mine; its file now lies in the folder
    with Library(library_dir, model=str(tiny_model), device="cpu") as mine:
        query = mine.model.embed_texts(["a dog"])[0]
        for hit in mine.search("a dog", k=12, rerank_hits=False):
            assert hit.itc == pytest.approx(float(vector_of(mine, Path(hit.path)) @ query), abs=1e-5)


def test_vector_file_write_is_atomic(lib: Library, photos: Path, library_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lib.index([photos])
    vectors = library_dir / "vectors.faiss"
    before = vectors.read_bytes()

    def crash(src, dst):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    index, header = VectorIndex.load(vectors)
    with pytest.raises(OSError):
        index.save(vectors, header.generation + 1, header.model)
    assert vectors.read_bytes() == before
    assert [p.name for p in library_dir.iterdir() if p.name.endswith(".tmp")] == []
    # A kill leaves the temporary file behind: the next index run removes it once it is old.
    (library_dir / ".vectors.faiss.x1.tmp").write_bytes(b"partial")
    (library_dir / ".vectors.faiss.x2.tmp").write_bytes(b"being written")
    os.utime(library_dir / ".vectors.faiss.x1.tmp", (1, 1))
    monkeypatch.undo()
    lib.index([photos])
    assert [p.name for p in library_dir.iterdir() if p.name.endswith(".tmp")] == [".vectors.faiss.x2.tmp"]


def test_other_model_is_refused_until_reindex(library_dir: Path, photos: Path, tiny_model: Path,
                                               other_model: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos])
    with Library(library_dir, model=str(other_model), device="cpu") as lib:
        with pytest.raises(ModelMismatchError, match="--reindex"):
            lib.search("a dog")
        with pytest.raises(ModelMismatchError):
            lib.index([photos])
        # Partly re-embedded, then finished: every image ends with the new model's vector.
        report = lib.index([photos / "holiday"], reindex=True)
        assert report.counts()["updated"] == 12 and report.embedded == 12
        for path in photos.rglob("*.png"):
            np.testing.assert_allclose(vector_of(lib, path), alone(lib, path), atol=1e-6)
        assert lib.status()["model"] == str(other_model)
    # Without --model, a library uses the model it was made with.
    with Library(library_dir, device="cpu") as lib:
        assert lib.search("a dog", k=3, rerank_hits=False)


def test_search_can_read_while_an_index_run_writes(lib: Library, photos: Path, library_dir: Path,
                                                   tiny_model: Path) -> None:
    lib.index([photos / "holiday"])
    with lib.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    reader = Library(library_dir, model=str(tiny_model), device="cpu")
    seen: list[int] = []

    class SearchDuringRun:
        def __init__(self, total: int, desc: str) -> None:
            pass

        def update(self, n: int = 1) -> None:
            seen.append(len(reader.search("a dog", k=50, rerank_hits=False)))

        def close(self) -> None:
            pass

    lib.index([photos], batch_size=2, progress=SearchDuringRun)
    reader.close()
    assert seen and seen[0] >= 6 and seen[-1] == 12 and seen == sorted(seen)


class _refusals_during(list):  # type: ignore[type-arg]  # noqa: N801
    """The errors ``attempt`` raises (matching ``pattern``) each time a run's progress bar moves."""

    def __init__(self, attempt, pattern: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        refusals = self

        class Progress:
            def __init__(self, total: int, desc: str) -> None:
                pass

            def update(self, n: int = 1) -> None:
                with pytest.raises(LibraryError, match=pattern) as info:
                    attempt()
                refusals.append(str(info.value))

            def close(self) -> None:
                pass

        self.progress = Progress


def test_a_second_index_run_is_refused_while_one_runs(lib: Library, photos: Path, library_dir: Path,
                                                      tiny_model: Path) -> None:
    other = Library(library_dir, model=str(tiny_model), device="cpu")
    refusals = _refusals_during(lambda: other.index([photos]), "Another `blipsearch index` is running")
    report = lib.index([photos], batch_size=4, progress=refusals.progress)
    assert refusals and report.counts()["added"] == 12
    assert other.index([photos]).counts()["unchanged"] == 12  # free again once the first run ends
    other.close()


def test_libraries_sharing_one_database_index_one_at_a_time(photos: Path, tmp_path: Path, tiny_model: Path,
                                                            db_url: str | None) -> None:
    url = db_url or f"sqlite:///{tmp_path / 'shared.db'}"
    first = Library(tmp_path / "one", db_url=url, model=str(tiny_model), device="cpu")
    second = Library(tmp_path / "two", db_url=url, model=str(tiny_model), device="cpu")
    refusals = _refusals_during(lambda: second.index([photos]), "is writing to the database")
    report = first.index([photos], batch_size=4, progress=refusals.progress)
    assert refusals and report.counts()["added"] == 12
    assert "another library folder" in refusals[0]
    assert second.index([photos]).counts()["unchanged"] == 12  # the lock went with the first run
    first.close()
    second.close()


def test_large_jpeg_is_drafted_but_keeps_its_size(lib: Library, tmp_path: Path) -> None:
    from blipsearch.images.decode import open_image

    folder = tmp_path / "big"
    folder.mkdir()
    big = draw_image(12, 64).resize((2000, 1500), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    big.save(folder / "big.jpg", quality=92, exif=exif)
    data = (folder / "big.jpg").read_bytes()
    drafted, size = open_image(data, lib.model.image_spec.draft_size)
    full, full_size = open_image(data)
    assert size == full_size == (1500, 2000)
    assert full.size == (1500, 2000) and max(drafted.size) < 2000 and min(drafted.size) >= 64
    lib.index([folder])
    row = stored(lib)[fs(folder / "big.jpg")]
    assert (row.width, row.height) == (1500, 2000)
    exact = lib.model.embed_images(lib.model.image_spec.to_pixels(full)[None])[0]
    assert float(np.frombuffer(row.vector, np.float32) @ exact) > 0.995


def test_int8_route_is_recorded_and_not_mixed(library_dir: Path, photos: Path, tiny_model: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu", quantize="int8") as lib:
        lib.index([photos])
        assert lib.model.fingerprint.endswith("+int8")
        for path in list(photos.rglob("*.png"))[:3]:
            fp32 = Library(library_dir / "other", model=str(tiny_model), device="cpu")
            assert float(vector_of(lib, path) @ alone(fp32, path)) > 0.99
            assert not np.allclose(vector_of(lib, path), alone(fp32, path), atol=1e-6)
            fp32.close()
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        assert lib.quantize == "int8"  # the library's route is the default
        assert lib.search("a dog", k=3, rerank_hits=False)
    with Library(library_dir, model=str(tiny_model), device="cpu", quantize="none") as lib:
        with pytest.raises(ModelMismatchError, match="made with --quantize int8.*Use --quantize int8.*--reindex --quantize none"):
            lib.search("a dog")


def test_moved_file_with_an_old_model_vector_is_reembedded(library_dir: Path, photos: Path, tiny_model: Path,
                                                            other_model: Path) -> None:
    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos])
    with Library(library_dir, model=str(other_model), device="cpu") as lib:
        # Interrupted re-embedding: only the holiday folder has the new model's vectors.
        lib.db.set_model(str(other_model), lib.model.fingerprint, lib.model.dim)
        lib.index([photos / "holiday"])
        shutil.move(photos / "garden" / "img06.png", photos / "holiday" / "img06.png")
        report = lib.index([photos])
        assert report.counts()["moved"] == 0 and report.embedded >= 1
        np.testing.assert_allclose(vector_of(lib, photos / "holiday" / "img06.png"),
                                   alone(lib, photos / "holiday" / "img06.png"), atol=1e-6)
        assert fs(photos / "garden" / "img06.png") not in stored(lib)


def test_status_after_another_process_crashed_keeps_the_index_whole(lib: Library, photos: Path, library_dir: Path,
                                                                    tiny_model: Path, tmp_path: Path) -> None:
    """Another run commits rows but dies before saving the vector file; status, search and index then agree."""
    lib.index([photos / "holiday"])
    vectors = library_dir / "vectors.faiss"
    saved = vectors.read_bytes()
    with Library(library_dir, model=str(tiny_model), device="cpu") as other:
        other.index([photos])
    vectors.write_bytes(saved)  # as if `other` were killed before its save
    status = lib.status()
    assert status["images"] == status["vectors"] == 12
    assert len(lib.search("a dog", k=50, rerank_hits=False)) == 12
    draw_image(301).save(photos / "new.png")
    lib.index([photos])
    with Library(library_dir, model=str(tiny_model), device="cpu") as fresh:
        assert fresh.status()["vectors"] == 13
        assert len(fresh.search("a dog", k=50, rerank_hits=False)) == 13
    loaded = VectorIndex.load(vectors)
    assert loaded is not None and len(loaded[0]) == 13


def test_library_folder_names_are_not_parsed_as_urls(tmp_path: Path, photos: Path, tiny_model: Path) -> None:
    for name in ("photos?v=1", "lib%41", "a#b", os.fsdecode(b"lib\xff")):
        location = tmp_path / name
        with Library(location, model=str(tiny_model), device="cpu") as lib:
            lib.index([photos / "holiday"])
            status = lib.status()
        assert (location / "library.db").is_file(), name
        assert status["images"] == 6 and status["library"] == str(location)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == []


def test_a_database_url_without_a_folder_gets_a_folder_of_its_own(tmp_path: Path, tiny_model: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLIPSEARCH_LIBRARY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    urls = [f"sqlite:///{tmp_path / name}" for name in ("one.db", "two.db")]
    with Library(model=str(tiny_model), device="cpu") as default, \
            Library(db_url=urls[0], model=str(tiny_model), device="cpu") as one, \
            Library(db_url=urls[1], model=str(tiny_model), device="cpu") as two:
        assert len({default.location, one.location, two.location}) == 3
        assert one.location.parent == two.location.parent == tmp_path / "data" / "blipsearch" / "databases"
    with Library(db_url=urls[0], model=str(tiny_model), device="cpu") as again:
        assert again.location == one.location


def _psd(pixels: np.ndarray) -> bytes:
    """A flattened Photoshop file (no layers) holding RGB ``pixels`` (h, w, 3)."""
    import struct

    h, w, _ = pixels.shape
    header = b"8BPS" + struct.pack(">H", 1) + b"\0" * 6 + struct.pack(">HIIHH", 3, h, w, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + pixels.transpose(2, 0, 1).tobytes()


def test_more_formats_and_files_named_on_their_own(lib: Library, tmp_path: Path) -> None:
    folder = tmp_path / "formats"
    folder.mkdir()
    base = draw_image(21, 64)
    base.save(folder / "pic.avif", quality=95)
    base.save(folder / "pic.jp2")
    second = draw_image(22, 64)
    base.save(folder / "pair.mpo", save_all=True, append_images=[second])
    (folder / "merged.psd").write_bytes(_psd(np.asarray(base)))
    Image.fromarray(np.asarray(base.convert("L"), np.float32), "F").save(folder / "scan.spi", format="SPIDER")
    (folder / "notes.txt").write_text("not a picture")

    report = lib.index([folder])
    names = {os.path.basename(p).decode() for p in stored(lib)}
    assert names == {"pic.avif", "pic.jp2", "pair.mpo", "merged.psd"} and report.counts()["failed"] == 0
    assert report.counts()["skipped"] == 2  # scan.spi and notes.txt: not image extensions
    def embed(image: Image.Image) -> np.ndarray:
        return lib.model.embed_images(lib.model.image_spec.to_pixels(image.convert("RGB"))[None])[0]

    np.testing.assert_allclose(vector_of(lib, folder / "merged.psd"), embed(base), atol=1e-5)  # lossless
    with Image.open(folder / "pair.mpo") as mpo:
        first = embed(mpo)
        mpo.seek(1)
        other = embed(mpo)
    np.testing.assert_allclose(vector_of(lib, folder / "pair.mpo"), first, atol=1e-5)  # the first picture
    assert float(first @ other) < 0.99

    # A file named on its own is taken whatever its name, and walking its folder keeps it.
    assert lib.index([folder / "scan.spi"]).counts()["added"] == 1
    again = lib.index([folder]).counts()
    assert again["removed"] == 0 and again["unchanged"] == 5 and again["skipped"] == 1
    assert "scan.spi" in {os.path.basename(p).decode() for p in stored(lib)}


def test_a_file_that_failed_is_not_read_again_until_it_changes(lib: Library, photos: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    broken = photos / "garden" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    first = lib.index([photos])
    assert first.failed == 1 and [os.path.basename(p) for p, _ in first.errors] == [b"broken.jpg"]
    failed_at = lib.failures()[0]
    rerun = lib.index([photos])
    assert rerun.failed == rerun.failed_before == 1 and rerun.errors == []  # no warning printed again
    with lib.db.reader() as session:
        from blipsearch.store.schema import FailureRow

        assert session.get(FailureRow, fs(broken)).failed_at == lib.db.failures()[0].failed_at
    assert lib.failures() == [failed_at]
    assert lib.index([photos], retry_failed=True).errors  # asked for: read again
    os.utime(broken, ns=(1, 10**18))  # changed (its time): read again
    assert lib.index([photos]).errors
    # A picture refused for the size limit goes as soon as the limit is raised: that is no file's fault.
    big = photos / "garden" / "big.png"
    draw_image(5, 300).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    assert any(b"big.png" in p for p, _ in lib.index([photos]).errors)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**8)
    assert lib.index([photos]).added == 1
