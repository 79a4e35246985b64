// TransformerEncoder<T>: torch.nn.TransformerEncoder (a stack of TransformerEncoderLayer with an
// optional final LayerNorm `norm`), with a choice of residual between layers (MATH.md section 2:
// standard, or fidelity x_{l+1} = layer_l(x_l) + lambda_l (x_0 - x_l)) and per-layer attention
// maps.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/attention/mask.hpp"
#include "attnlens/blocks/encoder_layer.hpp"
#include "attnlens/blocks/residual.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/layers/layer_norm.hpp"

namespace attnlens {

struct EncoderOptions {
  EncoderLayerOptions layer;  // every layer has the same options, as in PyTorch
  Index num_layers = 1;
  bool final_norm = false;  // nn.TransformerEncoder(norm=LayerNorm(d_model, layer_norm_eps))
  ResidualOptions residual;
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
  return options;
}

}  // namespace detail

// The stack's forward pass: the layers with the residual variant between them, then the final
// norm if any. Shared by TransformerEncoder and VisionTransformer, which name the same
// members differently (layers / blocks).
template <class T>
EncoderOutput<T> run_encoder_stack(const std::vector<TransformerEncoderLayer<T>>& layers,
                                   const Residual<T>& residual,
                                   const std::optional<LayerNorm<T>>& norm, const Tensor<T>& src,
                                   const AttentionMask<T>& mask,
                                   const EncoderForwardOptions& options, EncoderCache<T>* cache) {
  if (cache) cache->layers.resize(layers.size());
  EncoderOutput<T> result;
  Tensor<T> x = src;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    auto out = layers[l].forward(x, mask, options, cache ? &cache->layers[l] : nullptr);
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
  }

  // Each layer initialised independently. (PyTorch deep-copies one initialised layer, so
  // its layers start equal; that matters for training only.)
  TransformerEncoder(const EncoderOptions& options, Rng& rng) : TransformerEncoder(options) {
    for (auto& layer : layers) layer.reset_parameters(rng);
  }

  Index num_layers() const { return static_cast<Index>(layers.size()); }
  Index d_model() const { return layers.front().d_model(); }
  Index nhead() const { return layers.front().nhead(); }

  // src: B x L x d_model (or L x d_model). mask applies to every layer, as PyTorch's mask and
  // src_key_padding_mask do.
  EncoderOutput<T> forward(const Tensor<T>& src, const AttentionMask<T>& mask = {},
                           const EncoderForwardOptions& options = {},
                           EncoderCache<T>* cache = nullptr) const {
    return run_encoder_stack(layers, residual, norm, src, mask, options, cache);
  }

  // Parameters, named as in PyTorch's state_dict: layers.{i}..., norm.weight, norm.bias.
  std::vector<TransformerEncoderLayer<T>> layers;
  std::optional<LayerNorm<T>> norm;
  Residual<T> residual;
};

// nn.TransformerEncoder's state_dict names: layers.{i}.<layer names>, then norm.weight, norm.bias.
template <class T, class F>
void for_each_parameter(TransformerEncoder<T>& encoder, const std::string& prefix, F&& f) {
  for (std::size_t i = 0; i < encoder.layers.size(); ++i)
    for_each_parameter(encoder.layers[i], detail::concat(prefix, "layers.", i, "."), f);
  if (encoder.norm) for_each_parameter(*encoder.norm, prefix + "norm.", f);
}

}  // namespace attnlens
