// Elliptical attention's metric against its definition written with loops: per sequence and
// head, the mean over tokens of |V^l - V^{l-1}| / delta, scaled by its maximum.
#include <gtest/gtest.h>

#include <cmath>

#include "attnlens/attention/elliptical.hpp"
#include "attnlens/core/init.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

TEST(Elliptical, MetricIsTheMaxScaledMeanMoveOfEachHead) {
  const Index B = 2, S = 5, H = 3, d = 4;
  Rng rng(1);
  Matrix<double> v(B * S, H * d), prev(B * S, H * d);
  init::normal(v, rng);
  init::normal(prev, rng);
  const Matrix<double> m = elliptical_metric<double>(v, prev, B, H, 5.0);
  ASSERT_EQ(m.rows(), B * H);
  ASSERT_EQ(m.cols(), d);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      double expected[4] = {0, 0, 0, 0}, largest = 0;
      for (Index c = 0; c < d; ++c) {
        for (Index n = 0; n < S; ++n)
          expected[c] += std::abs(v(b * S + n, h * d + c) - prev(b * S + n, h * d + c));
        expected[c] /= S * 5.0;
        largest = std::max(largest, expected[c]);
      }
      for (Index c = 0; c < d; ++c)
        EXPECT_NEAR(m(b * H + h, c), expected[c] / largest, 1e-15) << b << " " << h << " " << c;
    }
}

TEST(Elliptical, PaddedTokensTakeNoPartInTheMean) {
  Rng rng(2);
  Matrix<double> v(6, 4), prev(6, 4);  // B = 2, S = 3, H = 2, d = 2
  init::normal(v, rng);
  init::normal(prev, rng);
  const auto real = [](Index b, Index n) { return b == 0 || n < 2; };
  const Matrix<double> m = elliptical_metric<double>(v, prev, 2, 2, 5.0, real);
  Matrix<double> poisoned = v;
  poisoned.row(5).setConstant(NAN);  // token 2 of sequence 1 is padding
  EXPECT_EQ(elliptical_metric<double>(poisoned, prev, 2, 2, 5.0, real), m);
  const Matrix<double> alone =
      elliptical_metric<double>(v.middleRows(3, 2), prev.middleRows(3, 2), 1, 2, 5.0);
  ATTNLENS_EXPECT_CLOSE(m.bottomRows(2), alone, 1e-15);
}

TEST(Elliptical, UnmovedHeadGetsTheIdentityMetric) {
  Matrix<float> v = Matrix<float>::Ones(3, 4);
  Matrix<float> prev = v;
  prev(1, 3) = 3.0f;  // only head 1 (columns 2, 3) moved
  const Matrix<float> m = elliptical_metric<float>(v, prev, 1, 2, 5.0f);
  EXPECT_EQ(m.row(0), (RowVector<float>(2) << 1.0f, 1.0f).finished());
  EXPECT_EQ(m.row(1), (RowVector<float>(2) << 0.0f, 1.0f).finished());
}

TEST(Elliptical, QueryMetricScalesTheQueriesOfItsSequenceAndHead) {
  Matrix<double> metric(4, 2);  // B = 2, H = 2, d = 2
  metric << 1, 2, 3, 4, 5, 6, 7, 8;
  const QueryMetric<double> transform(metric, 2);
  transform.check({2, 2, 3, 3, 2});
  Matrix<double> q = Matrix<double>::Ones(3, 2), k = Matrix<double>::Ones(3, 2);
  transform.transform_queries({1, 0, 0}, q);
  transform.transform_keys({1, 0, 0}, k);
  EXPECT_EQ(q.row(2), (RowVector<double>(2) << 5, 6).finished());
  EXPECT_EQ(k, Matrix<double>::Ones(3, 2));
  testing::expect_error_naming<ShapeError>(
      [&] {
        transform.check({3, 2, 3, 3, 2});
      },
      "QueryMetric");
}

TEST(Elliptical, BadArgumentsNameTheArgument) {
  const Matrix<double> v = Matrix<double>::Ones(4, 6);
  testing::expect_error_naming<ShapeError>(
      [&] { (void)elliptical_metric<double>(v, v.leftCols(3), 1, 2, 5.0); }, "previous");
  testing::expect_error_naming<ArgumentError>(
      [&] { (void)elliptical_metric<double>(v, v, 1, 2, 0.0); }, "delta");
  testing::expect_error_naming<ArgumentError>(
      [&] { (void)elliptical_metric<double>(v, v, 3, 2, 5.0); }, "batch x heads");
}

}  // namespace
}  // namespace attnlens
