"""Team sharing through a DVC remote: a real S3 API (moto's server on 127.0.0.1) and a local directory.

One pipeline run on synthetic data is shared by the module; each test copies it into its own clone A, pushes,
and checks what a teammate's fresh `git clone` + `dvc pull` gets.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import copy_project, run, tool_env
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, CutoffRelay, S3Server

pytestmark = pytest.mark.e2e

REMOTE = "team"
# Loopback only, and nothing from the machine's own AWS set-up (botocore skips config files that do not exist).
# One attempt per request in botocore (s3fs still retries): failed transfers fail in seconds, not a minute.
NO_FILE = "/nonexistent/aws"
ENV = tool_env(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", AWS_CONFIG_FILE=NO_FILE,
               AWS_SHARED_CREDENTIALS_FILE=NO_FILE, AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")
OBJECT_NAME = re.compile(r"[0-9a-f]{30}(\.dir)?")


def dvc(repo: Path, *args: str, check: bool = True):
    return run(["dvc", *args], repo, env=ENV, check=check)


@pytest.fixture(scope="module")
def pipeline(synthetic_pipeline, tmp_path_factory) -> Path:
    """The pipeline run once on synthetic data, every result committed; its outputs are in its cache (a copy of
    the pytest session's run)."""
    return copy_project(synthetic_pipeline, tmp_path_factory.mktemp("remote") / "pipeline")


@pytest.fixture(scope="module")
def s3():
    with S3Server(bucket="team-cache") as server:
        yield server


@dataclass
class Remote:
    url: str
    objects: Callable[[], dict[str, bytes]]  # every object on the remote, by its path in the cache layout
    endpoint_url: str | None = None


def s3_remote(server: S3Server, prefix: str) -> Remote:
    def objects() -> dict[str, bytes]:
        return {key.removeprefix(f"{prefix}/"): server.read(key) for key in server.objects(f"{prefix}/")}

    return Remote(server.url(prefix), objects, server.endpoint_url)


def local_remote(root: Path) -> Remote:
    def objects() -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    return Remote(str(root), objects)


def clone_a(pipeline: Path, dest: Path, remote: Remote, *, credentials: bool) -> Path:
    """A copy of the pipeline's repository, workspace and cache, that commits `remote` as its default."""
    shutil.copytree(pipeline, dest, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    dvc(dest, "remote", "add", "-d", REMOTE, remote.url)
    dvc(dest, "remote", "modify", REMOTE, "verify", "true")
    if remote.endpoint_url:
        dvc(dest, "remote", "modify", REMOTE, "endpointurl", remote.endpoint_url)
    run(["git", "commit", "-q", "-m", "Share through the team remote", ".dvc/config"], dest)
    if credentials:
        set_credentials(dest)
    return dest


def clone_b(a: Path, dest: Path, *, credentials: bool, endpoint_url: str | None = None) -> Path:
    """A teammate's fresh clone: no cache, no outputs."""
    run(["git", "clone", "-q", str(a), str(dest)], a.parent)
    if credentials:
        set_credentials(dest)
    if endpoint_url:
        dvc(dest, "remote", "modify", "--local", REMOTE, "endpointurl", endpoint_url)
    return dest


def set_credentials(repo: Path) -> None:
    dvc(repo, "remote", "modify", "--local", REMOTE, "access_key_id", ACCESS_KEY_ID)
    dvc(repo, "remote", "modify", "--local", REMOTE, "secret_access_key", SECRET_ACCESS_KEY)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cache_path(md5_hash: str) -> str:
    return f"files/md5/{md5_hash[:2]}/{md5_hash[2:]}"


def named_md5(path: str) -> str:
    """The md5 an object's path in the cache layout names: files/md5/ab/cdef... -> abcdef..."""
    *_, prefix, rest = path.split("/")
    return prefix + rest.removesuffix(".dir")


def stage_outs(repo: Path) -> list[tuple[str, str, bool]]:
    """(path, md5, cached) of every output dvc.lock records, with `cached` from dvc.yaml's `cache: false`."""
    uncached = set()
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("outs", []):
            if isinstance(out, dict):
                uncached |= {path for path, flags in out.items() if flags and flags.get("cache") is False}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return [(out["path"], out["md5"], out["path"] not in uncached)
            for stage in lock.values() for out in stage.get("outs", [])]


def manifest(repo: Path, dir_md5: str) -> dict[str, str]:
    return {entry["relpath"]: entry["md5"]
            for entry in json.loads((repo / ".dvc" / "cache" / cache_path(dir_md5)).read_bytes())}


def cached_files(repo: Path) -> dict[str, str]:
    """Every file of every cached output (what a pull brings), by workspace path, with the md5 dvc.lock records."""
    files = {}
    for path, digest, cached in stage_outs(repo):
        if cached and digest.endswith(".dir"):
            files |= {f"{path}/{rel}": file_md5 for rel, file_md5 in manifest(repo, digest).items()}
        elif cached:
            files[path] = digest
    return files


def expected_objects(repo: Path) -> set[str]:
    """The cache objects of every cached output, directory listings included: what `dvc push` must upload."""
    objects = set()
    for path, digest, cached in stage_outs(repo):
        if cached:
            objects.add(cache_path(digest))
            if digest.endswith(".dir"):
                objects |= {cache_path(file_md5) for file_md5 in manifest(repo, digest).values()}
    return objects


def shared_files(repo: Path) -> list[str]:
    """What a teammate gets: the files Git tracks and the files of every cached output."""
    tracked = filter(None, run(["git", "ls-files", "-z"], repo).stdout.split("\0"))
    return sorted({*tracked, *cached_files(repo)})


def snapshot(repo: Path, files: list[str]) -> dict[str, str | None]:
    return {rel: hashlib.sha256((repo / rel).read_bytes()).hexdigest() if (repo / rel).is_file() else None
            for rel in files}


def assert_up_to_date_and_identical(a: Path, b: Path) -> None:
    assert "Data and pipelines are up to date." in dvc(b, "status").stdout
    repro = dvc(b, "repro").stdout
    stages = yaml.safe_load((a / "dvc.yaml").read_text())["stages"]
    assert "Running stage" not in repro, repro
    assert all(f"Stage '{name}' didn't change" in repro for name in stages), repro
    assert "Data and pipelines are up to date." in repro
    files = shared_files(a)
    assert snapshot(b, files) == snapshot(a, files)
    assert run(["git", "status", "--porcelain"], b).stdout == ""


def assert_no_corrupt_output(repo: Path, expected: dict[str, str]) -> list[str]:
    """Every pulled file in the workspace has the hash dvc.lock records, nothing else sits in an output folder,
    and every object in the cache matches its name; returns the output files that are missing."""
    for rel, digest in expected.items():
        if (repo / rel).is_file():
            assert md5((repo / rel).read_bytes()) == digest, f"{rel} is in the workspace with the wrong content"
    for path, digest, cached in stage_outs(repo):
        if cached and digest.endswith(".dir") and (repo / path).is_dir():
            present = {p.relative_to(repo).as_posix() for p in (repo / path).rglob("*") if p.is_file()}
            assert present <= expected.keys(), f"unexpected files in {path}: {sorted(present - expected.keys())}"
    cache = repo / ".dvc" / "cache"
    for obj in (p for p in cache.glob("files/md5/*/*") if OBJECT_NAME.fullmatch(p.name)):
        assert md5(obj.read_bytes()) == named_md5(obj.as_posix()), f"{obj} in the cache has the wrong content"
    return sorted(rel for rel in expected if not (repo / rel).is_file())


def assert_remote_holds(remote: Remote, a: Path) -> dict[str, bytes]:
    objects = remote.objects()
    assert set(objects) == expected_objects(a)
    assert all(md5(body) == named_md5(name) for name, body in objects.items())
    return objects


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_teammate_pulls_every_output_and_repro_runs_nothing(pipeline, tmp_path, request, kind):
    if kind == "s3":
        remote = s3_remote(request.getfixturevalue("s3"), "roundtrip")
    else:
        remote = local_remote(tmp_path / "shared" / "dvc-cache")
    credentials = kind == "s3"
    a = clone_a(pipeline, tmp_path / "a", remote, credentials=credentials)

    push = dvc(a, "push")
    objects = assert_remote_holds(remote, a)
    assert cache_path(cached_files(a)["data/raw/spotify_songs.csv"]) in objects, "the raw data must be pushed"
    assert f"Cache and remote '{REMOTE}' are in sync." in dvc(a, "status", "--cloud").stdout

    b = clone_b(a, tmp_path / "b", credentials=credentials)
    assert not (b / "data" / "raw" / "spotify_songs.csv").exists()
    pull = dvc(b, "pull")
    assert_up_to_date_and_identical(a, b)

    if credentials:
        assert SECRET_ACCESS_KEY in (a / ".dvc" / "config.local").read_text(), "the test must look for the key"
        for repo in (a, b):
            run(["git", "check-ignore", "-q", ".dvc/config.local"], repo)
            assert_secret_absent(repo)
        assert all(SECRET_ACCESS_KEY.encode() not in body for body in objects.values())
        assert SECRET_ACCESS_KEY not in push.stdout + push.stderr + pull.stdout + pull.stderr


def assert_secret_absent(repo: Path) -> None:
    secret = SECRET_ACCESS_KEY.encode()
    assert secret not in run(["git", "log", "-p", "--all"], repo).stdout.encode()
    workspace = [p for p in repo.rglob("*") if p.is_file() and not {".git", ".dvc"} & set(p.relative_to(repo).parts)]
    for path in [repo / ".dvc" / "config", *workspace]:  # Git-tracked files, dvc.lock and every output among them
        assert secret not in path.read_bytes(), f"{path.relative_to(repo)} holds the secret key"
    for obj in (p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()):
        assert secret not in obj.read_bytes(), f"the DVC cache object {obj} holds the secret key"


def test_interrupted_push_fails_and_a_retry_completes(pipeline, tmp_path):
    with S3Server(bucket="interrupted") as server, CutoffRelay(server.port) as relay:
        remote = s3_remote(server, "cache")
        remote.endpoint_url = relay.endpoint_url  # DVC talks to the server through the relay
        a = clone_a(pipeline, tmp_path / "a", remote, credentials=True)
        expected = expected_objects(a)

        server.stop()
        relay.stop()  # nothing listens where DVC connects
        down = dvc(a, "push", check=False)
        assert down.returncode != 0, down.stdout
        assert "ERROR" in down.stderr and "Traceback" not in down.stderr

        server.start()  # same port, empty bucket
        total = sum((a / ".dvc" / "cache" / obj).stat().st_size for obj in expected)
        relay.start(after_bytes=total)  # the connection dies before the last object is through
        midway = dvc(a, "push", "--jobs", "1", check=False)
        assert midway.returncode != 0, midway.stdout
        assert relay.cut.is_set()
        landed = remote.objects()
        assert 0 < len(landed) < len(expected), "the push must be cut off midway"
        assert all(md5(body) == named_md5(name) for name, body in landed.items()), "a partial object landed"

        relay.start()  # the server is back
        assert f"Cache and remote '{REMOTE}' are in sync." not in dvc(a, "status", "--cloud").stdout
        retry = dvc(a, "push")
        assert re.search(rf"\b{len(expected) - len(landed)} files? pushed", retry.stdout), "only what is missing"
        assert_remote_holds(remote, a)
        assert f"Cache and remote '{REMOTE}' are in sync." in dvc(a, "status", "--cloud").stdout

        b = clone_b(a, tmp_path / "b", credentials=True)
        dvc(b, "pull")
        assert_up_to_date_and_identical(a, b)


def test_a_pull_never_leaves_a_corrupt_file(pipeline, tmp_path, s3):
    remote = s3_remote(s3, "corruptible")
    a = clone_a(pipeline, tmp_path / "a", remote, credentials=True)
    dvc(a, "push")
    expected = cached_files(a)

    # Objects altered on the remote: the raw data, and one file inside a directory output.
    raw = cache_path(expected["data/raw/spotify_songs.csv"])
    split_file = cache_path(expected["data/split/train.parquet"])
    originals = {key: s3.read(f"corruptible/{key}") for key in (raw, split_file)}
    for key, body in originals.items():
        s3.write(f"corruptible/{key}", body[:100] + bytes([body[100] ^ 0xFF]) + body[101:])
    b = clone_b(a, tmp_path / "b", credentials=True)
    corrupt = dvc(b, "pull", check=False)
    assert corrupt.returncode != 0, corrupt.stdout
    missing = assert_no_corrupt_output(b, expected)
    assert {"data/raw/spotify_songs.csv", "data/split/train.parquet"} <= set(missing)
    for key, body in originals.items():
        s3.write(f"corruptible/{key}", body)
    dvc(b, "pull")
    assert_up_to_date_and_identical(a, b)

    # The server gone in the middle of a download.
    with CutoffRelay(s3.port) as relay:
        c = clone_b(a, tmp_path / "c", credentials=True, endpoint_url=relay.endpoint_url)
        total = sum(len(body) for body in remote.objects().values())
        relay.start(after_bytes=total // 2)
        cut = dvc(c, "pull", check=False)
        assert cut.returncode != 0, cut.stdout
        assert relay.cut.is_set()
        assert assert_no_corrupt_output(c, expected), "the pull must be cut off before every file is in"
        relay.start()
        dvc(c, "pull")
        assert_up_to_date_and_identical(a, c)
