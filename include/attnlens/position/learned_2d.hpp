// Learned 2-D relative positions (Bello et al. 2019, as in Cordonnier et al.; docs/math.md
// section 3): row and column offset tables with 2 * max_position - 1 rows and a per-head key
// for each, S_h(i,j) += w_row_h.r^row_{delta_1} + w_col_h.r^col_{delta_2}. Without the content
// term it is positional-only attention (MultiHeadAttentionOptions::content = false).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/position/relative_grid_term.hpp"

namespace attnlens {

struct LearnedRelative2dOptions {
  Index num_heads = 1;
  Index max_position = 0;  // offsets -(max_position-1) .. max_position-1 per axis
  Index dim = 0;           // width of a table row
  Grid2d queries;
  std::optional<Grid2d> keys = std::nullopt;  // default: the query grid (self-attention)
};

// Parameter names follow Cordonnier et al.'s code: row_embeddings / col_embeddings
// (nn.Embedding weights) and head_keys_row / head_keys_col (nn.Linear weights, H x dim).
template <class T>
class LearnedRelative2d final : public RelativeGridTerm<T> {
 public:
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<LearnedRelative2d>(*this);
  }
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "row_embeddings.weight", row_embeddings);
    visit(prefix + "col_embeddings.weight", col_embeddings);
    visit(prefix + "head_keys_row.weight", head_keys_row);
    visit(prefix + "head_keys_col.weight", head_keys_col);
  }

  // Zero parameters of the right shapes: load them or call reset_parameters().
  explicit LearnedRelative2d(const LearnedRelative2dOptions& options)
      : RelativeGridTerm<T>(options.queries, options.keys.value_or(options.queries)) {
    detail::require_argument(options.num_heads > 0, "LearnedRelative2dOptions::num_heads", "> 0",
                             options.num_heads);
    detail::require_argument(options.max_position > 0, "LearnedRelative2dOptions::max_position",
                             "> 0", options.max_position);
    detail::require_argument(options.dim > 0, "LearnedRelative2dOptions::dim", "> 0", options.dim);
    const Index offsets = 2 * options.max_position - 1;
    row_embeddings = Matrix<T>::Zero(offsets, options.dim);
    col_embeddings = Matrix<T>::Zero(offsets, options.dim);
    head_keys_row = Matrix<T>::Zero(options.num_heads, options.dim);
    head_keys_col = Matrix<T>::Zero(options.num_heads, options.dim);
  }

  // nn.Embedding (N(0, 1)) and nn.Linear (U(+-1/sqrt(dim))) initialisation.
  void reset_parameters(Rng& rng) override {
    init::normal(row_embeddings, rng);
    init::normal(col_embeddings, rng);
    init::linear_uniform(head_keys_row, dim(), rng);
    init::linear_uniform(head_keys_col, dim(), rng);
  }

  Index max_position() const { return (row_embeddings.rows() + 1) / 2; }
  Index dim() const { return row_embeddings.cols(); }

  Matrix<T> row_embeddings;  // (2 max_position - 1) x dim, row delta + max_position - 1
  Matrix<T> col_embeddings;  // (2 max_position - 1) x dim
  Matrix<T> head_keys_row;   // H x dim
  Matrix<T> head_keys_col;   // H x dim

 protected:
  void check_parameters(Index heads) const override {
    const Index offsets = row_embeddings.rows();
    detail::require_shape(offsets % 2 == 1, "LearnedRelative2d row_embeddings",
                          "an odd number of rows (2 max_position - 1)",
                          detail::concat(offsets, " rows"));
    detail::require_matrix(col_embeddings, offsets, dim(), "LearnedRelative2d col_embeddings");
    detail::require_matrix(head_keys_row, heads, dim(), "LearnedRelative2d head_keys_row");
    detail::require_matrix(head_keys_col, heads, dim(), "LearnedRelative2d head_keys_col");
    const auto reach = max_grid_offsets(this->query_grid(), this->key_grid());
    const Index needed = std::max(reach[0], reach[1]) + 1;
    detail::require_argument(max_position() >= needed, "LearnedRelative2d max_position",
                             detail::concat(">= ", needed, " for these grids"), max_position());
  }
  T bias(Index head, Index delta_row, Index delta_col) const override {
    const Index center = max_position() - 1;
    return head_keys_row.row(head).dot(row_embeddings.row(center + delta_row)) +
           head_keys_col.row(head).dot(col_embeddings.row(center + delta_col));
  }
  // The bias is a sum of a row and a column part: each sees the table's sums over the other
  // offset.
  void add_bias_gradients(Index head, Index row0, Index col0, ConstMatrixRef<T> g,
                          KernelFactor<T>& gradient) const override {
    auto& into = *detail::gradient_as<LearnedRelative2d>(&gradient);
    const Index center = max_position() - 1;
    const Vector<T> per_row = g.rowwise().sum();
    const RowVector<T> per_col = g.colwise().sum();
    for (Index r = 0; r < g.rows(); ++r) {
      into.head_keys_row.row(head) += per_row[r] * row_embeddings.row(center + row0 + r);
      into.row_embeddings.row(center + row0 + r) += per_row[r] * head_keys_row.row(head);
    }
    for (Index c = 0; c < g.cols(); ++c) {
      into.head_keys_col.row(head) += per_col[c] * col_embeddings.row(center + col0 + c);
      into.col_embeddings.row(center + col0 + c) += per_col[c] * head_keys_col.row(head);
    }
  }
};

}  // namespace attnlens
