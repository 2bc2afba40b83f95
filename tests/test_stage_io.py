"""Each stage, run under strace on a copy of the synthetic pipeline, uses nothing that dvc.yaml does not declare:
it opens only its deps, its params file and its own outs, leaves written only its outs, and reads only the keys of
params.yaml that its `params` list. A file or param read but not declared is a dep DVC cannot see, so a change to
it would leave the stage's results stale."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, run, tool_env, write_params

STRACE = shutil.which("strace")
# Children followed, only these calls stopped at (a seccomp filter lets the others run at full speed), each file
# descriptor shown with the path it resolved to.
TRACE = ["-f", "--seccomp-bpf", "-qq", "-y", "-s", "4096", "-e",
         "trace=openat,rename,renameat,renameat2,mkdir,mkdirat"]

# Repository metadata, not data: DVCLive opens the repository it logs into.
METADATA = (".git", ".dvc", "dvc.yaml", "dvc.lock", ".dvcignore", ".gitignore")
# What the stages write outside DVC by design: their run-to-run timings, git-ignored (.gitignore).
SIDE_OUTPUTS = ("reports/timing",)
# A model that reads the split stage's text fields too: the widest set of files the train stage can read.
TEXT_ENCODER = {"train.text_encoder.kind": "gru", "train.text_encoder.max_chars": 8,
                "train.text_encoder.hidden": 4, "train.text_encoder.embedding_dim": 4, "train.max_epochs": 2}

OPENED = re.compile(r'^\d+ +openat\(.*, (O_[A-Z_|]+)(?:, \d+)?\) = \d+<(.+)>$')
RENAMED = re.compile(r'^\d+ +rename(?:at2?)?\((.*)\) = 0$')
MADE = re.compile(r'^\d+ +mkdir(?:at)?\((.*)\) = 0$')
# The paths of rename and mkdir, each after the folder it is relative to where the call names one (a dirfd).
CALL_PATH = re.compile(r'(?:(?:AT_FDCWD|\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')

# `python -m stages.X` as its `__main__` block runs it, but with the params that load_params() returns wrapped so
# that each top-level key read, by the stage or anything it passes them to, is written to the file named last.
RECORDING = """
import importlib, json, sys
import pipeline.params

class Recorded:
    def __init__(self, params):
        object.__setattr__(self, "params", params)

    def __getattr__(self, name):
        read.add(name)
        return getattr(object.__getattribute__(self, "params"), name)

read, load = set(), pipeline.params.load_params
stage = importlib.import_module(sys.argv[1])
stage.load_params = lambda *args, **kwargs: Recorded(load(*args, **kwargs))
try:
    code = stage.main([])
finally:
    with open(sys.argv[2], "w") as file:
        json.dump(sorted(read), file)
sys.exit(code)
"""


def traced(module: str, project: Path, log: Path, params_read: Path) -> None:
    run([STRACE, *TRACE, "-o", str(log), "python", "-c", RECORDING, module, str(params_read)], project)


def opened(log: Path, project: Path) -> tuple[set[str], set[str]]:
    """(project files read, project files left written), relative to the project. A file read after it was moved
    counts as the file it was moved from; a file written and then moved, as the file it was moved onto; a compiled
    module, as its source. Folders listed are not reads, nor are the stage's own files and folders in the making."""
    reads, writes, made, moved_from = set(), [], [], {}
    for line in log.read_text().splitlines():
        if found := OPENED.match(line):
            flags, path = found[1], inside(Path(found[2]), project)
            if path is None or "O_DIRECTORY" in flags or (project / path).is_dir():
                continue
            if re.search(r"O_WRONLY|O_RDWR|O_CREAT", flags):
                writes.append(path)
            elif path not in writes and not covered(path, made):
                reads.add(compiled_source(moved(path, moved_from)))
        elif found := RENAMED.match(line):
            paths = [inside(Path(folder or project) / name, project) for folder, name in CALL_PATH.findall(found[1])]
            if len(paths) == 2 and None not in paths:
                old, new = paths
                moved_from[new] = moved(old, moved_from)
                writes = [moved(path, {old: new}) for path in writes]
        elif found := MADE.match(line):
            made.extend(path for folder, name in CALL_PATH.findall(found[1])
                        if (path := inside(Path(folder or project) / name, project)) is not None)
    return reads, {path for path in writes if (project / path).is_file()}


def moved(path: str, renames: dict[str, str]) -> str:
    """`path` with the first of `renames` ({from: to}, files or folders) that holds it applied."""
    for before, after in renames.items():
        if path == before or path.startswith(before + "/"):
            return after + path[len(before):]
    return path


def inside(path: Path, project: Path) -> str | None:
    """`path` relative to the project, or None where it lies outside or in the repository's metadata."""
    resolved = (project / path).resolve()
    if not resolved.is_relative_to(project) or resolved == project:
        return None
    relative = resolved.relative_to(project).as_posix()
    return None if relative.split("/")[0] in METADATA else relative


def compiled_source(path: str) -> str:
    """`pkg/__pycache__/name.cpython-311.pyc` -> `pkg/name.py`: the source its bytecode stands for."""
    found = re.fullmatch(r"(.*?)__pycache__/([^/.]+)\.[^/]+\.pyc", path)
    return f"{found[1]}{found[2]}.py" if found else path


def covered(path: str, declared: list[str]) -> bool:
    return any(path == entry or path.startswith(entry.rstrip("/") + "/") for entry in declared)


def out_paths(stage: dict) -> list[str]:
    return [next(iter(out)) if isinstance(out, dict) else out for out in stage.get("outs", [])]


def test_the_log_reader_follows_moves_and_skips_folders_and_files_in_the_making(tmp_path):
    """Lines as `strace -y` writes them: a read, a compiled module, a staged file renamed onto an out, a folder
    listed, a staging folder made and read back, a file read after its folder moved, and a file outside."""
    project = tmp_path.resolve()
    (project / "models").mkdir()
    (project / "models" / "model.pt").write_bytes(b"")
    cwd = f"AT_FDCWD<{project}>"
    log = tmp_path / "log"
    log.write_text("\n".join([
        f'7 openat({cwd}, "params.yaml", O_RDONLY|O_CLOEXEC) = 3<{project}/params.yaml>',
        f'7 openat({cwd}, "/usr/lib/x.so", O_RDONLY|O_CLOEXEC) = 3</usr/lib/x.so>',
        f'7 openat({cwd}, "pkg/__pycache__/mod.cpython-311.pyc", O_RDONLY|O_CLOEXEC) = 3<{project}/pkg/__pycache__/'
        'mod.cpython-311.pyc>',
        f'7 openat({cwd}, "models", O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY) = 3<{project}/models>',
        f'7 openat({cwd}, "models/.model.pt.7.abcdefgh.tmp", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 3<{project}/'
        'models/.model.pt.7.abcdefgh.tmp>',
        f'7 openat({cwd}, "models/.model.pt.7.abcdefgh.tmp", O_RDONLY|O_CLOEXEC) = 3<{project}/models/'
        '.model.pt.7.abcdefgh.tmp>',
        '7 rename("models/.model.pt.7.abcdefgh.tmp", "models/model.pt") = 0',
        '7 mkdir("live/.staged", 0700) = 0',
        f'7 openat({cwd}, "live/.staged/a.tsv", O_RDONLY|O_CLOEXEC) = 3<{project}/live/.staged/a.tsv>',
        f'8 renameat2({cwd}, "live/plots", {cwd}, "live/.old/plots", RENAME_NOREPLACE) = 0',
        f'8 openat(4<{project}/live/.old/plots>, "b.tsv", O_RDONLY|O_CLOEXEC) = 5<{project}/live/.old/plots/b.tsv>',
        f'8 openat({cwd}, "missing.csv", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)',
    ]) + "\n")

    reads, writes = opened(log, project)

    assert reads == {"params.yaml", "pkg/mod.py", "live/plots/b.tsv"}
    assert writes == {"models/model.pt"}


@pytest.fixture(scope="module")
def project(synthetic_pipeline: Path, tmp_path_factory) -> Path:
    folder = copy_project(synthetic_pipeline, tmp_path_factory.mktemp("stage-io") / "project").resolve()
    write_params(folder, TEXT_ENCODER)
    return folder


@pytest.mark.e2e
@pytest.mark.skipif(STRACE is None, reason="strace is absent (apt-get install strace)")
def test_every_stage_uses_only_the_files_and_params_dvc_yaml_declares(project, tmp_path):
    probe = subprocess.run([STRACE, *TRACE, "-o", "/dev/null", "true"], capture_output=True, text=True,
                           env=tool_env())
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()[:200]}")
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    undeclared = {}
    for name, stage in stages.items():
        module = re.fullmatch(r"python -m (stages\.\w+)", stage["cmd"])
        assert module, f"{name}: cmd {stage['cmd']!r} is not a stage module"
        log, params_read = tmp_path / f"{name}.strace", tmp_path / f"{name}.params.json"
        traced(module[1], project, log, params_read)
        reads, writes = opened(log, project)
        outs = out_paths(stage)
        assert "params.yaml" in reads, f"{name}: strace did not see params.yaml read, which every stage checks first"
        assert all(any(covered(path, [out]) for path in writes) for out in outs), \
            f"{name}: strace did not see each out written: {sorted(writes)}"
        declared_reads = [*stage.get("deps", []), "params.yaml", *outs]
        stray = sorted(path for path in reads if not covered(path, declared_reads))
        stray += sorted(f"{path} (written)" for path in writes if not covered(path, [*outs, *SIDE_OUTPUTS]))
        keys = json.loads(params_read.read_text())
        assert keys, f"{name}: no key of params.yaml seen read"
        stray += sorted(f"params.yaml: {key}" for key in keys if key not in stage.get("params", []))
        if stray:
            undeclared[name] = stray
    assert not undeclared, f"what each stage used that its deps, params or outs in dvc.yaml do not list: {undeclared}"
