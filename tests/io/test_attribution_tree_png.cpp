// io/attribution_tree_png.hpp: the picture has its layout's size; the image is enlarged under a
// faint patch grid; each layer with edges shows its colour (arrows and legend) and a layer
// without edges none; the CLS box appears (light gray) only when CLS is in the tree; bad input is
// an ArgumentError naming the field.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "attnlens/io/attribution_tree_png.hpp"
#include "support/expect_error.hpp"
#include "support/png_files.hpp"

namespace attnlens {
namespace {

using io::AttributionTreePictureOptions;
using testing::expect_error_naming;

// CLS + a 4 x 4 grid over a 16 x 16 image of gray 0.2: root 5 (patch 1, 0); layer 1: 5 -> 6;
// layer 0: 6 -> 0 (CLS) and 5 -> 10. Three layers, the top one without edges.
AttributionTree sample_tree() {
  AttributionTree tree;
  tree.root = 5;
  tree.top_layer = 1;
  tree.nodes = {5, 6, 0, 10};
  tree.edges = {{1, 5, 6, 0.9}, {0, 6, 0, 0.7}, {0, 5, 10, 0.5}};
  return tree;
}

AttributionTreePictureOptions sample_picture_options() {
  AttributionTreePictureOptions options;
  options.title = "a tree";
  options.background = Tensor<double>({1, 16, 16});
  std::fill(options.background.data(), options.background.data() + options.background.size(), 0.2);
  options.grid = Grid2d{4, 4, 1};
  options.num_layers = 3;
  options.picture_pixels = 160;
  return options;
}

testing::RgbPicture draw_tree_picture(const AttributionTree& tree,
                                      const AttributionTreePictureOptions& options) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "attnlens_test_attribution_tree.png").string();
  io::write_attribution_tree_png(path, tree, options);
  testing::RgbPicture picture = testing::read_rgb_picture(path);
  std::filesystem::remove(path);
  return picture;
}

// Pixels within `tolerance` of `c` in every channel.
int count_colour(const testing::RgbPicture& p, io::PlotColour c, int tolerance = 24) {
  int count = 0;
  for (int y = 0; y < p.height; ++y)
    for (int x = 0; x < p.width; ++x) {
      const unsigned char* px = p.at(y, x);
      count += std::abs(px[0] - c.red) <= tolerance && std::abs(px[1] - c.green) <= tolerance &&
               std::abs(px[2] - c.blue) <= tolerance;
    }
  return count;
}

TEST(AttributionTreePng, ImageGridArrowsAndClassTokenBox) {
  const AttributionTree tree = sample_tree();
  const AttributionTreePictureOptions options = sample_picture_options();
  const auto l = io::detail::tree_picture_layout(tree, options);
  EXPECT_EQ(l.scale, 10);  // 16 pixels -> 160
  const testing::RgbPicture p = draw_tree_picture(tree, options);
  ASSERT_EQ(p.width, l.width);
  ASSERT_EQ(p.height, l.height);

  // Patch (3, 3), away from every arrow: the image's gray (0.2 -> 51) inside, the faint grid
  // (0.65 x 0.2 + 0.35 x 0.5 -> 78) on its first column of pixels.
  const auto left = static_cast<int>(l.image_left), top = static_cast<int>(l.image_top);
  EXPECT_EQ(p.at(top + 135, left + 135)[0], 51);
  EXPECT_EQ(p.at(top + 135, left + 120)[1], 78);
  EXPECT_EQ(p.at(top + 135, left + 121)[2], 51);

  // Layers 0 and 1 have arrows (and a legend arrow each): their colours show; layer 2 has none.
  EXPECT_GT(count_colour(p, io::tree_layer_colour(0)), 40);
  EXPECT_GT(count_colour(p, io::tree_layer_colour(1)), 40);
  EXPECT_EQ(count_colour(p, io::tree_layer_colour(2)), 0);
  EXPECT_EQ(count_colour(p, io::tree_layer_colour(3)), 0);

  // CLS is in the tree: its box above the image, light gray inside.
  const auto [cls_x, cls_y] = io::detail::tree_token_point(0, options.grid, l);
  EXPECT_LT(cls_y, l.image_top);
  EXPECT_GT(l.box, 0);
  const unsigned char* inside =
      p.at(static_cast<int>(cls_y - l.box / 2 + 4), static_cast<int>(cls_x - l.box / 2 + 4));
  EXPECT_EQ(inside[0], 225);
  EXPECT_EQ(inside[2], 225);

  // Without CLS in the tree there is no box, and the image moves up.
  AttributionTree no_cls = tree;
  no_cls.nodes = {5, 6, 10};
  no_cls.edges = {{1, 5, 6, 0.9}, {0, 5, 10, 0.5}};
  const auto l2 = io::detail::tree_picture_layout(no_cls, options);
  EXPECT_EQ(l2.box, 0);
  EXPECT_LT(l2.image_top, l.image_top);
  EXPECT_EQ(draw_tree_picture(no_cls, options).height, l2.height);
}

TEST(AttributionTreePng, RgbBackground) {
  AttributionTreePictureOptions options = sample_picture_options();
  options.background = Tensor<double>({3, 16, 16});
  for (Index c = 0; c < 3; ++c) options.background.matrix({c}).setConstant(0.2 * (c + 1));
  const AttributionTree tree = sample_tree();
  const auto l = io::detail::tree_picture_layout(tree, options);
  const testing::RgbPicture p = draw_tree_picture(tree, options);
  const unsigned char* px =
      p.at(static_cast<int>(l.image_top) + 135, static_cast<int>(l.image_left) + 135);
  EXPECT_EQ(px[0], 51);
  EXPECT_EQ(px[1], 102);
  EXPECT_EQ(px[2], 153);
}

TEST(AttributionTreePng, BadInputIsAnError) {
  const AttributionTree tree = sample_tree();
  const std::string path =
      (std::filesystem::temp_directory_path() / "attnlens_test_attribution_tree_bad.png").string();
  const auto expect = [&](const AttributionTree& t, const AttributionTreePictureOptions& o,
                          const std::string& word) {
    expect_error_naming<ArgumentError>([&] { io::write_attribution_tree_png(path, t, o); }, word);
    EXPECT_FALSE(std::filesystem::exists(path));
  };
  AttributionTreePictureOptions o = sample_picture_options();
  o.background = Tensor<double>();
  expect(tree, o, "AttributionTreePictureOptions::background: expected an image, got none");
  o.background = Tensor<double>({2, 16, 16});
  expect_error_naming<ShapeError>([&] { io::write_attribution_tree_png(path, tree, o); },
                                  "expected [1 or 3, H, W], got [2, 16, 16]");
  o = sample_picture_options();
  o.grid = Grid2d{0, 4, 1};
  expect(tree, o, "AttributionTreePictureOptions::grid height x width");
  o.grid = Grid2d{32, 32, 1};
  expect(tree, o,
         "AttributionTreePictureOptions::grid: expected at most one patch per pixel of the 16 x "
         "16 image, got 32 x 32 patches");
  o = sample_picture_options();
  o.picture_pixels = 8;
  expect(tree, o, "AttributionTreePictureOptions::picture_pixels: expected 16..4096, got 8");
  o = sample_picture_options();
  AttributionTree bad = tree;
  bad.nodes.push_back(17);
  expect(bad, o, "tree.nodes[4]: expected a token in 0..16 (1 + 4 x 4 tokens), got 17");
  bad = tree;
  bad.edges[1].layer = -1;
  expect(bad, o, "tree.edges[1].layer: expected >= 0, got -1");
  bad = tree;
  bad.root = -2;
  expect(bad, o, "tree.root: expected a token in 0..16");
}

}  // namespace
}  // namespace attnlens
