// The base of the 2-D relative score terms (quadratic, learned 2-D): a term b_h(delta) of the
// offset delta = p_j - p_i between a query's and a key's grid cells (docs/math.md section 3). A tile
// asks its subclass once per offset it spans, into a per-tile table, and adds from the table.
#pragma once

#include <algorithm>
#include <array>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/scratch.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

// Queries on one grid, keys on another (the same grid for self-attention).
template <class T>
class RelativeGridTerm : public ScoreTerm<T> {
 public:
  RelativeGridTerm(const Grid2d& queries, const Grid2d& keys) : queries_(queries), keys_(keys) {
    queries_.check("query grid");
    keys_.check("key grid");
  }

  const Grid2d& query_grid() const { return queries_; }
  const Grid2d& key_grid() const { return keys_; }

  void check(const ScoreShape& shape) const override {
    queries_.check_tokens(shape.queries, "queries on the query grid");
    keys_.check_tokens(shape.keys, "keys on the key grid");
    check_parameters(shape.heads);
  }

  void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const override {
    const Index rows = scores.rows(), cols = scores.cols();
    const Index first_query = std::max(tile.at.query_begin, queries_.leading);
    const Index first_key = std::max(tile.at.key_begin, keys_.leading);
    const Index query_end = tile.at.query_begin + rows, key_end = tile.at.key_begin + cols;
    if (first_query >= query_end || first_key >= key_end) return;
    const Box q = box(queries_, first_query, query_end), k = box(keys_, first_key, key_end);
    const Index row0 = k.row_min - q.row_max, col0 = k.col_min - q.col_max;
    MatrixMap<T> table = detail::scratch_matrix<T, 0>(k.row_max - q.row_min - row0 + 1,
                                                      k.col_max - q.col_min - col0 + 1);
    for (Index dr = 0; dr < table.rows(); ++dr)
      for (Index dc = 0; dc < table.cols(); ++dc)
        table(dr, dc) = bias(tile.at.head, row0 + dr, col0 + dc);
    const auto key_start = keys_.position(first_key);
    for (Index i = first_query; i < query_end; ++i) {
      const auto p_i = queries_.position(i);
      auto out = scores.row(i - tile.at.query_begin);
      // Walk the keys' cells in token order: no division per entry.
      Index dr = key_start[0] - p_i[0] - row0, col = key_start[1] - keys_.first_col;
      const Index col_offset = keys_.first_col - p_i[1] - col0;
      for (Index c = first_key - tile.at.key_begin; c < cols; ++c) {
        out[c] += table(dr, col + col_offset);
        if (++col == keys_.width) col = 0, ++dr;
      }
    }
  }

 protected:
  // Throws when the parameters do not fit `heads` heads or these grids.
  virtual void check_parameters(Index heads) const = 0;
  // b_head(delta_row, delta_col).
  virtual T bias(Index head, Index delta_row, Index delta_col) const = 0;

 private:
  struct Box {
    Index row_min, row_max, col_min, col_max;
  };
  // The cells of the grid tokens [first, end): a span of one grid row, or of whole rows.
  static Box box(const Grid2d& grid, Index first, Index end) {
    const auto a = grid.position(first), b = grid.position(end - 1);
    if (a[0] == b[0]) return {a[0], b[0], a[1], b[1]};
    return {a[0], b[0], grid.first_col, grid.first_col + grid.width - 1};
  }

  Grid2d queries_;
  Grid2d keys_;
};

}  // namespace attnlens
