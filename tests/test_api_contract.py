"""The HTTP API keeps the promises of its OpenAPI document, checked against a real server.

``blipsearch serve`` runs in a subprocess on loopback over a small shapes-world library
(tests/api_contract.py). Schemathesis, with every check (response schemas and headers, status codes,
content types, valid requests accepted and invalid ones refused, methods, ...) and every phase
(coverage, fuzzing, the stateful phase along the links it finds), runs for about a minute and must
report nothing; the two rules it applies are in tests/api_contract_hooks.py. A client generated from
the served document with openapi-python-client calls the API and reads typed fields. The long run is
``benchmarks/reliability/api_fuzz.py`` (RELIABILITY.md, "The HTTP API's contract").
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from api_contract import Server, make_library, schemathesis, serving

SECONDS = 60  # Schemathesis' budget for the whole run
QUERY = "a red circle left of a blue square"
CLIENT_CONFIG = """\
post_hooks: []
package_name_override: blipsearch_client
content_type_overrides:
  image/*: application/octet-stream
  image/webp: application/octet-stream
  image/png: application/octet-stream
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("contract")
    with pytest.MonkeyPatch.context() as env:  # as isolated_env does, for the module's server
        for name, value in {"BLIPSEARCH_LIBRARY": root / "home" / "library", "HF_HOME": root / "home" / "hf",
                            "XDG_CACHE_HOME": root / "home" / "cache", "HF_HUB_OFFLINE": "1"}.items():
            env.setenv(name, str(value))
        library = make_library(root)
        with serving(library, root / "serve.log") as running:
            yield running


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return json.loads(answer.read())


def test_schemathesis_with_every_check_finds_nothing(server: Server, tmp_path: Path) -> None:
    run = schemathesis(server.url, tmp_path / "schemathesis", max_time=SECONDS, max_examples=15, seed=1)
    report = run.report
    print(f"{run.cases} cases in {run.seconds:.0f} s, {run.findings} findings, {report['filtered']} failures "
          "dropped by the hooks' rules")
    assert run.findings == 0 and report["failures"] == [] and run.returncode == 0, run.summary()
    operations = report["operations"]
    documented = sum(len(methods) for methods in _get(f"{server.url}/openapi.json")["paths"].values())
    assert operations["tested"] == operations["total"] == documented
    assert {name: report["phases"][name]["status"] for name in ("coverage", "fuzzing", "stateful")} == dict.fromkeys(
        ("coverage", "fuzzing", "stateful"), "success"), run.summary()
    assert run.cases >= 300, run.summary()
    assert report["warnings"]["unsupported_regex"] == [], report["warnings"]
    assert server.process.poll() is None, server.log.read_text()  # still serving


@pytest.fixture(scope="module")
def client_package(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The package openapi-python-client generates from the served document, imported."""
    root = tmp_path_factory.mktemp("client")
    (root / "openapi.json").write_text(json.dumps(_get(f"{server.url}/openapi.json")))
    (root / "config.yaml").write_text(CLIENT_CONFIG)
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(root / "openapi.json"),
               "--config", str(root / "config.yaml"), "--output-path", str(root / "blipsearch_client"),
               "--meta", "none", "--fail-on-warning"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr  # every route and schema generated, no warning
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("blipsearch_client")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "blipsearch_client" or m.startswith("blipsearch_client.")]:
            del sys.modules[name]


def test_a_generated_client_reads_typed_hits(server: Server, client_package: object) -> None:
    from blipsearch_client import Client  # type: ignore[import-not-found]
    from blipsearch_client.api.images import image  # type: ignore[import-not-found]
    from blipsearch_client.api.library import status  # type: ignore[import-not-found]
    from blipsearch_client.api.search import search  # type: ignore[import-not-found]
    from blipsearch_client.models import Error, Hit, MatchSet, PlaceName, SearchResults  # type: ignore[import-not-found]

    client = Client(base_url=server.url, timeout=httpx.Timeout(60))
    found = search.sync(client=client, q=QUERY, k=5, no_rerank=True)
    plain = _get(f"{server.url}/api/search?" + urlencode({"q": QUERY, "k": 5, "no_rerank": "true"}))
    assert isinstance(found, SearchResults) and len(found.hits) == 5
    hit = found.hits[0]
    assert isinstance(hit, Hit) and isinstance(hit.id, int) and isinstance(hit.score, float) and hit.itm is None
    fields = ("rank", "id", "path", "score", "itc", "itm", "keyword", "thumbnail")
    typed = [{f: getattr(h, f) for f in fields} for h in found.hits]
    assert typed == [{f: h[f] for f in fields} for h in plain["hits"]]
    assert found.to_dict() == plain  # every field read, none left over
    assert found.understood.text == QUERY and found.matched == plain["matched"] and found.reranked is False

    matches = search.sync(client=client, q=QUERY, all_=True, min_match=0.5)
    assert isinstance(matches, MatchSet) and matches.matches == len(matches.hits)
    assert all(isinstance(h.match, float) and h.match >= 0.5 for h in matches.hits)

    details = image.sync(client=client, image_id=hit.id)
    assert details.id == hit.id and details.path == hit.path and isinstance(details.size, int)
    assert status.sync(client=client).images == server.status["images"]

    # The photo metadata the sidecars and the camera's EXIF gave, as typed fields.
    paris = search.sync(client=client, q=QUERY, keyword=["paris"], no_rerank=True)
    assert sorted(os.path.basename(h.path) for h in paris.hits) == ["scene-000.png", "scene-001.png", "scene-002.png"]
    assert paris.filters.keywords == ["paris"]
    (camera,) = search.sync(client=client, q=QUERY, rating=5, place="paris", no_rerank=True).hits
    shot = image.sync(client=client, image_id=camera.id)
    assert (shot.title, shot.keywords, shot.rating, shot.label, shot.taken_offset) == (
        "Tour Eiffel", ["Família", "Beach"], 5, "Red", 120)
    assert isinstance(shot.place, PlaceName) and shot.place.city == "Paris" and abs(shot.latitude - 48.8584) < 1e-4
    assert shot.to_dict() == _get(f"{server.url}/api/images/{camera.id}")

    refused = search.sync(client=client, q=QUERY, k=501)
    assert isinstance(refused, Error) and refused.error == "k must be at most 500, not 501."
