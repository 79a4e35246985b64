"""Fixtures for multi-head attention (docs/math.md section 1) and the `attnlens mha` tool.
Oracle: torch.nn.MultiheadAttention(batch_first=True), checked against torch primitives."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fixturelib import (FixtureFiles, Metadata, Tensors, assert_close, base_metadata, fixture,
                        seed_of)

# ----------------------------------------------------------------------------------------------
# Multi-head attention (docs/math.md section 1); oracle: torch.nn.MultiheadAttention(batch_first=True)


@dataclasses.dataclass(frozen=True)
class MhaCase:
    name: str
    embed_dim: int
    num_heads: int
    batch: int
    tgt_len: int
    src_len: int
    kdim: Optional[int] = None  # None: same as embed_dim (passed to PyTorch as None too)
    vdim: Optional[int] = None
    bias: bool = True
    self_attention: bool = True  # key = value = query (the same tensor)
    causal: bool = False         # oracle gets triu(ones(L, S), 1); no attn_mask is stored
    key_padding_mask: bool = False
    attn_mask: str = "none"      # "none" | "bool" | "float"
    attn_mask_per_head: bool = False  # (B*H) x L x S instead of L x S
    # How rows with no admissible key are made ("" = there are none), see make_masks():
    # "mask_rows", "padding_item", "mask_and_padding", "causal_padding".
    fully_masked: str = ""

    def __post_init__(self):
        assert self.embed_dim % self.num_heads == 0, self.name
        assert 1 <= self.tgt_len <= 13 and 1 <= self.src_len <= 13, self.name
        assert self.attn_mask in ("none", "bool", "float"), self.name
        assert not self.attn_mask_per_head or self.attn_mask != "none", self.name
        if self.self_attention:
            assert self.tgt_len == self.src_len and self.kdim is None and self.vdim is None
        if self.causal:  # PyTorch's causal mask is square; attnlens' flag is not combined
            assert self.tgt_len == self.src_len and self.attn_mask == "none", self.name
        # Each way of emptying rows needs the masks it edits.
        needs = {"": True,
                 "mask_rows": self.attn_mask != "none",
                 "padding_item": self.key_padding_mask,
                 "mask_and_padding": self.key_padding_mask and self.attn_mask != "none"
                 and not self.attn_mask_per_head,
                 "causal_padding": self.causal and self.key_padding_mask}
        assert needs.get(self.fully_masked, False), self.name

    @property
    def key_dim(self) -> int:
        return self.kdim if self.kdim is not None else self.embed_dim

    @property
    def value_dim(self) -> int:
        return self.vdim if self.vdim is not None else self.embed_dim

    def metadata(self) -> dict:
        return {
            "name": self.name, "embed_dim": self.embed_dim, "num_heads": self.num_heads,
            "batch": self.batch, "tgt_len": self.tgt_len, "src_len": self.src_len,
            "kdim": self.key_dim, "vdim": self.value_dim, "bias": self.bias,
            "self_attention": self.self_attention, "causal": self.causal,
            "key_padding_mask": self.key_padding_mask, "attn_mask": self.attn_mask,
            "attn_mask_per_head": self.attn_mask_per_head,
            "fully_masked_rows": bool(self.fully_masked),
        }


def C(name, e, h, b, tgt, src, **kw) -> MhaCase:
    """Case table shorthand: name, E, H, B, L, S, options."""
    return MhaCase(name, e, h, b, tgt, src, **kw)


# Small on purpose: one E=96 module alone is 37k numbers (300 kB in the f64 file), so most
# cases use E=8, which is enough for the mask logic; E=64/96 give head widths 16 and 32.
MHA_CASES = [
    C("c00_e8_h1_self", 8, 1, 1, 5, 5),
    C("c01_e8_h2_self_l1", 8, 2, 2, 1, 1),
    C("c02_e64_h2_self_kpm", 64, 2, 2, 11, 11, key_padding_mask=True),
    C("c03_e64_h4_cross_kdim", 64, 4, 2, 5, 9, kdim=24, vdim=40, self_attention=False),
    C("c04_e96_h6_self_causal", 96, 6, 2, 9, 9, causal=True),
    C("c05_e8_h2_self_nobias", 8, 2, 3, 4, 4, bias=False),
    C("c06_e8_h1_self_float", 8, 1, 1, 8, 8, attn_mask="float"),
    C("c07_e8_h4_cross_bool", 8, 4, 2, 6, 10, self_attention=False, attn_mask="bool"),
    C("c08_e8_h2_self_bool3d", 8, 2, 2, 5, 5, attn_mask="bool", attn_mask_per_head=True),
    C("c09_e8_h4_cross_float3d", 8, 4, 2, 3, 7, self_attention=False, attn_mask="float",
      attn_mask_per_head=True),
    C("c10_e8_h2_self_kpm_float", 8, 2, 2, 7, 7, key_padding_mask=True, attn_mask="float"),
    C("c11_e8_h4_cross_kpm_bool", 8, 4, 3, 4, 13, self_attention=False,
      key_padding_mask=True, attn_mask="bool"),
    C("c12_e8_h1_cross_l1", 8, 1, 2, 1, 13, self_attention=False),
    C("c13_e8_h2_self_causal_kpm", 8, 2, 2, 10, 10, causal=True, key_padding_mask=True),
    C("c14_e8_h4_cross_kdim_nobias_kpm", 8, 4, 3, 4, 11, kdim=5, vdim=3, bias=False,
      self_attention=False, key_padding_mask=True),
    # kdim == E but vdim != E: PyTorch still switches to separate q/k/v weights.
    C("c15_e8_h2_cross_vdim", 8, 2, 1, 13, 3, kdim=8, vdim=6, self_attention=False),
    C("c16_e8_h4_self_kpm_bool3d", 8, 4, 2, 6, 6, key_padding_mask=True, attn_mask="bool",
      attn_mask_per_head=True),
    # Rows with no admissible key: PyTorch returns NaN, the fixture holds attnlens' answer.
    C("c17_e8_h2_self_full_bool", 8, 2, 2, 6, 6, attn_mask="bool", fully_masked="mask_rows"),
    C("c18_e8_h2_cross_full_kpm", 8, 2, 3, 5, 6, self_attention=False,
      key_padding_mask=True, fully_masked="padding_item"),
    C("c19_e8_h4_self_full_bool3d", 8, 4, 2, 5, 5, attn_mask="bool",
      attn_mask_per_head=True, fully_masked="mask_rows"),
    C("c20_e8_h2_cross_full_kpm_float", 8, 2, 2, 7, 9, self_attention=False,
      key_padding_mask=True, attn_mask="float", fully_masked="mask_and_padding"),
    C("c21_e8_h2_self_full_causal_kpm", 8, 2, 2, 6, 6, causal=True, key_padding_mask=True,
      fully_masked="causal_padding"),
]


def make_module(case: MhaCase, seed: int) -> nn.MultiheadAttention:
    """A float64 MultiheadAttention with every parameter moved away from its initial value."""
    torch.manual_seed(seed)  # PyTorch's own initialisation draws from the global generator
    mha = nn.MultiheadAttention(case.embed_dim, case.num_heads, bias=case.bias,
                                kdim=case.kdim, vdim=case.vdim, batch_first=True,
                                dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mha.named_parameters():  # registration order: deterministic
            # Biases start at 0; make them clearly nonzero so a dropped bias shows.
            scale = 0.5 if name.endswith("bias") else 0.1
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return mha.eval()


def causal_mask(length: int) -> torch.Tensor:
    """Bool L x L, True above the diagonal = key after the query = not allowed."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)


def additive_mask(case: MhaCase, key_padding_mask, attn_mask, dtype) -> torch.Tensor:
    """B x H x L x S float mask built from the case's masks: 0, finite bias, or -inf."""
    B, H, L, S = case.batch, case.num_heads, case.tgt_len, case.src_len
    neg_inf = float("-inf")
    bias = torch.zeros(B, H, L, S, dtype=dtype)
    if case.causal:
        bias = bias.masked_fill(causal_mask(L), neg_inf)
    if attn_mask is not None:
        # A 3-D mask is indexed by b * H + h, as PyTorch lays it out.
        m = attn_mask.view(B, H, L, S) if attn_mask.dim() == 3 else attn_mask.view(1, 1, L, S)
        bias = bias.masked_fill(m, neg_inf) if m.dtype == torch.bool else bias + m.to(dtype)
    if key_padding_mask is not None:
        bias = bias.masked_fill(key_padding_mask.view(B, 1, 1, S), neg_inf)
    return bias


def make_masks(case: MhaCase, g: torch.Generator):
    """The case's key_padding_mask (B x S bool) and attn_mask (bool or float64), or None.

    Random masks drop about a third of the keys. Unless the case asks for fully masked rows,
    every query row keeps at least one key; then case.fully_masked makes some rows empty.
    """
    B, H, L, S = case.batch, case.num_heads, case.tgt_len, case.src_len
    kpm = None
    if case.key_padding_mask:
        kpm = torch.rand(B, S, generator=g) < 0.3
        keep = torch.randint(S, (B,), generator=g)
        kpm[torch.arange(B), keep] = False  # every item keeps a key
        if case.causal:
            kpm[:, 0] = False  # under a causal mask, query 0 sees only key 0
    mask = None
    # Entry values that block / admit a key, in the attn_mask's own type.
    blocked, admitted = (True, False) if case.attn_mask == "bool" else (float("-inf"), 0.0)
    if case.attn_mask != "none":
        shape = (B * H, L, S) if case.attn_mask_per_head else (L, S)
        drop = torch.rand(shape, generator=g) < 0.3
        if case.attn_mask == "bool":
            mask = drop
        else:
            mask = torch.randn(shape, generator=g, dtype=torch.float64)
            mask = mask.masked_fill(drop, blocked)
        # Give back one key to any row the random masks emptied (the first key the key
        # padding leaves to that batch item).
        while True:
            dead = torch.isneginf(additive_mask(case, kpm, mask, torch.float64)).all(-1)
            if not bool(dead.any()):
                break
            b, h, i = (int(x) for x in dead.nonzero()[0])
            allowed = ~kpm[b] if kpm is not None else torch.ones(S, dtype=torch.bool)
            j = int(allowed.nonzero()[0])
            mask[(b * H + h, i, j) if mask.dim() == 3 else (i, j)] = admitted

    if case.fully_masked == "mask_rows":
        if mask.dim() == 2:
            mask[L // 2, :] = blocked  # this row is empty in every head of every item
        else:
            for n in range(0, B * H, 2):  # every other (item, head): some heads only
                mask[n, n % L, :] = blocked
    elif case.fully_masked == "padding_item":
        kpm[B - 1, :] = True  # the last item has no key at all
    elif case.fully_masked == "mask_and_padding":
        # Row 0 keeps exactly the keys item 0 pads: neither mask alone empties it.
        kpm[0, 0], kpm[0, S - 1] = False, True
        mask[0, :] = blocked
        mask[0, kpm[0]] = admitted
    elif case.fully_masked == "causal_padding":
        kpm[0, 0] = True  # causal query 0 of item 0 sees key 0 only, which is padded
    return kpm, mask


def mha_from_primitives(case: MhaCase, params: Tensors, query, key, value, mask):
    """docs/math.md section 1 with torch primitives, independent of nn.MultiheadAttention.

    `mask` is B x H x L x S additive. Returns (output, weights, dead) where dead (B x H x L)
    marks query rows with no admissible key: attnlens gives them weights 0 and a head output 0.
    """
    B, H, L, E = case.batch, case.num_heads, case.tgt_len, case.embed_dim
    d = E // H
    if "in_proj_weight" in params:
        w_q, w_k, w_v = params["in_proj_weight"].chunk(3)
    else:
        w_q, w_k, w_v = params["q_proj_weight"], params["k_proj_weight"], params["v_proj_weight"]
    b_q = b_k = b_v = None
    if "in_proj_bias" in params:
        b_q, b_k, b_v = params["in_proj_bias"].chunk(3)

    def heads(x):  # B x N x E -> B x H x N x d: head h is columns h*d .. (h+1)*d
        return x.reshape(x.shape[0], x.shape[1], H, d).transpose(1, 2)

    q = heads(F.linear(query, w_q, b_q))
    k = heads(F.linear(key, w_k, b_k))
    v = heads(F.linear(value, w_v, b_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d) + mask
    dead = torch.isneginf(mask).all(-1)
    # A dead row's softmax would be NaN (exp(-inf - -inf)); it is taken of zeros instead and
    # then replaced by 0, so that under autograd (oracles/gradients.py) no NaN reaches a
    # gradient either: the where() sends nothing back into such a row. Other rows are as
    # computed.
    scores = torch.where(dead.unsqueeze(-1), torch.zeros_like(scores), scores)
    weights = torch.softmax(scores, dim=-1)
    weights = torch.where(dead.unsqueeze(-1), torch.zeros_like(weights), weights)
    assert not bool(torch.isnan(weights).any())
    heads_out = (weights @ v).transpose(1, 2).reshape(B, L, E)
    output = F.linear(heads_out, params["out_proj.weight"], params.get("out_proj.bias"))
    return output, weights, dead


@dataclasses.dataclass
class MhaResult:
    state_dict: Tensors
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    key_padding_mask: Optional[torch.Tensor]
    attn_mask: Optional[torch.Tensor]
    output: torch.Tensor       # B x L x E
    weights: torch.Tensor      # B x H x L x S
    weights_avg: torch.Tensor  # B x L x S


def run_mha_case(case: MhaCase, dtype: torch.dtype) -> MhaResult:
    """Builds the case (same numbers for f32 and f64, up to rounding) and its expected answer."""
    seed = seed_of(case.name)
    module64 = make_module(case, seed)
    g = torch.Generator().manual_seed(seed + 1)
    B, H, L, S = case.batch, case.num_heads, case.tgt_len, case.src_len
    query = torch.randn(B, L, case.embed_dim, generator=g, dtype=torch.float64)
    if case.self_attention:
        key = value = query
    else:
        key = torch.randn(B, S, case.key_dim, generator=g, dtype=torch.float64)
        value = torch.randn(B, S, case.value_dim, generator=g, dtype=torch.float64)
    kpm, mask = make_masks(case, g)

    # Everything is drawn in float64 and rounded for the float32 file.
    module = copy.deepcopy(module64).to(dtype)
    query = query.to(dtype)
    key, value = (query, query) if case.self_attention else (key.to(dtype), value.to(dtype))
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)

    # The oracle. Parameters require grad, so PyTorch 1.13 runs F.multi_head_attention_forward
    # rather than its fused inference fast path (only taken under no_grad, for self-attention
    # without attn_mask and with an even number of heads; it also returns NaN on empty rows).
    oracle_mask = causal_mask(L) if case.causal else mask
    out, w = module(query, key, value, key_padding_mask=kpm, attn_mask=oracle_mask,
                    need_weights=True, average_attn_weights=False)
    _, w_avg = module(query, key, value, key_padding_mask=kpm, attn_mask=oracle_mask,
                      need_weights=True, average_attn_weights=True)
    out, w, w_avg = out.detach(), w.detach(), w_avg.detach()

    # The independent computation must agree with PyTorch wherever PyTorch has an answer.
    params = {k: v.detach() for k, v in module.state_dict().items()}
    ref_out, ref_w, dead = mha_from_primitives(case, params, query, key, value,
                                               additive_mask(case, kpm, mask, dtype))
    assert bool(dead.any()) == bool(case.fully_masked), f"{case.name}: fully masked rows"
    dead_row = dead.any(1)  # B x L: some head of this query row has no key
    # PyTorch 1.13 has no special case for an empty row: softmax over all -inf gives NaN
    # weights, that head's output row is NaN, and out_proj spreads the NaN over the whole
    # output row even when only one head is empty. This is why the fixture stores
    # attnlens' answer (weights 0, head output 0) for those rows instead of PyTorch's.
    assert torch.equal(torch.isnan(w).any(-1), dead) and torch.equal(torch.isnan(w).all(-1), dead)
    assert torch.equal(torch.isnan(out).any(-1), dead_row)
    assert torch.equal(torch.isnan(out).all(-1), dead_row)
    assert torch.equal(torch.isnan(w_avg).any(-1), dead_row)
    assert_close(out[~dead_row], ref_out[~dead_row], f"{case.name} output")
    assert_close(w[~dead], ref_w[~dead], f"{case.name} weights")
    assert_close(w_avg[~dead_row], ref_w.mean(1)[~dead_row], f"{case.name} weights_avg")

    # PyTorch's numbers where it has an answer, the independent ones where it returned NaN.
    output = torch.where(dead_row.unsqueeze(-1), ref_out, out)
    weights = torch.where(dead.unsqueeze(-1), ref_w, w)
    weights_avg = torch.where(dead_row.unsqueeze(-1), weights.sum(1) / H, w_avg)
    return MhaResult(params, query, key, value, kpm, mask, output, weights, weights_avg)


def mha_fixture(dtype: torch.dtype) -> Tuple[Tensors, Metadata]:
    tensors: Tensors = {}
    for case in MHA_CASES:
        r = run_mha_case(case, dtype)
        p = case.name + "."
        tensors[p + "query"], tensors[p + "key"], tensors[p + "value"] = r.query, r.key, r.value
        for name, t in r.state_dict.items():
            tensors[p + name] = t
        if r.key_padding_mask is not None:
            tensors[p + "key_padding_mask"] = r.key_padding_mask
        if r.attn_mask is not None:
            tensors[p + "attn_mask"] = r.attn_mask
        tensors[p + "output"] = r.output
        tensors[p + "weights"] = r.weights
        tensors[p + "weights_avg"] = r.weights_avg
    metadata = base_metadata()
    metadata["cases"] = json.dumps([c.metadata() for c in MHA_CASES], sort_keys=True,
                                   separators=(",", ":"))
    return tensors, metadata


@fixture("mha_f32")
def mha_f32() -> FixtureFiles:
    return {"mha_f32.safetensors": mha_fixture(torch.float32)}


@fixture("mha_f64")
def mha_f64() -> FixtureFiles:
    return {"mha_f64.safetensors": mha_fixture(torch.float64)}


# ----------------------------------------------------------------------------------------------
# Command-line tool: `attnlens mha --weights W --input X --output Y ...` (files under cli/)


@dataclasses.dataclass(frozen=True)
class CliCase:
    name: str
    mha: MhaCase                  # geometry and masks; never fully masked rows
    prefix: str = ""              # every state_dict key in W is stored as prefix + key
    key_padding_u8: bool = False  # key_padding_mask as U8 0/1 instead of BOOL
    double: bool = False          # float64 weights, inputs and expected values (--double)
    need_weights: bool = True


def _cli(name, e, h, tgt, src, prefix="", key_padding_u8=False, double=False, **kw) -> CliCase:
    """CLI case shorthand: name, E, H, L, S (B = 2), options."""
    return CliCase(name, MhaCase("cli_" + name, e, h, 2, tgt, src, **kw), prefix,
                   key_padding_u8, double)


CLI_CASES = [
    _cli("plain", 16, 2, 7, 7),
    _cli("causal", 16, 4, 6, 6, causal=True),
    _cli("key_padding_bool", 24, 2, 9, 9, key_padding_mask=True),
    _cli("key_padding_u8", 24, 3, 8, 8, key_padding_mask=True, key_padding_u8=True),
    _cli("attn_mask_bool", 32, 4, 5, 5, attn_mask="bool"),
    _cli("attn_mask_float", 16, 2, 8, 8, attn_mask="float"),
    _cli("attn_mask_3d", 32, 4, 6, 6, attn_mask="float", attn_mask_per_head=True),
    _cli("cross_kdim_prefix", 16, 2, 5, 8, kdim=12, vdim=20, self_attention=False,
         prefix="self_attn."),
    _cli("double", 24, 4, 7, 7, attn_mask="float", double=True),
]


def cli_fixture(case: CliCase) -> FixtureFiles:
    assert not case.mha.fully_masked
    dtype = torch.float64 if case.double else torch.float32
    r = run_mha_case(case.mha, dtype)
    weights = {case.prefix + k: v for k, v in r.state_dict.items()}
    inputs: Tensors = {"query": r.query}
    if not case.mha.self_attention:
        inputs["key"], inputs["value"] = r.key, r.value
    if r.key_padding_mask is not None:
        kpm = r.key_padding_mask
        # PyTorch 1.13 refuses an integer key_padding_mask; the oracle got the bool one.
        inputs["key_padding_mask"] = kpm.to(torch.uint8) if case.key_padding_u8 else kpm
    if r.attn_mask is not None:
        inputs["attn_mask"] = r.attn_mask
    expected = {"output": r.output, "weights": r.weights}
    flag = {True: "true", False: "false"}
    metadata = base_metadata()
    metadata.update({"num_heads": str(case.mha.num_heads), "prefix": case.prefix,
                     "causal": flag[case.mha.causal], "double": flag[case.double],
                     "need_weights": flag[case.need_weights]})
    stem = f"cli/mha_{case.name}"
    return {f"{stem}_weights.safetensors": (weights, None),
            f"{stem}_input.safetensors": (inputs, None),
            f"{stem}_expected.safetensors": (expected, metadata)}


for _case in CLI_CASES:
    fixture(f"cli/mha_{_case.name}")(functools.partial(cli_fixture, _case))




@fixture("cli/mha_large_weights")
def cli_large_weights() -> FixtureFiles:
    """`attnlens mha` on float32 weights so large that q.k overflows float before 1/sqrt(d):
    in_proj_weight is scaled until the largest |q.k| of a head is twice float's maximum.
    PyTorch scales q first and stays finite; so must attnlens (issue 12)."""
    case = MhaCase("cli_large_weights", 32, 2, 2, 6, 6)
    seed = seed_of(case.name)
    module = make_module(case, seed)
    g = torch.Generator().manual_seed(seed + 1)
    query = torch.randn(case.batch, case.tgt_len, case.embed_dim, generator=g, dtype=torch.float64)
    E, H = case.embed_dim, case.num_heads
    d = E // H
    with torch.no_grad():
        q = (query @ module.in_proj_weight[:E].T).view(case.batch, -1, H, d)
        k = (query @ module.in_proj_weight[E:2 * E].T).view(case.batch, -1, H, d)
        largest = torch.einsum("blhd,bshd->bhls", q, k).abs().max().item()
        scale = math.sqrt(2.0 * torch.finfo(torch.float32).max / largest)
        module.in_proj_weight.mul_(scale)
    module = module.to(torch.float32)
    query = query.to(torch.float32)
    out, w = module(query, query, query, need_weights=True, average_attn_weights=False)
    out, w = out.detach(), w.detach()
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    # Forming q.k before the scale overflows: the case tests what it says.
    with torch.no_grad():
        q32 = (query @ module.in_proj_weight[:E].T).view(case.batch, -1, H, d)
        k32 = (query @ module.in_proj_weight[E:2 * E].T).view(case.batch, -1, H, d)
        assert not torch.isfinite(torch.einsum("blhd,bshd->bhls", q32, k32)).all()
    metadata = base_metadata()
    metadata.update({"num_heads": str(H), "weight_scale": repr(scale)})
    state = {k: v.detach() for k, v in module.state_dict().items()}
    stem = "cli/mha_large_weights"
    return {f"{stem}_weights.safetensors": (state, None),
            f"{stem}_input.safetensors": ({"query": query}, None),
            f"{stem}_expected.safetensors": ({"output": out, "weights": w}, metadata)}
