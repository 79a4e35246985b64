#!/usr/bin/env python3
"""Build the PyTorch module of an attnlens vision transformer directory and run it.

Reads DIR/config.json and DIR/model.safetensors (docs/model-format.md, "Vision transformers"),
for instance a checkpoint of `attnlens train` or a directory written by
examples/export_pytorch.py, builds the matching torch.nn.Module with timm's VisionTransformer
module structure (patch_embed.proj, cls_token, pos_embed, blocks.{i}.norm1 / attn.qkv /
attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm, head), written here in plain torch so that timm is
not needed, and loads model.safetensors into it strictly: every tensor is used, none is
missing, every shape fits. With --images it runs the model and prints the predicted class of
each image; --out writes the logits:

    python3 examples/load_in_pytorch.py my_vit --images x.safetensors --out logits.safetensors

x.safetensors (or a torch.save'd tensor or dict) holds `images`, B x C x H x W, as the model
takes them: config.json's `mean` and `std` are not applied. logits.safetensors gets `logits`,
B x num_classes (the pooled features, B x embed_dim, when num_classes is 0), in the dtype the
model ran in: that of model.safetensors (float32 for F16 / BF16 weights) unless --dtype says.

From Python:

    from load_in_pytorch import load_vit
    model = load_vit("my_vit")  # a torch.nn.Module in eval mode; model(images) -> logits
    torch.save(model.state_dict(), "vit.pt")

Beyond timm's pre-norm blocks the module builds what the format describes with PyTorch's own
operations: post-norm blocks (`norm_first` false, as nn.TransformerEncoderLayer's default), no
final norm, CLS or average pooling, learned `pos_embed` or none, relu / gelu / tanh-gelu, Linear
layers without biases (`bias` false). It refuses, with a message naming the key and exit code 2,
what attnlens computes and PyTorch's modules do not: a `relative_position` other than none, an
`attention` other than plain softmax (the variants, boosting / twicing, positional-only
`"content": false`), a `residual` other than standard (the fidelity residual), attention-only
blocks (`mlp_ratio` 0), and any key it does not know, rather than compute something else. Needs only torch; reads and writes safetensors with examples/export_pytorch.py's code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_pytorch import load_images, load_safetensors, save_safetensors  # noqa: E402

# config.json's keys (docs/model-format.md), all of which this script reads, and the two it
# accepts without using them: class_names only label the outputs, and proj_drop_rate is a
# training setting (the module is built for inference, where dropout is off).
CONFIG_KEYS = ("model_type", "img_size", "patch_size", "in_chans", "num_classes", "embed_dim",
               "depth", "num_heads", "mlp_ratio", "activation", "layer_norm_eps", "norm_first",
               "bias", "final_norm", "class_token", "global_pool", "pos_embed",
               "relative_position", "attention", "residual", "mean", "std", "class_names",
               "proj_drop_rate")


class ConfigError(ValueError):
    """A config.json this script cannot build a module for (the message names the key)."""


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ConfigError(f"activation {name!r}: expected relu, gelu or gelu_tanh")


def _require(config: dict, key: str, kind, default=None, where: str = "config.json"):
    """config[key] of JSON type `kind` (bool is not an int here), or `default` when absent
    (a required key has default None)."""
    if key not in config:
        if default is None:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = config[key]
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, kind))
    if not ok:
        raise ConfigError(f"{where}: key {key!r} must be of type {kind.__name__}, got "
                          f"{json.dumps(value)}")
    return value


def parse_config(config: dict, where: str = "config.json") -> dict:
    """The module's settings from a ViT config.json (defaults as attnlens and timm have them);
    raises ConfigError for what this script cannot build or does not know."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    model_type = _require(config, "model_type", str, where=where)
    if model_type != "vision_transformer":
        raise ConfigError(f"{where}: model_type {model_type!r}: this script builds vision "
                          "transformers (\"vision_transformer\"); an attnlens encoder directory "
                          "is torch.nn.TransformerEncoder's constructor arguments and state_dict "
                          "as they are")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (this script knows "
                          f"{', '.join(CONFIG_KEYS)})")
    # What attnlens adds and PyTorch's modules do not compute: refused, never dropped.
    for key, plain in (("relative_position", {"type": "none"}),
                       ("attention", {"type": "softmax"}), ("residual", {"type": "standard"})):
        value = config.get(key, plain)
        normalized = dict(value) if isinstance(value, dict) else value
        if key == "attention" and isinstance(normalized, dict) and normalized.get("boost") == 0:
            del normalized["boost"]
        if normalized != plain:
            raise ConfigError(
                f"{where}: {key} {json.dumps(value)} cannot be built in PyTorch by this script: "
                f"it builds only {json.dumps(plain)} (attnlens computes the others; "
                "docs/model-format.md)")

    size = _require(config, "img_size", object, where=where)
    if isinstance(size, int) and not isinstance(size, bool):
        height = width = size
    elif (isinstance(size, list) and len(size) == 2 and
          all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        height, width = size
    else:
        raise ConfigError(f"{where}: img_size must be an integer or [height, width], got "
                          f"{json.dumps(size)}")
    s = {"image_height": height, "image_width": width,
         "patch_size": _require(config, "patch_size", int, where=where),
         "in_chans": _require(config, "in_chans", int, 3, where),
         "num_classes": _require(config, "num_classes", int, where=where),
         "embed_dim": _require(config, "embed_dim", int, where=where),
         "depth": _require(config, "depth", int, where=where),
         "num_heads": _require(config, "num_heads", int, where=where),
         "activation": _require(config, "activation", str, "gelu", where),
         "layer_norm_eps": float(_require(config, "layer_norm_eps", float, 1e-6, where)),
         "norm_first": _require(config, "norm_first", bool, True, where),
         "bias": _require(config, "bias", bool, True, where),
         "final_norm": _require(config, "final_norm", bool, True, where),
         "class_token": _require(config, "class_token", bool, True, where)}
    s["global_pool"] = _require(config, "global_pool", str,
                                "token" if s["class_token"] else "avg", where)
    s["pos_embed"] = _require(config, "pos_embed", str, "learned", where)
    ratio = float(_require(config, "mlp_ratio", float, 4.0, where))
    _activation(s["activation"])  # checks the name
    for key in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "image_height",
                "image_width"):
        if s[key] <= 0:
            raise ConfigError(f"{where}: {key} must be > 0, got {s[key]}")
    if s["num_classes"] < 0:
        raise ConfigError(f"{where}: num_classes must be >= 0, got {s['num_classes']}")
    if height % s["patch_size"] or width % s["patch_size"]:
        raise ConfigError(f"{where}: img_size {height} x {width} is not a multiple of "
                          f"patch_size {s['patch_size']}")
    if s["embed_dim"] % s["num_heads"]:
        raise ConfigError(f"{where}: num_heads {s['num_heads']} does not divide embed_dim "
                          f"{s['embed_dim']}")
    if ratio == 0:
        raise ConfigError(f"{where}: mlp_ratio 0 (attention-only blocks, without mlp and norm2) "
                          "cannot be built in PyTorch by this script: timm's Block always has "
                          "both (attnlens computes them; docs/model-format.md)")
    if not ratio > 0:
        raise ConfigError(f"{where}: mlp_ratio must be > 0, got {ratio}")
    # timm: int(embed_dim * mlp_ratio); within 1e-9 of an integer counts as it (as attnlens).
    s["hidden"] = int(math.floor(ratio * s["embed_dim"] + 1e-9))
    if s["global_pool"] not in ("token", "avg"):
        raise ConfigError(f"{where}: global_pool must be \"token\" or \"avg\", got "
                          f"{s['global_pool']!r}")
    if s["global_pool"] == "token" and not s["class_token"]:
        raise ConfigError(f"{where}: global_pool \"token\" needs class_token")
    if s["pos_embed"] not in ("learned", "none"):
        raise ConfigError(f"{where}: pos_embed must be \"learned\" or \"none\", got "
                          f"{s['pos_embed']!r}")
    for key in ("mean", "std"):
        if key in config:
            value = config[key]
            if (not isinstance(value, list) or len(value) != s["in_chans"] or
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            for v in value)):
                raise ConfigError(f"{where}: {key} must be a list of in_chans = "
                                  f"{s['in_chans']} numbers")
    return s


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: a P x P convolution of stride P, then tokens in row-major order."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)  # B x N x E


class Attention(nn.Module):
    """timm's Attention: qkv packs q, k, v (each split into heads), softmax(q k^T / sqrt(d)) v,
    then proj."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        b, n, e = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B x H x N x d
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, e))


class Mlp(nn.Module):
    """timm's Mlp: fc1, activation, fc2."""

    def __init__(self, dim: int, hidden: int, activation: str, fc1_bias: bool = True,
                 fc2_bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=fc1_bias)
        self.act = _activation(activation)
        self.fc2 = nn.Linear(hidden, dim, bias=fc2_bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm's Block, x + attn(norm1(x)) then x + mlp(norm2(x)); with norm_first false the
    post-norm order of nn.TransformerEncoderLayer, norm1(x + attn(x)) then norm2(x + mlp(x))."""

    def __init__(self, dim: int, num_heads: int, hidden: int, activation: str, eps: float,
                 norm_first: bool = True, bias: bool = True, biases: Optional[dict] = None):
        super().__init__()
        has = {name: bias for name in ("qkv", "proj", "fc1", "fc2")}
        has.update(biases or {})
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, has["qkv"], has["proj"])
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, activation, has["fc1"], has["fc2"])

    def forward(self, x):
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class VisionTransformer(nn.Module):
    """timm's VisionTransformer module structure for the settings of parse_config(); its
    state_dict names are those of an attnlens ViT directory."""

    def __init__(self, settings: dict):
        super().__init__()
        s = self.settings = dict(settings)
        e, p = s["embed_dim"], s["patch_size"]
        self.grid = (s["image_height"] // p, s["image_width"] // p)
        self.num_prefix_tokens = 1 if s["class_token"] else 0
        self.patch_embed = PatchEmbed(s["in_chans"], e, p)
        if s["class_token"]:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        if s["pos_embed"] == "learned":
            tokens = self.num_prefix_tokens + self.grid[0] * self.grid[1]
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, e))
        self.blocks = nn.Sequential(*(
            Block(e, s["num_heads"], s["hidden"], s["activation"], s["layer_norm_eps"],
                  s["norm_first"], s["bias"]) for _ in range(s["depth"])))
        self.norm = nn.LayerNorm(e, eps=s["layer_norm_eps"]) if s["final_norm"] else nn.Identity()
        self.head = nn.Linear(e, s["num_classes"]) if s["num_classes"] else nn.Identity()

    def forward(self, images):
        s = self.settings
        expected = (s["in_chans"], s["image_height"], s["image_width"])
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be B x {' x '.join(map(str, expected))}, got "
                             f"{list(images.shape)}")
        x = self.patch_embed(images)
        if s["class_token"]:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if s["pos_embed"] == "learned":
            x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        pooled = x[:, 0] if s["global_pool"] == "token" else x[:, self.num_prefix_tokens:].mean(1)
        return self.head(pooled)


def _load_state(module: nn.Module, state: Dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict=True) with attnlens's kind of message: the missing and the
    unexpected names (up to five of each) and the first shape that does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        for what, names in (("missing", missing), ("unexpected", unexpected)):
            if names:
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                parts.append(f"{len(names)} {what} tensor(s): {', '.join(names[:5])}{more}")
        raise ConfigError(f"{where} does not fit config.json: {'; '.join(parts)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ConfigError(f"{where}: tensor {name} has shape {list(tensor.shape)}, config.json "
                              f"asks for {list(own[name].shape)}")
        if not tensor.is_floating_point():
            raise ConfigError(f"{where}: tensor {name} is {tensor.dtype}, not floating point")
    module.load_state_dict(state, strict=True)


def _model_dtype(state: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> torch.dtype:
    if dtype is not None:
        return dtype
    if state and all(t.dtype == torch.float64 for t in state.values()):
        return torch.float64
    return torch.float32


def load_vit(directory, dtype: Optional[torch.dtype] = None) -> VisionTransformer:
    """The module of an attnlens ViT directory with its weights, in eval mode, in `dtype`
    (default: float64 if model.safetensors is all F64, else float32). Raises ConfigError for
    a config it cannot build or weights that do not fit it."""
    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_path}: {e}") from None
    settings = parse_config(config, str(config_path))
    try:
        state = load_safetensors(weights_path)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    dtype = _model_dtype(state, dtype)
    module = VisionTransformer(settings).to(dtype)
    _load_state(module, {k: v.to(dtype) if v.is_floating_point() else v
                         for k, v in state.items()}, str(weights_path))
    return module.eval()


def run(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The logits of `images` (converted to the model's dtype)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return model(images.to(dtype))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="attnlens ViT model directory (config.json + "
                                          "model.safetensors)")
    parser.add_argument("--images", help="images to classify: a safetensors file with "
                                         "'images' (B x C x H x W), or a torch.save'd tensor")
    parser.add_argument("--out", help="where to write the logits (safetensors, 'logits')")
    parser.add_argument("--dtype", choices=["float32", "float64"],
                        help="compute in this dtype (default: float64 for F64 weights, else "
                             "float32)")
    parser.add_argument("--save-state-dict", metavar="PT",
                        help="also torch.save the module's state_dict here")
    args = parser.parse_args(argv)
    if args.out and not args.images:
        parser.error("--out needs --images")
    dtype = {None: None, "float32": torch.float32, "float64": torch.float64}[args.dtype]
    try:
        model = load_vit(args.directory, dtype)
        images = load_images(args.images) if args.images else None
        logits = run(model, images) if images is not None else None
    except (ConfigError, ValueError, OSError) as e:
        print(f"load_in_pytorch: error: {e}", file=sys.stderr)
        return 2
    s = model.settings
    print(f"built {args.directory}: {s['depth']} {'pre' if s['norm_first'] else 'post'}-norm "
          f"blocks, embed_dim {s['embed_dim']}, {s['num_heads']} heads, "
          f"{sum(p.numel() for p in model.parameters())} parameters, "
          f"{next(model.parameters()).dtype}")
    if args.save_state_dict:
        torch.save(model.state_dict(), args.save_state_dict)
    if logits is not None:
        for i, row in enumerate(logits):
            if s["num_classes"]:
                print(f"image {i}: class {int(row.argmax())}  logits "
                      f"{' '.join(f'{v:.6g}' for v in row.tolist())}")
            else:
                print(f"image {i}: features {' '.join(f'{v:.6g}' for v in row.tolist())}")
        if args.out:
            save_safetensors(args.out, {"logits": logits})
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
