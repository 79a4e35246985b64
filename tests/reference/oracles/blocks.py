"""Fixtures for transformer blocks: LayerNorm, FeedForward, TransformerEncoderLayer and
TransformerEncoder (docs/math.md section 2, residual part). Oracle: PyTorch's own modules
(nn.LayerNorm, nn.TransformerEncoderLayer(batch_first=True), nn.TransformerEncoder), run on
the slow path; the fidelity residual, which PyTorch does not have, is written out here."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fixturelib import (FixtureFiles, Metadata, Tensors, assert_close, base_metadata, fixture,
                        seed_of)

DTYPES = {"f32": torch.float32, "f64": torch.float64}


def activation_module(name: str):
    """attnlens's activation names -> what nn.TransformerEncoderLayer(activation=...) takes."""
    return {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": nn.GELU(approximate="tanh")}[name]


def perturb(module: nn.Module, seed: int) -> None:
    """Moves every parameter away from its initial value: biases nonzero, norms not identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():  # registration order: deterministic
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("bias"):
                p.copy_(0.3 * noise)
            elif "norm" in name or isinstance(module, nn.LayerNorm):  # LayerNorm weight
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.add_(0.05 * noise)


def state_dict_of(module: nn.Module, prefix: str) -> Tensors:
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}


def cases_metadata(cases) -> Metadata:
    metadata = base_metadata()
    metadata["cases"] = json.dumps([dataclasses.asdict(c) for c in cases], sort_keys=True,
                                   separators=(",", ":"))
    return metadata


# ----------------------------------------------------------------------------------------------
# LayerNorm and FeedForward (files layers_{f32,f64}.safetensors)


@dataclasses.dataclass(frozen=True)
class LayerNormCase:
    name: str
    features: int
    eps: float = 1e-5
    elementwise_affine: bool = True
    offset: float = 0.0  # added to the inputs: a large common mean tests the variance formula
    kind: str = "layer_norm"


@dataclasses.dataclass(frozen=True)
class FeedForwardCase:
    name: str
    d_model: int
    dim_feedforward: int
    activation: str
    kind: str = "feed_forward"


LAYER_CASES = [
    LayerNormCase("ln00_e16", 16),
    LayerNormCase("ln01_e33_eps1e-3", 33, eps=1e-3),
    LayerNormCase("ln02_e8_no_affine", 8, elementwise_affine=False),
    LayerNormCase("ln03_e64_offset", 64, eps=1e-6, offset=40.0),
    FeedForwardCase("ff00_relu", 16, 40, "relu"),
    FeedForwardCase("ff01_gelu", 16, 40, "gelu"),
    FeedForwardCase("ff02_gelu_tanh", 24, 64, "gelu_tanh"),
]

BATCH, LENGTH = 2, 5  # inputs of the layer cases are BATCH x LENGTH x features


class FeedForwardModule(nn.Module):
    """The feed-forward half of nn.TransformerEncoderLayer, with its parameter names."""

    def __init__(self, d_model: int, dim_feedforward: int, activation: str):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward, dtype=torch.float64)
        self.linear2 = nn.Linear(dim_feedforward, d_model, dtype=torch.float64)
        self.activation = activation_module(activation)

    def forward(self, x):
        return self.linear2(self.activation(self.linear1(x)))


def layer_case(case, dtype) -> Tensors:
    seed = seed_of(case.name)
    torch.manual_seed(seed)
    if case.kind == "layer_norm":
        module = nn.LayerNorm(case.features, eps=case.eps,
                              elementwise_affine=case.elementwise_affine, dtype=torch.float64)
        features = case.features
    else:
        module = FeedForwardModule(case.d_model, case.dim_feedforward, case.activation)
        features = case.d_model
    perturb(module, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, LENGTH, features, generator=g, dtype=torch.float64)
    x = x + getattr(case, "offset", 0.0)
    module, x = copy.deepcopy(module).to(dtype).eval(), x.to(dtype)
    with torch.no_grad():
        output = module(x)
    p = case.name + "."
    tensors = state_dict_of(module, p)
    tensors[p + "input"], tensors[p + "output"] = x, output
    return tensors


@fixture("layers")
def layers() -> FixtureFiles:
    files = {}
    for suffix, dtype in DTYPES.items():
        tensors: Tensors = {}
        for case in LAYER_CASES:
            tensors.update(layer_case(case, dtype))
        files[f"layers_{suffix}.safetensors"] = (tensors, cases_metadata(LAYER_CASES))
    return files


# ----------------------------------------------------------------------------------------------
# TransformerEncoderLayer (files encoder_layer_{f32,f64}.safetensors)


@dataclasses.dataclass(frozen=True)
class EncoderLayerCase:
    name: str
    d_model: int
    nhead: int
    dim_feedforward: int
    activation: str = "relu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    batch: int = 2
    length: int = 7
    key_padding_mask: bool = False
    src_mask: str = "none"  # "none" | "bool" | "float" | "causal" (bool upper triangle)


ENCODER_LAYER_CASES = [
    EncoderLayerCase("el00_post_relu", 16, 2, 32),
    EncoderLayerCase("el01_post_gelu_kpm", 16, 4, 24, "gelu", key_padding_mask=True),
    EncoderLayerCase("el02_pre_relu_bool", 16, 2, 32, norm_first=True, src_mask="bool"),
    EncoderLayerCase("el03_pre_gelu_float_kpm", 24, 3, 40, "gelu", norm_first=True,
                     key_padding_mask=True, src_mask="float"),
    EncoderLayerCase("el04_post_gelu_tanh_eps", 24, 3, 48, "gelu_tanh", layer_norm_eps=1e-3,
                     key_padding_mask=True, src_mask="bool"),
    EncoderLayerCase("el05_pre_gelu_causal", 32, 4, 64, "gelu", norm_first=True, batch=3,
                     length=9, src_mask="causal"),
    EncoderLayerCase("el06_pre_relu_plain", 32, 8, 16, norm_first=True, batch=1, length=11),
]


def make_padding(batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """B x L bool, True = ignore; about a third padded, key 0 always kept (no empty row)."""
    kpm = torch.rand(batch, length, generator=g) < 0.35
    kpm[:, 0] = False
    return kpm


def make_src_mask(kind: str, length: int, g: torch.Generator) -> Optional[torch.Tensor]:
    """L x L src_mask in PyTorch's convention; the diagonal is always allowed (no empty row)."""
    if kind == "none":
        return None
    if kind == "causal":
        return torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    drop = (torch.rand(length, length, generator=g) < 0.3).fill_diagonal_(False)
    if kind == "bool":
        return drop
    bias = torch.randn(length, length, generator=g, dtype=torch.float64)
    return bias.masked_fill(drop, float("-inf"))


def make_inputs(batch, length, d_model, kpm: bool, src_mask: str, g):
    src = torch.randn(batch, length, d_model, generator=g, dtype=torch.float64)
    padding = make_padding(batch, length, g) if kpm else None
    return src, padding, make_src_mask(src_mask, length, g)


def store_inputs(tensors: Tensors, p: str, src, padding, mask, case_src_mask: str) -> None:
    tensors[p + "src"] = src
    if padding is not None:
        tensors[p + "src_key_padding_mask"] = padding
    if mask is not None and case_src_mask != "causal":  # causal: a flag in the metadata
        tensors[p + "mask"] = mask


def run_slow_path(module: nn.Module, *args, **kwargs) -> torch.Tensor:
    """PyTorch 1.13 takes its fused 'fast path' only under no_grad with parameters not
    requiring grad; with grad enabled it runs the documented composition of modules."""
    with torch.enable_grad():
        return module(*args, **kwargs).detach()


def encoder_layer_case(case: EncoderLayerCase, dtype) -> Tensors:
    seed = seed_of(case.name)
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(case.d_model, case.nhead, case.dim_feedforward,
                                       dropout=0.0, activation=activation_module(case.activation),
                                       layer_norm_eps=case.layer_norm_eps, batch_first=True,
                                       norm_first=case.norm_first, dtype=torch.float64)
    perturb(layer, seed)
    g = torch.Generator().manual_seed(seed + 1)
    src, padding, mask = make_inputs(case.batch, case.length, case.d_model,
                                     case.key_padding_mask, case.src_mask, g)
    layer, src = copy.deepcopy(layer).to(dtype).eval(), src.to(dtype)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    output = run_slow_path(layer, src, src_mask=mask, src_key_padding_mask=padding)
    # Per-head maps of the layer's attention: its input is norm1(src) when norm_first.
    with torch.no_grad():
        attn_in = layer.norm1(src) if case.norm_first else src
        _, weights = layer.self_attn(attn_in, attn_in, attn_in, attn_mask=mask,
                                     key_padding_mask=padding, need_weights=True,
                                     average_attn_weights=False)
    if not case.key_padding_mask and case.src_mask == "none":
        with torch.no_grad():  # the fast path, where PyTorch takes it, agrees
            for p in layer.parameters():
                p.requires_grad_(False)
            assert_close(layer(src), output, f"{case.name} fast path")
    p = case.name + "."
    tensors = state_dict_of(layer, p)
    store_inputs(tensors, p, src, padding, mask, case.src_mask)
    tensors[p + "output"], tensors[p + "weights"] = output, weights
    return tensors


@fixture("encoder_layer")
def encoder_layer() -> FixtureFiles:
    files = {}
    for suffix, dtype in DTYPES.items():
        tensors: Tensors = {}
        for case in ENCODER_LAYER_CASES:
            tensors.update(encoder_layer_case(case, dtype))
        files[f"encoder_layer_{suffix}.safetensors"] = (tensors,
                                                        cases_metadata(ENCODER_LAYER_CASES))
    return files


# ----------------------------------------------------------------------------------------------
# TransformerEncoder, small (encoder_{f32,f64}.safetensors: parameters stored) and deep
# (encoder_deep_{f32,f64}.safetensors: parameters from hashed_parameter, not stored)


@dataclasses.dataclass(frozen=True)
class EncoderCase:
    name: str
    num_layers: int
    d_model: int
    nhead: int
    dim_feedforward: int
    activation: str = "relu"
    norm_first: bool = False
    final_norm: bool = False
    residual: str = "standard"  # "standard" | "fidelity"
    fidelity_lambda: Tuple[float, ...] = ()  # one per layer, or one shared
    batch: int = 2
    length: int = 6
    key_padding_mask: bool = False
    src_mask: str = "none"
    hashed: bool = False  # parameters from hashed_parameter() instead of perturbed init


ENCODER_CASES = [
    EncoderCase("enc00_pre_gelu_final_norm_kpm", 3, 16, 4, 32, "gelu", norm_first=True,
                final_norm=True, key_padding_mask=True),
    EncoderCase("enc01_post_relu_fidelity_bool", 3, 16, 2, 24, residual="fidelity",
                fidelity_lambda=(0.3, 0.5, 0.2), src_mask="bool"),
    EncoderCase("enc02_pre_tanh_fidelity_shared", 2, 24, 3, 40, "gelu_tanh", norm_first=True,
                final_norm=True, residual="fidelity", fidelity_lambda=(0.4,),
                key_padding_mask=True, length=8),
]

DEEP = dict(num_layers=6, d_model=256, nhead=8, dim_feedforward=1024, length=128, hashed=True)
DEEP_ENCODER_CASES = [
    EncoderCase("deep_post_relu_kpm", batch=2, key_padding_mask=True, **DEEP),
    EncoderCase("deep_pre_gelu_final_norm_float_mask", activation="gelu", norm_first=True,
                final_norm=True, batch=1, src_mask="float", **DEEP),
]

_MASK64 = (1 << 64) - 1


def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    return h


def splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 counters (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hashed_parameter(name: str, shape) -> torch.Tensor:
    """The deterministic parameters of the deep-encoder fixtures, also implemented by
    tests/support/hashed_parameters.hpp. Element k (row-major) of tensor `name` is
        u = (splitmix64(fnv1a64(name) + k mod 2^64) >> 11) * 2^-53     in [0, 1)
        value = center + scale * (2u - 1)                               (float64)
    with (center, scale) = (1, 0.2) for LayerNorm weights (names ending in norm*.weight),
    (0, 0.1) for biases, and (0, sqrt(3 / fan_in)) for weight matrices (variance 1 / fan_in,
    which keeps activations O(1) through the layers)."""
    count = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + np.arange(count, dtype=np.uint64)
        u = (splitmix64(z) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    last = name.split(".")[-2] if "." in name else ""
    if name.endswith(".weight") and last.startswith("norm"):
        center, scale = 1.0, 0.2
    elif name.endswith("bias"):
        center, scale = 0.0, 0.1
    else:
        center, scale = 0.0, float(np.sqrt(3.0 / shape[-1]))
    return torch.from_numpy(center + scale * (2.0 * u - 1.0)).reshape(shape)


def make_encoder(case: EncoderCase, seed: int) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(case.d_model, case.nhead, case.dim_feedforward,
                                       dropout=0.0, activation=activation_module(case.activation),
                                       batch_first=True, norm_first=case.norm_first,
                                       dtype=torch.float64)
    norm = nn.LayerNorm(case.d_model, dtype=torch.float64) if case.final_norm else None
    encoder = nn.TransformerEncoder(layer, case.num_layers, norm=norm,
                                    enable_nested_tensor=False)
    if case.hashed:
        with torch.no_grad():
            for name, p in encoder.named_parameters():
                p.copy_(hashed_parameter(name, tuple(p.shape)))
    else:
        perturb(encoder, seed)
    return encoder


def encoder_by_layers(encoder: nn.TransformerEncoder, case: EncoderCase, src, mask, padding):
    """docs/math.md section 2's residual stack written out layer by layer:
    x_{l+1} = layer_l(x_l) + lambda_l (x_0 - x_l), then the final norm. Also returns each
    layer's per-head attention maps (B x H x L x L)."""
    lambdas = case.fidelity_lambda
    if len(lambdas) == 1:
        lambdas = lambdas * case.num_layers
    x, maps = src, []
    for l, layer in enumerate(encoder.layers):
        attn_in = layer.norm1(x) if case.norm_first else x
        _, w = layer.self_attn(attn_in, attn_in, attn_in, attn_mask=mask,
                               key_padding_mask=padding, need_weights=True,
                               average_attn_weights=False)
        maps.append(w.detach())
        y = run_slow_path(layer, x, src_mask=mask, src_key_padding_mask=padding)
        if case.residual == "fidelity":
            y = y + lambdas[l] * (src - x)
        x = y
    if encoder.norm is not None:
        x = encoder.norm(x).detach()
    return x, maps


def encoder_case(case: EncoderCase, dtype, store_parameters: bool) -> Tensors:
    seed = seed_of(case.name)
    encoder = make_encoder(case, seed)
    g = torch.Generator().manual_seed(seed + 1)
    src, padding, mask = make_inputs(case.batch, case.length, case.d_model,
                                     case.key_padding_mask, case.src_mask, g)
    encoder, src = copy.deepcopy(encoder).to(dtype).eval(), src.to(dtype)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    output, maps = encoder_by_layers(encoder, case, src, mask, padding)
    if case.residual == "standard":  # the loop above is nn.TransformerEncoder itself
        expected = run_slow_path(encoder, src, mask=mask, src_key_padding_mask=padding)
        assert_close(output, expected, f"{case.name} layer by layer")
        output = expected
    p = case.name + "."
    tensors = state_dict_of(encoder, p) if store_parameters else {}
    store_inputs(tensors, p, src, padding, mask, case.src_mask)
    tensors[p + "output"] = output
    if store_parameters:
        for l, w in enumerate(maps):
            tensors[f"{p}weights.{l}"] = w
    return tensors


@fixture("encoder")
def encoder() -> FixtureFiles:
    files = {}
    for suffix, dtype in DTYPES.items():
        tensors: Tensors = {}
        for case in ENCODER_CASES:
            tensors.update(encoder_case(case, dtype, store_parameters=True))
        files[f"encoder_{suffix}.safetensors"] = (tensors, cases_metadata(ENCODER_CASES))
    return files


@fixture("encoder_deep")
def encoder_deep() -> FixtureFiles:
    files = {}
    for suffix, dtype in DTYPES.items():
        tensors: Tensors = {}
        for case in DEEP_ENCODER_CASES:
            tensors.update(encoder_case(case, dtype, store_parameters=False))
        # A few hashed values, so the C++ side can check its formula on its own.
        probe = hashed_parameter("layers.3.linear1.weight", (1024, 256)).reshape(-1)[:8]
        tensors["hash_probe.layers.3.linear1.weight"] = probe
        files[f"encoder_deep_{suffix}.safetensors"] = (tensors,
                                                       cases_metadata(DEEP_ENCODER_CASES))
    return files


# ----------------------------------------------------------------------------------------------
# `attnlens encode` round trip (files under cli/): a freshly built random encoder exported with
# examples/export_pytorch.py, its input file, and PyTorch's output and per-layer maps.

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
import export_pytorch  # noqa: E402


@dataclasses.dataclass(frozen=True)
class EncodeCliCase:
    encoder: EncoderCase
    double: bool = False  # weights, inputs and expected values in float64 (--double)


ENCODE_CLI_CASES = [
    EncodeCliCase(EncoderCase("encode_post_relu_masks", 2, 32, 4, 64, key_padding_mask=True,
                              src_mask="bool", length=10)),
    EncodeCliCase(EncoderCase("encode_pre_gelu_norm_double", 3, 24, 3, 48, "gelu",
                              norm_first=True, final_norm=True, src_mask="float", length=9),
                  double=True),
]


def encode_cli_fixture(cli: EncodeCliCase) -> FixtureFiles:
    case = cli.encoder
    dtype = torch.float64 if cli.double else torch.float32
    seed = seed_of(case.name)
    encoder = copy.deepcopy(make_encoder(case, seed)).to(dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    src, padding, mask = make_inputs(case.batch, case.length, case.d_model,
                                     case.key_padding_mask, case.src_mask, g)
    src = src.to(dtype)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    output = export_pytorch.pytorch_output(encoder, src, padding, mask)
    by_layers, maps = encoder_by_layers(encoder, case, src, mask, padding)
    assert_close(by_layers, output, f"{case.name} layer by layer")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        export_pytorch.export_encoder(encoder, model, dtype)
        export_pytorch.export_inputs(Path(tmp) / "input.safetensors", encoder, src, padding,
                                     mask, dtype)
        files = {f"cli/{case.name}/config.json": (model / "config.json").read_bytes(),
                 f"cli/{case.name}/model.safetensors": (model / "model.safetensors").read_bytes(),
                 f"cli/{case.name}_input.safetensors":
                     (Path(tmp) / "input.safetensors").read_bytes()}
    expected = {"output": output}
    for l, w in enumerate(maps):
        expected[f"layers.{l}.weights"] = w
    metadata = base_metadata()
    metadata["double"] = "true" if cli.double else "false"
    files[f"cli/{case.name}_expected.safetensors"] = (expected, metadata)
    return files


for _cli_case in ENCODE_CLI_CASES:
    fixture(f"cli/{_cli_case.encoder.name}")(functools.partial(encode_cli_fixture, _cli_case))


# ----------------------------------------------------------------------------------------------
# Vision transformer (vit_{f32,f64}.safetensors), against a ViT written here with timm's module
# structure and state_dict names (timm is not in Debian): patch_embed.proj (F.conv2d patches),
# cls_token, pos_embed, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm,
# head, CLS or mean pooling; its attention is written out (q k^T / sqrt(d), softmax, V), not
# nn.MultiheadAttention, and a block may also be post-norm (hand-written PyTorch ViTs).


@dataclasses.dataclass(frozen=True)
class VitCase:
    name: str
    image_height: int
    image_width: int
    patch_size: int
    in_chans: int
    num_classes: int
    d_model: int
    nhead: int
    dim_feedforward: int
    num_layers: int
    activation: str = "gelu"
    norm_first: bool = True
    final_norm: bool = True
    class_token: bool = True
    position: str = "learned"  # "learned" | "none"
    pooling: str = "token"     # "token" | "mean"
    batch: int = 2
    relative: str = "none"     # "none" | "quadratic" | "learned_2d", every block
    max_position: int = 0      # learned_2d: offsets per axis (0: max(grid height, width))
    relative_dim: int = 0      # learned_2d: table width (0: head width)
    layer_norm_eps: float = 1e-5


VIT_CASES = [
    VitCase("vit00_cls_learned_token", 8, 8, 4, 3, 5, 16, 2, 32, 2, layer_norm_eps=1e-6),
    VitCase("vit01_nocls_none_mean_post", 12, 8, 4, 1, 3, 12, 3, 24, 2, activation="relu",
            norm_first=False, final_norm=False, class_token=False, position="none",
            pooling="mean"),
    VitCase("vit02_cls_learned_mean_features", 6, 9, 3, 2, 0, 8, 2, 16, 3, pooling="mean"),
    VitCase("vit03_cls_learned_quadratic", 8, 8, 2, 2, 4, 16, 4, 32, 2, relative="quadratic"),
    VitCase("vit04_nocls_learned_2d_post", 6, 12, 3, 1, 3, 12, 3, 24, 2, activation="relu",
            norm_first=False, class_token=False, position="none", pooling="mean",
            relative="learned_2d", max_position=5, relative_dim=6),
    VitCase("vit05_cls_learned_2d_default_sizes", 9, 6, 3, 1, 2, 8, 2, 16, 1,
            relative="learned_2d"),
]


def vit_relative_bias(case: VitCase, attn: nn.Module, prefix: int, grid) -> torch.Tensor:
    """H x L x L domain term of one block (docs/math.md section 3, written with torch operations in
    oracles/positions.py), from the block's parameters in float64, rounded to their dtype; the
    CLS token (no position) gets 0."""
    from oracles import positions
    tokens = positions.grid_positions(grid[0], grid[1], prefix)
    if case.relative == "quadratic":
        bias = positions.quadratic_bias(attn.alpha.double(), attn.center_shift.double(), tokens,
                                        tokens)
    else:
        max_position = case.max_position or max(grid)
        bias = positions.learned_2d_bias(
            attn.row_embeddings.weight.double(), attn.col_embeddings.weight.double(),
            attn.head_keys_row.weight.double(), attn.head_keys_col.weight.double(), max_position,
            tokens, tokens)
    return bias.to(attn.qkv.weight.dtype)


class VitAttention(nn.Module):
    """timm's Attention: qkv (E -> 3E, split as (3, heads, head_dim)), softmax(q k^T / sqrt(d)
    + bias) v per head, proj. With `variant` (oracles/variants.py's settings) the attention is
    variants.variant_forward instead, in float64, on the same qkv and proj, the block's own
    parameters (rho, fourier_r) and the relative bias added to the log kernel."""

    def __init__(self, e: int, heads: int, variant: Optional[dict] = None):
        super().__init__()
        self.heads = heads
        self.variant = variant
        self.qkv = nn.Linear(e, 3 * e, dtype=torch.float64)
        self.proj = nn.Linear(e, e, dtype=torch.float64)

    def forward(self, x, bias=None, first=None, previous=None):
        """The output and the block's values V^l (B x N x E; None for softmax, where no block
        reads them). first / previous: V^0 and V^{l-1} for NeuTRENO and elliptical."""
        if self.variant is not None:
            return self.variant_forward(x, bias, first, previous)
        b, n, e = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B x H x N x d each
        scores = (q * (e // self.heads) ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, e)), None

    def variant_forward(self, x, bias, first, previous):
        from oracles import variants
        if x.dtype != torch.float64:
            raise TypeError("the variant oracle computes in float64")
        # qkv's rows are q, k, v, each head's d rows in order: nn.MultiheadAttention's in_proj.
        params = {"in_proj_weight": self.qkv.weight, "in_proj_bias": self.qkv.bias,
                  "out_proj.weight": self.proj.weight, "out_proj.bias": self.proj.bias,
                  **dict(self.named_parameters(recurse=False))}
        key_keep = torch.ones(x.shape[:2], dtype=torch.bool)
        out, _, values = variants.variant_forward(self.variant, params, x, key_keep, first,
                                                  previous, num_heads=self.heads,
                                                  score_bias=bias)
        return out, values


class VitBlock(nn.Module):
    """timm's Block (norm1, attn, norm2, mlp.fc1 / act / mlp.fc2), pre-norm as timm or
    post-norm as a hand-written nn.TransformerEncoderLayer ViT."""

    def __init__(self, case: VitCase, variant: Optional[dict] = None):
        super().__init__()
        e = case.d_model
        self.norm_first = case.norm_first
        self.norm1 = nn.LayerNorm(e, eps=case.layer_norm_eps, dtype=torch.float64)
        self.attn = VitAttention(e, case.nhead, variant)
        self.norm2 = nn.LayerNorm(e, eps=case.layer_norm_eps, dtype=torch.float64)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(e, case.dim_feedforward, dtype=torch.float64)
        self.mlp.fc2 = nn.Linear(case.dim_feedforward, e, dtype=torch.float64)
        self.act = activation_module(case.activation)

    def mlp_forward(self, x):
        return self.mlp.fc2(self.act(self.mlp.fc1(x)))

    def forward(self, x, bias=None, first=None, previous=None):
        """The block's output and its attention's values (VitAttention.forward)."""
        if self.norm_first:
            attended, values = self.attn(self.norm1(x), bias, first, previous)
            x = x + attended
            return x + self.mlp_forward(self.norm2(x)), values
        attended, values = self.attn(x, bias, first, previous)
        x = self.norm1(x + attended)
        return self.norm2(x + self.mlp_forward(x)), values


class ReferenceViT(nn.Module):
    """attention, residual: config.json's objects (docs/model-format.md) of an attention variant
    in every block (on the patch grid: a bilateral domain kernel's leading tokens are the CLS
    token, as attnlens's ViT sets them) and of a fidelity residual around the blocks, or None
    (softmax written out; standard residual). Their parameters are registered last, under
    blocks.{i}.attn. after the relative tables (rho, fourier_r) and at the top after the head
    (fidelity_lambda), so that the cases without them draw the same numbers as before."""

    def __init__(self, case: VitCase, attention: Optional[dict] = None,
                 residual: Optional[dict] = None):
        super().__init__()
        e, p = case.d_model, case.patch_size
        n = (case.image_height // p) * (case.image_width // p)
        self.case = case
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(case.in_chans, e, p, stride=p, dtype=torch.float64)
        prefix = 1 if case.class_token else 0
        if case.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, e, dtype=torch.float64))
        if case.position == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, prefix + n, e, dtype=torch.float64))
        self.grid = (case.image_height // p, case.image_width // p)
        variant = None
        if attention is not None:
            variant = dict(variant_case(attention), grid=[*self.grid, prefix])
        self.blocks = nn.ModuleList(VitBlock(case, variant) for _ in range(case.num_layers))
        self.norm = (nn.LayerNorm(e, eps=case.layer_norm_eps, dtype=torch.float64)
                     if case.final_norm else None)
        if case.num_classes:
            self.head = nn.Linear(e, case.num_classes, dtype=torch.float64)
        h = case.nhead
        for l, block in enumerate(self.blocks):  # the relative tables live under blocks.{i}.attn.
            attn = block.attn
            if case.relative == "quadratic":
                attn.alpha = nn.Parameter(0.3 + 0.2 * torch.rand(h, dtype=torch.float64))
                attn.center_shift = nn.Parameter(torch.randn(h, 2, dtype=torch.float64))
            elif case.relative == "learned_2d":
                rows = 2 * (case.max_position or max(self.grid)) - 1
                dim = case.relative_dim or e // h
                attn.row_embeddings = nn.Embedding(rows, dim, dtype=torch.float64)
                attn.col_embeddings = nn.Embedding(rows, dim, dtype=torch.float64)
                attn.head_keys_row = nn.Linear(dim, h, bias=False, dtype=torch.float64)
                attn.head_keys_col = nn.Linear(dim, h, bias=False, dtype=torch.float64)
            # Far from their inits, as in the blocks_model encoders (add_position_parameters).
            if variant is not None and variant["type"] == "bilateral":
                attn.rho = nn.Parameter(torch.linspace(0.5, 2.9, h, dtype=torch.float64) + 0.2 * l)
            elif variant is not None and variant["type"] == "fourier":
                attn.fourier_r = nn.Parameter(torch.tensor([0.6 + 0.3 * l], dtype=torch.float64))
        self.residual = residual or {"type": "standard"}
        if self.residual.get("learned"):
            self.fidelity_lambda = nn.Parameter(
                torch.full((case.num_layers,), 0.3, dtype=torch.float64))

    def fidelity_lambdas(self):
        if self.residual.get("learned"):
            return self.fidelity_lambda
        lambdas = self.residual["lambda"]
        return lambdas * len(self.blocks) if len(lambdas) == 1 else lambdas

    def forward(self, images):
        w = self.patch_embed.proj
        x = F.conv2d(images, w.weight, w.bias, stride=self.case.patch_size)  # B x E x h x w
        x = x.flatten(2).transpose(1, 2)
        prefix = 0
        if self.case.class_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            prefix = 1
        if self.case.position == "learned":
            x = x + self.pos_embed
        # docs/math.md section 2: x_{l+1} = block_l(x_l) + lambda_l (x_0 - x_l) with a fidelity
        # residual; block l's variant sees V^0 (NeuTRENO) and V^{l-1} (elliptical).
        x0, first, previous = x, None, None
        for l, block in enumerate(self.blocks):
            bias = None
            if self.case.relative != "none":  # H x L x L, the same for every image
                bias = vit_relative_bias(self.case, block.attn, prefix, self.grid)
            y, values = block(x, bias, first, previous)
            if l == 0:
                first = values
            previous = values
            if self.residual["type"] == "fidelity":
                y = y + self.fidelity_lambdas()[l] * (x0 - x)
            x = y
        if self.norm is not None:
            x = self.norm(x)
        pooled = x[:, 0] if self.case.pooling == "token" else x[:, prefix:].mean(dim=1)
        return (self.head(pooled) if self.case.num_classes else pooled), x


def make_vit_case(case: VitCase, dtype, attention: Optional[dict] = None,
                  residual: Optional[dict] = None):
    """The case's ReferenceViT (seeded, perturbed, in eval mode) and images (B x C x H x W),
    drawn in float64 and rounded to dtype. Also used by oracles/gradients.py."""
    seed = seed_of(case.name)
    torch.manual_seed(seed)
    model = ReferenceViT(case, attention, residual)
    perturb(model, seed)
    with torch.no_grad():  # perturb() adds to zero-initialised tokens: make them O(0.5)
        for name in ("cls_token", "pos_embed"):
            if hasattr(model, name):
                getattr(model, name).mul_(10.0)
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(case.batch, case.in_chans, case.image_height, case.image_width,
                         generator=g, dtype=torch.float64)
    return copy.deepcopy(model).to(dtype).eval(), images.to(dtype)


def vit_case(case: VitCase, dtype) -> Tensors:
    model, images = make_vit_case(case, dtype)
    with torch.no_grad():
        logits, tokens = model(images)
    p = case.name + "."
    tensors = state_dict_of(model, p)
    tensors[p + "images"], tensors[p + "logits"], tensors[p + "tokens"] = images, logits, tokens
    return tensors


@fixture("vit")
def vit() -> FixtureFiles:
    files = {}
    for suffix, dtype in DTYPES.items():
        tensors: Tensors = {}
        for case in VIT_CASES:
            tensors.update(vit_case(case, dtype))
        files[f"vit_{suffix}.safetensors"] = (tensors, cases_metadata(VIT_CASES))
    return files


# ----------------------------------------------------------------------------------------------
# Encoders with positions, learned residuals and attention variants in the model format (files
# blocks_model_<case>/{config.json,model.safetensors}, blocks_model_<case>_{input,expected}
# .safetensors): nn.TransformerEncoder's layers carry the extra parameters under the names of
# docs/model-format.md, exported with examples/export_pytorch.py; the expected output is the
# stack written out with torch operations (docs/math.md sections 1-3, the encodings' formulas from
# oracles/positions.py, the variants' from oracles/variants.py), checked against PyTorch's own
# layers wherever PyTorch can run it.


@dataclasses.dataclass(frozen=True)
class ModelCase:
    name: str
    position: dict  # config.json's "position" object
    num_layers: int = 2
    d_model: int = 16
    nhead: int = 2
    dim_feedforward: int = 32
    activation: str = "relu"
    norm_first: bool = False
    final_norm: bool = False
    residual: Optional[dict] = None  # config.json's "residual" object (default standard)
    batch: int = 2
    length: int = 7
    key_padding_mask: bool = False
    double: bool = False
    # config.json's "attention" object (None: not written by the export, i.e. softmax). With a
    # variant the whole stack is computed in float64 from the parameters and inputs rounded to
    # the case's dtype, so a float case's expected output carries only its final rounding.
    attention: Optional[dict] = None


NO_POSITION = {"type": "none"}

MODEL_CASES = [
    ModelCase("t5", {"type": "t5", "num_buckets": 8, "max_distance": 16, "bidirectional": True},
              length=12),
    ModelCase("alibi_kpm", {"type": "alibi", "causal": False}, nhead=3, d_model=12,
              activation="gelu", norm_first=True, final_norm=True, key_padding_mask=True,
              double=True),
    ModelCase("learned_fidelity_learned", {"type": "learned", "max_len": 10},
              residual={"type": "fidelity", "learned": True}, num_layers=3),
    ModelCase("sinusoidal_fidelity", {"type": "sinusoidal", "base": 10000.0},
              residual={"type": "fidelity", "lambda": [0.3, 0.5]}, norm_first=True, double=True),
    ModelCase("shaw", {"type": "shaw", "max_relative_position": 3}, nhead=4,
              activation="gelu_tanh", key_padding_mask=True),
    ModelCase("transformer_xl", {"type": "transformer_xl"}, norm_first=True, final_norm=True,
              double=True),
    ModelCase("rope_half", {"type": "rope", "base": 100.0, "pairing": "half"}, nhead=2,
              double=True),
    ModelCase("rope_interleaved", {"type": "rope"}, d_model=24, nhead=3, key_padding_mask=True),
    # Attention variants (docs/math.md section 2), alone or with an additive / rotary position.
    ModelCase("twicing_kpm", NO_POSITION, attention={"type": "twicing"}, key_padding_mask=True),
    ModelCase("boost2_alibi", {"type": "alibi", "causal": False},
              attention={"type": "softmax", "boost": 2}, nhead=4, norm_first=True,
              final_norm=True, double=True),
    ModelCase("twicing_t5_kpm",
              {"type": "t5", "num_buckets": 8, "max_distance": 16, "bidirectional": True},
              attention={"type": "twicing"}, activation="gelu", length=9, key_padding_mask=True),
    ModelCase("bilateral_gaussian_kpm", NO_POSITION,
              attention={"type": "bilateral", "kernel": "gaussian"}, nhead=4, length=9,
              key_padding_mask=True),
    ModelCase("bilateral_laplacian_leading_twicing", NO_POSITION,
              attention={"type": "bilateral", "kernel": "laplacian", "leading": 1, "boost": 1,
                         "sigma_init": 2.0},
              norm_first=True, final_norm=True, double=True),
    ModelCase("bilateral_rope", {"type": "rope"}, attention={"type": "bilateral"}, d_model=24,
              nhead=3, activation="gelu"),
    ModelCase("kde", NO_POSITION, attention={"type": "kde"}, activation="gelu"),
    ModelCase("robust_kde_kpm", NO_POSITION, attention={"type": "robust_kde", "huber_a": 0.3},
              norm_first=True, key_padding_mask=True, double=True),
    ModelCase("fourier", NO_POSITION, attention={"type": "fourier"}),
    ModelCase("elliptical_kpm", NO_POSITION, attention={"type": "elliptical", "delta": 2.0},
              num_layers=3, key_padding_mask=True),
    ModelCase("neutreno", NO_POSITION, attention={"type": "neutreno", "lambda": 0.6},
              num_layers=3, norm_first=True, final_norm=True, double=True),
]


def variant_case(attention: dict) -> dict:
    """config.json's "attention" object (docs/model-format.md, with its defaults) -> the case
    settings of oracles/variants.py's variant_forward."""
    rest = dict(attention)
    kind = rest.pop("type")
    if kind == "twicing":  # softmax with boost 1; takes no other key
        out = dict(type="softmax", boost=1)
    else:
        out = dict(type=kind, boost=rest.pop("boost", 0))
    if kind == "bilateral":
        out["domain"] = rest.pop("kernel", "gaussian")
        out["leading"] = rest.pop("leading", 0)
        rest.pop("sigma_init", None)  # the init of rho only; the file holds rho
    elif kind == "robust_kde":
        out["huber_a"] = rest.pop("huber_a", 0.2)
    elif kind == "fourier":
        out["fourier_epsilon"] = rest.pop("epsilon", 1e-6)
    elif kind == "elliptical":
        out["elliptical_delta"] = rest.pop("delta", 5.0)
    elif kind == "neutreno":
        out["neutreno_lambda"] = rest.pop("lambda", 0.6)
    if rest:
        raise ValueError(f"attention {attention}: keys {sorted(rest)} are not read by {kind}")
    return out


def add_position_parameters(encoder: nn.TransformerEncoder, case: ModelCase) -> None:
    """Registers the encoding's, the attention variant's and a learned residual's parameters
    under their documented names, so that encoder.state_dict() holds them."""
    e, h = case.d_model, case.nhead
    d, kind, f64 = e // h, case.position["type"], torch.float64
    variant = (case.attention or {"type": "softmax"})["type"]
    for l, layer in enumerate(encoder.layers):
        attn = layer.self_attn
        if kind == "t5":
            attn.relative_attention_bias = nn.Embedding(case.position["num_buckets"], h,
                                                        dtype=f64)
        elif kind == "shaw":
            rows = 2 * case.position["max_relative_position"] + 1
            attn.relative_keys = nn.Parameter(torch.randn(rows, d, dtype=f64))
            attn.relative_values = nn.Parameter(torch.randn(rows, d, dtype=f64))
        elif kind == "transformer_xl":
            attn.r_w_bias = nn.Parameter(torch.zeros(h, d, dtype=f64))
            attn.r_r_bias = nn.Parameter(torch.zeros(h, d, dtype=f64))
            attn.r_net = nn.Linear(e, h * d, bias=False, dtype=f64)
        # Far from their inits (sigma 4, R 1) and different per head and layer: sigma_h from
        # about 1 (local) to 3 (wide), R 0.6 .. 0.9 (perturb() adds a little noise to both).
        if variant == "bilateral":
            attn.rho = nn.Parameter(torch.linspace(0.5, 2.9, h, dtype=f64) + 0.2 * l)
        elif variant == "fourier":
            attn.fourier_r = nn.Parameter(torch.tensor([0.6 + 0.3 * l], dtype=f64))
    if kind == "learned":
        encoder.position_embeddings = nn.Embedding(case.position["max_len"], e, dtype=f64)
    if case.residual and case.residual.get("learned"):
        encoder.fidelity_lambda = nn.Parameter(torch.full((case.num_layers,), 0.3, dtype=f64))


def attention_with_position(attn: nn.MultiheadAttention, x, case: ModelCase, padding):
    """nn.MultiheadAttention's self-attention (docs/math.md section 1) with the case's relative
    encoding, written with torch operations; returns B x L x E."""
    from oracles import positions
    B, L, E = x.shape
    H = attn.num_heads
    d, kind, pos = E // H, case.position["type"], case.position

    def heads(y):
        return y.reshape(B, L, H, d).transpose(1, 2)

    q, k, v = (heads(t) for t in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    if kind == "rope":
        pairing = pos.get("pairing", "interleaved")
        q = positions.rope_rotate(q, pos.get("base", 10000.0), pairing)
        k = positions.rope_rotate(k, pos.get("base", 10000.0), pairing)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if kind == "shaw":
        idx = positions.clipped(L, L, pos["max_relative_position"])
        a_k, a_v = attn.relative_keys[idx], attn.relative_values[idx]  # L x L x d
        scores = scores + torch.einsum("bhld,lsd->bhls", q, a_k) / math.sqrt(d)
    elif kind == "transformer_xl":
        scores = scores + torch.stack([
            positions.transformer_xl_bias(q[b], k[b], attn.r_w_bias, attn.r_r_bias,
                                          attn.r_net.weight, L, L, E) for b in range(B)])
    elif kind == "t5":
        scores = scores + positions.t5_bias(attn.relative_attention_bias.weight, L, L,
                                            pos["bidirectional"], pos["max_distance"])
    elif kind == "alibi":
        scores = scores + positions.alibi_bias(H, L, L, pos["causal"]).to(x.dtype)
    if padding is not None:
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    weights = scores.softmax(-1)
    out = weights @ v
    if kind == "shaw":
        out = out + torch.einsum("bhls,lsd->bhld", weights, a_v)
    out = out.transpose(1, 2).reshape(B, L, E)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def additive_position_bias(attn: nn.MultiheadAttention, case: ModelCase, length: int):
    """H x L x L score bias of an additive relative encoding (t5, alibi), else None."""
    from oracles import positions
    kind, pos = case.position["type"], case.position
    if kind == "t5":
        return positions.t5_bias(attn.relative_attention_bias.weight, length, length,
                                 pos["bidirectional"], pos["max_distance"])
    if kind == "alibi":
        return positions.alibi_bias(attn.num_heads, length, length, pos["causal"])
    return None


def attention_variant(attn: nn.MultiheadAttention, x, case: ModelCase, padding, first,
                      previous):
    """Self-attention with the case's variant (oracles/variants.py's variant_forward) and
    relative position (t5 / alibi bias added to the log kernel, RoPE rotating q and k), in
    float64. first / previous: V^0 and V^{l-1} (B x L x E) or None in layer 0. Returns the
    output and this layer's values V^l (B x L x E)."""
    from oracles import positions, variants
    if x.dtype != torch.float64:
        raise TypeError("the variant oracle computes in float64")
    B, L, _ = x.shape
    kind, pos = case.position["type"], case.position
    if kind in ("shaw", "transformer_xl") or (kind == "alibi" and pos["causal"]):
        raise NotImplementedError(f"{case.name}: {kind} with an attention variant")
    settings = variant_case(case.attention)
    rotate = None
    if kind == "rope":
        base, pairing = pos.get("base", 10000.0), pos.get("pairing", "interleaved")
        rotate = functools.partial(positions.rope_rotate, base=base, pairing=pairing)
    key_keep = torch.ones(B, L, dtype=torch.bool) if padding is None else ~padding
    params = dict(attn.named_parameters())
    out, _, values = variants.variant_forward(
        settings, params, x, key_keep, first, previous, num_heads=attn.num_heads,
        score_bias=additive_position_bias(attn, case, L), rotate=rotate)
    if settings["type"] in ("softmax", "bilateral", "neutreno") and kind != "rope":
        check_softmax_family(attn, x, case, padding, first, out, values)
    return out, values


def check_softmax_family(attn: nn.MultiheadAttention, x, case: ModelCase, padding, first,
                         out, values) -> None:
    """For the variants whose kernel is softmax's times a domain kernel: PyTorch's
    nn.MultiheadAttention, given the domain and position terms as a per-head float attn_mask,
    gives A; boosting by iteration (z_0 = A V, z_{m+1} = z_m + A (V - z_m)) and NeuTRENO's
    term on it must give the variant's output."""
    from oracles import variants
    B, L, E = x.shape
    H = attn.num_heads
    settings = variant_case(case.attention)
    bias = additive_position_bias(attn, case, L)
    bias = torch.zeros(H, L, L, dtype=x.dtype) if bias is None else bias
    if settings["type"] == "bilateral":
        bias = bias + variants.domain_kernel(settings, F.softplus(attn.rho), L)
    _, a = attn(x, x, x, attn_mask=bias.repeat(B, 1, 1), key_padding_mask=padding,
                need_weights=True, average_attn_weights=False)
    v = variants.split_heads(values, H)
    z = variants.boosted_by_iteration(a, v, settings["boost"])
    if settings["type"] == "neutreno" and first is not None:
        z = z + settings["neutreno_lambda"] * (variants.split_heads(first, H) - v)
    expected = F.linear(variants.merge_heads(z), attn.out_proj.weight, attn.out_proj.bias)
    assert_close(out, expected, f"{case.name}: {settings['type']} against nn.MultiheadAttention")


def layer_with_position(layer: nn.TransformerEncoderLayer, x, case: ModelCase, padding,
                        first=None, previous=None):
    """nn.TransformerEncoderLayer's composition (both norm_first) around
    attention_with_position, or attention_variant when the case has an attention object.
    Returns the layer's output and its values V^l (None without a variant)."""
    def ff(y):
        return layer.linear2(activation_module(case.activation)(layer.linear1(y)))

    def sa(y):
        if case.attention is None:
            return attention_with_position(layer.self_attn, y, case, padding), None
        return attention_variant(layer.self_attn, y, case, padding, first, previous)

    if case.norm_first:
        attended, values = sa(layer.norm1(x))
        x = x + attended
        return x + ff(layer.norm2(x)), values
    attended, values = sa(x)
    x = layer.norm1(x + attended)
    return layer.norm2(x + ff(x)), values


def encoder_with_position(encoder: nn.TransformerEncoder, case: ModelCase, src, padding):
    """x_0 = src + absolute positions; x_{l+1} = layer_l(x_l) + lambda_l (x_0 - x_l); final
    norm (docs/math.md sections 2 and 3). Layer l's variant sees V^0 (NeuTRENO) and V^{l-1}
    (elliptical), the values of layers 0 and l - 1 (none in layer 0)."""
    from oracles import positions
    B, L, E = src.shape
    kind = case.position["type"]
    x0 = src
    if kind == "learned":
        x0 = src + encoder.position_embeddings.weight[:L]
    elif kind == "sinusoidal":
        x0 = src + positions.sinusoidal_table(L, E, case.position["base"]).to(src.dtype)
    residual = case.residual or {"type": "standard"}
    if residual.get("learned"):
        lambdas = encoder.fidelity_lambda
    else:
        lambdas = residual.get("lambda", [0.0] * case.num_layers)
    x, first, previous = x0, None, None
    for l, layer in enumerate(encoder.layers):
        y, values = layer_with_position(layer, x, case, padding, first, previous)
        if l == 0:
            first = values
        previous = values
        x = y + lambdas[l] * (x0 - x) if residual["type"] == "fidelity" else y
    return encoder.norm(x) if encoder.norm is not None else x


def check_against_pytorch_layers(encoder, case: ModelCase, src, padding) -> None:
    """Where PyTorch's own modules can compute the layer (no encoding, or an additive one as a
    per-head float src_mask), they agree with layer_with_position; with a variant, also when
    the variant path is given plain softmax."""
    from oracles import positions
    B, L, _ = src.shape
    layer = encoder.layers[0]
    kind, pos = case.position["type"], case.position
    for attention in ([None] if case.attention is None else [None, {"type": "softmax"}]):
        own = dataclasses.replace(case, attention=attention)
        plain = dataclasses.replace(own, position={"type": "none"})
        expected = run_slow_path(layer, src, src_key_padding_mask=padding)
        assert_close(layer_with_position(layer, src, plain, padding)[0], expected,
                     f"{case.name}: layer without positions, attention {attention}")
        if kind in ("t5", "alibi"):
            if kind == "t5":
                bias = positions.t5_bias(layer.self_attn.relative_attention_bias.weight, L, L,
                                         pos["bidirectional"], pos["max_distance"])
            else:
                bias = positions.alibi_bias(case.nhead, L, L, pos["causal"]).to(src.dtype)
            expected = run_slow_path(layer, src, src_mask=bias.repeat(B, 1, 1),
                                     src_key_padding_mask=padding)
            assert_close(layer_with_position(layer, src, own, padding)[0], expected,
                         f"{case.name}: layer with positions, attention {attention}")


def check_variant_stack(encoder, case: ModelCase, src, padding, output) -> None:
    """The variant changes the stack's output (it is not silently softmax); NeuTRENO with
    lambda 0 is the softmax stack; with no position and the standard residual the softmax
    variant path is nn.TransformerEncoder itself."""
    settings = variant_case(case.attention)
    softmax = dataclasses.replace(case, attention={"type": "softmax"})
    plain = encoder_with_position(encoder, softmax, src, padding)
    difference = (output - plain).abs().max().item()
    if difference < 1e-2:
        raise AssertionError(f"{case.name}: the variant moves the output by {difference:g} only")
    if settings["type"] == "neutreno":
        off = dict(case.attention, **{"lambda": 0.0})
        assert_close(encoder_with_position(encoder, dataclasses.replace(case, attention=off),
                                           src, padding),
                     encoder_with_position(encoder, dataclasses.replace(
                         case, attention={"type": "softmax", "boost": settings["boost"]}),
                         src, padding),
                     f"{case.name}: NeuTRENO with lambda 0 against softmax")
    if case.position["type"] == "none" and case.residual is None:
        expected = run_slow_path(encoder, src, src_key_padding_mask=padding)
        assert_close(plain, expected, f"{case.name}: softmax stack against nn.TransformerEncoder")


def make_model_case(case: ModelCase):
    """The case's encoder (perturbed, with its position, variant and residual parameters,
    rounded to the case's dtype, in eval mode), src (B x L x E, rounded) and padding (B x L
    bool, True = ignore, or None): the numbers of the exported files. Also used by
    oracles/gradients.py."""
    dtype = torch.float64 if case.double else torch.float32
    seed = seed_of("model_" + case.name)
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(case.d_model, case.nhead, case.dim_feedforward,
                                       dropout=0.0, activation=activation_module(case.activation),
                                       batch_first=True, norm_first=case.norm_first,
                                       dtype=torch.float64)
    norm = nn.LayerNorm(case.d_model, dtype=torch.float64) if case.final_norm else None
    encoder = nn.TransformerEncoder(layer, case.num_layers, norm=norm, enable_nested_tensor=False)
    add_position_parameters(encoder, case)
    perturb(encoder, seed)
    g = torch.Generator().manual_seed(seed + 1)
    src, padding, _ = make_inputs(case.batch, case.length, case.d_model, case.key_padding_mask,
                                  "none", g)
    if case.key_padding_mask and not bool(padding.any()):
        raise AssertionError(f"{case.name}: no key is padded")
    encoder, src = copy.deepcopy(encoder).to(dtype).eval(), src.to(dtype)
    return encoder, src, padding


def model_case_files(case: ModelCase) -> FixtureFiles:
    dtype = torch.float64 if case.double else torch.float32
    encoder, src, padding = make_model_case(case)
    with torch.no_grad():
        if case.attention is None:
            check_against_pytorch_layers(encoder, case, src, padding)
            output = encoder_with_position(encoder, case, src, padding)
        else:  # in float64 from the rounded numbers
            encoder64, src64 = copy.deepcopy(encoder).double(), src.double()
            check_against_pytorch_layers(encoder64, case, src64, padding)
            output = encoder_with_position(encoder64, case, src64, padding)
            check_variant_stack(encoder64, case, src64, padding, output)
            output = output.to(dtype)
    stem = f"blocks_model_{case.name}"
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        export_pytorch.export_encoder(encoder, model, dtype, position=case.position,
                                      attention=case.attention, residual=case.residual)
        export_pytorch.export_inputs(Path(tmp) / "input.safetensors", encoder, src, padding,
                                     None, dtype)
        files = {f"{stem}/config.json": (model / "config.json").read_bytes(),
                 f"{stem}/model.safetensors": (model / "model.safetensors").read_bytes(),
                 f"{stem}_input.safetensors": (Path(tmp) / "input.safetensors").read_bytes()}
    metadata = base_metadata()
    metadata["double"] = "true" if case.double else "false"
    files[f"{stem}_expected.safetensors"] = ({"output": output.detach()}, metadata)
    return files


@fixture("blocks_model")
def blocks_model() -> FixtureFiles:
    files = {}
    for case in MODEL_CASES:
        files.update(model_case_files(case))
    return files
