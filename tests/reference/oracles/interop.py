"""Interop fixtures (files interop_*): PyTorch vision transformers exported to attnlens by
examples/export_pytorch.py, and attnlens ViT directories loaded into PyTorch by
examples/load_in_pytorch.py.

Into attnlens: three seeded, perturbed ViTs, one per layout the exporter reads: timm's
structure (blocks.ReferenceViT, timm is not in Debian), torchvision's VisionTransformer names
(TorchvisionStyleViT below, written after torchvision's module structure: torchvision is not
installed for Debian's python3-torch) and a hand-written nn.Conv2d + nn.TransformerEncoder ViT
(HandWrittenViT). Each state_dict is torch.save'd and run through the exporter's command line;
the committed model directory is what it writes, the expected logits are the oracle module's
own, which the exporter's --expected-out must match.

Out of attnlens: two ViT directories written here from docs/model-format.md (config.json by
hand, weights of a seeded, perturbed ReferenceViT under timm's names), run through
load_in_pytorch.py; its logits are committed (and must equal ReferenceViT's).

Also checked here and not committed: the exported directories loaded back by load_in_pytorch.py
give the oracle's logits; a pickled module and a .safetensors state_dict export to the same
bytes as the .pt state_dict; timm's qkv_bias=False and no_embed_class convert; an
nn.TransformerEncoder state_dict exports as the module does; the refusals of both scripts."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from fixturelib import FixtureFiles, base_metadata, fixture, safetensors_bytes, seed_of
from oracles.blocks import ReferenceViT, VitCase, perturb

ROOT = Path(__file__).resolve().parents[3]
EXPORT = ROOT / "examples" / "export_pytorch.py"
LOAD = ROOT / "examples" / "load_in_pytorch.py"
sys.path.insert(0, str(ROOT / "examples"))
import export_pytorch  # noqa: E402
import load_in_pytorch  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------------------------
# The source models


class TvMLPBlock(nn.Sequential):
    """torchvision's MLPBlock: Linear, GELU, Dropout, Linear, Dropout (state_dict mlp.0, mlp.3)."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0),
                         nn.Linear(mlp_dim, dim), nn.Dropout(0.0))


class TvEncoderBlock(nn.Module):
    """torchvision's EncoderBlock: pre-norm, nn.MultiheadAttention(batch_first=True)."""

    def __init__(self, heads: int, dim: int, mlp_dim: int, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = TvMLPBlock(dim, mlp_dim)

    def forward(self, inputs):
        x = self.ln_1(inputs)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inputs
        return x + self.mlp(self.ln_2(x))


class TvEncoder(nn.Module):
    """torchvision's Encoder: pos_embedding added to the whole sequence, layers, ln."""

    def __init__(self, seq_length: int, layers: int, heads: int, dim: int, mlp_dim: int,
                 eps: float):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(collections.OrderedDict(
            (f"encoder_layer_{i}", TvEncoderBlock(heads, dim, mlp_dim, eps))
            for i in range(layers)))
        self.ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TorchvisionStyleViT(nn.Module):
    """torchvision.models.VisionTransformer's structure and state_dict names: conv_proj,
    class_token, encoder.pos_embedding, encoder.layers.encoder_layer_{i}.{ln_1,
    self_attention, ln_2, mlp.0, mlp.3}, encoder.ln, heads.head; the CLS row is classified."""

    def __init__(self, image_size: int, patch_size: int, layers: int, heads: int, dim: int,
                 mlp_dim: int, num_classes: int, in_chans: int = 3, eps: float = 1e-6):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, dim
        self.conv_proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = TvEncoder(seq_length, layers, heads, dim, mlp_dim, eps)
        self.heads = nn.Sequential(collections.OrderedDict(head=nn.Linear(dim, num_classes)))

    def forward(self, images):
        n = images.shape[0]
        x = self.conv_proj(images).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


class HandWrittenViT(nn.Module):
    """The usual hand-written ViT: an nn.Conv2d patch embedding, learned positions, an
    nn.TransformerEncoder of post-norm nn.TransformerEncoderLayers with a final norm, mean
    pooling (no class token), a linear head."""

    def __init__(self, height: int, width: int, patch: int, in_chans: int, dim: int, heads: int,
                 ff: int, depth: int, classes: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (height // patch) * (width // patch), dim))
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=False)
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim),
                                                 enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        return self.head(self.transformer(x).mean(dim=1))


def perturb_by_type(model: nn.Module, seed: int) -> None:
    """Moves every parameter away from its initial value, by module type (torchvision's names
    ln_1 / ln_2 / ln do not say "norm"): LayerNorm weights 1 + 0.2 N(0,1), biases 0.3 N(0,1),
    the model's own tensors (class token, positions) 0.5 N(0,1), other weights + 0.05 N(0,1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
                if isinstance(module, nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + 0.2 * noise)
                elif name.endswith("bias"):
                    p.copy_(0.3 * noise)
                elif module is model or name in ("pos_embedding",):
                    p.copy_(0.5 * noise)
                else:
                    p.add_(0.05 * noise)


def reference_vit(case: VitCase) -> ReferenceViT:
    """A seeded ReferenceViT perturbed as the vit fixtures are (tokens O(0.5))."""
    seed = seed_of(case.name)
    torch.manual_seed(seed)
    model = ReferenceViT(case)
    perturb(model, seed)
    with torch.no_grad():
        for name in ("cls_token", "pos_embed"):
            if hasattr(model, name):
                getattr(model, name).mul_(10.0)
    return model


def images_for(name: str, batch: int, chans: int, height: int, width: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed_of(name) + 1)
    return torch.randn(batch, chans, height, width, generator=g, dtype=torch.float64).to(dtype)


def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's output (the first, for ReferenceViT's (logits, tokens)), on PyTorch's
    documented (slow) path: gradients enabled."""
    with torch.enable_grad():
        out = model(images)
    return (out[0] if isinstance(out, tuple) else out).detach()


def assert_close(actual, expected, what: str, tol: Optional[float] = None) -> float:
    """max |actual - expected| / max(1, max |expected|) <= tol (default 1e-6 for float32,
    1e-12 for float64); printed with ATTNLENS_INTEROP_REPORT=1."""
    tol = tol if tol is not None else (1e-6 if expected.dtype == torch.float32 else 1e-12)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {list(actual.shape)} vs {list(expected.shape)}")
    scale = max(1.0, expected.abs().max().item())
    diff = (actual.double() - expected.double()).abs().max().item() / scale
    if not diff <= tol:
        raise AssertionError(f"{what}: difference {diff:g} exceeds {tol:g}")
    if os.environ.get("ATTNLENS_INTEROP_REPORT"):
        print(f"{what}: {diff:.3g}")
    return diff


# ----------------------------------------------------------------------------------------------
# Running the scripts


def run_script(script: Path, args: List[str], expect: int = 0) -> str:
    """The script's output (stdout + stderr); its exit code must be `expect`. One thread, so
    that its numbers do not depend on the machine's core count."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != expect:
        raise AssertionError(f"{script.name} {' '.join(args)}: exit code {done.returncode}, "
                             f"expected {expect}:\n{output}")
    return output


def main_in_process(main, args: List[str], expect: int = 0) -> str:
    """A script's main() in this process (for pickled modules of classes defined here)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    if code != expect:
        raise AssertionError(f"main({args}): exit code {code}, expected {expect}:\n"
                             f"{out.getvalue()}{err.getvalue()}")
    return out.getvalue() + err.getvalue()


def directory_bytes(directory: Path) -> dict:
    return {name: (directory / name).read_bytes() for name in ("config.json", "model.safetensors")}


def expect_words(output: str, *words: str) -> None:
    for word in words:
        if word not in output:
            raise AssertionError(f"expected {word!r} in the message, got:\n{output}")


# ----------------------------------------------------------------------------------------------
# Into attnlens: export_pytorch.py on the three layouts


@dataclasses.dataclass(frozen=True)
class ExportCase:
    name: str
    layout: str                    # timm, torchvision, transformer_encoder
    dtype: str                     # of the export (--dtype) and of the computation
    options: tuple                 # export_pytorch.py's options beyond the files
    module_options: tuple          # the same for the pickled module, which says the rest
    batch: int = 3


EXPORT_CASES = [
    # ReferenceViT's attention does not name its heads num_heads.
    ExportCase("interop_timm_vit", "timm", "float32", ("--num-heads", "3"), ("--num-heads", "3")),
    ExportCase("interop_torchvision_vit", "torchvision", "float64", ("--num-heads", "4"), ()),
    ExportCase("interop_torch_vit", "transformer_encoder", "float32",
               ("--num-heads", "2", "--activation", "gelu", "--norm-first", "false",
                "--img-size", "8", "12"), ("--img-size", "8", "12")),
]

TIMM_CASE = VitCase("interop_timm_vit", 16, 16, 4, 3, 5, 24, 3, 96, 2, layer_norm_eps=1e-6)


def export_source(case: ExportCase) -> nn.Module:
    """The seeded, perturbed float64 source model of a case."""
    if case.layout == "timm":
        return reference_vit(TIMM_CASE)
    torch.manual_seed(seed_of(case.name))
    if case.layout == "torchvision":
        model = TorchvisionStyleViT(16, 4, 2, 4, 32, 64, 4).double()
    else:
        model = HandWrittenViT(8, 12, 4, 2, 24, 2, 48, 2, 3).double()
    perturb_by_type(model, seed_of(case.name))
    return model


def export_fixture(case: ExportCase) -> FixtureFiles:
    dtype = DTYPES[case.dtype]
    model = copy.deepcopy(export_source(case)).to(dtype).eval()
    conv = model.patch_embed.proj if case.layout == "timm" else (
        model.conv_proj if case.layout == "torchvision" else model.patch_embed)
    height, width = (16, 16) if case.layout != "transformer_encoder" else (8, 12)
    images = images_for(case.name, case.batch, conv.in_channels, height, width, dtype)
    expected = logits_of(model, images)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / "source.pt")
        export_pytorch.save_safetensors(tmp / "images.safetensors", {"images": images})
        files = ["--out", str(tmp / "model"), "--dtype", case.dtype, "--images",
                 str(tmp / "images.safetensors"), "--images-out", str(tmp / "x.safetensors"),
                 "--expected-out", str(tmp / "y.safetensors")]
        said = run_script(EXPORT, [str(tmp / "source.pt"), *case.options, *files])
        expect_words(said, f"a {case.layout}-layout ViT state_dict")
        exported = directory_bytes(tmp / "model")
        x = export_pytorch.load_safetensors(tmp / "x.safetensors")
        assert torch.equal(x["images"], images), "--images-out"
        y = export_pytorch.load_safetensors(tmp / "y.safetensors")["logits"]
        assert y.dtype == dtype, "--expected-out's dtype"
        # The exporter rebuilt the source's layout from the state_dict alone (SourceViT).
        assert_close(y, expected, f"{case.name}: --expected-out against the oracle's module")

        # Back into PyTorch: the exported directory gives the oracle's logits.
        back = load_in_pytorch.load_vit(tmp / "model")
        assert_close(load_in_pytorch.run(back, images), expected,
                     f"{case.name}: load_in_pytorch on the export")
        check_other_sources(case, model, tmp, exported, expected, images)

    metadata = base_metadata()
    metadata.update(dtype=case.dtype, layout=case.layout,
                    command=" ".join(["examples/export_pytorch.py", "SOURCE.pt", *case.options,
                                      "--out", case.name, "--dtype", case.dtype]))
    return {f"{case.name}/config.json": exported["config.json"],
            f"{case.name}/model.safetensors": exported["model.safetensors"],
            f"{case.name}_images.safetensors": ({"images": images}, metadata),
            f"{case.name}_expected.safetensors": ({"logits": expected}, metadata)}


def check_other_sources(case: ExportCase, model: nn.Module, tmp: Path, exported: dict,
                        expected: torch.Tensor, images: torch.Tensor) -> None:
    """The pickled module and a .safetensors state_dict export to the same directory; the
    module's own --expected-out is the oracle's."""
    torch.save(model, tmp / "module.pt")
    # A module says what its submodules know: the heads of nn.MultiheadAttention, everything
    # of nn.TransformerEncoderLayer, eps of a LayerNorm.
    main_in_process(export_pytorch.main,
                    [str(tmp / "module.pt"), *case.module_options, "--out",
                     str(tmp / "from_module"),
                     "--dtype", case.dtype, "--images", str(tmp / "images.safetensors"),
                     "--expected-out", str(tmp / "module_y.safetensors")])
    assert directory_bytes(tmp / "from_module") == exported, f"{case.name}: module export"
    y = export_pytorch.load_safetensors(tmp / "module_y.safetensors")["logits"]
    assert_close(y, expected, f"{case.name}: the module's --expected-out", 0.0)
    export_pytorch.save_safetensors(tmp / "source.safetensors", model.state_dict())
    run_script(EXPORT, [str(tmp / "source.safetensors"), *case.options, "--out",
                        str(tmp / "from_safetensors"), "--dtype", case.dtype])
    assert directory_bytes(tmp / "from_safetensors") == exported, f"{case.name}: safetensors"
    # A contradicting option is refused.
    if case.layout == "torchvision":
        out = main_in_process(export_pytorch.main, [str(tmp / "module.pt"), "--num-heads", "2",
                                                    "--out", str(tmp / "bad")], expect=2)
        expect_words(out, "--num-heads 2 contradicts")


for _case in EXPORT_CASES:
    fixture(_case.name)(functools.partial(export_fixture, _case))


# ----------------------------------------------------------------------------------------------
# Out of attnlens: load_in_pytorch.py on ViT directories written from docs/model-format.md


@dataclasses.dataclass(frozen=True)
class LoadCase:
    vit: VitCase
    dtype: str
    bias: bool = True
    mean: Optional[tuple] = None
    std: Optional[tuple] = None


LOAD_CASES = [
    LoadCase(VitCase("interop_attnlens_vit_pre", 12, 8, 4, 3, 4, 16, 2, 48, 2,
                     activation="gelu_tanh", layer_norm_eps=1e-6, batch=3),
             "float32", mean=(0.5, 0.25, 0.125), std=(0.5, 2.0, 1.5)),
    LoadCase(VitCase("interop_attnlens_vit_post", 9, 9, 3, 1, 0, 12, 3, 24, 3,
                     activation="relu", norm_first=False, final_norm=False, class_token=False,
                     position="none", pooling="mean", batch=2), "float64", bias=False),
]


def attnlens_config(case: LoadCase) -> dict:
    """config.json of docs/model-format.md's "Vision transformers" for the case."""
    c = case.vit
    config = {"model_type": "vision_transformer", "img_size": [c.image_height, c.image_width],
              "patch_size": c.patch_size, "in_chans": c.in_chans, "num_classes": c.num_classes,
              "embed_dim": c.d_model, "depth": c.num_layers, "num_heads": c.nhead,
              "mlp_ratio": c.dim_feedforward / c.d_model, "activation": c.activation,
              "layer_norm_eps": c.layer_norm_eps, "norm_first": c.norm_first, "bias": case.bias,
              "final_norm": c.final_norm, "class_token": c.class_token,
              "global_pool": "token" if c.pooling == "token" else "avg",
              "pos_embed": c.position, "relative_position": {"type": "none"},
              "attention": {"type": "softmax"}, "residual": {"type": "standard"}}
    if case.mean is not None:
        config["mean"], config["std"] = list(case.mean), list(case.std)
    return config


def load_fixture(case: LoadCase) -> FixtureFiles:
    c, dtype = case.vit, DTYPES[case.dtype]
    model = reference_vit(c)
    if not case.bias:  # bias false: the blocks' Linear layers have none (zero in the oracle)
        with torch.no_grad():
            for block in model.blocks:
                for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                    linear.bias.zero_()
    model = copy.deepcopy(model).to(dtype).eval()
    state = {k: v for k, v in model.state_dict().items()
             if case.bias or not (k.endswith("bias") and (".attn." in k or ".mlp." in k))}
    images = images_for(c.name, c.batch, c.in_chans, c.image_height, c.image_width, dtype)
    expected = logits_of(model, images)
    config_text = json.dumps(attnlens_config(case), indent=2) + "\n"
    weights = safetensors_bytes(state)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "model").mkdir()
        (tmp / "model" / "config.json").write_text(config_text)
        (tmp / "model" / "model.safetensors").write_bytes(weights)
        export_pytorch.save_safetensors(tmp / "images.safetensors", {"images": images})
        said = run_script(LOAD, [str(tmp / "model"), "--images", str(tmp / "images.safetensors"),
                                 "--out", str(tmp / "logits.safetensors")])
        expect_words(said, "image 0:", "wrote")
        logits = export_pytorch.load_safetensors(tmp / "logits.safetensors")["logits"]
        assert logits.dtype == dtype, "load_in_pytorch's logits dtype"
        assert_close(logits, expected, f"{c.name}: load_in_pytorch against ReferenceViT")
        check_refusals(tmp, config_text)

    metadata = base_metadata()
    metadata.update(dtype=case.dtype, command=f"examples/load_in_pytorch.py {c.name} --images "
                                              f"{c.name}_images.safetensors --out LOGITS")
    return {f"{c.name}/config.json": config_text.encode(),
            f"{c.name}/model.safetensors": weights,
            f"{c.name}_images.safetensors": ({"images": images}, metadata),
            f"{c.name}_expected.safetensors": ({"logits": logits}, metadata)}


def check_refusals(tmp: Path, config_text: str) -> None:
    """load_in_pytorch.py refuses, with exit code 2 and the key named, what it cannot build."""
    base = json.loads(config_text)
    for edit, words in (
            ({"relative_position": {"type": "quadratic"}}, ("relative_position", "quadratic")),
            ({"attention": {"type": "bilateral"}}, ("attention", "bilateral")),
            ({"attention": {"type": "softmax", "boost": 1}}, ("attention", "boost")),
            ({"attention": {"type": "softmax", "content": False}}, ("attention", "content")),
            ({"mlp_ratio": 0}, ("mlp_ratio 0", "attention-only")),
            ({"residual": {"type": "fidelity", "lambda": 0.5}}, ("residual", "fidelity")),
            ({"qkv_bias": True}, ("unknown key", "qkv_bias"))):
        (tmp / "model" / "config.json").write_text(json.dumps({**base, **edit}))
        out = main_in_process(load_in_pytorch.main, [str(tmp / "model")], expect=2)
        expect_words(out, "load_in_pytorch: error:", *words)
    (tmp / "model" / "config.json").write_text(config_text)


for _case in LOAD_CASES:
    fixture(_case.vit.name)(functools.partial(load_fixture, _case))


# ----------------------------------------------------------------------------------------------
# Conversions without a fixture of their own, checked whenever the interop fixtures are built


def check_timm_variants() -> None:
    """timm's qkv_bias=False (no attn.qkv.bias) and no_embed_class (pos_embed without the CLS
    row) convert to the same model; an unknown tensor and a missing option are refused; an
    nn.TransformerEncoder state_dict exports as the module does."""
    case = dataclasses.replace(TIMM_CASE, name="interop_timm_variants")
    model = reference_vit(case).float().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.bias.zero_()
        model.pos_embed[:, 0].zero_()
    images = images_for(case.name, 2, 3, 16, 16, torch.float32)
    expected = logits_of(model, images)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("attn.qkv.bias")}
    state["pos_embed"] = state["pos_embed"][:, 1:]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options = export_pytorch.VitOptions(num_heads=3)
        export_pytorch.export_vit(state, tmp / "model", options=options)
        y = export_pytorch.vit_pytorch_logits(state, images, torch.float32, options)
        assert_close(y, expected, "no qkv bias, no_embed_class: SourceViT")
        back = load_in_pytorch.load_vit(tmp / "model")
        assert_close(load_in_pytorch.run(back, images), expected,
                     "no qkv bias, no_embed_class: the export")
        torch.save({**state, "fc_norm.weight": torch.ones(24)}, tmp / "fc_norm.pt")
        out = main_in_process(export_pytorch.main, [str(tmp / "fc_norm.pt"), "--num-heads", "3",
                                                    "--out", str(tmp / "bad")], expect=2)
        expect_words(out, "fc_norm.weight", "fc_norm")
        torch.save(export_source(EXPORT_CASES[2]).state_dict(), tmp / "hand.pt")
        out = main_in_process(export_pytorch.main, [str(tmp / "hand.pt"), "--num-heads", "2",
                                                    "--img-size", "8", "12", "--out",
                                                    str(tmp / "bad")], expect=2)
        expect_words(out, "--activation")

        # (a) an nn.TransformerEncoder's state_dict, with the options its module would say.
        torch.manual_seed(seed_of("interop_encoder_state_dict"))
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16),
                                        enable_nested_tensor=False)
        perturb_by_type(encoder, seed_of("interop_encoder_state_dict"))
        export_pytorch.export_encoder(encoder, tmp / "encoder_module")
        torch.save(encoder.state_dict(), tmp / "encoder_sd.pt")
        src = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
        torch.save(src, tmp / "src.pt")
        run_script(EXPORT, [str(tmp / "encoder_sd.pt"), "--num-heads", "2", "--activation",
                            "gelu", "--norm-first", "true", "--out", str(tmp / "encoder_sd"),
                            "--inputs", str(tmp / "src.pt"), "--expected-out",
                            str(tmp / "encoder_y.safetensors")])
        assert directory_bytes(tmp / "encoder_sd") == directory_bytes(tmp / "encoder_module")
        y = export_pytorch.load_safetensors(tmp / "encoder_y.safetensors")["output"]
        assert_close(y, export_pytorch.pytorch_output(encoder, src), "encoder state_dict")


@fixture("interop_checks")
def interop_checks() -> FixtureFiles:
    """No file: the conversions above, run by `generate.py --only interop_checks` (and by a
    full regeneration)."""
    check_timm_variants()
    return {}
