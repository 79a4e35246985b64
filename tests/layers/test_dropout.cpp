// Dropout (layers/dropout.hpp): the kept fraction is 1 - p, kept elements are scaled by exactly
// 1 / (1 - p), the mask is a function of the key and the element's position only, parts of a
// key draw unrelated masks, and the rates are checked. The layers' use of it (the backward
// drops what the forward dropped) is tested in tests/blocks/test_blocks_backward.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/layers/dropout.hpp"

namespace attnlens {
namespace {

TEST(Dropout, KeepsOneMinusPOfTheElements) {
  constexpr std::uint64_t n = 1000000;
  for (double p : {0.1, 0.3, 0.5, 0.9}) {
    const Dropout dropout(p, 12345);
    std::uint64_t kept = 0;
    for (std::uint64_t i = 0; i < n; ++i) kept += dropout.keeps(i);
    // Binomial(n, 1 - p): 5 standard deviations.
    const double sd = std::sqrt(static_cast<double>(n) * p * (1 - p));
    EXPECT_NEAR(static_cast<double>(kept), static_cast<double>(n) * (1 - p), 5 * sd) << p;
  }
}

TEST(Dropout, ScalesKeptElementsAndZeroesTheOthers) {
  const Dropout dropout(0.25, 99);
  Matrix<float> x = Matrix<float>::Constant(40, 30, 3.0f);
  x(0, 0) = std::numeric_limits<float>::quiet_NaN();  // a dropped NaN is 0, a kept one NaN
  dropout.apply<float>(x);
  Index zeros = 0;
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c) {
      const bool kept = dropout.keeps(static_cast<std::uint64_t>(r * x.cols() + c));
      if (r == 0 && c == 0) {
        EXPECT_EQ(std::isnan(x(r, c)), kept);
        continue;
      }
      EXPECT_EQ(x(r, c), kept ? 3.0f * static_cast<float>(1 / 0.75) : 0.0f) << r << ", " << c;
      zeros += !kept;
    }
  EXPECT_GT(zeros, 0);
}

TEST(Dropout, TheMaskIsAFunctionOfTheKeyAndThePosition) {
  const Dropout a(0.5, 7), same(0.5, 7), other(0.5, 8);
  Index differ = 0;
  for (std::uint64_t i = 0; i < 10000; ++i) {
    EXPECT_EQ(a.keeps(i), same.keeps(i));
    differ += a.keeps(i) != other.keeps(i);
  }
  // Unrelated masks of p = 0.5 differ at half the positions.
  EXPECT_NEAR(static_cast<double>(differ), 5000.0, 5 * 50.0);
  // Applying it to a block of rows numbers the block's own elements: the same mask whatever
  // the matrix's stride.
  Matrix<double> wide = Matrix<double>::Ones(4, 10);
  Matrix<double> block = Matrix<double>::Ones(4, 6);
  a.apply<double>(wide.leftCols(6));
  a.apply<double>(block);
  EXPECT_EQ(wide.leftCols(6), block);
}

TEST(Dropout, PartsDrawUnrelatedMasks) {
  const Dropout whole(0.5, 31);
  const Dropout first = whole.part(0), second = whole.part(1);
  EXPECT_EQ(first.p(), 0.5);
  EXPECT_NE(first.key(), second.key());
  EXPECT_NE(first.key(), whole.key());
  EXPECT_EQ(first.key(), Dropout(0.5, 31).part(0).key());
  Index differ = 0;
  for (std::uint64_t i = 0; i < 10000; ++i) differ += first.keeps(i) != second.keeps(i);
  EXPECT_NEAR(static_cast<double>(differ), 5000.0, 5 * 50.0);
}

TEST(Dropout, OffIsTheIdentityAndBadRatesAreRefused) {
  Matrix<float> x = Matrix<float>::Random(5, 7);
  const Matrix<float> before = x;
  Dropout().apply<float>(x);
  Dropout(0.0, 5).apply<float>(x);
  EXPECT_EQ(x, before);
  for (double p : {-0.1, 1.0, 1.5, std::nan("")}) EXPECT_THROW(Dropout(p, 1), ArgumentError) << p;
}

}  // namespace
}  // namespace attnlens
