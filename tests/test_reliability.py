"""Failpoints, and short versions of the reliability campaigns (benchmarks/reliability/; RELIABILITY.md)."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from blipsearch import failpoints
from blipsearch.system import atomic_write, is_leftover

RELIABILITY = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability"
sys.path.insert(0, str(RELIABILITY))

import library_state  # noqa: E402


@pytest.fixture
def armed():
    """Arm failpoints in this process for one test."""
    yield failpoints.configure
    failpoints.configure()


def test_a_failpoint_fails_its_nth_pass_once_with_the_errno_named(armed, tmp_path):
    armed("thumbnail.rename=ENOSPC@2")
    target = tmp_path / "file"
    atomic_write(target, lambda fh: fh.write(b"one"), point="thumbnail")
    with pytest.raises(OSError) as caught:
        atomic_write(target, lambda fh: fh.write(b"two"), point="thumbnail")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == b"one"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no temporary file left
    atomic_write(target, lambda fh: fh.write(b"three"), point="thumbnail")  # once only
    assert target.read_bytes() == b"three"


def test_failpoints_log_every_pass_and_refuse_unknown_actions(armed, tmp_path):
    log = tmp_path / "log"
    armed("", str(log))
    atomic_write(tmp_path / "v", lambda fh: fh.write(b"x"), point="vectors", fsync=True)
    assert log.read_text().split() == ["vectors.write", "vectors.fsync", "vectors.rename"]
    with pytest.raises(ValueError, match="neither an errno name"):
        armed("db.commit=ENOSPACE")


def test_a_temporary_file_is_a_leftover_once_its_writer_is_gone(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from blipsearch.system import _HOST, _writer

    running = tmp_path / f".vectors.faiss.{_writer()}.abc123.tmp"
    gone = tmp_path / f".vectors.faiss.{_HOST}-{child.stdout.strip()}.abc123.tmp"
    elsewhere = tmp_path / ".vectors.faiss.otherhost-1.abc123.tmp"
    for path in (running, gone, elsewhere):
        path.write_bytes(b"")
    assert not is_leftover(running, 3600)
    assert is_leftover(gone, 3600)
    assert not is_leftover(elsewhere, 3600)  # another machine's writer: by age only
    assert is_leftover(elsewhere, -1)


def _index(photos: Path, library: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return library_state.run([*library_state.BLIPSEARCH, "index", str(photos), "--model", "builtin:shapes",
                              "--library", str(library), "--batch-size", "2", "--json"], env=env)


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return library_state.Workload(tmp_path_factory.mktemp("reliability")).make(12)


def test_a_full_disk_during_an_index_run_keeps_what_was_committed(workload, tmp_path):
    library = tmp_path / "library"
    full = _index(workload.photos, library, {"BLIPSEARCH_FAILPOINTS": "db.commit=ENOSPC@4"})
    assert full.returncode == 1
    assert "Traceback" not in full.stderr
    assert full.stderr.strip().splitlines()[-1].startswith("Error: No space left on device.")
    assert library_state.problems(library) == []
    kept = sqlite3.connect(library / "library.db").execute("SELECT count(*) FROM images").fetchone()[0]
    assert 0 < kept < 12
    again = _index(workload.photos, library)
    assert again.returncode == 0, again.stderr
    assert '"unchanged": %d' % kept in again.stdout  # committed before the fault: not embedded again


def test_failed_writes_of_derived_files_cost_the_files_not_the_run(workload, tmp_path):
    library = tmp_path / "library"
    done = _index(workload.photos, library, {"BLIPSEARCH_FAILPOINTS": "vectors.fsync=EIO,thumbnail.write=ENOSPC@3"})
    assert done.returncode == 0, done.stderr
    assert library_state.problems(library) == []
    # and the checks can fail: a row that lost its vector is found
    con = sqlite3.connect(library / "library.db")
    with con:
        con.execute("UPDATE images SET vector = NULL WHERE id = (SELECT min(id) FROM images)")
    con.close()
    assert any("without a proper vector" in p for p in library_state.problems(library))


def test_crash_campaign_short(workload):
    from crash import campaign

    result = campaign(kills=2, images=12, seed=3, workdir=workload.folder, targeted=0.5, report=False,
                      steps=("index", "search-rebuild"))
    assert result["kills"] == 2
    assert result["inconsistencies"] == []
    assert result["cycles"] >= 1


def test_load_while_indexing_short(tmp_path):
    from load import campaign

    result = campaign(readers=2, images=6, new=6, workdir=tmp_path)
    assert result["index_exit"] == 0
    assert result["reader_errors"] == 0 and result["http_errors"] == 0, (result["reader_error_examples"],
                                                                         result["http_error_examples"])
    assert result["reader_queries"] > 0 and result["http_queries"] > 0
    assert result["server_images_at_end"] == 12
    assert result["readers_seeing_all_new_images"] == 2

