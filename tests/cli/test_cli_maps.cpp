// `attnlens maps`: on a ViT's model directory and an IDX image, a PNG of the layout's size for
// the chosen layers x (heads + rollout), the query's patch outlined in red; on an encoder's
// directory, token x token maps; --help names every option; bad queries, layers, indices, a
// model without a CLS token and images of the wrong size are one line and exit code 2.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "attnlens/io/heatmap_grid.hpp"  // the layout, and stb_image to read the picture
#include "attnlens/io/idx.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/vit_model.hpp"
#include "support/cli_test.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliMaps : public testing::CliTest {
 protected:
  void SetUp() override {
    testing::CliTest::SetUp();
    if (IsSkipped()) return;
    config_ = testing::small_vit_config(/*image_size*/ 12, /*num_layers*/ 3);
    testing::save_random_vit(config_, path("vit"), 21);
    Tensor<std::uint8_t> bytes({4, 12, 12});
    for (Index i = 0; i < bytes.size(); ++i) bytes.data()[i] = static_cast<std::uint8_t>(i * 29);
    io::write_idx(path("images.idx"), bytes, io::IdxWriteOptions{false});
  }

  std::string vit_maps(const std::string& options) const {
    return "maps --model " + path("vit") + " --input " + path("images.idx") + " --output " +
           path("maps.png") + " " + options;
  }

  // The picture's width and height, read back.
  std::pair<int, int> picture_size() const {
    int width = 0, height = 0, channels = 0;
    stbi_info(path("maps.png").c_str(), &width, &height, &channels);
    return {width, height};
  }

  // Pixels of the query box's red.
  long red_pixels() const {
    int width = 0, height = 0, channels = 0;
    unsigned char* rgb = stbi_load(path("maps.png").c_str(), &width, &height, &channels, 3);
    if (!rgb) return -1;
    long count = 0;
    for (long i = 0; i < static_cast<long>(width) * height; ++i)
      count += rgb[3 * i] > 180 && rgb[3 * i + 1] < 80 && rgb[3 * i + 2] < 80;
    stbi_image_free(rgb);
    return count;
  }

  io::VitModelConfig config_;
};

// The size the library lays out for `rows` x `columns` panels over a 12 x 12 image (with each
// panel's maximum under its title unless the scale is shared).
std::pair<int, int> cli_maps_expected_size(Index rows, Index columns, Index panel_pixels = 160,
                                           bool notes = true) {
  io::HeatmapGridOptions options;
  options.title = "a title";
  options.panel_pixels = panel_pixels;
  const auto l = io::detail::heatmap_layout(12, 12, rows, columns, notes, options);
  return {static_cast<int>(l.width), static_cast<int>(l.height)};
}

TEST_F(CliMaps, VitGridOfLayersAndHeadsWithRollout) {
  auto run = run_cli(vit_maps("--index 2 --rollout"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(picture_size(), cli_maps_expected_size(3, 3));
  EXPECT_EQ(red_pixels(), 0);  // CLS has no patch to outline

  run = run_cli(vit_maps("--layers 2,0 --query 1,2 --panel-size 48 --scale shared"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(picture_size(), cli_maps_expected_size(2, 2, 48, /*notes*/ false));
  EXPECT_GT(red_pixels(), 20);  // the patch, outlined on each of the 4 panels

  // A token index names the same kind of query; a patch token's box is drawn too.
  run = run_cli(vit_maps("--query 9 --rollout --head-fusion max --alpha 1"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_GT(red_pixels(), 20);
}

TEST_F(CliMaps, EncoderTokenMaps) {
  io::EncoderModelConfig config;
  config.encoder.layer = {8, 2, 16, Activation::relu, 1e-5, true, false};
  config.encoder.num_layers = 2;
  Rng rng(4);
  io::save_encoder_model(config, TransformerEncoder<float>(config.encoder, rng), path("encoder"));
  Tensor<float> src({2, 6, 8});
  for (Index i = 0; i < src.size(); ++i) src.data()[i] = rng.normal<float>(0, 1);
  io::SafeTensorsWriter input;
  input.add("src", src);
  input.save(path("src.safetensors"));
  const std::string base = "maps --model " + path("encoder") + " --input " +
                           path("src.safetensors") + " --output " + out_path();
  const auto run = run_cli(base + " --index 1 --rollout --panel-size 60");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  int width = 0, height = 0, channels = 0;
  ASSERT_TRUE(stbi_info(out_path().c_str(), &width, &height, &channels));
  io::HeatmapGridOptions options;
  options.title = "a title";
  options.panel_pixels = 60;
  options.axes = true;
  const auto l = io::detail::heatmap_layout(6, 6, 2, 3, /*notes*/ true, options);
  EXPECT_EQ(width, l.width);
  EXPECT_EQ(height, l.height);
  std::filesystem::remove(out_path());
  expect_bad_input(base + " --query 1", "--query: applies to ViT models");
  expect_bad_input(base + " --index 2", "--index: expected 0..1 (the input holds 2 sequences)");
  expect_bad_input(base + " --layers 2", "--layers: expected layer indices in 0..1");
}

TEST_F(CliMaps, HelpNamesEveryOption) {
  const auto help = run_cli("maps --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* option : {"--model", "--input", "--output", "--query", "--layers", "--rollout",
                             "--head-fusion", "--index", "--scale", "--alpha", "--panel-size",
                             "--threads"})
    EXPECT_NE(help.output.find(option), std::string::npos) << option << "\n" << help.output;
}

TEST_F(CliMaps, BadOptionsNameTheProblem) {
  const std::string base = "maps --model " + path("vit") + " --input " + path("images.idx") +
                           " --output " + out_path();
  expect_bad_input(base + " --query 3,0",
                   "--query: expected ROW,COL on the 3 x 3 patch grid (0..2,0..2), got 3,0");
  expect_bad_input(base + " --query 10", "--query: expected a token index in 0..9");
  expect_bad_input(base + " --query middle", "--query: expected cls, a token index or ROW,COL");
  expect_bad_input(base + " --layers 0,3",
                   "--layers: expected layer indices in 0..2 (the model has 3 layers), got 3");
  expect_bad_input(base + " --index 4", "--index: expected 0..3 (the input holds 4 images), got 4");
  expect_bad_input(base + " --head-fusion median", "--head-fusion");
  expect_bad_input(base + " --alpha 2", "--alpha");
  // Images of another size than the model's.
  io::write_idx(path("small.idx"), Tensor<std::uint8_t>({2, 8, 8}), io::IdxWriteOptions{false});
  expect_bad_input("maps --model " + path("vit") + " --input " + path("small.idx") +
                       " --output " + out_path(),
                   "[B, 1, 12, 12]");
  // A mean-pooled model without a CLS token has no cls query (the default).
  io::VitModelConfig pooled = config_;
  pooled.vit.class_token = false;
  pooled.vit.pooling = VitPooling::mean;
  testing::save_random_vit(pooled, path("pooled"), 2);
  const std::string pooled_base = "maps --model " + path("pooled") + " --input " +
                                  path("images.idx") + " --output " + out_path();
  expect_bad_input(pooled_base, "--query: expected a token index or ROW,COL (the model has no "
                                "CLS token), got cls");
  ASSERT_EQ(run_cli(pooled_base + " --query 0,0").exit_code, 0);
}

}  // namespace
}  // namespace attnlens
