"""Same bytes on every x86-64 CPU with AVX2: the pipeline on this machine and under qemu-x86_64 as other CPUs.

qemu-user runs the same binaries as another CPU would, with that CPU's CPUID, so every library that dispatches on
the CPU takes the code path it would take there. One Python process per CPU runs every stage's core in sequence
(tests/portable_run.py), so the two emulated CPUs run side by side on two cores in about a minute.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spotify_genre.numerics import unpinned_environment
from tests.conftest import PINNED_STATE, ROOT, SYNTHETIC_OVERRIDES, default_params, user_env, with_overrides

QEMU = shutil.which("qemu-x86_64")
VALGRIND = shutil.which("valgrind")
OBJDUMP = shutil.which("objdump")
EMULATED_CPUS = ("Haswell", "EPYC-Rome")  # Intel AVX2 and AMD AVX2; this machine is the third CPU
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 is absent (Debian package qemu-user; .ci/run installs it)"),
]


def _command(cpu: str | None, *args: str) -> list[str]:
    python = [sys.executable, *args]
    return python if cpu is None else [QEMU, "-cpu", cpu, *python]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """The hashes of every output, natively and as each emulated CPU, from the same params and code."""
    base = tmp_path_factory.mktemp("portable")
    params = yaml.safe_dump(with_overrides(default_params(), SYNTHETIC_OVERRIDES), sort_keys=False)
    for name in ("native", *EMULATED_CPUS):
        (base / name).mkdir()
        (base / name / "params.yaml").write_text(params)

    def start(name: str, cpu: str | None, *extra: str) -> subprocess.Popen:
        args = _command(cpu, "-m", "tests.portable_run", str(base / name), "--out", str(base / f"{name}.json"), *extra)
        return subprocess.Popen(args, cwd=ROOT, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def finish(name: str, process: subprocess.Popen) -> dict:
        output, _ = process.communicate(timeout=900)
        if process.returncode != 0:
            pytest.fail(f"{name} run exited {process.returncode}\n{output[-4000:]}")
        return json.loads((base / f"{name}.json").read_text())

    results = {"native": finish("native", start("native", None))}
    # scikit-learn's tree models crash under qemu-user: the emulated runs take the native baselines, and the
    # baselines stage runs again under valgrind, side by side with them (see the tests at the end).
    baselines = base / "native" / "reports" / "baselines.json"
    emulated = {cpu: start(cpu, cpu, "--baselines", str(baselines)) for cpu in EMULATED_CPUS}
    under_valgrind = None
    if VALGRIND is not None:
        shutil.copytree(base / "native", base / "valgrind")
        (base / "valgrind" / "reports" / "baselines.json").unlink()
        under_valgrind = subprocess.Popen([VALGRIND, "-q", "--tool=none", sys.executable, "-m", "stages.baselines"],
                                          cwd=base / "valgrind", env=user_env(PYTHONPATH=str(ROOT)),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results.update({cpu: finish(cpu, process) for cpu, process in emulated.items()})
    if under_valgrind is not None:
        output, _ = under_valgrind.communicate(timeout=900)
        if under_valgrind.returncode != 0:
            pytest.fail(f"baselines under valgrind exited {under_valgrind.returncode}\n{output[-4000:]}")
        results["valgrind"] = {"baselines": (base / "valgrind" / "reports" / "baselines.json").read_bytes(),
                               "native": baselines.read_bytes()}
    return results


@pytest.mark.parametrize("cpu", EMULATED_CPUS)
def test_every_stage_and_predict_give_the_same_bytes_as_on_this_cpu(runs, cpu):
    native, emulated = runs["native"]["hashes"], runs[cpu]["hashes"]
    assert set(emulated) == set(native) - {"baselines"}
    for stage, hashes in emulated.items():
        assert hashes, f"{stage} wrote nothing"
        assert hashes == native[stage], f"{stage} differs as {cpu}"


@pytest.mark.parametrize("run", ["native", *EMULATED_CPUS])
def test_the_pin_is_in_effect_in_each_run(runs, run):
    assert runs[run]["numerics"] == PINNED_STATE


_MATMUL = ("import stages, hashlib, torch; g = torch.Generator().manual_seed(0); "
           "a, b = torch.randn(512, 300, generator=g), torch.randn(300, 128, generator=g); "
           "print(hashlib.sha256((a @ b).numpy().tobytes()).hexdigest())")


def test_the_emulated_cpus_take_other_code_paths_without_the_pin():
    """The negative control: unpinned, oneMKL's matmul gives other bytes on the two emulated CPUs, so the
    equality above is the pin's doing, not qemu passing this machine's CPU through."""
    unpinned = unpinned_environment(user_env())
    runs = {"Haswell": ("Haswell", unpinned), "EPYC-Rome": ("EPYC-Rome", unpinned),
            "Haswell, pinned": ("Haswell", user_env())}
    processes = {name: subprocess.Popen(_command(cpu, "-c", _MATMUL), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
                 for name, (cpu, env) in runs.items()}
    digests = {}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, name
        digests[name] = output.strip()
    assert digests["Haswell"] != digests["EPYC-Rome"]
    assert digests["Haswell, pinned"] not in (digests["Haswell"], digests["EPYC-Rome"])


# The tree baselines cannot run under qemu-user 7.2 (scikit-learn's tree code segfaults there whatever the CPU
# model), so their portability is shown in two other ways.
_TREE_CODE = """
import stages, json, numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
rng = np.random.default_rng(0)
x, y = rng.standard_normal((400, 6)), rng.integers(0, 3, 400)
HistGradientBoostingClassifier(max_iter=5).fit(x, y).predict_proba(x)
RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y).predict_proba(x)
import sklearn, os
root = os.path.dirname(sklearn.__file__)
maps = open("/proc/self/maps").read().split()
print(json.dumps(sorted({p for p in maps if p.startswith(root) and ".so" in p})))
"""
# A vector register wider than SSE's, or a question to the CPU about what it has: the marks of code that can
# take another path on another CPU.
_DISPATCH_MARK = re.compile(r"%[yz]mm\d|\bcpuid\b|\bxgetbv\b")


@pytest.mark.skipif(OBJDUMP is None, reason="objdump is absent (Debian package binutils)")
def test_the_tree_baselines_compiled_code_has_one_path_for_every_cpu():
    """Every scikit-learn extension module that fitting and predicting with HistGradientBoosting and RandomForest
    loads is compiled for baseline x86-64 (SSE registers only) and never asks the CPU what it has: the same
    instructions, so the same bytes, on every x86-64 CPU. What they call that does dispatch on the CPU (numpy, and
    OpenBLAS through scipy) is pinned and proved by the emulated stages above."""
    result = subprocess.run([sys.executable, "-c", _TREE_CODE], cwd=ROOT, env=user_env(), capture_output=True,
                            text=True, timeout=300, check=True)
    modules = json.loads(result.stdout)
    assert any("_hist_gradient_boosting" in path for path in modules) and any("/tree/" in path for path in modules)
    marked = {}
    for path in modules:
        listing = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                                 check=True).stdout
        found = sorted(set(_DISPATCH_MARK.findall(listing)))
        if found:
            marked[Path(path).name] = found
    assert marked == {}


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is absent (Debian package valgrind)")
def test_the_tree_baselines_give_the_same_bytes_on_valgrinds_cpu(runs):
    """valgrind runs the baselines stage on its own synthetic CPU (AVX2 and no AVX-512, whatever this machine
    has), executing every instruction itself: the same reports/baselines.json as natively."""
    assert runs["valgrind"]["baselines"] == runs["valgrind"]["native"]
    assert b"hist_gradient_boosting" in runs["valgrind"]["baselines"]
