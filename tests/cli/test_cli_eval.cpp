// `attnlens eval` with a tiny ViT directory on the first images of Fashion-MNIST's test split
// (Debian's dataset-fashion-mnist): the clean JSON is the library's evaluation; FGSM at eps 0
// equals the clean run and FGSM at 8/255 raises the loss; the noise follows its seed; the text
// output has the per-class table and the confusion matrix; bad input is one line naming the
// option, exit code 2.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/adversarial.hpp"
#include "support/cli_test.hpp"
#include "support/vit_models.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliEval : public testing::CliTest {
 protected:
  void SetUp() override {
    testing::CliTest::SetUp();
    if (IsSkipped()) return;
    config_ = testing::fashion_mnist_vit_config(/*num_layers*/ 1);
    Rng rng(41);
    io::save_vit_model(config_, VisionTransformer<float>(config_.vit, rng), model());
  }

  std::string model() const { return path("vit"); }
  std::string eval(const std::string& extra, int batch_size = 25) const {
    return "eval --model " + model() + " --limit 60 --threads 1 --batch-size " +
           std::to_string(batch_size) + " " + extra;
  }
  static nlohmann::json run_json(const std::string& args) {
    const auto run = run_cli(args + " --json");
    EXPECT_EQ(run.exit_code, 0) << run.output;
    return run.exit_code == 0 ? nlohmann::json::parse(run.output) : nlohmann::json::object();
  }

  io::VitModelConfig config_;
};

TEST_F(CliEval, CleanJsonIsTheLibrarysEvaluation) {
  const nlohmann::json json = run_json(eval(""));
  ASSERT_TRUE(json.contains("accuracy"));
  const ImageDataset<float> data =
      first_examples(io::load_fashion_mnist<float>(io::FashionMnistSplit::test), 60);
  const VisionTransformer<float> vit = io::load_vit_model<float>(model());
  const PixelClassifier<float> classifier{vit, {config_.mean, config_.std}, {1}};
  const ClassifierEvaluation expected =
      evaluate_perturbed(classifier, data, PerturbationOptions::clean(), 25);
  EXPECT_EQ(json["images"].get<Index>(), 60);
  EXPECT_EQ(json["condition"]["type"], "none");
  EXPECT_EQ(json["accuracy"].get<double>(), expected.accuracy);
  EXPECT_EQ(json["correct"].get<Index>(), expected.confusion.trace());
  // Rounding only: the CLI is another binary, built with -march=native while the tests are not,
  // so the Eigen code it runs (all of it under ATTNLENS_NO_AVX512=1) may sum in another order.
  EXPECT_NEAR(json["loss"].get<double>(), expected.loss, 1e-6 * expected.loss);
  ASSERT_EQ(json["confusion"].size(), 10u);
  ASSERT_EQ(json["classes"].size(), 10u);
  for (Index r = 0; r < 10; ++r) {
    const auto& item = json["classes"][static_cast<std::size_t>(r)];
    EXPECT_EQ(item["name"], config_.class_names[static_cast<std::size_t>(r)]);
    EXPECT_EQ(item["images"].get<Index>(), expected.confusion.row(r).sum());
    for (Index c = 0; c < 10; ++c)
      EXPECT_EQ(
          json["confusion"][static_cast<std::size_t>(r)][static_cast<std::size_t>(c)].get<Index>(),
          expected.confusion(r, c));
  }
}

TEST_F(CliEval, FgsmAtEpsilonZeroIsCleanAndAtEightGreyLevelsRaisesTheLoss) {
  const nlohmann::json clean = run_json(eval(""));
  const nlohmann::json zero = run_json(eval("--attack fgsm --eps 0"));
  ASSERT_TRUE(clean.contains("accuracy") && zero.contains("accuracy"));
  EXPECT_EQ(zero["condition"]["epsilon"].get<double>(), 0.0);
  EXPECT_EQ(zero["accuracy"], clean["accuracy"]);
  EXPECT_EQ(zero["confusion"], clean["confusion"]);
  EXPECT_EQ(zero["loss"].get<double>(), clean["loss"].get<double>());  // one binary: bitwise
  const nlohmann::json fgsm = run_json(eval("--attack fgsm --eps 8/255"));
  ASSERT_TRUE(fgsm.contains("loss"));
  EXPECT_DOUBLE_EQ(fgsm["condition"]["epsilon"].get<double>(), 8.0 / 255);
  EXPECT_GT(fgsm["loss"].get<double>(), clean["loss"].get<double>() + 0.01);
  EXPECT_LE(fgsm["accuracy"].get<double>(), clean["accuracy"].get<double>());

  // The text output: the condition, the accuracy line, the per-class table and the matrix.
  const auto text = run_cli(eval("--attack pgd --eps 4/255 --steps 2 --random-start --seed 3"));
  ASSERT_EQ(text.exit_code, 0) << text.output;
  for (const char* part : {"60 Fashion-MNIST test images, pgd-2 eps 0.0156863 step 0.0196078 "
                           "random start, seed 3",
                           "accuracy ", "9 Ankle boot", "confusion matrix (rows: label"})
    EXPECT_NE(text.output.find(part), std::string::npos) << part << "\n" << text.output;
}

TEST_F(CliEval, NoiseFollowsItsSeed) {
  const nlohmann::json first = run_json(eval("--noise 0.2 --seed 1"));
  const nlohmann::json again = run_json(eval("--noise 0.2 --seed 1", 7));
  const nlohmann::json other = run_json(eval("--noise 0.2 --seed 2"));
  ASSERT_TRUE(first.contains("loss") && again.contains("loss") && other.contains("loss"));
  EXPECT_EQ(first["condition"]["sigma"].get<double>(), 0.2);
  // Image i draws from stream i: the batch size does not change the noise.
  EXPECT_EQ(again["confusion"], first["confusion"]);
  // The loss is a sum over batches of 7 instead of 25 images: another order, rounding only.
  EXPECT_NEAR(again["loss"].get<double>(), first["loss"].get<double>(),
              1e-6 * first["loss"].get<double>());
  EXPECT_NE(other["loss"].get<double>(), first["loss"].get<double>());
}

// --corruption is the library's corrupt_images on the same images: the CLI's run equals
// evaluate_perturbed with the same condition, and salt and pepper follows its seed.
TEST_F(CliEval, CorruptionIsTheLibrarysCorruption) {
  const nlohmann::json json = run_json(eval("--corruption salt-and-pepper:0.3 --seed 4"));
  ASSERT_TRUE(json.contains("condition"));
  EXPECT_EQ(json["condition"]["type"], "corruption");
  EXPECT_EQ(json["condition"]["corruption"], "salt-and-pepper");
  EXPECT_EQ(json["condition"]["fraction"].get<double>(), 0.3);
  EXPECT_EQ(json["condition"]["seed"].get<int>(), 4);
  const ImageDataset<float> data =
      first_examples(io::load_fashion_mnist<float>(io::FashionMnistSplit::test), 60);
  const VisionTransformer<float> vit = io::load_vit_model<float>(model());
  const PixelClassifier<float> classifier{vit, {config_.mean, config_.std}, {1}};
  const ClassifierEvaluation expected = evaluate_perturbed(
      classifier, data, PerturbationOptions::corrupted(CorruptionOptions::salt_and_pepper(0.3, 4)),
      25);
  EXPECT_EQ(json["correct"].get<Index>(), expected.confusion.trace());
  // Rounding only, as in CleanJsonIsTheLibrarysEvaluation.
  EXPECT_NEAR(json["loss"].get<double>(), expected.loss, 1e-6 * expected.loss);
  const nlohmann::json other = run_json(eval("--corruption salt-and-pepper:0.3 --seed 5"));
  ASSERT_TRUE(other.contains("loss"));
  EXPECT_NE(other["loss"].get<double>(), json["loss"].get<double>());
  const nlohmann::json blur = run_json(eval("--corruption blur:1.5"));
  ASSERT_TRUE(blur.contains("condition"));
  EXPECT_EQ(blur["condition"]["label"], "blur sigma 1.5");
}

TEST_F(CliEval, BadInputNamesTheOption) {
  expect_bad_input("eval --model " + path("nothing"), "nothing/config.json");
  expect_bad_input(eval("--attack fgsm --eps -1"), "--eps: expected a number >= 0");
  expect_bad_input(eval("--attack fgsm --eps nan"), "--eps");
  expect_bad_input(eval("--attack fgsm --eps 1/0"), "--eps");
  expect_bad_input(eval("--attack fgsm --eps two"), "--eps");
  expect_bad_input(eval("--attack cw --eps 0.1"), "--attack");
  expect_bad_input(eval("--attack fgsm"), "--attack fgsm needs --eps");
  expect_bad_input(eval("--eps 0.1"), "--eps needs --attack");
  expect_bad_input(eval("--attack pgd --eps 0.1 --steps 0"), "--steps");
  expect_bad_input(eval("--attack pgd --eps 0.1 --step-size 0"), "--step-size");
  expect_bad_input(eval("--attack fgsm --eps 0.1 --steps 3"), "--steps applies to --attack pgd");
  expect_bad_input(eval("--attack fgsm --eps 0.1 --random-start"), "--random-start");
  expect_bad_input(eval("--noise 0.1 --attack fgsm --eps 0.1"), "exclude each other");
  expect_bad_input(eval("--noise -0.1"), "--noise");
  expect_bad_input(eval("--corruption fgsm:0.1"), "--corruption: expected noise:SIGMA");
  expect_bad_input(eval("--corruption blur"), "--corruption: expected clean, noise:SIGMA");
  expect_bad_input(eval("--corruption salt-and-pepper:1.5"), "CorruptionOptions::fraction");
  expect_bad_input(eval("--corruption blur:1 --noise 0.1"), "exclude each other");
  expect_bad_input(eval("--corruption blur:1 --attack fgsm --eps 0.1"), "exclude each other");
  expect_bad_input(eval("--seed 3"), "--seed needs --noise, --corruption or --random-start");
  expect_bad_input(eval("--split validation"), "--split");
  expect_bad_input(eval("--batch-size 0"), "--batch-size");
  expect_bad_input(eval("--data " + path("nowhere")), "nowhere");
  // A model for other images than Fashion-MNIST's.
  io::VitModelConfig wide = config_;
  wide.vit.image_height = wide.vit.image_width = 14;
  Rng rng(42);
  io::save_vit_model(wide, VisionTransformer<float>(wide.vit, rng), path("wide"));
  expect_bad_input("eval --model " + path("wide"), "Fashion-MNIST's are 1 x 28 x 28");
}

}  // namespace
}  // namespace attnlens
