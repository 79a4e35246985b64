// TransformerEncoderLayer<T>: torch.nn.TransformerEncoderLayer (batch_first) with its parameter
// names. Post-norm: x = norm1(x + drop(sa(x))); x = norm2(x + drop(ff(x))).
// Pre-norm (norm_first): x = x + drop(sa(norm1(x))); x = x + drop(ff(norm2(x))). Dropout (also
// inside ff) is on only in a training forward (EncoderForwardOptions::dropout_key). With
// dim_feedforward 0 the layer is attention-only: no ff and no norm2 (x = norm1(x + drop(sa(x))),
// or x = x + drop(sa(norm1(x)))), as in Cordonnier et al.'s attention-only experiment. sa is
// docs/math.md section 1, with the layer's relative position encoding, if any, attached to it,
// and with the attention variant of EncoderLayerOptions::attention (docs/math.md section 2;
// softmax is PyTorch's).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/attention/variant.hpp"
#include "attnlens/blocks/position_encoding.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/layers/activations.hpp"
#include "attnlens/layers/dropout.hpp"
#include "attnlens/layers/feed_forward.hpp"
#include "attnlens/layers/layer_norm.hpp"
#include "attnlens/layers/linear.hpp"

namespace attnlens {

// The constructor arguments of nn.TransformerEncoderLayer, same defaults but dropout's.
struct EncoderLayerOptions {
  Index d_model = 0;
  Index nhead = 1;
  Index dim_feedforward = 2048;  // 0: attention-only, no feed-forward block and no norm2
  Activation activation = Activation::relu;
  double layer_norm_eps = 1e-5;
  bool norm_first = false;
  bool bias = true;  // every Linear's bias and self_attn's in_proj_bias
  // attnlens addition: self_attn's kernel (softmax: nn.MultiheadAttention's) and boosting.
  AttentionVariantOptions attention = {};
  // nn.TransformerEncoderLayer's dropout on the attention block's output, the feed-forward's
  // hidden layer and its output (timm's proj_drop_rate; PyTorch's default is 0.1, attnlens's 0:
  // a loaded model runs as it was exported). Not on the attention probabilities (PyTorch also
  // applies it there; attnlens does not yet).
  double dropout = 0;
  // attnlens addition: false drops self_attn's q.k range kernel, so that its scores are the
  // position terms alone (MultiHeadAttentionOptions::content: positional-only attention).
  bool content = true;
};

struct EncoderForwardOptions {
  AttentionWeights weights = AttentionWeights::none;  // the attention maps to return
  ParallelOptions parallel;
  // Every layer's attention engine (MultiHeadForwardOptions::engine and tiling): automatic
  // takes the reference engine when weights are returned or a cache is filled.
  AttentionEngine engine = AttentionEngine::automatic;
  FusedTiling tiling = {};
  // Set: a training forward, dropout on with the layers' rates and masks drawn from this key
  // (layers/dropout.hpp; a stack gives each layer a part of it). Unset: inference.
  std::optional<std::uint64_t> dropout_key = std::nullopt;
  // An intervention on self-attention's probabilities (MultiHeadForwardOptions::head_scales:
  // A_h -> s_h A_h; docs/gradients.md), one entry per layer. Empty: none. A layer on its own
  // reads entry 0 (at most one entry); a stack (run_encoder_stack) gives layer l entry l (one
  // entry per layer).
  std::vector<std::vector<double>> head_scales = {};
};

template <class T>
struct EncoderLayerOutput {
  Tensor<T> output;   // shaped like src
  Tensor<T> weights;  // B x H x L x L, B x L x L or empty, as EncoderForwardOptions::weights
  // B*L x d_model, self_attn's projected values when the variant reads other layers' values
  // (NeuTRENO, elliptical): the next layers' StackValues. Empty otherwise.
  Matrix<T> values;
};

// What a backward pass needs from a forward pass; filled when passed to forward().
template <class T>
struct EncoderLayerCache {
  Matrix<T> input;   // B*L x E, the layer's input
  Matrix<T> hidden;  // B*L x E, the state between the attention and feed-forward blocks
  MultiHeadCache<T> self_attn;
  LayerNormCache<T> norm1, norm2;
  FeedForwardCache<T> feed_forward;
  Dropout dropout = {};  // the forward's draw (off at inference)
};

struct EncoderBackwardOptions {
  ParallelOptions parallel;
  // Fill EncoderLayerInputGradients::attention with dL/dA of self_attn's probabilities
  // (MultiHeadBackwardOptions::attention_gradients).
  bool attention_gradients = false;
};

// The gradients of a layer's inputs; TransformerEncoderLayer::backward accumulates the
// parameters'.
template <class T>
struct EncoderLayerInputGradients {
  Tensor<T> src;  // shaped like src
  // B*L x E: dL/dV^0 of the stack's first layer's values, for a variant that reads them
  // (NeuTRENO); empty otherwise.
  Matrix<T> first_values;
  Tensor<T> attention;  // B x H x L x L when EncoderBackwardOptions::attention_gradients
};

template <class T>
class TransformerEncoderLayer {
  EncoderLayerOptions options_;  // first: checked before any member is sized from it

 public:
  // Parameters of the right shapes (norms at weight 1, bias 0, the rest zero): load them or
  // call reset_parameters().
  explicit TransformerEncoderLayer(const EncoderLayerOptions& options)
      : options_(checked(options)),
        self_attn(attention_options(options)),
        linear1(feed_forward_linear(options, options.d_model, options.dim_feedforward)),
        linear2(feed_forward_linear(options, options.dim_feedforward, options.d_model)),
        norm1(LayerNormOptions{options.d_model, options.layer_norm_eps}),
        norm2(second_norm(options)) {}

  TransformerEncoderLayer(const EncoderLayerOptions& options, Rng& rng)
      : TransformerEncoderLayer(options) {
    reset_parameters(rng);
  }

  // Copies own their relative position: self_attn's copy holds copies of its terms, and the
  // copy's position is the copy of the original's term there.
  TransformerEncoderLayer(const TransformerEncoderLayer& other)
      : options_(other.options_),
        self_attn(other.self_attn),
        linear1(other.linear1),
        linear2(other.linear2),
        norm1(other.norm1),
        norm2(other.norm2),
        position(other.position.copied_into(other.self_attn, self_attn)) {}
  TransformerEncoderLayer& operator=(const TransformerEncoderLayer& other) {
    if (this != &other) *this = TransformerEncoderLayer(other);
    return *this;
  }
  TransformerEncoderLayer(TransformerEncoderLayer&&) = default;
  TransformerEncoderLayer& operator=(TransformerEncoderLayer&&) = default;
  ~TransformerEncoderLayer() = default;

  // Replaces the layer's relative position encoding (none by default) by `relative`, attached
  // to self_attn.
  void set_position(RelativePosition<T> relative) {
    position.detach(self_attn);
    position = std::move(relative);
    position.attach(self_attn);
  }

  // PyTorch's initialisation of each submodule (and the position's, see RelativePosition).
  void reset_parameters(Rng& rng) {
    position.reset_parameters(rng);
    self_attn.reset_parameters(rng);
    if (has_feed_forward()) {
      linear1.reset_parameters(rng);
      linear2.reset_parameters(rng);
    }
    norm1 = LayerNorm<T>(LayerNormOptions{d_model(), options_.layer_norm_eps});
    norm2 = second_norm(options_);
  }

  const EncoderLayerOptions& options() const { return options_; }
  Index d_model() const { return options_.d_model; }
  Index nhead() const { return options_.nhead; }
  // false: an attention-only layer (dim_feedforward 0), without linear1, linear2 and norm2.
  bool has_feed_forward() const { return options_.dim_feedforward > 0; }

  // src: B x L x d_model (or unbatched L x d_model). mask: attnlens's typed mask; PyTorch's
  // src_mask and src_key_padding_mask convert with keep_from_torch_mask / read_torch_masks.
  // stack: the values of earlier layers, for the variants that read them (run_encoder_stack
  // passes them; a layer on its own is a stack's first layer).
  EncoderLayerOutput<T> forward(const Tensor<T>& src, const AttentionMask<T>& mask = {},
                                const EncoderForwardOptions& options = {},
                                EncoderLayerCache<T>* cache = nullptr,
                                const StackValues<T>& stack = {}) const;

  // The backward pass of a forward call that filled `cache` (docs/gradients.md): doutput =
  // dL/doutput, shaped like src; gradient's parameters (a layer like this one, e.g.
  // zeros_like(*this)) += their gradients. `stack` must be the forward's; value_gradient as in
  // MultiHeadAttention::backward.
  EncoderLayerInputGradients<T> backward(const EncoderLayerCache<T>& cache,
                                         const Tensor<T>& doutput,
                                         TransformerEncoderLayer& gradient,
                                         const EncoderBackwardOptions& options = {},
                                         const StackValues<T>& stack = {},
                                         const Matrix<T>* value_gradient = nullptr) const;

  // Parameters, named as in PyTorch's state_dict.
  MultiHeadAttention<T> self_attn;
  Linear<T> linear1;  // d_model -> dim_feedforward (empty in an attention-only layer)
  Linear<T> linear2;  // dim_feedforward -> d_model (empty in an attention-only layer)
  LayerNorm<T> norm1;
  LayerNorm<T> norm2;  // empty in an attention-only layer
  // A relative position encoding attached to self_attn (set_position); its parameters are
  // named under self_attn. (nn.TransformerEncoderLayer has none.)
  RelativePosition<T> position;

 private:
  // By name: MultiHeadAttentionOptions grows members (variants) whose defaults we keep.
  static MultiHeadAttentionOptions attention_options(const EncoderLayerOptions& o) {
    MultiHeadAttentionOptions attention;
    attention.embed_dim = o.d_model;
    attention.num_heads = o.nhead;
    attention.bias = o.bias;
    attention.content = o.content;
    attention.variant = o.attention;
    return attention;
  }

  // linear1 or linear2, or an empty Linear in an attention-only layer.
  static Linear<T> feed_forward_linear(const EncoderLayerOptions& o, Index in, Index out) {
    if (o.dim_feedforward == 0) return Linear<T>();
    return Linear<T>(LinearOptions{in, out, o.bias});
  }
  static LayerNorm<T> second_norm(const EncoderLayerOptions& o) {
    if (o.dim_feedforward == 0) return LayerNorm<T>();
    return LayerNorm<T>(LayerNormOptions{o.d_model, o.layer_norm_eps});
  }

  static EncoderLayerOptions checked(const EncoderLayerOptions& o) {
    detail::require_argument(o.d_model > 0, "EncoderLayerOptions::d_model", "> 0", o.d_model);
    detail::require_argument(o.nhead > 0 && o.d_model % o.nhead == 0, "EncoderLayerOptions::nhead",
                             detail::concat("a positive divisor of d_model ", o.d_model), o.nhead);
    detail::require_argument(o.dim_feedforward >= 0, "EncoderLayerOptions::dim_feedforward",
                             ">= 0 (0: attention-only)", o.dim_feedforward);
    detail::require_argument(o.layer_norm_eps > 0, "EncoderLayerOptions::layer_norm_eps", "> 0",
                             o.layer_norm_eps);
    check_dropout_probability(o.dropout, "EncoderLayerOptions::dropout");
    check_variant_options(o.attention, "EncoderLayerOptions::attention");
    return o;
  }

  // Checks that src is B x L x d_model or L x d_model with B, L >= 1; `what` names it.
  void check_src(const Tensor<T>& src, const std::string& what) const {
    const Index rank = src.rank();
    const bool ok = (rank == 2 || rank == 3) && src.dim(rank - 1) == d_model() && src.size() > 0;
    detail::require_shape(
        ok, what, detail::concat("[B, L, ", d_model(), "] or [L, ", d_model(), "] with B, L >= 1"),
        detail::shape_string(src.shape()));
  }
};

template <class T>
EncoderLayerOutput<T> TransformerEncoderLayer<T>::forward(const Tensor<T>& src,
                                                          const AttentionMask<T>& mask,
                                                          const EncoderForwardOptions& options,
                                                          EncoderLayerCache<T>* cache,
                                                          const StackValues<T>& stack) const {
  check_src(src, "src");
  const Index n = src.size() / d_model();
  const ConstMatrixMap<T> x(src.data(), n, d_model());
  MultiHeadForwardOptions attention_options;  // by name: the struct grows engine options
  attention_options.weights = options.weights;
  attention_options.parallel = options.parallel;
  attention_options.engine = options.engine;
  attention_options.tiling = options.tiling;
  detail::require_argument(options.head_scales.size() <= 1, "EncoderForwardOptions::head_scales",
                           "0 or 1 entries for one layer", options.head_scales.size());
  if (!options.head_scales.empty()) attention_options.head_scales = options.head_scales.front();
  MultiHeadCache<T>* attention_cache = cache ? &cache->self_attn : nullptr;
  if (cache) cache->input = x;

  // The layer's draw and its three sites: the attention block's output, the feed-forward's
  // hidden layer, the feed-forward's output.
  const Dropout dropout = options.dropout_key && options_.dropout > 0
                              ? Dropout(options_.dropout, *options.dropout_key)
                              : Dropout();
  if (cache) cache->dropout = dropout;
  const auto attention_output = [&](Tensor<T>& output) {
    MatrixMap<T> sa(output.data(), n, d_model());
    dropout.part(0).apply<T>(sa);
    return sa;
  };

  EncoderLayerOutput<T> result;
  result.output = Tensor<T>(src.shape());
  MatrixMap<T> y(result.output.data(), n, d_model());
  Matrix<T> hidden;
  if (options_.norm_first) {
    Tensor<T> normed(src.shape());
    norm1.forward(x, MatrixMap<T>(normed.data(), n, d_model()), cache ? &cache->norm1 : nullptr);
    auto attention = self_attn.forward(normed, mask, attention_options, attention_cache, stack);
    result.weights = std::move(attention.weights);
    result.values = std::move(attention.values);
    hidden = x + attention_output(attention.output);
    if (!has_feed_forward()) {
      y = hidden;
      if (cache) cache->hidden = std::move(hidden);
      return result;
    }
    const Matrix<T> normed2 = norm2.forward(hidden, cache ? &cache->norm2 : nullptr);
    feed_forward<T>(linear1, options_.activation, linear2, normed2, y,
                    cache ? &cache->feed_forward : nullptr, options.parallel, dropout.part(1));
    dropout.part(2).apply<T>(y);
    y += hidden;
  } else {
    auto attention = self_attn.forward(src, mask, attention_options, attention_cache, stack);
    result.weights = std::move(attention.weights);
    result.values = std::move(attention.values);
    hidden = x + attention_output(attention.output);
    norm1.forward(hidden, hidden, cache ? &cache->norm1 : nullptr);
    if (!has_feed_forward()) {
      y = hidden;
      if (cache) cache->hidden = std::move(hidden);
      return result;
    }
    feed_forward<T>(linear1, options_.activation, linear2, hidden, y,
                    cache ? &cache->feed_forward : nullptr, options.parallel, dropout.part(1));
    dropout.part(2).apply<T>(y);
    y += hidden;
    norm2.forward(y, y, cache ? &cache->norm2 : nullptr);
  }
  if (cache) cache->hidden = std::move(hidden);
  return result;
}

template <class T>
EncoderLayerInputGradients<T> TransformerEncoderLayer<T>::backward(
    const EncoderLayerCache<T>& cache, const Tensor<T>& doutput, TransformerEncoderLayer& gradient,
    const EncoderBackwardOptions& options, const StackValues<T>& stack,
    const Matrix<T>* value_gradient) const {
  check_src(doutput, "doutput");
  const Index n = doutput.size() / d_model(), E = d_model();
  detail::require_argument(cache.input.rows() == n && cache.hidden.rows() == n, "EncoderLayerCache",
                           detail::concat("the cache of a forward call on ", n, " tokens"),
                           detail::concat(cache.input.rows(), " tokens"));
  const ConstMatrixMap<T> dy(doutput.data(), n, E);
  MultiHeadBackwardOptions attention_options;
  attention_options.parallel = options.parallel;
  attention_options.attention_gradients = options.attention_gradients;
  // self_attn's backward on a token-row gradient shaped like src, through the forward's
  // dropout of the attention block's output.
  const auto attention_backward = [&](const Matrix<T>& dattention) {
    Tensor<T> d(doutput.shape());
    MatrixMap<T> dsa(d.data(), n, E);
    dsa = dattention;
    cache.dropout.part(0).template apply<T>(dsa);
    return self_attn.backward(cache.self_attn, d, gradient.self_attn, attention_options, stack,
                              value_gradient);
  };
  // The gradient of the feed-forward's output, through the forward's dropout there.
  const auto feed_forward_output = [&](Matrix<T> d) {
    cache.dropout.part(2).template apply<T>(d);
    return d;
  };
  EncoderLayerInputGradients<T> result;
  result.src = Tensor<T>(doutput.shape());
  MatrixMap<T> dx(result.src.data(), n, E);
  if (!has_feed_forward()) {
    // Attention-only: y = x + sa(norm1(x)), or y = norm1(x + sa(x)).
    Matrix<T> du = dy;
    if (!options_.norm_first) du = norm1.backward(cache.norm1, du, gradient.norm1);
    auto attention = attention_backward(du);
    dx = du + (options_.norm_first ? norm1.backward(cache.norm1, attention.query, gradient.norm1)
                                   : attention.query);
    result.first_values = std::move(attention.first_values);
    result.attention = std::move(attention.attention);
    return result;
  }
  if (options_.norm_first) {
    // y = h + ff(norm2(h)), h = x + sa(norm1(x)). The feed-forward's input is rebuilt from
    // norm2's cache.
    Matrix<T> normed2 = cache.norm2.normalized;
    if (norm2.elementwise_affine())
      normed2 = (normed2.array().rowwise() * norm2.weight.transpose().array()).rowwise() +
                norm2.bias.transpose().array();
    const Matrix<T> dnormed2 = feed_forward_backward<T>(
        linear1, options_.activation, linear2, normed2, cache.feed_forward, feed_forward_output(dy),
        gradient.linear1, gradient.linear2, options.parallel);
    const Matrix<T> dh = dy + norm2.backward(cache.norm2, dnormed2, gradient.norm2);
    auto attention = attention_backward(dh);
    dx = dh + norm1.backward(cache.norm1, attention.query, gradient.norm1);
    result.first_values = std::move(attention.first_values);
    result.attention = std::move(attention.attention);
    return result;
  }
  // h = norm1(x + sa(x)), y = norm2(h + ff(h)).
  const Matrix<T> dz = norm2.backward(cache.norm2, dy, gradient.norm2);
  const Matrix<T> dh =
      dz + feed_forward_backward<T>(linear1, options_.activation, linear2, cache.hidden,
                                    cache.feed_forward, feed_forward_output(dz), gradient.linear1,
                                    gradient.linear2, options.parallel);
  const Matrix<T> du = norm1.backward(cache.norm1, dh, gradient.norm1);
  auto attention = attention_backward(du);
  dx = du + attention.query;
  result.first_values = std::move(attention.first_values);
  result.attention = std::move(attention.attention);
  return result;
}

// In nn.TransformerEncoderLayer's state_dict order; a relative position's parameters follow
// self_attn's, under self_attn (self_attn's walk visits its attached terms; docs/model-format.md).
// An attention-only layer has self_attn and norm1 alone.
template <class T, class F>
void for_each_parameter(TransformerEncoderLayer<T>& layer, const std::string& prefix, F&& f) {
  for_each_parameter(layer.self_attn, prefix + "self_attn.", f);
  if (layer.has_feed_forward()) {
    for_each_parameter(layer.linear1, prefix + "linear1.", f);
    for_each_parameter(layer.linear2, prefix + "linear2.", f);
  }
  for_each_parameter(layer.norm1, prefix + "norm1.", f);
  if (layer.has_feed_forward()) for_each_parameter(layer.norm2, prefix + "norm2.", f);
}

#ifdef ATTNLENS_COMPILED
extern template class TransformerEncoderLayer<float>;
extern template class TransformerEncoderLayer<double>;
#endif

}  // namespace attnlens
