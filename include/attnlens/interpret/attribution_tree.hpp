// Attribution trees (Hao, Dong, Wei and Xu, "Self-Attention Attribution", AAAI 2021; docs/math.md
// section 5) as the reference code's attribution_tree.py builds them from one example's attention
// attribution (interpret/attribution.hpp): per layer S^l = the heads' sum divided by its maximum,
// entries <= tau dropped; a root token; from the top layer down an edge i -> j ("i takes
// information from j through layer l") when i is in the tree and j is not, so every node but
// the root has one parent. Where the code and MATH.md differ it follows the code
// (docs/interpretability.md, "Attribution tree").
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/interpret/attribution.hpp"

namespace attnlens {

struct AttributionTreeOptions {
  // Entries of S^l above tau give edges, those <= tau are dropped (attattr's strict `> threshold`
  // test; MATH.md's `>= tau` differs only at equality). In (0, 1]; at 1 nothing passes.
  double tau = 0.4;
  // The root token; default: the token with the most attribution summed over the layers.
  std::optional<Index> root;
  // The class token (attattr's [CLS], token 0): never the automatic root, and, unless it is the
  // root, its row gives no edge and does not count for a layer's maximum (it may still be a
  // child). std::nullopt for a model without one.
  std::optional<Index> class_token = 0;
};

struct AttributionTreeEdge {
  Index layer = 0;
  Index from = 0;     // the parent i: it takes information from `to` through `layer`
  Index to = 0;       // the child j, new to the tree
  double weight = 0;  // S^layer[from, to], in (tau, 1]
};

struct AttributionTree {
  Index root = 0;
  // The highest layer with positive attribution in the rows that may give edges: only the
  // root's edges are taken there (attattr's first step). -1: no such layer, the tree is its root.
  Index top_layer = -1;
  std::vector<Index> nodes;                // the root, then each node as it joined
  std::vector<AttributionTreeEdge> edges;  // in the order they were added
};

namespace detail {

// The attributions are [H, L, L] per layer with one L, finite; the options fit L tokens.
template <class T>
Index check_tree_attributions(const std::vector<Tensor<T>>& attributions,
                              const AttributionTreeOptions& options) {
  require_argument(!attributions.empty(), "attributions", "at least one layer", "none");
  const Tensor<T>& first = attributions.front();
  const Index L = first.rank() == 3 ? first.dim(1) : 0;
  for (std::size_t l = 0; l < attributions.size(); ++l) {
    const Tensor<T>& a = attributions[l];
    const std::string what = concat("attributions[", l, "]");
    require_shape(a.rank() == 3 && a.dim(0) >= 1 && a.dim(1) >= 1 && a.dim(1) == a.dim(2) &&
                      (L == 0 || a.dim(1) == L),
                  what,
                  L > 0 ? concat("[H, ", L, ", ", L, "] (H >= 1, the tokens of attributions[0])")
                        : std::string("[H, L, L] with H, L >= 1"),
                  shape_string(a.shape()));
    require_argument(Eigen::Map<const Vector<T>>(a.data(), a.size()).allFinite(), what,
                     "finite values", "a NaN or infinity");
  }
  require_argument(std::isfinite(options.tau) && options.tau > 0 && options.tau <= 1,
                   "AttributionTreeOptions::tau", "a value in (0, 1]", options.tau);
  if (options.class_token)
    require_argument(*options.class_token >= 0 && *options.class_token < L,
                     "AttributionTreeOptions::class_token",
                     concat("a token in 0..", L - 1, " (", L, " tokens) or none"),
                     *options.class_token);
  if (options.root)
    require_argument(*options.root >= 0 && *options.root < L, "AttributionTreeOptions::root",
                     concat("a token in 0..", L - 1, " (", L, " tokens)"), *options.root);
  else
    require_argument(!options.class_token || L >= 2, "attributions",
                     "a token besides the class token to root the tree at", "1 token");
  return L;
}

// Layer l's attribution summed over the heads, in double (head 0 first).
template <class T>
Matrix<double> head_sum(const Tensor<T>& attribution) {
  Matrix<double> sum = attribution.matrix({0}).template cast<double>();
  for (Index h = 1; h < attribution.dim(0); ++h)
    sum += attribution.matrix({h}).template cast<double>();
  return sum;
}

// Whether row i may give edges: every row but the class token's, which may when it is the root.
inline bool tree_parent_row(Index i, Index root, const AttributionTreeOptions& options) {
  return !options.class_token || i != *options.class_token || i == root;
}

// The largest entry of the rows that may give edges.
inline double tree_layer_maximum(const Matrix<double>& sum, Index root,
                                 const AttributionTreeOptions& options) {
  double maximum = -std::numeric_limits<double>::infinity();
  for (Index i = 0; i < sum.rows(); ++i)
    if (tree_parent_row(i, root, options)) maximum = std::max(maximum, sum.row(i).maxCoeff());
  return maximum;
}

}  // namespace detail

// The automatic root: the token i (not the class token) with the largest
// sum_{j != i} max(0, C_ij), C = the attributions summed over layers and heads (attattr's
// att_combine_layer: its normalization by the maximum does not change the order); of equal
// sums the last token, as attattr's reversed argsort does with a stable sort. Throws as
// attribution_tree.
template <class T>
Index attribution_tree_root(const std::vector<Tensor<T>>& attributions,
                            AttributionTreeOptions options = {}) {
  options.root.reset();
  const Index L = detail::check_tree_attributions(attributions, options);
  Matrix<double> combined = Matrix<double>::Zero(L, L);
  for (const Tensor<T>& a : attributions) combined += detail::head_sum(a);
  Index root = -1;
  double best = 0;
  for (Index i = 0; i < L; ++i) {
    if (options.class_token && i == *options.class_token) continue;
    double score = 0;
    for (Index j = 0; j < L; ++j)
      if (j != i) score += std::max(0.0, combined(i, j));
    if (root < 0 || score >= best) {
      root = i;
      best = score;
    }
  }
  return root;
}

// S^l of every layer: the heads' sum divided by its largest entry over the rows that may give
// edges (all but the class token's, unless it is `root`); a layer whose largest entry there is
// <= 0 has no positive attribution to give edges and is all zeros here (attattr would divide by
// |max| there, or by 0: it starts below BERT's last layer, where only [CLS]'s row has any).
template <class T>
std::vector<Matrix<double>> tree_layer_scores(const std::vector<Tensor<T>>& attributions,
                                              Index root,
                                              const AttributionTreeOptions& options = {}) {
  const Index L = detail::check_tree_attributions(attributions, options);
  detail::require_argument(root >= 0 && root < L, "root",
                           detail::concat("a token in 0..", L - 1, " (", L, " tokens)"), root);
  std::vector<Matrix<double>> scores;
  for (const Tensor<T>& a : attributions) {
    Matrix<double> s = detail::head_sum(a);
    const double maximum = detail::tree_layer_maximum(s, root, options);
    if (maximum > 0)
      s /= maximum;
    else
      s.setZero();
    scores.push_back(std::move(s));
  }
  return scores;
}

// The attribution tree of one example from every layer's attribution, attributions[l] = H x L x L
// (attention_attribution of layer l, one image; layer_attributions_of_image). The root is
// options.root or attribution_tree_root. At the top layer (the highest with positive scores)
// the root's row gives its edges, keys in increasing order; at each layer below, rows in
// increasing order (the class token's only if it is the root) and in each row the keys in
// increasing order: an edge i -> j whenever i is in the tree (nodes added earlier in the same
// layer included), j is not and S^l[i, j] > tau. A node is thus claimed by the first such row,
// not by its strongest parent, as in attattr. Throws ShapeError for attributions of other shapes
// or token counts, ArgumentError naming the option (tau outside (0, 1], a root or class token off
// the tokens), for non-finite attributions, and for no layers.
template <class T>
AttributionTree attribution_tree(const std::vector<Tensor<T>>& attributions,
                                 const AttributionTreeOptions& options = {}) {
  const Index L = detail::check_tree_attributions(attributions, options);
  AttributionTree tree;
  tree.root = options.root ? *options.root : attribution_tree_root(attributions, options);
  const std::vector<Matrix<double>> scores = tree_layer_scores(attributions, tree.root, options);
  std::vector<bool> in_tree(static_cast<std::size_t>(L), false);
  const auto add = [&](Index layer, Index i, Index j) {
    in_tree[static_cast<std::size_t>(j)] = true;
    tree.nodes.push_back(j);
    tree.edges.push_back({layer, i, j, scores[static_cast<std::size_t>(layer)](i, j)});
  };
  in_tree[static_cast<std::size_t>(tree.root)] = true;
  tree.nodes.push_back(tree.root);
  for (Index l = static_cast<Index>(scores.size()) - 1; l >= 0 && tree.top_layer < 0; --l)
    if (scores[static_cast<std::size_t>(l)].maxCoeff() > 0) tree.top_layer = l;
  if (tree.top_layer < 0) return tree;
  for (Index j = 0; j < L; ++j)
    if (j != tree.root &&
        scores[static_cast<std::size_t>(tree.top_layer)](tree.root, j) > options.tau)
      add(tree.top_layer, tree.root, j);
  for (Index l = tree.top_layer - 1; l >= 0; --l) {
    const Matrix<double>& s = scores[static_cast<std::size_t>(l)];
    for (Index i = 0; i < L; ++i) {
      if (!in_tree[static_cast<std::size_t>(i)] || !detail::tree_parent_row(i, tree.root, options))
        continue;
      for (Index j = 0; j < L; ++j)
        if (!in_tree[static_cast<std::size_t>(j)] && s(i, j) > options.tau) add(l, i, j);
    }
  }
  return tree;
}

// The class token of a ViT's tokens for AttributionTreeOptions::class_token: 0 if it has one.
inline std::optional<Index> vit_class_token(const VisionTransformerOptions& options) {
  return options.class_token ? std::optional<Index>(0) : std::nullopt;
}

// Every layer's attribution of image `image` of `images` (the model's input, normalized) for
// class `target`, H x L x L each: the input of attribution_tree. Throws as attention_attribution
// and ArgumentError naming `image` when it is not one of the images.
template <class T>
std::vector<Tensor<T>> layer_attributions_of_image(const VisionTransformer<T>& model,
                                                   const Tensor<T>& images, Index image,
                                                   Index target,
                                                   const AttributionOptions& options = {}) {
  const Index B = images.rank() == 4 ? images.dim(0) : 0;
  detail::require_argument(image >= 0 && image < B, "image",
                           detail::concat("0..", B - 1, " (", B, " images)"), image);
  Tensor<T> one({1, images.dim(1), images.dim(2), images.dim(3)});
  std::copy_n(images.data() + image * one.size(), one.size(), one.data());
  std::vector<Tensor<T>> layers;
  for (Index l = 0; l < model.options().encoder.num_layers; ++l) {
    const Tensor<T> a = attention_attribution(model, one, {target}, l, options).attribution;
    layers.push_back(a.reshaped({a.dim(1), a.dim(2), a.dim(3)}));
  }
  return layers;
}

}  // namespace attnlens
