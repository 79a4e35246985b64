// interpret/attention_distance.hpp on hand-built attention whose statistics are known in
// closed form: a head that looks at its right neighbour (its left one on the last column) is
// 1 patch away with all of its mass within 1; a head on its own patch is at 0; a head two
// columns away is at 2, none of it within 1 and all within 2; a diagonal neighbour is sqrt(2)
// away (Euclidean) and within 1 (Chebyshev); a uniform head's distance is the mean distance
// over all pairs. CLS is neither a query nor a key; images and batches average equally; a
// ViT's statistics equal those of its own weights.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "attnlens/interpret/attention_distance.hpp"
#include "support/compare.hpp"
#include "support/expect_error.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

// B x H x L x L weights on `grid` where head h of query patch i puts all of its patch weight on
// key patch pick(h, row, col) -> (row', col'), and `cls` of it on the CLS token (if any).
template <class Pick>
Tensor<double> pointing_weights(const Grid2d& grid, Index batch, Index heads, Pick&& pick,
                                double cls = 0) {
  const Index L = grid.tokens();
  Tensor<double> w({batch, heads, L, L});
  w.storage().assign(w.storage().size(), 0.0);
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < heads; ++h) {
      auto a = w.matrix({b, h});
      if (grid.leading) a(0, 0) = 1;  // CLS's own row: not a query, any values
      for (Index r = 0; r < grid.height; ++r)
        for (Index c = 0; c < grid.width; ++c) {
          const auto [kr, kc] = pick(h, r, c);
          const Index i = grid.leading + r * grid.width + c;
          a(i, grid.leading + kr * grid.width + kc) = 1 - cls;
          if (grid.leading) a(i, 0) = cls;
        }
    }
  return w;
}

TEST(AttentionDistance, HandBuiltHeadsHaveTheirDistancesExactly) {
  const Grid2d grid{4, 5, 0};
  const auto pick = [&](Index h, Index r, Index c) -> std::array<Index, 2> {
    switch (h) {
      case 0:  // right neighbour, left on the last column
        return {r, c + 1 < grid.width ? c + 1 : c - 1};
      case 1:  // itself
        return {r, c};
      case 2:  // two columns away
        return {r, c + 2 < grid.width ? c + 2 : c - 2};
      default:  // the diagonal neighbour
        return {r + 1 < grid.height ? r + 1 : r - 1, c + 1 < grid.width ? c + 1 : c - 1};
    }
  };
  AttentionDistances stats(grid, 2, 4);
  stats.add(std::vector<Tensor<double>>(2, pointing_weights(grid, 3, 4, pick)));
  EXPECT_EQ(stats.images(), 3);
  EXPECT_EQ(stats.queries(), 3 * 20);
  const double expected_distance[] = {1, 0, 2, std::sqrt(2.0)};
  const double expected_within1[] = {1, 1, 0, 1};
  for (Index l = 0; l < 2; ++l)
    for (Index h = 0; h < 4; ++h) {
      SCOPED_TRACE(::testing::Message() << "layer " << l << ", head " << h);
      EXPECT_NEAR(stats.mean_distance()(l, h), expected_distance[h], 1e-13);  // a sum of 60
      EXPECT_NEAR(stats.within_1()(l, h), expected_within1[h], 1e-15);
      EXPECT_NEAR(stats.within_2()(l, h), 1.0, 1e-15);
      EXPECT_NEAR(stats.patch_mass()(l, h), 1.0, 1e-15);
    }
}

// A uniform head over a 3 x 3 grid: the mean over queries of the mean distance to all 9 keys,
// and the fraction of keys within Chebyshev radius 1, both counted here by hand.
TEST(AttentionDistance, AUniformHeadAveragesOverEveryPair) {
  const Grid2d grid{3, 3, 0};
  Tensor<float> w({1, 1, 9, 9});
  w.storage().assign(81, 1.0f / 9);
  AttentionDistances stats(grid, 1, 1);
  stats.add(std::vector<Tensor<float>>{w});
  // Per query: the corner (4 of them) sees 0, 1, 1, sqrt2, 2, 2, sqrt5, sqrt5, sqrt8; an edge
  // middle (4) 0, 1, 1, 1, sqrt2, sqrt2, 2, sqrt5, sqrt5; the centre 0, 4 x 1, 4 x sqrt2.
  const double s2 = std::sqrt(2.0), s5 = std::sqrt(5.0), s8 = std::sqrt(8.0);
  const double corner = (0 + 1 + 1 + s2 + 2 + 2 + s5 + s5 + s8) / 9;
  const double edge = (0 + 1 + 1 + 1 + s2 + s2 + 2 + s5 + s5) / 9;
  const double centre = (4 + 4 * s2) / 9;
  EXPECT_NEAR(stats.mean_distance()(0, 0), (4 * corner + 4 * edge + centre) / 9, 1e-7);
  // Within 1: a corner has 4 keys, an edge middle 6, the centre 9.
  EXPECT_NEAR(stats.within_1()(0, 0), (4 * 4 + 4 * 6 + 9) / 81.0, 1e-7);
  EXPECT_NEAR(stats.within_2()(0, 0), 1.0, 1e-7);
}

// CLS takes 40% of every patch query's weight: the patch statistics are those of the rest,
// renormalised, the patch mass is 0.6, and CLS's own row is not a query.
TEST(AttentionDistance, ClsIsNeitherAQueryNorAKey) {
  const Grid2d grid{3, 4, 1};
  const auto right = [&](Index, Index r, Index c) -> std::array<Index, 2> {
    return {r, c + 1 < grid.width ? c + 1 : c - 1};
  };
  AttentionDistances stats(grid, 1, 2, /*query*/ 1 + 4 + 1);
  stats.add(std::vector<Tensor<double>>{pointing_weights(grid, 2, 2, right, 0.4)});
  EXPECT_EQ(stats.queries(), 2 * 12);
  EXPECT_NEAR(stats.mean_distance()(0, 1), 1.0, 1e-15);
  EXPECT_NEAR(stats.within_1()(0, 1), 1.0, 1e-15);
  EXPECT_NEAR(stats.patch_mass()(0, 1), 0.6, 1e-15);
  // The kept query (patch (1, 1)) looks at (1, 2) with 0.6 of its weight, in both images.
  const auto maps = stats.mean_query_maps();
  Matrix<double> expected = Matrix<double>::Zero(3, 4);
  expected(1, 2) = 0.6;
  EXPECT_EQ(maps.at(0).at(1), expected);
}

// Two batches of one image each equal one batch of both: every query counts once.
TEST(AttentionDistance, BatchesAccumulateAsOneSet) {
  const Grid2d grid{2, 3, 0};
  Rng rng(3);
  Tensor<double> w({2, 2, 6, 6});
  for (auto& v : w.storage()) v = rng.uniform<double>(0.0, 1.0);
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 2; ++h) {
      auto a = w.matrix({b, h});
      a = (a.array().colwise() / a.rowwise().sum().array()).matrix();
    }
  AttentionDistances whole(grid, 1, 2, 2), parts(grid, 1, 2, 2);
  whole.add(std::vector<Tensor<double>>{w});
  for (Index b = 0; b < 2; ++b) {
    Tensor<double> one({1, 2, 6, 6});
    std::copy_n(w.data() + b * 72, 72, one.data());
    parts.add(std::vector<Tensor<double>>{one});
  }
  ATTNLENS_EXPECT_CLOSE(parts.mean_distance(), whole.mean_distance(), 1e-14);
  ATTNLENS_EXPECT_CLOSE(parts.within_1(), whole.within_1(), 1e-14);
  ATTNLENS_EXPECT_CLOSE(parts.mean_query_maps()[0][1], whole.mean_query_maps()[0][1], 1e-14);
  EXPECT_EQ(parts.images(), 2);
}

TEST(AttentionDistance, AViTsStatisticsAreThoseOfItsWeights) {
  VisionTransformerOptions o = testing::small_vit_config(/*image_size*/ 8, /*num_layers*/ 2).vit;
  Rng rng(5);
  const VisionTransformer<float> vit(o, rng);
  Tensor<float> images({5, o.in_chans, 8, 8});
  for (auto& v : images.storage()) v = rng.normal<float>();
  const Grid2d grid{8 / o.patch_size, 8 / o.patch_size, o.class_token ? 1 : 0};
  const Index query = grid.leading + 1;
  const AttentionDistances batched = vit_attention_distances(vit, images, query, /*batch*/ 2);
  EncoderForwardOptions forward;
  forward.weights = AttentionWeights::per_head;
  AttentionDistances direct(grid, o.encoder.num_layers, o.encoder.layer.nhead, query);
  direct.add(vit.forward(images, forward).weights);
  EXPECT_EQ(batched.images(), 5);
  ATTNLENS_EXPECT_CLOSE(batched.mean_distance(), direct.mean_distance(), 1e-5);
  ATTNLENS_EXPECT_CLOSE(batched.within_2(), direct.within_2(), 1e-5);
  ATTNLENS_EXPECT_CLOSE(batched.mean_query_maps()[1][0], direct.mean_query_maps()[1][0], 1e-5);
  EXPECT_GT(batched.mean_distance().minCoeff(), 0);
}

TEST(AttentionDistance, BadArgumentsAreNamed) {
  const Grid2d grid{2, 3, 1};
  expect_error_naming<ArgumentError>([&] { AttentionDistances(grid, 0, 2); }, "layers x heads");
  expect_error_naming<ArgumentError>([&] { AttentionDistances(grid, 1, 2, 0); },
                                     "AttentionDistances query: expected -1 or a patch token in 1..6, got 0");
  expect_error_naming<ArgumentError>([&] { AttentionDistances(grid, 1, 2, 7); }, "got 7");
  expect_error_naming<ArgumentError>([&] { AttentionDistances(Grid2d{0, 3, 0}, 1, 1); }, "grid");
  AttentionDistances stats(grid, 2, 2);
  expect_error_naming<ArgumentError>(
      [&] { stats.add(std::vector<Tensor<double>>(1, Tensor<double>({1, 2, 7, 7}))); },
      "expected 2 layers");
  expect_error_naming<ShapeError>(
      [&] { stats.add(std::vector<Tensor<double>>(2, Tensor<double>({1, 3, 7, 7}))); },
      "attention weights[0]");
  expect_error_naming<ArgumentError>([&] { stats.mean_query_maps(); }, "mean_query_maps");
}

}  // namespace
}  // namespace attnlens
