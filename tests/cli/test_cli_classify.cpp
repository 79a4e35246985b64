// `attnlens classify` and `attnlens encode` on a vision transformer's model directory: the
// logits the tool writes are the library's on the same images, normalized with the config's
// mean and std from IDX and PNG input and taken as they are from safetensors; labels give the
// accuracy; bad input is one line and exit code 2.
#include <gtest/gtest.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "attnlens/image/augment.hpp"
#include "attnlens/io/idx.hpp"
#include "attnlens/io/png.hpp"
#include "attnlens/io/vit_model.hpp"
#include "support/cli_test.hpp"
#include "support/compare.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliClassify : public testing::CliTest {
 protected:
  void SetUp() override {
    testing::CliTest::SetUp();
    if (IsSkipped()) return;
    config_ = testing::small_vit_config(/*image_size*/ 8, /*num_layers*/ 2);
    testing::save_random_vit(config_, model(), 17);
    // Five 8 x 8 images of bytes, and their labels.
    Tensor<std::uint8_t> bytes({5, 8, 8});
    for (Index i = 0; i < bytes.size(); ++i) bytes.data()[i] = static_cast<std::uint8_t>(i * 37);
    io::write_idx(path("images.idx.gz"), bytes, io::IdxWriteOptions{true});
    Tensor<std::uint8_t> labels({5}, {0, 1, 2, 1, 0});
    io::write_idx(path("labels.idx"), labels, io::IdxWriteOptions{false});
    bytes_ = bytes;
  }

  std::string model() const { return path("vit"); }

  // What the library computes on the IDX images, normalized as the config says.
  Tensor<float> expected_logits() const {
    Tensor<float> images = io::unit_image_batch<float>(bytes_);
    normalize_images(images, {config_.mean, config_.std});
    return io::load_vit_model<float>(model()).forward(images).logits;
  }

  io::VitModelConfig config_;
  Tensor<std::uint8_t> bytes_;
};

TEST_F(CliClassify, IdxImagesGiveTheLibrarysLogitsAndTheAccuracy) {
  const auto run = run_cli("classify --model " + model() + " --input " + path("images.idx.gz") +
                           " --labels " + path("labels.idx") + " --top 2 --output " + out_path());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto output = io::SafeTensors::load(out_path());
  const Tensor<float> expected = expected_logits();
  ATTNLENS_EXPECT_RELATIVE_CLOSE(output.get<float>("logits"), expected, 1e-6, 1e-6);
  // The accuracy line counts the images whose largest logit is their label.
  Index correct = 0;
  const std::vector<Index> labels{0, 1, 2, 1, 0};
  for (Index b = 0; b < 5; ++b) {
    Index best = 0;
    for (Index c = 1; c < 3; ++c)
      if (expected.matrix()(b, c) > expected.matrix()(b, best)) best = c;
    correct += best == labels[static_cast<std::size_t>(b)];
  }
  EXPECT_NE(run.output.find(detail::concat("(", correct, " of 5)")), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("label 2 line"), std::string::npos) << run.output;  // class names
  // Probabilities sum to 1 per image.
  const Tensor<float> p = output.get<float>("probabilities");
  for (Index b = 0; b < 5; ++b) EXPECT_NEAR(p.matrix().row(b).sum(), 1.0f, 1e-6f);
}

TEST_F(CliClassify, JsonAndSafetensorsAndPngInput) {
  // safetensors images are the model's input as they are: the normalized IDX images.
  Tensor<float> images = io::unit_image_batch<float>(bytes_);
  normalize_images(images, {config_.mean, config_.std});
  io::SafeTensorsWriter input;
  input.add("images", images);
  input.add("labels", Tensor<std::int64_t>({5}, {0, 1, 2, 1, 0}));
  input.save(path("images.safetensors"));
  const auto run =
      run_cli("classify --model " + model() + " --input " + path("images.safetensors") + " --json");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json json = nlohmann::json::parse(run.output);
  ASSERT_EQ(json["images"].size(), 5u);
  const Tensor<float> expected = expected_logits();
  for (Index b = 0; b < 5; ++b) {
    const auto& item = json["images"][static_cast<std::size_t>(b)];
    Index best = 0;
    for (Index c = 1; c < 3; ++c)
      if (expected.matrix()(b, c) > expected.matrix()(b, best)) best = c;
    EXPECT_EQ(item["class"].get<Index>(), best);
    EXPECT_EQ(item["probabilities"].size(), 3u);
  }
  EXPECT_TRUE(json.contains("accuracy"));

  // A PNG: one gray image, the first of the IDX ones (bytes / 255 round-trip exactly).
  Matrix<double> gray(8, 8);
  for (Index i = 0; i < 64; ++i) gray.data()[i] = bytes_.data()[i] / 255.0;
  io::write_png_gray(path("image.png"), gray);
  const auto png = run_cli("encode --model " + model() + " --input " + path("image.png") +
                           " --output " + out_path());
  ASSERT_EQ(png.exit_code, 0) << png.output;
  const auto encoded = io::SafeTensors::load(out_path());
  ATTNLENS_EXPECT_RELATIVE_CLOSE(encoded.get<float>("logits").matrix().row(0),
                                 expected.matrix().row(0), 1e-6, 1e-6);
  EXPECT_EQ(encoded.get<float>("tokens").shape(), (Shape{1, 5, 8}));
}

TEST_F(CliClassify, BadInputNamesTheProblem) {
  const std::string base = "classify --model " + model() + " --input ";
  // Images of another size than the model's img_size.
  io::write_idx(path("small.idx"), Tensor<std::uint8_t>({2, 4, 8}), io::IdxWriteOptions{false});
  expect_bad_input(base + path("small.idx"), "[B, 1, 8, 8]");
  // Fewer labels than images.
  io::write_idx(path("three.idx"), Tensor<std::uint8_t>({3}), io::IdxWriteOptions{false});
  expect_bad_input(base + path("images.idx.gz") + " --labels " + path("three.idx"),
                   "3 labels for 5 images");
  // A label outside the classes.
  io::write_idx(path("bad.idx"), Tensor<std::uint8_t>({5}, {0, 1, 7, 0, 0}),
                io::IdxWriteOptions{false});
  expect_bad_input(base + path("images.idx.gz") + " --labels " + path("bad.idx"), "7");
  // Not a model directory, and a file that is none of the formats.
  expect_bad_input("classify --model " + path("nothing") + " --input " + path("images.idx.gz"),
                   "config.json");
  io::SafeTensorsWriter other;
  other.add("pixels", Tensor<float>({1, 1, 8, 8}));
  other.save(path("other.safetensors"));
  expect_bad_input(base + path("other.safetensors"), "pixels");
  // A 3-channel model cannot read gray images.
  io::VitModelConfig rgb = config_;
  rgb.vit.in_chans = 3;
  rgb.mean = rgb.std = {};
  Rng rng(3);
  io::save_vit_model(rgb, VisionTransformer<float>(rgb.vit, rng), path("rgb"));
  expect_bad_input("classify --model " + path("rgb") + " --input " + path("images.idx.gz"),
                   "3 input channels");
}

}  // namespace
}  // namespace attnlens
