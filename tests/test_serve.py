"""`spotify-genre serve` for real: a uvicorn process on a free 127.0.0.1 port, serving the session's synthetic
pipeline, asked over HTTP; its answers compared with `spotify-genre predict` byte for byte once formatted."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run, user_env

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from spotify_genre.songs.csv_reader import cell_problems  # noqa: E402
from spotify_genre.predict.table import prediction_table, predictions_csv  # noqa: E402
from spotify_genre.songs.schema import COLUMNS, read_songs  # noqa: E402
from spotify_genre.predict.serve import song_frame, song_model  # noqa: E402

MAX_ROWS = 600
MAX_BYTES = 400_000
TOP_K = 3
# uvicorn answers SIGTERM by a graceful shutdown, then raises the signal again, which the command turns into the
# usual one line and 128 + 15: the exit status a supervisor expects
STOPPED = (0, 128 + signal.SIGTERM, -signal.SIGTERM)
BATCHES = (1, 2, 7, 16, 100)  # request sizes, then the rest of the test split in requests of up to MAX_ROWS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(trained: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`spotify-genre serve` on a free port, once /ready answers 200."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "spotify-genre"), "serve", "--port", str(port),
               "--model", str(trained / "models" / "model.pt"),
               "--preprocessor", str(trained / "models" / "preprocessor.json"), *options]
    process = subprocess.Popen(command, cwd=trained, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"spotify-genre serve exited {process.returncode}:\n{process.stderr.read()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    pytest.fail("spotify-genre serve was not ready within 120 s")


def stop_server(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return stderr


@pytest.fixture(scope="module")
def served(synthetic_pipeline):
    process, url = start_server(synthetic_pipeline, "--max-rows", str(MAX_ROWS), "--max-bytes", str(MAX_BYTES),
                                "--metrics", "reports/metrics.json", "--artifact-name", "spotify-genre-mlp",
                                "--artifact-version", "v0.0.1", "--log-level", "warning")
    yield url
    stderr = stop_server(process)
    assert process.returncode in STOPPED, stderr


def as_json(frame: pd.DataFrame) -> list[dict]:
    """Songs as a client sends them: the values pandas read (so the same float64 as predict), empty as null."""
    songs = []
    for record in frame.to_dict("records"):
        songs.append({key: (None if isinstance(value, float) and math.isnan(value) else value)
                      for key, value in record.items()})
    return songs


def as_csv(answer: dict, classes: list[str], track_ids: pd.Series, top_k: int) -> str:
    """A /predict answer as `spotify-genre predict --top-k` writes it."""
    probabilities = np.array([[song["probabilities"][genre] for genre in classes] for song in answer["predictions"]])
    return predictions_csv(prediction_table(track_ids.reset_index(drop=True), probabilities, classes, top_k=top_k))


@pytest.fixture(scope="module")
def test_split(synthetic_pipeline) -> pd.DataFrame:
    return pd.read_parquet(synthetic_pipeline / "data" / "split" / "test.parquet")


@pytest.mark.e2e
def test_served_predictions_are_the_cli_s_bytes(served, synthetic_pipeline, test_split, tmp_path):
    """The test split in requests of several sizes; each request's songs also as one file of a folder that
    `spotify-genre predict` predicts in one run: a request's numbers are those of predict on a file of its songs."""
    sizes, left = [], len(test_split)
    for size in BATCHES:
        sizes.append(min(size, left))
        left -= sizes[-1]
    while left > 0:
        sizes.append(min(MAX_ROWS, left))
        left -= sizes[-1]
    shards, outputs = tmp_path / "shards", tmp_path / "predicted"
    shards.mkdir()
    start = 0
    for i, size in enumerate(sizes):
        test_split.iloc[start:start + size].to_csv(shards / f"part-{i:03d}.csv", index=False)
        start += size
    run([str(Path(sys.executable).parent / "spotify-genre"), "predict", str(shards), "-o", str(outputs),
         "--output-format", "csv", "--top-k", str(TOP_K), "--model", "models/model.pt",
         "--preprocessor", "models/preprocessor.json"], synthetic_pipeline, env=user_env())
    classes = httpx.get(f"{served}/model").json()["genres"]
    with httpx.Client(base_url=served, timeout=60) as client:
        for i in range(len(sizes)):
            songs = read_songs(str(shards / f"part-{i:03d}.csv"), "shard", required=(), allow_extra=True)
            response = client.post("/predict", params={"top_k": TOP_K}, json=as_json(songs))
            assert response.status_code == 200, response.text
            served_csv = as_csv(response.json(), classes, songs["track_id"], TOP_K)
            assert served_csv == (outputs / f"part-{i:03d}.csv").read_text(), f"request {i} of {sizes[i]} songs"
    assert sum(sizes) == len(test_split)


@pytest.fixture(scope="module")
def song(test_split) -> dict:
    return as_json(test_split.iloc[:1])[0]


@pytest.mark.e2e
@pytest.mark.parametrize("field, value", [("danceability", 1.5), ("key", 2.5), ("tempo", "fast"),
                                          ("energy", None), ("track_album_release_date", "19-01-01"),
                                          ("track_id", "")])
def test_a_bad_song_is_a_422_naming_its_row_and_field(served, song, field, value):
    bad = {**song, field: value}
    response = httpx.post(f"{served}/predict", json=[song, song, bad], timeout=30)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", 2, field]]


@pytest.mark.e2e
def test_a_missing_field_is_a_422_naming_its_row_and_field(served, song):
    bad = {key: value for key, value in song.items() if key != "loudness"}
    response = httpx.post(f"{served}/predict", json=[bad], timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", 0, "loudness"]


@pytest.mark.e2e
@pytest.mark.parametrize("body", [b"not json", b'{"songs": []}', b"[1, 2]"])
def test_a_body_that_is_not_a_list_of_songs_is_a_422(served, body):
    response = httpx.post(f"{served}/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422


@pytest.mark.e2e
def test_too_many_songs_or_bytes_is_a_413(served, song):
    small = {key: song[key] for key in song if not key.startswith("playlist")}
    assert len(json.dumps([small] * (MAX_ROWS + 1))) < MAX_BYTES
    assert httpx.post(f"{served}/predict", json=[small] * (MAX_ROWS + 1), timeout=30).status_code == 413
    assert httpx.post(f"{served}/predict", content=b" " * (MAX_BYTES + 1)).status_code == 413

    def chunks():  # no Content-Length: counted as it comes
        for _ in range(MAX_BYTES // 10_000 + 1):
            yield b" " * 10_000

    assert httpx.post(f"{served}/predict", content=chunks()).status_code == 413
    assert httpx.post(f"{served}/predict", json=[song] * 2, params={"top_k": 9}).status_code == 422


@pytest.mark.e2e
def test_an_empty_list_is_an_empty_answer(served):
    response = httpx.post(f"{served}/predict", json=[])
    assert response.status_code == 200 and response.json() == {"predictions": []}


@pytest.mark.e2e
def test_health_ready_model_and_the_documented_schema(served, synthetic_pipeline):
    assert httpx.get(f"{served}/health").json() == {"status": "ok"}
    assert httpx.get(f"{served}/ready").json() == {"ready": True}
    model = httpx.get(f"{served}/model").json()
    assert model["artifact"] == {"name": "spotify-genre-mlp", "version": "v0.0.1"}
    bundle = (synthetic_pipeline / "models" / "model.pt").read_bytes()
    assert model["bundle"]["sha256"] == hashlib.sha256(bundle).hexdigest()
    preprocessor = (synthetic_pipeline / "models" / "preprocessor.json").read_bytes()
    assert model["preprocessor"]["sha256"] == hashlib.sha256(preprocessor).hexdigest()  # the one the bundle records
    assert model["metrics"] == json.loads((synthetic_pipeline / "reports" / "metrics.json").read_text())
    schema = httpx.get(f"{served}/openapi.json").json()["components"]["schemas"]["Song"]
    assert schema["properties"]["danceability"]["maximum"] == 1
    assert "danceability" in schema["required"] and "playlist_genre" not in schema["properties"]


@pytest.mark.e2e
def test_sixteen_clients_at_once_get_each_their_own_numbers(served, test_split):
    """16 clients for about 3 s (at most 30 requests each), one to five songs a request: no error, and every
    answer the bytes of the same request sent alone."""
    songs = as_json(test_split.iloc[:80])
    requests = [songs[i:i + 1 + i % 5] for i in range(0, 75, 3)]
    alone = [httpx.post(f"{served}/predict", json=request, timeout=30).content for request in requests]

    async def client(number: int, stop: float, http) -> int:
        sent = 0
        while time.monotonic() < stop and sent < 30:
            which = (number * 7 + sent) % len(requests)
            response = await http.post("/predict", json=requests[which])
            assert response.status_code == 200, response.text
            assert response.content == alone[which]
            sent += 1
        return sent

    async def everyone() -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=served, limits=limits, timeout=60) as http:
            stop = time.monotonic() + 3
            return await asyncio.gather(*(client(number, stop, http) for number in range(16)))

    sent = asyncio.run(everyone())
    assert all(count > 0 for count in sent)


@pytest.mark.e2e
def test_sigterm_lets_the_request_in_flight_finish(synthetic_pipeline, song):
    """SIGTERM while a request's body is still arriving: the request is answered, then the server stops."""
    process, url = start_server(synthetic_pipeline, "--log-level", "warning")
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps([song] * 50).encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + body[:100])
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        connection.sendall(body[100:])
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    status, _, answer = received.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), received[:300]
    assert len(json.loads(answer)["predictions"]) == 50
    assert process.wait(timeout=30) in STOPPED
    assert "Traceback" not in process.stderr.read()


def _committed_model_is_here() -> bool:
    """models/ holds the files dvc.lock records (after `dvc repro` or `dvc pull` of this commit)."""
    import yaml

    from tests.conftest import ROOT

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    recorded = {out["path"]: out["md5"] for stage in ("preprocess", "train") for out in lock[stage]["outs"]}
    paths = ("models/model.pt", "models/preprocessor.json", "models/preprocessor.npz")
    return all((ROOT / path).is_file() and hashlib.md5((ROOT / path).read_bytes()).hexdigest() == recorded[path]
               for path in paths)


@pytest.mark.e2e
@pytest.mark.skipif(not _committed_model_is_here(), reason="models/ does not hold the model dvc.lock records")
def test_the_readme_s_curl_answer_is_the_committed_model_s():
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    command = ("$ curl -s 'localhost:8000/predict?top_k=2' -H 'content-type: application/json' "
               "-d @docs/example_songs.json")
    shown = readme.split(command + "\n", 1)[1].split("\n", 1)[0]
    process, url = start_server(ROOT, "--log-level", "warning")
    try:
        songs = (ROOT / "docs" / "example_songs.json").read_bytes()
        answer = httpx.post(f"{url}/predict", params={"top_k": 2}, content=songs,
                            headers={"content-type": "application/json"}, timeout=30).text
    finally:
        stop_server(process)
    assert answer == shown


# --- the Song model against the schema's own checks (no server) ----------------------------------------------


BAD_VALUES = {"int": [-5, 101, 1.5, 1e9], "float": [-0.5, 1.5, -1000.0, 1e6], "date": ["2020-1", "20", "2020-01-1x"]}


GOOD_SONG = {"track_id": "t1", "track_name": "A song", "track_artist": "An artist", "track_popularity": 50,
             "track_album_id": "a1", "track_album_name": "An album", "track_album_release_date": "2019-06-14",
             "danceability": 0.5, "energy": 0.5, "key": 5, "loudness": -6.0, "mode": 1, "speechiness": 0.1,
             "acousticness": 0.2, "instrumentalness": 0.0, "liveness": 0.1, "valence": 0.5, "tempo": 120.0,
             "duration_ms": 200000}


def test_the_song_model_refuses_what_the_schema_refuses():
    """Every cell value catalogue.cell_problems flags, the Song model refuses, and it refuses no cell the
    schema accepts: so the server, which checks songs with the Song model only, accepts the songs predict does."""
    required = tuple(column.name for column in COLUMNS if column.name not in ("playlist_genre", "playlist_name",
                                                                               "playlist_id", "playlist_subgenre"))
    Song = song_model(required)  # noqa: N806
    good = GOOD_SONG
    columns = tuple(name for name in required if name != "track_id")
    for column in COLUMNS:
        if column.name not in columns:
            continue
        for value in BAD_VALUES.get(column.kind, []) + [None]:
            song = {**good, column.name: value}
            try:
                parsed = Song(**song)
            except ValueError:
                refused = True
            else:
                refused = False
            frame = song_frame([Song.model_construct(**song)], columns)
            flagged = not cell_problems(frame, columns, None).empty
            assert refused == flagged, (column.name, value, refused, flagged)
            if not refused:
                assert parsed is not None
