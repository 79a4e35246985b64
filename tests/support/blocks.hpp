// Test helpers for the transformer-block fixtures (tests/reference/oracles/blocks.py): the
// fixture file of a scalar type and the options a fixture case was built with.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <type_traits>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "support/expect_error.hpp"
#include "support/fixtures.hpp"

namespace attnlens::testing {

// "<stem>_f32.safetensors" or "<stem>_f64.safetensors".
template <class T>
io::SafeTensors load_typed_fixture(const std::string& stem) {
  return load_fixture(stem + (std::is_same_v<T, float> ? "_f32" : "_f64") + ".safetensors");
}

// The encoder-layer options a fixture case (EncoderLayerCase / EncoderCase) was built with.
inline EncoderLayerOptions layer_options(const nlohmann::json& c) {
  EncoderLayerOptions o;
  o.d_model = c["d_model"];
  o.nhead = c["nhead"];
  o.dim_feedforward = c["dim_feedforward"];
  o.activation = activation_from_name(c["activation"]);
  o.layer_norm_eps = c.value("layer_norm_eps", 1e-5);
  o.norm_first = c["norm_first"];
  return o;
}

// The case's src_key_padding_mask and src_mask (PyTorch polarity) as attnlens's typed mask.
template <class T>
AttentionMask<T> encoder_mask(const io::SafeTensors& file, const std::string& prefix,
                              const nlohmann::json& c) {
  const Index B = c["batch"], H = c["nhead"], L = c["length"];
  AttentionMask<T> mask = io::read_torch_masks<T>(
      file, io::TorchMaskNames{prefix + "src_key_padding_mask", prefix + "mask"}, {B, H, L, L});
  mask.causal = c["src_mask"] == "causal";
  return mask;
}

// The encoder options of a fixture case (EncoderCase, or VitCase without residual fields).
inline EncoderOptions encoder_options(const nlohmann::json& c) {
  EncoderOptions o;
  o.layer = layer_options(c);
  o.num_layers = c["num_layers"];
  o.final_norm = c["final_norm"];
  o.residual.type = residual_type_from_name(c.value("residual", "standard"));
  o.residual.lambda = c.value("fidelity_lambda", std::vector<double>{});
  o.residual.learned = c.value("fidelity_learned", false);
  return o;
}

// The VisionTransformerOptions of a case of the vit fixture (oracles/blocks.py, VitCase) or of
// grad_vit (oracles/gradients.py, VitGradCase: also config.json's "attention" object).
inline VisionTransformerOptions vit_options(const nlohmann::json& c) {
  VisionTransformerOptions o;
  o.image_height = c["image_height"];
  o.image_width = c["image_width"];
  o.patch_size = c["patch_size"];
  o.in_chans = c["in_chans"];
  o.num_classes = c["num_classes"];
  o.encoder = encoder_options(c);
  o.class_token = c["class_token"];
  o.position = c["position"] == "learned" ? VitPosition::learned : VitPosition::none;
  o.pooling = c["pooling"] == "token" ? VitPooling::token : VitPooling::mean;
  o.relative_position.type = position_type_from_name(c.value("relative", "none"));
  o.relative_position.max_position = c.value("max_position", 0);
  o.relative_position.dim = c.value("relative_dim", 0);
  if (c.contains("attention"))
    o.encoder.layer.attention = io::detail::parse_attention_config(
        io::detail::ConfigReader(c["attention"], c["name"].get<std::string>() + " attention"));
  return o;
}

// The ViT of a case of `file` with its parameters, stored under the case's name and a dot.
template <class T>
VisionTransformer<T> fixture_vit(const io::SafeTensors& file, const nlohmann::json& c) {
  VisionTransformer<T> vit(vit_options(c));
  io::load_parameters(file, c["name"].template get<std::string>() + ".", vit);
  return vit;
}

// Calls body(case, prefix) for every case of `file` (of the given "kind", if not empty), inside
// a SCOPED_TRACE naming the case; returns how many there were.
template <class Body>
int for_each_case(const io::SafeTensors& file, const std::string& kind, Body&& body) {
  int count = 0;
  for (const auto& c : fixture_cases(file)) {
    if (!kind.empty() && c.value("kind", "") != kind) continue;
    const std::string prefix = c["name"].get<std::string>() + ".";
    SCOPED_TRACE(prefix);
    body(c, prefix);
    ++count;
  }
  return count;
}

// A row-wise module (LayerNorm, FeedForward) applied to every token of a B x L x E tensor.
template <class T, class Module>
Tensor<T> apply_to_rows(const Module& module, const Tensor<T>& x, Index out_features) {
  const Index in_features = x.shape().back(), rows = x.size() / in_features;
  Shape shape = x.shape();
  shape.back() = out_features;
  Tensor<T> y(shape);
  module.forward(ConstMatrixMap<T>(x.data(), rows, in_features),
                 MatrixMap<T>(y.data(), rows, out_features));
  return y;
}

// A tensor of N(0, 1) entries.
template <class T>
Tensor<T> random_tensor(const Shape& shape, Rng& rng) {
  Tensor<T> t(shape);
  for (auto& v : t.storage()) v = rng.normal<T>();
  return t;
}

}  // namespace attnlens::testing
