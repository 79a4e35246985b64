// Embedding<T>: torch.nn.Embedding, a table of vocabulary x embedding_dim rows (state_dict name
// `weight`) looked up by token id, with PyTorch's padding_idx (that row starts at zero and gets
// no gradient); and its backward pass, the scatter-add of the output gradient into the rows the
// ids picked (docs/math.md sections 6 and 7.8).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

namespace detail {

// Throws ArgumentError unless every id is in [0, vocabulary); the message names the first one
// out of range by its position: "<what>[b, l]: expected an id in [0, V), got x".
inline void check_ids(const Tensor<Index>& ids, Index vocabulary, const std::string& what) {
  for (Index n = 0; n < ids.size(); ++n) {
    const Index id = ids.data()[n];
    if (id >= 0 && id < vocabulary) continue;
    Shape at(ids.shape().size());
    for (std::size_t axis = at.size(), rest = static_cast<std::size_t>(n); axis-- > 0;) {
      const auto extent = static_cast<std::size_t>(ids.shape()[axis]);
      at[axis] = static_cast<Index>(rest % extent);
      rest /= extent;
    }
    throw ArgumentError(
        concat(what, shape_string(at), ": expected an id in [0, ", vocabulary, "), got ", id));
  }
}

// Throws ArgumentError naming `what` unless padding_idx is none or an id in [0, vocabulary).
inline void check_padding_idx(const std::optional<Index>& padding_idx, Index vocabulary,
                              const std::string& what) {
  if (padding_idx)
    require_argument(*padding_idx >= 0 && *padding_idx < vocabulary, what,
                     concat("an id in [0, ", vocabulary, ") or none"), *padding_idx);
}

}  // namespace detail

struct EmbeddingOptions {
  Index num_embeddings = 0;  // the vocabulary: ids are 0 .. num_embeddings - 1
  Index embedding_dim = 0;
  // nn.Embedding's padding_idx: this row is zero after reset_parameters and its gradient stays
  // zero. (PyTorch also takes a negative index counted from the end; attnlens asks for the id.)
  std::optional<Index> padding_idx = std::nullopt;
};

template <class T>
class Embedding {
 public:
  Embedding() = default;

  // A zero table of the right size: load it or call reset_parameters().
  explicit Embedding(const EmbeddingOptions& options)
      : weight(Matrix<T>::Zero(checked(options).num_embeddings, options.embedding_dim)),
        padding_idx_(options.padding_idx) {}

  // nn.Embedding's initialisation.
  Embedding(const EmbeddingOptions& options, Rng& rng) : Embedding(options) {
    reset_parameters(rng);
  }

  // N(0, 1) entries, the padding row zero (nn.Embedding.reset_parameters).
  void reset_parameters(Rng& rng) {
    init::normal(weight, rng);
    if (padding_idx_) weight.row(*padding_idx_).setZero();
  }

  Index num_embeddings() const { return weight.rows(); }
  Index embedding_dim() const { return weight.cols(); }
  const std::optional<Index>& padding_idx() const { return padding_idx_; }

  // ids of any shape S (B x L for a batch of sequences), each in [0, num_embeddings): returns
  // S x embedding_dim, the rows the ids name. The padding row is looked up like any other (it
  // holds whatever was loaded into it, as in PyTorch).
  Tensor<T> forward(const Tensor<Index>& ids) const {
    detail::check_ids(ids, num_embeddings(), "Embedding ids");
    Shape shape = ids.shape();
    shape.push_back(embedding_dim());
    Tensor<T> out(shape);
    MatrixMap<T> rows(out.data(), ids.size(), embedding_dim());
    for (Index n = 0; n < ids.size(); ++n) rows.row(n) = weight.row(ids.data()[n]);
    return out;
  }

  // The backward pass of forward(ids) given doutput = dL/doutput (S x embedding_dim): row r of
  // gradient.weight (an embedding like this one, e.g. zeros_like(*this)) += the sum of the rows
  // of doutput whose id is r, except the padding row. Ids have no gradient.
  void backward(const Tensor<Index>& ids, const Tensor<T>& doutput, Embedding& gradient) const {
    detail::check_ids(ids, num_embeddings(), "Embedding backward ids");
    Shape expected = ids.shape();
    expected.push_back(embedding_dim());
    detail::require_shape(doutput.shape() == expected, "Embedding backward doutput",
                          detail::shape_string(expected), detail::shape_string(doutput.shape()));
    detail::require_matrix(gradient.weight, num_embeddings(), embedding_dim(),
                           "Embedding backward gradient.weight");
    const ConstMatrixMap<T> rows(doutput.data(), ids.size(), embedding_dim());
    for (Index n = 0; n < ids.size(); ++n) {
      const Index id = ids.data()[n];
      if (id != padding_idx_) gradient.weight.row(id) += rows.row(n);
    }
  }

  Matrix<T> weight;  // num_embeddings x embedding_dim

 private:
  static const EmbeddingOptions& checked(const EmbeddingOptions& o) {
    detail::require_argument(o.num_embeddings > 0, "EmbeddingOptions::num_embeddings", "> 0",
                             o.num_embeddings);
    detail::require_argument(o.embedding_dim > 0, "EmbeddingOptions::embedding_dim", "> 0",
                             o.embedding_dim);
    detail::check_padding_idx(o.padding_idx, o.num_embeddings, "EmbeddingOptions::padding_idx");
    return o;
  }

  std::optional<Index> padding_idx_;
};

// nn.Embedding's state_dict name: <prefix>weight.
template <class T, class F>
void for_each_parameter(Embedding<T>& embedding, const std::string& prefix, F&& f) {
  f(prefix + "weight", embedding.weight);
}

}  // namespace attnlens
