// Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
// how much of each input token reaches each token after layer l when attention is followed
// through every layer and the residual connection counts as an identity path. Per layer the
// heads are fused (their mean, as the paper does; or their maximum or minimum), the identity is
// added and the rows renormalised, R_l = rownorm(F_l + I), which for the mean is the paper's
// 0.5 A + 0.5 I; the rollout through layer l is R_l R_{l-1} ... R_0 (docs/interpretability.md).
#pragma once

#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

enum class HeadFusion {
  mean,  // the paper's: the heads' average
  max,   // the largest weight of any head per (query, key)
  min,   // the smallest
};

inline constexpr Named<HeadFusion> k_head_fusion_names[] = {
    {HeadFusion::mean, "mean"}, {HeadFusion::max, "max"}, {HeadFusion::min, "min"}};

struct RolloutOptions {
  HeadFusion head_fusion = HeadFusion::mean;
};

// One layer's heads fused: weights B x H x L x S -> B x L x S.
template <class T>
Tensor<T> fuse_heads(const Tensor<T>& weights, HeadFusion fusion) {
  detail::require_shape(weights.rank() == 4 && weights.dim(1) > 0, "attention weights",
                        "[B, H, L, S] with H >= 1", detail::shape_string(weights.shape()));
  const Index B = weights.dim(0), H = weights.dim(1), L = weights.dim(2), S = weights.dim(3);
  Tensor<T> fused({B, L, S});
  for (Index b = 0; b < B; ++b) {
    auto out = fused.matrix({b});
    out = weights.matrix({b, 0});
    for (Index h = 1; h < H; ++h) {
      const auto head = weights.matrix({b, h});
      switch (fusion) {
        case HeadFusion::mean:
          out += head;
          break;
        case HeadFusion::max:
          out = out.cwiseMax(head);
          break;
        case HeadFusion::min:
          out = out.cwiseMin(head);
          break;
      }
    }
    if (fusion == HeadFusion::mean) out /= static_cast<T>(H);
  }
  return fused;
}

// The rollout through layers 0..l for every l: weights[l] is layer l's per-head attention
// B x H x L x L (a forward with EncoderForwardOptions::weights = per_head); out[l] is B x L x L,
// row i the share of each input token in token i after layer l. Every row sums to 1; a row that
// attends nowhere (a fully masked query) keeps its token through the identity.
template <class T>
std::vector<Tensor<T>> attention_rollout_by_layer(const std::vector<Tensor<T>>& weights,
                                                  const RolloutOptions& options = {}) {
  detail::require_argument(!weights.empty(), "attention rollout weights", "at least one layer",
                           "none");
  const Shape& first = weights.front().shape();
  std::vector<Tensor<T>> rollout;
  for (std::size_t l = 0; l < weights.size(); ++l) {
    const Shape& shape = weights[l].shape();
    detail::require_shape(
        shape.size() == 4 && shape[2] == shape[3] && shape[0] == first[0] && shape[2] == first[2],
        detail::concat("attention rollout weights[", l, "]"),
        first.size() == 4 ? detail::concat("[", first[0], ", H, ", first[2], ", ", first[2], "]")
                          : std::string("[B, H, L, L]"),
        detail::shape_string(shape));
    Tensor<T> layer = fuse_heads(weights[l], options.head_fusion);
    for (Index b = 0; b < layer.dim(0); ++b) {
      auto r = layer.matrix({b});
      r.diagonal().array() += T(1);
      r.array().colwise() /= r.rowwise().sum().array();
      if (l > 0) r = (r * rollout.back().matrix({b})).eval();
    }
    rollout.push_back(std::move(layer));
  }
  return rollout;
}

// The rollout through all layers: attention_rollout_by_layer(weights, options).back().
template <class T>
Tensor<T> attention_rollout(const std::vector<Tensor<T>>& weights,
                            const RolloutOptions& options = {}) {
  return attention_rollout_by_layer(weights, options).back();
}

}  // namespace attnlens
