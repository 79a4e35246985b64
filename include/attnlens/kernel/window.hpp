// Local windows: a support that limits each query to the keys near it, |j - i| <= radius on a
// sequence or |dr|, |dc| <= radius on a 2-D grid (the search window of a bilateral filter or
// non-local means, docs/architecture.md). Engines enumerate the key ranges a query tile can
// reach, so the cost is proportional to the window, not to L x S.
#pragma once

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

struct LocalWindow {
  Index radius = -1;           // < 0: no window, every key is in the support
  std::optional<Grid2d> grid;  // none: 1-D positions; set: tokens are the grid's cells
  bool active() const { return radius >= 0; }
};

namespace detail {

// (row, col) of a grid token; tokens before the grid (a CLS token) have no position.
inline std::pair<Index, Index> grid_cell(const Grid2d& grid, Index token) {
  const Index cell = token - grid.leading;
  return {cell / grid.width, cell % grid.width};
}

// The radius clamped to `reach`, the largest distance between two tokens of the problem: a
// larger radius is the same (global) window, and the clamped one keeps i - R and i + R from
// overflowing.
inline Index radius_within(const LocalWindow& window, Index reach) {
  return std::min(window.radius, reach);
}

}  // namespace detail

// Throws unless the window can serve a self-attention problem of this shape. A 2-D window
// puts queries and keys on the same grid; tokens without a position see and are seen by all.
inline void check_window(const LocalWindow& window, const ScoreShape& shape) {
  if (!window.active()) return;
  if (!window.grid) return;
  window.grid->check("LocalWindow::grid");
  window.grid->check_tokens(shape.queries, "queries of a 2-D LocalWindow");
  window.grid->check_tokens(shape.keys, "keys of a 2-D LocalWindow");
}

// Query tiles of at most `tile` rows. Under a 2-D window a tile never crosses a grid row, so
// the keys it can reach form one contiguous range per grid row.
class QueryTiling {
 public:
  QueryTiling(const LocalWindow& window, Index queries, Index tile) : queries_(queries) {
    detail::require_argument(tile > 0, "query tile", "> 0", tile);
    tile = std::min(tile, std::max<Index>(queries, 1));  // and (queries + tile - 1) fits
    if (window.active() && window.grid) {
      leading_ = window.grid->leading;
      width_ = window.grid->width;
      tile_ = std::min(tile, width_);
      per_row_ = (width_ + tile_ - 1) / tile_;
      leading_tiles_ = (leading_ + tile_ - 1) / tile_;
      count_ = leading_tiles_ + window.grid->height * per_row_;
    } else {
      tile_ = tile;
      count_ = (queries + tile - 1) / tile;
    }
  }

  Index count() const { return count_; }
  Index max_rows() const { return tile_; }

  // [begin, end) of tile t.
  std::pair<Index, Index> operator[](Index t) const {
    if (width_ == 0) return {t * tile_, std::min(queries_, (t + 1) * tile_)};
    if (t < leading_tiles_) return {t * tile_, std::min(leading_, (t + 1) * tile_)};
    const Index row = (t - leading_tiles_) / per_row_, part = (t - leading_tiles_) % per_row_;
    const Index first = leading_ + row * width_;
    return {first + part * tile_, first + std::min(width_, (part + 1) * tile_)};
  }

 private:
  Index queries_ = 0, tile_ = 1, count_ = 0;
  Index leading_ = 0, width_ = 0, per_row_ = 0, leading_tiles_ = 0;
};

// Calls visit(j0, j1) for disjoint, increasing key ranges inside [0, key_end) that cover every
// key the queries [query_begin, query_end) of one tile (see QueryTiling) may attend. The
// ranges may hold keys outside some query's window: apply_window masks those.
template <class Visit>
void for_each_key_range(const LocalWindow& window, Index query_begin, Index query_end,
                        Index key_end, Visit&& visit) {
  const auto clipped = [&](Index j0, Index j1) {
    j0 = std::max<Index>(j0, 0);
    j1 = std::min(j1, key_end);
    if (j0 < j1) visit(j0, j1);
  };
  if (!window.active()) return clipped(0, key_end);
  if (!window.grid) {
    const Index R = detail::radius_within(window, std::max(query_end, key_end));
    return clipped(query_begin - R, query_end + R);
  }
  const Grid2d& grid = *window.grid;
  const Index R = detail::radius_within(window, std::max(grid.height, grid.width));
  if (!grid.has_position(query_begin)) return clipped(0, key_end);
  clipped(0, grid.leading);
  const auto [row, col_begin] = detail::grid_cell(grid, query_begin);
  const Index col_end = col_begin + (query_end - query_begin);
  for (Index r = std::max<Index>(row - R, 0); r <= std::min(row + R, grid.height - 1); ++r) {
    const Index first = grid.leading + r * grid.width;
    clipped(first + std::max<Index>(col_begin - R, 0), first + std::min(col_end + R, grid.width));
  }
}

// Sets to -inf the entries of a tile of scores whose key is outside its query's window.
template <class T>
void apply_window(const LocalWindow& window, const TileCoords& at, MatrixRef<T> scores) {
  if (!window.active()) return;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index cols = scores.cols();
  const Index R = detail::radius_within(
      window, window.grid ? std::max(window.grid->height, window.grid->width)
                          : std::max(at.query_begin + scores.rows(), at.key_begin + cols));
  for (Index r = 0; r < scores.rows(); ++r) {
    const Index i = at.query_begin + r;
    if (!window.grid) {  // keep c with |key_begin + c - i| <= R
      const Index keep_begin = std::clamp<Index>(i - R - at.key_begin, 0, cols);
      const Index keep_end = std::clamp<Index>(i + R + 1 - at.key_begin, 0, cols);
      scores.row(r).head(keep_begin).setConstant(neg_inf);
      scores.row(r).tail(cols - std::max(keep_begin, keep_end)).setConstant(neg_inf);
      continue;
    }
    const Grid2d& grid = *window.grid;
    if (!grid.has_position(i)) continue;
    const auto [ri, ci] = detail::grid_cell(grid, i);
    if (at.key_begin >= grid.leading && cols > 0) {
      const auto [first_row, first_col] = detail::grid_cell(grid, at.key_begin);
      if (first_col + cols <= grid.width) {
        // The block lies in one grid row (as the ranges of for_each_key_range do): the window
        // keeps one contiguous run of it.
        if (std::abs(first_row - ri) > R) {
          scores.row(r).setConstant(neg_inf);
          continue;
        }
        const Index keep_begin = std::clamp<Index>(ci - R - first_col, 0, cols);
        const Index keep_end = std::clamp<Index>(ci + R + 1 - first_col, 0, cols);
        scores.row(r).head(keep_begin).setConstant(neg_inf);
        scores.row(r).tail(cols - std::max(keep_begin, keep_end)).setConstant(neg_inf);
        continue;
      }
    }
    // Walk the keys' cells incrementally: one division per row, not per entry.
    Index c = std::clamp<Index>(grid.leading - at.key_begin, 0, cols);
    if (c == cols) continue;
    auto [rj, cj] = detail::grid_cell(grid, at.key_begin + c);
    for (; c < cols; ++c) {
      if (std::abs(rj - ri) > R || std::abs(cj - ci) > R) scores(r, c) = neg_inf;
      if (++cj == grid.width) cj = 0, ++rj;
    }
  }
}

}  // namespace attnlens
