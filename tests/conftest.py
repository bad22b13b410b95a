from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# Tiny models gain nothing from several threads, and on a busy machine
# OpenMP threads spinning for a core make them many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from tiny_blip import IMAGE_SIZE, make_tiny_retrieval  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's library, the hub cache, or the network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("BLIPSEARCH_LIBRARY", str(home / "library"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("BLIPSEARCH_MODEL", "BLIPSEARCH_DB", "BLIPSEARCH_ENGINE_IDLE"):
        monkeypatch.delenv(var, raising=False)
    # No command of a test starts a background engine (the tests of one turn them on: see
    # tests/test_engine_auto.py), nor finds a user's server or engine: sockets go to a runtime
    # folder of the test's own.
    monkeypatch.setenv("BLIPSEARCH_ENGINE", "off")
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    # `--max-megapixels` sets Pillow's process-wide limit; a command run in-process must not leave
    # its value to the tests after it.
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


# -- PostgreSQL -----------------------------------------------------------------------------------
# Database-level tests run on SQLite and on a real PostgreSQL: a throw-away server started here
# (tests/pg_server.py), or the database BLIPSEARCH_TEST_DB_URL names (its tables are wiped).
# Where no server can be had they skip, unless BLIPSEARCH_REQUIRE_POSTGRES=1 (CI) makes that a failure.
EXTERNAL_DB_URL = os.environ.get("BLIPSEARCH_TEST_DB_URL")


def _no_postgres(reason: str) -> None:
    if os.environ.get("BLIPSEARCH_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (BLIPSEARCH_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(f"no PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    import atexit
    import tempfile

    try:
        import psycopg  # noqa: F401
    except ImportError:
        _no_postgres("psycopg is not installed")
    import pg_server

    try:
        server = pg_server.start(Path(tempfile.mkdtemp(prefix="blipsearch-pg-")))
    except (RuntimeError, OSError) as exc:
        _no_postgres(str(exc))
    atexit.register(server.stop)  # also when the session is cut short
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    if EXTERNAL_DB_URL:
        from sqlalchemy import create_engine, text

        from blipsearch.store.schema import Base

        engine = create_engine(EXTERNAL_DB_URL)
        Base.metadata.drop_all(engine)
        with engine.begin() as conn:  # derived tables the metadata does not hold
            conn.execute(text("DROP TABLE IF EXISTS text_index"))
        engine.dispose()
        yield EXTERNAL_DB_URL
        return
    server = request.getfixturevalue("postgres_server")
    url = server.database()  # type: ignore[attr-defined]
    try:
        yield url
    finally:
        server.drop(url)  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The database of a test that runs on both: None (the library folder's SQLite file) or PostgreSQL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_retrieval(tmp_path_factory.mktemp("models") / "tiny-a", seed=0)


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_retrieval(tmp_path_factory.mktemp("models") / "tiny-b", seed=1)


def draw_image(seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """A distinct little picture: a background and a few colored shapes."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        w, h = (int(v) for v in rng.integers(6, size // 2, 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
        else:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)
    return image


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Twelve PNGs in two sub-folders."""
    root = tmp_path / "photos"
    for i in range(12):
        folder = root / ("holiday" if i < 6 else "garden")
        folder.mkdir(parents=True, exist_ok=True)
        draw_image(i).save(folder / f"img{i:02d}.png")
    return root


@pytest.fixture
def library_dir(tmp_path: Path) -> Path:
    return tmp_path / "lib"


def fs(path: Path | str) -> bytes:
    return os.fsencode(str(path))


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_blip import make_tiny_generator

    return make_tiny_generator(tmp_path_factory.mktemp("models") / "tiny-caption", "caption", seed=2)


@pytest.fixture(scope="session")
def tiny_vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_blip import make_tiny_generator

    return make_tiny_generator(tmp_path_factory.mktemp("models") / "tiny-vqa", "vqa", seed=3)


class StopAfterFirstBatch:
    """A progress bar that presses Ctrl-C once the first batch is committed."""

    def __init__(self, total: int, desc: str) -> None:
        pass

    def update(self, n: int = 1) -> None:
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


class LiveServer:
    """``blipsearch serve``'s app run by uvicorn in a thread of the test process, on a free port."""

    def __init__(self, lib, settings) -> None:  # type: ignore[no-untyped-def]
        import threading

        import uvicorn

        from blipsearch.web import create_app
        from blipsearch.web.server import bind

        self.sock = bind(settings.host, 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(lib, settings), log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        import time

        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def live_server():  # type: ignore[no-untyped-def]
    """Start servers with ``live_server(lib, settings)``; all are stopped after the test."""
    started: list[LiveServer] = []

    def start(lib, settings) -> LiveServer:  # type: ignore[no-untyped-def]
        server = LiveServer(lib, settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# Runs a command as a user's shell would, then says whether it imported torch (the engine tests).
CLI_COMMAND = (
    "import json, sys\n"
    "from blipsearch.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as exit:\n"
    "    code = exit.code or 0\n"
    "else:\n"
    "    code = 0\n"
    "sys.stdout.flush()\n"
    "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
)

# exiftool, the independent reader and writer of XMP in the tests (Debian: libimage-exiftool-perl).
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None and not os.environ.get("BLIPSEARCH_REQUIRE_EXIFTOOL"),
                                    reason="exiftool is not installed (Debian: libimage-exiftool-perl)")


def exiftool(*args: str | Path) -> str:
    """exiftool's standard output for ``args``."""
    assert EXIFTOOL is not None, "BLIPSEARCH_REQUIRE_EXIFTOOL is set but exiftool is not installed"
    return subprocess.run([EXIFTOOL, *map(str, args)], check=True, capture_output=True, text=True).stdout
