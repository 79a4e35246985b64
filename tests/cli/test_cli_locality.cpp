// `attnlens locality`: on a ViT's model directory and IDX images, the CSV has a row per layer and
// head whose numbers are the library's (interpret/attention_distance.hpp) on the same images,
// the JSON the same tables, and --maps a PNG of the layout's size for layers x heads; a
// quadratic model's rows carry its centres and widths; --help names every option; bad queries,
// images of the wrong size and bad numbers are one line and exit code 2.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "attnlens/interpret/attention_distance.hpp"
#include "attnlens/io/heatmap_grid.hpp"  // the layout, and stb_image to read the picture
#include "attnlens/io/idx.hpp"
#include "attnlens/io/vit_model.hpp"
#include "support/cli_test.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliLocality : public testing::CliTest {
 protected:
  void SetUp() override {
    testing::CliTest::SetUp();
    if (IsSkipped()) return;
    config_ = testing::small_vit_config(/*image_size*/ 12, /*num_layers*/ 2);
    testing::save_random_vit(config_, path("vit"), 21);
    Tensor<std::uint8_t> bytes({5, 12, 12});
    for (Index i = 0; i < bytes.size(); ++i) bytes.data()[i] = static_cast<std::uint8_t>(i * 29);
    io::write_idx(path("images.idx"), bytes, io::IdxWriteOptions{false});
  }

  std::string base(const std::string& model = "vit") const {
    return "locality --model " + path(model) + " --input " + path("images.idx") + " --output " +
           out_path();
  }

  // The CSV's rows after the header, split at the commas.
  std::vector<std::vector<std::string>> csv_rows(std::string* header = nullptr) const {
    std::ifstream in(out_path());
    std::string line;
    std::getline(in, line);
    if (header) *header = line;
    std::vector<std::vector<std::string>> rows;
    while (std::getline(in, line)) {
      std::vector<std::string> cells;
      std::stringstream cells_of(line);
      for (std::string cell; std::getline(cells_of, cell, ',');) cells.push_back(cell);
      rows.push_back(cells);
    }
    return rows;
  }

  io::VitModelConfig config_;
};

TEST_F(CliLocality, TablesAreTheLibrarysOnTheSameImages) {
  const auto run = run_cli(base() + " --limit 4 --batch-size 3 --json " + path("t.json") +
                           " --maps " + path("maps.png") + " --panel-size 40");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("on 4 images (3 x 3 patches of 4 x 4 pixels)"), std::string::npos)
      << run.output;

  // The library on the first 4 images, normalized as the command reads them.
  const VisionTransformer<float> vit = io::load_vit_model<float>(path("vit"));
  Tensor<float> images = io::unit_image_batch<float>(io::read_idx_images(path("images.idx")));
  Tensor<float> first({4, 1, 12, 12});
  std::copy_n(images.data(), first.size(), first.data());
  for (auto& v : first.storage()) v = (v - 0.3f) / 0.4f;
  const AttentionDistances expected = vit_attention_distances(vit, first, /*centre*/ 1 + 4);

  std::string header;
  const auto rows = csv_rows(&header);
  EXPECT_EQ(header,
            "layer,head,mean_distance_patches,mean_distance_pixels,within_1,within_2,patch_mass");
  ASSERT_EQ(rows.size(), 4u);  // 2 layers x 2 heads
  for (const auto& row : rows) {
    const Index l = std::stol(row[0]), h = std::stol(row[1]);
    EXPECT_NEAR(std::stod(row[2]), expected.mean_distance()(l, h), 1e-5);
    EXPECT_NEAR(std::stod(row[3]), 4 * expected.mean_distance()(l, h), 4e-5);
    EXPECT_NEAR(std::stod(row[4]), expected.within_1()(l, h), 1e-5);
    EXPECT_NEAR(std::stod(row[5]), expected.within_2()(l, h), 1e-5);
    EXPECT_NEAR(std::stod(row[6]), expected.patch_mass()(l, h), 1e-5);
  }
  std::ifstream json_in(path("t.json"));
  const nlohmann::json json = nlohmann::json::parse(json_in);
  EXPECT_EQ(json["images"], 4);
  EXPECT_EQ(json["queries"], 4 * 9);
  // The JSON keeps every digit, but the CLI is another binary, built with -march=native while
  // the tests are not: its float attention differs from the library's here by a few ulps
  // (3.1e-9 seen with ATTNLENS_NO_AVX512=1), as for the CSV's rows above.
  EXPECT_NEAR(json["within_1"][1][0].get<double>(), expected.within_1()(1, 0), 1e-6);

  int width = 0, height = 0, channels = 0;
  ASSERT_TRUE(stbi_info(path("maps.png").c_str(), &width, &height, &channels));
  io::HeatmapGridOptions options;
  options.title = "a title";
  options.panel_pixels = 40;
  const auto layout = io::detail::heatmap_layout(3, 3, 2, 2, /*notes*/ true, options);
  EXPECT_EQ(width, layout.width);
  EXPECT_EQ(height, layout.height);
}

TEST_F(CliLocality, QuadraticModelsReportTheirCentres) {
  io::VitModelConfig quadratic = config_;
  quadratic.vit.relative_position.type = PositionType::quadratic;
  testing::save_random_vit(quadratic, path("quadratic"), 3);
  const auto run = run_cli(base("quadratic") + " --query 0,2");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::string header;
  const auto rows = csv_rows(&header);
  EXPECT_NE(header.find(",center_row,center_col,alpha"), std::string::npos) << header;
  const VisionTransformer<float> vit = io::load_vit_model<float>(path("quadratic"));
  const auto& term = vit.blocks[1].position.as<QuadraticEncoding<float>>();
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_NEAR(std::stod(rows[3][7]), term.center_shift(1, 0), 1e-5);
  EXPECT_NEAR(std::stod(rows[3][8]), term.center_shift(1, 1), 1e-5);
  EXPECT_NEAR(std::stod(rows[3][9]), term.alpha[1], 1e-5);
}

TEST_F(CliLocality, HelpNamesEveryOption) {
  const auto help = run_cli("locality --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* option : {"--model", "--input", "--limit", "--query", "--output", "--json",
                             "--maps", "--panel-size", "--batch-size", "--threads"})
    EXPECT_NE(help.output.find(option), std::string::npos) << option << "\n" << help.output;
}

TEST_F(CliLocality, BadOptionsNameTheProblem) {
  expect_bad_input(base() + " --query 3,0",
                   "--query: expected ROW,COL on the 3 x 3 patch grid (0..2,0..2), got 3,0");
  expect_bad_input(base() + " --query cls", "--query: expected a patch");
  expect_bad_input(base() + " --query middle", "--query: expected cls, a token index or ROW,COL");
  expect_bad_input(base() + " --batch-size 0", "--batch-size");
  expect_bad_input(base() + " --limit -1", "--limit");
  expect_bad_input(base() + " --panel-size nan", "--panel-size");
  expect_bad_input("locality --model " + path("vit") + " --output " + out_path(), "--input");
  io::write_idx(path("small.idx"), Tensor<std::uint8_t>({2, 8, 8}), io::IdxWriteOptions{false});
  expect_bad_input("locality --model " + path("vit") + " --input " + path("small.idx") +
                       " --output " + out_path(),
                   "[B, 1, 12, 12]");
  expect_bad_input("locality --model " + path("missing") + " --input " + path("images.idx") +
                       " --output " + out_path(),
                   "missing");
}

}  // namespace
}  // namespace attnlens
