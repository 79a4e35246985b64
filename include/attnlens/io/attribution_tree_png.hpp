// An attribution tree (interpret/attribution_tree.hpp) drawn over a ViT's input image as a PNG:
// the image enlarged by a whole factor with its patch grid faint, every edge an arrow from the
// parent's patch centre to the child's (attattr's direction: the parent takes information from
// the child) in its layer's colour, the root ringed, the tokens before the grid (CLS) as boxes
// above the image, and a legend of the layers. The pixels are composed here (io/heatmap_grid.hpp's
// helpers); PLplot's memcairo device draws the arrows, rings and text onto them. Link
// attnlens::plot.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/interpret/attribution_tree.hpp"
#include "attnlens/io/heatmap_grid.hpp"
#include "attnlens/io/line_plot.hpp"
#include "attnlens/io/png.hpp"

namespace attnlens::io {

struct AttributionTreePictureOptions {
  std::string title;  // above the picture
  // The image under the tree: [1 or 3, H, W] (gray or RGB) with values in [0, 1] (clamped).
  Tensor<double> background;
  // The tokens: grid.leading tokens before the patches (drawn as boxes above the image, the only
  // one named CLS, several named by their index), then the grid.height x grid.width patches of
  // the image in row-major order.
  Grid2d grid;
  // The layers the legend lists (at least those of the tree's edges): the model's.
  Index num_layers = 0;
  // The image is enlarged by the whole factor that brings its longer side closest to this.
  Index picture_pixels = 448;
};

// The colour of layer l's arrows: k_plot_palette[l % 10] (matplotlib's tab10).
inline PlotColour tree_layer_colour(Index layer) {
  return k_plot_palette[static_cast<std::size_t>(layer) % k_plot_palette.size()];
}

namespace detail {

using attnlens::detail::concat;

inline constexpr PLINT k_tree_white = 0, k_tree_black = 1, k_tree_gray = 2, k_tree_first_layer = 3;

struct TreePictureLayout {
  double text = 0, margin = 0;
  Index scale = 1;
  double image_left = 0, image_top = 0, image_width = 0, image_height = 0;
  double cell_width = 0, cell_height = 0;  // a patch, in pixels
  double box = 0, box_top = 0;             // the leading tokens' boxes (0: none in the tree)
  double legend_left = 0, legend_row = 0;
  Index width = 0, height = 0;
};

inline void check_tree_picture(const AttributionTree& tree,
                               const AttributionTreePictureOptions& options) {
  const Tensor<double>& b = options.background;
  require_argument(b.size() > 0, "AttributionTreePictureOptions::background", "an image", "none");
  check_background_picture(b, "AttributionTreePictureOptions::background");
  const Grid2d& g = options.grid;
  g.check("AttributionTreePictureOptions::grid");
  require_argument(
      g.height <= b.dim(1) && g.width <= b.dim(2), "AttributionTreePictureOptions::grid",
      concat("at most one patch per pixel of the ", b.dim(1), " x ", b.dim(2), " image"),
      concat(g.height, " x ", g.width, " patches"));
  require_argument(options.num_layers >= 0, "AttributionTreePictureOptions::num_layers", ">= 0",
                   options.num_layers);
  require_argument(options.picture_pixels >= 16 && options.picture_pixels <= 4096,
                   "AttributionTreePictureOptions::picture_pixels", "16..4096",
                   options.picture_pixels);
  const auto check_token = [&](Index token, const std::string& what) {
    require_argument(token >= 0 && token < g.tokens(), what,
                     concat("a token in 0..", g.tokens() - 1, " (", g.leading, " + ", g.height,
                            " x ", g.width, " tokens)"),
                     token);
  };
  check_token(tree.root, "tree.root");
  for (std::size_t n = 0; n < tree.nodes.size(); ++n)
    check_token(tree.nodes[n], concat("tree.nodes[", n, "]"));
  for (std::size_t e = 0; e < tree.edges.size(); ++e) {
    check_token(tree.edges[e].from, concat("tree.edges[", e, "].from"));
    check_token(tree.edges[e].to, concat("tree.edges[", e, "].to"));
    require_argument(tree.edges[e].layer >= 0, concat("tree.edges[", e, "].layer"), ">= 0",
                     tree.edges[e].layer);
  }
}

// The layers of the legend: options.num_layers, or more if an edge has a higher layer.
inline Index tree_legend_layers(const AttributionTree& tree,
                                const AttributionTreePictureOptions& options) {
  Index layers = options.num_layers;
  for (const AttributionTreeEdge& e : tree.edges) layers = std::max(layers, e.layer + 1);
  return layers;
}

inline bool tree_has_leading_node(const AttributionTree& tree, const Grid2d& grid) {
  return std::any_of(tree.nodes.begin(), tree.nodes.end(),
                     [&](Index t) { return !grid.has_position(t); });
}

inline std::string tree_leading_name(Index t, const Grid2d& g) {
  return g.leading == 1 ? std::string("CLS") : concat("token ", t);
}

inline std::string tree_token_name(Index t, const Grid2d& g) {
  if (!g.has_position(t)) return tree_leading_name(t, g);
  const auto [row, col] = g.position(t);
  return concat("token ", t, " (patch ", row, ", ", col, ")");
}

inline constexpr const char* k_tree_caption =
    "arrow i → j: i takes information from j through that layer";

// About how wide `text` is drawn with characters `size` pixels high (DejaVu Sans averages a
// little over half an em; counting UTF-8 lead bytes only).
inline double tree_text_width(const std::string& text, double size) {
  const auto chars = std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  });
  return 0.62 * size * static_cast<double>(chars);
}

inline TreePictureLayout tree_picture_layout(const AttributionTree& tree,
                                             const AttributionTreePictureOptions& options) {
  const Tensor<double>& b = options.background;
  const Grid2d& g = options.grid;
  TreePictureLayout l;
  l.scale = whole_scale(std::max(b.dim(1), b.dim(2)), options.picture_pixels);
  l.image_width = static_cast<double>(b.dim(2) * l.scale);
  l.image_height = static_cast<double>(b.dim(1) * l.scale);
  l.cell_width = l.image_width / static_cast<double>(g.width);
  l.cell_height = l.image_height / static_cast<double>(g.height);
  l.text = std::floor(std::clamp(std::min(l.image_width, l.image_height) / 30, 12.0, 18.0));
  l.margin = l.text;
  const double title = options.title.empty() ? 0 : 2.5 * l.text;
  if (tree_has_leading_node(tree, g))
    l.box = std::clamp(std::min(l.cell_width, l.cell_height), 2 * l.text, 4 * l.text);
  l.box_top = l.margin + title;
  l.image_left = l.margin;
  l.image_top = l.box_top + (l.box > 0 ? l.box + l.text : 0);
  l.legend_left = l.image_left + l.image_width + 2 * l.text;
  l.legend_row = 1.7 * l.text;
  const Index layers = tree_legend_layers(tree, options);
  const double legend_text =
      std::max(tree_text_width(concat("root: ", tree_token_name(tree.root, g)), l.text),
               tree_text_width(concat("layer ", layers - 1, ": no edge"), l.text));
  const double legend_rows = static_cast<double>(layers + 3);
  const double boxes =
      l.image_left +
      static_cast<double>(g.leading) *
          (l.box + 1.4 * l.text + tree_text_width(tree_leading_name(g.leading - 1, g), l.text));
  l.width = static_cast<Index>(
      std::ceil(std::max({l.legend_left + 3.2 * l.text + legend_text, l.box > 0 ? boxes : 0.0,
                          l.image_left + tree_text_width(k_tree_caption, l.text),
                          2 * l.margin + tree_text_width(options.title, l.text)}) +
                l.margin));
  l.height = static_cast<Index>(std::ceil(std::max(l.image_top + l.image_height + 2.5 * l.text,
                                                   l.image_top + legend_rows * l.legend_row) +
                                          l.margin));
  return l;
}

// Where token t is drawn: its patch's centre, or the centre of its box above the image.
inline std::array<double, 2> tree_token_point(Index t, const Grid2d& g,
                                              const TreePictureLayout& l) {
  if (g.has_position(t)) {
    const auto [row, col] = g.position(t);
    return {l.image_left + (static_cast<double>(col - g.first_col) + 0.5) * l.cell_width,
            l.image_top + (static_cast<double>(row - g.first_row) + 0.5) * l.cell_height};
  }
  // A box and its label each, centred over the image but not left of it.
  const double label = 1.4 * l.text + tree_text_width(tree_leading_name(g.leading - 1, g), l.text);
  const double step = l.box + label;
  const double first =
      std::max(l.image_left, l.image_left + l.image_width / 2 -
                                 (static_cast<double>(g.leading) * step - label) / 2);
  return {first + l.box / 2 + static_cast<double>(t) * step, l.box_top + l.box / 2};
}

// The image with its patch grid faint, and the leading tokens' boxes filled, in pixels.
inline void compose_tree_picture(RgbImage& image, const AttributionTree& tree,
                                 const AttributionTreePictureOptions& options,
                                 const TreePictureLayout& l) {
  const Grid2d& g = options.grid;
  const auto h = static_cast<Index>(l.image_height), w = static_cast<Index>(l.image_width);
  const auto left = static_cast<Index>(l.image_left), top = static_cast<Index>(l.image_top);
  // The first pixel of each patch, and the last one of the image.
  const auto on_line = [](Index p, Index cells, Index pixels) {
    return p == 0 || p == pixels - 1 || p * cells / pixels != (p - 1) * cells / pixels;
  };
  for (Index y = 0; y < h; ++y)
    for (Index x = 0; x < w; ++x) {
      std::array<double, 3> c = background_colour(options.background, y, x, h, w);
      if (on_line(y, g.height, h) || on_line(x, g.width, w))
        for (double& v : c) v = 0.65 * v + 0.35 * 0.5;
      std::uint8_t* p = image.pixel(top + y, left + x);
      for (std::size_t ch = 0; ch < 3; ++ch) p[ch] = to_byte(c[ch]);
    }
  for (const Index t : tree.nodes) {
    if (g.has_position(t)) continue;
    const auto [cx, cy] = tree_token_point(t, g, l);
    const auto clamped = [](double v, Index extent) {
      return std::clamp<Index>(static_cast<Index>(v), 0, extent);
    };
    for (Index y = clamped(cy - l.box / 2, image.height); y < clamped(cy + l.box / 2, image.height);
         ++y)
      for (Index x = clamped(cx - l.box / 2, image.width); x < clamped(cx + l.box / 2, image.width);
           ++x) {
        std::uint8_t* p = image.pixel(y, x);
        p[0] = p[1] = p[2] = 225;
      }
  }
}

// An arrow from (x0, y0) to (x1, y1), both ends short of the points by `gap`, with a filled head
// at the second; a white halo under it keeps it apart from the image. With `bend` > 0 it is a
// quadratic arc bulging to its left by `bend` of its length, so arrows along one line of patches
// (from a root to its neighbours one and two patches away) do not hide each other.
inline void draw_tree_arrow(double x0, double y0, double x1, double y1, double gap, double width,
                            double head, double bend, PLINT colour) {
  const double length = std::hypot(x1 - x0, y1 - y0);
  if (length <= 0) return;
  if (length <= 2 * gap + head) gap = std::max(0.0, (length - head) / 2);
  const double ux = (x1 - x0) / length, uy = (y1 - y0) / length;
  const double sx = x0 + ux * gap, sy = y0 + uy * gap, tx = x1 - ux * gap, ty = y1 - uy * gap;
  const double cx = (sx + tx) / 2 + uy * bend * length, cy = (sy + ty) / 2 - ux * bend * length;
  const double to_tip = std::hypot(tx - cx, ty - cy);
  const double dx = (tx - cx) / to_tip, dy = (ty - cy) / to_tip;  // the head's direction
  const double bx = tx - dx * head, by = ty - dy * head;          // the head's base centre
  constexpr int k_segments = 24;
  std::array<PLFLT, k_segments + 1> line_x{}, line_y{};
  for (int k = 0; k <= k_segments; ++k) {  // from the start to just inside the head's base
    const double t = static_cast<double>(k) / k_segments, ex = bx + dx * 0.2 * head,
                 ey = by + dy * 0.2 * head;
    line_x[static_cast<std::size_t>(k)] =
        (1 - t) * (1 - t) * sx + 2 * (1 - t) * t * cx + t * t * ex;
    line_y[static_cast<std::size_t>(k)] =
        (1 - t) * (1 - t) * sy + 2 * (1 - t) * t * cy + t * t * ey;
  }
  PLFLT head_x[4] = {tx, bx - dy * 0.45 * head, bx + dy * 0.45 * head, tx};
  PLFLT head_y[4] = {ty, by + dx * 0.45 * head, by - dx * 0.45 * head, ty};
  plcol0(k_tree_white);
  plwidth(width + 2.5);
  plline(k_segments + 1, line_x.data(), line_y.data());
  plline(4, head_x, head_y);
  plcol0(colour);
  plwidth(width);
  plline(k_segments + 1, line_x.data(), line_y.data());
  plfill(3, head_x, head_y);
}

inline void draw_tree_ring(double x, double y, double radius, double width) {
  plcol0(k_tree_white);
  plwidth(width + 3);
  plarc(x, y, radius, radius, 0, 360, 0, false);
  plcol0(k_tree_black);
  plwidth(width);
  plarc(x, y, radius, radius, 0, 360, 0, false);
}

inline void draw_tree_dot(double x, double y, double radius) {
  plcol0(k_tree_white);
  plarc(x, y, radius + 1.5, radius + 1.5, 0, 360, 0, true);
  plcol0(k_tree_black);
  plarc(x, y, radius, radius, 0, 360, 0, true);
}

// The arrows, rings, boxes' frames and text, on the stream write_attribution_tree_png opens.
inline void draw_tree_annotations(const AttributionTree& tree,
                                  const AttributionTreePictureOptions& options,
                                  const TreePictureLayout& l) {
  const Grid2d& g = options.grid;
  pixel_viewport(l.width, l.height, 0, 0, static_cast<double>(l.width),
                 static_cast<double>(l.height));
  plwind(0, static_cast<PLFLT>(l.width), static_cast<PLFLT>(l.height), 0);  // pixels, y down
  plschr(l.text / k_cairo_pixels_per_mm, 1);
  plcol0(k_tree_black);
  plwidth(1.0);
  if (!options.title.empty())
    plptex(static_cast<double>(l.width) / 2, l.margin + 0.8 * l.text, 1, 0, 0.5,
           plot_text(options.title).c_str());
  const double cell = std::min(l.cell_width, l.cell_height);
  const double dot = std::clamp(0.07 * cell, 2.5, 6.0);
  const double arrow_width = std::clamp(cell / 22, 1.5, 4.0);
  const double head = std::clamp(0.28 * cell, 7.0, 16.0);
  for (const Index t : tree.nodes) {
    if (g.has_position(t)) continue;
    const auto [x, y] = tree_token_point(t, g, l);
    const PLFLT fx[5] = {x - l.box / 2, x + l.box / 2, x + l.box / 2, x - l.box / 2, x - l.box / 2};
    const PLFLT fy[5] = {y - l.box / 2, y - l.box / 2, y + l.box / 2, y + l.box / 2, y - l.box / 2};
    plcol0(k_tree_gray);
    plwidth(1.5);
    plline(5, fx, fy);
    plcol0(k_tree_black);
    plptex(x + l.box / 2 + 0.4 * l.text, y + 0.35 * l.text, 1, 0, 0,
           plot_text(tree_leading_name(t, g)).c_str());
  }
  // The lower layers first, so the top layer's arrows lie on top.
  for (auto e = tree.edges.rbegin(); e != tree.edges.rend(); ++e) {
    const auto [x0, y0] = tree_token_point(e->from, g, l);
    const auto [x1, y1] = tree_token_point(e->to, g, l);
    draw_tree_arrow(x0, y0, x1, y1, dot + 2, arrow_width, head, 0.12,
                    k_tree_first_layer + static_cast<PLINT>(e->layer % 10));
  }
  for (const Index t : tree.nodes) {
    const auto [x, y] = tree_token_point(t, g, l);
    draw_tree_dot(x, y, dot);
  }
  const auto [root_x, root_y] = tree_token_point(tree.root, g, l);
  const double ring = std::clamp(0.36 * cell, 3 * dot, 0.5 * std::max(cell, l.box));
  draw_tree_ring(root_x, root_y, ring, 2.5);

  // The caption under the image and the legend beside it.
  plcol0(k_tree_black);
  plwidth(1.0);
  plptex(l.image_left, l.image_top + l.image_height + 1.5 * l.text, 1, 0, 0, k_tree_caption);
  const Index layers = tree_legend_layers(tree, options);
  std::vector<bool> used(static_cast<std::size_t>(layers), false);
  for (const AttributionTreeEdge& e : tree.edges) used[static_cast<std::size_t>(e.layer)] = true;
  double y = l.image_top + 0.5 * l.text;
  const double x = l.legend_left, sample = 2.6 * l.text;
  for (Index layer = layers - 1; layer >= 0; --layer, y += l.legend_row) {
    const bool has = used[static_cast<std::size_t>(layer)];
    if (has)
      draw_tree_arrow(x, y, x + sample, y, 0, arrow_width, std::min(head, 0.8 * l.text), 0,
                      k_tree_first_layer + static_cast<PLINT>(layer % 10));
    plcol0(has ? k_tree_black : k_tree_gray);
    plptex(x + sample + 0.6 * l.text, y + 0.35 * l.text, 1, 0, 0,
           (has ? concat("layer ", layer) : concat("layer ", layer, ": no edge")).c_str());
  }
  y += 0.5 * l.text;
  draw_tree_ring(x + sample / 2, y, 0.55 * l.text, 2.0);
  plcol0(k_tree_black);
  plptex(x + sample + 0.6 * l.text, y + 0.35 * l.text, 1, 0, 0,
         plot_text(concat("root: ", tree_token_name(tree.root, g))).c_str());
}

}  // namespace detail

// Draws `tree` over options.background into a PNG at `path`. Throws ArgumentError naming the
// field for bad input (no background or one that is not [1 or 3, H, W] and finite, an empty grid
// or one finer than the image's pixels, a token of the tree off the grid's tokens, a negative
// layer, picture_pixels outside 16..4096, a picture larger than 16384 pixels a side) and IoError
// if PLplot's memcairo device is missing, PLplot reports an error or the file cannot be written.
inline void write_attribution_tree_png(const std::string& path, const AttributionTree& tree,
                                       const AttributionTreePictureOptions& options) {
  detail::check_tree_picture(tree, options);
  const detail::TreePictureLayout l = detail::tree_picture_layout(tree, options);
  detail::check_picture_size(l.width, l.height, "write_attribution_tree_png picture size");
  RgbImage image(l.height, l.width);
  detail::compose_tree_picture(image, tree, options, l);
  std::vector<PlotColour> colours = {{255, 255, 255}, {0, 0, 0}, {150, 150, 150}};
  colours.insert(colours.end(), k_plot_palette.begin(), k_plot_palette.end());
  detail::draw_on_rgb_image(image, "attribution tree picture '" + path + "'", colours,
                            [&] { detail::draw_tree_annotations(tree, options, l); });
  write_png_rgb(path, image);
}

}  // namespace attnlens::io
