"""The SQL a search's filters become (see :mod:`blipsearch.filters`), and the checks that are done in
Python where SQL can't do them alike on every database: file extensions (LIKE on bytes), folded text
(no database folds accents as :func:`blipsearch.metadata.folding.fold` does: the distinct stored
labels and places are folded here, and the ones that match are asked for by value), and the exact
distance of a position (SQL narrows to a latitude and longitude box first).
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session

from ..filters import Filters, instant
from ..metadata.folding import fold
from ..metadata.places import EARTH_KM, distance_km
from .schema import ImageRow, KeywordRow, TagRow

_IN_LIST = 500


def path_range(root: bytes) -> tuple[bytes, bytes]:
    """Byte bounds [lo, hi) of every path strictly inside directory ``root``."""
    prefix = root.rstrip(b"/") + b"/"
    return prefix, prefix[:-1] + b"0"  # "0" is the byte after "/"


def kept_tags(min_probability: float) -> ColumnElement[bool]:
    """Stored labels that count as tags (see :mod:`blipsearch.filters`)."""
    return or_(TagRow.probability.is_(None), TagRow.probability >= min_probability)


def _date(bound: datetime, after: bool) -> ColumnElement[bool]:
    """Images taken at or after ``bound`` (``after``), or before it, as :mod:`blipsearch.filters` says."""
    def side(column: Any, value: Any) -> ColumnElement[bool]:
        return column >= value if after else column < value  # type: ignore[no-any-return]

    # File times are instants: a naive bound is local time here; kept within a 64-bit column's range.
    try:
        seconds = bound.timestamp()
    except (ValueError, OverflowError):  # before year 1 in some time zone: earlier than any file
        seconds = -1e12
    ns = min(max(int(seconds * 1e9), -(2**63)), 2**63 - 1)
    by_file_time = and_(ImageRow.taken_at.is_(None), side(ImageRow.mtime_ns, ns))
    wall = bound.replace(tzinfo=None)
    utc = instant(bound)
    if utc is None:  # a wall-clock bound: every capture time's wall clock
        return or_(and_(ImageRow.taken_at.is_not(None), side(ImageRow.taken_at, wall)), by_file_time)
    return or_(and_(ImageRow.taken_utc.is_not(None), side(ImageRow.taken_utc, utc)),
               and_(ImageRow.taken_utc.is_(None), ImageRow.taken_at.is_not(None), side(ImageRow.taken_at, wall)),
               by_file_time)


def _folded_in(session: Session, columns: list[Any], wanted: str) -> ColumnElement[bool]:
    """Rows where any of ``columns`` folds to ``wanted``: the distinct stored values are folded here."""
    found = []
    for column in columns:
        values = [v for v in session.scalars(select(column).where(column.is_not(None)).distinct()) if fold(v) == wanted]
        found += [column.in_(values[start : start + _IN_LIST]) for start in range(0, len(values), _IN_LIST)]
    return or_(*found) if found else false()


def near_bounds(latitude: float, longitude: float, km: float) -> tuple[float, float, list[tuple[float, float]]]:
    """(south, north, longitude ranges) of a box holding every position within ``km`` of this one (a
    circle on the sphere): two longitude ranges where it crosses the antimeridian, all of them where it
    holds a pole."""
    angle = km / EARTH_KM  # radians of arc
    dlat = math.degrees(angle) * (1 + 1e-9) + 1e-9  # (a hair wider: the exact distance decides)
    south, north = max(latitude - dlat, -90.0), min(latitude + dlat, 90.0)
    everywhere = [(-180.0, 180.0)]
    if south <= -90.0 or north >= 90.0 or angle >= math.pi / 2:
        return south, north, everywhere
    # The widest longitude of the circle: asin(sin(angle) / cos(latitude)).
    spread = math.sin(angle) / math.cos(math.radians(latitude))
    if spread >= 1.0:
        return south, north, everywhere
    dlon = math.degrees(math.asin(spread)) * (1 + 1e-9) + 1e-9
    west, east = longitude - dlon, longitude + dlon
    ranges = [(max(west, -180.0), min(east, 180.0))]
    if west < -180.0:
        ranges.append((west + 360.0, 180.0))
    if east > 180.0:
        ranges.append((-180.0, east - 360.0))
    return south, north, ranges


def near_box(latitude: float, longitude: float, km: float) -> ColumnElement[bool]:
    """Images whose position lies in :func:`near_bounds`' box."""
    south, north, ranges = near_bounds(latitude, longitude, km)
    return and_(ImageRow.latitude.between(south, north),
                or_(*(ImageRow.longitude.between(lo, hi) for lo, hi in ranges)))


def conditions(session: Session, fp: str, filters: Filters) -> list[ColumnElement[bool]]:
    """What SQL checks of ``filters``, for the searchable images of model ``fp``."""
    where: list[ColumnElement[bool]] = [ImageRow.model == fp, ImageRow.vector.is_not(None)]
    if filters.folders:
        where.append(or_(*((ImageRow.path >= lo) & (ImageRow.path < hi)
                           for lo, hi in map(path_range, filters.folders))))
    for bound, keep in ((filters.after, True), (filters.before, False)):
        if bound is not None:
            where.append(_date(bound, keep))
    if filters.min_width:
        where.append(ImageRow.width >= filters.min_width)
    if filters.min_height:
        where.append(ImageRow.height >= filters.min_height)
    if filters.camera:
        make, model = (func.coalesce(ImageRow.exif[k].as_string(), "") for k in ("Make", "Model"))
        where.append(func.lower(make + " " + model).contains(filters.camera, autoescape=True))
    if filters.tag:
        where.append(ImageRow.content_hash.in_(
            select(TagRow.content_hash).where(func.lower(TagRow.label) == filters.tag.lower(), TagRow.model == fp,
                                              kept_tags(filters.min_probability))))
    for term in filters.keywords:  # each one: an image must have them all
        where.append(ImageRow.id.in_(select(KeywordRow.image_id).where(KeywordRow.term == term)))
    if filters.rating is not None:  # no rating counts as 0; rejected (-1) is below every rating
        where.append(func.coalesce(ImageRow.rating, 0) >= filters.rating)
    if filters.label:
        where.append(_folded_in(session, [ImageRow.label], filters.label))
    if filters.place:
        where.append(_folded_in(session, [ImageRow.place_city, ImageRow.place_region, ImageRow.place_country,
                                          ImageRow.place_country_code], filters.place))
    if filters.near:
        where.append(near_box(*filters.near, filters.within_km))
    return where


def filtered_ids(session: Session, fp: str, filters: Filters) -> npt.NDArray[np.int64]:
    """Ids of the searchable images of model ``fp`` that pass ``filters``, ascending."""
    columns: list[Any] = [ImageRow.id]
    if filters.extensions:
        columns.append(ImageRow.path)
    if filters.near:
        columns += [ImageRow.latitude, ImageRow.longitude]
    stmt = select(*columns).where(*conditions(session, fp, filters)).order_by(ImageRow.id)
    if len(columns) == 1:
        return np.asarray(session.scalars(stmt).all(), np.int64)
    # By extension, in Python: SQL's LIKE on bytes differs between databases (and in case).
    wanted = tuple(os.fsencode(e) for e in filters.extensions)
    kept = []
    for row in session.execute(stmt):
        if wanted and not bytes(row.path).lower().endswith(wanted):
            continue
        if filters.near and distance_km(*filters.near, row.latitude, row.longitude) > filters.within_km:
            continue
        kept.append(row.id)
    return np.asarray(kept, np.int64)
