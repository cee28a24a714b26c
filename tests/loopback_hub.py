"""A loopback stand-in for the Hugging Face hub and a release server, for tests that download weights.

Two threaded HTTP servers on 127.0.0.1, each on a free port, playing what ``huggingface_hub`` 2.4 expects of the hub
(read in its ``file_download.py``, ``utils/_http.py`` and ``hf_api.py``):

- the *hub*: ``HEAD``/``GET {endpoint}/{repo}/resolve/{revision}/{file}``. A large (Git LFS) file answers ``302`` to
  the *CDN* with ``X-Repo-Commit``, ``X-Linked-Etag`` (its SHA-256), ``X-Linked-Size`` and ``Location``: the CDN is
  another origin (another port), so ``huggingface_hub`` does not follow the redirect for metadata, as with the real
  hub's CDN. A small (git) file answers ``200`` with its git blob hash as ``ETag``. ``GET /api/models/{repo}/revision/
  {revision}`` and ``…/tree/{revision}`` list the files for ``snapshot_download``. Unknown repos or files: ``404``
  with ``X-Error-Code`` as the hub sends it.
- the *CDN*: ``GET`` of blobs and release files with ``Range: bytes=N-`` (``206``/``416``); a path may be marked to
  be cut after half its bytes the first time (``cut_once``) or to be served with one byte changed (``corrupt``).

Every request is recorded in ``requests`` as ``(server, method, path, range)``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "c0ffee" + "0" * 34
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/?]+)")


@dataclass
class RepoFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class LoopbackHub:
    repos: dict[str, dict[str, RepoFile]] = field(default_factory=dict)
    cdn_files: dict[str, bytes] = field(default_factory=dict)
    cdn_names: dict[str, str] = field(default_factory=dict)  # what Content-Disposition names (the bar shows it)
    cut_once: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def add_file(self, repo_id: str, filename: str, data: bytes, lfs: bool | None = None) -> str:
        """Put ``data`` into ``repo_id`` as ``filename`` (LFS when over 1 kB unless told); return its CDN path."""
        entry = RepoFile(data, len(data) > 1024 if lfs is None else lfs)
        self.repos.setdefault(repo_id, {})[filename] = entry
        if entry.lfs:
            self.cdn_files[f"/blobs/{entry.sha256}"] = data
            self.cdn_names[f"/blobs/{entry.sha256}"] = filename.rsplit("/", 1)[-1]
            return f"/blobs/{entry.sha256}"
        return f"/{repo_id}/resolve/{COMMIT}/{filename}"

    def add_release(self, path: str, data: bytes) -> str:
        """A file of the release server at ``path``; return its URL."""
        self.cdn_files[path] = data
        return self.cdn + path

    @property
    def endpoint(self) -> str:
        return _url(self._servers[0])

    @property
    def cdn(self) -> str:
        return _url(self._servers[1])

    def start(self) -> LoopbackHub:
        for handler in (_hub_handler(self), _cdn_handler(self)):
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def seen(self, server: str, method: str | None = None) -> list[tuple[str, str, str, str | None]]:
        return [r for r in self.requests if r[0] == server and (method is None or r[1] == method)]


def _url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    hub: LoopbackHub
    name = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def _record(self) -> None:
        self.hub.requests.append((self.name, self.command, self.path, self.headers.get("Range")))

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _hub_handler(hub: LoopbackHub) -> type[_Handler]:
    class Hub(_Handler):
        name = "hub"

        def do_HEAD(self):  # noqa: N802 (http.server's naming)
            self._resolve(head=True)

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/api/"):
                self._api()
            else:
                self._resolve(head=False)

        def _resolve(self, head: bool) -> None:
            self.hub = hub
            self._record()
            match = RESOLVE.match(self.path.split("?", 1)[0])
            files = hub.repos.get(match["repo"]) if match else None
            if files is None:
                return self._reply(404, {"X-Error-Code": "RepoNotFound"}, b"repo not found", head)
            entry = files.get(match["file"])
            if entry is None:
                return self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"", head)
            if entry.lfs:
                headers = {
                    "Location": f"{hub.cdn}/blobs/{entry.sha256}",
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{entry.git_oid}"',
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(len(entry.data)),
                }
                return self._reply(302, headers, b"", head)
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{entry.git_oid}"'}
            self._reply(200, headers, entry.data, head)

        def _api(self) -> None:
            self.hub = hub
            self._record()
            match = API.match(self.path)
            files = hub.repos.get(match["repo"]) if match else None
            if files is None:
                return self._reply(404, {"X-Error-Code": "RepoNotFound"}, b"{}")
            if match["kind"] == "revision":
                info = {"id": match["repo"], "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
            else:
                info = [_tree_entry(name, entry) for name, entry in files.items()]
            self._reply(200, {"Content-Type": "application/json"}, json.dumps(info).encode())

    return Hub


def _tree_entry(name: str, entry: RepoFile) -> dict:
    record = {"type": "file", "path": name, "size": len(entry.data), "oid": entry.git_oid}
    if entry.lfs:
        record["lfs"] = {"oid": entry.sha256, "size": len(entry.data), "pointerSize": 134}
    return record


def _cdn_handler(hub: LoopbackHub) -> type[_Handler]:
    class Cdn(_Handler):
        name = "cdn"

        def do_GET(self):  # noqa: N802
            self.hub = hub
            self._record()
            path = self.path.split("?", 1)[0]
            data = hub.cdn_files.get(path)
            if data is None:
                return self._reply(404, {}, b"not found")
            if path in hub.corrupt:
                data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]
            start = _range_start(self.headers.get("Range"))
            if start >= len(data) and start > 0:
                return self._reply(416, {"Content-Range": f"bytes */{len(data)}"})
            body = data[start:]
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if path in hub.cdn_names:
                headers["Content-Disposition"] = f'inline; filename="{hub.cdn_names[path]}";'
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if path in hub.cut_once:
                hub.cut_once.discard(path)
                return self._cut(206 if start else 200, headers, body)
            self._reply(206 if start else 200, headers, body)

        def _cut(self, status: int, headers: dict[str, str], body: bytes) -> None:
            """Announce the whole body, send half of it, and drop the connection."""
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    return Cdn


def _range_start(header: str | None) -> int:
    if not header:
        return 0
    match = re.fullmatch(r"bytes=(\d+)-", header.strip())
    return int(match[1]) if match else 0


def _loopback(host) -> bool:
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return str(host) == "localhost"


def refuse_non_loopback(monkeypatch) -> list[str]:
    """Make name resolution and socket connections refuse every host but loopback (``OSError``), for the rest of the
    test; return the list of hosts refused, which grows as code tries them."""
    resolve, connect = socket.getaddrinfo, socket.socket.connect
    refused: list[str] = []

    def guarded_getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if not _loopback(name):
            refused.append(str(name))
            raise OSError(f"test guard: {name} is not the loopback address")
        return resolve(host, *args, **kwargs)

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            refused.append(str(address[0]))
            raise OSError(f"test guard: {address[0]} is not the loopback address")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return refused
