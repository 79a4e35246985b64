// PyTorch-convention masks read from a safetensors file and turned into attnlens's typed
// AttentionMask: `key_padding_mask` [B, S] (BOOL or U8, True = ignore) and `attn_mask`
// [L, S] or [B*H, L, S] (BOOL or U8 with True = not allowed, or float added to the scores),
// exactly as nn.MultiheadAttention takes them.
#pragma once

#include <cstdint>
#include <string>

#include "attnlens/io/safetensors.hpp"
#include "attnlens/kernel/mask.hpp"

namespace attnlens::io {

inline bool is_boolean_dtype(DType dtype) { return dtype == DType::BOOL || dtype == DType::U8; }

// The tensor names of the two masks: nn.MultiheadAttention's argument names by default;
// nn.TransformerEncoder calls them src_key_padding_mask and mask.
struct TorchMaskNames {
  std::string key_padding_mask = "key_padding_mask";
  std::string attn_mask = "attn_mask";
};

// Reads the masks named `names` when present, for a problem of the given shape; causal stays
// false (PyTorch passes it as a flag, not a tensor).
template <class T>
AttentionMask<T> read_torch_masks(const SafeTensors& file, const TorchMaskNames& names,
                                  const ScoreShape& shape) {
  const Index B = shape.batch, H = shape.heads, L = shape.queries, S = shape.keys;
  AttentionMask<T> mask;
  const std::string& padding = names.key_padding_mask;
  if (file.contains(padding)) {
    attnlens::detail::require_argument(is_boolean_dtype(file.info(padding).dtype),
                                       "tensor '" + padding + "'", "dtype BOOL or U8",
                                       dtype_name(file.info(padding).dtype));
    const auto ignore = file.get<std::uint8_t>(padding);
    attnlens::detail::require_shape(ignore.shape() == Shape{B, S}, "tensor '" + padding + "'",
                                    attnlens::detail::shape_string(Shape{B, S}),
                                    attnlens::detail::shape_string(ignore.shape()));
    mask.key_keep = keep_from_torch_mask(ignore);
  }
  const std::string& attn = names.attn_mask;
  if (file.contains(attn)) {
    const Shape& stored = file.info(attn).shape;
    attnlens::detail::require_shape(stored == Shape{L, S} || stored == Shape{B * H, L, S},
                                    "tensor '" + attn + "'",
                                    attnlens::detail::shape_string(Shape{L, S}) + " or " +
                                        attnlens::detail::shape_string(Shape{B * H, L, S}),
                                    attnlens::detail::shape_string(stored));
    // PyTorch's (B*H) x L x S is attnlens's B x H x L x S.
    const Shape shape4 = stored.size() == 2 ? stored : Shape{B, H, L, S};
    if (is_boolean_dtype(file.info(attn).dtype))
      mask.keep = keep_from_torch_mask(file.get<std::uint8_t>(attn)).reshaped(shape4);
    else
      mask.bias = file.get<T>(attn).reshaped(shape4);
  }
  return mask;
}

// Reads `<prefix>key_padding_mask` and `<prefix>attn_mask` when present.
template <class T>
AttentionMask<T> read_torch_masks(const SafeTensors& file, const std::string& prefix,
                                  const ScoreShape& shape) {
  const TorchMaskNames names{prefix + "key_padding_mask", prefix + "attn_mask"};
  return read_torch_masks<T>(file, names, shape);
}

}  // namespace attnlens::io
