// The base of the 2-D relative score terms (quadratic, learned 2-D): a term b_h(delta) of the
// offset delta = p_j - p_i between a query's and a key's grid cells (docs/math.md section 3). A
// tile asks its subclass once per offset it spans, into a per-tile table, and adds from the table.
#pragma once

#include <algorithm>
#include <array>
#include <optional>

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
    const std::optional<Offsets> offsets = tile_offsets(tile.at, scores.rows(), scores.cols());
    if (!offsets) return;
    MatrixMap<T> table = detail::scratch_matrix<T, 0>(offsets->rows, offsets->cols);
    for (Index dr = 0; dr < table.rows(); ++dr)
      for (Index dc = 0; dc < table.cols(); ++dc)
        table(dr, dc) = bias(tile.at.head, offsets->row0 + dr, offsets->col0 + dc);
    for_each_entry(tile.at, scores.cols(), *offsets,
                   [&](Index r, Index c, Index dr, Index dc) { scores(r, c) += table(dr, dc); });
  }

  // The score gradients are summed per offset, into the same kind of table, and handed to the
  // subclass's add_bias_gradients.
  void add_backward(const ScoreTile<T>& tile, ConstMatrixRef<T> dscores,
                    ScoreTileGradient<T>& gradient) const override {
    if (!gradient.parameters) return;
    const std::optional<Offsets> offsets = tile_offsets(tile.at, dscores.rows(), dscores.cols());
    if (!offsets) return;
    MatrixMap<T> table = detail::scratch_matrix<T, 0>(offsets->rows, offsets->cols);
    table.setZero();
    for_each_entry(tile.at, dscores.cols(), *offsets,
                   [&](Index r, Index c, Index dr, Index dc) { table(dr, dc) += dscores(r, c); });
    add_bias_gradients(tile.at.head, offsets->row0, offsets->col0, table, *gradient.parameters);
  }

 protected:
  // Throws when the parameters do not fit `heads` heads or these grids.
  virtual void check_parameters(Index heads) const = 0;
  // b_head(delta_row, delta_col).
  virtual T bias(Index head, Index delta_row, Index delta_col) const = 0;
  // gradient's parameters += d/dtheta of sum over the table of g(r, c) b_head(row0 + r, col0 + c),
  // for g the summed score gradients of each offset; gradient is a factor of the subclass's type.
  virtual void add_bias_gradients(Index head, Index row0, Index col0, ConstMatrixRef<T> g,
                                  KernelFactor<T>& gradient) const = 0;

 private:
  // The offsets a tile spans: delta = (row0 + dr, col0 + dc) for dr < rows, dc < cols.
  struct Offsets {
    Index first_query, query_end, first_key;
    Index row0, col0, rows, cols;
  };
  std::optional<Offsets> tile_offsets(const TileCoords& at, Index rows, Index cols) const {
    const Index first_query = std::max(at.query_begin, queries_.leading);
    const Index first_key = std::max(at.key_begin, keys_.leading);
    const Index query_end = at.query_begin + rows, key_end = at.key_begin + cols;
    if (first_query >= query_end || first_key >= key_end) return std::nullopt;
    const Box q = box(queries_, first_query, query_end), k = box(keys_, first_key, key_end);
    const Index row0 = k.row_min - q.row_max, col0 = k.col_min - q.col_max;
    return Offsets{first_query,
                   query_end,
                   first_key,
                   row0,
                   col0,
                   k.row_max - q.row_min - row0 + 1,
                   k.col_max - q.col_min - col0 + 1};
  }
  // visit(r, c, dr, dc) for every tile entry whose query and key have cells: (dr, dc) is its
  // offset's place in the table.
  template <class Visit>
  void for_each_entry(const TileCoords& at, Index cols, const Offsets& o,
                      const Visit& visit) const {
    const auto key_start = keys_.position(o.first_key);
    for (Index i = o.first_query; i < o.query_end; ++i) {
      const auto p_i = queries_.position(i);
      // Walk the keys' cells in token order: no division per entry.
      Index dr = key_start[0] - p_i[0] - o.row0, col = key_start[1] - keys_.first_col;
      const Index col_offset = keys_.first_col - p_i[1] - o.col0;
      for (Index c = o.first_key - at.key_begin; c < cols; ++c) {
        visit(i - at.query_begin, c, dr, col + col_offset);
        if (++col == keys_.width) col = 0, ++dr;
      }
    }
  }

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
