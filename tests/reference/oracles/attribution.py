"""Attention attribution and head importance (docs/math.md section 5; Hao et al., "Self-Attention
Attribution", AAAI 2021), written from the formulas with torch autograd, independently of the
C++ code (attribution_{f32,f64}.safetensors):

  Attr_h(A) = A_h (*) (1/m) sum_k dF(alpha_k A)/dA_h

for one layer l at a time: the layer's attention probabilities of every head are replaced by
alpha_k A (a leaf tensor), the other layers run normally, F is the softmax probability of the
target class and autograd differentiates it with respect to that leaf. The model is
oracles/blocks.py's ReferenceViT (timm's structure), run here by a forward of its own that
exposes the attention probabilities and each head's context A_h V_h. Taylor importance is taken
from the context's own gradient (autograd), not from dF/dA."""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F

from fixturelib import FixtureFiles, Tensors, fixture
from oracles import blocks

ATTRIBUTION_CASES = [
    blocks.VitCase("attr00_cls_token", 8, 8, 4, 1, 4, 16, 2, 32, 2, batch=3,
                   layer_norm_eps=1e-6),
    blocks.VitCase("attr01_nocls_mean_post", 8, 12, 4, 1, 3, 12, 3, 24, 3, activation="relu",
                   norm_first=False, final_norm=False, class_token=False, position="none",
                   pooling="mean", batch=3),
]

LEFT_STEPS = 20      # attattr's default m, left rule: the `attribution` tensors, predicted class
MIDPOINT_STEPS = 7   # `attribution_midpoint`, the `labels` as targets
RIGHT_STEPS = 5      # `attribution_right`, predicted class


def riemann_points(steps: int, rule: str) -> List[float]:
    offset = {"left": 0.0, "right": 1.0, "midpoint": 0.5}[rule]
    return [(k + offset) / steps for k in range(steps)]


def attention_forward(model: blocks.ReferenceViT, images, layer: Optional[int] = None,
                      replaced=None, contexts: Optional[list] = None):
    """The logits and every layer's attention probabilities (B x H x L x L); at `layer` the
    probabilities the values are averaged with are `replaced`. `contexts`, if given, receives
    each layer's context A_h V_h (B x H x L x d) with its gradient retained (the images must
    require gradients then: the parameters do not)."""
    case = model.case
    w = model.patch_embed.proj
    x = F.conv2d(images, w.weight, w.bias, stride=case.patch_size).flatten(2).transpose(1, 2)
    if case.class_token:
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    if case.position == "learned":
        x = x + model.pos_embed
    probabilities = []
    for l, block in enumerate(model.blocks):
        def attend(y, l=l, block=block):
            b, n, e = y.shape
            h = case.nhead
            d = e // h
            q, k, v = block.attn.qkv(y).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
            probabilities.append(a)
            context = (replaced if l == layer else a) @ v
            if contexts is not None:
                context.retain_grad()
                contexts.append(context)
            return block.attn.proj(context.transpose(1, 2).reshape(b, n, e))
        if block.norm_first:
            x = x + attend(block.norm1(x))
            x = x + block.mlp_forward(block.norm2(x))
        else:
            x = block.norm1(x + attend(x))
            x = block.norm2(x + block.mlp_forward(x))
    if model.norm is not None:
        x = model.norm(x)
    prefix = 1 if case.class_token else 0
    pooled = x[:, 0] if case.pooling == "token" else x[:, prefix:].mean(dim=1)
    return model.head(pooled), probabilities


def target_probability(logits, targets):
    return logits.softmax(dim=-1).gather(1, targets[:, None])[:, 0]


def attribution(model, images, targets, layer: int, alphas: List[float]):
    with torch.no_grad():
        _, clean = attention_forward(model, images)
    a = clean[layer]
    total = torch.zeros_like(a)
    for alpha in alphas:
        scaled = (alpha * a).detach().requires_grad_(True)
        logits, _ = attention_forward(model, images, layer, scaled)
        total += torch.autograd.grad(target_probability(logits, targets).sum(), scaled)[0]
    return a * total / len(alphas)


def baseline_probability(model, images, targets, layer: int):
    with torch.no_grad():
        _, clean = attention_forward(model, images)
        logits, _ = attention_forward(model, images, layer, torch.zeros_like(clean[layer]))
        return target_probability(logits, targets)


def taylor_importance(model, images, labels):
    """layers x heads: sum over images of |sum_{i,c} ctx_ic dF/dctx_ic| per head."""
    contexts: list = []
    logits, _ = attention_forward(model, images.clone().requires_grad_(True), contexts=contexts)
    target_probability(logits, labels).sum().backward()
    return torch.stack([(c * c.grad).sum(dim=(2, 3)).abs().sum(dim=0) for c in contexts]).detach()


def classified_case(case: blocks.VitCase, dtype):
    """The case's model (parameters frozen) and images, the logits, every layer's attention and
    the predicted classes; and the tensors every such fixture stores: the parameters, `images`
    and `predicted` under the case's name. Also used by oracles/attribution_tree.py."""
    model, images = blocks.make_vit_case(case, dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        logits, clean = attention_forward(model, images)
    predicted = logits.argmax(dim=-1)
    p = case.name + "."
    tensors = blocks.state_dict_of(model, p)
    tensors[p + "images"] = images
    tensors[p + "predicted"] = predicted.to(torch.int64)
    return model, images, logits, clean, predicted, tensors


def attribution_case(case: blocks.VitCase, dtype) -> Tensors:
    model, images, logits, clean, predicted, tensors = classified_case(case, dtype)
    labels = (predicted + 1) % case.num_classes  # gold labels other than the prediction
    p = case.name + "."
    tensors[p + "labels"] = labels.to(torch.int64)
    tensors[p + "probability"] = target_probability(logits, predicted)
    left = riemann_points(LEFT_STEPS, "left")
    importance = []
    for l in range(case.num_layers):
        q = f"{p}layers.{l}."
        attr = attribution(model, images, predicted, l, left)
        tensors[q + "attribution"] = attr
        tensors[q + "attribution_midpoint"] = attribution(
            model, images, labels, l, riemann_points(MIDPOINT_STEPS, "midpoint"))
        tensors[q + "attribution_right"] = attribution(
            model, images, predicted, l, riemann_points(RIGHT_STEPS, "right"))
        base = baseline_probability(model, images, predicted, l)
        tensors[q + "baseline_probability"] = base
        importance.append(attribution(model, images, labels, l, left).amax(dim=(2, 3)).sum(0))
        if dtype == torch.float64:
            # Completeness: the integral's sum is F(A) - F(0). Observed gaps at m = 400: 2e-9
            # (GELU) and up to 7.6e-6 (ReLU: its kinks leave the integrand piecewise smooth, and
            # the midpoint rule converges as 1/m instead of 1/m^2 there).
            fine = attribution(model, images, predicted, l, riemann_points(400, "midpoint"))
            gap = (fine.sum(dim=(1, 2, 3)) - (tensors[p + "probability"] - base)).abs().max()
            assert gap < 2e-5, (case.name, l, float(gap))
    tensors[p + "importance.attribution"] = torch.stack(importance)
    tensors[p + "importance.attention"] = torch.stack(
        [a.amax(dim=(2, 3)).sum(0) for a in clean])
    tensors[p + "importance.taylor"] = taylor_importance(model, images, labels)
    return tensors


@fixture("attribution")
def attribution_fixture() -> FixtureFiles:
    files = {}
    for suffix, dtype in blocks.DTYPES.items():
        tensors: Tensors = {}
        for case in ATTRIBUTION_CASES:
            tensors.update(attribution_case(case, dtype))
        files[f"attribution_{suffix}.safetensors"] = (
            tensors, blocks.cases_metadata(ATTRIBUTION_CASES))
    return files
