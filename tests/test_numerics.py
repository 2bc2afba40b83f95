"""The numerics pin (spotify_genre/numerics.py): in place before numpy and torch load, whatever starts the process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.params import TrainParams
from spotify_genre import numerics
from tests.conftest import PINNED_STATE, ROOT, tool_env


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = tool_env()
    environment.pop("SPOTIFY_GENRE_NUMERICS", None)
    for name in numerics.PINNED:
        environment.pop(name, None)  # as a user's shell would have it: nothing set beforehand
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_this_test_process_computes_on_the_pinned_paths():
    torch.ones(2, 2) @ torch.ones(2, 2)  # oneMKL reads its setting at its first call
    assert numerics.in_effect() == PINNED_STATE


@pytest.mark.core
def test_importing_a_stage_module_pins_a_fresh_process():
    result = _python("import stages.train, torch; torch.ones(2, 2) @ torch.ones(2, 2); "
                     "from spotify_genre.numerics import in_effect; print(in_effect())")
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout) == PINNED_STATE
    assert "UnpinnedWarning" not in result.stderr


def test_native_mode_leaves_every_library_on_its_own_path():
    environ = {"SPOTIFY_GENRE_NUMERICS": "native"}
    numerics.pin(environ)
    assert environ == {"SPOTIFY_GENRE_NUMERICS": "native"}
    result = _python("import stages, os; from spotify_genre.numerics import PINNED, in_effect; "
                     "print([os.environ.get(name) for name in PINNED], in_effect()['mode'])",
                     SPOTIFY_GENRE_NUMERICS="native")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[None,", "None,", "None,", "None]", "native"]


def test_pin_overrides_other_values_and_refuses_an_unknown_mode():
    environ = {"MKL_CBWR": "AUTO", "OPENBLAS_CORETYPE": "SkylakeX"}
    with pytest.warns(numerics.UnpinnedWarning):  # numpy and torch are loaded in this process
        numerics.pin(environ)
    assert environ == numerics.PINNED
    with pytest.raises(ValueError, match="SPOTIFY_GENRE_NUMERICS='fast': expected one of portable, native"):
        numerics.pin({"SPOTIFY_GENRE_NUMERICS": "fast"})


def test_a_library_loaded_before_the_pin_is_warned_about_by_name():
    result = _python("import numpy, stages")
    assert result.returncode == 0, result.stderr
    assert "UnpinnedWarning: numpy loaded before the numerics pin (MKL_CBWR" in result.stderr


def _probabilities(threads: int) -> bytes:
    """The probabilities of a model like the pipeline's, with torch and OpenBLAS both set to `threads` threads."""
    from threadpoolctl import threadpool_limits

    from spotify_genre.model import build_mlp, predict_proba

    torch.manual_seed(0)
    model = build_mlp(42, 6, [128, 64], 0.2, {"columns": list(range(30)), "frequencies": 8, "dim": 8, "sigma": 0.1})
    features = np.random.default_rng(0).standard_normal((20_000, 42)).astype(np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads, user_api="blas"):
            return predict_proba(model, features).tobytes()
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_inference_gives_the_same_bytes_whatever_the_thread_count(monkeypatch):
    """numpy's forward pass (inference.py) and torch's both run products that OpenBLAS and oneMKL split by thread
    count, and torch and OpenBLAS default to one thread per core: inference fixes the count, on either path."""
    one = _probabilities(1)
    assert all(_probabilities(threads) == one for threads in (2, 3, 4, 8))
    with monkeypatch.context() as patched:
        patched.setattr("spotify_genre.model.blas.inference_threads", lambda: None)  # negative control: unfixed
        assert any(_probabilities(threads) != one for threads in (2, 3, 4, 8))

    monkeypatch.setattr("spotify_genre.model.inference.compile_network", lambda model: None)  # torch's forward pass
    one = _probabilities(1)
    assert all(_probabilities(threads) == one for threads in (2, 3, 4, 8))
    monkeypatch.setattr("spotify_genre.model.blas.inference_threads", lambda: None)  # its products are numpy's too
    assert any(_probabilities(threads) != one for threads in (2, 3, 4, 8))


def _trained_weights(threads: int) -> bytes:
    """The weights after two epochs of the train stage's loop, with OpenBLAS set to `threads` threads around it."""
    from threadpoolctl import threadpool_limits

    from pipeline.mlp_fitting import fit
    from spotify_genre.model import build_mlp
    from tests.conftest import default_params

    config = TrainParams.model_validate({**default_params()["train"], "max_epochs": 2})
    torch.manual_seed(0)
    model = build_mlp(42, 6, [128, 64], 0.2, {"columns": list(range(30)), "frequencies": 8, "dim": 8, "sigma": 0.1})
    generator = np.random.default_rng(0)
    features = torch.from_numpy(generator.standard_normal((3000, 42)).astype(np.float32))
    labels = torch.from_numpy(generator.integers(0, 6, 3000))
    with threadpool_limits(threads, user_api="blas"):
        result = fit(model, (features[:2500], labels[:2500]), (features[2500:], labels[2500:]), lr=0.05,
                     momentum=0.9, batch_size=256, config=config, n_classes=6)
    return b"".join(tensor.numpy().tobytes() for tensor in result.best_state.values())


@pytest.mark.slow
def test_training_gives_the_same_bytes_whatever_the_blas_thread_count(monkeypatch):
    """Training multiplies in numpy's BLAS (blas.py), which OpenBLAS splits by thread count: fit fixes the count."""
    one = _trained_weights(1)
    assert _trained_weights(2) == one
    monkeypatch.setattr("spotify_genre.model.blas.inference_threads", lambda: None)  # negative control: unfixed
    assert _trained_weights(2) != one


def test_an_unpinned_child_gets_the_environment_from_before_the_pin():
    """A process started with its own MKL_CBWR and without the others pins itself, and hands a child what it had."""
    code = ("import json, os, spotify_genre; from spotify_genre.numerics import PINNED, unpinned_environment; "
            "child = unpinned_environment(); "
            "print(json.dumps({'own': {n: os.environ.get(n) for n in PINNED}, "
            "'child': {n: child.get(n) for n in [*PINNED, 'SPOTIFY_GENRE_NUMERICS']}}))")
    result = _python(code, MKL_CBWR="AUTO")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["own"] == numerics.PINNED
    assert seen["child"] == {**{name: None for name in numerics.PINNED}, "MKL_CBWR": "AUTO",
                             "SPOTIFY_GENRE_NUMERICS": "native"}
