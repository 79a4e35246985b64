// Token grids: tokens are pixels or patches of an H x W grid in row-major order, after
// `leading` tokens without a position (a CLS token), which get domain term 0 (docs/math.md
// section 2, bilateral attention). Plain geometry, shared by windows and 2-D encodings.
#pragma once

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>

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

}  // namespace attnlens
