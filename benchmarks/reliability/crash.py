"""Crash campaign: kill -9 a library's writers at random moments, check the library after each kill,
and compare the library the last re-runs leave with a clean run's.

    python benchmarks/reliability/crash.py [--kills 500] [--images 200] [--seed 0] [--workdir DIR]

The workload (see ``library_state.Workload``) runs four commands on one library: ``index
--captions --tags`` with the built-in model, ``texts add``, a ``search`` that has to rebuild the
vector file, and ``index --reindex`` to a second model. Every attempt at a step may be killed with
SIGKILL, either after a random delay within the step's clean duration or, for a share of kills
(``--targeted``), at an exact failpoint the step passes (a vector-file, thumbnail or token-cache
write, fsync or rename, a database commit; ``blipsearch/failpoints.py``), until the step completes; then the
next step. After every kill the library is checked (``library_state.problems``: integrity, every
row of the model with a vector, the vector file or its rebuild holding exactly the database's ids,
a search that works); after each cycle of the four steps the library must equal the clean run's
(rows, vectors, captions, tags, texts, failures), and no temporary file may be left once the
next index run has cleaned up. Results: ``benchmarks/results/crash.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from library_state import (  # noqa: E402
    ROOT,
    Workload,
    clean_run,
    differences,
    finish,
    leftovers,
    prepare_step,
    problems,
    snapshot,
    workdir_for,
)

RESULTS = ROOT / "benchmarks" / "results"


def attempt(argv: list[str], env: dict[str, str], delay: float | None) -> tuple[bool, subprocess.CompletedProcess[str] | None]:
    """Run one attempt; with ``delay``, SIGKILL it then. Returns (killed, finished process or None)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    try:
        out, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return True, None
    if proc.returncode == -signal.SIGKILL:  # a failpoint's kill
        return True, None
    return False, subprocess.CompletedProcess(argv, proc.returncode, out, err)


def campaign(kills: int, images: int, seed: int, workdir: Path, targeted: float = 0.35,
             kill_probability: float = 0.8, max_kills_per_step: int = 3,
             report: bool = True, out: Path | None = None, steps: tuple[str, ...] | None = None) -> dict[str, object]:
    """Kill until ``kills``; with ``out``, the results so far are written there after every cycle;
    ``steps``: only the workload's steps of these names."""
    rng = random.Random(seed)
    workload = Workload(workdir).make(images)
    reference = workdir / "clean-library"
    shutil.rmtree(reference, ignore_errors=True)
    def chosen(library: Path) -> list[tuple[str, list[str]]]:
        return [step for step in workload.steps(library) if steps is None or step[0] in steps]

    durations, points = clean_run(chosen(reference), workdir)
    want = snapshot(reference)

    tally: Counter[str] = Counter()
    by_point: Counter[str] = Counter()
    inconsistencies: list[str] = []
    cycles = 0
    start = time.perf_counter()

    def results() -> dict[str, object]:
        return {
            "images": images,
            "seed": seed,
            "kills": tally["kills"],
            "cycles": cycles,
            "seconds": round(time.perf_counter() - start, 1),
            "clean_step_seconds": {k: round(v, 2) for k, v in durations.items()},
            "failpoints_per_step": {k: dict(v) for k, v in points.items()},
            "tally": dict(tally),
            "kills_by_point": dict(by_point),
            "inconsistencies": inconsistencies,
        }

    while tally["kills"] < kills:
        cycles += 1
        library = workdir / "library"
        shutil.rmtree(library, ignore_errors=True)
        for name, argv in chosen(library):
            prepare_step(name, library)
            killed_here = 0
            while True:
                env: dict[str, str] = {}
                delay: float | None = None
                if killed_here < max_kills_per_step and tally["kills"] < kills and rng.random() < kill_probability:
                    if points[name] and rng.random() < targeted:
                        point = rng.choice(sorted(points[name]))
                        env["BLIPSEARCH_FAILPOINTS"] = f"{point}=kill@{rng.randint(1, points[name][point])}"
                    else:
                        delay = rng.uniform(0.5, durations[name])
                killed, done = attempt(argv, env, delay)
                if killed:
                    killed_here += 1
                    tally["kills"] += 1
                    tally[f"kills in {name}"] += 1
                    kind = env.get("BLIPSEARCH_FAILPOINTS", "").split("=")[0] or "random moment"
                    by_point[kind] += 1
                    tally["temporary files left by kills"] += len(leftovers(library))
                    for problem in problems(library):
                        inconsistencies.append(f"cycle {cycles}, after a kill in {name} ({kind}): {problem}")
                    if report and tally["kills"] % 25 == 0:
                        print(f"{tally['kills']} kills, {len(inconsistencies)} inconsistencies, "
                              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                    continue
                assert done is not None
                if env or delay is not None:
                    tally["attempts that finished before their kill"] += 1
                if done.returncode != 0:
                    inconsistencies.append(f"cycle {cycles}: {name} failed after kills ({done.returncode}): "
                                           f"{done.stderr.strip()[-500:]}")
                if "Traceback" in done.stderr:
                    inconsistencies.append(f"cycle {cycles}: {name} printed a traceback")
                break
            if name.endswith("index") and leftovers(library):
                inconsistencies.append(f"cycle {cycles}: {len(leftovers(library))} temporary files left after "
                                       f"{name} completed: {[p.name for p in leftovers(library)][:3]}")
        for difference in differences(snapshot(library), want):
            inconsistencies.append(f"cycle {cycles}: the library differs from a clean run's: {difference}")
        tally["cycles"] = cycles
        if out is not None:
            out.write_text(json.dumps(results(), indent=1) + "\n")
    return results()



def table(result: dict[str, object]) -> str:
    tally = result["tally"]
    assert isinstance(tally, dict)
    lines = [f"{result['kills']} kills in {result['cycles']} cycles over {result['images']} images, "
             f"{result['seconds']} s: {len(result['inconsistencies'])} inconsistencies",  # type: ignore[arg-type]
             "", "| where | kills |", "|---|---|"]
    by_point = result["kills_by_point"]
    assert isinstance(by_point, dict)
    lines += [f"| {k} | {v} |" for k, v in sorted(by_point.items(), key=lambda kv: -kv[1])]
    lines += ["", "| step | kills |", "|---|---|"]
    lines += [f"| {k[len('kills in '):]} | {v} |" for k, v in tally.items() if k.startswith("kills in ")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targeted", type=float, default=0.35, help="share of kills at an exact failpoint")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "crash.json")
    args = parser.parse_args()
    workdir = workdir_for(args.workdir, "crash")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = campaign(args.kills, args.images, args.seed, workdir, targeted=args.targeted, out=args.out)
    finish(result, args.out, table(result), result["inconsistencies"])  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
