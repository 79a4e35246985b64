// `attnlens plot`: a metrics.jsonl written here (as attnlens train writes it) drawn as a PNG of
// the asked size with the train and test curves in the palette's first two colours; an epoch
// written twice keeps its last line (the picture equals that of the file without the first);
// bad input named in one line with exit code 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "attnlens/io/line_plot.hpp"  // io/png.hpp and stb_image, to read the picture back
#include "support/cli_test.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliPlot : public testing::CliTest {
 protected:
  // Three epochs as attnlens train writes them, a blank line, and epoch 2 twice: its first
  // line (line 2) a decoy that the later one replaces.
  void write_metrics(const std::string& file) const {
    std::ofstream out(path(file));
    out << R"({"epoch":1,"step":4,"lr":0.001,"train_loss":1.2,"train_accuracy":0.5,)"
           R"("test_loss":0.9,"test_accuracy":0.6,"train_seconds":1.0,"images_per_second":9.0,)"
           R"("skipped_steps":0})"
        << "\n"
        << R"({"epoch":2,"train_loss":9.0,"train_accuracy":0.0,"test_loss":9.0,"test_accuracy":0.0})"
        << "\n\n"
        << R"({"epoch":2,"train_loss":0.8,"train_accuracy":0.7,"test_loss":0.7,"test_accuracy":0.75})"
        << "\n"
        << R"({"epoch":3,"train_loss":0.6,"train_accuracy":0.8,"test_loss":0.6,"test_accuracy":0.8})"
        << "\n";
  }
};

// How many pixels are within 40 per channel of `colour`.
long cli_plot_colour_count(const std::string& file, io::PlotColour colour) {
  int width = 0, height = 0, channels = 0;
  unsigned char* rgb = stbi_load(file.c_str(), &width, &height, &channels, 3);
  if (!rgb) return 0;
  long count = 0;
  for (long i = 0; i < static_cast<long>(width) * height; ++i) {
    const unsigned char* p = rgb + 3 * i;
    count += std::abs(p[0] - colour.red) <= 40 && std::abs(p[1] - colour.green) <= 40 &&
             std::abs(p[2] - colour.blue) <= 40;
  }
  stbi_image_free(rgb);
  return count;
}

TEST_F(CliPlot, DrawsTheCurvesOfAMetricsFile) {
  write_metrics("metrics.jsonl");
  const auto run = run_cli("plot --metrics " + path("metrics.jsonl") + " --output " +
                           path("curves.png") + " --width 800 --height 360");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const Matrix<double> image = io::read_png_gray(path("curves.png"));
  EXPECT_EQ(image.cols(), 800);
  EXPECT_EQ(image.rows(), 360);
  // Train and test in the palette's first two colours.
  for (const io::PlotColour colour : {io::k_plot_palette[0], io::k_plot_palette[1]})
    EXPECT_GT(cli_plot_colour_count(path("curves.png"), colour), 100);
  // Epoch 2's decoy line is dropped: the picture is that of the file without it.
  std::ifstream in(path("metrics.jsonl"));
  std::ofstream clean(path("clean.jsonl"));
  std::string line;
  for (int number = 1; std::getline(in, line); ++number)
    if (number != 2) clean << line << "\n";
  clean.close();
  ASSERT_EQ(run_cli("plot --metrics " + path("clean.jsonl") + " --output " + path("clean.png") +
                    " --width 800 --height 360")
                .exit_code,
            0);
  EXPECT_EQ((io::read_png_gray(path("clean.png")) - image).cwiseAbs().maxCoeff(), 0.0);
  const auto help = run_cli("plot --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--metrics"), std::string::npos) << help.output;
}

TEST_F(CliPlot, BadInputNamesTheProblem) {
  const auto plot = [&](const std::string& metrics, const std::string& extra = "") {
    return "plot --metrics " + path(metrics) + " --output " + path("curves.png") + extra;
  };
  expect_bad_input(plot("missing.jsonl"), "cannot open");
  std::ofstream(path("empty.jsonl")) << "\n";
  expect_bad_input(plot("empty.jsonl"), "no epochs");
  std::ofstream(path("broken.jsonl")) << R"({"epoch":1,"train_loss":1,"train_accuracy":0.5,)"
                                         R"("test_loss":1,"test_accuracy":0.5})"
                                      << "\n{\"epoch\": 2,\n";
  expect_bad_input(plot("broken.jsonl"), "line 2: not a JSON object");
  std::ofstream(path("key.jsonl")) << R"({"epoch":1,"train_loss":1,"train_accuracy":0.5,)"
                                      R"("test_accuracy":0.5})"
                                   << "\n";
  expect_bad_input(plot("key.jsonl"), "line 1: 'test_loss' is missing");
  std::ofstream(path("type.jsonl")) << R"({"epoch":1,"train_loss":"1","train_accuracy":0.5,)"
                                       R"("test_loss":1,"test_accuracy":0.5})"
                                    << "\n";
  expect_bad_input(plot("type.jsonl"), "'train_loss' is not a number");
  write_metrics("metrics.jsonl");
  expect_bad_input(plot("metrics.jsonl", " --width 150"), "LinePlotOptions::width");
  expect_bad_input(
      "plot --metrics " + path("metrics.jsonl") + " --output " + path("no/such/dir/curves.png"),
      "cannot write");
  EXPECT_FALSE(std::filesystem::exists(path("curves.png")));
}

}  // namespace
}  // namespace attnlens
