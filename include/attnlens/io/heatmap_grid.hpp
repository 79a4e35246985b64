// A grid of heat maps as a PNG (attention maps: rows of layers, columns of heads): each map
// resampled to its panel (bilinear for maps on a patch grid, nearest for token x token
// matrices), coloured with viridis (io/colormap.hpp) and, when a background picture is given,
// laid over it with some opacity; titles, an optional outlined box per panel (the query) and a
// colour bar. The pixels are composed here; PLplot's memcairo device (plplot-driver-cairo)
// draws the text, frames and ticks onto them. Link attnlens::plot. The pixel helpers (a
// background enlarged by a whole factor, the size limit) serve io/attribution_tree_png.hpp too.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/io/colormap.hpp"
#include "attnlens/io/line_plot.hpp"
#include "attnlens/io/png.hpp"

namespace attnlens::io {

enum class HeatmapSampling {
  bilinear,  // maps on a coarser grid than the picture (patches): resize_bilinear
  nearest,   // matrices of tokens: each entry a block of pixels
};

enum class HeatmapScale {
  panel,   // each map from 0 to its own maximum (the colour bar reads 0 to 1 of it)
  shared,  // every map from 0 to the largest value of all
};

// A box on a panel in the cells of its values: columns left..right, rows top..bottom (cell c
// spans c..c+1). Outlined in red.
struct HeatmapBox {
  double left = 0, top = 0, right = 0, bottom = 0;
};

struct HeatmapPanel {
  std::string title;
  std::string note;       // a smaller second line under the title (the map's maximum), or none
  Matrix<double> values;  // rows x cols, finite and >= 0; every panel of a grid the same size
  std::optional<HeatmapBox> box;
};

struct HeatmapGridOptions {
  std::string title;  // above the grid
  std::string colour_bar_label;
  HeatmapScale scale = HeatmapScale::panel;
  HeatmapSampling sampling = HeatmapSampling::bilinear;
  // The picture under every map, C x H x W with C = 1 (gray) or 3 (RGB), values in [0, 1]
  // (clamped); the maps are resampled to its size. Empty: the maps alone, at their own size.
  Tensor<double> background;
  double alpha = 0.6;  // the maps' opacity over the background
  // A panel is the picture (or the map) enlarged by the whole factor that brings its longer
  // side closest to this.
  Index panel_pixels = 160;
  bool axes = false;  // the cells' indices along the left column's and the bottom row's edges
};

// Resamples `values` to height x width as PyTorch's F.interpolate(mode="bilinear",
// align_corners=False) and OpenCV's resize do: output pixel centres map onto input pixel
// centres, coordinates beyond the outer centres take the edge values.
inline Matrix<double> resize_bilinear(const Matrix<double>& values, Index height, Index width) {
  attnlens::detail::require_argument(values.size() > 0 && height > 0 && width > 0,
                                     "resize_bilinear sizes", "non-empty input and output",
                                     attnlens::detail::concat(values.rows(), " x ", values.cols(),
                                                              " -> ", height, " x ", width));
  const auto source = [](Index out, Index in, Index to) {
    const double at = std::clamp((static_cast<double>(out) + 0.5) * static_cast<double>(in) /
                                         static_cast<double>(to) -
                                     0.5,
                                 0.0, static_cast<double>(in - 1));
    const auto low = static_cast<Index>(at);
    return std::pair<Index, double>{low, at - static_cast<double>(low)};
  };
  Matrix<double> out(height, width);
  for (Index y = 0; y < height; ++y) {
    const auto [y0, fy] = source(y, values.rows(), height);
    const Index y1 = std::min(y0 + 1, values.rows() - 1);
    for (Index x = 0; x < width; ++x) {
      const auto [x0, fx] = source(x, values.cols(), width);
      const Index x1 = std::min(x0 + 1, values.cols() - 1);
      out(y, x) = (1 - fy) * ((1 - fx) * values(y0, x0) + fx * values(y0, x1)) +
                  fy * ((1 - fx) * values(y1, x0) + fx * values(y1, x1));
    }
  }
  return out;
}

namespace detail {

inline constexpr Index k_heatmap_max_extent = 16384;  // pixels, as line plots

// Throws ArgumentError naming `what` for a picture larger than k_heatmap_max_extent a side.
inline void check_picture_size(Index width, Index height, const std::string& what) {
  attnlens::detail::require_argument(
      width <= k_heatmap_max_extent && height <= k_heatmap_max_extent, what,
      attnlens::detail::concat("at most ", k_heatmap_max_extent, " pixels a side"),
      attnlens::detail::concat(width, " x ", height));
}

// Entry (y, x) of an out_rows x out_cols picture taken from the nearest of in_rows x in_cols.
inline Index nearest_source(Index out, Index in, Index to) { return out * in / to; }

// A picture to draw on: [1 or 3, H, W] (gray or RGB), finite.
inline void check_background_picture(const Tensor<double>& b, const std::string& what) {
  attnlens::detail::require_shape(b.rank() == 3 && (b.dim(0) == 1 || b.dim(0) == 3), what,
                                  "[1 or 3, H, W]", attnlens::detail::shape_string(b.shape()));
  require_argument(
      std::all_of(b.data(), b.data() + b.size(), [](double v) { return std::isfinite(v); }), what,
      "finite values", "a NaN or infinity");
}

// The colour of pixel (y, x) of a height x width enlargement of picture `b` ([1 or 3, H, W]):
// the nearest pixel's, clamped to [0, 1].
inline std::array<double, 3> background_colour(const Tensor<double>& b, Index y, Index x,
                                               Index height, Index width) {
  const Index by = nearest_source(y, b.dim(1), height);
  const Index bx = nearest_source(x, b.dim(2), width);
  std::array<double, 3> c{};
  for (Index ch = 0; ch < 3; ++ch)
    c[static_cast<std::size_t>(ch)] =
        std::clamp(b.matrix({b.dim(0) == 3 ? ch : 0})(by, bx), 0.0, 1.0);
  return c;
}

// The whole factor that brings `longer` pixels closest to `pixels` (at least 1).
inline Index whole_scale(Index longer, Index pixels) {
  return std::max<Index>(
      1, static_cast<Index>(std::lround(static_cast<double>(pixels) / static_cast<double>(longer))));
}

inline void check_heatmap_grid(const std::vector<std::vector<HeatmapPanel>>& rows,
                               const HeatmapGridOptions& options) {
  using attnlens::detail::concat;
  require_argument(!rows.empty(), "write_heatmap_grid_png rows", "at least one row", "none");
  const HeatmapPanel* first = nullptr;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    require_argument(!rows[r].empty(), concat("write_heatmap_grid_png rows[", r, "]"),
                     "at least one panel", "none");
    for (std::size_t c = 0; c < rows[r].size(); ++c) {
      const Matrix<double>& v = rows[r][c].values;
      const std::string what = concat("write_heatmap_grid_png rows[", r, "][", c, "].values");
      if (!first) first = &rows[r][c];
      require_argument(v.size() > 0 && v.rows() == first->values.rows() &&
                           v.cols() == first->values.cols(),
                       what,
                       concat(first->values.rows(), " x ", first->values.cols(),
                              " (non-empty, as the first panel)"),
                       concat(v.rows(), " x ", v.cols()));
      require_argument(v.allFinite() && v.minCoeff() >= 0, what, "finite values >= 0",
                       concat("values in [", v.minCoeff(), ", ", v.maxCoeff(), "]"));
    }
  }
  if (options.background.size() > 0)
    check_background_picture(options.background, "HeatmapGridOptions::background");
  require_argument(options.alpha >= 0 && options.alpha <= 1, "HeatmapGridOptions::alpha",
                   "a value in [0, 1]", options.alpha);
  require_argument(options.panel_pixels >= 16 && options.panel_pixels <= 4096,
                   "HeatmapGridOptions::panel_pixels", "16..4096", options.panel_pixels);
}

// Where everything goes, in pixels.
struct HeatmapLayout {
  Index text = 0;                   // the text's height
  Index panel_height = 0, panel_width = 0, scale = 1;
  Index grid_left = 0, grid_top = 0;  // the first panel's top left corner
  Index column_step = 0, row_step = 0;
  Index title_above = 0;  // a panel's title band
  Index bar_left = 0, bar_width = 0, bar_top = 0, bar_bottom = 0;  // beside the panels
  Index width = 0, height = 0;
};

inline HeatmapLayout heatmap_layout(Index source_height, Index source_width, Index rows,
                                    Index columns, bool notes, const HeatmapGridOptions& options) {
  HeatmapLayout l;
  const Index longer = std::max(source_height, source_width);
  l.scale = whole_scale(longer, options.panel_pixels);
  l.panel_height = source_height * l.scale;
  l.panel_width = source_width * l.scale;
  l.text = std::clamp<Index>(std::min(l.panel_height, l.panel_width) / 11, 12, 18);
  const Index margin = l.text, gap = l.text;
  const Index axis_left = options.axes ? 3 * l.text : 0;
  const Index axis_below = options.axes ? 2 * l.text : 0;
  l.title_above = notes ? 3 * l.text : 2 * l.text;
  l.grid_left = margin + axis_left;
  l.grid_top = margin + (options.title.empty() ? 0 : 2 * l.text);
  l.column_step = l.panel_width + gap;
  l.row_step = l.title_above + l.panel_height + l.text / 2;
  const Index grid_right = l.grid_left + columns * l.column_step - gap;
  l.bar_left = grid_right + 2 * l.text;
  l.bar_width = l.text;
  l.bar_top = l.grid_top + l.title_above;
  l.bar_bottom = l.grid_top + rows * l.row_step - l.text / 2;
  l.width = l.bar_left + l.bar_width + 7 * l.text + margin;
  l.height = l.bar_bottom + axis_below + margin;
  return l;
}

inline std::uint8_t to_byte(double v) {
  return static_cast<std::uint8_t>(std::lround(255.0 * std::clamp(v, 0.0, 1.0)));
}

// The panel's pixels at (top, left): its values over `top_value` through viridis, over the
// background.
inline void compose_heatmap_panel(RgbImage& image, Index top, Index left, const HeatmapPanel& panel,
                                  double top_value, const HeatmapLayout& l,
                                  const HeatmapGridOptions& options) {
  const Matrix<double>& v = panel.values;
  const Matrix<double> resized =
      options.sampling == HeatmapSampling::bilinear
          ? resize_bilinear(v, l.panel_height, l.panel_width)
          : Matrix<double>(Matrix<double>::NullaryExpr(l.panel_height, l.panel_width,
                                                       [&](Index y, Index x) {
                                                         return v(nearest_source(
                                                                      y, v.rows(), l.panel_height),
                                                                  nearest_source(
                                                                      x, v.cols(), l.panel_width));
                                                       }));
  const Tensor<double>& b = options.background;
  const bool over = b.size() > 0;
  const double alpha = over ? options.alpha : 1.0;
  for (Index y = 0; y < l.panel_height; ++y)
    for (Index x = 0; x < l.panel_width; ++x) {
      const RgbColour c = viridis(top_value > 0 ? resized(y, x) / top_value : 0.0);
      const std::array<double, 3> under =
          over ? background_colour(b, y, x, l.panel_height, l.panel_width)
               : std::array<double, 3>{};
      std::uint8_t* p = image.pixel(top + y, left + x);
      p[0] = to_byte((1 - alpha) * under[0] + alpha * c.red);
      p[1] = to_byte((1 - alpha) * under[1] + alpha * c.green);
      p[2] = to_byte((1 - alpha) * under[2] + alpha * c.blue);
    }
}

// PLplot's viewport on the pixel rectangle [left, right) x [top, bottom) of a width x height
// picture.
inline void pixel_viewport(Index width, Index height, double left, double top, double right,
                           double bottom) {
  const auto w = static_cast<PLFLT>(width), h = static_cast<PLFLT>(height);
  plvpor(left / w, right / w, 1 - bottom / h, 1 - top / h);
}

inline void heatmap_viewport(const HeatmapLayout& l, Index left, Index top, Index right,
                             Index bottom) {
  pixel_viewport(l.width, l.height, static_cast<double>(left), static_cast<double>(top),
                 static_cast<double>(right), static_cast<double>(bottom));
}

inline constexpr PLINT k_heatmap_text_colour = 1, k_heatmap_box_colour = 2;

// The text, frames, boxes and the colour bar's ticks, on the stream draw_heatmap_annotations
// opens.
inline void draw_heatmap_annotation_text(const std::vector<std::vector<HeatmapPanel>>& rows,
                                        double bar_top_value, const HeatmapLayout& l,
                                        const HeatmapGridOptions& options) {
  plschr(static_cast<double>(l.text) / k_cairo_pixels_per_mm, 1);
  plsmaj(0, 0.6);  // ticks of 60% of PLplot's default length
  plcol0(k_heatmap_text_colour);
  plwidth(1.0);
  if (!options.title.empty()) {
    heatmap_viewport(l, 0, l.grid_top - 2 * l.text, l.width, l.grid_top);
    plwind(0, 1, 0, 1);
    plptex(0.5, 0.5, 1, 0, 0.5, plot_text(options.title).c_str());
  }
  const Index value_rows = rows.front().front().values.rows();
  const Index value_cols = rows.front().front().values.cols();
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::size_t c = 0; c < rows[r].size(); ++c) {
      const HeatmapPanel& panel = rows[r][c];
      const Index left = l.grid_left + static_cast<Index>(c) * l.column_step;
      const Index top = l.grid_top + static_cast<Index>(r) * l.row_step + l.title_above;
      heatmap_viewport(l, left, top, left + l.panel_width, top + l.panel_height);
      // Cell j centred on j, rows from the top.
      plwind(-0.5, static_cast<PLFLT>(value_cols) - 0.5, static_cast<PLFLT>(value_rows) - 0.5,
             -0.5);
      plcol0(k_heatmap_text_colour);
      plbox("bc", 0, 0, "bc", 0, 0);
      // Ticks outwards, off the map; numbers along the left column and the bottom row.
      if (options.axes)
        plbox(r + 1 == rows.size() ? "binst" : "bist", 0, 0, c == 0 ? "binstv" : "bist", 0, 0);
      if (!panel.note.empty()) {
        plschr(0, 0.85);
        plmtex("t", 0.6, 0.5, 0.5, plot_text(panel.note).c_str());
        plschr(0, 1);
      }
      plmtex("t", panel.note.empty() ? 0.7 : 1.9, 0.5, 0.5, plot_text(panel.title).c_str());
      if (panel.box) {
        const HeatmapBox& b = *panel.box;
        const PLFLT x[5] = {b.left - 0.5, b.right - 0.5, b.right - 0.5, b.left - 0.5, b.left - 0.5};
        const PLFLT y[5] = {b.top - 0.5, b.top - 0.5, b.bottom - 0.5, b.bottom - 0.5, b.top - 0.5};
        plcol0(k_heatmap_box_colour);
        plwidth(2.0);
        plline(5, x, y);
        plwidth(1.0);
      }
    }
  heatmap_viewport(l, l.bar_left, l.bar_top, l.bar_left + l.bar_width, l.bar_bottom);
  plwind(0, 1, 0, bar_top_value);
  plcol0(k_heatmap_text_colour);
  plbox("bc", 0, 0, "bc", 0, 0);
  plbox("", 0, 0, "cimstv", 0, 0);
  plmtex("r", 5.0, 0.5, 0.5, plot_text(options.colour_bar_label).c_str());
}

// The text, frames, boxes and the colour bar's ticks, drawn by PLplot onto `image` (colours
// 0 white, k_heatmap_text_colour black, k_heatmap_box_colour red).
inline void draw_heatmap_annotations(RgbImage& image,
                                     const std::vector<std::vector<HeatmapPanel>>& rows,
                                     double bar_top_value, const HeatmapLayout& l,
                                     const HeatmapGridOptions& options, const std::string& what) {
  draw_on_rgb_image(image, what, {{255, 255, 255}, {0, 0, 0}, {228, 26, 28}}, [&] {
    draw_heatmap_annotation_text(rows, bar_top_value, l, options);
  });
}

}  // namespace detail

// Draws `rows` of panels (rows may be shorter than the longest, the rest left blank) into a PNG
// at `path`, with options.title above and a colour bar at the right. Throws ArgumentError for
// bad input (no panels, panels of different sizes, negative or non-finite values, a background
// that is not [1 or 3, H, W], alpha outside [0, 1], a picture larger than 16384 pixels a side)
// and IoError if PLplot's memcairo device is missing, PLplot reports an error or the file cannot
// be written. One picture at a time is drawn in this process, as for line plots.
inline void write_heatmap_grid_png(const std::string& path,
                                   const std::vector<std::vector<HeatmapPanel>>& rows,
                                   const HeatmapGridOptions& options = {}) {
  detail::check_heatmap_grid(rows, options);
  const Matrix<double>& first = rows.front().front().values;
  const bool over = options.background.size() > 0;
  std::size_t columns = 0;
  double largest = 0;
  bool notes = false;
  for (const auto& row : rows) {
    columns = std::max(columns, row.size());
    for (const HeatmapPanel& panel : row) {
      largest = std::max(largest, panel.values.maxCoeff());
      notes = notes || !panel.note.empty();
    }
  }
  const detail::HeatmapLayout l = detail::heatmap_layout(
      over ? options.background.dim(1) : first.rows(), over ? options.background.dim(2) : first.cols(),
      static_cast<Index>(rows.size()), static_cast<Index>(columns), notes, options);
  detail::check_picture_size(l.width, l.height, "write_heatmap_grid_png picture size");

  RgbImage image(l.height, l.width);
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::size_t c = 0; c < rows[r].size(); ++c) {
      const HeatmapPanel& panel = rows[r][c];
      detail::compose_heatmap_panel(
          image, l.grid_top + static_cast<Index>(r) * l.row_step + l.title_above,
          l.grid_left + static_cast<Index>(c) * l.column_step, panel,
          options.scale == HeatmapScale::panel ? panel.values.maxCoeff() : largest, l, options);
    }
  // The colour bar: viridis from 0 at the bottom to 1 at the top.
  for (Index y = l.bar_top; y < l.bar_bottom; ++y) {
    const RgbColour c = viridis(static_cast<double>(l.bar_bottom - 1 - y) /
                                static_cast<double>(std::max<Index>(1, l.bar_bottom - l.bar_top - 1)));
    for (Index x = l.bar_left; x < l.bar_left + l.bar_width; ++x) {
      std::uint8_t* p = image.pixel(y, x);
      p[0] = detail::to_byte(c.red);
      p[1] = detail::to_byte(c.green);
      p[2] = detail::to_byte(c.blue);
    }
  }

  detail::draw_heatmap_annotations(
      image, rows, options.scale == HeatmapScale::panel ? 1.0 : (largest > 0 ? largest : 1.0), l,
      options, "heat map grid '" + path + "'");
  write_png_rgb(path, image);
}

}  // namespace attnlens::io
