"""Background engines: a command that loads a model starts one, the next command uses it (the same
output), and it goes when idle, on `blipsearch engine stop`, when its library goes or changes model,
or when a command of other code finds it. Real processes, in a runtime folder of the test's own;
every engine a test starts is stopped at its end."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CLI_COMMAND

from blipsearch import background
from blipsearch.cli import main
from blipsearch.engine import Engine, ask, private_socket, socket_path
from blipsearch.options import open_settings

ROOT = Path(__file__).resolve().parent.parent
QUERY = ["search", "a red square", "-k", "5"]


def _env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BLIPSEARCH_ENGINE", "BLIPSEARCH_IN_PROCESS")}
    env.setdefault("BLIPSEARCH_ENGINE_IDLE", "120")  # (a safety net: the test stops them itself)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def shell(*args: str, **env: str | None) -> tuple[int, str, str, bool]:
    """(exit code, stdout, stderr without the last line, imported torch) of ``blipsearch ARGS``."""
    # (run from elsewhere than this checkout's folder: PYTHONPATH says which code runs)
    done = subprocess.run([sys.executable, "-c", CLI_COMMAND, *args], capture_output=True, text=True, timeout=300,
                          env=_env(**env), cwd="/", check=False)
    *messages, last = done.stderr.strip().splitlines()
    info = json.loads(last)
    return info["code"], done.stdout, "\n".join(messages), info["torch"]


def where(library: Path) -> Path:
    """The socket of the engine of ``library``."""
    path = socket_path(library)
    assert path is not None
    return path


def logged(library: Path) -> str:
    return where(library).with_suffix(".log").read_text()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaps does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def engines_of(library: Path) -> list[int]:
    """The engine processes of this test (of its runtime folder: each test has its own, and
    ``library`` is its one library), running or starting."""
    mine = os.fsencode(f"XDG_RUNTIME_DIR={os.environ['XDG_RUNTIME_DIR']}")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
                env = (entry / "environ").read_bytes().split(b"\0") if b"blipsearch.web.daemon" in command else []
            except OSError:
                continue
            if mine in env and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s {what}"
        time.sleep(0.05)


def ready(library: Path) -> dict:
    """Wait until the engine of ``library`` answers; its info."""
    path = socket_path(library)
    assert path is not None
    wait_for(lambda: ask(path, {"call": "info"}) is not None, what="for the engine")
    answer = ask(path, {"call": "info"})
    assert answer is not None
    return answer["result"]


@pytest.fixture
def library(tmp_path: Path, photos: Path, tiny_model: Path):
    """An indexed library, and the engines started for it stopped (killed if need be) afterwards."""
    folder = tmp_path / "lib"
    result = CliRunner().invoke(main, ["index", str(photos), "--library", str(folder), "--model", str(tiny_model)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    yield folder
    background.stop()
    for pid in engines_of(folder):
        os.kill(pid, signal.SIGKILL)


def test_a_first_command_starts_an_engine_the_next_ones_use_and_engine_stop_stops_it(
        library: Path, photos: Path, tmp_path: Path) -> None:
    options = ["--library", str(library)]
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    first = shell(*QUERY, *options)
    assert first[0] == 0 and first[3] and first[2] == "", first  # in-process, and nothing said (no terminal)
    info = ready(library)
    assert info["kind"] == "engine" and info["library"] == str(library) and info["memory"] > 50 * 2**20
    assert engines_of(library) == [info["pid"]]
    assert "ready (retrieval" in logged(library)
    # Its options came on its stdin: its arguments, which every user may read, hold none of them.
    assert os.fsencode(str(library)) not in Path(f"/proc/{info['pid']}/cmdline").read_bytes()

    second = shell(*QUERY, *options)
    assert second[:3] == first[:3] and not second[3]  # the same output, and no torch here: the engine did it
    for args in (["similar", str(photos / "garden" / "img07.png"), "-k", "3"], ["similar", str(not_an_image)],
                 ["search", "a blue circle", "-k", "3", "--rerank-depth", "4"]):
        here = shell(*args, *options, BLIPSEARCH_IN_PROCESS="1")
        there = shell(*args, *options)
        assert there[:3] == here[:3] and not there[3], args
    assert engines_of(library) == [info["pid"]]

    listed = [json.loads(line) for line in shell("engine", "status", "--json")[1].splitlines()]
    assert [(e["pid"], e["library"], e["kind"]) for e in listed] == [(info["pid"], str(library), "engine")]
    assert listed[0]["memory"] > 50 * 2**20 and listed[0]["idle_s"] >= 0
    code, out, err, _ = shell("engine", "status")
    assert code == 0 and str(info["pid"]) in out and str(library) in out and " MB" in out
    code, out, err, _ = shell("engine", "stop")
    assert (code, out) == (0, f"Stopped the engine of {library} (process {info['pid']}).\n"), err
    wait_for(lambda: not alive(info["pid"]), 30, "for the engine to exit")
    assert not os.path.lexists(where(library))
    assert shell("engine", "stop")[2] == "No engine was running."
    assert shell("engine", "status")[2] == "No engine is running."


def test_an_idle_engine_exits(library: Path) -> None:
    assert shell(*QUERY, "--library", str(library), BLIPSEARCH_ENGINE_IDLE="3")[0] == 0
    pid = ready(library)["pid"]
    started = time.monotonic()
    wait_for(lambda: not alive(pid), 60, "for the idle engine to exit")
    assert time.monotonic() - started < 30
    assert not os.path.lexists(where(library))
    assert "stopping: no call for 3 s" in logged(library)


def test_two_racing_first_commands_start_one_engine(library: Path) -> None:
    command = [sys.executable, "-c", CLI_COMMAND, *QUERY, "--library", str(library)]
    racing = [subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in racing]
    assert [p.returncode for p in racing] == [0, 0] and outputs[0][0] == outputs[1][0]
    pid = ready(library)["pid"]
    time.sleep(1.0)  # (time for a second one to show up, were there one)
    assert engines_of(library) == [pid]
    assert shell(*QUERY, "--library", str(library))[3] is False


def test_a_stale_socket_is_replaced_by_the_engine(library: Path) -> None:
    path = socket_path(library)
    assert path is not None
    path.parent.mkdir(mode=0o700, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    stale.bind(str(path))
    os.umask(previous)
    stale.close()  # left by a process that was killed: nobody answers
    assert private_socket(path) and Engine.find(library, open_settings()) is None
    first = shell(*QUERY, "--library", str(library))
    assert first[0] == 0 and first[3]
    ready(library)
    assert shell(*QUERY, "--library", str(library))[:4] == (*first[:3], False)


def test_engines_off_or_in_process_start_nothing(library: Path) -> None:
    folder = where(library).parent
    for env in ({"BLIPSEARCH_ENGINE": "off"}, {"BLIPSEARCH_IN_PROCESS": "1"}):
        code, _, err, torch = shell(*QUERY, "--library", str(library), **env)
        assert code == 0 and torch and err == ""
        time.sleep(0.5)
        assert engines_of(library) == [] and not (folder.exists() and any(folder.iterdir())), env


def test_a_command_without_a_model_starts_nothing(library: Path) -> None:
    code, _, _, torch = shell("search", "a red square", "--no-rerank", "--library", str(library))
    assert code == 0 and not torch
    time.sleep(0.5)
    assert engines_of(library) == []


def test_another_users_runtime_folder_is_refused(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = socket_path(library)
    assert path is not None
    path.parent.mkdir(mode=0o700, exist_ok=True)
    real = os.getuid()
    with monkeypatch.context() as m:
        m.delenv("BLIPSEARCH_ENGINE")
        m.setattr(os, "getuid", lambda: real + 1)  # the folder now belongs to someone else
        assert background.start(library, open_settings(), ["retrieval"]) is None
        assert background.running() == []
    assert list(path.parent.iterdir()) == []  # not even a lock file written there
    if real != 0:
        return
    os.chown(path.parent, 65534, 65534)  # as root: really another user's
    try:
        code, _, _, torch = shell(*QUERY, "--library", str(library))
        assert code == 0 and torch
        time.sleep(0.5)
        assert engines_of(library) == [] and list(path.parent.iterdir()) == []
    finally:
        os.chown(path.parent, 0, 0)


def test_the_first_command_says_on_a_terminal_that_it_started_one(library: Path) -> None:
    reader, writer = pty.openpty()
    done = subprocess.run([sys.executable, "-m", "blipsearch.cli", *QUERY, "--library", str(library)], env=_env(),
                          stdout=subprocess.PIPE, stderr=writer, timeout=300, check=False)
    os.close(writer)
    said = b""
    while True:
        try:
            chunk = os.read(reader, 4096)
        except OSError:
            break
        if not chunk:
            break
        said += chunk
    os.close(reader)
    assert done.returncode == 0
    assert said.decode().count("Started a background engine") == 1 and "blipsearch engine stop" in said.decode()
    ready(library)


def test_an_engine_is_replaced_when_its_code_or_library_changes(library: Path, tmp_path: Path,
                                                                  tiny_model: Path, other_model: Path,
                                                                  photos: Path) -> None:
    options = ["--library", str(library)]
    first = shell(*QUERY, *options)
    old = ready(library)

    # A command of other code (a copy of the package, one file changed): the engine is told to go,
    # the command works in-process and starts one of its own code.
    code = tmp_path / "code"
    shutil.copytree(ROOT / "blipsearch", code / "blipsearch", ignore=shutil.ignore_patterns("__pycache__", "builtin"))
    with open(code / "blipsearch" / "errors.py", "a") as changed:
        changed.write("\n# another version\n")
    other = shell(*QUERY, *options, PYTHONPATH=str(code))
    assert other[:3] == first[:3] and other[3]
    wait_for(lambda: not alive(old["pid"]), 30, "for the old engine to go")
    new = ready(library)
    assert new["pid"] != old["pid"] and new["version"] != old["version"]
    # ... and this code's commands replace that one in turn.
    assert shell(*QUERY, *options)[3]
    wait_for(lambda: not alive(new["pid"]), 30, "for the other code's engine to go")
    engine = ready(library)

    # The library deleted and made again: the engine says so at the next command, which replaces it.
    shutil.rmtree(library)
    result = CliRunner().invoke(main, ["index", str(photos), *options, "--model", str(tiny_model)],
                                catch_exceptions=False)
    assert result.exit_code == 0
    again = shell(*QUERY, *options)
    assert again[:3] == first[:3] and again[3]
    wait_for(lambda: not alive(engine["pid"]), 30, "for the engine of the deleted library to go")
    assert "stopping: its library was deleted" in logged(library)
    engine = ready(library)
    assert engine["pid"] not in (old["pid"], new["pid"])

    # Another model recorded: the engine notices on its own and goes.
    result = CliRunner().invoke(main, ["index", str(photos), *options, "--reindex", "--model", str(other_model)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    wait_for(lambda: not alive(engine["pid"]), 30, "for the engine of the old model to go")
    assert "stopping: its library's model changed" in logged(library)
    assert not os.path.lexists(where(library))


def test_serve_takes_the_socket_over_from_an_engine(library: Path) -> None:
    from test_engine import Serve

    assert shell(*QUERY, "--library", str(library))[0] == 0
    pid = ready(library)["pid"]
    server = Serve("--library", str(library))
    try:
        wait_for(lambda: not alive(pid), 30, "for the engine to give the socket up")
        assert ready(library)["kind"] == "serve"
        code, _, _, torch = shell(*QUERY, "--library", str(library))
        assert code == 0 and not torch
        assert shell("engine", "stop")[2] == "No engine was running."  # a serve is not stopped from here
        assert ready(library)["kind"] == "serve"
    finally:
        server.stop()


def test_what_the_socket_answers_about_itself(library: Path) -> None:
    from blipsearch.engine import code_version
    from blipsearch.library import Library
    from blipsearch.web.terminal import TerminalApp

    with Library(library, create=False) as lib:
        app = TerminalApp(lib)  # a `serve`'s
        status, answer = app.answer(json.dumps({"call": "hello", "settings": lib.settings}).encode())
        assert status == 200 and answer["result"]["kind"] == "serve" and answer["result"]["pid"] == os.getpid()
        assert answer["result"]["version"] == code_version() and answer["result"]["library"] == str(library)
        other = {**lib.settings, "device": "cpu"}
        status, answer = app.answer(json.dumps({"call": "hello", "settings": other}).encode())
        assert status == 409 and answer["reason"] == "settings" and answer["info"]["kind"] == "serve"
        assert app.answer(b'{"call": "stop"}')[0] == 400  # a server is stopped where it runs
        assert app.answer(b'{"call": ["stop"]}')[0] == 400
        time.sleep(0.2)
        assert app.idle_s() >= 0.2
        status, answer = app.answer(json.dumps({"call": "count", "settings": lib.settings}).encode())
        assert (status, answer) == (200, {"result": 12}) and app.idle_s() < 0.2

        stopped: list[str] = []
        engine = TerminalApp(lib, "engine", lambda: "its library's model changed", stopped.append)
        status, answer = engine.answer(json.dumps({"call": "hello", "settings": lib.settings}).encode())
        assert (status, answer["reason"], stopped) == (409, "stale", ["its library's model changed"])
        assert engine.answer(b'{"call": "stop"}')[0] == 200 and stopped[-1] == "asked to"
