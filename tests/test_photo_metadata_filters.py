"""Keyword, rating, label, place and distance filters end to end over a library of real JPEGs (with
EXIF GPS positions and offsets, XMP sidecars beside them), indexed as a user's run indexes them, on
SQLite and PostgreSQL; the metadata in the full-text index; an image's details.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import draw_image
from fastapi.testclient import TestClient
from photo_files import camera_exif, write_sidecar
from sqlalchemy import delete, func, select, text

from blipsearch import Library
from blipsearch.cli import main
from blipsearch.errors import InputPathError
from blipsearch.filters import Filters
from blipsearch.metadata.places import distance_km
from blipsearch.search.language import parse_query
from blipsearch.store import fulltext
from blipsearch.store.schema import ImageRow, KeywordRow
from blipsearch.store.where import near_bounds
from blipsearch.web import ServeSettings, create_app

QUERY = "a red circle"
# name: (latitude, longitude, metadata columns)
PHOTOS: dict[str, tuple[float | None, float | None, dict[str, Any]]] = {
    "paris": (48.8584, 2.2945, {"title": "Tour Eiffel au crépuscule", "description": "Seen from the river",
                                "keywords": ["Places|France|Paris", "Família"], "rating": 5, "label": "Red",
                                "taken_offset": 120, "taken_source": "DateTimeOriginal"}),
    "saopaulo": (-23.5505, -46.6333, {"keywords": ["Beach"], "rating": 3, "label": "Green"}),
    "fiji_east": (-16.80, 179.99, {}),
    "fiji_west": (-16.80, -179.99, {}),
    "pole_a": (89.95, 10.0, {}),
    "pole_b": (89.95, -170.0, {}),
    "reykjavik": (64.1466, -21.9426, {"rating": -1}),
    "nowhere": (None, None, {}),
}


def gps_jpeg(path: Path, seed: int, latitude: float | None, longitude: float | None,
             offset: int | None = None) -> None:
    """A real JPEG of ``draw_image(seed)`` with the EXIF of :func:`photo_files.camera_exif`."""
    draw_image(seed, 64).save(path, exif=camera_exif(latitude, longitude, offset))


@pytest.fixture
def lib(tmp_path: Path, db_url: str | None) -> Library:
    folder = tmp_path / "trips"
    folder.mkdir()
    for seed, (name, (lat, lon, columns)) in enumerate(PHOTOS.items()):
        gps_jpeg(folder / f"{name}.jpg", seed, lat, lon, columns.get("taken_offset"))
        if set(columns) - {"taken_offset", "taken_source"}:
            write_sidecar(folder / f"{name}.jpg", columns)
    with Library(tmp_path / "library", db_url=db_url, model="builtin:shapes", device="cpu") as library:
        assert library.index([folder]).added == len(PHOTOS)
        yield library


def found(lib: Library, **filters: Any) -> set[str]:
    hits = lib.search(QUERY, k=50, rerank_hits=False, filters=Filters.make(**filters))
    return {Path(h.path).stem for h in hits}


def test_keyword_rating_label_and_place_filters(lib: Library) -> None:
    assert found(lib, keyword="paris") == {"paris"}
    assert found(lib, keyword="PLACES|france|Paris") == {"paris"}  # the whole path
    assert found(lib, keyword="places|france") == set()  # a path is matched whole, not by its start
    assert found(lib, keyword="familia") == found(lib, keyword="FAMÍLIA") == {"paris"}
    assert found(lib, keyword=["paris", "família"]) == {"paris"}
    assert found(lib, keyword=["paris", "beach"]) == set()  # all of them
    assert found(lib, rating=5) == {"paris"}
    assert found(lib, rating=3) == {"paris", "saopaulo"}
    assert found(lib, rating=0) == set(PHOTOS) - {"reykjavik"}  # only the rejected left out
    assert found(lib, label="red") == found(lib, label=" RED ") == {"paris"}
    assert found(lib, label="re") == set()
    assert found(lib, place="sao paulo") == found(lib, place="São Paulo") == {"saopaulo"}
    assert found(lib, place="ile-de-france") == found(lib, place="fr") == found(lib, place="France") == {"paris"}
    assert found(lib, place="fiji") == {"fiji_east", "fiji_west"}
    assert found(lib, place="paris", rating=5, label="red", keyword="familia") == {"paris"}
    assert found(lib, place="paris", rating=5, label="green") == set()


def test_distance_filter_across_the_antimeridian_and_at_the_pole(lib: Library) -> None:
    assert found(lib, near=(48.8584, 2.2945)) == {"paris"}
    assert found(lib, near="48.8606,2.3376", within_km=3.5) == {"paris"}  # the Louvre, 3.2 km away
    assert found(lib, near="48.8606,2.3376", within_km=3.0) == set()
    assert found(lib, near="-16.80,180", within_km=2) == {"fiji_east", "fiji_west"}  # 1.07 km each way
    assert found(lib, near="-16.80,179.99", within_km=1) == {"fiji_east"}  # the other is 2.1 km away
    assert found(lib, near="90,0", within_km=6) == {"pole_a", "pole_b"}  # 5.6 km from the pole each
    assert found(lib, near="89.95,10", within_km=10) == {"pole_a"}  # 11.1 km across the pole
    assert found(lib, near="89.95,10", within_km=12) == {"pole_a", "pole_b"}
    assert found(lib, near="0,0", within_km=20015) == set(PHOTOS) - {"nowhere"}


def test_the_distance_box_holds_every_position_within_reach() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        lat, lon = math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180)
        km = 10 ** rng.uniform(-2, 4.3)
        south, north, ranges = near_bounds(lat, lon, km)
        for _ in range(5):  # a point within km: a random bearing and distance from the centre
            d, bearing = rng.uniform(0, km) / 6371.0088, rng.uniform(0, 2 * math.pi)
            p1, l1 = math.radians(lat), math.radians(lon)
            p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(bearing))
            l2 = l1 + math.atan2(math.sin(bearing) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
            plat, plon = math.degrees(p2), (math.degrees(l2) + 540) % 360 - 180
            assert distance_km(lat, lon, plat, plon) <= km * (1 + 1e-6) + 1e-6
            assert south <= plat <= north and any(lo <= plon <= hi for lo, hi in ranges), (lat, lon, km, plat, plon)


def test_metadata_joins_the_full_text_index(lib: Library) -> None:
    index = fulltext.TextIndex(lib.db)
    paris = lib.db.image_by_path(next(p for p in _paths(lib) if p.endswith(b"paris.jpg")))
    assert paris is not None
    for word in ("eiffel", "river", "família", "france"):
        assert paris.id in [i for i, _ in index.search(word, 10)], word
    write_sidecar(Path(os.fsdecode(paris.path)), {"title": "Notre-Dame"})  # edited by a photo manager
    assert lib.index([Path(os.fsdecode(paris.path)).parent]).refreshed == 1
    assert paris.id not in [i for i, _ in index.search("eiffel", 10)]
    assert paris.id in [i for i, _ in index.search("notre", 10)]


def _paths(lib: Library) -> list[bytes]:
    with lib.db.reader() as session:
        return list(session.scalars(select(ImageRow.path)))


def test_deleting_an_image_deletes_its_keywords(lib: Library) -> None:
    paris = next(i for i, p in lib.recent(50) if p.endswith("paris.jpg"))
    with lib.db.reader() as session:  # places, france, paris, places|france|paris, familia
        assert session.scalar(select(func.count()).where(KeywordRow.image_id == paris)) == 5
    with lib.db.transaction() as session:
        session.execute(delete(ImageRow).where(ImageRow.id == paris))
    with lib.db.reader() as session:
        assert session.scalar(select(func.count()).where(KeywordRow.image_id == paris)) == 0
        assert session.scalar(select(func.count()).select_from(KeywordRow)) == 1  # São Paulo's "beach"


def test_filters_refuse_bad_values() -> None:
    for kwargs, message in (({"rating": 6}, "0 to 5"), ({"rating": "x"}, "not a rating"),
                            ({"near": "91,0"}, "not a position"), ({"near": "here"}, "LATITUDE,LONGITUDE"),
                            ({"within_km": 2}, "needs `near`"), ({"near": "1,2", "within_km": 0}, "above 0"),
                            ({"near": "1,2,3", "within_km": 4}, "given twice"), ({"keyword": "x" * 401}, "at most")):
        with pytest.raises(InputPathError, match=message):
            Filters.make(**kwargs)
    made = Filters.make(keyword=["Família", "familia", " "], near="1.5,-2", place="Île", label="Red")
    assert made.keywords == ("familia",) and made.near == (1.5, -2.0) and made.within_km == 1.0
    assert made.to_dict() == {"keywords": ["familia"], "label": "red", "place": "ile", "near": [1.5, -2.0],
                              "within_km": 1.0}
    assert Filters.make(rating=0) and not Filters.make(keyword=[], rating=None)


def test_search_box_keys() -> None:
    box = parse_query('sunset keyword:paris keyword:"new york" rating:4 label:red place:"São Paulo" '
                      "near:48.85,2.29,2.5")
    assert box.text == "sunset" and box.keywords == ("paris", "new york") and box.rating == 4
    made = box.filters()
    assert made.keywords == ("paris", "new york") and made.place == "sao paulo" and made.near == (48.85, 2.29)
    assert made.within_km == 2.5 and made.label == "red"
    assert parse_query("near:48.85,2.29").filters().within_km == 1.0
    narrowed = parse_query("keyword:beach near:1,2").narrow(Filters.make(keyword="sea", near="3,4", within_km=9))
    assert narrowed.keywords == ("sea", "beach") and narrowed.near == (1.0, 2.0) and narrowed.within_km == 1.0
    for query, position, reason in (("dog rating:9", 5, "a rating is 0 to 5 stars, not 9."),
                                    ("near:100,0", 1, "100,0 is not a position"),
                                    ("a label:x label:y", 11, "label is given already at character 3"),
                                    ("keyword:", 1, "keyword: has no value")):
        with pytest.raises(InputPathError) as caught:
            parse_query(query)
        assert str(caught.value).startswith(f"At character {position}, ") and reason in str(caught.value)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_and_http_filters_and_details(lib: Library, tmp_path: Path) -> None:
    library = ["--library", str(tmp_path / "library")]
    runner = CliRunner()
    out = runner.invoke(main, ["search", QUERY, "--json", "--no-rerank", "--keyword", "Paris", "--rating", "4",
                               "--place", "france", *library])
    assert out.exit_code == 0, out.output
    assert [Path(json.loads(line)["path"]).stem for line in out.stdout.splitlines()] == ["paris"]
    out = runner.invoke(main, ["search", f"{QUERY} near:-16.8,180,2", "--json", "--no-rerank", *library])
    assert {Path(json.loads(line)["path"]).stem for line in out.stdout.splitlines()} == {"fiji_east", "fiji_west"}
    out = runner.invoke(main, ["search", QUERY, "--within", "3", *library])
    assert out.exit_code == 2 and "needs `near`" in out.output
    out = runner.invoke(main, ["search", QUERY, "--rating", "7", *library])
    assert out.exit_code == 2 and "at most 5" in out.output

    paris = next(i for i, p in lib.recent(50) if p.endswith("paris.jpg"))
    out = runner.invoke(main, ["image", str(paris), *library])
    assert out.exit_code == 0, out.output
    shown = [" ".join(line.split()) for line in out.stdout.splitlines()]
    for line in ("date: taken 2021-04-11 15:47:53 +02:00 (DateTimeOriginal)", "title: Tour Eiffel au crépuscule",
                 "keywords: Família, Places|France|Paris", "rating: ***** (5)", "label: Red",
                 "place: Paris, Île-de-France, France", "position: 48.858400, 2.294500"):
        assert line in shown, out.stdout
    details = json.loads(runner.invoke(main, ["image", str(paris), "--json", *library]).stdout)
    assert details["place"] == {"city": "Paris", "region": "Île-de-France", "country": "France",
                                "country_code": "FR", "name": "Paris, Île-de-France, France"}
    assert details["rating"] == 5 and details["keywords"] == ["Família", "Places|France|Paris"]
    assert details["taken_at"] == "2021-04-11T15:47:53" and details["taken_offset"] == 120
    nowhere = next(i for i, p in lib.recent(50) if p.endswith("nowhere.jpg"))
    plain = runner.invoke(main, ["image", str(nowhere), *library]).stdout
    assert "place:" not in plain and "rating:" not in plain and "date:         taken 2021-04-11 15:47:53 (DateTimeOriginal)\n" in plain

    with TestClient(create_app(lib, ServeSettings(warm=False)), base_url="http://127.0.0.1:8000") as client:
        browse = client.get("/api/images", params={"keyword": ["paris", "familia"], "rating": 5, "label": "RED"})
        assert browse.status_code == 200 and [i["id"] for i in browse.json()["images"]] == [paris]
        assert browse.json()["filters"]["keywords"] == ["paris", "familia"]
        near = client.get("/api/images", params={"near": "89.95,10", "within": 12})
        assert len(near.json()["images"]) == 2
        boxed = client.get("/api/images", params={"q": 'place:"são paulo"'})
        assert [Path(i["path"]).stem for i in boxed.json()["images"]] == ["saopaulo"]
        for params, message in (({"rating": 6}, "rating must be at most 5"), ({"within": 0, "near": "1,2"}, "within"),
                                ({"near": "north"}, "is not a position"), ({"near": "95,0"}, "not a position"),
                                ({"q": "rating:-1"}, "At character 1")):
            refused = client.get("/api/images", params=params)
            assert refused.status_code in (400, 422) and message in refused.json()["error"], refused.json()
        shown = client.get(f"/api/images/{paris}").json()
        assert shown["taken"] == "taken 2021-04-11 15:47:53 +02:00 (DateTimeOriginal)"
        assert shown["place"]["name"] == "Paris, Île-de-France, France" and shown["label"] == "Red"
        document = client.get("/openapi.json").json()
        parameters = {p["name"]: p for p in document["paths"]["/api/images"]["get"]["parameters"]}
        rating = parameters["rating"]["schema"]["anyOf"][0]
        assert (rating["minimum"], rating["maximum"]) == (0, 5)
        assert "pattern" in parameters["near"]["schema"]["anyOf"][0]
        assert parameters["within"]["schema"]["anyOf"][0]["exclusiveMinimum"] == 0
        assert parameters["keyword"]["schema"]["type"] == "array"


def test_an_older_library_gets_the_new_triggers(tmp_path: Path) -> None:
    with Library(tmp_path / "library", model="builtin:shapes", device="cpu") as library:
        engine = library.db.engine
        with engine.begin() as conn:  # back to revision 0003: the triggers as they were
            conn.execute(text("DROP TRIGGER keywords_image_gone"))
            conn.execute(text("DROP TRIGGER text_pending_image_changed"))
            conn.execute(text(
                "CREATE TRIGGER text_pending_image_changed AFTER UPDATE OF path, content_hash ON images "
                "WHEN OLD.path IS NOT NEW.path OR OLD.content_hash IS NOT NEW.content_hash "
                "BEGIN INSERT INTO text_pending (image_id) VALUES (NEW.id); END"))
            conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
            conn.execute(text("UPDATE library SET schema_version = 7"))
    with Library(tmp_path / "library", model="builtin:shapes", device="cpu") as library, \
            library.db.engine.connect() as conn:
        triggers = dict(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all())
        assert conn.execute(text("SELECT schema_version FROM library")).scalar() == 8
    assert "keywords_image_gone" in triggers and "title" in triggers["text_pending_image_changed"]
