#include <gtest/gtest.h>

#include <cmath>

#include "attnlens/core/init.hpp"
#include "support/compare.hpp"

namespace attnlens {
namespace {

// U(-b, b) has variance b^2 / 3; 60000 draws pin the bound to well under 2%.
TEST(Init, XavierUniformHasPyTorchsBound) {
  Rng rng(1);
  Matrix<double> w(300, 200);  // fan_out x fan_in
  init::xavier_uniform(w, rng);
  const double bound = std::sqrt(6.0 / 500.0);
  const Matrix<double> zero = Matrix<double>::Zero(300, 200);
  ATTNLENS_EXPECT_CLOSE(w, zero, bound);  // every |w_ij| <= bound
  EXPECT_GT(testing::max_abs_error(w, zero), 0.99 * bound);
  EXPECT_NEAR(w.squaredNorm() / static_cast<double>(w.size()), bound * bound / 3.0,
              0.02 * bound * bound / 3.0);
  EXPECT_NEAR(w.mean(), 0.0, 0.01 * bound);
}

TEST(Init, LinearUniformUsesOneOverSqrtFanIn) {
  Rng rng(2);
  Matrix<float> w(100, 400);
  init::linear_uniform(w, 400, rng);
  const Matrix<float> zero = Matrix<float>::Zero(100, 400);
  ATTNLENS_EXPECT_CLOSE(w, zero, 0.05f);  // every |w_ij| <= 1 / sqrt(400)
  EXPECT_GT(testing::max_abs_error(w, zero), 0.0495f);
}

TEST(Init, SameSeedSameValues) {
  Rng a(42), b(42), c(43);
  Matrix<double> x(4, 4), y(4, 4), z(4, 4);
  init::normal(x, a);
  init::normal(y, b);
  init::normal(z, c);
  EXPECT_EQ(x, y);
  EXPECT_NE(x, z);
}

TEST(Init, NegativeBoundIsRejected) {
  Rng rng(3);
  Matrix<double> w(2, 2);
  EXPECT_THROW(init::uniform(w, -1.0, rng), ArgumentError);
}

}  // namespace
}  // namespace attnlens
