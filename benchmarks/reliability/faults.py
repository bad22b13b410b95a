"""Fault-injection campaign: every write of the workload fails once in turn, with ENOSPC, EIO and EROFS.

    python benchmarks/reliability/faults.py [--images 60] [--workdir DIR]

The workload is the crash campaign's (``library_state.Workload``). A clean run lists the
failpoints each step passes and how often (``blipsearch/failpoints.py``: each stage of each
atomic file write, each database commit). Then, for every step and every failpoint it passes,
the step is run again from the library as the clean run had it before that step, with that
point failing once: at its first pass with each of ENOSPC, EIO and EROFS, and at its middle and
last pass with ENOSPC (a disk that fills up during the run). Each fault must end in one of:

- *absorbed*: the command succeeds (the write was to a cache: thumbnails, vision tokens, the
  vector file, which is rebuilt from the database);
- *clear error*: it exits non-zero with one ``Error: ...`` sentence, no traceback.

After it, the library must be consistent (``library_state.problems``), must keep what was
committed before the fault (index runs: rows never fewer than before the step), and the same
command run again without a fault must succeed and leave the library equal to the clean run's
after that step. Results: ``benchmarks/results/faults.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from library_state import (
    ROOT,
    Workload,
    clean_run,
    differences,
    finish,
    leftovers,
    prepare_step,
    problems,
    run,
    snapshot,
    workdir_for,
)

from blipsearch.store.location import DB_FILE

RESULTS = ROOT / "benchmarks" / "results"
ERRNOS = ("ENOSPC", "EIO", "EROFS")


def image_rows(library: Path) -> int:
    if not (library / DB_FILE).exists():
        return 0
    con = sqlite3.connect(library / DB_FILE)
    try:
        return int(con.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def plan(points: Counter[str]) -> list[tuple[str, str, int]]:
    """(point, errno, pass) for one step's failpoints. A point after a commit is for kills only."""
    faults = []
    for point, passes in sorted(points.items()):
        if point.endswith(".committed"):
            continue
        faults += [(point, code, 1) for code in ERRNOS]
        faults += [(point, "ENOSPC", n) for n in sorted({(passes + 1) // 2, passes} - {1})]
    return faults


def campaign(images: int, workdir: Path, report: bool = True, only: tuple[str, ...] | None = None,
             out: Path | None = None) -> dict[str, object]:
    """Every fault of every step (of the steps named ``only``); with ``out``, the results so far
    are written there after each fault."""
    workload = Workload(workdir).make(images)
    stages = workdir / "stages"
    shutil.rmtree(stages, ignore_errors=True)
    stages.mkdir()
    # The library before each step, as a clean run has it, and the clean snapshot after it.
    current = stages / "current"
    steps = workload.steps(current)
    before: dict[str, Path] = {}
    after: dict[str, dict[str, object]] = {}
    durations: dict[str, float] = {}
    points: dict[str, Counter[str]] = {}
    for n, (name, argv) in enumerate(steps):
        before[name] = stages / f"{n}-{name}"
        if current.exists():
            shutil.copytree(current, before[name])
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        took, passed = clean_run([(name, argv)], workdir, env={"XDG_CACHE_HOME": str(workdir / "cache")})
        durations.update(took)
        points.update(passed)
        after[name] = snapshot(current)

    outcomes: Counter[str] = Counter()
    rows: list[dict[str, object]] = []
    defects: list[str] = []
    start = time.perf_counter()
    def results() -> dict[str, object]:
        return {
            "images": images,
            "steps": [name for name, _ in steps if only is None or name in only],
            "seconds": round(time.perf_counter() - start, 1),
            "clean_step_seconds": {k: round(v, 2) for k, v in durations.items()},
            "failpoints_per_step": {k: dict(v) for k, v in points.items()},
            "faults": len(rows),
            "outcomes": dict(outcomes),
            "defects": defects,
            "runs": rows,
        }

    for n, (name, _) in enumerate(steps):
        if only is not None and name not in only:
            continue
        for point, code, nth in plan(points[name]):
            library = workdir / "library"
            shutil.rmtree(library, ignore_errors=True)
            if before[name].exists():
                shutil.copytree(before[name], library)
            argv = workload.steps(library)[n][1]
            rows_before = image_rows(library)
            prepare_step(name, library)
            log = workdir / "passes.log"
            log.unlink(missing_ok=True)
            cache = workdir / "cache"  # a user cache as the clean run had it: empty
            shutil.rmtree(cache, ignore_errors=True)
            done = run(argv, env={"BLIPSEARCH_FAILPOINTS": f"{point}={code}@{nth}",
                                  "BLIPSEARCH_FAILPOINTS_LOG": str(log), "XDG_CACHE_HOME": str(cache)})
            last = (done.stderr.strip().splitlines() or [""])[-1]
            reached = log.exists() and log.read_text().split().count(point) >= nth
            if not reached:
                outcome = "not reached"
            elif "Traceback" in done.stderr:
                outcome = "traceback"
            elif done.returncode == 0:
                outcome = "absorbed"
            elif last.startswith("Error: "):
                outcome = "clear error"
            else:
                outcome = f"exit {done.returncode} without a clear error"
            found = problems(library)
            if name.endswith("index") and image_rows(library) < rows_before:
                found.append(f"rows went from {rows_before} to {image_rows(library)}")
            kept = image_rows(library)
            again = run(argv)
            if again.returncode != 0:
                found.append(f"the re-run failed ({again.returncode}): {again.stderr.strip()[-300:]}")
            else:
                found += differences(snapshot(library), after[name])
            if name.endswith("index") and leftovers(library):
                found.append(f"{len(leftovers(library))} temporary files left after the re-run")
            outcomes[outcome] += 1
            if outcome not in ("absorbed", "clear error") or found:
                defects.append(f"{name}: {point}={code}@{nth}: {outcome}; {found}")
            rows.append({"step": name, "point": point, "errno": code, "pass": nth, "outcome": outcome,
                         "exit": done.returncode, "message": last[:200], "rows_before": rows_before,
                         "rows_kept": kept, "problems": found})
            if out is not None:
                out.write_text(json.dumps(results(), indent=1) + "\n")
            if report:
                print(f"{name:15} {point:20} {code:6}@{nth:<3} {outcome:12} {last[:90]}", file=sys.stderr,
                      flush=True)
    return results()


def table(result: dict[str, object]) -> str:
    runs = result["runs"]
    assert isinstance(runs, list)
    per: dict[tuple[str, str], Counter[str]] = {}
    for row in runs:
        per.setdefault((row["step"], row["point"]), Counter())[row["outcome"]] += 1
    lines = [f"{result['faults']} faults over {result['images']} images, {result['seconds']} s: "
             f"{result['outcomes']}; {len(result['defects'])} defects",  # type: ignore[arg-type]
             "", "| step | failpoint | faults | absorbed | clear error |", "|---|---|---|---|---|"]
    for (step, point), counts in per.items():
        lines.append(f"| {step} | {point} | {sum(counts.values())} | {counts['absorbed']} | {counts['clear error']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--steps", default=None, help="only these steps, comma-separated (index, texts-add, "
                        "search-rebuild, reindex)")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args()
    workdir = workdir_for(args.workdir, "faults")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = campaign(args.images, workdir, only=tuple(args.steps.split(",")) if args.steps else None, out=args.out)
    finish(result, args.out, table(result), result["defects"])  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
