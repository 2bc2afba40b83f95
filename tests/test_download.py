"""The download stage, every channel for real: the official kaggle client against a loopback Kaggle, HTTP against a
loopback file server, local zips and CSVs, synthetic songs; the pin, the bad-data corpus, offline runs, secrets."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import os
import pty
import shutil
import socket
import struct
import subprocess
import sys
import termios
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.params import parse_params
from pipeline.synthetic import synthetic_songs
from spotify_genre.songs.schema import COLUMN_NAMES
from pipeline import sources
from stages import download
from tests.conftest import (REAL_CSV_SHA256, ROOT, default_params, make_project, needs_real_data, real_zip, run,
                            tool_env, with_overrides)
from tests.standins import FileServer, KaggleStandIn, Reply

BAD = ROOT / "tests" / "data" / "bad"
RAW = Path("data/raw/spotify_songs.csv")
DATASET = "joebeachcapital/30000-spotify-songs"
# Fake credentials, unique enough that finding one anywhere can only mean it leaked.
USERNAME = "standin-user-7c1e"
KEY = "standin-key-4f0b9d2a61e8"
TOKEN = "standin-token-93e5aa10c2"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2023, 12, 24, 6, 8, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def songs_csv() -> bytes:
    """Valid songs with CRLF line ends: any re-serialisation would change the bytes, and so the hash."""
    return synthetic_songs(240, seed=11).to_csv(index=False, lineterminator="\r\n").encode()


@pytest.fixture(scope="module")
def songs_zip(songs_csv) -> bytes:
    """The shape of the Kaggle download: one spotify_songs.csv in a zip."""
    return zip_of({"spotify_songs.csv": songs_csv})


def stage_dir(tmp_path: Path, **data: object) -> Path:
    """A folder to run the stage in: params.yaml with `data:` overrides, and an empty home for the kaggle client."""
    folder = tmp_path / "run"
    (folder / "home").mkdir(parents=True)
    params = with_overrides(default_params(), {f"data.{key}": value for key, value in data.items()})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def _isolated(name: str) -> bool:
    return name.startswith("KAGGLE_") or name.lower().endswith("_proxy") or name == "XDG_CONFIG_HOME"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """tool_env() without proxies or Kaggle settings from this machine, with a throwaway HOME."""
    env = {name: value for name, value in tool_env().items() if not _isolated(name)}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    return env


def run_stage(folder: Path, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    options = {"capture_output": True, "text": True, "timeout": 120, **kwargs}
    return subprocess.run([sys.executable, "-m", "stages.download"], cwd=folder, env=env, **options)


@pytest.fixture
def in_process(monkeypatch, capsys):
    """Run the stage's main() in this process, in `folder`, with only the given Kaggle or proxy settings."""

    def call(folder: Path, **env: str) -> tuple[int, str, str]:
        monkeypatch.chdir(folder)
        for name in [name for name in os.environ if _isolated(name)]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("HOME", str(folder / "home"))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = download.main([])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def assert_failed_cleanly(folder: Path, code: int, stderr: str, *expected: str) -> str:
    """A non-zero exit, one line on stderr saying `expected`, no traceback and nothing in data/raw."""
    lines = stderr.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for text in expected:
        assert text in lines[0]
    raw = folder / RAW.parent
    assert not (folder / RAW).exists()
    assert not raw.exists() or not any(raw.iterdir()), "a temporary file was left behind"
    return lines[0]


# --- kaggle ----------------------------------------------------------------------------------------------------


def kaggle_credentials(style: str, home: Path) -> dict[str, str]:
    """Configure the fake credentials the way a user would; return the environment variables it takes."""
    if style == "kaggle.json":
        config = home / ".kaggle" / "kaggle.json"
        config.parent.mkdir()
        config.write_text(f'{{"username": "{USERNAME}", "key": "{KEY}"}}')
        config.chmod(0o600)
        return {}
    if style == "KAGGLE_API_TOKEN":
        return {"KAGGLE_API_TOKEN": TOKEN}
    return {"KAGGLE_USERNAME": USERNAME, "KAGGLE_KEY": KEY}


@pytest.mark.slow
@pytest.mark.parametrize("style", ["KAGGLE_USERNAME/KAGGLE_KEY", "KAGGLE_API_TOKEN", "kaggle.json"])
def test_kaggle_channel_downloads_through_the_official_client(tmp_path, songs_csv, songs_zip, style):
    folder = stage_dir(tmp_path, source="kaggle", sha256=sha256(songs_csv))
    credentials = kaggle_credentials(style, folder / "home")
    with KaggleStandIn(songs_zip, username=USERNAME, key=KEY, token=TOKEN) as kaggle:
        result = run_stage(folder, clean_env(folder / "home", **kaggle.client_env(), **credentials))
    assert result.returncode == 0, result.stderr
    assert (folder / RAW).read_bytes() == songs_csv
    assert kaggle.downloads == 1 and kaggle.unauthorized == 0
    assert f"downloading {DATASET} from Kaggle" in result.stdout
    assert KEY not in result.stdout + result.stderr and TOKEN not in result.stdout + result.stderr


@pytest.mark.slow
def test_kaggle_refusing_the_credentials_is_one_clear_line_without_them(tmp_path, songs_csv, songs_zip):
    folder = stage_dir(tmp_path, source="kaggle", sha256=sha256(songs_csv))
    wrong_key = "standin-wrong-key-55d1e0"
    with KaggleStandIn(songs_zip, username=USERNAME, key=KEY) as kaggle:
        env = clean_env(folder / "home", **kaggle.client_env(), KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=wrong_key)
        result = run_stage(folder, env)
    assert_failed_cleanly(folder, result.returncode, result.stderr, "Kaggle refused the credentials", "HTTP 401")
    assert kaggle.unauthorized == 1 and kaggle.downloads == 0
    assert wrong_key not in result.stdout + result.stderr


@pytest.mark.slow
def test_kaggle_unknown_dataset_names_the_param(tmp_path, songs_zip):
    folder = stage_dir(tmp_path, source="kaggle", kaggle_dataset="someone/no-such-songs")
    with KaggleStandIn(songs_zip, username=USERNAME, key=KEY) as kaggle:
        env = clean_env(folder / "home", **kaggle.client_env(), KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=KEY)
        result = run_stage(folder, env)
    assert_failed_cleanly(folder, result.returncode, result.stderr, "someone/no-such-songs", "data.kaggle_dataset")


def test_kaggle_channel_without_credentials_says_how_to_configure_them(tmp_path, in_process):
    folder = stage_dir(tmp_path, source="kaggle")
    code, _, err = in_process(folder)
    assert_failed_cleanly(folder, code, err, "no Kaggle credentials", "KAGGLE_USERNAME", "KAGGLE_API_TOKEN")


@pytest.mark.slow
def test_loading_the_kaggle_client_neither_authenticates_nor_prints(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = "from pipeline import sources; sources.kaggle_api_class(); print('loaded')"
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(home), capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "loaded\n", "")


def test_messages_are_redacted_of_every_configured_credential(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    kaggle_credentials("kaggle.json", home)
    env = {"KAGGLE_USERNAME": "env-user-0a9f", "KAGGLE_KEY": "env-key-31c7d", "KAGGLE_API_TOKEN": TOKEN}
    logins = [f"{USERNAME}:{KEY}", "env-user-0a9f:env-key-31c7d"]
    secrets = [KEY, USERNAME, TOKEN, "env-user-0a9f", "env-key-31c7d"]
    secrets += [base64.b64encode(login.encode()).decode() for login in logins]
    message = sources.redact("client said: " + " | ".join(secrets), sources.kaggle_secrets(env, home))
    assert message.startswith("client said: ***")
    assert not [secret for secret in secrets if secret in message]


@pytest.mark.e2e
def test_kaggle_credentials_reach_no_output_log_lock_cache_or_experiment(tmp_path, songs_csv, songs_zip):
    project = make_project(tmp_path / "project", {"data.source": "kaggle", "data.sha256": sha256(songs_csv)})
    home = tmp_path / "home"
    home.mkdir()
    with KaggleStandIn(songs_zip, username=USERNAME, key=KEY) as kaggle:
        env = clean_env(home, **kaggle.client_env(), KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=KEY)
        results = [run(["dvc", "repro", "download"], project, env=env),
                   run(["dvc", "exp", "run", "--force", "download"], project, env=env)]
    assert kaggle.downloads == 2
    assert (project / RAW).read_bytes() == songs_csv
    assert run(["git", "for-each-ref", "refs/exps"], project).stdout.strip(), "no experiment was recorded"
    basic_auth = base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()
    needles = [USERNAME, KEY, basic_auth]
    printed = "".join(result.stdout + result.stderr for result in results)
    git_objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=project,
                                 capture_output=True, check=True).stdout
    files = [path for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()]
    assert any(path.parts[-3:] == ("data", "raw", "spotify_songs.csv") for path in files)
    assert any(".dvc" in path.parts and "cache" in path.parts for path in files)
    for needle in needles:
        assert needle not in printed
        assert needle.encode() not in git_objects
        leaked = [path for path in files if needle.encode() in path.read_bytes()]
        assert not leaked, f"{needle!r} written to {leaked}"


# --- url -------------------------------------------------------------------------------------------------------


def test_url_channel_downloads_the_exact_bytes_without_a_bar_off_a_terminal(tmp_path, in_process, songs_csv):
    with FileServer() as server:
        url = server.serve("/spotify_songs.csv", Reply(songs_csv))
        folder = stage_dir(tmp_path, source="url", url=url, sha256=sha256(songs_csv))
        code, out, err = in_process(folder)
    assert (code, err) == (0, "")
    assert (folder / RAW).read_bytes() == songs_csv
    assert server.hits["/spotify_songs.csv"] == 1
    assert f"240 songs, sha256 {sha256(songs_csv)}" in out


def test_url_channel_retries_a_server_error_then_succeeds(tmp_path, in_process, songs_csv):
    with FileServer() as server:
        url = server.serve("/spotify_songs.csv", Reply(b"busy", status=503), Reply(songs_csv))
        folder = stage_dir(tmp_path, source="url", url=url, sha256=sha256(songs_csv), retries=1)
        code, _, err = in_process(folder)
    assert code == 0, err
    assert (folder / RAW).read_bytes() == songs_csv
    assert server.hits["/spotify_songs.csv"] == 2


def _altered(data: bytes) -> bytes:
    """The same length, one digit changed, still valid songs: only the pin can tell."""
    position = data.index(b",0.", len(data) // 2) + 3
    return data[:position] + bytes([ord("0") + (data[position] - ord("0") + 1) % 10]) + data[position + 1:]


@pytest.mark.parametrize("case, reply, expected, hits", [
    ("truncated", lambda csv: Reply(csv[: len(csv) // 2]), ["does not match the pin data.sha256"], 1),
    ("altered", lambda csv: Reply(_altered(csv)), ["does not match the pin data.sha256"], 1),
    ("connection dropped", lambda csv: Reply(csv[:1000], declared_length=len(csv)),
     ["connection broken after 1,000 of", "after 2 attempts"], 2),
    ("not found", None, ["HTTP 404", "check data.url"], 1),
    ("timeout", lambda csv: Reply(csv, delay_s=10), ["timed out", "after 2 attempts"], 2),
    ("too large", lambda csv: Reply(b"x", declared_length=600 * 2**20), ["over the 512.0 MiB limit"], 1),
])
def test_url_channel_failures(tmp_path, in_process, songs_csv, case, reply, expected, hits):
    with FileServer() as server:
        url = server.serve("/spotify_songs.csv", reply(songs_csv)) if reply else server.url("/spotify_songs.csv")
        folder = stage_dir(tmp_path, source="url", url=url, sha256=sha256(songs_csv), timeout_s=0.5, retries=1)
        started = time.monotonic()
        code, _, err = in_process(folder)
        elapsed = time.monotonic() - started
    assert_failed_cleanly(folder, code, err, *expected)
    assert server.hits["/spotify_songs.csv"] == hits
    assert elapsed < 8  # timeouts of 0.5 s and one backoff of 1 s, not the server's 10 s stall


@pytest.mark.slow
def test_url_channel_shows_a_progress_bar_on_a_terminal(tmp_path, songs_csv):
    with FileServer() as server:
        url = server.serve("/spotify_songs.csv", Reply(songs_csv))
        folder = stage_dir(tmp_path, source="url", url=url, sha256=sha256(songs_csv))
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
        process = subprocess.Popen([sys.executable, "-m", "stages.download"], cwd=folder,
                                   env=clean_env(folder / "home"), stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the stage has closed its end
            while chunk := os.read(controller, 65536):
                shown += chunk
        os.close(controller)
        assert process.wait(timeout=60) == 0
    assert b"spotify_songs.csv:" in shown and b"%|" in shown


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_host_fails_at_once_without_retrying(tmp_path, in_process, monkeypatch):
    backoffs: list[float] = []
    monkeypatch.setattr(sources, "time", SimpleNamespace(sleep=backoffs.append))
    folder = stage_dir(tmp_path, source="url", url=f"http://127.0.0.1:{free_port()}/spotify_songs.csv", retries=3)
    code, _, err = in_process(folder)
    assert_failed_cleanly(folder, code, err, "cannot connect", "connection refused")
    assert backoffs == []


REMEDIES = ("data/external/", "30000-spotify-songs.zip", "KAGGLE_USERNAME and KAGGLE_KEY", "KAGGLE_API_TOKEN",
            "~/.kaggle/kaggle.json", "dvc exp run -S data.source=synthetic")


def offline_proxies() -> dict[str, str]:
    """No network: every request goes to a proxy on a loopback port where nothing listens."""
    proxy = f"http://127.0.0.1:{free_port()}"
    return {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy}


def offline_env(home: Path) -> dict[str, str]:
    return clean_env(home, **offline_proxies())


def test_offline_with_no_local_copy_or_credentials_lists_the_remedies(tmp_path, in_process):
    folder = stage_dir(tmp_path)  # the defaults: auto, the real URL
    started = time.monotonic()
    code, _, err = in_process(folder, **offline_proxies())
    assert time.monotonic() - started < 10
    assert_failed_cleanly(folder, code, err, "cannot connect", *REMEDIES)


@pytest.mark.e2e
def test_dvc_repro_offline_fails_within_seconds_with_the_remedies(tmp_path):
    project = make_project(tmp_path / "project")
    home = tmp_path / "home"
    home.mkdir()
    started = time.monotonic()
    result = run(["dvc", "repro"], project, env=offline_env(home), check=False)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    assert all(remedy in output for remedy in REMEDIES), output
    assert elapsed < 20
    assert not (project / RAW).exists()


# --- file and auto ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["zip", "csv"])
def test_file_channel_writes_the_original_bytes(tmp_path, in_process, songs_csv, songs_zip, shape):
    folder = stage_dir(tmp_path, source="file", path=f"downloads/songs.{shape}", sha256=sha256(songs_csv))
    (folder / "downloads").mkdir()
    (folder / "downloads" / f"songs.{shape}").write_bytes(songs_zip if shape == "zip" else songs_csv)
    code, out, err = in_process(folder)
    assert code == 0, err
    assert (folder / RAW).read_bytes() == songs_csv
    assert f"reading downloads/songs.{shape}" in out


def test_file_channel_picks_the_songs_out_of_a_zip_with_other_files(tmp_path, in_process, songs_csv):
    archive = zip_of({"README.md": b"# Songs\n", "__MACOSX/._spotify_songs.csv": b"\x00\x05",
                      "data/spotify_songs.csv": songs_csv, "data/playlists.csv": b"playlist_id\n1\n"})
    folder = stage_dir(tmp_path, source="file", path="songs.zip", sha256=sha256(songs_csv))
    (folder / "songs.zip").write_bytes(archive)
    code, _, err = in_process(folder)
    assert code == 0, err
    assert (folder / RAW).read_bytes() == songs_csv


@pytest.mark.parametrize("name, content, expected", [
    ("missing.csv", None, ["missing.csv: not found"]),
    ("songs.csv.gz", b"\x1f\x8b\x08\x00" + bytes(40), ["gzip data, not a CSV"]),
    ("songs.parquet", b"PAR1" + bytes(40), ["Parquet data, not a CSV"]),
    ("songs.zip", b"track_id,track_name\n", ["not a zip archive"]),
    ("two.zip", "two csvs", ["2 CSV files inside", "none is the one spotify_songs.csv"]),
    ("other.csv", "other songs", ["does not match the pin data.sha256"]),
])
def test_file_channel_refuses_what_is_not_the_songs(tmp_path, in_process, songs_csv, name, content, expected):
    folder = stage_dir(tmp_path, source="file", path=name, sha256=sha256(songs_csv))
    if content == "two csvs":
        content = zip_of({"a.csv": songs_csv, "b.csv": songs_csv})
    elif content == "other songs":
        content = synthetic_songs(50, seed=3).to_csv(index=False).encode()
    if content is not None:
        (folder / name).write_bytes(content)
    code, _, err = in_process(folder)
    assert_failed_cleanly(folder, code, err, *expected)


def test_synthetic_channel_is_deterministic_and_not_held_to_the_pin(tmp_path, in_process):
    outputs = {}
    for name, seed in (("first", 0), ("again", 0), ("other seed", 1)):
        folder = stage_dir(tmp_path / name, source="synthetic", synthetic_rows=300, synthetic_seed=seed)
        code, out, err = in_process(folder)
        assert code == 0, err
        assert "not the real data" in out
        outputs[name] = (folder / RAW).read_bytes()
    assert outputs["first"] == outputs["again"]
    assert outputs["first"] != outputs["other seed"]
    frame = pd.read_csv(io.BytesIO(outputs["first"]), keep_default_na=False, na_values=[""])
    assert tuple(frame.columns) == COLUMN_NAMES and len(frame) == 300
    pd.testing.assert_frame_equal(frame, synthetic_songs(300, 0), check_dtype=False)


def _data_params(external_dir: Path) -> object:
    return parse_params(with_overrides(default_params(), {"data.external_dir": str(external_dir)})).data


@pytest.mark.parametrize("local, env, kaggle_json, expected", [
    (["spotify_songs.csv", "spotify_songs.zip", "30000-spotify-songs.zip"], {"KAGGLE_API_TOKEN": TOKEN}, False,
     ("file", "30000-spotify-songs.zip")),
    (["spotify_songs.csv", "spotify_songs.zip"], {}, False, ("file", "spotify_songs.zip")),
    (["spotify_songs.csv"], {"KAGGLE_USERNAME": USERNAME, "KAGGLE_KEY": KEY}, True, ("file", "spotify_songs.csv")),
    ([], {"KAGGLE_USERNAME": USERNAME, "KAGGLE_KEY": KEY}, False, ("kaggle", "KAGGLE_USERNAME and KAGGLE_KEY")),
    ([], {"KAGGLE_API_TOKEN": TOKEN}, False, ("kaggle", "KAGGLE_API_TOKEN")),
    ([], {}, True, ("kaggle", "~/.kaggle/kaggle.json")),
    ([], {"KAGGLE_USERNAME": USERNAME}, False, ("url", None)),
    ([], {}, False, ("url", None)),
])
def test_auto_prefers_a_local_copy_then_kaggle_credentials_then_the_url(tmp_path, local, env, kaggle_json, expected):
    external, home = tmp_path / "external", tmp_path / "home"
    external.mkdir()
    home.mkdir()
    for name in local:
        (external / name).write_bytes(b"")
    if kaggle_json:
        kaggle_credentials("kaggle.json", home)
    source = sources.resolve(_data_params(external), env, home)
    detail = source.path.name if source.channel == "file" else source.credentials
    assert (source.channel, detail) == expected


def test_auto_reads_the_first_local_copy_and_touches_no_network(tmp_path, in_process, songs_csv, songs_zip):
    other = synthetic_songs(60, seed=5).to_csv(index=False).encode()
    with FileServer() as server:
        folder = stage_dir(tmp_path, url=server.url("/spotify_songs.csv"), sha256=None)
        external = folder / "data" / "external"
        external.mkdir(parents=True)
        (external / "30000-spotify-songs.zip").write_bytes(songs_zip)
        (external / "spotify_songs.csv").write_bytes(other)
        code, out, err = in_process(folder, KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=KEY, HTTPS_PROXY="http://127.0.0.1:9")
    assert code == 0, err
    assert (folder / RAW).read_bytes() == songs_csv
    assert "reading data/external/30000-spotify-songs.zip" in out
    assert sum(server.hits.values()) == 0


@pytest.mark.slow
def test_auto_uses_kaggle_when_credentials_are_configured(tmp_path, songs_csv, songs_zip):
    folder = stage_dir(tmp_path, sha256=sha256(songs_csv))
    with KaggleStandIn(songs_zip, username=USERNAME, key=KEY) as kaggle:
        env = clean_env(folder / "home", **kaggle.client_env(), KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=KEY)
        result = run_stage(folder, env)
    assert result.returncode == 0, result.stderr
    assert kaggle.downloads == 1
    assert (folder / RAW).read_bytes() == songs_csv


def test_auto_falls_back_to_the_url(tmp_path, in_process, songs_csv):
    with FileServer() as server:
        folder = stage_dir(tmp_path, url=server.serve("/spotify_songs.csv", Reply(songs_csv)), sha256=sha256(songs_csv))
        code, out, err = in_process(folder)
    assert code == 0, err
    assert server.hits["/spotify_songs.csv"] == 1
    assert (folder / RAW).read_bytes() == songs_csv


# --- the bad-data corpus ---------------------------------------------------------------------------------------

# Each file of tests/data/bad (and two generated ones) and what its one-line error must say.
BAD_DATA = {
    "empty.csv": ["empty file"],
    "header_only.csv": ["header only, no song rows"],
    "missing_column.csv": ["missing column 'tempo'"],
    "extra_column.csv": ["unexpected column 'bpm_confidence'"],
    "renamed_column.csv": ["missing column 'tempo'", "unexpected 'bpm': renamed?"],
    "wrong_delimiter.csv": ["wrong delimiter"],
    "non_utf8.csv": ["line 4", "not UTF-8"],
    "nan_required.csv": ["line 3, column 'danceability'", "'NaN' is not a number"],
    "missing_required.csv": ["line 4, column 'energy'", "missing value"],
    "out_of_range.csv": ["line 3, column 'valence'", "1.7", "expected a number in [0, 1]"],
    "unknown_genre.csv": ["line 4, column 'playlist_genre'", "'jazz'", "unknown genre"],
    "repeated_header.csv": ["line 4 repeats the header"],
    "header_spaces.csv": ["column ' energy' has spaces around its name", "expected 'energy'"],
    "no_csv.zip": ["no CSV file inside", "README.txt"],
    "random_10mb.csv": ["binary data"],
    "bomb.zip": ["spotify_songs.csv: claims 3.7 GiB uncompressed", "refused without extracting"],
}


def _bomb() -> bytes:
    """A zip whose one entry claims 4 GB uncompressed: both size fields are rewritten, nothing is compressed."""
    archive = bytearray(zip_of({"spotify_songs.csv": b"track_id\n"}))
    claimed = (4_000_000_000).to_bytes(4, "little")
    local, central = archive.index(b"PK\x03\x04"), archive.index(b"PK\x01\x02")
    archive[local + 22:local + 26] = claimed
    archive[central + 24:central + 28] = claimed
    return bytes(archive)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    generated = tmp_path_factory.mktemp("bad")
    (generated / "random_10mb.csv").write_bytes(np.random.default_rng(0).bytes(10 * 2**20))
    (generated / "bomb.zip").write_bytes(_bomb())
    files = {path.name: path for path in BAD.iterdir() if path.suffix in (".csv", ".zip")}
    files.update({path.name: path for path in generated.iterdir()})
    assert sorted(files) == sorted(BAD_DATA), "tests/data/bad and BAD_DATA disagree"
    return files


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_through_the_file_channel(tmp_path, in_process, bad_files, name):
    folder = stage_dir(tmp_path, source="file", path=str(bad_files[name]), sha256=None)
    code, _, err = in_process(folder)
    assert_failed_cleanly(folder, code, err, str(bad_files[name]), *BAD_DATA[name])


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_through_the_auto_channel(tmp_path, in_process, bad_files, name):
    folder = stage_dir(tmp_path, sha256=None)
    local = folder / "data" / "external" / ("30000-spotify-songs.zip" if name.endswith(".zip") else "spotify_songs.csv")
    local.parent.mkdir(parents=True)
    shutil.copyfile(bad_files[name], local)
    code, _, err = in_process(folder, **offline_proxies())
    assert_failed_cleanly(folder, code, err, str(local.relative_to(folder)), *BAD_DATA[name])


def test_bad_data_is_caught_with_the_pin_set_too(tmp_path, in_process):
    folder = stage_dir(tmp_path, source="file", path=str(BAD / "out_of_range.csv"))
    code, _, err = in_process(folder)
    assert_failed_cleanly(folder, code, err, "does not match the pin")


# --- real data and the real dvc CLI ----------------------------------------------------------------------------


@needs_real_data
@pytest.mark.realdata
@pytest.mark.parametrize("channel", ["file", "auto"])
def test_real_dataset_matches_the_pin(tmp_path, in_process, channel):
    folder = stage_dir(tmp_path, source=channel, path=str(real_zip()))
    if channel == "auto":
        (folder / "data" / "external").mkdir(parents=True)
        (folder / "data" / "external" / "30000-spotify-songs.zip").symlink_to(real_zip())
    code, out, err = in_process(folder)
    assert code == 0, err
    assert sha256((folder / RAW).read_bytes()) == REAL_CSV_SHA256
    assert pd.read_csv(folder / RAW).shape == (32_833, 23)
    assert "32,833 songs" in out


@pytest.mark.e2e
def test_dvc_repro_download_twice_runs_once(tmp_path):
    project = make_project(tmp_path / "project", {"data.source": "synthetic", "data.synthetic_rows": 300})
    run(["dvc", "repro", "download"], project)
    written = (project / RAW).read_bytes()
    frame = pd.read_csv(io.BytesIO(written), keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(frame, synthetic_songs(300, 0), check_dtype=False)
    again = run(["dvc", "repro", "download"], project)
    assert "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout
    assert (project / RAW).read_bytes() == written
    assert "up to date" in run(["dvc", "status", "download"], project).stdout
