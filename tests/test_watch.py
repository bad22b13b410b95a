"""A watched library follows real file operations: add, change, move, delete, a broken file, a
folder removed, and stops cleanly."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from conftest import draw_image

from blipsearch import Library
from blipsearch.index.watch import affected_folders


def _indexed(lib: Library) -> dict[str, str]:
    """{path relative to nothing: content hash} of the indexed images."""
    from blipsearch.store.schema import ImageRow

    with lib.db.reader() as session:
        return {os.fsdecode(r.path): r.content_hash for r in session.query(ImageRow).all()}


def _wait_for(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    assert check()


def test_watch_follows_the_folder(tmp_path: Path, tiny_model: Path, library_dir: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    draw_image(1).save(photos / "a" / "one.png")
    lib = Library(library_dir, model=str(tiny_model))
    stop = threading.Event()
    runs: list[tuple[list[bytes], dict[str, int]]] = []
    thread = threading.Thread(target=lib.watch, args=([photos],),
                              kwargs={"settle": 0.3, "stop": stop,
                                      "on_update": lambda folders, report: runs.append((folders, report.counts()))})
    thread.start()
    try:
        _wait_for(lambda: len(runs) >= 1)
        assert set(_indexed(lib)) == {str(photos / "a" / "one.png")}

        draw_image(2).save(photos / "a" / "two.png")  # added
        (photos / "b").mkdir()
        draw_image(3).save(photos / "b" / "three.png")  # in a new folder
        _wait_for(lambda: len(_indexed(lib)) == 3)

        before = dict(_indexed(lib))
        draw_image(4).save(photos / "a" / "one.png")  # changed in place
        _wait_for(lambda: _indexed(lib).get(str(photos / "a" / "one.png")) not in (None, before[str(photos / "a" / "one.png")]))

        moved_hash = _indexed(lib)[str(photos / "a" / "two.png")]
        os.rename(photos / "a" / "two.png", photos / "b" / "two-moved.png")  # moved across folders
        _wait_for(lambda: str(photos / "b" / "two-moved.png") in _indexed(lib))
        assert str(photos / "a" / "two.png") not in _indexed(lib)
        assert _indexed(lib)[str(photos / "b" / "two-moved.png")] == moved_hash
        report = runs[-1][1]
        assert report["moved"] == 1 and report["added"] == 0  # its vector kept, not embedded again

        (photos / "b" / "broken.png").write_bytes(b"not a picture")  # recorded, not fatal
        _wait_for(lambda: any(f.path.endswith("broken.png") for f in lib.failures()))

        shutil.rmtree(photos / "b")  # a whole folder deleted
        _wait_for(lambda: set(_indexed(lib)) == {str(photos / "a" / "one.png")})
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    vectors = [np.frombuffer(lib.db.image_by_path(os.fsencode(p)).vector, np.float32) for p in _indexed(lib)]
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-4 for v in vectors)
    lib.close()


def test_affected_folders_climb_to_what_exists(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "x" / "y").mkdir(parents=True)
    fs = os.fsencode
    got = affected_folders({fs(root / "x" / "y" / "gone.jpg"), fs(root / "x" / "deleted" / "z" / "a.jpg"),
                            fs(root / "x" / "y"), fs(tmp_path / "elsewhere" / "b.jpg")}, [fs(root)])
    assert got == [fs(root / "x")]  # y is below x; outside the roots is ignored
    assert affected_folders({fs(root / "new.jpg")}, [fs(root)]) == [fs(root)]


def test_watch_reads_an_edited_sidecar_without_embedding(tmp_path: Path, tiny_model: Path, library_dir: Path) -> None:
    from blipsearch.store.schema import ImageRow

    photos = tmp_path / "photos"
    photos.mkdir()
    draw_image(1).save(photos / "one.png")
    lib = Library(library_dir, model=str(tiny_model))
    stop = threading.Event()
    runs: list[object] = []
    thread = threading.Thread(target=lib.watch, args=([photos],),
                              kwargs={"settle": 0.3, "stop": stop, "on_update": lambda folders, report: runs.append(report)})
    thread.start()

    def row() -> ImageRow | None:
        with lib.db.reader() as session:
            return session.query(ImageRow).one_or_none()

    try:
        _wait_for(lambda: len(runs) >= 1 and row() is not None)
        vector = row().vector  # type: ignore[union-attr]
        (photos / "one.png.xmp").write_text(  # as a photo manager saves a rating and a keyword
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
            ' xmp:Rating="4"><dc:subject><rdf:Bag><rdf:li>harbour</rdf:li></rdf:Bag></dc:subject>'
            "</rdf:Description></rdf:RDF></x:xmpmeta>")
        _wait_for(lambda: (row().rating, row().keywords) == (4, ["harbour"]))  # type: ignore[union-attr]
        assert row().vector == vector and runs[-1].refreshed == 1 and runs[-1].embedded == 0  # type: ignore[union-attr,attr-defined]
    finally:
        stop.set()
        thread.join(30)
    lib.close()
