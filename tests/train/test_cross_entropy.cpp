// Softmax cross-entropy against exact small cases, central differences and PyTorch's
// F.cross_entropy with autograd (tests/reference/oracles/layers.py), and bad labels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attnlens/train/cross_entropy.hpp"
#include "support/blocks.hpp"
#include "support/gradient_check.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(CrossEntropy, ExactSmallCase) {
  // Row 0: two equal logits, loss log 2; row 1: its label has the larger logit, by 2, so its
  // loss is log(1 + e^-2).
  Matrix<double> logits(2, 2);
  logits << 0, 0, 1, 3;
  const CrossEntropy<double> ce = softmax_cross_entropy<double>(logits, {0, 1});
  EXPECT_NEAR(ce.loss, (std::log(2.0) + std::log1p(std::exp(-2.0))) / 2, 1e-15);
  const double p = 1 / (1 + std::exp(-2.0));  // softmax of row 1 at class 1
  Matrix<double> expected(2, 2);
  expected << -0.25, 0.25, (1 - p) / 2, (p - 1) / 2;
  ATTNLENS_EXPECT_CLOSE(ce.grad_logits, expected, 1e-15);
  EXPECT_EQ(ce.predictions, (std::vector<Index>{0, 1}));  // equal maxima: the first
}

TEST(CrossEntropy, GradientEqualsCentralDifferences) {
  Matrix<double> logits = 2 * testing::random_probe(5, 4, 71);
  const std::vector<Index> labels{3, 0, 1, 3, 2};
  const CrossEntropy<double> ce = softmax_cross_entropy<double>(logits, labels);
  const auto loss = [&] { return softmax_cross_entropy<double>(logits, labels).loss; };
  ATTNLENS_EXPECT_GRADIENT(loss, logits.data(), logits.size(), ce.grad_logits.data(), 1e-6);
}

TEST(CrossEntropy, ShiftInvariantAndFiniteForLargeLogits) {
  // softmax(x + c) = softmax(x): logits of 1e4 would overflow exp in float without the row max.
  const Matrix<float> logits = 3 * testing::random_probe(4, 6, 72).cast<float>();
  const std::vector<Index> labels{5, 0, 2, 2};
  const CrossEntropy<float> base = softmax_cross_entropy<float>(logits, labels);
  const CrossEntropy<float> shifted =
      softmax_cross_entropy<float>((logits.array() + 1e4f).matrix(), labels);
  // 1e4 + x in float keeps x to ulp(1e4) = 1e-3: the loss moves by about that much.
  EXPECT_NEAR(shifted.loss, base.loss, 2e-3);
  ATTNLENS_EXPECT_CLOSE(shifted.grad_logits, base.grad_logits, 2e-3);
  EXPECT_EQ(shifted.predictions, base.predictions);
}

template <class T>
void check_cross_entropy_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("layers_grad");
  const int checked =
      testing::for_each_case(file, "cross_entropy", [&](const auto&, const auto& prefix) {
        const Tensor<T> logits = file.get<T>(prefix + "logits");
        const Tensor<std::int64_t> labels = file.get<std::int64_t>(prefix + "labels");
        const CrossEntropy<T> ce = softmax_cross_entropy<T>(
            logits.matrix(), std::vector<Index>(labels.storage().begin(), labels.storage().end()));
        const Tensor<T> loss = file.get<T>(prefix + "loss");
        ATTNLENS_EXPECT_GRADIENT_MATCHES(T, (Vector<T>::Constant(1, static_cast<T>(ce.loss))),
                                         loss.matrix());
        ATTNLENS_EXPECT_GRADIENT_MATCHES(T, ce.grad_logits,
                                         file.get<T>(prefix + "grad_logits").matrix());
      });
  EXPECT_EQ(checked, 2);
}

TEST(CrossEntropy, MatchesPyTorchFloat) { check_cross_entropy_against_pytorch<float>(); }
TEST(CrossEntropy, MatchesPyTorchDouble) { check_cross_entropy_against_pytorch<double>(); }

TEST(CrossEntropy, BadLabelsAndShapesNameTheArgument) {
  const Matrix<float> logits = Matrix<float>::Zero(3, 5);
  expect_error_naming<ArgumentError>(
      [&] {
        softmax_cross_entropy<float>(logits, {0, 4, 5});
      },
      "labels[2]: expected a class in [0, 5), got 5");
  expect_error_naming<ArgumentError>(
      [&] {
        softmax_cross_entropy<float>(logits, {-1, 0, 0});
      },
      "labels[0]: expected a class in [0, 5), got -1");
  expect_error_naming<ShapeError>(
      [&] {
        softmax_cross_entropy<float>(logits, {0, 1});
      },
      "labels: expected 3 entries, one per row of logits, got 2 entries");
  expect_error_naming<ShapeError>([&] { softmax_cross_entropy<float>(Matrix<float>(0, 5), {}); },
                                  "logits: expected N x classes with N, classes >= 1, got 0 x 5");
}

}  // namespace
}  // namespace attnlens
