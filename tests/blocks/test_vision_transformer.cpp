// VisionTransformer against a ViT written independently in PyTorch (F.conv2d patches, CLS
// token, learned positions, 2-D relative positions as per-head masks of
// nn.TransformerEncoderLayer blocks, norm, pooling, head; fixtures from
// tests/reference/oracles/blocks.py), its timm-like parameter names, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <set>
#include <string>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

template <class T>
void check_vit_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("vit");
  const double tol = testing::default_tolerance<T>();
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    VisionTransformer<T> vit(testing::vit_options(c));
    const auto names = io::load_parameters(file, prefix, vit);
    // Every parameter the fixture stores was read: the names match timm's / PyTorch's.
    const auto all = file.names();
    const auto stored = std::count_if(all.begin(), all.end(),
                                      [&](const auto& name) { return name.rfind(prefix, 0) == 0; });
    EXPECT_EQ(names.size() + 3, static_cast<std::size_t>(stored));  // + images, logits, tokens
    const auto out = vit.forward(file.get<T>(prefix + "images"), {AttentionWeights::per_head, {}});
    ATTNLENS_EXPECT_CLOSE(out.logits, file.get<T>(prefix + "logits"), tol);
    ATTNLENS_EXPECT_CLOSE(out.tokens, file.get<T>(prefix + "tokens"), tol);
    std::cout << prefix << " max abs error: logits "
              << testing::max_abs_error(out.logits, file.get<T>(prefix + "logits")) << ", tokens "
              << testing::max_abs_error(out.tokens, file.get<T>(prefix + "tokens")) << "\n";
    EXPECT_EQ(out.weights.size(), c["num_layers"].template get<std::size_t>());
  });
  EXPECT_EQ(checked, 6);
}

TEST(VisionTransformer, MatchesAnIndependentPyTorchViTFloat) { check_vit_against_pytorch<float>(); }
TEST(VisionTransformer, MatchesAnIndependentPyTorchViTDouble) {
  check_vit_against_pytorch<double>();
}

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
  for (const char* name :
       {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed",
        "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias", "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc2.bias", "blocks.0.norm1.weight",
        "blocks.1.norm2.bias", "norm.weight", "head.weight", "head.bias"})
    EXPECT_EQ(names.count(name), 1u) << name;
  EXPECT_EQ(names.size(), 4 + 2 * 12 + 2 + 2u);
}

TEST(VisionTransformer, RelativePositionsAreNamedUnderEachBlocksAttn) {
  auto o = small_options();
  o.relative_position.type = PositionType::quadratic;
  VisionTransformer<float> vit(o);
  std::set<std::string> names;
  for_each_parameter(
      vit, "", [&](const std::string& name, auto&, const Shape& = {}) { names.insert(name); });
  for (const char* name : {"blocks.0.attn.alpha", "blocks.1.attn.center_shift"})
    EXPECT_EQ(names.count(name), 1u) << name;
  EXPECT_EQ(names.size(), 4 + 2 * 14 + 2 + 2u);
  // The grid comes from the image: 4 x 2 patches after one CLS token.
  const auto& term = vit.blocks[1].position.as<QuadraticEncoding<float>>();
  EXPECT_EQ(term.query_grid().height, 4);
  EXPECT_EQ(term.query_grid().width, 2);
  EXPECT_EQ(term.query_grid().leading, 1);
  // Every block has its own tables.
  EXPECT_NE(&vit.blocks[0].position.as<QuadraticEncoding<float>>(), &term);

  o.relative_position.type = PositionType::learned_2d;
  o.relative_position.dim = 3;
  const VisionTransformer<float> learned(o);
  const auto& table = learned.blocks[0].position.as<LearnedRelative2d<float>>();
  EXPECT_EQ(table.max_position(), 4);  // the grid's longest side
  EXPECT_EQ(table.dim(), 3);
  EXPECT_EQ(table.head_keys_row.rows(), 2);
}

// The CLS token has no position: its row and column of every head's scores get no domain
// term, so a CLS query attends as without positions when the patches' terms cancel out.
TEST(VisionTransformer, ClsTokenGetsNoDomainTerm) {
  auto o = small_options();
  o.relative_position.type = PositionType::quadratic;
  o.encoder.num_layers = 1;
  Rng rng(53);
  VisionTransformer<double> with(o, rng);
  auto& quadratic = with.blocks[0].position.as<QuadraticEncoding<double>>();
  quadratic.alpha << 2.0, 0.5;
  VisionTransformer<double> without = with;
  without.blocks[0].set_position({});
  const auto images = testing::random_tensor<double>({1, 1, 8, 4}, rng);
  const auto a = with.forward(images, {AttentionWeights::per_head, {}});
  const auto b = without.forward(images, {AttentionWeights::per_head, {}});
  for (Index h = 0; h < 2; ++h) {
    // The CLS query's row depends on content only.
    ATTNLENS_EXPECT_CLOSE(a.weights[0].matrix({0, h}).row(0), b.weights[0].matrix({0, h}).row(0),
                          1e-14);
    // A patch query's map changes: its patch keys get -alpha |delta|^2.
    EXPECT_GT(testing::max_abs_error(a.weights[0].matrix({0, h}).row(3),
                                     b.weights[0].matrix({0, h}).row(3)),
              1e-3);
  }
  // Copies are deep: changing the copy's table leaves the original as it was.
  VisionTransformer<double> copy = with;
  copy.blocks[0].position.as<QuadraticEncoding<double>>().alpha.setZero();
  const EncoderForwardOptions maps{AttentionWeights::per_head, {}};
  EXPECT_EQ(with.forward(images, maps).logits.storage(), a.logits.storage());
  EXPECT_EQ(copy.forward(images, maps).logits.storage(), b.logits.storage());
}

// A bilateral variant's distance kernel acts on the patch grid after the CLS token: the CLS
// query's map is softmax's, patch queries' maps are not, and sigma -> infinity is softmax.
TEST(VisionTransformer, BilateralAttentionActsOnThePatchGrid) {
  auto o = small_options();
  o.encoder.num_layers = 1;
  Rng seed_a(54), seed_b(54);  // the same parameters in both
  VisionTransformer<double> softmax(o, seed_a);
  o.encoder.layer.attention.type = AttentionVariantType::bilateral;
  o.encoder.layer.attention.domain.type = DistanceKernelType::laplacian;
  o.encoder.layer.attention.sigma_init = 0.8;
  VisionTransformer<double> bilateral(o, seed_b);
  const auto& grid = bilateral.options().encoder.layer.attention.domain.grid;
  ASSERT_TRUE(grid.has_value());
  EXPECT_EQ(grid->height, 4);
  EXPECT_EQ(grid->width, 2);
  EXPECT_EQ(grid->leading, 1);

  Rng rng(55);
  const auto images = testing::random_tensor<double>({1, 1, 8, 4}, rng);
  const EncoderForwardOptions maps{AttentionWeights::per_head, {}};
  const auto a = bilateral.forward(images, maps);
  const auto b = softmax.forward(images, maps);
  for (Index h = 0; h < 2; ++h) {
    const auto with = a.weights[0].matrix({0, h}), without = b.weights[0].matrix({0, h});
    ATTNLENS_EXPECT_CLOSE(with.row(0), without.row(0), 1e-14);
    EXPECT_GT(testing::max_abs_error(with.row(4), without.row(4)), 1e-3);
  }
  // The tokens, not the logits: with one layer and CLS pooling the logits come from the CLS
  // query's row alone, which has no domain term, so they could not show a change.
  bilateral.blocks[0].self_attn.rho.setConstant(1e300);  // sigma = softplus(rho) = 1e300
  ATTNLENS_EXPECT_CLOSE(bilateral.forward(images).tokens, b.tokens, 1e-14);
  // The approach to that limit, where the domain term is small but not zero. The Laplacian
  // term of a key is -|dr| - |dc| over sigma, and on the 4 x 2 grid |dr| + |dc| <= 3 + 1 = 4
  // (the CLS token has none), so every score of a row moves by some delta in [-4 / sigma, 0].
  // Then with r_j = exp(delta_j) each weight p_j becomes p_j r_j / sum_k p_k r_k, a ratio to p_j
  // in [exp(-4 / sigma), exp(4 / sigma)]: |bilateral - softmax| <= expm1(4 / sigma) p_j. The
  // difference is first order in 1 / sigma, so ten times sigma makes it ten times smaller, in
  // the maps and in the tokens.
  double map_change[2], token_change[2];
  const double sigmas[2] = {1e3, 1e4};
  for (int n = 0; n < 2; ++n) {
    const double sigma = sigmas[n];
    SCOPED_TRACE(::testing::Message() << "sigma " << sigma);
    bilateral.blocks[0].self_attn.rho.setConstant(sigma);  // softplus(rho) = rho here, exactly
    const auto near = bilateral.forward(images, maps);
    // Both heads' maps at once; p_j <= 1.
    ATTNLENS_EXPECT_CLOSE(near.weights[0], b.weights[0], std::expm1(4 / sigma));
    map_change[n] = testing::max_abs_error(near.weights[0], b.weights[0]);
    token_change[n] = testing::max_abs_error(near.tokens, b.tokens);
    EXPECT_GT(map_change[n], 0.0);  // the term is there
    EXPECT_GT(token_change[n], 0.0);
  }
  EXPECT_NEAR(map_change[1] / map_change[0], 0.1, 0.01);
  EXPECT_NEAR(token_change[1] / token_change[0], 0.1, 0.01);
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
  o = small_options();
  o.relative_position.type = PositionType::t5;
  expect_error_naming<ArgumentError>([&] { VisionTransformer<float> v(o); },
                                     "relative_position.type");
  o = small_options();
  o.encoder.position.type = PositionType::learned;
  expect_error_naming<ArgumentError>([&] { VisionTransformer<float> v(o); },
                                     "encoder.position.type");
  o = small_options();
  o.relative_position.type = PositionType::learned_2d;
  o.relative_position.max_position = 2;  // the 4 x 2 grid needs offsets up to 3
  const VisionTransformer<float> too_short(o);
  expect_error_naming<ArgumentError>(
      [&] {
        too_short.forward(Tensor<float>({1, 1, 8, 4}));
      },
      "max_position");
  const VisionTransformer<float> vit(small_options());
  expect_error_naming<ShapeError>([&] { vit.forward(Tensor<float>({1, 1, 8, 6})); }, "images");
  expect_error_naming<ShapeError>([&] { vit.forward(Tensor<float>({0, 1, 8, 4})); }, "images");
  expect_error_naming<ShapeError>([&] { vit.forward(Tensor<float>({1, 8, 4})); }, "images");
}

}  // namespace
}  // namespace attnlens
