// Numerically stable row softmax (MATH.md section 1): subtract the row maximum, exponentiate,
// normalize. A row whose every entry is -inf (every key masked) becomes all zeros, never NaN.
#pragma once

#include <cmath>
#include <limits>

#include "attnlens/core/types.hpp"

namespace attnlens {

// In place: each row of scores becomes softmax(row). -inf entries get weight exactly 0.
template <class T>
void softmax_rows(MatrixRef<T> scores) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  for (Index i = 0; i < scores.rows(); ++i) {
    auto row = scores.row(i);
    const T row_max = row.maxCoeff();
    if (row_max == neg_inf) {
      row.setZero();
      continue;
    }
    // Eigen's vectorized exp clamps its argument, so exp(-inf) would be a tiny positive
    // number, not 0: masked entries are selected to exactly 0 instead.
    row = (row.array() == neg_inf).select(T(0), (row.array() - row_max).exp());
    row /= row.sum();
  }
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
