// io/colormap.hpp and io/heatmap_grid.hpp: viridis hits its table
// at the anchors and stays within 0.008 of it in between; bilinear resizing is PyTorch's
// align_corners=False; a grid's picture has the layout's size, its maps' colours over the
// background with the asked opacity, a red box where asked and the colour bar from viridis(0)
// at the bottom to viridis(1) at the top; bad input is an ArgumentError naming the field.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "attnlens/io/heatmap_grid.hpp"  // and io/png.hpp with stb_image, to read colours back
#include "support/expect_error.hpp"
#include "support/png_files.hpp"

namespace attnlens {
namespace {

using io::HeatmapGridOptions;
using io::HeatmapPanel;
using io::RgbColour;
using testing::expect_error_naming;

using HeatmapPicture = testing::RgbPicture;

void expect_pixel(const HeatmapPicture& p, int y, int x, RgbColour c, int tolerance = 1) {
  const unsigned char* px = p.at(y, x);
  EXPECT_NEAR(px[0], 255 * c.red, tolerance + 0.5) << "at " << y << ", " << x;
  EXPECT_NEAR(px[1], 255 * c.green, tolerance + 0.5) << "at " << y << ", " << x;
  EXPECT_NEAR(px[2], 255 * c.blue, tolerance + 0.5) << "at " << y << ", " << x;
}

std::string heatmap_temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("attnlens_test_heatmap_" + name)).string();
}

// The grid's picture, drawn into a temporary file and read back.
HeatmapPicture draw_heatmap_picture(const std::vector<std::vector<HeatmapPanel>>& rows,
                                    const HeatmapGridOptions& options) {
  const std::string path = heatmap_temp_path("grid.png");
  io::write_heatmap_grid_png(path, rows, options);
  HeatmapPicture picture = testing::read_rgb_picture(path);
  std::filesystem::remove(path);
  return picture;
}

TEST(Colormap, ViridisMatchesItsTable) {
  // matplotlib's _viridis_data entries 0, 128 and 255, and the mean of 127 and 128 at 0.5.
  const auto expect_colour = [](RgbColour a, RgbColour e, double tolerance) {
    EXPECT_NEAR(a.red, e.red, tolerance);
    EXPECT_NEAR(a.green, e.green, tolerance);
    EXPECT_NEAR(a.blue, e.blue, tolerance);
  };
  expect_colour(io::viridis(0), {0.267004, 0.004874, 0.329415}, 1e-15);
  expect_colour(io::viridis(128 / 255.0), {0.127568, 0.566949, 0.550556}, 1e-12);
  expect_colour(io::viridis(1), {0.993248, 0.906157, 0.143936}, 1e-15);
  expect_colour(io::viridis(0.5), {0.1281485, 0.565107, 0.5508925}, 2e-3);
  // Entries halfway between anchors, where linear interpolation is off the most: 152 (the red
  // channel's turn), 168, 200.
  expect_colour(io::viridis(152 / 255.0), {0.132268, 0.655014, 0.519661}, 8e-3);
  expect_colour(io::viridis(168 / 255.0), {0.196571, 0.711827, 0.479221}, 8e-3);
  expect_colour(io::viridis(200 / 255.0), {0.440137, 0.811138, 0.340967}, 8e-3);
  expect_colour(io::viridis(-1), io::viridis(0), 0);
  expect_colour(io::viridis(2), io::viridis(1), 0);
  expect_colour(io::viridis(std::nan("")), io::viridis(0), 0);
}

TEST(HeatmapGrid, BilinearResizeIsPyTorchsAlignCornersFalse) {
  Matrix<double> m(2, 2);
  m << 0, 1, 2, 3;
  // torch.nn.functional.interpolate(m[None, None], size=(4, 4), mode="bilinear",
  // align_corners=False)
  Matrix<double> expected(4, 4);
  expected << 0, 0.25, 0.75, 1, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2, 2.25, 2.75, 3;
  EXPECT_EQ(io::resize_bilinear(m, 4, 4), expected);
  EXPECT_EQ(io::resize_bilinear(m, 2, 2), m);
  const Matrix<double> flat = Matrix<double>::Constant(3, 2, 0.25);
  EXPECT_EQ(io::resize_bilinear(flat, 7, 5), Matrix<double>::Constant(7, 5, 0.25));
  expect_error_naming<ArgumentError>([&] { io::resize_bilinear(m, 0, 4); }, "resize_bilinear");
}

TEST(HeatmapGrid, PanelsOverTheBackgroundWithAColourBar) {
  // Two rows of two 2 x 2 maps (the second row one panel short) over a black 4 x 4 picture:
  // a panel is 4 x 40 = 160 pixels.
  Matrix<double> hot = Matrix<double>::Zero(2, 2);
  hot(0, 1) = 0.5;  // the top right cell is each panel's maximum
  std::vector<std::vector<HeatmapPanel>> rows = {
      {{"L0 H0", "max 0.5", hot, io::HeatmapBox{0, 1, 1, 2}}, {"L0 H1", "", hot * 0.1, std::nullopt}},
      {{"L1 H0", "", hot, std::nullopt}}};
  HeatmapGridOptions options;
  options.title = "a title";
  options.colour_bar_label = "attention";
  options.background = Tensor<double>({1, 4, 4});
  options.alpha = 0.6;
  const HeatmapPicture p = draw_heatmap_picture(rows, options);
  const auto l = io::detail::heatmap_layout(4, 4, 2, 2, /*notes*/ true, options);
  ASSERT_EQ(l.panel_width, 160);
  ASSERT_EQ(p.width, l.width);
  ASSERT_EQ(p.height, l.height);

  const auto scaled = [](RgbColour c, double s) {
    return RgbColour{s * c.red, s * c.green, s * c.blue};
  };
  const int top = static_cast<int>(l.grid_top + l.title_above);
  const int left = static_cast<int>(l.grid_left);
  const int step = static_cast<int>(l.column_step);
  // Each panel's own maximum is viridis(1), a zero viridis(0), both at 0.6 over black. The
  // weaker second panel looks the same (scaled to its own maximum).
  for (const int panel_left : {left, left + step}) {
    expect_pixel(p, top + 20, panel_left + 140, scaled(io::viridis(1), 0.6));
    expect_pixel(p, top + 140, panel_left + 20, scaled(io::viridis(0), 0.6));
  }
  // The box of the first panel (its bottom left cell) is red along its top edge.
  const unsigned char* edge = p.at(top + 80, left + 40);
  EXPECT_GT(edge[0], 150);
  EXPECT_LT(edge[1], 100);
  // The second row has one panel: white where the second would be.
  const int below = static_cast<int>(top + l.row_step);
  expect_pixel(p, below + 80, left + step + 80, {1, 1, 1}, 0);
  expect_pixel(p, below + 20, left + 140, scaled(io::viridis(1), 0.6));
  // The colour bar runs from viridis(0) in its bottom pixel row to viridis(1) in its top one.
  const int bar_x = static_cast<int>(l.bar_left + l.bar_width / 2);
  const auto bar_colour = [&](Index y) {
    return io::viridis(static_cast<double>(l.bar_bottom - 1 - y) /
                       static_cast<double>(l.bar_bottom - l.bar_top - 1));
  };
  for (const Index y : {l.bar_top + 3, (l.bar_top + l.bar_bottom) / 2, l.bar_bottom - 4})
    expect_pixel(p, static_cast<int>(y), bar_x, bar_colour(y));
  EXPECT_GT(bar_colour(l.bar_top + 3).red, 0.97);
  EXPECT_LT(bar_colour(l.bar_bottom - 4).red, 0.28);

  // Shared scale: the weak panel's maximum is a tenth of the largest.
  options.scale = io::HeatmapScale::shared;
  const HeatmapPicture shared = draw_heatmap_picture(rows, options);
  expect_pixel(shared, top + 20, left + step + 140, scaled(io::viridis(0.1), 0.6));
  expect_pixel(shared, top + 20, left + 140, scaled(io::viridis(1), 0.6));
}

TEST(HeatmapGrid, TokenMatricesWithoutBackgroundAreBlocksOfExactColours) {
  Matrix<double> m(3, 3);
  m << 1, 0, 0, 0, 0.5, 0, 0, 0, 0.25;
  HeatmapGridOptions options;
  options.sampling = io::HeatmapSampling::nearest;
  options.axes = true;
  options.panel_pixels = 30;
  const HeatmapPicture p = draw_heatmap_picture({{{"L0 H0", "", m, std::nullopt}}}, options);
  const auto l = io::detail::heatmap_layout(3, 3, 1, 1, /*notes*/ false, options);
  ASSERT_EQ(l.scale, 10);
  ASSERT_EQ(p.width, l.width);
  ASSERT_EQ(p.height, l.height);
  const int top = static_cast<int>(l.grid_top + l.title_above), left = static_cast<int>(l.grid_left);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) expect_pixel(p, top + 10 * i + 5, left + 10 * j + 5, io::viridis(m(i, j)));
}

TEST(HeatmapGrid, BadInputIsAnError) {
  const Matrix<double> m = Matrix<double>::Ones(2, 2);
  const std::string path = heatmap_temp_path("bad.png");
  expect_error_naming<ArgumentError>([&] { io::write_heatmap_grid_png(path, {}); }, "rows");
  expect_error_naming<ArgumentError>(
      [&] { io::write_heatmap_grid_png(path, {{{"a", "", m, {}}, {"b", "", Matrix<double>::Ones(2, 3), {}}}}); },
      "rows[0][1].values: expected 2 x 2");
  expect_error_naming<ArgumentError>(
      [&] { io::write_heatmap_grid_png(path, {{{"a", "", -m, {}}}}); }, "finite values >= 0");
  HeatmapGridOptions options;
  options.background = Tensor<double>({2, 4, 4});
  expect_error_naming<ShapeError>([&] { io::write_heatmap_grid_png(path, {{{"a", "", m, {}}}}, options); },
                                  "background");
  options.background = Tensor<double>();
  options.alpha = 1.5;
  expect_error_naming<ArgumentError>([&] { io::write_heatmap_grid_png(path, {{{"a", "", m, {}}}}, options); },
                                     "alpha");
  options.alpha = 0.5;
  options.panel_pixels = 4096;
  const std::vector<HeatmapPanel> wide(8, HeatmapPanel{"a", "", m, {}});
  expect_error_naming<ArgumentError>([&] { io::write_heatmap_grid_png(path, {wide}, options); },
                                     "at most 16384 pixels a side");
  EXPECT_FALSE(std::filesystem::exists(path));
  expect_error_naming<IoError>(
      [&] { io::write_heatmap_grid_png("/nonexistent-dir/x.png", {{{"a", "", m, {}}}}); },
      "/nonexistent-dir/x.png");
}

}  // namespace
}  // namespace attnlens
