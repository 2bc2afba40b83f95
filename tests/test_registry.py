"""The registered model for real: a copy of the session's synthetic pipeline with a local-folder DVC remote, a version
and a stage tagged by `make register`, then `dvc artifacts get` by version and by stage into an empty folder outside
the repository, from the remote alone, and `spotify-genre predict` there."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_project, run, user_env

pytestmark = pytest.mark.e2e

ARTIFACT = "spotify-genre-mlp"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def registry(synthetic_pipeline, tmp_path_factory) -> Path:
    """The project pushed to its remote, version v1.0.0 registered and in stage prod; its own cache removed, so
    that only the remote can serve the files."""
    where = tmp_path_factory.mktemp("registry")
    project = copy_project(synthetic_pipeline, where / "project")
    run(["dvc", "remote", "add", "-d", "store", str(where / "remote")], project)
    run(["git", "commit", "-q", "-am", "remote"], project)
    run(["dvc", "push", "-q"], project)
    run(["make", "-f", str(ROOT / "Makefile"), "register", "VERSION=v1.0.0", "STAGE=prod", f"BIN={BIN}", "STAMP="],
        project)
    shutil.rmtree(project / ".dvc" / "cache")
    return project


def predict(folder: Path, model: Path, cwd: Path, check: bool = True):
    inputs = folder / "data" / "split" / "test.parquet"
    return run([str(BIN / "spotify-genre"), "predict", str(inputs), "--top-k", "3", "--model", str(model / "model.pt"),
                "--preprocessor", str(model / "preprocessor.json")], cwd, env=user_env(), check=check)


def test_the_artifact_is_declared_in_dvc_yaml():
    artifact = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"][ARTIFACT]
    assert artifact["type"] == "model" and artifact["path"] == "models" and artifact["desc"] and artifact["labels"]


def test_register_tags_the_version_and_the_stage_in_gto_s_format(registry):
    tags = run(["git", "tag", "--list"], registry).stdout.split()
    assert sorted(tags) == [f"{ARTIFACT}#prod#1", f"{ARTIFACT}@v1.0.0"]
    refused = run(["make", "-f", str(ROOT / "Makefile"), "register", f"BIN={BIN}", "STAMP="], registry, check=False)
    assert refused.returncode != 0 and "give VERSION" in refused.stderr


@pytest.mark.parametrize("how", [["--rev", "v1.0.0"], ["--stage", "prod"]])
def test_fetched_by_name_it_predicts_the_same_bytes(registry, synthetic_pipeline, how, tmp_path):
    elsewhere = tmp_path / "deploy"
    elsewhere.mkdir()
    run(["dvc", "artifacts", "get", str(registry), ARTIFACT, *how, "-o", "model"], elsewhere)
    fetched = elsewhere / "model"
    assert {"model.pt", "preprocessor.json", "preprocessor.npz"} <= {path.name for path in fetched.iterdir()}
    here = predict(synthetic_pipeline, synthetic_pipeline / "models", synthetic_pipeline).stdout
    there = predict(synthetic_pipeline, fetched, elsewhere).stdout
    assert there == here and there.count("\n") > 100


@pytest.mark.parametrize("how, says", [
    (["spotify-genre-mlp", "--rev", "v9.9.9"], "Unable to find artifact 'spotify-genre-mlp @ v9.9.9'"),
    (["spotify-genre-mlp", "--stage", "staging"], "Unable to find artifact 'spotify-genre-mlp @ staging'"),
    (["no-such-model"], "Unable to find artifact 'no-such-model'"),
])
def test_a_missing_version_or_an_unknown_name_is_one_clear_line(registry, how, says, tmp_path):
    """DVC first says it found no Studio configuration, then what it could not find."""
    result = run(["dvc", "artifacts", "get", str(registry), *how, "-o", "model"], tmp_path, check=False)
    assert result.returncode != 0 and not (tmp_path / "model").exists()
    assert [line for line in result.stderr.splitlines() if says in line], result.stderr


@pytest.mark.parametrize("name, exit_code, says", [
    ("preprocessor.json", 6, "the model was trained with the preprocessor of sha256"),
    ("preprocessor.npz", 5, "its sha256 is not the one"),
    ("model.pt", 5, "damaged or altered"),
])
def test_a_tampered_file_is_one_clear_line(registry, synthetic_pipeline, name, exit_code, says, tmp_path):
    run(["dvc", "artifacts", "get", str(registry), ARTIFACT, "--rev", "v1.0.0", "-o", "model"], tmp_path)
    target = tmp_path / "model" / name
    data = bytearray(target.read_bytes())
    if name.endswith(".json"):
        data = data.replace(b'"', b'"  '[:1], 1) + b" "  # the same JSON, other bytes
    else:
        data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    result = predict(synthetic_pipeline, tmp_path / "model", tmp_path, check=False)
    assert result.returncode == exit_code, result.stderr
    assert result.stderr.count("\n") == 1 and says in result.stderr and result.stdout == ""
