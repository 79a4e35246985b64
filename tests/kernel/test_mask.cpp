#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "attnlens/kernel/mask.hpp"

namespace attnlens {
namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

// The masked pattern of a full B x H x L x S problem, tile (b, h) at the given offsets.
Matrix<double> applied(const AttentionMask<double>& mask, const ScoreShape& shape, Index b, Index h,
                       Index rows, Index cols, Index q0 = 0, Index k0 = 0) {
  const BoundMask<double> bound(mask, shape);
  Matrix<double> scores = Matrix<double>::Zero(rows, cols);
  bound.apply({b, h, q0, k0}, scores);
  return scores;
}

TEST(Mask, CausalIsTopLeftAlignedAndTiles) {
  AttentionMask<double> mask;
  mask.causal = true;
  const ScoreShape shape{1, 1, 4, 6};
  const auto full = applied(mask, shape, 0, 0, 4, 6);
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 6; ++j) EXPECT_EQ(full(i, j), j <= i ? 0.0 : -inf) << i << "," << j;
  // A tile at (2, 1) sees the same entries.
  const auto tile = applied(mask, shape, 0, 0, 2, 3, 2, 1);
  EXPECT_EQ(tile, full.block(2, 1, 2, 3));
  EXPECT_EQ(BoundMask<double>(mask, shape).key_end(0, 3), 3);
}

TEST(Mask, KeyPaddingAsKeepVectorOrLengths) {
  const ScoreShape shape{2, 1, 2, 3};
  AttentionMask<double> keep;
  keep.key_keep = Tensor<std::uint8_t>({2, 3}, {1, 1, 1, 1, 0, 1});
  AttentionMask<double> lengths;
  lengths.key_lengths = std::vector<Index>{3, 1};
  EXPECT_EQ(applied(keep, shape, 0, 0, 2, 3).cwiseAbs().sum(), 0.0);
  const auto b1 = applied(keep, shape, 1, 0, 2, 3);
  EXPECT_EQ(b1(1, 1), -inf);
  EXPECT_EQ(b1(1, 2), 0.0);
  const auto l1 = applied(lengths, shape, 1, 0, 2, 3);
  EXPECT_EQ(l1(0, 0), 0.0);
  EXPECT_EQ(l1(0, 1), -inf);
  EXPECT_EQ(l1(1, 2), -inf);
  EXPECT_EQ(BoundMask<double>(lengths, shape).key_end(1, 2), 1);
  // A keep vector of shape [S] applies to every sequence.
  AttentionMask<double> shared;
  shared.key_keep = Tensor<std::uint8_t>({3}, {0, 1, 1});
  EXPECT_EQ(applied(shared, shape, 1, 0, 2, 3)(1, 0), -inf);
}

TEST(Mask, KeepAndBiasBroadcastOverBatchAndHeads) {
  const ScoreShape shape{2, 3, 2, 2};
  AttentionMask<double> mask;
  mask.keep = Tensor<std::uint8_t>({3, 1, 2}, {1, 1, 1, 0, 0, 1});        // per head, every query
  mask.bias = Tensor<double>({2, 1, 2, 2}, {1, 2, 3, 4, 5, 6, 7, -inf});  // per sequence
  const auto t = applied(mask, shape, 1, 1, 2, 2);
  EXPECT_EQ(t(0, 0), 5.0);
  EXPECT_EQ(t(0, 1), -inf);  // head 1 drops key 1
  EXPECT_EQ(t(1, 0), 7.0);
  const auto u = applied(mask, shape, 1, 0, 2, 2);
  EXPECT_EQ(u(1, 1), -inf);  // bias -inf
  EXPECT_EQ(u(0, 1), 6.0);
}

TEST(Mask, MinusInfinityBiasSelectsEvenOverNan) {
  AttentionMask<double> mask;
  mask.bias = Tensor<double>({1, 2}, {-inf, 0.0});
  const BoundMask<double> bound(mask, {1, 1, 1, 2});
  Matrix<double> scores(1, 2);
  scores << std::numeric_limits<double>::quiet_NaN(), 1.0;
  bound.apply({0, 0, 0, 0}, scores);
  EXPECT_EQ(scores(0, 0), -inf);
  EXPECT_EQ(scores(0, 1), 1.0);
}

TEST(Mask, TorchPolarityIsInverted) {
  const auto keep = keep_from_torch_mask(Tensor<std::uint8_t>({3}, {1, 0, 1}));
  EXPECT_EQ(keep.storage(), (Tensor<std::uint8_t>::Storage{0, 1, 0}));
}

void expect_shape_error(const AttentionMask<double>& mask, const ScoreShape& shape,
                        const std::string& word) {
  try {
    BoundMask<double> bound(mask, shape);
    ADD_FAILURE() << "no exception for " << word;
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
  }
}

TEST(Mask, BadShapesNameTheMask) {
  const ScoreShape shape{2, 3, 4, 5};
  AttentionMask<double> m;
  m.keep = Tensor<std::uint8_t>({5});
  expect_shape_error(m, shape, "mask.keep");
  m.keep = Tensor<std::uint8_t>({2, 2, 4, 5});
  expect_shape_error(m, shape, "mask.keep");
  m.keep.reset();
  m.bias = Tensor<double>({1, 2, 3, 4, 5});
  expect_shape_error(m, shape, "mask.bias");
  m.bias = Tensor<double>({4, 4});
  expect_shape_error(m, shape, "mask.bias");
  m.bias.reset();
  m.key_keep = Tensor<std::uint8_t>({3, 5});
  expect_shape_error(m, shape, "mask.key_keep");
  m.key_keep.reset();
  m.key_lengths = std::vector<Index>{1, 2, 3};
  expect_shape_error(m, shape, "mask.key_lengths");
  m.key_lengths = std::vector<Index>{1, -1};
  EXPECT_THROW(BoundMask<double>(m, shape), ArgumentError);
}

}  // namespace
}  // namespace attnlens
