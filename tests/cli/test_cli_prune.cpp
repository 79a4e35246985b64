// `attnlens prune` with a tiny Fashion-MNIST ViT (2 layers of 2 heads) on the first images of
// Debian's dataset-fashion-mnist: the CSV has the 11 fractions, floor(p * 4) heads pruned, every
// ranking at the clean accuracy for p = 0 and at the all-heads-zeroed accuracy for p = 1, the
// attribution ranking's points equal to the library's on the same images; the PNG is drawn;
// --help names every option; bad options are one line and exit code 2.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "attnlens/interpret/head_importance.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/png.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/classifier_training.hpp"
#include "support/vit_cli_test.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliPrune : public testing::FashionMnistVitCliTest {
 protected:
  std::string prune(const std::string& options) const {
    return "prune --model " + path("vit") + " --examples 6 --limit 40 --steps 3 --threads 1 " +
           "--output " + path("curves.csv") + " --plot " + path("curves.png") + " " + options;
  }
};

TEST_F(CliPrune, CurvesStartCleanEndWithEveryHeadZeroedAndFollowTheLibrary) {
  const auto run = run_cli(prune("--seed 4"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto rows = testing::csv_rows(path("curves.csv"));
  ASSERT_EQ(rows.size(), 12u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"fraction", "heads_pruned", "attribution",
                                               "attention", "taylor", "random", "random_std"}));
  const std::vector<std::string> pruned = {"0", "0", "0", "1", "1", "2", "2", "2", "3", "3", "4"};
  for (std::size_t i = 1; i < rows.size(); ++i) {
    ASSERT_EQ(rows[i].size(), 7u);
    EXPECT_NEAR(std::stod(rows[i][0]), static_cast<double>(i - 1) / 10, 1e-12);
    EXPECT_EQ(rows[i][1], pruned[i - 1]);
  }

  const VisionTransformer<float> vit = io::load_vit_model<float>(path("vit"));
  const ImageDataset<float> test = fashion_mnist_split(io::FashionMnistSplit::test, 40);
  const ImageDataset<float> train = fashion_mnist_split(io::FashionMnistSplit::train, 6);
  const double clean = evaluate_classifier(vit, test, 40).accuracy;
  const auto none = std::vector<std::vector<double>>(2, std::vector<double>(2, 0.0));
  const double zeroed = head_scaled_accuracy(vit, test.images, test.labels, none);
  for (std::size_t c = 2; c <= 5; ++c) {
    EXPECT_NEAR(std::stod(rows[1][c]), clean, 1e-6) << rows[0][c];
    EXPECT_NEAR(std::stod(rows[11][c]), zeroed, 1e-6) << rows[0][c];
  }
  EXPECT_EQ(std::stod(rows[1][6]), 0.0);
  AttributionOptions options;
  options.steps = 3;
  const Matrix<double> importance =
      attribution_head_importance(vit, train.images, train.labels, options);
  for (std::size_t i = 1; i < rows.size(); ++i)
    EXPECT_NEAR(std::stod(rows[i][2]),
                head_scaled_accuracy(vit, test.images, test.labels,
                                     pruned_head_scales(importance, std::stod(rows[i][0]))),
                1e-6)
        << rows[i][0];
  const Matrix<double> gray = io::read_png_gray(path("curves.png"));
  EXPECT_EQ(gray.cols(), 1400);
  EXPECT_EQ(gray.rows(), 640);
  EXPECT_NE(run.output.find("attribution importance"), std::string::npos) << run.output;
}

TEST_F(CliPrune, HelpNamesEveryOption) {
  const auto help = run_cli("prune --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* option : {"--model", "--data", "--examples", "--limit", "--steps", "--rule",
                             "--seed", "--batch-size", "--output", "--plot", "--threads"})
    EXPECT_NE(help.output.find(option), std::string::npos) << option << "\n" << help.output;
}

TEST_F(CliPrune, BadOptionsNameTheProblem) {
  expect_bad_input(prune("--examples 0"), "--examples");
  expect_bad_input(prune("--steps 0"), "--steps");
  expect_bad_input(prune("--rule trapezoid"), "--rule");
  expect_bad_input(prune("--batch-size 0"), "--batch-size");
  expect_bad_input(prune("--data " + path("nowhere")), path("nowhere"));
  io::VitModelConfig small = config_;
  small.vit.image_height = small.vit.image_width = 14;
  Rng rng(2);
  io::save_vit_model(small, VisionTransformer<float>(small.vit, rng), path("small"));
  expect_bad_input("prune --model " + path("small") + " --output " + path("curves.csv") +
                       " --plot " + path("curves.png"),
                   "--model: expected a Fashion-MNIST classifier (1 x 28 x 28 images, a head)");
  EXPECT_FALSE(std::filesystem::exists(path("curves.csv")));
  EXPECT_FALSE(std::filesystem::exists(path("curves.png")));
}

}  // namespace
}  // namespace attnlens
