// The suite's comparison (support/compare.hpp) can fail: a NaN first, in the middle or last, on
// either side, in a Tensor or an Eigen expression, in float or double; an error just over the
// tolerance; a shape mismatch; an infinity against a finite number. And it passes what it
// should: equal arrays, errors at the tolerance, equal infinities.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace attnlens {
namespace {

// The positions a NaN is put at in an array of n entries: first, middle, last.
std::vector<Index> nan_positions(Index n) { return {0, n / 2, n - 1}; }

template <class T>
class CompareTest : public ::testing::Test {};
using CompareScalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CompareTest, CompareScalars);

TYPED_TEST(CompareTest, FailsOnANanAtAnyPositionOfEitherSide) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  Matrix<T> base(3, 5);
  for (Index n = 0; n < base.size(); ++n) base.data()[n] = T(0.25) * T(n) - T(1);
  for (const Index n : nan_positions(base.size()))
    for (const bool in_actual : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "NaN at " << n << (in_actual ? " in actual" : " in expected"));
      Matrix<T> with_nan = base;
      with_nan.data()[n] = nan;
      const Matrix<T>& actual = in_actual ? with_nan : base;
      const Matrix<T>& expected = in_actual ? base : with_nan;
      // The predicate, on matrices, on Tensors, on an expression (a difference against zero).
      EXPECT_FALSE(testing::expect_close_format("a", "e", "tol", actual, expected, 1e30));
      EXPECT_FALSE(testing::expect_close_format("a", "e", "tol", Tensor<T>::from_matrix(actual),
                                                Tensor<T>::from_matrix(expected), 1e30));
      EXPECT_FALSE(testing::expect_close_format("a", "e", "tol", actual - expected,
                                                Matrix<T>::Zero(3, 5), 1e30));
      // The macro the tests use, and the error the "differs" checks use.
      EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_CLOSE(actual, expected, 1e30), "NaN");
      EXPECT_TRUE(std::isnan(testing::max_abs_error(actual, expected)));
      // NaN on both sides at the same entry is no agreement either.
      EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_CLOSE(with_nan, with_nan, 1e30), "NaN");
    }
}

TYPED_TEST(CompareTest, FailsOnANanInEveryEntryAndInOneOfManyEntries) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  EXPECT_NONFATAL_FAILURE(
      ATTNLENS_EXPECT_CLOSE(Matrix<T>::Constant(4, 4, nan), Matrix<T>::Zero(4, 4), 1e30),
      "16 of 16 entries are NaN");
  // A NaN after a larger error: the error does not hide it.
  Vector<T> actual = Vector<T>::Zero(1000), expected = Vector<T>::Zero(1000);
  actual[3] = T(5);
  actual[998] = nan;
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_CLOSE(actual, expected, 10), "first at (998, 0)");
  EXPECT_TRUE(std::isnan(testing::max_abs_error(actual, expected)));
  // Eigen's own reduction, for the record, does not see it (the reason for this helper).
  EXPECT_EQ((actual - expected).cwiseAbs().maxCoeff(), T(5));
}

TYPED_TEST(CompareTest, FailsOverTheToleranceAndPassesAtIt) {
  using T = TypeParam;
  Tensor<T> expected({2, 3, 4}), actual({2, 3, 4});
  for (Index n = 0; n < expected.size(); ++n) expected.data()[n] = actual.data()[n] = T(n) / T(8);
  actual.data()[17] += T(0.5);  // exact in binary: error 0.5 at (1, 1, 1)
  EXPECT_TRUE(testing::expect_close_format("a", "e", "tol", actual, expected, 0.5));
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_CLOSE(actual, expected, 0.4),
                          "max error 0.5 at (1, 1, 1)");
  EXPECT_EQ(testing::max_abs_error(actual, expected), 0.5);
  ATTNLENS_EXPECT_CLOSE(expected, expected, 0.0);
  EXPECT_EQ(testing::max_abs_error(expected, expected), 0.0);
}

TYPED_TEST(CompareTest, InfinitiesAreEqualOnlyToThemselves) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  Vector<T> a = Vector<T>::Ones(3), b = Vector<T>::Ones(3);
  a[1] = b[1] = inf;
  a[2] = b[2] = -inf;
  ATTNLENS_EXPECT_CLOSE(a, b, 0.0);
  b[1] = T(1);
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_CLOSE(a, b, 1e30), "max error inf");
  EXPECT_EQ(testing::max_abs_error(a, b), std::numeric_limits<double>::infinity());
  b[1] = -inf;
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_CLOSE(a, b, 1e30), "max error inf");
}

TYPED_TEST(CompareTest, RelativeToleranceAboveTheFloorAbsoluteBelowIt) {
  using T = TypeParam;
  // Tolerance max(0.25, 0.5 |e|): 0.25 up to |e| = 0.5, then relative. Errors are exact in binary.
  Vector<T> expected(3), actual(3);
  expected << T(0.125), T(-4), T(64);
  actual << T(0.375), T(-6), T(32);  // errors 0.25, 2 and 32: each at its bound
  EXPECT_TRUE(
      testing::expect_relative_close_format("a", "e", "r", "f", actual, expected, 0.5, 0.25));
  actual[1] = T(-2.5);  // 1.5, under its bound 2
  EXPECT_TRUE(
      testing::expect_relative_close_format("a", "e", "r", "f", actual, expected, 0.5, 0.25));
  actual[0] = T(0.5);  // 0.375 over the floor 0.25
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_RELATIVE_CLOSE(actual, expected, 0.5, 0.25),
                          "max error / tolerance 1.5 at (0, 0)");
  actual[0] = T(0.125);
  actual[2] = T(16);  // 48 over 0.5 * 64
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_RELATIVE_CLOSE(actual, expected, 0.5, 0.25),
                          "max error / tolerance 1.5 at (2, 0)");
  actual[2] = std::numeric_limits<T>::quiet_NaN();
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_RELATIVE_CLOSE(actual, expected, 1e30, 1e30), "NaN");
  EXPECT_NONFATAL_FAILURE(ATTNLENS_EXPECT_RELATIVE_CLOSE(actual, Vector<T>::Zero(2), 1.0, 1.0),
                          "shapes differ");
}

TEST(Compare, FailsOnDifferentShapes) {
  EXPECT_NONFATAL_FAILURE(
      ATTNLENS_EXPECT_CLOSE(Matrix<double>::Zero(2, 3), Matrix<double>::Zero(3, 2), 1.0),
      "shapes differ, [2, 3] vs [3, 2]");
  EXPECT_NONFATAL_FAILURE(
      ATTNLENS_EXPECT_CLOSE(Tensor<float>({2, 3, 1}), Tensor<float>({2, 3}), 1.0), "shapes differ");
  // max_abs_error reports the mismatch and returns NaN, so no check on it can pass.
  double error = 0;
  EXPECT_NONFATAL_FAILURE(
      error = testing::max_abs_error(Matrix<double>::Zero(2, 3), Matrix<double>::Zero(2, 2)),
      "shapes differ");
  EXPECT_TRUE(std::isnan(error));
}

TEST(Compare, ANanToleranceFails) {
  EXPECT_FALSE(testing::expect_close_format("a", "e", "tol", Matrix<double>::Zero(2, 2),
                                            Matrix<double>::Zero(2, 2), NAN));
}

TEST(Compare, LongDoubleExpectationsAreNotRoundedToDouble) {
  // 1 + 2^-60 is 1 in double; compared in long double the difference shows where long double
  // has the bits (x86), and is 0 where long double is double.
  Eigen::Matrix<long double, 1, 1> exact;
  exact(0, 0) = 1.0L + std::ldexp(1.0L, -60);
  const Eigen::Matrix<double, 1, 1> one = Eigen::Matrix<double, 1, 1>::Ones();
  const long double expected_error = exact(0, 0) - 1.0L;
  EXPECT_EQ(testing::compare(one, exact).max_error, expected_error);
}

}  // namespace
}  // namespace attnlens
