// KDE attention and its robust (Huber) form (Han et al., NeurIPS 2023; docs/math.md section 2): keys
// scaled to unit length, a Gaussian range kernel exp(-|q - k|^2 / sqrt(d)), and for the robust
// form per-key Huber weights from each key's RKHS distance to the mean, computed blockwise in
// O(S) memory, that the engines apply as numerator / denominator key weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attnlens/attention/plan.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/query_key_transform.hpp"

namespace attnlens {

// Scales every key row to unit L2 norm (a zero key stays zero); queries are left as they are.
template <class T>
class KeyNormalization final : public QueryKeyTransform<T> {
 public:
  void check(const ScoreShape&) const override {}
  void transform_queries(const RowCoords&, MatrixRef<T>) const override {}
  void transform_keys(const RowCoords&, MatrixRef<T> keys) const override {
    for (Index r = 0; r < keys.rows(); ++r) {
      const T norm = keys.row(r).norm();
      if (norm > T(0)) keys.row(r) /= norm;
    }
  }
};

// Huber weights of the rows x_j of `points` (N x D) under kappa(x, y) = exp(-scale |x - y|^2):
// r_j^2 = kappa(x_j, x_j) - (2/N) sum_l kappa(x_j, x_l) + (1/N^2) sum_{l,m} kappa(x_l, x_m),
// w_j = 1 if r_j <= a else a / r_j, then normalized to sum 1. The N x N kernel is formed one
// block at a time, never as a whole.
template <class T>
void huber_kde_weights(ConstMatrixRef<T> points, T scale, T a, Vector<T>& out) {
  detail::require_argument(scale > T(0), "huber_kde_weights scale", "> 0", scale);
  detail::require_argument(a > T(0), "huber_kde_weights a", "> 0", a);
  const Index N = points.rows();
  out.resize(N);
  if (N == 0) return;
  constexpr Index block = 128;
  const Vector<T> squared_norms = points.rowwise().squaredNorm();
  Matrix<T> tile(std::min(block, N), std::min(block, N));
  Vector<T> row_sums = Vector<T>::Zero(N);
  for (Index r0 = 0; r0 < N; r0 += block) {
    const Index rows = std::min(block, N - r0);
    for (Index c0 = 0; c0 < N; c0 += block) {
      const Index cols = std::min(block, N - c0);
      // -scale |x - y|^2 = scale (2 x.y - |x|^2 - |y|^2), never above 0.
      auto scores = tile.topLeftCorner(rows, cols);
      scores.noalias() =
          (T(2) * scale) * points.middleRows(r0, rows) * points.middleRows(c0, cols).transpose();
      scores.colwise() -= scale * squared_norms.segment(r0, rows);
      scores.rowwise() -= scale * squared_norms.segment(c0, cols).transpose();
      row_sums.segment(r0, rows) += scores.cwiseMin(T(0)).array().exp().matrix().rowwise().sum();
    }
  }
  const T n = static_cast<T>(N);
  const T mean_of_all = row_sums.sum() / (n * n);
  for (Index j = 0; j < N; ++j) {
    // kappa(x, x) = 1; rounding can push a tiny r^2 below 0.
    const T r = std::sqrt(std::max(T(0), T(1) - T(2) * row_sums[j] / n + mean_of_all));
    out[j] = r <= a ? T(1) : a / r;
  }
  out /= out.sum();
}

// The two weight vectors of robust KDE attention for one head: key_weights from the keys alone
// (the denominator), key_value_weights from the joint rows [k_j; v_j] (the numerator).
template <class T>
void robust_kde_key_weights(ConstMatrixRef<T> keys, ConstMatrixRef<T> values, T scale, T a,
                            Vector<T>& key_weights, Vector<T>& key_value_weights) {
  detail::require_shape(values.rows() == keys.rows(), "robust KDE values",
                        detail::concat(keys.rows(), " rows like the keys"),
                        detail::concat(values.rows(), " rows"));
  huber_kde_weights<T>(keys, scale, a, key_weights);
  Matrix<T> joint(keys.rows(), keys.cols() + values.cols());
  joint << keys, values;
  huber_kde_weights<T>(joint, scale, a, key_value_weights);
}

// Robust KDE's per-key weights as a plan's KeyWeighting: the Huber weights of the head's real
// keys (padding gets weight 0 and never enters the estimate of the mean), w from [k; v] in the
// numerator and u from the keys in the denominator.
template <class T>
class HuberKeyWeighting final : public KeyWeighting<T> {
 public:
  HuberKeyWeighting(T scale, T a) : scale_(scale), a_(a) {}

  void weights(ConstMatrixRef<T> keys, ConstMatrixRef<T> values, const std::vector<char>& real,
               Vector<T>& numerator, Vector<T>& denominator) const override {
    std::vector<Index> kept;
    for (Index j = 0; j < keys.rows(); ++j)
      if (real[static_cast<std::size_t>(j)]) kept.push_back(j);
    const auto n = static_cast<Index>(kept.size());
    Matrix<T> real_keys(n, keys.cols()), real_values(n, values.cols());
    for (Index r = 0; r < n; ++r) {
      real_keys.row(r) = keys.row(kept[static_cast<std::size_t>(r)]);
      real_values.row(r) = values.row(kept[static_cast<std::size_t>(r)]);
    }
    Vector<T> wk, wkv;
    robust_kde_key_weights<T>(real_keys, real_values, scale_, a_, wk, wkv);
    numerator = Vector<T>::Zero(keys.rows());
    denominator = Vector<T>::Zero(keys.rows());
    for (Index r = 0; r < n; ++r) {
      numerator[kept[static_cast<std::size_t>(r)]] = wkv[r];
      denominator[kept[static_cast<std::size_t>(r)]] = wk[r];
    }
  }

 private:
  T scale_, a_;
};

}  // namespace attnlens
