"""Malformed and mutated images through the indexer's decode path: only a result or ImageError.

The short campaign here (Hypothesis mutations of small valid files in the seven
formats, a few hundred) runs with the suite; the long one, coverage-guided with
atheris, with a real index run and a public corpus, is
``benchmarks/reliability/fuzz.py``. The regression tests hold the inputs it
found, made from the seeds.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from blipsearch.errors import ImageError
from blipsearch.images.decode import DecodedImage, ImageSpec, decode, open_image
from blipsearch.store.thumbnails import ThumbnailStore

SPEC = ImageSpec()  # BLIP-base's 384 px: JPEG draft decoding takes part
PER_INPUT_S = 5.0  # a mutated 32 x 24 file decodes in milliseconds; this catches a hang, not a slow machine


def _picture(mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", (32, 24), (250, 240, 220))
    pixels = np.asarray(image).copy()
    pixels[4:20, 2:14] = (200, 30, 40)
    pixels[6:18, 18:30] = (30, 60, 200)
    pixels[12, ::3] = (10, 250, 90)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image if mode in ("RGB", "RGBA") else image.convert(mode)


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _heic(image: Image.Image) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _save(image, "HEIF", quality=50)


def _seeds() -> dict[str, bytes]:
    rgb, rgba = _picture(), _picture("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the EXIF path and the transpose run
    exif[0x0132] = "2024:07:14 12:30:00"
    frames = [rgb, rgb.rotate(90), rgb.rotate(180)]
    return {
        "jpeg": _save(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-progressive": _save(rgb.convert("L"), "JPEG", progressive=True),
        "png": _save(rgba, "PNG"),
        "png-palette": _save(rgb.quantize(8), "PNG", transparency=2),
        "png-16bit": _save(Image.fromarray(np.arange(768, dtype=np.uint16).reshape(24, 32) * 80), "PNG"),
        "webp": _save(rgb, "WEBP", quality=60),
        "webp-animated": _save(rgb, "WEBP", save_all=True, append_images=frames[1:], duration=50),
        "gif": _save(rgb, "GIF", save_all=True, append_images=frames[1:], duration=50, transparency=0),
        "tiff": _save(rgb, "TIFF", compression="tiff_lzw", exif=exif.tobytes()),
        "tiff-float": _save(Image.fromarray(np.linspace(-1, 3, 768, dtype=np.float32).reshape(24, 32), "F"), "TIFF"),
        "bmp": _save(rgb.quantize(16), "BMP"),
        "heic": _heic(rgb),
    }


SEEDS = _seeds()


class _Thumbnails(ThumbnailStore):
    """The indexer's thumbnail callback, rendering every time."""

    def get(self, content_hash: str, kind: str = "thumb") -> Path | None:
        return None


def _decode_as_the_indexer(data: bytes, thumbnails: ThumbnailStore | None = None) -> DecodedImage | ImageError:
    """``decode`` as an index run calls it; a result or the ImageError, anything else raises."""
    start = time.perf_counter()
    try:
        result: DecodedImage | ImageError = decode(data, SPEC, thumbnails.put_decoded if thumbnails else None)
    except ImageError as exc:
        assert str(exc).strip(), "an ImageError must give its reason"
        result = exc
    elapsed = time.perf_counter() - start
    assert elapsed < PER_INPUT_S, f"{len(data)} bytes took {elapsed:.1f} s"
    if isinstance(result, DecodedImage):
        assert result.pixels is not None and result.pixels.shape == (3, SPEC.height, SPEC.width)
        assert result.pixels.dtype == np.float32 and np.isfinite(result.pixels).all()
        assert result.width and result.height and result.width > 0 and result.height > 0
    return result


def _box(data: bytes, name: bytes) -> int:
    """Where a HEIF box's payload starts (after its size, type, version and flags)."""
    at = data.index(name)
    return at + 4 + 4


def test_the_seeds_decode() -> None:
    for name, data in SEEDS.items():
        assert isinstance(_decode_as_the_indexer(data), DecodedImage), name


# -- regressions: inputs the fuzzing campaign found ------------------------------------------------
def test_heic_whose_coded_size_passes_libheif_security_limit_is_an_image_error() -> None:
    """A HEIC whose ``ispe`` box claims 64 x 520093760 pixels while its clean aperture (what Pillow
    reports and checks against the decompression-bomb limit) is 32 x 24: libheif refuses it when
    decoding, and pillow-heif raises RuntimeError, which escaped ``decode``."""
    data = bytearray(SEEDS["heic"])
    at = _box(bytes(data), b"ispe")
    width, height = struct.unpack(">II", data[at:at + 8])
    assert (width, height) != (32, 24), "the encoder pads to its block size; the clean aperture crops"
    data[at + 4:at + 8] = struct.pack(">I", 0x1F000040)
    with Image.open(io.BytesIO(bytes(data))) as image:
        assert image.size == (32, 24)  # so the bomb check at open passes it
    with pytest.raises(ImageError, match="can't decode the image"):
        decode(bytes(data), SPEC)


def test_decoder_errors_pillow_documents_are_image_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's own fuzz tests accept OverflowError and NotImplementedError from a malformed file,
    beside OSError, SyntaxError, ValueError and MemoryError; they are ImageErrors here too."""
    for error in (OverflowError("Python int too large to convert to C int"), NotImplementedError("unsupported"),
                  RuntimeError("Invalid input: Unspecified")):
        def load(self: Image.Image, error: Exception = error) -> None:
            raise error

        with monkeypatch.context() as patch:
            patch.setattr("PIL.ImageFile.ImageFile.load", load)
            with pytest.raises(ImageError, match="can't decode the image"):
                decode(SEEDS["png"], SPEC)


def _exif_with_a_mistyped_tag() -> bytes:
    """Orientation 6 and a camera model whose tag id is StripOffsets' (0x0111, a LONG in Pillow's
    tables) while its value stays ASCII: what one mutated byte of the fuzzer's EXIF seed made."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS 5D"
    exif[0x0112] = 6
    raw = exif.tobytes()
    entry = struct.pack(">HH", 0x0110, 2)  # Pillow writes EXIF big-endian: tag, type ASCII
    assert raw.count(entry) == 1
    return raw.replace(entry, struct.pack(">HH", 0x0111, 2))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_an_image_with_a_mistyped_exif_tag_decodes_upright(fmt: str) -> None:
    """ImageOps.exif_transpose wrote the EXIF back without the orientation, and packing the ASCII
    value as a LONG raised struct.error, which escaped ``decode``: a good picture failed to index."""
    data = _save(_picture(), fmt, exif=_exif_with_a_mistyped_tag())
    decoded = _decode_as_the_indexer(data)
    assert isinstance(decoded, DecodedImage)
    assert (decoded.width, decoded.height) == (24, 32)  # rotated upright
    image, size = open_image(data)
    assert size == image.size == (24, 32)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_upright_picture_is_exif_transposes(orientation: int) -> None:
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(_picture(), "PNG", exif=exif.tobytes())
    image, size = open_image(data)
    with Image.open(io.BytesIO(data)) as original:
        expected = ImageOps.exif_transpose(original).convert("RGB")
    assert size == expected.size
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def _dds(fourcc: bytes) -> bytes:
    """A DirectDraw Surface header with a pixel format Pillow doesn't implement."""
    header = struct.pack("<7I", 124, 0x1007, 16, 16, 0, 0, 0) + bytes(44)  # size, flags, height, width, ...
    pixel_format = struct.pack("<2I4s5I", 32, 0x4, fourcc, 0, 0, 0, 0, 0)  # size, flags: FOURCC, fourcc
    caps = struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    return b"DDS " + header + pixel_format + caps + bytes(256)


def test_a_format_pillow_doesnt_implement_is_an_image_error() -> None:
    """Pillow's DDS reader raises NotImplementedError for pixel formats it lacks (three files of
    its own test images do); a file named on the command line, or a DDS named .png, is read."""
    with pytest.raises(ImageError, match="can't decode the image: Unimplemented pixel format"):
        decode(_dds(b"XYZW"), SPEC)


def _warning_zone_png() -> bytes:
    return _save(Image.new("RGB", (40, 40), "red"), "PNG")  # 1600 px: above a 1000 px limit, below twice it


def test_the_size_limit_holds_whatever_the_warnings_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow only warns between the limit and twice it; the warning filter that makes that an
    error is process-wide state, which another decode thread's ``catch_warnings`` exit can restore
    under this one's feet. The limit must not depend on it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(warnings, "simplefilter", lambda *args, **kwargs: None)  # the other thread won
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        with pytest.raises(ImageError, match="too large") as caught:
            open_image(_warning_zone_png())
    assert caught.value.by_settings


def test_the_size_limit_holds_in_decode_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _warning_zone_png()
    decoded: list[int] = []

    def work() -> None:
        for _ in range(150):
            try:
                open_image(data)
                decoded.append(1)
            except ImageError:
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not decoded


def test_deep_greys_cost_one_float_copy_per_pixel() -> None:
    """A 16-bit grey PNG just under the decompression-bomb limit is 200 KB on disk; converting its
    89 MP to 8 bits with a new float64 array per step grew RSS by 2.4 GB. One copy, worked in place."""
    import tracemalloc

    from blipsearch.images.decode import to_rgb

    side = 1500
    grey = Image.fromarray(np.full((side, side), 3000, np.uint16))  # 12-bit data: the scaling step runs
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        rgb = to_rgb(grey)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert rgb.getpixel((0, 0)) == (187, 187, 187)  # 3000 / 4095 * 255
    # the float64 copy, the raw bytes it is read from, the 8-bit result: 13; a copy per step: 24
    assert peak < 16 * side * side, f"{peak / side / side:.1f} bytes per pixel"


# -- the short campaign ------------------------------------------------------------------------------
_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["set", "flip", "delete", "insert", "magic", "truncate"]),
        st.floats(0, 1, allow_nan=False),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1, max_size=6,
)
_MAGIC = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00", b"\xff\xff"]


def _mutate(data: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if not out:
            break
        i = min(int(where * len(out)), len(out) - 1)
        if kind == "set":
            out[i:i + len(value)] = value
        elif kind == "flip":
            out[i] ^= 1 << (value[0] % 8)
        elif kind == "delete":
            del out[i:i + 1 + value[0] % 32]
        elif kind == "insert":
            out[i:i] = value
        elif kind == "magic":
            out[i:i + 4] = _MAGIC[value[0] % len(_MAGIC)]
        else:
            del out[max(1, i):]
    return bytes(out)


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(sorted(SEEDS)), edits=_EDITS)
def test_mutated_images_decode_or_fail_with_a_reason(tmp_path: Path, seed: str, edits: list) -> None:
    _decode_as_the_indexer(_mutate(SEEDS[seed], edits), _Thumbnails(tmp_path / "thumbnails"))


def test_an_index_run_over_mutated_files_records_every_failure(tmp_path: Path, tiny_model: Path) -> None:
    """Every file is indexed or failed with a reason; none with an unexpected error."""
    import random

    from blipsearch import Library

    rng = random.Random(7)
    folder = tmp_path / "mutated"
    folder.mkdir()
    extension = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "tiff": ".tif", "bmp": ".bmp",
                 "heic": ".heic"}
    names = sorted(SEEDS)
    for i in range(40):
        seed = rng.choice(names)
        edits = [(rng.choice(["set", "flip", "delete", "insert", "magic", "truncate"]), rng.random(),
                  rng.randbytes(rng.randint(1, 8))) for _ in range(rng.randint(1, 4))]
        (folder / f"{i:03d}{extension[seed.split('-')[0]]}").write_bytes(_mutate(SEEDS[seed], edits))
    heic = bytearray(SEEDS["heic"])
    at = _box(bytes(heic), b"ispe")
    heic[at + 4:at + 8] = struct.pack(">I", 0x1F000040)
    (folder / "ispe.heic").write_bytes(bytes(heic))
    (folder / "exif.jpg").write_bytes(_save(_picture(), "JPEG", exif=_exif_with_a_mistyped_tag()))
    (folder / "surface.png").write_bytes(_dds(b"XYZW"))
    with Library(tmp_path / "lib", model=str(tiny_model), device="cpu") as lib:
        report = lib.index([folder])
        failures = lib.failures()
    assert report.added + report.failed == 43
    assert len(failures) == report.failed
    failed = {Path(f.path).name for f in failures}
    assert {"ispe.heic", "surface.png"} <= failed and "exif.jpg" not in failed
    for failure in failures:
        assert failure.reason.strip() and not failure.reason.startswith("unexpected error"), failure
