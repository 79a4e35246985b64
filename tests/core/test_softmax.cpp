#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "attnlens/core/softmax.hpp"

namespace attnlens {
namespace {

TEST(Softmax, MatchesTheDefinitionAndIsShiftInvariant) {
  Matrix<double> s(2, 3);
  s << 1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0;  // the second row would overflow exp()
  softmax_rows<double>(s);
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  for (int j = 0; j < 3; ++j) {
    EXPECT_NEAR(s(0, j), std::exp(1.0 + j) / z, 1e-15);
    EXPECT_NEAR(s(1, j), s(0, j), 1e-15);
  }
}

TEST(Softmax, MaskedEntriesGetZeroAndFullyMaskedRowsAreZeroNotNan) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  Matrix<double> s(2, 3);
  s << 0.5, -inf, 0.5, -inf, -inf, -inf;
  softmax_rows<double>(s);
  EXPECT_EQ(s(0, 1), 0.0);
  EXPECT_DOUBLE_EQ(s(0, 0), 0.5);
  EXPECT_EQ(s.row(1).cwiseAbs().sum(), 0.0);
}

}  // namespace
}  // namespace attnlens
