"""The image formats a folder walk takes, by file extension and by name (no decoder imported)."""

from __future__ import annotations

# What a folder walk takes (a file named on the command line is taken whatever its name).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".heic", ".heif",
     ".avif", ".avifs", ".mpo", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx", ".psd"}
)
# For --help and the README: the formats above, by name.
FORMAT_NAMES = ("JPEG, PNG, WebP, GIF (first frame), TIFF, BMP, HEIC/HEIF, AVIF, MPO (first picture), "
                "JPEG 2000, PSD (the merged picture)")

# ``--format NAME``: a format's name (or any of its extensions) -> the extensions a folder walk takes for it.
FORMAT_EXTENSIONS = {
    "jpeg": (".jpg", ".jpeg", ".jpe"), "png": (".png",), "webp": (".webp",), "gif": (".gif",),
    "tiff": (".tif", ".tiff"), "bmp": (".bmp",), "heic": (".heic", ".heif"), "avif": (".avif", ".avifs"),
    "mpo": (".mpo",), "jpeg2000": (".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx"), "psd": (".psd",),
}


def format_extensions(name: str) -> tuple[str, ...] | None:
    """The extensions of the format ``name`` (``jpeg``, ``jpg``, ``HEIC``, ``.png`` ...), or ``None``."""
    key = name.strip().lower().lstrip(".")
    if key in FORMAT_EXTENSIONS:
        return FORMAT_EXTENSIONS[key]
    return next((exts for exts in FORMAT_EXTENSIONS.values() if "." + key in exts), None)
