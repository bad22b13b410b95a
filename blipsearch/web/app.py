"""The HTTP API and the web page: thin routes over :class:`blipsearch.Library`, as the CLI is.

Each route parses its request, makes the same ``Library`` call the matching
CLI command makes, and returns what the CLI's ``--json`` prints (plus the
addresses of an image's thumbnail and preview). Images are addressed by their
database id only: no path from a request is ever opened.

Routes are plain functions, run by the server's thread pool: requests run side
by side, and those that need a model queue on it call by call (a caption does
not hold up a text search, which uses another model).
"""

from __future__ import annotations

import io
import mimetypes
import os
import threading
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import (
    BlipsearchError,
    ImageError,
    InputPathError,
)
from ..filters import (
    DEFAULT_MIN_PROBABILITY,
    MAX_CAMERA,
    MAX_WITHIN_KM,
    NO_FILTERS,
    Filters,
)
from ..library import Hit, ImageData, Library
from ..options import DEFAULT_RERANK_DEPTH
from ..search.language import ParsedQuery, help_rows, parse_query
from ..search.query import Term, text_term
from ..system import shown_path
from . import schemas
from .errors import (
    KEYS_ONLY,
    KEYS_ONLY_SAID,
    NO_NUL,
    NOT_BLANK,
    AsciiJSON,
    one_value_each,
)
from .errors import document as document_errors
from .errors import error as _error
from .errors import install as install_errors
from .schemas import REAL, WHOLE
from .security import Guard, SecurityMiddleware

HERE = Path(__file__).parent
LOOKUP_SOURCES = ("texts", "captions")


@dataclass(frozen=True)
class ServeSettings:
    """How ``blipsearch serve`` runs; see the command's ``--help``."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_upload_bytes: int = 25 * 2**20
    max_upload_pixels: int = 50_000_000
    rerank_depth: int = DEFAULT_RERANK_DEPTH
    warm: bool = True  # load the model and vector index when the server starts


class _Warmth:
    """The model's loading at start-up, in the background: its error, if any, is shown on the page."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.done = threading.Event()

    def run(self, lib: Library) -> None:
        try:
            lib.warm()
        except BlipsearchError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown to the user; the server keeps serving files
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()


# A JSON route's answer is its response_model (blipsearch.web.schemas) with the fields the route gives:
# none added as null.
AS_GIVEN: dict[str, Any] = {"response_model_exclude_unset": True}

# Parameters shared by the routes (module level: routes' annotations are resolved here).
# Numbers read as the document's (schemas.WHOLE, REAL): "5", not " 5", "+5" or "5.0" for an integer.
ImageId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="The image's id (search results give it)."), WHOLE]
K = Annotated[int, Query(ge=1, le=500, description="Number of results."), WHOLE]
Offset = Annotated[int, Query(ge=0, le=100_000, description="Skip this many of the best (paging)."), WHOLE]
Folder = Annotated[list[str], Query(description="Only images below this folder (repeatable).")]
# What parse_date reads (empty: no bound), as a pattern for the document and the request's check: the
# years 1 to 9999, the days each month has (February 29 in leap years), and a zone only in the years 2
# to 9998, whose times stay in 1 to 9999 once in the server's local time.
_YEAR = "(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_ZONED_YEAR = "(000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
_LEAP_YEAR = "([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = "((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
_TIME = r"T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_ZONE = "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"


def _day(year: str) -> str:
    return f"({year}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"


DATE = f"^({_YEAR}(-(0[1-9]|1[0-2]))?|{_day(_YEAR)}({_TIME})?|{_day(_ZONED_YEAR)}{_TIME}{_ZONE})?$"
_RANGE = " After and before make an empty range when after is not earlier: then nothing passes."
After = Annotated[str | None, Query(pattern=DATE, description="Taken on or after: 2024, 2024-07, 2024-07-14, "
                                                              "2024-07-14T18:30." + _RANGE)]
Before = Annotated[str | None, Query(pattern=DATE, description="Taken before: 2025, 2024-08, 2024-07-15." + _RANGE)]
Tag = Annotated[str | None, Query(max_length=400, pattern=NO_NUL,
                                  description="Only images tagged with this label (index --tags).")]


MinProbability = Annotated[float, Query(ge=0, le=1, description="With tag: the least ITM match probability of "
                                                                 "a stored label for it to count."), REAL]


Camera = Annotated[str | None, Query(max_length=MAX_CAMERA, pattern=NO_NUL,
                                     description="Only images whose EXIF make and model contain this, any case.")]
MinSize = Annotated[str | None, Query(pattern=r"^([1-9][0-9]{0,5}x[1-9][0-9]{0,5})?$",
                                      description="Only images at least this wide and high: 1920x1080.")]
Format = Annotated[list[schemas.ImageFormat], Query(description="Only images of this format (repeatable; empty: "
                                                                 "any).")]


# Each keyword as Tag is checked: the list's own length is the repeat count, which nothing caps.
KeywordText = Annotated[str, Field(max_length=400, pattern=NO_NUL)]
Keyword = Annotated[list[KeywordText], Query(description="Only images with this keyword, or a level of a "
                                             "hierarchical one (Places|France|Paris), any case and accents "
                                             "(repeatable: all of them).")]
Rating = Annotated[int | None, Query(ge=0, le=5, description="Only images rated at least this many stars (unrated "
                                                              "counts as 0, rejected as less)."), WHOLE]
Label = Annotated[str | None, Query(max_length=400, pattern=NO_NUL,
                                    description="Only images with this colour label, any case.")]
Place = Annotated[str | None, Query(max_length=400, pattern=NO_NUL, description="Only images taken in this city, "
                                    "region or country (or country code), any case and accents.")]
# LAT,LON in decimal degrees, -90..90 and -180..180 (as Filters.make checks them).
_LATITUDE = r"[-+]?(90(\.0{0,15})?|[1-8]?[0-9](\.[0-9]{0,15})?)"
_LONGITUDE = r"[-+]?(180(\.0{0,15})?|(1[0-7][0-9]|[1-9]?[0-9])(\.[0-9]{0,15})?)"
_POSITION = f"^({_LATITUDE},{_LONGITUDE})?$"
Near = Annotated[str | None, Query(pattern=_POSITION, description="Only images taken near this position: LAT,LON "
                                   "in decimal degrees, latitude -90..90, longitude -180..180 (48.8584,2.2945).")]
Within = Annotated[float | None, Query(gt=0, le=MAX_WITHIN_KM, description="With near (LAT,LON): how near, in km "
                                                                          "(default 1); ignored without it."), REAL]


def _folders(request: Request) -> list[str]:
    """The ``folder`` values with the bytes they name: a percent-escape that is not UTF-8 (``%E9`` for a
    Latin-1 ``é``) is kept as ``\\udcXX``, as a path in the answers is written, where the parameter's
    UTF-8 reading would leave U+FFFD and match no folder."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    return [value for name, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
            if name == "folder"]


def _filters(request: Request, tag: Tag = None, folder: Folder = [], after: After = None,  # noqa: B006 - FastAPI copies defaults
             before: Before = None, min_probability: MinProbability = DEFAULT_MIN_PROBABILITY,
             camera: Camera = None, min_size: MinSize = None, format: Format = [],  # noqa: B006
             keyword: Keyword = [], rating: Rating = None, label: Label = None,  # noqa: B006
             place: Place = None, near: Near = None, within: Within = None) -> Filters:
    """The filters of a search or a browse, from its query parameters."""
    return Filters.make(folders=_folders(request) if folder else [], after=after, before=before, tag=tag, min_probability=min_probability,
                        camera=camera, min_size=min_size, formats=[f.value for f in format], keyword=keyword,
                        rating=rating, label=label, place=place, near=near,
                        within_km=within if near and near.count(",") == 1 else None, empty_range=True)


Narrowed = Annotated[Filters, Depends(_filters)]
Box = Annotated[str, Query(min_length=1, max_length=2000, pattern=NOT_BLANK, examples=["a dog on the beach"],
                           description="What to look for, in the search box's language: words, \"phrases\", "
                           "-not +and, keys such as `after:2024-06`, `camera:canon`, `in:FOLDER`, `all:yes`, "
                           "`sort:date` (see `/api/query`). A key it doesn't know, a value it can't read or an "
                           "unclosed quote is a 400 naming the position.")]
Plain = Annotated[bool, Query(description="Take `q` as typed: no keys, signs or quotes read.")]
Version = Annotated[str | None, Query(description="The content's version, as the addresses in answers give it: "
                                                  "then cached for a year, when it is the file's.")]
# A text of `and`/`not`: not blank; `2*text` weighs it (a weight that leaves no text, or is 0, is a 400).
TermText = Annotated[str, Field(min_length=1, max_length=2000, pattern=NOT_BLANK)]


def _read_box(q: str, plain: bool, filters: Filters) -> tuple[ParsedQuery, Filters]:
    """``q`` in the search box's language, and the request's filters narrowed by its keys. An image in
    it is an indexed image's id: a request never names a file the server opens."""
    box = parse_query(q, plain=plain)
    if any(t.image is not None and not isinstance(t.image, int) for t in box.terms):
        raise InputPathError("like: and unlike: take an indexed image's id here (a photo's id in the results), "
                             "not a file.")
    return box, box.narrow(filters)


# -- the app ----------------------------------------------------------------------------------------
def create_app(lib: Library, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The web app over ``lib``, which it uses from many threads and closes on shutdown."""
    warmth = _Warmth()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.warm:
            threading.Thread(target=warmth.run, args=(lib,), name="blipsearch-warm", daemon=True).start()
        try:
            yield
        finally:
            lib.close()

    app = FastAPI(
        title="blipsearch",
        version=__version__,
        summary="Search a photo library by text and by image with BLIP.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operationIds a generated client names its calls by
        dependencies=[Depends(one_value_each)],
        default_response_class=AsciiJSON,
    )
    app.state.warmth = warmth
    install_errors(app)
    document_errors(app)
    app.add_middleware(SecurityMiddleware, guard=Guard.for_binding(settings.host, settings.token,
                                                                   settings.allowed_hosts))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["shown"] = shown_path  # a name that is not UTF-8, as the CLI shows it
    _docs(app)

    def hit_dicts(hits: list[Hit]) -> list[dict[str, Any]]:
        versions = lib.content_hashes([h.id for h in hits])
        return [{**h.to_dict(), "thumbnail": _rendition_url(h.id, "thumbnail", versions.get(h.id))} for h in hits]

    # -- search ------------------------------------------------------------------------------
    @app.get("/api/search", tags=["search"], response_model=schemas.SearchResults | schemas.MatchSet, **AS_GIVEN)
    def search(
        q: Box,
        k: K = 20,
        offset: Offset = 0,
        rerank_depth: Annotated[int | None, Query(ge=0, le=1000, description="ITC candidates rescored by ITM."),
                                WHOLE] = None,
        no_rerank: Annotated[bool, Query(description="Rank by ITC cosine only (fast).")] = False,
        hybrid: Annotated[bool, Query(description="Also match words against captions and file names.")] = False,
        filters: Narrowed = NO_FILTERS,
        plain: Plain = False,
        also: Annotated[list[TermText], Query(alias="and", description="Also look for this text (`2*text` weighs it "
                                                               "twice; repeatable).")] = [],  # noqa: B006
        without: Annotated[list[TermText], Query(alias="not", description="Look away from this text (`2*text` "
                                                                       "weighs it).")] = [],  # noqa: B006
        like: Annotated[list[schemas.Whole], Query(description="Also look like this indexed image (its id).")] = [],  # noqa: B006
        unlike: Annotated[list[schemas.Whole], Query(description="Look unlike this indexed image.")] = [],  # noqa: B006
        all: Annotated[bool, Query(description="Every photo that matches (`search --all`): a match set.")] = False,
        min_match: Annotated[float, Query(ge=0, le=1, description="With `all`: the least match probability."),
                             REAL] = 0.5,
        sort: Annotated[schemas.Sort, Query(description="With `all`: best first, by capture time, or newest "
                                                        "first.")] = schemas.Sort.score,
        max_check: Annotated[int | None, Query(ge=1, le=10_000_000, description="With `all`: the most photos "
                                                                               "scored by ITM."), WHOLE] = None,
    ) -> dict[str, Any]:
        """Text to image: the CLI's `search --json` hits (`rank`, `id`, `path`, `score`, `itc`, `itm`); with
        `and`, `not`, `like`, `unlike`, a composite query as `blipsearch search --and/--not/--like/--unlike`.
        With `all`, a match set as `blipsearch search --all`: `hits` are the matches (each with `match` and
        `date`), `others` the best photos checked that did not match, with the set's counts. `q` is read
        as the CLI reads TEXT (its keys go with the parameters, and win over `all`, `min_match` and
        `sort`); `understood` says how it was read."""
        box, filters = _read_box(q, plain, filters)
        if not box.text.strip():
            raise InputPathError("q holds no words to search for, only keys: add some (or set plain)." if q.strip()
                                 else "The search text is empty.")
        terms = ([text_term(t) for t in also] + [text_term(t, -1) for t in without]
                 + [Term(image=i) for i in like] + [Term(image=i, weight=-1.0) for i in unlike] + list(box.terms))
        understood = box.to_dict()
        if box.all if box.all is not None else all:
            found = lib.search(box.text, all=True, min_match=box.min_match if box.min_match is not None else min_match,
                               sort=box.sort or sort.value, max_check=max_check, filters=filters, terms=terms)
            return {"query": q, "understood": understood, "filters": filters.to_dict(), **found.summary(),
                    "hits": hit_dicts(found.hits), "others": hit_dicts(found.others)}
        depth = 0 if no_rerank else (settings.rerank_depth if rerank_depth is None else rerank_depth)
        hits = lib.search(box.text, k, rerank_depth=depth, rerank_hits=depth > 0, hybrid=hybrid, filters=filters,
                          offset=offset, terms=terms)
        return {"query": q, "understood": understood, "k": k, "offset": offset, "reranked": depth > 0,
                "filters": filters.to_dict(), "matched": lib.count(filters), "hits": hit_dicts(hits)}

    @app.get("/api/query", tags=["search"], response_model=schemas.QueryReading, **AS_GIVEN)
    def query(q: Annotated[str, Query(max_length=2000, description="A search box's text.")] = "",
              plain: Plain = False, filters: Narrowed = NO_FILTERS) -> dict[str, Any]:
        """How a search box's text reads: its search text, terms and keys (`understood`), the filters they
        make with the request's, and whether it searches (words or a text term) or only narrows a
        browse. A key it doesn't know, or a value it can't read, is a 400 naming the position."""
        box, narrowed = _read_box(q, plain, filters) if q.strip() else (parse_query(""), filters)
        return {"query": q, "understood": box.to_dict(), "filters": narrowed.to_dict(), "searches": box.searches}

    @app.post("/api/search/image", tags=["search"], response_model=schemas.ImageSearchResults, **AS_GIVEN,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "image/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_by_image(
        request: Request,
        k: K = 20,
        offset: Offset = 0,
        filters: Narrowed = NO_FILTERS,
    ) -> Any:
        """Image to image for an uploaded image: the request body is the image file's bytes (any
        format the library indexes). The image is used for this search only and never stored."""
        data = await _read_capped(request, settings.max_upload_bytes)
        if isinstance(data, Response):
            return data
        refused = _check_pixels(data, settings.max_upload_pixels)
        if refused is not None:
            return refused
        hits = await run_in_threadpool(lib.similar, ImageData(data), k, filters=filters, offset=offset)
        hit_list = await run_in_threadpool(hit_dicts, hits)
        return {"k": k, "offset": offset, "filters": filters.to_dict(), "hits": hit_list}

    @app.get("/api/images", tags=["images"], response_model=schemas.Browse, **AS_GIVEN)
    def images(k: K = 40, offset: Offset = 0, filters: Narrowed = NO_FILTERS,
               q: Annotated[str | None, Query(max_length=2000, pattern=KEYS_ONLY, description="Search keys that "
                                              "narrow the browse, as in a search's `q`; no words.")] = None,
               ) -> dict[str, Any]:
        """Browse: the images that pass the filters, the most recently added first."""
        if q is not None and q.strip():
            box, filters = _read_box(q, False, filters)
            if box.searches or box.terms:
                raise InputPathError(KEYS_ONLY_SAID)
        found = lib.recent(k, filters=filters, offset=offset)
        versions = lib.content_hashes([i for i, _ in found])
        return {"k": k, "offset": offset, "filters": filters.to_dict(), "images": [
            {"id": i, "path": path, "thumbnail": _rendition_url(i, "thumbnail", versions.get(i))}
            for i, path in found]}

    # -- one image ------------------------------------------------------------------------------
    @app.get("/api/images/{image_id}", tags=["images"], response_model=schemas.ImageDetails, **AS_GIVEN)
    def image(image_id: ImageId) -> dict[str, Any]:
        """What the library knows of an image: path, size, dimensions, capture time, camera, EXIF, tags."""
        info = lib.image(image_id)
        return {**info.to_dict(),
                "thumbnail": _rendition_url(image_id, "thumbnail", info.content_hash),
                "preview": _rendition_url(image_id, "preview", info.content_hash),
                "original": f"/api/images/{image_id}/original"}

    @app.get("/api/images/{image_id}/similar", tags=["search"], response_model=schemas.SimilarImages, **AS_GIVEN)
    def similar(image_id: ImageId, k: K = 20, offset: Offset = 0, filters: Narrowed = NO_FILTERS) -> dict[str, Any]:
        """The images that look most like this one (ITC cosine), itself left out."""
        hits = lib.similar(image_id, k, filters=filters, offset=offset)
        return {"id": image_id, "k": k, "offset": offset, "filters": filters.to_dict(), "hits": hit_dicts(hits)}

    def rendition(request: Request, image_id: ImageId, kind: str, version: str | None) -> Response:
        path, content_hash = lib.rendition(image_id, kind)
        return _cached_file(request, path, "image/webp", content_hash, versioned=version)

    @app.get("/api/images/{image_id}/thumbnail", tags=["images"], response_class=Response,
             responses=schemas.file_answer("The thumbnail.", "image/webp"))
    def thumbnail(request: Request, image_id: ImageId, v: Version = None) -> Response:
        """A small WebP (320 px), made once per content. With `?v=` (the address search results
        give), cacheable for a year."""
        return rendition(request, image_id, "thumb", v)

    @app.get("/api/images/{image_id}/preview", tags=["images"], response_class=Response,
             responses=schemas.file_answer("The preview.", "image/webp"))
    def preview(request: Request, image_id: ImageId, v: Version = None) -> Response:
        """A screen-sized WebP (1600 px), made on first request."""
        return rendition(request, image_id, "preview", v)

    @app.get("/api/images/{image_id}/original", tags=["images"], response_class=Response,
             responses=schemas.file_answer("The file, as its name's type says (else application/octet-stream).",
                                           "image/*", "application/octet-stream"))
    def original(request: Request, image_id: ImageId) -> Response:
        """The indexed file itself, as long as it is still the file that was indexed."""
        path = lib.image_file(image_id)
        content_hash = lib.content_hashes([image_id])[image_id]
        kind = mimetypes.guess_type(os.fsdecode(path))[0] or "application/octet-stream"
        if not kind.startswith("image/"):
            kind = "application/octet-stream"
        return _cached_file(request, Path(os.fsdecode(path)), kind, content_hash, versioned=None)

    @app.post("/api/images/{image_id}/caption", tags=["describe"], response_model=schemas.Caption, **AS_GIVEN)
    def caption(image_id: ImageId) -> dict[str, Any]:
        """The image's caption (BLIP captioning, the paper's decoding), generated once and cached."""
        done = lib.caption([lib.image_file(image_id)])[0]
        if done.text is None:
            raise ImageError(done.error or "can't caption this image")
        return {"id": image_id, "caption": done.text}

    @app.post("/api/images/{image_id}/ask", tags=["describe"], response_model=schemas.Answer, **AS_GIVEN)
    def ask(image_id: ImageId, body: Annotated[schemas.Question, Body()]) -> dict[str, Any]:
        """Ask a question about the image (BLIP visual question answering). Body: `{"question": "..."}`."""
        done = lib.ask([lib.image_file(image_id)], body.question)[0]
        if done.text is None:
            raise ImageError(done.error or "can't read this image")
        return {"id": image_id, "question": body.question, "answer": done.text}

    @app.get("/api/images/{image_id}/lookup", tags=["describe"], response_model=schemas.Lookup, **AS_GIVEN)
    def lookup(
        image_id: ImageId,
        k: Annotated[int, Query(ge=1, le=100), WHOLE] = 5,
        source: Annotated[Literal["texts", "captions"], Query(description="The text collection, or the library's "
                                                                          "captions.")] = "texts",
        no_rerank: bool = False,
    ) -> dict[str, Any]:
        """The library's texts (`blipsearch texts add`) that best describe the image."""
        hits = lib.lookup(image_id, k, rerank_depth=settings.rerank_depth, rerank_hits=not no_rerank, source=source)
        return {"id": image_id, "source": source, "texts": [h.to_dict() for h in hits]}

    @app.get("/api/images/{image_id}/explain", tags=["describe"], response_class=Response,
             responses=schemas.file_answer("The heat map over the photo.", "image/png", revalidated=False, headers={
                 "Cache-Control": "Private, for an hour.",
                 "x-match-probability": "The pair's ITM match probability, 0 to 1 (six decimals)."}))
    def explain(image_id: ImageId,
                q: Annotated[str, Query(min_length=1, max_length=2000, pattern=NOT_BLANK, examples=["a dog on the beach"],
                                        description="The text to explain.")]) -> Response:
        """A heat map over the image of where the ITM head found the text (Grad-CAM), as a PNG; the
        `x-match-probability` header is the pair's ITM match probability."""
        explained = lib.explain(image_id, q)
        out = io.BytesIO()
        explained.overlay().save(out, "PNG")
        return Response(out.getvalue(), media_type="image/png", headers={
            "cache-control": "private, max-age=3600", "x-match-probability": f"{explained.itm:.6f}"})

    @app.get("/explain-legend.png", include_in_schema=False)
    def explain_legend() -> Response:
        """The heat map's colours, coldest to hottest, as a strip for the page's legend."""
        from PIL import Image

        from ..images.heat import COLORMAP

        out = io.BytesIO()
        Image.fromarray(COLORMAP[None, :, :].repeat(8, axis=0)).save(out, "PNG")
        return Response(out.getvalue(), media_type="image/png", headers={"cache-control": "public, max-age=86400"})

    # -- the library -------------------------------------------------------------------------------
    @app.get("/api/status", tags=["library"], response_model=schemas.Status, **AS_GIVEN)
    def status() -> dict[str, Any]:
        """The CLI's `status --json`: counts, model, where the library lives."""
        return lib.status()

    @app.get("/api/failures", tags=["library"], response_model=schemas.Failures, **AS_GIVEN)
    def failures() -> dict[str, Any]:
        """The files that could not be indexed, with the reason."""
        return {"failures": [{"path": f.path, "reason": f.reason} for f in lib.failures()]}

    @app.get("/api/tags", tags=["library"], response_model=schemas.Tags, **AS_GIVEN)
    def tags() -> dict[str, Any]:
        """The tag labels of the library's images (`index --tags`), most used first."""
        return {"tags": [{"label": label, "images": n} for label, n in lib.labels()]}

    # -- pages ---------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Response:
        info = lib.status()
        notice = _notice(info, warmth)
        return templates.TemplateResponse(request, "index.html", {
            "status": info, "notice": notice, "labels": [label for label, _ in lib.labels()],
            "params": request.query_params, "folders": request.query_params.getlist("folder"),
            "rerank_depth": settings.rerank_depth, "help_rows": help_rows(), "ask_example": _ask_example(lib),
        })

    @app.get("/failures", response_class=HTMLResponse, include_in_schema=False)
    def failures_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "failures.html", {
            "status": lib.status(), "failures": lib.failures()})

    return app


def _ask_example(lib: Library) -> str:
    """A question the library's VQA model can answer, for the Ask box's placeholder."""
    if lib.vqa_model == "builtin:shapes":
        from ..shapes.world import EXAMPLE_QUESTION

        return EXAMPLE_QUESTION[0].upper() + EXAMPLE_QUESTION[1:]
    return "How many people are there?"


def _notice(info: dict[str, Any], warmth: _Warmth) -> str | None:
    """The one sentence that says what to do, when the page can't search yet."""
    if not info["images"]:
        return (f"This library has no photos yet. Index a folder with "
                f"`blipsearch index ~/Pictures --library {info['library']}`, then reload this page.")
    if warmth.error:
        return warmth.error
    return None


def _rendition_url(image_id: int, kind: str, content_hash: str | None) -> str:
    return f"/api/images/{image_id}/{kind}" + (f"?v={content_hash[:16]}" if content_hash else "")


def _cached_file(request: Request, path: Path, media_type: str, content_hash: str, versioned: str | None) -> Response:
    """A file named by its content: revalidated by ETag, or cached for a year when the address
    carries the content's version (a changed photo gets a new address)."""
    etag = f'"{content_hash[:32]}"'
    forever = versioned is not None and content_hash.startswith(versioned) and len(versioned) >= 8
    headers = {"etag": etag, "cache-control": "private, max-age=31536000, immutable" if forever else "private, no-cache"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


async def _read_capped(request: Request, limit: int) -> bytes | Response:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
        return _error(415, "Send the image file's bytes as the request body (Content-Type image/...).")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _error(413, f"The image is larger than this server takes ({limit / 2**20:.0f} MB).")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _error(413, f"The image is larger than this server takes ({limit / 2**20:.0f} MB).")
        chunks.append(chunk)
    if not size:
        return _error(400, "The request has no image: send the image file's bytes as its body.")
    return b"".join(chunks)


def _check_pixels(data: bytes, limit: int) -> Response | None:
    """Refuse an image whose header promises more pixels than ``limit`` before decoding any (a
    decompression bomb is a small file that decodes to gigabytes)."""
    from PIL import Image

    from ..images.decode import DECODER_ERRORS

    too_many = f"The image has too many megapixels; this server takes at most {limit / 1e6:.0f}."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged by the limit below
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return _error(413, too_many)
    except DECODER_ERRORS:  # what the indexer takes for a broken file (UnidentifiedImageError is an OSError)
        return _error(422, "This is not an image, or a format blipsearch can't read.")
    if width * height > limit:
        return _error(413, f"The image has {width * height / 1e6:.0f} megapixels; this server takes at most "
                           f"{limit / 1e6:.0f}.")
    return None


def _docs(app: FastAPI) -> None:
    """Swagger UI (5.x: it reads the OpenAPI 3.1 document FastAPI makes) at /docs, from the files of
    the swagger-ui-py package: nothing from the internet."""
    import importlib.util

    spec = importlib.util.find_spec("swagger_ui")  # its files only: the package's handlers are not needed
    assert spec is not None and spec.submodule_search_locations, "pip install swagger-ui-py"
    assets = Path(next(iter(spec.submodule_search_locations))) / "static"
    app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse((HERE / "templates" / "docs.html").read_text())
