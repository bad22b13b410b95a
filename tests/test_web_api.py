"""The HTTP API: the same answers as the Library calls behind it, and clear errors."""

from __future__ import annotations

import io
import os
import shutil
import struct
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from conftest import draw_image
from fastapi.testclient import TestClient
from PIL import Image

from blipsearch import Library
from blipsearch.filters import Filters
from blipsearch.library import ImageData
from blipsearch.search.query import Term
from blipsearch.web import ServeSettings, create_app

QUERY = "a red circle left of a blue square"


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, tiny_captioner: Path, tiny_vqa: Path, photos: Path) -> Library:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    library = Library(library_dir, model=str(tiny_model), caption_model=str(tiny_captioner),
                      vqa_model=str(tiny_vqa), device="cpu")
    library.index([photos])
    yield library
    library.close()


@pytest.fixture
def client(lib: Library):  # type: ignore[no-untyped-def]
    with TestClient(create_app(lib, ServeSettings(warm=False)), base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


def _id(lib: Library, path: Path) -> int:
    row = lib.db.image_by_path(os.fsencode(path))
    assert row is not None
    return row.id


def _same(api_hits: list[dict], hits) -> None:  # type: ignore[no-untyped-def]
    fields = ("rank", "id", "path", "score", "itc", "itm")
    assert [{f: h[f] for f in fields} for h in api_hits] == [{f: getattr(h, f) for f in fields} for h in hits]


def test_search_answers_as_the_library_does(client: TestClient, lib: Library, photos: Path) -> None:
    for params, kwargs in [
        ({"k": 5, "no_rerank": "true"}, {"rerank_hits": False}),
        ({"k": 6, "rerank_depth": 4}, {"rerank_depth": 4}),
        ({"k": 4, "offset": 3, "rerank_depth": 8}, {"rerank_depth": 8, "offset": 3}),
        ({"k": 12, "hybrid": "true", "rerank_depth": 3}, {"rerank_depth": 3, "hybrid": True}),
        ({"k": 12, "no_rerank": "true", "folder": str(photos / "garden"), "after": "2000"},
         {"rerank_hits": False, "filters": Filters.make(folders=[photos / "garden"], after="2000")}),
        ({"k": 12, "no_rerank": "true", "format": "png", "min_size": "8x8", "camera": ""},
         {"rerank_hits": False, "filters": Filters.make(formats=["png"], min_size="8x8")}),
        ({"k": 5, "rerank_depth": 4, "and": "2*a blue square", "not": "a garden", "like": 3, "unlike": 5},
         {"rerank_depth": 4, "terms": [Term(text="a blue square", weight=2.0), Term(text="a garden", weight=-1.0),
                                       Term(image=3), Term(image=5, weight=-1.0)]}),
    ]:
        k = params["k"]
        body = client.get("/api/search", params={"q": QUERY, **params}).json()
        expected = lib.search(QUERY, k, **kwargs)  # type: ignore[arg-type]
        assert expected
        _same(body["hits"], expected)
        for hit in body["hits"]:
            assert hit["thumbnail"].startswith(f"/api/images/{hit['id']}/thumbnail?v=")
    garden = client.get("/api/search", params={"q": QUERY, "k": 50, "folder": str(photos / "garden")}).json()
    assert len(garden["hits"]) == 6 and garden["filters"] == {"folders": [str(photos / "garden")]}
    assert garden["matched"] == 6 and body["matched"] == 12  # what the filters leave, all without any
    assert client.get("/api/search", params={"q": QUERY, "before": "2000"}).json()["hits"] == []


def test_similar_and_search_by_uploaded_image(client: TestClient, lib: Library, photos: Path) -> None:
    target = photos / "holiday" / "img03.png"
    image_id = _id(lib, target)
    body = client.get(f"/api/images/{image_id}/similar", params={"k": 4}).json()
    _same(body["hits"], lib.similar(image_id, 4))
    assert image_id not in [h["id"] for h in body["hits"]]
    jpeg = io.BytesIO()
    draw_image(3).save(jpeg, "JPEG", quality=92)
    uploaded = client.post("/api/search/image", params={"k": 5}, content=jpeg.getvalue(),
                           headers={"content-type": "image/jpeg"})
    assert uploaded.status_code == 200
    _same(uploaded.json()["hits"], lib.similar(ImageData(jpeg.getvalue()), 5))
    assert uploaded.json()["hits"][0]["id"] == image_id  # the same picture, recompressed
    # A file whose reader gives up while opening it (NotImplementedError from Pillow's DDS reader).
    dds = b"DDS " + struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44) \
        + struct.pack("<2I", 32, 0x4) + b"XYZW" + bytes(20) + struct.pack("<I", 0x1000) + bytes(16) + bytes(256)
    refused = client.post("/api/search/image", content=dds, headers={"content-type": "image/png"})
    assert refused.status_code == 422 and "not an image" in refused.json()["error"]


def test_image_details_and_files(client: TestClient, lib: Library, photos: Path) -> None:
    path = photos / "garden" / "img08.png"
    image_id = _id(lib, path)
    info = client.get(f"/api/images/{image_id}").json()
    assert info == {**lib.image(image_id).to_dict(), "thumbnail": info["thumbnail"], "preview": info["preview"],
                    "original": f"/api/images/{image_id}/original"}
    original = client.get(info["original"])
    assert original.status_code == 200 and original.content == path.read_bytes()
    assert original.headers["content-type"] == "image/png"
    thumb = client.get(info["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert "immutable" in thumb.headers["cache-control"]  # its address names its content
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    again = client.get(info["thumbnail"], headers={"if-none-match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content
    unversioned = client.get(f"/api/images/{image_id}/thumbnail")
    assert unversioned.headers["cache-control"] == "private, no-cache"
    preview = client.get(info["preview"])
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).format == "WEBP"
    # A photo changed since it was indexed is not served (it is not the file that was indexed).
    draw_image(200).save(path)
    refused = client.get(info["original"])
    assert refused.status_code == 409 and "index" in refused.json()["error"]


def test_caption_ask_lookup_explain(client: TestClient, lib: Library, photos: Path) -> None:
    path = photos / "holiday" / "img01.png"
    image_id = _id(lib, path)
    caption = client.post(f"/api/images/{image_id}/caption")
    assert caption.status_code == 200
    assert caption.json() == {"id": image_id, "caption": lib.caption([path])[0].text}
    answer = client.post(f"/api/images/{image_id}/ask", json={"question": "what color is the square?"})
    assert answer.json()["answer"] == lib.ask([path], "what color is the square?")[0].text
    assert client.post(f"/api/images/{image_id}/ask", json={"question": ""}).status_code == 400
    no_texts = client.get(f"/api/images/{image_id}/lookup")
    assert no_texts.status_code == 409 and "texts add" in no_texts.json()["error"]
    from blipsearch.texts import TextEntry

    lib.add_texts([TextEntry(t) for t in ("a dog on the beach", "a red car", "two people in the snow")])
    texts = client.get(f"/api/images/{image_id}/lookup", params={"k": 2}).json()["texts"]
    assert texts == [t.to_dict() for t in lib.lookup(image_id, 2)]
    heat = client.get(f"/api/images/{image_id}/explain", params={"q": QUERY})
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(heat.content))
    expected = lib.explain(image_id, QUERY)
    assert picture.size == expected.image.size
    np.testing.assert_array_equal(np.asarray(picture), np.asarray(expected.overlay()))


def test_status_failures_tags_and_browsing(client: TestClient, lib: Library, photos: Path) -> None:
    assert client.get("/api/status").json() == lib.status()
    failures = client.get("/api/failures").json()["failures"]
    assert [f["path"] for f in failures] == [str(photos / "broken.jpg")]
    assert client.get("/api/tags").json() == {"tags": []}
    lib.tag_library(["circle", "square", "star"], k=1)
    tags = client.get("/api/tags").json()["tags"]
    assert sum(t["images"] for t in tags) == 12
    first = tags[0]["label"]
    tagged = client.get("/api/search", params={"q": QUERY, "k": 50, "tag": first, "no_rerank": "1"}).json()["hits"]
    assert len(tagged) == tags[0]["images"]
    recent = client.get("/api/images", params={"k": 5}).json()["images"]
    assert [r["id"] for r in recent] == sorted((r["id"] for r in recent), reverse=True)
    assert [(r["id"], r["path"]) for r in recent] == lib.recent(5)
    page2 = client.get("/api/images", params={"k": 5, "offset": 5}).json()["images"]
    assert recent[-1]["id"] > page2[0]["id"]


def test_errors_are_one_sentence_with_a_status(client: TestClient, lib: Library) -> None:
    cases = [
        (client.get("/api/images/999999"), 404, "No indexed image has the id 999999"),
        (client.get("/api/images/999999/thumbnail"), 404, "999999"),
        (client.get("/api/search", params={"q": QUERY, "after": "yesterday"}), 400, "not a date"),
        (client.get("/api/search", params={"q": QUERY, "after": "2023-02-29"}), 400, "not a date"),
        (client.get("/api/search", params={"q": QUERY, "before": "0000"}), 400, "not a date"),
        (client.get("/api/search", params={"q": QUERY, "after": "0001-01-01T00:00+14:00"}), 400, "not a date"),
        (client.get("/api/search", params={"q": QUERY, "and": ["a dog", " "]}), 400,
         "and (value 2) must not be blank."),
        (client.get("/api/search", params={"q": QUERY, "camera": "canon\x00"}), 400,
         "camera must not hold a NUL character."),
        (client.get("/api/search", params={"q": QUERY, "not": "\x85\u3000"}), 400, "not (value 1) must not be blank."),
        (client.get("/api/search", params=[("q", QUERY), ("k", 3), ("k", 4)]), 400, "k takes one value, not 2."),
        (client.get("/api/images/%0A1/preview"), 400, "image_id must be a whole number, not '\\n1'."),
        (client.get("/api/search", params={"q": QUERY, "k": " 5"}), 400, "k must be a whole number, not ' 5'."),
        (client.get("/api/search", params={"q": QUERY, "k": "5.0"}), 400, "k must be a whole number, not 5.0."),
        (client.get("/api/search", params={"q": QUERY, "min_match": "0.5 "}), 400, "min_match must be a number"),
        (client.get("/api/images", params={"q": "in:/x red"}), 400, "Browsing takes search keys only"),
        (client.get("/api/search", params={"q": "   "}), 400, "q must not be blank."),
        (client.get("/api/search", params={"q": QUERY, "k": 0}), 400, "k must be at least 1, not 0."),
        (client.get("/api/search", params={"q": QUERY, "k": -1}), 400, "k must be at least 1, not -1."),
        (client.get("/api/search", params={"q": QUERY, "k": 501}), 400, "k must be at most 500, not 501."),
        (client.get("/api/search", params={"q": ""}), 400, "q must not be empty."),
        (client.get("/api/search"), 400, "q is required."),
        (client.get("/api/search", params={"q": QUERY, "sort": "size"}), 400, "sort must be one of 'score', 'date'"),
        (client.get("/api/search", params={"q": QUERY, "no_rerank": "maybe"}), 400, "must be true or false"),
        (client.get("/api/images/abc"), 400, "image_id must be a whole number, not 'abc'."),
        (client.get("/api/nothing"), 404, "There is no /api/nothing here; the HTTP API is described at /docs."),
        (client.get("/static/nothing.js"), 404, "There is no /static/nothing.js here"),
        (client.post("/api/status"), 405, "/api/status does not take POST; it takes GET."),
        (client.post("/api/images/1/ask", content=b"\xff\xfe{", headers={"content-type": "application/json"}), 400,
         "The request body can't be read"),
        (client.post("/api/images/1/ask", content=b"{bad", headers={"content-type": "application/json"}), 400,
         "The request body is not valid JSON"),
        (client.post("/api/images/1/ask", json={}), 400, "question is required."),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"} and words in response.json()["error"], response.text


def test_an_empty_date_range_finds_nothing(client: TestClient, lib: Library) -> None:
    # After and before that leave no time between them are a range nothing passes, as the document
    # allows any two dates: no hits, not an error (the command line, where one types both, says so).
    dates = {"after": "2024", "before": "2023-12-31T23:00"}
    found = client.get("/api/search", params={"q": QUERY, **dates})
    assert found.status_code == 200 and found.json()["hits"] == [] and found.json()["matched"] == 0
    assert found.json()["filters"] == {"after": "2024-01-01T00:00:00", "before": "2023-12-31T23:00:00"}
    assert client.get("/api/search", params={"q": QUERY, "all": "true", **dates}).json()["matches"] == 0
    image_id = lib.recent(1)[0][0]
    assert client.get(f"/api/images/{image_id}/similar", params=dates).json()["hits"] == []
    assert client.get("/api/images", params={"after": "2024", "before": "2024"}).json()["images"] == []


def test_the_query_reading_gives_an_image_term_as_typed(client: TestClient) -> None:
    # like:0 reads (an id no library has: a search with it is a 404), and its reading says so as typed.
    reading = client.get("/api/query", params={"q": "like:0 unlike:2*00"})
    assert reading.status_code == 200, reading.text
    assert reading.json()["understood"]["terms"] == [{"image": 0, "weight": 1.0}, {"image": 0, "weight": -2.0}]
    assert client.get("/api/search", params={"q": "a dog like:0"}).status_code == 404


def test_an_empty_library_and_a_missing_model_say_what_to_do(tmp_path: Path, tiny_model: Path, photos: Path) -> None:
    with Library(tmp_path / "empty", device="cpu") as empty, \
            TestClient(create_app(empty, ServeSettings()), base_url="http://127.0.0.1") as client:
        page = client.get("/")
        assert page.status_code == 200 and "no photos yet" in page.text and "blipsearch index" in page.text
        assert client.get("/api/search", params={"q": "a dog"}).status_code == 409
    folder = tmp_path / "model-copy"
    shutil.copytree(tiny_model, folder)
    with Library(tmp_path / "lib", model=str(folder), device="cpu") as lib:
        lib.index([photos / "garden"])
    shutil.rmtree(folder)  # the library's model is gone
    with Library(tmp_path / "lib", device="cpu") as lib, \
            TestClient(create_app(lib, ServeSettings()), base_url="http://127.0.0.1") as client:
        missing = client.get("/api/search", params={"q": "a dog"})
        assert missing.status_code == 503 and "--model" in missing.json()["error"]
        assert client.app.state.warmth.done.wait(30)  # type: ignore[attr-defined]
        page = client.get("/")
        assert "--model" in page.text  # the start-up load failed: the page says why
        assert client.get("/api/images", params={"k": 2}).status_code == 200  # browsing needs no model


def test_openapi_and_docs_are_served_from_here(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for route in ("/api/search", "/api/search/image", "/api/images/{image_id}", "/api/images/{image_id}/thumbnail",
                  "/api/images/{image_id}/similar", "/api/images/{image_id}/caption", "/api/images/{image_id}/ask",
                  "/api/images/{image_id}/lookup", "/api/images/{image_id}/explain", "/api/status", "/api/failures"):
        assert route in spec["paths"]
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "http" not in docs.replace("http-equiv", "")
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_the_failures_page_says_when_each_file_is_read_again(client: TestClient, photos: Path) -> None:
    page = client.get("/failures").text
    assert str(photos / "broken.jpg") in page and "once it changes" in page
    assert "blipsearch index --retry-failed" in page and "tried again by the next" not in page


def test_file_names_that_are_not_utf8_are_answered_with_their_bytes(tmp_path: Path, tiny_model: Path) -> None:
    """A photo named in Latin-1 (``café.png`` as a 2000s camera card or a Windows share gives it) and a
    broken one: every JSON answer holding their paths is JSON, the path as the CLI's ``--json`` writes
    it (``\\udcXX`` for each byte that is not UTF-8, which ``os.fsencode`` turns back into the name),
    and the files themselves are served."""
    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.makedirs(folder)
    photo, broken = os.path.join(folder, b"\xe9t\xe9.png"), os.path.join(folder, b"cass\xe9.jpg")
    draw_image(3, 32).save(os.fsdecode(photo))
    draw_image(4, 32).save(os.path.join(os.fsdecode(folder), "plain.png"))
    with open(broken, "wb") as out:
        out.write(b"\xff\xd8 not really a jpeg")
    with Library(tmp_path / "library", model=str(tiny_model), device="cpu") as lib:
        lib.index([os.fsdecode(folder)])
        photo_id = _id(lib, Path(os.fsdecode(photo)))
        with TestClient(create_app(lib, ServeSettings(warm=False)), base_url="http://127.0.0.1:8000") as client:
            answers = {
                "search": client.get("/api/search", params={"q": QUERY, "no_rerank": "true"}),
                "match set": client.get("/api/search", params={"q": QUERY, "all": "true", "min_match": 0}),
                "similar": client.get(f"/api/images/{_id(lib, Path(os.fsdecode(folder)) / 'plain.png')}/similar"),
                "browse": client.get("/api/images"),
                "details": client.get(f"/api/images/{photo_id}"),
                "failures": client.get("/api/failures"),
                # a folder named by its bytes, percent-escaped, as a client echoing a path sends it
                "folder filter": client.get(f"/api/search?q=a+circle&no_rerank=true&folder={quote(folder)}"),
            }
            for name, answer in answers.items():
                assert answer.status_code == 200, (name, answer.text)
            paths = {os.fsencode(h["path"]) for h in answers["search"].json()["hits"]}
            assert photo in paths and paths == {os.fsencode(h["path"]) for h in answers["match set"].json()["hits"]
                                                + answers["match set"].json()["others"]}
            assert os.fsencode(answers["details"].json()["path"]) == photo
            assert [os.fsencode(f["path"]) for f in answers["failures"].json()["failures"]] == [broken]
            within = answers["folder filter"].json()
            assert within["filters"] == {"folders": [os.fsdecode(folder)]} and within["matched"] == 2
            assert b"\\udce9" in answers["details"].content  # ASCII JSON, the byte escaped as the CLI does
            page = client.get("/failures")
            assert page.status_code == 200 and "caf\\xe9/cass\\xe9.jpg" in page.text, page.text
            for rendition in ("thumbnail", "preview", "original"):
                served = client.get(f"/api/images/{photo_id}/{rendition}")
                assert served.status_code == 200 and served.content, (rendition, served.text)
