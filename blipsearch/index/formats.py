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
