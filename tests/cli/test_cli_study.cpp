// `attnlens study` with two tiny ViTs, two seeds and five conditions on slices of Fashion-MNIST
// (Debian's dataset-fashion-mnist): every row of results.csv, the summary and the plot; a clean
// row equal to `attnlens eval` on the run's final checkpoint; a stopped study continued by the
// same command, re-evaluating only what is missing (bitwise the rows it lost) and training
// nothing again; added conditions evaluated on the kept models; a changed base configuration and
// bad configurations refused with the key named. A tiny ListOps study (two models, two seeds, a
// row per length bucket): every row, the summary and the plot; lost rows evaluated again bitwise;
// a run continued from its checkpoint as if never stopped; bad ListOps configurations named.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "attnlens/io/png.hpp"
#include "support/cli_test.hpp"

namespace attnlens {
namespace {

using testing::run_cli;

class CliStudy : public testing::CliTest {
 protected:
  void SetUp() override {
    testing::CliTest::SetUp();
    if (IsSkipped()) return;
    study_ = {
        {"train",
         {{"model",
           {{"img_size", 28},
            {"patch_size", 7},
            {"in_chans", 1},
            {"num_classes", 10},
            {"embed_dim", 16},
            {"depth", 1},
            {"num_heads", 2},
            {"mlp_ratio", 2.0}}},
          {"data", {{"train_limit", 192}, {"test_limit", 96}}},
          {"optimizer", {{"type", "adamw"}, {"lr", 3e-3}}},
          {"epochs", 3},
          {"batch_size", 64},
          {"eval_batch_size", 40}}},
        {"epochs", 1},
        {"seeds", {1, 2}},
        {"models",
         {{{"name", "softmax"}},
          {{"name", "bilateral"}, {"model", {{"attention", {{"type", "bilateral"}}}}}}}},
        {"conditions", {"clean", "noise:0.2", "salt-and-pepper:0.1", "fgsm:8/255", "pgd-2:8/255"}},
        {"attack_images", 32}};
  }

  std::string study(const nlohmann::json& config, const std::string& out = "study") const {
    std::ofstream(path("study.json")) << config.dump(2);
    return "study --config " + path("study.json") + " --out " + path(out) + " --threads 1";
  }
  static std::vector<std::string> lines(const std::string& file) {
    std::ifstream in(file);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }

  nlohmann::json study_;
};

class CliListOpsStudy : public CliStudy {
 protected:
  void SetUp() override {
    CliStudy::SetUp();
    if (IsSkipped()) return;
    study_ = {{"task", "listops"},
              {"train",
               {{"model",
                 {{"d_model", 16},
                  {"nhead", 2},
                  {"num_layers", 1},
                  {"dim_feedforward", 32},
                  {"norm_first", true},
                  {"position", {{"type", "rope"}}},
                  {"pooling", "mean"}}},
                {"data",
                 {{"min_length", 16},
                  {"max_length", 48},
                  {"max_depth", 3},
                  {"train_examples", 96},
                  {"test_examples", 64},
                  {"bucket_edges", {16, 32, 48}},
                  {"seed", 5}}},
                {"optimizer", {{"type", "adamw"}, {"lr", 3e-3}}},
                {"epochs", 1},
                {"batch_size", 32},
                {"eval_batch_size", 24}}},
              {"seeds", {1, 2}},
              {"models",
               {{{"name", "softmax"}},
                {{"name", "bilateral"},
                 {"model", {{"attention", {{"type", "bilateral"}}}, {"position", nullptr}}}}}}};
  }

  // results.csv's lines without their two times.
  static std::vector<std::string> without_times(std::vector<std::string> rows) {
    for (std::string& row : rows)
      for (int field = 0; field < 2; ++field) row = row.substr(0, row.rfind(','));
    return rows;
  }
};

TEST_F(CliStudy, EveryCellThenContinuedAndExtended) {
  const auto first = run_cli(study(study_));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::vector<std::string> rows = lines(path("study/results.csv"));
  ASSERT_EQ(rows.size(), 1u + 2 * 2 * 5);
  EXPECT_EQ(rows[0], "model,seed,condition,images,accuracy,loss,eval_seconds,train_seconds");
  EXPECT_EQ(rows[1].rfind("softmax,1,clean,96,", 0), 0u) << rows[1];
  EXPECT_EQ(rows[4].rfind("softmax,1,fgsm:8/255,32,", 0), 0u) << rows[4];
  // Seed by seed: every model at the first seed before the second.
  EXPECT_EQ(rows[6].rfind("bilateral,1,clean,96,", 0), 0u) << rows[6];
  EXPECT_EQ(rows[11].rfind("softmax,2,clean,96,", 0), 0u) << rows[11];
  EXPECT_EQ(rows[20].rfind("bilateral,2,pgd-2:8/255,32,", 0), 0u) << rows[20];
  for (const char* file : {"study.json", "summary.md", "robustness.png",
                           "runs/softmax/seed-1/checkpoints/epoch-1/model.safetensors",
                           "runs/bilateral/seed-2/metrics.jsonl"})
    EXPECT_TRUE(std::filesystem::exists(path(std::string("study/") + file))) << file;
  std::ifstream summary_file(path("study/summary.md"));
  std::stringstream summary;
  summary << summary_file.rdbuf();
  for (const char* part : {"## Clean and corrupted test images", "| model | clean | noise:0.2 |",
                           "## FGSM", "## PGD-2", "| bilateral | ", "## Training time"})
    EXPECT_NE(summary.str().find(part), std::string::npos) << part << "\n" << summary.str();
  // Three panels (noise, FGSM, PGD-2) of 560 x 520 pixels.
  const Matrix<double> plot = io::read_png_gray(path("study/robustness.png"));
  EXPECT_EQ(plot.rows(), 520);
  EXPECT_EQ(plot.cols(), 3 * 560);

  // The clean row is attnlens eval on the final checkpoint, to every digit written.
  const auto eval =
      run_cli("eval --model " + path("study/runs/softmax/seed-1/checkpoints/epoch-1") +
              " --limit 96 --batch-size 40 --threads 1 --json");
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  const nlohmann::json json = nlohmann::json::parse(eval.output);
  char accuracy[64];
  std::snprintf(accuracy, sizeof accuracy, ",%.17g,", json["accuracy"].get<double>());
  EXPECT_NE(rows[1].find(accuracy), std::string::npos) << rows[1] << " vs " << accuracy;

  // Stopped while writing: the last three rows lost, a fourth half written. The same command
  // evaluates the three again without training, bitwise the same accuracies and losses.
  {
    std::ofstream out(path("study/results.csv"), std::ios::trunc);
    for (std::size_t i = 0; i + 3 < rows.size(); ++i) out << rows[i] << "\n";
    out << "bilateral,2,fgsm";
  }
  const auto again = run_cli(study(study_));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(again.output.find("parameters;"), std::string::npos) << again.output;
  const std::vector<std::string> restored = lines(path("study/results.csv"));
  ASSERT_EQ(restored.size(), rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    // model,seed,condition,images,accuracy,loss: the times differ.
    std::string a = rows[i], b = restored[i];
    for (int field = 0; field < 2; ++field) {
      a = a.substr(0, a.rfind(','));
      b = b.substr(0, b.rfind(','));
    }
    EXPECT_EQ(a, b) << rows[i];
  }

  // A condition added later: evaluated on the kept models, nothing trained.
  study_["conditions"].push_back("contrast:0.5");
  const auto extended = run_cli(study(study_));
  ASSERT_EQ(extended.exit_code, 0) << extended.output;
  EXPECT_EQ(extended.output.find("parameters;"), std::string::npos) << extended.output;
  EXPECT_EQ(lines(path("study/results.csv")).size(), rows.size() + 4);

  // Another base configuration would mix two studies in one results.csv.
  nlohmann::json changed = study_;
  changed["epochs"] = 2;
  expect_bad_input(study(changed), "has another 'epochs'");
  changed = study_;
  changed["models"][1]["model"]["attention"]["kernel"] = "laplacian";
  expect_bad_input(study(changed), "has another model 'bilateral'");
}

TEST_F(CliStudy, BadConfigurationsAreNamed) {
  const auto with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json config = study_;
    config[key] = value;
    return study(config, "bad");
  };
  expect_bad_input(with("conditions", {"clean", "pgd-0:0.1"}), "conditions[1]");
  expect_bad_input(with("conditions", {"clean", "haze:0.1"}), "conditions[1]");
  expect_bad_input(with("conditions", {"clean", "clean"}), "not listed before");
  expect_bad_input(with("conditions", nlohmann::json::array()), "conditions: expected a non-empty");
  expect_bad_input(with("seeds", {1, 1}), "distinct seeds");
  expect_bad_input(with("seeds", {-1}), "seeds: expected integers >= 0");
  expect_bad_input(with("models", {{{"name", "a/b"}}}), "models[0]: name");
  expect_bad_input(with("models", {{{"name", "a"}}, {{"name", "a"}}}), "'a' again");
  expect_bad_input(with("models", {{{"name", "a"}, {"mdl", {}}}}), "unknown key 'mdl'");
  expect_bad_input(
      with("models", {{{"name", "x"}, {"model", {{"attention", {{"type", "sharp"}}}}}}}),
      "model 'x'");
  expect_bad_input(with("models", {{{"name", "big"}, {"model", {{"num_classes", 5}}}}}),
                   "expected a Fashion-MNIST classifier");
  expect_bad_input(with("train", "missing.json"), "missing.json");
  expect_bad_input(with("attack_images", -1), "attack_images");
  expect_bad_input(with("condition_seed", -2), "condition_seed");
  expect_bad_input(with("epoch", 3), "unknown key 'epoch'");
  expect_bad_input(study(study_, "bad") + " --models softmax,nope", "--models: 'nope'");
  EXPECT_FALSE(std::filesystem::exists(path("bad")));
}

TEST_F(CliListOpsStudy, EveryRowThenContinued) {
  const auto first = run_cli(study(study_));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::vector<std::string> rows = lines(path("study/results.csv"));
  ASSERT_EQ(rows.size(), 1u + 2 * 2 * 3);
  EXPECT_EQ(rows[0], "model,seed,condition,images,accuracy,loss,eval_seconds,train_seconds");
  EXPECT_EQ(rows[1].rfind("softmax,1,all,64,", 0), 0u) << rows[1];
  EXPECT_EQ(rows[2].rfind("softmax,1,length:16-31,", 0), 0u) << rows[2];
  EXPECT_EQ(rows[3].rfind("softmax,1,length:32-48,", 0), 0u) << rows[3];
  EXPECT_EQ(rows[4].rfind("bilateral,1,all,64,", 0), 0u) << rows[4];
  EXPECT_EQ(rows[12].rfind("bilateral,2,length:32-48,", 0), 0u) << rows[12];
  // Every test expression is in one bucket: the buckets' counts add up to the test set, and
  // their correct answers to the whole set's.
  for (std::size_t all = 1; all < rows.size(); all += 3) {
    const auto field = [](const std::string& row, int k) {
      std::string rest = row;
      for (int i = 0; i < k; ++i) rest = rest.substr(rest.find(',') + 1);
      return std::stod(rest.substr(0, rest.find(',')));
    };
    EXPECT_EQ(field(rows[all + 1], 3) + field(rows[all + 2], 3), 64) << rows[all];
    EXPECT_NEAR(field(rows[all + 1], 3) * field(rows[all + 1], 4) +
                    field(rows[all + 2], 3) * field(rows[all + 2], 4),
                64 * field(rows[all], 4), 1e-9)
        << rows[all];
  }
  for (const char* file :
       {"study.json", "summary.md", "accuracy-by-length.png", "runs/softmax/seed-1/train.json",
        "runs/softmax/seed-1/curves.png", "runs/bilateral/seed-2/checkpoint/model.safetensors",
        "runs/bilateral/seed-2/checkpoint/optimizer.safetensors"})
    EXPECT_TRUE(std::filesystem::exists(path(std::string("study/") + file))) << file;
  EXPECT_FALSE(std::filesystem::exists(path("study/robustness.png")));
  std::ifstream summary_file(path("study/summary.md"));
  std::stringstream summary;
  summary << summary_file.rdbuf();
  for (const char* part :
       {"Test accuracy on ListOps", "## ListOps accuracy by length",
        "| model | all | length:16-31 | length:32-48 |", "| bilateral | ", "## Training time"})
    EXPECT_NE(summary.str().find(part), std::string::npos) << part << "\n" << summary.str();
  const Matrix<double> plot = io::read_png_gray(path("study/accuracy-by-length.png"));
  EXPECT_EQ(plot.rows(), 520);
  EXPECT_EQ(plot.cols(), 560);

  // The run keeps its configuration and its epochs; the row "all" is the last epoch's test.
  const nlohmann::json kept =
      nlohmann::json::parse(std::ifstream(path("study/runs/softmax/seed-1/train.json")));
  EXPECT_EQ(kept["seed"], 1);
  EXPECT_EQ(kept["model"]["pooling"], "mean");
  EXPECT_EQ(kept["data"]["bucket_edges"], nlohmann::json({16, 32, 48}));
  const std::vector<std::string> metrics = lines(path("study/runs/softmax/seed-1/metrics.jsonl"));
  ASSERT_EQ(metrics.size(), 1u);
  char accuracy[64];
  std::snprintf(accuracy, sizeof accuracy, ",%.17g,",
                nlohmann::json::parse(metrics[0])["test_accuracy"].get<double>());
  EXPECT_NE(rows[1].find(accuracy), std::string::npos) << rows[1] << " vs " << metrics[0];

  // Stopped while writing: the lost rows are evaluated again, bitwise, and nothing is trained.
  {
    std::ofstream out(path("study/results.csv"), std::ios::trunc);
    for (std::size_t i = 0; i + 4 < rows.size(); ++i) out << rows[i] << "\n";
    out << "bilateral,2,len";
  }
  const auto again = run_cli(study(study_));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(again.output.find("parameters;"), std::string::npos) << again.output;
  EXPECT_EQ(without_times(lines(path("study/results.csv"))), without_times(rows));

  nlohmann::json changed = study_;
  changed["train"]["data"]["test_examples"] = 65;
  expect_bad_input(study(changed), "has another 'train'");
}

// A run stopped after its first epoch continues from its checkpoint: bitwise the rows of a run
// never stopped (one thread; a constant learning rate, so a one-epoch run's checkpoint is the
// first epoch of a two-epoch run).
TEST_F(CliListOpsStudy, RunContinuesFromItsCheckpoint) {
  study_["models"] = {{{"name", "softmax"}}};
  study_["seeds"] = {3};
  ASSERT_EQ(run_cli(study(study_, "one")).exit_code, 0);
  study_["epochs"] = 2;
  const auto whole = run_cli(study(study_, "two"));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  std::filesystem::create_directories(path("continued"));
  std::filesystem::copy(path("one/runs"), path("continued/runs"),
                        std::filesystem::copy_options::recursive);
  const auto continued = run_cli(study(study_, "continued"));
  ASSERT_EQ(continued.exit_code, 0) << continued.output;
  EXPECT_NE(continued.output.find("resuming at epoch 2"), std::string::npos) << continued.output;
  EXPECT_EQ(without_times(lines(path("continued/results.csv"))),
            without_times(lines(path("two/results.csv"))));
  EXPECT_EQ(lines(path("continued/runs/softmax/seed-3/metrics.jsonl")).size(), 2u);
}

TEST_F(CliListOpsStudy, BadConfigurationsAreNamed) {
  const auto with = [&](const std::function<void(nlohmann::json&)>& change) {
    nlohmann::json config = study_;
    change(config);
    return study(config, "bad");
  };
  expect_bad_input(with([](auto& c) { c["conditions"] = {"clean"}; }),
                   "conditions: not a key of a ListOps study");
  expect_bad_input(with([](auto& c) { c["attack_images"] = 10; }), "attack_images: not a key");
  expect_bad_input(with([](auto& c) { c["task"] = "mnist"; }), "task: expected");
  expect_bad_input(with([](auto& c) {
                     c["train"]["data"]["bucket_edges"] = {16, 16, 48};
                   }),
                   "data: bucket_edges: expected at least two increasing integers");
  expect_bad_input(with([](auto& c) {
                     c["train"]["data"]["bucket_edges"] = {8, 48};
                   }),
                   "data: bucket_edges");
  expect_bad_input(with([](auto& c) { c["train"]["data"]["bucket_edges"] = {16}; }),
                   "data: bucket_edges");
  expect_bad_input(with([](auto& c) { c["train"]["data"]["lengths"] = 3; }),
                   "data: unknown key 'lengths'");
  expect_bad_input(with([](auto& c) { c["train"]["epoch"] = 3; }), "unknown key 'epoch'");
  expect_bad_input(with([](auto& c) { c["train"]["data"]["max_length"] = 8; }),
                   "data: ListOpsOptions::max_length");
  expect_bad_input(with([](auto& c) { c["train"]["model"]["pooling"] = "max"; }),
                   "model: pooling: expected \"mean\" or \"first\"");
  expect_bad_input(with([](auto& c) { c["train"]["optimizer"]["type"] = "adam"; }),
                   "optimizer: type");
  expect_bad_input(with([](auto& c) {
                     c["train"]["model"]["position"] = {{"type", "learned"}, {"max_len", 32}};
                   }),
                   "position: max_len: expected at least data.max_length (48)");
  expect_bad_input(with([](auto& c) { c["train"]["model"]["nhead"] = 3; }), "model: ");
  expect_bad_input(
      with([](auto& c) {
        c["models"].push_back({{"name", "x"}, {"model", {{"attention", {{"type", "sharp"}}}}}});
      }),
      "model 'x': model: attention: type");
  EXPECT_FALSE(std::filesystem::exists(path("bad")));
}

}  // namespace
}  // namespace attnlens
