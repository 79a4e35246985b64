// Absolute position encodings are added to the input tokens (docs/math.md section 3): row p of a
// table goes to token p of every sequence. Shared by the sinusoidal and learned encodings.
#pragma once

#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// x (B x L x E, or L x E) += table rows 0 .. L-1; the table must have E columns, >= L rows.
template <class T>
void add_absolute_positions(Tensor<T>& x, ConstMatrixRef<T> table) {
  const Index rank = x.rank();
  detail::require_shape(rank == 2 || rank == 3, "x", "rank 3 [B, L, E] or rank 2 [L, E]",
                        detail::shape_string(x.shape()));
  const Index L = x.dim(rank - 2), E = x.dim(rank - 1);
  detail::require_shape(table.cols() == E && table.rows() >= L, "position table",
                        detail::concat(">= ", L, " x ", E),
                        detail::concat(table.rows(), " x ", table.cols()));
  const Index batch = rank == 3 ? x.dim(0) : 1;
  for (Index b = 0; b < batch; ++b) {
    MatrixMap<T> sequence(x.data() + b * L * E, L, E);
    sequence += table.topRows(L);
  }
}

}  // namespace attnlens
