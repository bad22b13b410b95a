"""blipsearch: search photo collections by text and by image with BLIP."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import BlipsearchError

if TYPE_CHECKING:
    from .library import Failure, Hit, IndexReport, Library, TextEntry

__version__ = "0.1.0"

__all__ = ["BlipsearchError", "Failure", "Hit", "IndexReport", "Library", "TextEntry", "__version__"]

# The library (SQLAlchemy, FAISS) loads on first use, so that importing a
# part that does not need it (``blipsearch.shapes``, say) does not pay for it.
_LAZY = {"Failure", "Hit", "IndexReport", "Library", "TextEntry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(".library", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
