"""Schemathesis hooks of the HTTP API's contract runs (tests/api_contract.py loads this file).

Two rules, each for one check; any other failure fails the run.

1. ``positive_data_acceptance`` (ST202) says a request the document calls valid must not be refused
   with a 400. The document states every parameter's type, range, enum, pattern and length, and the
   server checks exactly those; what JSON Schema can't state is which texts a small language reads,
   or a relation between parameters. Three such refusals are the API's contract, said in the
   document's descriptions, and only these are dropped:

   * ``q`` is a text in the search language (README, "One search box"): an unknown key, a value a
     key can't read, an unclosed quote (``At character N, ...``), a search with keys but no words,
     ``like:`` naming a file rather than an id;
   * an ``and``/``not`` text may start with a weight (``2*text``): a weight that leaves no text or is 0;
   * the search text and its ``and``/``not`` texts may cancel out (``q=red&not=red``): nothing is
     left to search for.

   Each is recognised by the server's own sentence, from its beginning.

2. ``negative_data_rejection`` (ST201) says a request the document calls invalid must be refused.
   Schemathesis judges the values it generated, before they are written into the query string; its
   own checks for values that the query string makes valid again miss some combinations (an array
   parameter sent as one value, ``format=``; type changes of several parameters at once). Such a
   failure is dropped only when the query string as sent reads as valid by the document, checked
   here (:func:`sent_query_is_valid`): every parameter documented, none missing that is required, a
   parameter that takes one value given once, each value of the declared type and valid against the
   parameter's schema (JSON Schema, as the document's dialect reads it), and nothing else negative.

How many were dropped is in the run's report (``filtered``); with ``BLIPSEARCH_CONTRACT_DROPPED=FILE``,
each one is also appended to FILE as a JSON line.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema_rs
import schemathesis

LANGUAGE = (
    "At character ",  # blipsearch.search.language: a token it can't read, with its position
    "q holds no words to search for",
    "Browsing takes search keys only",  # a browse's q with a term (like:), which its pattern lets through
    "like: and unlike: take an indexed image's id here",
    "A query text is empty.",  # and/not: a weight that leaves no text ("2*")
    "A query term's weight must be a nonzero number",  # and/not: "0*red"
    "The query's terms cancel each other out",
)
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_WRITING = threading.Lock()


def said(content: bytes) -> str:
    try:
        answer = json.loads(content)
    except ValueError:
        return ""
    return answer.get("error", "") if isinstance(answer, dict) and isinstance(answer.get("error"), str) else ""


def _resolved(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        *_, name = schema["$ref"].split("/")
        schema = document["components"]["schemas"][name]
    return schema


def _read(text: str, schema: dict[str, Any]) -> tuple[bool, Any]:
    """(whether ``text`` can stand for a value of ``schema``'s type in a query string, that value)."""
    kind = schema.get("type", "string" if "enum" in schema or "pattern" in schema else None)
    if kind == "integer":
        return bool(_INTEGER.fullmatch(text)), int(text) if _INTEGER.fullmatch(text) else None
    if kind == "number":
        return bool(_NUMBER.fullmatch(text)), float(text) if _NUMBER.fullmatch(text) else None
    if kind == "boolean":
        return text in ("true", "false"), text == "true"
    return kind == "string", text


def _takes(texts: list[str], schema: dict[str, Any], document: dict[str, Any]) -> bool:
    """Whether the values ``texts`` of one query parameter are valid for its ``schema``."""
    for branch in [_resolved(s, document) for s in schema.get("anyOf", [schema])]:
        if branch.get("type") == "array":
            items = _resolved(branch.get("items", {}), document)
            read = [_read(text, items) for text in texts]
            value: Any = [v for _, v in read]
            ok = all(fits for fits, _ in read)
        elif len(texts) == 1:
            ok, value = _read(texts[0], branch)
        else:
            ok = False
        if ok and jsonschema_rs.validator_for({**branch, "components": document.get("components", {})}).is_valid(value):
            return True
    return False


def sent_query_is_valid(case: Any, response: Any) -> bool:
    """Whether ``response``'s request for ``case`` is valid by the document, as sent: only its query
    negative, and that query string valid for the operation's query parameters (see the module)."""
    meta = case.meta
    if meta is None or any(meta.is_negative_at(place) for place in meta.components if place.value != "query"):
        return False
    document = case.operation.schema.raw_schema
    operation = document["paths"][case.operation.path][case.operation.method.lower()]
    parameters = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
    sent = parse_qs(urlsplit(response.request.url).query, keep_blank_values=True)
    if set(sent) - set(parameters) or any(p.get("required") and name not in sent for name, p in parameters.items()):
        return False
    return all(_takes(texts, parameters[name].get("schema", {}), document) for name, texts in sent.items())


def _dropped(case: Any, rule: str, why: str) -> bool:
    log = os.environ.get("BLIPSEARCH_CONTRACT_DROPPED")
    if log:
        with _WRITING, open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps({"operation": case.operation.label, "rule": rule, "error": why}) + "\n")
    return False


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:  # type: ignore[no-untyped-def]
    """Keep every failure but those of the two rules above."""
    code = getattr(failure, "code", None)
    if code == "ST202" and response.status_code == 400 and said(response.content).startswith(LANGUAGE):
        return _dropped(case, "language", said(response.content))
    if code == "ST201" and 200 <= response.status_code < 300 and sent_query_is_valid(case, response):
        return _dropped(case, "valid as sent", response.request.url.partition("?")[2][:200])
    return True
