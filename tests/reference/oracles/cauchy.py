"""Fixtures for the Cauchy distance kernel (position/cauchy.hpp, the registry's worked example in
docs/architecture.md): S_h(i, j) += -log(1 + (i - j)^2 / s_h^2), written with torch operations,
and applied through PyTorch's own modules as an additive attn_mask / src_mask per head:
nn.MultiheadAttention (the module and `attnlens mha --position cauchy`) and
nn.TransformerEncoderLayer (an encoder read from config.json)."""

from __future__ import annotations

import torch
from torch import nn

from fixturelib import FixtureFiles, base_metadata, fixture, seed_of

F64 = torch.float64


def cauchy_bias(width: torch.Tensor, queries: int, keys: int) -> torch.Tensor:
    """H x L x S: -log(1 + (j - i)^2 / s_h^2), positions 0 .. L-1 and 0 .. S-1."""
    offset = (torch.arange(keys, dtype=F64)[None, :] - torch.arange(queries, dtype=F64)[:, None])
    return -torch.log1p(offset[None] ** 2 / width[:, None, None] ** 2)


def perturbed(module: nn.Module, g: torch.Generator) -> nn.Module:
    """Parameters moved away from PyTorch's initial values (biases not zero, norms not 1)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if name.endswith("bias") or "norm" in name else 0.1
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64))
    return module


@fixture("cauchy")
def cauchy_fixture() -> FixtureFiles:
    g = torch.Generator().manual_seed(seed_of("cauchy"))
    t = {}
    width = 0.5 + 3.0 * torch.rand(3, generator=g, dtype=F64)
    t["bias.width"], t["bias.bias"] = width, cauchy_bias(width, 7, 9)

    # One nn.MultiheadAttention block with the kernel on every head.
    E, H, B, L = 12, 3, 2, 8
    mha = perturbed(nn.MultiheadAttention(E, H, batch_first=True, dtype=F64), g).eval()
    x = torch.randn(B, L, E, generator=g, dtype=F64)
    mask = cauchy_bias(width, L, L).repeat(B, 1, 1)
    with torch.no_grad():
        out, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    for name, value in mha.state_dict().items():
        t[f"mha.{name}"] = value
    t["mha.width"], t["mha.x"], t["mha.output"] = width, x, out

    # A one-layer encoder (post-norm, ReLU) for config.json {"position": {"type": "cauchy"}}.
    layer = perturbed(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                                 dtype=F64), g).eval()
    widths = 0.5 + 3.0 * torch.rand(2, generator=g, dtype=F64)
    x = torch.randn(2, 6, 8, generator=g, dtype=F64)
    with torch.no_grad():
        out = layer(x, src_mask=cauchy_bias(widths, 6, 6).repeat(2, 1, 1))
    for name, value in layer.state_dict().items():
        t[f"encoder.layers.0.{name}"] = value
    t["encoder.layers.0.self_attn.width"], t["encoder.x"], t["encoder.output"] = widths, x, out
    return {"cauchy.safetensors": ({k: v.detach() for k, v in t.items()}, base_metadata())}


@fixture("cli_mha_pos_cauchy")
def cli_mha_pos_cauchy() -> FixtureFiles:
    g = torch.Generator().manual_seed(seed_of("cli_mha_pos_cauchy"))
    E, H, B, L = 16, 4, 2, 9
    mha = perturbed(nn.MultiheadAttention(E, H, batch_first=True, dtype=F64), g).float().eval()
    width = (0.5 + 3.0 * torch.rand(H, generator=g, dtype=F64)).float()
    x = torch.randn(B, L, E, generator=g, dtype=F64).float()
    with torch.no_grad():
        out, _ = mha(x, x, x, attn_mask=cauchy_bias(width.double(), L, L).float().repeat(B, 1, 1),
                     need_weights=False)
    weights = {k: v.detach() for k, v in mha.state_dict().items()}
    weights["width"] = width
    metadata = base_metadata()
    metadata.update({"num_heads": str(H), "position": "cauchy"})
    stem = "cli/mha_pos_cauchy"
    return {f"{stem}_weights.safetensors": (weights, None),
            f"{stem}_input.safetensors": ({"query": x}, None),
            f"{stem}_expected.safetensors": ({"output": out.detach()}, metadata)}
