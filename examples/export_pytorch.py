#!/usr/bin/env python3
"""Export a PyTorch model to attnlens's model format: a torch.nn.TransformerEncoder, or a
vision transformer with timm's names, torchvision's names or built from nn.Conv2d +
nn.TransformerEncoder.

Writes DIR/config.json (the model's constructor arguments) and DIR/model.safetensors (its
parameters), which `attnlens encode --model DIR`, attnlens::io::load_encoder_model and
attnlens::io::load_vit_model read (see docs/model-format.md). Optionally also writes an input
file and PyTorch's own output on it, to compare with attnlens's.

CHECKPOINT is any of: a module saved with torch.save(module, PATH); a state_dict saved with
torch.save(model.state_dict(), PATH); a .safetensors file holding a state_dict.
--attribute walks into what PATH holds (attributes of a module, keys of a dict, e.g. `model`
for torch.save({"model": model.state_dict(), "optimizer": ...})), --prefix keeps the
state_dict entries under a prefix (e.g. `module.` of DataParallel) with the prefix removed.

Encoders, from a module saved with torch.save(encoder, "encoder.pt"):

    python3 examples/export_pytorch.py encoder.pt --out my_model
    python3 examples/export_pytorch.py model.pt --attribute encoder --out my_model \\
        --inputs inputs.pt --inputs-out x.safetensors --expected-out expected.safetensors
    attnlens encode --model my_model --input x.safetensors --output y.safetensors

inputs.pt is torch.save of a tensor `src` or of a dict with "src" and optionally
"src_key_padding_mask" (B x L, True = ignore) and "mask" (L x L, bool True = not allowed, or
float added to the scores), laid out as the encoder takes them (L x B x E when its layers
are not batch_first; the export writes B x L x E); a safetensors file with these names works
too. An encoder's state_dict (names layers.{i}.self_attn.in_proj_weight, ..., norm.weight)
does not say the heads, the activation nor the norm order: pass --num-heads, --activation and
--norm-first (--layer-norm-eps if not 1e-5); it is rebuilt batch_first.

Vision transformers, from a state_dict (or a module, whose submodules then say what they
can):

    python3 examples/export_pytorch.py vit.pt --num-heads 3 --out my_vit \\
        --images images.safetensors --images-out x.safetensors --expected-out logits.safetensors
    python3 examples/export_pytorch.py vit_b_16.pth --num-heads 12 --out vit_b_16 \\
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225
    python3 examples/export_pytorch.py my_vit.pt --num-heads 4 --activation gelu \\
        --norm-first false --img-size 32 48 --out my_vit

Three layouts are read (docs/model-format.md, "Bringing a PyTorch or timm ViT in and out",
has the name table), and written with timm's names:
  - timm's VisionTransformer: patch_embed.proj, cls_token, pos_embed, blocks.{i}.norm1 /
    attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm, head;
  - torchvision's VisionTransformer (vit_b_16, ...): conv_proj, class_token,
    encoder.pos_embedding, encoder.layers.encoder_layer_{i}.ln_1 / self_attention / ln_2 /
    mlp.0 / mlp.3, encoder.ln, heads.head;
  - nn.Conv2d + nn.TransformerEncoder: patch_embed (or conv_proj, patch_embedding), cls_token,
    pos_embed, transformer.layers.{i} (or encoder.layers.{i}) with nn.TransformerEncoderLayer's
    self_attn / linear1 / linear2 / norm1 / norm2, transformer.norm or norm, head.
The shapes give img_size (from pos_embed, square grids; else --img-size), patch_size,
in_chans, embed_dim, depth, mlp_ratio, num_classes, class_token, the final norm and the biases.
They do not give: the number of heads (--num-heads, unless a module says it), the activation
and the norm order (timm and torchvision: gelu, pre-norm; nn.TransformerEncoderLayer: pass
--activation and --norm-first unless a module says them), layer_norm_eps (1e-6 for timm and
torchvision, 1e-5 for nn.TransformerEncoderLayer), the pooling (--global-pool; token with a
class token, else avg, as timm). Post-norm sources become post-norm attnlens blocks
(norm_first false). A state_dict tensor that no layout names is an error, never dropped.

--images holds `images` (B x C x H x W: a safetensors file, a torch.save'd tensor or dict);
--expected-out gets PyTorch's `logits` on them (B x num_classes, or the pooled features),
computed in --dtype: by the saved module itself, or for a state_dict by the source's layout
rebuilt here in plain torch (nn.MultiheadAttention, nn.TransformerEncoder, timm's structure),
loaded under the state_dict's own names.

From Python:

    from export_pytorch import export_encoder, export_inputs, export_vit, VitOptions
    export_encoder(encoder, "my_model")
    export_inputs("x.safetensors", encoder, src, src_key_padding_mask=padding)
    export_vit(vit_or_state_dict, "my_vit", options=VitOptions(num_heads=3))

An encoder with positions, an attention variant or a learned fidelity residual
(docs/model-format.md) carries their parameters as extra attributes under the documented names,
e.g. `encoder.layers[i].self_attn.relative_attention_bias = nn.Embedding(32, nhead)` for T5,
`encoder.position_embeddings = nn.Embedding(max_len, d_model)`, or for the variants
`encoder.layers[i].self_attn.rho = nn.Parameter(...)` (shape [nhead], bilateral: sigma_h =
softplus(rho_h)) and `encoder.layers[i].self_attn.fourier_r = nn.Parameter(...)` (shape [1],
fourier), so that its state_dict holds them; pass the matching config objects:

    export_encoder(encoder, "my_model", position={"type": "t5", "num_buckets": 32},
                   residual={"type": "fidelity", "learned": True})
    export_encoder(encoder, "my_model", attention={"type": "bilateral", "kernel": "laplacian",
                                                   "leading": 1, "boost": 1})

The attention types are softmax, twicing (softmax with boost 1), bilateral, kde, robust_kde,
fourier, elliptical and neutreno; every one but twicing takes "boost" (boosting order k >= 0).
The export writes the object and checks that rho / fourier_r are there with their shapes;
attnlens computes the variant. PyTorch's own modules know neither the variants nor the
positions, so pytorch_output() is the plain encoder's output, and --expected-out refuses a
--position, --attention or --residual other than the default.

From the command line the three objects are JSON strings:

    python3 examples/export_pytorch.py encoder.pt --out my_model \\
        --position '{"type": "alibi"}' --attention '{"type": "twicing"}'

Loading a pickled module (or a .pt state_dict) runs torch.load's unpickler: use it on files
you trust. Needs only torch (and numpy); the safetensors package is not required.
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import inspect
import json
import math
import re
import struct
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

_DTYPE_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
                torch.uint8: "U8", torch.bool: "BOOL"}


def save_safetensors(path, tensors: Dict[str, torch.Tensor]) -> None:
    """Writes `tensors` in the safetensors format (sorted names, 8-byte aligned data)."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPE_CODES:
            raise TypeError(f"tensor {name}: dtype {t.dtype} cannot be stored")
        # bytes of the raw storage, little-endian on every platform torch supports
        data = t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPE_CODES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def _activation_name(activation) -> str:
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu:
        return "gelu"
    if isinstance(activation, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}[activation.approximate]
    raise ValueError(f"activation {activation!r} is not supported: attnlens has relu, gelu "
                     "and gelu with approximate='tanh'")


def encoder_config(encoder: nn.TransformerEncoder) -> dict:
    """config.json for `encoder`; raises ValueError for what the format cannot express."""
    if not isinstance(encoder, nn.TransformerEncoder):
        raise ValueError(f"expected a torch.nn.TransformerEncoder, got {type(encoder).__name__}")
    layers = list(encoder.layers)
    first = layers[0]

    def layer_config(layer) -> dict:
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise ValueError(f"layer of type {type(layer).__name__} is not a "
                             "TransformerEncoderLayer")
        attn = layer.self_attn
        if not attn._qkv_same_embed_dim:
            raise ValueError("self_attn with kdim/vdim different from d_model is not supported")
        return {"d_model": attn.embed_dim, "nhead": attn.num_heads,
                "dim_feedforward": layer.linear1.out_features,
                "activation": _activation_name(layer.activation),
                "layer_norm_eps": layer.norm1.eps, "norm_first": layer.norm_first,
                "bias": attn.in_proj_bias is not None}

    config = layer_config(first)
    for i, layer in enumerate(layers[1:], start=1):
        if layer_config(layer) != config:
            raise ValueError(f"layer {i} differs from layer 0: attnlens's encoder has one "
                             "configuration for all layers")
    if first.norm2.eps != first.norm1.eps:
        raise ValueError("norm1 and norm2 have different eps")
    norm = encoder.norm
    if norm is not None:
        if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
            raise ValueError("the final norm must be an nn.LayerNorm with elementwise_affine")
        if norm.eps != config["layer_norm_eps"]:
            raise ValueError(f"the final norm's eps {norm.eps} differs from the layers' "
                             f"{config['layer_norm_eps']}")
    return {"model_type": "transformer_encoder", "d_model": config["d_model"],
            "nhead": config["nhead"], "num_layers": len(layers),
            "dim_feedforward": config["dim_feedforward"], "activation": config["activation"],
            "layer_norm_eps": config["layer_norm_eps"], "norm_first": config["norm_first"],
            "bias": config["bias"], "final_norm": norm is not None,
            "position": {"type": "none"}, "attention": {"type": "softmax"},
            "residual": {"type": "standard"}}


# The attention types config.json names, and the tensor each needs on every layer's self_attn
# (docs/model-format.md).
ATTENTION_TYPES = ("softmax", "twicing", "bilateral", "kde", "robust_kde", "fourier",
                   "elliptical", "neutreno")


def _check_attention(encoder: nn.TransformerEncoder, attention: dict) -> None:
    """The variant's type is known and its tensors are on every layer: self_attn.rho [nhead]
    for bilateral, self_attn.fourier_r [1] for fourier. The other keys are left to attnlens,
    which rejects what a type does not read when it loads the model."""
    if not isinstance(attention, dict) or "type" not in attention:
        raise ValueError(f"attention must be an object with a 'type', got {attention!r}")
    kind = attention["type"]
    if kind not in ATTENTION_TYPES:
        raise ValueError(f"attention type {kind!r} is not one of {', '.join(ATTENTION_TYPES)}")
    needed = {"bilateral": ("rho", [encoder.layers[0].self_attn.num_heads]),
              "fourier": ("fourier_r", [1])}.get(kind)
    for i, layer in enumerate(encoder.layers):
        for name in ("rho", "fourier_r"):
            tensor = getattr(layer.self_attn, name, None)
            if needed is not None and name == needed[0]:
                if not isinstance(tensor, torch.Tensor) or list(tensor.shape) != needed[1]:
                    raise ValueError(f"attention {kind}: layers[{i}].self_attn.{name} must be a "
                                     f"parameter of shape {needed[1]}, got "
                                     f"{None if tensor is None else list(tensor.shape)}")
            elif tensor is not None:
                raise ValueError(f"attention {kind}: layers[{i}].self_attn.{name} is not read "
                                 "by this type (attnlens would reject the extra tensor)")


def export_encoder(encoder: nn.TransformerEncoder, directory,
                   dtype: Optional[torch.dtype] = torch.float32, position: Optional[dict] = None,
                   residual: Optional[dict] = None, attention: Optional[dict] = None) -> None:
    """Writes directory/config.json and directory/model.safetensors (in `dtype`, or the
    parameters' own dtype for None). `position`, `residual` and `attention` are config.json's
    objects of those names (default: none, standard and softmax); the state_dict must then hold
    the tensors they need (rho or fourier_r on every layer's self_attn for the bilateral and
    fourier attentions, checked here), which attnlens checks when it loads the model."""
    config = encoder_config(encoder)
    if position is not None:
        config["position"] = dict(position)
    if attention is not None:
        _check_attention(encoder, attention)
        config["attention"] = dict(attention)
    if residual is not None:
        config["residual"] = dict(residual)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: (v if dtype is None else v.to(dtype)) for k, v in encoder.state_dict().items()}
    save_safetensors(out / "model.safetensors", state)


def _batch_first(encoder: nn.TransformerEncoder) -> bool:
    return bool(encoder.layers[0].self_attn.batch_first)


def export_inputs(path, encoder: nn.TransformerEncoder, src: torch.Tensor,
                  src_key_padding_mask: Optional[torch.Tensor] = None,
                  mask: Optional[torch.Tensor] = None,
                  dtype: Optional[torch.dtype] = torch.float32) -> None:
    """Writes `attnlens encode --input` data: src as B x L x E (transposed from L x B x E
    when the encoder is not batch_first), and the masks as given (PyTorch's conventions)."""
    tensors = {"src": src if _batch_first(encoder) else src.transpose(0, 1)}
    if src_key_padding_mask is not None:
        tensors["src_key_padding_mask"] = src_key_padding_mask
    if mask is not None:
        tensors["mask"] = mask
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_safetensors(path, tensors)


def pytorch_output(encoder: nn.TransformerEncoder, src: torch.Tensor,
                   src_key_padding_mask: Optional[torch.Tensor] = None,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The encoder's output as B x L x E, computed on PyTorch's documented (slow) path:
    its inference fast path may differ for padded positions."""
    encoder = encoder.eval()
    with torch.enable_grad():  # the fast path is only taken without grad
        out = encoder(src, mask=mask, src_key_padding_mask=src_key_padding_mask).detach()
    return out if _batch_first(encoder) else out.transpose(0, 1)


# ----------------------------------------------------------------------------------------------
# Reading: safetensors files, checkpoints, inputs

_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def load_safetensors(path) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file, every offset, size and dtype checked (the inverse of
    save_safetensors; metadata is skipped). Raises ValueError naming the file."""
    path = Path(path)
    blob = path.read_bytes()

    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file: {why}")

    if len(blob) < 8:
        raise bad("shorter than the 8-byte header length")
    (length,) = struct.unpack_from("<Q", blob, 0)
    if length > len(blob) - 8:
        raise bad(f"header length {length} exceeds the file ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    header.pop("__metadata__", None)
    data = memoryview(blob)[8 + length:]
    tensors = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name}: expected dtype, shape and data_offsets")
        dtype = _CODE_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise bad(f"tensor {name}: dtype {entry['dtype']!r} is not one of "
                      f"{', '.join(_CODE_DTYPES)}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"tensor {name}: shape {shape!r} is not a list of sizes")
        if (not isinstance(offsets, list) or len(offsets) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) or
                not 0 <= offsets[0] <= offsets[1] <= len(data)):
            raise bad(f"tensor {name}: data_offsets {offsets!r} outside the data "
                      f"({len(data)} bytes)")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise bad(f"tensor {name}: {offsets[1] - offsets[0]} bytes for shape {shape} of "
                      f"{entry['dtype']}")
        raw = bytearray(data[offsets[0]:offsets[1]])
        flat = torch.frombuffer(raw, dtype=dtype).clone() if raw else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    return tensors


def _torch_load(path):
    # torch >= 2.6 loads only tensors by default; a pickled module needs the full unpickler.
    extra = {"weights_only": False} if "weights_only" in inspect.signature(
        torch.load).parameters else {}
    return torch.load(path, map_location="cpu", **extra)


def load_checkpoint(path, attribute: str = ""):
    """What PATH holds (a module or a state_dict from torch.load, the state_dict of a
    .safetensors file), then the dotted `attribute` inside it: attributes of a module, keys
    of a dict."""
    path = Path(path)
    loaded = load_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path)
    walked = []
    for part in filter(None, attribute.split(".")):
        walked.append(part)
        if isinstance(loaded, dict):
            if part not in loaded:
                keys = ", ".join(sorted(map(str, loaded))[:8])
                raise ValueError(f"{path}: --attribute {'.'.join(walked)}: no key {part!r} "
                                 f"(keys: {keys})")
            loaded = loaded[part]
        elif hasattr(loaded, part):
            loaded = getattr(loaded, part)
        else:
            raise ValueError(f"{path}: --attribute {'.'.join(walked)}: "
                             f"{type(loaded).__name__} has no attribute {part!r}")
    return loaded


def is_state_dict(value) -> bool:
    return (isinstance(value, dict) and len(value) > 0 and
            all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _under_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if not prefix:
        return dict(state)
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not kept:
        raise ValueError(f"no state_dict entry starts with --prefix {prefix!r} (first keys: "
                         f"{', '.join(sorted(state)[:5])})")
    return kept


def load_images(path) -> torch.Tensor:
    """`images` (B x C x H x W) from a safetensors file, or a torch.save'd tensor or dict."""
    path = Path(path)
    loaded = load_safetensors(path) if path.suffix == ".safetensors" else torch.load(path)
    if isinstance(loaded, torch.Tensor):
        return loaded
    if not isinstance(loaded, dict) or "images" not in loaded:
        raise ValueError(f"{path}: expected a tensor or tensors with 'images'")
    unknown = sorted(set(loaded) - {"images"})
    if unknown:
        raise ValueError(f"{path}: unknown entries {', '.join(unknown)} (only 'images')")
    return loaded["images"]


# ----------------------------------------------------------------------------------------------
# Encoders from a state_dict


def activation_module(name: str):
    """attnlens's activation names -> what nn.TransformerEncoderLayer(activation=...) takes."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"activation {name!r}: expected relu, gelu or gelu_tanh")


def _block_indices(state, pattern: str, what: str) -> List[int]:
    """The i of every key matching `pattern` (a regex with the index as group 1): 0..n-1."""
    regex = re.compile(pattern)
    indices = sorted({int(m.group(1)) for m in map(regex.match, state) if m})
    if indices != list(range(len(indices))):
        raise ValueError(f"{what} are numbered {indices}, not 0..{len(indices) - 1}")
    return indices


def _needs(option: str, value, why: str):
    if value is None:
        raise ValueError(f"the state_dict does not say {why}: pass {option}")
    return value


def encoder_from_state_dict(state: Dict[str, torch.Tensor], num_heads: Optional[int],
                            activation: Optional[str], norm_first: Optional[bool],
                            layer_norm_eps: Optional[float] = None) -> nn.TransformerEncoder:
    """An nn.TransformerEncoder(batch_first=True) with the state_dict of one (names
    layers.{i}.self_attn.in_proj_weight, ..., norm.weight with a final norm) loaded strictly;
    what the names and shapes do not say comes from the arguments."""
    layers = _block_indices(state, r"layers\.(\d+)\.", "the encoder's layers")
    if not layers:
        raise ValueError("no layers.{i}. entries: not an nn.TransformerEncoder state_dict")
    first = "layers.0."
    w = state.get(first + "self_attn.in_proj_weight")
    ff = state.get(first + "linear1.weight")
    if w is None or ff is None or w.dim() != 2 or ff.dim() != 2:
        raise ValueError("layers.0 lacks self_attn.in_proj_weight or linear1.weight (2-D): "
                         "not an nn.TransformerEncoderLayer (kdim / vdim are not supported)")
    d_model, dim_feedforward = w.shape[1], ff.shape[0]
    nhead = _needs("--num-heads", num_heads, "the number of heads")
    activation = _needs("--activation relu|gelu|gelu_tanh", activation,
                        "the activation (nn.TransformerEncoderLayer's default is relu)")
    norm_first = _needs("--norm-first true|false", norm_first,
                        "the norm order (nn.TransformerEncoderLayer's default is post-norm, "
                        "norm_first false)")
    eps = 1e-5 if layer_norm_eps is None else layer_norm_eps
    extra = {}
    if first + "self_attn.in_proj_bias" not in state:
        if "bias" not in inspect.signature(nn.TransformerEncoderLayer).parameters:
            raise ValueError("the layers have no biases: nn.TransformerEncoderLayer(bias=False) "
                             f"needs torch >= 2.1 (this is {torch.__version__})")
        extra["bias"] = False
    layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0,
                                       activation=activation_module(activation),
                                       layer_norm_eps=eps, batch_first=True,
                                       norm_first=norm_first, **extra)
    norm = nn.LayerNorm(d_model, eps=eps) if "norm.weight" in state else None
    encoder = nn.TransformerEncoder(layer, len(layers), norm=norm, enable_nested_tensor=False)
    dtype = torch.float64 if all(v.dtype == torch.float64 for v in state.values()) else None
    if dtype is not None:
        encoder = encoder.to(dtype)
    _load_strictly(encoder, state, "the encoder state_dict")
    return encoder.eval()


def _load_strictly(module: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    problems = [f"{label} {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected)) if names]
    problems += [f"{name} has shape {list(state[name].shape)}, expected {list(t.shape)}"
                 for name, t in own.items() if name in state and state[name].shape != t.shape]
    if problems:
        raise ValueError(f"{what} does not fit the module: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------
# Vision transformers: timm's, torchvision's and nn.Conv2d + nn.TransformerEncoder layouts


# Where each part of a ViT is in the layouts (docs/model-format.md has the table), each name
# tried in this order: the timm name first, then torchvision's, then the hand-written ones.
VIT_PART_NAMES = {
    "patch_embed": ("patch_embed.proj.", "conv_proj.", "patch_embed.", "patch_embedding."),
    "cls_token": ("cls_token", "class_token"),
    "pos_embed": ("pos_embed", "encoder.pos_embedding", "pos_embedding"),
    "norm": ("norm.", "encoder.ln.", "transformer.norm.", "encoder.norm."),
    "head": ("head.", "heads.head."),
}

# Each layout's blocks: the block prefix (a regex, group 1 the index) and, for each parameter
# of a timm block, its names there (a trailing "." stands for ".weight" and ".bias").
BLOCK_LAYOUTS = {
    "timm": (r"(blocks\.(\d+)\.)", {
        "norm1.": ("norm1.",), "attn.qkv.": ("attn.qkv.",), "attn.proj.": ("attn.proj.",),
        "norm2.": ("norm2.",), "mlp.fc1.": ("mlp.fc1.",), "mlp.fc2.": ("mlp.fc2.",)}),
    "torchvision": (r"(encoder\.layers\.encoder_layer_(\d+)\.)", {
        "norm1.": ("ln_1.",),
        "attn.qkv.weight": ("self_attention.in_proj_weight",),
        "attn.qkv.bias": ("self_attention.in_proj_bias",),
        "attn.proj.": ("self_attention.out_proj.",), "norm2.": ("ln_2.",),
        "mlp.fc1.": ("mlp.0.", "mlp.linear_1."), "mlp.fc2.": ("mlp.3.", "mlp.linear_2.")}),
    "transformer_encoder": (r"((?:transformer|encoder)\.layers\.(\d+)\.)", {
        "norm1.": ("norm1.",),
        "attn.qkv.weight": ("self_attn.in_proj_weight",),
        "attn.qkv.bias": ("self_attn.in_proj_bias",),
        "attn.proj.": ("self_attn.out_proj.",), "norm2.": ("norm2.",),
        "mlp.fc1.": ("linear1.",), "mlp.fc2.": ("linear2.",)}),
}

# What the layouts fix that the shapes do not say: (activation, norm_first, layer_norm_eps);
# None = the user says it (or the module).
LAYOUT_DEFAULTS = {"timm": ("gelu", True, 1e-6), "torchvision": ("gelu", True, 1e-6),
                   "transformer_encoder": (None, None, 1e-5)}

# Tensors some ViTs have that attnlens's ViT does not compute, with the reason.
_UNSUPPORTED = (("fc_norm.", "timm's fc_norm (global_pool='avg' with fc_norm=True; attnlens "
                             "has the final norm before the pooling only)"),
                ("heads.pre_logits.", "torchvision's representation_size (pre_logits + tanh)"),
                ("reg_token", "timm's register tokens"), (".ls1.", "timm's LayerScale"),
                (".ls2.", "timm's LayerScale"), ("norm_pre.", "timm's pre_norm"),
                (".q_norm.", "timm's qk_norm"), (".k_norm.", "timm's qk_norm"),
                ("attn_pool.", "timm's attention pooling"))


def _block_names(table: dict) -> Dict[str, Tuple[str, ...]]:
    """A BLOCK_LAYOUTS table with every entry spelled out as full parameter names."""
    out = {}
    for timm_name, names in table.items():
        if timm_name.endswith("."):
            for leaf in ("weight", "bias"):
                out[timm_name + leaf] = tuple(n + leaf for n in names)
        else:
            out[timm_name] = names
    return out


@dataclasses.dataclass
class VitOptions:
    """What a ViT's state_dict does not say (None: from the module, the layout's fixed choice
    or the default; docs/model-format.md)."""
    num_heads: Optional[int] = None
    img_size: Optional[Tuple[int, int]] = None  # (height, width)
    activation: Optional[str] = None            # relu, gelu, gelu_tanh
    norm_first: Optional[bool] = None
    layer_norm_eps: Optional[float] = None
    global_pool: Optional[str] = None           # token, avg
    mean: Optional[List[float]] = None          # config.json's input normalization
    std: Optional[List[float]] = None


@dataclasses.dataclass
class VitSource:
    """Where a ViT's parts are in its state_dict (find_vit_parts)."""
    layout: str                     # the blocks': timm, torchvision or transformer_encoder
    patch_embed: str                # prefix, e.g. "conv_proj."
    cls_token: Optional[str]
    pos_embed: Optional[str]
    blocks: List[str]               # block prefixes in order, e.g. "blocks.0."
    block_names: List[Dict[str, str]]  # per block: timm name -> the state_dict's name
    norm: Optional[str]
    head: Optional[str]


def _one_of(state, names, what: str) -> Optional[str]:
    found = [n for n in names if n in state]
    if len(found) > 1:
        raise ValueError(f"{what}: the state_dict has both {found[0]} and {found[1]}")
    return found[0] if found else None


def find_vit_parts(state: Dict[str, torch.Tensor]) -> VitSource:
    """Which layout the state_dict has and where each part is; every tensor is accounted for
    (an unknown one raises ValueError naming it)."""
    used = set()

    def part(kind: str) -> Optional[str]:
        names = VIT_PART_NAMES[kind]
        if not names[0].endswith("."):  # a parameter: cls_token, pos_embed
            found = _one_of(state, names, kind)
            used.update([found] if found else [])
            return found
        found = _one_of(state, [n + "weight" for n in names], kind)
        if found is None:
            return None
        prefix = found[:-len("weight")]
        used.update(k for k in (prefix + "weight", prefix + "bias") if k in state)
        return prefix

    patch = part("patch_embed")
    if patch is None:
        raise ValueError("no patch embedding: a ViT state_dict has one of "
                         f"{', '.join(n + 'weight' for n in VIT_PART_NAMES['patch_embed'])}")
    cls, pos, norm, head = part("cls_token"), part("pos_embed"), part("norm"), part("head")

    layouts = {}
    for layout, (pattern, table) in BLOCK_LAYOUTS.items():
        regex = re.compile(pattern)
        prefixes = {}
        for key in state:
            m = regex.match(key)
            if m and key not in used:
                prefixes[int(m.group(2))] = m.group(1)
        if prefixes:
            layouts[layout] = prefixes
    if len(layouts) != 1:
        raise ValueError("no blocks: expected blocks.{i}. (timm), "
                         "encoder.layers.encoder_layer_{i}. (torchvision) or "
                         "transformer.layers.{i}. / encoder.layers.{i}. (nn.TransformerEncoder)"
                         if not layouts else
                         f"blocks in more than one layout: {', '.join(sorted(layouts))}")
    (layout, prefixes), = layouts.items()
    if sorted(prefixes) != list(range(len(prefixes))):
        raise ValueError(f"the blocks are numbered {sorted(prefixes)}, not 0..{len(prefixes) - 1}")
    roots = {p.split(".")[0] for p in prefixes.values()}
    if len(roots) > 1:
        raise ValueError(f"blocks under both {' and '.join(sorted(roots))}")
    table = _block_names(BLOCK_LAYOUTS[layout][1])
    blocks, block_names = [], []
    for i in range(len(prefixes)):
        prefix, names = prefixes[i], {}
        for timm_name, sources in table.items():
            found = _one_of(state, [prefix + s for s in sources], f"block {i} {timm_name}")
            if found is not None:
                names[timm_name] = found
                used.add(found)
        for required in ("norm1.weight", "attn.qkv.weight", "attn.proj.weight", "norm2.weight",
                         "mlp.fc1.weight", "mlp.fc2.weight"):
            if required not in names:
                raise ValueError(f"block {i} ({prefix}) has no {required} (its {layout} name: "
                                 f"{' or '.join(prefix + s for s in table[required])})")
        blocks.append(prefix)
        block_names.append(names)
    unknown = sorted(set(state) - used)
    if unknown:
        reasons = sorted({why for name in unknown for key, why in _UNSUPPORTED if key in name})
        raise ValueError(f"{len(unknown)} tensor(s) that attnlens's ViT does not have: "
                         f"{', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}"
                         + (f" ({'; '.join(reasons)})" if reasons else ""))
    return VitSource(layout, patch, cls, pos, blocks, block_names, norm, head)


def _shape_of(state, name: str, shape, what: str = "") -> torch.Tensor:
    t = state[name]
    if list(t.shape) != list(shape):
        raise ValueError(f"{name}{what} has shape {list(t.shape)}, expected {list(shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} is {t.dtype}, not floating point")
    return t


def _activation_of(module) -> str:
    try:
        return _activation_name(module)
    except ValueError:
        # A GELU / ReLU module of another library (timm's own GELU layers compute F.gelu).
        kind = type(module).__name__
        approximate = getattr(module, "approximate", "none")
        if kind == "GELU" and approximate in ("none", "tanh"):
            return "gelu" if approximate == "none" else "gelu_tanh"
        if kind == "GELUTanh":
            return "gelu_tanh"
        if kind == "ReLU":
            return "relu"
        raise


def vit_hints(module: nn.Module, source: VitSource) -> VitOptions:
    """What a ViT module's submodules say beyond its state_dict: the heads (num_heads of the
    first block's attention), the activation, the norm order and eps (an
    nn.TransformerEncoderLayer's, a LayerNorm's), timm's global_pool and img_size. Also checks
    that the patch convolution has stride = kernel, no padding."""
    hints = VitOptions()

    def sub(path: str):
        try:
            return module.get_submodule(path.rstrip("."))
        except AttributeError:
            return None

    conv = sub(source.patch_embed)
    if isinstance(conv, nn.Conv2d):
        if (conv.stride != conv.kernel_size or conv.padding not in ((0, 0), "valid") or
                conv.dilation != (1, 1) or conv.groups != 1):
            raise ValueError(f"{source.patch_embed.rstrip('.')} is not a patch embedding: "
                             f"stride {conv.stride}, kernel {conv.kernel_size}, padding "
                             f"{conv.padding}, dilation {conv.dilation}, groups {conv.groups}")
    block = sub(source.blocks[0])
    if isinstance(block, nn.TransformerEncoderLayer):
        hints.num_heads = block.self_attn.num_heads
        hints.activation = _activation_of(block.activation)
        hints.norm_first = bool(block.norm_first)
        hints.layer_norm_eps = block.norm1.eps
    elif block is not None:
        attn = sub(source.blocks[0] + ("self_attention" if source.layout == "torchvision"
                                       else "attn"))
        if isinstance(getattr(attn, "num_heads", None), int):
            hints.num_heads = attn.num_heads
        act = (sub(source.blocks[0] + "mlp.act") if source.layout == "timm" else
               sub(source.blocks[0] + "mlp.1") or sub(source.blocks[0] + "mlp.act"))
        if act is not None and not isinstance(act, nn.Identity):
            hints.activation = _activation_of(act)
        norm_first = getattr(block, "norm_first", None)
        if isinstance(norm_first, bool):
            hints.norm_first = norm_first
        norm1 = sub(source.block_names[0]["norm1.weight"][:-len("weight")])
        if isinstance(norm1, nn.LayerNorm):
            hints.layer_norm_eps = norm1.eps
    pool = getattr(module, "global_pool", None)
    if isinstance(pool, str):
        if pool not in ("token", "avg"):
            raise ValueError(f"global_pool {pool!r}: attnlens pools by \"token\" or \"avg\"")
        hints.global_pool = pool
    size = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if size is None:
        size = getattr(module, "image_size", None)  # torchvision
    if isinstance(size, int):
        size = (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int)
                                                                  for v in size):
        hints.img_size = tuple(size)
    return hints


def _merged(given: VitOptions, hints: VitOptions) -> VitOptions:
    out = VitOptions()
    for field in dataclasses.fields(VitOptions):
        a, b = getattr(given, field.name), getattr(hints, field.name)
        if a is not None and b is not None and a != b:
            option = "--" + field.name.replace("_", "-")
            raise ValueError(f"{option} {a} contradicts the module's {field.name} {b}")
        setattr(out, field.name, a if a is not None else b)
    return out


def convert_vit(state: Dict[str, torch.Tensor], options: Optional[VitOptions] = None
                ) -> Tuple[dict, Dict[str, torch.Tensor], VitSource]:
    """config.json, the tensors under timm's names (attnlens's ViT directory) and the source's
    layout, from a ViT state_dict in any of the layouts of find_vit_parts; raises ValueError
    for what attnlens's ViT cannot compute or the state_dict does not say."""
    o = options or VitOptions()
    src = find_vit_parts(state)
    w = state[src.patch_embed + "weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"{src.patch_embed}weight has shape {list(w.shape)}: expected "
                         "[embed_dim, in_chans, P, P]")
    e, in_chans, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    out: Dict[str, torch.Tensor] = {"patch_embed.proj.weight": w}
    out["patch_embed.proj.bias"] = (_shape_of(state, src.patch_embed + "bias", [e])
                                    if src.patch_embed + "bias" in state else w.new_zeros(e))
    prefix = 0
    if src.cls_token is not None:
        t = state[src.cls_token]
        if t.numel() != e or any(d != 1 for d in t.shape[:-1]):
            raise ValueError(f"{src.cls_token} has shape {list(t.shape)}, expected [1, 1, {e}]")
        out["cls_token"] = t.reshape(1, 1, e)
        prefix = 1

    # The patch grid: from --img-size, or from pos_embed's rows (a square grid, with or without
    # a row for the CLS token: timm's no_embed_class adds positions to the patches only).
    rows = None
    if src.pos_embed is not None:
        t = state[src.pos_embed]
        if t.dim() not in (2, 3) or t.shape[-1] != e or (t.dim() == 3 and t.shape[0] != 1):
            raise ValueError(f"{src.pos_embed} has shape {list(t.shape)}, expected "
                             f"[1, tokens, {e}]")
        rows = int(t.shape[-2])
    if o.img_size is not None:
        height, width = o.img_size
        if height <= 0 or width <= 0 or height % p or width % p:
            raise ValueError(f"--img-size {height} x {width} is not a positive multiple of the "
                             f"patch size {p}")
        patches = (height // p) * (width // p)
        if rows is not None and rows not in (patches + prefix, patches):
            raise ValueError(f"{src.pos_embed} has {rows} rows; a {height} x {width} image has "
                             f"{patches} patches{' + 1 CLS token' if prefix else ''}")
    else:
        if rows is None:
            raise ValueError("no pos_embed: the image size is not in the state_dict; pass "
                             "--img-size H [W]")
        patches = None
        for n in ((rows - prefix, rows) if prefix else (rows,)):
            if n > 0 and math.isqrt(n) ** 2 == n:
                patches = n
                break
        if patches is None:
            raise ValueError(f"{src.pos_embed} has {rows} rows, not a square grid of patches"
                             f"{' (+ 1 CLS token)' if prefix else ''}: pass --img-size H W")
        height = width = math.isqrt(patches) * p
    if rows is not None:
        pos = state[src.pos_embed].reshape(1, rows, e)
        if rows == patches and prefix:  # no_embed_class: the CLS token gets position 0
            pos = torch.cat([pos.new_zeros(1, 1, e), pos], dim=1)
        out["pos_embed"] = pos

    depth = len(src.blocks)
    hidden = int(state[src.block_names[0]["mlp.fc1.weight"]].shape[0])
    shapes = {"norm1.weight": [e], "norm1.bias": [e], "attn.qkv.weight": [3 * e, e],
              "attn.qkv.bias": [3 * e], "attn.proj.weight": [e, e], "attn.proj.bias": [e],
              "norm2.weight": [e], "norm2.bias": [e], "mlp.fc1.weight": [hidden, e],
              "mlp.fc1.bias": [hidden], "mlp.fc2.weight": [e, hidden], "mlp.fc2.bias": [e]}
    linear_biases = ("attn.qkv.bias", "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias")
    bias = any(b in names for names in src.block_names for b in linear_biases)
    for i, names in enumerate(src.block_names):
        for timm_name, shape in shapes.items():
            if timm_name in names:
                t = _shape_of(state, names[timm_name], shape, f" (block {i} {timm_name})")
            elif timm_name.endswith("bias") and (bias or timm_name not in linear_biases):
                t = w.new_zeros(shape)  # an absent bias adds nothing: stored as zeros
            else:
                continue
            out[f"blocks.{i}.{timm_name}"] = t
    if src.norm is not None:
        out["norm.weight"] = _shape_of(state, src.norm + "weight", [e])
        out["norm.bias"] = (_shape_of(state, src.norm + "bias", [e])
                            if src.norm + "bias" in state else w.new_zeros(e))
    num_classes = 0
    if src.head is not None:
        hw = state[src.head + "weight"]
        if hw.dim() != 2 or hw.shape[1] != e:
            raise ValueError(f"{src.head}weight has shape {list(hw.shape)}, expected "
                             f"[num_classes, {e}]")
        num_classes = int(hw.shape[0])
        out["head.weight"] = hw
        out["head.bias"] = (_shape_of(state, src.head + "bias", [num_classes])
                            if src.head + "bias" in state else hw.new_zeros(num_classes))

    activation, norm_first, eps = LAYOUT_DEFAULTS[src.layout]
    activation = o.activation if o.activation is not None else activation
    norm_first = o.norm_first if o.norm_first is not None else norm_first
    eps = o.layer_norm_eps if o.layer_norm_eps is not None else eps
    num_heads = _needs("--num-heads", o.num_heads, "the number of heads")
    _needs("--activation relu|gelu|gelu_tanh", activation,
           "the activation of nn.TransformerEncoderLayer blocks (its default is relu)")
    _needs("--norm-first true|false", norm_first,
           "the norm order of nn.TransformerEncoderLayer blocks (its default is post-norm, "
           "norm_first false)")
    activation_module(activation)  # a known name
    if num_heads <= 0 or e % num_heads:
        raise ValueError(f"--num-heads {num_heads} does not divide embed_dim {e}")
    pool = o.global_pool or ("token" if prefix else "avg")
    if pool not in ("token", "avg"):
        raise ValueError(f"--global-pool {pool!r}: expected token or avg")
    if pool == "token" and not prefix:
        raise ValueError("--global-pool token needs a class token (the state_dict has none)")
    ratio = hidden / e
    if math.floor(ratio * e + 1e-9) != hidden:  # how attnlens reads mlp_ratio back
        raise ValueError(f"mlp width {hidden} is not recovered from mlp_ratio {ratio}")
    config = {"model_type": "vision_transformer", "img_size": [height, width],
              "patch_size": p, "in_chans": in_chans, "num_classes": num_classes,
              "embed_dim": e, "depth": depth, "num_heads": num_heads, "mlp_ratio": ratio,
              "activation": activation, "layer_norm_eps": eps, "norm_first": norm_first,
              "bias": bias, "final_norm": src.norm is not None, "class_token": bool(prefix),
              "global_pool": pool, "pos_embed": "learned" if rows is not None else "none",
              "relative_position": {"type": "none"}, "attention": {"type": "softmax"},
              "residual": {"type": "standard"}}
    if (o.mean is None) != (o.std is None):
        raise ValueError("--mean and --std go together")
    if o.mean is not None:
        if len(o.mean) != in_chans or len(o.std) != in_chans or not all(s > 0 for s in o.std):
            raise ValueError(f"--mean and --std need in_chans = {in_chans} numbers each (std "
                             "> 0)")
        config["mean"], config["std"] = [float(v) for v in o.mean], [float(v) for v in o.std]
    return config, out, src


def export_vit(source: Union[nn.Module, Dict[str, torch.Tensor]], directory,
               dtype: Optional[torch.dtype] = torch.float32,
               options: Optional[VitOptions] = None) -> dict:
    """Writes an attnlens ViT directory (config.json, model.safetensors in `dtype`, or the
    state_dict's own dtypes for None) from a ViT module or state_dict in one of the layouts
    (timm, torchvision, nn.Conv2d + nn.TransformerEncoder); returns the config. A module also
    tells what its submodules say (vit_hints); `options` must not contradict it."""
    config, tensors, _ = convert_vit(*_vit_state_and_options(source, options))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_safetensors(out / "model.safetensors",
                     {k: v if dtype is None else v.to(dtype) for k, v in tensors.items()})
    return config


def _vit_state_and_options(source, options: Optional[VitOptions]):
    options = options or VitOptions()
    if isinstance(source, nn.Module):
        state = dict(source.state_dict())
        return state, _merged(options, vit_hints(source, find_vit_parts(state)))
    if not is_state_dict(source):
        raise ValueError(f"expected a module or a state_dict, got {type(source).__name__}")
    return dict(source), options


def _put(root: nn.Module, dotted: str, value) -> None:
    """Registers a module or parameter at a dotted path, making plain containers on the way."""
    *parents, leaf = dotted.split(".")
    node = root
    for name in parents:
        if name not in node._modules:
            node.add_module(name, nn.Module())
        node = node._modules[name]
    if isinstance(value, nn.Parameter):
        node.register_parameter(leaf, value)
    else:
        node.add_module(leaf, value)


def _layer_norm(e: int, eps: float, has_bias: bool) -> nn.LayerNorm:
    if has_bias:
        return nn.LayerNorm(e, eps=eps)
    if "bias" not in inspect.signature(nn.LayerNorm).parameters:
        raise ValueError("a LayerNorm without bias needs torch >= 2.1 to be rebuilt")
    return nn.LayerNorm(e, eps=eps, bias=False)


class TorchvisionBlock(nn.Module):
    """torchvision's EncoderBlock: ln_1, self_attention (nn.MultiheadAttention, batch_first),
    ln_2, mlp (Linear, activation, Dropout, Linear, Dropout as mlp.0 .. mlp.4, or the older
    mlp.linear_1 / act / dropout_1 / linear_2 / dropout_2); pre-norm, or post-norm for a
    norm_first false export."""

    def __init__(self, e, heads, hidden, activation, eps, norm_first, names, has):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = _layer_norm(e, eps, has["norm1.bias"])
        if has["attn.qkv.bias"] != has["attn.proj.bias"]:
            raise ValueError("nn.MultiheadAttention has biases on both projections or neither")
        self.self_attention = nn.MultiheadAttention(e, heads, bias=has["attn.qkv.bias"],
                                                    batch_first=True)
        self.ln_2 = _layer_norm(e, eps, has["norm2.bias"])
        act = activation_module(activation)
        act = act if isinstance(act, nn.Module) else {F.relu: nn.ReLU(), F.gelu: nn.GELU()}[act]
        parts = [nn.Linear(e, hidden, bias=has["mlp.fc1.bias"]), act, nn.Dropout(0.0),
                 nn.Linear(hidden, e, bias=has["mlp.fc2.bias"]), nn.Dropout(0.0)]
        old = names["mlp.fc1.weight"].endswith("mlp.linear_1.weight")
        labels = (("linear_1", "act", "dropout_1", "linear_2", "dropout_2") if old else
                  tuple(str(i) for i in range(5)))
        self.mlp = nn.Sequential(collections.OrderedDict(zip(labels, parts)))

    def attention(self, x):
        return self.self_attention(x, x, x, need_weights=False)[0]

    def forward(self, x):
        if self.norm_first:
            x = x + self.attention(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attention(x))
        return self.ln_2(x + self.mlp(x))


class SourceViT(nn.Module):
    """A ViT state_dict's own model, rebuilt in plain torch under the state_dict's names (so it
    loads strictly): the patch convolution, CLS token and positions as found, the blocks of its
    layout (timm's structure from load_in_pytorch.py, TorchvisionBlock, or an
    nn.TransformerEncoder of nn.TransformerEncoderLayers), the final norm, pooling and head.
    It computes what the source computes, for --expected-out from a state_dict."""

    def __init__(self, config: dict, source: VitSource, state: Dict[str, torch.Tensor]):
        super().__init__()
        import load_in_pytorch  # the timm-structured blocks; imported here, it imports us
        c, s = config, source
        self.config, self.src = dict(config), source
        e, eps, nf = c["embed_dim"], c["layer_norm_eps"], c["norm_first"]
        heads, hidden, act = c["num_heads"], state[s.block_names[0]["mlp.fc1.weight"]].shape[0], \
            c["activation"]
        self.no_embed_class = (s.cls_token is not None and s.pos_embed is not None and
                               state[s.pos_embed].shape[-2] == self._patches())
        self.encoder_root = None
        if s.layout == "transformer_encoder":
            has = {n: n in s.block_names[0] for n in _block_names(BLOCK_LAYOUTS["timm"][1])}
            if not all(has.values()) and any(has.values()):
                raise ValueError("nn.TransformerEncoderLayer has every bias or none")
            extra = {} if all(has.values()) else {"bias": False}
            layer = nn.TransformerEncoderLayer(e, heads, hidden, dropout=0.0,
                                               activation=activation_module(act),
                                               layer_norm_eps=eps, batch_first=True,
                                               norm_first=nf, **extra)
            self.encoder_root = s.blocks[0].split(".")[0]
            inside = s.norm == self.encoder_root + ".norm."
            norm = _layer_norm(e, eps, s.norm + "bias" in state) if inside else None
            _put(self, self.encoder_root,
                 nn.TransformerEncoder(layer, len(s.blocks), norm=norm,
                                       enable_nested_tensor=False))
            self.separate_norm = s.norm is not None and not inside
        else:
            for prefix, names in zip(s.blocks, s.block_names):
                has = {n: n in names for n in _block_names(BLOCK_LAYOUTS["timm"][1])}
                if s.layout == "timm":
                    if not (has["norm1.bias"] and has["norm2.bias"]):
                        raise ValueError("a timm block's LayerNorms without bias cannot be "
                                         "rebuilt here")
                    block = load_in_pytorch.Block(
                        e, heads, hidden, act, eps, nf,
                        biases={k: has[f"{n}.bias"] for k, n in (
                            ("qkv", "attn.qkv"), ("proj", "attn.proj"), ("fc1", "mlp.fc1"),
                            ("fc2", "mlp.fc2"))})
                else:
                    block = TorchvisionBlock(e, heads, hidden, act, eps, nf, names, has)
                _put(self, prefix.rstrip("."), block)
            self.separate_norm = s.norm is not None
        w = state[s.patch_embed + "weight"]
        _put(self, s.patch_embed.rstrip("."),
             nn.Conv2d(w.shape[1], e, w.shape[2], stride=w.shape[2],
                       bias=s.patch_embed + "bias" in state))
        for name in (s.cls_token, s.pos_embed):
            if name is not None:
                _put(self, name, nn.Parameter(torch.zeros(state[name].shape)))
        if self.separate_norm:
            _put(self, s.norm.rstrip("."), _layer_norm(e, eps, s.norm + "bias" in state))
        if s.head is not None:
            _put(self, s.head.rstrip("."), nn.Linear(e, c["num_classes"],
                                                     bias=s.head + "bias" in state))

    def _patches(self) -> int:
        height, width = self.config["img_size"]
        return (height // self.config["patch_size"]) * (width // self.config["patch_size"])

    def forward(self, images):
        s, e = self.src, self.config["embed_dim"]
        x = self.get_submodule(s.patch_embed.rstrip("."))(images).flatten(2).transpose(1, 2)
        pos = self.get_parameter(s.pos_embed).reshape(1, -1, e) if s.pos_embed else None
        if pos is not None and self.no_embed_class:
            x = x + pos
        if s.cls_token is not None:
            cls = self.get_parameter(s.cls_token).reshape(1, 1, e)
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        if pos is not None and not self.no_embed_class:
            x = x + pos
        if self.encoder_root is not None:
            x = self.get_submodule(self.encoder_root)(x)
        else:
            for prefix in s.blocks:
                x = self.get_submodule(prefix.rstrip("."))(x)
        if self.separate_norm:
            x = self.get_submodule(s.norm.rstrip("."))(x)
        prefix = 1 if s.cls_token is not None else 0
        pooled = x[:, 0] if self.config["global_pool"] == "token" else x[:, prefix:].mean(dim=1)
        return self.get_submodule(s.head.rstrip("."))(pooled) if s.head else pooled


def vit_pytorch_logits(source: Union[nn.Module, Dict[str, torch.Tensor]], images: torch.Tensor,
                       dtype: torch.dtype = torch.float32,
                       options: Optional[VitOptions] = None) -> torch.Tensor:
    """PyTorch's logits on `images`, computed in `dtype`: by the module itself (its first
    output if it returns several), or for a state_dict by SourceViT, the source's layout
    rebuilt under its own names and loaded strictly. Runs with gradients enabled, so that
    nn.MultiheadAttention takes its documented (slow) path."""
    state, merged = _vit_state_and_options(source, options)
    if isinstance(source, nn.Module):
        model = copy.deepcopy(source)
    else:
        config, _, src = convert_vit(state, merged)
        model = SourceViT(config, src, state).to(dtype)
        _load_strictly(model, {k: v.to(dtype) for k, v in state.items()}, "the ViT state_dict")
    model = model.to(dtype).eval()
    with torch.enable_grad():
        out = model(images.to(dtype))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach()


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _load_inputs(path) -> dict:
    loaded = load_safetensors(path) if Path(path).suffix == ".safetensors" else torch.load(path)
    if isinstance(loaded, torch.Tensor):
        return {"src": loaded}
    if not isinstance(loaded, dict) or "src" not in loaded:
        raise ValueError(f"{path}: expected a tensor or a dict with 'src'")
    unknown = set(loaded) - {"src", "src_key_padding_mask", "mask"}
    if unknown:
        raise ValueError(f"{path}: unknown entries {sorted(unknown)}")
    return loaded


_VIT_ONLY = ("img_size", "global_pool", "mean", "std")
_ENCODER_ONLY = ("position", "attention", "residual")


def _export_encoder_command(args, loaded, dtype) -> str:
    given = {"num_heads": args.num_heads, "activation": args.activation,
             "norm_first": args.norm_first, "layer_norm_eps": args.layer_norm_eps}
    if isinstance(loaded, nn.Module):
        config = encoder_config(loaded)
        said = {"num_heads": config["nhead"], "activation": config["activation"],
                "norm_first": config["norm_first"], "layer_norm_eps": config["layer_norm_eps"]}
        for name, value in given.items():
            if value is not None and value != said[name]:
                raise ValueError(f"--{name.replace('_', '-')} {value} contradicts the module's "
                                 f"{said[name]}")
        encoder = loaded
    else:
        encoder = encoder_from_state_dict(loaded, **given)
    export_encoder(encoder, args.out, dtype, position=args.position, residual=args.residual,
                   attention=args.attention)
    if args.inputs:
        inputs = _load_inputs(args.inputs)
        if args.inputs_out:
            export_inputs(args.inputs_out, encoder, dtype=dtype, **inputs)
        if args.expected_out:
            output = pytorch_output(encoder, **inputs)
            save_safetensors(args.expected_out, {"output": output.to(dtype)})
    layers = len(encoder.layers)
    return f"an nn.TransformerEncoder, {layers} layer{'s' if layers > 1 else ''}"


def _export_vit_command(args, loaded, dtype) -> str:
    options = VitOptions(num_heads=args.num_heads, activation=args.activation,
                         norm_first=args.norm_first, layer_norm_eps=args.layer_norm_eps,
                         global_pool=args.global_pool, mean=args.mean, std=args.std)
    if args.img_size:
        options.img_size = (args.img_size[0], args.img_size[-1])
    state, merged = _vit_state_and_options(loaded, options)
    config, _, source = convert_vit(state, merged)
    export_vit(loaded, args.out, dtype, options)
    if args.inputs:
        images = load_images(args.inputs)
        expected = [config["in_chans"], *config["img_size"]]
        if images.dim() != 4 or list(images.shape[1:]) != expected:
            raise ValueError(f"{args.inputs}: images must be B x {' x '.join(map(str, expected))}"
                             f", got {list(images.shape)}")
        if args.inputs_out:
            save_safetensors(args.inputs_out, {"images": images.to(dtype)})
        if args.expected_out:
            logits = vit_pytorch_logits(loaded, images, dtype, options)
            save_safetensors(args.expected_out, {"logits": logits})
    kind = "module" if isinstance(loaded, nn.Module) else "state_dict"
    return (f"a {source.layout}-layout ViT {kind}: {config['depth']} "
            f"{'pre' if config['norm_first'] else 'post'}-norm "
            f"block{'s' if config['depth'] > 1 else ''}, embed_dim "
            f"{config['embed_dim']}, {config['num_heads']} heads, img_size "
            f"{config['img_size'][0]} x {config['img_size'][1]}, patch_size "
            f"{config['patch_size']}, {config['num_classes']} classes")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a module saved with torch.save(module, PATH), a "
                                           "state_dict saved with torch.save, or a .safetensors "
                                           "state_dict")
    parser.add_argument("--attribute", default="",
                        help="dotted path inside what CHECKPOINT holds: attributes of a module "
                             "('encoder', 'backbone.encoder'), keys of a dict ('model', "
                             "'state_dict') (default: CHECKPOINT itself)")
    parser.add_argument("--prefix", default="",
                        help="use the state_dict entries whose names start with this, the "
                             "prefix removed (e.g. 'module.')")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="dtype of the exported weights, inputs and expected outputs "
                             "(default: %(default)s)")
    what = parser.add_argument_group(
        "what a state_dict does not say (a module says it itself)")
    what.add_argument("--num-heads", type=int, help="attention heads per block / layer")
    what.add_argument("--activation", choices=["relu", "gelu", "gelu_tanh"],
                      help="the MLP's activation (timm, torchvision: gelu; required for "
                           "nn.TransformerEncoderLayer state_dicts)")
    what.add_argument("--norm-first", type=_bool, metavar="true|false",
                      help="pre-norm blocks (timm, torchvision: true; required for "
                           "nn.TransformerEncoderLayer state_dicts)")
    what.add_argument("--layer-norm-eps", type=float,
                      help="eps of every LayerNorm (timm, torchvision: 1e-6; "
                           "nn.TransformerEncoderLayer: 1e-5)")
    vit = parser.add_argument_group("vision transformers")
    vit.add_argument("--img-size", type=int, nargs="+", metavar="N",
                     help="image size: H, or H W (default: from pos_embed's rows, a square "
                          "grid)")
    vit.add_argument("--global-pool", choices=["token", "avg"],
                     help="pooling (default: token with a class token, else avg)")
    vit.add_argument("--mean", type=float, nargs="+", help="config.json's per-channel mean")
    vit.add_argument("--std", type=float, nargs="+", help="config.json's per-channel std")
    encoder = parser.add_argument_group("encoders")
    for name, default in (("position", "none"), ("attention", "softmax"),
                          ("residual", "standard")):
        encoder.add_argument(f"--{name}", metavar="JSON", type=_json_object,
                             help=f"config.json's \"{name}\" object, e.g. "
                                  f"'{{\"type\": \"{default}\"}}' (the default); the module "
                                  "must carry the parameters it needs (docs/model-format.md)")
    io = parser.add_argument_group("inputs and PyTorch's outputs")
    io.add_argument("--inputs", "--images", dest="inputs",
                    help="an encoder's src tensor or dict (src, src_key_padding_mask, mask), "
                         "or a ViT's images (B x C x H x W): torch.save'd or safetensors")
    io.add_argument("--inputs-out", "--images-out", dest="inputs_out",
                    help="where to write the inputs (safetensors: src and masks, or images)")
    io.add_argument("--expected-out",
                    help="where to write PyTorch's output on the inputs (safetensors: "
                         "'output' of an encoder, 'logits' of a ViT)")
    args = parser.parse_args(argv)
    if (args.inputs_out or args.expected_out) and not args.inputs:
        parser.error("--inputs-out and --expected-out need --inputs / --images")
    if args.img_size is not None and len(args.img_size) > 2:
        parser.error("--img-size takes H or H W")
    defaults = {"position": "none", "attention": "softmax", "residual": "standard"}
    changed = [f"--{name}" for name, default in defaults.items()
               if getattr(args, name) not in (None, {"type": default})]
    if args.expected_out and changed:
        parser.error(f"--expected-out is PyTorch's plain encoder, which does not compute "
                     f"{' / '.join(changed)}")
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]

    try:
        loaded = load_checkpoint(args.checkpoint, args.attribute)
        if isinstance(loaded, nn.Module):
            if args.prefix:
                raise ValueError("--prefix selects state_dict entries; for a module use "
                                 "--attribute")
            kind = ("transformer_encoder" if isinstance(loaded, nn.TransformerEncoder)
                    else "vision_transformer")
        elif is_state_dict(loaded):
            loaded = _under_prefix(loaded, args.prefix)
            if any(k + "weight" in loaded for k in VIT_PART_NAMES["patch_embed"]):
                kind = "vision_transformer"
            elif any(re.match(r"layers\.\d+\.self_attn\.in_proj_weight$", k) for k in loaded):
                kind = "transformer_encoder"
            else:
                heads = {k.split(".")[0] for k in loaded}
                hint = (f" (every name starts with '{heads.pop()}.': --prefix?)"
                        if len(heads) == 1 and all("." in k for k in loaded) else "")
                raise ValueError(
                    "cannot tell the model: a ViT state_dict has a patch embedding ("
                    f"{', '.join(n + 'weight' for n in VIT_PART_NAMES['patch_embed'])}), an "
                    "nn.TransformerEncoder's has layers.{i}.self_attn.in_proj_weight; first "
                    f"keys: {', '.join(sorted(loaded)[:5])}{hint}")
        else:
            keys = (f" with keys {', '.join(sorted(map(str, loaded))[:8])}"
                    if isinstance(loaded, dict) else "")
            raise ValueError(f"{args.checkpoint} holds a {type(loaded).__name__}{keys}, not a "
                             "module or a state_dict (--attribute picks one inside it)")
        wrong = ([f"--{n.replace('_', '-')}" for n in _VIT_ONLY if getattr(args, n) is not None]
                 if kind == "transformer_encoder" else
                 [f"--{n}" for n in _ENCODER_ONLY if getattr(args, n) is not None])
        if wrong:
            raise ValueError(f"{' / '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not "
                             f"apply to a {kind.replace('_', ' ')}")
        described = (_export_encoder_command(args, loaded, dtype)
                     if kind == "transformer_encoder" else
                     _export_vit_command(args, loaded, dtype))
    except (ValueError, OSError) as e:
        print(f"export_pytorch: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors from {described}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
