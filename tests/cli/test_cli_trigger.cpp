// `attnlens trigger` with a tiny random Fashion-MNIST ViT (2 layers of 2 heads, 4 x 4 patches
// of 7 pixels) on Debian's dataset-fashion-mnist: the CSV row of a class is the library's
// trigger (sources: the first correctly classified test images of the class) and its outcomes
// on the other classes' images of the first --limit; --all-classes writes a row per class (nan
// where the model gets no image of the class right); --help names every option; bad options are
// one line and exit code 2; --png draws the patch scores.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "attnlens/interpret/attribution_trigger.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/data_order.hpp"
#include "attnlens/train/image_dataset.hpp"
#include "support/png_files.hpp"
#include "support/vit_cli_test.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliTrigger : public testing::FashionMnistVitCliTest {
 protected:
  // The command with the model, the CSV and one thread.
  std::string trigger_minimal(const std::string& options) const {
    return "trigger --model " + path("vit") + " --threads 1 --output " + path("triggers.csv") +
           " " + options;
  }

  // ... and small counts.
  std::string trigger(const std::string& options) const {
    return trigger_minimal(
        "--source-images 4 --patches 2 --edges 2 --steps 2 --draws 2 "
        "--seed 3 --limit 60 " +
        options);
  }
};

const std::vector<std::string> k_header = {"class",
                                           "name",
                                           "sources",
                                           "images",
                                           "patches",
                                           "clean_accuracy",
                                           "trigger_accuracy",
                                           "random_accuracy",
                                           "random_accuracy_std",
                                           "clean_share",
                                           "trigger_share",
                                           "random_share",
                                           "random_share_std"};

TEST_F(CliTrigger, RowIsTheLibrarysTriggerAndOutcomes) {
  const VisionTransformer<float> vit = io::load_vit_model<float>(path("vit"));
  const ImageDataset<float> test = fashion_mnist_split(io::FashionMnistSplit::test);
  // The class the random model gets right most often among the first 500 images.
  const ImageDataset<float> first = first_examples(test, 500);
  const std::vector<Index> predicted = predicted_classes(vit, first.images);
  std::vector<Index> right(10, 0);
  for (std::size_t i = 0; i < predicted.size(); ++i)
    right[static_cast<std::size_t>(first.labels[i])] += predicted[i] == first.labels[i];
  const Index c = std::max_element(right.begin(), right.end()) - right.begin();
  ASSERT_GE(right[static_cast<std::size_t>(c)], 4);

  const auto run = run_cli(trigger("--class " + std::to_string(c)));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto rows = testing::csv_rows(path("triggers.csv"));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], k_header);
  ASSERT_EQ(rows[1].size(), 13u);

  std::vector<Index> sources, others;
  for (Index i = 0; i < test.size() && sources.size() < 4; ++i)
    if (test.labels[static_cast<std::size_t>(i)] == c &&
        predicted_classes(vit, gather_first_axis(test.images, {i}))[0] == c)
      sources.push_back(i);
  for (Index i = 0; i < 60; ++i)
    if (test.labels[static_cast<std::size_t>(i)] != c) others.push_back(i);
  TriggerOptions options;
  options.patches = 2;
  options.edges_per_tree = 2;
  options.steps = 2;
  const AttributionTrigger<float> trigger =
      attribution_trigger(vit, gather_first_axis(test.images, sources), c, options);
  EXPECT_EQ(rows[1][0], std::to_string(c));
  EXPECT_EQ(rows[1][1], config_.class_names[static_cast<std::size_t>(c)]);
  EXPECT_EQ(rows[1][2], "4");
  EXPECT_EQ(rows[1][3], std::to_string(others.size()));
  // The CLI is built with -march=native and this test is not: its float attributions differ by
  // a few ulps, far below the gaps between the patch scores of these trees; the outcomes are
  // counts of images over others.size(), compared to 1e-6 (the CSV's six decimals).
  EXPECT_EQ(rows[1][4],
            std::to_string(trigger.patches[0]) + " " + std::to_string(trigger.patches[1]));
  const Tensor<float> images = gather_first_axis(test.images, others);
  const std::vector<Index> labels = gather_first_axis(test.labels, others);
  const TriggerOutcome clean = trigger_outcome(vit, images, labels, c);
  const TriggerOutcome pasted =
      trigger_outcome(vit, paste_patches(images, trigger.content, trigger.patches, 7), labels, c);
  double random_accuracy = 0, random_share = 0;
  for (std::uint64_t d = 0; d < 2; ++d) {
    const TriggerOutcome r = trigger_outcome(
        vit, paste_patches(images, trigger.content, random_trigger_patches(16, 2, 3 + d), 7),
        labels, c);
    random_accuracy += r.accuracy / 2;
    random_share += r.target_share / 2;
  }
  EXPECT_NEAR(std::stod(rows[1][5]), clean.accuracy, 1e-6);
  EXPECT_NEAR(std::stod(rows[1][6]), pasted.accuracy, 1e-6);
  EXPECT_NEAR(std::stod(rows[1][7]), random_accuracy, 1e-6);
  EXPECT_NEAR(std::stod(rows[1][9]), clean.target_share, 1e-6);
  EXPECT_NEAR(std::stod(rows[1][10]), pasted.target_share, 1e-6);
  EXPECT_NEAR(std::stod(rows[1][11]), random_share, 1e-6);
  EXPECT_GE(std::stod(rows[1][8]), 0.0);
  EXPECT_GE(std::stod(rows[1][12]), 0.0);
}

TEST_F(CliTrigger, AllClassesWriteARowEach) {
  const auto run =
      run_cli(trigger_minimal("--all-classes --source-images 1 --patches 2 --edges 2 --steps 2 "
                              "--draws 2 --limit 20 --png " +
                              path("t.png")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto rows = testing::csv_rows(path("triggers.csv"));
  ASSERT_EQ(rows.size(), 11u);
  for (std::size_t r = 1; r < rows.size(); ++r) {
    ASSERT_EQ(rows[r].size(), 13u) << r;
    EXPECT_EQ(rows[r][0], std::to_string(r - 1));
    EXPECT_TRUE(rows[r][2] == "0" || rows[r][2] == "1") << rows[r][2];
    EXPECT_EQ(rows[r][5] == "nan", rows[r][2] == "0") << r;
  }
  // Two rows of five 4 x 4 panels, each enlarged to about 160 pixels.
  const testing::RgbPicture picture = testing::read_rgb_picture(path("t.png"));
  EXPECT_GT(picture.width, 5 * 140);
  EXPECT_GT(picture.height, 2 * 140);
}

TEST_F(CliTrigger, HelpNamesEveryOption) {
  const auto help = run_cli("trigger --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* option : {"--model", "--data", "--class", "--all-classes", "--source-images",
                             "--patches", "--edges", "--steps", "--tau", "--draws", "--seed",
                             "--limit", "--batch-size", "--output", "--png", "--threads"})
    EXPECT_NE(help.output.find(option), std::string::npos) << option << "\n" << help.output;
}

TEST_F(CliTrigger, BadOptionsNameTheProblem) {
  expect_bad_input(trigger_minimal(""),
                   "--class C or --all-classes: expected one of them, got neither");
  expect_bad_input(trigger_minimal("--class 10"), "--class: expected a class in 0..9, got 10");
  expect_bad_input(trigger_minimal("--class 1 --all-classes"),
                   "--class C or --all-classes: expected one of them, got both");
  expect_bad_input(trigger_minimal("--class 1 --patches 17"),
                   "--patches: expected 1..16 (the model's patches), got 17");
  expect_bad_input(trigger_minimal("--class 1 --patches 0"), "--patches");
  expect_bad_input(trigger_minimal("--class 1 --edges 0"), "--edges");
  expect_bad_input(trigger_minimal("--class 1 --steps 0"), "--steps");
  expect_bad_input(trigger_minimal("--class 1 --draws 0"), "--draws");
  expect_bad_input(trigger_minimal("--class 1 --source-images 0"), "--source-images");
  expect_bad_input(trigger_minimal("--class 1 --tau 0"),
                   "--tau: expected a value in (0, 1], got 0");
  expect_bad_input(trigger_minimal("--class 1 --data " + path("nowhere")), path("nowhere"));
  io::VitModelConfig small = config_;
  small.vit.image_height = small.vit.image_width = 14;
  testing::save_random_vit(small, path("small"), 2);
  expect_bad_input(
      "trigger --class 0 --model " + path("small") + " --output " + path("triggers.csv"),
      "--model: expected a Fashion-MNIST classifier (1 x 28 x 28 images, a head)");
  EXPECT_FALSE(std::filesystem::exists(path("triggers.csv")));
}

}  // namespace
}  // namespace attnlens
