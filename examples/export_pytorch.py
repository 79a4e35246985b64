#!/usr/bin/env python3
"""Export a PyTorch torch.nn.TransformerEncoder to attnlens's model format.

Writes DIR/config.json (the encoder's constructor arguments) and DIR/model.safetensors (its
state_dict under PyTorch's names), which `attnlens encode --model DIR` and
attnlens::io::load_encoder_model read (see docs/model-format.md). Optionally also writes an
input file for `attnlens encode --input` and PyTorch's own output on it, to compare with
attnlens's.

From the command line, on a module saved with torch.save(encoder, "encoder.pt"):

    python3 examples/export_pytorch.py encoder.pt --out my_model
    python3 examples/export_pytorch.py model.pt --attribute encoder --out my_model \\
        --inputs inputs.pt --inputs-out x.safetensors --expected-out expected.safetensors
    attnlens encode --model my_model --input x.safetensors --output y.safetensors

inputs.pt is torch.save of a tensor `src` or of a dict with "src" and optionally
"src_key_padding_mask" (B x L, True = ignore) and "mask" (L x L, bool True = not allowed, or
float added to the scores), laid out as the encoder takes them (L x B x E when its layers
are not batch_first; the export writes B x L x E).

From Python:

    from export_pytorch import export_encoder, export_inputs
    export_encoder(encoder, "my_model")
    export_inputs("x.safetensors", encoder, src, src_key_padding_mask=padding)

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

Needs only torch (and numpy); the safetensors package is not required.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Dict, Optional

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


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def _load_inputs(path) -> dict:
    loaded = torch.load(path)
    if isinstance(loaded, torch.Tensor):
        return {"src": loaded}
    if not isinstance(loaded, dict) or "src" not in loaded:
        raise ValueError(f"{path}: expected a tensor or a dict with 'src'")
    unknown = set(loaded) - {"src", "src_key_padding_mask", "mask"}
    if unknown:
        raise ValueError(f"{path}: unknown entries {sorted(unknown)}")
    return loaded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Export a torch.nn.TransformerEncoder to attnlens's model format "
                    "(DIR/config.json + DIR/model.safetensors).",
        epilog="See docs/model-format.md for the format and `attnlens encode --help`.")
    parser.add_argument("checkpoint", help="a module saved with torch.save(module, PATH)")
    parser.add_argument("--attribute", default="",
                        help="dotted path of the TransformerEncoder inside the saved module, "
                             "e.g. 'encoder' or 'backbone.encoder' (default: the module itself)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="dtype of the exported weights and inputs (default: %(default)s)")
    for name, default in (("position", "none"), ("attention", "softmax"),
                          ("residual", "standard")):
        parser.add_argument(f"--{name}", metavar="JSON", type=_json_object,
                            help=f"config.json's \"{name}\" object, e.g. "
                                 f"'{{\"type\": \"{default}\"}}' (the default); the module "
                                 "must carry the parameters it needs (docs/model-format.md)")
    parser.add_argument("--inputs", help="torch.save'd src tensor or dict (src, "
                                         "src_key_padding_mask, mask) to export as well")
    parser.add_argument("--inputs-out", help="where to write the inputs (safetensors)")
    parser.add_argument("--expected-out",
                        help="where to write PyTorch's output on the inputs (safetensors)")
    args = parser.parse_args(argv)
    if (args.inputs_out or args.expected_out) and not args.inputs:
        parser.error("--inputs-out and --expected-out need --inputs")
    defaults = {"position": "none", "attention": "softmax", "residual": "standard"}
    changed = [f"--{name}" for name, default in defaults.items()
               if getattr(args, name) not in (None, {"type": default})]
    if args.expected_out and changed:
        parser.error(f"--expected-out is PyTorch's plain encoder, which does not compute "
                     f"{' / '.join(changed)}")

    module = torch.load(args.checkpoint, map_location="cpu")
    for part in filter(None, args.attribute.split(".")):
        module = getattr(module, part)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    try:
        export_encoder(module, args.out, dtype, position=args.position,
                       residual=args.residual, attention=args.attention)
    except ValueError as e:
        print(f"export_pytorch: error: {e}", file=sys.stderr)
        return 2
    if args.inputs:
        inputs = _load_inputs(args.inputs)
        if args.inputs_out:
            export_inputs(args.inputs_out, module, dtype=dtype, **inputs)
        if args.expected_out:
            output = pytorch_output(module, **inputs)
            save_safetensors(args.expected_out, {"output": output.to(dtype)})
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
