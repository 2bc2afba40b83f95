"""Matrix products on the CPU through numpy's BLAS, with their gradients: how the model multiplies in training.

Under the numerics pin (numerics.py) torch's own products run on oneMKL's COMPATIBLE branch, which uses no AVX:
for this model's shapes OpenBLAS's pinned Haswell kernels, numpy's BLAS, are several times as fast on one
core, and those products were more than half of a training step. Inference already runs them there (inference.py); `matmul`
lets training do the same inside autograd. Both paths give the same bytes on every x86-64 CPU with AVX2, on a
fixed number of BLAS threads: OpenBLAS, like oneMKL, splits a product another way on more threads, and by default
runs one per core, so whoever multiplies (training, inference) does it inside `fixed_threads()`.

Tensors off the CPU, or of a dtype numpy's BLAS does not cover, go through torch.matmul.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from spotify_genre.numerics import inference_threads

_BLAS_DTYPES = (torch.float32, torch.float64)
_CONTROLLER = ThreadpoolController()


@contextlib.contextmanager
def fixed_threads() -> Iterator[None]:
    """numpy's BLAS on numerics' fixed thread count while inside, under the pin; as it was in native mode."""
    threads = inference_threads()
    with _CONTROLLER.limit(limits=threads, user_api="blas") if threads is not None else contextlib.nullcontext():
        yield


def _numpy_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.matmul(a.detach().numpy(), b.detach().numpy()))


def _sum_to(gradient: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A broadcast operand's gradient: summed over the leading batch dimensions it was broadcast along."""
    extra = gradient.dim() - len(shape)
    if extra > 0:
        gradient = gradient.sum(dim=tuple(range(extra)))
    stretched = tuple(axis for axis, size in enumerate(shape) if size == 1 and gradient.shape[axis] != 1)
    return gradient.sum(dim=stretched, keepdim=True) if stretched else gradient


class _NumpyMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return _numpy_product(a, b)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        a, b = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _sum_to(_numpy_product(gradient, b.transpose(-1, -2)), a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = _sum_to(_numpy_product(a.transpose(-1, -2), gradient), b.shape)
        return grad_a, grad_b


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.matmul for operands of two or more dimensions; on the CPU in numpy's BLAS, gradients included."""
    on_cpu = a.device.type == "cpu" and b.device.type == "cpu"
    if on_cpu and a.dtype == b.dtype and a.dtype in _BLAS_DTYPES and a.dim() >= 2 and b.dim() >= 2:
        return _NumpyMatmul.apply(a, b)
    return torch.matmul(a, b)


def linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """nn.functional.linear (weight out × in) through `matmul`."""
    out = matmul(inputs, weight.t())
    return out if bias is None else out + bias
