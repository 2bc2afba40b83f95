"""Predicting one input into one output a chunk at a time, in this process or on a pool of worker processes.

Each chunk is read, checked and turned into model inputs on its own (songs/csv_reader.py), the text scores of texts seen
in earlier chunks remembered (score_cache.py). The model then sees the rows
in the batches a whole-file run gives it (MODEL_BATCH_ROWS rows, counted from the first song predicted): a matrix
product's last digits depend on the batch a row is in, so this is what makes the output's bytes those of a
whole-file run whatever --chunk-rows, and however many workers. In one process the model and the output's
formatting run on a thread of their own, beside the reading of the next chunk (torch, numpy and Arrow let go of
the interpreter while they compute), so two cores are used without a second copy of the model. Results are taken
in input order, so messages and output come in file order too. Memory holds a few chunks at a time, whatever the
input's size.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from spotify_genre.errors import BundleError, DataError, quoted
from spotify_genre.predict.sinks import open_sink, render
from spotify_genre.predict.table import prediction_table
from spotify_genre.preprocessing.novelty import COLUMN as NOVELTY
from spotify_genre.preprocessing.novelty import FIELDS as NOVELTY_FIELDS
from spotify_genre.preprocessing.preprocessor import load_preprocessor, model_inputs
from spotify_genre.preprocessing.score_cache import remembering
from spotify_genre.songs.csv_reader import (CSV, STDIO, Songs, csv_chunks, header_only, open_csv_stream, parse_csv,
                                            place, required_columns)
from spotify_genre.songs.features import with_characters
from spotify_genre.songs.parquet_reader import open_parquet, parquet_batches, parse_parquet
from spotify_genre.songs.records import Records
from spotify_genre.songs.schema import TRACK_ID
from spotify_genre.workers import die_with_parent

DEFAULT_CHUNK_ROWS = 32_768
MODEL_BATCH_ROWS = 2048  # model.predict_proba's batch_size, so a whole-file run batches the same (a test holds it)
ROW = "row"
HELD_LINES = 10_000
# How long one thread may hold the interpreter while another waits for it (Python's default is 5 ms). The model
# thread needs it back after each of the 30-odd torch operations of a batch, while this thread reads pandas frames.
SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class Settings:
    """What predicting needs besides the input and output: the same for every file of a catalogue."""

    model: str
    preprocessor: str
    top_k: int = 0
    skip_invalid: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    novelty: bool = False  # add each song's novelty slice (spotify_genre/preprocessing/novelty.py) as a last column


@dataclass(frozen=True)
class Outcome:
    songs: int
    predicted: int
    invalid: int


@dataclass(frozen=True)
class CsvChunk:
    header: bytes
    records: Records
    where: str


@dataclass(frozen=True)
class ParquetChunk:
    batch: object  # pyarrow.RecordBatch
    first_row: int
    where: str


@dataclass
class Prepared:
    """A chunk checked: its valid songs' model inputs and ids, its song count and its invalid cells."""

    features: np.ndarray
    ids: pd.Series
    songs: int
    problems: pd.DataFrame


def describe(cell) -> str:
    """One invalid cell (a row of Songs.problems), with where its song is in the input."""
    value = cell.value
    if isinstance(value, (float, np.floating)):
        value = int(value) if float(value).is_integer() else float(value)
    shown = "" if pd.isna(value) else f" {quoted(value)}:"
    return f"{place(int(cell.row), int(cell.line))}, column {cell.column!r}:{shown} {cell.reason}"


class Predictor:
    """What predicting needs in one process: the preprocessor, and the model bundle once there is a row to predict,
    with its network compiled once (model.Classifier)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pre = load_preprocessor(settings.preprocessor)
        self.classes = tuple(self.pre.classes)
        if settings.novelty and self.pre.known is None:
            raise BundleError(f"{settings.preprocessor}: holds no training albums and artists (made by an older "
                              "version); --novelty needs a preprocessor from `dvc repro preprocess`")
        self.required = required_columns(self.pre.input_features,
                                         self.pre.song_fields + (NOVELTY_FIELDS if settings.novelty else ()))
        self._scoring = remembering(self.pre)  # the preprocessor, its text scores remembered across chunks
        self._model = None
        self._classifier = None
        self._loading = threading.Lock()

    def prepare(self, chunk: CsvChunk | ParquetChunk, with_features: bool = True) -> Prepared:
        if isinstance(chunk, CsvChunk):
            songs = parse_csv(chunk.header, chunk.records, chunk.where, self.required)
        else:
            songs = parse_parquet(chunk.batch, chunk.first_row, self.required, chunk.where)
        return self._valid(songs, with_features)

    def _valid(self, songs: Songs, with_features: bool) -> Prepared:
        invalid = np.unique(songs.problems["row"].to_numpy()) - songs.first_row
        keep = np.setdiff1d(np.arange(len(songs.frame)), invalid)
        kept = songs.frame.iloc[keep].reset_index(drop=True)
        ids = kept[TRACK_ID] if TRACK_ID in kept.columns else pd.Series(songs.first_row + keep + 1, name=ROW)
        if self.settings.novelty:
            ids = pd.DataFrame({ids.name: ids.to_numpy(), NOVELTY: self.pre.known.slices(kept)})
        if with_features and len(kept):
            features = self._with_characters(model_inputs(self._scoring, kept), kept)
        else:
            features = np.zeros((0, len(self.pre.output_features)), dtype=np.float32)
        return Prepared(features, ids, len(songs.frame), songs.problems)

    def prepare_songs(self, songs: Songs) -> Prepared:
        """Songs already read and checked elsewhere (the HTTP server's): their model inputs, as for a chunk."""
        return self._valid(songs, True)

    def load_model(self) -> None:
        """Load the model bundle now (it is otherwise loaded with the first chunk known to be good)."""
        self._bundle()

    def _bundle(self):
        with self._loading:
            if self._model is None:  # torch loads only once a chunk is known to be good
                self._model, self._classifier = self._load_bundle()
        return self._model

    def _load_bundle(self):
        from spotify_genre.model.bundle import load_bundle
        from spotify_genre.model.inference import Classifier

        bundle = load_bundle(self.settings.model, feature_names=self.pre.output_features,
                             class_names=self.classes, preprocessor_sha256=self.pre.sha256,
                             preprocessor_path=self.settings.preprocessor)
        return bundle, Classifier(bundle.model)

    def _with_characters(self, features: np.ndarray, songs: pd.DataFrame) -> np.ndarray:
        """The model's input: with the characters of the text fields where it has a text encoder."""
        encoder = self._bundle().architecture.get("text_encoder")
        if encoder is None:
            return features
        absent = [field for field in encoder["fields"] if field not in songs.columns]
        if absent:
            raise DataError(f"column {absent[0]!r} is missing; the model {self.settings.model} reads the characters "
                            f"of {', '.join(encoder['fields'])}")
        return with_characters(features, songs, encoder)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """The model's probabilities of these rows (rows × classes), in batches of MODEL_BATCH_ROWS from the first."""
        self._bundle()
        return self._classifier.probabilities(features, batch_size=MODEL_BATCH_ROWS)

    def predict(self, features: np.ndarray, ids: pd.Series, fmt: str):
        """The predictions of these rows, rendered for the output format (sinks.render)."""
        probabilities = self.probabilities(features)
        return render(prediction_table(ids, probabilities, self.classes, top_k=self.settings.top_k), fmt)


class InProcess:
    """Prepares each chunk at once, and predicts on one thread beside this one, in this process; with `early`,
    that thread starts by loading the model (importing torch takes a second or two), while the first chunk is read.
    A bundle that does not load is then loaded again where the first chunk needs it, and the error raised there."""

    ahead, predicting_ahead = 0, 2

    def __init__(self, predictor: Predictor, early: bool = False):
        self.predictor = predictor
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
        if early:
            self._model_thread.submit(predictor.load_model)

    @staticmethod
    def _done(step: Callable, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(step(*args))
        except BaseException as error:  # noqa: BLE001 - handed on, raised where the result is taken
            future.set_exception(error)
        return future

    def prepare(self, chunk, with_features: bool) -> Future:
        return self._done(self.predictor.prepare, chunk, with_features)

    def predict(self, features, ids, fmt: str) -> Future:
        return self._model_thread.submit(self.predictor.predict, features, ids, fmt)

    def close(self) -> None:
        """Stop the thread, not waiting: after a whole run it has nothing left to do, and after an error what it
        still does (loading the model, or a batch no one will write) need not hold the error up."""
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        sys.setswitchinterval(self._switch_interval)


_WORKER: Predictor | None = None  # a pool worker's own


def _start_worker(settings: Settings, parent: int) -> None:
    die_with_parent(parent)  # even a SIGKILL of predict leaves no worker (nor the resource tracker) running
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    global _WORKER
    _WORKER = Predictor(settings)


def _prepare_in_worker(chunk, with_features: bool) -> Prepared:
    return _WORKER.prepare(chunk, with_features)


def _predict_in_worker(features, ids, fmt: str):
    return _WORKER.predict(features, ids, fmt)


class Pool:
    """Worker processes (spawned, so each imports the numerics pin first), each with its own preprocessor and
    model; started on first use, for inputs of more than one chunk."""

    def __init__(self, settings: Settings, workers: int):
        self.settings, self.workers, self._executor = settings, workers, None
        self.ahead = self.predicting_ahead = workers + 1

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_worker, initargs=(self.settings, os.getpid()))
        return self._executor

    def prepare(self, chunk, with_features: bool) -> Future:
        return self._pool().submit(_prepare_in_worker, chunk, with_features)

    def predict(self, features, ids, fmt: str) -> Future:
        return self._pool().submit(_predict_in_worker, features, ids, fmt)

    def close(self, wait: bool = True) -> None:
        """Stop the workers: after their work, or (wait False, after an error or a signal) without waiting for the
        chunks they are on, whose results no one will write."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None


class _Waiting:
    """Valid rows' model inputs and ids, waiting to make up whole groups of model batches."""

    def __init__(self, group_rows: int):
        self.group_rows, self.features, self.ids, self.rows = group_rows, [], [], 0

    def add(self, features: np.ndarray, ids: pd.Series) -> None:
        """Rows whose model inputs are ready, in input order."""
        if len(ids):
            self.features.append(features)
            self.ids.append(ids)
            self.rows += len(ids)

    def take(self, final: bool) -> Iterator[tuple[np.ndarray, pd.Series]]:
        """Whole groups of rows (each starting a model batch, as in a whole-file run), and with `final` the rest."""
        if not self.rows or (self.rows < self.group_rows and not final):
            return
        features = np.concatenate(self.features)
        ids = pd.concat(self.ids, ignore_index=True)
        whole = len(ids) if final else len(ids) - len(ids) % self.group_rows
        self.rows = len(ids) - whole
        self.features, self.ids = ([features[whole:]], [ids.iloc[whole:].reset_index(drop=True)]) if self.rows else (
            [], [])
        for start in range(0, whole, self.group_rows):
            end = min(start + self.group_rows, whole)
            yield features[start:end], ids.iloc[start:end].reset_index(drop=True)


def _chunks(kind: str, stream, source: str, where: str, required: tuple[str, ...],
            rows: int) -> Iterator[CsvChunk | ParquetChunk]:
    if kind == CSV:
        header, records = csv_chunks(stream, where, rows)
        first, found = None, False
        for chunk in records:
            first = first or chunk
            if chunk.rows:
                found = True
                yield CsvChunk(header, chunk, where)
        if not found:
            raise header_only(header, first, where, required)
        return
    parquet, columns = open_parquet(source, where, required)
    for batch, first_row in parquet_batches(parquet, columns, where, rows):
        yield ParquetChunk(batch, first_row, where)


def predict_stream(source: str, target: str, fmt: str, predictor: Predictor, log: Callable[[str], None],
                   pool: Pool | None = None) -> Outcome:
    """Predict every song of `source` into `target` (format `fmt`), on `pool` when the input has more than one
    chunk; invalid rows stop the run (a DataError naming the first and counting them all) or, with skip_invalid,
    are left out and each listed through `log`."""
    settings = predictor.settings
    where = "<stdin>" if source == STDIO else source
    with open_csv_stream(source, where) as (kind, stream):
        chunks = _chunks(kind, stream, source, where, predictor.required, settings.chunk_rows)
        first = next(chunks)
        second = next(chunks, None)
        runner = pool if pool is not None and second is not None else InProcess(predictor, early=second is not None)
        try:
            with open_sink(target, fmt, source) as sink:
                return _run(_again(first, second, chunks), runner, sink, fmt, settings, where, log)
        finally:
            if runner is not pool:
                runner.close()


def _again(first, second, rest) -> Iterator:
    yield first
    if second is not None:
        yield second
        yield from rest


def _run(chunks, runner, sink, fmt: str, settings: Settings, where: str, log: Callable[[str], None]) -> Outcome:
    group = max(1, settings.chunk_rows // MODEL_BATCH_ROWS) * MODEL_BATCH_ROWS
    waiting = _Waiting(group)
    preparing: collections.deque[Future] = collections.deque()
    predicting: collections.deque[Future] = collections.deque()
    counts = collections.Counter()
    first_problem = None
    held: list[str] = []  # skipped-row lines, held while no row is valid: for "all rows are invalid" alone

    def write(block: bool) -> None:
        while predicting and (block or len(predicting) > runner.predicting_ahead or predicting[0].done()):
            sink.write(predicting.popleft().result())

    def take(prepared: Prepared) -> None:
        nonlocal first_problem
        counts["songs"] += prepared.songs
        problems = prepared.problems
        if len(problems):
            counts["invalid"] += problems["row"].nunique()
            if first_problem is None:
                first_problem = problems.iloc[0]
            if settings.skip_invalid:
                held.extend(f"{where}: skipped {describe(cell)}" for cell in problems.itertuples(index=False))
        if held and (counts["invalid"] < counts["songs"] or len(held) > HELD_LINES):
            for line in held:
                log(line)
            held.clear()
        if settings.skip_invalid or not counts["invalid"]:
            waiting.add(prepared.features, prepared.ids)
            for features, ids in waiting.take(final=False):
                counts["predicted"] += len(ids)
                predicting.append(runner.predict(features, ids, fmt))
        write(block=False)

    for chunk in chunks:
        preparing.append(runner.prepare(chunk, settings.skip_invalid or not counts["invalid"]))
        while len(preparing) > runner.ahead:
            take(preparing.popleft().result())
    while preparing:
        take(preparing.popleft().result())
    invalid, songs = counts["invalid"], counts["songs"]
    if invalid and not settings.skip_invalid:
        more = f" ({invalid} invalid rows in all)" if invalid > 1 else ""
        raise DataError(f"{where}: {describe(first_problem)}{more}; --skip-invalid leaves invalid rows out")
    if invalid == songs:
        raise DataError(f"{where}: all {songs} rows are invalid, nothing to predict (first: "
                        f"{describe(first_problem)})")
    for features, ids in waiting.take(final=True):
        counts["predicted"] += len(ids)
        predicting.append(runner.predict(features, ids, fmt))
    write(block=True)
    if invalid:
        log(f"{where}: {invalid} invalid rows left out, {counts['predicted']} predicted")
    return Outcome(songs, counts["predicted"], invalid)
