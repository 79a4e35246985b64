// Shaw et al. 2018 relative positions (docs/math.md section 3): clipped offsets c(j - i) =
// clip(j - i, -k, k) index a key table and a value table shared by the heads,
// e_ij = q_i.(k_j + a^K_c) / sqrt(d) and z_i = sum_j A_ij (v_j + a^V_c). One object is both
// the score term and the value term: register it in score_terms and value_terms.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/kernel/value_term.hpp"

namespace attnlens {

struct ShawOptions {
  Index head_dim = 0;
  Index max_relative_position = 0;  // k: offsets beyond +-k share the end rows
};

template <class T>
class ShawRelativePosition final : public ScoreTerm<T>, public ValueTerm<T> {
 public:
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<ShawRelativePosition>(*this);
  }
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "relative_keys", relative_keys);
    visit(prefix + "relative_values", relative_values);
  }

  // Zero tables of the right shapes: load them or call reset_parameters().
  explicit ShawRelativePosition(const ShawOptions& options) {
    detail::require_argument(options.head_dim > 0, "ShawOptions::head_dim", "> 0",
                             options.head_dim);
    detail::require_argument(options.max_relative_position >= 0,
                             "ShawOptions::max_relative_position", ">= 0",
                             options.max_relative_position);
    const Index rows =
        detail::checked_side(options.max_relative_position, "ShawOptions::max_relative_position");
    relative_keys = Matrix<T>::Zero(rows, options.head_dim);
    relative_values = Matrix<T>::Zero(rows, options.head_dim);
  }

  // Shaw et al. initialise the tables like embeddings: N(0, 1).
  void reset_parameters(Rng& rng) override {
    init::normal(relative_keys, rng);
    init::normal(relative_values, rng);
  }

  Index max_relative_position() const { return (relative_keys.rows() - 1) / 2; }
  // Table row of the offset j - i.
  Index row_of(Index offset) const {
    const Index k = max_relative_position();
    return std::clamp(offset, -k, k) + k;
  }

  // Score term: the tables' rows must be as wide as the query/key heads.
  void check(const ScoreShape& shape) const override {
    detail::require_shape(relative_keys.rows() % 2 == 1, "ShawRelativePosition relative_keys",
                          "2k + 1 rows", detail::concat(relative_keys.rows(), " rows"));
    detail::require_matrix(relative_keys, relative_keys.rows(), shape.head_dim,
                           "ShawRelativePosition relative_keys (2k+1 x head_dim)");
  }

  // scores(r, c) += q_i.a^K_{c(j-i)} / sqrt(d): one dot product per table row and query.
  void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const override {
    const T scale = T(1) / std::sqrt(static_cast<T>(tile.queries.cols()));
    for (Index r = 0; r < scores.rows(); ++r) {
      const Index i = tile.at.query_begin + r;
      for (Index c = 0; c < scores.cols(); ++c)
        scores(r, c) +=
            scale * tile.queries.row(r).dot(relative_keys.row(row_of(tile.at.key_begin + c - i)));
    }
  }

  // dq_i += sum_j dS_ij a^K_c(j-i) / sqrt(d) and da^K_c += sum over the entries of c of
  // dS_ij q_i / sqrt(d): the score gradients of each row are first summed per table row.
  void add_backward(const ScoreTile<T>& tile, ConstMatrixRef<T> dscores,
                    ScoreTileGradient<T>& gradient) const override {
    auto* into = detail::gradient_as<ShawRelativePosition>(gradient.parameters);
    const T scale = T(1) / std::sqrt(static_cast<T>(tile.queries.cols()));
    RowVector<T> per_row(relative_keys.rows());
    for (Index r = 0; r < dscores.rows(); ++r) {
      per_row.setZero();
      const Index i = tile.at.query_begin + r;
      for (Index c = 0; c < dscores.cols(); ++c)
        per_row[row_of(tile.at.key_begin + c - i)] += dscores(r, c);
      gradient.queries.row(r).noalias() += scale * per_row * relative_keys;
      if (into) into->relative_keys.noalias() += scale * per_row.transpose() * tile.queries.row(r);
    }
  }

  // Value term: relative_values must be as wide as the value heads.
  void check(const ScoreShape&, Index value_dim) const override {
    detail::require_matrix(relative_values, relative_keys.rows(), value_dim,
                           "ShawRelativePosition relative_values (2k+1 x value_dim)");
  }

  // out(r, :) += sum_c weights(r, c) a^V_{c(j-i)}: the weights of each row are first summed
  // per table row, so the cost is O(rows * (cols + (2k+1) dv)).
  void add(const TileCoords& at, ConstMatrixRef<T> weights, MatrixRef<T> out) const override {
    RowVector<T> per_row(relative_values.rows());
    for (Index r = 0; r < weights.rows(); ++r) {
      per_row.setZero();
      const Index i = at.query_begin + r;
      for (Index c = 0; c < weights.cols(); ++c)
        per_row[row_of(at.key_begin + c - i)] += weights(r, c);
      out.row(r).noalias() += per_row * relative_values;
    }
  }

  // dweights(r, c) += dout_r.a^V_c(j-i), da^V_c += sum over the entries of c of w_rc dout_r.
  void add_backward(const TileCoords& at, ConstMatrixRef<T> weights, ConstMatrixRef<T> dout,
                    MatrixRef<T> dweights, KernelFactor<T>* parameters) const override {
    auto* into = detail::gradient_as<ShawRelativePosition>(parameters);
    RowVector<T> per_row(relative_values.rows());
    for (Index r = 0; r < weights.rows(); ++r) {
      const Index i = at.query_begin + r;
      const Vector<T> projected = relative_values * dout.row(r).transpose();  // a^V_c . dout_r
      for (Index c = 0; c < weights.cols(); ++c)
        dweights(r, c) += projected[row_of(at.key_begin + c - i)];
      if (!into) continue;
      per_row.setZero();
      for (Index c = 0; c < weights.cols(); ++c)
        per_row[row_of(at.key_begin + c - i)] += weights(r, c);
      into->relative_values.noalias() += per_row.transpose() * dout.row(r);
    }
  }

  Matrix<T> relative_keys;    // (2k+1) x d: a^K, row c(j-i) + k
  Matrix<T> relative_values;  // (2k+1) x dv: a^V
};

}  // namespace attnlens
