// Triggers from attribution trees (Hao, Dong, Wei and Xu, "Self-Attention Attribution", AAAI
// 2021, section 5's adversarial triggers, here for images; docs/interpretability.md, "Triggers
// from attribution trees"). From the attribution trees (interpret/attribution_tree.hpp) of
// correctly classified images of one class: every patch scores the weights of the strongest
// edges of each tree that touch it; the best-scored patches, with the source images' mean
// pixels there, are the trigger, pasted into images of other classes. The paper takes the
// strongest edges' tokens as a textual trigger; an image patch has no token to repeat, so the
// trigger here is the patches' places and the source class's mean content at those places.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/portable_rng.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/interpret/attribution.hpp"
#include "attnlens/interpret/attribution_tree.hpp"

namespace attnlens {

struct TriggerOptions {
  Index source_images = 20;  // correctly classified images of the class whose trees are used
  Index edges_per_tree = 3;  // each tree's strongest edges that score their patches
  Index patches = 4;         // patches in the trigger
  // Riemann steps m of the attributions (left rule). attattr and `attnlens tree` use 64 for one
  // tree; 20 (the attribution default) keeps ten classes x 20 trees quick, and only the few
  // strongest edges of each tree are used here (docs/interpretability.md).
  Index steps = 20;
  double tau = 0.4;        // the trees' threshold (AttributionTreeOptions::tau)
  Index draws = 5;         // random placements the trigger is compared with
  std::uint64_t seed = 0;  // draw d uses PortableRng(seed + d)
  ParallelOptions parallel;
};

// Throws ArgumentError naming the first field of `options` out of range.
inline void check_trigger_options(const TriggerOptions& options) {
  detail::require_argument(options.source_images >= 1, "TriggerOptions::source_images", ">= 1",
                           options.source_images);
  detail::require_argument(options.edges_per_tree >= 1, "TriggerOptions::edges_per_tree", ">= 1",
                           options.edges_per_tree);
  detail::require_argument(options.patches >= 1, "TriggerOptions::patches", ">= 1",
                           options.patches);
  detail::require_argument(options.steps >= 1, "TriggerOptions::steps", ">= 1", options.steps);
  detail::require_argument(std::isfinite(options.tau) && options.tau > 0 && options.tau <= 1,
                           "TriggerOptions::tau", "a value in (0, 1]", options.tau);
  detail::require_argument(options.draws >= 1, "TriggerOptions::draws", ">= 1", options.draws);
}

// The patch of token t (row-major on the patch grid): the tokens but the class token, in order;
// -1 for the class token.
inline Index trigger_token_patch(Index token, const std::optional<Index>& class_token) {
  if (!class_token) return token;
  if (token == *class_token) return -1;
  return token > *class_token ? token - 1 : token;
}

// Per patch, the sum over `trees` of the weights of each tree's `edges_per_tree` strongest edges
// (fewer when a tree has fewer; of equal weights the earlier edge) that touch it, at either
// end. An edge to or from the class token counts among the strongest but scores only its patch.
// Trees on patch_count patches (+ the class token when there is one). Throws ArgumentError naming
// patch_count, edges_per_tree or the tree with a token off the tokens.
inline Vector<double> trigger_patch_scores(const std::vector<AttributionTree>& trees,
                                           Index patch_count, Index edges_per_tree,
                                           std::optional<Index> class_token = 0) {
  detail::require_argument(patch_count >= 1, "patch_count", ">= 1", patch_count);
  detail::require_argument(edges_per_tree >= 1, "edges_per_tree", ">= 1", edges_per_tree);
  const Index tokens = patch_count + (class_token ? 1 : 0);
  if (class_token)
    detail::require_argument(*class_token >= 0 && *class_token < tokens, "class_token",
                             detail::concat("a token in 0..", tokens - 1, " or none"),
                             *class_token);
  Vector<double> scores = Vector<double>::Zero(patch_count);
  for (std::size_t t = 0; t < trees.size(); ++t) {
    const std::vector<AttributionTreeEdge>& edges = trees[t].edges;
    for (const AttributionTreeEdge& e : edges)
      detail::require_argument(e.from >= 0 && e.from < tokens && e.to >= 0 && e.to < tokens,
                               detail::concat("trees[", t, "]"),
                               detail::concat("edges between tokens 0..", tokens - 1),
                               detail::concat("an edge ", e.from, " -> ", e.to));
    std::vector<std::size_t> order(edges.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return edges[a].weight > edges[b].weight;
    });
    const std::size_t kept = std::min(order.size(), static_cast<std::size_t>(edges_per_tree));
    for (std::size_t k = 0; k < kept; ++k) {
      const AttributionTreeEdge& e = edges[order[k]];
      for (const Index token : {e.from, e.to}) {
        const Index patch = trigger_token_patch(token, class_token);
        if (patch >= 0) scores(patch) += e.weight;
      }
    }
  }
  return scores;
}

// The `count` patches of the highest scores, highest first (of equal scores the lower index).
// Throws ArgumentError naming count outside 1..scores.size().
inline std::vector<Index> select_trigger_patches(const Vector<double>& scores, Index count) {
  detail::require_argument(count >= 1 && count <= scores.size(), "count",
                           detail::concat("1..", scores.size(), " (the patches scored)"), count);
  std::vector<Index> order(static_cast<std::size_t>(scores.size()));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](Index a, Index b) { return scores(a) > scores(b); });
  order.resize(static_cast<std::size_t>(count));
  return order;
}

// `count` distinct patches of patch_count drawn uniformly (a partial Fisher-Yates shuffle with
// PortableRng(seed): the same on every platform), in the order drawn.
inline std::vector<Index> random_trigger_patches(Index patch_count, Index count,
                                                 std::uint64_t seed) {
  detail::require_argument(count >= 1 && count <= patch_count, "count",
                           detail::concat("1..", patch_count, " (the patches)"), count);
  std::vector<Index> all(static_cast<std::size_t>(patch_count));
  std::iota(all.begin(), all.end(), Index{0});
  PortableRng rng(seed);
  for (Index k = 0; k < count; ++k) {
    const auto pick = static_cast<Index>(rng.below(static_cast<std::uint64_t>(patch_count - k)));
    std::swap(all[static_cast<std::size_t>(k)], all[static_cast<std::size_t>(k + pick)]);
  }
  all.resize(static_cast<std::size_t>(count));
  return all;
}

// The mean of images (B x C x H x W, B >= 1) as C x H x W.
template <class T>
Tensor<T> mean_image(const Tensor<T>& images) {
  detail::require_shape(images.rank() == 4 && images.dim(0) >= 1, "images",
                        "[B, C, H, W] with B >= 1", detail::shape_string(images.shape()));
  const Index per_image = images.size() / images.dim(0);
  Tensor<T> mean({images.dim(1), images.dim(2), images.dim(3)});
  Vector<double> sum = Vector<double>::Zero(per_image);
  for (Index b = 0; b < images.dim(0); ++b)
    sum += Eigen::Map<const Vector<T>>(images.data() + b * per_image, per_image)
               .template cast<double>();
  sum /= static_cast<double>(images.dim(0));
  Eigen::Map<Vector<T>>(mean.data(), per_image) = sum.cast<T>();
  return mean;
}

// `images` (B x C x H x W) with every channel's pixels of each of `patches` (row-major on the
// grid of patch_size x patch_size patches) copied from `content` (C x H x W). Throws ShapeError
// for other shapes, ArgumentError naming patch_size (not dividing H and W) or patches (off the
// grid).
template <class T>
Tensor<T> paste_patches(const Tensor<T>& images, const Tensor<T>& content,
                        const std::vector<Index>& patches, Index patch_size) {
  detail::require_shape(images.rank() == 4, "images", "[B, C, H, W]",
                        detail::shape_string(images.shape()));
  const Index C = images.dim(1), H = images.dim(2), W = images.dim(3);
  detail::require_shape(
      content.rank() == 3 && content.dim(0) == C && content.dim(1) == H && content.dim(2) == W,
      "content", detail::concat("[", C, ", ", H, ", ", W, "] (an image's)"),
      detail::shape_string(content.shape()));
  detail::require_argument(patch_size >= 1 && H % patch_size == 0 && W % patch_size == 0,
                           "patch_size", detail::concat("a divisor of ", H, " and ", W),
                           patch_size);
  const Index columns = W / patch_size, count = (H / patch_size) * columns;
  for (const Index p : patches)
    detail::require_argument(p >= 0 && p < count, "patches",
                             detail::concat("patches in 0..", count - 1), p);
  Tensor<T> out = images;
  for (Index b = 0; b < images.dim(0); ++b)
    for (Index c = 0; c < C; ++c)
      for (const Index p : patches) {
        const Index y0 = (p / columns) * patch_size, x0 = (p % columns) * patch_size;
        out.matrix({b, c}).block(y0, x0, patch_size, patch_size) =
            content.matrix({c}).block(y0, x0, patch_size, patch_size);
      }
  return out;
}

// The attribution tree of every image of `images` (the model's input, normalized) for its
// target: every layer's attention attribution for the whole batch at once (the images are
// independent: the same as layer_attributions_of_image one by one, up to rounding).
template <class T>
std::vector<AttributionTree> attribution_trees(const VisionTransformer<T>& model,
                                               const Tensor<T>& images,
                                               const std::vector<Index>& targets,
                                               const AttributionTreeOptions& tree_options,
                                               const AttributionOptions& options = {}) {
  const Index B = images.rank() == 4 ? images.dim(0) : 0;
  std::vector<std::vector<Tensor<T>>> per_image(static_cast<std::size_t>(B));
  for (Index l = 0; l < model.options().encoder.num_layers; ++l) {
    const Tensor<T> a = attention_attribution(model, images, targets, l, options).attribution;
    const Index per = a.size() / B;
    for (Index b = 0; b < B; ++b) {
      Tensor<T> one({a.dim(1), a.dim(2), a.dim(3)});
      std::copy_n(a.data() + b * per, per, one.data());
      per_image[static_cast<std::size_t>(b)].push_back(std::move(one));
    }
  }
  std::vector<AttributionTree> trees;
  for (const auto& layers : per_image) trees.push_back(attribution_tree(layers, tree_options));
  return trees;
}

template <class T>
struct AttributionTrigger {
  std::vector<AttributionTree> trees;  // one per source image
  Vector<double> scores;               // trigger_patch_scores, one per patch
  std::vector<Index> patches;          // select_trigger_patches, highest score first
  Tensor<T> content;                   // the sources' mean image, C x H x W
};

// The trigger of class `target` from `sources` (the model's input, normalized; the caller picks
// correctly classified images of the class): their trees for `target` (options.steps, tau), the
// patch scores of options.edges_per_tree edges per tree, the options.patches best patches and
// the sources' mean image. options.source_images is the caller's business (the number of
// sources given is used). Throws as check_trigger_options and attention_attribution.
template <class T>
AttributionTrigger<T> attribution_trigger(const VisionTransformer<T>& model,
                                          const Tensor<T>& sources, Index target,
                                          const TriggerOptions& options = {}) {
  check_trigger_options(options);
  const VisionTransformerOptions& o = model.options();
  const Index patch_count = (o.image_height / o.patch_size) * (o.image_width / o.patch_size);
  detail::require_argument(options.patches <= patch_count, "TriggerOptions::patches",
                           detail::concat("<= ", patch_count, " (the model's patches)"),
                           options.patches);
  const Index B = sources.rank() == 4 ? sources.dim(0) : 0;
  detail::require_argument(B >= 1, "sources", "at least one image", "none");
  AttributionTreeOptions tree_options;
  tree_options.tau = options.tau;
  tree_options.class_token = vit_class_token(o);
  AttributionOptions attribution;
  attribution.steps = options.steps;
  attribution.parallel = options.parallel;
  AttributionTrigger<T> trigger;
  trigger.trees =
      attribution_trees(model, sources, std::vector<Index>(static_cast<std::size_t>(B), target),
                        tree_options, attribution);
  trigger.scores = trigger_patch_scores(trigger.trees, patch_count, options.edges_per_tree,
                                        tree_options.class_token);
  trigger.patches = select_trigger_patches(trigger.scores, options.patches);
  trigger.content = mean_image(sources);
  return trigger;
}

// What the model makes of some images: the share classified as their label and the share
// classified as `target`.
struct TriggerOutcome {
  double accuracy = 0;
  double target_share = 0;
};

// The outcome on `images` (the model's input, normalized) with their `labels`, in batches of
// batch_size. Throws ArgumentError naming labels or target when they are no classes of the
// model, batch_size < 1.
template <class T>
TriggerOutcome trigger_outcome(const VisionTransformer<T>& model, const Tensor<T>& images,
                               const std::vector<Index>& labels, Index target,
                               Index batch_size = 500, const ParallelOptions& parallel = {}) {
  detail::check_targets(model, images, labels);
  detail::require_argument(target >= 0 && target < model.options().num_classes, "target",
                           detail::concat("a class in 0..", model.options().num_classes - 1),
                           target);
  EncoderForwardOptions forward;
  forward.parallel = parallel;
  const std::vector<Index> predicted =
      predicted_classes_batched(model, images, batch_size, forward);
  Index correct = 0, as_target = 0;
  for (std::size_t i = 0; i < predicted.size(); ++i) {
    correct += predicted[i] == labels[i];
    as_target += predicted[i] == target;
  }
  const double total = static_cast<double>(std::max<std::size_t>(predicted.size(), 1));
  return {static_cast<double>(correct) / total, static_cast<double>(as_target) / total};
}

}  // namespace attnlens
