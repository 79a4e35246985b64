// Numerically stable row softmax (MATH.md section 1): subtract the row maximum, exponentiate,
// normalize; and its generalization to weighted kernel smoothers (robust KDE, FourierFormer).
// A row whose every entry is -inf (every key masked) becomes all zeros, never NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "attnlens/core/types.hpp"

namespace attnlens {

namespace detail {

// Eigen's vectorized exp clamps its argument, so exp(-inf) alone would be a tiny positive
// number, and Eigen 3.4's select() is not vectorized: masked entries are put back to exactly 0
// by a second, cheap pass.
//
// Arguments are clamped below at log of the smallest normal number: a masked (-inf) or far
// away key would otherwise make exp compute a subnormal result, which costs a microcode assist
// of about a hundred cycles per entry on x86 (a third of the time of a windowed image filter).
// The clamp changes a weight by less than that smallest normal (1e-38 in float).
template <class T>
constexpr T k_log_min_normal = std::is_same_v<T, float> ? T(-87.33) : T(-708.39);

// out = exp(scores - shift), exactly 0 where a score is -inf. out must not alias scores.
template <class Scores, class Out>
void exp_shifted(const Scores& scores, typename Scores::Scalar shift, Out&& out) {
  using T = typename Scores::Scalar;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  out = (scores.array() - shift)
            .max(k_log_min_normal<T>)  // std::max order: NaN stays NaN
            .exp()
            .matrix();
  if (scores.template minCoeff<Eigen::PropagateNumbers>() != neg_inf)
    return;  // a vectorized test spares the scalar pass
  for (Index c = 0; c < scores.size(); ++c)
    if (scores(c) == neg_inf) out(c) = T(0);
}

// In place: row = exp(row - shift), exactly 0 where the row is -inf.
template <class Row>
void exp_shifted_in_place(Row&& row, typename std::decay_t<Row>::Scalar shift) {
  using T = typename std::decay_t<Row>::Scalar;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  if (row.template minCoeff<Eigen::PropagateNumbers>() != neg_inf) {
    row = (row.array() - shift)
              .max(k_log_min_normal<T>)  // std::max order: NaN stays NaN
              .exp()
              .matrix();
    return;
  }
  for (Index c = 0; c < row.size(); ++c)
    row(c) = row(c) == neg_inf ? T(0) : std::exp(std::max(row(c) - shift, k_log_min_normal<T>));
}

// Turns each row of kernel log-values into A_ij = w_j K_ij / (sum_l u_l K_il + epsilon) with
// K = exp(score): the row maximum is factored out of numerator and denominator (so epsilon is
// scaled by exp(-max)), -inf entries become exactly 0 and fully masked rows all 0.
template <class T>
void normalize_kernel_rows(MatrixRef<T> scores, const T* numerator_weights,
                           const T* denominator_weights, T epsilon) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index S = scores.cols();
  for (Index i = 0; i < scores.rows(); ++i) {
    auto row = scores.row(i);
    const T row_max = row.maxCoeff();
    if (row_max == neg_inf) {
      row.setZero();
      continue;
    }
    exp_shifted_in_place(row, row_max);
    T denominator = denominator_weights
                        ? row.dot(Eigen::Map<const RowVector<T>>(denominator_weights, S))
                        : row.sum();
    if (epsilon > T(0)) denominator += epsilon * std::exp(-row_max);
    if (numerator_weights)
      row.array() *= Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(numerator_weights, S);
    row /= denominator;
  }
}

}  // namespace detail

// In place: each row of scores becomes softmax(row). -inf entries get weight exactly 0.
template <class T>
void softmax_rows(MatrixRef<T> scores) {
  detail::normalize_kernel_rows<T>(scores, nullptr, nullptr, T(0));
}

// Log of sum_j exp(row_j) for every row; -inf for a row of -inf entries.
template <class T>
Vector<T> logsumexp_rows(ConstMatrixRef<T> scores) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  Vector<T> out(scores.rows());
  for (Index i = 0; i < scores.rows(); ++i) {
    const auto row = scores.row(i);
    const T row_max = row.maxCoeff();
    out[i] = row_max == neg_inf ? neg_inf : row_max + std::log((row.array() - row_max).exp().sum());
  }
  return out;
}

}  // namespace attnlens
