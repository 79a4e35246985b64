// Token grids for 2-D position encodings: tokens are pixels or patches of an H x W grid in
// row-major order, after `leading` tokens without a position (a CLS token), which get domain
// term 0 (MATH.md section 2, bilateral attention). RelativeGridTerm is the base of the 2-D
// relative score terms: it walks a tile and asks its subclass for b_h(delta).
#pragma once

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>

#include "attnlens/attention/score_term.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

struct Grid2d {
  Index height = 0;
  Index width = 0;
  Index leading = 0;  // tokens before the grid that have no position
  // Position of the first grid token: (-1, -1) puts a one-pixel zero-padding border around
  // an image whose pixels sit at (0, 0) .. (H-1, W-1).
  Index first_row = 0;
  Index first_col = 0;

  Index tokens() const { return leading + height * width; }
  bool has_position(Index token) const { return token >= leading; }
  // (row, col) of a grid token (token >= leading).
  std::array<Index, 2> position(Index token) const {
    const Index cell = token - leading;
    return {first_row + cell / width, first_col + cell % width};
  }

  // Throws ArgumentError for negative or empty extents, naming `what`.
  void check(const std::string& what) const {
    detail::require_argument(height > 0 && width > 0, what + " height x width", ">= 1 x 1",
                             detail::concat(height, " x ", width));
    detail::require_argument(leading >= 0, what + ".leading", ">= 0", leading);
  }
  // Throws ShapeError unless the grid holds `count` tokens.
  void check_tokens(Index count, const std::string& what) const {
    detail::require_shape(
        tokens() == count, what,
        detail::concat(tokens(), " tokens (", leading, " + ", height, " x ", width, ")"),
        detail::concat(count, " tokens"));
  }
};

// The largest |delta_row| and |delta_col| between a query of one grid and a key of another.
inline std::array<Index, 2> max_grid_offsets(const Grid2d& queries, const Grid2d& keys) {
  const auto span = [](Index q0, Index qn, Index k0, Index kn) {
    return std::max(std::abs(k0 + kn - 1 - q0), std::abs(q0 + qn - 1 - k0));
  };
  return {span(queries.first_row, queries.height, keys.first_row, keys.height),
          span(queries.first_col, queries.width, keys.first_col, keys.width)};
}

// A score term b_h(delta) of the 2-D offset delta = p_j - p_i (key minus query) between
// queries on one grid and keys on another (the same grid for self-attention).
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
    const Index head = tile.at.head;
    for (Index r = 0; r < scores.rows(); ++r) {
      const Index i = tile.at.query_begin + r;
      if (!queries_.has_position(i)) continue;
      const auto p_i = queries_.position(i);
      for (Index c = 0; c < scores.cols(); ++c) {
        const Index j = tile.at.key_begin + c;
        if (!keys_.has_position(j)) continue;
        const auto p_j = keys_.position(j);
        scores(r, c) += bias(head, p_j[0] - p_i[0], p_j[1] - p_i[1]);
      }
    }
  }

 protected:
  // Throws when the parameters do not fit `heads` heads or these grids.
  virtual void check_parameters(Index heads) const = 0;
  // b_head(delta_row, delta_col).
  virtual T bias(Index head, Index delta_row, Index delta_col) const = 0;

 private:
  Grid2d queries_;
  Grid2d keys_;
};

namespace detail {

// Checks that a per-head parameter has one row per head.
template <class Mat>
void require_heads(const Mat& parameter, Index heads, const std::string& what) {
  require_shape(parameter.rows() == heads, what, concat(heads, " rows (one per head)"),
                concat(parameter.rows(), " rows"));
}

}  // namespace detail
}  // namespace attnlens
