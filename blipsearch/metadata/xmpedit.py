"""blipsearch's captions and tags written into an XMP sidecar, leaving every byte of what other tools
wrote in it as it was.

The sidecar is edited as text: it is parsed (expat, DTDs and entities refused) only to learn where
each element lies, and what changes is spliced in or cut out at those byte offsets, so other tools'
properties, namespaces, comments, quoting and indentation are all kept exactly.

What blipsearch writes, and how it knows its own:

* the caption goes to ``dc:description`` (x-default), only where the sidecar has no description or
  where the one it has is blipsearch's previous caption, recorded in ``blipsearch:Caption``: a
  description anybody else wrote (or edited since) is never replaced;
* tags go to ``lr:hierarchicalSubject`` under a ``blipsearch|`` parent ("blipsearch|beach"), which
  names them as blipsearch's, and to ``dc:subject`` as plain keywords where ``dc:subject`` does not
  have them already; the plain ones blipsearch added are recorded in ``blipsearch:Subjects``, so a
  keyword that was there before (or was added by another tool) is never taken out;
* whatever blipsearch adds that has no home yet goes into an ``rdf:Description`` of its own.

Edits describe the whole wanted state (the library's caption and tags now), so writing the same
again changes no byte; wanting no caption and no tags (``--remove``) takes out exactly what
blipsearch added, and a sidecar blipsearch made that is left holding nothing is deleted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.parsers import expat

from .xmp import DC, LR, RDF

BLIPSEARCH = "http://ns.blipsearch.org/xmp/1.0/"
TAG_PARENT = "blipsearch"
XML_NS = "http://www.w3.org/XML/1998/namespace"
PREFIXES = {RDF: "rdf", DC: "dc", LR: "lr", BLIPSEARCH: "blipsearch"}
# A new sidecar: what exiftool writes around an empty packet, less its version.
SKELETON = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="blipsearch">\n'
            b' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
            b' </rdf:RDF>\n'
            b'</x:xmpmeta>\n'
            b'<?xpacket end="w"?>\n')
KEEP = None  # a part of the sidecar (captions or tags) not to touch
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_WS = b" \t\r\n"


class XmpEditError(Exception):
    """The sidecar can't be edited without risking what it holds (it is left as it is)."""


@dataclass
class Node:
    uri: str
    local: str
    attrs: dict[str, str]
    scope: dict[str, str]  # prefix -> namespace, in scope inside the element
    start: int  # offset of "<"
    start_end: int = 0  # offset after the start tag's ">"
    end: int = 0  # offset of the end tag's "<" (start_end for an empty element)
    end_end: int = 0  # offset after the element
    text: str = ""
    children: list[Node] = field(default_factory=list)

    def is_(self, uri: str, local: str) -> bool:
        return self.uri == uri and self.local == local


def _tag_end(data: bytes, i: int) -> int:
    """The offset after the ``>`` that closes the tag starting at ``i``."""
    quote = 0
    while i < len(data):
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3E:
            return i + 1
        i += 1
    raise XmpEditError("a tag is not closed")


def parse(data: bytes) -> Node:
    """The element tree of ``data`` with each element's byte offsets."""
    parser = expat.ParserCreate(namespace_separator=" ")
    root = Node("", "", {}, {"xml": XML_NS}, 0)
    stack = [root]
    pending: dict[str, str] = {}

    def refuse(*args: object) -> None:
        raise XmpEditError("it holds a DTD or entity declarations")

    def ns(prefix: str | None, uri: str) -> None:
        pending[prefix or ""] = uri

    def start(name: str, attrs: dict[str, str]) -> None:
        uri, _, local = name.rpartition(" ")
        scope = stack[-1].scope | pending if pending else stack[-1].scope
        pending.clear()
        at = parser.CurrentByteIndex
        node = Node(uri, local, attrs, scope, at)
        node.start_end = _tag_end(data, at)
        stack[-1].children.append(node)
        stack.append(node)

    def end(name: str) -> None:
        node = stack.pop()
        if data[node.start_end - 2 : node.start_end] == b"/>":
            node.end = node.end_end = node.start_end
        else:
            node.end = parser.CurrentByteIndex
            node.end_end = _tag_end(data, node.end)

    def chars(text: str) -> None:
        stack[-1].text += text

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartNamespaceDeclHandler = ns
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XmpEditError(f"it is not well-formed XML (line {exc.lineno})") from None
    return root


def _find(node: Node, uri: str, local: str) -> Node | None:
    if node.is_(uri, local):
        return node
    for child in node.children:
        found = _find(child, uri, local)
        if found is not None:
            return found
    return None


def _line(ws: bytes) -> bytes:
    """White space as one line break (the file's: CRLF or LF) and the indentation after it."""
    if b"\n" not in ws:
        return ws
    head, _, tail = ws.rpartition(b"\n")
    return (b"\r\n" if head.endswith(b"\r") else b"\n") + tail


def _escape(text: str) -> str:
    return _NOT_XML.sub("", text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Sidecar:
    """One sidecar's bytes and the edits to make to them."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.edits: list[tuple[int, int, bytes]] = []
        self.removed: set[int] = set()  # id() of the nodes taken out

    def ws_before(self, node: Node) -> bytes:
        i = node.start
        while i > 0 and self.data[i - 1] in _WS:
            i -= 1
        return self.data[i : node.start]

    def remove(self, node: Node) -> None:
        self.edits.append((node.start - len(self.ws_before(node)), node.end_end, b""))
        self.removed.add(id(node))

    def indent(self, parent: Node) -> bytes:
        """The white space that comes before each child of ``parent`` (one more space than before
        ``parent`` when it has none)."""
        if parent.children:
            return _line(self.ws_before(parent.children[0]))
        around = _line(self.ws_before(parent))
        return around + b" " if b"\n" in around else around

    def append(self, parent: Node, pieces: Sequence[bytes]) -> None:
        """Add ``pieces`` (elements) as the last children of ``parent``."""
        if not pieces:
            return
        indent = self.indent(parent)
        added = b"".join(indent + p for p in pieces)
        if parent.end == parent.start_end and self.data[parent.start_end - 2 : parent.start_end] == b"/>":
            # <rdf:Bag/>: opened and closed around the new children
            tag = self.data[parent.start : parent.start_end - 2].rstrip(_WS)
            name = tag[1:].split(None, 1)[0]
            self.edits.append((parent.start, parent.end_end, tag + b">" + added + self.ws_before(parent)
                               + b"</" + name + b">"))
            return
        at = parent.children[-1].end_end if parent.children else parent.start_end
        if not parent.children and b"\n" in indent:
            added += indent[: -1]  # so that the end tag stays on a line of its own
            at = parent.start_end
            self.edits.append((at, parent.end, added))
            return
        self.edits.append((at, at, added))

    def result(self) -> bytes:
        edits = sorted(self.edits, key=lambda e: (e[0], e[1]))
        cuts = [(s, e) for s, e, r in edits if not r and e > s]
        kept = [e for e in edits if not any(s <= e[0] and e[1] <= t and (s, t) != (e[0], e[1])
                                            and not (e[0] == e[1] and e[0] in (s, t)) for s, t in cuts)]
        out, at = [], 0
        for start, end, replacement in kept:
            if start < at:
                raise XmpEditError("its edits overlap")  # never expected: refuse rather than damage it
            out += [self.data[at:start], replacement]
            at = end
        out.append(self.data[at:])
        return b"".join(out)


class _Names:
    """Element names for new elements inside ``parent``: its prefixes where they name the namespace,
    else a declaration on the new element."""

    def __init__(self, scope: dict[str, str]) -> None:
        self.scope = scope

    def tag(self, uri: str, local: str) -> tuple[str, str]:
        """(the qualified name, the declaration its start tag needs: "" or ' xmlns:p="..."')."""
        for prefix, bound in self.scope.items():
            if bound == uri and prefix:
                return f"{prefix}:{local}", ""
        prefix = PREFIXES.get(uri, "ns")
        return f"{prefix}:{local}", f' xmlns:{prefix}="{uri}"'


def _li(names: _Names, text: str, lang: bool = False) -> bytes:
    li, decl = names.tag(RDF, "li")
    attr = ' xml:lang="x-default"' if lang else ""
    return f"<{li}{decl}{attr}>{_escape(text)}</{li}>".encode()


def _array_property(names: _Names, uri: str, local: str, kind: str, items: Sequence[str], indent: bytes,
                    lang: bool = False) -> bytes:
    """A new property holding an rdf:Bag (Alt) of ``items``, indented below ``indent``."""
    step = b" " if b"\n" in indent else b""
    prop, decl = names.tag(uri, local)
    inner = _Names(names.scope | ({prop.split(":")[0]: uri} if decl else {}))
    array, array_decl = inner.tag(RDF, kind)
    inner = _Names(inner.scope | ({array.split(":")[0]: RDF} if array_decl else {}))
    lis = b"".join(indent + step * 2 + _li(inner, t, lang) for t in items)
    return (f"<{prop}{decl}>".encode() + indent + step + f"<{array}{array_decl}>".encode() + lis
            + indent + step + f"</{array}>".encode() + indent + f"</{prop}>".encode())


def _simple_property(names: _Names, uri: str, local: str, text: str) -> bytes:
    prop, decl = names.tag(uri, local)
    return f"<{prop}{decl}>{_escape(text)}</{prop}>".encode()


def _array(prop: Node | None) -> Node | None:
    if prop is None:
        return None
    return next((c for c in prop.children if c.uri == RDF and c.local in ("Bag", "Seq", "Alt")), None)


def _items(prop: Node | None) -> list[Node]:
    array = _array(prop)
    return [c for c in array.children if c.is_(RDF, "li")] if array is not None else []


def edit(data: bytes | None, caption: str | None = KEEP, tags: Sequence[str] | None = KEEP, *,
         captions: bool = True, tagging: bool = True) -> bytes | None:
    """The sidecar ``data`` (None: none yet) with blipsearch's part made ``caption`` and ``tags``
    (``captions=False`` / ``tagging=False`` leave that part as it is; a None caption and no tags
    take blipsearch's out). Returns the new bytes, equal to ``data`` when nothing changes, or None
    when the sidecar should not exist (blipsearch's own, left empty). Raises :class:`XmpEditError`
    when the sidecar can't be edited safely."""
    if data is None:
        data = SKELETON
    if data.startswith(b"\xef\xbb\xbf"):
        pass
    elif data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4]:
        raise XmpEditError("it is UTF-16 or UTF-32 text, which blipsearch does not write")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise XmpEditError("it is not UTF-8 text") from None
    rdf = _find(parse(data), RDF, "RDF")
    if rdf is None:
        raise XmpEditError("it holds no rdf:RDF element")
    sidecar = _Sidecar(data)
    descriptions = [d for d in rdf.children if d.is_(RDF, "Description")]
    props: dict[tuple[str, str], tuple[Node, Node]] = {}
    attr_props: set[tuple[str, str]] = set()
    for description in descriptions:
        for child in description.children:
            props.setdefault((child.uri, child.local), (child, description))
        for name in description.attrs:
            uri, _, local = name.rpartition(" ")
            attr_props.add((uri, local))
    ours = next((d for d in descriptions if any(c.uri == BLIPSEARCH for c in d.children)), None)
    new: list[bytes] = []  # properties for blipsearch's own rdf:Description
    own_names = _Names((ours.scope if ours is not None else rdf.scope)
                       | ({} if ours is not None else {PREFIXES[u]: u for u in (DC, LR, BLIPSEARCH)}))
    own_indent = (sidecar.indent(ours) if ours is not None else
                  sidecar.indent(rdf) + (b" " if b"\n" in sidecar.indent(rdf) else b""))

    def prop(uri: str, local: str) -> Node | None:
        found = props.get((uri, local))
        return found[0] if found else None

    def names_in(node: Node) -> _Names:
        return _Names(node.scope)

    # -- the caption -----------------------------------------------------------------------------------
    if captions:
        record = prop(BLIPSEARCH, "Caption")
        recorded = record.text if record is not None and not record.children else None
        description = prop(DC, "description")
        lis = _items(description)
        default = next((li for li in lis if li.attrs.get(f"{XML_NS} lang") == "x-default"), lis[0] if lis else None)
        mine = description is not None and recorded is not None and default is not None and default.text == recorded
        exists = description is not None or (DC, "description") in attr_props
        keep_record: str | None = None
        if caption is not None and not exists:
            new.append(_array_property(own_names, DC, "description", "Alt", [caption], own_indent, lang=True))
            keep_record = caption
        elif mine and default is not None:
            if caption is not None:
                if default.text != caption:
                    sidecar.edits.append((default.start_end, default.end, _escape(caption).encode()))
                keep_record = caption
            elif len(lis) == 1:
                sidecar.remove(description)  # type: ignore[arg-type]
            else:
                sidecar.remove(default)
        if keep_record is None and record is not None:
            sidecar.remove(record)
        elif keep_record is not None and record is None:
            new.append(_simple_property(own_names, BLIPSEARCH, "Caption", keep_record))
        elif keep_record is not None and record is not None and recorded != keep_record:
            sidecar.edits.append((record.start_end, record.end, _escape(keep_record).encode()))

    # -- the tags --------------------------------------------------------------------------------------
    if tagging:
        wanted = list(dict.fromkeys(t for t in (tags or ()) if t.strip()))
        record = prop(BLIPSEARCH, "Subjects")
        recorded_subjects = {li.text for li in _items(record)}

        def sync(uri: str, local: str, wanted_items: list[str], is_ours: set[str] | None) -> list[str]:
            """Make the property's items hold ``wanted_items``, taking out the ones of ours (``is_ours``,
            or those under "blipsearch|" when None) not wanted; returns the items added."""
            node = prop(uri, local)
            if node is not None and _array(node) is None:
                raise XmpEditError(f"its {local} is not a list")
            present = _items(node)
            texts = [li.text for li in present]
            seen: set[str] = set()
            drop = []
            for li in present:
                mine = li.text.startswith(TAG_PARENT + "|") if is_ours is None else li.text in is_ours
                if mine and (li.text not in wanted_items or li.text in seen):
                    drop.append(li)
                seen.add(li.text)
            add = [t for t in wanted_items if t not in texts]
            if node is None:
                if add:
                    new.append(_array_property(own_names, uri, local, "Bag", add, own_indent))
                return add
            if len(drop) == len(present) and not add:
                sidecar.remove(node)
                return add
            for li in drop:
                sidecar.remove(li)
            array = _array(node)
            assert array is not None
            sidecar.append(array, [_li(names_in(array), t) for t in add])
            return add

        added = sync(DC, "subject", wanted, recorded_subjects)
        sync(LR, "hierarchicalSubject", [f"{TAG_PARENT}|{t}" for t in wanted], None)
        flat = {li.text for li in _items(prop(DC, "subject"))}
        record_items = [t for t in wanted if t in added or (t in recorded_subjects and t in flat)]
        old_items = [li.text for li in _items(record)]
        if record is not None and not record_items:
            sidecar.remove(record)
        elif record is not None and old_items != record_items:
            before = sidecar.ws_before(record)
            sidecar.edits.append((record.start - len(before), record.end_end, before + _array_property(
                names_in(record), BLIPSEARCH, "Subjects", "Bag", record_items, _line(before))))
        elif record is None and record_items:
            new.append(_array_property(own_names, BLIPSEARCH, "Subjects", "Bag", record_items, own_indent))

    # -- where new properties go, and descriptions left empty ------------------------------------------
    if new:
        if ours is not None:
            sidecar.append(ours, new)
        else:
            about = next((d.attrs[f"{RDF} about"] for d in descriptions if f"{RDF} about" in d.attrs), "")
            tag, decl = _Names(rdf.scope).tag(RDF, "Description")
            xmlns = "".join(f' xmlns:{PREFIXES[u]}="{u}"' for u in (DC, LR, BLIPSEARCH))
            about_attr = f' {tag.split(":")[0]}:about="' if ":" in tag else ' about="'
            open_tag = (f"<{tag}{decl}{about_attr}{_escape(about).replace(chr(34), '&quot;')}\"{xmlns}>").encode()
            outer = sidecar.indent(rdf)
            sidecar.append(rdf, [open_tag + b"".join(own_indent + p for p in new) + outer + f"</{tag}>".encode()])
    elif ours is not None and all(id(c) in sidecar.removed for c in ours.children) \
            and not any(not k.startswith(RDF + " ") for k in ours.attrs):
        sidecar.remove(ours)
    result = sidecar.result()
    return None if result == SKELETON else result
