// Distance kernels: the spatial (domain) factor of bilateral self-attention (docs/math.md section
// 2), S_h(i,j) += -|p_i - p_j|^2 / (2 sigma_h^2) (Gaussian) or -|p_i - p_j|_1 / sigma_h
// (Laplacian), on 1-D positions p_i = i or on the cells of a Grid2d. Tokens without a position get
// term 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/softplus.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

enum class DistanceKernelType {
  gaussian,   // -|p_i - p_j|^2 / (2 sigma^2)
  laplacian,  // -|p_i - p_j|_1 / sigma (ALiBi with slope 1/sigma on 1-D positions)
};

struct DistanceKernelOptions {
  DistanceKernelType type = DistanceKernelType::gaussian;
  // Set: tokens are the grid's cells (after grid->leading tokens without a position), for
  // queries and keys alike. None: 1-D positions p_i = i - leading.
  std::optional<Grid2d> grid = {};
  Index leading = 0;  // 1-D only: tokens 0 .. leading-1 have no position (a CLS token)
};

template <class T>
class DistanceKernel final : public ScoreTerm<T> {
 public:
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<DistanceKernel>(*this);
  }
  // The widths, learned directly when the kernel is attached to a module (bilateral attention
  // learns them through rho instead, attention/variant.hpp).
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "sigma", sigma);
  }

  // sigma: one width per head, > 0 (+infinity gives term 0: plain attention).
  DistanceKernel(const DistanceKernelOptions& options, Vector<T> sigma_per_head)
      : sigma(std::move(sigma_per_head)), options_(options) {
    if (options_.grid) options_.grid->check("DistanceKernelOptions::grid");
    detail::require_argument(options_.leading >= 0, "DistanceKernelOptions::leading", ">= 0",
                             options_.leading);
    detail::require_argument(!(options_.grid && options_.leading != 0),
                             "DistanceKernelOptions::leading", "0 with a grid (use grid->leading)",
                             options_.leading);
  }

  const DistanceKernelOptions& options() const { return options_; }

  void check(const ScoreShape& shape) const override {
    detail::require_shape(sigma.size() == shape.heads, "DistanceKernel sigma",
                          detail::concat(shape.heads, " (one per head)"),
                          detail::concat(sigma.size()));
    for (Index h = 0; h < sigma.size(); ++h)
      detail::require_argument(sigma[h] > T(0), detail::concat("DistanceKernel sigma[", h, "]"),
                               "> 0", sigma[h]);
    if (options_.grid) {
      options_.grid->check_tokens(shape.queries, "queries of a 2-D DistanceKernel");
      options_.grid->check_tokens(shape.keys, "keys of a 2-D DistanceKernel");
    }
  }

  void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const override {
    const T s = sigma[tile.at.head];
    const T coefficient = gaussian() ? T(1) / (T(2) * s * s) : T(1) / s;
    if (coefficient == T(0)) return;
    // A width so small that the coefficient overflows gives its limit, the identity filter:
    // a token's own position adds 0 (not 0 * inf = NaN), every other -inf.
    for_each_distance(tile.at, scores.rows(), scores.cols(), [&](Index r, Index c, T distance) {
      if (distance != T(0)) scores(r, c) -= coefficient * distance;
    });
  }

  // The term is -D / (2 sigma^2) (Gaussian, D the squared distance) or -D / sigma (Laplacian):
  // d/dsigma = D / sigma^3 or D / sigma^2. An infinite sigma (plain attention) gets 0.
  void add_backward(const ScoreTile<T>& tile, ConstMatrixRef<T> dscores,
                    ScoreTileGradient<T>& gradient) const override {
    auto* into = detail::gradient_as<DistanceKernel>(gradient.parameters);
    if (!into) return;
    const T s = sigma[tile.at.head];
    const T coefficient = gaussian() ? T(1) / (s * s * s) : T(1) / (s * s);
    if (coefficient == T(0)) return;
    T sum = 0;
    for_each_distance(tile.at, dscores.rows(), dscores.cols(),
                      [&](Index r, Index c, T distance) { sum += dscores(r, c) * distance; });
    into->sigma[tile.at.head] += coefficient * sum;
  }

  Vector<T> sigma;  // sigma_h, one per head

 private:
  bool gaussian() const { return options_.type == DistanceKernelType::gaussian; }

  // visit(r, c, D) for every entry of a rows x cols tile at `at` whose query and key have
  // positions, D = |p_i - p_j|^2 (Gaussian) or |p_i - p_j|_1 (Laplacian).
  template <class Visit>
  void for_each_distance(const TileCoords& at, Index rows, Index cols, const Visit& visit) const {
    const auto distance = [&](Index dr, Index dc) {
      return gaussian() ? static_cast<T>(dr * dr + dc * dc)
                        : static_cast<T>(std::abs(dr) + std::abs(dc));
    };
    if (options_.grid) {
      const Grid2d& grid = *options_.grid;
      const Index first = std::clamp<Index>(grid.leading - at.key_begin, 0, cols);
      if (first == cols) return;
      const auto start = grid.position(at.key_begin + first);
      for (Index r = 0; r < rows; ++r) {
        const Index i = at.query_begin + r;
        if (!grid.has_position(i)) continue;
        const auto p_i = grid.position(i);
        // Walk the keys' cells in token order: no division per entry.
        Index dr = start[0] - p_i[0], col = start[1] - grid.first_col;
        for (Index c = first; c < cols; ++c) {
          visit(r, c, distance(dr, grid.first_col + col - p_i[1]));
          if (++col == grid.width) col = 0, ++dr;
        }
      }
      return;
    }
    const Index leading = options_.leading;
    for (Index r = 0; r < rows; ++r) {
      const Index i = at.query_begin + r;
      if (i < leading) continue;
      for (Index c = std::max<Index>(0, leading - at.key_begin); c < cols; ++c)
        visit(r, c, distance(at.key_begin + c - i, 0));
    }
  }

  DistanceKernelOptions options_;
};

}  // namespace attnlens
