"""The web front door: ``blipsearch serve``, a page to look at search results and an HTTP API.

:func:`create_app` builds the FastAPI app over a :class:`~blipsearch.Library`;
:func:`serve` runs it with uvicorn.
"""

from __future__ import annotations

from .app import ServeSettings, create_app
from .server import serve

__all__ = ["ServeSettings", "create_app", "serve"]
