// interpret/attribution_trigger.hpp: patch scores and their selection on trees built by hand
// (the strongest edges per tree, both ends, the class token left out, ties to the earlier edge
// and the lower patch, models without a class token), random placements, the mean image,
// paste_patches pixel by pixel, the batched trees against layer_attributions_of_image one image
// at a time, attribution_trigger against its parts, trigger_outcome by hand, bad arguments named.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "attnlens/interpret/attribution_trigger.hpp"
#include "support/expect_error.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// Tokens 0 (the class token) and 1..4 (patches 0..3). Weights are exact in binary.
AttributionTree tree_a() {
  AttributionTree t;
  t.root = 1;
  t.nodes = {1, 2, 3, 0, 4};
  t.edges = {{1, 1, 2, 0.875}, {1, 1, 3, 0.5}, {0, 2, 0, 1.0}, {0, 3, 4, 0.4375}};
  return t;
}

AttributionTree tree_b() {
  AttributionTree t;
  t.root = 4;
  t.nodes = {4, 3, 1, 2};
  t.edges = {{1, 4, 3, 0.75}, {1, 4, 1, 0.75}, {0, 3, 2, 0.625}};
  return t;
}

TEST(AttributionTrigger, PatchScoresByHand) {
  // Tree A, 3 strongest: 2 -> 0 (1.0: token 2 only, CLS scores nothing), 1 -> 2 (0.875),
  // 1 -> 3 (0.5); 3 -> 4 (0.4375) is the fourth and left out. Token 1: 1.375, 2: 1.875, 3: 0.5.
  // Tree B, all three: token 4: 1.5, 3: 0.75 + 0.625, 1: 0.75, 2: 0.625.
  const Vector<double> scores = trigger_patch_scores({tree_a(), tree_b()}, 4, 3);
  ASSERT_EQ(scores.size(), 4);
  EXPECT_EQ(scores(0), 1.375 + 0.75);
  EXPECT_EQ(scores(1), 1.875 + 0.625);
  EXPECT_EQ(scores(2), 0.5 + 1.375);
  EXPECT_EQ(scores(3), 1.5);
  EXPECT_EQ(select_trigger_patches(scores, 2), (std::vector<Index>{1, 0}));
  EXPECT_EQ(select_trigger_patches(scores, 4), (std::vector<Index>{1, 0, 2, 3}));
  // Every edge of tree A: token 4 gets 0.4375 too.
  EXPECT_EQ(trigger_patch_scores({tree_a()}, 4, 10)(3), 0.4375);
  EXPECT_EQ(trigger_patch_scores({}, 4, 3), Vector<double>::Zero(4));
}

TEST(AttributionTrigger, TiesGoToTheEarlierEdgeAndTheLowerPatch) {
  // Tree B's two 0.75 edges: one edge per tree keeps the first, 4 -> 3: patches 3 and 2 tie.
  const Vector<double> scores = trigger_patch_scores({tree_b()}, 4, 1);
  EXPECT_EQ(scores, (Vector<double>(4) << 0, 0, 0.75, 0.75).finished());
  EXPECT_EQ(select_trigger_patches(scores, 1), (std::vector<Index>{2}));
  EXPECT_EQ(select_trigger_patches(Vector<double>::Zero(3), 2), (std::vector<Index>{0, 1}));
}

TEST(AttributionTrigger, WithoutAClassTokenEveryTokenIsAPatch) {
  // Tree A on 5 patches: token 0 is patch 0 and scores 1.0 from 2 -> 0.
  const Vector<double> scores = trigger_patch_scores({tree_a()}, 5, 3, std::nullopt);
  EXPECT_EQ(scores, (Vector<double>(5) << 1.0, 1.375, 1.875, 0.5, 0).finished());
  // A class token elsewhere than 0: token 2 is left out, tokens 3 and 4 are patches 2 and 3.
  EXPECT_EQ(trigger_patch_scores({tree_b()}, 4, 3, Index{2}),
            (Vector<double>(4) << 0, 0.75, 1.375, 1.5).finished());
}

TEST(AttributionTrigger, BadArgumentsAreNamed) {
  expect_error_naming<ArgumentError>([] { trigger_patch_scores({tree_a()}, 0, 3); },
                                     "patch_count: expected >= 1, got 0");
  expect_error_naming<ArgumentError>([] { trigger_patch_scores({tree_a()}, 4, 0); },
                                     "edges_per_tree: expected >= 1, got 0");
  expect_error_naming<ArgumentError>(
      [] {
        trigger_patch_scores({tree_b(), tree_a()}, 3, 3);
      },
      "trees[0]: expected edges between tokens 0..3, got an edge "
      "4 -> 3");
  expect_error_naming<ArgumentError>([] { trigger_patch_scores({tree_a()}, 4, 3, Index{5}); },
                                     "class_token: expected a token in 0..4 or none, got 5");
  expect_error_naming<ArgumentError>([] { select_trigger_patches(Vector<double>::Zero(3), 4); },
                                     "count: expected 1..3 (the patches scored), got 4");
  expect_error_naming<ArgumentError>([] { select_trigger_patches(Vector<double>::Zero(3), 0); },
                                     "count: expected 1..3");
  expect_error_naming<ArgumentError>([] { random_trigger_patches(3, 4, 0); },
                                     "count: expected 1..3 (the patches), got 4");
  TriggerOptions options;
  options.edges_per_tree = 0;
  expect_error_naming<ArgumentError>([&] { check_trigger_options(options); },
                                     "TriggerOptions::edges_per_tree: expected >= 1, got 0");
  options = {};
  options.tau = 1.5;
  expect_error_naming<ArgumentError>([&] { check_trigger_options(options); },
                                     "TriggerOptions::tau: expected a value in (0, 1], got 1.5");
  options = {};
  options.draws = 0;
  expect_error_naming<ArgumentError>([&] { check_trigger_options(options); },
                                     "TriggerOptions::draws");
}

TEST(AttributionTrigger, RandomPatchesAreDistinctAndSeeded) {
  const std::vector<Index> a = random_trigger_patches(49, 4, 7);
  EXPECT_EQ(a, random_trigger_patches(49, 4, 7));
  EXPECT_NE(a, random_trigger_patches(49, 4, 8));
  EXPECT_EQ(std::set<Index>(a.begin(), a.end()).size(), 4u);
  for (const Index p : a) EXPECT_TRUE(p >= 0 && p < 49) << p;
  std::vector<Index> all = random_trigger_patches(6, 6, 1);
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<Index>{0, 1, 2, 3, 4, 5}));
}

Tensor<double> counting(const Shape& shape, double offset) {
  Tensor<double> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = offset + static_cast<double>(i);
  return t;
}

TEST(AttributionTrigger, MeanImageAndPastePatchesPixelByPixel) {
  const Tensor<double> images = counting({2, 2, 4, 6}, 0);  // 2 x 3 patches of 2 x 2
  const Tensor<double> mean = mean_image(images);
  ASSERT_EQ(mean.shape(), (Shape{2, 4, 6}));
  for (Index i = 0; i < mean.size(); ++i) EXPECT_EQ(mean.data()[i], static_cast<double>(i) + 24);
  const Tensor<double> content = counting({2, 4, 6}, 1000);
  const Tensor<double> pasted = paste_patches(images, content, {1, 5}, 2);
  ASSERT_EQ(pasted.shape(), images.shape());
  for (Index b = 0; b < 2; ++b)
    for (Index c = 0; c < 2; ++c)
      for (Index y = 0; y < 4; ++y)
        for (Index x = 0; x < 6; ++x) {
          const Index patch = (y / 2) * 3 + x / 2;
          const bool in = patch == 1 || patch == 5;
          EXPECT_EQ(pasted.matrix({b, c})(y, x),
                    in ? content.matrix({c})(y, x) : images.matrix({b, c})(y, x))
              << b << c << y << x;
        }
  EXPECT_EQ(paste_patches(images, content, {}, 2).storage(), images.storage());
  expect_error_naming<ArgumentError>([&] { paste_patches(images, content, {6}, 2); },
                                     "patches: expected patches in 0..5, got 6");
  expect_error_naming<ArgumentError>([&] { paste_patches(images, content, {0}, 3); },
                                     "patch_size: expected a divisor of 4 and 6, got 3");
  expect_error_naming<ShapeError>(
      [&] {
        paste_patches(images, counting({1, 4, 6}, 0), {0}, 2);
      },
      "content");
  expect_error_naming<ShapeError>([&] { mean_image(counting({0, 1, 4, 6}, 0)); }, "images");
}

class TriggerOnVit : public ::testing::Test {
 protected:
  TriggerOnVit() : vit_(make()), images_({5, 1, 12, 12}) {
    Rng rng(9);
    for (Index i = 0; i < images_.size(); ++i) images_.data()[i] = rng.normal<double>();
  }
  static VisionTransformer<double> make() {
    Rng rng(31);
    return VisionTransformer<double>(testing::small_vit_config(12, 2).vit, rng);
  }
  VisionTransformer<double> vit_;
  Tensor<double> images_;
};

TEST_F(TriggerOnVit, BatchedTreesAreTheTreesOfEachImage) {
  AttributionOptions attribution;
  attribution.steps = 3;
  AttributionTreeOptions options;
  options.tau = 0.3;
  const std::vector<Index> targets = {0, 1, 2, 0, 1};
  const std::vector<AttributionTree> trees =
      attribution_trees(vit_, images_, targets, options, attribution);
  ASSERT_EQ(trees.size(), 5u);
  for (Index b = 0; b < 5; ++b) {
    SCOPED_TRACE(b);
    const AttributionTree one =
        attribution_tree(layer_attributions_of_image(
                             vit_, images_, b, targets[static_cast<std::size_t>(b)], attribution),
                         options);
    const AttributionTree& got = trees[static_cast<std::size_t>(b)];
    EXPECT_EQ(got.root, one.root);
    EXPECT_EQ(got.nodes, one.nodes);
    ASSERT_EQ(got.edges.size(), one.edges.size());
    for (std::size_t e = 0; e < one.edges.size(); ++e) {
      EXPECT_EQ(got.edges[e].from, one.edges[e].from);
      EXPECT_EQ(got.edges[e].to, one.edges[e].to);
      EXPECT_EQ(got.edges[e].layer, one.edges[e].layer);
      // The batch's attention kernels may sum in another order than one image's.
      EXPECT_NEAR(got.edges[e].weight, one.edges[e].weight, 1e-12);
    }
  }
}

TEST_F(TriggerOnVit, TriggerIsItsParts) {
  TriggerOptions options;
  options.steps = 2;
  options.patches = 3;
  options.edges_per_tree = 2;
  const AttributionTrigger<double> trigger = attribution_trigger(vit_, images_, 1, options);
  AttributionOptions attribution;
  attribution.steps = 2;
  AttributionTreeOptions tree_options;
  const std::vector<AttributionTree> trees =
      attribution_trees(vit_, images_, std::vector<Index>(5, 1), tree_options, attribution);
  ASSERT_EQ(trigger.trees.size(), 5u);
  const Vector<double> scores = trigger_patch_scores(trees, 9, 2);
  EXPECT_EQ(trigger.scores, scores);
  EXPECT_EQ(trigger.patches, select_trigger_patches(scores, 3));
  EXPECT_EQ(trigger.content.storage(), mean_image(images_).storage());
  options.patches = 10;
  expect_error_naming<ArgumentError>([&] { attribution_trigger(vit_, images_, 1, options); },
                                     "TriggerOptions::patches: expected <= 9 (the model's "
                                     "patches), got 10");
}

TEST_F(TriggerOnVit, OutcomeCountsLabelsAndTheTarget) {
  const std::vector<Index> predicted = predicted_classes(vit_, images_);
  const std::vector<Index> labels = {0, 1, 2, 0, 1};
  Index correct = 0, as_two = 0;
  for (std::size_t i = 0; i < 5; ++i) {
    correct += predicted[i] == labels[i];
    as_two += predicted[i] == 2;
  }
  const TriggerOutcome outcome = trigger_outcome(vit_, images_, labels, 2, 2);
  EXPECT_EQ(outcome.accuracy, static_cast<double>(correct) / 5);
  EXPECT_EQ(outcome.target_share, static_cast<double>(as_two) / 5);
  EXPECT_EQ(predicted_classes_batched(vit_, images_, 2), predicted);
  expect_error_naming<ArgumentError>([&] { trigger_outcome(vit_, images_, labels, 3); },
                                     "target: expected a class in 0..2, got 3");
  expect_error_naming<ArgumentError>([&] { trigger_outcome(vit_, images_, labels, 0, 0); },
                                     "batch_size: expected >= 1, got 0");
}

}  // namespace
}  // namespace attnlens
