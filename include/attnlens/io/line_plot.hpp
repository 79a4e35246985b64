// Line plots as PNG files, drawn by PLplot (Debian's libplplot-dev) through its pngcairo device
// (plplot-driver-cairo): one or more panels side by side, each with a title, axis labels, a grid,
// a legend and series of points joined by lines, with optional markers and error bars y +- e.
// Training curves, pruning curves and robustness studies are drawn with it (docs/training.md).
// Link attnlens::plot. This header includes <plplot.h>, and with it PLplot's C API macros.
#pragma once

#include <plplot.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/io/png.hpp"

namespace attnlens::io {

struct PlotColour {
  std::uint8_t red = 0, green = 0, blue = 0;
};

// The colours of series 0, 1, 2, ... of a panel unless a series names its own: matplotlib's
// "tab10", so curves look as they do in the PyTorch world, and the first ones stay apart for
// most colour-vision deficiencies.
inline constexpr std::array<PlotColour, 10> k_plot_palette = {{{31, 119, 180},
                                                               {255, 127, 14},
                                                               {44, 160, 44},
                                                               {214, 39, 40},
                                                               {148, 103, 189},
                                                               {140, 86, 75},
                                                               {227, 119, 194},
                                                               {127, 127, 127},
                                                               {188, 189, 34},
                                                               {23, 190, 207}}};

enum class PlotMarker { none, circle, square, triangle, diamond, cross };

struct PlotSeries {
  std::string name;             // the legend's entry; empty: left out of the legend
  std::vector<double> x, y;     // the points, joined in this order
  std::vector<double> y_error;  // empty, or one half-length (>= 0) per point: a bar y +- y_error
  // Drawn at every point. A series of one point has nothing to join, so it gets a circle if it
  // names no marker.
  PlotMarker marker = PlotMarker::none;
  std::optional<PlotColour> colour;  // default: k_plot_palette[its index in the panel % 10]
};

enum class LegendPosition { automatic, top_right, top_left, bottom_right, bottom_left, none };

struct LinePlot {
  std::string title, x_label, y_label;
  std::vector<PlotSeries> series;
  // Fixed ends of the axes; an end left empty follows the data, error bars included, with a
  // margin of 3% (x) or 5% (y) of the range.
  std::optional<double> x_min, x_max, y_min, y_max;
  // automatic: the inside corner that the fewest points and lines pass through.
  LegendPosition legend = LegendPosition::automatic;
};

struct LinePlotOptions {
  // The whole picture in pixels; the panels share the width equally.
  int width = 1200, height = 480;
};

namespace detail {

using attnlens::detail::concat;
using attnlens::detail::require_argument;

inline constexpr int k_line_plot_min_extent = 100;    // pixels, per panel and in height
inline constexpr int k_line_plot_max_extent = 16384;  // well inside cairo's 32767

// PLplot keeps the current stream, the driver table and its error handler in globals: one
// picture at a time in this process.
inline std::mutex& line_plot_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline std::string line_plot_series_name(std::size_t panel, std::size_t series) {
  return concat("write_line_plot_png: panels[", panel, "].series[", series, "]");
}

inline void check_finite_values(const std::vector<double>& values, const std::string& what) {
  for (std::size_t i = 0; i < values.size(); ++i)
    require_argument(std::isfinite(values[i]), concat(what, "[", i, "]"), "a finite value",
                     values[i]);
}

inline void check_line_plot_series(const PlotSeries& series, const std::string& where) {
  require_argument(!series.x.empty(), where + ".x", "at least one point", "0 points");
  require_argument(series.y.size() == series.x.size(), where + ".y",
                   concat(series.x.size(), " values (as many as x)"), series.y.size());
  require_argument(series.y_error.empty() || series.y_error.size() == series.x.size(),
                   where + ".y_error", concat("0 or ", series.x.size(), " values (as many as x)"),
                   series.y_error.size());
  check_finite_values(series.x, where + ".x");
  check_finite_values(series.y, where + ".y");
  check_finite_values(series.y_error, where + ".y_error");
  for (std::size_t i = 0; i < series.y_error.size(); ++i)
    require_argument(series.y_error[i] >= 0, concat(where, ".y_error[", i, "]"), ">= 0",
                     series.y_error[i]);
}

inline void check_axis_ends(const std::optional<double>& low, const std::optional<double>& high,
                            const std::string& where, const std::string& axis) {
  if (low) require_argument(std::isfinite(*low), where + axis + "_min", "a finite value", *low);
  if (high) require_argument(std::isfinite(*high), where + axis + "_max", "a finite value", *high);
  if (low && high)
    require_argument(*low < *high, where + axis + "_min", concat("< ", axis, "_max = ", *high),
                     *low);
}

inline void check_line_plots(const std::string& path, const std::vector<LinePlot>& panels,
                             const LinePlotOptions& options) {
  require_argument(!path.empty(), "write_line_plot_png: path", "a file name", "\"\"");
  require_argument(!panels.empty(), "write_line_plot_png: panels", "at least one panel",
                   "0 panels");
  require_argument(
      options.height >= k_line_plot_min_extent && options.height <= k_line_plot_max_extent,
      "LinePlotOptions::height",
      concat("[", k_line_plot_min_extent, ", ", k_line_plot_max_extent, "] pixels"),
      options.height);
  require_argument(options.width <= k_line_plot_max_extent &&
                       options.width / static_cast<long>(panels.size()) >= k_line_plot_min_extent,
                   "LinePlotOptions::width",
                   concat("[", k_line_plot_min_extent * static_cast<long>(panels.size()), ", ",
                          k_line_plot_max_extent, "] pixels (", k_line_plot_min_extent,
                          " a panel, ", panels.size(), " panels)"),
                   options.width);
  for (std::size_t p = 0; p < panels.size(); ++p) {
    const LinePlot& panel = panels[p];
    const std::string where = concat("write_line_plot_png: panels[", p, "]");
    require_argument(!panel.series.empty(), where + ".series", "at least one series", "0 series");
    check_axis_ends(panel.x_min, panel.x_max, where + ".", "x");
    check_axis_ends(panel.y_min, panel.y_max, where + ".", "y");
    for (std::size_t s = 0; s < panel.series.size(); ++s)
      check_line_plot_series(panel.series[s], line_plot_series_name(p, s));
  }
}

struct AxisRange {
  double low = 0, high = 1;
};

// The data's extent widened by `margin` of it on the free ends, then the fixed ends; a range of
// no width (one point, a constant) is opened around the value so the axis has ticks.
inline AxisRange axis_range(double data_low, double data_high, const std::optional<double>& low,
                            const std::optional<double>& high, double margin) {
  if (data_high - data_low <= 1e-12 * std::max(1.0, std::abs(data_high))) {
    const double half = 0.05 * std::max(1.0, std::abs(data_low));
    data_low -= half;
    data_high += half;
  }
  const double pad = margin * (data_high - data_low);
  AxisRange range{low.value_or(data_low - pad), high.value_or(data_high + pad)};
  if (range.low >= range.high) {  // one fixed end beyond all the data
    const double width = std::max(1.0, std::abs(low ? range.low : range.high));
    if (low)
      range.high = range.low + width;
    else
      range.low = range.high - width;
  }
  return range;
}

struct PanelWindow {
  AxisRange x, y;
};

inline PanelWindow panel_window(const LinePlot& panel) {
  double x_low = std::numeric_limits<double>::infinity(), x_high = -x_low;
  double y_low = x_low, y_high = -x_low;
  for (const PlotSeries& series : panel.series)
    for (std::size_t i = 0; i < series.x.size(); ++i) {
      const double error = series.y_error.empty() ? 0.0 : series.y_error[i];
      x_low = std::min(x_low, series.x[i]);
      x_high = std::max(x_high, series.x[i]);
      y_low = std::min(y_low, series.y[i] - error);
      y_high = std::max(y_high, series.y[i] + error);
    }
  return {axis_range(x_low, x_high, panel.x_min, panel.x_max, 0.03),
          axis_range(y_low, y_high, panel.y_min, panel.y_max, 0.05)};
}

// The inside corner whose box (40% of the width, 35% of the height) the fewest points and line
// samples fall into; on a tie the first of top right, bottom right, top left, bottom left.
inline LegendPosition automatic_legend_position(const LinePlot& panel, const PanelWindow& window) {
  constexpr std::array<LegendPosition, 4> corners = {
      LegendPosition::top_right, LegendPosition::bottom_right, LegendPosition::top_left,
      LegendPosition::bottom_left};
  std::array<long, 4> counts{};
  const auto count = [&](double x, double y) {
    const double u = (x - window.x.low) / (window.x.high - window.x.low);
    const double v = (y - window.y.low) / (window.y.high - window.y.low);
    const bool right = u > 0.6, left = u<0.4, top = v> 0.65, bottom = v < 0.35;
    counts[0] += right && top;
    counts[1] += right && bottom;
    counts[2] += left && top;
    counts[3] += left && bottom;
  };
  constexpr int k_samples_per_segment = 16;
  for (const PlotSeries& series : panel.series)
    for (std::size_t i = 0; i < series.x.size(); ++i) {
      count(series.x[i], series.y[i]);
      if (i + 1 == series.x.size()) continue;
      for (int k = 1; k < k_samples_per_segment; ++k) {
        const double t = static_cast<double>(k) / k_samples_per_segment;
        count(series.x[i] + t * (series.x[i + 1] - series.x[i]),
              series.y[i] + t * (series.y[i + 1] - series.y[i]));
      }
    }
  return corners[static_cast<std::size_t>(std::min_element(counts.begin(), counts.end()) -
                                          counts.begin())];
}

// `text` as PLplot shows it literally: '#' starts PLplot's escape sequences (#u superscript,
// #(225) a Hershey glyph), "##" is a '#'.
inline std::string plot_text(const std::string& text) {
  std::string escaped;
  for (const char c : text) escaped += c == '#' ? std::string("##") : std::string(1, c);
  return escaped;
}

// UTF-8 glyphs that DejaVu Sans (fontconfig's "sans" on Debian) draws centred on the point.
inline const char* marker_glyph(PlotMarker marker) {
  switch (marker) {
    case PlotMarker::circle:
      return "●";
    case PlotMarker::square:
      return "■";
    case PlotMarker::triangle:
      return "▲";
    case PlotMarker::diamond:
      return "◆";
    case PlotMarker::cross:
      return "×";
    case PlotMarker::none:
      break;
  }
  return "";
}

inline PlotMarker drawn_marker(const PlotSeries& series) {
  return series.marker == PlotMarker::none && series.x.size() == 1 ? PlotMarker::circle
                                                                   : series.marker;
}

// cmap0 of every stream: 0 the background, then the frame, the grid, and the series from
// k_first_series_colour on (set per panel).
inline constexpr PLINT k_background_colour = 0, k_frame_colour = 1, k_grid_colour = 2,
                       k_first_series_colour = 3;
inline constexpr PLFLT k_line_width = 2.0, k_error_bar_width = 1.5;
// Markers are glyphs: their size relative to the text's.
inline constexpr PLFLT k_marker_scale = 0.8;

// PLplot sizes text in millimetres, which the cairo devices draw at 72 dots per inch.
inline constexpr double k_cairo_pixels_per_mm = 72 / 25.4;

// The text's height in pixels: a thirtieth of a panel's smaller side, so labels stay readable
// in small pictures and do not crowd large ones.
inline double line_plot_text_pixels(const LinePlotOptions& options, std::size_t panels) {
  const double panel_width = static_cast<double>(options.width) / static_cast<double>(panels);
  return std::clamp(std::min(panel_width, static_cast<double>(options.height)) / 30.0, 11.0, 22.0);
}

// The devices PLplot found (its driver database), checked before plinit: asked for a missing
// device, PLplot prompts on stdin.
inline void require_plot_device(const char* device) {
  constexpr int k_capacity = 128;
  std::array<const char*, k_capacity> menus{}, names{};
  const char** menu_list = menus.data();
  const char** name_list = names.data();
  int count = k_capacity;
  plgDevs(&menu_list, &name_list, &count);
  for (int i = 0; i < count; ++i)
    if (names[static_cast<std::size_t>(i)] &&
        std::strcmp(names[static_cast<std::size_t>(i)], device) == 0)
      return;
  throw IoError(concat("line plot: PLplot has no '", device,
                       "' device (its cairo driver is missing: install the Debian package "
                       "plplot-driver-cairo)"));
}

// What PLplot reported through plabort during one picture (it goes on drawing after one).
inline std::string& plot_abort_message() {
  static std::string message;
  return message;
}

inline void record_plot_abort(PLCHAR_VECTOR message) {
  if (plot_abort_message().empty()) plot_abort_message() = message ? message : "(no message)";
}

// Routes PLplot's plabort messages to plot_abort_message while it lives; PLplot's default (no
// handler) comes back after.
class PlotAbortHandler {
 public:
  PlotAbortHandler() { plsabort(record_plot_abort); }
  ~PlotAbortHandler() { plsabort(nullptr); }
  PlotAbortHandler(const PlotAbortHandler&) = delete;
  PlotAbortHandler& operator=(const PlotAbortHandler&) = delete;
};

// A PLplot stream of its own, ended (its file closed, its memory freed) on every path out.
class PlotStream {
 public:
  PlotStream() {
    plmkstrm(&id_);
    if (id_ < 0) throw IoError("line plot: PLplot has no free stream (all 100 are in use)");
  }
  ~PlotStream() {
    plsstrm(id_);
    plend1();
  }
  PlotStream(const PlotStream&) = delete;
  PlotStream& operator=(const PlotStream&) = delete;

 private:
  PLINT id_ = -1;
};

// Runs `draw` on a PLplot stream of its own whose memcairo device (plplot-driver-cairo) paints
// into `image`: cmap0 is `colours` (colour 0 the background), the stream is initialised and on
// its first page, and it is ended (the pixels written into `image`) before this returns. One
// picture at a time in this process, as line plots. Throws IoError if the device is missing or
// PLplot reports an error, the message starting with `what`.
template <class Draw>
void draw_on_rgb_image(RgbImage& image, const std::string& what,
                       const std::vector<PlotColour>& colours, Draw&& draw) {
  const std::lock_guard<std::mutex> lock(line_plot_mutex());
  require_plot_device("memcairo");
  plot_abort_message().clear();
  {
    const PlotAbortHandler handler;
    PlotStream stream;
    plsdev("memcairo");
    plsmem(static_cast<PLINT>(image.width), static_cast<PLINT>(image.height), image.pixels.data());
    plscmap0n(static_cast<PLINT>(colours.size()));
    for (std::size_t i = 0; i < colours.size(); ++i)
      plscol0(static_cast<PLINT>(i), colours[i].red, colours[i].green, colours[i].blue);
    plinit();
    pladv(0);
    draw();
  }
  if (!plot_abort_message().empty()) throw IoError(what + ": PLplot: " + plot_abort_message());
}

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

inline void draw_series(const PlotSeries& series, PLINT colour) {
  const auto n = static_cast<PLINT>(series.x.size());
  plcol0(colour);
  pllsty(1);
  if (!series.y_error.empty()) {
    std::vector<PLFLT> low(series.y.size()), high(series.y.size());
    for (std::size_t i = 0; i < series.y.size(); ++i) {
      low[i] = series.y[i] - series.y_error[i];
      high[i] = series.y[i] + series.y_error[i];
    }
    plwidth(k_error_bar_width);
    plerry(n, series.x.data(), low.data(), high.data());
  }
  plwidth(k_line_width);
  if (n > 1) plline(n, series.x.data(), series.y.data());
  const PlotMarker marker = drawn_marker(series);
  if (marker != PlotMarker::none) {
    plschr(0, k_marker_scale);
    plstring(n, series.x.data(), series.y.data(), marker_glyph(marker));
    plschr(0, 1);
  }
}

inline void draw_legend(const LinePlot& panel, LegendPosition position) {
  std::vector<PLINT> options, colours, styles, symbol_numbers;
  std::vector<PLFLT> widths, symbol_scales;
  std::vector<std::string> names;  // plot_text of each entry, then their c_str()s
  std::vector<const char*> texts, symbols;
  for (std::size_t s = 0; s < panel.series.size(); ++s) {
    const PlotSeries& series = panel.series[s];
    if (series.name.empty()) continue;
    const PlotMarker marker = drawn_marker(series);
    options.push_back(PL_LEGEND_LINE | (marker != PlotMarker::none ? PL_LEGEND_SYMBOL : 0));
    colours.push_back(k_first_series_colour + static_cast<PLINT>(s));
    styles.push_back(1);
    widths.push_back(k_line_width);
    symbol_numbers.push_back(1);
    symbol_scales.push_back(k_marker_scale);
    names.push_back(plot_text(series.name));
    symbols.push_back(marker_glyph(marker));
  }
  for (const std::string& name : names) texts.push_back(name.c_str());
  if (texts.empty() || position == LegendPosition::none) return;
  const bool top = position == LegendPosition::top_right || position == LegendPosition::top_left;
  const bool right =
      position == LegendPosition::top_right || position == LegendPosition::bottom_right;
  const PLINT place = PL_POSITION_INSIDE | PL_POSITION_VIEWPORT |
                      (top ? PL_POSITION_TOP : PL_POSITION_BOTTOM) |
                      (right ? PL_POSITION_RIGHT : PL_POSITION_LEFT);
  PLFLT legend_width = 0, legend_height = 0;
  plwidth(1.0);
  pllegend(&legend_width, &legend_height, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, place,
           /*x*/ 0.02, /*y*/ 0.03, /*plot_width*/ 0.08, k_background_colour, k_grid_colour,
           /*bb_style*/ 1, /*nrow*/ 0, /*ncolumn*/ 0, static_cast<PLINT>(texts.size()),
           options.data(), /*text_offset*/ 1.0, /*text_scale*/ 1.0, /*text_spacing*/ 2.0,
           /*text_justification*/ 0.0, std::vector<PLINT>(texts.size(), k_frame_colour).data(),
           texts.data(), nullptr, nullptr, nullptr, nullptr, colours.data(), styles.data(),
           widths.data(), colours.data(), symbol_scales.data(), symbol_numbers.data(),
           symbols.data());
}

inline void draw_panel(const LinePlot& panel, std::size_t index) {
  const PanelWindow window = panel_window(panel);
  for (std::size_t s = 0; s < panel.series.size(); ++s) {
    const PlotColour colour =
        panel.series[s].colour.value_or(k_plot_palette[s % k_plot_palette.size()]);
    plscol0(k_first_series_colour + static_cast<PLINT>(s), colour.red, colour.green, colour.blue);
  }
  pladv(static_cast<PLINT>(index) + 1);
  plvsta();
  plwind(window.x.low, window.x.high, window.y.low, window.y.high);
  plwidth(1.0);
  pllsty(1);
  plcol0(k_grid_colour);
  plbox("g", 0, 0, "g", 0, 0);
  plcol0(k_frame_colour);
  plbox("bcnst", 0, 0, "bcnstv", 0, 0);
  pllab(plot_text(panel.x_label).c_str(), plot_text(panel.y_label).c_str(),
        plot_text(panel.title).c_str());
  for (std::size_t s = 0; s < panel.series.size(); ++s)
    draw_series(panel.series[s], k_first_series_colour + static_cast<PLINT>(s));
  draw_legend(panel, panel.legend == LegendPosition::automatic
                         ? automatic_legend_position(panel, window)
                         : panel.legend);
}

// Draws the panels into `file` (PLplot closes it) with the pngcairo device.
inline void render_line_plots(std::unique_ptr<std::FILE, FileCloser> file,
                              const std::vector<LinePlot>& panels, const LinePlotOptions& options) {
  std::size_t most_series = 0;
  for (const LinePlot& panel : panels) most_series = std::max(most_series, panel.series.size());
  PlotStream stream;
  plsdev("pngcairo");
  plspage(0, 0, options.width, options.height, 0, 0);
  plscmap0n(k_first_series_colour + static_cast<PLINT>(most_series));
  plscol0(k_background_colour, 255, 255, 255);
  plscol0(k_frame_colour, 0, 0, 0);
  plscol0(k_grid_colour, 210, 210, 210);
  plssub(static_cast<PLINT>(panels.size()), 1);
  plsfile(file.release());  // from here on the stream's: plend1 closes it
  plinit();
  plschr(line_plot_text_pixels(options, panels.size()) / k_cairo_pixels_per_mm, 1);
  for (std::size_t p = 0; p < panels.size(); ++p) draw_panel(panels[p], p);
}

}  // namespace detail

// Draws `panels` side by side into a PNG file at `path` (written to `path`.tmp, checked, then
// renamed over `path`, so a viewer never sees half a picture). Throws ArgumentError naming the
// panel, series and field for bad input (no panels or series, a series without points, x, y
// and y_error of different lengths, non-finite values, negative errors, a fixed axis end past
// the other, a picture size out of range) and IoError if PLplot's pngcairo device is missing,
// the file cannot be written or PLplot reports an error. Safe to call from several threads: one
// picture is drawn at a time.
inline void write_line_plot_png(const std::string& path, const std::vector<LinePlot>& panels,
                                const LinePlotOptions& options = {}) {
  detail::check_line_plots(path, panels, options);
  const std::lock_guard<std::mutex> lock(detail::line_plot_mutex());
  detail::require_plot_device("pngcairo");
  const std::string staging = path + ".tmp";
  // Opened here rather than by PLplot: PLplot retries a file it cannot open and then exits.
  std::unique_ptr<std::FILE, detail::FileCloser> file(std::fopen(staging.c_str(), "wb"));
  if (!file)
    throw IoError(attnlens::detail::concat("line plot: cannot write '", staging,
                                           "': ", std::strerror(errno)));
  detail::plot_abort_message().clear();
  {
    const detail::PlotAbortHandler handler;
    detail::render_line_plots(std::move(file), panels, options);
  }
  std::error_code ignored;
  if (!detail::plot_abort_message().empty()) {
    std::filesystem::remove(staging, ignored);
    throw IoError("line plot '" + path + "': PLplot: " + detail::plot_abort_message());
  }
  // cairo's writes are not checked by PLplot: a full disk shows as a file cut short.
  std::ifstream written(staging, std::ios::binary);
  const std::string bytes(std::istreambuf_iterator<char>(written), {});
  try {
    detail::check_png_signature(bytes, staging);
    detail::read_png_layout(bytes, staging, /*check_crc*/ true);
  } catch (const IoError&) {
    std::filesystem::remove(staging, ignored);
    throw;
  }
  std::error_code error;
  std::filesystem::rename(staging, path, error);
  if (error) {
    std::filesystem::remove(staging, ignored);
    throw IoError("line plot: cannot write '" + path + "': " + error.message());
  }
}

}  // namespace attnlens::io
