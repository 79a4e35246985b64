// Boosting of order k (docs/math.md section 2): z_0 = F(y), z_{m+1} = z_m + F(y - z_m) for m < k,
// with the smoother F(X) = A X + value terms; order 1 is twicing. One driver for both engines.
#pragma once

#include <cstddef>
#include <vector>

#include "attnlens/core/parallel.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// Receives nothing: boosting without a record of its iterates.
struct NoIterates {
  template <class Z>
  void operator()(Index, Index, const Z&) const {}
};

// out_at(t) = z_order for each of `count` heads, y = values_at(t) (L x dv each). A pass
// smooth(input_at, target_at) sets target_at(t) = F(input_at(t)) for every head t; the driver
// calls it order + 1 times, first on the values, then on the residuals y - z_m. record(m, t,
// z_m) sees each iterate z_0 .. z_{order-1} of head t before the step that follows it (what a
// backward pass through the iteration needs; z_order is the output).
template <class T, class ValuesAt, class OutAt, class Smooth, class Record = NoIterates>
void boosted_smoothing(Index count, Index order, ValuesAt&& values_at, OutAt&& out_at,
                       Smooth&& smooth, const ParallelOptions& parallel, Record&& record = {}) {
  smooth(values_at, out_at);
  if (order == 0 || count == 0) return;
  const Index rows = out_at(0).rows(), cols = out_at(0).cols();
  std::vector<Matrix<T>> residual(static_cast<std::size_t>(count), Matrix<T>(rows, cols));
  std::vector<Matrix<T>> correction(static_cast<std::size_t>(count), Matrix<T>(rows, cols));
  const auto at = [](std::vector<Matrix<T>>& v, Index t) -> Matrix<T>& {
    return v[static_cast<std::size_t>(t)];
  };
  for (Index step = 0; step < order; ++step) {
    parallel_for(
        count,
        [&](Index t) {
          record(step, t, out_at(t));
          at(residual, t) = values_at(t) - out_at(t);
        },
        parallel);
    smooth([&](Index t) { return ConstMatrixRef<T>(at(residual, t)); },
           [&](Index t) { return MatrixRef<T>(at(correction, t)); });
    parallel_for(
        count, [&](Index t) { out_at(t) += at(correction, t); }, parallel);
  }
}

}  // namespace attnlens
