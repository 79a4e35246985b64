// interpret/attribution_tree.hpp: trees built by hand from small attributions (the heads' sum,
// the class token's row left out of the maxima and the parents, tau's strict comparison, the
// root's row alone at the top layer, the sweep order below it and nodes that join in the same
// layer, root ties, a given root, the class token as root, layers without positive attribution,
// unreachable tokens), bad arguments named; and against an independent Python implementation of
// attattr's attribution_tree.py (tests/reference/oracles/attribution_tree.py) on synthetic
// attributions and on ViTs' autograd attributions, whose trees the library's own attributions
// must give as well.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "attnlens/interpret/attribution_tree.hpp"
#include "support/blocks.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// One layer's attribution, H x L x L, from its heads (each L x L, row-major).
Tensor<double> tree_layer(const std::vector<Matrix<double>>& heads) {
  const Index L = heads.front().rows();
  Tensor<double> a({static_cast<Index>(heads.size()), L, L});
  for (std::size_t h = 0; h < heads.size(); ++h) a.matrix({static_cast<Index>(h)}) = heads[h];
  return a;
}

Matrix<double> tree_matrix(Index L, std::initializer_list<double> values) {
  Matrix<double> m(L, L);
  std::copy(values.begin(), values.end(), m.data());
  return m;
}

void expect_tree(const AttributionTree& tree, Index root, Index top_layer,
                 const std::vector<Index>& nodes, const std::vector<AttributionTreeEdge>& edges) {
  EXPECT_EQ(tree.root, root);
  EXPECT_EQ(tree.top_layer, top_layer);
  EXPECT_EQ(tree.nodes, nodes);
  ASSERT_EQ(tree.edges.size(), edges.size());
  for (std::size_t e = 0; e < edges.size(); ++e) {
    SCOPED_TRACE(e);
    EXPECT_EQ(tree.edges[e].layer, edges[e].layer);
    EXPECT_EQ(tree.edges[e].from, edges[e].from);
    EXPECT_EQ(tree.edges[e].to, edges[e].to);
    EXPECT_DOUBLE_EQ(tree.edges[e].weight, edges[e].weight);
  }
}

// Tokens 0 (the class token), 1, 2, 3; two layers, the top one split over two heads.
std::vector<Tensor<double>> small_tree_attributions() {
  // Layer 1, the heads' sum: CLS's row (9s) is larger than every other but neither sets the
  // maximum (2.0, row 1) nor gives edges. S^1 = sum / 2: row 1 = 0.05, 0, 1.0, 0.4 (= tau:
  // dropped), row 3 = 0.45, 0, 0, 0 (above tau, but the top layer takes the root's row only).
  const Matrix<double> sum1 = tree_matrix(4, {0, 9, 9, 9,        //
                                              0.1, 0, 2.0, 0.8,  //
                                              0, 0, 0, 0,        //
                                              0.9, 0, 0, 0});
  Matrix<double> head0 = sum1, head1 = Matrix<double>::Zero(4, 4);  // sums exact in binary
  head0(1, 2) = 1.5;
  head1(1, 2) = 0.5;
  head0(0, 1) = 4.5;
  head1(0, 1) = 4.5;
  // Layer 0: S^0 = row 2 only, 1.0 to the class token and 0.5 to token 3.
  const Matrix<double> sum0 = tree_matrix(4, {0, 0, 0, 0,      //
                                              0, 0, 0, 0,      //
                                              1.0, 0, 0, 0.5,  //
                                              0, 0, 0, 0});
  return {tree_layer({sum0}), tree_layer({head0, head1})};
}

TEST(AttributionTree, SmallTreeByHand) {
  const std::vector<Tensor<double>> a = small_tree_attributions();
  // Root: summed over the layers, rows 1, 2, 3 give 0.1 + 2.0 + 0.8 = 2.9, 1.0 + 0.5 = 1.5 and
  // 0.9 (CLS's row is no candidate): token 1.
  EXPECT_EQ(attribution_tree_root(a), 1);
  // Layer 1: root 1 -> 2 (1.0); 1 -> 3 is at tau, dropped. Layer 0: row 2 takes 0 and 3.
  expect_tree(attribution_tree(a), 1, 1, {1, 2, 0, 3},
              {{1, 1, 2, 1.0}, {0, 2, 0, 1.0}, {0, 2, 3, 0.5}});
  const std::vector<Matrix<double>> s = tree_layer_scores(a, 1);
  EXPECT_DOUBLE_EQ(s[1](1, 3), 0.4);
  EXPECT_DOUBLE_EQ(s[1](0, 1), 4.5);  // the class token's row, divided by the others' maximum

  // Just below 0.4 the edge 1 -> 3 is in at layer 1, and layer 0's row 2 then finds 3 taken.
  AttributionTreeOptions options;
  options.tau = 0.4 - 1e-12;
  expect_tree(attribution_tree(a, options), 1, 1, {1, 2, 3, 0},
              {{1, 1, 2, 1.0}, {1, 1, 3, 0.4}, {0, 2, 0, 1.0}});
  // At 0.5 layer 0's 2 -> 3 (0.5) is at tau and dropped; at 1 nothing passes.
  options.tau = 0.5;
  expect_tree(attribution_tree(a, options), 1, 1, {1, 2, 0}, {{1, 1, 2, 1.0}, {0, 2, 0, 1.0}});
  options.tau = 1;
  expect_tree(attribution_tree(a, options), 1, 1, {1}, {});
}

// Below the top layer: rows in increasing order, nodes that joined earlier in the same layer give
// edges too, a node goes to the first row that reaches it (not to its strongest parent), and a
// token reached only from rows outside the tree stays out.
TEST(AttributionTree, SweepOrderBelowTheTop) {
  const Index L = 6;
  Matrix<double> top = Matrix<double>::Zero(L, L);
  top(3, 1) = 1.0;  // root 3 -> 1
  top(0, 5) = 0.9;  // row 0 is not in the tree at the top layer
  Matrix<double> below = Matrix<double>::Zero(L, L);
  below(0, 5) = 0.8;  // row 0 joins at this layer (from row 3), after its turn: 5 stays out
  below(1, 4) = 0.9;  // 1 -> 4
  below(3, 4) = 1.0;  // stronger, but row 3 comes after row 1: 4 is taken
  below(3, 0) = 0.6;  // 3 -> 0
  below(4, 2) = 0.7;  // 4 joined in this layer (from row 1) and its row still comes: 4 -> 2
  AttributionTreeOptions options;
  options.class_token.reset();
  options.root = 3;
  expect_tree(attribution_tree(std::vector<Tensor<double>>{tree_layer({below}), tree_layer({top})},
                               options),
              3, 1, {3, 1, 4, 0, 2},
              {{1, 3, 1, 1.0}, {0, 1, 4, 0.9}, {0, 3, 0, 0.6}, {0, 4, 2, 0.7}});
}

// The automatic root: the row sum of the layer-summed attribution without the diagonal and the
// negative entries; of equal sums the last token; never the class token.
TEST(AttributionTree, RootScoresAndTies) {
  const Matrix<double> m = tree_matrix(4, {0, 0.5, 0.5, 0,     // 1.0
                                           0.25, 9, -5, 0.75,  // 1.0: diagonal and -5 left out
                                           0, 0, 0, 0,         // 0
                                           1, 0, 0, 0});       // 1.0
  AttributionTreeOptions options;
  options.class_token.reset();
  EXPECT_EQ(attribution_tree_root(std::vector<Tensor<double>>{tree_layer({m})}, options), 3);
  options.class_token = 3;  // the last of the three is the class token: the one before
  EXPECT_EQ(attribution_tree_root(std::vector<Tensor<double>>{tree_layer({m})}, options), 1);
  // Summed over layers: a second layer moves token 0 ahead.
  Matrix<double> more = Matrix<double>::Zero(4, 4);
  more(0, 3) = 0.1;
  EXPECT_EQ(attribution_tree_root(std::vector<Tensor<double>>{tree_layer({m}), tree_layer({more})},
                                  options),
            0);
  // All scores 0 (no positive attribution): the last token that is not the class token.
  const std::vector<Tensor<double>> negative{tree_layer({Matrix<double>::Constant(4, 4, -1.0)})};
  EXPECT_EQ(attribution_tree_root(negative, options), 2);
  options.class_token = 0;
  EXPECT_EQ(attribution_tree_root(negative, options), 3);
  expect_tree(attribution_tree(negative, options), 3, -1, {3}, {});  // no layer to take edges from
}

// A [CLS]-pooled model: the last layer has attribution in the class token's row only, so the
// tree starts one layer down (attattr's layer 10 of 12); rooted at the class token it starts at
// the last layer, from the class token's row, which then also sets each layer's maximum.
TEST(AttributionTree, ClassTokenRowAndTopLayer) {
  const Index L = 4;
  Matrix<double> last = Matrix<double>::Zero(L, L);
  last.row(0) << 0.2, 0, 4.0, 2.0;  // CLS -> 2 (1.0), CLS -> 3 (0.5) when CLS is the root
  Matrix<double> middle = Matrix<double>::Zero(L, L);
  middle(1, 2) = 2.0;
  middle(1, 3) = 1.0;
  middle(0, 1) = 8.0;
  Matrix<double> first = Matrix<double>::Zero(L, L);
  first(2, 1) = 1.0;
  first(3, 1) = 1.0;
  const std::vector<Tensor<double>> a{tree_layer({first}), tree_layer({middle}),
                                      tree_layer({last})};
  // Root 1 (3.0 against 1.0 and 1.0); top layer 1: 1 -> 2 (1.0), 1 -> 3 (0.5).
  expect_tree(attribution_tree(a), 1, 1, {1, 2, 3}, {{1, 1, 2, 1.0}, {1, 1, 3, 0.5}});
  AttributionTreeOptions options;
  options.root = 0;
  // Layer 2 by CLS's row: 0 -> 2 (1.0), 0 -> 3 (0.5); layer 1 (maximum 8, CLS's): 0 -> 1 (1.0);
  // layer 0: nothing new.
  expect_tree(attribution_tree(a, options), 0, 2, {0, 2, 3, 1},
              {{2, 0, 2, 1.0}, {2, 0, 3, 0.5}, {1, 0, 1, 1.0}});
  // Without a class token every row counts: the last layer is the top one, row 0 is the root.
  options = {};
  options.class_token.reset();
  expect_tree(attribution_tree(a, options), 0, 2, {0, 2, 3, 1},
              {{2, 0, 2, 1.0}, {2, 0, 3, 0.5}, {1, 0, 1, 1.0}});
}

// A layer whose every entry outside the class token's row is <= 0 gives no edge (attattr would
// divide by its maximum's absolute value, or by 0); the layers below still do.
TEST(AttributionTree, LayersWithoutPositiveAttribution) {
  const Index L = 3;
  Matrix<double> top = Matrix<double>::Zero(L, L);
  top(1, 2) = 1.0;
  const Matrix<double> negative = Matrix<double>::Constant(L, L, -0.5);
  Matrix<double> bottom = Matrix<double>::Zero(L, L);
  bottom(2, 0) = 3.0;
  const std::vector<Tensor<double>> a{tree_layer({bottom}), tree_layer({negative}),
                                      tree_layer({top})};
  // Root 2 (summed over the layers, 3 - 0.5 against 1 - 0.5 for token 1); its top row is 0, the
  // negative layer gives nothing, layer 0 gives 2 -> 0.
  expect_tree(attribution_tree(a), 2, 2, {2, 0}, {{0, 2, 0, 1.0}});
  AttributionTreeOptions options;
  options.root = 1;
  expect_tree(attribution_tree(a, options), 1, 2, {1, 2, 0}, {{2, 1, 2, 1.0}, {0, 2, 0, 1.0}});
  EXPECT_TRUE(tree_layer_scores(a, 1)[1].isZero());
}

TEST(AttributionTree, BadArgumentsAreNamed) {
  const std::vector<Tensor<double>> a = small_tree_attributions();
  expect_error_naming<ArgumentError>([] { attribution_tree(std::vector<Tensor<double>>{}); },
                                     "attributions: expected at least one layer, got none");
  expect_error_naming<ShapeError>(
      [] {
        attribution_tree(std::vector<Tensor<double>>{Tensor<double>({4, 4})});
      },
      "attributions[0]: expected [H, L, L] with H, L >= 1, got [4, 4]");
  expect_error_naming<ShapeError>(
      [&] {
        attribution_tree(std::vector<Tensor<double>>{a[0], Tensor<double>({2, 5, 5})});
      },
      "attributions[1]: expected [H, 4, 4] (H >= 1, the tokens of attributions[0]), got [2, 5, 5]");
  expect_error_naming<ShapeError>(
      [] {
        attribution_tree(std::vector<Tensor<double>>{Tensor<double>({1, 3, 4})});
      },
      "got [1, 3, 4]");
  std::vector<Tensor<double>> nan = a;
  nan[1].data()[5] = std::numeric_limits<double>::quiet_NaN();
  expect_error_naming<ArgumentError>([&] { attribution_tree(nan); },
                                     "attributions[1]: expected finite values, got a NaN");
  for (const double tau : {0.0, -0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    AttributionTreeOptions options;
    options.tau = tau;
    expect_error_naming<ArgumentError>(
        [&] { attribution_tree(a, options); },
        "AttributionTreeOptions::tau: expected a value in (0, 1], got");
  }
  AttributionTreeOptions options;
  options.root = 4;
  expect_error_naming<ArgumentError>(
      [&] { attribution_tree(a, options); },
      "AttributionTreeOptions::root: expected a token in 0..3 (4 tokens), got 4");
  options.root = -1;
  expect_error_naming<ArgumentError>([&] { attribution_tree(a, options); }, "got -1");
  options = {};
  options.class_token = 4;
  expect_error_naming<ArgumentError>(
      [&] { attribution_tree(a, options); },
      "AttributionTreeOptions::class_token: expected a token in 0..3 (4 tokens) or none, got 4");
  expect_error_naming<ArgumentError>(
      [] {
        attribution_tree(std::vector<Tensor<double>>{Tensor<double>({1, 1, 1})});
      },
      "attributions: expected a token besides the class token to root the tree at, got 1 token");
  expect_error_naming<ArgumentError>([&] { tree_layer_scores(a, 7); },
                                     "root: expected a token in 0..3 (4 tokens), got 7");
}

// The tree stored under `prefix` (root, top_layer, nodes, edges E x 3, weights; a tree without
// edges stores one row of -1).
void expect_fixture_tree(const AttributionTree& tree, const io::SafeTensors& file,
                         const std::string& prefix, double weight_tolerance) {
  EXPECT_EQ(tree.root, file.get<std::int64_t>(prefix + "root").data()[0]);
  EXPECT_EQ(tree.top_layer, file.get<std::int64_t>(prefix + "top_layer").data()[0]);
  const Tensor<std::int64_t> nodes = file.get<std::int64_t>(prefix + "nodes");
  EXPECT_EQ(tree.nodes, std::vector<Index>(nodes.storage().begin(), nodes.storage().end()));
  const Tensor<std::int64_t> edges = file.get<std::int64_t>(prefix + "edges");
  const Tensor<double> weights = file.get<double>(prefix + "weights");
  const Index count = edges.dim(0) == 1 && edges.data()[0] == -1 ? 0 : edges.dim(0);
  ASSERT_EQ(static_cast<Index>(tree.edges.size()), count);
  for (Index e = 0; e < count; ++e) {
    const AttributionTreeEdge& edge = tree.edges[static_cast<std::size_t>(e)];
    EXPECT_EQ(edge.layer, edges.matrix()(e, 0)) << e;
    EXPECT_EQ(edge.from, edges.matrix()(e, 1)) << e;
    EXPECT_EQ(edge.to, edges.matrix()(e, 2)) << e;
    EXPECT_NEAR(edge.weight, weights.data()[e], weight_tolerance) << e;
  }
}

template <class T>
std::vector<Tensor<T>> fixture_layer_attributions(const io::SafeTensors& file,
                                                  const std::string& prefix, Index layers,
                                                  Index image) {
  std::vector<Tensor<T>> out;
  for (Index l = 0; l < layers; ++l) {
    const Tensor<T> all = file.get<T>(detail::concat(prefix, "layers.", l, ".attribution"));
    Tensor<T> one({all.dim(1), all.dim(2), all.dim(3)});
    std::copy_n(all.data() + image * one.size(), one.size(), one.data());
    out.push_back(std::move(one));
  }
  return out;
}

// The same attributions give attattr's tree exactly: the scores are the same double operations
// (heads summed in order, one division), so the weights agree to the last bit.
template <class T>
void check_trees_against_python() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("attribution_tree");
  const int synthetic =
      testing::for_each_case(file, "synthetic", [&](const auto& c, const auto& p) {
        const Tensor<T> all = file.get<T>(p + "attributions");
        std::vector<Tensor<T>> layers;
        for (Index l = 0; l < all.dim(0); ++l) {
          Tensor<T> one({all.dim(1), all.dim(2), all.dim(3)});
          std::copy_n(all.data() + l * one.size(), one.size(), one.data());
          layers.push_back(std::move(one));
        }
        AttributionTreeOptions options;
        options.tau = c["tau"].template get<double>();
        if (c["class_token"].is_null())
          options.class_token.reset();
        else
          options.class_token = c["class_token"].template get<Index>();
        if (!c["root"].is_null()) options.root = c["root"].template get<Index>();
        expect_fixture_tree(attribution_tree(layers, options), file, p + "tree.", 0);
      });
  EXPECT_EQ(synthetic, 11);
  const double tau = std::stod(file.metadata().at("tau"));
  const int vits = testing::for_each_case(file, "vit", [&](const auto& c, const auto& p) {
    const VisionTransformerOptions vit = testing::vit_options(c);
    AttributionTreeOptions options;
    options.tau = tau;
    options.class_token = vit_class_token(vit);
    for (Index b = 0; b < c["batch"].template get<Index>(); ++b)
      expect_fixture_tree(
          attribution_tree(fixture_layer_attributions<T>(file, p, vit.encoder.num_layers, b),
                           options),
          file, detail::concat(p, "trees.", b, "."), 0);
  });
  EXPECT_EQ(vits, 3);
}

TEST(AttributionTree, MatchesAttattrPythonFloat) { check_trees_against_python<float>(); }
TEST(AttributionTree, MatchesAttattrPythonDouble) { check_trees_against_python<double>(); }

// End to end in double: the library's own attributions of the fixture's ViTs (left rule, m = 64,
// predicted class) give the trees the Python side built from torch autograd's. The attributions
// agree to about 1e-15 relative (tests/interpret/test_attribution.cpp), far inside every margin
// between a score and tau in these trees.
TEST(AttributionTree, LibraryAttributionsGiveTheSameTrees) {
  const io::SafeTensors file = testing::load_typed_fixture<double>("attribution_tree");
  AttributionOptions attribution;
  attribution.steps = std::stol(file.metadata().at("steps"));
  const int checked = testing::for_each_case(file, "vit", [&](const auto& c, const auto& p) {
    const VisionTransformer<double> vit = testing::fixture_vit<double>(file, c);
    const Tensor<double> images = file.get<double>(p + "images");
    const std::vector<Index> predicted = predicted_classes(vit, images);
    AttributionTreeOptions options;
    options.class_token = vit_class_token(vit.options());
    for (Index b = 0; b < images.dim(0); ++b) {
      EXPECT_EQ(predicted[static_cast<std::size_t>(b)],
                file.get<std::int64_t>(p + "predicted").data()[b]);
      const std::vector<Tensor<double>> layers = layer_attributions_of_image(
          vit, images, b, predicted[static_cast<std::size_t>(b)], attribution);
      expect_fixture_tree(attribution_tree(layers, options), file,
                          detail::concat(p, "trees.", b, "."), 1e-9);
    }
  });
  EXPECT_EQ(checked, 3);
}

TEST(AttributionTree, LayerAttributionsOfImageAreThePerLayerAttributions) {
  const io::SafeTensors file = testing::load_typed_fixture<double>("attribution_tree");
  const auto c = testing::fixture_cases(file)[0];
  const VisionTransformer<double> vit = testing::fixture_vit<double>(file, c);
  const Tensor<double> images = file.get<double>(c["name"].get<std::string>() + ".images");
  AttributionOptions options;
  options.steps = 3;
  const std::vector<Tensor<double>> layers =
      layer_attributions_of_image(vit, images, 1, 2, options);
  ASSERT_EQ(layers.size(), 4u);
  Tensor<double> second({1, images.dim(1), images.dim(2), images.dim(3)});
  std::copy_n(images.data() + second.size(), second.size(), second.data());
  for (Index l = 0; l < 4; ++l) {
    const Tensor<double> expected = attention_attribution(vit, second, {2}, l, options).attribution;
    EXPECT_EQ(layers[static_cast<std::size_t>(l)].shape(), (Shape{2, 17, 17}));
    EXPECT_EQ(layers[static_cast<std::size_t>(l)].storage(), expected.storage()) << l;
  }
  expect_error_naming<ArgumentError>(
      [&] { layer_attributions_of_image(vit, images, 3, 0, options); },
      "image: expected 0..2 (3 images), got 3");
}

}  // namespace
}  // namespace attnlens
