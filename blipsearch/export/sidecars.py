"""The library's captions and tags written to its photos' XMP sidecars, for photo managers (digiKam,
darktable, Lightroom, immich) to read: ``blipsearch xmp``.

Which sidecar: the one a photo already has (``IMG_1.jpg.xmp``, else ``IMG_1.xmp``), else a new
``IMG_1.jpg.xmp``; ``name="photo.xmp"`` or ``"photo.ext.xmp"`` picks the naming. How each sidecar
is edited, and what is blipsearch's in it: :mod:`blipsearch.metadata.xmpedit`. The photos themselves
are never written; each sidecar is replaced atomically (a temporary file in its folder, flushed to
disk, renamed over it), so an interrupted run leaves every sidecar whole, old or new.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import or_, select

from ..errors import InputPathError
from ..filters import DEFAULT_MIN_PROBABILITY
from ..metadata.xmp import MAX_SIDECAR_BYTES, SIDECAR_SUFFIXES, display_name
from ..metadata.xmpedit import XmpEditError, edit
from ..options import CaptionSettings
from ..progress import ProgressFactory, no_progress
from ..store.schema import CaptionRow, ImageRow, TagRow
from ..system import atomic_write, root_path

if TYPE_CHECKING:
    from ..workspace import Workspace

NAMES = ("photo.ext.xmp", "photo.xmp")


@dataclass(frozen=True)
class SidecarChange:
    """What was done (or, in a dry run, would be done) to one photo's sidecar."""

    image: str
    sidecar: str
    action: str  # "created", "updated", "deleted", "unchanged" or "skipped"
    reason: str | None = None  # why it was skipped

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"image": self.image, "sidecar": self.sidecar, "action": self.action}
        if self.reason is not None:
            found["reason"] = self.reason
        return found


@dataclass
class SidecarReport:
    """The sidecars a run went through; ``changes`` lists every one but the unchanged."""

    dry_run: bool = False
    changes: list[SidecarChange] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("created", "updated", "deleted", "unchanged", "skipped"), 0))

    def add(self, change: SidecarChange) -> None:
        self.counts[change.action] += 1
        if change.action != "unchanged":
            self.changes.append(change)


def sidecar_path(image: bytes, name: str | None) -> bytes:
    """Where ``image``'s sidecar is written: the existing one of the naming ``name`` (any case of
    ".xmp"; None: either naming, "photo.ext.xmp" first), else a new one of that naming."""
    stem, ext = os.path.splitext(image)
    forms = {"photo.ext.xmp": [image], "photo.xmp": [stem] if ext else [image]}
    bases = forms[name] if name else forms["photo.ext.xmp"] + forms["photo.xmp"]
    for base in bases:
        for suffix in SIDECAR_SUFFIXES:
            if os.path.isfile(base + suffix):
                return base + suffix
    return bases[0] + b".xmp"


class Sidecars:
    """XMP sidecars of the library of ``ws``; ``caption_fp`` gives the caption model's fingerprint
    (the captions written are that model's, made with the settings given)."""

    def __init__(self, ws: Workspace, caption_fp: Callable[[], str]) -> None:
        self.ws = ws
        self.caption_fp = caption_fp

    def _captions(self, hashes: list[str], settings: CaptionSettings) -> dict[str, str]:
        db = self.ws.db
        with db.reader() as session:
            if session.scalar(select(CaptionRow.content_hash).limit(1)) is None:
                return {}  # none stored: no caption model to look up
        return db.captions(hashes, self.caption_fp(), settings.cache_key)

    def _tags(self, hashes: list[str], min_probability: float) -> dict[str, list[str]]:
        """{content hash: its tags, best first} under the library's model (see blipsearch.filters)."""
        fp = self.ws.db.library().model_fingerprint
        found: dict[str, list[str]] = {}
        if not fp:
            return found
        with self.ws.db.reader() as session:
            for start in range(0, len(hashes), 500):
                rows = session.execute(
                    select(TagRow.content_hash, TagRow.label)
                    .where(TagRow.content_hash.in_(hashes[start : start + 500]), TagRow.model == fp,
                           or_(TagRow.probability.is_(None), TagRow.probability >= min_probability))
                    .order_by(TagRow.content_hash, TagRow.rank, TagRow.label))
                for content_hash, label in rows:
                    labels = found.setdefault(content_hash, [])
                    if label not in labels:
                        labels.append(label)
        return found

    def write(self, paths: list[str | os.PathLike[str] | bytes] | None = None, *, captions: bool = True,
              tags: bool = True, name: str | None = None, dry_run: bool = False, remove: bool = False,
              caption_settings: CaptionSettings = CaptionSettings(),
              min_probability: float = DEFAULT_MIN_PROBABILITY,
              progress: ProgressFactory = no_progress) -> SidecarReport:
        """Write (with ``remove``: take out) the captions and tags of the indexed images at or below
        ``paths`` (all when None) in their sidecars."""
        if name is not None and name not in NAMES:
            raise InputPathError(f"The sidecar name {name!r} is not one of {', '.join(NAMES)}.")
        if not captions and not tags:
            raise InputPathError("Neither captions nor tags are to be written: nothing to do.")
        db = self.ws.db
        if paths:
            rows = {path: row.content_hash for path, row in db.rows_under([root_path(p) for p in paths]).items()}
        else:
            with db.reader() as session:
                rows = {bytes(p): h for p, h in session.execute(select(ImageRow.path, ImageRow.content_hash))}
        hashes = sorted(set(rows.values()))
        texts = {} if remove or not captions else self._captions(hashes, caption_settings)
        labels = {} if remove or not tags else self._tags(hashes, min_probability)
        report = SidecarReport(dry_run=dry_run)
        owner: dict[bytes, bytes] = {}
        bar = progress(len(rows), "sidecars")
        try:
            for image in sorted(rows):
                content = rows[image]
                target = sidecar_path(image, name)
                if target in owner:
                    report.add(SidecarChange(os.fsdecode(image), os.fsdecode(target), "skipped",
                                             f"{display_name(target)} is the sidecar of "
                                             f"{display_name(owner[target])} too, which was written."))
                else:
                    owner[target] = image
                    report.add(self._one(image, target, texts.get(content), labels.get(content, []),
                                         captions=captions, tags=tags, dry_run=dry_run))
                bar.update(1)
        finally:
            bar.close()
        return report

    def _one(self, image: bytes, target: bytes, caption: str | None, labels: list[str], *, captions: bool,
             tags: bool, dry_run: bool) -> SidecarChange:
        shown_image, shown = os.fsdecode(image), os.fsdecode(target)

        def skipped(reason: str) -> SidecarChange:
            return SidecarChange(shown_image, shown, "skipped", f"{display_name(target)} was left as it is: {reason}.")

        real = os.path.realpath(target)
        try:
            with open(real, "rb") as fh:
                before = os.fstat(fh.fileno())
                data: bytes | None = fh.read(MAX_SIDECAR_BYTES + 1)
        except FileNotFoundError:
            before, data = None, None
        except OSError as exc:
            return skipped(f"it could not be read ({exc.strerror})")
        if data is not None and len(data) > MAX_SIDECAR_BYTES:
            return skipped(f"it is larger than {MAX_SIDECAR_BYTES // 1024} KB")
        try:
            result = edit(data, caption, labels, captions=captions, tagging=tags)
        except XmpEditError as exc:
            return skipped(str(exc))
        if result == data or (result is None and data is None):
            return SidecarChange(shown_image, shown, "unchanged")
        action = "deleted" if result is None else "created" if data is None else "updated"
        if dry_run:
            return SidecarChange(shown_image, shown, action)
        if result is None:
            os.unlink(real)
            return SidecarChange(shown_image, shown, action)

        def write(fh: BinaryIO) -> None:
            fh.write(result)  # type: ignore[arg-type]
            try:  # a photo manager that wrote the sidecar meanwhile wins: its version is kept
                now = os.stat(real)
            except FileNotFoundError:
                now = None
            if (now is None) != (before is None) or (now is not None and before is not None and
                                                     (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns)):
                raise _Changed

        try:
            atomic_write(Path(os.fsdecode(real)), write, point="sidecar", fsync=True)
        except _Changed:
            return skipped("it changed while blipsearch was writing it; run the command again")
        if before is not None and (before.st_mode & 0o7777) != (os.stat(real).st_mode & 0o7777):
            os.chmod(real, before.st_mode & 0o7777)  # as private (or as shared) as it was
        return SidecarChange(shown_image, shown, action)


class _Changed(Exception):
    pass
