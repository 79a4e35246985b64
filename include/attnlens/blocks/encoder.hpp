// TransformerEncoder<T>: torch.nn.TransformerEncoder (a stack of TransformerEncoderLayer with an
// optional final LayerNorm `norm`), with a choice of residual between layers (docs/math.md section
// 2: standard, or fidelity x_{l+1} = layer_l(x_l) + lambda_l (x_0 - x_l)), a positional encoding
// (absolute: added to the input; relative: attached to every layer's self-attention; docs/math.md
// section 3), every layer's attention variant (NeuTRENO and elliptical read the first and the
// previous layer's values) and per-layer attention maps.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/blocks/encoder_layer.hpp"
#include "attnlens/blocks/position_encoding.hpp"
#include "attnlens/blocks/residual.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/layers/layer_norm.hpp"

namespace attnlens {

struct EncoderOptions {
  EncoderLayerOptions layer;  // every layer has the same options, as in PyTorch
  Index num_layers = 1;
  bool final_norm = false;  // nn.TransformerEncoder(norm=LayerNorm(d_model, layer_norm_eps))
  ResidualOptions residual;
  // Absolute (sinusoidal, learned) or 1-D relative (shaw, transformer_xl, t5, alibi, rope); the
  // 2-D encodings need a patch grid and belong to VisionTransformer.
  PositionOptions position;
};

template <class T>
struct EncoderOutput {
  Tensor<T> output;                // shaped like src
  std::vector<Tensor<T>> weights;  // one per layer when EncoderForwardOptions::weights asks
};

// What a backward pass needs from a forward pass; filled when passed to forward().
template <class T>
struct EncoderCache {
  std::vector<EncoderLayerCache<T>> layers;
  Tensor<T> before_norm;  // the last layer's output, when there is a final norm
  LayerNormCache<T> norm;
};

namespace detail {

inline const EncoderOptions& checked(const EncoderOptions& options) {
  require_argument(options.num_layers > 0, "EncoderOptions::num_layers", "> 0", options.num_layers);
  require_argument(!is_two_dimensional(options.position.type), "EncoderOptions::position.type",
                   "a 1-D or absolute encoding (2-D ones need VisionTransformer's patch grid)",
                   position_type_name(options.position.type));
  return options;
}

// Gives every layer a relative position of its own (nothing for none or absolute types).
template <class T>
void attach_relative_positions(std::vector<TransformerEncoderLayer<T>>& layers,
                               const PositionOptions& options) {
  if (!is_relative(options.type)) return;
  for (auto& layer : layers)
    layer.set_position(RelativePosition<T>(options, layer.d_model(), layer.nhead()));
}

}  // namespace detail

// The stack's forward pass: the layers with the residual variant between them, then the final
// norm if any; in a training forward, layer l's dropout masks come from part l of the key.
// Shared by TransformerEncoder and VisionTransformer, which name the same
// members differently (layers / blocks).
template <class T>
EncoderOutput<T> run_encoder_stack(const std::vector<TransformerEncoderLayer<T>>& layers,
                                   const Residual<T>& residual,
                                   const std::optional<LayerNorm<T>>& norm, const Tensor<T>& src,
                                   const AttentionMask<T>& mask,
                                   const EncoderForwardOptions& options, EncoderCache<T>* cache) {
  if (cache) cache->layers.resize(layers.size());
  detail::require_argument(options.head_scales.empty() || options.head_scales.size() == layers.size(),
                           "EncoderForwardOptions::head_scales",
                           detail::concat("none or one entry per layer (", layers.size(), ")"),
                           options.head_scales.size());
  EncoderOutput<T> result;
  Tensor<T> x = src;
  // V^0 and V^{l-1} for the variants that read them (empty for the others).
  Matrix<T> first_values, previous_values;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    StackValues<T> stack;
    if (first_values.size()) stack.first = &first_values;
    if (previous_values.size()) stack.previous = &previous_values;
    EncoderForwardOptions layer_options = options;  // a training forward: each layer its own draw
    if (options.dropout_key) layer_options.dropout_key = dropout_part_key(*options.dropout_key, l);
    if (!options.head_scales.empty()) layer_options.head_scales = {options.head_scales[l]};
    auto out =
        layers[l].forward(x, mask, layer_options, cache ? &cache->layers[l] : nullptr, stack);
    if (l == 0 && out.values.size()) first_values = out.values;
    previous_values = std::move(out.values);
    const Index E = x.shape().back(), n = x.size() / E;
    residual.add_fidelity_term(static_cast<Index>(l), ConstMatrixMap<T>(src.data(), n, E),
                               ConstMatrixMap<T>(x.data(), n, E),
                               MatrixMap<T>(out.output.data(), n, E));
    if (options.weights != AttentionWeights::none) result.weights.push_back(std::move(out.weights));
    x = std::move(out.output);
  }
  if (norm) {
    const Index E = x.shape().back(), n = x.size() / E;
    if (cache) cache->before_norm = x;
    norm->forward(ConstMatrixMap<T>(x.data(), n, E), MatrixMap<T>(x.data(), n, E),
                  cache ? &cache->norm : nullptr);
  }
  result.output = std::move(x);
  return result;
}

// The backward pass of run_encoder_stack from its cache: doutput = dL/doutput (shaped like
// src); the gradients of the layers, the learned fidelity lambda and the final norm accumulate
// into `gradient_*` (modules like the stack's). Returns dL/dsrc. Back through x_{l+1} =
// layer_l(x_l) + lambda_l (x_0 - x_l): x_l gets layer_l's input gradient minus lambda_l g,
// x_0 also every lambda_l g, and V^0 (NeuTRENO) every later layer's share, before layer 0's
// in-projection. With `attention_gradients`, it receives dL/dA of every layer's attention
// probabilities, B x H x L x L each (EncoderBackwardOptions::attention_gradients).
template <class T>
Tensor<T> encoder_stack_backward(
    const std::vector<TransformerEncoderLayer<T>>& layers, const Residual<T>& residual,
    const std::optional<LayerNorm<T>>& norm, const EncoderCache<T>& cache, const Tensor<T>& doutput,
    std::vector<TransformerEncoderLayer<T>>& gradient_layers, Residual<T>& gradient_residual,
    std::optional<LayerNorm<T>>& gradient_norm, EncoderBackwardOptions options,
    std::vector<Tensor<T>>* attention_gradients = nullptr) {
  if (attention_gradients) {
    options.attention_gradients = true;
    attention_gradients->assign(layers.size(), Tensor<T>());
  }
  detail::require_argument(cache.layers.size() == layers.size() && !layers.empty(), "EncoderCache",
                           detail::concat(layers.size(), " layer caches"), cache.layers.size());
  detail::require_argument(
      gradient_layers.size() == layers.size() && gradient_norm.has_value() == norm.has_value(),
      "encoder gradient", "a stack like this one (zeros_like)", "another stack");
  const Index E = doutput.shape().back(), n = doutput.size() / E;
  Tensor<T> g = doutput;
  if (norm) {
    const Matrix<T> d =
        norm->backward(cache.norm, ConstMatrixMap<T>(g.data(), n, E), *gradient_norm);
    MatrixMap<T>(g.data(), n, E) = d;
  }
  const ConstMatrixRef<T> x0 = cache.layers.front().input;
  Matrix<T> dx0 = Matrix<T>::Zero(n, E);
  Matrix<T> first_values;  // dL/dV^0 from the layers after the first
  const bool fidelity = residual.type == ResidualType::fidelity;
  for (std::size_t l = layers.size(); l-- > 0;) {
    const auto layer = static_cast<Index>(l);
    const ConstMatrixMap<T> dnext(g.data(), n, E);
    const Matrix<T>& x = cache.layers[l].input;
    if (fidelity && residual.learned)
      gradient_residual.lambda[layer] += (dnext.array() * (x0 - x).array()).sum();
    const T lambda = fidelity ? residual.lambda[layer] : T(0);
    if (lambda != T(0)) dx0 += lambda * dnext;
    // The forward's StackValues: V^0 from the second layer on, V^{l-1} (read, not
    // differentiated: elliptical's metric).
    StackValues<T> stack;
    const bool reads = cache.layers.front().self_attn.plan.reads_stack_values;
    if (reads && l > 0) {
      stack.first = &cache.layers.front().self_attn.values;
      stack.previous = &cache.layers[l - 1].self_attn.values;
    }
    auto inputs = layers[l].backward(cache.layers[l], g, gradient_layers[l], options, stack,
                                     l == 0 && first_values.size() ? &first_values : nullptr);
    if (inputs.first_values.size()) {
      if (first_values.size())
        first_values += inputs.first_values;
      else
        first_values = std::move(inputs.first_values);
    }
    if (attention_gradients) (*attention_gradients)[l] = std::move(inputs.attention);
    MatrixMap<T> dx(inputs.src.data(), n, E);
    if (lambda != T(0)) dx -= lambda * dnext;
    g = std::move(inputs.src);
  }
  MatrixMap<T>(g.data(), n, E) += dx0;
  return g;
}

template <class T>
class TransformerEncoder {
 public:
  // Parameters of the right shapes (see TransformerEncoderLayer): load them or call
  // reset_parameters().
  explicit TransformerEncoder(const EncoderOptions& options)
      : layers(detail::checked(options).num_layers, TransformerEncoderLayer<T>(options.layer)),
        residual(options.residual, options.num_layers) {
    if (options.final_norm)
      norm.emplace(LayerNormOptions{options.layer.d_model, options.layer.layer_norm_eps});
    if (is_absolute(options.position.type))
      position = AbsolutePosition<T>(options.position, options.layer.d_model);
    detail::attach_relative_positions(layers, options.position);
  }

  // Each layer initialised independently. (PyTorch deep-copies one initialised layer, so
  // its layers start equal; that matters for training only.)
  TransformerEncoder(const EncoderOptions& options, Rng& rng) : TransformerEncoder(options) {
    reset_parameters(rng);
  }

  // The learned positions, then each layer in order (the final norm and a learned fidelity
  // lambda keep their values).
  void reset_parameters(Rng& rng) {
    position.reset_parameters(rng);
    for (auto& layer : layers) layer.reset_parameters(rng);
  }

  Index num_layers() const { return static_cast<Index>(layers.size()); }
  Index d_model() const { return layers.front().d_model(); }
  Index nhead() const { return layers.front().nhead(); }

  // src: B x L x d_model (or L x d_model). mask applies to every layer, as PyTorch's mask and
  // src_key_padding_mask do. An absolute position is added to src first, so the fidelity
  // residual's x_0 includes it.
  EncoderOutput<T> forward(const Tensor<T>& src, const AttentionMask<T>& mask = {},
                           const EncoderForwardOptions& options = {},
                           EncoderCache<T>* cache = nullptr) const;

  // The backward pass of a forward call that filled `cache` (docs/gradients.md): dL/dsrc, and
  // gradient's parameters (an encoder like this one, e.g. zeros_like(*this)) += their
  // gradients, a learned absolute table's and fidelity lambda's included.
  Tensor<T> backward(const EncoderCache<T>& cache, const Tensor<T>& doutput,
                     TransformerEncoder& gradient,
                     const EncoderBackwardOptions& options = {}) const {
    Tensor<T> dsrc = encoder_stack_backward(layers, residual, norm, cache, doutput, gradient.layers,
                                            gradient.residual, gradient.norm, options);
    position.add_gradient(dsrc, gradient.position);
    return dsrc;
  }

  // Parameters, named as in PyTorch's state_dict: layers.{i}..., norm.weight, norm.bias; and
  // attnlens's own (see for_each_parameter).
  std::vector<TransformerEncoderLayer<T>> layers;
  std::optional<LayerNorm<T>> norm;
  Residual<T> residual;
  AbsolutePosition<T> position;  // none unless EncoderOptions::position is absolute
};

template <class T>
EncoderOutput<T> TransformerEncoder<T>::forward(const Tensor<T>& src, const AttentionMask<T>& mask,
                                                const EncoderForwardOptions& options,
                                                EncoderCache<T>* cache) const {
  if (!position.active())
    return run_encoder_stack(layers, residual, norm, src, mask, options, cache);
  Tensor<T> x = src;
  position.add_to(x);
  return run_encoder_stack(layers, residual, norm, x, mask, options, cache);
}

// nn.TransformerEncoder's state_dict names: layers.{i}.<layer names> (with a relative position's
// tables under layers.{i}.self_attn.), then norm.weight, norm.bias; then attnlens's additions:
// position_embeddings.weight (learned absolute positions) and fidelity_lambda (learned).
template <class T, class F>
void for_each_parameter(TransformerEncoder<T>& encoder, const std::string& prefix, F&& f) {
  for (std::size_t i = 0; i < encoder.layers.size(); ++i)
    for_each_parameter(encoder.layers[i], detail::concat(prefix, "layers.", i, "."), f);
  if (encoder.norm) for_each_parameter(*encoder.norm, prefix + "norm.", f);
  for_each_parameter(encoder.position, prefix + "position_embeddings.", f);
  for_each_parameter(encoder.residual, prefix, f);
}

#ifdef ATTNLENS_COMPILED
extern template class TransformerEncoder<float>;
extern template class TransformerEncoder<double>;
#endif

}  // namespace attnlens
