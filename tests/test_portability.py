"""Same bytes on every x86-64 CPU with AVX2: the pipeline on this machine and under qemu-x86_64 as other CPUs.

qemu-user runs the same binaries as another CPU would, with that CPU's CPUID, so every library that dispatches on
the CPU takes the code path it would take there. One Python process per CPU runs every stage's core in sequence
(tests/portable_run.py), so the two emulated CPUs run side by side on two cores in about a minute and a half.
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
# Every default baseline, quicker to stop (the same code paths in a fraction of the rounds).
BASELINE_OVERRIDES = {
    "baselines.models": ["majority", "hist_gradient_boosting", "lightgbm", "xgboost"],
    "baselines.lightgbm.learning_rate": 0.1, "baselines.lightgbm.early_stopping_rounds": 10,
    "baselines.xgboost.learning_rate": 0.1, "baselines.xgboost.early_stopping_rounds": 10,
}
# The synthetic pipeline's rows (so that batches are full and XGBoost's row blocks many), trained and fitted for
# fewer rounds: every stage's code paths, at a quarter of the emulated time.
EMULATED_OVERRIDES = {
    **SYNTHETIC_OVERRIDES, **BASELINE_OVERRIDES, "train.max_epochs": 2, "evaluate.bootstrap.resamples": 200,
    "baselines.lightgbm.max_rounds": 30, "baselines.xgboost.max_rounds": 30,
}
BASELINE_OUTPUTS = ("reports/baselines.json", "data/baselines/test_predictions.parquet")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.emulator,
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 is absent (Debian package qemu-user; .ci/run installs it)"),
]


def _command(cpu: str | None, *args: str) -> list[str]:
    python = [sys.executable, *args]
    return python if cpu is None else [QEMU, "-cpu", cpu, *python]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """The hashes of every output, natively and as each emulated CPU, from the same params and code."""
    base = tmp_path_factory.mktemp("portable")
    params = yaml.safe_dump(with_overrides(default_params(), EMULATED_OVERRIDES), sort_keys=False)
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
    # scikit-learn's tree models crash under qemu-user: the emulated runs take the native baselines' outputs and
    # fit only LightGBM and XGBoost themselves, and the whole baselines stage runs again under valgrind, side by
    # side with them (see the tests at the end).
    emulated = {cpu: start(cpu, cpu, "--baselines", str(base / "native")) for cpu in EMULATED_CPUS}
    under_valgrind = None
    if VALGRIND is not None:
        shutil.copytree(base / "native", base / "valgrind")
        for path in BASELINE_OUTPUTS:
            (base / "valgrind" / path).unlink()
        under_valgrind = subprocess.Popen([VALGRIND, "-q", "--tool=none", sys.executable, "-m", "stages.baselines"],
                                          cwd=base / "valgrind", env=user_env(PYTHONPATH=str(ROOT)),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results.update({cpu: finish(cpu, process) for cpu, process in emulated.items()})
    if under_valgrind is not None:
        output, _ = under_valgrind.communicate(timeout=900)
        if under_valgrind.returncode != 0:
            pytest.fail(f"baselines under valgrind exited {under_valgrind.returncode}\n{output[-4000:]}")
        results["valgrind"] = {run: {path: (base / run / path).read_bytes() for path in BASELINE_OUTPUTS}
                               for run in ("valgrind", "native")}
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


_MATMUL = "import stages; from tests.portable_run import matmul_digest; print(matmul_digest())"


def test_the_emulated_cpus_take_other_code_paths_without_the_pin(runs):
    """The negative control: unpinned, oneMKL's matmul gives other bytes on the two emulated CPUs, so the
    equality above is the pin's doing, not qemu passing this machine's CPU through. The pinned product is the one
    each run above computed after its stages, under the pin, in the same process."""
    unpinned = unpinned_environment(user_env())
    processes = {cpu: subprocess.Popen(_command(cpu, "-c", _MATMUL), cwd=ROOT, env=unpinned, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
                 for cpu in EMULATED_CPUS}
    digests = {}
    for cpu, process in processes.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, cpu
        digests[cpu] = output.strip()
    assert digests["Haswell"] != digests["EPYC-Rome"]
    pinned = {run: runs[run]["matmul"] for run in ("native", *EMULATED_CPUS)}
    assert len(set(pinned.values())) == 1, pinned
    assert pinned["Haswell"] not in (digests["Haswell"], digests["EPYC-Rome"])


def test_lightgbm_and_xgboost_fit_the_same_on_each_emulated_cpu(runs):
    """LightGBM and XGBoost do run under qemu-user: each emulated CPU fits them with the baselines stage's own code
    and gets the same scores, rounds and test predictions as this machine. The two emulated CPUs also report other
    cache sizes than this one (XGBoost sizes its histogram row blocks by them; see _CACHE_QUERIES)."""
    native = runs["native"]["hashes"]["peers"]
    assert sorted(native) == ["lightgbm", "xgboost"]
    assert all(runs[cpu]["hashes"]["peers"] == native for cpu in EMULATED_CPUS)


# scikit-learn's tree code segfaults under qemu-user 7.2 whatever the CPU model, so HistGradientBoosting's (and
# RandomForest's) portability is shown in two other ways, which cover LightGBM and XGBoost as well.
_TREE_CODE = """
import stages, json, os, numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from pipeline.params import load_params
from pipeline.peers import fit_peer
rng = np.random.default_rng(0)
x, y = rng.standard_normal((400, 6)), rng.integers(0, 3, 400)
HistGradientBoostingClassifier(max_iter=5).fit(x, y).predict_proba(x)
RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y).predict_proba(x)
params = load_params().baselines
params = params.model_copy(update={name: getattr(params, name).model_copy(update={"max_rounds": 5})
                                   for name in ("lightgbm", "xgboost")})
for name in ("lightgbm", "xgboost"):
    subgenres = np.array(["a", "b"])[rng.integers(0, 2, 400)]  # whichever target params.yaml gives each
    fit_peer(name, params, x, y, x, y, subgenres, subgenres).predict(x)
import sklearn, lightgbm, xgboost
roots = tuple(os.path.dirname(module.__file__) + suffix for module in (sklearn, lightgbm, xgboost)
              for suffix in ("/", "_cpu.libs/"))  # the packages, and the OpenMP runtime xgboost-cpu bundles
maps = open("/proc/self/maps").read().split()
print(json.dumps(sorted({p for p in maps if ".so" in p and (p.startswith(roots) or "/libgomp" in p)})))
"""
# A vector register wider than SSE's, or a question to the CPU about what it has: the marks of code that can
# take another path on another CPU.
_DISPATCH_MARK = re.compile(rb"%[yz]mm\d+|\t(?:cpuid|xgetbv)\b")  # an operand, or an instruction
# The only questions these libraries ask the CPU: how big its caches are. XGBoost's hist method sizes the row
# blocks it builds each node's histogram in by L1, and reads by column rather than by row when the histogram
# outgrows L2 + L3 (never here: tens of kB against MBs); one thread adds each bin's gradients in row order either
# way. Eigen, inside LightGBM, blocks the matrix products of linear trees by them, which the baselines never fit
# (a gdb breakpoint on both Eigen functions is not hit in a fit). Neither picks other instructions, and the
# emulated CPUs and valgrind's, which report other cache sizes, give the same bytes (the tests above and below).
_CACHE_QUERIES = {
    "lib_lightgbm.so": {"Eigen::internal::queryCacheSizes(int&, int&, int&)",
                        "Eigen::internal::queryCacheSizes_intel(int&, int&, int&, int)"},
    "libxgboost.so": {"RunCpuid(unsigned int, unsigned int, unsigned int (&) [4])",
                      "GetCacheInfo(int, int*, int*, long*, int*, int*, int*)",
                      "xgboost::common::CacheManager::CacheManager()"},
}


def _marked_functions(path: str) -> dict[str, set[str]]:
    """{function (its C++ name demangled): the dispatch marks in its instructions} of one shared library."""
    listing = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", path], capture_output=True, check=True).stdout
    marked: dict[str, set[str]] = {}
    for mark in _DISPATCH_MARK.finditer(listing):
        header = listing.rfind(b">:\n", 0, mark.start())
        name = listing[listing.index(b"<", listing.rfind(b"\n", 0, header)) + 1:header].decode()
        marked.setdefault(re.sub(r"@@?\w+$", "", name), set()).add(mark[0].decode().strip())
    if not marked:
        return {}
    names = list(marked)
    demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                               check=True).stdout.splitlines()
    return {demangled[i]: marked[name] for i, name in enumerate(names)}


@pytest.mark.skipif(OBJDUMP is None, reason="objdump is absent (Debian package binutils)")
def test_the_tree_baselines_compiled_code_has_one_path_for_every_cpu():
    """Every extension module and OpenMP runtime that fitting and predicting with HistGradientBoosting,
    RandomForest, LightGBM and XGBoost loads is compiled for baseline x86-64 (SSE registers only) and asks the CPU
    nothing but its cache sizes: the same instructions, so the same bytes, on every x86-64 CPU. What they call that
    does dispatch on the CPU (numpy, and OpenBLAS through scipy) is pinned and proved by the emulated stages
    above."""
    result = subprocess.run([sys.executable, "-c", _TREE_CODE], cwd=ROOT, env=user_env(), capture_output=True,
                            text=True, timeout=300, check=True)
    modules = json.loads(result.stdout)
    assert any("_hist_gradient_boosting" in path for path in modules) and any("/tree/" in path for path in modules)
    assert {"lib_lightgbm.so", "libxgboost.so"} <= {Path(path).name for path in modules}
    assert any("libgomp" in path for path in modules)
    unexplained = {}
    for path in modules:
        allowed = _CACHE_QUERIES.get(Path(path).name, set())
        marked = {function: marks for function, marks in _marked_functions(path).items()
                  if not (marks == {"cpuid"} and function in allowed)}
        if marked:
            unexplained[Path(path).name] = marked
    assert unexplained == {}


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is absent (Debian package valgrind)")
def test_the_tree_baselines_give_the_same_bytes_on_valgrinds_cpu(runs):
    """valgrind runs the whole baselines stage on its own synthetic CPU (AVX2 and no AVX-512, and other cache
    sizes, whatever this machine has), executing every instruction itself: the same reports/baselines.json and
    test predictions as natively."""
    assert runs["valgrind"]["valgrind"] == runs["valgrind"]["native"]
    report = json.loads(runs["valgrind"]["valgrind"]["reports/baselines.json"])
    assert list(report["models"]) == BASELINE_OVERRIDES["baselines.models"]
