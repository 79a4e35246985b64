// Transformer-XL relative positions (Dai et al. 2019, docs/math.md section 3): the score terms
// q_i.(W_R R_{i-j}) + u.k_j + v.(W_R R_{i-j}) beside the content term q_i.k_j, all scaled by
// 1/sqrt(d) as in the paper's code; R is sinusoidal ([sin | cos]) in the distance i - j.
#pragma once

#include <cmath>
#include <memory>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/scratch.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/layers/linear.hpp"
#include "attnlens/position/sinusoidal.hpp"

namespace attnlens {

struct TransformerXlOptions {
  Index num_heads = 1;
  Index head_dim = 0;
  Index d_model = 0;  // width of R (even)
};

// Parameter names follow the Transformer-XL code: r_w_bias (u) and r_r_bias (v), H x d, and
// r_net (nn.Linear(d_model, H * d, bias=False)).
template <class T>
class TransformerXlRelativePosition final : public ScoreTerm<T> {
 public:
  // As the Transformer-XL code: u and v N(0, 0.02^2), r_net like nn.Linear.
  void reset_parameters(Rng& rng) override {
    for (Matrix<T>* m : {&r_w_bias, &r_r_bias})
      for (Index i = 0; i < m->size(); ++i) m->data()[i] = rng.normal<T>(T(0), T(0.02));
    init::linear_uniform(r_net.weight, r_net.in_features(), rng);
  }
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<TransformerXlRelativePosition>(*this);
  }
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "r_w_bias", r_w_bias);
    visit(prefix + "r_r_bias", r_r_bias);
    visit(prefix + "r_net.weight", r_net.weight);
  }

  // Zero parameters of the right shapes: load them.
  explicit TransformerXlRelativePosition(const TransformerXlOptions& options)
      : r_w_bias(Matrix<T>::Zero(checked(options).num_heads, options.head_dim)),
        r_r_bias(Matrix<T>::Zero(options.num_heads, options.head_dim)),
        r_net(LinearOptions{options.d_model, options.num_heads * options.head_dim, false}) {}

  void check(const ScoreShape& shape) const override {
    detail::require_matrix(r_w_bias, shape.heads, shape.head_dim,
                           "TransformerXlRelativePosition r_w_bias");
    detail::require_matrix(r_r_bias, shape.heads, shape.head_dim,
                           "TransformerXlRelativePosition r_r_bias");
    detail::require_shape(
        r_net.out_features() == shape.heads * shape.head_dim && r_net.in_features() % 2 == 0,
        "TransformerXlRelativePosition r_net.weight",
        detail::concat("[", shape.heads * shape.head_dim, ", even d_model]"),
        detail::concat("[", r_net.out_features(), ", ", r_net.in_features(), "]"));
  }

  void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const override {
    const Index rows = scores.rows(), cols = scores.cols(), d = tile.queries.cols();
    const Index head = tile.at.head;
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    const Distances distances = project_distances(tile.at, rows, cols, d);
    auto position_bias = detail::scratch_matrix<T, 2>(1, distances.count);  // v.(W_R R)
    position_bias.noalias() = r_r_bias.row(head) * distances.projected.transpose();
    auto content_bias = detail::scratch_matrix<T, 3>(1, cols);  // u.k_j
    content_bias.noalias() = r_w_bias.row(head) * tile.keys.transpose();
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c) {
        const Index n = r - c + cols - 1;  // distance i - j = nearest + n
        scores(r, c) += scale * (tile.queries.row(r).dot(distances.projected.row(n)) +
                                 content_bias(0, c) + position_bias(0, n));
      }
  }

  // With p_n = W_R R_n: dq_i += dS_ij p_n, dk_j += dS_ij u, dp_n += dS_ij (q_i + v), and
  // du, dv, dW_R from them, all scaled by 1/sqrt(d).
  void add_backward(const ScoreTile<T>& tile, ConstMatrixRef<T> dscores,
                    ScoreTileGradient<T>& gradient) const override {
    const Index rows = dscores.rows(), cols = dscores.cols(), d = tile.queries.cols();
    const Index head = tile.at.head;
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    const Distances distances = project_distances(tile.at, rows, cols, d);
    auto* into = detail::gradient_as<TransformerXlRelativePosition>(gradient.parameters);
    MatrixMap<T> dprojected = detail::scratch_matrix<T, 4>(distances.count, d);
    dprojected.setZero();
    auto per_distance = detail::scratch_matrix<T, 5>(1, distances.count);  // sum of dS at n
    per_distance.setZero();
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c) {
        const T g = scale * dscores(r, c);
        if (g == T(0)) continue;
        const Index n = r - c + cols - 1;
        gradient.queries.row(r) += g * distances.projected.row(n);
        if (into) dprojected.row(n) += g * tile.queries.row(r);
        per_distance(0, n) += g;
      }
    const RowVector<T> per_key = scale * dscores.colwise().sum();
    gradient.keys.noalias() += per_key.transpose() * r_w_bias.row(head);
    if (!into) return;
    into->r_w_bias.row(head).noalias() += per_key * tile.keys;
    into->r_r_bias.row(head).noalias() += per_distance * distances.projected;
    dprojected.noalias() += per_distance.transpose() * r_r_bias.row(head);
    // On SerialGemm, as the product below: Eigen's would fork threads from a one-thread caller.
    detail::scratch_gemm<T, 1>(d, distances.embeddings.cols(), distances.count)
        .add_transposed_product(T(1), dprojected, distances.embeddings,
                                into->r_net.weight.middleRows(head * d, d));
  }

  Matrix<T> r_w_bias;  // H x d: u
  Matrix<T> r_r_bias;  // H x d: v
  Linear<T> r_net;     // d_model -> H * d, no bias: W_R

 private:
  // The distances i - j a tile spans, nearest = i0 - (j0 + cols - 1) and up: their sinusoids R
  // and projections W_R R, each computed once, in this thread's scratch (slots 0 and 1).
  struct Distances {
    Index count;
    MatrixMap<T> embeddings;  // count x d_model
    MatrixMap<T> projected;   // count x d
  };
  Distances project_distances(const TileCoords& at, Index rows, Index cols, Index d) const {
    const Index nearest = at.query_begin - (at.key_begin + cols - 1);
    const Index count = rows + cols - 1;
    MatrixMap<T> embeddings = detail::scratch_matrix<T, 0>(count, r_net.in_features());
    for (Index n = 0; n < count; ++n)
      detail::write_sinusoid(embeddings.row(n), static_cast<double>(nearest + n), 10000.0, true);
    MatrixMap<T> projected = detail::scratch_matrix<T, 1>(count, d);
    // SerialGemm: tiles run inside the caller's threads; an Eigen product expression would fork
    // threads of its own in a program built with OpenMP (docs/performance.md, "Threads").
    projected.setZero();
    detail::scratch_gemm<T, 0>(count, d, r_net.in_features())
        .add_product_transposed(T(1), embeddings, r_net.weight.middleRows(at.head * d, d),
                                projected);
    return {count, embeddings, projected};
  }

  static const TransformerXlOptions& checked(const TransformerXlOptions& options) {
    detail::require_argument(options.num_heads > 0, "TransformerXlOptions::num_heads", "> 0",
                             options.num_heads);
    detail::require_argument(options.head_dim > 0, "TransformerXlOptions::head_dim", "> 0",
                             options.head_dim);
    detail::require_argument(options.d_model > 0 && options.d_model % 2 == 0,
                             "TransformerXlOptions::d_model", "a positive even number",
                             options.d_model);
    return options;
  }
};

}  // namespace attnlens
