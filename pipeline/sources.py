"""Where the raw songs come from: one function per channel, each giving the CSV's exact bytes, then one check."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from tqdm import tqdm

from pipeline.params import DataParams
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import AcquisitionError, DataError, PipelineError
from spotify_genre.songs.schema import read_songs, validate_songs

CSV_NAME = "spotify_songs.csv"
# What a user may drop into data.external_dir, in order of preference: the Kaggle download, then the bare CSV.
LOCAL_COPIES = ("30000-spotify-songs.zip", "spotify_songs.zip", CSV_NAME)
MAX_CSV_BYTES = 512 * 2**20
CHUNK_BYTES = 2**16
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_BINARY_MAGIC = {
    b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
    b"7z\xbc\xaf\x27\x1c": "7-Zip", b"PAR1": "Parquet", b"\xd0\xcf\x11\xe0": "Excel (OLE)", b"%PDF": "PDF",
}


@dataclass(frozen=True)
class Source:
    """What `data.source` means on this machine: `auto` resolved to a concrete channel."""

    channel: str  # "file", "kaggle", "url" or "synthetic"
    path: Path | None = None
    credentials: str | None = None  # where the Kaggle credentials come from, never their values

    def describe(self, data: DataParams) -> str:
        if self.channel == "file":
            return f"reading {self.path}"
        if self.channel == "kaggle":
            where = f" (credentials from {self.credentials})" if self.credentials else ""
            return f"downloading {data.kaggle_dataset} from Kaggle{where}"
        if self.channel == "url":
            return f"downloading {display_url(data.url)}"
        return f"generating {data.synthetic_rows:,} synthetic songs (seed {data.synthetic_seed}); not the real data"


@dataclass(frozen=True)
class Songs:
    csv: bytes
    rows: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.csv).hexdigest()


def remedies(data: DataParams) -> str:
    return (f"To get the data: put the Kaggle download ({LOCAL_COPIES[0]}) or {CSV_NAME} in {data.external_dir}/; "
            "or configure Kaggle credentials (KAGGLE_USERNAME and KAGGLE_KEY, KAGGLE_API_TOKEN, "
            "or ~/.kaggle/kaggle.json); or run `dvc exp run -S data.source=synthetic` for a demo on generated songs")


def find_local_copy(external_dir: Path) -> Path | None:
    return next((external_dir / name for name in LOCAL_COPIES if (external_dir / name).is_file()), None)


def _kaggle_config_dir(env: Mapping[str, str], home: Path) -> Path:
    """Where the kaggle client looks for kaggle.json (its own rule, restated)."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    legacy = home / ".kaggle"
    if legacy.exists():
        return legacy
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def _credential_files(env: Mapping[str, str], home: Path) -> list[Path]:
    return [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt",
            _kaggle_config_dir(env, home) / "kaggle.json", home / ".kaggle" / "kaggle.json",
            home / ".kaggle" / "credentials.json"]


def kaggle_credentials(env: Mapping[str, str], home: Path) -> str | None:
    """Where Kaggle credentials are configured (a name to show, never a value), or None."""
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME and KAGGLE_KEY"
    found = next((path for path in _credential_files(env, home) if path.is_file()), None)
    if found is None:
        return None
    return f"~/{found.relative_to(home)}" if found.is_relative_to(home) else str(found)


def kaggle_secrets(env: Mapping[str, str], home: Path) -> list[str]:
    """Every credential value the kaggle client could send, so that no message ever shows one."""
    values = [env.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME")]
    logins = [(env.get("KAGGLE_USERNAME", ""), env.get("KAGGLE_KEY", ""))]
    for path in [*_credential_files(env, home), Path(env.get("KAGGLE_API_TOKEN") or "/nonexistent")]:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text(encoding="utf-8").strip()
            values.append(text)
            with contextlib.suppress(ValueError, AttributeError):
                config = json.loads(text)
                values.extend(str(value) for value in config.values())
                logins.append((str(config.get("username", "")), str(config.get("key", ""))))
    values.extend(base64.b64encode(f"{user}:{key}".encode()).decode() for user, key in logins)  # HTTP basic auth
    return [value for value in values if len(value) >= 4]


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def display_url(url: str) -> str:
    """The URL without user, password or query string, which may hold tokens."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def resolve(data: DataParams, env: Mapping[str, str], home: Path) -> Source:
    """`auto`: the first local copy in data.external_dir, else Kaggle when credentials are configured, else the URL."""
    if data.source == "file":
        return Source("file", Path(data.path))
    if data.source in ("url", "synthetic"):
        return Source(data.source)
    credentials = kaggle_credentials(env, home)
    if data.source == "kaggle":
        return Source("kaggle", credentials=credentials)
    local = find_local_copy(Path(data.external_dir))
    if local is not None:
        return Source("file", local)
    if credentials is not None:
        return Source("kaggle", credentials=credentials)
    return Source("url")


def acquire(source: Source, data: DataParams, env: Mapping[str, str], home: Path, *, progress: bool) -> Songs:
    """The songs CSV from `source`; every channel but synthetic is checked against the pin and the schema."""
    if source.channel == "synthetic":
        return Songs(synthetic_csv(data.synthetic_rows, data.synthetic_seed), data.synthetic_rows)
    if source.channel == "file":
        csv, where = read_local(source.path)
    elif source.channel == "kaggle":
        csv, where = from_kaggle(data, source.credentials, env, home)
    else:
        csv, where = from_url(data.url, timeout_s=data.timeout_s, retries=data.retries, progress=progress,
                              remedy=remedies(data))
    return Songs(csv, check_songs(csv, where, data.sha256))


def check_songs(csv: bytes, where: str, sha256: str | None) -> int:
    """Check the bytes against the pin, then every cell against the schema; return the number of songs."""
    digest = hashlib.sha256(csv).hexdigest()
    if sha256 is not None and digest != sha256:
        raise DataError(f"{where}: sha256 {digest} does not match the pin data.sha256 {sha256}: a different, "
                        "truncated or altered file (set data.sha256: null to accept any file that passes the schema)")
    return len(validate_songs(read_songs(io.BytesIO(csv), where), where))


def synthetic_csv(rows: int, seed: int) -> bytes:
    buffer = io.BytesIO()  # written a chunk of rows at a time: never the whole CSV as text and as bytes at once
    synthetic_songs(rows, seed).to_csv(buffer, index=False, lineterminator="\n", encoding="utf-8")
    return buffer.getvalue()


# --- local files ------------------------------------------------------------------------------------------


def read_local(path: Path) -> tuple[bytes, str]:
    """The CSV bytes of a local CSV or zip, and where they came from (for messages)."""
    try:
        if not path.is_file():
            raise AcquisitionError(f"{path}: {'not a file' if path.exists() else 'not found'}; "
                                   f"expected the Kaggle zip or {CSV_NAME}")
        if zipfile.is_zipfile(path):
            return csv_from_zip(path, str(path))
        if path.suffix.lower() == ".zip":
            raise DataError(f"{path}: not a zip archive (corrupt or mislabelled); expected the Kaggle download")
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{path}: {_size(size)}, over the {_size(MAX_CSV_BYTES)} limit for the songs CSV")
        data = path.read_bytes()
    except OSError as error:
        raise AcquisitionError(f"{path}: cannot read ({error.strerror or error})") from None
    _refuse_binary(data[:CHUNK_BYTES], str(path))
    return data, str(path)


def _refuse_binary(head: bytes, where: str) -> None:
    kind = next((name for magic, name in _BINARY_MAGIC.items() if head.startswith(magic)), None)
    if kind:
        raise DataError(f"{where}: {kind} data, not a CSV; expected {CSV_NAME} or the Kaggle zip")
    if b"\x00" in head:
        raise DataError(f"{where}: binary data (NUL bytes), not a CSV; expected {CSV_NAME} or the Kaggle zip")


def csv_from_zip(archive: Path | io.BytesIO, where: str) -> tuple[bytes, str]:
    """The songs CSV inside a zip, refused before extraction when it claims more than MAX_CSV_BYTES."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            entry = _songs_entry(zipped, where)
            inside = f"{where}:{entry.filename}"
            if entry.file_size > MAX_CSV_BYTES:
                raise DataError(f"{inside}: claims {_size(entry.file_size)} uncompressed, over the "
                                f"{_size(MAX_CSV_BYTES)} limit; refused without extracting (zip bomb?)")
            with zipped.open(entry) as file:
                data = file.read(MAX_CSV_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DataError(f"{where}: corrupt zip archive ({error})") from None
    except (RuntimeError, NotImplementedError) as error:  # encrypted entry, unsupported compression
        raise DataError(f"{where}: cannot extract ({error})") from None
    _refuse_binary(data[:CHUNK_BYTES], inside)
    return data, inside


def _songs_entry(zipped: zipfile.ZipFile, where: str) -> zipfile.ZipInfo:
    files = [info for info in zipped.infolist() if not info.is_dir() and not info.filename.startswith("__MACOSX/")]
    csvs = [info for info in files if info.filename.lower().endswith(".csv")]
    if not csvs:
        found = ", ".join(info.filename for info in files[:5]) + (", ..." if len(files) > 5 else "")
        raise DataError(f"{where}: no CSV file inside ({f'found {found}' if files else 'the archive is empty'}); "
                        f"expected {CSV_NAME}")
    named = [info for info in csvs if Path(info.filename).name == CSV_NAME]
    if len(csvs) > 1 and len(named) != 1:
        raise DataError(f"{where}: {len(csvs)} CSV files inside ({', '.join(i.filename for i in csvs[:5])}) "
                        f"and none is the one {CSV_NAME}")
    return named[0] if named else csvs[0]


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


# --- HTTP(S) ----------------------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth another attempt: a timeout, a dropped connection, a 5xx or 429 answer."""


def from_url(url: str, *, timeout_s: float, retries: int, progress: bool, remedy: str) -> tuple[bytes, str]:
    """GET `url` with up to `retries` further attempts and exponential backoff.

    A host that cannot be reached at all (no name resolution, connection refused, no route, proxy down) fails at
    once: that is what being offline looks like, and retrying it would only delay the remedies.
    """
    shown = display_url(url)
    for attempt in range(retries + 1):
        try:
            return _fetch(url, shown, timeout_s, progress, remedy), shown
        except _Transient as error:
            if attempt == retries:
                tries = f" (after {retries + 1} attempts)" if retries else ""
                raise AcquisitionError(f"{shown}: {error}{tries}. {remedy}") from None
            time.sleep(min(2.0**attempt, 30.0))
    raise AssertionError("unreachable")


def _fetch(url: str, shown: str, timeout_s: float, progress: bool, remedy: str) -> bytes:
    try:
        response = requests.get(url, stream=True, timeout=timeout_s, headers={"Accept-Encoding": "identity"})
    except requests.exceptions.SSLError as error:
        raise AcquisitionError(f"{shown}: TLS error ({_root_cause(error)})") from None
    except requests.exceptions.ReadTimeout:
        raise _Transient(f"no response within {timeout_s:g} s (timed out)") from None
    except requests.ConnectionError as error:
        if _unreachable(error):
            raise AcquisitionError(f"{shown}: cannot connect ({_root_cause(error)}); offline? {remedy}") from None
        raise _Transient(f"connection failed ({_root_cause(error)})") from None
    except requests.RequestException as error:
        raise AcquisitionError(f"{shown}: {type(error).__name__}: {_root_cause(error)}") from None
    with response:
        if response.status_code in RETRYABLE_STATUS:
            raise _Transient(f"HTTP {response.status_code} {response.reason}")
        if response.status_code != 200:
            raise AcquisitionError(f"{shown}: HTTP {response.status_code} {response.reason}; check data.url")
        declared = response.headers.get("Content-Length", "")
        total = int(declared) if declared.isdigit() else None
        if total is not None and total > MAX_CSV_BYTES:
            raise DataError(f"{shown}: {_size(total)}, over the {_size(MAX_CSV_BYTES)} limit for the songs CSV")
        return _read_body(response, total, timeout_s, progress, shown)


def _read_body(response: requests.Response, total: int | None, timeout_s: float, progress: bool, shown: str) -> bytes:
    body = bytearray()
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=Path(urlsplit(shown).path).name,
              disable=not progress, file=sys.stderr, leave=False) as bar:
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                body += chunk
                bar.update(len(chunk))
                if len(body) > MAX_CSV_BYTES:
                    raise DataError(f"{shown}: more than {_size(MAX_CSV_BYTES)}, the limit for the songs CSV")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError) as error:
            received = response.raw.tell()  # counts what urllib3 read before it gave up, unlike `body`
            if "timed out" in str(error).lower():
                raise _Transient(f"no data for {timeout_s:g} s after {received:,} bytes (timed out)") from None
            expected = f" of {total:,}" if total is not None else ""
            raise _Transient(f"connection broken after {received:,}{expected} bytes") from None
    return bytes(body)


def _unreachable(error: requests.ConnectionError) -> bool:
    if isinstance(error, (requests.exceptions.ConnectTimeout, requests.exceptions.ProxyError)):
        return True
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _root_cause(error: BaseException) -> str:
    """A short reason from the nest of exceptions requests and urllib3 wrap around each other."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    if isinstance(reason, urllib3.exceptions.ProxyError):
        return "proxy unreachable"
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "host name could not be resolved"
    text = str(reason or error)
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError: first
        text = text.rsplit(": ", 1)[-1]
    elif isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    return text.split("] ", 1)[-1].strip().lower() or type(error).__name__


# --- Kaggle -----------------------------------------------------------------------------------------------


def kaggle_api_class():
    """The official client's KaggleApi, loaded without running kaggle/__init__.py.

    That file authenticates on import: it prints help to stdout when no credentials are set, and with a token it
    calls the network. Only the API module is loaded here, under a bare package that carries the version it needs.
    """
    if "kaggle" not in sys.modules:
        spec = importlib.util.find_spec("kaggle")
        if spec is None:
            raise AcquisitionError("the `kaggle` package is not installed (pip install -e '.[dev]')")
        package = importlib.util.module_from_spec(spec)
        package.__version__ = importlib.metadata.version("kaggle")
        sys.modules["kaggle"] = package
    from kaggle.api.kaggle_api_extended import KaggleApi

    return KaggleApi


def from_kaggle(data: DataParams, credentials: str | None, env: Mapping[str, str], home: Path) -> tuple[bytes, str]:
    """Download data.kaggle_dataset with the official client, then take the CSV out of its zip."""
    if credentials is None:
        raise AcquisitionError("data.source is kaggle but no Kaggle credentials are configured: set KAGGLE_USERNAME "
                               "and KAGGLE_KEY, or KAGGLE_API_TOKEN, or put kaggle.json in ~/.kaggle/")
    secrets = kaggle_secrets(env, home)
    dataset = data.kaggle_dataset
    chatter = io.StringIO()  # the client prints progress and, in verbose mode, request headers: keep them out
    try:
        with tempfile.TemporaryDirectory(prefix="spotify-genre-kaggle-") as folder, contextlib.redirect_stdout(chatter):
            api = kaggle_api_class()()
            api.authenticate()
            api.dataset_download_files(dataset, path=folder, force=True, quiet=True, unzip=False)
            archive = io.BytesIO((Path(folder) / f"{dataset.split('/')[1]}.zip").read_bytes())
    except PipelineError:
        raise
    except SystemExit:
        raise AcquisitionError(f"Kaggle did not accept the credentials from {credentials} "
                               "(an invalid or expired token is ignored by the client)") from None
    except requests.HTTPError as error:
        raise AcquisitionError(redact(_kaggle_http_error(error, dataset, credentials), secrets)) from None
    except (requests.ConnectionError, requests.Timeout) as error:
        message = f"cannot reach the Kaggle API ({_root_cause(error)}); offline? {remedies(data)}"
        raise AcquisitionError(redact(message, secrets)) from None
    except Exception as error:  # the client raises bare ValueError/RuntimeError/OSError for failed downloads
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise AcquisitionError(redact(f"Kaggle download of {dataset} failed: {type(error).__name__}: {first_line}",
                                      secrets)) from None
    return csv_from_zip(archive, f"kaggle:{dataset}")


def _kaggle_http_error(error: requests.HTTPError, dataset: str, credentials: str) -> str:
    status = error.response.status_code if error.response is not None else None
    if status in (401, 403):
        return (f"Kaggle refused the credentials from {credentials} (HTTP {status}): check the username and key, "
                "or create a new API token at https://www.kaggle.com/settings")
    if status == 404:
        return f"Kaggle has no dataset {dataset!r} (HTTP 404); check data.kaggle_dataset"
    return f"the Kaggle API answered HTTP {status} for {dataset}"
