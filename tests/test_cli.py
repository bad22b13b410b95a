"""The command line, through click's runner and as a real console script."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import StopAfterFirstBatch, draw_image

from blipsearch.cli import main

COUNT_KEYS = {"added", "updated", "moved", "removed", "unchanged", "failed", "skipped"}


@pytest.fixture
def run(library_dir: Path, tiny_model: Path):
    def invoke(*args: str, model: bool = True):
        extra = ["--library", str(library_dir)] + (["--model", str(tiny_model)] if model else [])
        return CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)

    return invoke


def test_index_search_status_failures(run, photos: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"nope")
    result = run("index", str(photos), "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts == {"added": 12, "updated": 0, "moved": 0, "removed": 0, "unchanged": 0, "failed": 1, "skipped": 0}

    result = run("search", "a red circle", "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    for hit in hits:
        assert {"rank", "id", "path", "score", "itc", "itm"} <= set(hit)
        assert 0 <= hit["itm"] <= 1 and os.path.exists(hit["path"])

    result = run("search", "a red circle", "-k", "3", "--no-rerank", "--json")
    assert all(json.loads(line)["itm"] is None for line in result.stdout.splitlines())

    result = run("search", "a red circle", "-k", "4", "--paths")
    assert [Path(p).exists() for p in result.stdout.splitlines()] == [True] * 4
    assert run("search", "a red circle", "-k", "4", "--paths0").stdout_bytes.split(b"\0") == [
        line.encode() for line in result.stdout.splitlines()] + [b""]

    result = run("search", "a red circle", "-k", "2")
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["#", "score", "match", "path"] and len(rows) == 2 and "%" in rows[0]

    result = run("similar", str(photos / "garden" / "img06.png"), "-k", "3", "--json")
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert len(paths) == 3 and str(photos / "garden" / "img06.png") not in paths

    status = json.loads(run("status", "--json", model=False).stdout)
    assert status["images"] == status["vectors"] == 12 and status["failures"] == 1
    assert status["model"] and status["database"].startswith("sqlite")

    failures = [json.loads(line) for line in run("failures", "--json", model=False).stdout.splitlines()]
    assert failures == [{"path": str(photos / "broken.jpg"), "reason": "not an image, or a format Pillow can't read",
                         "retried": "once changed"}]
    (photos / "broken.jpg").unlink()
    run("index", str(photos))
    result = run("failures", model=False)
    assert result.stdout == "" and "No file failed" in result.stderr
    result = run("search", "a red circle", "--tag", "beach")
    assert result.exit_code == 0 and result.stdout == "" and "No indexed image is tagged 'beach'" in result.stderr


def test_index_says_failed_of_failures_and_skipped_of_files_not_looked_at(run, photos: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"nope")  # can't be decoded: read again once it changes
    draw_image(50, size=400).save(photos / "big.png")  # refused for --max-megapixels: tried every run
    (photos / "captions.jsonl").write_text("{}\n")  # not an image format's name: never read
    result = run("index", str(photos), "--max-megapixels", "0.1")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert f"failed {photos / 'broken.jpg'}: not an image, or a format Pillow can't read" in lines
    assert any(line.startswith(f"failed {photos / 'big.png'}: ") for line in lines)
    assert not any(line.startswith("skipped") for line in lines)
    assert result.stdout.strip().endswith(
        "2 failed, 1 skipped (skipped: not of an image format by their names; --verbose lists them)")

    result = run("index", str(photos), "--max-megapixels", "0.1", "--verbose", "--json")
    lines = result.stderr.splitlines()
    assert f"skipped {photos / 'captions.jsonl'}: '.jsonl' is not an image format's extension (a file named in " \
           "PATHS is read whatever its name)" in lines
    assert any(line.startswith(f"failed {photos / 'big.png'}: ") for line in lines)  # read again, failed again
    assert not any(str(photos / "broken.jpg") in line for line in lines)  # unchanged: not read again
    assert "1 of the failed files failed before and are unchanged: not read again" in result.stderr
    counts = json.loads(result.stdout.splitlines()[-1])
    assert (counts["failed"], counts["skipped"]) == (2, 1)
    failures = {Path(f["path"]).name: f["retried"]
                for f in map(json.loads, run("failures", "--json", model=False).stdout.splitlines())}
    assert failures == {"broken.jpg": "once changed", "big.png": "every run"}
    assert "--retry-failed" in run("failures", "--help", model=False).stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("search", "a dog"), 1, "There is no library at"),
        (("status",), 1, "There is no library at"),
        (("search", "a dog", "-k", "0"), 2, "at least 1"),
        (("search", "  "), 2, "it is empty"),
        (("search", "a dog", "--token-cache-gb", "-1"), 2, "-1 must be a number of at least 0"),
        (("search", "a dog", "--token-cache-gb", "inf"), 2, "inf must be a number"),
        (("search", "a dog", "--max-megapixels", "nan"), 2, "nan must be a number above 0"),
        (("search", "a dog", "-k", "99999999999999999999"), 2, "too large"),
        (("search", "a dog", "-k", "many"), 2, "not a whole number"),
        (("search", "a dog", "--json", "--paths"), 2, "can't be used together"),
        (("index", "/no/such/folder"), 1, "does not exist"),
        (("similar", "/no/such.jpg"), 2, "does not exist"),
    ],
)
def test_user_errors_are_one_sentence(run, args, code, words, library_dir: Path) -> None:
    result = run(*args)
    assert result.exit_code == code
    assert words in result.output
    assert "Traceback" not in result.output
    if args[0] != "index":  # reading a library that isn't there makes none
        assert not (library_dir / "library.db").exists()


def test_empty_library_says_to_index(run, library_dir: Path, tiny_model: Path) -> None:
    from blipsearch import Library

    Library(library_dir, model=str(tiny_model)).close()  # made, nothing indexed yet
    result = run("search", "a dog")
    # The advice names the library the user gave: run as it is, it indexes into that one.
    assert result.exit_code == 1
    assert f"run `blipsearch index PATH --library {library_dir}` first" in result.output


def test_a_failed_first_command_leaves_no_library(run, library_dir: Path, photos: Path, tmp_path: Path) -> None:
    for args in (("index", str(tmp_path / "no-such-folder")), ("tag", str(photos / "garden" / "img06.png"),
                                                              "--labels", str(tmp_path / "nothing.txt"))):
        (tmp_path / "nothing.txt").write_text("\n")  # no labels: an error once the library is open
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert not library_dir.exists(), args
    assert run("index", str(photos)).exit_code == 0 and (library_dir / "library.db").exists()
    assert run("index", str(tmp_path / "no-such-folder")).exit_code == 1
    assert (library_dir / "library.db").exists()  # a library with images is never removed


def test_tag_and_status_print_absolute_paths(run, photos: Path, library_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    assert run("index", str(photos)).exit_code == 0
    monkeypatch.chdir(photos)
    result = run("tag", "garden/img06.png", "--labels", str(tmp_path / "labels.txt"))
    assert result.stdout.splitlines()[0] == str(photos / "garden" / "img06.png")
    monkeypatch.chdir(library_dir.parent)
    out = CliRunner().invoke(main, ["status", "--json", "--library", library_dir.name])
    assert json.loads(out.stdout)["library"] == str(library_dir)


def test_a_demo_model_library_says_so_when_more_is_indexed(run, library_dir: Path, photos: Path) -> None:
    first = CliRunner().invoke(main, ["index", str(photos / "garden"), "--library", str(library_dir),
                                      "--model", "builtin:shapes"])
    assert first.exit_code == 0 and "toy model" not in first.output
    again = CliRunner().invoke(main, ["index", str(photos), "--library", str(library_dir)])
    assert again.exit_code == 0 and "is builtin:shapes, a toy model" in again.stderr
    # The same photos again, nothing added: nothing to warn of, so no note on every run.
    for _ in range(2):
        same = CliRunner().invoke(main, ["index", str(photos), "--library", str(library_dir)])
        assert same.exit_code == 0 and "toy model" not in same.output


def test_the_count_of_photos_matching_the_filters_is_said_in_good_english(run, photos: Path) -> None:
    (photos / "solo").mkdir()
    draw_image(60).save(photos / "solo" / "one.png")
    assert run("index", str(photos)).exit_code == 0
    one = run("search", "a red circle", "--folder", str(photos / "solo"))
    assert "1 indexed photo matches the filters." in one.stderr
    many = run("search", "a red circle", "--folder", str(photos / "garden"))
    assert "6 indexed photos match the filters." in many.stderr


def test_a_missing_model_is_explained_in_the_command_lines_words(library_dir: Path, photos: Path) -> None:
    for model, option in (("Salesforce/blip-itm-base-coco", "--model PATH"), ("./no-such-model", "check --model:")):
        result = CliRunner().invoke(main, ["index", str(photos), "--library", str(library_dir), "--model", model])
        assert result.exit_code == 1 and option in result.output, result.output
        assert "in Python" not in result.output


def test_model_mismatch_is_explained(run, photos: Path, library_dir: Path, other_model: Path) -> None:
    run("index", str(photos))
    complete = run("search", "x")
    assert complete.exit_code == 0 and "no vector" not in complete.stderr
    result = CliRunner().invoke(main, ["search", "x", "--library", str(library_dir), "--model", str(other_model)])
    assert result.exit_code == 1 and "--reindex" in result.output

    # A --reindex cut short: search works on what was re-embedded, and says what is missing.
    from blipsearch import Library

    with Library(library_dir, model=str(other_model), device="cpu") as lib, pytest.raises(KeyboardInterrupt):
        lib.index([photos], reindex=True, batch_size=4, progress=StopAfterFirstBatch)
    result = CliRunner().invoke(main, ["search", "x", "--library", str(library_dir), "--model", str(other_model),
                                       "-k", "20", "--no-rerank", "--json"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 4
    assert "8 of 12 indexed images have no vector from this model yet" in result.stderr


def _script() -> str:
    return str(Path(sys.executable).with_name("blipsearch"))


def test_console_script_end_to_end(tmp_path: Path, tiny_model: Path, photos: Path) -> None:
    env = {**os.environ, "BLIPSEARCH_LIBRARY": str(tmp_path / "lib"), "BLIPSEARCH_MODEL": str(tiny_model)}
    odd = os.path.join(os.fsencode(photos), b"\xff\xfe-odd.png")
    with open(odd, "wb") as fh:
        draw_image(40).save(fh, "PNG")
    done = subprocess.run([_script(), "index", str(photos), "--json"], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["added"] == 13
    done = subprocess.run([_script(), "search", "a dog", "-k", "13", "--paths", "--no-rerank"], env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert odd in done.stdout.splitlines()  # raw bytes, exactly the file's name


def test_offline_failure_is_fast_and_clear(tmp_path: Path, photos: Path) -> None:
    # Nothing listens on port 9 of the loopback: as if the hub can't be reached.
    env = {**os.environ, "BLIPSEARCH_LIBRARY": str(tmp_path / "lib"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    done = subprocess.run([_script(), "index", str(photos)], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 20
    assert done.returncode == 1
    assert "Salesforce/blip-itm-base-coco" in done.stderr and "--model PATH" in done.stderr
    assert "Traceback" not in done.stderr


def test_kill_9_mid_run_loses_nothing_committed(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        # Large enough that decoding takes a moment, so the run is still going when killed.
        draw_image(i, 32).resize((900, 900)).save(folder / f"p{i:03d}.png", compress_level=1)
    library = tmp_path / "lib"
    env = {**os.environ, "BLIPSEARCH_LIBRARY": str(library), "BLIPSEARCH_MODEL": str(tiny_model)}
    proc = subprocess.Popen([_script(), "index", str(folder), "--batch-size", "2", "--workers", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (library / "library.db").exists():
            try:
                with sqlite3.connect(library / "library.db", timeout=1) as conn:
                    committed = conn.execute("SELECT count(*) FROM images").fetchone()[0]
            except sqlite3.OperationalError:
                pass
        if committed >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if committed < 10 or committed >= 60:
        pytest.skip("the run finished before it could be killed")
    done = subprocess.run([_script(), "index", str(folder), "--json"], env=env, capture_output=True, timeout=300)
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts["added"] + counts["unchanged"] == 60 and counts["unchanged"] >= committed
    status = json.loads(subprocess.run([_script(), "status", "--json"], env=env, capture_output=True).stdout)
    assert status["images"] == status["vectors"] == 60


def test_status_and_a_rerun_over_unchanged_folders_import_no_torch(run, photos: Path, library_dir: Path,
                                                                   tiny_model: Path) -> None:
    # Nothing to embed: the command starts without torch, transformers or the model's weights.
    assert run("index", str(photos), "--json").exit_code == 0
    code = (
        "import json, sys\n"
        "from blipsearch.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n"
    )
    library = ["--library", str(library_dir)]
    for args in (["index", str(photos), "--json", *library], ["status", "--json", *library], ["--help"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
        *output, imported = done.stdout.strip().splitlines()
        assert json.loads(imported) == [], (args, imported)
        if args[0] == "index":
            assert json.loads(output[-1])["unchanged"] == 12


def test_demo_photos_makes_one_consistent_set(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["demo-photos", str(tmp_path / "demo"), "--count", "6"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "demo" / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len(list((tmp_path / "demo" / "images").glob("*.png"))) == 6
    result = runner.invoke(main, ["demo-photos", str(tmp_path / "demo"), "--count", "3"])
    assert result.exit_code == 1 and "not empty" in result.output
    assert (tmp_path / "demo" / "captions.jsonl").read_text().splitlines() == lines


BAD = "dog \udcff cat"  # what Python makes of the bytes b"dog \xff cat" in argv


@pytest.mark.parametrize("args", [
    ("search", BAD), ("search", BAD, "--hybrid"), ("search", "a dog", "--ask", BAD), ("search", "a dog", "--tag", BAD),
    ("search", "a dog", "--ask", "is it red?", "--answer", BAD), ("similar", "{image}", "--tag", BAD),
    ("ask", "{image}", BAD), ("caption", "{image}", "--prompt", BAD), ("explain", "{image}", BAD, "--out", "x.png"),
    ("tag", "{image}", "--labels", "{labels}", "--template", BAD),
])
def test_text_that_is_not_utf8_is_refused_in_one_sentence(run, photos: Path, tmp_path: Path, args) -> None:
    image = str(photos / "garden" / "img06.png")
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    assert run("index", str(photos)).exit_code == 0
    result = run(*(a.format(image=image, labels=tmp_path / "labels.txt") for a in args))
    assert result.exit_code == 2 and "is not valid UTF-8 (0xff at character 5)" in result.output
    assert "Traceback" not in result.output


def test_the_library_refuses_such_text_too(library_dir: Path, tiny_model: Path, photos: Path) -> None:
    from blipsearch import Library
    from blipsearch.describe import CaptionSettings
    from blipsearch.errors import InputPathError
    from blipsearch.filters import Filters

    with Library(library_dir, model=str(tiny_model), device="cpu") as lib:
        lib.index([photos])
        for attempt in (lambda: lib.search(BAD), lambda: lib.search(BAD, hybrid=True),
                        lambda: lib.search("a dog", tag=BAD), lambda: Filters.make(tag=BAD),
                        lambda: CaptionSettings(prompt=BAD), lambda: lib.explain(photos / "garden" / "img06.png", BAD),
                        lambda: lib.tag([photos / "garden" / "img06.png"], ["dog", BAD])):
            with pytest.raises(InputPathError, match="not valid UTF-8"):
                attempt()
