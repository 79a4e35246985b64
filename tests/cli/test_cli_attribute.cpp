// `attnlens attribute`: on a ViT's model directory and an IDX image, layers.{l}.attribution
// (H x L x L) equal to the library's attention_attribution of the same image, for every layer
// or one, the predicted or a given class, each rule; --help names every option; a layer, class,
// index, step count or rule out of range, a missing --layer / --all-layers, a model without a
// head and images of the wrong size are one line and exit code 2.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "attnlens/interpret/attribution.hpp"
#include "attnlens/io/idx.hpp"
#include "attnlens/io/vit_model.hpp"
#include "support/vit_cli_test.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliAttribute : public testing::VitClassifierCliTest {
 protected:
  std::string attribute(const std::string& options) const {
    return "attribute --model " + path("vit") + " --input " + path("images.idx") + " --output " +
           out_path() + " --threads 1 " + options;
  }
};

TEST_F(CliAttribute, LayersAreTheLibrarysAttribution) {
  const VisionTransformer<float> vit = io::load_vit_model<float>(path("vit"));
  const Tensor<float> image = model_image(2);
  const Index predicted = predicted_classes(vit, image)[0];
  auto run = run_cli(attribute("--all-layers --index 2 --steps 6 --rule midpoint"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("(predicted)"), std::string::npos) << run.output;
  auto file = io::SafeTensors::load(out_path());
  EXPECT_EQ(file.get<std::int64_t>("target").data()[0], predicted);
  AttributionOptions options;
  options.steps = 6;
  options.rule = RiemannRule::midpoint;
  // Rounding only: the CLI is another binary, built with -march=native while the tests are not,
  // so its float attributions and probabilities may differ from the library's by a few ulps
  // (1.2e-7 at 0.47 seen on Zen 5); 1e-6 is about 16 ulps there.
  const double probability_tolerance = 1e-6;
  for (Index l = 0; l < 3; ++l) {
    const LayerAttribution<float> expected = attention_attribution(vit, image, {predicted}, l, options);
    const Tensor<float> actual = file.get<float>(detail::concat("layers.", l, ".attribution"));
    EXPECT_EQ(actual.shape(), (Shape{2, 10, 10}));  // H x L x L: CLS + 3 x 3 patches
    ATTNLENS_EXPECT_CLOSE(actual, expected.attribution.reshaped({2, 10, 10}), 1e-6) << l;
    EXPECT_NEAR(file.get<double>(detail::concat("layers.", l, ".baseline_probability")).data()[0],
                expected.baseline_probability[0], probability_tolerance);
    EXPECT_NEAR(file.get<double>("probability").data()[0], expected.probability[0],
                probability_tolerance);
  }

  // One layer, a given class, the default left rule with m = 20.
  const Index other = (predicted + 1) % 3;
  run = run_cli(attribute(detail::concat("--layer 1 --class ", other)));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  file = io::SafeTensors::load(out_path());
  EXPECT_EQ(file.size(), 4u);  // target, probability, layers.1.{attribution,baseline_probability}
  EXPECT_EQ(file.get<std::int64_t>("target").data()[0], other);
  ATTNLENS_EXPECT_CLOSE(file.get<float>("layers.1.attribution"),
                        attention_attribution(vit, model_image(0), {other}, 1)
                            .attribution.reshaped({2, 10, 10}),
                        1e-6);
}

TEST_F(CliAttribute, HelpNamesEveryOption) {
  const auto help = run_cli("attribute --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* option : {"--model", "--input", "--output", "--layer", "--all-layers",
                             "--class", "--steps", "--rule", "--index", "--threads"})
    EXPECT_NE(help.output.find(option), std::string::npos) << option << "\n" << help.output;
}

TEST_F(CliAttribute, BadOptionsNameTheProblem) {
  expect_bad_input(attribute("--layer 3"),
                   "--layer: expected 0..2 (the model has 3 layers), got 3");
  expect_bad_input(attribute("--layer -1"), "--layer: expected 0..2");
  expect_bad_input(attribute("--all-layers --class 3"), "--class: expected a class in 0..2, got 3");
  expect_bad_input(attribute("--all-layers --index 4"),
                   "--index: expected 0..3 (the input holds 4 images), got 4");
  expect_bad_input(attribute("--all-layers --steps 0"), "--steps");
  expect_bad_input(attribute("--all-layers --rule trapezoid"), "--rule");
  expect_bad_input(attribute(""), "--layer L or --all-layers: expected one of them, got neither");
  expect_bad_input(attribute("--layer 0 --all-layers"), "--all-layers");
  io::write_idx(path("small.idx"), Tensor<std::uint8_t>({2, 8, 8}), io::IdxWriteOptions{false});
  expect_bad_input("attribute --model " + path("vit") + " --input " + path("small.idx") +
                       " --output " + out_path() + " --all-layers",
                   "[B, 1, 12, 12]");
  expect_bad_input("attribute --model " + headless_vit() + " --input " + path("images.idx") +
                       " --output " + out_path() + " --all-layers",
                   "has no head (num_classes 0)");
}

}  // namespace
}  // namespace attnlens
