"""Experiments: `dvc exp run -S`, and `make sweep` and `make seeds` through DVC's queue, in a temporary project on
synthetic data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import BIN, PINNED_STATE, ROOT, copy_project, run, user_env
from tests.test_train import TRACKED

pytestmark = pytest.mark.e2e

METRICS = "reports/metrics.json"


@pytest.fixture(scope="module")
def baseline(synthetic_pipeline, tmp_path_factory) -> Path:
    """The pipeline run once on synthetic data and committed (a copy of the pytest session's): every experiment's
    start."""
    repo = copy_project(synthetic_pipeline, tmp_path_factory.mktemp("experiments") / "project")
    yield repo
    run(["dvc", "queue", "stop"], repo, check=False)


@pytest.fixture
def project(baseline: Path) -> Path:
    """The baseline's workspace as committed, whatever an earlier test applied to it."""
    run(["git", "reset", "-q", "--hard"], baseline)
    run(["dvc", "checkout", "-q", "--force"], baseline)
    return baseline


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`, as {experiment name: {"params": params.yaml, "metrics": reports/metrics.json}}."""
    found = {}
    for commit in json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout):
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                found[rev.get("name") or rev["rev"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": (data.get("metrics") or {}).get(METRICS, {}).get("data"),
                }
    return found


def queue_status(repo: Path) -> dict[str, str]:
    """{experiment name: Queued, Running, Success or Failed}, from `dvc queue status`."""
    statuses = {}
    for line in run(["dvc", "queue", "status"], repo).stdout.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[-1] in {"Queued", "Running", "Success", "Failed"}:
            statuses[cells[1]] = cells[-1]
    return statuses


def stages(repo: Path) -> list[str]:
    return list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


@pytest.mark.core
def test_exp_run_with_a_new_lr_reruns_only_train_and_evaluate(project):
    """One experiment, checked from every side: what ran, what DVC recorded, what `dvc metrics` shows and diffs."""
    before = json.loads((project / METRICS).read_text())
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)[""]["data"]
    assert shown[METRICS]["data"] == before
    assert "best_val_loss" in shown["dvclive/metrics.json"]["data"]
    table = run(["dvc", "metrics", "show"], project).stdout
    assert "strongest_baseline" in table and "intervals.accuracy.low" in table
    assert f"{before['accuracy']:g}"[:5] in table
    committed = run(["git", "ls-files", "dvclive"], project).stdout.split()
    assert sorted(committed) == ["dvclive/metrics.json"] + [f"dvclive/plots/metrics/{name}" for name in TRACKED]

    result = run(["dvc", "exp", "run", "--name", "lr-tenth", "-S", "lr=0.01"], project, env=user_env())

    assert re.findall(r"Running stage '([^']+)'", result.stdout) == ["train", "evaluate"]
    for stage in set(stages(project)) - {"train", "evaluate"}:
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout
    after = json.loads((project / METRICS).read_text())
    recorded = experiments(project)["lr-tenth"]
    assert recorded["params"]["lr"] == 0.01
    assert recorded["metrics"] == after, "the experiment records the metrics its run wrote"
    assert yaml.safe_load((project / "params.yaml").read_text())["lr"] == 0.01, "the result is applied"
    assert torch.load(project / "models/model.pt", weights_only=True)["params"]["lr"] == 0.01
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"]["lr"] == 0.01
    assert not list((project / "dvclive").glob(".*")), "staging folders left in dvclive/"
    assert not (project / "dvclive/dvc.yaml").exists() and not (project / "dvclive/params.yaml").exists()
    numerics = json.loads((project / "reports" / "timing" / "train.json").read_text())["numerics"]
    assert numerics == PINNED_STATE

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)[METRICS]
    assert diff["log_loss"] == {"old": before["log_loss"], "new": after["log_loss"],
                                "diff": pytest.approx(after["log_loss"] - before["log_loss"])}
    assert after["log_loss"] != before["log_loss"]
    def scores(metrics: dict) -> dict:
        return {name: {key: value for key, value in baseline.items() if key != "difference"}
                for name, baseline in metrics["baselines"].items()}

    assert scores(after) == scores(before), "the baselines' own scores do not depend on lr"
    assert not any(key.startswith("baselines.") and ".difference." not in key for key in diff)
    assert after["baselines"] != before["baselines"], "the paired differences to the MLP do"
    slices = [key for key in diff if key.startswith("novelty.test.") and key.count(".") == 3]
    assert slices, "dvc metrics diff shows the scores by novelty slice"
    for key in slices:
        name, score = key.split(".")[2:]
        assert score in ("accuracy", "f1_macro") and diff[key]["new"] == after["novelty"]["test"][name][score]
    assert not any(key.endswith(".songs") for key in diff), "the slices' songs do not depend on lr"
    assert "log_loss" in run(["dvc", "metrics", "diff"], project).stdout


def test_make_sweep_runs_the_grid_compares_it_and_fails_loudly_on_a_bad_run(project):
    venv = BIN.parent
    sweep = run(["make", "-f", str(ROOT / "Makefile"), "-o", str(venv / ".installed"), "sweep", f"VENV={venv}",
                 "SWEEP_LR=0.02,0.03,-1", "SWEEP_BATCH=128", "SWEEP_JOBS=2"], project, check=False)
    output = sweep.stdout + sweep.stderr

    assert sweep.returncode != 0, output
    names = re.findall(r"Queued experiment '([^']+)'", sweep.stdout)
    assert len(names) == 3 and len({name.rsplit("-", 1)[0] for name in names}) == 1, output
    good, bad = names[:2], names[2]
    status = queue_status(project)
    assert {name: status.get(name) for name in names} == {good[0]: "Success", good[1]: "Success", bad: "Failed"}

    logs = run(["dvc", "queue", "logs", bad], project).stdout
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lr" in errors[0], logs
    assert "Traceback" not in logs
    assert f"--- dvc queue logs {bad}" in sweep.stdout and errors[0] in sweep.stdout
    assert f"make sweep: failed: {bad}" in sweep.stderr

    recorded = experiments(project)
    assert [recorded[name]["params"]["lr"] for name in good] == [0.02, 0.03]
    assert all(recorded[name]["params"]["batch_size"] == 128 for name in good)
    metrics = [recorded[name]["metrics"] for name in good]
    assert all(set(m) >= {"accuracy", "f1_macro", "log_loss", "baselines"} for m in metrics), metrics
    assert metrics[0]["log_loss"] != metrics[1]["log_loss"], "two learning rates, one result: nothing was trained"

    table = [row for row in sweep.stdout.splitlines() if row.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert {"Experiment", "accuracy", "f1_macro", "lr", "batch_size"} <= set(header), table[0]
    rows = {name: row for name in names for row in table if f"[{name}]" in row}
    assert set(rows) == set(good), "the table lists the finished runs and hides the failed one"
    for name in good:
        cells = dict(zip(header, (cell.strip() for cell in rows[name].strip("|").split("|"))))
        assert float(cells["accuracy"]) == pytest.approx(recorded[name]["metrics"]["accuracy"], abs=1e-4)
        assert float(cells["f1_macro"]) == pytest.approx(recorded[name]["metrics"]["f1_macro"], abs=1e-4)


def test_make_seeds_runs_the_pipeline_per_seed_and_protocol_and_tables_the_mlp_against_its_peers(project):
    venv = BIN.parent
    seeds = run(["make", "-f", str(ROOT / "Makefile"), "-o", str(venv / ".installed"), "seeds", f"VENV={venv}",
                 "SEEDS=5,6", "SEEDS_JOBS=2"], project)

    names = re.findall(r"Queued experiment '([^']+)'", seeds.stdout)
    recorded = experiments(project)
    runs = {(recorded[name]["params"]["split"]["group_by"], recorded[name]["params"]["split"]["seed"]):
            recorded[name]["metrics"] for name in names}
    assert sorted(runs) == [("track_artist", 5), ("track_artist", 6), ("track_id", 5), ("track_id", 6)], seeds.stdout
    assert runs["track_id", 5]["accuracy"] != runs["track_id", 6]["accuracy"], "two seeds, one result: no re-split"
    shares = {protocol: runs[protocol, 5]["novelty"]["test"]["new_artist"]["share"] for protocol in ("track_artist",
                                                                                                    "track_id")}
    assert shares["track_artist"] > shares["track_id"], f"an artist split holds more new artists: {shares}"

    lines = seeds.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| scenario |"))
    end = next(i for i, line in enumerate(lines[start:] + [""], start) if not line.startswith("|"))
    headline = [[cell.strip() for cell in row.strip("|").split("|")] for row in lines[start:end]]
    assert headline[0][:2] == ["scenario", "measured on"], seeds.stdout
    every = {row[0]: row for row in headline[2:]}["every song of a split grouped by track"]
    mean = (runs["track_id", 5]["accuracy"] + runs["track_id", 6]["accuracy"]) / 2
    assert every[1] == "split grouped by track, every test song; seeds 5, 6"
    assert every[2].startswith(f"{mean:.4f} ["), seeds.stdout
    assert every[4].startswith("HistGradientBoosting "), seeds.stdout  # the only peer; the majority is a floor
    assert "new artist" in {row[0] for row in headline[2:]}

    assert "split grouped by track, every test song:" in seeds.stdout
    assert (f"| MLP | {runs['track_id', 5]['accuracy']:.4f} / {runs['track_id', 5]['f1_macro']:.4f} | "
            f"{runs['track_id', 6]['accuracy']:.4f} / {runs['track_id', 6]['f1_macro']:.4f} |") in seeds.stdout
    saved = json.loads((project / "reports" / "seeds.json").read_text())
    assert sorted(saved) == ["track_artist", "track_id"] and sorted(saved["track_id"]) == ["5", "6"]
    assert saved["track_id"]["6"]["accuracy"] == runs["track_id", 6]["accuracy"]


def test_exp_push_and_pull_share_an_experiment_through_git_and_the_remote(project, tmp_path):
    origin, cache = tmp_path / "origin.git", tmp_path / "dvc-remote"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run(["git", "push", "-q", str(origin), "main"], project)
    run(["dvc", "remote", "add", "--local", "-d", "team", str(cache)], project)
    run(["dvc", "exp", "run", "--name", "shared", "-S", "momentum=0.8"], project)
    pushed = run(["dvc", "exp", "push", str(origin), "shared"], project)
    assert "Pushed experiment shared" in pushed.stdout

    teammate = tmp_path / "teammate"
    run(["git", "clone", "-q", str(origin), str(teammate)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "team", str(cache)], teammate)
    assert "shared" in run(["dvc", "exp", "list", str(origin)], teammate).stdout
    run(["dvc", "exp", "pull", str(origin), "shared"], teammate)
    assert experiments(teammate)["shared"] == experiments(project)["shared"]
    run(["dvc", "exp", "apply", "shared"], teammate)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], teammate).stdout
    for out in ("models/model.pt", METRICS):
        assert (teammate / out).read_bytes() == (project / out).read_bytes(), out
