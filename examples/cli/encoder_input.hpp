// The input file of `attnlens encode` and `attnlens grad`: src [B, L, E] and PyTorch's masks
// (src_key_padding_mask, mask), checked against the encoder they are for.
#pragma once

#include <string>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "cli/checks.hpp"

namespace attnlens::cli {

template <class T>
struct EncoderInput {
  Tensor<T> src;
  AttentionMask<T> mask;
};

template <class T>
EncoderInput<T> read_encoder_input(const TransformerEncoder<T>& encoder, const std::string& path) {
  const auto input = io::SafeTensors::load(path);
  require_known_tensors(input, path, {"src", "src_key_padding_mask", "mask"});
  EncoderInput<T> result{input.get<T>("src"), {}};
  const Tensor<T>& src = result.src;
  detail::require_shape(src.rank() == 3 && src.dim(2) == encoder.d_model(), "tensor 'src'",
                        detail::concat("[B, L, ", encoder.d_model(), "]"),
                        detail::shape_string(src.shape()));
  const Index L = src.dim(1);
  result.mask = io::read_torch_masks<T>(input, io::TorchMaskNames{"src_key_padding_mask", "mask"},
                                        {src.dim(0), encoder.nhead(), L, L});
  return result;
}

}  // namespace attnlens::cli
