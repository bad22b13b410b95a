"""blipsearch: search photo collections by text and by image with BLIP."""

from .errors import BlipsearchError
from .library import Failure, Hit, IndexReport, Library

__version__ = "0.1.0"

__all__ = ["BlipsearchError", "Failure", "Hit", "IndexReport", "Library", "__version__"]
