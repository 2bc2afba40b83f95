"""A real S3 API on loopback for the remote-cache tests: moto's standalone server, and a relay that cuts it off.

    with S3Server() as s3:                 # `moto_server` on 127.0.0.1, a free port, one empty bucket
        s3.url("team/cache")               # s3://<bucket>/team/cache, for `dvc remote add`
        s3.endpoint_url                    # http://127.0.0.1:<port>, for `dvc remote modify ... endpointurl`
        s3.stop(); s3.start()              # down and back up on the same port (moto forgets every object)

    with CutoffRelay(s3.port, after_bytes=n) as relay:   # a TCP relay on its own port, in front of the server
        ...                                # after n bytes (either way) it drops every connection, stops listening
        relay.start()                      # listening again on the same port, with no limit

The server holds everything in memory; the relay lets a transfer die midway while the server keeps what it got.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
# moto accepts any credentials; these are fakes, distinctive enough to search for in files.
ACCESS_KEY_ID = "AKIAFAKEDVCTEST00001"
SECRET_ACCESS_KEY = "fake-secret-4f1c9e-never-in-git-0b7d2a"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class S3Server:
    """`moto_server` as a subprocess on 127.0.0.1, restartable on the same port, with one bucket created."""

    def __init__(self, bucket: str = "dvc-remote", port: int | None = None, start_timeout_s: float = 60.0):
        self.bucket = bucket
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="moto-")
        self.log_path = Path(self._log_dir.name) / "moto_server.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> S3Server:
        if self.running:
            return self
        moto_server = Path(sys.executable).parent / "moto_server"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen([str(moto_server), "-H", HOST, "-p", str(self.port)],
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_until_answering()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self) -> None:
        self.stop()
        self._log_dir.cleanup()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
                            config=Config(retries={"max_attempts": 1}, proxies={}))

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Every object's key under prefix, with its size in bytes."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def write(self, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode}:\n{self.log_text()}")
            try:
                with opener.open(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not answer within {self.start_timeout_s:.0f} s:\n"
                                       f"{self.log_text()}") from None
                time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class CutoffRelay:
    """A TCP relay on 127.0.0.1 to an upstream port that, once `after_bytes` bytes have passed (both ways), drops
    every connection and stops listening: to the client, the server died in the middle of a transfer."""

    def __init__(self, upstream_port: int, after_bytes: int | None = None, port: int | None = None):
        self.upstream_port = upstream_port
        self.after_bytes = after_bytes
        self.port = port or free_port()
        self.forwarded = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, after_bytes: int | None = None) -> CutoffRelay:
        """Listen (again) on the same port; with `after_bytes` None, relay without a limit."""
        self.stop()
        self.after_bytes, self.forwarded = after_bytes, 0
        self.cut.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in ([listener] if listener else []) + list(sockets):
            _close(sock)

    def __enter__(self) -> CutoffRelay:
        return self.start(self.after_bytes)

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.upstream_port))
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _close(client), _close(upstream)
                    return
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if self._count(len(chunk)):
                    sink.sendall(chunk[: max(0, len(chunk) - (self.forwarded - self.after_bytes))])
                    self.cut.set()
                    self.stop()
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(source), _close(sink)

    def _count(self, size: int) -> bool:
        """Add size to the bytes forwarded; True when that crosses the limit."""
        with self._lock:
            self.forwarded += size
            return self.after_bytes is not None and self.forwarded >= self.after_bytes


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
