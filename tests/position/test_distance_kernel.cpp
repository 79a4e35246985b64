// The distance kernels of bilateral attention against the formula written with loops, on 1-D
// positions and on a grid with a CLS token, plus softplus and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "attnlens/position/distance_kernel.hpp"
#include "support/blocks.hpp"
#include "support/compare.hpp"

namespace attnlens {
namespace {

// The H x L x S bias of a term, filled through tiles of 3 x 2 (so tile offsets matter).
Tensor<double> bias_of(const DistanceKernel<double>& term, Index H, Index L, Index S) {
  term.check({1, H, L, S, 0});
  Tensor<double> bias({H, L, S});
  const Matrix<double> none(0, 0);
  for (Index h = 0; h < H; ++h)
    for (Index i0 = 0; i0 < L; i0 += 3)
      for (Index j0 = 0; j0 < S; j0 += 2) {
        const Index rows = std::min<Index>(3, L - i0), cols = std::min<Index>(2, S - j0);
        Matrix<double> tile = Matrix<double>::Zero(rows, cols);
        term.add({{0, h, i0, j0}, none, none}, tile);
        bias.matrix({h}).block(i0, j0, rows, cols) = tile;
      }
  return bias;
}

TEST(DistanceKernel, GaussianAndLaplacianOnOneDimensionalPositions) {
  Vector<double> sigma(2);
  sigma << 0.7, 3.0;
  for (const auto type : {DistanceKernelType::gaussian, DistanceKernelType::laplacian}) {
    const DistanceKernel<double> term({type, std::nullopt, 1}, sigma);
    const Tensor<double> bias = bias_of(term, 2, 6, 8);  // cross-attention: 6 queries, 8 keys
    for (Index h = 0; h < 2; ++h)
      for (Index i = 0; i < 6; ++i)
        for (Index j = 0; j < 8; ++j) {
          const double delta = static_cast<double>(j - i);
          double expected = type == DistanceKernelType::gaussian
                                ? -delta * delta / (2 * sigma[h] * sigma[h])
                                : -std::abs(delta) / sigma[h];
          if (i < 1 || j < 1) expected = 0;  // token 0 has no position
          EXPECT_NEAR(bias.at({h, i, j}), expected, 1e-14 * (1 + std::abs(expected)))
              << h << " " << i << " " << j;
        }
  }
}

TEST(DistanceKernel, GridPositionsWithAClsToken) {
  Vector<double> sigma(1);
  sigma << 1.3;
  // Distances do not depend on where the grid starts (conv_as_attention's padded grids).
  for (const Grid2d grid : {Grid2d{3, 4, 1}, Grid2d{3, 4, 1, -1, 2}})
    for (const auto type : {DistanceKernelType::gaussian, DistanceKernelType::laplacian}) {
      const DistanceKernel<double> term({type, grid}, sigma);
      const Tensor<double> bias = bias_of(term, 1, 13, 13);
      for (Index i = 0; i < 13; ++i)
        for (Index j = 0; j < 13; ++j) {
          double expected = 0;
          if (i > 0 && j > 0) {
            const double dr = static_cast<double>((j - 1) / 4 - (i - 1) / 4);
            const double dc = static_cast<double>((j - 1) % 4 - (i - 1) % 4);
            expected = type == DistanceKernelType::gaussian ? -(dr * dr + dc * dc) / (2 * 1.3 * 1.3)
                                                            : -(std::abs(dr) + std::abs(dc)) / 1.3;
          }
          EXPECT_NEAR(bias.at({0, i, j}), expected, 1e-14 * (1 + std::abs(expected)))
              << i << " " << j;
        }
    }
}

TEST(DistanceKernel, InfiniteSigmaAddsNothing) {
  const Vector<double> sigma = Vector<double>::Constant(1, std::numeric_limits<double>::infinity());
  const DistanceKernel<double> term({DistanceKernelType::laplacian}, sigma);
  EXPECT_EQ(bias_of(term, 1, 5, 5).matrix({0}), Matrix<double>::Zero(5, 5));
  // The approach to that limit, at widths where the term is small but not zero: on positions
  // 0..4 the largest |i - j| is 4, so the Laplacian term -|i - j| / sigma lies in [-4 / sigma, 0]
  // and the Gaussian one -|i - j|^2 / (2 sigma^2) in [-8 / sigma^2, 0]; both are nonzero off
  // the diagonal, and ten times the width gives a term ten (a hundred) times smaller.
  for (const auto type : {DistanceKernelType::laplacian, DistanceKernelType::gaussian}) {
    SCOPED_TRACE(type == DistanceKernelType::laplacian ? "laplacian" : "gaussian");
    const auto largest = [&](double width) {
      const DistanceKernel<double> finite({type}, Vector<double>::Constant(1, width));
      const Matrix<double> bias = bias_of(finite, 1, 5, 5).matrix({0});
      EXPECT_TRUE((bias.array() <= 0).all()) << bias;
      for (Index i = 0; i < 5; ++i) EXPECT_LT(bias(i, (i + 1) % 5), 0.0) << width << " " << i;
      const double bound = type == DistanceKernelType::laplacian ? 4 / width : 8 / (width * width);
      const double error = testing::max_abs_error(bias, Matrix<double>::Zero(5, 5));
      EXPECT_LE(error, bound * (1 + 1e-15)) << width;
      return error;
    };
    const double near = largest(1e3), nearer = largest(1e4);
    EXPECT_GT(nearer, 0.0);
    EXPECT_LT(nearer, near);
    const double rate = type == DistanceKernelType::laplacian ? 0.1 : 0.01;
    EXPECT_NEAR(nearer / near, rate, 1e-12 * rate);
  }
}

// A width whose coefficient overflows (in float at sigma = 1e-40, a subnormal) is the
// limit, the identity filter: 0 on the diagonal (not 0 * inf = NaN), -inf elsewhere.
TEST(DistanceKernel, ATinySigmaIsTheIdentityNotNaN) {
  for (const auto type : {DistanceKernelType::laplacian, DistanceKernelType::gaussian}) {
    const DistanceKernel<float> term({type}, Vector<float>::Constant(1, 1e-40f));
    Matrix<float> scores = Matrix<float>::Zero(4, 4);
    const Matrix<float> none(4, 1);
    term.add(ScoreTile<float>{{0, 0, 0, 0}, none, none}, scores);
    for (Index i = 0; i < 4; ++i)
      for (Index j = 0; j < 4; ++j)
        EXPECT_EQ(scores(i, j), i == j ? 0.0f : -std::numeric_limits<float>::infinity());
  }
}

TEST(DistanceKernel, SoftplusAndItsInverse) {
  for (const double x : {-30.0, -2.0, 0.0, 0.5, 3.0, 25.0, 100.0}) {
    EXPECT_NEAR(softplus(x), std::log1p(std::exp(x)), 1e-14 * std::max(1.0, x)) << x;
    EXPECT_NEAR(inverse_softplus(softplus(x)), x, 1e-9 * std::max(1.0, std::abs(x))) << x;
  }
  EXPECT_TRUE(std::isfinite(softplus(1000.0f)));
  testing::expect_error_naming<ArgumentError>([] { (void)inverse_softplus(0.0); },
                                              "inverse_softplus");
}

TEST(DistanceKernel, BadArgumentsNameTheArgument) {
  const Vector<double> two = Vector<double>::Ones(2);
  const DistanceKernel<double> term({}, two);
  testing::expect_error_naming<ShapeError>(
      [&] {
        term.check({1, 3, 4, 4, 0});
      },
      "DistanceKernel sigma");
  Vector<double> negative = two;
  negative[1] = -1;
  const DistanceKernel<double> bad({}, negative);
  testing::expect_error_naming<ArgumentError>(
      [&] {
        bad.check({1, 2, 4, 4, 0});
      },
      "DistanceKernel sigma[1]");
  const DistanceKernel<double> grid({DistanceKernelType::gaussian, Grid2d{2, 2, 0}}, two);
  testing::expect_error_naming<ShapeError>([&] { grid.check({1, 2, 5, 5, 0}); }, "2-D");
  testing::expect_error_naming<ArgumentError>(
      [&] {
        DistanceKernel<double>({DistanceKernelType::gaussian, Grid2d{2, 2, 0}, 1}, two);
      },
      "leading");
  testing::expect_error_naming<ArgumentError>(
      [&] {
        DistanceKernel<double>({DistanceKernelType::gaussian, std::nullopt, -1}, two);
      },
      "leading");
}

}  // namespace
}  // namespace attnlens
