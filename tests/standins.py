"""Loopback stand-ins for the servers the download stage talks to: a Kaggle API and a plain HTTP file server.

Both listen on 127.0.0.1 on a free port, in a background thread, and are used as context managers:

    with FileServer() as server:
        server.serve("/songs.csv", Reply(body=data))
        url = server.url("/songs.csv")

    with KaggleStandIn(archive, username="u", key="k") as kaggle:
        env.update(kaggle.client_env())   # the real `kaggle` client now talks to the stand-in
"""

from __future__ import annotations

import base64
import email.utils
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    """One HTTP answer. `declared_length` lies about the body's size; `delay_s` stalls before the headers."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None
    delay_s: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:
        self.server.owner._dispatch(self)

    def do_POST(self) -> None:
        self.server.owner._dispatch(self)

    def log_message(self, format: str, *args) -> None:
        pass

    def send_reply(self, reply: Reply) -> None:
        if reply.delay_s and self.server.stopping.wait(reply.delay_s):
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        length = len(reply.body) if reply.declared_length is None else reply.declared_length
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(reply.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: "_StandIn") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner
        self.stopping = threading.Event()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout tests) leaves a broken pipe behind: expected


class _StandIn:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start the stand-in first"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        assert self._server is not None and self._thread is not None
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _dispatch(self, handler: _Handler) -> None:
        raise NotImplementedError


class FileServer(_StandIn):
    """Serves each path a sequence of replies, one per request, the last one repeated; 404 for unknown paths."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()

    def serve(self, path: str, *replies: Reply) -> str:
        """Route `path` to `replies` and return its full URL."""
        self._routes[path] = list(replies)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _dispatch(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path
        with self._lock:
            self.hits[path] += 1
            replies = self._routes.get(path) or [Reply(b"not found", status=404)]
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
        handler.send_reply(reply)


KAGGLE_API = "/api/v1/"
DOWNLOAD = KAGGLE_API + "datasets.DatasetApiService/DownloadDataset"
INTROSPECT = KAGGLE_API + "security.OAuthService/IntrospectToken"


class KaggleStandIn(_StandIn):
    """What the official `kaggle` client needs to download one dataset as a zip, as the Kaggle API serves it.

    The client, with KAGGLE_API_ENVIRONMENT=LOCALHOST, calls http://localhost/api/v1/...; its requests session
    honours HTTP_PROXY, so pointing the proxy at this server makes it the `localhost` the client talks to. Like the
    real API it answers the download call with a redirect to a signed storage URL, then serves the zip there. It
    accepts the legacy username/key (HTTP basic) and an access token (bearer); anything else gets 401.
    """

    def __init__(self, archive: bytes, *, username: str, key: str, token: str | None = None,
                 dataset: str = "joebeachcapital/30000-spotify-songs") -> None:
        super().__init__()
        self.archive = archive
        self.username, self.key, self.token, self.dataset = username, key, token, dataset
        self.unauthorized = 0
        self.downloads = 0

    def client_env(self) -> dict[str, str]:
        """Environment variables that send the real kaggle client here, and nowhere else."""
        proxy = self.base_url
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy}

    def _authorized(self, header: str) -> bool:
        basic = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return header == f"Basic {basic}" or (self.token is not None and header == f"Bearer {self.token}")

    def _dispatch(self, handler: _Handler) -> None:
        target = urlsplit(handler.path)
        self.hits[target.path] += 1
        if target.hostname != "localhost":
            message = f"the stand-in serves only localhost, not {target.hostname}"
            handler.send_reply(_json(502, {"code": 502, "message": message}))
        elif target.path == INTROSPECT:
            token = _request_json(handler).get("token")
            known = self.token is not None and token == self.token
            handler.send_reply(_json(200, {"active": True, "username": self.username} if known else {"active": False}))
        elif target.path == DOWNLOAD:
            handler.send_reply(self._download(handler))
        elif target.path == self._storage_path() and handler.command == "GET":
            self.downloads += 1
            handler.send_reply(Reply(self.archive, headers={
                "Content-Type": "application/zip", "Accept-Ranges": "bytes",
                "Last-Modified": email.utils.formatdate(usegmt=True)}))
        else:
            handler.send_reply(_json(404, {"code": 404, "message": "Not found"}))

    def _download(self, handler: _Handler) -> Reply:
        request = _request_json(handler)
        if not self._authorized(handler.headers.get("Authorization", "")):
            self.unauthorized += 1
            return _json(401, {"code": 401, "message": "Unauthenticated"})
        if f"{request.get('ownerSlug')}/{request.get('datasetSlug')}" != self.dataset:
            return _json(404, {"code": 404, "message": "Not found"})
        location = f"http://localhost{self._storage_path()}?X-Goog-Signature=standin"
        return Reply(status=302, headers={"Location": location})

    def _storage_path(self) -> str:
        return f"/storage/datasets/{self.dataset}/archive.zip"


def _json(status: int, payload: dict) -> Reply:
    return Reply(json.dumps(payload).encode(), status=status, headers={"Content-Type": "application/json"})


def _request_json(handler: _Handler) -> dict:
    length = int(handler.headers.get("Content-Length") or 0)
    try:
        return json.loads(handler.rfile.read(length) or b"{}")
    except ValueError:
        return {}
