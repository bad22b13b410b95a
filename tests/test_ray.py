"""The Ray engine (``index --engine ray``) on a local Ray cluster of two worker processes: the local
engine's vectors and counts, the same incremental rules, a killed driver's re-run resuming, and
workers that can't see the photos refused up front."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import draw_image

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.errors import InputPathError
from blipsearch.index.distributed import RaySettings, check_visible

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local cluster (no network): its address, for processes that join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _vectors(library: Path) -> dict[bytes, np.ndarray]:
    with sqlite3.connect(library / "library.db") as conn:
        return {bytes(p): np.frombuffer(v, np.float32) for p, v in conn.execute("SELECT path, vector FROM images")}


def _same(a: Path, b: Path) -> None:
    va, vb = _vectors(a), _vectors(b)
    assert va.keys() == vb.keys() and va
    assert max(float(np.abs(va[k] - vb[k]).max()) for k in va) <= 1e-6


def test_a_killed_ray_run_resumes_and_the_engine_gives_the_local_engines_vectors(
        cluster: str, tmp_path: Path, tiny_model: Path, photos: Path) -> None:
    local, distributed = tmp_path / "local", tmp_path / "ray"
    command = [sys.executable, "-m", "blipsearch.cli", "index", str(photos), "--library", str(distributed),
               "--model", str(tiny_model), "--device", "cpu", "--engine", "ray", "--ray-address", cluster,
               "--batch-size", "2", "--workers", "1", "--json"]  # (one actor: what is tested is the driver)
    # The driver killed (SIGKILL) just after its 4th commit: the library's set-up, then 3 batches.
    env = dict(os.environ, BLIPSEARCH_FAILPOINTS="db.committed=kill@4")
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    kept = len(_vectors(distributed))
    assert 0 < kept < 12
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    counts = resumed.stdout.strip().splitlines()[-1]
    assert f'"added": {12 - kept}' in counts and f'"unchanged": {kept}' in counts
    with Library(local, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos])
    _same(local, distributed)

    # The same incremental rules as the local engine: a move keeps its vector, a copy gets one without
    # the model, a changed file is embedded again, a deleted one leaves, a broken one is recorded.
    shutil.move(photos / "garden" / "img07.png", photos / "holiday" / "moved.png")
    shutil.copy(photos / "garden" / "img08.png", photos / "garden" / "copy.png")
    draw_image(77).save(photos / "holiday" / "img01.png")
    (photos / "garden" / "img09.png").unlink()
    (photos / "garden" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with Library(local, model=str(tiny_model), device="cpu") as lib:
        expected = lib.index([photos]).counts()
    with Library(distributed, model=str(tiny_model), device="cpu") as lib:  # (this process joins the cluster)
        got = lib.index([photos], ray=RaySettings(batch_size=3)).counts()
        assert len(lib.search("a red circle", k=20, rerank_hits=False)) == 12
        assert lib.index([photos], ray=RaySettings()).counts()["unchanged"] == 12  # nothing read again
    assert got == expected and (got["moved"], got["updated"], got["removed"], got["failed"]) == (1, 1, 1, 1)
    _same(local, distributed)


def test_workers_that_cant_see_the_photos_are_refused(cluster: str, tmp_path: Path) -> None:
    check_visible([os.fsencode(tmp_path)])  # every node (here: this one) sees it
    with pytest.raises(InputPathError, match="can't see .*a filesystem every node mounts at the same path"):
        check_visible([os.fsencode(tmp_path / "elsewhere")])


def test_ray_options_need_the_ray_engine(tmp_path: Path, photos: Path) -> None:
    result = CliRunner().invoke(main, ["index", str(photos), "--library", str(tmp_path / "lib"), "--num-gpus", "1"])
    assert result.exit_code == 2 and "go with --engine ray" in result.output
