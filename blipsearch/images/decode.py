"""Reading image files: bytes, content hash, decoding, EXIF, and BLIP preprocessing.

Every file is read from disk once: the same bytes are hashed and decoded.
Anything that can go wrong with one file becomes an :class:`ImageError`
whose message is stored as the file's failure reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import stat
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import ImageError, ModelLoadError
from .messages import SAID, chatty, kept_apart, shortened

try:  # HEIC/HEIF from phones; optional at import so a broken wheel can't stop the rest.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pass

# Decode JPEGs (DCT scaling) to at least this multiple of the model's input
# size before the bicubic resize: a 12 MP 4:3 photo decodes at 1/4 scale
# (1000 x 750, 1.95-2.6x a 384 px input) in 46 ms instead of 1/2 scale in
# 102 ms (2x would need 768 rows), with pixels within one 8-bit level (RMS)
# of full decoding; benchmarks/indexing.py measures the vectors' cosine.
DRAFT_FACTOR = 1.5

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageSpec:
    """How a checkpoint wants its pixels: read from its image processor config."""

    height: int = 384
    width: int = 384
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    mean: tuple[float, float, float] = _CLIP_MEAN
    std: tuple[float, float, float] = _CLIP_STD

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ImageSpec:
        """Read ``preprocessor_config.json`` or, failing that, ``processor_config.json``."""
        flat = model_dir / "preprocessor_config.json"
        nested = model_dir / "processor_config.json"
        try:
            if flat.is_file():
                cfg = json.loads(flat.read_text())
            elif nested.is_file():
                cfg = json.loads(nested.read_text()).get("image_processor", {})
            else:
                raise ModelLoadError(
                    f"{model_dir} has no preprocessor_config.json or processor_config.json: "
                    "it is not a complete BLIP checkpoint."
                )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Can't read the image processor config in {model_dir}: {exc}") from None
        size = cfg.get("size") or {}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "height" not in size and "shortest_edge" in size:
            size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
        default = cls()
        return cls(
            height=int(size.get("height", default.height)),
            width=int(size.get("width", default.width)),
            resample=int(cfg.get("resample", default.resample)),
            rescale_factor=float(cfg.get("rescale_factor", default.rescale_factor)),
            do_rescale=bool(cfg.get("do_rescale", True)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            mean=tuple(cfg.get("image_mean", default.mean)),  # type: ignore[arg-type]
            std=tuple(cfg.get("image_std", default.std)),  # type: ignore[arg-type]
        )

    @property
    def draft_size(self) -> tuple[int, int]:
        """JPEGs are decoded at no less than 1.5 times the input size (see :func:`open_image`)."""
        return (math.ceil(DRAFT_FACTOR * self.width), math.ceil(DRAFT_FACTOR * self.height))

    def to_pixels(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Image -> normalized CHW float32 array at the model's input size (made RGB by :func:`to_rgb`)."""
        image = to_rgb(image)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), resample=Image.Resampling(self.resample))
        pixels = np.asarray(image, dtype=np.float32)
        if self.do_rescale:
            pixels = pixels * np.float32(self.rescale_factor)
        if self.do_normalize:
            pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@dataclass
class DecodedImage:
    """One file read and decoded; ``pixels`` is ``None`` when decoding was skipped."""

    content_hash: str
    size: int
    width: int | None = None
    height: int | None = None
    exif: dict[str, Any] | None = None
    pixels: npt.NDArray[np.float32] | None = None


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: bytes | str) -> bytes:
    """The bytes of a regular file. A named pipe or a device is refused without waiting on it
    (opening a pipe for reading blocks until a writer comes; /dev/zero never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError("not a regular file (a pipe, a device or a folder)")
            return fh.read()
    except OSError as exc:
        raise ImageError(f"can't read the file: {exc.strerror or exc}") from None


def hash_file(path: bytes | str) -> str:
    return hash_bytes(read_file(path))


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in 8-bit RGB as a viewer shows it.

    Transparent pixels go over white, as transformers' ``BlipImageProcessor``
    does (plain conversion would turn a logo's transparent background black).
    Greys of more than 8 bits (16-bit PNG and TIFF, ``I;16``/``I``) are scaled
    from the bit depth their sensor had: the smallest of 10, 12, 14 and 16 bits
    that holds the image's brightest value (a 12-bit camera's data in a 16-bit
    file reaches 4095, and scaled as 16 bits it would be nearly black). Float
    greys (``F``) in 0..1 are scaled by 255; floats outside 0..255 (negative
    values, or scientific data in any range) are stretched from their minimum
    to their maximum. Greys already in 0..255 are kept as they are.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        grey = np.array(image, dtype=np.float64)  # a copy the steps below work in: one 8-byte copy per pixel
        image = Image.fromarray(_grey_levels(np.nan_to_num(grey, copy=False), image.mode), "L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _grey_levels(grey: npt.NDArray[np.float64], mode: str) -> npt.NDArray[np.uint8]:
    """8-bit levels of deep or float greys (see :func:`to_rgb`), computed in ``grey`` itself: at the
    decompression-bomb limit each temporary copy would cost another 700 MB."""
    if grey.size:
        low, high = float(grey.min()), float(grey.max())
        if mode == "F" and low >= 0.0 and high <= 1.0:
            grey *= 255.0  # floats in 0..1
        elif mode == "F" and (low < 0.0 or high > 255.0):
            if high > low:
                grey -= low
                grey *= 255.0 / (high - low)
            else:
                grey.fill(0.0)
        elif mode != "F" and high > 255.0:
            bits = next((b for b in (10, 12, 14, 16) if high <= 2**b - 1), 32)
            grey *= 255.0 / (2**bits - 1)
    np.rint(grey, out=grey)
    np.clip(grey, 0, 255, out=grey)
    return grey.astype(np.uint8)


# EXIF orientation -> the transposition that makes the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# What decoders raise for a malformed file: Pillow's own fuzz tests accept OSError, SyntaxError,
# ValueError, MemoryError, NotImplementedError and OverflowError; pillow-heif raises RuntimeError
# (libheif's errors and security limits, found at decoding time); Pillow's TIFF/EXIF code raises
# struct.error; EOFError, IndexError and TypeError come from truncated headers.
DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError,
                   RuntimeError, OverflowError, struct.error)


def _too_large(detail: str) -> ImageError:
    limit = Image.MAX_IMAGE_PIXELS or 0  # only raised when a limit is set
    return ImageError(
        f"image too large to decode safely ({detail}); the limit is {limit / 1e6:.1f} megapixels"
        " (raise it with --max-megapixels)", by_settings=True,
    )


def open_image(
    data: bytes | str | os.PathLike[str], draft: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image (the first frame of an animation), upright per its EXIF orientation, as RGB.

    Returns the image and the full upright size. With ``draft``, a JPEG is
    decoded by DCT scaling straight to the smallest of 1/2, 1/4 or 1/8 of its
    size that still covers ``draft``: several times faster for camera photos,
    and the following resize to the model's input hardly changes.

    Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) stays on:
    its warning zone is refused too, because an image that large costs
    gigabytes of memory to decode. That is checked here on the size the header
    gives, not left to the warnings filter, which is process-wide state that
    another decoding thread's ``catch_warnings`` can restore at any moment.
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # An opened file is at its first frame (an animation's, a multi-picture file's) or, for a
            # layered Photoshop file, at its merged picture: seeking "to frame 0" is wrong for some formats.
            with Image.open(source) as image:
                width, height = image.size
                if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                    raise _too_large(f"{width} x {height} pixels, {width * height / 1e6:.1f} megapixels")
                if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
                    width, height = height, width
                if draft is not None and image.format == "JPEG":
                    image.draft("RGB", draft)
                image.load()
                # Not ImageOps.exif_transpose: it also writes the EXIF back without the orientation,
                # which raises on a tag whose value doesn't fit its type; only the pixels are used here.
                transpose = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
                upright = image.transpose(transpose) if transpose is not None else image.copy()
                return to_rgb(upright), (width, height)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(str(exc)) from None
    except UnidentifiedImageError:
        raise ImageError("not an image, or a format Pillow can't read") from None
    except DECODER_ERRORS as exc:
        raise ImageError(f"can't decode the image: {exc or type(exc).__name__}") from None


def _exif_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return None
    if isinstance(value, tuple):
        items = [_exif_value(v) for v in value]
        return None if any(v is None for v in items) else items
    if isinstance(value, (int, str)):
        # A C string: what follows its first NUL is padding or garbage ("ION230\x00F").
        return value.split("\x00", 1)[0].strip() if isinstance(value, str) else value
    try:
        number = float(value)  # IFDRational; 0/0 gives NaN, which JSON columns (PostgreSQL) refuse
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


_EXIF_KEEP = {
    "Make", "Model", "LensModel", "DateTimeOriginal", "DateTimeDigitized", "DateTime", "SubsecTimeOriginal",
    "SubsecTimeDigitized", "OffsetTimeOriginal", "OffsetTimeDigitized", "ExposureTime", "FNumber",
    "ISOSpeedRatings", "FocalLength", "Orientation", "Software",
}
def _gps_degrees(dms: Any, ref: Any) -> float | None:
    try:
        degrees = float(dms[0]) + float(dms[1]) / 60 + float(dms[2]) / 3600
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None
    if not math.isfinite(degrees):
        return None
    return -degrees if ref in ("S", "W") else degrees


def read_exif(image: Image.Image) -> dict[str, Any] | None:
    """A small JSON-safe subset of EXIF (the capture time is read from it by
    :func:`blipsearch.metadata.dates.capture_time`)."""
    try:
        exif = image.getexif()
        tags = dict(exif.items())
        tags.update(exif.get_ifd(ExifTags.IFD.Exif).items())
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:  # noqa: BLE001 - malformed EXIF must never fail an image
        return None
    out: dict[str, Any] = {}
    for tag, value in tags.items():
        name = ExifTags.TAGS.get(tag)
        if name in _EXIF_KEEP and (clean := _exif_value(value)) not in (None, ""):
            out[name] = clean
    if gps:
        lat = _gps_degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef))
        lon = _gps_degrees(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef))
        if lat is not None and lon is not None:
            out["GPSLatitude"], out["GPSLongitude"] = round(lat, 7), round(lon, 7)
    return out or None


# Gets (content hash, file bytes, the decoded upright image, its full upright size).
OnImage = Callable[[str, bytes, Image.Image, tuple[int, int]], object]


def decode(data: bytes, spec: ImageSpec, on_image: OnImage | None = None) -> DecodedImage:
    """Hash, decode and preprocess the bytes of one image file. ``on_image`` sees the decoded
    image (to make a thumbnail from it without decoding again). What a C decoder writes to standard
    error meanwhile (libtiff's warnings) is kept apart (:mod:`.messages`): with the error of a file
    that fails, in the debug log for one that decodes."""
    content_hash = hash_bytes(data)
    if chatty(data):
        read, error, said = kept_apart(lambda: _open_with_exif(data, spec))
        if said:
            logging.getLogger(__name__).debug("the decoder said, of %s: %s", content_hash, said)
        if error is not None:
            if said and isinstance(error, ImageError):
                raise ImageError(f"{error}{SAID}{shortened(said)})",
                                 by_settings=error.by_settings) from None
            raise error
        assert read is not None
    else:
        read = _open_with_exif(data, spec)
    image, (width, height), exif = read
    if on_image is not None:
        on_image(content_hash, data, image, (width, height))
    return DecodedImage(
        content_hash=content_hash,
        size=len(data),
        width=width,
        height=height,
        exif=exif,
        pixels=spec.to_pixels(image),
    )


def _open_with_exif(data: bytes, spec: ImageSpec) -> tuple[Image.Image, tuple[int, int], Any]:
    image, size = open_image(data, spec.draft_size)
    return image, size, exif_of(data)


def exif_of(data: bytes) -> dict[str, Any] | None:
    """:func:`read_exif` of an image file's bytes (None when it has none, or they can't be read)."""
    try:
        with Image.open(io.BytesIO(data)) as raw:
            return read_exif(raw)
    except Exception:  # noqa: BLE001 - EXIF is optional metadata
        return None


def pixels_from_bytes(data: bytes, spec: ImageSpec) -> npt.NDArray[np.float32]:
    return spec.to_pixels(open_image(data, spec.draft_size)[0])


def load_pixels(path: bytes | str | os.PathLike[str], spec: ImageSpec) -> npt.NDArray[np.float32]:
    """Read and preprocess one image file (a query image, or a candidate for reranking)."""
    return pixels_from_bytes(read_file(os.fspath(path)), spec)
