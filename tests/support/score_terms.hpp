// Test helpers for position encodings: evaluate a score term over a whole problem, tile by
// tile with odd tile sizes (so a term that assumed the tile is the full matrix fails), and
// pick the float or double positions fixture.
#pragma once

#include <algorithm>
#include <string>
#include <type_traits>

#include "attnlens/kernel/score_term.hpp"
#include "attnlens/core/tensor.hpp"
#include "support/expect_error.hpp"
#include "support/fixtures.hpp"

namespace attnlens::testing {

// H x L x S: the bias b_h(i, j) the term adds to zero scores (batch 0), built from tiles of
// at most tile_rows x tile_cols. Queries and keys given to the term are L x d and S x d.
template <class T>
Tensor<T> term_bias(const ScoreTerm<T>& term, Index heads, Index queries, Index keys,
                    Index tile_rows = 3, Index tile_cols = 4, const Matrix<T>* q = nullptr,
                    const Matrix<T>* k = nullptr, Index head_for_qk = -1) {
  term.check({1, heads, queries, keys, q ? q->cols() : 0});
  Tensor<T> bias({heads, queries, keys});
  const Matrix<T> no_q = Matrix<T>::Zero(queries, 1), no_k = Matrix<T>::Zero(keys, 1);
  for (Index h = 0; h < heads; ++h) {
    if (head_for_qk >= 0 && h != head_for_qk) continue;
    const Matrix<T>& qm = q ? *q : no_q;
    const Matrix<T>& km = k ? *k : no_k;
    for (Index i0 = 0; i0 < queries; i0 += tile_rows)
      for (Index j0 = 0; j0 < keys; j0 += tile_cols) {
        const Index rows = std::min(tile_rows, queries - i0), cols = std::min(tile_cols, keys - j0);
        Matrix<T> tile = Matrix<T>::Zero(rows, cols);
        term.add(ScoreTile<T>{{0, h, i0, j0}, qm.middleRows(i0, rows), km.middleRows(j0, cols)},
                 tile);
        bias.matrix({h}).block(i0, j0, rows, cols) = tile;
      }
  }
  return bias;
}

template <class T>
io::SafeTensors load_positions_fixture() {
  return load_fixture(std::is_same_v<T, float> ? "positions_f32.safetensors"
                                               : "positions_f64.safetensors");
}

}  // namespace attnlens::testing
