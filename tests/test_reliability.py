"""Reliability: broken runs with the real `dvc` CLI (`dvc repro` interrupted during training by Ctrl-C or
SIGKILL, a second `dvc repro` while one runs), a rebuild from nothing that must give the same dvc.lock hash for hash,
atomic writes, what reaches the model, and a walk of the code for loaders that can run what they read."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from spotify_genre.atomic import write_text, write_with
from spotify_genre.songs.features import CANDIDATE_FEATURES
from spotify_genre.songs.schema import LABEL, PLAYLIST_FIELDS, TRACK_ID
from tests.conftest import ROOT, SYNTHETIC_OVERRIDES, copy_project, make_project, run, tool_env

# Few rows, so the stages start quickly; enough epochs (no early stop) that training is still going on when the
# test catches its first epoch line.
OVERRIDES = {**SYNTHETIC_OVERRIDES, "data.synthetic_rows": 2000, "train.max_epochs": 100, "train.patience": 100,
             "baselines.models": ["majority"]}
UPSTREAM = ("download", "split", "select", "preprocess")
EPOCH_LINE = re.compile(r"^epoch +\d+/\d+ ", re.MULTILINE)
# What an atomic write or the DVCLive install leaves behind if its process dies before cleaning up.
TEMP_FILE = re.compile(r"^\..+\.tmp$|^\.plots")
UNTRACKED_STATE = (".git", ".dvc")
# DVC's refusals: the repository lock, or the lock on the files a running stage reads or writes.
LOCKED = re.compile(r"Unable to acquire lock|is busy, it is being blocked by:")


def declared_outputs(project: Path) -> list[str]:
    """Every `outs` path of every stage in dvc.yaml, cached or not."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return [next(iter(out)) if isinstance(out, dict) else out for stage in stages.values() for out in stage["outs"]]


def files_under(path: Path) -> dict[str, bytes]:
    """The files of an output: itself, or everything under it when it is a folder."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {item.relative_to(path).as_posix(): item.read_bytes() for item in sorted(path.rglob("*")) if item.is_file()}


def workspace(project: Path) -> dict[str, bytes]:
    """Every file of the workspace except Git's and DVC's own state, by path."""
    return {item.relative_to(project).as_posix(): item.read_bytes() for item in sorted(project.rglob("*"))
            if item.is_file() and item.relative_to(project).parts[0] not in UNTRACKED_STATE}


def temp_files(project: Path) -> list[str]:
    return [item.relative_to(project).as_posix() for item in project.rglob("*")
            if TEMP_FILE.match(item.name) and item.relative_to(project).parts[0] not in UNTRACKED_STATE]


def dvc_status(project: Path) -> dict:
    return json.loads(run(["dvc", "status", "--json"], project).stdout)


def git_status(project: Path) -> list[str]:
    return sorted(run(["git", "status", "--porcelain", "--untracked-files=all"], project).stdout.splitlines())


class Repro:
    """`dvc repro` in its own process group, as a shell runs a foreground job, with its output read as it comes."""

    def __init__(self, project: Path):
        self.process = subprocess.Popen(["dvc", "repro"], cwd=project, env=tool_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.training = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if EPOCH_LINE.match(line):
                self.training.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_training(self, timeout: float = 180) -> None:
        if not self.training.wait(timeout):
            self.kill()
            pytest.fail(f"no epoch line from `dvc repro` within {timeout} s\n{self.output}")

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def finish(self, timeout: float = 180) -> int:
        """Wait until dvc and everything it started have exited; return dvc's exit code."""
        code = self.process.wait(timeout)
        self.reader.join(timeout)
        deadline = time.monotonic() + timeout
        while self._group_alive():
            if time.monotonic() > deadline:
                pytest.fail("a process of the interrupted `dvc repro` outlived it")
            time.sleep(0.05)
        return code

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        if self._group_alive():
            self.signal(signal.SIGKILL)
        self.process.wait(30)


def die_while_writing(cwd: Path, output: str | Path) -> Path:
    """SIGKILL inside an atomic write's window, after half the bytes went to the temporary file; return that file."""
    script = ("import os, signal, sys\n"
              "from spotify_genre.atomic import write_with\n"
              "def writer(tmp):\n"
              "    tmp.write_bytes(b'half a file')\n"
              "    print(tmp, flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "write_with(sys.argv[1], writer)\n")
    result = run([sys.executable, "-c", script, str(output)], cwd, check=False)
    assert result.returncode == -signal.SIGKILL
    leftover = cwd / result.stdout.strip()
    assert leftover.read_bytes() == b"half a file"
    return leftover


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """A project whose stages before training have run: the starting point of every run below."""
    project = make_project(tmp_path_factory.mktemp("upstream") / "project", OVERRIDES)
    run(["dvc", "repro", "preprocess"], project)
    return project


@pytest.fixture(scope="module")
def reference(upstream, tmp_path_factory) -> Path:
    """The same project, run to the end without interruption."""
    project = copy_project(upstream, tmp_path_factory.mktemp("reference") / "project")
    run(["dvc", "repro"], project)
    assert dvc_status(project) == {}
    return project


def assert_no_partial_outputs(project: Path, reference: Path) -> None:
    """Each declared output is absent, or whole and byte-identical to the uninterrupted run's; no temp files."""
    for output in declared_outputs(project):
        if (project / output).exists():
            assert files_under(project / output) == files_under(reference / output), f"{output} is not whole"
    assert not temp_files(project)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_repro_interrupted_during_training_leaves_no_partial_output_and_resumes_to_the_same_result(
        signum, upstream, reference, tmp_path):
    project = copy_project(upstream, tmp_path / "project")
    lock_before = (project / "dvc.lock").read_bytes()
    repro = Repro(project)
    try:
        repro.wait_for_training()
        repro.signal(signal.SIGSTOP)  # holds training still, mid-way, with dvc's lock taken
        assert not (project / "models" / "model.pt").exists(), f"training ended before the signal\n{repro.output}"

        before = workspace(project)
        second = run(["dvc", "repro"], project, check=False)
        assert second.returncode != 0
        assert LOCKED.search(second.stderr), second.stderr
        assert f"(PID {repro.process.pid})" in second.stderr or "Unable to acquire lock" in second.stderr
        assert workspace(project) == before, "the refused `dvc repro` changed the workspace"

        repro.signal(signum)
        repro.signal(signal.SIGCONT)
        code = repro.finish()
    finally:
        repro.kill()

    if signum == signal.SIGINT:
        assert code not in (0, -signal.SIGINT), repro.output
        assert "interrupted: no output was left half-written" in repro.output
        assert "failed to reproduce 'train'" in repro.output
        assert "Traceback" not in repro.output
    else:
        assert code == -signal.SIGKILL
    assert (project / "dvc.lock").read_bytes() == lock_before, "dvc.lock records the interrupted stage"
    assert_no_partial_outputs(project, reference)
    status = dvc_status(project)
    assert {"train", "evaluate"} <= status.keys()
    assert not status.keys() & set(UPSTREAM), status

    if signum == signal.SIGKILL:
        die_while_writing(project, "models/model.pt")  # the one moment a SIGKILL can leave something behind
        die_while_writing(project, "reports/figures/loss.png")  # inside a folder that is a DVC output
    resumed = run(["dvc", "repro"], project)
    assert "Running stage 'train'" in resumed.stdout
    assert not any(f"Running stage '{stage}'" in resumed.stdout for stage in UPSTREAM)
    assert (project / "dvc.lock").read_bytes() == (reference / "dvc.lock").read_bytes()
    for output in declared_outputs(project):
        assert files_under(project / output) == files_under(reference / output), output
    assert not temp_files(project)
    assert git_status(project) == git_status(reference)


@pytest.mark.e2e
def test_deleting_every_output_and_the_cache_then_repro_gives_the_same_lock(reference, tmp_path):
    project = copy_project(reference, tmp_path / "project")
    lock = (project / "dvc.lock").read_bytes()
    outputs = declared_outputs(project)
    locked = yaml.safe_load(lock)["stages"]
    assert set(outputs) == {out["path"] for stage in locked.values() for out in stage["outs"]}
    for output in outputs:
        path = project / output
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    shutil.rmtree(project / ".dvc" / "cache")
    assert dvc_status(project).keys() == locked.keys()

    rebuilt = run(["dvc", "repro"], project)
    assert all(f"Running stage '{stage}'" in rebuilt.stdout for stage in locked)
    assert (project / "dvc.lock").read_bytes() == lock
    for output in outputs:
        assert files_under(project / output) == files_under(reference / output), output


def test_a_write_clears_what_a_killed_writer_left_and_spares_a_live_writers_file(tmp_path):
    target = tmp_path / "model.pt"
    script = ("import sys\n"
              "from spotify_genre.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_text('live')\n"
              "    print(tmp, flush=True)\n"
              "    sys.stdin.read()\n")
    live = subprocess.Popen([sys.executable, "-c", script, str(target)], cwd=ROOT, env=tool_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live_tmp = Path(live.stdout.readline().strip())
        dead_tmp = die_while_writing(ROOT, target)
        write_text(target, "whole")
        assert not dead_tmp.exists()
        assert live_tmp.read_text() == "live"
        assert target.read_text() == "whole"
    finally:
        live.communicate("", timeout=60)
    assert live.returncode == 0
    assert target.read_text() == "live"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_keeps_the_old_file_whole_and_leaves_no_temp_file(tmp_path, failure):
    target = tmp_path / "metrics.json"
    write_text(target, "old\n")

    def writer(tmp: Path) -> None:
        tmp.write_text("half")
        raise failure()

    with pytest.raises(failure):
        write_with(target, writer)
    assert target.read_text() == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.e2e
def test_the_model_dvc_repro_trains_sees_only_candidate_features(reference):
    from spotify_genre.model.bundle import load_bundle

    preprocessor = json.loads((reference / "models" / "preprocessor.json").read_text())
    inputs = set(preprocessor["input_features"])
    assert inputs and inputs <= set(CANDIDATE_FEATURES)
    assert not inputs & {*PLAYLIST_FIELDS, LABEL, TRACK_ID}
    assert list(load_bundle(reference / "models" / "model.pt").feature_names) == preprocessor["output_features"]


# Loaders that run code from the file they read, by module; torch.load is allowed with weights_only=True only.
UNSAFE_LOADERS = {
    "pickle": {"load", "loads", "Unpickler"}, "dill": {"load", "loads"}, "cloudpickle": {"load", "loads"},
    "joblib": {"load"}, "shelve": {"open"}, "marshal": {"load", "loads"},
    "yaml": {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"},
    "pandas": {"read_pickle"}, "jit": {"load"},
}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _unsafe_loads(tree: ast.AST) -> tuple[list[str], int]:
    """Unsafe loading calls and imports in a module, and how many torch.load calls it has."""
    found, torch_loads = [], 0
    aliases = {alias.asname: alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module.split(".")[-1]
            found += [f"line {node.lineno}: from {node.module} import {alias.name}" for alias in node.names
                      if alias.name in UNSAFE_LOADERS.get(module, ()) or (module == "torch" and alias.name == "load")]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        head, _, rest = _dotted(node.func).partition(".")
        name = f"{aliases.get(head, head)}.{rest}"
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        owner = name.rsplit(".", 2)[-2]
        if name == "torch.load":
            torch_loads += 1
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif node.func.attr in UNSAFE_LOADERS.get(owner, ()):
            found.append(f"line {node.lineno}: {name}")
        elif node.func.attr == "load" and isinstance(keywords.get("allow_pickle"), ast.Constant) \
                and keywords["allow_pickle"].value:
            found.append(f"line {node.lineno}: {name}(allow_pickle=True)")
    return found, torch_loads


def test_no_code_loads_a_file_in_a_way_that_can_run_it():
    """An AST walk of every module outside tests/ (the spotify_genre library, the stages, bench): torch.load only
    with weights_only=True, no pickle-based loader."""
    # build/ and dist/ hold copies that pip makes of spotify_genre/ when installing it; the sources are walked.
    skip = {"tests", "data", "models", "reports", "dvclive", "build", "dist"}
    folders = [top for top in ROOT.iterdir() if top.is_dir() and not top.name.startswith(".")
               and top.name not in skip and not top.name.endswith(".egg-info")]
    modules = sorted([*ROOT.glob("*.py"), *(path for folder in folders for path in folder.rglob("*.py"))])
    walked = {path.relative_to(ROOT).as_posix() for path in modules}
    assert {"spotify_genre/model/bundle.py", "spotify_genre/predict/cli.py", "stages/train.py",
            "stages/evaluate.py"} <= walked
    findings, torch_loads = [], {}
    for path in modules:
        found, count = _unsafe_loads(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        findings += [f"{path.relative_to(ROOT)}: {item}" for item in found]
        if count:
            torch_loads[path.relative_to(ROOT).as_posix()] = count
    assert not findings
    assert "spotify_genre/model/bundle.py" in torch_loads, \
        "the bundle loader's torch.load was not found: is the walk reading the code?"


def test_every_test_cited_in_the_guarantees_exists():
    cited = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", (ROOT / "docs" / "guarantees.md").read_text())
    assert len(cited) >= 8
    missing = []
    for file, name in cited:
        tree = ast.parse((ROOT / "tests" / file).read_text(encoding="utf-8"))
        if name not in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}:
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/guarantees.md cites tests that do not exist: {missing}"
