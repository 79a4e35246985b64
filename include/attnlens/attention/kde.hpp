// KDE attention and its robust (Huber) form (Han et al., NeurIPS 2023; docs/math.md section 2):
// keys scaled to unit length, a Gaussian range kernel exp(-|q - k|^2 / sqrt(d)), and for the robust
// form per-key Huber weights from each key's RKHS distance to the mean, computed blockwise in
// O(S) memory, that the engines apply as numerator / denominator key weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attnlens/attention/plan.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
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
  void backward_queries(const RowCoords&, ConstMatrixRef<T>, MatrixRef<T>,
                        KernelFactor<T>*) const override {}
  // k^ = k / |k| has the Jacobian (I - k^ k^T) / |k|. A zero key stays zero whatever its
  // neighbourhood (the map has no derivative there) and passes no gradient.
  void backward_keys(const RowCoords&, ConstMatrixRef<T> keys, MatrixRef<T> dkeys,
                     KernelFactor<T>*) const override {
    for (Index r = 0; r < keys.rows(); ++r) {
      const T norm = keys.row(r).norm();
      if (norm == T(0)) {
        dkeys.row(r).setZero();
        continue;
      }
      const RowVector<T> unit = keys.row(r) / norm;
      dkeys.row(r) = (dkeys.row(r) - unit.dot(dkeys.row(r)) * unit) / norm;
    }
  }
};

namespace detail {

// kappa(x_l, x_m) = exp(-scale |x_l - x_m|^2) for the rows [r0, r0 + rows) x [c0, c0 + cols) of
// `points`, into the top-left corner of `tile`: one block of the N x N kernel. The product runs
// on SerialGemm: these weights are computed per head, inside the caller's threads, and an Eigen
// product expression here was 30x slower in a program built with OpenMP (Eigen forked its own
// threads for every block when the caller ran one, and they spun; docs/performance.md).
template <class T>
MatrixRef<T> gaussian_kernel_block(ConstMatrixRef<T> points, const Vector<T>& squared_norms,
                                   T scale, Index r0, Index rows, Index c0, Index cols,
                                   Matrix<T>& tile, SerialGemm<T>& gemm) {
  MatrixRef<T> k = tile.topLeftCorner(rows, cols);
  // -scale |x - y|^2 = scale (2 x.y - |x|^2 - |y|^2), never above 0.
  k.setZero();
  gemm.add_product_transposed(T(2) * scale, points.middleRows(r0, rows),
                              points.middleRows(c0, cols), k);
  k.colwise() -= scale * squared_norms.segment(r0, rows);
  k.rowwise() -= scale * squared_norms.segment(c0, cols).transpose();
  k = k.cwiseMin(T(0)).array().exp().matrix();
  return k;
}

}  // namespace detail

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
  SerialGemm<T> gemm(tile.rows(), tile.cols(), points.cols());
  Vector<T> row_sums = Vector<T>::Zero(N);
  for (Index r0 = 0; r0 < N; r0 += block) {
    const Index rows = std::min(block, N - r0);
    for (Index c0 = 0; c0 < N; c0 += block) {
      const Index cols = std::min(block, N - c0);
      row_sums.segment(r0, rows) += detail::gaussian_kernel_block<T>(
                                        points, squared_norms, scale, r0, rows, c0, cols, tile, gemm)
                                        .rowwise()
                                        .sum();
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

// The backward of huber_kde_weights: given the forward's `weights` and dL/dweights, dpoints
// (N x D) += dL/dpoints. With s_j = sum_l kappa_jl, r_j^2 = 1 - 2 s_j / N + sum_l s_l / N^2 and
// w~_j = 1 or a / r_j before the normalization w = w~ / sum w~:
//   dw~ = (dw - dw.w) / sum w~,   d(r_j^2) = dw~_j * (-a / (2 r_j^3)) where r_j > a, else 0,
//   ds_j = -2 d(r_j^2) / N + sum_l d(r_l^2) / N^2,
//   dx_j = -2 scale sum_l (ds_j + ds_l) kappa_jl (x_j - x_l),
// the kernel formed again block by block.
template <class T>
void huber_kde_weights_backward(ConstMatrixRef<T> points, T scale, T a, const Vector<T>& weights,
                                const Vector<T>& dweights, MatrixRef<T> dpoints) {
  const Index N = points.rows();
  if (N == 0) return;
  constexpr Index block = 128;
  const Vector<T> squared_norms = points.rowwise().squaredNorm();
  Matrix<T> tile(std::min(block, N), std::min(block, N));
  SerialGemm<T> gemm(tile.rows(), tile.cols(), points.cols());
  SerialGemm<T> gradient_gemm(tile.rows(), points.cols(), tile.cols());  // e (rows x cols) x_c
  const auto kernel_block = [&](Index r0, Index rows, Index c0, Index cols) {
    return detail::gaussian_kernel_block<T>(points, squared_norms, scale, r0, rows, c0, cols, tile,
                                            gemm);
  };
  Vector<T> row_sums = Vector<T>::Zero(N);
  for (Index r0 = 0; r0 < N; r0 += block)
    for (Index c0 = 0; c0 < N; c0 += block) {
      const Index rows = std::min(block, N - r0), cols = std::min(block, N - c0);
      row_sums.segment(r0, rows) += kernel_block(r0, rows, c0, cols).rowwise().sum();
    }
  const T n = static_cast<T>(N);
  const T mean_of_all = row_sums.sum() / (n * n);
  Vector<T> r(N), unnormalized(N);
  for (Index j = 0; j < N; ++j) {
    r[j] = std::sqrt(std::max(T(0), T(1) - T(2) * row_sums[j] / n + mean_of_all));
    unnormalized[j] = r[j] <= a ? T(1) : a / r[j];
  }
  const Vector<T> dunnormalized = (dweights.array() - dweights.dot(weights)) / unnormalized.sum();
  Vector<T> dsquared = Vector<T>::Zero(N);  // dL/d(r_j^2)
  for (Index j = 0; j < N; ++j)
    if (r[j] > a) dsquared[j] = dunnormalized[j] * (-a / (T(2) * r[j] * r[j] * r[j]));
  const Vector<T> drow_sums = (T(-2) / n) * dsquared.array() + dsquared.sum() / (n * n);
  for (Index r0 = 0; r0 < N; r0 += block)
    for (Index c0 = 0; c0 < N; c0 += block) {
      const Index rows = std::min(block, N - r0), cols = std::min(block, N - c0);
      MatrixRef<T> e = kernel_block(r0, rows, c0, cols);
      e.array() *= (drow_sums.segment(r0, rows).replicate(1, cols) +
                    drow_sums.segment(c0, cols).transpose().replicate(rows, 1))
                       .array();
      dpoints.middleRows(r0, rows).noalias() -=
          (T(2) * scale) * (e.rowwise().sum().asDiagonal() * points.middleRows(r0, rows));
      gradient_gemm.add_product(T(2) * scale, e, points.middleRows(c0, cols),
                                dpoints.middleRows(r0, rows));
    }
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
    const RealRows rows = real_rows(keys, values, real);
    Vector<T> wk, wkv;
    robust_kde_key_weights<T>(rows.keys, rows.values, scale_, a_, wk, wkv);
    numerator = Vector<T>::Zero(keys.rows());
    denominator = Vector<T>::Zero(keys.rows());
    for (std::size_t r = 0; r < rows.kept.size(); ++r) {
      numerator[rows.kept[r]] = wkv[static_cast<Index>(r)];
      denominator[rows.kept[r]] = wk[static_cast<Index>(r)];
    }
  }

  // Through both Huber estimates (docs/math.md section 2.6): u from the keys, w from [k; v].
  void weights_backward(ConstMatrixRef<T> keys, ConstMatrixRef<T> values,
                        const std::vector<char>& real, const Vector<T>& dnumerator,
                        const Vector<T>& ddenominator, MatrixRef<T> dkeys,
                        MatrixRef<T> dvalues) const override {
    const RealRows rows = real_rows(keys, values, real);
    const auto n = static_cast<Index>(rows.kept.size());
    Vector<T> wk, wkv, dwk(n), dwkv(n);
    robust_kde_key_weights<T>(rows.keys, rows.values, scale_, a_, wk, wkv);
    for (Index r = 0; r < n; ++r) {
      dwk[r] = ddenominator[rows.kept[static_cast<std::size_t>(r)]];
      dwkv[r] = dnumerator[rows.kept[static_cast<std::size_t>(r)]];
    }
    Matrix<T> joint(n, keys.cols() + values.cols());
    joint << rows.keys, rows.values;
    Matrix<T> djoint = Matrix<T>::Zero(n, joint.cols());
    huber_kde_weights_backward<T>(joint, scale_, a_, wkv, dwkv, djoint);
    huber_kde_weights_backward<T>(rows.keys, scale_, a_, wk, dwk, djoint.leftCols(keys.cols()));
    for (Index r = 0; r < n; ++r) {
      const Index j = rows.kept[static_cast<std::size_t>(r)];
      dkeys.row(j) += djoint.row(r).head(keys.cols());
      dvalues.row(j) += djoint.row(r).tail(values.cols());
    }
  }

 private:
  // The real (not padding) keys and values of a head, and where they came from.
  struct RealRows {
    std::vector<Index> kept;
    Matrix<T> keys, values;
  };
  static RealRows real_rows(ConstMatrixRef<T> keys, ConstMatrixRef<T> values,
                            const std::vector<char>& real) {
    RealRows rows;
    for (Index j = 0; j < keys.rows(); ++j)
      if (real[static_cast<std::size_t>(j)]) rows.kept.push_back(j);
    const auto n = static_cast<Index>(rows.kept.size());
    rows.keys.resize(n, keys.cols());
    rows.values.resize(n, values.cols());
    for (Index r = 0; r < n; ++r) {
      rows.keys.row(r) = keys.row(rows.kept[static_cast<std::size_t>(r)]);
      rows.values.row(r) = values.row(rows.kept[static_cast<std::size_t>(r)]);
    }
    return rows;
  }

  T scale_, a_;
};

}  // namespace attnlens
