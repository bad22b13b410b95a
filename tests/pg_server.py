"""A throw-away PostgreSQL server for the tests: initdb into a temporary folder, started on a free
loopback port, stopped (and its folder removed) at the end of the session, also when tests fail.

Found through ``BLIPSEARCH_PG_BIN``, ``initdb`` on the PATH, or ``/usr/lib/postgresql/*/bin``. As
root (where PostgreSQL refuses to run) it runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path


def find_bin() -> Path | None:
    configured = os.environ.get("BLIPSEARCH_PG_BIN")
    candidates = [configured] if configured else []
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(str(Path(os.path.realpath(initdb)).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    folder: Path
    bin: Path
    port: int
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        """A new empty database's URL."""
        from sqlalchemy import create_engine, text

        name = "t_" + uuid.uuid4().hex[:12]
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"))
        engine.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name

    def drop(self, url: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
        engine.dispose()

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                        "stop"], capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def start(folder: Path) -> Server:
    pg_bin = find_bin()
    if pg_bin is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    prefix: list[str] = []
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    run = subprocess.run([*prefix, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                          "-E", "UTF8", "--no-locale", "--no-sync"], capture_output=True, text=True, check=False)
    if run.returncode:
        raise RuntimeError(f"initdb failed: {run.stderr.strip() or run.stdout.strip()}")
    port = _free_port()
    options = (f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=200")
    run = subprocess.run([*prefix, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
                          "-o", options, "-w", "-t", "60", "start"], capture_output=True, text=True, check=False)
    if run.returncode:
        log = (folder / "server.log").read_text(errors="replace")[-2000:] if (folder / "server.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {run.stderr.strip()} {log}")
    return Server(folder, pg_bin, port, prefix)
