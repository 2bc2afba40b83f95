"""Pinned numerics: one code path for every library that picks its kernels by the CPU it runs on, so the same
params and data give the same bytes on any x86-64 CPU with AVX2, Intel or AMD, AVX2 or AVX-512.

Each library reads its setting once, when it loads or first computes, so `pin()` runs when the `spotify_genre`
package is imported: `spotify-genre`, and `python -m stages.X` (so `dvc repro` and `dvc exp run` in the workspace,
--temp or queued) through `stages/__init__.py`, all import it before numpy or torch. What this promises and how
each setting was found: docs/guarantees.md.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import MutableMapping

# Values are the ones measured under qemu-x86_64 as Haswell and EPYC-Rome, and natively on AVX-512 Intel and AMD.
PINNED: dict[str, str] = {
    # oneMKL, torch's CPU BLAS: on AMD it honours no code branch but COMPATIBLE (AVX2 and every other branch fall
    # back to its AMD path), and its Intel AVX2 branch sums in another order than that path.
    "MKL_CBWR": "COMPATIBLE",
    # ATen's own vectorised kernels (elementwise maths, reductions, the optimiser): the AVX2 build on every CPU.
    "ATEN_CPU_CAPABILITY": "avx2",
    # numpy 2.4's dispatch targets above AVX2: their log1p, exp and friends round the last digit differently.
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    # OpenBLAS, numpy's and scipy's BLAS, picks a kernel per CPU model; Haswell's is the AVX2 one.
    "OPENBLAS_CORETYPE": "Haswell",
}
# oneMKL's COMPATIBLE branch splits a matrix product another way on 3 or more threads (measured: the test split's
# probabilities changed at 3, 4, 8 and 16 threads), and torch's default is one thread per core: so inference runs
# on a fixed count, the same on every machine. One is as fast as two here (the model is small).
INFERENCE_THREADS = 1
MODE_VARIABLE = "SPOTIFY_GENRE_NUMERICS"
MODES = ("portable", "native")  # native: every library picks its fastest path (bench, and the negative check)
_LOADED_TOO_EARLY = ("numpy", "torch", "scipy", "sklearn")
_BEFORE_PIN: dict[str, str | None] = {}  # this process's values of the pinned variables before pin() set them


class UnpinnedWarning(RuntimeWarning):
    """The pin came after a library had already chosen its kernels: results may differ from CPU to CPU."""


def mode(environ: MutableMapping[str, str] = os.environ) -> str:
    value = environ.get(MODE_VARIABLE, "portable")
    if value not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={value!r}: expected one of {', '.join(MODES)}")
    return value


def applies() -> bool:
    """The settings name x86-64 code paths; on other architectures there is nothing they could pin."""
    return platform.machine().lower() in ("x86_64", "amd64")


def inference_threads() -> int | None:
    """The torch thread count for inference under the pin; None (torch's default) without it."""
    return INFERENCE_THREADS if mode() == "portable" and applies() else None


def pin(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put every setting in place, unless SPOTIFY_GENRE_NUMERICS=native; warn if a library was loaded first."""
    if mode(environ) == "native" or not applies():
        return
    unset = [name for name, value in PINNED.items() if environ.get(name) != value]
    loaded = [name for name in _LOADED_TOO_EARLY if name in sys.modules]
    if unset and loaded:
        warnings.warn(f"{', '.join(loaded)} loaded before the numerics pin ({', '.join(unset)} unset): import "
                      "spotify_genre first, or set these variables before Python starts", UnpinnedWarning, stacklevel=3)
    if environ is os.environ:
        for name in PINNED:
            _BEFORE_PIN.setdefault(name, environ.get(name))
    environ.update(PINNED)


def unpinned_environment(base: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment as it was before the pin, in native mode: for a child process that should run
    every library on its own fastest path (a pinned process's children inherit the pin otherwise)."""
    environ = dict(os.environ if base is None else base)
    for name, value in _BEFORE_PIN.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    environ[MODE_VARIABLE] = "native"
    return environ


def in_effect() -> dict[str, str]:
    """The code paths the loaded libraries actually use (those not loaded yet are left out): for timing reports,
    bench and the tests that prove the pin took hold."""
    state = {"mode": mode()}
    if "numpy" in sys.modules:
        from numpy._core._multiarray_umath import __cpu_features__

        state["numpy"] = "AVX-512" if __cpu_features__.get("X86_V4") else "AVX2 or less"
    if "torch" in sys.modules:
        import torch

        state["aten"] = torch.backends.cpu.get_cpu_capability()
        branch = _mkl_branch(torch)
        if branch is not None:
            state["mkl_cbwr"] = branch
    return state


_MKL_BRANCHES = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
                 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512", 14: "AVX512_E1"}


def _mkl_branch(torch) -> str | None:
    """oneMKL's code branch, from the mkl_serv_cbwr_get that torch's statically linked oneMKL exports."""
    import ctypes

    try:
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        value = library.mkl_serv_cbwr_get(1)  # MKL_CBWR_BRANCH
    except (OSError, AttributeError):
        return None
    return _MKL_BRANCHES.get(value & 0xFFFF, str(value))
