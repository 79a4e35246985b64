// parallel_product_transposed (and so the AVX-512 kernel where the CPU has it) against Eigen's
// product: odd sizes that leave partial micro-tiles, row chunks and depth blocks, both split
// directions, bias on and off, strided views, one and two threads; and the product whose columns
// go to three matrices (q, k and v).
#include <gtest/gtest.h>

#include <vector>

#include "attnlens/core/gemm.hpp"

namespace attnlens {
namespace {

TEST(Gemm, ProductTransposedEqualsEigen) {
  struct Case {
    Index m, n, depth;
  };
  const std::vector<Case> cases{{1, 1, 1},     {3, 5, 7},      {14, 32, 16},  {29, 33, 17},
                                {37, 100, 19}, {300, 61, 257}, {64, 1536, 40}, {250, 48, 600},
                                {130, 29, 1000}, {257, 15, 769}};  // depth in two blocks
  for (const Case& s : cases)
    for (int threads : {1, 2})
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(::testing::Message() << s.m << " x " << s.n << " x " << s.depth << ", "
                                          << threads << " threads, bias " << with_bias);
        // Views with outer strides wider than their columns.
        const Matrix<float> a_store = Matrix<float>::Random(s.m, s.depth + 3);
        const Matrix<float> b_store = Matrix<float>::Random(s.n, s.depth + 5);
        const Vector<float> bias = Vector<float>::Random(s.n);
        const ConstMatrixRef<float> a = a_store.leftCols(s.depth);
        const ConstMatrixRef<float> b = b_store.rightCols(s.depth);
        Matrix<float> expected = a * b.transpose();
        if (with_bias) expected.rowwise() += bias.transpose();
        Matrix<float> c_store = Matrix<float>::Constant(s.m, s.n + 2, -7.0f);
        parallel_product_transposed<float>(a, b, c_store.leftCols(s.n), ParallelOptions{threads},
                                           with_bias ? bias.data() : nullptr);
        const float tolerance = 1e-5f * static_cast<float>(s.depth);
        EXPECT_LE((c_store.leftCols(s.n) - expected).cwiseAbs().maxCoeff(), tolerance);
        // Columns outside the view are untouched.
        EXPECT_TRUE((c_store.rightCols(2).array() == -7.0f).all());

        // double takes Eigen's kernel.
        Matrix<double> c_double(s.m, s.n);
        parallel_product_transposed<double>(a.cast<double>(), b.cast<double>(), c_double,
                                            ParallelOptions{threads},
                                            with_bias ? bias.cast<double>().eval().data() : nullptr);
        EXPECT_LE((c_double.cast<float>() - expected).cwiseAbs().maxCoeff(), tolerance);
      }
}

#if ATTNLENS_HAS_AVX512_KERNELS
TEST(Gemm, ProductIntoThreePartsEqualsEigen) {
  if (!detail::use_avx512()) GTEST_SKIP() << "no AVX-512 on this CPU (or ATTNLENS_NO_AVX512)";
  for (const Index width : {5, 14, 40, 64})
    for (int threads : {1, 2}) {
      SCOPED_TRACE(::testing::Message() << "parts of " << width << ", " << threads << " threads");
      const Index m = 70, depth = 33;
      const Matrix<float> x = Matrix<float>::Random(m, depth);
      const Matrix<float> w = Matrix<float>::Random(3 * width, depth);
      const Vector<float> bias = Vector<float>::Random(3 * width);
      Matrix<float> expected = x * w.transpose();
      expected.rowwise() += bias.transpose();
      Matrix<float> q(m, width), k(m, width), v(m, width);
      const detail::avx512::Destination parts{nullptr, width, width, {q.data(), k.data(), v.data()}};
      detail::avx512::product_transposed(x.data(), depth, w.data(), depth, bias.data(), m,
                                         3 * width, depth, parts, ParallelOptions{threads});
      EXPECT_LE((q - expected.leftCols(width)).cwiseAbs().maxCoeff(), 1e-4f);
      EXPECT_LE((k - expected.middleCols(width, width)).cwiseAbs().maxCoeff(), 1e-4f);
      EXPECT_LE((v - expected.rightCols(width)).cwiseAbs().maxCoeff(), 1e-4f);
    }
}
#endif

}  // namespace
}  // namespace attnlens
