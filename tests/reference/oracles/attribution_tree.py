"""Attribution trees (docs/math.md section 5; Hao et al., "Self-Attention Attribution", AAAI 2021)
built the way the authors' examples/attribution_tree.py (attattr) builds them, independently of
the C++ code (attribution_tree_{f32,f64}.safetensors).

attattr's script, for one example: `att_all` = every layer's attribution summed over the heads;
each layer divided by the absolute value of its largest entry outside [CLS]'s row
(`[1:, :].max()`), entries not above the threshold zeroed (`*= (p > threshold)`); the root is the
token with the largest row sum of the layer-summed attribution once the diagonal, negative
entries and [CLS]'s row are zeroed (`argsort(...)[::-1]`, [CLS] skipped); the root's edges come
from layer 10 (BERT-base's 12 layers: the last one has attribution in [CLS]'s row only), then
layers 9..0 are swept row by row from token 1, key by key, with a state per token (-1 not in the
tree, 0 a leaf, 1 a parent) that admits an edge i -> j only when i is in the tree and j is not.

What is generalized here (attattr's script hard-codes BERT-base), as docs/interpretability.md
states for the C++ side as well:
  - the class token may be absent (`class_token` None) or at any index, and a root may be given
    (`root`); a class token given as root keeps its row (for its edges and the layer maxima);
  - the top layer is the highest whose maximum (over the rows that may give edges) is positive,
    attattr's layer 10 for a [CLS]-pooled model; a layer whose maximum is <= 0 gives no edge
    (attattr would divide by 0 there);
  - equal root scores go to the last token: attattr's reversed argsort with a stable sort
    (numpy's default quicksort is stable only on short rows).

Cases: ViTs from oracles/blocks.py with attributions from oracles/attribution.py's autograd
implementation (left rule, m = 64 as attattr runs it for trees: batch_size 16 x num_batch 4),
one tree per image at the predicted class; and synthetic attributions (z |z|, with negative
entries, quantized ones with ties, layers with no positive entry) with other taus,
roots and class tokens."""

from __future__ import annotations

import dataclasses
import json
from typing import List, Optional

import numpy as np
import torch

from fixturelib import FixtureFiles, Tensors, base_metadata, fixture, seed_of
from oracles import attribution, blocks

TREE_STEPS = 64
TAU = 0.4

TREE_VIT_CASES = [
    # [CLS] pooling: the last layer has attribution in the CLS row only, the tree starts below it.
    blocks.VitCase("tree00_cls_token", 16, 16, 4, 1, 4, 16, 2, 32, 4, batch=3,
                   layer_norm_eps=1e-6),
    # No class token, mean pooling: every row of every layer may give edges.
    blocks.VitCase("tree01_nocls_mean_post", 12, 16, 4, 1, 3, 12, 3, 24, 3, activation="relu",
                   norm_first=False, final_norm=False, class_token=False, position="none",
                   pooling="mean", batch=2),
    # A class token that the pooling leaves out: the last layer has attribution everywhere.
    blocks.VitCase("tree02_cls_mean", 12, 12, 3, 1, 3, 12, 2, 24, 3, pooling="mean", batch=2),
]


@dataclasses.dataclass(frozen=True)
class SyntheticCase:
    name: str
    layers: int
    heads: int
    tokens: int
    tau: float = TAU
    class_token: Optional[int] = 0
    root: Optional[int] = None
    # "signed_square": z |z|, z ~ N(0, 1); "quantized": integers in -2..4 over 4 (exact ties)
    values: str = "signed_square"
    # Layers (from the top) whose rows other than the class token's are zeroed, as in the last
    # layer of a [CLS]-pooled model; and a layer made all negative.
    zero_top_layers: int = 0
    negative_layer: Optional[int] = None


SYNTHETIC_CASES = [
    SyntheticCase("syn00_default", 6, 2, 16),
    SyntheticCase("syn01_low_tau", 6, 2, 16, tau=0.15),
    SyntheticCase("syn02_no_class_token", 5, 2, 15, class_token=None),
    SyntheticCase("syn03_root_given", 6, 2, 16, root=7),
    SyntheticCase("syn04_root_is_class_token", 6, 2, 16, root=0, zero_top_layers=1),
    SyntheticCase("syn05_class_token_3", 4, 2, 12, tau=0.3, class_token=3),
    SyntheticCase("syn06_zero_top_negative_middle", 6, 2, 16, zero_top_layers=2,
                  negative_layer=2),
    SyntheticCase("syn07_quantized_ties", 5, 2, 10, values="quantized"),
    SyntheticCase("syn08_quantized_ties_no_class_token", 4, 3, 9, class_token=None,
                  values="quantized", tau=0.5),
    SyntheticCase("syn09_tau_one", 3, 2, 8, tau=1.0),
    SyntheticCase("syn10_dense", 4, 2, 24, tau=0.05),
]


def attattr_tree(attributions: np.ndarray, tau: float, class_token: Optional[int],
                 root: Optional[int] = None) -> dict:
    """The tree of one example, attributions layers x H x L x L (float64), as attattr builds
    it (generalized as the module says). Returns root, top_layer, nodes (in the order they
    join) and edges (layer, from, to, weight) in the order they are added."""
    att_all = attributions.sum(1)  # layers x L x L: the heads' sum
    num_layers, L, _ = att_all.shape

    # The root: attattr's att_combine_layer.
    if root is None:
        combined = att_all.sum(0)
        top = abs(combined.max())
        if top > 0:  # attattr divides unconditionally (0/0 would give NaN)
            combined = combined / top
        combined *= (1 - np.identity(L)) * (combined > 0)
        if class_token is not None:
            combined[class_token] *= 0
        order = np.argsort(combined.sum(-1), kind="stable")[::-1]
        root = int(order[0] if order[0] != class_token else order[1])

    # Rows that may give edges: attattr's [1:, :] (all but [CLS]), and [CLS]'s if it is the root.
    rows = [i for i in range(L) if i != class_token or i == root]
    proportion = np.zeros_like(att_all)
    usable = []
    for l in range(num_layers):
        top = att_all[l][rows, :].max()
        if top > 0:
            proportion[l] = att_all[l] / abs(top)
            usable.append(l)
    proportion *= (proportion > tau).astype(int)

    fixed = [-1] * L  # -1: not in the tree, 0: in it without children yet, 1: has children
    fixed[root] = 0
    nodes = [root]
    edges = []
    top_layer = usable[-1] if usable else -1

    def add(layer, i, j):
        edges.append((layer, i, j, float(proportion[layer][i][j])))
        nodes.append(j)

    if top_layer >= 0:
        for j in range(L):
            if j != root and proportion[top_layer][root][j] > tau:
                fixed[j] = 0
                fixed[root] = 1
                add(top_layer, root, j)
        for layer in range(top_layer - 1, -1, -1):
            for i in rows:
                for j in range(L):
                    if proportion[layer][i][j] < tau or fixed[i] == -1:
                        continue
                    if fixed[j] == 1:
                        continue
                    if any(e[1] == i and e[2] == j for e in edges):
                        continue
                    if fixed[i] == 0 and fixed[j] == 0:
                        continue
                    if fixed[i] == 1 and fixed[j] == 0:
                        continue
                    if fixed[i] == 0 and fixed[j] == -1:
                        fixed[i] = 1
                        fixed[j] = 0
                    if fixed[i] == 1 and fixed[j] == -1:
                        fixed[j] = 0
                    add(layer, i, j)
    assert len(set(nodes)) == len(nodes) == len(edges) + 1
    return {"root": root, "top_layer": top_layer, "nodes": nodes, "edges": edges}


def tree_tensors(tree: dict, prefix: str) -> Tensors:
    edges = tree["edges"]
    return {
        prefix + "root": torch.tensor([tree["root"]], dtype=torch.int64),
        prefix + "top_layer": torch.tensor([tree["top_layer"]], dtype=torch.int64),
        prefix + "nodes": torch.tensor(tree["nodes"], dtype=torch.int64),
        # E x 3 (layer, from, to); E = 0 is stored as one row of -1 (the writer takes no empty
        # tensor's shape [0, 3] back), and weights then as [0.0]
        prefix + "edges": torch.tensor([e[:3] for e in edges] or [[-1, -1, -1]],
                                       dtype=torch.int64),
        prefix + "weights": torch.tensor([e[3] for e in edges] or [0.0], dtype=torch.float64),
    }


def synthetic_attributions(case: SyntheticCase, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed_of(case.name))
    shape = (case.layers, case.heads, case.tokens, case.tokens)
    if case.values == "quantized":
        a = torch.randint(-2, 5, shape, generator=g, dtype=torch.int64).to(torch.float64) / 4
    else:
        a = torch.randn(shape, generator=g, dtype=torch.float64)
        a = a * a.abs()
    for k in range(case.zero_top_layers):
        keep = a[case.layers - 1 - k, :, case.class_token].clone()
        a[case.layers - 1 - k] = 0
        a[case.layers - 1 - k, :, case.class_token] = keep
    if case.negative_layer is not None:
        a[case.negative_layer] = -a[case.negative_layer].abs() - 0.01
    return a.to(dtype)


def vit_tree_case(case: blocks.VitCase, dtype, trees: List[dict]) -> Tensors:
    model, images, _, _, predicted, tensors = attribution.classified_case(case, dtype)
    p = case.name + "."
    alphas = attribution.riemann_points(TREE_STEPS, "left")
    layers = [attribution.attribution(model, images, predicted, l, alphas)
              for l in range(case.num_layers)]
    for l, a in enumerate(layers):
        tensors[f"{p}layers.{l}.attribution"] = a
    class_token = 0 if case.class_token else None
    for b in range(case.batch):
        per_image = np.stack([a[b].double().numpy() for a in layers])
        tree = attattr_tree(per_image, TAU, class_token)
        if case.class_token and case.pooling == "token":
            # The last layer's rows other than CLS's carry no attribution: attattr's reason to
            # start one layer down.
            assert not per_image[-1][:, 1:].any() and tree["top_layer"] == case.num_layers - 2
        trees.append(tree)
        tensors.update(tree_tensors(tree, f"{p}trees.{b}."))
    return tensors


@fixture("attribution_tree")
def attribution_tree_fixture() -> FixtureFiles:
    files = {}
    for suffix, dtype in blocks.DTYPES.items():
        tensors: Tensors = {}
        trees: List[dict] = []
        for case in TREE_VIT_CASES:
            tensors.update(vit_tree_case(case, dtype, trees))
        for case in SYNTHETIC_CASES:
            a = synthetic_attributions(case, dtype)
            tensors[case.name + ".attributions"] = a
            tree = attattr_tree(a.double().numpy(), case.tau, case.class_token, case.root)
            trees.append(tree)
            tensors.update(tree_tensors(tree, case.name + ".tree."))
        # The trees are not all trivial: most have edges, from several layers.
        assert sum(len(t["edges"]) > 0 for t in trees) >= len(trees) - 2
        metadata = base_metadata()
        metadata["tau"] = repr(TAU)
        metadata["steps"] = str(TREE_STEPS)
        metadata["cases"] = json.dumps(
            [dict(dataclasses.asdict(c), kind="vit") for c in TREE_VIT_CASES] +
            [dict(dataclasses.asdict(c), kind="synthetic") for c in SYNTHETIC_CASES],
            sort_keys=True, separators=(",", ":"))
        files[f"attribution_tree_{suffix}.safetensors"] = (tensors, metadata)
    return files
