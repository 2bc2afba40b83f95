"""The predict command: bad input, safe bundle loading, --skip-invalid, stdin/stdout, --top-k, and agreement with
the evaluate stage's reports/predictions.csv after a real `dvc repro`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.params import load_params
from pipeline.preprocessor_fitting import fit_preprocessor
from pipeline.synthetic import synthetic_songs
from spotify_genre.predict import cli
from spotify_genre.preprocessing.preprocessor import NumericColumn, load_preprocessor, model_inputs, save_preprocessor
from spotify_genre.songs.features import candidate_features
from spotify_genre.songs.schema import GENRES, INPUT_COLUMNS, RELEASE_DATE, TRACK_ID
from tests.conftest import BIN, ROOT, run, tool_env

BAD_CORPUS = ROOT / "tests" / "data" / "bad"
# Bad for the pipeline's raw data, but fine for predict, which ignores extra columns and the label.
ACCEPTED_BY_PREDICT = {"extra_column.csv", "unknown_genre.csv"}
ZERO_SHA = "0" * 64


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_bundle(folder: Path, candidates: list[str], *, class_names=GENRES, songs_seed: int = 0,
                 recorded: Path | None = None) -> tuple[Path, Path]:
    """A real preprocessor fitted on synthetic songs and a model bundle (seeded, untrained weights) for it.

    The bundle records the preprocessor it was made with, or `recorded` (a bundle that claims another one's sha256).
    """
    import torch

    from spotify_genre.model import build_mlp
    from spotify_genre.model.bundle import save_bundle

    folder.mkdir(parents=True, exist_ok=True)
    params = load_params(ROOT / "params.yaml")
    pre = fit_preprocessor(candidate_features(synthetic_songs(600, seed=songs_seed), candidates), params.preprocess,
                           data_sha256=ZERO_SHA)
    save_preprocessor(folder / "preprocessor.json", pre)
    recorded = recorded or folder / "preprocessor.json"
    torch.manual_seed(0)
    architecture = {"n_features": len(pre.output_features), "n_classes": len(class_names),
                    "hidden_sizes": [16], "dropout": 0.0}
    save_bundle(folder / "model.pt", build_mlp(**architecture), architecture=architecture,
                feature_names=pre.output_features, class_names=class_names,
                preprocessor={"path": recorded.as_posix(), "sha256": sha256_of(recorded)},
                params={}, data_sha256=ZERO_SHA)
    return folder / "model.pt", folder / "preprocessor.json"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    return _save_bundle(tmp_path_factory.mktemp("bundle"), load_params(ROOT / "params.yaml").select.candidates)


@pytest.fixture(scope="module")
def songs() -> pd.DataFrame:
    return synthetic_songs(40, seed=5)


def _csv(frame: pd.DataFrame, **kwargs) -> bytes:
    return frame.to_csv(index=False, **kwargs).encode("utf-8")


def _model_args(bundle) -> list[str]:
    return ["--model", str(bundle[0]), "--preprocessor", str(bundle[1])] if bundle else []


def _predict(command: list[str], args: list[str], cwd: Path, bundle=None,
             stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """A child process, for what only a process shows: the console script, real pipes, the modules it imported."""
    return subprocess.run([*command, *args, *_model_args(bundle)], cwd=cwd, env=tool_env(PYTHONPATH=str(ROOT)),
                          input=stdin, capture_output=True, timeout=120)


@pytest.fixture
def predict_here(tmp_path, monkeypatch, capsysbinary):
    """cli.main() in this process, run in tmp_path: the exit code the console script would exit with (argparse's
    SystemExit included) and the streams; an uncaught exception fails the test outright."""
    monkeypatch.chdir(tmp_path)

    def call(args: list[str], bundle=None) -> subprocess.CompletedProcess:
        try:
            code = cli.main([*args, *_model_args(bundle)])
        except SystemExit as stop:  # --help, and argparse's usage errors
            code = stop.code
        out, err = capsysbinary.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return call


def _assert_clean_failure(result: subprocess.CompletedProcess, code: int, folder: Path, *expected: str) -> str:
    """One `error: ...` line on stderr, the documented exit code, nothing on stdout and no file left behind."""
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert "np." not in lines[0]
    assert result.stdout == b""
    assert not (folder / "out.csv").exists()
    assert not [path.name for path in folder.iterdir() if path.name.startswith(".out.csv.")]
    return lines[0]


def _with_cell(songs: pd.DataFrame, row: int, column: str, value: str) -> pd.DataFrame:
    frame = songs.astype({column: object})
    frame.loc[row, column] = value
    return frame


BAD_INPUTS = {
    # name: (make the input from valid songs, substrings of the one-line error)
    "missing column": (lambda s: _csv(s.drop(columns="tempo")), ["missing column 'tempo'"]),
    "renamed column": (lambda s: _csv(s.rename(columns={"tempo": "bpm"})), ["missing column 'tempo'", "'bpm'"]),
    "non-numeric value": (lambda s: _csv(_with_cell(s, 1, "energy", "loud")),
                          ["line 3", "'energy'", "'loud': not a number (expected a number in [0, 1])"]),
    "empty file": (lambda s: b"", ["empty file"]),
    "blank file": (lambda s: b"\n \n", ["empty file"]),
    "header only": (lambda s: _csv(s.head(0)), ["header only"]),
    "wrong delimiter": (lambda s: _csv(s, sep=";"), ["wrong delimiter"]),
    "out-of-range value": (lambda s: _csv(_with_cell(s, 0, "valence", "1.7")),
                           ["line 2", "'valence': 1.7: expected a number in [0, 1]", "--skip-invalid"]),
    "two invalid rows": (lambda s: _csv(_with_cell(_with_cell(s, 4, "key", "12"), 9, "tempo", "-3")),
                         ["line 6", "'key': 12: expected an integer in [-1, 11]", "(2 invalid rows in all)"]),
    "missing value": (lambda s: _csv(_with_cell(s, 2, "energy", "")), ["line 4", "'energy'", "missing value"]),
    "malformed date": (lambda s: _csv(_with_cell(s, 3, RELEASE_DATE, "03/04/2019")),
                       ["line 5", RELEASE_DATE, "YYYY-MM-DD"]),
    "not UTF-8": (lambda s: _csv(s).replace(b"Song 1,", b"Can\xe7\xf3n,", 1), ["not UTF-8"]),
    "empty track id": (lambda s: _csv(_with_cell(s, 5, TRACK_ID, "")), ["line 7", "'track_id'", "missing value"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_its_own_clear_error(case, songs, bundle, tmp_path, predict_here):
    make, expected = BAD_INPUTS[case]
    (tmp_path / "songs.csv").write_bytes(make(songs))
    result = predict_here(["songs.csv", "-o", "out.csv"], bundle)
    _assert_clean_failure(result, 3, tmp_path, "songs.csv", *expected)


@pytest.mark.slow
def test_torch_is_not_imported_for_bad_input(songs, bundle, tmp_path):
    (tmp_path / "songs.csv").write_bytes(_csv(songs.drop(columns="energy")))
    probe = ("import sys; from spotify_genre.predict.cli import main; code = main(sys.argv[1:]); "
             "print('torch' in sys.modules); sys.exit(code)")
    result = _predict([sys.executable, "-c", probe], ["songs.csv"], tmp_path, bundle)
    assert result.returncode == 3, result.stderr.decode()
    assert result.stdout.decode().strip() == "False"
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = _predict([sys.executable, "-c", probe], ["songs.csv", "-o", "out.csv"], tmp_path, bundle)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "True"


def test_bad_inputs_each_say_something_different(songs, bundle, tmp_path, predict_here):
    messages = {}
    for case, (make, _) in BAD_INPUTS.items():
        (tmp_path / "songs.csv").write_bytes(make(songs))
        result = predict_here(["songs.csv"], bundle)
        assert result.returncode == 3
        messages[case] = result.stderr
    assert messages.pop("blank file") == messages["empty file"]
    assert len(set(messages.values())) == len(messages), messages


@pytest.mark.parametrize("name", sorted(path.name for path in BAD_CORPUS.glob("*") if path.suffix in (".csv", ".zip")))
def test_bad_data_corpus(name, bundle, tmp_path, predict_here):
    """The bad-data corpus (tests/data/bad/) through predict: one clear line and exit 3, except what predict does not
    need."""
    result = predict_here([str(BAD_CORPUS / name), "-o", "out.csv"], bundle)
    if name in ACCEPTED_BY_PREDICT:
        assert result.returncode == 0, result.stderr.decode()
        assert len(pd.read_csv(tmp_path / "out.csv")) == 3
    else:
        _assert_clean_failure(result, 3, tmp_path, f"error: {BAD_CORPUS / name}: ")


def test_ten_megabytes_of_random_bytes(bundle, tmp_path, predict_here):
    (tmp_path / "noise.csv").write_bytes(np.random.default_rng(0).bytes(10 * 2**20))
    result = predict_here(["noise.csv", "-o", "out.csv"], bundle)
    _assert_clean_failure(result, 3, tmp_path, "noise.csv")


def test_missing_input_file(bundle, tmp_path, predict_here):
    _assert_clean_failure(predict_here(["absent.csv", "-o", "out.csv"], bundle), 3, tmp_path,
                          "absent.csv: no such file")


def _table(output: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(output), dtype=str, keep_default_na=False)


def test_predictions_have_id_genre_and_one_probability_per_genre(songs, bundle, tmp_path, predict_here):
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = predict_here(["songs.csv", "-o", "out.csv"], bundle)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"" and result.stderr == b""
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == [TRACK_ID, "predicted", *GENRES]
    assert table[TRACK_ID].tolist() == songs[TRACK_ID].tolist()
    probabilities = table[list(GENRES)].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (table["predicted"] == np.asarray(GENRES)[probabilities.argmax(axis=1)]).all()
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".out.csv.")]


@pytest.mark.core
def test_stdin_to_stdout_through_the_console_script(songs, bundle, tmp_path, predict_here):
    """The one run of the installed console script: real pipes in and out, the same bytes as a file gets."""
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    to_file = predict_here(["songs.csv", "-o", "out.csv"], bundle)
    assert to_file.returncode == 0, to_file.stderr.decode()
    piped = _predict([str(BIN / "spotify-genre")], ["predict", "-", "-o", "-"], tmp_path, bundle, stdin=_csv(songs))
    assert piped.returncode == 0, piped.stderr.decode()
    assert piped.stdout == (tmp_path / "out.csv").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.csv", "songs.csv"]


def test_skip_invalid_leaves_out_and_lists_invalid_rows(songs, bundle, tmp_path, predict_here):
    bad = _with_cell(songs, 2, "valence", "1.7")
    bad = _with_cell(bad, 7, "tempo", "fast")
    bad = _with_cell(_with_cell(bad, 11, "energy", ""), 11, "key", "13")
    (tmp_path / "bad.csv").write_bytes(_csv(bad))
    (tmp_path / "good.csv").write_bytes(_csv(songs.drop(index=[2, 7, 11])))

    result = predict_here(["bad.csv", "--skip-invalid"], bundle)
    assert result.returncode == 0, result.stderr.decode()
    stderr = result.stderr.decode().splitlines()
    assert stderr == [
        "bad.csv: skipped line 4, column 'valence': 1.7: expected a number in [0, 1]",
        "bad.csv: skipped line 9, column 'tempo': 'fast': not a number (expected a number in [0, 300])",
        "bad.csv: skipped line 13, column 'energy': missing value",
        "bad.csv: skipped line 13, column 'key': 13: expected an integer in [-1, 11]",
        "bad.csv: 3 invalid rows left out, 37 predicted",
    ]
    clean = predict_here(["good.csv"], bundle)
    assert clean.returncode == 0, clean.stderr.decode()
    assert result.stdout == clean.stdout

    stopped = predict_here(["bad.csv", "-o", "out.csv"], bundle)
    _assert_clean_failure(stopped, 3, tmp_path, "line 4", "(3 invalid rows in all)")


def test_skip_invalid_with_every_row_invalid(songs, bundle, tmp_path, predict_here):
    (tmp_path / "bad.csv").write_bytes(_csv(songs.head(2).assign(mode=7)))
    result = predict_here(["bad.csv", "--skip-invalid", "-o", "out.csv"], bundle)
    _assert_clean_failure(result, 3, tmp_path, "bad.csv: all 2 rows are invalid, nothing to predict (first: line 2, "
                          "column 'mode': 7: expected an integer in [0, 1])")


def test_rows_are_numbered_without_track_id_and_only_needed_columns_are_required(songs, bundle, tmp_path, predict_here):
    needed = songs[list(INPUT_COLUMNS)].assign(bpm_confidence="high", playlist_genre="jazz")
    (tmp_path / "full.csv").write_bytes(_csv(songs))
    (tmp_path / "needed.csv").write_bytes(_csv(_with_cell(needed, 1, "danceability", "-1")))
    full = predict_here(["full.csv"], bundle)
    needed_only = predict_here(["needed.csv", "--skip-invalid"], bundle)
    assert full.returncode == 0 and needed_only.returncode == 0, needed_only.stderr.decode()
    by_id, by_row = _table(full.stdout), _table(needed_only.stdout)
    assert by_row.columns[0] == "row"
    assert by_row["row"].tolist() == [str(n) for n in range(1, len(songs) + 1) if n != 2]
    assert by_row.drop(columns="row").equals(by_id.drop(index=1, columns=TRACK_ID).reset_index(drop=True))


def test_the_predictions_table_rounds_to_six_decimals_and_orders_the_top_k():
    from spotify_genre.predict.table import prediction_table, predictions_csv

    probabilities = np.random.default_rng(0).dirichlet(np.ones(len(GENRES)), size=50)
    probabilities[0] = [1e-9, 0.5 - 1e-9, 0.25, 0.125, 0.0625, 0.0625]
    table = prediction_table(pd.Series([f"t{i}" for i in range(50)], name=TRACK_ID), probabilities, GENRES, top_k=2)
    lines = predictions_csv(table).splitlines()
    assert lines[0] == "track_id,predicted," + ",".join(GENRES) + ",top1_genre,top1_probability,top2_genre,top2_probability"
    assert lines[1] == "t0,latin,0.000000,0.500000,0.250000,0.125000,0.062500,0.062500,latin,0.500000,pop,0.250000"


def test_required_columns_include_the_text_fields_the_preprocessor_scores():
    assert cli.required_columns(["energy"], ("track_name", "track_album_name")) == \
        ("energy", "track_name", "track_album_name")


def test_required_columns_follow_the_preprocessor_features():
    assert cli.required_columns(["energy", "key"]) == ("energy", "key")
    assert cli.required_columns(["release_year", "tempo"]) == (RELEASE_DATE, "tempo")
    assert cli.required_columns(list(INPUT_COLUMNS)) == INPUT_COLUMNS


def test_top_k(songs, bundle, tmp_path, predict_here):
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = predict_here(["songs.csv", "--top-k", "3"], bundle)
    assert result.returncode == 0, result.stderr.decode()
    table = pd.read_csv(io.BytesIO(result.stdout))
    ranked = [f"top{rank}_{what}" for rank in (1, 2, 3) for what in ("genre", "probability")]
    assert list(table.columns) == [TRACK_ID, "predicted", *GENRES, *ranked]
    assert (table["top1_genre"] == table["predicted"]).all()
    for rank in (1, 2, 3):
        chosen = table[f"top{rank}_genre"].map(GENRES.index).to_numpy()
        assert (np.take_along_axis(table[list(GENRES)].to_numpy(), chosen[:, None], axis=1)[:, 0]
                == table[f"top{rank}_probability"]).all()
    assert (table["top1_probability"] >= table["top2_probability"]).all()
    assert (table["top2_probability"] >= table["top3_probability"]).all()
    assert (table[["top1_genre", "top2_genre", "top3_genre"]].nunique(axis=1) == 3).all()


@pytest.mark.parametrize("k, message", [("7", "--top-k 7: the model knows 6 genres"), ("0", "expected 1 or more"),
                                        ("two", "expected a whole number")])
def test_top_k_out_of_range_is_a_usage_error(k, message, songs, bundle, tmp_path, predict_here):
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = predict_here(["songs.csv", "--top-k", k, "-o", "out.csv"], bundle)
    assert result.returncode == 2
    assert message in result.stderr.decode() and "Traceback" not in result.stderr.decode()
    assert result.stdout == b"" and not (tmp_path / "out.csv").exists()


def test_help_documents_the_exit_codes(predict_here):
    result = predict_here(["--help"])
    assert result.returncode == 0
    assert "predict" in result.stdout.decode()
    result = predict_here(["predict", "--help"])
    assert result.returncode == 0
    usage = result.stdout.decode()
    assert "exit codes:" in usage and "--skip-invalid" in usage
    assert "\n  5  " in usage and "\n  6  the preprocessor is not the one the model was trained with" in usage


class _Payload:
    """Unpickling this object creates a marker file: proof that the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickled_object_in_place_of_the_bundle_is_refused_unrun(how, songs, bundle, tmp_path, predict_here):
    import torch

    proof = tmp_path / "unpickling-runs-code"
    pickle.loads(pickle.dumps(_Payload(proof))).close()
    assert proof.exists()  # the payload works: an unsafe loader would have run it

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    if how == "torch.save":
        torch.save({"format": 1, "state_dict": _Payload(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps(_Payload(marker)))
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = predict_here(["songs.csv", "-o", "out.csv"], (evil, bundle[1]))
    _assert_clean_failure(result, 5, tmp_path, "model.pt", "refused")
    assert not marker.exists()


def test_bundle_of_another_format_is_refused(songs, bundle, tmp_path, predict_here):
    import torch

    raw = torch.load(bundle[0], weights_only=True)
    torch.save({**raw, "format": 99}, tmp_path / "model.pt")
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = predict_here(["songs.csv", "-o", "out.csv"], (tmp_path / "model.pt", bundle[1]))
    _assert_clean_failure(result, 5, tmp_path, "bundle format 99")


def test_bundle_and_preprocessor_that_disagree_are_refused(songs, bundle, tmp_path, predict_here):
    # Bundles that record the given preprocessor's sha256, yet were built for other features or classes: the
    # checks behind the sha256's hold too.
    candidates = load_params(ROOT / "params.yaml").select.candidates
    fewer, _ = _save_bundle(tmp_path / "fewer", [name for name in candidates if name != "liveness"],
                            recorded=bundle[1])
    reordered, _ = _save_bundle(tmp_path / "reordered", candidates, class_names=tuple(reversed(GENRES)),
                                recorded=bundle[1])
    (tmp_path / "songs.csv").write_bytes(_csv(songs))

    features = predict_here(["songs.csv", "-o", "out.csv"], (fewer, bundle[1]))
    _assert_clean_failure(features, 5, tmp_path, "features do not match", "liveness")
    classes = predict_here(["songs.csv", "-o", "out.csv"], (reordered, bundle[1]))
    _assert_clean_failure(classes, 5, tmp_path, "classes do not match")


def edited_copy(source: Path, dest: Path) -> Path:
    """The preprocessor at `source` with one number changed (a numeric feature's center), saved again."""
    pre = load_preprocessor(source)
    first = next(i for i, column in enumerate(pre.columns) if isinstance(column, NumericColumn))
    columns = list(pre.columns)
    columns[first] = dataclasses.replace(columns[first], center=columns[first].center + 0.5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_preprocessor(dest, dataclasses.replace(pre, columns=tuple(columns)))
    return dest


@pytest.fixture(scope="module")
def other_preprocessors(bundle, tmp_path_factory) -> dict[str, Path]:
    """Preprocessors with the bundle's features and classes that are not the one it was trained with, and a
    byte-identical copy of that one saved elsewhere."""
    folder = tmp_path_factory.mktemp("other-preprocessors")
    candidates = load_params(ROOT / "params.yaml").select.candidates
    _, refitted = _save_bundle(folder / "refitted", candidates, songs_seed=1)
    copy = folder / "copy" / "preprocessor.json"
    copy.parent.mkdir()
    save_preprocessor(copy, load_preprocessor(bundle[1]))
    return {"refitted": refitted, "edited": edited_copy(bundle[1], folder / "edited" / "preprocessor.json"),
            "copy": copy}


@pytest.mark.parametrize("which", ["refitted", "edited"])
def test_a_preprocessor_other_than_the_one_the_bundle_records_is_refused(which, other_preprocessors, songs, bundle,
                                                                         tmp_path, predict_here):
    other = other_preprocessors[which]
    given, trained_with = load_preprocessor(other), load_preprocessor(bundle[1])
    # Nothing but the sha256 tells them apart: the same inputs, outputs and classes, other statistics.
    assert (given.input_features, given.output_features, given.classes) == \
        (trained_with.input_features, trained_with.output_features, trained_with.classes)
    assert given.columns != trained_with.columns
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = predict_here(["songs.csv", "-o", "out.csv"], (bundle[0], other))
    line = _assert_clean_failure(result, 6, tmp_path, f"error: {bundle[0]}: ", "preprocessor",
                                 sha256_of(bundle[1])[:12], sha256_of(other)[:12])
    assert str(bundle[1]) in line  # the preprocessor the bundle was trained with, to pass instead


def test_the_same_preprocessor_bytes_anywhere_are_accepted(other_preprocessors, songs, bundle, predict_here):
    copy = other_preprocessors["copy"]
    assert copy != bundle[1] and copy.read_bytes() == bundle[1].read_bytes()
    (Path.cwd() / "songs.csv").write_bytes(_csv(songs))
    original, moved = predict_here(["songs.csv"], bundle), predict_here(["songs.csv"], (bundle[0], copy))
    assert original.returncode == moved.returncode == 0, moved.stderr.decode()
    assert moved.stdout == original.stdout and moved.stdout.count(b"\n") == len(songs) + 1


@pytest.mark.parametrize("damage, message", [
    ("absent", "not found"),
    ("not json", "not valid JSON"),
    ("wrong version", "format_version"),
])
def test_bad_preprocessor_is_refused(damage, message, songs, bundle, tmp_path, predict_here):
    path = tmp_path / "preprocessor.json"
    if damage == "not json":
        path.write_text("{ not json")
    elif damage == "wrong version":
        path.write_text(bundle[1].read_text().replace('"format_version": 1', '"format_version": 2'))
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    result = predict_here(["songs.csv", "-o", "out.csv"], (bundle[0], path))
    _assert_clean_failure(result, 5, tmp_path, "preprocessor.json", message)


def test_missing_bundle_is_refused_before_reading_songs(bundle, tmp_path, predict_here):
    result = predict_here(["absent.csv", "-o", "out.csv"], (tmp_path / "model.pt", bundle[1]))
    _assert_clean_failure(result, 5, tmp_path, "model.pt", "--model")


def test_unwritable_output(songs, bundle, tmp_path, predict_here):
    (tmp_path / "songs.csv").write_bytes(_csv(songs))
    (tmp_path / "taken").mkdir()
    result = predict_here(["songs.csv", "-o", "taken"], bundle)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.startswith("error: taken: cannot write the predictions") and stderr.count("\n") == 1, stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["songs.csv", "taken"]


@pytest.fixture(scope="module")
def pipeline(synthetic_pipeline) -> Path:
    """The whole pipeline, run once by the real `dvc repro` on synthetic data (shared by the pytest session; read
    only)."""
    project = synthetic_pipeline
    return project


@pytest.mark.e2e
def test_predictions_on_the_test_split_equal_the_evaluate_stage(pipeline, tmp_path):
    """Run in the project, so predict finds models/ where it looks by default; the songs and predictions are kept
    outside it, which other tests read at the same time."""
    pd.read_parquet(pipeline / "data" / "split" / "test.parquet").to_csv(tmp_path / "test.csv", index=False)
    result = run([str(BIN / "spotify-genre"), "predict", str(tmp_path / "test.csv"), "-o",
                  str(tmp_path / "predicted.csv")], pipeline)
    assert result.stderr == ""
    ours = pd.read_csv(tmp_path / "predicted.csv", dtype=str, keep_default_na=False)
    evaluated = pd.read_csv(pipeline / "reports" / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(ours) == len(evaluated) > 0
    assert ours.equals(evaluated.drop(columns="actual"))


@pytest.mark.e2e
def test_model_inputs_equal_the_processed_test_split(pipeline):
    from pipeline.artifacts import read_processed

    pre = load_preprocessor(pipeline / "models" / "preprocessor.json")
    data = pd.read_parquet(pipeline / "data" / "split" / "test.parquet").to_csv(index=False).encode()
    songs, problems = cli.read_input(data, "test.csv", cli.required_columns(pre.input_features,
                                                                                    pre.song_fields))
    assert problems.empty
    processed = read_processed(pipeline / "data" / "processed" / "test.parquet")
    features = model_inputs(pre, songs)
    assert features.dtype == processed.features.dtype
    assert np.array_equal(features, processed.features)
