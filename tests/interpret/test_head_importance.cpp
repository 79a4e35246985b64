// interpret/head_importance.hpp: which heads a fraction prunes (floor(p * heads), the lowest
// scores, ties in layer-major order), the pruning intervention against a model whose pruned
// heads' columns of out_proj are zeroed (the same function, written another way), p = 0 as the
// clean accuracy of evaluate_classifier exactly, p = 1 as every head zeroed, rankings
// reproducible from their seed, bad arguments named. The scores themselves are checked against
// torch autograd in test_attribution.cpp.
#include <gtest/gtest.h>

#include <vector>

#include "attnlens/interpret/head_importance.hpp"
#include "attnlens/train/classifier_training.hpp"
#include "support/blocks.hpp"
#include "support/compare.hpp"
#include "support/expect_error.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// The small test ViT (3 layers of 2 heads) in double, with 40 images whose labels are its own
// predictions for the first 30 (so that the clean accuracy is 75% or more and pruning has
// something to lose) and class 0 for the rest.
struct PruningSetup {
  VisionTransformer<double> vit;
  Tensor<double> images;
  std::vector<Index> labels;
};

PruningSetup pruning_setup() {
  Rng rng(11);
  PruningSetup s{VisionTransformer<double>(testing::small_vit_config(8, 3).vit, rng),
                 testing::random_tensor<double>({40, 1, 8, 8}, rng),
                 {}};
  s.labels = predicted_classes(s.vit, s.images);
  for (Index i = 30; i < 40; ++i) s.labels[static_cast<std::size_t>(i)] = 0;
  return s;
}

// The model with every head whose scale is 0 cut at out_proj: its d columns zeroed, so that its
// context A_h V_h never reaches the output, as zeroing A_h does.
VisionTransformer<double> heads_cut_at_out_projection(
    VisionTransformer<double> vit, const std::vector<std::vector<double>>& scales) {
  for (std::size_t l = 0; l < scales.size(); ++l) {
    auto& attention = vit.blocks[l].self_attn;
    const Index d = attention.head_dim();
    for (std::size_t h = 0; h < scales[l].size(); ++h)
      if (scales[l][h] == 0.0)
        attention.out_proj.weight.middleCols(static_cast<Index>(h) * d, d).setZero();
  }
  return vit;
}

TEST(HeadImportance, FractionsPruneTheFloorOfTheirShare) {
  const std::vector<Index> sixteen = {0, 1, 3, 4, 6, 8, 9, 11, 12, 14, 16};
  for (Index i = 0; i <= 10; ++i) {
    const double p = static_cast<double>(i) / 10;
    EXPECT_EQ(pruned_head_count(16, p), sixteen[static_cast<std::size_t>(i)]) << p;
    EXPECT_EQ(pruned_head_count(10, p), i) << p;
  }
}

TEST(HeadImportance, TheLowestScoresArePrunedFirstAndTiesInLayerOrder) {
  Matrix<double> importance(2, 3);
  importance << 0.5, 0.1, 0.9,  //
      0.1, 0.7, 0.3;
  using Scales = std::vector<std::vector<double>>;
  EXPECT_EQ(pruned_head_scales(importance, 0.0), (Scales{{1, 1, 1}, {1, 1, 1}}));
  EXPECT_EQ(pruned_head_scales(importance, 0.2), (Scales{{1, 0, 1}, {1, 1, 1}}));  // 1 head
  EXPECT_EQ(pruned_head_scales(importance, 0.4), (Scales{{1, 0, 1}, {0, 1, 1}}));  // 2 heads
  EXPECT_EQ(pruned_head_scales(importance, 0.5), (Scales{{1, 0, 1}, {0, 1, 0}}));
  EXPECT_EQ(pruned_head_scales(importance, 0.7), (Scales{{0, 0, 1}, {0, 1, 0}}));
  EXPECT_EQ(pruned_head_scales(importance, 1.0), (Scales{{0, 0, 0}, {0, 0, 0}}));
}

TEST(HeadImportance, PruningZeroesTheHeadsContributions) {
  const PruningSetup s = pruning_setup();
  const Matrix<double> importance = random_head_importance(3, 2, 5);
  for (const double p : {0.3, 0.5, 1.0}) {
    const auto scales = pruned_head_scales(importance, p);
    EncoderForwardOptions forward;
    forward.head_scales = scales;
    const Tensor<double> pruned = s.vit.forward(s.images, forward).logits;
    const Tensor<double> cut = heads_cut_at_out_projection(s.vit, scales).forward(s.images).logits;
    ATTNLENS_EXPECT_CLOSE(pruned, cut, 1e-12) << p;
    EXPECT_GT(testing::max_abs_error(pruned, s.vit.forward(s.images).logits), 1e-3) << p;
    EXPECT_EQ(head_scaled_accuracy(s.vit, s.images, s.labels, scales, 7),
              head_scaled_accuracy(heads_cut_at_out_projection(s.vit, scales), s.images,
                                   s.labels, {}, 40));
  }
}

TEST(HeadImportance, NoPruningIsTheCleanAccuracyAndFullPruningZeroesEveryHead) {
  const PruningSetup s = pruning_setup();
  const ImageDataset<double> data{s.images, s.labels, {"circle", "square", "line"}};
  const double clean = evaluate_classifier(s.vit, data, 40).accuracy;
  EXPECT_GE(clean, 0.75);
  const std::vector<Matrix<double>> rankings = {
      attribution_head_importance(s.vit, s.images, s.labels),
      attention_head_importance(s.vit, s.images),
      taylor_head_importance(s.vit, s.images, s.labels), random_head_importance(3, 2, 0)};
  const std::vector<std::vector<double>> none(3, std::vector<double>(2, 0.0));
  const double all_pruned = evaluate_classifier(heads_cut_at_out_projection(s.vit, none), data,
                                                40).accuracy;
  for (const Matrix<double>& importance : rankings) {
    EXPECT_EQ(pruned_head_scales(importance, 1.0), none);
    EXPECT_EQ(head_scaled_accuracy(s.vit, s.images, s.labels, pruned_head_scales(importance, 0.0),
                                   9),
              clean);
    EXPECT_EQ(head_scaled_accuracy(s.vit, s.images, s.labels, pruned_head_scales(importance, 1.0),
                                   9),
              all_pruned);
  }
}

TEST(HeadImportance, RankingsAreReproducibleFromTheirSeed) {
  EXPECT_EQ(random_head_importance(4, 4, 3), random_head_importance(4, 4, 3));
  EXPECT_GT(testing::max_abs_error(random_head_importance(4, 4, 3), random_head_importance(4, 4, 4)),
            0.1);
  const Matrix<double> draw = random_head_importance(4, 4, 3);
  EXPECT_GE(draw.minCoeff(), 0.0);
  EXPECT_LT(draw.maxCoeff(), 1.0);
  const PruningSetup s = pruning_setup();
  EXPECT_EQ(attribution_head_importance(s.vit, s.images, s.labels),
            attribution_head_importance(s.vit, s.images, s.labels));
  EXPECT_EQ(taylor_head_importance(s.vit, s.images, s.labels),
            taylor_head_importance(s.vit, s.images, s.labels));
}

TEST(HeadImportance, BadArgumentsAreNamed) {
  const PruningSetup s = pruning_setup();
  const Matrix<double> importance = random_head_importance(3, 2, 0);
  for (const double p : {-0.1, 1.5})
    expect_error_naming<ArgumentError>([&] { pruned_head_scales(importance, p); },
                                       "fraction: expected a value in [0, 1]");
  Matrix<double> broken = importance;
  broken(1, 1) = std::nan("");
  expect_error_naming<ArgumentError>([&] { pruned_head_scales(broken, 0.5); },
                                     "importance: expected finite scores");
  expect_error_naming<ArgumentError>(
      [&] { head_scaled_accuracy(s.vit, s.images, s.labels, {}, 0); },
      "batch_size: expected >= 1, got 0");
  std::vector<Index> labels = s.labels;
  labels[3] = 3;
  expect_error_naming<ArgumentError>(
      [&] { head_scaled_accuracy(s.vit, s.images, labels, {}); },
      "targets: expected classes in 0..2, got 3");
  expect_error_naming<ArgumentError>(
      [&] { head_scaled_accuracy(s.vit, s.images, s.labels, {{1.0, 1.0}}); },
      "EncoderForwardOptions::head_scales: expected none or one entry per layer (3), got 1");
  expect_error_naming<ArgumentError>(
      [&] { head_scaled_accuracy(s.vit, s.images, s.labels, {{1.0}, {1.0, 0.0, 1.0}, {}}); },
      "MultiHeadForwardOptions::head_scales: expected 0, 1 or 2 (one per head) values, got 3");
  expect_error_naming<ArgumentError>(
      [&] { random_head_importance(0, 2, 0); },
      "random_head_importance layers x heads: expected >= 1 each, got 0 x 2");
}

}  // namespace
}  // namespace attnlens
