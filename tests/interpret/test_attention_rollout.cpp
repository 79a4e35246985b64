// interpret/attention_rollout.hpp: the rollout equals a loop-by-loop computation of the paper's
// 0.5 A + 0.5 I product (and of (F + I) / rowsum for max and min fusion) and torch's on the
// attribution fixture's ViTs (tests/reference/oracles/rollout.py); rows sum to 1;
// identity attention leaves the rollout as it was; mean fusion is the encoder's averaged
// weights; bad shapes are errors naming the layer.
#include <gtest/gtest.h>

#include <vector>

#include "attnlens/interpret/attention_rollout.hpp"
#include "support/blocks.hpp"
#include "support/compare.hpp"
#include "support/expect_error.hpp"
#include "support/fixtures.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// B x H x L x L row-stochastic maps: the softmax of random scores, sharpened so that heads
// differ.
Tensor<double> rollout_random_weights(Index B, Index H, Index L, Rng& rng) {
  Tensor<double> w({B, H, L, L});
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      auto m = w.matrix({b, h});
      for (Index i = 0; i < L; ++i) {
        double sum = 0;
        for (Index j = 0; j < L; ++j) sum += m(i, j) = std::exp(3.0 * rng.normal<double>(0, 1));
        m.row(i) /= sum;
      }
    }
  return w;
}

// The rollout written out entry by entry: per layer the fused heads, the residual path, the
// product with the rollout so far.
std::vector<double> rollout_by_loops(const std::vector<Tensor<double>>& weights, Index b,
                                     HeadFusion fusion) {
  const Index H = weights[0].dim(1), L = weights[0].dim(2);
  std::vector<double> rollout(static_cast<std::size_t>(L * L), 0.0);
  for (Index i = 0; i < L; ++i) rollout[static_cast<std::size_t>(i * L + i)] = 1.0;
  for (const Tensor<double>& w : weights) {
    std::vector<double> layer(static_cast<std::size_t>(L * L));
    for (Index i = 0; i < L; ++i) {
      double row_sum = 0;
      for (Index j = 0; j < L; ++j) {
        double f = w.at({b, 0, i, j});
        for (Index h = 1; h < H; ++h) {
          const double a = w.at({b, h, i, j});
          f = fusion == HeadFusion::mean ? f + a
              : fusion == HeadFusion::max ? std::max(f, a)
                                          : std::min(f, a);
        }
        if (fusion == HeadFusion::mean) f = 0.5 * f / static_cast<double>(H) + (i == j ? 0.5 : 0.0);
        else f += i == j ? 1.0 : 0.0;
        layer[static_cast<std::size_t>(i * L + j)] = f;
        row_sum += f;
      }
      if (fusion != HeadFusion::mean)
        for (Index j = 0; j < L; ++j) layer[static_cast<std::size_t>(i * L + j)] /= row_sum;
    }
    std::vector<double> next(static_cast<std::size_t>(L * L), 0.0);
    for (Index i = 0; i < L; ++i)
      for (Index k = 0; k < L; ++k)
        for (Index j = 0; j < L; ++j)
          next[static_cast<std::size_t>(i * L + j)] +=
              layer[static_cast<std::size_t>(i * L + k)] * rollout[static_cast<std::size_t>(k * L + j)];
    rollout = next;
  }
  return rollout;
}

TEST(AttentionRollout, EqualsTheProductWrittenOut) {
  Rng rng(5);
  std::vector<Tensor<double>> weights;
  for (int l = 0; l < 3; ++l) weights.push_back(rollout_random_weights(2, 3, 5, rng));
  for (const HeadFusion fusion : {HeadFusion::mean, HeadFusion::max, HeadFusion::min}) {
    SCOPED_TRACE(name_of(k_head_fusion_names, fusion));
    const auto by_layer = attention_rollout_by_layer(weights, {fusion});
    ASSERT_EQ(by_layer.size(), 3u);
    for (std::size_t l = 0; l < 3; ++l) {
      const std::vector<Tensor<double>> prefix(weights.begin(), weights.begin() + l + 1);
      for (Index b = 0; b < 2; ++b) {
        const Tensor<double> expected({5, 5}, rollout_by_loops(prefix, b, fusion));
        ATTNLENS_EXPECT_CLOSE(by_layer[l].matrix({b}), expected.matrix(), 1e-14);
      }
    }
    ATTNLENS_EXPECT_CLOSE(attention_rollout(weights, {fusion}), by_layer.back(), 0.0);
  }
}

// Every layer's rollout of the attribution fixture's ViTs (their attention from attnlens's
// forward) against torch's (rollout_{f32,f64}).
template <class T>
void check_rollout_against_pytorch() {
  const io::SafeTensors models = testing::load_typed_fixture<T>("attribution");
  const io::SafeTensors file = testing::load_typed_fixture<T>("rollout");
  EncoderForwardOptions per_head;
  per_head.weights = AttentionWeights::per_head;
  const int checked = testing::for_each_case(models, "", [&](const auto& c, const auto& prefix) {
    VisionTransformer<T> vit(testing::vit_options(c));
    io::load_parameters(models, prefix, vit);
    const auto weights = vit.forward(models.get<T>(prefix + "images"), per_head).weights;
    for (const HeadFusion fusion : {HeadFusion::mean, HeadFusion::max, HeadFusion::min}) {
      const auto by_layer = attention_rollout_by_layer(weights, {fusion});
      for (std::size_t l = 0; l < by_layer.size(); ++l)
        ATTNLENS_EXPECT_CLOSE(
            by_layer[l],
            file.get<T>(detail::concat(prefix, "layers.", l, ".rollout_",
                                       name_of(k_head_fusion_names, fusion))),
            testing::default_tolerance<T>())
            << l << " " << name_of(k_head_fusion_names, fusion);
    }
  });
  EXPECT_EQ(checked, 2);
}

TEST(AttentionRollout, MatchesPyTorchFloat) { check_rollout_against_pytorch<float>(); }
TEST(AttentionRollout, MatchesPyTorchDouble) { check_rollout_against_pytorch<double>(); }

TEST(AttentionRollout, RowsSumToOneAndIdentityAttentionChangesNothing) {
  Rng rng(9);
  std::vector<Tensor<double>> weights = {rollout_random_weights(1, 4, 6, rng),
                                         rollout_random_weights(1, 4, 6, rng)};
  const Tensor<double> before = attention_rollout(weights);
  for (Index i = 0; i < 6; ++i) EXPECT_NEAR(before.matrix({0}).row(i).sum(), 1.0, 1e-14);
  EXPECT_GE(before.matrix({0}).minCoeff(), 0.0);
  // A layer whose every head attends to itself only: R = rownorm(I + I) = I.
  Tensor<double> identity({1, 4, 6, 6});
  for (Index h = 0; h < 4; ++h) identity.matrix({0, h}).setIdentity();
  ATTNLENS_EXPECT_CLOSE(attention_rollout(std::vector<Tensor<double>>{identity}).matrix({0}),
                        Matrix<double>::Identity(6, 6), 0.0);
  weights.push_back(identity);
  ATTNLENS_EXPECT_CLOSE(attention_rollout(weights), before, 1e-15);
  // A fully masked query (a row of zeros) keeps its own token.
  Tensor<double> masked = weights[0];
  for (Index h = 0; h < 4; ++h) masked.matrix({0, h}).row(2).setZero();
  const Tensor<double> r = attention_rollout(std::vector<Tensor<double>>{masked});
  EXPECT_EQ(r.at({0, 2, 2}), 1.0);
  EXPECT_NEAR(r.matrix({0}).row(2).sum(), 1.0, 1e-15);
}

TEST(AttentionRollout, MeanFusionIsTheEncodersAveragedWeights) {
  Rng rng(3);
  const VisionTransformer<double> vit(testing::small_vit_config(/*image_size*/ 8, 2).vit, rng);
  Tensor<double> images({2, 1, 8, 8});
  for (Index i = 0; i < images.size(); ++i) images.data()[i] = rng.normal<double>(0, 1);
  EncoderForwardOptions per_head, averaged;
  per_head.weights = AttentionWeights::per_head;
  averaged.weights = AttentionWeights::averaged;
  const auto heads = vit.forward(images, per_head).weights;
  const auto means = vit.forward(images, averaged).weights;
  for (std::size_t l = 0; l < 2; ++l)
    ATTNLENS_EXPECT_CLOSE(fuse_heads(heads[l], HeadFusion::mean), means[l], 1e-15);
  const Tensor<double> rollout = attention_rollout(heads);
  EXPECT_EQ(rollout.shape(), (Shape{2, 5, 5}));
  for (Index b = 0; b < 2; ++b)
    for (Index i = 0; i < 5; ++i) EXPECT_NEAR(rollout.matrix({b}).row(i).sum(), 1.0, 1e-14);
}

TEST(AttentionRollout, BadShapesAreErrors) {
  Rng rng(1);
  expect_error_naming<ArgumentError>(
      [] { attention_rollout(std::vector<Tensor<double>>{}); }, "at least one layer");
  const Tensor<double> good = rollout_random_weights(1, 2, 4, rng);
  expect_error_naming<ShapeError>(
      [&] { attention_rollout(std::vector<Tensor<double>>{good, rollout_random_weights(1, 2, 5, rng)}); },
      "weights[1]");
  expect_error_naming<ShapeError>(
      [&] { attention_rollout(std::vector<Tensor<double>>{Tensor<double>({1, 4, 4})}); },
      "weights[0]");
  expect_error_naming<ShapeError>(
      [&] { attention_rollout(std::vector<Tensor<double>>{Tensor<double>({1, 2, 4, 3})}); },
      "[1, H, 4, 4]");
}

}  // namespace
}  // namespace attnlens
