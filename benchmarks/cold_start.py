"""Whole-process latency of `blipsearch` commands, as a user at a terminal waits for them.

    python benchmarks/cold_start.py [--workdir DIR] [--runs 3]

Each command runs as its own process, start to exit (`blipsearch ...` from the
virtualenv), median of ``--runs``:

- on a base-size library (BLIP-base architecture with random weights: the real
  cost; 5,000 synthetic rows whose files are 12 MP JPEGs), in-process
  (``BLIPSEARCH_IN_PROCESS=1``) and with a `blipsearch serve` of the library
  running (the warm engine); reranking at the default depth with the
  vision-token cache holding the candidates (one search fills it first);
- on the offline demo (200 shapes-world pictures, the built-in model), the
  same two ways.

With ``--auto`` it times instead what the background engine does for a user who never starts
`blipsearch serve` (``blipsearch/background.py``), on both libraries: the first reranked search
with no engine running (in-process; it starts one), how long until that engine answers, then the
second and the tenth of the same search (answered by it), the engine's resident memory once
idle, and ``--help`` meanwhile (what any command costs on the machine as loaded as it is then);
``--runs`` times each, every run from no engine, in a runtime folder of its own.

With ``--compare SRC`` (a checkout of other code, e.g. ``git worktree add /tmp/old REV``) it
times only the commands that start without a model (``--help``, ``status``,
``search --no-rerank``), in-process, for this checkout and for SRC (``PYTHONPATH=SRC``), the two
alternating run by run so that both see the same machine; it prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, save, synthetic_library

BIN = Path(sys.executable).parent / "blipsearch"


def timed(args: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(BIN), *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Serving:
    def __init__(self, options: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen([str(BIN), "serve", "--port", "0", *options], env=env,
                                        stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        while "Serving" not in (line := self.process.stderr.readline()):
            if not line:
                raise RuntimeError("blipsearch serve did not start")

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(60)


def commands(query_image: Path) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "status": ["status"],
        "search --no-rerank": ["search", "a red circle left of a blue square", "--no-rerank"],
        "search (rerank, default depth)": ["search", "a red circle left of a blue square"],
        "similar (indexed image)": ["similar", str(query_image)],
    }


def measure(options: list[str], query_image: Path, runs: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, "BLIPSEARCH_IN_PROCESS": "1"}
    found = commands(query_image)
    cold = {name: timed(args if name == "--help" else [*args, *options], env, runs) for name, args in found.items()}
    warm: dict[str, float] = {}
    env = {k: v for k, v in os.environ.items() if k != "BLIPSEARCH_IN_PROCESS"}
    with Serving(options, env):
        timed([*found["search (rerank, default depth)"], *options], env, 1)  # the server loads its model
        for name, args in found.items():
            if name not in ("--help", "status"):
                warm[name] = timed([*args, *options], env, runs)
    return {"in_process": cold, "with_serve": warm}


def _engine(runtime: Path, timeout: float = 600) -> dict[str, object]:
    """The info of the engine listening in the runtime folder ``runtime``, once it answers (asked
    from here: a `blipsearch engine status` a poll would load the machine the engine loads on)."""
    from blipsearch.engine import ask

    deadline = time.perf_counter() + timeout
    while True:
        for path in (runtime / "blipsearch").glob("*.sock"):
            answer = ask(path, {"call": "info"})
            if answer is not None:
                return answer["result"]  # type: ignore[no-any-return]
        if time.perf_counter() > deadline:
            raise RuntimeError("no engine started")
        time.sleep(0.05)


def auto(options: list[str], runs: int, settle_s: float = 5.0) -> dict[str, object]:
    """The background engine's figures for ``search TEXT`` (default rerank) on the library of ``options``."""
    search = [*commands(Path("unused"))["search (rerank, default depth)"], *options]
    found: dict[str, list[float]] = {"first": [], "ready_after_s": [], "second": [], "tenth": [], "idle_rss_mb": [],
                                     "help": []}
    for _ in range(runs):
        runtime = Path(tempfile.mkdtemp(prefix="bs-run-"))
        runtime.chmod(0o700)
        env = {k: v for k, v in os.environ.items() if k not in ("BLIPSEARCH_IN_PROCESS", "BLIPSEARCH_ENGINE")}
        env["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            found["first"].append(timed(search, env, 1))
            done = time.perf_counter()
            _engine(runtime)
            found["ready_after_s"].append(time.perf_counter() - done)
            later = [timed(search, env, 1) for _ in range(9)]
            found["second"].append(later[0])
            found["tenth"].append(later[-1])
            found["help"].append(timed(["--help"], env, 3))  # the floor: a command that does nothing, now
            time.sleep(settle_s)
            found["idle_rss_mb"].append(int(_engine(runtime)["memory"]) / 2**20)  # type: ignore[call-overload]
        finally:
            subprocess.run([str(BIN), "engine", "stop"], env=env, check=False, capture_output=True)
            shutil.rmtree(runtime, ignore_errors=True)
    return {name: statistics.median(values) for name, values in found.items()} | {"all": found}


LIGHT = ("--help", "status", "search --no-rerank")


def compare(source: Path, libraries: dict[str, list[str]], runs: int) -> dict[str, dict[str, float]]:
    """Median whole-process seconds of the LIGHT commands for this checkout and for ``source``."""
    here = str(Path(__file__).resolve().parent.parent)
    envs = {"this": {**os.environ, "BLIPSEARCH_IN_PROCESS": "1", "PYTHONPATH": here},
            "other": {**os.environ, "BLIPSEARCH_IN_PROCESS": "1", "PYTHONPATH": str(source.resolve())}}
    found = commands(Path("unused"))
    result: dict[str, dict[str, float]] = {}
    for where, options in libraries.items():
        for name in LIGHT:
            args = found[name] if name == "--help" else [*found[name], *options]
            if name == "--help" and where != next(iter(libraries)):
                continue
            times: dict[str, list[float]] = {"this": [], "other": []}
            for _ in range(runs):
                for side in ("other", "this"):
                    times[side].append(timed(args, envs[side], 1))
            label = name if name == "--help" else f"{where}: {name}"
            result[label] = {side: statistics.median(t) for side, t in times.items()}
            result[label]["ratio"] = result[label]["this"] / result[label]["other"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--auto", action="store_true", help="time the background engine instead (see above)")
    parser.add_argument("--compare", type=Path, default=None, metavar="SRC",
                        help="time --help, status and search --no-rerank against the code in SRC")
    args = parser.parse_args()

    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    library = synthetic_library(args.workdir, args.images, checkpoint, "cold-library")
    base = ["--library", str(library), "--token-cache-gb", "1"]
    photo = library / "files" / "000001.jpg"
    env = {**os.environ, "BLIPSEARCH_IN_PROCESS": "1"}
    demo = args.workdir / "cold-demo"
    shutil.rmtree(demo, ignore_errors=True)
    subprocess.run([str(BIN), "demo-photos", str(demo / "photos")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(BIN), "index", str(demo / "photos"), "--model", "builtin:shapes", "--library",
                    str(demo / "library")], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.compare is not None:
        found = compare(args.compare, {"base": base, "demo": ["--library", str(demo / "library")]}, args.runs)
        path = save("cold_start_compare", {"other": str(args.compare), "runs": args.runs, "commands": found})
        print(f"| command | this checkout | {args.compare} | ratio |")
        print("|---|---|---|---|")
        for name, row in found.items():
            print(f"| `{name}` | {row['this']:.3f} s | {row['other']:.3f} s | {row['ratio']:.3f} |")
        print(f"written to {path}")
        return
    timed(["search", "a red circle left of a blue square", *base], env, 1)  # fills the token cache
    if args.auto:
        engines = {"base": auto(base, args.runs), "demo": auto(["--library", str(demo / "library")], args.runs)}
        path = save("cold_start_auto", {"runs": args.runs, "libraries": engines})
        print("| library | first search (no engine) | engine answers after | second | tenth | idle engine RSS | "
              "`--help` meanwhile |")
        print("|---|---|---|---|---|---|---|")
        for where, row in engines.items():
            print(f"| {where} | {row['first']:.2f} s | {row['ready_after_s']:.1f} s | {row['second']:.2f} s | "
                  f"{row['tenth']:.2f} s | {row['idle_rss_mb']:,.0f} MB | {row['help']:.2f} s |")
        print(f"written to {path}")
        return
    result: dict[str, object] = {"base": measure(base, photo, args.runs)}

    result["demo"] = measure(["--library", str(demo / "library")], demo / "photos" / "images" / "00001.png",
                             args.runs)
    path = save("cold_start", result)
    print("| command | base, in-process | base, serve running | demo, in-process | demo, serve running |")
    print("|---|---|---|---|---|")
    for name in commands(photo):
        cells = []
        for where in ("base", "demo"):
            runs = result[where]  # type: ignore[index]
            cells += [f"{runs['in_process'][name]:.2f} s",
                      f"{runs['with_serve'][name]:.2f} s" if name in runs["with_serve"] else "-"]
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print(f"written to {path}")
    shutil.rmtree(library, ignore_errors=True)
    shutil.rmtree(demo, ignore_errors=True)


if __name__ == "__main__":
    main()
