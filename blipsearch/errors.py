"""Every error blipsearch raises on purpose.

Each carries a message written for the person running the command: what went
wrong and what to do about it. The CLI prints the message and exits non-zero;
library callers catch :class:`BlipsearchError`.
"""

from __future__ import annotations


class BlipsearchError(Exception):
    """Base class of the errors a user can cause or fix."""


class ModelUnavailableError(BlipsearchError):
    """The model's files are not on this machine and cannot be downloaded. The message names both
    the command line's option and Python's argument; ``command_line`` is the same advice in the
    command line's words only (what the command line prints)."""

    def __init__(self, message: str, *, command_line: str | None = None) -> None:
        super().__init__(message)
        self.command_line = message if command_line is None else command_line


class ModelLoadError(BlipsearchError):
    """The model's files exist but do not form a usable BLIP checkpoint."""


class ModelMismatchError(BlipsearchError):
    """The library's vectors were made by another model than the one asked for."""


class LibraryError(BlipsearchError):
    """The library (database and vector files) is missing, empty or unusable."""


class SchemaError(LibraryError):
    """The database was written by an incompatible version of blipsearch."""


class ImageError(BlipsearchError):
    """One image could not be read or decoded; indexing records it and goes on."""

    def __init__(self, message: str, *, by_settings: bool = False) -> None:
        super().__init__(message)
        self.by_settings = by_settings  # it might decode with other settings (a higher size limit, say)


class InputPathError(BlipsearchError):
    """A path given on the command line does not exist or cannot be used."""


class SettingsError(BlipsearchError):
    """A setting does not fit the model it is used with (e.g. a length beyond its positions)."""


class UnknownImageError(InputPathError):
    """No indexed image has the id asked for."""


class ImageChangedError(LibraryError):
    """An indexed file is no longer the file that was indexed (changed, replaced or gone)."""
