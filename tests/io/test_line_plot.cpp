// io/line_plot.hpp: the PNG has the asked size and is read back by io/png.hpp; a series puts
// pixels of its colour where its points are (a rising line is higher on the right, panels sit
// side by side, palette colours in series order); error bars and markers add pixels; the legend
// goes to a corner the data leave free; text is shown literally; concurrent calls each write
// their own picture; bad input, an unwritable path or a missing device is an ArgumentError or
// IoError naming the argument.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "attnlens/io/line_plot.hpp"  // and io/png.hpp with stb_image, to read the colours back
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using io::LinePlot;
using io::PlotColour;
using io::PlotMarker;
using io::PlotSeries;
using testing::expect_error_naming;

class LinePlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("attnlens_line_plot_" + std::string(info->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& file) const { return (dir_ / file).string(); }

  std::filesystem::path dir_;
};

struct PlotPixels {
  int width = 0, height = 0;
  std::vector<unsigned char> rgb;  // row-major, 3 bytes a pixel
};

PlotPixels read_plot_pixels(const std::string& path) {
  PlotPixels pixels;
  int channels = 0;
  unsigned char* data = stbi_load(path.c_str(), &pixels.width, &pixels.height, &channels, 3);
  if (!data) {
    ADD_FAILURE() << "cannot read " << path;
    return pixels;
  }
  pixels.rgb.assign(data, data + 3 * pixels.width * pixels.height);
  stbi_image_free(data);
  return pixels;
}

// Where pixels of one colour lie: how many, and their mean row and column (-1 if none). Every
// channel within 40 of the colour: the inside of a line, not its antialiased edge on white.
struct PlotColourSpread {
  long count = 0;
  double mean_row = -1, mean_column = -1;
  int first_row = std::numeric_limits<int>::max(), last_row = -1;
};

PlotColourSpread plot_colour_spread(const PlotPixels& pixels, PlotColour colour, int first_column,
                                    int end_column) {
  PlotColourSpread spread;
  double rows = 0, columns = 0;
  for (int y = 0; y < pixels.height; ++y)
    for (int x = first_column; x < end_column; ++x) {
      const unsigned char* p = &pixels.rgb[3 * (static_cast<std::size_t>(y) * pixels.width + x)];
      if (std::abs(p[0] - colour.red) > 40 || std::abs(p[1] - colour.green) > 40 ||
          std::abs(p[2] - colour.blue) > 40)
        continue;
      ++spread.count;
      rows += y;
      columns += x;
      spread.first_row = std::min(spread.first_row, y);
      spread.last_row = std::max(spread.last_row, y);
    }
  if (spread.count > 0) {
    spread.mean_row = rows / static_cast<double>(spread.count);
    spread.mean_column = columns / static_cast<double>(spread.count);
  }
  return spread;
}

PlotColourSpread plot_colour_spread(const PlotPixels& pixels, PlotColour colour) {
  return plot_colour_spread(pixels, colour, 0, pixels.width);
}

constexpr PlotColour k_plot_magenta{200, 0, 200};
constexpr PlotColour k_plot_green{0, 170, 0};

// One unnamed series (no legend entry) from x = 0 to 10.
PlotSeries plot_line(std::vector<double> y, PlotColour colour) {
  PlotSeries series;
  for (std::size_t i = 0; i < y.size(); ++i)
    series.x.push_back(10.0 * static_cast<double>(i) / static_cast<double>(y.size() - 1));
  series.y = std::move(y);
  series.colour = colour;
  return series;
}

LinePlot plot_panel(std::vector<PlotSeries> series) {
  LinePlot panel;
  panel.title = "a panel";
  panel.x_label = "x";
  panel.y_label = "y";
  panel.series = std::move(series);
  return panel;
}

TEST_F(LinePlotTest, WritesAPngOfTheAskedSize) {
  io::write_line_plot_png(path("two.png"),
                          {plot_panel({plot_line({0, 1, 2}, k_plot_magenta)}),
                           plot_panel({plot_line({2, 1, 0}, k_plot_green)})},
                          {/*width*/ 640, /*height*/ 300});
  const Matrix<double> image = io::read_png_gray(path("two.png"));
  EXPECT_EQ(image.cols(), 640);
  EXPECT_EQ(image.rows(), 300);
  EXPECT_GT(image.mean(), 0.8);      // a white background
  EXPECT_LT(image.minCoeff(), 0.2);  // black text and frame
  EXPECT_FALSE(std::filesystem::exists(path("two.png.tmp")));
}

TEST_F(LinePlotTest, ARisingLineIsHigherOnTheRightAndAFallingOneLower) {
  for (const bool rising : {true, false}) {
    SCOPED_TRACE(rising ? "rising" : "falling");
    const std::vector<double> y =
        rising ? std::vector<double>{0, 1, 2, 3, 4} : std::vector<double>{4, 3, 2, 1, 0};
    io::write_line_plot_png(path("line.png"), {plot_panel({plot_line(y, k_plot_magenta)})},
                            {400, 300});
    const PlotPixels pixels = read_plot_pixels(path("line.png"));
    const PlotColourSpread left = plot_colour_spread(pixels, k_plot_magenta, 0, 200);
    const PlotColourSpread right = plot_colour_spread(pixels, k_plot_magenta, 200, 400);
    ASSERT_GT(left.count, 20);
    ASSERT_GT(right.count, 20);
    // Rows grow downwards; the line spans most of the panel's height.
    if (rising)
      EXPECT_LT(right.mean_row, left.mean_row - 50);
    else
      EXPECT_GT(right.mean_row, left.mean_row + 50);
  }
}

TEST_F(LinePlotTest, PanelsSitSideBySide) {
  io::write_line_plot_png(path("panels.png"),
                          {plot_panel({plot_line({0, 1}, k_plot_magenta)}),
                           plot_panel({plot_line({0, 1}, k_plot_green)})},
                          {800, 300});
  const PlotPixels pixels = read_plot_pixels(path("panels.png"));
  const PlotColourSpread first = plot_colour_spread(pixels, k_plot_magenta);
  const PlotColourSpread second = plot_colour_spread(pixels, k_plot_green);
  ASSERT_GT(first.count, 20);
  ASSERT_GT(second.count, 20);
  EXPECT_EQ(plot_colour_spread(pixels, k_plot_magenta, 400, 800).count, 0);
  EXPECT_EQ(plot_colour_spread(pixels, k_plot_green, 0, 400).count, 0);
}

TEST_F(LinePlotTest, SeriesTakeThePaletteInOrder) {
  PlotSeries high = plot_line({1, 1, 1}, {}), low = plot_line({0, 0, 0}, {});
  high.colour.reset();
  low.colour.reset();
  high.name = "high";
  low.name = "low";
  LinePlot panel = plot_panel({high, low});
  panel.legend = io::LegendPosition::none;
  io::write_line_plot_png(path("palette.png"), {panel}, {400, 300});
  const PlotPixels pixels = read_plot_pixels(path("palette.png"));
  const PlotColourSpread first = plot_colour_spread(pixels, io::k_plot_palette[0]);
  const PlotColourSpread second = plot_colour_spread(pixels, io::k_plot_palette[1]);
  ASSERT_GT(first.count, 100);
  ASSERT_GT(second.count, 100);
  EXPECT_LT(first.mean_row, second.mean_row - 100);
}

TEST_F(LinePlotTest, ErrorBarsAndMarkersAddPixels) {
  // A fixed y range, so the bars do not change the axes.
  const auto draw = [&](const std::string& name, std::vector<double> error, PlotMarker marker) {
    PlotSeries series = plot_line({0, 0, 0, 0, 0}, k_plot_magenta);
    series.y_error = std::move(error);
    series.marker = marker;
    LinePlot panel = plot_panel({series});
    panel.y_min = -2;
    panel.y_max = 2;
    io::write_line_plot_png(path(name), {panel}, {400, 300});
    return plot_colour_spread(read_plot_pixels(path(name)), k_plot_magenta);
  };
  const PlotColourSpread plain = draw("plain.png", {}, PlotMarker::none);
  const PlotColourSpread bars = draw("bars.png", {1, 1, 1, 1, 1}, PlotMarker::none);
  const PlotColourSpread marked = draw("marked.png", {}, PlotMarker::square);
  ASSERT_GT(plain.count, 100);
  // Bars of +-1 on a range of 4 reach a quarter of the plot's height above and below the line.
  EXPECT_GT(bars.count, plain.count + 100);
  EXPECT_GT(plain.first_row - bars.first_row, 30);
  EXPECT_GT(bars.last_row - plain.last_row, 30);
  EXPECT_GT(marked.count, plain.count + 5 * 20);
  // A single point has nothing to join: it is drawn as a marker.
  LinePlot single = plot_panel({plot_line({0, 1}, k_plot_magenta)});
  single.series[0].x = {1};
  single.series[0].y = {3};
  io::write_line_plot_png(path("single.png"), {single}, {400, 300});
  EXPECT_GT(plot_colour_spread(read_plot_pixels(path("single.png")), k_plot_magenta).count, 20);
}

TEST_F(LinePlotTest, TheLegendTakesACornerTheDataLeaveFree) {
  const auto corner = [](std::vector<double> y) {
    const LinePlot panel = plot_panel({plot_line(std::move(y), k_plot_magenta)});
    return io::detail::automatic_legend_position(panel, io::detail::panel_window(panel));
  };
  EXPECT_EQ(corner({1.0, 0.5, 0.3, 0.2, 0.15}), io::LegendPosition::top_right);     // a loss
  EXPECT_EQ(corner({0.5, 0.7, 0.8, 0.85, 0.9}), io::LegendPosition::bottom_right);  // accuracy
  EXPECT_EQ(corner({0, 1, 1, 1, 1}), io::LegendPosition::bottom_right);
  EXPECT_EQ(corner({1, 1, 1, 0.5, 0}), io::LegendPosition::bottom_left);
  EXPECT_EQ(corner({0, 0, 0, 0.5, 1}), io::LegendPosition::top_left);

  // Drawn: the legend's line sample in the series' colour sits in the lower right.
  PlotSeries rising = plot_line({0, 1, 2, 3, 4}, k_plot_magenta);
  rising.name = "rising";
  io::write_line_plot_png(path("legend.png"), {plot_panel({rising})}, {400, 300});
  const PlotPixels pixels = read_plot_pixels(path("legend.png"));
  rising.name.clear();
  io::write_line_plot_png(path("no_legend.png"), {plot_panel({rising})}, {400, 300});
  const PlotPixels without = read_plot_pixels(path("no_legend.png"));
  const auto lower_right = [](const PlotPixels& p) {
    long count = 0;
    for (int y = p.height / 2; y < p.height; ++y)
      for (int x = p.width / 2; x < p.width; ++x) {
        const unsigned char* c = &p.rgb[3 * (static_cast<std::size_t>(y) * p.width + x)];
        count += std::abs(c[0] - 200) <= 40 && c[1] <= 40 && std::abs(c[2] - 200) <= 40;
      }
    return count;
  };
  EXPECT_GT(lower_right(pixels), lower_right(without) + 10);
}

TEST_F(LinePlotTest, TextIsShownLiterally) {
  // '#' starts PLplot's escape sequences: "#u" would raise what follows.
  EXPECT_EQ(io::detail::plot_text("lr #1 #u2"), "lr ##1 ##u2");
  EXPECT_EQ(io::detail::plot_text("plain"), "plain");
}

TEST_F(LinePlotTest, ConcurrentCallsEachWriteTheirOwnPicture) {
  const std::vector<PlotColour> colours = {{200, 0, 200}, {0, 170, 0}, {0, 0, 220}, {220, 0, 0}};
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < colours.size(); ++t)
    threads.emplace_back([&, t] {
      for (int repeat = 0; repeat < 2; ++repeat)
        io::write_line_plot_png(path("thread" + std::to_string(t) + ".png"),
                                {plot_panel({plot_line({0, 1, 0}, colours[t])})},
                                {300 + 10 * static_cast<int>(t), 200});
    });
  for (std::thread& thread : threads) thread.join();
  for (std::size_t t = 0; t < colours.size(); ++t) {
    SCOPED_TRACE(t);
    const PlotPixels pixels = read_plot_pixels(path("thread" + std::to_string(t) + ".png"));
    EXPECT_EQ(pixels.width, 300 + 10 * static_cast<int>(t));
    EXPECT_EQ(pixels.height, 200);
    for (std::size_t other = 0; other < colours.size(); ++other)
      if (other == t)
        EXPECT_GT(plot_colour_spread(pixels, colours[other]).count, 20);
      else
        EXPECT_EQ(plot_colour_spread(pixels, colours[other]).count, 0) << other;
  }
}

TEST_F(LinePlotTest, BadInputNamesTheArgument) {
  const LinePlot good = plot_panel({plot_line({0, 1, 2}, k_plot_magenta)});
  const auto expect_bad = [&](const LinePlot& panel, const std::string& word) {
    expect_error_naming<ArgumentError>(
        [&] {
          io::write_line_plot_png(path("bad.png"), {good, panel});
        },
        word);
    EXPECT_FALSE(std::filesystem::exists(path("bad.png")));
  };
  LinePlot panel = good;
  panel.series.clear();
  expect_bad(panel, "panels[1].series: expected at least one series, got 0 series");
  panel = good;
  panel.series[0].x.clear();
  panel.series[0].y.clear();
  expect_bad(panel, "panels[1].series[0].x: expected at least one point");
  panel = good;
  panel.series.push_back(good.series[0]);
  panel.series[1].y.pop_back();
  expect_bad(panel, "panels[1].series[1].y: expected 3 values (as many as x), got 2");
  panel = good;
  panel.series[0].y_error = {1, 1};
  expect_bad(panel, "panels[1].series[0].y_error: expected 0 or 3 values (as many as x), got 2");
  panel = good;
  panel.series[0].y[2] = std::numeric_limits<double>::quiet_NaN();
  expect_bad(panel, "panels[1].series[0].y[2]: expected a finite value, got nan");
  panel = good;
  panel.series[0].x[0] = std::numeric_limits<double>::infinity();
  expect_bad(panel, "panels[1].series[0].x[0]: expected a finite value, got inf");
  panel = good;
  panel.series[0].y_error = {0, -1, 0};
  expect_bad(panel, "panels[1].series[0].y_error[1]: expected >= 0, got -1");
  panel = good;
  panel.y_min = 2;
  panel.y_max = 1;
  expect_bad(panel, "panels[1].y_min: expected < y_max = 1, got 2");
  panel = good;
  panel.x_max = std::numeric_limits<double>::infinity();
  expect_bad(panel, "panels[1].x_max: expected a finite value");

  expect_error_naming<ArgumentError>([&] { io::write_line_plot_png(path("bad.png"), {}); },
                                     "panels: expected at least one panel");
  expect_error_naming<ArgumentError>([&] { io::write_line_plot_png("", {good}); },
                                     "path: expected a file name");
  expect_error_naming<ArgumentError>(
      [&] {
        io::write_line_plot_png(path("bad.png"), {good, good}, {150, 300});
      },
      "LinePlotOptions::width: expected [200, 16384] pixels (100 a panel, 2 panels), got 150");
  expect_error_naming<ArgumentError>(
      [&] {
        io::write_line_plot_png(path("bad.png"), {good}, {400, 20000});
      },
      "LinePlotOptions::height: expected [100, 16384] pixels, got 20000");
  EXPECT_FALSE(std::filesystem::exists(path("bad.png")));

  // A directory that does not exist: an IoError naming the file, and PLplot is not reached
  // (it would retry and exit the process).
  expect_error_naming<IoError>(
      [&] { io::write_line_plot_png(path("missing/dir/plot.png"), {good}); },
      "cannot write '" + path("missing/dir/plot.png.tmp") + "': No such file or directory");
  // Without PLplot's cairo driver there is no pngcairo device: the message names the package.
  expect_error_naming<IoError>([] { io::detail::require_plot_device("no-such-device"); },
                               "install the Debian package plplot-driver-cairo");
  io::detail::require_plot_device("pngcairo");
  // The stream of a failed call is gone: the next call draws.
  io::write_line_plot_png(path("after.png"), {good}, {300, 200});
  EXPECT_EQ(io::read_png_gray(path("after.png")).cols(), 300);
}

}  // namespace
}  // namespace attnlens
