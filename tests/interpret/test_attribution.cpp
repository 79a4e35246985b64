// interpret/attribution.hpp and the importance scores of interpret/head_importance.hpp against
// torch autograd (tests/reference/oracles/attribution.py: the formula written out in PyTorch on
// a ViT of its own, the attention of one layer replaced by alpha A): left (m = 20), right
// (m = 5) and midpoint (m = 7) rules, predicted and given target classes, F(A) and F(0), the
// attribution, attention and Taylor importance of every head; completeness (the sum of the
// attributions against F(A) - F(0)) as m grows; bad arguments named.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "attnlens/interpret/attribution.hpp"
#include "attnlens/interpret/head_importance.hpp"
#include "support/blocks.hpp"
#include "support/compare.hpp"
#include "support/expect_error.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// The acceptance bounds on attribution against the oracle, relative to the largest
// entry of the compared tensor (attributions are O(1e-3) with entries near 0).
template <class T>
constexpr double attribution_tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-8;
}

std::vector<Index> attribution_classes(const io::SafeTensors& file, const std::string& name) {
  const Tensor<std::int64_t> stored = file.get<std::int64_t>(name);
  return std::vector<Index>(stored.storage().begin(), stored.storage().end());
}

std::vector<double> attribution_values(const io::SafeTensors& file, const std::string& name) {
  const Tensor<double> stored = file.get<double>(name);
  return std::vector<double>(stored.storage().begin(), stored.storage().end());
}

template <class T>
Eigen::Map<const Vector<T>> attribution_flat(const Tensor<T>& t) {
  return Eigen::Map<const Vector<T>>(t.data(), t.size());
}

// max |a - e| / max |e| over the entries, checked against attribution_tolerance.
template <class T, class A, class E>
double expect_attribution_close(const A& actual, const E& expected, const std::string& what) {
  const double scale = static_cast<double>(expected.cwiseAbs().maxCoeff());
  const double error = testing::max_abs_error(actual, expected) / scale;
  EXPECT_LE(error, attribution_tolerance<T>()) << what;
  EXPECT_GT(scale, 0) << what;
  return error;
}

template <class T>
void check_attribution_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("attribution");
  double largest = 0;
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    const VisionTransformer<T> vit = testing::fixture_vit<T>(file, c);
    const Tensor<T> images = file.get<T>(prefix + "images");
    const std::vector<Index> predicted = attribution_classes(file, prefix + "predicted");
    const std::vector<Index> labels = attribution_classes(file, prefix + "labels");
    EXPECT_EQ(predicted_classes(vit, images), predicted);
    const auto note = [&](double error) { largest = std::max(largest, error); };
    for (Index l = 0; l < vit.options().encoder.num_layers; ++l) {
      const std::string layer = detail::concat(prefix, "layers.", l, ".");
      const LayerAttribution<T> left = attention_attribution(vit, images, predicted, l);
      note(expect_attribution_close<T>(attribution_flat(left.attribution),
                                       attribution_flat(file.get<T>(layer + "attribution")),
                                       layer + "attribution"));
      EXPECT_EQ(left.targets, predicted);
      const Vector<double> probability = Eigen::Map<const Vector<double>>(
          left.probability.data(), static_cast<Index>(left.probability.size()));
      const Vector<double> baseline = Eigen::Map<const Vector<double>>(
          left.baseline_probability.data(), static_cast<Index>(left.baseline_probability.size()));
      const std::vector<double> expected_probability =
          attribution_values(file, prefix + "probability");
      const std::vector<double> expected_baseline =
          attribution_values(file, layer + "baseline_probability");
      ATTNLENS_EXPECT_CLOSE(probability,
                            Eigen::Map<const Vector<double>>(expected_probability.data(),
                                                             probability.size()),
                            10 * testing::default_tolerance<T>());
      ATTNLENS_EXPECT_CLOSE(baseline,
                            Eigen::Map<const Vector<double>>(expected_baseline.data(),
                                                             baseline.size()),
                            10 * testing::default_tolerance<T>());

      AttributionOptions options;
      options.rule = RiemannRule::midpoint;
      options.steps = 7;
      note(expect_attribution_close<T>(
          attribution_flat(attention_attribution(vit, images, labels, l, options).attribution),
          attribution_flat(file.get<T>(layer + "attribution_midpoint")),
          layer + "attribution_midpoint"));
      options.rule = RiemannRule::right;
      options.steps = 5;
      note(expect_attribution_close<T>(
          attribution_flat(attention_attribution(vit, images, predicted, l, options).attribution),
          attribution_flat(file.get<T>(layer + "attribution_right")), layer + "attribution_right"));
    }
    note(expect_attribution_close<T>(attribution_head_importance(vit, images, labels),
                                     Matrix<double>(file.get<double>(prefix + "importance.attribution").matrix()),
                                     "attribution importance"));
    note(expect_attribution_close<T>(attention_head_importance(vit, images),
                                     Matrix<double>(file.get<double>(prefix + "importance.attention").matrix()),
                                     "attention importance"));
    note(expect_attribution_close<T>(taylor_head_importance(vit, images, labels),
                                     Matrix<double>(file.get<double>(prefix + "importance.taylor").matrix()),
                                     "Taylor importance"));
  });
  EXPECT_EQ(checked, 2);
  std::cout << "attribution vs torch autograd, largest error / largest entry: " << largest << "\n";
}

TEST(Attribution, MatchesTorchAutogradFloat) { check_attribution_against_pytorch<float>(); }
TEST(Attribution, MatchesTorchAutogradDouble) { check_attribution_against_pytorch<double>(); }

// Integrated gradients' completeness: the Riemann sum's gap to F(A) - F(0) shrinks as m grows,
// as 1/m for the left and right rules and 1/m^2 for the midpoint rule on a smooth (GELU)
// model. Gaps observed on the fixture's attr00 (double, largest over its 3 images and 2 layers):
//   m        5        20       100
//   left     2.0e-3   5.0e-4   1.0e-4
//   midpoint 1.5e-5   9.4e-7   3.8e-8
// the bounds below are about twice these; |F(A) - F(0)| is up to 0.028 there.
TEST(Attribution, CompletenessGapShrinksAsStepsGrow) {
  const io::SafeTensors file = testing::load_typed_fixture<double>("attribution");
  const auto c = testing::fixture_cases(file)[0];
  const std::string prefix = c["name"].get<std::string>() + ".";
  const VisionTransformer<double> vit = testing::fixture_vit<double>(file, c);
  const Tensor<double> images = file.get<double>(prefix + "images");
  const std::vector<Index> targets = predicted_classes(vit, images);
  const std::vector<Index> steps = {5, 20, 100};
  const std::vector<std::pair<RiemannRule, std::vector<double>>> bounds = {
      {RiemannRule::left, {4e-3, 1e-3, 2e-4}},
      {RiemannRule::right, {4e-3, 1e-3, 2e-4}},
      {RiemannRule::midpoint, {3e-5, 2e-6, 8e-8}}};
  std::vector<std::vector<double>> gaps(bounds.size());
  for (std::size_t r = 0; r < bounds.size(); ++r) {
    for (std::size_t s = 0; s < steps.size(); ++s) {
      AttributionOptions options;
      options.rule = bounds[r].first;
      options.steps = steps[s];
      double gap = 0;
      for (Index l = 0; l < vit.options().encoder.num_layers; ++l)
        for (const double g :
             completeness_gaps(attention_attribution(vit, images, targets, l, options)))
          gap = std::max(gap, std::abs(g));
      gaps[r].push_back(gap);
      std::cout << name_of(k_riemann_rule_names, options.rule) << " m = " << steps[s]
                << ": largest |sum Attr - (F(A) - F(0))| = " << gap << "\n";
      EXPECT_LE(gap, bounds[r].second[s]);
      if (s > 0) {
        EXPECT_LT(gap, gaps[r][s - 1]);
      }
    }
  }
  for (std::size_t s = 0; s < steps.size(); ++s) EXPECT_LT(gaps[2][s], gaps[0][s] / 10);
  EXPECT_GT(gaps[2][0] / gaps[2][2], 100.0);  // second order: (100 / 5)^2 = 400
}

TEST(Attribution, RiemannPointsFollowTheRule) {
  AttributionOptions options;
  options.steps = 4;
  EXPECT_EQ(riemann_points(options), (std::vector<double>{0.0, 0.25, 0.5, 0.75}));
  options.rule = RiemannRule::right;
  EXPECT_EQ(riemann_points(options), (std::vector<double>{0.25, 0.5, 0.75, 1.0}));
  options.rule = RiemannRule::midpoint;
  EXPECT_EQ(riemann_points(options), (std::vector<double>{0.125, 0.375, 0.625, 0.875}));
  EXPECT_EQ(AttributionOptions{}.steps, 20);
  EXPECT_EQ(AttributionOptions{}.rule, RiemannRule::left);
}

TEST(Attribution, BadArgumentsAreNamed) {
  Rng rng(3);
  const io::VitModelConfig config = testing::small_vit_config(8, 2);
  const VisionTransformer<double> vit(config.vit, rng);
  const Tensor<double> images = testing::random_tensor<double>({2, 1, 8, 8}, rng);
  const std::vector<Index> targets = {0, 2};
  for (const Index layer : {Index{-1}, Index{2}})
    expect_error_naming<ArgumentError>(
        [&] { attention_attribution(vit, images, targets, layer); },
        detail::concat("layer: expected 0..1 (the model has 2 layers), got ", layer));
  AttributionOptions options;
  options.steps = 0;
  expect_error_naming<ArgumentError>(
      [&] { attention_attribution(vit, images, targets, 0, options); },
      "AttributionOptions::steps: expected >= 1, got 0");
  options.steps = 1000000000000;  // checked before the points are allocated
  expect_error_naming<ArgumentError>(
      [&] { attention_attribution(vit, images, targets, 0, options); },
      "AttributionOptions::steps: expected <= 10000, got 1000000000000");
  options.steps = 20;
  options.rule = static_cast<RiemannRule>(7);
  expect_error_naming<ArgumentError>(
      [&] { attention_attribution(vit, images, targets, 0, options); },
      "AttributionOptions::rule: expected one of \"left\", \"right\", \"midpoint\"; got 7");
  expect_error_naming<ArgumentError>(
      [&] { value_named(k_riemann_rule_names, "trapezoid", "--rule"); },
      "--rule: expected one of \"left\", \"right\", \"midpoint\"; got 'trapezoid'");
  expect_error_naming<ArgumentError>(
      [&] { attention_attribution(vit, images, std::vector<Index>{0, 3}, 0); },
      "targets: expected classes in 0..2, got 3");
  expect_error_naming<ArgumentError>(
      [&] { attention_attribution(vit, images, std::vector<Index>{0}, 0); },
      "targets: expected 2 classes (one per image), got 1");
  io::VitModelConfig features = config;
  features.vit.num_classes = 0;
  expect_error_naming<ArgumentError>(
      [&] {
        attention_attribution(VisionTransformer<double>(features.vit, rng), images, targets, 0);
      },
      "model: expected a classifier");
}

}  // namespace
}  // namespace attnlens
