"""Reading XMP (blipsearch.metadata.xmp): packets as digiKam, darktable, Lightroom and exiftool write
them, sidecars and embedded XMP made by exiftool itself, IPTC keywords in a JPEG, and hostile input,
which is always a warning and never an exception."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from conftest import exiftool, needs_exiftool
from PIL import Image

from blipsearch.metadata.xmp import (
    XmpFacts,
    embedded,
    find_sidecar,
    keyword_terms,
    merged,
    read_packet,
    read_sidecar,
)

DIGIKAM = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
   xmp:Rating="4"
   MicrosoftPhoto:Rating="75"
   exif:DateTimeOriginal="2021-04-11T15:47:53.123-05:00">
   <digiKam:TagsList>
    <rdf:Seq>
     <rdf:li>Places/France/Paris</rdf:li>
     <rdf:li>People/Anne</rdf:li>
    </rdf:Seq>
   </digiKam:TagsList>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Places|France|Paris</rdf:li>
     <rdf:li>People|Anne</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Paris</rdf:li>
     <rdf:li>Anne</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="fr-FR">Le pont</rdf:li>
     <rdf:li xml:lang="x-default">The bridge</rdf:li>
    </rdf:Alt>
   </dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""

DARKTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   xmp:Rating="-1"
   xmpMM:DerivedFrom="IMG_1.CR2"
   darktable:xmp_version="5"
   darktable:auto_presets_applied="1">
   <darktable:colorlabels>
    <rdf:Seq>
     <rdf:li>0</rdf:li>
    </rdf:Seq>
   </darktable:colorlabels>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>darktable|format|cr2</rdf:li>
     <rdf:li>beach</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>darktable|format|cr2</rdf:li>
     <rdf:li>beach</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1" darktable:params="0000"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00        ">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
   xmp:CreateDate="2021-04-11T15:47:53.12"
   xmp:Rating="5"
   xmp:Label="Red"
   photoshop:DateCreated="2021-04-11T15:47:53.12"
   crs:Version="15.0">
   <dc:description>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">Sunset over the &amp; bay</rdf:li>
    </rdf:Alt>
   </dc:description>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Île-de-France</rdf:li>
     <rdf:li>sunset</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Places|Île-de-France</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

EXIFTOOL_STYLE = """<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>
<x:xmpmeta xmlns:x='adobe:ns:meta/' x:xmptk='Image::ExifTool 12.57'>
<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>

 <rdf:Description rdf:about=''
  xmlns:dc='http://purl.org/dc/elements/1.1/'>
  <dc:subject>
   <rdf:Bag>
    <rdf:li>dog</rdf:li>
    <rdf:li>dog</rdf:li>
   </rdf:Bag>
  </dc:subject>
 </rdf:Description>

 <rdf:Description rdf:about=''
  xmlns:xmp='http://ns.adobe.com/xap/1.0/'>
  <xmp:Label>Green</xmp:Label>
  <xmp:Rating>2</xmp:Rating>
 </rdf:Description>
</rdf:RDF>
</x:xmpmeta>
<?xpacket end='w'?>"""


@pytest.mark.parametrize(("packet", "expected"), [
    (DIGIKAM, XmpFacts(title="The bridge", keywords=("Paris", "Anne", "Places|France|Paris", "People|Anne"),
                       rating=4, dates=(("exif:DateTimeOriginal", "2021-04-11T15:47:53.123-05:00"),))),
    (DARKTABLE, XmpFacts(keywords=("darktable|format|cr2", "beach"), rating=-1)),
    (LIGHTROOM, XmpFacts(description="Sunset over the & bay", keywords=("Île-de-France", "sunset",
                                                                         "Places|Île-de-France"),
                         rating=5, label="Red", dates=(("xmp:CreateDate", "2021-04-11T15:47:53.12"),
                                                       ("photoshop:DateCreated", "2021-04-11T15:47:53.12")))),
    (EXIFTOOL_STYLE, XmpFacts(keywords=("dog",), rating=2, label="Green")),
], ids=["digikam", "darktable", "lightroom", "exiftool"])
def test_packets_as_photo_managers_write_them(packet: str, expected: XmpFacts) -> None:
    assert read_packet(packet.encode("utf-8"), "IMG_1.jpg.xmp") == expected
    # The same packet in UTF-16 (which XMP allows) reads the same.
    assert read_packet(packet.encode("utf-16"), "IMG_1.jpg.xmp") == expected


RATED = (b"<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#' xmlns:xmp='http://ns.adobe.com/xap/1.0/'>"
         b"<rdf:Description xmp:Rating='N'/></rdf:RDF>")


@pytest.mark.parametrize(("packet", "warning"), [
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>\n<rdf:RDF>\n<oops", "IMG_1.jpg.xmp is not well-formed XML (line 2)."),
    ((b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
      b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>&lol2;</x:xmpmeta>"), "holds a DTD or entity declarations"),
    (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>', "holds a DTD or entity declarations"),
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>caf\xe9</x:xmpmeta>", "is not UTF-8 text (byte 0xe9 on line 1)."),
    (b"\xff\xfe<\x00x\x00\x00\xd8", "is not valid UTF-16 text."),
    (b"<html><body>not XMP</body></html>", "holds no XMP (no rdf:RDF element)."),
    (RATED.replace(b"N", b"4.5"), "has the rating '4.5', not a whole number from -1 to 5"),
    (RATED.replace(b"N", b"7"), "has the rating '7'"),
    # Nested 20,000 deep: read without a warning even (nothing recurses that deep), and without an error.
    (b"<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#' xmlns:dc='http://purl.org/dc/elements/1.1/'>"
     b"<rdf:Description><dc:subject>" + b"<rdf:Description><rdf:value>" * 20000 + b"x"
     + b"</rdf:value></rdf:Description>" * 20000 + b"</dc:subject></rdf:Description></rdf:RDF>", None),
], ids=["malformed", "billion-laughs", "external-entity", "latin-1", "bad-utf-16", "not-xmp", "half-star",
        "seven-stars", "deep-nesting"])
def test_hostile_packets_are_a_warning(packet: bytes, warning: str | None) -> None:
    facts = read_packet(packet, "IMG_1.jpg.xmp")
    if warning is not None:
        assert len(facts.warnings) == 1 and warning in facts.warnings[0], facts.warnings
    assert facts.rating is None and len(facts.keywords) <= 1


def test_an_oversized_or_unreadable_sidecar_is_a_warning(tmp_path: Path) -> None:
    big = tmp_path / "IMG_1.jpg.xmp"
    with open(big, "wb") as fh:
        fh.write(LIGHTROOM.encode())
        fh.truncate(50 * 2**20)  # 50 MB
    started = time.perf_counter()
    facts = read_sidecar(os.fsencode(big))
    assert facts.warnings == (("IMG_1.jpg.xmp is larger than 2048 KB, more than any photo manager writes; "
                               "it was not read."),) and facts.keywords == ()
    assert time.perf_counter() - started < 1
    assert "could not be read" in read_sidecar(os.fsencode(tmp_path / "gone.xmp")).warnings[0]
    assert "could not be read" in read_sidecar(os.fsencode(tmp_path)).warnings[0]  # a folder
    (tmp_path / "ok.xmp").write_text(LIGHTROOM, encoding="utf-8")
    assert read_sidecar(os.fsencode(tmp_path / "ok.xmp")).rating == 5


def test_sidecars_are_found_darktable_naming_first(tmp_path: Path) -> None:
    photo = os.fsencode(tmp_path / "IMG_1.jpg")
    assert find_sidecar(photo) is None
    (tmp_path / "IMG_1.XMP").write_text("x")
    found = find_sidecar(photo)
    assert found is not None and found[0] == os.fsencode(tmp_path / "IMG_1.XMP") and found[1] == 1
    (tmp_path / "IMG_1.jpg.xmp").write_text("xy")
    found = find_sidecar(photo)
    assert found is not None and found[0] == photo + b".xmp" and found[1] == 2
    assert found[2] == os.stat(photo + b".xmp").st_mtime_ns
    # From a folder walk's listing, nothing is looked up on disk.
    listing = {os.fsencode(tmp_path / "IMG_1.xmp"): (7, 8)}
    assert find_sidecar(photo, listing) == (os.fsencode(tmp_path / "IMG_1.xmp"), 7, 8)
    assert find_sidecar(photo, {}) is None
    os.mkdir(tmp_path / "IMG_2.jpg.xmp")  # a folder is no sidecar
    assert find_sidecar(os.fsencode(tmp_path / "IMG_2.jpg")) is None


def test_merged_and_keyword_terms() -> None:
    inside = XmpFacts(title="Inside", description="From the camera", keywords=("a", "b"), rating=1,
                      dates=(("xmp:CreateDate", "2020"), ("photoshop:DateCreated", "2019")), warnings=("w1",))
    beside = XmpFacts(description="Mine", keywords=("b", "c"), rating=3, label="Blue",
                      dates=(("exif:DateTimeOriginal", "2021"), ("xmp:CreateDate", "2022")), warnings=("w2",))
    assert merged(inside, beside) == XmpFacts(
        title="Inside", description="Mine", keywords=("b", "c", "a"), rating=3, label="Blue",
        dates=(("exif:DateTimeOriginal", "2021"), ("xmp:CreateDate", "2022"), ("photoshop:DateCreated", "2019")),
        warnings=("w1", "w2"))
    assert keyword_terms(["Places|Île-de-France|Paris", "  ", "Beach", "a||b", "x" * 500]) == {
        "places|ile-de-france|paris", "places", "ile-de-france", "paris", "beach", "a", "b", "a|b", "x" * 400}


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "JPEG")
    return out.getvalue()


def test_embedded_xmp_that_pillow_reads() -> None:
    packet = LIGHTROOM.encode()
    for fmt, kwargs in (("JPEG", {"xmp": packet}), ("WEBP", {"xmp": packet}), ("TIFF", {"tiffinfo": {700: packet}})):
        out = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(out, fmt, **kwargs)
        data = out.getvalue()
        assert embedded(data).keywords == ("Île-de-France", "sunset", "Places|Île-de-France"), fmt
        assert embedded(data, Image.open(io.BytesIO(data))).rating == 5, fmt

    class Heif:  # what pillow_heif's opened image holds: info["xmp"]
        def __init__(self) -> None:
            self.info = {"xmp": packet}

    assert embedded(b"", Heif()).label == "Red"  # type: ignore[arg-type]
    assert embedded(_jpeg()) == XmpFacts()
    assert embedded(b"not an image at all") == XmpFacts()
    assert embedded(b"junk" + packet + b"junk").rating == 5  # a format Pillow does not open
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "JPEG", xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><oops")
    assert embedded(out.getvalue()).warnings == ("The embedded XMP is not well-formed XML (line 1).",)


@needs_exiftool
def test_sidecars_and_files_exiftool_writes(tmp_path: Path) -> None:
    sidecar = tmp_path / "IMG_1.jpg.xmp"
    exiftool("-q", "-XMP-dc:Subject=Beach", "-XMP-dc:Subject=Café", "-XMP-lr:HierarchicalSubject=Places|Nice",
             "-XMP-dc:Title=A title", "-XMP-dc:Description=Waves", "-XMP-xmp:Rating=3", "-XMP-xmp:Label=Yellow",
             "-XMP-exif:DateTimeOriginal=2021:04:11 15:47:53.123-05:00", "-o", sidecar)
    facts = read_sidecar(os.fsencode(sidecar))
    assert facts == XmpFacts(title="A title", description="Waves", keywords=("Beach", "Café", "Places|Nice"),
                             rating=3, label="Yellow",
                             dates=(("exif:DateTimeOriginal", "2021-04-11T15:47:53.123-05:00"),))
    # IPTC keywords and caption in a JPEG (Pillow can't write IPTC), with embedded XMP beside them.
    photo = tmp_path / "IMG_2.jpg"
    photo.write_bytes(_jpeg())
    exiftool("-q", "-overwrite_original", "-codedcharacterset=utf8", "-IPTC:Keywords=Été", "-IPTC:Keywords=Sea",
             "-IPTC:Caption-Abstract=From IPTC", "-XMP-dc:Subject=Sea", "-XMP-xmp:Rating=1", photo)
    facts = embedded(photo.read_bytes())
    assert facts.keywords == ("Sea", "Été") and facts.description == "From IPTC" and facts.rating == 1
    # Embedded XMP in a PNG (iTXt) and a TIFF (tag 700), as exiftool puts it there.
    for fmt in ("PNG", "TIFF"):
        path = tmp_path / f"IMG_3.{fmt.lower()}"
        Image.new("RGB", (8, 8), "blue").save(path, fmt)
        exiftool("-q", "-overwrite_original", "-XMP-dc:Subject=Lake", "-XMP-xmp:Label=Purple", path)
        facts = embedded(path.read_bytes())
        assert (facts.keywords, facts.label) == (("Lake",), "Purple"), fmt


def test_reading_a_sidecar_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "IMG_1.jpg.xmp"
    path.write_text(DIGIKAM, encoding="utf-8")
    started = time.perf_counter()
    for _ in range(200):
        read_sidecar(os.fsencode(path))
    per = (time.perf_counter() - started) / 200
    assert per < 0.01, f"{per * 1e3:.2f} ms per sidecar"
