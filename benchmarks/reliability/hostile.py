"""Hostile texts and arguments through every entry point: how many, and what came back.

    python benchmarks/reliability/hostile.py [--examples 300] [--seed 0] [--db-url URL]

The fixed hostile texts of ``tests/test_hostile_inputs.py`` (FTS5 and tsquery syntax, SQL and
LIKE wildcards, 100 KB texts, NUL and control characters, lone surrogates, RTL text, combining
marks, emoji, empty strings) and ``--examples`` more drawn by Hypothesis (arbitrary Unicode with
surrogates and control characters, and strings of query-syntax tokens) go through each entry
point that takes text: the Python API, the command line (click's runner, ``--json``) and the
HTTP API (FastAPI's test client), on a library of the 12 demo pictures indexed with
``builtin:shapes`` (SQLite; with ``--db-url``, also a PostgreSQL one). The numeric options of
the command line get a fixed list of awkward values (negative, zero, huge, NaN, inf, words).

Each call ends in a result, a clear error (one sentence: a ``BlipsearchError``; exit 1 or 2 with
``Error: ...``; HTTP 4xx with a JSON message) or a failure (any other exception, a traceback, an
SQL error in the message, HTTP 500). Failures must be 0. Figures go to stdout, to
``benchmarks/results/hostile.md`` (a Markdown fragment) and ``benchmarks/results/hostile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["BLIPSEARCH_IN_PROCESS"] = "1"  # never hand a command to a server someone runs

import test_hostile_inputs as hostile  # type: ignore[import-not-found]
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

RESULTS = ROOT / "benchmarks" / "results"
SYNTAX = ['"', "'", "*", "^", "-", "+", ":", "(", ")", "{", "}", "NEAR", "NEAR(", ",", "OR", "AND", "NOT",
          "caption", "name", "folders", "%", "_", "\\", ";", "--", "DROP", "&", "|", "!", "<->", "<3>", ":*",
          "red", "circle", "square", "\x00", "\x1b", "\u200f", "\u0301", "\U0001f600", "\u200d", " ", "\n"]
GENERATED = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Mn", "Zs", "Zl", "Zp", "So"]), max_size=60),
    st.lists(st.sampled_from(SYNTAX), max_size=25).map("".join),
    st.integers(1_000, 20_000).map(lambda n: " ".join(f"w{i}" for i in range(n))),  # long, distinct words
    st.tuples(st.sampled_from(SYNTAX), st.integers(1_000, 100_000)).map(lambda p: p[0] * p[1]),  # long, one token
)
NUMBER_VALUES = ["-1", "0", "1", "2", "33", "65", "4097", "65536", "1000000001", str(2**63), "9" * 40, "-0", "0.5",
                 "1e309", "-1e309", "nan", "inf", "-inf", "1e-320", "0x10", "1_000", "١٢", "", " ", "ten"]


def generated_texts(count: int, at: int) -> list[str]:
    """``count`` texts drawn by Hypothesis, reproducible for a seed."""
    drawn: list[str] = []
    if count <= 0:
        return drawn

    @seed(at)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(GENERATED)
    def draw(text: str) -> None:
        drawn.append(text)

    draw()
    return drawn[:count]


class Tally:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], Counter[str]] = {}
        self.failures: list[dict[str, str]] = []

    def run(self, interface: str, entry: str, text: str, call: Any) -> None:
        counter = self.counts.setdefault((interface, entry), Counter())
        try:
            counter[call()] += 1
        except Exception as exc:  # noqa: BLE001 - every way a call can fail is counted as one
            counter["failure"] += 1
            if len(self.failures) < 50:
                self.failures.append({"interface": interface, "entry": entry, "input": repr(text[:200]),
                                      "error": f"{type(exc).__name__}: {str(exc)[:300]}"})


def run_texts(world: hostile.World, texts: list[str], tally: Tally, label: str, cli: bool = True) -> None:
    for entry in hostile.API:
        for text in texts:
            tally.run(f"Python API{label}", entry, text, lambda e=entry, t=text: hostile.run_api(world, e, t))
    if cli:
        for entry in hostile.CLI:
            for text in texts:
                tally.run(f"command line{label}", entry, text, lambda e=entry, t=text: hostile.run_cli(world, e, t))
    with hostile.client(world) as client:
        for entry in hostile.HTTP:
            for text in texts:
                tally.run(f"HTTP API{label}", entry, text,
                          lambda e=entry, t=text: hostile.run_http(client, world, e, t))


def run_numbers(world: hostile.World, tally: Tally) -> None:
    import blipsearch.index.run
    import blipsearch.web.server

    (world.tmp / "num-labels.txt").write_text("red circle\nblue square\n")
    (world.tmp / "num-choices.txt").write_text("circle\nsquare\nstar\n")
    real = blipsearch.web.server.serve, blipsearch.index.run.watch
    blipsearch.web.server.serve = lambda lib, settings, announce: None  # type: ignore[assignment]
    blipsearch.index.run.watch = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        for command, option in hostile.numeric_cases(world):
            entry = f"{command[0]} {option}"
            for value in NUMBER_VALUES:
                tally.run("command line numbers", entry, value, lambda c=command, o=option, v=value:
                          hostile.cli_outcome(hostile.invoke([*c, f"{o}={v}"], world), v))
    finally:
        blipsearch.web.server.serve, blipsearch.index.run.watch = real  # type: ignore[assignment]


def report(tally: Tally, inputs: dict[str, int], seconds: float, args: argparse.Namespace) -> str:
    by_interface: dict[str, Counter[str]] = {}
    entries: dict[str, set[str]] = {}
    for (interface, entry), counter in tally.counts.items():
        by_interface.setdefault(interface, Counter()).update(counter)
        entries.setdefault(interface, set()).add(entry)
    total = Counter[str]()
    for counter in by_interface.values():
        total.update(counter)
    texts = {k: v for k, v in entries.items() if k in ("Python API", "command line", "HTTP API")}
    lines = [
        "### Hostile queries and arguments",
        "",
        f"`python benchmarks/reliability/hostile.py --examples {args.examples} --seed {args.seed}"
        + (" --db-url postgresql+psycopg://..." if args.db_url else "") + "`: "
        f"{inputs['fixed']} fixed hostile texts and {inputs['generated']} drawn by Hypothesis "
        f"({inputs['texts']} texts) through {sum(len(v) for v in texts.values())} entry points that take text ("
        + ", ".join(f"{len(v)} of the {k}" for k, v in texts.items()) + "), on SQLite"
        + (" and on PostgreSQL 15" if args.db_url else "")
        + (f"; {len(NUMBER_VALUES)} awkward values for each of {len(entries['command line numbers'])} numeric "
           "options of the command line" if "command line numbers" in entries else "")
        + f". {sum(total.values()):,} calls in {seconds:.0f} s; a failure is any other exception, a traceback, "
        "an SQL error in a message or an HTTP 5xx.",
        "",
        "| interface | entry points | calls | results | clear errors | failures |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for interface, counter in by_interface.items():
        lines.append(f"| {interface} | {len(entries[interface])} | {sum(counter.values()):,} | {counter['result']:,} | "
                     f"{counter['error']:,} | {counter['failure']:,} |")
    lines.append(f"| **all** | | {sum(total.values()):,} | {total['result']:,} | {total['error']:,} | "
                 f"**{total['failure']:,}** |")
    shown = {k: v for k, v in entries.items() if "PostgreSQL" not in k}
    lines += ["", "Entry points: " + "; ".join(f"{interface}: {', '.join(f'`{n}`' for n in sorted(names))}"
                                              for interface, names in shown.items()) + ".", ""]
    if tally.failures:
        lines += ["Failures (first ones):", ""]
        lines += [f"- {f['interface']} / {f['entry']} / {f['input']}: {f['error']}" for f in tally.failures[:20]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="texts drawn by Hypothesis (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db-url", help="also a PostgreSQL library at this URL (its tables are wiped)")
    parser.add_argument("--no-numbers", action="store_true", help="leave out the numeric options")
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile.md")
    args = parser.parse_args()

    fixed = [t for _, t in hostile.HOSTILE_TEXTS]
    drawn = generated_texts(args.examples, args.seed)
    texts = fixed + drawn
    tally = Tally()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="blipsearch-hostile-") as tmp:
        world = hostile.make_world(Path(tmp) / "sqlite")
        try:
            run_texts(world, texts, tally, "")
            if not args.no_numbers:
                run_numbers(world, tally)
        finally:
            world.lib.close()
        if args.db_url:
            from sqlalchemy import create_engine

            from blipsearch.store.schema import Base

            engine = create_engine(args.db_url)
            Base.metadata.drop_all(engine)
            engine.dispose()
            pg = hostile.make_world(Path(tmp) / "postgresql", args.db_url)
            try:
                run_texts(pg, texts, tally, " (PostgreSQL)")
            finally:
                pg.lib.close()
    seconds = time.perf_counter() - start
    inputs = {"fixed": len(fixed), "generated": len(drawn), "texts": len(texts)}
    text = report(tally, inputs, seconds, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    details = {"inputs": inputs, "seconds": round(seconds, 1), "seed": args.seed,
               "postgresql": bool(args.db_url), "number_values": NUMBER_VALUES,
               "counts": [{"interface": i, "entry": e, **c} for (i, e), c in tally.counts.items()],
               "failures": tally.failures}
    args.out.with_suffix(".json").write_text(json.dumps(details, indent=1, ensure_ascii=True) + "\n")
    return 1 if any(c["failure"] for c in tally.counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
