"""The terminal's warm engine: a running `blipsearch serve` answers search, similar, lookup,
caption and ask from the command line, with the same output, over a socket only its user reaches."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CLI_COMMAND

from blipsearch import background
from blipsearch.cli import main
from blipsearch.engine import (
    Engine,
    Remote,
    decode,
    encode,
    private_socket,
    socket_path,
)
from blipsearch.filters import Filters
from blipsearch.options import CaptionSettings, open_settings
from blipsearch.results import Hit
from blipsearch.web.terminal import terminal_socket


@pytest.fixture
def runtime(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path_factory.mktemp("run")
    folder.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.delenv("BLIPSEARCH_IN_PROCESS", raising=False)
    return folder


def shell(*args: str) -> tuple[int, str, str, bool]:
    """(exit code, stdout, stderr without the last line, imported torch) of ``blipsearch ARGS``."""
    done = subprocess.run([sys.executable, "-c", CLI_COMMAND, *args], capture_output=True, text=True, timeout=300)
    *messages, last = done.stderr.strip().splitlines()
    info = json.loads(last)
    return info["code"], done.stdout, "\n".join(messages), info["torch"]


def in_process(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    with monkeypatch.context() as m:
        m.setenv("BLIPSEARCH_IN_PROCESS", "1")
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr.strip()


class Serve:
    """`blipsearch serve` in a process of its own, as a user starts it."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "blipsearch.cli", "serve", "--port", "0", *args],
                                        stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        seen = []
        while not seen or "Serving" not in seen[-1]:
            seen.append(self.process.stderr.readline())
            assert seen[-1], "".join(seen)  # it stopped before serving
        line = seen[-1]
        self.port = int(line.split(":")[-1].strip().strip("/"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


@pytest.fixture
def served(tmp_path: Path, photos: Path, tiny_model: Path, tiny_captioner: Path, tiny_vqa: Path, runtime: Path):
    library = tmp_path / "lib"
    options = ["--library", str(library), "--model", str(tiny_model), "--caption-model", str(tiny_captioner),
               "--vqa-model", str(tiny_vqa)]
    texts = tmp_path / "texts.txt"
    texts.write_text("a red square\na blue circle\na garden at night\n")
    for args in (["index", str(photos)], ["texts", "add", str(texts)]):
        assert CliRunner().invoke(main, [*args, *options], catch_exceptions=False).exit_code == 0
    server = Serve(*options)
    yield server, library, options
    server.stop()


def test_a_running_server_answers_the_terminal_with_the_same_output(served, photos: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    server, library, options = served
    path = socket_path(library)
    assert path is not None and private_socket(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    photo = str(photos / "holiday" / "img01.png")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    choices = tmp_path / "colors.txt"
    choices.write_text("red\nblue\ngreen\n")
    commands = [
        ["search", "a red square", "-k", "5"],
        ["search", "a red square", "--no-rerank", "--json", "--folder", str(photos / "garden")],
        ["search", "a blue circle", "-k", "3", "--caption", "--ask", "is it red?"],
        ["similar", photo, "-k", "4"],
        ["lookup", photo, "-k", "2", "--json"],
        ["caption", photo, str(photos / "garden" / "img07.png")],
        ["ask", photo, "what color is it?", "--json"],
        ["ask", photo, "what color is it?", "--choices", str(choices), "--json"],
        ["search", "a blue circle", "-k", "3", "--ask", "is it red?", "--answer", "red", "--choices", str(choices)],
        ["similar", str(not_an_image)],  # an error: the same sentence, the same exit code
    ]
    monkeypatch.chdir(photos)  # relative paths are the command line's, not the server's
    commands.append(["similar", os.path.join("holiday", "img02.png"), "-k", "3"])
    for args in commands:
        code, out, err, torch = shell(*args, *options)
        assert not torch, (args, err)  # the server did the work
        expected = in_process(monkeypatch, *args, *options)
        if "--json" in args:  # full floats: a text embedded without torch here, with it there (1e-7 apart)
            got, want = ([json.loads(line) for line in text.splitlines()] for text in (out, expected[1]))
            assert len(got) == len(want) > 0, args
            for a, b in zip(got, want):
                assert a.keys() == b.keys(), args
                for key in a:
                    same = (abs(a[key] - b[key]) < 1e-6 if isinstance(a[key], float) and isinstance(b[key], float)
                            else a[key] == b[key])
                    assert same, (args, key, a[key], b[key])
            out = expected[1]
        assert (code, out, err) == expected, args
        assert code == (1 if args[1] == str(not_an_image) else 0), (args, err)


def test_the_server_answers_only_for_the_same_options_and_only_on_its_socket(
        served, monkeypatch: pytest.MonkeyPatch) -> None:
    server, library, options = served
    # Another device asked for: in-process, the same answer.
    code, out, err, torch = shell("search", "a red square", "--device", "cpu", *options)
    assert torch and code == 0
    assert out == in_process(monkeypatch, "search", "a red square", "--device", "cpu", *options)[1]

    # The TCP address does not take the terminal's calls.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    call = {"call": "search", "settings": open_settings(), "args": ["a red square"], "kwargs": {}}
    connection.request("POST", "/call", json.dumps(call), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 404 and b"result" not in response.read()

    # Stopped: the socket goes, and commands work in-process without a word.
    server.stop()
    path = socket_path(library)
    assert path is not None and not os.path.lexists(path)
    code, out, err, torch = shell("search", "a red square", "-k", "3", *options)
    assert torch and code == 0 and err == ""
    assert out == in_process(monkeypatch, "search", "a red square", "-k", "3", *options)[1]


def test_a_socket_that_is_not_private_or_not_answering_is_not_used(tmp_path: Path, runtime: Path) -> None:
    library = tmp_path / "lib"
    with terminal_socket(library) as sock:
        assert sock is not None
        path = socket_path(library)
        assert path is not None and private_socket(path)
        path.parent.chmod(0o755)  # others may now reach into the folder
        assert not private_socket(path) and Engine.find(library, open_settings()) is None
        path.parent.chmod(0o700)
        os.chmod(path, 0o666)
        assert not private_socket(path) and Engine.find(library, open_settings()) is None
        os.chmod(path, 0o600)
        # Another user's socket, in another user's folder: not used, and nothing is written there.
        real = os.getuid()
        with pytest.MonkeyPatch.context() as m:
            m.setattr(os, "getuid", lambda: real + 1)
            m.delenv("BLIPSEARCH_ENGINE")
            assert not private_socket(path) and Engine.find(library, open_settings()) is None
            assert background.start(library, open_settings(), ["retrieval"]) is None
            assert background.running() == [] and background.stop() == []
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert not os.path.lexists(path)

    # A socket left by a killed server: nobody answers, so commands work in-process, and the next
    # server takes the place.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    stale.bind(str(path))
    os.umask(old)
    stale.close()
    assert private_socket(path) and Engine.find(library, open_settings()) is None
    with terminal_socket(library) as sock:
        assert sock is not None and private_socket(path)
        # Another server of the same library while this one runs: it gets no socket.
        with terminal_socket(library) as second:
            assert second is None
        assert private_socket(path)


def test_values_cross_the_wire_intact() -> None:
    odd = os.fsencode("/photos/caf\udce9/x.jpg")  # a name that is not UTF-8
    filters = Filters.make(folders=[odd], after="2024-07", tag="beach")
    hit = Hit(rank=1, id=7, path=os.fsdecode(odd), score=-1.25, itc=0.5, itm=0.125, caption="a beach")
    sent = json.loads(json.dumps(encode([filters, CaptionSettings(num_beams=1), hit, (1, 2), b"\xff"])))
    types = {t.__name__: t for t in (Filters, CaptionSettings, Hit)}
    assert decode(sent, types) == [filters, CaptionSettings(num_beams=1), hit, (1, 2), b"\xff"]
    assert decode(sent, types)[0].after == datetime(2024, 7, 1)

    # The command line sees result types it does not import as Remote objects ...
    remote = decode(sent, {"Filters": Filters, "CaptionSettings": CaptionSettings})[2]
    assert isinstance(remote, Remote) and remote.path == hit.path and remote.itm == 0.125
    assert remote.to_dict() == hit.to_dict()
    with pytest.raises(AttributeError):
        _ = remote.missing
    # ... and hands them back as they came.
    assert decode(json.loads(json.dumps(encode(remote))), types) == hit
    with pytest.raises(TypeError):
        encode(object())


def test_a_command_waits_for_nothing_when_no_server_runs(tmp_path: Path, runtime: Path) -> None:
    start = time.perf_counter()
    assert Engine.find(tmp_path / "nowhere", open_settings()) is None
    assert time.perf_counter() - start < 0.5


def test_explain_tag_and_texts_add_are_answered_by_the_server(served, photos: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, options = served
    photo = str(photos / "holiday" / "img01.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\ngreen\nsquare\n")
    for args in (["tag", photo, str(photos / "garden" / "img07.png"), "--labels", str(labels)],
                 ["tag", photo, "--labels", str(labels), "--json", "-k", "2"]):
        code, out, err, torch = shell(*args, *options)
        assert not torch, (args, err)  # the server did the work
        expected = in_process(monkeypatch, *args, *options)
        if "--json" in args:  # (the server's floats went through JSON: compared as numbers)
            got, want = json.loads(out), json.loads(expected[1])
            assert [t["label"] for t in got["tags"]] == [t["label"] for t in want["tags"]]
            assert all(abs(a["score"] - b["score"]) < 1e-6 for a, b in zip(got["tags"], want["tags"]))
        else:
            assert (code, out, err) == expected, args

    served_png, local_png = tmp_path / "served.png", tmp_path / "local.png"
    code, out, err, torch = shell("explain", photo, "a red square", "--out", str(served_png), "--json", *options)
    assert code == 0 and not torch, err
    expected = in_process(monkeypatch, "explain", photo, "a red square", "--out", str(local_png), "--json", *options)
    got, want = json.loads(out), json.loads(expected[1])
    assert got["heat"] == want["heat"] and abs(got["itm"] - want["itm"]) < 1e-6
    assert served_png.read_bytes() == local_png.read_bytes()  # the same picture, drawn here from the server's map

    more = tmp_path / "more.txt"
    more.write_text("a red square\na yellow star\na green triangle\n")  # one already in the collection
    code, out, err, torch = shell("texts", "add", str(more), *options)
    assert (code, out, torch) == (0, "2 added, 1 already present\n", False), err
    # The server's library has them now, embedded: the same command here finds nothing to add.
    assert in_process(monkeypatch, "texts", "add", str(more), *options)[1] == "0 added, 3 already present\n"
