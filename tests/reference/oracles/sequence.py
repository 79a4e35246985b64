"""grad_sequence_classifier (grad_sequence_classifier_{f32,f64}.safetensors): the training loss
of attnlens's SequenceClassifier (blocks/sequence_classifier.hpp), the classifier of the ListOps
study, as PyTorch modules: nn.Embedding -> nn.TransformerEncoder with src_key_padding_mask from
each sequence's length -> the mean of the outputs over the real tokens (or the first token's
output) -> nn.Linear; loss F.cross_entropy (mean over the batch). torch.autograd's gradients of
every parameter, under the module's state_dict names (embedding.weight, encoder.layers.{i}...,
encoder.norm.*, encoder.position_embeddings.weight, head.*).

Checks in the generator (ATTNLENS_GRADIENT_REPORT=1 prints the largest differences): every
gradient finite; the same classifier written with torch primitives (weight[tokens],
gradients.encoder_from_primitives, the pooling as a masked sum) gives the same logits and
gradients in float64 (the padding row excepted: nn.Embedding's padding_idx rule); central
differences of the float64 loss; the float32 file within 1e-5 of float64 autograd on the same
rounded numbers; padding does not reach the logits (other ids there, more of it)."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fixturelib import FixtureFiles, Metadata, Tensors, fixture, seed_of
from oracles import blocks, gradients

F64 = torch.float64


@dataclasses.dataclass(frozen=True)
class SequenceCase:
    name: str
    num_layers: int
    d_model: int
    nhead: int
    dim_feedforward: int
    activation: str
    norm_first: bool
    final_norm: bool
    pooling: str                # "mean" over the real tokens | "first"
    padding_idx: Optional[int]  # nn.Embedding's
    position: str               # "none" | "learned" (encoder.position_embeddings, added first)
    max_len: int
    lengths: Tuple[int, ...]    # one per sequence; the batch is padded to the longest...
    length: int                 # ... or to this padded length L
    padding_token_in_text: bool = False  # a real token equal to padding_idx (its row: no gradient)
    vocab_size: int = 16        # ListOps's vocabulary: 0 pads
    num_classes: int = 10


CASES = [
    SequenceCase("sc00_mean_post_relu_padding_idx", 2, 16, 2, 32, "relu", norm_first=False,
                 final_norm=False, pooling="mean", padding_idx=0, position="none", max_len=0,
                 lengths=(9, 6, 3), length=9),
    SequenceCase("sc01_first_pre_gelu_norm_learned", 2, 12, 3, 24, "gelu", norm_first=True,
                 final_norm=True, pooling="first", padding_idx=None, position="learned",
                 max_len=12, lengths=(7, 9, 2), length=10),
    SequenceCase("sc02_mean_pre_tanh_padding_id_used", 3, 8, 2, 16, "gelu_tanh",
                 norm_first=True, final_norm=True, pooling="mean", padding_idx=0,
                 position="none", max_len=0, lengths=(5, 8, 1, 8), length=8,
                 padding_token_in_text=True),
]


class ReferenceSequenceClassifier(nn.Module):
    def __init__(self, case: SequenceCase):
        super().__init__()
        self.case = case
        self.embedding = nn.Embedding(case.vocab_size, case.d_model, padding_idx=case.padding_idx,
                                      dtype=F64)
        layer = nn.TransformerEncoderLayer(case.d_model, case.nhead, case.dim_feedforward,
                                           dropout=0.0,
                                           activation=blocks.activation_module(case.activation),
                                           batch_first=True, norm_first=case.norm_first, dtype=F64)
        norm = nn.LayerNorm(case.d_model, dtype=F64) if case.final_norm else None
        self.encoder = nn.TransformerEncoder(layer, case.num_layers, norm=norm,
                                             enable_nested_tensor=False)
        if case.position == "learned":  # attnlens's name for the table, under the encoder
            self.encoder.position_embeddings = nn.Embedding(case.max_len, case.d_model, dtype=F64)
        self.head = nn.Linear(case.d_model, case.num_classes, dtype=F64)

    def embedded(self, tokens, embedding_weight=None):
        x = (self.embedding(tokens) if embedding_weight is None else embedding_weight[tokens])
        if self.case.position == "learned":
            x = x + self.encoder.position_embeddings.weight[:tokens.shape[1]]
        return x

    def pooled(self, y, lengths):
        if self.case.pooling == "first":
            return y[:, 0]
        keep = (torch.arange(y.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        return (y * keep.to(y.dtype)).sum(1) / lengths[:, None].to(y.dtype)

    def forward(self, tokens, lengths):
        padding = torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]  # True = ignore
        y = self.encoder(self.embedded(tokens), src_key_padding_mask=padding)
        return self.head(self.pooled(y, lengths))

    def from_primitives(self, tokens, lengths):
        """The same classifier on torch primitives: the lookup as weight[tokens] (so the
        padding row gets its gradient here), gradients.encoder_from_primitives, the masked
        mean as a sum; independent of nn.Embedding and PyTorch's encoder modules."""
        B, L = tokens.shape
        padding = torch.arange(L)[None, :] >= lengths[:, None]
        geometry = blocks.EncoderCase(self.case.name, self.case.num_layers, self.case.d_model,
                                      self.case.nhead, self.case.dim_feedforward,
                                      self.case.activation, self.case.norm_first,
                                      self.case.final_norm, batch=B, length=L,
                                      key_padding_mask=True)
        y = gradients.encoder_from_primitives(
            self.encoder, geometry, self.embedded(tokens, self.embedding.weight), padding, None)
        return F.linear(self.pooled(y, lengths), self.head.weight, self.head.bias)


def make_case(case: SequenceCase):
    """The model (float64, perturbed as the block fixtures), tokens, lengths and labels. Real
    tokens are uniform in 1..vocab-1; padding holds padding_idx, or random ids without one."""
    seed = seed_of("grad_sequence_classifier_" + case.name)
    torch.manual_seed(seed)
    model = ReferenceSequenceClassifier(case)
    blocks.perturb(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    B, L = len(case.lengths), case.length
    tokens = torch.randint(1, case.vocab_size, (B, L), generator=g)
    lengths = torch.tensor(case.lengths, dtype=torch.int64)
    padded = torch.arange(L)[None, :] >= lengths[:, None]
    if case.padding_idx is not None:
        tokens[padded] = case.padding_idx
    if case.padding_token_in_text:
        tokens[0, 1] = case.padding_idx
    labels = torch.randint(case.num_classes, (B,), generator=g)
    return model, tokens, lengths, labels


def autograd(model: ReferenceSequenceClassifier, tokens, lengths, labels, primitives=False):
    """The loss, the logits and the gradient of every parameter (state_dict names)."""
    leaves = dict(model.named_parameters())
    with torch.enable_grad():  # PyTorch 1.13's documented (slow) path, not the fast path
        logits = (model.from_primitives if primitives else model)(tokens, lengths)
        loss = F.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads)), loss.detach(), logits.detach()


def without_padding_row(case: SequenceCase, grads: Dict[str, torch.Tensor]):
    out = dict(grads)
    if case.padding_idx is not None:
        w = out["embedding.weight"].clone()
        w[case.padding_idx] = 0
        out["embedding.weight"] = w
    return out


def check_padding_invariance(case: SequenceCase, model, tokens, lengths, logits) -> None:
    """Other ids on the padding, and three more positions of it, leave the logits as they are."""
    B, L = tokens.shape
    padded = torch.arange(L)[None, :] >= lengths[:, None]
    other = tokens.clone()
    other[padded] = (other[padded] % (case.vocab_size - 1)) + 1
    longer = torch.cat([tokens, torch.full((B, 3), 5, dtype=tokens.dtype)], 1)
    worst = 0.0
    with torch.enable_grad():
        for variant in (other, longer):
            if case.position == "learned" and variant.shape[1] > case.max_len:
                continue
            diff = (model(variant, lengths).detach() - logits).abs().max().item()
            assert diff < 1e-12, f"{case.name}: padding moves the logits by {diff:g}"
            worst = max(worst, diff)
    gradients.note(f"grad_sequence_classifier {case.name}", "padding moves the logits by", worst)


def sequence_case(case: SequenceCase, dtype: torch.dtype) -> Tensors:
    where = f"grad_sequence_classifier {case.name} {str(dtype)[6:]}"
    model64, tokens, lengths, labels = make_case(case)
    model = copy.deepcopy(model64).to(dtype)
    model64 = copy.deepcopy(model).double()  # the numbers the file holds, in float64
    grads64, loss64, logits64 = autograd(model64, tokens, lengths, labels)
    gradients.assert_finite(grads64, where)
    if case.padding_idx is not None:
        assert bool((grads64["embedding.weight"][case.padding_idx] == 0).all()), where
    primitive, _, primitive_logits = autograd(model64, tokens, lengths, labels, primitives=True)
    if case.padding_token_in_text:  # the rule is what keeps the padding row at 0 here
        assert bool(primitive["embedding.weight"][case.padding_idx].abs().max() > 1e-3), where
    gradients.check_close({"logits": primitive_logits}, {"logits": logits64}, 1e-12, where,
                          "primitives' logits against the modules'")
    gradients.check_close(without_padding_row(case, primitive), grads64, 1e-12, where,
                          "primitives' gradients against the modules'")
    check_padding_invariance(case, model64, tokens, lengths, logits64)
    # Calculus, without the padding_idx rule: the primitives' gradients against central
    # differences of the loss (the same function as the modules').
    g = torch.Generator().manual_seed(seed_of("grad_sequence_classifier_check_" + case.name))
    with torch.no_grad():
        gradients.central_differences(lambda: F.cross_entropy(model64(tokens, lengths), labels),
                                      dict(model64.named_parameters()), primitive, g, where)
    if dtype == F64:
        grads, loss, logits = grads64, loss64, logits64
    else:
        grads, loss, logits = autograd(model, tokens, lengths, labels)
        gradients.check_close({k: v.double() for k, v in grads.items()}, grads64, 1e-5, where,
                              "float32 against float64 autograd")
    p = case.name + "."
    out: Tensors = blocks.state_dict_of(model, p)
    out[p + "tokens"], out[p + "lengths"], out[p + "labels"] = tokens, lengths, labels
    out[p + "logits"] = logits.to(dtype)
    out[p + "loss"] = loss.to(dtype).reshape(1)
    for name, grad in grads.items():
        out[p + "grad." + name] = grad.to(dtype)
    return out


def sequence_fixture(dtype: torch.dtype) -> Tuple[Tensors, Metadata]:
    tensors: Tensors = {}
    for case in CASES:
        tensors.update(sequence_case(case, dtype))
    metadata = gradients.file_metadata(
        loss="F.cross_entropy(logits, labels) (mean over the batch)")
    metadata["cases"] = json.dumps([dataclasses.asdict(c) for c in CASES], sort_keys=True,
                                   separators=(",", ":"))
    return tensors, metadata


@fixture("grad_sequence_classifier")
def grad_sequence_classifier() -> FixtureFiles:
    return {"grad_sequence_classifier_f32.safetensors": sequence_fixture(torch.float32),
            "grad_sequence_classifier_f64.safetensors": sequence_fixture(F64)}
