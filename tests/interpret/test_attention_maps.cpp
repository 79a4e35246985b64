// interpret/attention_maps.hpp: queries parse from "cls", "INDEX" and "ROW,COL" and name their
// token on the grid (errors name the option and the valid range, CLS on a model without one);
// a map is the query's attention row over the patch tokens in grid order, CLS's column left out.
#include <gtest/gtest.h>

#include "attnlens/interpret/attention_maps.hpp"
#include "support/compare.hpp"
#include "support/expect_error.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(AttentionMaps, QueriesParseAndNameTheirToken) {
  const Grid2d grid{2, 3, 1};  // CLS + 2 x 3 patches
  EXPECT_EQ(query_token(parse_attention_query("cls"), grid), 0);
  EXPECT_EQ(query_token(parse_attention_query("4"), grid), 4);
  EXPECT_EQ(query_token(parse_attention_query("1,2"), grid), 1 + 1 * 3 + 2);
  EXPECT_EQ(query_token(parse_attention_query("0,0"), Grid2d{2, 3, 0}), 0);
  for (const std::string bad : {"", "CLS", "x", "-1", "1,", ",1", "1,2,3", "1.5", "1, 2"})
    expect_error_naming<ArgumentError>([&] { parse_attention_query(bad, "--query"); },
                                       "--query: expected cls, a token index or ROW,COL, got '" +
                                           bad + "'");
}

TEST(AttentionMaps, QueriesOffTheGridAreErrors) {
  const Grid2d grid{2, 3, 1};
  expect_error_naming<ArgumentError>(
      [&] { query_token(AttentionQuery::token_index(7), grid, "--query"); },
      "--query: expected a token index in 0..6 (1 + 2 x 3 tokens), got 7");
  expect_error_naming<ArgumentError>([&] { query_token(AttentionQuery::patch(2, 0), grid); },
                                     "ROW,COL on the 2 x 3 patch grid (0..1,0..2), got 2,0");
  expect_error_naming<ArgumentError>([&] { query_token(AttentionQuery::patch(0, 3), grid); },
                                     "got 0,3");
  expect_error_naming<ArgumentError>(
      [&] { query_token(AttentionQuery::cls_token(), Grid2d{2, 3, 0}, "--query"); },
      "the model has no CLS token");
}

TEST(AttentionMaps, AGridRowIsTheQuerysRowOverThePatches) {
  const Grid2d grid{2, 3, 1};
  Matrix<double> map(7, 7);
  for (Index i = 0; i < 7; ++i)
    for (Index j = 0; j < 7; ++j) map(i, j) = 10.0 * i + j;
  Matrix<double> expected(2, 3);
  expected << 51, 52, 53, 54, 55, 56;
  EXPECT_EQ(grid_attention_row(map, 5, grid), expected);
  expect_error_naming<ShapeError>([&] { grid_attention_row(map, 0, Grid2d{2, 2, 1}); },
                                  "attention map: expected 5 x 5, got 7 x 7");
  expect_error_naming<ArgumentError>([&] { grid_attention_row(map, 7, grid); }, "0..6");
}

TEST(AttentionMaps, PatchMapsOfAViTForward) {
  VisionTransformerOptions o = testing::small_vit_config(/*image_size*/ 8, /*num_layers*/ 3).vit;
  o.image_width = 12;
  Rng rng(11);
  const VisionTransformer<float> vit(o, rng);
  const Grid2d grid = vit_patch_grid(o);
  EXPECT_EQ(grid.height, 2);
  EXPECT_EQ(grid.width, 3);
  EXPECT_EQ(grid.leading, 1);
  Tensor<float> images({2, 1, 8, 12});
  for (Index i = 0; i < images.size(); ++i) images.data()[i] = rng.normal<float>(0, 1);
  EncoderForwardOptions options;
  options.weights = AttentionWeights::per_head;
  const auto weights = vit.forward(images, options).weights;
  const Index token = query_token(AttentionQuery::patch(1, 0), grid);
  const auto maps = patch_attention_maps(weights, grid, token, /*batch*/ 1);
  ASSERT_EQ(maps.size(), 3u);
  for (std::size_t l = 0; l < 3; ++l) {
    ASSERT_EQ(maps[l].size(), 2u);
    for (Index h = 0; h < 2; ++h) {
      const Matrix<float>& m = maps[l][static_cast<std::size_t>(h)];
      ASSERT_EQ(m.rows(), 2);
      ASSERT_EQ(m.cols(), 3);
      for (Index r = 0; r < 2; ++r)
        for (Index c = 0; c < 3; ++c)
          EXPECT_EQ(m(r, c), weights[l].at({1, h, token, 1 + r * 3 + c}));
      // With CLS's share the row is a distribution.
      EXPECT_NEAR(m.sum() + weights[l].at({1, h, token, 0}), 1.0f, 1e-5f);
    }
  }
  expect_error_naming<ShapeError>([&] { patch_attention_maps(weights, grid, token, 2); },
                                  "attention weights[0]");
}

}  // namespace
}  // namespace attnlens
