"""Who may use ``cxr serve``'s API: API keys, the listening-address rule, and the page's security headers.

Keys come from ``CXR_API_KEY`` (one key) and from ``--api-key-file`` (one key per line, one per client; blank lines
and ``#`` comments ignored). With keys, every ``/api/…`` request needs ``Authorization: Bearer KEY``: anything else is
answered 401 with ``WWW-Authenticate: Bearer`` before the request body is read. The comparison is constant-time
(:func:`hmac.compare_digest`) against every key, matched or not. ``/``, ``/static``, ``/docs``, ``/healthz``,
``/readyz`` and ``/metrics`` stay open: they carry no patient data. Listening beyond loopback without a key is
refused unless the operator says ``--insecure``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cxr.errors import CxrError

KEY_ENV, KEY_FILE_ENV = "CXR_API_KEY", "CXR_API_KEY_FILE"
MIN_KEY_LENGTH = 16
PROTECTED_PREFIX = "/api/"
CLIENT_SCOPE_KEY = "cxr.client"
"""Where the middleware leaves the number (1-based, in key order) of the key that matched; never the key."""


def _checked(key: str, where: str) -> str:
    if len(key) < MIN_KEY_LENGTH:
        raise CxrError(
            f"{where}: an API key must have at least {MIN_KEY_LENGTH} characters (got {len(key)}); make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if any(c.isspace() for c in key) or not key.isprintable() or not key.isascii():
        raise CxrError(f"{where}: an API key must be printable ASCII without spaces")
    return key


def read_key_file(path: str | Path) -> list[str]:
    """The keys in ``path``: one per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CxrError(f"{path}: cannot read the API key file ({getattr(error, 'strerror', None) or error})") from None
    keys = [
        _checked(line.strip(), f"{path}, line {number}")
        for number, line in enumerate(lines, 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not keys:
        raise CxrError(f"{path}: the API key file holds no key (one per line; '#' starts a comment)")
    return keys


def api_keys(key: str | None = None, key_file: str | Path | None = None) -> tuple[str, ...]:
    """Every key from ``key`` (``CXR_API_KEY``'s value) and ``key_file``, in that order, without duplicates."""
    keys: list[str] = []
    if key is not None and key.strip():
        keys.append(_checked(key.strip(), KEY_ENV))
    if key_file is not None and str(key_file):
        keys.extend(read_key_file(key_file))
    return tuple(dict.fromkeys(keys))


def keys_from_environment(environ: dict | None = None) -> tuple[str, ...]:
    environ = os.environ if environ is None else environ
    return api_keys(environ.get(KEY_ENV), environ.get(KEY_FILE_ENV) or None)


def matching_key(presented: str, keys: Sequence[str]) -> int | None:
    """The 1-based number of the key equal to ``presented``, or ``None``; compares with every key, in constant time."""
    candidate = presented.encode("utf-8", "surrogateescape")
    found = None
    for number, key in enumerate(keys, 1):
        if hmac.compare_digest(candidate, key.encode("ascii")) and found is None:
            found = number
    return found


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class ApiKeyAuth:
    """ASGI middleware: ``/api/…`` requests need ``Authorization: Bearer KEY`` with one of ``keys``, else 401."""

    def __init__(self, app, keys: Sequence[str]):
        self.app, self.keys = app, tuple(keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        token = bearer_token(scope.get("headers") or [])
        number = matching_key(token, self.keys) if token is not None else None
        if number is None:
            message = "an API key is required: send 'Authorization: Bearer KEY'"
            if token is not None:
                message = "the API key was not accepted"
            body = json.dumps({"detail": message}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="cxr"'),
            ]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope[CLIENT_SCOPE_KEY] = number
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1``; anything else (``0.0.0.0``, a name, an interface) is not."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(host: str, keys: Sequence[str], insecure: bool) -> str | None:
    """Refuse (``CxrError``) to listen beyond loopback without an API key unless ``insecure``; return a warning for
    the log when ``insecure`` lets it through, else ``None``."""
    if keys or is_loopback(host):
        return None
    if not insecure:
        raise CxrError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could upload radiographs; "
            f"set {KEY_ENV} or --api-key-file, listen on 127.0.0.1, or pass --insecure"
        )
    return f"listening on {host} without an API key (--insecure): anyone who can reach it can use the API"


CSP = b"default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
PAGE_HEADERS = [
    (b"content-security-policy", CSP),
    (b"x-frame-options", b"DENY"),
]
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware: ``nosniff`` and no referrer everywhere; API answers are never cached (they describe a
    patient's image); the page and its assets get a content security policy that allows only their own origin."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        extra = list(COMMON_HEADERS)
        if path.startswith(PROTECTED_PREFIX):
            extra.append((b"cache-control", b"no-store"))
        elif path == "/" or path.startswith("/static/"):
            extra.extend(PAGE_HEADERS)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers.extend((name, value) for name, value in extra if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
