"""Fixtures for the attention variants of docs/math.md section 2 in MultiHeadAttention: bilateral
self-attention (Gaussian / Laplacian distance on 1-D or 2-D positions), boosting and twicing,
KDE and robust KDE (Huber), FourierFormer, elliptical and NeuTRENO. No PyTorch module exists for
these, so each is written here from docs/math.md's formula with torch operations (dense L x S
matrices, explicit matrix powers for boosting), independently of the C++ code.

Every case computes in float64 from inputs rounded to the file's dtype, so a float fixture's
error is only its final rounding."""

from __future__ import annotations

import json
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from fixturelib import FixtureFiles, Tensors, assert_close, base_metadata, fixture, seed_of

F64 = torch.float64
B, L, E, H = 2, 7, 8, 2  # 7 tokens: a CLS token and a 2 x 3 grid in the grid cases
D = E // H

# name -> settings; every case is self-attention of B x L x E inputs.
CASES: Dict[str, dict] = {
    "twicing": dict(type="softmax", boost=1),
    "boost3": dict(type="softmax", boost=3),
    "bilateral_gaussian_1d": dict(type="bilateral", domain="gaussian"),
    "bilateral_laplacian_1d_cls": dict(type="bilateral", domain="laplacian", leading=1),
    "bilateral_gaussian_grid_twicing": dict(type="bilateral", domain="gaussian",
                                            grid=[2, 3, 1], boost=1),
    "bilateral_laplacian_grid_padded": dict(type="bilateral", domain="laplacian",
                                            grid=[2, 3, 1], key_padding=True),
    "kde": dict(type="kde"),
    "robust_kde": dict(type="robust_kde", huber_a=0.2),
    "robust_kde_twicing": dict(type="robust_kde", huber_a=0.2, boost=1),
    "robust_kde_padded": dict(type="robust_kde", huber_a=0.2, key_padding=True),
    "fourier": dict(type="fourier"),
    "elliptical": dict(type="elliptical", previous=True),
    "elliptical_first_layer": dict(type="elliptical", previous=False),
    "elliptical_padded": dict(type="elliptical", previous=True, key_padding=True),
    "neutreno": dict(type="neutreno", neutreno_lambda=0.6, first=True),
    "neutreno_boost2": dict(type="neutreno", neutreno_lambda=0.4, first=True, boost=2),
}


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B x N x E -> B x H x N x d."""
    return x.reshape(x.shape[0], x.shape[1], num_heads, x.shape[2] // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """B x H x N x d -> B x N x E."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])


def positions_1d(length: int, leading: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """length x 2 positions (i - leading, 0) and which tokens have one."""
    p = torch.zeros(length, 2, dtype=F64)
    p[:, 0] = torch.arange(length, dtype=F64) - leading
    return p, torch.arange(length) >= leading


def positions_grid(length: int, height: int, width: int,
                   leading: int) -> Tuple[torch.Tensor, torch.Tensor]:
    p = torch.zeros(length, 2, dtype=F64)
    for t in range(leading, length):
        cell = t - leading
        p[t] = torch.tensor([cell // width, cell % width], dtype=F64)
    return p, torch.arange(length) >= leading


def domain_kernel(case: dict, sigma: torch.Tensor, length: int) -> torch.Tensor:
    """H x L x L log domain kernel: -|p_i - p_j|^2 / (2 sigma^2) or -|p_i - p_j|_1 / sigma,
    0 where the query or the key has no position."""
    if "grid" in case:
        p, has = positions_grid(length, *case["grid"])
    else:
        p, has = positions_1d(length, case.get("leading", 0))
    delta = p[None, :, :] - p[:, None, :]  # L x L x 2, key minus query
    if case["domain"] == "gaussian":
        term = -(delta ** 2).sum(-1)[None] / (2 * sigma[:, None, None] ** 2)
    else:
        term = -delta.abs().sum(-1)[None] / sigma[:, None, None]
    both = (has[:, None] & has[None, :])[None]
    return torch.where(both, term, torch.zeros_like(term))


def huber_weights(x: torch.Tensor, a: float, key_keep: torch.Tensor,
                  head_dim: int) -> torch.Tensor:
    """B x H x N: docs/math.md's Huber weights of the rows of x (B x H x N x D) under
    kappa(x, y) = exp(-|x - y|^2 / sqrt(d)) (d = head_dim, also for the joint [k; v] rows),
    normalized to sum 1, over each sequence's real keys (key_keep, B x N); padded keys get
    weight 0."""
    w = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for b in range(x.shape[0]):
        real = key_keep[b].bool()
        w[b, :, real] = huber_weights_of_all(x[b, :, real], a, head_dim)
    return w


def huber_weights_of_all(x: torch.Tensor, a: float, head_dim: int) -> torch.Tensor:
    n = x.shape[-2]
    kappa = torch.exp(-torch.cdist(x, x) ** 2 / math.sqrt(head_dim))
    r2 = torch.diagonal(kappa, dim1=-2, dim2=-1) - 2.0 / n * kappa.sum(-1) \
        + kappa.sum((-1, -2))[..., None] / n ** 2
    r = r2.clamp(min=0).sqrt()
    inside = r <= a
    # a / r_j is formed only where it is taken: where r_j = 0 (one real key, or r^2 rounded
    # below 0) the untaken branch would be a / 0, and a backward pass through it 0 * inf = NaN
    # (oracles/gradients.py differentiates this function). The values are the same.
    outside_r = torch.where(inside, torch.ones_like(r2), r2.clamp(min=0)).sqrt()
    w = torch.where(inside, torch.ones_like(r), a / outside_r)
    return w / w.sum(-1, keepdim=True)


def elliptical_metric(values: torch.Tensor, previous: Optional[torch.Tensor],
                      key_keep: torch.Tensor, num_heads: int, delta: float) -> torch.Tensor:
    """B x H x d metric m of docs/math.md section 2.8 from this layer's values V^l and the
    previous layer's V^{l-1} (B x L x E; None in a stack's first layer: m = 1), the mean over
    each sequence's real tokens (key_keep), max-scaled per head. Returned detached: no
    gradient flows through m (section 2.8)."""
    batch, _, embed = values.shape
    if previous is None:
        return torch.ones(batch, num_heads, embed // num_heads, dtype=F64)
    # The mean over each sequence's real tokens, per head and channel.
    moved = (split_heads(values, num_heads) - split_heads(previous, num_heads)).abs()
    real = key_keep[:, None, :, None].to(F64)
    m = (moved * real).sum(-2) / real.sum(-2) / delta
    m = m / m.max(-1, keepdim=True).values
    return m.detach()


def sinc(x: torch.Tensor) -> torch.Tensor:
    """sin(x) / x with sinc(0) = 1 (torch.sinc is the normalized sin(pi x) / (pi x))."""
    return torch.sinc(x / math.pi)


def variant_forward(case: dict, params: Tensors, x: torch.Tensor, key_keep: torch.Tensor,
                    first: Optional[torch.Tensor], previous: Optional[torch.Tensor],
                    num_heads: int = H, score_bias: Optional[torch.Tensor] = None,
                    rotate: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
    """Self-attention of x (B x L x E, float64) with the variant `case` and num_heads heads:
    output (B x L x E), the smoother A (B x H x L x L) and the values (B x L x E).

    key_keep: B x L, nonzero = a real key. first / previous: B x L x E values V^0 (NeuTRENO)
    and V^{l-1} (elliptical), or None (a stack's first layer: no NeuTRENO term, metric 1).
    A relative position enters the kernel as for softmax: score_bias (H x L x L or
    B x H x L x L) is added to the log kernel, rotate (RoPE, on B x H x L x d) turns the
    queries and keys before it is formed. Neither applies to fourier, which has no log kernel."""
    batch, length, embed = x.shape
    head_dim = embed // num_heads
    qkv = F.linear(x, params["in_proj_weight"], params["in_proj_bias"])
    values = qkv[..., 2 * embed:]
    q, k, v = (split_heads(t, num_heads) for t in qkv.split(embed, dim=-1))
    if rotate is not None:
        q, k = rotate(q), rotate(k)
    t = case["type"]
    masked = ~key_keep[:, None, None, :].bool()  # B x 1 x 1 x S
    key_w = kv_w = None
    if t in ("kde", "robust_kde"):
        k = F.normalize(k, dim=-1)
        log_kernel = -torch.cdist(q, k) ** 2 / math.sqrt(head_dim)
        if t == "robust_kde":
            key_w = huber_weights(k, case["huber_a"], key_keep, head_dim)
            kv_w = huber_weights(torch.cat([k, v], dim=-1), case["huber_a"], key_keep, head_dim)
    elif t == "fourier":
        if score_bias is not None or rotate is not None:
            raise ValueError("fourier: no position terms in its kernel")
        r = params["fourier_r"][0]
        diff = q[:, :, :, None, :] - k[:, :, None, :, :]  # B x H x L x S x d
        kernel = (sinc(r * diff) ** 4).prod(-1)
        kernel = kernel.masked_fill(masked, 0.0)
        a = kernel / (kernel.sum(-1, keepdim=True) + case.get("fourier_epsilon", 1e-6))
        log_kernel = None
    elif t == "elliptical":
        m = elliptical_metric(values, previous, key_keep, num_heads,
                              case.get("elliptical_delta", 5.0))
        log_kernel = (q * m[:, :, None, :]) @ k.transpose(-1, -2) / math.sqrt(head_dim)
    else:
        log_kernel = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if t == "bilateral":
            sigma = F.softplus(params["rho"])
            log_kernel = log_kernel + domain_kernel(case, sigma, length)[None]
    if log_kernel is not None:
        if score_bias is not None:
            log_kernel = log_kernel + score_bias
        log_kernel = log_kernel.masked_fill(masked, float("-inf"))
        kernel = torch.exp(log_kernel - log_kernel.max(-1, keepdim=True).values)
        if key_w is None:
            a = kernel / kernel.sum(-1, keepdim=True)
        else:  # A_ij = w^kv_j K_ij / sum_l w^k_l K_il
            a = kv_w[:, :, None, :] * kernel / (kernel * key_w[:, :, None, :]).sum(-1, keepdim=True)
    # Boosting of order k: [I - (I - A)^(k+1)] V, the matrix power written out.
    eye = torch.eye(length, dtype=F64).expand(batch, num_heads, length, length)
    smoother = eye - torch.linalg.matrix_power(eye - a, case.get("boost", 0) + 1)
    context = smoother @ v
    if t == "neutreno" and first is not None:
        context = context + case["neutreno_lambda"] * (split_heads(first, num_heads) - v)
    out = F.linear(merge_heads(context), params["out_proj.weight"], params["out_proj.bias"])
    return out, a, values


def boosted_by_iteration(a: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """z_0 = A V, z_{m+1} = z_m + A (V - z_m): the iteration, to check the matrix power."""
    z = a @ v
    for _ in range(order):
        z = z + a @ (v - z)
    return z


def variants_fixture(dtype: torch.dtype) -> Tuple[Tensors, Dict[str, str]]:
    out: Tensors = {}
    cases: List[dict] = []
    for name, case in CASES.items():
        g = torch.Generator().manual_seed(seed_of("variants_" + name))
        rnd = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=g, dtype=F64)
                                         ).to(dtype).to(F64)  # noqa: E731
        params: Tensors = {
            "in_proj_weight": rnd(3 * E, E, scale=0.5),
            "in_proj_bias": rnd(3 * E, scale=0.3),
            "out_proj.weight": rnd(E, E, scale=0.4),
            "out_proj.bias": rnd(E, scale=0.3),
        }
        if case["type"] == "bilateral":
            params["rho"] = torch.tensor([0.4, 1.9], dtype=F64).to(dtype).to(F64)
        if case["type"] == "fourier":
            params["fourier_r"] = torch.tensor([0.7], dtype=F64).to(dtype).to(F64)
        x = rnd(B, L, E)
        key_keep = torch.ones(B, L, dtype=torch.uint8)
        if case.get("key_padding"):
            key_keep[1, -2:] = 0
        first = rnd(B, L, E) if case.get("first") else None
        previous = rnd(B, L, E) if case.get("previous") else None
        output, weights, values = variant_forward(case, params, x, key_keep, first, previous)
        # The matrix power against the iteration the engines run.
        _, a, _ = variant_forward(dict(case, boost=0), params, x, key_keep, None, None)
        v = split_heads(values, H)
        for order in (case.get("boost", 0),):
            eye = torch.eye(L, dtype=F64)
            power = (eye - torch.linalg.matrix_power(eye - a, order + 1)) @ v
            assert_close(power, boosted_by_iteration(a, v, order), f"{name}: boosting forms")
        prefix = name + "."
        for key, value in params.items():
            out[prefix + key] = value.to(dtype)
        out[prefix + "x"] = x.to(dtype)
        out[prefix + "key_keep"] = key_keep
        if first is not None:
            out[prefix + "first_values"] = first.reshape(B * L, E).to(dtype)
        if previous is not None:
            out[prefix + "previous_values"] = previous.reshape(B * L, E).to(dtype)
        out[prefix + "output"] = output.to(dtype)
        out[prefix + "weights"] = weights.to(dtype)
        out[prefix + "values"] = values.reshape(B * L, E).to(dtype)
        meta = {"name": name, "batch": B, "length": L, "embed_dim": E, "num_heads": H,
                "boost": case.get("boost", 0), "type": case["type"]}
        for key in ("domain", "leading", "grid", "huber_a", "neutreno_lambda"):
            if key in case:
                meta[key] = case[key]
        cases.append(meta)
    metadata = base_metadata()
    metadata["cases"] = json.dumps(cases, sort_keys=True, separators=(",", ":"))
    return out, metadata


@fixture("variants_f32")
def variants_f32() -> FixtureFiles:
    return {"variants_f32.safetensors": variants_fixture(torch.float32)}


@fixture("variants_f64")
def variants_f64() -> FixtureFiles:
    return {"variants_f64.safetensors": variants_fixture(torch.float64)}
