// Numerically stable row softmax (docs/math.md section 1): subtract the row maximum, exponentiate,
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

// The normalization of kernel rows K_ij = exp(score_ij) into
//   A_ij = w_j K_ij / (sum_l u_l K_il + epsilon),
// with optional per-key weights w (numerator) and u (denominator) (robust KDE) and an epsilon
// (FourierFormer). Kernel values arrive shifted by the row maximum, exp(score - max), so
// epsilon is scaled by exp(-max). A row may come whole (normalize_kernel_rows) or in blocks of
// keys (the fused engine's online softmax); both use these pieces.
//
// `scale` multiplies every A_ij after normalization (an intervention: attribution scales a
// head's probabilities, pruning zeroes them); the backward pass sees it like any factor.
template <class T>
struct KernelNormalization {
  const T* numerator_weights = nullptr;    // w, one per key; null: all ones
  const T* denominator_weights = nullptr;  // u, one per key; null: all ones
  T epsilon = T(0);
  T scale = T(1);

  // sum_c u_{key_begin + c} p_c over a block of shifted kernel values p.
  template <class Row>
  T weighted_sum(const Row& p, Index key_begin) const {
    if (!denominator_weights) return p.sum();
    return p.dot(Eigen::Map<const RowVector<T>>(denominator_weights + key_begin, p.size()));
  }
  // p(r, c) *= scale w_{key_begin + c} for a block of rows.
  template <class Block>
  void weigh(Block&& p, Index key_begin) const {
    if (numerator_weights)
      p.array().rowwise() *= Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(
          numerator_weights + key_begin, p.cols());
    if (scale != T(1)) p *= scale;
  }
  // The denominator of a row whose kernel values, shifted by exp(-row_max), sum to `sum`.
  T denominator(T sum, T row_max) const {
    return epsilon > T(0) ? sum + epsilon * std::exp(-row_max) : sum;
  }

  // The backward of a block of rows (docs/math.md section 6), in place: da = dL/dA becomes
  // dL/dscores. With p_ij = K_ij / n_i (the kernel over the row's denominator, before the
  // weights: exp(score_ij - lse_i)) and D_i = sum_j da_ij A_ij (row_dot, one per row),
  //   dscores_ij = p_ij (scale w_j da_ij - u_j D_i).
  // The key weights' gradients (weights_gradient) read da before this call.
  template <class P, class Block>
  void scores_gradient(const P& p, const T* row_dot, Index key_begin, Block&& da) const {
    const Index rows = p.rows(), cols = p.cols();
    const Eigen::Map<const Vector<T>> d(row_dot, rows);
    if (numerator_weights)
      da.array().rowwise() *=
          Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(numerator_weights + key_begin, cols);
    if (scale != T(1)) da *= scale;
    if (denominator_weights)
      da.noalias() -= d * Eigen::Map<const RowVector<T>>(denominator_weights + key_begin, cols);
    else
      da.colwise() -= d;
    da.array() *= p.array();
  }

  // The gradients of the key weights from a block of rows (same p, da and D):
  // dL/dw_j += scale sum_i da_ij p_ij, dL/du_j -= sum_i D_i p_ij.
  template <class P, class DA>
  void weights_gradient(const P& p, const DA& da, const T* row_dot, Index key_begin,
                        T* numerator_gradient, T* denominator_gradient) const {
    const Index rows = p.rows(), cols = p.cols();
    if (numerator_gradient)
      Eigen::Map<RowVector<T>>(numerator_gradient + key_begin, cols) +=
          scale * (da.array() * p.array()).matrix().colwise().sum();
    if (denominator_gradient)
      Eigen::Map<RowVector<T>>(denominator_gradient + key_begin, cols) -=
          Eigen::Map<const RowVector<T>>(row_dot, rows) * p;
  }
};

// In place: each row of kernel log-values becomes its row of A; -inf entries become exactly 0
// and fully masked rows all 0. With row_logsumexp set, it receives each row's log-denominator
// lse_i = log(sum_j u_j K_ij + epsilon) (-inf for a fully masked row), what a backward pass
// recomputes A from.
template <class T>
void normalize_kernel_rows(MatrixRef<T> scores, const KernelNormalization<T>& normalization,
                           T* row_logsumexp = nullptr) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  for (Index i = 0; i < scores.rows(); ++i) {
    auto row = scores.row(i);
    const T row_max = row.maxCoeff();
    if (row_max == neg_inf) {
      row.setZero();
      if (row_logsumexp) row_logsumexp[i] = neg_inf;
      continue;
    }
    exp_shifted_in_place(row, row_max);
    const T sum = normalization.weighted_sum(row, 0);
    normalization.weigh(row, 0);
    const T denominator = normalization.denominator(sum, row_max);
    if (row_logsumexp) row_logsumexp[i] = row_max + std::log(denominator);
    row /= denominator;
  }
}

}  // namespace detail

// In place: each row of scores becomes softmax(row). -inf entries get weight exactly 0.
template <class T>
void softmax_rows(MatrixRef<T> scores) {
  detail::normalize_kernel_rows<T>(scores, {});
}

}  // namespace attnlens
