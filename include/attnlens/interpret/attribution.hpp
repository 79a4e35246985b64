// Attention attribution (Hao, Dong, Wei and Xu, "Self-Attention Attribution", AAAI 2021;
// docs/math.md section 5): integrated gradients of a ViT classifier's target-class probability F
// over one layer's attention probabilities, from the zero matrix, all heads of the layer scaled
// together (A -> alpha A) while the other layers run normally:
//   Attr_h(A) = A_h (*) (1/m) sum_k dF(alpha_k A)/dA_h
// with alpha_k from a left (k/m, k = 0..m-1: the reference code's), right or midpoint Riemann
// sum. It runs on the ViT's own interventions (EncoderForwardOptions::head_scales and the
// backward's attention gradients): no second attention loop (docs/interpretability.md).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// Where in each of the m intervals of [0, 1] the gradient is taken.
enum class RiemannRule {
  left,      // alpha_k = k / m, k = 0..m-1 (attattr's; includes the baseline, not A)
  right,     // alpha_k = (k + 1) / m (includes A, not the baseline; docs/math.md's formula)
  midpoint,  // alpha_k = (k + 1/2) / m (second-order accurate)
};

inline constexpr Named<RiemannRule> k_riemann_rule_names[] = {
    {RiemannRule::left, "left"}, {RiemannRule::right, "right"}, {RiemannRule::midpoint, "midpoint"}};

struct AttributionOptions {
  Index steps = 20;  // m
  RiemannRule rule = RiemannRule::left;
  ParallelOptions parallel;
};

// More steps than anyone needs (completeness is within 1e-7 at m = 100), and each costs a forward
// and backward pass per image: a bound checked before the points are allocated.
inline constexpr Index k_max_attribution_steps = 10000;

// The m scales alpha_k of `options` in increasing order; throws ArgumentError for steps < 1 or
// above k_max_attribution_steps, or a rule outside RiemannRule.
inline std::vector<double> riemann_points(const AttributionOptions& options) {
  detail::require_argument(options.steps >= 1, "AttributionOptions::steps", ">= 1", options.steps);
  detail::require_argument(options.steps <= k_max_attribution_steps, "AttributionOptions::steps",
                           detail::concat("<= ", k_max_attribution_steps), options.steps);
  double offset = 0;
  switch (options.rule) {
    case RiemannRule::left:
      break;
    case RiemannRule::right:
      offset = 1;
      break;
    case RiemannRule::midpoint:
      offset = 0.5;
      break;
    default:
      throw ArgumentError(detail::concat("AttributionOptions::rule: expected one of ",
                                         detail::quoted_names(k_riemann_rule_names), "; got ",
                                         static_cast<int>(options.rule)));
  }
  std::vector<double> alphas(static_cast<std::size_t>(options.steps));
  for (Index k = 0; k < options.steps; ++k)
    alphas[static_cast<std::size_t>(k)] =
        (static_cast<double>(k) + offset) / static_cast<double>(options.steps);
  return alphas;
}

// One pass of a classifier ViT for its target classes F_b = softmax(logits_b)[targets_b].
template <class T>
struct TargetProbability {
  std::vector<double> probability;  // F_b, one per image
  // Per layer, B x H x L x L: the attention probabilities, when the forward options ask for
  // them (EncoderForwardOptions::weights = per_head), and dF/dA of the probabilities as the
  // layer used them (after head_scales), when gradients are asked for.
  std::vector<Tensor<T>> weights;
  std::vector<Tensor<T>> attention_gradients;
};

namespace detail {

// The model is a classifier and `targets` holds one class of it per image of `images`.
template <class T>
void check_targets(const VisionTransformer<T>& model, const Tensor<T>& images,
                   const std::vector<Index>& targets) {
  const Index classes = model.options().num_classes;
  require_argument(classes > 0, "model", "a classifier (num_classes > 0)",
                   "a ViT without a head (num_classes 0)");
  const Index images_given = images.rank() == 4 ? images.dim(0) : 0;
  require_argument(static_cast<Index>(targets.size()) == images_given, "targets",
                   concat(images_given, " classes (one per image)"), targets.size());
  for (const Index target : targets)
    require_argument(target >= 0 && target < classes, "targets",
                     concat("classes in 0..", classes - 1), target);
}

template <class T>
void check_layer(const VisionTransformer<T>& model, Index layer) {
  const Index layers = model.options().encoder.num_layers;
  require_argument(layer >= 0 && layer < layers, "layer",
                   concat("0..", layers - 1, " (the model has ", layers, " layers)"), layer);
}

// head_scales that scale layer `layer`'s heads together by alpha and leave the others alone.
template <class T>
std::vector<std::vector<double>> layer_scaled(const VisionTransformer<T>& model, Index layer,
                                              double alpha) {
  std::vector<std::vector<double>> scales(
      static_cast<std::size_t>(model.options().encoder.num_layers));
  scales[static_cast<std::size_t>(layer)] = {alpha};
  return scales;
}

// A (*) G elementwise, two tensors of one shape.
template <class T>
Tensor<T> elementwise_product(const Tensor<T>& a, const Tensor<T>& g) {
  require_shape(a.shape() == g.shape(), "elementwise_product operands", shape_string(a.shape()),
                shape_string(g.shape()));
  Tensor<T> out(a.shape());
  Eigen::Map<Vector<T>>(out.data(), out.size()) =
      Eigen::Map<const Vector<T>>(a.data(), a.size())
          .cwiseProduct(Eigen::Map<const Vector<T>>(g.data(), g.size()));
  return out;
}

}  // namespace detail

// The target probabilities of `images` (the model's input, normalized) under `forward` (its
// head_scales, weights and threads); with `gradients`, one backward pass from sum_b F_b (the
// images are independent, so image b's share is dF_b) for every layer's dF/dA.
// dF_b/dlogits_bc = F_b (delta_{c, target_b} - p_bc).
template <class T>
TargetProbability<T> target_probability(const VisionTransformer<T>& model, const Tensor<T>& images,
                                        const std::vector<Index>& targets,
                                        const EncoderForwardOptions& forward, bool gradients) {
  detail::check_targets(model, images, targets);
  VitCache<T> cache;
  VitOutput<T> out = model.forward(images, forward, gradients ? &cache : nullptr);
  Matrix<T> p = out.logits.matrix();
  softmax_rows<T>(p);
  TargetProbability<T> result;
  result.weights = std::move(out.weights);
  const Index B = p.rows();
  Matrix<T> dlogits(B, p.cols());
  for (Index b = 0; b < B; ++b) {
    const Index t = targets[static_cast<std::size_t>(b)];
    result.probability.push_back(static_cast<double>(p(b, t)));
    dlogits.row(b) = -p(b, t) * p.row(b);
    dlogits(b, t) += p(b, t);
  }
  if (gradients) {
    // The parameters' gradients come with the pass; attribution does not read them.
    VisionTransformer<T> parameter_gradient = zeros_like(model);
    EncoderBackwardOptions backward;
    backward.parallel = forward.parallel;
    model.backward(cache, Tensor<T>::from_matrix(dlogits), parameter_gradient, backward,
                   &result.attention_gradients);
  }
  return result;
}

// Each image's predicted class (its largest logit; the first of equal ones).
template <class T>
std::vector<Index> predicted_classes(const VisionTransformer<T>& model, const Tensor<T>& images,
                                     const EncoderForwardOptions& forward = {}) {
  const VitOutput<T> out = model.forward(images, forward);
  std::vector<Index> classes(static_cast<std::size_t>(out.logits.dim(0)));
  for (Index b = 0; b < out.logits.dim(0); ++b)
    out.logits.matrix().row(b).maxCoeff(&classes[static_cast<std::size_t>(b)]);
  return classes;
}

// predicted_classes of `images` in batches of batch_size (>= 1) images.
template <class T>
std::vector<Index> predicted_classes_batched(const VisionTransformer<T>& model,
                                             const Tensor<T>& images, Index batch_size,
                                             const EncoderForwardOptions& forward = {}) {
  detail::require_argument(batch_size >= 1, "batch_size", ">= 1", batch_size);
  const Index N = images.dim(0), per_image = images.size() / std::max<Index>(N, 1);
  std::vector<Index> classes;
  for (Index begin = 0; begin < N; begin += batch_size) {
    const Index n = std::min(batch_size, N - begin);
    Tensor<T> batch({n, images.dim(1), images.dim(2), images.dim(3)});
    std::copy_n(images.data() + begin * per_image, n * per_image, batch.data());
    const std::vector<Index> predicted = predicted_classes(model, batch, forward);
    classes.insert(classes.end(), predicted.begin(), predicted.end());
  }
  return classes;
}

// (1/m) sum_k dF(alpha_k A)/dA of layer `layer`, B x H x L x L: the average gradient that
// attribution multiplies by A.
template <class T>
Tensor<T> average_attention_gradient(const VisionTransformer<T>& model, const Tensor<T>& images,
                                     const std::vector<Index>& targets, Index layer,
                                     const AttributionOptions& options = {}) {
  const std::vector<double> alphas = riemann_points(options);
  detail::check_layer(model, layer);
  detail::check_targets(model, images, targets);
  EncoderForwardOptions forward;
  forward.parallel = options.parallel;
  Tensor<T> sum;
  for (const double alpha : alphas) {
    forward.head_scales = detail::layer_scaled(model, layer, alpha);
    Tensor<T> gradient = std::move(
        target_probability(model, images, targets, forward, true)
            .attention_gradients[static_cast<std::size_t>(layer)]);
    if (sum.empty())
      sum = std::move(gradient);
    else
      Eigen::Map<Vector<T>>(sum.data(), sum.size()) +=
          Eigen::Map<const Vector<T>>(gradient.data(), gradient.size());
  }
  Eigen::Map<Vector<T>>(sum.data(), sum.size()) /= static_cast<T>(alphas.size());
  return sum;
}

template <class T>
struct LayerAttribution {
  Index layer = 0;
  std::vector<Index> targets;  // the class F is the probability of, per image
  Tensor<T> attribution;       // B x H x L x L
  std::vector<double> probability;           // F(A) per image
  std::vector<double> baseline_probability;  // F(0): the layer's attention scaled by 0
};

// Attr_h of layer `layer` for every image of `images` (the model's input, normalized) and head:
// A_h (*) average_attention_gradient. targets: one class per image (predicted_classes for the
// predicted ones). Throws ArgumentError naming `layer`, `targets` or the options' field.
template <class T>
LayerAttribution<T> attention_attribution(const VisionTransformer<T>& model,
                                          const Tensor<T>& images,
                                          const std::vector<Index>& targets, Index layer,
                                          const AttributionOptions& options = {}) {
  riemann_points(options);
  detail::check_layer(model, layer);
  EncoderForwardOptions forward;
  forward.parallel = options.parallel;
  forward.weights = AttentionWeights::per_head;
  const TargetProbability<T> clean = target_probability(model, images, targets, forward, false);
  forward.weights = AttentionWeights::none;
  forward.head_scales = detail::layer_scaled(model, layer, 0.0);
  LayerAttribution<T> result;
  result.layer = layer;
  result.targets = targets;
  result.attribution =
      detail::elementwise_product(clean.weights[static_cast<std::size_t>(layer)],
                          average_attention_gradient(model, images, targets, layer, options));
  result.probability = clean.probability;
  result.baseline_probability =
      target_probability(model, images, targets, forward, false).probability;
  return result;
}

// Completeness of integrated gradients: sum_{h,i,j} Attr_h(A)_ij = F(A) - F(0) exactly for the
// integral; the Riemann sum misses by sum - (F(A) - F(0)), returned per image.
template <class T>
std::vector<double> completeness_gaps(const LayerAttribution<T>& a) {
  const Index B = a.attribution.rank() == 4 ? a.attribution.dim(0) : 0;
  detail::require_argument(
      B > 0 && a.probability.size() == static_cast<std::size_t>(B) &&
          a.baseline_probability.size() == a.probability.size(),
      "LayerAttribution", "an attention_attribution result", "an incomplete one");
  const Index per_image = a.attribution.size() / B;
  std::vector<double> gaps;
  for (Index b = 0; b < B; ++b) {
    const auto at = static_cast<std::size_t>(b);
    const double sum = Eigen::Map<const Vector<T>>(a.attribution.data() + b * per_image, per_image)
                           .template cast<double>()
                           .sum();
    gaps.push_back(sum - (a.probability[at] - a.baseline_probability[at]));
  }
  return gaps;
}

}  // namespace attnlens
