"""The HTTP API against its OpenAPI document, at length: Schemathesis with every check and phase.

    python benchmarks/reliability/api_fuzz.py [--max-time 1200] [--max-examples 100] [--images 36] [--seed 0]

The suite's run (``tests/test_api_contract.py``, about a minute) for ``--max-time`` seconds:
``blipsearch serve`` in a subprocess on loopback over a shapes-world library of ``--images`` scenes
(with a camera's JPEG, a broken file, captions, tags and texts: ``tests/api_contract.py``), and
Schemathesis' command line with ``--checks all`` and the phases examples, coverage, fuzzing and
stateful; fuzzing and the stateful phase repeat until the time is spent, ``--max-examples`` cases per
operation and round. A finding is any failure or error Schemathesis reports; the two rules the run
applies (refusals of the search language's texts, which JSON Schema can't describe; requests
Schemathesis took for invalid whose query string as sent is valid) are in
``tests/api_contract_hooks.py``, and what they dropped is counted here by kind.

Figures go to stdout and to ``benchmarks/results/api_fuzz.json``; Schemathesis' own report and
output to ``--work`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import api_contract  # type: ignore[import-not-found]

RESULTS = ROOT / "benchmarks" / "results"


def _machine() -> str:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model or platform.processor() or platform.machine()}), {platform.system()}"


KINDS = {  # what a dropped refusal says -> its class
    "is not a search key": "q: an unknown key",
    "is not closed": "q: an unclosed quote",
    "has no value": "q: a key without a value",
    "takes no sign or weight": "q: a sign or weight before a key",
    "is given already": "q: a key given twice",
    "At character ": "q: a value its key can't read",
    "q holds no words": "search q: keys or terms but no words",
    "Browsing takes search keys only": "browse q: a term (like:, +word)",
    "like: and unlike: take": "q: like:/unlike: naming a file",
    "A query text is empty": "and/not: a weight that leaves no text",
    "weight must be a nonzero number": "and/not: a weight of 0 (or too large)",
    "cancel each other out": "the texts cancel out",
}


def _kind(dropped: dict[str, str]) -> str:
    """A dropped failure's class: an accepted request valid as sent, or a refusal's (:data:`KINDS`)."""
    if dropped.get("rule") == "valid as sent":
        return "ST201 dropped: the query string as sent is valid"
    sentence = dropped["error"]
    return "ST202 dropped, " + next((kind for words, kind in KINDS.items() if words in sentence), sentence[:60])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-time", type=int, default=1200, help="Schemathesis' budget, seconds")
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation and round")
    parser.add_argument("--images", type=int, default=36, help="shapes-world scenes in the library")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the library and the reports")
    parser.add_argument("--out", type=Path, default=RESULTS / "api_fuzz.json")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="blipsearch-api-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("HF_HOME", "XDG_CACHE_HOME"):
        os.environ[name] = str(work / "home" / name.lower())
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    library = api_contract.make_library(work / "data", count=args.images)
    built = time.monotonic() - started
    with api_contract.serving(library, work / "serve.log") as server:
        run = api_contract.schemathesis(server.url, work / "schemathesis", max_time=args.max_time,
                                        max_examples=args.max_examples, seed=args.seed)
        alive = server.process.poll() is None
        stopped = server.stop()
    report = run.report
    dropped = Counter(_kind(d) for d in run.dropped)
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/reliability/api_fuzz.py", *sys.argv[1:]]),
        "machine": _machine(),
        "versions": {name: version(name) for name in ("schemathesis", "hypothesis", "fastapi", "pydantic",
                                                      "uvicorn")} | {"python": platform.python_version()},
        "library": {"images": server.status["images"], "failures": server.status["failures"],
                    "texts": server.status["texts"], "build_s": round(built, 1)},
        "seed": report["seed"],
        "max_time_s": args.max_time,
        "max_examples": args.max_examples,
        "wall_s": round(run.seconds, 1),
        "running_time_s": round(report["running_time"], 1),
        "operations": report["operations"],
        "phases": {name: phase["status"] for name, phase in report["phases"].items()},
        "cases": run.cases,
        "findings": run.findings,
        "failures": report["failures"],
        "errors": report["errors"],
        "filtered": report["filtered"],
        "dropped_by_kind": dict(dropped.most_common()),
        "warnings": {name: items for name, items in report["warnings"].items() if items},
        "stateful": re.findall(r"(Scenarios:.*|API Links:.*)", run.output),
        "valid_rates": report["valid_rates"],  # per operation and phase: accepted, rejected, unreachable
        "server_alive_at_end": alive,
        "server_exit": stopped,
        "exit_code": run.returncode,
    }
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("failures", "errors", "valid_rates")}, indent=2,
                     default=str))
    if run.findings:
        print(run.summary())
    print(f"Schemathesis' report and output: {work / 'schemathesis'}")
    return 0 if run.findings == 0 and run.returncode == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
