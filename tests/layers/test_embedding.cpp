// Embedding (nn.Embedding): the lookup on a small exact case, its initialisation with
// padding_idx, the backward pass (scatter-add, repeated ids, no gradient to the padding row)
// against central differences, and bad input. Against PyTorch autograd inside the whole
// sequence classifier: tests/blocks/test_sequence_classifier.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "attnlens/layers/embedding.hpp"
#include "support/expect_error.hpp"
#include "support/gradient_check.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(Embedding, LooksUpTheRowsTheIdsName) {
  Embedding<double> embedding(EmbeddingOptions{4, 3});
  embedding.weight << 0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32;
  Tensor<Index> ids({2, 3});
  ids.storage() = {3, 0, 3, 1, 2, 0};
  const Tensor<double> out = embedding.forward(ids);
  ASSERT_EQ(out.shape(), (Shape{2, 3, 3}));
  for (Index n = 0; n < ids.size(); ++n)
    for (Index c = 0; c < 3; ++c)
      EXPECT_EQ(out.data()[n * 3 + c], 10.0 * static_cast<double>(ids.data()[n]) + c);
  // Any shape of ids: one id gives one row.
  Tensor<Index> one({1});
  one.storage() = {2};
  EXPECT_EQ(embedding.forward(one).shape(), (Shape{1, 3}));
  EXPECT_EQ(embedding.forward(one).data()[1], 21.0);
}

TEST(Embedding, InitialisesNormalRowsAndAZeroPaddingRow) {
  Rng rng(1);
  const Embedding<double> embedding(EmbeddingOptions{50, 40, 7}, rng);
  EXPECT_TRUE(embedding.weight.row(7).isZero(0));
  // The other 49 x 40 entries are N(0, 1): mean and variance within 5 standard errors.
  double sum = 0, squares = 0;
  for (Index r = 0; r < 50; ++r)
    if (r != 7) {
      sum += embedding.weight.row(r).sum();
      squares += embedding.weight.row(r).squaredNorm();
    }
  const double count = 49 * 40, mean = sum / count;
  EXPECT_LT(std::abs(mean), 5 / std::sqrt(count));
  EXPECT_LT(std::abs(squares / count - mean * mean - 1), 5 * std::sqrt(2 / count));
}

// loss = sum(probe (*) forward(ids)): its gradient is the scatter-add of the probe.
TEST(EmbeddingBackward, ScatterAddsEqualCentralDifferencesAndSkipThePaddingRow) {
  Embedding<double> embedding(EmbeddingOptions{6, 4, 2});
  testing::perturb_parameters(embedding, 3);
  Tensor<Index> ids({3, 5});
  ids.storage() = {1, 4, 4, 2, 0, 5, 1, 2, 2, 4, 0, 0, 3, 1, 2};  // 2 (padding) is used, 4 repeats
  const Tensor<double> probe = testing::random_normal_tensor({3, 5, 4}, 4);
  const auto loss = [&] {
    const Tensor<double> out = embedding.forward(ids);
    double sum = 0;
    for (Index e = 0; e < out.size(); ++e) sum += out.data()[e] * probe.data()[e];
    return sum;
  };
  Embedding<double> gradient = zeros_like(embedding);
  embedding.backward(ids, probe, gradient);
  embedding.backward(ids, probe, gradient);  // accumulates
  gradient.weight /= 2;
  // The padding row is looked up (central differences see it) but gets no gradient, as in
  // PyTorch; every other row is checked, rows 0-1 and 3-5 (row-major storage).
  EXPECT_TRUE(gradient.weight.row(2).isZero(0));
  double* w = embedding.weight.data();
  const double* g = gradient.weight.data();
  ATTNLENS_EXPECT_GRADIENT(loss, w, 8, g, 1e-6);
  ATTNLENS_EXPECT_GRADIENT(loss, w + 12, 12, g + 12, 1e-6);
  // Row 4 is the sum of the probe's rows at the three places id 4 occurs.
  const Vector<double> expected = (ConstMatrixMap<double>(probe.data(), 15, 4).row(1) +
                                   ConstMatrixMap<double>(probe.data(), 15, 4).row(2) +
                                   ConstMatrixMap<double>(probe.data(), 15, 4).row(9))
                                      .transpose();
  EXPECT_TRUE(gradient.weight.row(4).transpose().isApprox(expected, 1e-14));

  // Without padding_idx every row used gets its gradient.
  Embedding<double> plain(EmbeddingOptions{6, 4});
  plain.weight = embedding.weight;
  Embedding<double> plain_gradient = zeros_like(plain);
  plain.backward(ids, probe, plain_gradient);
  EXPECT_FALSE(plain_gradient.weight.row(2).isZero(0));
}

TEST(Embedding, BadInputIsNamed) {
  expect_error_naming<ArgumentError>(
      [] {
        (void)Embedding<float>(EmbeddingOptions{0, 4});
      },
      "EmbeddingOptions::num_embeddings: expected > 0, got 0");
  expect_error_naming<ArgumentError>(
      [] {
        (void)Embedding<float>(EmbeddingOptions{5, 0});
      },
      "EmbeddingOptions::embedding_dim");
  expect_error_naming<ArgumentError>(
      [] {
        (void)Embedding<float>(EmbeddingOptions{5, 4, 5});
      },
      "EmbeddingOptions::padding_idx: expected an id in [0, 5) or none, got 5");
  const Embedding<float> embedding(EmbeddingOptions{5, 4});
  Tensor<Index> ids({2, 3});
  ids.storage() = {0, 1, 2, 3, 7, 4};
  expect_error_naming<ArgumentError>([&] { embedding.forward(ids); },
                                     "Embedding ids[1, 1]: expected an id in [0, 5), got 7");
  ids.storage()[4] = -1;
  expect_error_naming<ArgumentError>([&] { embedding.forward(ids); }, "got -1");
  ids.storage()[4] = 1;
  Embedding<float> gradient = zeros_like(embedding);
  expect_error_naming<ShapeError>(
      [&] {
        embedding.backward(ids, Tensor<float>({2, 3, 5}), gradient);
      },
      "Embedding backward doutput: expected [2, 3, 4], got [2, 3, 5]");
  Embedding<float> wrong(EmbeddingOptions{6, 4});
  expect_error_naming<ShapeError>(
      [&] {
        embedding.backward(ids, Tensor<float>({2, 3, 4}), wrong);
      },
      "Embedding backward gradient.weight");
}

}  // namespace
}  // namespace attnlens
