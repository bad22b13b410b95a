"""Every error the HTTP API answers is ``{"error": "one sentence"}`` with a status: 400 a request it
can't take (a parameter out of its range or of the wrong type, bad JSON, a date it can't read), 404
no such image or route, 405 a route that takes another method, 409 the library can't answer yet
(empty, no texts, the file changed), 413 too large, 415 not an image body, 422 an image it can't
read, 500 the database failed, 503 the model can't be loaded."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    BlipsearchError,
    ImageChangedError,
    ImageError,
    InputPathError,
    ModelLoadError,
    ModelMismatchError,
    ModelUnavailableError,
    SettingsError,
    UnknownImageError,
)

STATUS: list[tuple[type[BaseException], int]] = [
    (UnknownImageError, 404),
    (ImageChangedError, 409),
    (ImageError, 422),
    (SettingsError, 400),
    (InputPathError, 400),
    (ModelUnavailableError, 503),
    (ModelLoadError, 503),
    (ModelMismatchError, 409),
    (BlipsearchError, 409),  # the library's state: empty, no texts, no captions yet
]
# White space as Python's strip and split take it (str.isspace), spelled out: `\s` differs between the
# document's regex dialect (ECMA 262: not \x85, but \ufeff), Python's (\x1c-\x1f too) and the server's.
SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = rf"[^{SPACE}]"  # a text parameter's pattern: more than white space
NO_NUL = r"^[^\x00]*$"  # a filter's text: no stored text holds NUL
# A browse's q: search keys only, KEY:VALUE tokens with values quoted as the search language quotes
# them; which keys and values it reads is the language's to say (a 400 naming the position).
_SPACE, _QUOTED = f"[{SPACE}]", r'"([^"\\]|\\[\s\S])*"'
_PART, _FIRST = rf'([^{SPACE}"]|{_QUOTED})', rf'([^{SPACE}"/]|{_QUOTED})'  # KEY:// is a word (a URL)
_KEY_TOKEN = rf"[A-Za-z]+:({_FIRST}{_PART}*|/({_FIRST}{_PART}*)?)?"
KEYS_ONLY = rf"^{_SPACE}*({_KEY_TOKEN}({_SPACE}+{_KEY_TOKEN})*)?{_SPACE}*$"
KEYS_ONLY_SAID = "Browsing takes search keys only (after:, in:, tag:, ...); search for words with /api/search."
_SHOWN = 40  # characters of a refused value an error shows
_DAY = "a date: use 2024, 2024-07, 2024-07-14 or 2024-07-14T18:30"
_PATTERNS = {"after": _DAY, "before": _DAY,
             "min_size": "a size: use WIDTHxHEIGHT in pixels, both at least 1, e.g. 1920x1080",
             "near": "a position: use LATITUDE,LONGITUDE in decimal degrees, e.g. 48.8584,2.2945"}
_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")


class AsciiJSON(JSONResponse):
    """Every JSON answer, as the CLI's ``--json`` writes it: ASCII, so a path that is not UTF-8 keeps its
    bytes as ``\\udcXX`` escapes (``os.fsencode`` of the string a JSON reader gives is the file's name),
    where UTF-8 JSON has no way to say them."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error(status: int, message: str) -> JSONResponse:
    return AsciiJSON({"error": message}, status_code=status)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) and not _NUMBER.fullmatch(value) else str(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _name(where: list[Any]) -> str:
    """A parameter's name as a sentence gives it: ``and (value 2)`` for the second of a repeated one."""
    parts = [f"(value {p + 1})" if isinstance(p, int) else str(p) for p in where]
    return " ".join(parts) if parts else "the request"


def reason(err: dict[str, Any]) -> str:
    """One pydantic validation error as a sentence: what is wrong with which parameter."""
    where = [str(p) for p in err.get("loc", ())]
    name = _name(list(err.get("loc", ()))[1:])
    kind, ctx, value = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    if kind == "json_invalid":
        return f"The request body is not valid JSON ({ctx.get('error', 'it does not parse')})."
    if where[:1] == ["body"] and len(where) == 1:
        return "The request needs a JSON body."
    if kind == "missing":
        return f"{name} is required."
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NOT_BLANK:
        return f"{name} must not be blank."
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NO_NUL:
        return f"{name} must not hold a NUL character."
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == KEYS_ONLY:
        return KEYS_ONLY_SAID
    if kind == "string_pattern_mismatch" and name in _PATTERNS:
        return f"{name}: {_shown(value)} is not {_PATTERNS[name]}."
    sentences = {
        "greater_than_equal": f"{name} must be at least {ctx.get('ge')}",
        "greater_than": f"{name} must be more than {ctx.get('gt')}",
        "less_than_equal": f"{name} must be at most {ctx.get('le')}",
        "less_than": f"{name} must be less than {ctx.get('lt')}",
        "int_parsing": f"{name} must be a whole number",
        "int_from_float": f"{name} must be a whole number",
        "float_parsing": f"{name} must be a number",
        "bool_parsing": f"{name} must be true or false",
        "literal_error": f"{name} must be one of {ctx.get('expected')}",
        "enum": f"{name} must be one of {ctx.get('expected')}",
        "string_too_short": f"{name} must not be empty" if ctx.get("min_length") == 1
        else f"{name} must be at least {ctx.get('min_length')} characters long",
        "string_too_long": f"{name} must be at most {ctx.get('max_length')} characters long",
        "string_type": f"{name} must be a string",
        "string_pattern_mismatch": f"{name} must match {ctx.get('pattern')}",
    }
    said = sentences.get(kind)
    if said is None:
        return f"{name}: {err.get('msg', 'invalid')}."
    if kind in ("string_too_long",) or value in (None, ""):
        return said + "."
    return f"{said}, not {_shown(value)}."


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return error(400, " ".join(dict.fromkeys(reason(e) for e in errors)) or "The request is not valid.")


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"There is no {request.url.path} here; the HTTP API is described at /docs."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow")
        message = f"{request.url.path} does not take {request.method}" + (f"; it takes {allowed}." if allowed else ".")
    elif exc.status_code == 400 and "parsing the body" in str(exc.detail):
        message = "The request body can't be read: send JSON in UTF-8."
    else:
        message = str(exc.detail) if str(exc.detail).endswith(".") else f"{exc.detail}."
    return AsciiJSON({"error": message}, status_code=exc.status_code, headers=exc.headers)


def _blipsearch_error(request: Request, exc: Exception) -> JSONResponse:
    return error(next(code for kind, code in STATUS if isinstance(exc, kind)), str(exc))


def _database_error(request: Request, exc: Exception) -> JSONResponse:
    return error(500, f"Database error: {getattr(exc, 'orig', None) or exc}")


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` in the shape above."""
    from sqlalchemy.exc import SQLAlchemyError

    app.add_exception_handler(BlipsearchError, _blipsearch_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)


_MEANING = {
    400: "A request it can't take: a parameter out of its range or of the wrong type, bad JSON, a date or "
         "search key it can't read.",
    404: "No such image (or route).",
    409: "The library can't answer yet (no photos, no texts, another model), or the file changed since it "
         "was indexed.",
    413: "The upload is too large (bytes or pixels).",
    415: "The body is not an image.",
    422: "The image can't be read.",
    503: "The model can't be loaded.",
}
_IMAGE = (400, 404, 409)
_MODEL = (409, 503)
ROUTE_ERRORS: dict[str, tuple[int, ...]] = {
    "/api/search": (400, 404, *_MODEL),
    "/api/query": (400,),
    "/api/search/image": (400, 413, 415, 422, *_MODEL),
    "/api/images": (400, 409),
    "/api/images/{image_id}": (400, 404),
    "/api/images/{image_id}/similar": (*_IMAGE, 503),
    "/api/images/{image_id}/thumbnail": (*_IMAGE, 422),
    "/api/images/{image_id}/preview": (*_IMAGE, 422),
    "/api/images/{image_id}/original": _IMAGE,
    "/api/images/{image_id}/caption": (*_IMAGE, 422, 503),
    "/api/images/{image_id}/ask": (*_IMAGE, 422, 503),
    "/api/images/{image_id}/lookup": (*_IMAGE, 503),
    "/api/images/{image_id}/explain": (*_IMAGE, 422, 503),
}
"""The error statuses each route can answer with (every one in the shape of ``Error``)."""


def one_value_each(request: Request) -> None:
    """A query parameter the document gives one value (no array), sent more than once, is a 400: in the
    document's form style only an array's values are repeated keys. (Starlette would keep the last.)"""
    route = request.scope.get("route")
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = [name for name, n in counts.items() if n > 1]
    if not repeated or route is None:
        return
    app = request.app
    single = getattr(app.state, "single_valued", None)
    if single is None:
        single = app.state.single_valued = {
            (path, method.upper()): {p["name"] for p in operation.get("parameters", [])
                                     if p["in"] == "query" and not _is_array(p.get("schema", {}))}
            for path, operations in app.openapi().get("paths", {}).items() for method, operation in operations.items()}
    for name in repeated:
        if name in single.get((getattr(route, "path", ""), request.method), ()):
            raise InputPathError(f"{name} takes one value, not {counts[name]}.")


def _is_array(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(s.get("type") == "array" for s in schema.get("anyOf", []))


def document(app: FastAPI) -> None:
    """``app``'s OpenAPI document with each route's error statuses (:data:`ROUTE_ERRORS`), all of them
    ``{"error": string}``, in place of FastAPI's 422 validation-error shape, which this API never sends."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes,
                               description=app.description)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schemas["Error"] = {"type": "object", "required": ["error"], "additionalProperties": False,
                                "properties": {"error": {"type": "string", "description": "One sentence."}}}
            body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            for path, operations in spec.get("paths", {}).items():
                for operation in operations.values():
                    answers = operation.setdefault("responses", {})
                    answers.pop("422", None)
                    for code in ROUTE_ERRORS.get(path, ()):
                        answers[str(code)] = {"description": _MEANING[code], "content": body}
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
