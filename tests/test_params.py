"""params.yaml as a whole: every key of every section is typed, unknown keys are refused, errors name the key."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.params import Params, load_params, parse_params
from spotify_genre.errors import ParamsError
from tests.conftest import ROOT, default_params, run, tool_env, with_overrides

STAGES = ("download", "split", "select", "preprocess", "baselines", "train", "evaluate")


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    leaves = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves += _leaves(annotation, f"{prefix}{name}.")
        else:
            leaves.append((f"{prefix}{name}", annotation))
    return leaves


def _wrong_value(annotation: object) -> object:
    """A value of the wrong type (or outside the choices) for a field of this annotation."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "no-such-choice"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _wrong_value(args[0])
    if origin is typing.Annotated:
        return _wrong_value(args[0])
    if origin is list:
        return "not-a-list"
    if annotation is str:
        return 12345
    return "not-a-number"


LEAVES = _leaves(Params)
SECTIONS = [name for name, field in Params.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)]


def test_the_committed_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.lr > 0 and params.batch_size >= 1


def test_the_walk_covers_every_key_of_the_file():
    def flatten(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    assert sorted(flatten(default_params())) == sorted(path for path, _ in LEAVES)


@pytest.mark.parametrize("path,annotation", LEAVES, ids=[path for path, _ in LEAVES])
def test_every_key_refuses_a_wrong_type_and_names_itself(path, annotation):
    broken = with_overrides(default_params(), {path: _wrong_value(annotation)})
    with pytest.raises(ParamsError) as caught:
        parse_params(broken)
    assert str(caught.value).startswith(f"params.yaml: {path}")


@pytest.mark.parametrize("path", [path for path, _ in LEAVES])
def test_every_key_is_required(path):
    broken = default_params()
    *parents, leaf = path.split(".")
    node = broken
    for key in parents:
        node = node[key]
    del node[leaf]
    with pytest.raises(ParamsError, match=rf"^params\.yaml: {path}: missing key"):
        parse_params(broken)


@pytest.mark.parametrize("section", [None, *SECTIONS])
def test_unknown_keys_are_refused_in_every_section(section):
    broken = default_params()
    (broken[section] if section else broken)["lerning_rate"] = 0.1
    where = f"{section}.lerning_rate" if section else "lerning_rate"
    with pytest.raises(ParamsError, match=rf"^params\.yaml: {where}: unknown key"):
        parse_params(broken)


@pytest.mark.parametrize("overrides,key", [
    ({"lr": 0.0}, "lr"),
    ({"lr": "0.01"}, "lr"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 32.5}, "batch_size"),
    ({"train.dropout": 1.0}, "train.dropout"),
    ({"train.hidden_sizes": []}, "train.hidden_sizes"),
    ({"train.device": "tpu"}, "train.device"),
    ({"train.schedule": "linear"}, "train.schedule"),
    ({"split.val_size": 0.5, "split.test_size": 0.45}, "split"),
    ({"select.candidates": ["playlist_subgenre"]}, "select.candidates"),
    ({"select.candidates": ["danceability", "danceability"]}, "select.candidates"),
    ({"data.sha256": "not-a-hash"}, "data.sha256"),
    ({"data.source": "ftp"}, "data.source"),
    ({"preprocess.log_transform": ["key"]}, "preprocess.log_transform"),
    ({"preprocess.text.fields": ["playlist_id"]}, "preprocess.text.fields"),
    ({"preprocess.text.ngram_min": 5, "preprocess.text.ngram_max": 3}, "preprocess.text"),
    ({"preprocess.text.folds": 1}, "preprocess.text.folds"),
    ({"split.group_by": "track_album_id"}, "split.group_by"),
    ({"train.optimizer": "adam"}, "train.optimizer"),
    ({"train.label_smoothing": 1.0}, "train.label_smoothing"),
    ({"train.embedding.kind": "linear"}, "train.embedding.kind"),
    ({"train.schedule": "plateau", "train.warmup_epochs": 2}, "train"),
    ({"train.warmup_epochs": 20, "train.max_epochs": 20}, "train"),
])
def test_values_out_of_bounds_are_refused(overrides, key):
    with pytest.raises(ParamsError) as caught:
        parse_params(with_overrides(default_params(), overrides))
    assert str(caught.value).startswith(f"params.yaml: {key}")


def test_a_whole_number_is_accepted_where_a_float_is_expected():
    assert parse_params(with_overrides(default_params(), {"lr": 1})).lr == 1.0


@pytest.mark.parametrize("text,expected", [
    ("lr: [0.1\n", "YAML syntax error at line"),
    ("- just\n- a list\n", "expected a mapping"),
    ("", "expected a mapping"),
])
def test_malformed_files_get_a_clear_error(tmp_path: Path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=expected):
        load_params(path)


def _with_typo(folder: Path, stage: str) -> None:
    broken = default_params()
    broken["baselines" if stage != "baselines" else "data"]["typo_key"] = 1
    (folder / "params.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_validates_params_before_any_work(tmp_path: Path, monkeypatch, capsys, stage):
    """Each stage's main() refuses a typo in a section it does not even read, and writes nothing."""
    _with_typo(tmp_path, stage)
    monkeypatch.chdir(tmp_path)
    assert importlib.import_module(f"stages.{stage}").main([]) == 2
    err = capsys.readouterr().err
    assert "typo_key: unknown key" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.slow
def test_a_stage_run_as_dvc_runs_it_refuses_bad_params(tmp_path: Path):
    """The same, once, as a process (`python -m stages.train`, what dvc.yaml runs): exit code 2, one line."""
    _with_typo(tmp_path, "train")
    result = run(["python", "-m", "stages.train"], tmp_path, check=False, env=tool_env(PYTHONPATH=str(ROOT)))
    assert result.returncode == 2
    assert result.stderr.startswith("error: params.yaml: baselines.typo_key: unknown key")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
