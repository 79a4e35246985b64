// Range kernels: the content factor of attention's kernel (docs/architecture.md, docs/math.md
// section 2), in log space. A tile of scores gets range(q_i, k_j) for its queries and keys, so
// the reference and the fused engine share one definition.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "attnlens/core/gemm.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

enum class RangeKernelType {
  dot_product,                // scale * q.k                      (softmax attention)
  negative_squared_distance,  // -scale * |q - k|^2               (Gaussian: KDE, NLM, bilateral)
  sinc4,                      // 4 sum_c log|sinc(frequency (q_c - k_c))|   (FourierFormer)
  none,                       // 0: positional-only attention, the domain kernel alone
};

template <class T>
struct RangeKernel {
  RangeKernelType type = RangeKernelType::dot_product;
  T scale = T(1);
  T frequency = T(1);  // R of sinc4
};

// Softmax attention's range kernel, exp(scale * q.k).
template <class T>
RangeKernel<T> dot_product_range(T scale) {
  return {RangeKernelType::dot_product, scale, T(1)};
}

// A kernel's scale computed in double (1 / (2 r^2), 1 / (n h^2)) as a T: at most T's largest
// finite value, so that a bandwidth so small that the scale overflows still gives the limit
// (only equal rows weigh: the identity filter) instead of inf * 0 = NaN.
template <class T>
T finite_scale(double scale) {
  return static_cast<T>(std::min(scale, static_cast<double>(std::numeric_limits<T>::max())));
}

namespace detail {

// log|sin(x)/x|^4, with sinc(0) = 1 and log 0 = -inf at the zeros of sin.
template <class T>
T log_sinc4(T x) {
  if (x == T(0)) return T(0);
  return T(4) * std::log(std::abs(std::sin(x) / x));
}

// d/dx log|sin(x) / x| = cot x - 1/x. Near 0 the two terms cancel, losing about
// log10(3 / x^2) digits, so below the switch the Taylor series -x/3 - x^3/45 - 2x^5/945 -
// x^7/4725 is used: its next term, 2x^9/93555, is then within 2 ulp of the value in float
// (switch 0.5, at most 1 digit lost above it) and far below rounding in double (switch 0.01, at
// most 4.5 of 16 digits lost above it).
template <class T>
T log_sinc_derivative(T x) {
  constexpr T series_below = std::is_same_v<T, float> ? T(0.5) : T(0.01);
  if (std::abs(x) < series_below) {
    const T x2 = x * x;
    return -x * (T(1) / T(3) + x2 * (T(1) / T(45) + x2 * (T(2) / T(945) + x2 / T(4725))));
  }
  return T(1) / std::tan(x) - T(1) / x;
}

}  // namespace detail

// scores (queries.rows() x keys.rows()) = range(q_i, k_j), overwriting the tile; `gemm` holds
// buffers for a product of the tile's size.
template <class T>
void range_scores(const RangeKernel<T>& range, ConstMatrixRef<T> queries, ConstMatrixRef<T> keys,
                  MatrixRef<T> scores, SerialGemm<T>& gemm) {
  switch (range.type) {
    case RangeKernelType::dot_product:
      scores.setZero();
      gemm.add_product_transposed(range.scale, queries, keys, scores);
      return;
    case RangeKernelType::negative_squared_distance: {
      // |q - k|^2 = |q|^2 + |k|^2 - 2 q.k puts the work in one GEMM; rounding can make it
      // slightly negative for near-equal rows, and a distance is never negative. The scale
      // multiplies the finished distance, so that a scale up to the largest finite one (a
      // bandwidth near 0) leaves equal rows at 0 or a rounding residue times it, the row's
      // largest score, where scale * |q|^2 - scale * |q|^2 would be inf - inf. Scalar rows
      // (pixels) give exactly 0: 2 (q q) - q^2 - q^2 rounds to nothing.
      scores.setZero();
      gemm.add_product_transposed(T(1), queries, keys, scores);
      for (Index c = 0; c < scores.cols(); ++c)
        scores.col(c) = T(2) * scores.col(c).array() - keys.row(c).squaredNorm();
      for (Index r = 0; r < scores.rows(); ++r)
        scores.row(r).array() -= queries.row(r).squaredNorm();
      scores = range.scale * scores.cwiseMin(T(0));
      return;
    }
    case RangeKernelType::sinc4:
      for (Index r = 0; r < scores.rows(); ++r)
        for (Index c = 0; c < scores.cols(); ++c) {
          T sum = 0;
          for (Index e = 0; e < queries.cols(); ++e)
            sum += detail::log_sinc4<T>(range.frequency * (queries(r, e) - keys(c, e)));
          scores(r, c) = sum;
        }
      return;
    case RangeKernelType::none:
      scores.setZero();
      return;
  }
}

// The backward of range_scores for a tile: dqueries (rows x d) and dkeys (cols x d) += the
// gradients of sum(dscores (*) range(q, k)), and frequency += that of R (sinc4). Entries with
// dscores 0 (outside the support) add nothing, also where the kernel is -inf.
template <class T>
void range_scores_backward(const RangeKernel<T>& range, ConstMatrixRef<T> queries,
                           ConstMatrixRef<T> keys, ConstMatrixRef<T> dscores, MatrixRef<T> dqueries,
                           MatrixRef<T> dkeys, T& frequency, SerialGemm<T>& gemm) {
  switch (range.type) {
    case RangeKernelType::dot_product:
      gemm.add_product(range.scale, dscores, keys, dqueries);
      gemm.add_transposed_product(range.scale, dscores, queries, dkeys);
      return;
    case RangeKernelType::negative_squared_distance: {
      // d/dq_i of -c |q_i - k_j|^2 is -2c (q_i - k_j). The clamp at 0 only absorbs rounding
      // where q_i = k_j, and the derivative is 0 there.
      const T c2 = T(2) * range.scale;
      dqueries.noalias() -= c2 * (dscores.rowwise().sum().asDiagonal() * queries);
      gemm.add_product(c2, dscores, keys, dqueries);
      dkeys.noalias() -= c2 * (dscores.colwise().sum().transpose().asDiagonal() * keys);
      gemm.add_transposed_product(c2, dscores, queries, dkeys);
      return;
    }
    case RangeKernelType::sinc4:
      for (Index r = 0; r < dscores.rows(); ++r)
        for (Index c = 0; c < dscores.cols(); ++c) {
          const T g = dscores(r, c);
          if (g == T(0)) continue;
          for (Index e = 0; e < queries.cols(); ++e) {
            const T difference = queries(r, e) - keys(c, e);
            const T x = range.frequency * difference;
            const T slope = T(4) * g * detail::log_sinc_derivative(x);
            dqueries(r, e) += slope * range.frequency;
            dkeys(c, e) -= slope * range.frequency;
            frequency += slope * difference;
          }
        }
      return;
    case RangeKernelType::none:
      return;
  }
}

}  // namespace attnlens
