#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "attnlens/core/init.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "support/compare.hpp"
#include "support/random_head.hpp"

namespace attnlens {
namespace {

struct Result {
  Matrix<double> weights, out;
};

Result run(const testing::RandomHead<double>& h, const AttentionKernel<double>& kernel) {
  Result r{Matrix<double>(h.q.rows(), h.k.rows()), Matrix<double>(h.q.rows(), h.v.cols())};
  reference_attention<double>({0, 0, h.q, h.k, h.v}, kernel, r.weights, r.out);
  return r;
}

TEST(ReferenceEngine, IsTheNormalizedKernelSmoother) {
  const auto h = testing::random_head<double>(5, 7, 4, 3, 1);
  const double scale = 0.5;
  const auto r = run(h, {dot_product_range(scale)});
  // u_i = sum_j K_ij v_j / sum_j K_ij with K_ij = exp(scale q_i.k_j), written out by loops.
  for (Index i = 0; i < 5; ++i) {
    double z = 0.0;
    Vector<double> u = Vector<double>::Zero(3);
    for (Index j = 0; j < 7; ++j) {
      const double kij = std::exp(scale * h.q.row(i).dot(h.k.row(j)));
      z += kij;
      u += kij * h.v.row(j).transpose();
    }
    ATTNLENS_EXPECT_CLOSE(r.out.row(i).transpose(), u / z, 1e-14);
    EXPECT_NEAR(r.weights.row(i).sum(), 1.0, 1e-15);
  }
}

TEST(ReferenceEngine, FullyMaskedRowsAreZeroAndMaskedNanValuesNeverLeak) {
  auto h = testing::random_head<double>(3, 4, 2, 2, 2);
  AttentionMask<double> mask;
  mask.keep = Tensor<std::uint8_t>({3, 4}, {1, 1, 0, 1,  //
                                            0, 0, 0, 0,  // fully masked
                                            1, 0, 1, 1});
  const BoundMask<double> bound(mask, {1, 1, 3, 4});
  const AttentionKernel<double> kernel{dot_product_range(1.0), nullptr, &bound};
  const auto clean = run(h, kernel);
  h.v(2, 0) = std::numeric_limits<double>::quiet_NaN();
  h.v(2, 1) = std::numeric_limits<double>::infinity();
  h.k(2, 1) = std::numeric_limits<double>::quiet_NaN();
  const auto dirty = run(h, kernel);
  EXPECT_EQ(dirty.weights.row(1).cwiseAbs().sum(), 0.0);
  EXPECT_EQ(dirty.out.row(1).cwiseAbs().sum(), 0.0);
  // Row 0 does not attend key 2: its weights and outputs are the clean ones, NaN-free.
  ATTNLENS_EXPECT_CLOSE(dirty.weights.row(0), clean.weights.row(0), 1e-15);
  ATTNLENS_EXPECT_CLOSE(dirty.out.row(0), clean.out.row(0), 1e-15);
  // Row 2 attends key 2: there the NaN must show, as in any plain computation.
  EXPECT_TRUE(std::isnan(dirty.out(2, 0)));
}

}  // namespace
}  // namespace attnlens
