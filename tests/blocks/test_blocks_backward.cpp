// The backward passes of TransformerEncoderLayer (both norm_first), TransformerEncoder (final
// norm, fidelity residual with a learned lambda, absolute and relative positions, NeuTRENO's
// V^0 across layers, dropout in training) and VisionTransformer (CLS token, pos_embed, pooling,
// head, 2-D relative positions) against central finite differences in double, every input and
// named parameter.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/parameters.hpp"
#include "support/compare.hpp"
#include "support/gradient_check.hpp"

namespace attnlens {
namespace {

using testing::perturb_parameters;
using testing::random_normal_tensor;

// L = sum(probe (*) output) for a probe shaped like the output.
double probed(const Tensor<double>& output, const Tensor<double>& probe) {
  return (ConstMatrixMap<double>(output.data(), 1, output.size()).array() *
          ConstMatrixMap<double>(probe.data(), 1, probe.size()).array())
      .sum();
}

EncoderLayerOptions small_layer_options(bool norm_first, Activation activation) {
  EncoderLayerOptions o;
  o.d_model = 8;
  o.nhead = 2;
  o.dim_feedforward = 12;
  o.activation = activation;
  o.norm_first = norm_first;
  return o;
}

AttentionMask<double> padding() {
  AttentionMask<double> mask;
  mask.key_lengths = std::vector<Index>{5, 3};
  return mask;
}

// The layer's parameters perturbed (seed), a padded batch 2 x 5 x 8 and a probe of its output
// (seeds + 1, + 2): every parameter's and the input's gradient against central differences.
void expect_layer_gradients(TransformerEncoderLayer<double>& layer, std::uint64_t seed) {
  perturb_parameters(layer, seed);
  Tensor<double> src = random_normal_tensor({2, 5, 8}, seed + 1);
  const Tensor<double> probe = random_normal_tensor({2, 5, 8}, seed + 2);
  const AttentionMask<double> mask = padding();
  const auto loss = [&] { return probed(layer.forward(src, mask).output, probe); };
  EncoderLayerCache<double> cache;
  layer.forward(src, mask, {}, &cache);
  TransformerEncoderLayer<double> gradient = zeros_like(layer);
  const auto inputs = layer.backward(cache, probe, gradient);
  testing::expect_parameter_gradients(layer, gradient, loss);
  ATTNLENS_EXPECT_GRADIENT(loss, src.data(), src.size(), inputs.src.data(), 1e-6);
}

TEST(EncoderLayerBackward, BothNormOrdersMatchDifferences) {
  for (bool norm_first : {false, true})
    for (Activation activation : {Activation::relu, Activation::gelu}) {
      SCOPED_TRACE(::testing::Message()
                   << "norm_first " << norm_first << ", " << activation_name(activation));
      TransformerEncoderLayer<double> layer(small_layer_options(norm_first, activation));
      expect_layer_gradients(layer, 1);
    }
}

// Attention-only layers (dim_feedforward 0: no linear1, linear2, norm2), both norm orders, with
// and without the content term (positional-only scores: a relative position alone).
TEST(EncoderLayerBackward, AttentionOnlyLayersMatchDifferences) {
  for (bool norm_first : {false, true})
    for (bool content : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "norm_first " << norm_first << ", content " << content);
      EncoderLayerOptions o = small_layer_options(norm_first, Activation::gelu);
      o.dim_feedforward = 0;
      o.content = content;
      TransformerEncoderLayer<double> layer(o);
      PositionOptions t5;
      t5.type = PositionType::t5;
      layer.set_position(RelativePosition<double>(t5, 8, 2));
      Index parameters = 0;
      for_each_parameter(layer, "", [&](const std::string& name, auto&, const auto&...) {
        EXPECT_TRUE(name.rfind("self_attn.", 0) == 0 || name.rfind("norm1.", 0) == 0) << name;
        ++parameters;
      });
      EXPECT_EQ(parameters, 7);  // in_proj weight, bias; out_proj weight, bias; T5; norm1 x 2
      expect_layer_gradients(layer, 4);
    }
}

// A training forward: the masks are fixed by the key, so the loss is a function of the inputs and
// parameters as any other, and the backward must drop what the forward dropped.
TEST(EncoderLayerBackward, DropoutMatchesDifferences) {
  for (bool norm_first : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "norm_first " << norm_first);
    EncoderLayerOptions o = small_layer_options(norm_first, Activation::gelu);
    o.dropout = 0.3;
    TransformerEncoderLayer<double> layer(o);
    perturb_parameters(layer, 11);
    Tensor<double> src = random_normal_tensor({2, 5, 8}, 12);
    const Tensor<double> probe = random_normal_tensor({2, 5, 8}, 13);
    EncoderForwardOptions training;
    training.dropout_key = 2024;
    const auto loss = [&] { return probed(layer.forward(src, padding(), training).output, probe); };
    EncoderLayerCache<double> cache;
    const Tensor<double> dropped = layer.forward(src, padding(), training, &cache).output;
    // The masks are on: the training output is not the inference output.
    EXPECT_FALSE(dropped == layer.forward(src, padding()).output);
    TransformerEncoderLayer<double> gradient = zeros_like(layer);
    const auto inputs = layer.backward(cache, probe, gradient);
    testing::expect_parameter_gradients(layer, gradient, loss);
    ATTNLENS_EXPECT_GRADIENT(loss, src.data(), src.size(), inputs.src.data(), 1e-6);
  }
}

// Three layers: every piece of the stack's backward at once.
// `forward`: a training forward when it has a dropout key.
void expect_encoder_gradients(const std::string& what, const EncoderOptions& options,
                              const AttentionMask<double>& mask,
                              const EncoderForwardOptions& forward = {}) {
  SCOPED_TRACE(what);
  TransformerEncoder<double> encoder(options);
  perturb_parameters(encoder, 4);
  Tensor<double> src = random_normal_tensor({2, 5, 8}, 5);
  const Tensor<double> probe = random_normal_tensor({2, 5, 8}, 6);
  const auto loss = [&] { return probed(encoder.forward(src, mask, forward).output, probe); };
  EncoderCache<double> cache;
  encoder.forward(src, mask, forward, &cache);
  TransformerEncoder<double> gradient = zeros_like(encoder);
  const Tensor<double> dsrc = encoder.backward(cache, probe, gradient);
  testing::expect_parameter_gradients(encoder, gradient, loss);
  ATTNLENS_EXPECT_GRADIENT(loss, src.data(), src.size(), dsrc.data(), 1e-6);
}

// Each layer of a stack draws its own masks from its part of the key.
TEST(EncoderBackward, DropoutInEveryLayerMatchesDifferences) {
  EncoderOptions o;
  o.layer = small_layer_options(true, Activation::gelu);
  o.layer.dropout = 0.25;
  o.num_layers = 3;
  o.final_norm = true;
  EncoderForwardOptions training;
  training.dropout_key = 7;
  EncoderCache<double> cache;
  TransformerEncoder<double>(o).forward(random_normal_tensor({2, 5, 8}, 15), padding(), training,
                                        &cache);
  for (std::size_t l = 1; l < cache.layers.size(); ++l)
    EXPECT_NE(cache.layers[l].dropout.key(), cache.layers[0].dropout.key()) << l;
  expect_encoder_gradients("dropout 0.25 in every layer", o, padding(), training);
}

TEST(EncoderBackward, FidelityResidualFinalNormAndLearnedPositionsMatchDifferences) {
  for (bool norm_first : {false, true}) {
    EncoderOptions o;
    o.layer = small_layer_options(norm_first, Activation::gelu_tanh);
    o.num_layers = 3;
    o.final_norm = true;
    o.residual.type = ResidualType::fidelity;
    o.residual.learned = true;
    o.position.type = PositionType::learned;
    o.position.max_len = 7;
    expect_encoder_gradients(norm_first ? "pre-norm" : "post-norm", o, padding());
  }
}

TEST(EncoderBackward, RelativePositionsAndVariantsMatchDifferences) {
  // GELU: finite differences across a ReLU's kink (a pre-activation within the step of 0)
  // would not be a derivative.
  EncoderOptions o;
  o.layer = small_layer_options(false, Activation::gelu);
  o.num_layers = 3;
  o.position.type = PositionType::t5;
  o.position.num_buckets = 8;
  o.position.max_distance = 6;
  expect_encoder_gradients("t5", o, padding());
  // NeuTRENO: later layers' terms send gradient into the first layer's values.
  EncoderOptions neutreno = o;
  neutreno.position = {};
  neutreno.layer.attention.type = AttentionVariantType::neutreno;
  expect_encoder_gradients("neutreno", neutreno, padding());
  EncoderOptions sinusoidal = neutreno;
  sinusoidal.layer.attention = {};
  sinusoidal.layer.attention.type = AttentionVariantType::bilateral;
  sinusoidal.position.type = PositionType::sinusoidal;
  sinusoidal.residual.type = ResidualType::fidelity;
  sinusoidal.residual.lambda = {0.3};
  expect_encoder_gradients("bilateral, sinusoidal, fidelity", sinusoidal, padding());
}

// A small ViT on 4 x 6 images in 2 x 2 patches, 2 pre-norm GELU blocks, 3 classes: the
// gradients of a probe of its logits against central differences (seeds: parameters, images,
// probe).
VisionTransformerOptions small_vit_options(Index in_chans) {
  VisionTransformerOptions o;
  o.image_height = 4;
  o.image_width = 6;
  o.patch_size = 2;
  o.in_chans = in_chans;
  o.num_classes = 3;
  o.encoder.layer = small_layer_options(true, Activation::gelu);
  o.encoder.num_layers = 2;
  o.encoder.final_norm = true;
  return o;
}

void expect_vit_gradients(const VisionTransformerOptions& o, std::uint64_t seed) {
  VisionTransformer<double> vit(o);
  perturb_parameters(vit, seed);
  Tensor<double> images = random_normal_tensor({2, o.in_chans, 4, 6}, seed + 1);
  const Tensor<double> probe = random_normal_tensor({2, 3}, seed + 2);
  const auto loss = [&] { return probed(vit.forward(images).logits, probe); };
  VitCache<double> cache;
  vit.forward(images, {}, &cache);
  VisionTransformer<double> gradient = zeros_like(vit);
  const Tensor<double> dimages = vit.backward(cache, probe, gradient);
  testing::expect_parameter_gradients(vit, gradient, loss);
  ATTNLENS_EXPECT_GRADIENT(loss, images.data(), images.size(), dimages.data(), 1e-6);
}

TEST(VisionTransformerBackward, MatchesDifferences) {
  for (VitPooling pooling : {VitPooling::token, VitPooling::mean}) {
    VisionTransformerOptions o = small_vit_options(2);
    o.pooling = pooling;
    o.relative_position.type = PositionType::quadratic;
    expect_vit_gradients(o, 7);
  }
}

// The three models of the convolution experiment in miniature (docs/interpretability.md):
// attention-only blocks, mean pooling, and positional-only attention with the quadratic or the
// learned 2-D encoding, or content attention with a learned absolute table.
TEST(VisionTransformerBackward, AttentionOnlyPositionalModelsMatchDifferences) {
  for (const std::string kind : {"quadratic", "learned_2d", "absolute"}) {
    SCOPED_TRACE(kind);
    VisionTransformerOptions o = small_vit_options(1);
    o.encoder.layer.dim_feedforward = 0;
    o.class_token = false;
    o.pooling = VitPooling::mean;
    o.position = kind == "absolute" ? VitPosition::learned : VitPosition::none;
    o.encoder.layer.content = kind == "absolute";
    if (kind != "absolute") o.relative_position.type = position_type_from_name(kind);
    expect_vit_gradients(o, 11);
  }
}

}  // namespace
}  // namespace attnlens
