"""What stands between the network and a photo library: hosts, token, cross-site requests, headers.

A server that can show every photo of a folder tree must be reachable only by
the people meant to reach it:

- it binds the loopback interface unless told otherwise, and any other address
  needs an access token (one is made up and printed when none is given), which
  every request then carries: as ``Authorization: Bearer TOKEN``, or as the
  cookie that opening the printed ``/?token=TOKEN`` address sets;
- requests naming a host that is not one of the server's own names are refused,
  so a web page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) can't
  read the library through the user's browser;
- requests that change anything (every POST) are refused when they come from
  another site: a cross-origin ``Origin`` or ``Sec-Fetch-Site`` header, or a body
  of the kinds an HTML form can send;
- no CORS headers are ever sent, and every response carries a
  Content-Security-Policy that runs no inline script and loads nothing from
  elsewhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from html import escape as html_escape
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_COOKIE = "blipsearch_token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# Bodies an HTML form (or a "simple" cross-origin request) can send without asking first.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


def _bare(host: str) -> str:
    """A Host header's name without its port, lower case; IPv6 literals without brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class Guard:
    """The rules of one server: which host names it answers to, and its token (if any)."""

    names: frozenset[str]
    any_address: bool  # bound to every interface: any IP literal of this machine is a fair Host
    token: str | None

    @classmethod
    def for_binding(cls, host: str, token: str | None, extra_names: tuple[str, ...] = ()) -> Guard:
        names = set(LOOPBACK_NAMES) | {_bare(n) for n in extra_names}
        wildcard = is_wildcard(host)
        if wildcard:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        else:
            names.add(_bare(host))
        return cls(frozenset(n for n in names if n), wildcard, token)

    def host_allowed(self, header: str) -> bool:
        name = _bare(header)
        if name in self.names:
            return True
        if self.any_address:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    def token_ok(self, presented: str | None) -> bool:
        return self.token is None or (presented is not None and hmac.compare_digest(presented.encode(),
                                                                                       self.token.encode()))


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class SecurityMiddleware:
    """Pure ASGI: checks each request against the :class:`Guard` before the app sees it, and adds
    the security headers to every response."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the app has none: never let one past the checks below
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        method = scope["method"].upper()
        path = scope.get("path", "")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        opening = method == "GET" and "token" in query and not path.startswith("/api/")
        refusal = self._refusal(headers, method, opening)
        if refusal is not None:
            await _reply(send, *refusal, html=not path.startswith("/api/"))
            return
        if self.guard.token and opening:
            # Opening the printed address: keep the token as a cookie, and take it out of the address
            # (history, bookmarks, the Referer of later requests).
            if not self.guard.token_ok(query.get("token")):
                await _reply(send, 401, "Wrong access token: use the address `blipsearch serve` printed.", html=True)
                return
            rest = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
                              if k != "token"])
            cookie = f"{TOKEN_COOKIE}={self.guard.token}; Path=/; HttpOnly; SameSite=Strict"
            await _reply(send, 303, "", location=path + ("?" + rest if rest else ""), cookie=cookie)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in have]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, headers: dict[str, str], method: str, opening: bool) -> tuple[int, str] | None:
        """Why a request is refused (status, sentence), or ``None``. ``opening``: a page asked for
        with ``?token=``, checked (and turned into a cookie) by the caller."""
        if not self.guard.host_allowed(headers.get("host", "")):
            return 421, "This server does not answer to that host name (open it by its own address)."
        if self.guard.token and not opening:
            bearer = headers.get("authorization", "")
            presented = bearer[7:].strip() if bearer.lower().startswith("bearer ") else None
            presented = presented or _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
            if not self.guard.token_ok(presented):
                return 401, "This server needs its access token: open the address `blipsearch serve` printed."
        if method not in ("GET", "HEAD", "OPTIONS"):
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return 403, "Requests from other sites are refused."
            origin = headers.get("origin")
            if origin is not None:
                parts = urlsplit(origin)
                if origin == "null" or parts.netloc.lower() != headers.get("host", "").lower():
                    return 403, "Requests from other sites are refused."
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind in FORM_TYPES:
                return 415, "Send JSON (or, to search by image, the image's bytes), not a form."
        return None


async def _reply(send: Send, status: int, message: str, *, html: bool = False, location: str | None = None,
                 cookie: str | None = None) -> None:
    if html:
        body = (f"<!doctype html><meta charset=utf-8><title>blipsearch</title><p>{html_escape(message)}</p>"
                if message else "").encode()
        kind = b"text/html; charset=utf-8"
    else:
        body, kind = json.dumps({"error": message}).encode(), b"application/json"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]
    if location is not None:
        headers.append((b"location", location.encode("latin-1")))
    if cookie is not None:
        headers.append((b"set-cookie", cookie.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


