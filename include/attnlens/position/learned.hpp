// Learned absolute positions (docs/math.md section 3): a max_len x E table, nn.Embedding-like,
// whose row p is added to token p.
#pragma once

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/position/absolute.hpp"

namespace attnlens {

struct LearnedPositionOptions {
  Index max_len = 0;
  Index embed_dim = 0;
};

template <class T>
class LearnedPositionalEmbedding {
 public:
  // A zero table: load `weight` or call reset_parameters().
  explicit LearnedPositionalEmbedding(const LearnedPositionOptions& options) {
    detail::require_argument(options.max_len > 0, "LearnedPositionOptions::max_len", "> 0",
                             options.max_len);
    detail::require_argument(options.embed_dim > 0, "LearnedPositionOptions::embed_dim", "> 0",
                             options.embed_dim);
    weight = Matrix<T>::Zero(options.max_len, options.embed_dim);
  }

  // nn.Embedding's initialisation, N(0, 1).
  void reset_parameters(Rng& rng) { init::normal(weight, rng); }

  Index max_len() const { return weight.rows(); }

  // x (B x L x E or L x E) += weight rows 0 .. L-1; L may not exceed max_len.
  void add_to(Tensor<T>& x) const { add_absolute_positions<T>(x, weight); }

  Matrix<T> weight;  // max_len x E (nn.Embedding.weight)
};

}  // namespace attnlens
