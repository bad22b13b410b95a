"""Schemathesis hooks of the HTTP API's contract runs (tests/api_contract.py loads this file).

One rule, for one check. ``positive_data_acceptance`` (ST202) says a request the document calls valid
must not be refused with a 400. The document states every parameter's type, range, enum, pattern and
length, and the server checks exactly those; what JSON Schema can't state is which texts a small
language reads, or a relation between parameters. Three such refusals are the API's contract, said in
the document's descriptions, and only these are dropped:

* ``q`` is a text in the search language (README, "One search box"): an unknown key, a value a
  key can't read, an unclosed quote (``"At character N, ...``), a search with keys but no words, a
  browse (``/api/images``) with words, ``like:`` naming a file rather than an id.
* an ``and``/``not`` text may start with a weight (``2*text``): a weight that leaves no text or is 0.
* the search text and its ``and``/``not`` texts may cancel out (``q=red&not=red``): nothing is left
  to search for.

Each is recognised by the server's own sentence, from the beginning; any other 400 for a valid
request is still a failure. How many were dropped is in the run's report (``filtered``); with
``BLIPSEARCH_CONTRACT_DROPPED=FILE``, each one is also appended to FILE as a JSON line.
"""

from __future__ import annotations

import json
import os
import threading

import schemathesis

LANGUAGE = (
    "At character ",  # blipsearch.search.language: a token it can't read, with its position
    "q holds no words to search for",
    "Browsing takes search keys only",
    "like: and unlike: take an indexed image's id here",
    "A query text is empty.",  # and/not: a weight that leaves no text ("2*")
    "A query term's weight must be a nonzero number",  # and/not: "0*red"
    "The query's terms cancel each other out",
)


_WRITING = threading.Lock()


def said(content: bytes) -> str:
    try:
        answer = json.loads(content)
    except ValueError:
        return ""
    return answer.get("error", "") if isinstance(answer, dict) and isinstance(answer.get("error"), str) else ""


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:  # type: ignore[no-untyped-def]
    """Keep every failure but a 400 for a valid request whose sentence is one of :data:`LANGUAGE`."""
    if getattr(failure, "code", None) != "ST202" or response.status_code != 400:
        return True
    sentence = said(response.content)
    if not sentence.startswith(LANGUAGE):
        return True
    log = os.environ.get("BLIPSEARCH_CONTRACT_DROPPED")
    if log:
        with _WRITING, open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps({"operation": case.operation.label, "error": sentence}) + "\n")
    return False
