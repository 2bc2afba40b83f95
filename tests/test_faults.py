"""Faults a hostile or unlucky user meets, one class at a time: an output that is the input or a special file, a full
disk or a closed stream, SIGTERM, SIGINT and SIGKILL mid-run, numbers at the edge of their types, hostile or huge
YAML, and arguments that are not what they seem. Each is handled, or refused with one line, a non-zero exit, no
traceback, no partial or replaced file and no process left running."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spotify_genre.errors import ParamsError
from pipeline.synthetic import synthetic_songs
from experiments import tune
from pipeline.params import load_params, parse_params, read_yaml
from experiments.space import load_settings
from tests.conftest import BIN, ROOT, default_params, tool_env, with_overrides
from tests.test_predict import _save_bundle, predict_here  # noqa: F401 (a fixture)

PREDICT = [str(BIN / "spotify-genre"), "predict"]
TEMP = re.compile(r"^\..+\.tmp$")
is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="device nodes and mounts need root")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    return _save_bundle(tmp_path_factory.mktemp("bundle"), load_params(ROOT / "params.yaml").select.candidates)


@pytest.fixture(scope="module")
def songs_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("songs") / "songs.csv"
    synthetic_songs(60, seed=4).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory) -> Path:
    """Enough songs that predicting them takes seconds: time to send a signal mid-write."""
    path = tmp_path_factory.mktemp("big") / "big.csv"
    songs = synthetic_songs(20_000, seed=6)
    pd.concat([songs] * 4, ignore_index=True).to_csv(path, index=False)
    return path


def model_args(bundle) -> list[str]:
    return ["--model", str(bundle[0]), "--preprocessor", str(bundle[1])]


def predict(args: list[str], bundle, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([*PREDICT, *args, *model_args(bundle)], cwd=cwd, env=tool_env(PYTHONPATH=str(ROOT)),
                          timeout=120, **kwargs)


def one_error_line(stderr: bytes | str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def temp_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if TEMP.match(path.name))


def reference_csv(bundle, songs_csv: Path, tmp_path: Path) -> bytes:
    result = predict([str(songs_csv)], bundle, tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- 1. an output that is the input, or a special file ----------------------------------------------------------


def test_an_output_that_is_the_input_is_refused_however_it_is_spelled(songs_csv, bundle, tmp_path, predict_here):
    folder = tmp_path / "in"
    folder.mkdir()
    source = folder / "songs.csv"
    shutil.copy(songs_csv, source)
    os.link(source, folder / "hard.csv")
    os.symlink("songs.csv", folder / "soft.csv")
    original = source.read_bytes()
    for output in ("in/songs.csv", "./in/songs.csv", "in/../in/songs.csv", str(source), "in/hard.csv",
                   "in/soft.csv"):
        result = predict_here(["in/songs.csv", "-o", output], bundle)
        line = one_error_line(result.stderr)
        assert result.returncode == 2 and "is the input" in line, line
        assert source.read_bytes() == original and (folder / "soft.csv").is_symlink()
    assert temp_files(tmp_path) == []

    with open(source, "rb") as stdin:  # `predict - -o songs.csv < songs.csv`
        result = predict(["-", "-o", str(source)], bundle, tmp_path, stdin=stdin)
    assert result.returncode == 2 and "is the input" in one_error_line(result.stderr)
    assert source.read_bytes() == original


@pytest.mark.slow
def test_a_fifo_is_streamed_into_and_stays_a_fifo(songs_csv, bundle, tmp_path):
    for name in ("pipe", "pipe.csv.gz", "pipe.parquet"):
        reference = tmp_path / f"reference-{name}"
        assert predict([str(songs_csv), "-o", str(reference)], bundle, tmp_path).returncode == 0
        fifo = tmp_path / name
        os.mkfifo(fifo)
        received = []
        reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
        reader.start()
        result = predict([str(songs_csv), "-o", str(fifo)], bundle, tmp_path)
        reader.join(timeout=60)
        assert result.returncode == 0, result.stderr
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert received == [reference.read_bytes()], name
    assert temp_files(tmp_path) == []


@pytest.mark.slow
def test_dev_stdout_and_links_to_it_write_to_standard_output(songs_csv, bundle, tmp_path):
    expected = reference_csv(bundle, songs_csv, tmp_path)
    os.symlink("/dev/stdout", tmp_path / "out-link.csv")
    for output in (str(tmp_path / "out-link.csv"), "/dev/stdout", "/proc/self/fd/1"):
        result = predict([str(songs_csv), "-o", output], bundle, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected, output
    assert (tmp_path / "out-link.csv").is_symlink()
    with open(tmp_path / "redirected.csv", "wb") as file:  # `-o /dev/stdout > redirected.csv`
        assert predict([str(songs_csv), "-o", "/dev/stdout"], bundle, tmp_path, stdout=file,
                       stderr=subprocess.PIPE).returncode == 0
    assert (tmp_path / "redirected.csv").read_bytes() == expected
    assert temp_files(tmp_path) == []


@pytest.mark.slow
@needs_root
def test_a_character_device_is_written_into_never_replaced(songs_csv, bundle, tmp_path):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    result = predict([str(songs_csv), "-o", str(null)], bundle, tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert temp_files(tmp_path) == []


def test_a_socket_or_block_device_is_refused(songs_csv, bundle, tmp_path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        result = predict([str(songs_csv), "-o", str(tmp_path / "sock")], bundle, tmp_path)
    finally:
        server.close()
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "sock" in line and "socket" in line, line
    assert stat.S_ISSOCK(os.lstat(tmp_path / "sock").st_mode)
    assert temp_files(tmp_path) == []


# --- 2. full disks, failing devices and closed streams ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["full.csv", "full.csv.gz", "full.parquet"])
def test_a_full_device_is_one_line_and_leaves_nothing(name, songs_csv, bundle, tmp_path):
    os.symlink("/dev/full", tmp_path / name)
    result = predict([str(songs_csv), "-o", str(tmp_path / name)], bundle, tmp_path)
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and name in line and "No space left on device" in line, line
    assert (tmp_path / name).is_symlink() and stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert temp_files(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 48 KiB file system, filled by a few thousand songs' predictions."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@needs_root
def test_a_full_file_system_is_one_line_and_leaves_nothing(small_disk, bundle, tmp_path):
    source = tmp_path / "many.csv"
    synthetic_songs(3000, seed=2).to_csv(source, index=False)
    for name in ("out.csv", "out.csv.gz", "out.parquet"):
        result = predict([str(source), "-o", str(small_disk / name), "--chunk-rows", "500"], bundle, tmp_path)
        line = one_error_line(result.stderr)
        assert result.returncode == 1 and name in line and "No space left on device" in line, line
        assert list(small_disk.iterdir()) == []


@pytest.mark.slow
def test_standard_output_on_a_full_device_is_one_line(songs_csv, bundle, tmp_path):
    with open("/dev/full", "wb") as full:
        result = predict([str(songs_csv)], bundle, tmp_path, stdout=full, stderr=subprocess.PIPE)
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "standard output" in line and "No space left on device" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("shell, code, expected", [
    ("exec {predict} - {model} <&-", 3, "standard input is closed"),
    ("exec {predict} {songs} {model} >&-", 1, "standard output is closed"),
])
def test_closed_standard_streams_are_one_line(shell, code, expected, songs_csv, bundle, tmp_path):
    command = shell.format(predict=" ".join(PREDICT), songs=songs_csv, model=" ".join(model_args(bundle)))
    result = subprocess.run(["sh", "-c", command], cwd=tmp_path, env=tool_env(PYTHONPATH=str(ROOT)),
                            capture_output=True, timeout=120)
    line = one_error_line(result.stderr)
    assert result.returncode == code and expected in line, line


# --- 3. signals --------------------------------------------------------------------------------------------------


def _start(args: list[str], bundle, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*PREDICT, *args, *model_args(bundle)], cwd=cwd, env=tool_env(PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"predict ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sent, code, said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_write_removes_the_temp_file_and_says_so(sent, code, said, big_csv, bundle, tmp_path):
    process = _start([str(big_csv), "-o", "out.csv", "--chunk-rows", "2048"], bundle, tmp_path)
    try:
        _wait_for(lambda: temp_files(tmp_path) and (tmp_path / temp_files(tmp_path)[0]).stat().st_size > 0, process)
        process.send_signal(sent)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    line = one_error_line(err)
    assert process.returncode == code and said in line, line
    assert temp_files(tmp_path) == [] and not (tmp_path / "out.csv").exists()


@pytest.mark.slow
def test_a_temp_file_left_by_sigkill_is_removed_by_the_next_write_to_that_folder(big_csv, songs_csv, bundle,
                                                                                 tmp_path):
    process = _start([str(big_csv), "-o", "killed.csv", "--chunk-rows", "2048"], bundle, tmp_path)
    try:
        _wait_for(lambda: temp_files(tmp_path), process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    left = temp_files(tmp_path)
    assert left and all(name.startswith(".killed.csv.") for name in left)
    live = tmp_path / f".report.json.{os.getpid()}.a1b2c3d4.tmp"  # a live writer's, of another target
    live.write_text("{}")

    assert predict([str(songs_csv), "-o", "other.csv"], bundle, tmp_path).returncode == 0
    assert temp_files(tmp_path) == [live.name]


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_predict_workers_and_the_resource_tracker_die_with_their_parent(big_csv, bundle, tmp_path):
    process = _start([str(big_csv), "-o", "out.csv", "--chunk-rows", "1000", "--workers", "2"], bundle, tmp_path)
    children: set[int] = set()
    try:
        def started() -> bool:
            children.update(_descendants(process.pid))
            spawned = [pid for pid in children if _running(pid)
                       and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            return len(spawned) >= 2

        _wait_for(started, process)
        children.update(_descendants(process.pid))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while any(_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _running(pid)]
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# --- 4. numbers at the edges -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    ({"train.hidden_sizes": [1_000_000_000_000]}, "train.hidden_sizes"),
    ({"train.hidden_sizes": [65_536, 65_536]}, "train.hidden_sizes"),
    ({"train.weight_decay": float("inf")}, "train.weight_decay"),
    ({"train.min_delta": float("inf")}, "train.min_delta"),
    ({"train.weight_decay": float("nan")}, "train.weight_decay"),
    ({"lr": float("nan")}, "lr"),
    ({"momentum": float("nan")}, "momentum"),
    ({"train.dropout": float("nan")}, "train.dropout"),
    ({"train.embedding.sigma": float("nan")}, "train.embedding.sigma"),
    ({"baselines.lightgbm.lambda_l2": float("nan")}, "baselines.lightgbm.lambda_l2"),
    ({"train.threads": 2 ** 40}, "train.threads"),
    ({"train.seed": 2 ** 64}, "train.seed"),
    ({"split.seed": 2 ** 32}, "split.seed"),
    ({"batch_size": 2 ** 63}, "batch_size"),
    ({"data.synthetic_rows": 10 ** 12}, "data.synthetic_rows"),
    ({"train.max_epochs": 10 ** 12}, "train.max_epochs"),
])
def test_numbers_that_reach_an_allocation_or_a_c_type_are_bounded_and_finite(overrides, key):
    with pytest.raises(ParamsError) as caught:
        parse_params(with_overrides(default_params(), overrides))
    assert str(caught.value).startswith(f"params.yaml: {key}"), caught.value


def test_the_committed_tuning_space_and_params_stay_within_the_bounds():
    parse_params(default_params())
    load_settings(ROOT / "tuning.yaml")


@pytest.mark.parametrize("option", ["--chunk-rows", "--workers"])
def test_huge_counts_on_the_command_line_are_usage_errors(option, songs_csv, bundle, tmp_path, predict_here):
    parquet = tmp_path / "songs.parquet"
    pd.read_csv(songs_csv).to_parquet(parquet)
    result = predict_here([str(parquet), "-o", "out.csv", option, str(2 ** 64)], bundle)
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err and f"argument {option}: expected" in err, err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("column", ["track_popularity", "duration_ms"])
@pytest.mark.parametrize("kind", ["int64", "uint64"])
def test_integers_near_the_edge_of_their_type_in_parquet_are_read_as_the_same_digits_in_a_csv(
        kind, column, songs_csv, bundle, tmp_path, predict_here):
    """Read as the nearest float64, as pandas reads the digits from a CSV: out of a column's range (popularity,
    0..100) an invalid cell naming the file, row and column; within it (a duration has no upper bound) predicted as
    the CSV's row is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    songs = pd.read_csv(songs_csv)
    huge = int(np.iinfo(kind).max)
    table = pa.Table.from_pandas(songs, preserve_index=False)
    values = pa.array([huge if row == 3 else int(value) for row, value in enumerate(songs[column])], type=kind)
    pq.write_table(table.set_column(table.schema.get_field_index(column), pa.field(column, values.type), values),
                   tmp_path / "songs.parquet")
    text = songs.astype({column: object})
    text.loc[3, column] = str(huge)
    text.to_csv(tmp_path / "digits.csv", index=False)

    from_parquet = predict_here(["songs.parquet", "-o", "parquet.csv"], bundle)
    from_csv = predict_here(["digits.csv", "-o", "csv.csv"], bundle)
    assert "Traceback" not in from_parquet.stderr.decode()
    if column == "track_popularity":
        line = one_error_line(from_parquet.stderr)
        assert from_parquet.returncode == 3 and f"songs.parquet: row 4, column {column!r}" in line, line
        assert from_csv.returncode == 3 and f"digits.csv: line 5, column {column!r}" in from_csv.stderr.decode()
        assert not (tmp_path / "parquet.csv").exists()
    else:
        assert from_parquet.returncode == 0 and from_csv.returncode == 0, from_parquet.stderr
        assert (tmp_path / "parquet.csv").read_bytes() == (tmp_path / "csv.csv").read_bytes()


def test_a_date64_beyond_any_calendar_in_parquet_is_one_line():
    import pyarrow as pa

    from spotify_genre.errors import DataError
    from spotify_genre.songs.parquet_reader import parse_parquet

    name = "track_album_release_date"
    dates = pa.array([0, 0, 0, 2 ** 63 - 1], type=pa.int64()).cast(pa.date64())
    with pytest.raises(DataError) as caught:
        parse_parquet(pa.record_batch([dates], names=[name]), 100, (name,), "songs.parquet")
    assert str(caught.value).startswith(f"songs.parquet: column {name!r}, rows 101 to 104: a value out of range")


@pytest.mark.parametrize("date", ["2019-13-45", "2019-02-30", "2019-00", "2019-00-10", "2019-04-31"])
def test_an_impossible_date_is_an_invalid_cell(date, songs_csv, bundle, tmp_path, predict_here):
    songs = pd.read_csv(songs_csv, dtype={"track_album_release_date": str})
    songs.loc[2, "track_album_release_date"] = date
    songs.to_csv(tmp_path / "songs.csv", index=False)
    result = predict_here(["songs.csv", "-o", "out.csv"], bundle)
    line = one_error_line(result.stderr)
    assert result.returncode == 3 and f"line 4, column 'track_album_release_date': {date!r}" in line, line
    result = predict_here(["songs.csv", "-o", "out.csv", "--skip-invalid"], bundle)
    assert result.returncode == 0 and len(pd.read_csv(tmp_path / "out.csv")) == len(songs) - 1


def test_the_real_dates_are_all_possible():
    from spotify_genre.songs.schema import row_problems

    dates = pd.Series(["2008", "2020-02-29", "1957-12", "2019-12-31", "1900-01-01"],
                      name="track_album_release_date").to_frame()
    assert row_problems(dates).empty


# --- 5. hostile or huge YAML -------------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    """A flow sequence of `levels` lists, each holding ten aliases of the one before: 10**levels strings expanded."""
    lists = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    lists += [f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]" for level in range(1, levels)]
    return "[" + ", ".join(lists) + "]"


def test_yaml_aliases_are_refused_before_any_expansion(tmp_path):
    bomb = tmp_path / "params.yaml"
    bomb.write_text(f"lr: {billion_laughs()}\n")
    start = time.monotonic()
    with pytest.raises(ParamsError) as caught:
        load_params(bomb)
    line = str(caught.value)
    assert line.startswith(f"{bomb}: line 1, column ") and "a YAML alias" in line and len(line) < 300, line
    assert time.monotonic() - start < 2


def _tune_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "clone"
    folder.mkdir()
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    shutil.copy(ROOT / "tuning.yaml", folder / "tuning.yaml")
    return folder


def test_tune_refuses_an_alias_bomb_in_tuning_yaml_in_one_line(tmp_path, monkeypatch, capsys):
    folder = _tune_folder(tmp_path)
    settings = yaml.safe_load((folder / "tuning.yaml").read_text())
    settings["space"] = {"train.optimizer": {"choices": ["BOMB"]}}
    text = yaml.safe_dump(settings, sort_keys=False).replace("- BOMB", f"- {billion_laughs(5)}")
    (folder / "tuning.yaml").write_text(text)
    monkeypatch.chdir(folder)
    code = tune.main(["--report"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "tuning.yaml: " in line and "a YAML alias" in line, line


HUGE = "x" * 10_000_000


@pytest.mark.parametrize("overrides", [
    {"data.url": HUGE},
    {"data.source": HUGE},
    {"select.candidates": [HUGE]},
    {"train.optimizer": HUGE},
    {"lr": HUGE},
])
def test_a_huge_value_is_quoted_only_by_a_bounded_prefix(overrides):
    with pytest.raises(ParamsError) as caught:
        parse_params(with_overrides(default_params(), overrides))
    assert len(str(caught.value)) < 500, len(str(caught.value))


def test_a_huge_key_is_quoted_only_by_a_bounded_prefix():
    params = default_params()
    params["train"][HUGE] = 1
    with pytest.raises(ParamsError) as caught:
        parse_params(params)
    assert len(str(caught.value)) < 500 and "unknown key" in str(caught.value)


@pytest.mark.parametrize("column", ["danceability", "track_album_release_date"])
def test_a_huge_value_in_a_song_is_quoted_by_a_bounded_prefix(column, songs_csv, bundle, tmp_path, predict_here):
    songs = pd.read_csv(songs_csv)
    songs[column] = songs[column].astype(object)
    songs.loc[1, column] = "9" * 5_000_000 + "x"
    songs.to_csv(tmp_path / "songs.csv", index=False)
    result = predict_here(["songs.csv", "-o", "out.csv"], bundle)
    line = one_error_line(result.stderr)
    assert result.returncode == 3 and len(line) < 500 and column in line, line[:300]


@pytest.mark.slow
def test_a_huge_value_in_the_search_space_is_quoted_by_a_bounded_prefix(tmp_path, monkeypatch, capsys):
    folder = _tune_folder(tmp_path)
    settings = yaml.safe_load((folder / "tuning.yaml").read_text())
    settings["space"] = {"train.optimizer": {"choices": [HUGE]}}
    (folder / "tuning.yaml").write_text(yaml.safe_dump(settings, width=2 ** 31))
    monkeypatch.chdir(folder)
    capsys.readouterr()
    code = tune.main(["--report"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and len(line) < 500, line[:300]


# --- 6. arguments that are not what they seem --------------------------------------------------------------------


def test_tune_space_naming_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    folder = _tune_folder(tmp_path)
    (folder / "spaces").mkdir()
    monkeypatch.chdir(folder)
    code = tune.main(["--space", "spaces", "--report"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "spaces" in line and "folder" in line, line


@pytest.mark.parametrize("url, secret, expected", [
    ("postgresql://tuner:s3cret@db.example:notaport/optuna", "s3cret", "the port is not a number"),
    ("postgresql://tuner:s3cret@127.0.0.1:99999/optuna", "s3cret", "port 99999"),
    ("postgresql://tuner:s3cr@t-pw@127.0.0.1:1/optuna", "s3cr@t-pw", "'@'"),
    ("mysql+pymysql://tuner:p4@55w0rd@127.0.0.1:3306/optuna", "p4@55w0rd", "'@'"),
])
def test_storage_urls_that_are_not_what_they_seem_are_one_line_and_never_show_the_password(
        url, secret, expected, tmp_path, monkeypatch, capsys):
    folder = _tune_folder(tmp_path)
    monkeypatch.chdir(folder)
    code = tune.main(["--storage", url, "--report"])
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert code == 7 and line.startswith("error: --storage ") and expected in line, line
    for part in {secret, *secret.split("@")}:
        assert part not in out + err, line
