"""`spotify-genre serve`: the model behind an HTTP endpoint, for a program that would otherwise run
`spotify-genre predict` (docs/shipping.md). Needs the serve extra (FastAPI, uvicorn).

POST /predict takes a JSON list of songs with the raw dataset's columns (a pydantic model made from schema.COLUMNS,
so /openapi.json documents it) and answers, per song, the genre, every genre's probability and the top k: the
numbers `spotify-genre predict` writes for the same songs in one file (the same Predictor, the same checks, model
batches of the same rows). A song the schema refuses is a 422 naming its row and field; a request over the row or
byte limit a 413. GET /health (the process answers), /ready (the model is loaded), /model (what is served).

One model per worker process, loaded before the first request; the preprocessing and the model run on one thread
of their own, on the numerics pin's fixed thread count (numerics.py). The requests waiting are read into model
inputs together, and the model runs on each request's rows alone, so a request's numbers never depend on what
else is in flight (Server._answer_forever). Nothing a client sends names a file or is unpickled: the files are the
command line's. SIGTERM stops it as uvicorn does: no new connection, requests in flight answered, then exit.
"""

import argparse
import asyncio
import gc
import hashlib
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from spotify_genre.songs.csv_reader import Songs
from spotify_genre.errors import BundleError, ParamsError, PipelineError
from spotify_genre.numerics import inference_threads
from spotify_genre.predict.table import top_genres
from spotify_genre.songs.schema import COLUMNS, LABEL, PLAYLIST_FIELDS, RELEASE_DATE_PATTERN, TRACK_ID, Column
from spotify_genre.predict.predictor import SWITCH_INTERVAL_S, Predictor, Settings
from spotify_genre.validation import whole_number
from spotify_genre.workers import MAX_WORKERS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 8 << 20  # a raw song is about 400 bytes of JSON: 10,000 songs fit twice over
DEFAULT_TOP_K = 3
DEFAULT_METRICS = "reports/metrics.json"
# Configuration handed from `spotify-genre serve` to each worker process (uvicorn starts them from an import string).
ENVIRONMENT = "SPOTIFY_GENRE_SERVE"


@dataclass(frozen=True)
class ServeSettings:
    """What a worker serves: the files (the command line's, never a client's) and the request limits."""

    model: str = "models/model.pt"
    preprocessor: str = "models/preprocessor.json"
    metrics: str | None = None  # the training metrics to report in /model; None: reports/metrics.json if present
    artifact_name: str | None = None  # as registered (`dvc artifacts get REPO NAME`), where the caller knows it
    artifact_version: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES


# --- the song schema -----------------------------------------------------------------------------------------


def _song_field(column: Column, required: bool) -> tuple[Any, Any]:
    """(type, Field) of one schema column: the song must give it where the model reads it and it cannot be empty."""
    described = {"description": column.expectation() if column.numeric else None}
    if column.name == TRACK_ID:
        return Optional[str], Field(None, min_length=1, pattern=r"\S", description="echoed in the answer")
    if column.kind == "date":
        return Optional[str], Field(None, pattern=RELEASE_DATE_PATTERN, description="YYYY, YYYY-MM or YYYY-MM-DD")
    if column.kind == "text":
        return Optional[str], Field(None)
    kind = int if column.kind == "int" else float
    bounds = {"ge": column.low, "le": column.high}
    if column.kind == "float":
        bounds["allow_inf_nan"] = False
    if required and not column.nullable:
        return kind, Field(..., **bounds, **described)
    return Optional[kind], Field(None, **bounds, **described)


def song_model(required: tuple[str, ...]) -> type[BaseModel]:
    """The pydantic model of one song: the raw dataset's columns but the label and playlist fields; those in
    `required` (the model's, Predictor.required) must be given unless the schema lets them be empty. Other keys,
    the label and playlist fields among them, are ignored, as predict ignores extra columns."""
    fields = {column.name: _song_field(column, column.name in required) for column in COLUMNS
              if column.name != LABEL and column.name not in PLAYLIST_FIELDS}
    return create_model("Song", __config__=ConfigDict(extra="ignore"), **fields)


class GenreProbability(BaseModel):
    genre: str
    probability: float


class SongPrediction(BaseModel):
    track_id: Optional[str] = Field(None, description="the song's track_id, where it gave one")
    genre: str = Field(description="the most likely genre")
    probabilities: dict[str, float] = Field(description="every genre's probability, in the model's genre order")
    top: list[GenreProbability] = Field(description="the top_k most likely genres, most likely first")


class Predictions(BaseModel):
    predictions: list[SongPrediction]


# --- predicting ----------------------------------------------------------------------------------------------


def song_frame(songs: list[BaseModel], columns: tuple[str, ...]) -> pd.DataFrame:
    """Songs as the frame a CSV of them reads as (schema.read_songs): float64 numbers, pandas' str text, NaN where
    empty; the columns given, in their order."""
    by_name = {column.name: column for column in COLUMNS}
    frame = {}
    for name in columns:
        values = [getattr(song, name) for song in songs]
        if by_name[name].numeric:
            frame[name] = np.array([np.nan if value is None else value for value in values], dtype=np.float64)
        else:
            frame[name] = pd.Series(values, dtype="str")
    return pd.DataFrame(frame)


class Server:
    """One worker's model: the Predictor of `spotify-genre predict`, and the thread it runs on."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.predictor = Predictor(Settings(settings.model, settings.preprocessor))
        self.classes = self.predictor.classes
        if not Path(settings.model).is_file():
            raise BundleError(f"{settings.model}: no model bundle there (train one with `dvc repro`, or pass --model)")
        self.song = song_model(self.predictor.required)
        self.columns = tuple(name for name in self.predictor.required if name != TRACK_ID)
        self.description = self._describe()
        self.loaded = False
        self._waiting: queue.Queue = queue.Queue()

    def _describe(self) -> dict:
        settings = self.settings
        metrics_path = settings.metrics or (DEFAULT_METRICS if Path(DEFAULT_METRICS).is_file() else None)
        metrics = None
        if metrics_path is not None:
            try:
                metrics = json.loads(Path(metrics_path).read_text())
            except (OSError, ValueError) as error:
                raise ParamsError(f"{metrics_path}: not a metrics file ({error})") from None
        return {
            "artifact": {"name": settings.artifact_name, "version": settings.artifact_version},
            "bundle": {"file": Path(settings.model).name,
                       "sha256": hashlib.sha256(Path(settings.model).read_bytes()).hexdigest()},
            "preprocessor": {"file": Path(settings.preprocessor).name, "sha256": self.predictor.pre.sha256},
            "genres": list(self.classes),
            "metrics": metrics,
            "limits": {"max_rows": settings.max_rows, "max_bytes": settings.max_bytes},
        }

    def load(self) -> None:
        """Load the bundle, torch on the numerics pin's fixed inference threads."""
        import torch

        threads = inference_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        self.predictor.load_model()
        self.loaded = True

    def start(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_S)  # the event loop gets the interpreter back between pandas calls
        gc.freeze()  # the loaded libraries and model: out of every later collection's way
        gc.set_threshold(50_000, 20, 20)  # a young collection per 50,000 allocations, not 700: a request makes many
        self._thread = threading.Thread(target=self._answer_forever, name="model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._waiting.put(None)
        self._thread.join()

    async def predict(self, songs: list[BaseModel], top_k: int) -> tuple[int, bytes]:
        """(status, JSON body) for these songs (valid Song models): their predictions, from the model thread."""
        if not songs:
            return 200, b'{"predictions":[]}'
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting.put(_Request(songs, top_k, answer, loop))
        return await answer

    def _answer_forever(self) -> None:
        """Take every request waiting (up to max_rows songs in all), read their songs into model inputs together,
        then run the model on each request's rows alone. A song's inputs do not depend on the other rows read with
        it, but the model's last digits depend on the rows of its batch: so a request's numbers are those of
        `spotify-genre predict` on a file of its songs, whatever else is in flight, while the per-call cost of
        preprocessing (pandas) is paid once for all the requests waiting."""
        while True:
            request = self._waiting.get()
            if request is None:
                return
            batch, rows = [request], len(request.songs)
            while rows < self.settings.max_rows:
                try:
                    request = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if request is None:
                    self._waiting.put(None)
                    break
                batch.append(request)
                rows += len(request.songs)
            try:
                answers = self._answer_together(batch)
            except Exception:  # noqa: BLE001 - one request's songs (a column a text encoder needs): each alone
                answers = [self._answer_alone(request) for request in batch]
            for request, answer in zip(batch, answers):
                request.loop.call_soon_threadsafe(_settle, request.answer, answer)

    def _answer_together(self, batch: list["_Request"]) -> list[tuple[int, bytes]]:
        songs = [song for request in batch for song in request.songs]
        features = self._features(songs)
        answers, start = [], 0
        for request in batch:
            answers.append((200, self._predictions(request, features[start:start + len(request.songs)])))
            start += len(request.songs)
        return answers

    def _answer_alone(self, request: "_Request") -> tuple[int, bytes] | BaseException:
        try:
            return 200, self._predictions(request, self._features(request.songs))
        except PipelineError as error:
            return 422, json.dumps({"detail": [{"type": "value_error", "loc": ["body"], "msg": str(error)}]}).encode()
        except Exception as error:  # noqa: BLE001 - raised in the request's handler: a 500, the server goes on
            return error

    def _features(self, songs: list[BaseModel]) -> np.ndarray:
        # The songs passed the Song model, made from the schema's columns with their bounds, kinds, nullability
        # and date pattern: what catalogue.cell_problems would flag, it refused (tests/test_serve.py holds this).
        frame = song_frame(songs, self.columns)
        no_problems = pd.DataFrame({"row": pd.Series(dtype="int64")})
        return self.predictor.prepare_songs(Songs(frame, no_problems, 0)).features

    def _predictions(self, request: "_Request", features: np.ndarray) -> bytes:
        """The JSON answer: predictions.prediction_table's genre and top k, without building its frame."""
        probabilities = self.predictor.probabilities(features)
        classes = self.classes
        genres = probabilities.argmax(axis=1).tolist()
        order = top_genres(probabilities, request.top_k).tolist()
        rows = probabilities.tolist()
        answers = [{"track_id": song.track_id, "genre": classes[genres[i]],
                    "probabilities": dict(zip(classes, rows[i])),
                    "top": [{"genre": classes[k], "probability": rows[i][k]} for k in order[i]]}
                   for i, song in enumerate(request.songs)]
        return json.dumps({"predictions": answers}, separators=(",", ":")).encode()


@dataclass
class _Request:
    songs: list[BaseModel]
    top_k: int
    answer: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _settle(answer: asyncio.Future, outcome) -> None:
    if answer.cancelled():  # the client went away
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


# --- the application -----------------------------------------------------------------------------------------


def _too_large(what: str) -> JSONResponse:
    return JSONResponse({"detail": f"request too large: {what}"}, status_code=413)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is a 413 before any of it is parsed. A declared
    Content-Length is checked at once; a chunked body is read up to the limit, then handed on whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                return await _too_large(f"over {self.max_bytes:,} bytes")(scope, receive, send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _too_large(f"over {self.max_bytes:,} bytes")(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


def create_app(settings: ServeSettings) -> FastAPI:
    """The application of one worker: its model loaded at start-up, before the first request is taken."""
    server = Server(settings)
    server.load()  # here, so a bundle that does not load is one line from the command, not a failed start-up
    Song = server.song  # noqa: N806 - a class

    async def lifespan(app: FastAPI):
        server.start()
        yield
        server.stop()  # after uvicorn has answered every request in flight

    app = FastAPI(title="spotify-genre", version=_version(), lifespan=lifespan,
                  description="The genre of Spotify songs from their audio features (reports/model_card.md).")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        if any(tuple(e["loc"]) == ("body",) and e["type"] == "too_long" for e in errors):
            return _too_large(f"over {settings.max_rows:,} songs")
        return JSONResponse({"detail": _plain(errors)}, status_code=422)

    @app.post("/predict", response_model=Predictions, summary="the genre of each song",
              responses={413: {"description": "more songs or bytes than the server takes"},
                         422: {"description": "a song the schema refuses: `loc` is [\"body\", row, field]"}})
    async def predict(songs: Annotated[list[Song], Body(max_length=settings.max_rows)],
                      top_k: Annotated[int, Query(ge=0, le=len(server.classes),
                                                  description="how many of the likeliest genres to list")]
                      = DEFAULT_TOP_K) -> Response:
        status, body = await server.predict(songs, top_k)
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/health", summary="the process answers")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="the model is loaded")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": server.loaded}, status_code=200 if server.loaded else 503)

    @app.get("/model", summary="what is served: artifact, files' sha256, training metrics")
    async def model() -> dict:
        return server.description

    app.add_middleware(BodyLimit, max_bytes=settings.max_bytes)
    return app


def _plain(errors: list[dict]) -> list[dict]:
    """Validation errors as JSON can hold them (pydantic may put exceptions in `ctx`)."""
    return json.loads(json.dumps([{key: value for key, value in e.items() if key != "url"} for e in errors],
                                 default=str))


def _version() -> str:
    from spotify_genre import __version__

    return __version__


def app_from_environment() -> FastAPI:
    """The application a uvicorn worker process starts (`--factory`): settings from $SPOTIFY_GENRE_SERVE."""
    return create_app(ServeSettings(**json.loads(os.environ.get(ENVIRONMENT, "{}"))))


# --- the command ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    defaults = ServeSettings()
    parser = argparse.ArgumentParser(
        prog="spotify-genre serve", description="Serve the model over HTTP: POST /predict with a JSON list of songs "
        "(the raw dataset's columns); GET /health, /ready, /model; the schema at /docs and /openapi.json.")
    parser.add_argument("--model", metavar="PATH", default=defaults.model,
                        help=f"model bundle (default {defaults.model})")
    parser.add_argument("--preprocessor", metavar="PATH", default=defaults.preprocessor,
                        help=f"fitted preprocessor (default {defaults.preprocessor})")
    parser.add_argument("--metrics", metavar="PATH", default=None,
                        help=f"training metrics to report in /model (default {DEFAULT_METRICS} where it exists)")
    parser.add_argument("--artifact-name", metavar="NAME", default=None,
                        help="the registered artifact's name, reported in /model")
    parser.add_argument("--artifact-version", metavar="VERSION", default=None,
                        help="the registered artifact's version, reported in /model")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=whole_number(0, 65535), default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT})")
    parser.add_argument("--workers", type=whole_number(1, MAX_WORKERS), default=1,
                        help="worker processes, each with its own model (about 0.3 GB) (default 1)")
    parser.add_argument("--max-rows", type=whole_number(1, 1_000_000), default=DEFAULT_MAX_ROWS,
                        help=f"most songs in one request (default {DEFAULT_MAX_ROWS:,}); more is a 413")
    parser.add_argument("--max-bytes", type=whole_number(1, 1 << 30), default=DEFAULT_MAX_BYTES,
                        help=f"largest request body (default {DEFAULT_MAX_BYTES:,}); larger is a 413")
    parser.add_argument("--graceful-timeout", type=whole_number(1, 3600), default=30, metavar="SECONDS",
                        help="on SIGTERM, how long requests in flight may take before they are cut (default 30)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level; info logs every request (default info)")
    return parser


def main(argv: list[str]) -> int:
    import uvicorn

    args = _parser().parse_args(argv)
    settings = ServeSettings(args.model, args.preprocessor, args.metrics, args.artifact_name, args.artifact_version,
                             args.max_rows, args.max_bytes)
    options = dict(host=args.host, port=args.port, log_level=args.log_level,
                   timeout_graceful_shutdown=args.graceful_timeout, server_header=False)
    if args.workers == 1:
        uvicorn.run(create_app(settings), **options)
    else:
        Server(settings)  # every error a worker would meet, as one line here, before any worker starts
        os.environ[ENVIRONMENT] = json.dumps(settings.__dict__)
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=args.workers, **options)
    sys.stdout.flush()
    return 0
