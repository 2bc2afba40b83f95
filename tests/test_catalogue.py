"""Whole-catalogue predict: streamed CSV (plain and compressed), Parquet and stdin in, CSV / .csv.gz / Parquet out,
byte-identical whatever --chunk-rows or --workers; exact line numbers across chunks; atomic outputs; shard folders
that resume; the same shards on a real two-worker Dask cluster on 127.0.0.1."""

from __future__ import annotations

import bz2
import csv
import gzip
import inspect
import io
import lzma
import os
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.params import load_params
from pipeline.synthetic import synthetic_songs
from spotify_genre.predict import predictor as streaming
from spotify_genre.predict import sinks as outputs
from spotify_genre.preprocessing.preprocessor import load_preprocessor
from spotify_genre.songs import records
from spotify_genre.songs.csv_reader import read_csv_bytes, required_columns
from spotify_genre.songs.features import TEXT_FIELDS
from spotify_genre.songs.records import split_records
from spotify_genre.songs.schema import read_songs
from tests.conftest import ROOT
from tests.test_predict import _assert_clean_failure, _save_bundle, predict_here  # noqa: F401 (a fixture)

ROWS = 1500
CHUNKS = (3, 97, 1000, 100_000)  # through quoted and multi-line records; one chunk is the whole-file run


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    return _save_bundle(tmp_path_factory.mktemp("bundle"), load_params(ROOT / "params.yaml").select.candidates)


def _rewritten(text: str, blank_every: int = 0, eol: str = "\n") -> tuple[bytes, list[int]]:
    """The CSV `text` written again record by record (blank lines between some, `eol` line endings), and the line
    each song starts on."""
    out, lines, line = io.StringIO(), [], 1
    writer = csv.writer(out, lineterminator=eol)
    for number, record in enumerate(csv.reader(io.StringIO(text, newline=""))):
        if number and blank_every and number % blank_every == 0:
            out.write(eol)
            line += 1
        if number:
            lines.append(line)
        before = out.tell()
        writer.writerow(record)
        line += out.getvalue()[before:].count("\n")
    return out.getvalue().encode("utf-8"), lines


def _catalogue(rows: int = ROWS, seed: int = 3) -> pd.DataFrame:
    """Synthetic songs whose titles need quoting: quotes, commas, and titles of two and three lines; the songs of
    an album name share an album id (the synthetic table's own ids are all distinct), so album scores vary."""
    songs = synthetic_songs(rows, seed=seed)
    songs["track_album_id"] = songs["track_album_name"].str.replace("Album ", "album-", regex=False)
    names = songs["track_name"].to_numpy(dtype=object, copy=True)
    names[::7] = 'He said "hi", then left'
    names[3::11] = "Two\nlines"
    names[5::13] = "Three\n\nlines, one blank"
    return songs.assign(track_name=names, track_album_name=songs["track_album_name"].where(
        np.arange(rows) % 17 != 0, "Album, \"Live\"\nat home"))


@pytest.fixture(scope="module")
def catalogue_csv() -> tuple[bytes, list[int]]:
    return _rewritten(_catalogue().to_csv(index=False), blank_every=50)


def _run(predict_here, args: list[str], bundle, code: int = 0):
    result = predict_here(args, bundle)
    assert result.returncode == code, result.stderr.decode()
    return result


@pytest.mark.slow
def test_records_are_cut_where_pandas_cuts_them():
    """Random CSVs (quotes, doubled quotes, multi-line and empty fields, blank and whitespace lines, CRLF, and the
    non-RFC cases: a quote inside an unquoted field, a lone CR) cut into chunks of 1, 2 and 5 records, read in
    blocks of 1, 3 and 64 bytes: the chunks put together are the bytes, each chunk read after the header gives
    pandas' rows of the whole, and every record starts on the line Python's csv module counts."""
    rng = random.Random(7)
    cells = ["x", "a b", '"q,1"', '"two\nlines"', '"say ""hi"""', "", "1.5", '"\r\n"', "é", '"a\n\nb"']
    odd = ['x"y', ' "x\ny"', "z\rw", '"a"b']
    for trial in range(120):
        pool = cells + (odd if trial % 3 == 0 else [])
        rows = []
        for _ in range(rng.randint(0, 25)):
            kind = rng.random()
            rows.append("" if kind < 0.08 else " \t" if kind < 0.12 else ",".join(rng.choice(pool) for _ in "abc"))
        eol = rng.choice(["\n", "\r\n"])
        data = ("a,b,c" + eol + eol.join(rows) + (eol if rng.random() < 0.7 else "")).encode("utf-8")
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        expected_lines, previous = [], 0
        for _ in reader:
            expected_lines.append(previous + 1)
            previous = reader.line_num
        try:
            whole = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        except pd.errors.ParserError:
            whole = None
        for rows_per, block in ((1, 1), (2, 3), (5, 64)):
            chunks = list(split_records(io.BytesIO(data), rows_per, "x", block_bytes=block))
            assert b"".join(chunk.data for chunk in chunks) == data
            assert [int(n) for chunk in chunks for n in chunk.lines] == expected_lines, data
            if whole is None or not chunks:
                continue
            header, parts = chunks[0].data, [chunk for chunk in chunks[1:] if chunk.rows]
            assert [chunk.first_row for chunk in parts] == list(np.cumsum([0] + [c.rows for c in parts])[:-1])
            read = [pd.read_csv(io.BytesIO(header + chunk.data), dtype=str, keep_default_na=False) for chunk in parts]
            assert [len(frame) for frame in read] == [chunk.rows for chunk in parts]
            together = pd.concat(read, ignore_index=True) if read else whole.head(0)
            assert together.equals(whole), data


@pytest.mark.slow
def test_streamed_csv_is_byte_identical_whatever_the_chunk_size(catalogue_csv, bundle, tmp_path, predict_here,
                                                                monkeypatch):
    """Chunks of 3, 97 and 1,000 records against one chunk (the whole-file run), read in blocks of 997 bytes, which
    end inside quoted and multi-line fields."""
    monkeypatch.setattr(records, "BLOCK_BYTES", 997)
    data, _ = catalogue_csv
    (tmp_path / "songs.csv").write_bytes(data)
    outputs_by_chunk = {}
    for rows in CHUNKS:
        _run(predict_here, ["songs.csv", "-o", f"out-{rows}.csv", "--top-k", "3", "--chunk-rows", str(rows)], bundle)
        outputs_by_chunk[rows] = (tmp_path / f"out-{rows}.csv").read_bytes()
    whole = outputs_by_chunk[100_000]
    assert whole.count(b"\n") == ROWS + 1
    assert all(output == whole for output in outputs_by_chunk.values())
    crlf, _ = _rewritten(_catalogue().to_csv(index=False), eol="\r\n")
    (tmp_path / "crlf.csv").write_bytes(crlf)
    _run(predict_here, ["crlf.csv", "-o", "crlf-out.csv", "--top-k", "3", "--chunk-rows", "97"], bundle)
    assert (tmp_path / "crlf-out.csv").read_bytes() == whole


def test_the_model_batches_are_those_of_a_whole_file_run():
    from spotify_genre.model import predict_proba

    assert inspect.signature(predict_proba).parameters["batch_size"].default == streaming.MODEL_BATCH_ROWS


@pytest.mark.slow
def test_workers_give_the_same_bytes(catalogue_csv, bundle, tmp_path, predict_here):
    """Two spawned worker processes (real pool, each with its own model) on a many-chunk input."""
    data, _ = catalogue_csv
    (tmp_path / "songs.csv").write_bytes(data)
    _run(predict_here, ["songs.csv", "-o", "one.parquet", "--chunk-rows", "100000"], bundle)
    _run(predict_here, ["songs.csv", "-o", "pool.parquet", "--chunk-rows", "300", "--workers", "2"], bundle)
    assert (tmp_path / "pool.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()


def _inputs(folder: Path, data: bytes, bundle) -> dict[str, Path]:
    """The same songs as CSV, gzip, bzip2, xz and zstd CSV, and Parquet (row groups of 700 songs)."""
    folder.mkdir(exist_ok=True)
    plain = folder / "songs.csv"
    plain.write_bytes(data)
    files = {"csv": plain}
    for suffix, pack in ((".gz", lambda b: gzip.compress(b, mtime=0)), (".bz2", bz2.compress), (".xz", lzma.compress),
                         (".zst", lambda b: pa.compress(b, "zstd", asbytes=True))):
        files[suffix] = folder / f"songs.csv{suffix}"
        files[suffix].write_bytes(pack(data))
    required = required_columns(load_preprocessor(bundle[1]).input_features)
    songs = read_songs(io.BytesIO(data), "songs.csv", required=required, allow_extra=True)
    files["parquet"] = folder / "songs.parquet"
    songs.to_parquet(files["parquet"], row_group_size=700, index=False)
    return files


def test_compressed_csv_parquet_and_stdin_give_the_same_predictions(catalogue_csv, bundle, tmp_path, predict_here,
                                                                    monkeypatch):
    data, _ = catalogue_csv
    files = _inputs(tmp_path / "in", data, bundle)
    expected = _run(predict_here, [str(files["csv"]), "--chunk-rows", "100000"], bundle).stdout
    for name, path in files.items():
        assert _run(predict_here, [str(path), "--chunk-rows", "500"], bundle).stdout == expected, name
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(files[".gz"].read_bytes())))
    assert _run(predict_here, ["-", "--chunk-rows", "500"], bundle).stdout == expected


def test_parquet_and_gzip_outputs_are_the_same_whatever_the_chunk_size(catalogue_csv, bundle, tmp_path,
                                                                       predict_here, monkeypatch):
    data, _ = catalogue_csv
    (tmp_path / "songs.csv").write_bytes(data)
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 400)
    for rows in (97, 1000, 100_000):
        _run(predict_here, ["songs.csv", "-o", f"out-{rows}.parquet", "--chunk-rows", str(rows), "--top-k", "2"],
             bundle)
        _run(predict_here, ["songs.csv", "-o", f"out-{rows}.csv.gz", "--chunk-rows", str(rows), "--top-k", "2"],
             bundle)
    parquet = [(tmp_path / f"out-{rows}.parquet").read_bytes() for rows in (97, 1000, 100_000)]
    packed = [(tmp_path / f"out-{rows}.csv.gz").read_bytes() for rows in (97, 1000, 100_000)]
    assert len(set(parquet)) == 1 and len(set(packed)) == 1
    metadata = pq.ParquetFile(tmp_path / "out-97.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [400, 400, 400, 300]
    table = pd.read_parquet(tmp_path / "out-97.parquet")
    from_csv = pd.read_csv(io.BytesIO(gzip.decompress(packed[0])), keep_default_na=False)
    assert list(table.columns) == list(from_csv.columns)
    assert table.drop(columns=table.select_dtypes("float").columns).astype(str).equals(
        from_csv.drop(columns=from_csv.select_dtypes("float").columns).astype(str))
    floats = table.select_dtypes("float").columns
    assert np.allclose(table[floats].to_numpy(), from_csv[floats].to_numpy(), rtol=0, atol=5e-7)


def _with(data: bytes, song: int, column: str, value: str) -> bytes:
    """The CSV with one song's cell replaced (songs from 0, read and written back by the csv module)."""
    records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    header = records[0]
    songs = [i for i, record in enumerate(records) if i and record]
    records[songs[song]][header.index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(records)
    return out.getvalue().encode("utf-8")


@pytest.mark.slow
def test_errors_name_the_line_of_the_file_whatever_the_chunk(catalogue_csv, bundle, tmp_path, predict_here):
    """Invalid values, a non-number, a repeated header, an unclosed quote at the very end and a byte that is not
    UTF-8, each after multi-line titles and blank lines (so line and row differ), found in
    a later chunk than the first or in the last: the same message as the whole-file run, the line the record
    starts on, and no output left."""
    data, lines = catalogue_csv
    invalid = _with(_with(data, 1210, "energy", "1.74"), 1400, "tempo", "fast")
    header_again = _with(data, 900, "track_id", "x").replace(b"\nx,", b"\n" + data.split(b"\n", 1)[0] + b"\nx,", 1)
    unclosed = data + b'late-id,"never closed,1\n'
    not_utf8 = _with(data, 1300, "track_artist", "CAFE-MARKER").replace(b"CAFE-MARKER", b"Caf\xe9")
    cases = {
        "invalid": (invalid, 3, [f"line {lines[1210]}, column 'energy': 1.74: expected a number in [0, 1] "
                                 "(2 invalid rows in all); --skip-invalid"]),
        "header": (header_again, 3, [f"line {lines[900]} repeats the header"]),
        "unclosed": (unclosed, 3, ["malformed CSV (Error tokenizing data. C error: EOF inside a quoted field "
                                   f"starting at line {data.count(10) + 1})"]),
        "utf8": (not_utf8, 3, [f"line {lines[1300]}: not UTF-8 text"]),
    }
    for case, (content, code, expected) in cases.items():
        (tmp_path / "songs.csv").write_bytes(content)
        messages = set()
        for rows in (97, 1000, 100_000):
            result = predict_here(["songs.csv", "-o", "out.csv", "--chunk-rows", str(rows)], bundle)
            messages.add(_assert_clean_failure(result, code, tmp_path, *expected))
        assert len(messages) == 1, (case, messages)


def test_skip_invalid_lists_rows_as_it_goes_and_the_same_whatever_the_chunk(catalogue_csv, bundle, tmp_path,
                                                                            predict_here, monkeypatch):
    data, lines = catalogue_csv
    bad = _with(_with(_with(data, 10, "valence", "1.7"), 700, "key", "13"), 1499, "tempo", "fast")
    (tmp_path / "bad.csv").write_bytes(bad)
    expected_lines = [f"bad.csv: skipped line {lines[10]}, column 'valence': 1.7: expected a number in [0, 1]",
                      f"bad.csv: skipped line {lines[700]}, column 'key': 13: expected an integer in [-1, 11]",
                      f"bad.csv: skipped line {lines[1499]}, column 'tempo': 'fast': not a number (expected a number "
                      "in [0, 300])",
                      f"bad.csv: 3 invalid rows left out, {ROWS - 3} predicted"]
    results = [_run(predict_here, ["bad.csv", "--skip-invalid", "--chunk-rows", str(rows)], bundle)
               for rows in (97, 100_000)]
    for result in results:
        assert result.stderr.decode().splitlines() == expected_lines
    assert results[0].stdout == results[1].stdout and results[0].stdout.count(b"\n") == ROWS - 2

    monkeypatch.setattr(records, "BLOCK_BYTES", 4096)
    read_when_logged = []
    stdin = io.BytesIO(bad)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
    settings = streaming.Settings(str(bundle[0]), str(bundle[1]), skip_invalid=True, chunk_rows=97)
    streaming.predict_stream("-", str(tmp_path / "streamed.csv"), "csv", streaming.Predictor(settings),
                             lambda line: read_when_logged.append(stdin.tell()))
    assert read_when_logged[0] < len(bad) and len(read_when_logged) == 4


BAD = {
    # name: (make the file in the folder, arguments, exit code, in the one line)
    "corrupt gzip": (lambda f, d: f.joinpath("s.csv.gz").write_bytes(_flipped(gzip.compress(d, mtime=0))),
                     ["s.csv.gz", "-o", "out.csv"], 3, ["s.csv.gz: corrupt gzip data"]),
    "cut-short gzip": (lambda f, d: f.joinpath("s.csv.gz").write_bytes(gzip.compress(d, mtime=0)[:3000]),
                       ["s.csv.gz", "-o", "out.csv"], 3, ["corrupt gzip data", "end-of-stream marker"]),
    "not gzip": (lambda f, d: f.joinpath("s.csv.gz").write_bytes(d), ["s.csv.gz", "-o", "out.csv"], 3,
                 ["not gzip data, though its name says so"]),
    "parquet without tempo": (lambda f, d: _parquet(d).drop(columns="tempo").to_parquet(f / "s.parquet"),
                              ["s.parquet", "-o", "out.csv"], 3, ["s.parquet: missing column 'tempo'"]),
    "parquet energy as text": (lambda f, d: _parquet(d).astype({"energy": str}).to_parquet(f / "s.parquet"),
                               ["s.parquet", "-o", "out.csv"], 3,
                               ["column 'energy' is of type", "expected numbers (integer or floating point)"]),
    "not parquet": (lambda f, d: f.joinpath("s.parquet").write_bytes(d), ["s.parquet", "-o", "out.csv"], 3,
                    ["not a Parquet file"]),
    "damaged parquet": (lambda f, d: f.joinpath("s.parquet").write_bytes(b"PAR1" + d[:500] + b"PAR1"),
                        ["s.parquet", "-o", "out.csv"], 3, ["not a readable Parquet file"]),
    "empty shard folder": (lambda f, d: f.joinpath("shards").mkdir(), ["shards", "-o", "out.csv"], 3,
                           ["shards: holds no input shards"]),
    "glob matching nothing": (lambda f, d: None, ["none-*.csv", "-o", "out.csv"], 3, ["matches no files"]),
    "unknown output extension": (lambda f, d: f.joinpath("s.csv").write_bytes(d), ["s.csv", "-o", "out.json"], 2,
                                 ["-o out.json: unknown output format '.json'", ".csv.gz"]),
}


def _flipped(packed: bytes) -> bytes:
    damaged = bytearray(packed)
    damaged[len(damaged) // 2: len(damaged) // 2 + 16] = bytes(16)
    return bytes(damaged)


def _parquet(data: bytes) -> pd.DataFrame:
    return read_songs(io.BytesIO(data), "x", allow_extra=True)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_catalogue_input_is_one_line_and_no_output(case, catalogue_csv, bundle, tmp_path, predict_here):
    make, args, code, expected = BAD[case]
    make(tmp_path, catalogue_csv[0])
    result = predict_here([*args, "--chunk-rows", "200"], bundle)
    _assert_clean_failure(result, code, tmp_path, *expected)
    assert not (tmp_path / "out.json").exists()


def _shards(folder: Path, bundle) -> None:
    """Three shards of other songs: a CSV, a gzip CSV and, in a subfolder, Parquet; and a file that is none."""
    data = [_rewritten(_catalogue(400, seed=seed).to_csv(index=False))[0] for seed in (11, 12, 13)]
    (folder / "part-2").mkdir(parents=True)
    (folder / "part-0.csv").write_bytes(data[0])
    (folder / "part-1.csv.gz").write_bytes(gzip.compress(data[1], mtime=0))
    _parquet(data[2]).to_parquet(folder / "part-2" / "songs.parquet", row_group_size=150)
    (folder / "README.txt").write_text("not songs")
    (folder / "_SUCCESS").write_text("")


def _tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_shards_are_predicted_into_matching_atomic_shards_and_a_rerun_resumes(bundle, tmp_path, predict_here):
    _shards(tmp_path / "catalogue", bundle)
    first = _run(predict_here, ["catalogue", "-o", "predictions", "--chunk-rows", "128"], bundle)
    done = _tree(tmp_path / "predictions")
    assert sorted(done) == ["_predictions.json", "part-0.csv", "part-1.csv.gz", "part-2/songs.parquet"]
    assert first.stderr.decode().count("songs predicted into") == 3
    for name, source in (("part-0.csv", "catalogue/part-0.csv"), ("part-2/songs.parquet",
                                                                  "catalogue/part-2/songs.parquet")):
        alone = _run(predict_here, [source, "-o", f"alone-{Path(name).name}"], bundle)
        assert alone.returncode == 0 and (tmp_path / f"alone-{Path(name).name}").read_bytes() == done[name]

    (tmp_path / "predictions" / "part-1.csv.gz").unlink()  # as if the run had been stopped during that shard
    again = _run(predict_here, ["catalogue", "-o", "predictions"], bundle)
    assert again.stderr.decode().splitlines() == [
        "predictions: 2 of 3 shards already predicted, skipped",
        "catalogue/part-1.csv.gz: 400 songs predicted into predictions/part-1.csv.gz"]
    assert _tree(tmp_path / "predictions") == done

    by_glob = _run(predict_here, ["catalogue/**/*.parquet", "-o", "from-glob", "--output-format", "csv"], bundle)
    assert sorted(_tree(tmp_path / "from-glob")) == ["_predictions.json", "part-2/songs.csv"], by_glob.stderr
    refused = predict_here(["catalogue", "-o", "predictions", "--top-k", "2"], bundle)
    _assert_clean_failure(refused, 1, tmp_path, "predictions: holds predictions made with another --top-k")


def test_a_bad_shard_stops_the_run_leaving_the_shards_before_it(bundle, tmp_path, predict_here):
    _shards(tmp_path / "catalogue", bundle)
    (tmp_path / "catalogue" / "part-1.csv.gz").write_bytes(b"\x1f\x8b not really gzip")
    result = predict_here(["catalogue", "-o", "predictions"], bundle)
    assert result.returncode == 3
    assert result.stderr.decode().splitlines()[-1].startswith("error: catalogue/part-1.csv.gz: corrupt gzip data")
    assert sorted(_tree(tmp_path / "predictions")) == ["_predictions.json", "part-0.csv"]
    clash = predict_here(["catalogue", "-o", "catalogue", "--output-format", "csv"], bundle)
    _assert_clean_failure(clash, 2, tmp_path, "would overwrite an input")


@pytest.mark.slow
def test_dask_cluster_of_two_workers_gives_the_same_shards(bundle, tmp_path, predict_here):
    """A real dask.distributed LocalCluster: two worker processes, on 127.0.0.1."""
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    _shards(tmp_path / "catalogue", bundle)
    _run(predict_here, ["catalogue", "-o", "single", "--top-k", "2"], bundle)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        with distributed.Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 2
        result = _run(predict_here, ["catalogue", "-o", "on-dask", "--top-k", "2", "--dask",
                                     cluster.scheduler_address], bundle)
        assert _tree(tmp_path / "on-dask") == _tree(tmp_path / "single")
        assert result.stderr.decode().count("songs predicted into") == 3
        (tmp_path / "catalogue" / "part-0.csv").write_bytes(b"track_id,energy\nx,0.5\n")
        failed = predict_here(["catalogue", "-o", "failed-on-dask", "--dask", cluster.scheduler_address], bundle)
        assert failed.returncode == 3, failed.stderr.decode()
        assert failed.stderr.decode().strip().splitlines()[-1].startswith(
            "error: " + str(tmp_path / "catalogue" / "part-0.csv") + ": missing column")


def test_read_input_reads_a_whole_csv_as_before(catalogue_csv, bundle):
    pre = load_preprocessor(bundle[1])
    songs, problems = read_csv_bytes(catalogue_csv[0], "songs.csv", required_columns(pre.input_features,
                                                                                      pre.song_fields))
    assert len(songs) == ROWS and problems.empty


def test_predict_parses_only_what_the_model_uses_and_the_text_fields(catalogue_csv, bundle):
    """The playlist fields (and any schema column the model does not read) are left unparsed; the columns read are
    the ones a whole read gives."""
    pre = load_preprocessor(bundle[1])
    required = required_columns(pre.input_features, pre.text_fields)
    songs, _ = read_csv_bytes(catalogue_csv[0], "songs.csv", required)
    full = read_songs(io.BytesIO(catalogue_csv[0]), "songs.csv", allow_extra=True)
    assert "playlist_genre" in full.columns and "playlist_genre" not in songs.columns
    assert list(songs.columns) == [name for name in full.columns if name in {"track_id", *required, *TEXT_FIELDS}]
    pd.testing.assert_frame_equal(songs, full[list(songs.columns)])


def test_a_dask_worker_started_without_the_numerics_pin_refuses_the_task(tmp_path):
    """A worker process whose environment lacked the pin when it started (numpy loads before any task) would round
    otherwise on another CPU: the task says so in one line instead of predicting."""
    import subprocess

    from spotify_genre import numerics

    environment = {key: value for key, value in os.environ.items()
                   if key not in numerics.PINNED and key != numerics.MODE_VARIABLE}
    probe = ("import sys; from spotify_genre.predict.distributed import predict_shard; "
             "from spotify_genre.errors import PipelineError\ntry:\n    predict_shard(None, None)\nexcept PipelineError as error:\n    print(error)")
    result = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert "started without the numerics pin" in result.stdout, result.stderr
    assert "python -m spotify_genre.predict.distributed worker" in result.stdout


@pytest.mark.slow
def test_standard_output_streams_and_a_reader_that_stops_early_is_no_error(catalogue_csv, bundle, tmp_path):
    """The console script on a many-chunk input, its reader closing after the first line (`| head -1`)."""
    import subprocess

    from tests.conftest import BIN, tool_env

    (tmp_path / "songs.csv").write_bytes(catalogue_csv[0])
    process = subprocess.Popen([str(BIN / "spotify-genre"), "predict", "songs.csv", "--chunk-rows", "50",
                                "--model", str(bundle[0]), "--preprocessor", str(bundle[1])], cwd=tmp_path,
                               env=tool_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"track_id,predicted,")
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    assert process.stderr.read() == b""


def test_fast_csv_writes_the_bytes_of_predictions_csv():
    """Probabilities at and near the ties of "%.6f" (x.5 millionths, 1/128, 0 and 1), ids that need quoting (and a
    lone carriage return, which does not), row numbers, top-k columns; and the tables it must leave to pandas."""
    from spotify_genre.predict.table import fast_predictions_csv
    from spotify_genre.predict.table import prediction_table, predictions_csv
    from spotify_genre.songs.schema import GENRES

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(len(GENRES), 0.3), size=5000)
    ties = np.array([0.0078125, 0.5e-6, 2.5e-6, 0.9999995, 0.0, 1.0, 0.1234565, 0.0000015])
    probabilities[:ties.size * 8, 0] = np.repeat(ties, 8)
    probabilities[:ties.size * 8:8, 1] = np.nextafter(ties, 1.0).clip(0.0, 1.0)
    probabilities[1:ties.size * 8:8, 1] = np.nextafter(ties, 0.0).clip(0.0, 1.0)
    ids = pd.Series([f"id{i}" for i in range(len(probabilities))], name="track_id", dtype="str")
    ids.iloc[:10] = ["a,b", 'say "hi"', "two\nlines", "cr\ronly", " space", "é", '""', ",", "\t", "x"]
    for top_k in (0, 3):
        table = prediction_table(ids, probabilities, GENRES, top_k=top_k)
        assert fast_predictions_csv(table) == predictions_csv(table).encode("utf-8")
    rows = prediction_table(pd.Series(np.arange(1, 101), name="row"), probabilities[:100], GENRES)
    assert fast_predictions_csv(rows) == predictions_csv(rows).encode("utf-8")
    outside = prediction_table(ids[:3], np.array([[1.5, 0, 0, 0, 0, 0], [-0.0, 1, 0, 0, 0, 0], [np.nan] * 6]),
                               GENRES)
    missing = prediction_table(pd.Series(["a", np.nan], name="track_id", dtype=object), probabilities[:2], GENRES)
    for table in (outside.iloc[:1], outside.iloc[1:2], outside.iloc[2:], missing, rows.iloc[:0]):
        assert fast_predictions_csv(table) is None
        assert outputs.render(table, outputs.CSV) == predictions_csv(table).encode("utf-8")


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A preprocessor with the text scores of titles and album names and the album id scores (fitted on songs
    whose names and albums repeat, as _catalogue's do), and a seeded untrained model bundle for it."""
    import torch

    from pipeline.params import parse_params
    from pipeline.preprocessor_fitting import fit_model_inputs
    from spotify_genre.model import build_mlp
    from spotify_genre.model.bundle import load_bundle, save_bundle
    from spotify_genre.preprocessing.preprocessor import save_preprocessor
    from tests.conftest import default_params, with_overrides
    from tests.test_predict import ZERO_SHA, sha256_of

    folder = tmp_path_factory.mktemp("text-bundle")
    params = parse_params(with_overrides(default_params(), {"preprocess.text.buckets": 512}))
    train = _catalogue(900, seed=8)
    pre, _ = fit_model_inputs(train, params.select.candidates, params.preprocess, data_sha256=ZERO_SHA,
                              groups=train["track_id"])
    save_preprocessor(folder / "preprocessor.json", pre)
    torch.manual_seed(0)
    architecture = {"n_features": len(pre.output_features), "n_classes": 6, "hidden_sizes": [16], "dropout": 0.0}
    save_bundle(folder / "model.pt", build_mlp(**architecture), architecture=architecture,
                feature_names=pre.output_features, class_names=list(pre.classes),
                preprocessor={"path": "preprocessor.json", "sha256": sha256_of(folder / "preprocessor.json")},
                params={}, data_sha256=ZERO_SHA)
    names = load_bundle(folder / "model.pt").feature_names
    assert names.index("track_album_name_rock") + 1 == names.index("track_album_id_edm")  # text scores, then ids
    return folder / "model.pt", folder / "preprocessor.json"


def test_remembered_text_scores_are_the_scores_hot_or_cold_and_bounded(text_bundle):
    """Text scores remembered across calls: the bytes TextScorer.transform gives, whether remembered (hot) or not
    (cold), however small the memory, which never holds more texts than its capacity."""
    from spotify_genre.preprocessing.score_cache import RememberedScores

    pre = load_preprocessor(text_bundle[1])
    songs = _catalogue(3000, seed=11)
    texts = songs["track_album_name"].where(np.arange(len(songs)) % 5 != 0)  # missing texts too
    texts = pd.concat([texts, texts.iloc[::-1]], ignore_index=True).astype("str")
    for scorer in pre.text:
        column = texts if scorer.field == "track_album_name" else songs[scorer.field].astype("str")
        expected = scorer.transform(column)
        for capacity in (1, 50, 100_000):
            remembered = RememberedScores(scorer, capacity)
            for _ in range(2):  # cold, then hot
                scores = np.concatenate([remembered.transform(column.iloc[start:start + 700])
                                         for start in range(0, len(column), 700)])
                assert np.array_equal(scores, expected)
                assert len(remembered) == min(capacity, column.fillna("").nunique())


@pytest.mark.parametrize("capacity", [5, None])
def test_streamed_predictions_with_text_scores_are_those_of_the_library_functions(
        catalogue_csv, text_bundle, tmp_path, predict_here, monkeypatch, capacity):
    """Streamed in chunks, with text scores remembered across them (in a memory of 5 texts too, forgetting all the
    time) and the CSV written by fast_csv: the bytes of model_inputs, predict_proba and predictions_csv on the
    whole file."""
    from spotify_genre.model import predict_proba
    from spotify_genre.model.bundle import load_bundle
    from spotify_genre.predict.table import prediction_table, predictions_csv
    from spotify_genre.preprocessing import score_cache
    from spotify_genre.preprocessing.preprocessor import model_inputs

    if capacity:
        monkeypatch.setattr(score_cache, "CAPACITY", capacity)
    data, _ = catalogue_csv
    (tmp_path / "songs.csv").write_bytes(data)
    pre = load_preprocessor(text_bundle[1])
    songs = read_songs(io.BytesIO(data), "songs.csv", required=required_columns(pre.input_features,
                                                                                 pre.text_fields), allow_extra=True)
    probabilities = predict_proba(load_bundle(text_bundle[0]).model, model_inputs(pre, songs))
    expected = predictions_csv(prediction_table(songs["track_id"], probabilities, pre.classes, top_k=2))
    for rows in (97, 100_000):
        result = _run(predict_here, ["songs.csv", "--top-k", "2", "--chunk-rows", str(rows)], text_bundle)
        assert result.stdout == expected.encode("utf-8"), rows


def test_a_bad_bundle_is_one_clear_line_when_the_model_loads_beside_the_reading(catalogue_csv, bundle, tmp_path,
                                                                                 predict_here):
    """On an input of many chunks the model thread loads the bundle while the first chunk is read: a bundle that
    does not load is still the one line, exit code and no output of a one-chunk run."""
    import torch

    raw = torch.load(bundle[0], weights_only=True)
    torch.save({**raw, "format": 99}, tmp_path / "model.pt")
    (tmp_path / "songs.csv").write_bytes(catalogue_csv[0])
    result = predict_here(["songs.csv", "-o", "out.csv", "--chunk-rows", "50"], (tmp_path / "model.pt", bundle[1]))
    _assert_clean_failure(result, 5, tmp_path, "bundle format 99")
