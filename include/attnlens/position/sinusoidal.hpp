// Sinusoidal absolute encodings (docs/math.md section 3): Vaswani et al.'s interleaved table
// PE(p, 2c) = sin(p / base^(2c/E)), PE(p, 2c+1) = cos(...), and its 2-D form for patch grids
// (ViT/MAE style): the first E/2 channels encode the row, the last E/2 the column.
#pragma once

#include <cmath>
#include <type_traits>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/position/absolute.hpp"

namespace attnlens {

namespace detail {

// Writes the encoding of `position` into `row` (even length): sin and cos of channel pair c
// at 2c, 2c+1 (interleaved, Vaswani) or at c, c + dim/2 (concatenated [sin | cos], as
// tensor2tensor and Transformer-XL). Computed in double and rounded once, so float tables
// are the correctly rounded double ones.
template <class Row>
void write_sinusoid(Row&& row, double position, double base, bool concatenated = false) {
  using T = typename std::decay_t<Row>::Scalar;
  const Index dim = row.size(), half = dim / 2;
  for (Index c = 0; c < half; ++c) {
    const double angle =
        position / std::pow(base, static_cast<double>(2 * c) / static_cast<double>(dim));
    row[concatenated ? c : 2 * c] = static_cast<T>(std::sin(angle));
    row[concatenated ? c + half : 2 * c + 1] = static_cast<T>(std::cos(angle));
  }
}

inline void check_sinusoid_options(Index embed_dim, Index multiple, double base) {
  require_argument(embed_dim > 0 && embed_dim % multiple == 0, "embed_dim",
                   concat("a positive multiple of ", multiple), embed_dim);
  require_argument(base > 1.0, "base", "> 1", base);
}

}  // namespace detail

// length x embed_dim table, row p = PE(p).
template <class T>
Matrix<T> sinusoidal_encoding(Index length, Index embed_dim, double base = 10000.0) {
  detail::require_argument(length >= 0, "length", ">= 0", length);
  detail::check_sinusoid_options(embed_dim, 2, base);
  Matrix<T> table(length, embed_dim);
  for (Index p = 0; p < length; ++p)
    detail::write_sinusoid(table.row(p), static_cast<double>(p), base);
  return table;
}

// grid.tokens() x embed_dim table: zero rows for the leading tokens (CLS), then for each grid
// token the interleaved encoding of its row in channels [0, E/2) and of its column in
// [E/2, E). (MAE writes each half as [sin | cos] and puts the column first; this table keeps
// Vaswani's interleaving in both halves.)
template <class T>
Matrix<T> sinusoidal_encoding_2d(const Grid2d& grid, Index embed_dim, double base = 10000.0) {
  grid.check("grid");
  detail::check_sinusoid_options(embed_dim, 4, base);
  const Index half = embed_dim / 2;
  Matrix<T> table = Matrix<T>::Zero(grid.tokens(), embed_dim);
  for (Index t = grid.leading; t < grid.tokens(); ++t) {
    const auto [row, col] = grid.position(t);
    detail::write_sinusoid(table.row(t).head(half), static_cast<double>(row), base);
    detail::write_sinusoid(table.row(t).tail(half), static_cast<double>(col), base);
  }
  return table;
}

}  // namespace attnlens
