"""Offline reverse geocoding: known places on every side of the equator and of Greenwich, across the
antimeridian, and no place for no position."""

from __future__ import annotations

import math
import threading

import pytest

from blipsearch.metadata import places
from blipsearch.metadata.places import Place, distance_km, place_at, valid_position


@pytest.mark.parametrize(("lat", "lon", "city", "region", "country", "code"), [
    (48.8566, 2.3522, "Paris", "Île-de-France", "France", "FR"),
    (-34.6037, -58.3816, "Buenos Aires", "Buenos Aires F.D.", "Argentina", "AR"),
    (-33.8688, 151.2093, "Sydney", "New South Wales", "Australia", "AU"),
    (-33.9249, 18.4241, "Cape Town", "Western Cape", "South Africa", "ZA"),
    (64.1466, -21.9426, "Reykjavík", "Capital Region", "Iceland", "IS"),
    (21.3069, -157.8583, "Honolulu", "Hawaii", "United States", "US"),
    (-23.5505, -46.6333, "São Paulo", "São Paulo", "Brazil", "BR"),  # not its district "Se"
    (-23.5329, -46.7920, "Osasco", "São Paulo", "Brazil", "BR"),  # a city of its own beside it
    (-18.1416, 178.4419, "Suva", "Central", "Fiji", "FJ"),
])
def test_known_places(lat: float, lon: float, city: str, region: str, country: str, code: str) -> None:
    assert place_at(lat, lon) == Place(city, region, country, code)


def test_labels_say_a_region_named_as_its_city_once() -> None:
    assert place_at(48.8566, 2.3522).label == "Paris, Île-de-France, France"  # type: ignore[union-attr]
    assert place_at(-23.5505, -46.6333).label == "São Paulo, Brazil"  # type: ignore[union-attr]
    assert Place(None, "Northern", "Fiji", "FJ").label == "Northern, Fiji"


def test_nearness_holds_across_the_antimeridian() -> None:
    # Taveuni (Fiji) lies at 179.9 east; -179.95 is a few kilometres east of it, not 360 degrees away.
    east, west = place_at(-16.85, 179.95), place_at(-16.85, -179.95)
    assert east is not None and west is not None
    assert east.country_code == west.country_code == "FJ"


def test_far_from_every_town_is_no_place_or_no_city() -> None:
    assert place_at(0.0, -140.0) is None  # the middle of the Pacific
    assert place_at(-89.9, 0.0) is None  # the South Pole: no town within reach
    remote = place_at(-25.0, 131.0)  # the outback, 100 km from Uluru's resort town
    assert remote is None or remote.city is None or remote.country_code == "AU"


@pytest.mark.parametrize(("lat", "lon"), [
    (float("nan"), 2.0), (48.0, float("inf")), (90.5, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0),
    (0.0, 0.0), ("north", 2.0), (None, None),
])
def test_no_position_is_no_place(lat: object, lon: object) -> None:
    assert not valid_position(lat, lon)
    assert place_at(lat, lon) is None  # type: ignore[arg-type]


def test_the_poles_and_the_date_line_are_positions() -> None:
    assert valid_position(90, 180) and valid_position(-90, -180) and valid_position(0.0, 1e-9)


def test_haversine_distances() -> None:
    assert distance_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)  # Paris-London
    assert distance_km(0, 179.5, 0, -179.5) == pytest.approx(111.2, abs=0.2)  # across the date line
    assert distance_km(89.9, 0, 89.9, 180) == pytest.approx(22.2, abs=0.1)  # over the pole
    assert distance_km(0, 0, 0, 180) == pytest.approx(math.pi * places.EARTH_KM)


def test_the_data_loads_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    real = places._Gazetteer

    def counting() -> places._Gazetteer:
        made.append(1)
        return real()

    monkeypatch.setattr(places, "_gazetteer", None)
    monkeypatch.setattr(places, "_Gazetteer", counting)
    found: list[Place | None] = []
    threads = [threading.Thread(target=lambda: found.append(place_at(64.1466, -21.9426))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and {p.city for p in found if p} == {"Reykjavík"} and len(found) == 8


def test_unreadable_data_gives_no_place_and_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise OSError("gone")

    monkeypatch.setattr(places, "_gazetteer", None)
    monkeypatch.setattr(places, "_failed", False)
    monkeypatch.setattr(places, "_Gazetteer", broken)
    assert place_at(48.8566, 2.3522) is None
