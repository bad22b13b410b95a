"""`make demo`'s steps, then the README's "Try it offline" commands as written, in a fresh folder:
the names the README uses must be the ones `make demo` makes."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def _demo_recipe() -> list[str]:
    """The blipsearch commands of the Makefile's demo target, with its variables at their defaults."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe, "the Makefile has a demo target"
    commands = []
    for line in recipe[1].splitlines():
        line = line.strip().lstrip("@")
        line = line.split("||")[-1].strip()  # "test -d X || CMD": a fresh folder runs CMD
        line = line.replace("$(BIN)/", "").replace("$(DEMO)", "demo").replace("$(PORT)", "8000")
        commands.append(line)
    assert commands and all(c.startswith("blipsearch ") for c in commands), commands
    return commands


def _readme_block() -> list[str]:
    """The commands of the first bash block under "Try it offline", comments and the venv's activation left out."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Try it offline in a minute"):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block
    lines = [line.split("  #")[0].strip() for line in block[1].splitlines()]
    lines = [line for line in lines if line and not line.startswith(". ")]
    assert all(line.startswith("blipsearch ") for line in lines), lines
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    argv[0] = str(BIN / "blipsearch")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _serve(command: str, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """Start the serve command, read /api/status once it answers, stop it with Ctrl-C."""
    port = _free_port()
    argv = shlex.split(command) + ["--port", str(port)]
    argv[0] = str(BIN / "blipsearch")
    server = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as response:
                    return json.loads(response.read())
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the server did not answer in 120 s"
                time.sleep(0.3)
    finally:
        server.send_signal(2)
        server.wait(30)


def test_the_readme_demo_commands_work_after_make_demo(tmp_path: Path) -> None:
    env = {**os.environ, "BLIPSEARCH_ENGINE": "off", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in _demo_recipe():
        if command.startswith("blipsearch serve "):
            status = _serve(command.replace(" --port 8000", ""), tmp_path, env)
            assert status["images"] == 200
            continue
        done = _run(command, tmp_path, env)
        assert done.returncode == 0, (command, done.stderr)
    for command in _readme_block():
        if command.startswith("blipsearch serve "):
            assert _serve(command, tmp_path, env)["images"] == 200
            continue
        done = _run(command, tmp_path, env)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert done.stdout.strip(), (command, done.stderr)  # each says something
        if command.startswith("blipsearch search "):
            assert "demo/photos/images/" in done.stdout
