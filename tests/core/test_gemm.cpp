// parallel_product_transposed (and so the AVX-512 kernel where the CPU has it) and the backward
// products parallel_product and parallel_add_transposed_product against the exact
// product: odd sizes that leave partial micro-tiles, row chunks and depth blocks, both split
// directions, bias on and off, strided views, one and two threads; and the product whose columns
// go to three matrices (q, k and v). Every tolerance is the worst-case rounding bound below.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "attnlens/core/gemm.hpp"
#include "support/compare.hpp"

namespace attnlens {
namespace {

// gamma_n = n u / (1 - n u), u the unit roundoff of T (Higham, "Accuracy and Stability of
// Numerical Algorithms", 2nd ed., section 3.1).
template <class T>
long double gemm_gamma(Index n) {
  const long double u = static_cast<long double>(std::numeric_limits<T>::epsilon()) / 2;
  const long double nu = static_cast<long double>(n) * u;
  return nu / (1 - nu);
}

// c = x w^T (+ bias, added to every row) in long double, and the bound on how far a product
// computed in T may be from it. Each c_ij is a sum of n = depth (+ 1) terms x_ik w_jk (and
// bias_j), and a sum of n products computed in floating point with unit roundoff u, in any order,
// with or without fused multiply-adds, and however it is blocked (the AVX-512 kernel adds depth
// blocks of 256 into c), is off by at most gamma_n sum_k |x_ik| |w_jk| (+ |bias_j|) (Higham,
// section 3.1, eq. 3.5). The expectation itself is a long double sum with the same bound in
// long double's u (2^-64 on x86, where it is negligible; where long double is double the
// tolerance doubles accordingly). One more term in each gamma covers the rounding of the
// long double difference the comparison takes.
struct ExactGemm {
  Matrix<long double> value;
  long double magnitude = 0;  // max_ij sum_k |x_ik| |w_jk| (+ |bias_j|)
  Index terms = 0;            // n

  // The worst-case |computed - value| for a kernel computing in T.
  template <class T>
  double tolerance() const {
    return static_cast<double>((gemm_gamma<T>(terms + 1) + gemm_gamma<long double>(terms + 1)) *
                               magnitude);
  }
};

template <class A, class B>
ExactGemm exact_gemm(const A& x, const B& w, const float* bias) {
  ExactGemm e;
  const Matrix<long double> xl = x.template cast<long double>(),
                            wl = w.template cast<long double>();
  e.value = xl * wl.transpose();
  Matrix<long double> magnitude = xl.cwiseAbs() * wl.cwiseAbs().transpose();
  e.terms = x.cols();
  if (bias) {
    for (Index j = 0; j < w.rows(); ++j) {
      e.value.col(j).array() += static_cast<long double>(bias[j]);
      magnitude.col(j).array() += std::fabs(static_cast<long double>(bias[j]));
    }
    ++e.terms;
  }
  e.magnitude = magnitude.maxCoeff();  // of |.|, finite: the inputs are Random in [-1, 1]
  return e;
}

TEST(Gemm, ProductTransposedEqualsEigen) {
  struct Case {
    Index m, n, depth;
  };
  const std::vector<Case> cases{{1, 1, 1},       {3, 5, 7},      {14, 32, 16},   {29, 33, 17},
                                {37, 100, 19},   {300, 61, 257}, {64, 1536, 40}, {250, 48, 600},
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
        const ExactGemm expected = exact_gemm(a, b, with_bias ? bias.data() : nullptr);
        // The view starts as NaN (an entry left unwritten fails), the columns beside it as -7.
        Matrix<float> c_store = Matrix<float>::Constant(s.m, s.n + 2, -7.0f);
        c_store.leftCols(s.n).setConstant(std::numeric_limits<float>::quiet_NaN());
        parallel_product_transposed<float>(a, b, c_store.leftCols(s.n), ParallelOptions{threads},
                                           with_bias ? bias.data() : nullptr);
        ATTNLENS_EXPECT_CLOSE(c_store.leftCols(s.n), expected.value, expected.tolerance<float>());
        // Columns outside the view are untouched.
        EXPECT_TRUE((c_store.rightCols(2).array() == -7.0f).all());

        // double takes Eigen's kernel, on the same (float) inputs, checked to double's bound.
        Matrix<double> c_double =
            Matrix<double>::Constant(s.m, s.n, std::numeric_limits<double>::quiet_NaN());
        parallel_product_transposed<double>(
            a.cast<double>(), b.cast<double>(), c_double, ParallelOptions{threads},
            with_bias ? bias.cast<double>().eval().data() : nullptr);
        ATTNLENS_EXPECT_CLOSE(c_double, expected.value, expected.tolerance<double>());
      }
}

// The products of backward passes, c = a b (dx = dy W) and c += a^T b (dW += dy^T x), on
// strided views, one and two threads, both split directions; exact_gemm takes b's transpose.
TEST(Gemm, BackwardProductsEqualEigen) {
  struct Case {
    Index m, n, depth;
  };
  for (const Case& s :
       std::vector<Case>{{1, 1, 1}, {3, 5, 7}, {29, 33, 17}, {300, 61, 257}, {40, 130, 600}})
    for (int threads : {1, 2}) {
      SCOPED_TRACE(::testing::Message()
                   << s.m << " x " << s.n << " x " << s.depth << ", " << threads << " threads");
      const Matrix<double> a_store = Matrix<double>::Random(s.m, s.depth + 3);
      const Matrix<double> b_store = Matrix<double>::Random(s.depth, s.n + 5);
      const ConstMatrixRef<double> a = a_store.leftCols(s.depth);
      const ConstMatrixRef<double> b = b_store.rightCols(s.n);
      const ExactGemm product = exact_gemm(a, b.transpose(), nullptr);
      Matrix<double> c =
          Matrix<double>::Constant(s.m, s.n, std::numeric_limits<double>::quiet_NaN());
      parallel_product<double>(a, b, c, ParallelOptions{threads});
      ATTNLENS_EXPECT_CLOSE(c, product.value, product.tolerance<double>());

      // c += a^T b, with a = at^T stored depth x m: the sum starts from c0.
      const Matrix<double> at = a.transpose();
      Matrix<double> c_store = Matrix<double>::Constant(s.m, s.n + 2, -7.0);
      const Matrix<double> c0 = Matrix<double>::Random(s.m, s.n);
      c_store.leftCols(s.n) = c0;
      parallel_add_transposed_product<double>(at, b, c_store.leftCols(s.n),
                                              ParallelOptions{threads});
      // Adding to c0 and taking c0 away again each round once more, by at most u |c0 + p|.
      const double u = std::numeric_limits<double>::epsilon() / 2;
      const double rounding =
          2 * u * (c0.cwiseAbs().maxCoeff() + static_cast<double>(product.magnitude));
      ATTNLENS_EXPECT_CLOSE(c_store.leftCols(s.n) - c0, product.value,
                            product.tolerance<double>() + rounding);
      EXPECT_TRUE((c_store.rightCols(2).array() == -7.0).all());
    }
}

// SerialGemm's three products, each c += alpha op(a) op(b) from a c0, in float (the packed
// AVX-512 kernel where the CPU has it) and double (Eigen's): sizes that cross the packed
// kernel's blocks of 224 rows, 256 depth and 512 columns, strided views, alpha 1 and 0.37.
template <class T>
void expect_serial_products_exact() {
  struct Case {
    Index m, n, depth;
  };
  for (const Case& s : std::vector<Case>{
           {1, 1, 1}, {3, 5, 7}, {14, 32, 16}, {29, 33, 17}, {28, 64, 256}, {230, 520, 260}})
    for (const T alpha : {T(1), T(0.37)}) {
      SCOPED_TRACE(::testing::Message()
                   << s.m << " x " << s.n << " x " << s.depth << ", alpha " << alpha);
      const Matrix<T> a_store = Matrix<T>::Random(s.m, s.depth + 3);
      const Matrix<T> b_store = Matrix<T>::Random(s.depth, s.n + 5);
      const ConstMatrixRef<T> a = a_store.leftCols(s.depth);
      const ConstMatrixRef<T> b = b_store.rightCols(s.n);
      const Matrix<T> scaled_a = alpha * a;  // exact for alpha 1; what the kernels multiply
      const ExactGemm product = exact_gemm(scaled_a, b.transpose(), nullptr);
      const Matrix<T> c0 = Matrix<T>::Random(s.m, s.n);
      const double u = std::numeric_limits<T>::epsilon() / 2;
      // Adding to c0 and taking c0 away again each round once more, by at most u |c0 + p|;
      // alpha a is rounded once more where the kernel scales it.
      const double tolerance =
          product.template tolerance<T>() * (1 + 2 * u) +
          2 * u * (c0.cwiseAbs().maxCoeff() + static_cast<double>(product.magnitude));
      const Matrix<T> at = a.transpose(), bt = b.transpose();
      SerialGemm<T> gemm(s.m, s.n, s.depth);
      const auto run = [&](const char* which, auto&& multiply) {
        SCOPED_TRACE(which);
        Matrix<T> c_store = Matrix<T>::Constant(s.m, s.n + 2, T(-7));
        c_store.leftCols(s.n) = c0;
        multiply(c_store.leftCols(s.n));
        ATTNLENS_EXPECT_CLOSE(c_store.leftCols(s.n) - c0, product.value, tolerance);
        EXPECT_TRUE((c_store.rightCols(2).array() == T(-7)).all());
      };
      run("a b", [&](MatrixRef<T> c) { gemm.add_product(alpha, a, b, c); });
      run("a (b^T)^T", [&](MatrixRef<T> c) { gemm.add_product_transposed(alpha, a, bt, c); });
      run("(a^T)^T b", [&](MatrixRef<T> c) { gemm.add_transposed_product(alpha, at, b, c); });
    }
}

TEST(Gemm, SerialProductsEqualExactFloat) { expect_serial_products_exact<float>(); }
TEST(Gemm, SerialProductsEqualExactDouble) { expect_serial_products_exact<double>(); }

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
      const ExactGemm expected = exact_gemm(x, w, bias.data());
      const float nan = std::numeric_limits<float>::quiet_NaN();
      Matrix<float> q = Matrix<float>::Constant(m, width, nan), k = q, v = q;
      const detail::avx512::Destination parts{
          nullptr, width, width, {q.data(), k.data(), v.data()}};
      detail::avx512::product_transposed(x.data(), depth, w.data(), depth, bias.data(), m,
                                         3 * width, depth, parts, ParallelOptions{threads});
      const double tolerance = expected.tolerance<float>();
      ATTNLENS_EXPECT_CLOSE(q, expected.value.leftCols(width), tolerance);
      ATTNLENS_EXPECT_CLOSE(k, expected.value.middleCols(width, width), tolerance);
      ATTNLENS_EXPECT_CLOSE(v, expected.value.rightCols(width), tolerance);
    }
}
#endif

}  // namespace
}  // namespace attnlens
