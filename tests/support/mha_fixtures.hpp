// The masks of a multi-head attention fixture case (tests/reference/oracles/mha.py: mha_* and
// grad_mha_*) in attnlens's typed form, PyTorch's polarity converted on reading.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "attnlens/io/safetensors.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "attnlens/kernel/mask.hpp"

namespace attnlens::testing {

template <class T>
AttentionMask<T> mha_case_mask(const io::SafeTensors& file, const std::string& prefix,
                               const nlohmann::json& c) {
  AttentionMask<T> mask = io::read_torch_masks<T>(
      file, prefix, {c["batch"], c["num_heads"], c["tgt_len"], c["src_len"]});
  mask.causal = c["causal"].get<bool>();
  return mask;
}

}  // namespace attnlens::testing
