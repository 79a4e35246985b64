// KDE attention's pieces: key normalization and the Huber weights of robust KDE, against
// docs/math.md's formula written with a dense kernel matrix and loops, across block boundaries.
#include <gtest/gtest.h>

#include <cmath>

#include "attnlens/attention/kde.hpp"
#include "attnlens/core/init.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

// docs/math.md: r_j^2 = k(x_j,x_j) - (2/N) sum_l k(x_j,x_l) + (1/N^2) sum_{l,m} k(x_l,x_m),
// w_j = 1 if r_j <= a else a / r_j, normalized to sum 1.
Vector<double> dense_huber_weights(const Matrix<double>& x, double scale, double a) {
  const Index N = x.rows();
  Matrix<double> kappa(N, N);
  for (Index j = 0; j < N; ++j)
    for (Index l = 0; l < N; ++l)
      kappa(j, l) = std::exp(-scale * (x.row(j) - x.row(l)).squaredNorm());
  const double total = kappa.sum() / (double(N) * double(N));
  Vector<double> w(N);
  for (Index j = 0; j < N; ++j) {
    const double r = std::sqrt(std::max(0.0, kappa(j, j) - 2.0 * kappa.row(j).sum() / N + total));
    w[j] = r <= a ? 1.0 : a / r;
  }
  return w / w.sum();
}

TEST(Kde, HuberWeightsMatchTheDenseFormulaAcrossBlocks) {
  Rng rng(1);
  for (const Index N : {1, 5, 127, 128, 300}) {
    SCOPED_TRACE(N);
    Matrix<double> x(N, 4);
    init::normal(x, rng);
    // A few outliers far from the rest get small weights.
    if (N > 5) x.topRows(3).array() += 4.0;
    for (const double a : {0.05, 0.2, 2.0}) {
      Vector<double> w;
      huber_kde_weights<double>(x, 0.5, a, w);
      const Vector<double> expected = dense_huber_weights(x, 0.5, a);
      ATTNLENS_EXPECT_CLOSE(w, expected, 1e-14);
      EXPECT_NEAR(w.sum(), 1.0, 1e-14);
    }
    if (N > 5) {
      Vector<double> w;
      huber_kde_weights<double>(x, 0.5, 0.2, w);
      EXPECT_LT(w.head(3).maxCoeff(), w.tail(N - 3).minCoeff());  // outliers weigh less
    }
  }
}

TEST(Kde, RobustWeightsUseKeysAloneAndKeysWithValues) {
  Rng rng(2);
  Matrix<double> k(9, 3), v(9, 2);
  init::normal(k, rng);
  init::normal(v, rng);
  Vector<double> wk, wkv;
  robust_kde_key_weights<double>(k, v, 0.6, 0.2, wk, wkv);
  Matrix<double> joint(9, 5);
  joint << k, v;
  ATTNLENS_EXPECT_CLOSE(wk, dense_huber_weights(k, 0.6, 0.2), 1e-15);
  ATTNLENS_EXPECT_CLOSE(wkv, dense_huber_weights(joint, 0.6, 0.2), 1e-15);
  testing::expect_error_naming<ShapeError>(
      [&] { robust_kde_key_weights<double>(k, v.topRows(4), 0.6, 0.2, wk, wkv); }, "values");
  testing::expect_error_naming<ArgumentError>([&] { huber_kde_weights<double>(k, 0.6, 0.0, wk); },
                                              "a");
}

TEST(Kde, KeyNormalizationMakesUnitKeysAndLeavesQueries) {
  Rng rng(3);
  Matrix<float> q(4, 3), k(5, 3);
  init::normal(q, rng);
  init::normal(k, rng);
  k.row(2).setZero();
  const Matrix<float> q0 = q, k0 = k;
  const KeyNormalization<float> normalize;
  normalize.transform_queries({}, q);
  normalize.transform_keys({}, k);
  EXPECT_EQ(q, q0);
  for (Index j = 0; j < 5; ++j) {
    if (j == 2) {
      EXPECT_EQ(k.row(j).norm(), 0.0f);  // a zero key stays zero, no NaN
      continue;
    }
    EXPECT_NEAR(k.row(j).norm(), 1.0f, 1e-6f);
    ATTNLENS_EXPECT_CLOSE(k.row(j) * k0.row(j).norm(), k0.row(j), 1e-5f);
  }
}

}  // namespace
}  // namespace attnlens
