"""Gradient fixtures of the small layers (docs/math.md section 6): nn.Linear, nn.LayerNorm, the
three activations, the feed-forward block linear2(act(linear1(x))), a Conv2d patch embedding
(kernel = stride = P) and F.cross_entropy(reduction="mean"). Oracle: torch.autograd on PyTorch's
own modules; the float64 cases are also checked against the closed forms of docs/math.md
section 6 written with torch operations."""

from __future__ import annotations

import copy
import dataclasses
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from fixturelib import FixtureFiles, Tensors, assert_close, fixture, seed_of
from oracles.blocks import (DTYPES, FeedForwardCase, FeedForwardModule, activation_module,
                            cases_metadata, perturb, state_dict_of)

F64 = torch.float64
BATCH, LENGTH = 2, 3  # row-wise layers get BATCH x LENGTH x features inputs


@dataclasses.dataclass(frozen=True)
class LinearGradCase:
    name: str
    in_features: int
    out_features: int
    bias: bool = True
    kind: str = "linear"


@dataclasses.dataclass(frozen=True)
class LayerNormGradCase:
    name: str
    features: int
    eps: float = 1e-5
    elementwise_affine: bool = True
    offset: float = 40.0  # added to the row (0, 1) only: a large common mean
    kind: str = "layer_norm"


@dataclasses.dataclass(frozen=True)
class ActivationGradCase:
    name: str
    activation: str
    rows: int = 5
    cols: int = 7
    kind: str = "activation"


@dataclasses.dataclass(frozen=True)
class PatchEmbeddingGradCase:
    name: str
    in_chans: int
    embed_dim: int
    patch_size: int
    batch: int
    image_height: int
    image_width: int
    kind: str = "patch_embedding"


@dataclasses.dataclass(frozen=True)
class CrossEntropyGradCase:
    name: str
    rows: int
    classes: int
    scale: float = 2.0  # logits = scale N(0, 1) + offset
    offset: float = 0.0
    kind: str = "cross_entropy"


GRAD_CASES = [
    LinearGradCase("linear_bias", 7, 5),
    LinearGradCase("linear_no_bias", 6, 4, bias=False),
    LayerNormGradCase("layer_norm_affine", 9),
    LayerNormGradCase("layer_norm_no_affine", 11, eps=1e-3, elementwise_affine=False),
    ActivationGradCase("activation_relu", "relu"),
    ActivationGradCase("activation_gelu", "gelu"),
    ActivationGradCase("activation_gelu_tanh", "gelu_tanh"),
    FeedForwardCase("ff_relu", 6, 10, "relu"),
    FeedForwardCase("ff_gelu", 7, 12, "gelu"),
    FeedForwardCase("ff_gelu_tanh", 5, 9, "gelu_tanh"),
    PatchEmbeddingGradCase("patch_embedding", 3, 5, 2, 2, 4, 6),
    CrossEntropyGradCase("cross_entropy", 6, 5),
    CrossEntropyGradCase("cross_entropy_large_logits", 4, 7, scale=20.0, offset=100.0),
]


class PatchEmbeddingModule(nn.Module):
    """timm's PatchEmbed: proj = Conv2d(C, E, P, stride=P), tokens = flatten(2).transpose(1, 2)."""

    def __init__(self, case: PatchEmbeddingGradCase):
        super().__init__()
        self.proj = nn.Conv2d(case.in_chans, case.embed_dim, case.patch_size,
                              stride=case.patch_size, dtype=F64)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)


class ActivationModule(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.activation = activation_module(name)

    def forward(self, x):
        return self.activation(x)


def module_and_input(case, g: torch.Generator):
    """The case's module (perturbed, float64) and input (float64)."""
    torch.manual_seed(seed_of(case.name))  # the modules' initialisation
    if case.kind == "linear":
        module = nn.Linear(case.in_features, case.out_features, bias=case.bias, dtype=F64)
        x = torch.randn(BATCH, LENGTH, case.in_features, generator=g, dtype=F64)
    elif case.kind == "layer_norm":
        module = nn.LayerNorm(case.features, eps=case.eps,
                              elementwise_affine=case.elementwise_affine, dtype=F64)
        x = torch.randn(BATCH, LENGTH, case.features, generator=g, dtype=F64)
        x[0, 1] += case.offset
    elif case.kind == "activation":
        module = ActivationModule(case.activation)
        x = 2 * torch.randn(case.rows, case.cols, generator=g, dtype=F64)
        x[:, 0] = 0.0  # the derivative at 0: relu's is 0 (threshold_backward), gelu's 1/2
    elif case.kind == "feed_forward":
        module = FeedForwardModule(case.d_model, case.dim_feedforward, case.activation)
        x = torch.randn(BATCH, LENGTH, case.d_model, generator=g, dtype=F64)
    else:  # patch_embedding
        module = PatchEmbeddingModule(case)
        x = torch.randn(case.batch, case.in_chans, case.image_height, case.image_width,
                        generator=g, dtype=F64)
    perturb(module, seed_of(case.name))
    return module, x


def closed_form_gradients(case, module, x, dy):
    """docs/math.md section 6 (and the chain rule through the linear layers), float64: d input
    and the parameter gradients by state_dict name."""
    def linear(lin, x, dy):
        grads = {"weight": dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])}
        if lin.bias is not None:
            grads["bias"] = dy.reshape(-1, dy.shape[-1]).sum(0)
        return dy @ lin.weight, grads

    def activation_derivative(name, x):
        if name == "relu":
            return (x > 0).to(x.dtype)
        if name == "gelu":  # Phi(x) + x phi(x)
            return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x * x / 2) / math.sqrt(
                2 * math.pi)
        k = math.sqrt(2 / math.pi)  # d/dx of 0.5 x (1 + tanh(k (x + 0.044715 x^3)))
        t = torch.tanh(k * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)

    if case.kind == "linear":
        return linear(module, x, dy)
    if case.kind == "layer_norm":
        mean = x.mean(-1, keepdim=True)
        inv_std = 1 / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + case.eps)
        xhat = (x - mean) * inv_std
        dxhat = dy * module.weight if case.elementwise_affine else dy
        dx = inv_std * (dxhat - dxhat.mean(-1, keepdim=True)
                        - xhat * (dxhat * xhat).mean(-1, keepdim=True))
        grads = {}
        if case.elementwise_affine:
            grads = {"weight": (dy * xhat).sum((0, 1)), "bias": dy.sum((0, 1))}
        return dx, grads
    if case.kind == "activation":
        return dy * activation_derivative(case.activation, x), {}
    if case.kind == "feed_forward":
        pre = module.linear1(x)
        dhidden, grads2 = linear(module.linear2, module.activation(pre), dy)
        dx, grads1 = linear(module.linear1, x, dhidden * activation_derivative(case.activation,
                                                                               pre))
        grads = {f"linear1.{k}": v for k, v in grads1.items()}
        grads.update({f"linear2.{k}": v for k, v in grads2.items()})
        return dx, grads
    # patch_embedding: a linear layer on the patch matrix, im2col by unfold, col2im by fold
    p, size = case.patch_size, (case.image_height, case.image_width)
    patches = F.unfold(x, p, stride=p).transpose(1, 2)  # B x N x C P P, the weight's order
    weight = module.proj.weight
    flat = SimpleNamespace(weight=weight.reshape(case.embed_dim, -1), bias=module.proj.bias)
    dpatches, grads = linear(flat, patches, dy)
    grads = {"proj.weight": grads["weight"].reshape(weight.shape), "proj.bias": grads["bias"]}
    return F.fold(dpatches.transpose(1, 2), size, p, stride=p), grads


def module_case(case, dtype) -> Tensors:
    g = torch.Generator().manual_seed(seed_of(case.name))
    module, x = module_and_input(case, g)
    module, x = copy.deepcopy(module).to(dtype), x.to(dtype).requires_grad_()
    output = module(x)
    dy = torch.randn(output.shape, generator=g, dtype=F64).to(dtype)
    (output * dy).sum().backward()
    p = case.name + "."
    tensors = state_dict_of(module, p)
    tensors.update({p + "input": x.detach(), p + "output": output.detach(),
                    p + "grad_output": dy, p + "grad_input": x.grad})
    for name, parameter in module.named_parameters():
        tensors[p + "grad." + name] = parameter.grad
    if dtype == F64:
        dx, grads = closed_form_gradients(case, module, x.detach(), dy)
        assert_close(x.grad, dx, case.name + " grad_input")
        assert sorted(grads) == sorted(n for n, _ in module.named_parameters()), case.name
        for name, parameter in module.named_parameters():
            assert_close(parameter.grad, grads[name], f"{case.name} grad.{name}")
    return tensors


def cross_entropy_case(case: CrossEntropyGradCase, dtype) -> Tensors:
    g = torch.Generator().manual_seed(seed_of(case.name))
    logits = case.scale * torch.randn(case.rows, case.classes, generator=g, dtype=F64)
    logits = (logits + case.offset).to(dtype).requires_grad_()
    labels = torch.randint(case.classes, (case.rows,), generator=g)
    loss = F.cross_entropy(logits, labels, reduction="mean")
    loss.backward()
    if dtype == F64:  # (softmax(logits) - onehot(y)) / N
        onehot = F.one_hot(labels, case.classes).to(dtype)
        assert_close(logits.grad, (torch.softmax(logits.detach(), 1) - onehot) / case.rows,
                     case.name + " grad_logits")
    p = case.name + "."
    return {p + "logits": logits.detach(), p + "labels": labels, p + "loss": loss.detach()[None],
            p + "grad_logits": logits.grad}


@fixture("layers_grad")
def layers_grad() -> FixtureFiles:
    files = {}
    for suffix, dtype in DTYPES.items():
        tensors: Tensors = {}
        for case in GRAD_CASES:
            build = cross_entropy_case if case.kind == "cross_entropy" else module_case
            tensors.update(build(case, dtype))
        files[f"layers_grad_{suffix}.safetensors"] = (tensors, cases_metadata(GRAD_CASES))
    return files
