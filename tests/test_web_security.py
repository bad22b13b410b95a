"""What a server exposing a photo library refuses: other hosts, missing tokens, traversal, bombs,
cross-site requests; and what it never sends: CORS headers, inline script, files it did not index."""

from __future__ import annotations

import http.client
import io
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from conftest import draw_image

from blipsearch import Library
from blipsearch.web import ServeSettings
from blipsearch.web.server import address, prepare

SECRET = "TOP-SECRET-5b0c9e1d"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def lib(library_dir: Path, tiny_model: Path, photos: Path, secret: Path) -> Library:
    (photos / "garden" / "link-out.png").symlink_to(secret)  # an "image" that is a link out of the roots
    library = Library(library_dir, model=str(tiny_model), device="cpu")
    library.index([photos])
    yield library
    library.close()


class Raw:
    """HTTP requests sent exactly as written (no client-side normalisation of the path)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self, method: str, target: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            if body is not None and "Content-Length" not in sent and "Transfer-Encoding" not in sent:
                sent["Content-Length"] = str(len(body))
            for key, value in sent.items():
                conn.putheader(key, value)
            conn.endheaders()
            if body is not None:
                if sent.get("Transfer-Encoding") == "chunked":
                    for start in range(0, len(body), 65536):
                        part = body[start : start + 65536]
                        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
                    conn.send(b"0\r\n\r\n")
                else:
                    conn.send(body)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@pytest.fixture
def server(lib: Library, live_server) -> Raw:  # type: ignore[no-untyped-def]
    return Raw(live_server(lib, ServeSettings(warm=False, max_upload_bytes=200_000,
                                              max_upload_pixels=2_000_000)).port)


def _payloads(secret: Path) -> list[str]:
    s = str(secret)
    return [
        "../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%252f..%252f..%252fetc%252fpasswd", "%252e%252e%252fetc%252fpasswd", "/etc/passwd", "%2fetc%2fpasswd",
        "....//....//....//etc/passwd", "..\\..\\..\\etc\\passwd", "..%5c..%5c..%5cetc%5cpasswd",
        "%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd", "%e2%80%a4%e2%80%a4/etc/passwd",
        "\uff0e\uff0e/\uff0e\uff0e/etc/passwd", "..;/..;/etc/passwd", "%00", "1%00", "1%00.png", "1\x00/../x",
        s, "../.." + s, quote(s, safe=""), quote(quote(s, safe=""), safe=""), "file://" + s, "~/.ssh/id_rsa",
        "~root/.bashrc", "$HOME/.bashrc", "`cat /etc/passwd`", "|cat /etc/passwd", "1;cat /etc/passwd",
        "/proc/self/environ", "C:\\Windows\\win.ini", "\\\\server\\share\\x", "..", ".", "%2e", "%2e%2e",
        "-1", "0x1f", "1e3", "99999999999999999999999", "1 OR 1=1", "1' OR '1'='1", "\"><script>alert(1)</script>",
        str(secret.parent / ".." / "outside" / "secret.txt"), os.fspath(secret.parent),
    ]


def _target(path: str) -> str:
    """A payload as a request target: as typed where it is a valid one, percent-encoded otherwise."""
    if re.search(r"[\x00-\x20\x7f-\uffff`\"<>\\|]", path):
        return quote(path, safe="/%.~")
    return path


def test_no_parameter_reaches_a_file_outside_the_index(server: Raw, lib: Library, secret: Path) -> None:
    payloads = _payloads(secret)
    assert len(payloads) >= 30
    image_routes = ["/api/images/{}", "/api/images/{}/thumbnail", "/api/images/{}/preview",
                    "/api/images/{}/original", "/api/images/{}/similar", "/api/images/{}/lookup",
                    "/api/images/{}/explain?q=a+dog", "/static/{}", "/docs/assets/{}", "/{}"]
    some_id = lib.search("a dog", k=1, rerank_hits=False)[0].id
    query_routes = [("/api/search", {"q": "a dog", "no_rerank": "1"}, ["q", "folder", "tag", "after", "before", "k",
                                                                       "offset", "rerank_depth"]),
                    ("/api/images", {}, ["folder", "tag", "after", "before", "k", "offset"]),
                    (f"/api/images/{some_id}/thumbnail", {}, ["v"]),
                    (f"/api/images/{some_id}/similar", {}, ["folder", "tag", "k"]),
                    (f"/api/images/{some_id}/lookup", {}, ["source", "k"]),
                    ("/", {}, ["q", "like", "folder", "after", "before", "tag", "image"])]
    checked = 0
    for payload in payloads:
        for route in image_routes:
            status, _, body = server("GET", route.format(_target(payload)))
            assert SECRET.encode() not in body and b"root:x:0:0" not in body, (route, payload)
            assert status in (400, 404, 405, 409, 421, 422), (route, payload, status, body[:200])
            checked += 1
        for route, base, names in query_routes:
            for name in names:
                status, headers, body = server("GET", route + "?" + urlencode({**base, name: payload}))
                assert SECRET.encode() not in body and b"root:x:0:0" not in body, (route, name, payload)
                assert status < 500, (route, name, payload, status, body[:300])
                if headers.get("content-type", "").startswith("text/html"):  # reflected, never unescaped
                    assert b"<script>alert(1)</script>" not in body, (route, name)
                checked += 1
    assert checked > 30 * 30


def test_links_out_of_the_roots_are_never_served(server: Raw, lib: Library, photos: Path, secret: Path) -> None:
    # The link that pretended to be a photo was refused when indexing (not an image): it has no id.
    assert str(photos / "garden" / "link-out.png") in [f.path for f in lib.failures()]
    # An indexed photo replaced by a link to another file is not the file that was indexed.
    victim = photos / "holiday" / "img02.png"
    row = lib.db.image_by_path(os.fsencode(victim))
    assert row is not None
    victim.unlink()
    victim.symlink_to(secret)
    for kind in ("original", "preview"):  # the preview was never made: it would be made from the file
        status, _, body = server("GET", f"/api/images/{row.id}/{kind}")
        assert status == 409 and SECRET.encode() not in body
    status, _, body = server("POST", f"/api/images/{row.id}/ask", b'{"question": "what is it?"}',
                             {"Content-Type": "application/json"})
    assert status == 409 and SECRET.encode() not in body


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header promising width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_uploads_are_capped_and_never_stored(server: Raw, library_dir: Path, lib: Library) -> None:
    def snapshot() -> dict[str, int]:
        return {str(p.relative_to(library_dir)): p.stat().st_size for p in library_dir.rglob("*")
                if p.is_file() and not p.name.endswith(("-wal", "-shm"))}

    before, counts = snapshot(), lib.status()
    small = io.BytesIO()
    draw_image(4).save(small, "PNG")
    status, _, body = server("POST", "/api/search/image?k=3", small.getvalue(), {"Content-Type": "image/png"})
    assert status == 200 and b'"hits"' in body
    big = os.urandom(300_000)
    for headers in ({"Content-Type": "image/jpeg"}, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"}):
        status, _, body = server("POST", "/api/search/image", big, headers)
        assert status == 413 and b"larger than this server takes" in body, headers
    status, _, body = server("POST", "/api/search/image", _bomb_png(60_000, 60_000), {"Content-Type": "image/png"})
    assert status == 413 and b"megapixels" in body
    status, _, body = server("POST", "/api/search/image", b"GIF89a not really", {"Content-Type": "image/gif"})
    assert status == 422
    status, _, _ = server("POST", "/api/search/image", b"", {"Content-Type": "image/png"})
    assert status == 400
    assert snapshot() == before and lib.status() == counts  # nothing written: no file, no row


def test_no_cors_and_a_strict_content_security_policy(server: Raw) -> None:
    _, headers, _ = server("OPTIONS", "/api/search?q=x", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert not any(k.startswith("access-control-") for k in headers)
    status, headers, _ = server("GET", "/api/status", headers={"Origin": "http://evil.example"})
    assert status == 200 and not any(k.startswith("access-control-") for k in headers)
    status, headers, page = server("GET", "/?q=a+dog")
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy and headers["x-content-type-options"] == "nosniff"
    html = page.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.DOTALL)
    assert scripts and all('src="/' in attrs and not inner.strip() for attrs, inner in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html) and not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"(src|href)=\"(?!/|#)", html), "everything the page loads comes from this server"
    for name in ("app.js", "style.css", "docs.js"):
        asset = (Path(__file__).parent.parent / "blipsearch" / "web" / "static" / name).read_text()
        assert "http://" not in asset and "https://" not in asset


def test_cross_site_requests_that_change_things_are_refused(server: Raw, lib: Library) -> None:
    some_id = lib.search("a dog", k=1, rerank_hits=False)[0].id
    route = f"/api/images/{some_id}/ask"
    body = b'{"question": "what color is it?"}'
    refused = [
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
        {"Content-Type": "application/json", "Origin": "null"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "text/plain"},
    ]
    for headers in refused:
        status, _, answer = server("POST", route, body, headers)
        assert status in (403, 415), (headers, status)
        assert b"answer" not in answer
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "image/png", "Origin": "http://evil.example"}):
        status, _, _ = server("POST", "/api/search/image", b"x", headers)
        assert status in (403, 415)


def test_other_host_names_are_refused(server: Raw) -> None:
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil.example", ""):
        status, _, body = server("GET", "/api/status", headers={"Host": host})
        assert status in (400, 421), host
        assert b'"images"' not in body
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", f"[::1]:{server.port}"):
        status, _, _ = server("GET", "/api/status", headers={"Host": host})
        assert status == 200, host


def test_a_token_guards_every_request(lib: Library, live_server) -> None:  # type: ignore[no-untyped-def]
    raw = Raw(live_server(lib, ServeSettings(warm=False, token="s3cret-token")).port)
    for target in ("/api/status", "/", "/static/app.js", "/api/status?token=s3cret-token", "/docs"):
        status, _, body = raw("GET", target)
        assert status == 401 and b"access token" in body, target
    assert raw("GET", "/api/status", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert raw("GET", "/api/status", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
    assert raw("GET", "/api/status", headers={"Cookie": "blipsearch_token=s3cret-token"})[0] == 200
    status, headers, _ = raw("GET", "/?token=s3cret-token&q=a+dog")
    assert status == 303 and headers["location"] == "/?q=a+dog"  # the token leaves the address
    cookie = headers["set-cookie"]
    assert "blipsearch_token=s3cret-token" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert raw("GET", "/?token=guess")[0] == 401


def test_other_addresses_get_a_token_made_up() -> None:
    assert prepare(ServeSettings(host="127.0.0.1")) == (ServeSettings(host="127.0.0.1"), False)
    assert prepare(ServeSettings(host="::1"))[1] is False
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        settings, made_up = prepare(ServeSettings(host=host))
        assert made_up and settings.token and len(settings.token) >= 20
        assert address(settings, 8000).endswith(f":8000/?token={settings.token}")
    given, made_up = prepare(ServeSettings(host="0.0.0.0", token="mine"))
    assert given.token == "mine" and not made_up


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_command_prints_its_address_and_stops_gracefully(library_dir: Path, lib: Library, stop: int) -> None:
    lib.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "blipsearch.cli", "serve", "--library", str(library_dir), "--port", "0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        raw = Raw(int(match.group(1)))
        status, _, body = raw("GET", "/api/status")
        assert status == 200 and b'"images":12' in body
        process.send_signal(stop)  # a service manager's stop, or Ctrl-C
        assert process.wait(timeout=30) == 0
        assert "Stopped." in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_command_refusals(library_dir: Path, lib: Library) -> None:
    import socket

    lib.close()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        for args, words in [(["--library", "/no/such/library"], "There is no library at /no/such/library"),
                            (["--library", str(library_dir), "--port", str(taken.getsockname()[1])],
                             "is already in use")]:
            done = subprocess.run([sys.executable, "-m", "blipsearch.cli", "serve", *args],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 1 and words in done.stderr and "Traceback" not in done.stderr
    finally:
        taken.close()
