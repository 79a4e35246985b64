"""Fixtures for the backward passes (issue 14, docs/math.md section 6): torch.autograd's
gradients of L = sum(grad_output * output) for

  - grad_mha: every case of oracles/mha.py (nn.MultiheadAttention semantics, attnlens's rule
    for fully masked rows), from mha_from_primitives under autograd, checked against
    nn.MultiheadAttention's own autograd wherever PyTorch has an answer;
  - grad_blocks_model: every encoder of oracles/blocks.py's blocks_model fixture (every
    position encoding and attention variant), from blocks.py's torch re-implementation
    (encoder_with_position) under autograd, checked against PyTorch's own layers where they
    can compute the stack;
  - grad_cli: `attnlens grad` on an nn.TransformerEncoder with key padding exported by
    examples/export_pytorch.py, from the real module's autograd.

Every gradient is also checked against central differences of the same function in float64
(docs/math.md's detach rule included: elliptical attention's metric m held fixed), inside the
generator. Set ATTNLENS_GRADIENT_REPORT=1 to print the largest differences of every check."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fixturelib import (FixtureFiles, Metadata, Tensors, base_metadata, fixture,
                        read_safetensors, seed_of)
from oracles import blocks, mha, positions, variants

F64 = torch.float64
LOSS = "sum(grad_output * output)"


# ----------------------------------------------------------------------------------------------
# Checks shared by the three families: a report of the largest differences, and central
# differences of L in float64.

def note(where: str, what: str, value: float) -> None:
    """The largest difference of a check, printed with ATTNLENS_GRADIENT_REPORT=1."""
    if os.environ.get("ATTNLENS_GRADIENT_REPORT"):
        print(f"    {where}: {what} {value:.3g}", file=sys.stderr)


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|): absolute on values below 1, relative
    to the tensor's scale above (a gradient's entries are of very different sizes)."""
    if actual.numel() == 0:
        return 0.0
    scale = max(1.0, expected.abs().max().item())
    return (actual.double() - expected.double()).abs().max().item() / scale


def check_close(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor],
                tolerance: float, where: str, what: str) -> float:
    """Same names, and every tensor within tolerance (relative_difference); returns the
    largest difference."""
    assert sorted(actual) == sorted(expected), f"{where}: {what}: names differ"
    worst = 0.0
    for name in actual:
        diff = relative_difference(actual[name], expected[name])
        if not diff <= tolerance:  # also catches NaN
            raise AssertionError(f"{where}: {what}: {name} differs by {diff:g} > {tolerance:g}")
        worst = max(worst, diff)
    note(where, what, worst)
    return worst


def assert_finite(grads: Dict[str, torch.Tensor], where: str) -> None:
    for name, g in grads.items():
        if not bool(torch.isfinite(g).all()):
            raise AssertionError(f"{where}: gradient {name} is not finite")


def central_differences(loss: Callable[[], torch.Tensor], tensors: Dict[str, torch.Tensor],
                        grads: Dict[str, torch.Tensor], g: torch.Generator, where: str,
                        full_below: int = 0, directions: int = 2, eps: float = 1e-5,
                        tolerance: float = 1e-7) -> float:
    """Compares the analytic gradients with central differences of loss() (float64),
    perturbing the tensors in place (they may be a module's parameters): every coordinate of
    a tensor with fewer than full_below entries, otherwise `directions` random unit
    directions, d/dt L(x + t u) = grad . u. The error of a difference quotient is about
    eps^2 |L'''| + 1e-16 |L| / eps, ~1e-10 here; the tolerance is relative to max(1, |grad|)
    (the largest entry for the coordinates; for a direction the L2 norm, which bounds
    grad . u)."""
    worst = 0.0
    with torch.no_grad():
        for name, t in tensors.items():
            assert t.dtype == F64, f"{where}: central differences need float64"
            grad = grads[name]
            original = t.detach().clone()
            if t.numel() < full_below:
                numeric = torch.zeros_like(grad)
                flat, num = t.view(-1), numeric.view(-1)
                for i in range(flat.numel()):
                    flat[i] = original.view(-1)[i] + eps
                    up = loss().item()
                    flat[i] = original.view(-1)[i] - eps
                    down = loss().item()
                    flat[i] = original.view(-1)[i]
                    num[i] = (up - down) / (2 * eps)
                diff = relative_difference(numeric, grad)
            else:
                diff = 0.0
                scale = max(1.0, grad.norm().item())
                for _ in range(directions):
                    u = torch.randn(t.shape, generator=g, dtype=F64)
                    u /= u.norm()
                    t.copy_(original + eps * u)
                    up = loss().item()
                    t.copy_(original - eps * u)
                    down = loss().item()
                    t.copy_(original)
                    numeric = (up - down) / (2 * eps)
                    diff = max(diff, abs(numeric - (grad * u).sum().item()) / scale)
            if not diff <= tolerance:
                raise AssertionError(f"{where}: gradient {name} against central differences: "
                                     f"{diff:g} > {tolerance:g}")
            worst = max(worst, diff)
    note(where, "central differences (float64)", worst)
    return worst


@contextlib.contextmanager
def parameters_replaced(module: nn.Module, values: Dict[str, torch.Tensor]):
    """Runs the module with the given tensors in place of its parameters (state_dict names),
    so that torch.autograd.gradcheck can treat them as inputs."""
    saved = []
    for name, value in values.items():
        path, _, attr = name.rpartition(".")
        owner = module.get_submodule(path) if path else module
        saved.append((owner, attr, owner._parameters[attr]))
        owner._parameters[attr] = value
    try:
        yield
    finally:
        for owner, attr, parameter in saved:
            owner._parameters[attr] = parameter


def gradcheck(where: str, loss: Callable[..., torch.Tensor], tensors: Dict[str, torch.Tensor]):
    """torch.autograd.gradcheck of the scalar loss(**tensors) in float64 on every coordinate,
    with tolerances far below gradcheck's defaults (atol 1e-5, rtol 1e-3)."""
    names = list(tensors)
    inputs = tuple(t.detach().clone().requires_grad_() for t in tensors.values())
    assert all(t.dtype == F64 for t in inputs), where
    torch.autograd.gradcheck(lambda *ts: loss(**dict(zip(names, ts))), inputs, eps=1e-6,
                             atol=1e-8, rtol=1e-6)
    note(where, "torch.autograd.gradcheck (atol 1e-8, rtol 1e-6) passed, coordinates",
         sum(t.numel() for t in inputs))


def standard_normal(shape, seed_name: str) -> torch.Tensor:
    """The upstream gradient: N(0, 1) in float64 from a generator seeded by the name."""
    g = torch.Generator().manual_seed(seed_of(seed_name))
    return torch.randn(shape, generator=g, dtype=F64)


def file_metadata(**fields: str) -> Metadata:
    metadata = base_metadata()
    metadata["loss"] = LOSS
    metadata.update(fields)
    return metadata


# ----------------------------------------------------------------------------------------------
# grad_mha (grad_mha_{f32,f64}.safetensors): every MhaCase, with the mha fixture's tensors.


def mha_leaves(case: mha.MhaCase, r: mha.MhaResult):
    """Leaf copies of the case's inputs and parameters (state_dict names). Self-attention has
    one input tensor, "input" (query = key = value), so its gradient is the total over the
    three uses."""
    params = {k: v.detach().clone().requires_grad_() for k, v in r.state_dict.items()}
    if case.self_attention:
        return {"input": r.query.detach().clone().requires_grad_()}, params
    return {name: t.detach().clone().requires_grad_()
            for name, t in (("query", r.query), ("key", r.key), ("value", r.value))}, params


def mha_loss(case: mha.MhaCase, r: mha.MhaResult, inputs: Tensors, params: Tensors,
             grad_output: torch.Tensor):
    """L, the output and the dead rows (B x H x L) of mha_from_primitives: attnlens's
    semantics, a fully masked row has weights 0 and head output 0, and no NaN anywhere."""
    if case.self_attention:
        q = k = v = inputs["input"]
    else:
        q, k, v = inputs["query"], inputs["key"], inputs["value"]
    mask = mha.additive_mask(case, r.key_padding_mask, r.attn_mask, q.dtype)
    output, _, dead = mha.mha_from_primitives(case, params, q, k, v, mask)
    return (grad_output * output).sum(), output, dead


def mha_autograd(case: mha.MhaCase, r: mha.MhaResult, grad_output: torch.Tensor):
    """Gradients (names input or query / key / value, and the state_dict names), the output
    and the dead rows."""
    inputs, params = mha_leaves(case, r)
    loss, output, dead = mha_loss(case, r, inputs, params, grad_output)
    leaves = {**inputs, **params}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads)), output.detach(), dead


def pytorch_mha_autograd(case: mha.MhaCase, r: mha.MhaResult,
                         grad_output: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The same gradients from nn.MultiheadAttention's own autograd (slow path: its
    parameters require grad); for cases without fully masked rows (PyTorch gives NaN there)."""
    dtype = r.query.dtype
    module = nn.MultiheadAttention(case.embed_dim, case.num_heads, bias=case.bias,
                                   kdim=case.kdim, vdim=case.vdim, batch_first=True, dtype=dtype)
    module.load_state_dict(r.state_dict)
    if case.self_attention:
        x = r.query.detach().clone().requires_grad_()
        inputs, q, k, v = {"input": x}, x, x, x
    else:
        inputs = {name: t.detach().clone().requires_grad_()
                  for name, t in (("query", r.query), ("key", r.key), ("value", r.value))}
        q, k, v = inputs["query"], inputs["key"], inputs["value"]
    attn_mask = mha.causal_mask(case.tgt_len) if case.causal else r.attn_mask
    out, _ = module(q, k, v, key_padding_mask=r.key_padding_mask, attn_mask=attn_mask,
                    need_weights=False)
    leaves = {**inputs, **dict(module.named_parameters())}
    grads = torch.autograd.grad((grad_output * out).sum(), list(leaves.values()))
    return dict(zip(leaves, grads))


def check_dead_rows(case: mha.MhaCase, grads: Dict[str, torch.Tensor], dead: torch.Tensor):
    """No gradient flows through a fully masked row: a query row empty in every head gets a
    zero query gradient (cross-attention, where the query is its own tensor), and a batch
    item without any key gets zero gradients for all its inputs."""
    if case.self_attention:
        return
    all_heads = dead.all(1)  # B x L
    assert bool((grads["query"][all_heads] == 0).all()), f"{case.name}: dead query rows"
    empty_item = all_heads.all(1)  # B
    for name in ("query", "key", "value"):
        assert bool((grads[name][empty_item] == 0).all()), f"{case.name}: empty item {name}"


def grad_mha_case(case: mha.MhaCase, dtype: torch.dtype) -> Tensors:
    where = f"grad_mha {case.name} {str(dtype)[6:]}"
    r = mha.run_mha_case(case, dtype)
    shape = (case.batch, case.tgt_len, case.embed_dim)
    grad_output = standard_normal(shape, "grad_mha_" + case.name).to(dtype)
    grads, output, dead = mha_autograd(case, r, grad_output)
    assert_finite(grads, where)
    # The function differentiated is the one the mha fixture tested.
    tol = 1e-12 if dtype == F64 else 1e-6
    check_close({"output": output}, {"output": r.output}, tol, where, "output against mha")
    check_dead_rows(case, grads, dead)
    if not case.fully_masked:
        check_close(grads, pytorch_mha_autograd(case, r, grad_output),
                    1e-12 if dtype == F64 else 1e-5, where, "against nn.MultiheadAttention")
    # Float64 numbers: analytic against central differences; float32 ones: their float
    # error, against float64 autograd on the same (rounded) numbers.
    r64 = dataclasses.replace(
        r, state_dict={k: v.double() for k, v in r.state_dict.items()}, query=r.query.double(),
        key=r.key.double(), value=r.value.double(),
        attn_mask=(r.attn_mask.double() if r.attn_mask is not None
                   and r.attn_mask.is_floating_point() else r.attn_mask))
    if dtype == F64:
        inputs, params = mha_leaves(case, r64)
        g = torch.Generator().manual_seed(seed_of("grad_mha_check_" + case.name))
        central_differences(lambda: mha_loss(case, r64, inputs, params, grad_output)[0],
                            {**inputs, **params}, grads, g, where, full_below=600)
    else:
        grads64, _, _ = mha_autograd(case, r64, grad_output.double())
        check_close({k: v.double() for k, v in grads.items()}, grads64, 1e-5, where,
                    "float32 against float64 autograd")

    p = case.name + "."
    tensors: Tensors = {p + "query": r.query, p + "key": r.key, p + "value": r.value}
    for name, t in r.state_dict.items():
        tensors[p + name] = t
    if r.key_padding_mask is not None:
        tensors[p + "key_padding_mask"] = r.key_padding_mask
    if r.attn_mask is not None:
        tensors[p + "attn_mask"] = r.attn_mask
    tensors[p + "output"], tensors[p + "weights"] = r.output, r.weights
    tensors[p + "weights_avg"] = r.weights_avg
    tensors[p + "grad_output"] = grad_output
    for name, grad in grads.items():
        tensors[p + "grad." + name] = grad.detach()
    return tensors


# Fully masked rows in self- and cross-attention (central differences cover every case).
GRADCHECK_MHA_CASES = ("c18_e8_h2_cross_full_kpm", "c19_e8_h4_self_full_bool3d")


def gradcheck_mha(case: mha.MhaCase) -> None:
    r = mha.run_mha_case(case, F64)
    grad_output = standard_normal((case.batch, case.tgt_len, case.embed_dim),
                                  "grad_mha_" + case.name)
    inputs, params = mha_leaves(case, r)

    def loss(**tensors):
        return mha_loss(case, r, {k: tensors[k] for k in inputs},
                        {k: tensors[k] for k in params}, grad_output)[0]

    gradcheck(f"grad_mha {case.name}", loss, {**inputs, **params})


def grad_mha_fixture(dtype: torch.dtype) -> Tuple[Tensors, Metadata]:
    tensors: Tensors = {}
    for case in mha.MHA_CASES:
        tensors.update(grad_mha_case(case, dtype))
        if dtype == F64 and case.name in GRADCHECK_MHA_CASES:
            gradcheck_mha(case)
    metadata = file_metadata(compute_dtype=str(dtype)[6:])
    metadata["cases"] = json.dumps([c.metadata() for c in mha.MHA_CASES], sort_keys=True,
                                   separators=(",", ":"))
    return tensors, metadata


@fixture("grad_mha")
def grad_mha() -> FixtureFiles:
    return {"grad_mha_f32.safetensors": grad_mha_fixture(torch.float32),
            "grad_mha_f64.safetensors": grad_mha_fixture(F64)}


# ----------------------------------------------------------------------------------------------
# grad_blocks_model (blocks_model_<case>_grad_{output,expected}.safetensors)


class FrozenEllipticalMetric:
    """Replaces variants.elliptical_metric: the first forward records each layer's m, the
    later ones replay it. The backward treats m as a constant (docs/math.md section 2.8), so
    central differences must too."""

    def __init__(self):
        self.recorded: List[torch.Tensor] = []
        self.replaying = False
        self.calls = 0

    def __call__(self, *args, **kwargs):
        if not self.replaying:
            m = self.original(*args, **kwargs)
            self.recorded.append(m)
            return m
        m = self.recorded[self.calls % len(self.recorded)]
        self.calls += 1
        return m

    @contextlib.contextmanager
    def installed(self):
        self.original = variants.elliptical_metric
        variants.elliptical_metric = self
        try:
            yield self
        finally:
            variants.elliptical_metric = self.original


def model_case_compute_dtype(case: blocks.ModelCase) -> torch.dtype:
    """As blocks_model's expected output: a variant case is computed in float64 from the
    numbers rounded to its dtype, the others in their own dtype."""
    return F64 if case.double or case.attention is not None else torch.float32


def encoder_loss(encoder: nn.TransformerEncoder, case: blocks.ModelCase, src, padding,
                 grad_output):
    output = blocks.encoder_with_position(encoder, case, src, padding)
    return (grad_output * output).sum(), output


def encoder_autograd(encoder, case, src, padding, grad_output):
    """Gradients of L with respect to src and every parameter (state_dict names), and the
    output, from blocks.encoder_with_position under autograd."""
    x = src.detach().clone().requires_grad_()
    leaves = {"src": x, **dict(encoder.named_parameters())}
    with torch.enable_grad():
        loss, output = encoder_loss(encoder, case, x, padding, grad_output)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    unused = [name for name, g in zip(leaves, grads) if g is None]
    assert not unused, f"{case.name}: parameters without a gradient: {unused}"
    return dict(zip(leaves, grads)), output.detach()


def pytorch_stack_autograd(encoder, case: blocks.ModelCase, src, padding, grad_output):
    """For stacks PyTorch's own layers can compute (softmax attention; no position, an
    additive one - t5, alibi - as a per-head float src_mask built from the layer's table, or
    an absolute one added to src; standard or fidelity residual), the gradients of L from
    nn.TransformerEncoderLayer's autograd (slow path), else None."""
    kind = case.position["type"]
    if case.attention is not None or kind not in ("none", "t5", "alibi", "learned",
                                                  "sinusoidal"):
        return None
    B, L, E = src.shape
    x = src.detach().clone().requires_grad_()
    leaves = {"src": x, **dict(encoder.named_parameters())}
    with torch.enable_grad():
        x0 = x
        if kind == "learned":
            x0 = x + encoder.position_embeddings.weight[:L]
        elif kind == "sinusoidal":
            x0 = x + positions.sinusoidal_table(L, E, case.position["base"]).to(x.dtype)
        residual = case.residual or {"type": "standard"}
        lambdas = (encoder.fidelity_lambda if residual.get("learned")
                   else residual.get("lambda", [0.0] * case.num_layers))
        h = x0
        for l, layer in enumerate(encoder.layers):
            bias = blocks.additive_position_bias(layer.self_attn, case, L)
            mask = None if bias is None else bias.to(x.dtype).repeat(B, 1, 1)
            y = layer(h, src_mask=mask, src_key_padding_mask=padding)
            h = y + lambdas[l] * (x0 - h) if residual["type"] == "fidelity" else y
        if encoder.norm is not None:
            h = encoder.norm(h)
        grads = torch.autograd.grad((grad_output * h).sum(), list(leaves.values()))
    return dict(zip(leaves, grads))


def check_against_files(case: blocks.ModelCase, encoder, src, padding, output) -> None:
    """The numbers differentiated are those of the blocks_model files (model.safetensors,
    _input), and the output is the one its _expected holds."""
    where = f"grad_blocks_model {case.name}"
    files = blocks.model_case_files(case)
    stem = f"blocks_model_{case.name}"
    model, _ = read_safetensors(files[f"{stem}/model.safetensors"])
    inputs, _ = read_safetensors(files[f"{stem}_input.safetensors"])
    state = encoder.state_dict()
    assert sorted(model) == sorted(state), f"{where}: model.safetensors names"
    assert sorted(state) == sorted(n for n, _ in encoder.named_parameters()), \
        f"{where}: a state_dict entry that is not a parameter"
    for name, t in model.items():
        assert torch.equal(t, state[name]), f"{where}: {name} is not the file's"
    assert torch.equal(inputs["src"], src), f"{where}: src is not the file's"
    if padding is not None:
        assert torch.equal(inputs["src_key_padding_mask"], padding), f"{where}: padding"
    expected = files[f"{stem}_expected.safetensors"][0]["output"]
    check_close({"output": output.to(expected.dtype)}, {"output": expected},
                1e-6 if expected.dtype == torch.float32 else 1e-12, where,
                "output against blocks_model expected")


def grad_blocks_model_case(case: blocks.ModelCase) -> FixtureFiles:
    where = f"grad_blocks_model {case.name}"
    encoder, src, padding = blocks.make_model_case(case)
    dtype = src.dtype
    compute = model_case_compute_dtype(case)
    grad_output = standard_normal(src.shape, "grad_blocks_model_" + case.name).to(dtype)
    # Float64 on the file's numbers; the float32 computation too for the float32 cases
    # without a variant, whose reference it is (as for their expected output).
    encoder64 = copy.deepcopy(encoder).double()
    src64, gy64 = src.double(), grad_output.double()
    frozen = FrozenEllipticalMetric()
    with frozen.installed():  # records elliptical's m, layer by layer
        grads64, output64 = encoder_autograd(encoder64, case, src64, padding, gy64)
    frozen.replaying = True
    assert bool(frozen.recorded) == ((case.attention or {}).get("type") == "elliptical")
    if compute == F64:
        grads, output = grads64, output64
    else:
        grads, output = encoder_autograd(encoder, case, src, padding, grad_output)
        check_close({k: v.double() for k, v in grads.items()}, grads64, 1e-5, where,
                    "float32 against float64 autograd")
    assert_finite(grads, where)
    check_against_files(case, encoder, src, padding, output)
    # The float64 gradients against PyTorch's layers where they can compute the stack, and
    # against central differences always (with m held fixed, as the backward holds it).
    pytorch = pytorch_stack_autograd(encoder64, case, src64, padding, gy64)
    if pytorch is not None:
        check_close(grads64, pytorch, 1e-12, where, "against PyTorch's layers")
    x = src64.clone()
    tensors = {"src": x, **dict(encoder64.named_parameters())}
    g = torch.Generator().manual_seed(seed_of("grad_blocks_model_check_" + case.name))
    with frozen.installed(), torch.no_grad():
        central_differences(lambda: encoder_loss(encoder64, case, x, padding, gy64)[0],
                            tensors, grads64, g, where)

    stem = f"blocks_model_{case.name}"
    flag = "true" if case.double else "false"
    metadata = file_metadata(double=flag, dtype=str(dtype)[6:], compute_dtype=str(compute)[6:])
    return {f"{stem}_grad_output.safetensors": ({"output": grad_output}, file_metadata(
                double=flag, dtype=str(dtype)[6:])),
            f"{stem}_grad_expected.safetensors": (
                {name: g.detach().to(dtype) for name, g in grads.items()}, metadata)}


# gradcheck on every coordinate is too slow at the fixtures' sizes (4-6k parameters), so it
# runs on these cases shrunk to E = 4, H = 2, FF = 4, L = 5 (same code path, other numbers):
# Huber weights with padding, the frozen elliptical metric, NeuTRENO's V^0, rho, R, and
# Transformer-XL's and Shaw's tables.
GRADCHECK_MODEL_CASES = ("robust_kde_kpm", "elliptical_kpm", "neutreno",
                         "bilateral_laplacian_leading_twicing", "fourier", "transformer_xl",
                         "shaw")


def gradcheck_model_case(case: blocks.ModelCase) -> None:
    small = dataclasses.replace(case, name=case.name + "_gradcheck", d_model=4, nhead=2,
                                dim_feedforward=4, length=5)
    encoder, src, padding = blocks.make_model_case(small)
    encoder, src = encoder.double(), src.double()
    grad_output = standard_normal(src.shape, "grad_blocks_model_" + small.name)
    frozen = FrozenEllipticalMetric()
    with frozen.installed():
        with torch.no_grad():
            encoder_loss(encoder, small, src, padding, grad_output)  # records m
        frozen.replaying = True

        def loss(src, **params):
            with parameters_replaced(encoder, params):
                return encoder_loss(encoder, small, src, padding, grad_output)[0]

        gradcheck(f"grad_blocks_model {small.name}", loss,
                  {"src": src, **dict(encoder.named_parameters())})


@fixture("grad_blocks_model")
def grad_blocks_model() -> FixtureFiles:
    files: FixtureFiles = {}
    for case in blocks.MODEL_CASES:
        files.update(grad_blocks_model_case(case))
        if case.name in GRADCHECK_MODEL_CASES:
            gradcheck_model_case(case)
    return files


# ----------------------------------------------------------------------------------------------
# grad_cli (cli/grad_<case>/..., cli/grad_<case>_{input,grad_output,expected}.safetensors):
# `attnlens grad --model DIR --input X --grad-output DY --output G [--double]` on an exported
# nn.TransformerEncoder with key padding.


@dataclasses.dataclass(frozen=True)
class GradCliCase:
    encoder: blocks.EncoderCase
    double: bool = False  # model, inputs and gradients in float64 (--double)


GRAD_CLI_CASES = [
    GradCliCase(blocks.EncoderCase("grad_post_relu_kpm", 2, 16, 2, 32, key_padding_mask=True,
                                   length=8)),
    GradCliCase(blocks.EncoderCase("grad_pre_gelu_norm_kpm_mask_double", 3, 24, 3, 48, "gelu",
                                   norm_first=True, final_norm=True, key_padding_mask=True,
                                   src_mask="float", length=9), double=True),
]


def encoder_from_primitives(encoder: nn.TransformerEncoder, case: blocks.EncoderCase, src,
                            padding, mask):
    """nn.TransformerEncoder's composition written out (docs/math.md sections 1, 7) on
    mha.mha_from_primitives and F.layer_norm: independent of PyTorch's encoder modules."""
    B, L, E = src.shape
    attn_mask = "none" if mask is None else "bool" if mask.dtype == torch.bool else "float"
    geometry = mha.MhaCase("grad_cli", E, case.nhead, B, L, L, key_padding_mask=padding
                           is not None, attn_mask=attn_mask)
    additive = mha.additive_mask(geometry, padding, mask, src.dtype)
    activation = blocks.activation_module(case.activation)

    def norm(module, x):
        return F.layer_norm(x, (E,), module.weight, module.bias, module.eps)

    def sa(layer, x):
        params = dict(layer.self_attn.named_parameters())
        out, _, dead = mha.mha_from_primitives(geometry, params, x, x, x, additive)
        assert not bool(dead.any()), f"{case.name}: a fully masked row"
        return out

    def ff(layer, x):
        return F.linear(activation(F.linear(x, layer.linear1.weight, layer.linear1.bias)),
                        layer.linear2.weight, layer.linear2.bias)

    x = src
    for layer in encoder.layers:
        if case.norm_first:
            x = x + sa(layer, norm(layer.norm1, x))
            x = x + ff(layer, norm(layer.norm2, x))
        else:
            x = norm(layer.norm1, x + sa(layer, x))
            x = norm(layer.norm2, x + ff(layer, x))
    return norm(encoder.norm, x) if encoder.norm is not None else x


def torch_encoder_autograd(encoder: nn.TransformerEncoder, src, padding, mask, grad_output,
                           forward=None):
    """Gradients of L for src and every parameter, from the real nn.TransformerEncoder: with
    parameters requiring grad PyTorch 1.13 runs its documented (slow) path, where a padded
    query row is computed like any other (it attends to the real keys) - attnlens's
    semantics; the fast path's nested tensors would give such rows 0."""
    x = src.detach().clone().requires_grad_()
    leaves = {"src": x, **dict(encoder.named_parameters())}
    with torch.enable_grad():
        out = (forward(x) if forward is not None else
               encoder(x, mask=mask, src_key_padding_mask=padding))
        grads = torch.autograd.grad((grad_output * out).sum(), list(leaves.values()))
    return dict(zip(leaves, grads)), out.detach()


def grad_cli_fixture(cli: GradCliCase) -> FixtureFiles:
    case = cli.encoder
    where = f"grad_cli {case.name}"
    dtype = F64 if cli.double else torch.float32
    seed = seed_of(case.name)
    encoder = copy.deepcopy(blocks.make_encoder(case, seed)).to(dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    src, padding, mask = blocks.make_inputs(case.batch, case.length, case.d_model,
                                            case.key_padding_mask, case.src_mask, g)
    src = src.to(dtype)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    assert padding is not None and bool(padding.any()), f"{where}: no key is padded"
    grad_output = standard_normal(src.shape, "grad_cli_" + case.name).to(dtype)
    grads, output = torch_encoder_autograd(encoder, src, padding, mask, grad_output)
    assert_finite(grads, where)
    check_close({"output": output},
                {"output": blocks.export_pytorch.pytorch_output(encoder, src, padding, mask)},
                0.0, where, "output against export_pytorch.pytorch_output")

    # Float64 on the same numbers: the module's autograd against a re-implementation from
    # torch primitives and against central differences; the float32 reference against it.
    encoder64 = copy.deepcopy(encoder).double()
    src64, gy64 = src.double(), grad_output.double()
    mask64 = mask.double() if mask is not None and mask.is_floating_point() else mask
    grads64, _ = torch_encoder_autograd(encoder64, src64, padding, mask64, gy64)
    if dtype != F64:
        check_close({k: v.double() for k, v in grads.items()}, grads64, 1e-5, where,
                    "float32 against float64 autograd")
    primitives, _ = torch_encoder_autograd(
        encoder64, src64, padding, mask64, gy64,
        forward=lambda x: encoder_from_primitives(encoder64, case, x, padding, mask64))
    check_close(grads64, primitives, 1e-12, where, "against torch primitives")
    x = src64.clone()
    tensors = {"src": x, **dict(encoder64.named_parameters())}
    gen = torch.Generator().manual_seed(seed_of("grad_cli_check_" + case.name))
    with torch.no_grad():
        central_differences(
            lambda: (gy64 * blocks.run_slow_path(encoder64, x, mask=mask64,
                                                 src_key_padding_mask=padding)).sum(),
            tensors, grads64, gen, where)

    stem = f"cli/{case.name}"
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        blocks.export_pytorch.export_encoder(encoder, model, dtype)
        blocks.export_pytorch.export_inputs(Path(tmp) / "input.safetensors", encoder, src,
                                            padding, mask, dtype)
        files: FixtureFiles = {
            f"{stem}/config.json": (model / "config.json").read_bytes(),
            f"{stem}/model.safetensors": (model / "model.safetensors").read_bytes(),
            f"{stem}_input.safetensors": (Path(tmp) / "input.safetensors").read_bytes()}
    exported, _ = read_safetensors(files[f"{stem}/model.safetensors"])
    assert sorted(exported) == sorted(n for n in grads if n != "src"), f"{where}: names"
    flag = "true" if cli.double else "false"
    files[f"{stem}_grad_output.safetensors"] = ({"output": grad_output},
                                                file_metadata(double=flag))
    files[f"{stem}_expected.safetensors"] = ({n: t.detach() for n, t in grads.items()},
                                             file_metadata(double=flag))
    return files


# The two CLI encoders shrunk to E = 4, FF = 8, L = 5 for gradcheck on every coordinate.
GRADCHECK_CLI_CASES = [
    blocks.EncoderCase("grad_cli_gradcheck_post", 2, 4, 2, 8, key_padding_mask=True, length=5),
    blocks.EncoderCase("grad_cli_gradcheck_pre", 2, 4, 2, 8, "gelu", norm_first=True,
                       final_norm=True, key_padding_mask=True, src_mask="float", length=5),
]


def gradcheck_cli(case: blocks.EncoderCase) -> None:
    seed = seed_of(case.name)
    encoder = blocks.make_encoder(case, seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    src, padding, mask = blocks.make_inputs(case.batch, case.length, case.d_model,
                                            case.key_padding_mask, case.src_mask, g)
    assert bool(padding.any()), f"{case.name}: no key is padded"
    grad_output = standard_normal(src.shape, "grad_cli_" + case.name)

    def loss(src, **params):
        # enable_grad: the slow path, as for the fixture (gradcheck may call without grad).
        with parameters_replaced(encoder, params), torch.enable_grad():
            out = encoder(src, mask=mask, src_key_padding_mask=padding)
        return (grad_output * out).sum()

    gradcheck(f"grad_cli {case.name}", loss, {"src": src, **dict(encoder.named_parameters())})


@fixture("grad_cli")
def grad_cli() -> FixtureFiles:
    files: FixtureFiles = {}
    for cli in GRAD_CLI_CASES:
        files.update(grad_cli_fixture(cli))
    for case in GRADCHECK_CLI_CASES:
        gradcheck_cli(case)
    return files


# ----------------------------------------------------------------------------------------------
# grad_vit (grad_vit_{f32,f64}.safetensors): the training loss of a whole vision transformer,
# mean F.cross_entropy of its logits and integer labels, differentiated with respect to the
# images and every parameter of oracles/blocks.py's ReferenceViT (timm's state_dict names, the
# relative tables, a variant's rho / fourier_r and a learned fidelity_lambda included).


@dataclasses.dataclass(frozen=True)
class VitGradCase:
    vit: blocks.VitCase
    attention: Optional[dict] = None  # config.json's "attention" object (None: softmax)
    residual: Optional[dict] = None   # config.json's "residual" object (None: standard)

    def metadata(self) -> dict:
        """The VitCase fields, the attention object, and the residual in EncoderCase's
        fields (residual, fidelity_lambda, fidelity_learned), as the C++ case loaders read
        them."""
        out = dataclasses.asdict(self.vit)
        out["attention"] = self.attention or {"type": "softmax"}
        residual = self.residual or {"type": "standard"}
        out["residual"] = residual["type"]
        out["fidelity_lambda"] = residual.get("lambda", [])
        out["fidelity_learned"] = bool(residual.get("learned", False))
        return out


def small_vit(name, height, width, patch, chans, classes, e, heads, ff, **kw) -> blocks.VitCase:
    return blocks.VitCase(name, height, width, patch, chans, classes, e, heads, ff, 2, **kw)


# 8 x 8 images, two blocks of two heads; patch 4 (a 2 x 2 grid), or 2 (4 x 4) where positions
# on the grid matter. Variants with a fixed (kde) or learned (bilateral) fidelity residual.
VIT_GRAD_CASES = [
    VitGradCase(small_vit("vg00_cls_learned_token", 8, 8, 4, 3, 5, 12, 2, 24,
                         layer_norm_eps=1e-6, batch=3)),
    VitGradCase(small_vit("vg01_nocls_mean_post_relu", 8, 8, 4, 1, 4, 12, 2, 24,
                         activation="relu", norm_first=False, final_norm=False,
                         class_token=False, position="none", pooling="mean", batch=3)),
    VitGradCase(small_vit("vg02_cls_learned_quadratic_mean", 8, 8, 2, 2, 3, 8, 2, 16,
                         pooling="mean", relative="quadratic")),
    VitGradCase(small_vit("vg03_nocls_learned_2d_post_tanh", 8, 8, 2, 1, 3, 12, 2, 24,
                         activation="gelu_tanh", norm_first=False, class_token=False,
                         position="none", pooling="mean", relative="learned_2d",
                         max_position=5, relative_dim=6)),
    VitGradCase(small_vit("vg04_twicing_quadratic", 8, 8, 2, 1, 3, 8, 2, 16,
                         relative="quadratic"), attention={"type": "twicing"}),
    VitGradCase(small_vit("vg05_bilateral_laplacian_fidelity_learned", 8, 8, 2, 1, 3, 8, 2, 16),
                attention={"type": "bilateral", "kernel": "laplacian"},
                residual={"type": "fidelity", "learned": True}),
    VitGradCase(small_vit("vg06_bilateral_learned_2d_boost2", 8, 8, 2, 1, 3, 8, 2, 16,
                         relative="learned_2d", pooling="mean"),
                attention={"type": "bilateral", "boost": 2}),
    VitGradCase(small_vit("vg07_kde_fidelity", 8, 8, 4, 1, 3, 8, 2, 16, batch=3),
                attention={"type": "kde"}, residual={"type": "fidelity", "lambda": [0.3, 0.5]}),
    VitGradCase(small_vit("vg08_robust_kde", 8, 8, 2, 1, 3, 8, 2, 16, norm_first=False,
                         activation="relu"), attention={"type": "robust_kde", "huber_a": 0.3}),
    VitGradCase(small_vit("vg09_fourier", 8, 8, 4, 1, 3, 8, 2, 16, batch=3),
                attention={"type": "fourier"}),
    VitGradCase(small_vit("vg10_elliptical", 8, 8, 4, 1, 3, 8, 2, 16, batch=3),
                attention={"type": "elliptical", "delta": 2.0}),
    VitGradCase(small_vit("vg11_neutreno_quadratic", 8, 8, 2, 1, 3, 8, 2, 16,
                         relative="quadratic", final_norm=False),
                attention={"type": "neutreno", "lambda": 0.6}),
]


def vit_labels(case: blocks.VitCase) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed_of("grad_vit_labels_" + case.name))
    return torch.randint(case.num_classes, (case.batch,), generator=g)


def vit_loss(model: blocks.ReferenceViT, images, labels):
    logits, _ = model(images)
    return F.cross_entropy(logits, labels), logits


def vit_autograd(model: blocks.ReferenceViT, images, labels):
    """Gradients of the loss with respect to the images and every parameter (state_dict
    names), the loss and the logits."""
    x = images.detach().clone().requires_grad_()
    leaves = {"images": x, **dict(model.named_parameters())}
    with torch.enable_grad():
        loss, logits = vit_loss(model, x, labels)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    unused = [name for name, g in zip(leaves, grads) if g is None]
    assert not unused, f"{model.case.name}: parameters without a gradient: {unused}"
    return dict(zip(leaves, grads)), loss.detach(), logits.detach()


def running_variant(model: blocks.ReferenceViT, attention: dict) -> blocks.ReferenceViT:
    """A copy of the model whose blocks run the attention object's variant."""
    other = copy.deepcopy(model)
    settings = dict(blocks.variant_case(attention),
                    grid=[*other.grid, 1 if other.case.class_token else 0])
    for block in other.blocks:
        block.attn.variant = settings
    return other


def check_attention_paths(c: VitGradCase, model64, images64, labels, grads64,
                          logits64) -> None:
    """Softmax cases: ReferenceViT's written-out softmax attention and oracles/variants.py's
    variant_forward with softmax (the code every variant case runs) give the same gradients.
    Variant cases: the variant is not silently softmax: it moves the logits by more than
    1e-3, far above rounding (less than the encoders' 1e-2: with CLS pooling a bilateral term
    reaches the logits only through the patch tokens of the earlier block)."""
    where = f"grad_vit {c.vit.name}"
    softmax = running_variant(model64, {"type": "softmax"})
    if c.attention is None:
        check_close(vit_autograd(softmax, images64, labels)[0], grads64, 1e-12, where,
                    "written-out softmax against variants.variant_forward")
        return
    with torch.no_grad():
        moved = (vit_loss(softmax, images64, labels)[1] - logits64).abs().max().item()
    note(where, "the variant moves the logits from softmax's by", moved)
    if moved < 1e-3:
        raise AssertionError(f"{where}: the variant moves the logits by {moved:g} only")


def grad_vit_case(c: VitGradCase, dtype: torch.dtype) -> Tuple[Tensors, str]:
    """The case's tensors, and its compute dtype: the file's, or float64 from the numbers
    rounded to float32 for the variants (variant_forward computes in float64), as for the
    blocks_model encoders."""
    case = c.vit
    where = f"grad_vit {case.name} {str(dtype)[6:]}"
    model, images = blocks.make_vit_case(case, dtype, c.attention, c.residual)
    labels = vit_labels(case)
    state = model.state_dict()
    assert sorted(state) == sorted(n for n, _ in model.named_parameters()), \
        f"{where}: a state_dict entry that is not a parameter"
    model64, images64 = copy.deepcopy(model).double(), images.double()
    frozen = FrozenEllipticalMetric()
    with frozen.installed():  # records elliptical's m, block by block
        grads64, loss64, logits64 = vit_autograd(model64, images64, labels)
    frozen.replaying = True
    assert bool(frozen.recorded) == ((c.attention or {}).get("type") == "elliptical")
    compute = F64 if dtype == F64 or c.attention is not None else torch.float32
    if compute == F64:
        grads, loss, logits = grads64, loss64, logits64
    else:
        grads, loss, logits = vit_autograd(model, images, labels)
        check_close({k: v.double() for k, v in grads.items()}, grads64, 1e-5, where,
                    "float32 against float64 autograd")
    assert_finite(grads, where)
    check_attention_paths(c, model64, images64, labels, grads64, logits64)
    x = images64.clone()
    tensors = {"images": x, **dict(model64.named_parameters())}
    g = torch.Generator().manual_seed(seed_of("grad_vit_check_" + case.name))
    with frozen.installed(), torch.no_grad():
        central_differences(lambda: vit_loss(model64, x, labels)[0], tensors, grads64, g, where)

    p = case.name + "."
    out: Tensors = {p + name: t.detach().clone() for name, t in state.items()}
    out[p + "images"], out[p + "labels"] = images, labels
    out[p + "logits"] = logits.to(dtype)
    out[p + "loss"] = loss.to(dtype).reshape(1)
    out[p + "grad_input"] = grads["images"].to(dtype)
    for name, grad in grads.items():
        if name != "images":
            out[p + "grad." + name] = grad.to(dtype)
    return out, str(compute)[6:]


def gradcheck_vit_case(c: VitGradCase) -> None:
    """gradcheck on every coordinate, on the case shrunk to 4 x 4 images of one channel in
    patches of 2, E = 4, FF = 4 (same code path, other numbers)."""
    small = dataclasses.replace(c.vit, name=c.vit.name + "_gradcheck", image_height=4,
                                image_width=4, patch_size=2, in_chans=1, d_model=4,
                                dim_feedforward=4, batch=2)
    model, images = blocks.make_vit_case(small, F64, c.attention, c.residual)
    labels = vit_labels(small)
    frozen = FrozenEllipticalMetric()
    with frozen.installed():
        with torch.no_grad():
            vit_loss(model, images, labels)  # records m
        frozen.replaying = True

        def loss(images, **params):
            with parameters_replaced(model, params):
                return vit_loss(model, images, labels)[0]

        gradcheck(f"grad_vit {small.name}", loss,
                  {"images": images, **dict(model.named_parameters())})


def grad_vit_fixture(dtype: torch.dtype) -> Tuple[Tensors, Metadata]:
    tensors: Tensors = {}
    cases = []
    for c in VIT_GRAD_CASES:
        case_tensors, compute = grad_vit_case(c, dtype)
        tensors.update(case_tensors)
        cases.append(dict(c.metadata(), compute_dtype=compute))
        if dtype == F64:
            gradcheck_vit_case(c)
    metadata = file_metadata(loss="F.cross_entropy(logits, labels) (mean over the batch)")
    metadata["cases"] = json.dumps(cases, sort_keys=True, separators=(",", ":"))
    return tensors, metadata


@fixture("grad_vit")
def grad_vit() -> FixtureFiles:
    return {"grad_vit_f32.safetensors": grad_vit_fixture(torch.float32),
            "grad_vit_f64.safetensors": grad_vit_fixture(F64)}
