// `attnlens train` on a slice of Fashion-MNIST (Debian's dataset-fashion-mnist) with a tiny ViT:
// the run directory's files (curves.png a PNG of the curves' size), a run stopped after one epoch
// and resumed giving the weights bitwise and the curves of an uninterrupted run (1 thread), the
// checkpoint loading in attnlens classify, and bad input named in one line with exit code 2.
//
// Bitwise across processes holds because every buffer Eigen reduces over starts at a 64-byte
// boundary (core/aligned_allocator.hpp): with 16-byte aligned storage a different heap layout
// (another command line) summed in another order, and the keys' part of attn.qkv.bias, whose
// gradient is exactly 0 and so pure rounding noise, moved by lr-sized AdamW steps.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "attnlens/io/png.hpp"
#include "attnlens/io/safetensors.hpp"
#include "support/cli_test.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliTrain : public testing::CliTest {
 protected:
  void SetUp() override {
    testing::CliTest::SetUp();
    if (IsSkipped()) return;
    const nlohmann::json config = {
        {"model",
         {{"img_size", 28},
          {"patch_size", 7},
          {"in_chans", 1},
          {"num_classes", 10},
          {"embed_dim", 16},
          {"depth", 1},
          {"num_heads", 2},
          {"mlp_ratio", 2.0}}},
        {"data",
         {{"train_limit", 256},
          {"test_limit", 128},
          {"crop_padding", 2},
          {"flip_probability", 0.5}}},
        {"optimizer", {{"type", "adamw"}, {"lr", 3e-3}, {"weight_decay", 0.05}}},
        {"schedule", {{"type", "warmup_cosine"}, {"warmup_epochs", 0.5}, {"min_lr", 1e-5}}},
        {"epochs", 2},
        {"batch_size", 64},
        {"seed", 3},
        {"clip_grad_norm", 1.0}};
    std::ofstream(path("train.json")) << config.dump(2);
  }
  std::string train(const std::string& out, const std::string& extra = "") const {
    return "train --config " + path("train.json") + " --out " + path(out) + " --threads 1 " + extra;
  }
  static std::string read(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
};

TEST_F(CliTrain, StoppedAndResumedRunEndsWhereAnUninterruptedOneDoes) {
  const auto straight = run_cli(train("straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  for (const char* file :
       {"train.json", "metrics.jsonl", "curves.png", "latest", "best/config.json",
        "best/model.safetensors", "checkpoints/epoch-2/optimizer.safetensors",
        "checkpoints/epoch-2/trainer.json"})
    EXPECT_TRUE(std::filesystem::exists(path("straight/") + file)) << file;
  EXPECT_EQ(read(path("straight/latest")), "epoch-2");
  // Two metrics lines, one per epoch.
  std::ifstream metrics(path("straight/metrics.jsonl"));
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) {
    const auto m = nlohmann::json::parse(line);
    EXPECT_EQ(m["epoch"].get<int>(), ++lines);
    EXPECT_GT(m["test_accuracy"].get<double>(), 0.0);
  }
  EXPECT_EQ(lines, 2);
  // The loss and accuracy curves, two panels in LinePlotOptions' default size.
  const Matrix<double> curves = io::read_png_gray(path("straight/curves.png"));
  EXPECT_EQ(curves.cols(), 1200);
  EXPECT_EQ(curves.rows(), 480);
  EXPECT_FALSE(std::filesystem::exists(path("straight/curves.png.tmp")));

  const auto first = run_cli(train("resumed", "--stop-after 1"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_EQ(read(path("resumed/latest")), "epoch-1");
  const auto second = run_cli("train --out " + path("resumed") + " --threads 1 --resume");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("resuming epoch-1"), std::string::npos) << second.output;
  // The resumed run draws both epochs from metrics.jsonl, not only the one it ran: the curves
  // of the uninterrupted run, up to the rounding of the metrics (far below a pixel).
  const Matrix<double> resumed_curves = io::read_png_gray(path("resumed/curves.png"));
  ASSERT_EQ(resumed_curves.rows(), curves.rows());
  ASSERT_EQ(resumed_curves.cols(), curves.cols());
  EXPECT_LT((resumed_curves - curves).cwiseAbs().mean(), 1e-3);
  const auto straight_model =
      io::SafeTensors::load(path("straight/checkpoints/epoch-2/model.safetensors"));
  const auto resumed_model =
      io::SafeTensors::load(path("resumed/checkpoints/epoch-2/model.safetensors"));
  ASSERT_EQ(straight_model.names(), resumed_model.names());
  for (const auto& name : straight_model.names())
    EXPECT_TRUE(resumed_model.get<float>(name) == straight_model.get<float>(name)) << name;
  const auto straight_optimizer =
      io::SafeTensors::load(path("straight/checkpoints/epoch-2/optimizer.safetensors"));
  const auto resumed_optimizer =
      io::SafeTensors::load(path("resumed/checkpoints/epoch-2/optimizer.safetensors"));
  ASSERT_EQ(straight_optimizer.names(), resumed_optimizer.names());
  for (const auto& name : straight_optimizer.names()) {
    const bool same =
        name == "step"  // the step count, int64
            ? resumed_optimizer.get<std::int64_t>(name) ==
                  straight_optimizer.get<std::int64_t>(name)
            : resumed_optimizer.get<float>(name) == straight_optimizer.get<float>(name);
    EXPECT_TRUE(same) << name;
  }
  const auto straight_state =
      nlohmann::json::parse(read(path("straight/checkpoints/epoch-2/trainer.json")));
  const auto resumed_state =
      nlohmann::json::parse(read(path("resumed/checkpoints/epoch-2/trainer.json")));
  for (const char* key : {"epoch", "next_batch", "images", "skipped_steps", "best_epoch"})
    EXPECT_EQ(resumed_state[key], straight_state[key]) << key;

  // The best model is a ViT directory attnlens classify reads (normalization and class names
  // travel with it).
  const auto classify =
      run_cli("classify --model " + path("straight/best") +
              " --input /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
              " --labels /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
              " --json");
  ASSERT_EQ(classify.exit_code, 0) << classify.output.substr(0, 500);
  const auto json = nlohmann::json::parse(classify.output);
  EXPECT_EQ(json["images"].size(), 10000u);
  EXPECT_GT(json["accuracy"].get<double>(), 0.1);  // better than chance after 2 tiny epochs
}

TEST_F(CliTrain, BadInputNamesTheProblem) {
  ASSERT_EQ(run_cli(train("run", "--stop-after 1")).exit_code, 0);
  expect_bad_input(train("run"), "already holds a run");
  expect_bad_input("train --out " + path("nothing") + " --resume", "no run to resume");
  expect_bad_input("train --out " + path("other"), "--config");
  std::ofstream(path("typo.json")) << R"({"model": {"img_size": 28, "patch_size": 7,
      "num_classes": 10, "embed_dim": 16, "depth": 1, "num_heads": 2}, "epoch": 3})";
  expect_bad_input("train --config " + path("typo.json") + " --out " + path("typo"),
                   "unknown key 'epoch'");
  std::ofstream(path("optimizer.json")) << R"({"model": {"img_size": 28, "patch_size": 7,
      "num_classes": 10, "embed_dim": 16, "depth": 1, "num_heads": 2},
      "optimizer": {"type": "adam"}})";
  expect_bad_input("train --config " + path("optimizer.json") + " --out " + path("o"),
                   "\"adamw\" or \"sgd\"");
}

}  // namespace
}  // namespace attnlens
