// Head importance and pruning (Hao et al., "Self-Attention Attribution", AAAI 2021, section 4,
// and its reference code; docs/math.md section 5): a score per head of a classifier ViT
// (layers x heads) from images with their gold labels, by attribution, by attention weight, by
// Taylor importance (Michel et al., "Are Sixteen Heads Really Better than One?", 2019) or at
// random, and the accuracy with the lowest-scored fraction of all heads zeroed
// (EncoderForwardOptions::head_scales 0) and no fine-tuning (docs/interpretability.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/interpret/attribution.hpp"

namespace attnlens {

enum class HeadRanking {
  attribution,  // sum over images of max_ij Attr_h (the paper's)
  attention,    // sum over images of max_ij A_h
  taylor,       // sum over images of |sum ctx_h . dF/dctx_h|
  random,       // uniform draws
};

inline constexpr Named<HeadRanking> k_head_ranking_names[] = {
    {HeadRanking::attribution, "attribution"},
    {HeadRanking::attention, "attention"},
    {HeadRanking::taylor, "taylor"},
    {HeadRanking::random, "random"}};

namespace detail {

// scores(layer, h) += sum over images b of reduce(tensor[b, h]), tensor B x H x L x L.
template <class T, class Reduce>
void add_per_head(Matrix<double>& scores, Index layer, const Tensor<T>& tensor, Reduce&& reduce) {
  for (Index b = 0; b < tensor.dim(0); ++b)
    for (Index h = 0; h < tensor.dim(1); ++h)
      scores(layer, h) += static_cast<double>(reduce(tensor.matrix({b, h})));
}

template <class T>
Matrix<double> zero_scores(const VisionTransformer<T>& model) {
  return Matrix<double>::Zero(model.options().encoder.num_layers,
                              model.options().encoder.layer.nhead);
}

}  // namespace detail

// Attribution importance, layers x heads: sum over images of max_ij Attr_h(A) of the head's
// layer, F the probability of each image's label (gold labels, as the paper prunes). images: the
// model's input (normalized).
template <class T>
Matrix<double> attribution_head_importance(const VisionTransformer<T>& model,
                                           const Tensor<T>& images,
                                           const std::vector<Index>& labels,
                                           const AttributionOptions& options = {}) {
  riemann_points(options);
  EncoderForwardOptions forward;
  forward.parallel = options.parallel;
  forward.weights = AttentionWeights::per_head;
  const TargetProbability<T> clean = target_probability(model, images, labels, forward, false);
  Matrix<double> scores = detail::zero_scores(model);
  for (Index l = 0; l < scores.rows(); ++l) {
    const Tensor<T> attribution = detail::elementwise_product(
        clean.weights[static_cast<std::size_t>(l)],
        average_attention_gradient(model, images, labels, l, options));
    detail::add_per_head(scores, l, attribution, [](const auto& m) { return m.maxCoeff(); });
  }
  return scores;
}

// Attention-weight importance, layers x heads: sum over images of max_ij A_h.
template <class T>
Matrix<double> attention_head_importance(const VisionTransformer<T>& model,
                                         const Tensor<T>& images,
                                         const ParallelOptions& parallel = {}) {
  EncoderForwardOptions forward;
  forward.parallel = parallel;
  forward.weights = AttentionWeights::per_head;
  const VitOutput<T> out = model.forward(images, forward);
  Matrix<double> scores = detail::zero_scores(model);
  for (Index l = 0; l < scores.rows(); ++l)
    detail::add_per_head(scores, l, out.weights[static_cast<std::size_t>(l)],
                         [](const auto& m) { return m.maxCoeff(); });
  return scores;
}

// Taylor importance, layers x heads: sum over images of |sum_{i,c} ctx_h,ic dF/dctx_h,ic|, ctx_h
// = A_h V_h the head's context and F the probability of the label. The context's gradient is
// not returned by the backward pass, but dF/dA_h = dF/dctx_h V_h^T is, and
//   sum_ij A_h,ij (dF/dA_h)_ij = sum_ij A_ij sum_c dctx_ic V_jc = sum_ic dctx_ic ctx_ic,
// so the score is |sum_ij A_h (*) dF/dA_h| from one forward and backward pass at A.
template <class T>
Matrix<double> taylor_head_importance(const VisionTransformer<T>& model, const Tensor<T>& images,
                                      const std::vector<Index>& labels,
                                      const ParallelOptions& parallel = {}) {
  EncoderForwardOptions forward;
  forward.parallel = parallel;
  forward.weights = AttentionWeights::per_head;
  const TargetProbability<T> pass = target_probability(model, images, labels, forward, true);
  Matrix<double> scores = detail::zero_scores(model);
  for (Index l = 0; l < scores.rows(); ++l) {
    const auto at = static_cast<std::size_t>(l);
    detail::add_per_head(scores, l,
                         detail::elementwise_product(pass.weights[at], pass.attention_gradients[at]),
                         [](const auto& m) { return std::abs(m.sum()); });
  }
  return scores;
}

// Random importance, layers x heads: uniform draws in [0, 1) from PortableRng(seed), layer by
// layer and head by head: the same on every platform for a seed.
inline Matrix<double> random_head_importance(Index layers, Index heads, std::uint64_t seed) {
  detail::require_argument(layers >= 1 && heads >= 1, "random_head_importance layers x heads",
                           ">= 1 each", detail::concat(layers, " x ", heads));
  PortableRng rng(seed);
  Matrix<double> scores(layers, heads);
  for (Index i = 0; i < scores.size(); ++i) scores.data()[i] = rng.uniform();
  return scores;
}

// How many of `heads` heads the fraction p prunes: floor(p heads), as the reference code's
// int(p * heads); the 1e-9 keeps tenths such as 0.3 * 10 = 2.9999999999999996 at 3.
inline Index pruned_head_count(Index heads, double fraction) {
  detail::require_argument(fraction >= 0 && fraction <= 1, "fraction", "a value in [0, 1]",
                           fraction);
  return std::min(heads, static_cast<Index>(std::floor(fraction * static_cast<double>(heads) + 1e-9)));
}

// The head_scales (EncoderForwardOptions::head_scales, one entry per layer) that zero the
// pruned_head_count lowest-scored heads of all layers together and keep the others at 1. Equal
// scores go in layer-major order (a stable sort), so the choice is deterministic.
inline std::vector<std::vector<double>> pruned_head_scales(const Matrix<double>& importance,
                                                           double fraction) {
  detail::require_argument(importance.size() > 0 && importance.allFinite(), "importance",
                           "finite scores, layers x heads", "empty or non-finite scores");
  const Index heads = importance.cols();
  std::vector<Index> order(static_cast<std::size_t>(importance.size()));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
    return importance.data()[a] < importance.data()[b];
  });
  std::vector<std::vector<double>> scales(static_cast<std::size_t>(importance.rows()),
                                          std::vector<double>(static_cast<std::size_t>(heads), 1.0));
  const Index pruned = pruned_head_count(importance.size(), fraction);
  for (Index k = 0; k < pruned; ++k) {
    const Index head = order[static_cast<std::size_t>(k)];
    scales[static_cast<std::size_t>(head / heads)][static_cast<std::size_t>(head % heads)] = 0.0;
  }
  return scales;
}

// The fraction of `images` (the model's input, normalized) whose largest logit is their label's,
// with `head_scales` applied (EncoderForwardOptions::head_scales; empty: the model as it is), in
// batches of batch_size images.
template <class T>
double head_scaled_accuracy(const VisionTransformer<T>& model, const Tensor<T>& images,
                            const std::vector<Index>& labels,
                            const std::vector<std::vector<double>>& head_scales,
                            Index batch_size = 500, const ParallelOptions& parallel = {}) {
  detail::check_targets(model, images, labels);
  EncoderForwardOptions forward;
  forward.parallel = parallel;
  forward.head_scales = head_scales;
  const std::vector<Index> predicted = predicted_classes_batched(model, images, batch_size, forward);
  Index correct = 0;
  for (std::size_t i = 0; i < predicted.size(); ++i) correct += predicted[i] == labels[i];
  return predicted.empty() ? 0.0
                           : static_cast<double>(correct) / static_cast<double>(predicted.size());
}

}  // namespace attnlens
