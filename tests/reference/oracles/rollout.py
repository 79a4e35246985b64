"""Attention rollout (Abnar & Zuidema, ACL 2020; docs/interpretability.md) written out in torch,
independently of the C++ code (rollout_{f32,f64}.safetensors): on the ViTs and images of the
attribution fixture (oracles/attribution.py, whose forward exposes every layer's attention
probabilities), per layer the heads fused by their mean, maximum or minimum, the identity added
for the residual path and the rows renormalised, and the product through the layers so far:

  R_l = rownorm(fuse(A_l) + I),   rollout_l = R_l R_{l-1} ... R_0

For the mean, rownorm(mean(A) + I) is the paper's 0.5 A + 0.5 I, which is asserted here."""

from __future__ import annotations

import torch

from fixturelib import FixtureFiles, Tensors, fixture
from oracles import attribution, blocks

FUSIONS = {
    "mean": lambda a: a.mean(dim=1),
    "max": lambda a: a.amax(dim=1),
    "min": lambda a: a.amin(dim=1),
}


def rollout_case(case: blocks.VitCase, dtype) -> Tensors:
    model, images = blocks.make_vit_case(case, dtype)
    with torch.no_grad():
        _, probabilities = attribution.attention_forward(model, images)
    tensors: Tensors = {}
    n = probabilities[0].shape[-1]
    eye = torch.eye(n, dtype=dtype)
    for name, fuse in FUSIONS.items():
        rollout = None
        for l, a in enumerate(probabilities):
            residual = fuse(a) + eye
            residual = residual / residual.sum(dim=-1, keepdim=True)
            if name == "mean":
                paper = 0.5 * a.mean(dim=1) + 0.5 * eye
                assert torch.allclose(residual, paper, rtol=0, atol=1e-6), case.name
            rollout = residual if rollout is None else residual @ rollout
            tensors[f"{case.name}.layers.{l}.rollout_{name}"] = rollout
    return tensors


@fixture("rollout")
def rollout_fixture() -> FixtureFiles:
    files = {}
    for suffix, dtype in blocks.DTYPES.items():
        tensors: Tensors = {}
        for case in attribution.ATTRIBUTION_CASES:
            tensors.update(rollout_case(case, dtype))
        files[f"rollout_{suffix}.safetensors"] = (
            tensors, blocks.cases_metadata(attribution.ATTRIBUTION_CASES))
    return files
