"""Text as keyword and place filters compare it: without case and accents ("Île-de-France" and
"ile-de-france" are one), spaces collapsed."""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """``text`` case-folded, without combining marks, its runs of white space made one space."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(unicodedata.normalize("NFC", bare).split())
