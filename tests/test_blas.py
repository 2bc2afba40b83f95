"""spotify_genre/model/blas.py: torch.matmul's values and gradients, computed in numpy's BLAS on the CPU."""

from __future__ import annotations

import pytest
import torch

from spotify_genre.model import blas
from spotify_genre.model import EnsembleLinear, Linear, PeriodicEmbedding

SHAPES = {
    "matrix": ((5, 3), (3, 4)),
    "batched": ((2, 5, 3), (2, 3, 4)),
    "one batch against many": ((1, 5, 3), (4, 3, 2)),
    "matrix against a batch": ((5, 3), (2, 3, 4)),
    "batch against a matrix": ((6, 5, 3), (3, 4)),
    "four dimensions": ((2, 3, 5, 4), (2, 3, 4, 2)),
}


@pytest.mark.parametrize("shape_a, shape_b", SHAPES.values(), ids=SHAPES.keys())
def test_gradients_match_finite_differences(shape_a, shape_b):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(*shape_a, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(*shape_b, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(blas.matmul, (a, b))


@pytest.mark.parametrize("shape_a, shape_b", SHAPES.values(), ids=SHAPES.keys())
def test_values_and_gradients_are_torch_matmuls(shape_a, shape_b):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(*shape_a, generator=generator, requires_grad=True)
    b = torch.randn(*shape_b, generator=generator, requires_grad=True)
    ours = blas.matmul(a, b)
    ours.square().sum().backward()
    ours_grads = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    theirs = torch.matmul(a, b)
    theirs.square().sum().backward()
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grads, (a.grad, b.grad), rtol=1e-4, atol=1e-4)


def test_only_the_operands_that_need_it_get_a_gradient():
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(3, 2)
    blas.matmul(a, b).sum().backward()
    assert a.grad is not None and b.grad is None


def test_other_dtypes_go_through_torch():
    a, b = torch.randn(2, 3, dtype=torch.float16, requires_grad=True), torch.randn(3, 2, dtype=torch.float16)
    product = blas.matmul(a, b)
    assert type(product.grad_fn).__name__ == "MmBackward0"
    assert torch.equal(product, a @ b)


def test_linear_is_nn_linear():
    torch.manual_seed(0)
    layer = Linear(7, 5)
    inputs = torch.randn(9, 7)
    torch.testing.assert_close(layer(inputs), torch.nn.functional.linear(inputs, layer.weight, layer.bias))


def test_ensemble_linear_is_each_members_own_linear_map():
    torch.manual_seed(0)
    layer = EnsembleLinear(7, 5, members=3)
    shared, own = torch.randn(9, 7), torch.randn(9, 3, 7)
    for member in range(3):
        expected = shared @ layer.weight[member] + layer.bias[member]
        torch.testing.assert_close(layer(shared)[:, member], expected)
        expected = own[:, member] @ layer.weight[member] + layer.bias[member]
        torch.testing.assert_close(layer(own)[:, member], expected)


@pytest.mark.parametrize("members", [1, 3])
def test_periodic_embedding_is_each_inputs_own_linear_map(members):
    torch.manual_seed(0)
    embedding = PeriodicEmbedding(4, frequencies=2, dim=3, sigma=1.0, members=members)
    inputs = torch.randn(6, 4)
    frequencies, weight, bias = embedding.frequencies, embedding.weight, embedding.bias
    if members == 1:
        frequencies, weight, bias = frequencies[None], weight[None], bias[None]
    angles = 2.0 * torch.pi * inputs[None, :, :, None] * frequencies[:, None]  # (m, rows, inputs, k)
    periodic = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    expected = torch.relu(torch.einsum("mrik,mikd->rmid", periodic, weight) + bias[None]).flatten(2)
    torch.testing.assert_close(embedding(inputs), expected[:, 0] if members == 1 else expected)
