// VisionTransformer against a ViT written independently in PyTorch (F.conv2d patches, CLS
// token, learned positions, nn.TransformerEncoderLayer blocks, norm, pooling, head; fixtures
// from tests/reference/oracles/blocks.py), its timm-like parameter names, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

VisionTransformerOptions vit_options(const nlohmann::json& c) {
  VisionTransformerOptions o;
  o.image_height = c["image_height"];
  o.image_width = c["image_width"];
  o.patch_size = c["patch_size"];
  o.in_chans = c["in_chans"];
  o.num_classes = c["num_classes"];
  o.encoder = testing::encoder_options(c);
  o.class_token = c["class_token"];
  o.position = c["position"] == "learned" ? VitPosition::learned : VitPosition::none;
  o.pooling = c["pooling"] == "token" ? VitPooling::token : VitPooling::mean;
  return o;
}

template <class T>
void check_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("vit");
  const double tol = testing::default_tolerance<T>();
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    VisionTransformer<T> vit(vit_options(c));
    const auto names = io::load_parameters(file, prefix, vit);
    // Every parameter the fixture stores was read: the names match timm's / PyTorch's.
    const auto all = file.names();
    const auto stored = std::count_if(all.begin(), all.end(),
                                      [&](const auto& name) { return name.rfind(prefix, 0) == 0; });
    EXPECT_EQ(names.size() + 3, static_cast<std::size_t>(stored));  // + images, logits, tokens
    const auto out = vit.forward(file.get<T>(prefix + "images"), {AttentionWeights::per_head, {}});
    ATTNLENS_EXPECT_CLOSE(out.logits, file.get<T>(prefix + "logits"), tol);
    ATTNLENS_EXPECT_CLOSE(out.tokens, file.get<T>(prefix + "tokens"), tol);
    EXPECT_EQ(out.weights.size(), c["num_layers"].template get<std::size_t>());
  });
  EXPECT_EQ(checked, 3);
}

TEST(VisionTransformer, MatchesAnIndependentPyTorchViTFloat) { check_against_pytorch<float>(); }
TEST(VisionTransformer, MatchesAnIndependentPyTorchViTDouble) { check_against_pytorch<double>(); }

VisionTransformerOptions small_options() {
  VisionTransformerOptions o;
  o.image_height = 8;
  o.image_width = 4;
  o.patch_size = 2;
  o.in_chans = 1;
  o.num_classes = 3;
  o.encoder.layer = {8, 2, 16, Activation::gelu, 1e-6, true, true};
  o.encoder.num_layers = 2;
  o.encoder.final_norm = true;
  return o;
}

TEST(VisionTransformer, ParameterNamesFollowTimm) {
  VisionTransformer<float> vit(small_options());
  std::set<std::string> names;
  for_each_parameter(
      vit, "", [&](const std::string& name, auto&, const Shape& = {}) { names.insert(name); });
  for (const char* name : {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token",
                           "pos_embed", "blocks.1.self_attn.in_proj_weight",
                           "blocks.0.linear1.weight", "norm.weight", "head.weight", "head.bias"})
    EXPECT_EQ(names.count(name), 1u) << name;
  EXPECT_EQ(names.size(), 4 + 2 * 12 + 2 + 2u);
}

TEST(VisionTransformer, AttentionMapsCoverTheClsTokenAndEveryPatch) {
  Rng rng(52);
  const VisionTransformer<double> vit(small_options(), rng);
  const auto images = testing::random_tensor<double>({2, 1, 8, 4}, rng);
  const auto out = vit.forward(images, {AttentionWeights::averaged, {}});
  EXPECT_EQ(vit.num_tokens(), 9);
  ASSERT_EQ(out.weights.size(), 2u);
  EXPECT_EQ(out.weights[1].shape(), (Shape{2, 9, 9}));
  EXPECT_NEAR(out.weights[1].matrix({0}).row(0).sum(), 1.0, 1e-12);
  EXPECT_EQ(out.logits.shape(), (Shape{2, 3}));
}

TEST(VisionTransformer, BadOptionsAndInputNameTheArgument) {
  auto o = small_options();
  o.image_width = 5;
  expect_error_naming<ArgumentError>([&] { VisionTransformer<float> v(o); }, "image_width");
  o = small_options();
  o.patch_size = 0;
  expect_error_naming<ArgumentError>([&] { VisionTransformer<float> v(o); }, "patch_size");
  o = small_options();
  o.class_token = false;
  expect_error_naming<ArgumentError>([&] { VisionTransformer<float> v(o); }, "pooling");
  o = small_options();
  o.encoder.num_layers = 0;
  expect_error_naming<ArgumentError>([&] { VisionTransformer<float> v(o); }, "num_layers");
  o = small_options();
  o.num_classes = -1;
  expect_error_naming<ArgumentError>([&] { VisionTransformer<float> v(o); }, "num_classes");
  const VisionTransformer<float> vit(small_options());
  expect_error_naming<ShapeError>([&] { vit.forward(Tensor<float>({1, 1, 8, 6})); }, "images");
  expect_error_naming<ShapeError>([&] { vit.forward(Tensor<float>({0, 1, 8, 4})); }, "images");
  expect_error_naming<ShapeError>([&] { vit.forward(Tensor<float>({1, 8, 4})); }, "images");
}

}  // namespace
}  // namespace attnlens
