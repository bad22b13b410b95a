"""XMP as photo managers write it: in a sidecar beside the photo (darktable, digiKam and immich name it
``IMG_1.jpg.xmp``, Lightroom ``IMG_1.xmp``) or inside the file (JPEG, PNG, WebP, TIFF, HEIF), with the
IPTC keywords and caption older tools put in JPEG and TIFF files.

What is read: the title and description (``dc:title``, ``dc:description``: the x-default language,
else the first), keywords (``dc:subject``, IPTC Keywords, ``lr:hierarchicalSubject`` "A|B|C" and
digiKam's ``TagsList`` "A/B/C", as "A|B|C"), the rating (``xmp:Rating``, -1 for rejected to 5 stars),
the colour label (``xmp:Label``) and the raw capture dates (:data:`DATE_FIELDS`).

Nothing here raises on what a file holds: malformed XML, a DTD or entities (refused, so neither
"billion laughs" nor external entities do anything), an oversized sidecar or bytes that are not
UTF-8 (or UTF-16/32 with a byte-order mark) each become one sentence in ``warnings``.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from .folding import fold

if TYPE_CHECKING:
    from PIL import Image

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
XMP = "http://ns.adobe.com/xap/1.0/"
LR = "http://ns.adobe.com/lightroom/1.0/"
DIGIKAM = "http://www.digikam.org/ns/1.0/"
EXIF = "http://ns.adobe.com/exif/1.0/"
PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# Capture dates, best first: (name reported, namespace, property). xmp:DateCreated is no XMP Basic
# property, but some tools write it; it comes last.
DATE_FIELDS = (
    ("exif:DateTimeOriginal", EXIF, "DateTimeOriginal"),
    ("xmp:CreateDate", XMP, "CreateDate"),
    ("photoshop:DateCreated", PHOTOSHOP, "DateCreated"),
    ("xmp:DateCreated", XMP, "DateCreated"),
)
# Sidecars are a few kilobytes (darktable's edit history makes some tens); a larger one is skipped.
MAX_SIDECAR_BYTES = 2 * 1024 * 1024
# Packets embedded in a file: JPEG's APP1 holds at most 64 KB, but TIFF and PNG have no such limit.
MAX_PACKET_BYTES = 16 * 1024 * 1024
MAX_TERM = 400  # the keywords table's term column
# Sidecar names, best first, for a photo "IMG_1.jpg": "IMG_1.jpg.xmp" then "IMG_1.xmp".
SIDECAR_SUFFIXES = (b".xmp", b".XMP", b".Xmp")


@dataclass(frozen=True)
class XmpFacts:
    """What a photo's XMP (and IPTC) says; every field unset when nothing says it."""

    title: str | None = None
    description: str | None = None
    keywords: tuple[str, ...] = ()  # as written, hierarchies joined by "|", de-duplicated, order kept
    rating: int | None = None  # -1 (rejected) .. 5
    label: str | None = None
    dates: tuple[tuple[str, str], ...] = ()  # (field, raw value), in DATE_FIELDS' order
    warnings: tuple[str, ...] = field(default=())


EMPTY = XmpFacts()


def _warned(message: str) -> XmpFacts:
    if message.startswith("the "):  # "the embedded XMP ..." starts a sentence
        message = "T" + message[1:]
    return XmpFacts(warnings=(message,))


def _decoded(packet: bytes, source: str) -> bytes | str | XmpFacts:
    """The packet as the XML parser takes it: UTF-8 bytes as they are, UTF-16/32 decoded (expat
    reads only some of those itself), anything else a warning."""
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
                       (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if packet.startswith(bom):
            try:
                return packet[len(bom):].decode(codec).rstrip("\x00 \t\r\n")
            except UnicodeDecodeError:
                return _warned(f"{source} is not valid {codec.upper()[:6]} text.")
    if packet[:1] == b"\x00" or packet[1:2] == b"\x00":  # UTF-16 without a byte-order mark
        codec = "utf-16-be" if packet[:1] == b"\x00" else "utf-16-le"
        try:
            return packet[: len(packet) // 2 * 2].decode(codec).rstrip("\x00 \t\r\n")
        except UnicodeDecodeError:
            return _warned(f"{source} is neither UTF-8 nor UTF-16 text.")
    packet = packet.rstrip(b"\x00 \t\r\n")  # an embedded packet's padding
    try:
        packet.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = packet.count(b"\n", 0, exc.start) + 1
        return _warned(f"{source} is not UTF-8 text (byte 0x{packet[exc.start]:02x} on line {line}).")
    return packet


def _parse(packet: bytes | str, source: str) -> Element | XmpFacts:
    try:
        if isinstance(packet, str):
            # The declaration may name the encoding the text was decoded from; the parser reads text.
            packet = packet.removeprefix("\ufeff")
            if packet.startswith("<?xml"):
                end = packet.find("?>")
                packet = packet[end + 2:] if end >= 0 else packet
        return fromstring(packet, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        return _warned(f"{source} is not well-formed XML" + (f" (line {line})." if line else "."))
    except DefusedXmlException:
        return _warned(f"{source} holds a DTD or entity declarations, which XMP never needs; it was not read.")
    except (ValueError, RecursionError, MemoryError):  # text the parser refuses outright, or nested too deep
        return _warned(f"{source} could not be read as XML.")


def _descriptions(root: Element) -> list[Element]:
    """The top-level rdf:Description elements of every rdf:RDF in the packet."""
    tag = f"{{{RDF}}}RDF"
    rdfs = [root] if root.tag == tag else list(root.iter(tag))
    return [d for r in rdfs for d in r if d.tag == f"{{{RDF}}}Description"]


def _text(element: Element) -> str | None:
    """A simple value: the element's text, or its rdf:value (a qualified value), or rdf:resource."""
    for attr in (f"{{{RDF}}}resource", f"{{{RDF}}}value"):
        if attr in element.attrib:
            return element.attrib[attr]
    for child in element:
        if child.tag == f"{{{RDF}}}value":
            return child.text or ""
        if child.tag == f"{{{RDF}}}Description":
            return _text(child)
    return element.text


def _values(element: Element) -> list[tuple[str | None, str]]:
    """(language, text) of a property: the items of its rdf:Bag, Seq or Alt, or its one value."""
    for child in element:
        if child.tag in (f"{{{RDF}}}Bag", f"{{{RDF}}}Seq", f"{{{RDF}}}Alt"):
            found = []
            for li in child:
                if li.tag == f"{{{RDF}}}li":
                    text = _text(li)
                    if text is not None:
                        found.append((li.attrib.get(XML_LANG), text))
            return found
    text = _text(element)
    return [(element.attrib.get(XML_LANG), text)] if text is not None and text.strip() else []


def _properties(descriptions: list[Element]) -> dict[str, list[list[tuple[str | None, str]]]]:
    """{"{ns}name": [values of each time it appears]}, attributes and elements alike."""
    found: dict[str, list[list[tuple[str | None, str]]]] = {}
    for description in descriptions:
        for name, value in description.attrib.items():
            if not name.startswith(f"{{{RDF}}}") and name != XML_LANG:
                found.setdefault(name, []).append([(None, value)])
        for child in description:
            found.setdefault(child.tag, []).append(_values(child))
    return found


def _one_text(props: dict[str, list[list[tuple[str | None, str]]]], key: str) -> str | None:
    for values in props.get(key, []):
        chosen = next((t for lang, t in values if lang == "x-default"), values[0][1] if values else None)
        if chosen is not None and chosen.strip():
            return chosen.strip()
    return None


def _list(props: dict[str, list[list[tuple[str | None, str]]]], key: str) -> list[str]:
    return [t for values in props.get(key, []) for _, t in values]


def _unique(keywords: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k.strip() for k in keywords if k.strip()))


def _rating(raw: str | None, source: str) -> tuple[int | None, tuple[str, ...]]:
    if raw is None:
        return None, ()
    try:
        number = float(raw.strip())
    except ValueError:
        number = float("nan")
    if number.is_integer() and -1 <= number <= 5:
        return int(number), ()
    shown = raw.strip()[:40]
    return None, (f"{source} has the rating {shown!r}, not a whole number from -1 to 5; it was left out.",)


def read_packet(packet: bytes, source: str) -> XmpFacts:
    """What the XMP ``packet`` says; ``source`` names it in warnings ("the embedded XMP",
    "IMG_1.jpg.xmp"). Never raises."""
    try:
        return _read_packet(packet, source)
    except Exception as exc:  # noqa: BLE001 - a packet shaped like nothing above: a warning, never a lost photo
        return _warned(f"{source} could not be read ({type(exc).__name__}).")


def _read_packet(packet: bytes, source: str) -> XmpFacts:
    if len(packet) > MAX_PACKET_BYTES:
        return _warned(f"{source} is larger than {MAX_PACKET_BYTES // 2**20} MB; it was not read.")
    decoded = _decoded(packet, source)
    if isinstance(decoded, XmpFacts):
        return decoded
    if not decoded.strip():
        return EMPTY
    root = _parse(decoded, source)
    if isinstance(root, XmpFacts):
        return root
    descriptions = _descriptions(root)
    if not descriptions:
        return EMPTY if root.tag.endswith("}xmpmeta") or root.tag == f"{{{RDF}}}RDF" else \
            _warned(f"{source} holds no XMP (no rdf:RDF element).")
    props = _properties(descriptions)
    keywords = _list(props, f"{{{DC}}}subject") + _list(props, f"{{{LR}}}hierarchicalSubject")
    keywords += [k.replace("/", "|") for k in _list(props, f"{{{DIGIKAM}}}TagsList")]
    rating, warnings = _rating(_one_text(props, f"{{{XMP}}}Rating"), source)
    dates = tuple((name, value) for name, ns, prop in DATE_FIELDS
                  if (value := _one_text(props, f"{{{ns}}}{prop}")) is not None)
    return XmpFacts(title=_one_text(props, f"{{{DC}}}title"), description=_one_text(props, f"{{{DC}}}description"),
                    keywords=_unique(keywords), rating=rating, label=_one_text(props, f"{{{XMP}}}Label"),
                    dates=dates, warnings=warnings)


# -- in the file ---------------------------------------------------------------------------------------


def _iptc_text(raw: bytes, utf8: bool) -> str:
    if utf8:
        return raw.decode("utf-8", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # IPTC before UTF-8 was declared: mostly Windows-1252
        return raw.decode("cp1252", "replace")


def _iptc(image: Any) -> XmpFacts:
    """IPTC-IIM's keywords (2:25), caption (2:120) and object name (2:05) of a JPEG or TIFF."""
    from PIL import IptcImagePlugin

    info = IptcImagePlugin.getiptcinfo(image)
    if not info:
        return EMPTY

    def values(key: tuple[int, int]) -> list[bytes]:
        value = info.get(key)
        return [] if value is None else value if isinstance(value, list) else [value]

    utf8 = any(v.startswith(b"\x1b%G") for v in values((1, 90)))
    texts = {key: [_iptc_text(v, utf8).strip() for v in values(key)] for key in ((2, 25), (2, 120), (2, 5))}
    return XmpFacts(title=next(iter(texts[(2, 5)]), None) or None,
                    description=next(iter(texts[(2, 120)]), None) or None, keywords=_unique(texts[(2, 25)]))


def _packet_in(data: bytes) -> bytes | None:
    """An XMP packet found in bytes no image reader opened: the first x:xmpmeta element."""
    start = data.find(b"<x:xmpmeta")
    end = data.find(b"</x:xmpmeta>", start) if start >= 0 else -1
    return data[start : end + len(b"</x:xmpmeta>")] if end >= 0 else None


def embedded(data: bytes, image: Image.Image | None = None) -> XmpFacts:
    """What the XMP and IPTC inside the image file ``data`` say (JPEG APP1, PNG iTXt, WebP, TIFF tag
    700, HEIF through pillow_heif); ``image`` is the opened (not necessarily loaded) PIL image of
    ``data`` when the caller has one. XMP wins over IPTC where both say a thing. Never raises."""
    try:
        if image is None:
            from PIL import Image as PILImage

            try:
                image = PILImage.open(io.BytesIO(data))
            except Exception:  # noqa: BLE001 - no image Pillow reads: look for a packet itself
                packet = _packet_in(data)
                return read_packet(packet, "the embedded XMP") if packet else EMPTY
        xmp = image.info.get("xmp")
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8", "surrogatepass")
        facts = read_packet(bytes(xmp), "the embedded XMP") if isinstance(xmp, (bytes, bytearray)) and xmp else EMPTY
        try:
            iptc = _iptc(image)
        except Exception:  # noqa: BLE001 - damaged IPTC must never fail an image
            iptc = _warned("The embedded IPTC data is damaged; it was not read.")
        return merged(iptc, facts)
    except Exception as exc:  # noqa: BLE001 - metadata must never fail an image
        return _warned(f"The embedded XMP could not be read ({type(exc).__name__}).")


# -- sidecars ------------------------------------------------------------------------------------------


def sidecar_candidates(path: bytes) -> list[bytes]:
    """Where a sidecar of the photo ``path`` may be, best first: "IMG_1.jpg.xmp" (darktable,
    digiKam, immich) in any case of its extension, then "IMG_1.xmp" (Lightroom)."""
    stem, ext = os.path.splitext(path)
    found = [path + s for s in SIDECAR_SUFFIXES]
    if ext:
        found += [stem + s for s in SIDECAR_SUFFIXES]
    return found


def find_sidecar(path: bytes, listing: Mapping[bytes, tuple[int, int]] | None = None) -> tuple[bytes, int, int] | None:
    """The sidecar of the photo ``path`` as (its path, size, mtime_ns), or None. ``listing`` is
    {path: (size, mtime_ns)} of the .xmp files a folder walk saw (then nothing is looked up on disk);
    without it the candidates are stat'ed."""
    for candidate in sidecar_candidates(path):
        if listing is not None:
            if candidate in listing:
                size, mtime_ns = listing[candidate]
                return candidate, size, mtime_ns
            continue
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            return candidate, st.st_size, st.st_mtime_ns
    return None


def display_name(path: bytes) -> str:
    """A sidecar's file name as warnings show it."""
    return os.fsdecode(os.path.basename(path)).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_sidecar(path: bytes, max_bytes: int = MAX_SIDECAR_BYTES) -> XmpFacts:
    """What the sidecar at ``path`` says; one larger than ``max_bytes`` is skipped with a warning.
    Never raises."""
    name = display_name(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        return _warned(f"{name} could not be read ({exc.strerror or type(exc).__name__}).")
    except Exception as exc:  # noqa: BLE001 - a path the system refuses (a NUL byte, say)
        return _warned(f"{name} could not be read ({type(exc).__name__}).")
    if len(data) > max_bytes:
        return _warned(f"{name} is larger than {max_bytes // 1024} KB, more than any photo manager writes; "
                       "it was not read.")
    return read_packet(data, name)


def merged(embedded: XmpFacts, sidecar: XmpFacts) -> XmpFacts:
    """The sidecar's facts over the file's: each field the sidecar sets wins, keywords are united
    (the sidecar's first), dates are each field's from the sidecar, else the file's, in priority
    order, and the warnings of both are kept."""
    dates = dict(embedded.dates) | dict(sidecar.dates)
    order = [name for name, _, _ in DATE_FIELDS]
    return replace(
        embedded,
        title=sidecar.title if sidecar.title is not None else embedded.title,
        description=sidecar.description if sidecar.description is not None else embedded.description,
        keywords=_unique(sidecar.keywords + embedded.keywords),
        rating=sidecar.rating if sidecar.rating is not None else embedded.rating,
        label=sidecar.label if sidecar.label is not None else embedded.label,
        dates=tuple(sorted(dates.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))),
        warnings=embedded.warnings + sidecar.warnings,
    )


def keyword_terms(keywords: Iterable[str]) -> set[str]:
    """The folded terms keyword filters match: each keyword whole, each level of a hierarchical one,
    and its whole path with folded levels ("Places|France|Paris": "places|france|paris", "places",
    "france", "paris"); empty ones dropped, each cut to 400 characters."""
    terms: set[str] = set()
    for keyword in keywords:
        levels = [fold(level) for level in keyword.split("|")]
        levels = [level for level in levels if level]
        terms.update(levels)
        if levels:
            terms.add("|".join(levels))
    return {term[:MAX_TERM] for term in terms if term}
