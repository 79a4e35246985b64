"""Fixtures for position encodings (docs/math.md section 3), convolution as attention (section 4)
and `attnlens mha --position` / `attnlens conv`. No PyTorch module exists for these, so each
oracle writes the paper's formula with torch operations (for T5 the bucket function as HF
transformers writes it, for ALiBi the slopes as Press et al.'s code computes them, for the
convolution torch.nn.functional.conv2d), independently of the C++ code."""

from __future__ import annotations

import functools
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fixturelib import FixtureFiles, Tensors, assert_close, base_metadata, fixture, seed_of

F64 = torch.float64


def _randn(g: torch.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=g, dtype=F64)


# ----------------------------------------------------------------------------------------------
# ALiBi: Press et al.'s get_slopes (github.com/ofirpress/attention_with_linear_biases)


def alibi_slopes(n: int) -> List[float]:
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][:n - closest]


def alibi_bias(heads: int, queries: int, keys: int, causal: bool) -> torch.Tensor:
    """H x L x S: -m_h |j - i|, or m_h (j - i) in the causal form."""
    rel = (torch.arange(keys, dtype=F64)[None, :] - torch.arange(queries, dtype=F64)[:, None])
    m = torch.tensor(alibi_slopes(heads), dtype=F64)[:, None, None]
    return m * rel if causal else -m * rel.abs()


# ----------------------------------------------------------------------------------------------
# T5: HF transformers' T5Attention._relative_position_bucket, as written there


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    # now relative_position is in the range [0, inf)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


def t5_bias(table: torch.Tensor, queries: int, keys: int, bidirectional: bool,
            max_distance: int) -> torch.Tensor:
    """H x L x S from the num_buckets x H table, as T5Attention.compute_bias."""
    context = torch.arange(queries, dtype=torch.long)[:, None]
    memory = torch.arange(keys, dtype=torch.long)[None, :]
    buckets = relative_position_bucket(memory - context, bidirectional, table.shape[0],
                                       max_distance)
    return F.embedding(buckets, table).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------
# RoPE: both pairings, angles in float64 (cos and sin rounded once to the fixture dtype)


def rope_rotate(x: torch.Tensor, base: float, pairing: str) -> torch.Tensor:
    """x: ... x L x d, positions 0 .. L-1 along dim -2."""
    L, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=F64) / d))
    angles = torch.outer(torch.arange(L, dtype=F64), inv_freq)  # L x d/2
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if pairing == "interleaved":  # RoFormer / GPT-J: (x0, x1), (x2, x3), ...
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)
    # GPT-NeoX / Llama: rotate_half with cos, sin repeated over both halves
    cos2, sin2 = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    half = d // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos2 + rotated * sin2


# ----------------------------------------------------------------------------------------------
# Absolute encodings


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    pos = torch.arange(length, dtype=F64)[:, None]
    div = base ** (torch.arange(0, dim, 2, dtype=F64) / dim)
    table = torch.zeros(length, dim, dtype=F64)
    table[:, 0::2] = torch.sin(pos / div)
    table[:, 1::2] = torch.cos(pos / div)
    return table


def grid_positions(height: int, width: int, leading: int, first_row: int = 0,
                   first_col: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N x 2 float64 positions, N bool has-position) for leading + H*W tokens."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=F64) + first_row,
                                torch.arange(width, dtype=F64) + first_col, indexing="ij")
    grid = torch.stack((rows.reshape(-1), cols.reshape(-1)), -1)
    pos = torch.cat((torch.zeros(leading, 2, dtype=F64), grid))
    has = torch.cat((torch.zeros(leading, dtype=torch.bool), torch.ones(height * width,
                                                                        dtype=torch.bool)))
    return pos, has


def sinusoidal_2d_table(height: int, width: int, leading: int, dim: int) -> torch.Tensor:
    half = dim // 2
    rows = sinusoidal_table(height, half)
    cols = sinusoidal_table(width, half)
    grid = torch.cat((rows[:, None, :].expand(height, width, half),
                      cols[None, :, :].expand(height, width, half)), -1).reshape(-1, dim)
    return torch.cat((torch.zeros(leading, dim, dtype=F64), grid))


# ----------------------------------------------------------------------------------------------
# 2-D relative encodings: delta = p_j - p_i, 0 where either token has no position


def grid_deltas(queries, keys):
    (pq, hq), (pk, hk) = queries, keys
    delta = pk[None, :, :] - pq[:, None, :]  # L x S x 2
    return delta, hq[:, None] & hk[None, :]


def quadratic_bias(alpha, shift, queries, keys) -> torch.Tensor:
    """-alpha_h (|delta - Delta_h|^2 - |Delta_h|^2), H x L x S."""
    delta, valid = grid_deltas(queries, keys)
    diff = delta[None] - shift[:, None, None, :]
    bias = -alpha[:, None, None] * ((diff ** 2).sum(-1) - (shift ** 2).sum(-1)[:, None, None])
    return torch.where(valid[None], bias, torch.zeros_like(bias))


def generalized_quadratic_bias(mu, inv_cov, queries, keys) -> torch.Tensor:
    """-1/2 (delta - mu_h)^T Sigma_h^-1 (delta - mu_h), H x L x S; inv_cov is H x 2 x 2."""
    delta, valid = grid_deltas(queries, keys)
    diff = delta[None] - mu[:, None, None, :]
    bias = -0.5 * torch.einsum("hlsa,hab,hlsb->hls", diff, inv_cov, diff)
    return torch.where(valid[None], bias, torch.zeros_like(bias))


def learned_2d_bias(row_emb, col_emb, keys_row, keys_col, max_position, queries, keys):
    delta, valid = grid_deltas(queries, keys)
    idx = delta.long() + max_position - 1
    row = F.embedding(idx[..., 0], row_emb) @ keys_row.T  # L x S x H
    col = F.embedding(idx[..., 1], col_emb) @ keys_col.T
    bias = (row + col).permute(2, 0, 1)
    return torch.where(valid[None], bias, torch.zeros_like(bias))


# ----------------------------------------------------------------------------------------------
# Shaw et al. and Transformer-XL, written out per head (H x L x d inputs)


def clipped(queries: int, keys: int, k: int) -> torch.Tensor:
    rel = torch.arange(keys)[None, :] - torch.arange(queries)[:, None]
    return rel.clamp(-k, k) + k


def shaw_attention(q, k, v, rel_keys, rel_values, clip):
    """z_i = sum_j A_ij (v_j + a^V_{c(j-i)}), e_ij = q_i.(k_j + a^K_{c(j-i)}) / sqrt(d)."""
    L, S, d = q.shape[-2], k.shape[-2], q.shape[-1]
    idx = clipped(L, S, clip)
    aK, aV = rel_keys[idx], rel_values[idx]  # L x S x d
    scores = (q @ k.transpose(-1, -2) + torch.einsum("hld,lsd->hls", q, aK)) / math.sqrt(d)
    weights = scores.softmax(-1)
    return weights @ v + torch.einsum("hls,lsd->hld", weights, aV), weights


def transformer_xl_bias(q, k, r_w_bias, r_r_bias, w_r, queries, keys, dim):
    """(q_i.(W_R R_{i-j}) + u.k_j + v.(W_R R_{i-j})) / sqrt(d) per head, R sinusoidal in i-j.

    q: H x L x d, k: H x S x d, u = r_w_bias, v = r_r_bias (H x d), W_R: (H*d) x dim."""
    H, L, d = q.shape
    rel = (torch.arange(queries)[:, None] - torch.arange(keys)[None, :]).to(F64)  # i - j
    freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=F64) / dim))
    angles = rel[..., None] * freq  # L x S x dim/2
    # Transformer-XL's table is [sin | cos] (not interleaved).
    R = torch.cat((angles.sin(), angles.cos()), -1).to(q.dtype)
    WR = (R @ w_r.T).reshape(queries, keys, H, d).permute(2, 0, 1, 3)  # H x L x S x d
    bd = torch.einsum("hld,hlsd->hls", q, WR)
    uk = torch.einsum("hd,hsd->hs", r_w_bias, k)[:, None, :]
    vr = torch.einsum("hd,hlsd->hls", r_r_bias, WR)
    return (bd + uk + vr) / math.sqrt(d)


# ----------------------------------------------------------------------------------------------
# The positions fixture: every encoding, float32 and float64 (drawn in float64, rounded)


def positions_fixture(dtype: torch.dtype) -> Tuple[Tensors, Dict[str, str]]:
    t: Tensors = {}

    # ALiBi: slopes for several head counts, biases in both forms (L != S too).
    for h in (1, 2, 3, 6, 8, 12, 16, 24):
        t[f"alibi.slopes_h{h}"] = torch.tensor(alibi_slopes(h), dtype=F64)
    t["alibi.symmetric.bias"] = alibi_bias(6, 7, 9, causal=False)
    t["alibi.causal.bias"] = alibi_bias(5, 8, 8, causal=True)

    # T5: bucket tables over offsets -300 .. 300 for several options, and biases.
    offsets = torch.arange(-300, 301, dtype=torch.long)
    for nb, md in ((32, 128), (16, 20), (8, 16), (10, 50)):
        for bidirectional, kind in ((True, "bi"), (False, "causal")):
            t[f"t5.buckets_{kind}_{nb}_{md}"] = relative_position_bucket(offsets, bidirectional,
                                                                          nb, md)
    for name, bidirectional, heads, L, S in (("t5_bi", True, 4, 20, 26),
                                             ("t5_causal", False, 3, 24, 24)):
        g = torch.Generator().manual_seed(seed_of(name))
        table = _randn(g, 16, heads)
        t[f"{name}.relative_attention_bias"] = table
        t[f"{name}.bias"] = t5_bias(table, L, S, bidirectional, 20)

    # RoPE: H x L x d queries and keys, rotated, and their scores.
    for name, pairing, base, d in (("rope_interleaved", "interleaved", 10000.0, 8),
                                   ("rope_half", "half", 10000.0, 8),
                                   ("rope_half_base500", "half", 500.0, 16),
                                   ("rope_interleaved_base500", "interleaved", 500.0, 16)):
        g = torch.Generator().manual_seed(seed_of(name))
        q, k = _randn(g, 3, 11, d).to(dtype), _randn(g, 3, 13, d).to(dtype)
        qr, kr = rope_rotate(q, base, pairing), rope_rotate(k, base, pairing)
        t[f"{name}.queries"], t[f"{name}.keys"] = q, k
        t[f"{name}.queries_rotated"], t[f"{name}.keys_rotated"] = qr, kr
        t[f"{name}.scores"] = qr @ kr.transpose(-1, -2)

    # Absolute encodings.
    t["sinusoidal.table"] = sinusoidal_table(50, 16)
    t["sinusoidal_2d.table"] = sinusoidal_2d_table(4, 5, 1, 16)
    g = torch.Generator().manual_seed(seed_of("learned"))
    embedding = nn.Embedding(10, 8, dtype=F64)
    with torch.no_grad():
        embedding.weight.copy_(_randn(g, 10, 8))
    x = _randn(g, 2, 6, 8)
    t["learned.weight"], t["learned.x"] = embedding.weight.detach(), x
    t["learned.output"] = (x + embedding(torch.arange(6))).detach()

    # 2-D relative: a 5 x 6 grid after one CLS token, and a 4 x 4 query grid against a 6 x 6
    # key grid starting at (-1, -1) (a padded border).
    self_grid = grid_positions(5, 6, 1)
    cross = (grid_positions(4, 4, 0), grid_positions(6, 6, 0, -1, -1))
    g = torch.Generator().manual_seed(seed_of("quadratic"))
    alpha = _randn(g, 4).abs() + 0.2
    shift = _randn(g, 4, 2, scale=1.5)
    t["quadratic.alpha"], t["quadratic.center_shift"] = alpha, shift
    t["quadratic.bias"] = quadratic_bias(alpha, shift, self_grid, self_grid)
    t["quadratic.cross_bias"] = quadratic_bias(alpha, shift, *cross)
    a = _randn(g, 4, 2, 2, scale=0.5)
    inv_cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(2, dtype=F64)
    inv_cov[:, 0, 1] += 0.05  # not symmetric: the formula uses Sigma^-1 as given
    mu = _randn(g, 4, 2)
    t["quadratic_general.center_shift"] = mu
    t["quadratic_general.inverse_covariance"] = inv_cov.reshape(4, 4)
    t["quadratic_general.bias"] = generalized_quadratic_bias(mu, inv_cov, self_grid, self_grid)
    g = torch.Generator().manual_seed(seed_of("learned_2d"))
    max_position, dim, heads = 6, 5, 3
    tables = {"row_embeddings": _randn(g, 2 * max_position - 1, dim),
              "col_embeddings": _randn(g, 2 * max_position - 1, dim),
              "head_keys_row": _randn(g, heads, dim), "head_keys_col": _randn(g, heads, dim)}
    for key, value in tables.items():
        t[f"learned_2d.{key}"] = value
    t["learned_2d.bias"] = learned_2d_bias(*tables.values(), max_position, self_grid, self_grid)

    # Shaw et al.: one layer's tables shared by the heads, clip k = 3.
    g = torch.Generator().manual_seed(seed_of("shaw"))
    q, k, v = _randn(g, 2, 9, 4), _randn(g, 2, 11, 4), _randn(g, 2, 11, 4)
    rel_keys, rel_values = _randn(g, 7, 4), _randn(g, 7, 4)
    out, weights = shaw_attention(q, k, v, rel_keys, rel_values, 3)
    for key, value in (("queries", q), ("keys", k), ("values", v), ("relative_keys", rel_keys),
                       ("relative_values", rel_values), ("output", out), ("weights", weights)):
        t[f"shaw.{key}"] = value

    # Transformer-XL: u, v per head, W_R (H*d) x dim.
    g = torch.Generator().manual_seed(seed_of("transformer_xl"))
    q, k = _randn(g, 2, 7, 4), _randn(g, 2, 9, 4)
    u, v, w_r = _randn(g, 2, 4), _randn(g, 2, 4), _randn(g, 8, 6, scale=0.5)
    t["transformer_xl.queries"], t["transformer_xl.keys"] = q, k
    t["transformer_xl.r_w_bias"], t["transformer_xl.r_r_bias"] = u, v
    t["transformer_xl.r_net.weight"] = w_r
    t["transformer_xl.bias"] = transformer_xl_bias(q, k, u, v, w_r, 7, 9, 6)

    out = {}
    for name, value in t.items():
        out[name] = value.to(dtype) if value.is_floating_point() else value
    return out, base_metadata()


@fixture("positions_f32")
def positions_f32() -> FixtureFiles:
    return {"positions_f32.safetensors": positions_fixture(torch.float32)}


@fixture("positions_f64")
def positions_f64() -> FixtureFiles:
    return {"positions_f64.safetensors": positions_fixture(torch.float64)}


# ----------------------------------------------------------------------------------------------
# Convolution (docs/math.md section 4): the oracle is F.conv2d with zero padding K // 2


def conv_case(name: str, d_out: int, d_in: int, kernel: int, height: int, width: int,
              dtype: torch.dtype) -> Tensors:
    g = torch.Generator().manual_seed(seed_of(name))
    weight = _randn(g, d_out, d_in, kernel, kernel, scale=0.5)
    bias = _randn(g, d_out, scale=0.5)
    image = _randn(g, d_in, height, width)
    output = F.conv2d(image[None], weight, bias, padding=kernel // 2)[0]
    return {"weight": weight.to(dtype), "bias": bias.to(dtype), "input": image.to(dtype),
            "output": output.to(dtype)}


CONV_CASES = (("k3", 4, 3, 3, 7, 8), ("k5", 2, 2, 5, 6, 6), ("k1", 3, 2, 1, 4, 5))


@fixture("conv_f64")
def conv_f64() -> FixtureFiles:
    tensors = {}
    for case in CONV_CASES:
        for key, value in conv_case(*case, F64).items():
            tensors[f"{case[0]}.{key}"] = value
    return {"conv_f64.safetensors": (tensors, base_metadata())}


@fixture("cli/conv_k3")
def cli_conv_k3() -> FixtureFiles:
    t = conv_case("cli_conv_k3", 4, 3, 3, 7, 8, torch.float32)
    return {"cli/conv_k3_input.safetensors": ({k: t[k] for k in ("weight", "bias", "input")},
                                              None),
            "cli/conv_k3_expected.safetensors": ({"output": t["output"]}, base_metadata())}


# ----------------------------------------------------------------------------------------------
# `attnlens mha --position P`: nn.MultiheadAttention weights, the encoding applied per head


POSITION_CASES = {  # name: (position, E, H, L, causal, double)
    "alibi": ("alibi", 24, 6, 9, False, False),
    "alibi_causal": ("alibi-causal", 16, 4, 8, True, False),
    "t5": ("t5", 16, 2, 40, False, False),
    "t5_causal": ("t5-causal", 24, 3, 40, True, False),
    "rope": ("rope", 16, 2, 9, False, False),
    "rope_half": ("rope-half", 32, 4, 10, False, True),
}
T5_CLI_BUCKETS, T5_CLI_DISTANCE = 32, 128  # the CLI's defaults


def mha_with_position(mha: nn.MultiheadAttention, x: torch.Tensor, position: str,
                      table: Optional[torch.Tensor], causal: bool) -> torch.Tensor:
    """docs/math.md section 1 with torch primitives: the encoding's bias added to q.k / sqrt(d),
    or RoPE applied to each head's projected q and k, positions 0 .. L-1."""
    B, L, E = x.shape
    H = mha.num_heads
    d = E // H
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def heads(y):
        return y.reshape(B, L, H, d).transpose(1, 2)

    q, k, v = heads(F.linear(x, w_q, b_q)), heads(F.linear(x, w_k, b_k)), heads(F.linear(x, w_v,
                                                                                          b_v))
    bias = torch.zeros(H, L, L, dtype=x.dtype)
    if position.startswith("rope"):
        pairing = "half" if position == "rope-half" else "interleaved"
        q, k = rope_rotate(q, 10000.0, pairing), rope_rotate(k, 10000.0, pairing)
    elif position.startswith("alibi"):
        bias = alibi_bias(H, L, L, position == "alibi-causal").to(x.dtype)
    elif position.startswith("t5"):
        bias = t5_bias(table, L, L, position == "t5", T5_CLI_DISTANCE)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
    if causal:
        scores = scores.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1),
                                    float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, E)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias), bias


def cli_position_fixture(name: str) -> FixtureFiles:
    position, E, H, L, causal, double = POSITION_CASES[name]
    dtype = F64 if double else torch.float32
    seed = seed_of("cli_pos_" + name)
    torch.manual_seed(seed)
    # As oracles.mha.make_module, whose cases stop at 13 tokens (T5 needs 40 to reach the
    # logarithmic buckets).
    mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in mha.named_parameters():
            p.add_((0.5 if pname.endswith("bias") else 0.1) * torch.randn(p.shape, generator=g,
                                                                          dtype=F64))
    mha = mha.to(dtype).eval()
    x = _randn(g, 2, L, E).to(dtype)
    table = _randn(g, T5_CLI_BUCKETS, H).to(dtype) if position.startswith("t5") else None
    with torch.no_grad():
        output, bias = mha_with_position(mha, x, position, table, causal)
        if not position.startswith("rope"):
            # The additive encodings are also an attn_mask for nn.MultiheadAttention itself.
            mask = bias.repeat(2, 1, 1)
            if causal:
                mask = mask.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1),
                                        float("-inf"))
            expected, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
            assert_close(output, expected, f"mha_pos_{name} against nn.MultiheadAttention")
    weights = {k: v.detach() for k, v in mha.state_dict().items()}
    if table is not None:
        weights["relative_attention_bias.weight"] = table
    metadata = base_metadata()
    metadata.update({"num_heads": str(H), "position": position,
                     "causal": "true" if causal else "false",
                     "double": "true" if double else "false"})
    stem = f"cli/mha_pos_{name}"
    return {f"{stem}_weights.safetensors": (weights, None),
            f"{stem}_input.safetensors": ({"query": x}, None),
            f"{stem}_expected.safetensors": ({"output": output.detach()}, metadata)}


for _name in POSITION_CASES:
    fixture(f"cli/mha_pos_{_name}")(functools.partial(cli_position_fixture, _name))
