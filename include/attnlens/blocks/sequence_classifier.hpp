// SequenceClassifier<T>: a classifier of token sequences (the Long Range Arena's ListOps):
// token embedding (nn.Embedding), a TransformerEncoder with any attention variant, position,
// residual and norm placement, whose attention skips each sequence's padding (key lengths),
// pooling (the mean over the real tokens, or the first token) and a linear head
// (docs/math.md section 7.8). Padding never reaches the logits.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/layers/embedding.hpp"
#include "attnlens/layers/linear.hpp"

namespace attnlens {

enum class SequencePooling {
  mean,   // the mean of the encoder's outputs over each sequence's real tokens
  first,  // the output of each sequence's first token
};

struct SequenceClassifierOptions {
  Index vocab_size = 0;   // token ids are 0 .. vocab_size - 1
  Index num_classes = 0;  // > 0
  // encoder.layer.d_model is the embedding width. Any attention variant, an absolute or 1-D
  // relative position (a learned table needs max_len >= the longest padded batch), either
  // residual, norm_first, a final norm.
  EncoderOptions encoder;
  SequencePooling pooling = SequencePooling::mean;
  // The embedding's padding_idx (nn.Embedding's: that row starts at zero and gets no gradient);
  // ListOps pads with k_listops_padding = 0. Which positions are padding is the forward's
  // `lengths`, not this id.
  std::optional<Index> padding_idx = std::nullopt;
};

template <class T>
struct SequenceClassifierOutput {
  Tensor<T> logits;                // B x num_classes
  Tensor<T> tokens;                // B x L x d_model, the encoder's output (padded rows too)
  std::vector<Tensor<T>> weights;  // per layer, as EncoderForwardOptions::weights asks
};

// What a backward pass needs from a forward pass; filled when passed to forward().
template <class T>
struct SequenceClassifierCache {
  Tensor<Index> ids;           // B x L, the forward's tokens
  std::vector<Index> lengths;  // B, the forward's lengths
  Tensor<T> pooled;            // B x d_model, the head's input
  EncoderCache<T> encoder;
};

template <class T>
class SequenceClassifier {
  SequenceClassifierOptions options_;  // first: checked before any member is sized from it

 public:
  // Parameters of the right shapes (zero, norms at identity): load them or call
  // reset_parameters().
  explicit SequenceClassifier(const SequenceClassifierOptions& options)
      : options_(checked(options)),
        embedding(EmbeddingOptions{options.vocab_size, options.encoder.layer.d_model,
                                   options.padding_idx}),
        encoder(options.encoder),
        head(LinearOptions{options.encoder.layer.d_model, options.num_classes, true}) {}

  SequenceClassifier(const SequenceClassifierOptions& options, Rng& rng)
      : SequenceClassifier(options) {
    reset_parameters(rng);
  }

  // Each part with its PyTorch default: nn.Embedding's N(0, 1) (padding row zero), the
  // encoder's (TransformerEncoder::reset_parameters), nn.Linear's head.
  void reset_parameters(Rng& rng) {
    embedding.reset_parameters(rng);
    encoder.reset_parameters(rng);
    head.reset_parameters(rng);
  }

  const SequenceClassifierOptions& options() const { return options_; }
  Index d_model() const { return options_.encoder.layer.d_model; }
  Index num_classes() const { return options_.num_classes; }

  // tokens: B x L ids in [0, vocab_size); lengths: B counts in [1, L]: sequence b is
  // tokens[b, 0 .. lengths[b]), the rest of its row is padding (ListOpsBatch's tokens and
  // lengths). Padding is no key of any attention, and no part of the pooled features, so the
  // logits do not depend on the padding's ids nor on how much of it there is.
  SequenceClassifierOutput<T> forward(const Tensor<Index>& tokens,
                                      const std::vector<Index>& lengths,
                                      const EncoderForwardOptions& options = {},
                                      SequenceClassifierCache<T>* cache = nullptr) const;

  // The backward pass of a forward call that filled `cache` (docs/gradients.md): dlogits =
  // dL/dlogits (B x num_classes); gradient's parameters (a classifier like this one, e.g.
  // zeros_like(*this)) += their gradients. Token ids have no gradient.
  void backward(const SequenceClassifierCache<T>& cache, const Tensor<T>& dlogits,
                SequenceClassifier& gradient, const EncoderBackwardOptions& options = {}) const;

  // Parameters, named as the PyTorch module {embedding: nn.Embedding, encoder:
  // nn.TransformerEncoder, head: nn.Linear} names them (see for_each_parameter).
  Embedding<T> embedding;
  TransformerEncoder<T> encoder;
  Linear<T> head;  // d_model -> num_classes

 private:
  static const SequenceClassifierOptions& checked(const SequenceClassifierOptions& o) {
    detail::require_argument(o.vocab_size > 0, "SequenceClassifierOptions::vocab_size", "> 0",
                             o.vocab_size);
    detail::require_argument(o.num_classes > 0, "SequenceClassifierOptions::num_classes", "> 0",
                             o.num_classes);
    detail::require_argument(o.encoder.layer.d_model > 0,
                             "SequenceClassifierOptions::encoder.layer.d_model", "> 0",
                             o.encoder.layer.d_model);
    detail::check_padding_idx(o.padding_idx, o.vocab_size,
                              "SequenceClassifierOptions::padding_idx");
    return o;
  }
};

template <class T>
SequenceClassifierOutput<T> SequenceClassifier<T>::forward(
    const Tensor<Index>& tokens, const std::vector<Index>& lengths,
    const EncoderForwardOptions& options, SequenceClassifierCache<T>* cache) const {
  detail::require_shape(tokens.rank() == 2 && tokens.dim(0) > 0 && tokens.dim(1) > 0, "tokens",
                        "[B, L] with B, L >= 1", detail::shape_string(tokens.shape()));
  const Index B = tokens.dim(0), L = tokens.dim(1), E = d_model();
  detail::require_shape(static_cast<Index>(lengths.size()) == B, "lengths",
                        detail::concat(B, " entries, one per row of tokens"),
                        detail::concat(lengths.size(), " entries"));
  for (std::size_t b = 0; b < lengths.size(); ++b)
    detail::require_argument(
        lengths[b] >= 1 && lengths[b] <= L, detail::concat("lengths[", b, "]"),
        detail::concat("a length in [1, ", L, "] (a sequence needs a token that is not padding)"),
        lengths[b]);
  detail::check_ids(tokens, options_.vocab_size, "tokens");

  AttentionMask<T> mask;
  mask.key_lengths = lengths;
  auto stack =
      encoder.forward(embedding.forward(tokens), mask, options, cache ? &cache->encoder : nullptr);
  Tensor<T> pooled({B, E});
  for (Index b = 0; b < B; ++b) {
    const auto x = stack.output.matrix({b});
    const Index n = lengths[static_cast<std::size_t>(b)];
    pooled.matrix().row(b) = options_.pooling == SequencePooling::first
                                 ? RowVector<T>(x.row(0))
                                 : RowVector<T>(x.topRows(n).colwise().mean());
  }
  SequenceClassifierOutput<T> out;
  out.logits = Tensor<T>({B, options_.num_classes});
  head.forward(pooled.matrix(), out.logits.matrix(), options.parallel);
  if (cache) {
    cache->ids = tokens;
    cache->lengths = lengths;
    cache->pooled = std::move(pooled);
  }
  out.tokens = std::move(stack.output);
  out.weights = std::move(stack.weights);
  return out;
}

template <class T>
void SequenceClassifier<T>::backward(const SequenceClassifierCache<T>& cache,
                                     const Tensor<T>& dlogits, SequenceClassifier& gradient,
                                     const EncoderBackwardOptions& options) const {
  const Index B = cache.ids.rank() == 2 ? cache.ids.dim(0) : 0, E = d_model();
  detail::require_argument(
      B > 0 && cache.pooled.shape() == Shape{B, E} && static_cast<Index>(cache.lengths.size()) == B,
      "SequenceClassifierCache", "the cache of a forward call", "an empty or inconsistent cache");
  const Index L = cache.ids.dim(1);
  detail::require_shape(dlogits.shape() == Shape{B, options_.num_classes}, "dlogits",
                        detail::concat("[", B, ", ", options_.num_classes, "]"),
                        detail::shape_string(dlogits.shape()));
  const Matrix<T> dpooled =
      head.backward(cache.pooled.matrix(), dlogits.matrix(), gradient.head, options.parallel);
  // Pooling: the first token's row, or the mean over the real tokens; padding gets nothing.
  Tensor<T> dtokens({B, L, E});
  for (Index b = 0; b < B; ++b) {
    auto d = dtokens.matrix({b});
    d.setZero();
    const Index n = cache.lengths[static_cast<std::size_t>(b)];
    if (options_.pooling == SequencePooling::first)
      d.row(0) = dpooled.row(b);
    else
      d.topRows(n).rowwise() = dpooled.row(b) / static_cast<T>(n);
  }
  const Tensor<T> dembedded = encoder.backward(cache.encoder, dtokens, gradient.encoder, options);
  embedding.backward(cache.ids, dembedded, gradient.embedding);
}

// The PyTorch module's state_dict names: embedding.weight; encoder.<TransformerEncoder's names>
// (encoder.layers.{i}.self_attn.in_proj_weight, ..., encoder.norm.weight with a final norm, a
// learned table's encoder.position_embeddings.weight, encoder.fidelity_lambda when learned);
// head.weight, head.bias.
template <class T, class F>
void for_each_parameter(SequenceClassifier<T>& model, const std::string& prefix, F&& f) {
  for_each_parameter(model.embedding, prefix + "embedding.", f);
  for_each_parameter(model.encoder, prefix + "encoder.", f);
  for_each_parameter(model.head, prefix + "head.", f);
}

}  // namespace attnlens
