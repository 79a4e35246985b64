// attnlens study: trains every model of a STUDY.json with every seed on the same budget, evaluates
// each trained model under every condition (Fashion-MNIST: clean, corrupted, attacked; ListOps:
// the whole test set and each length bucket), and keeps the results in DIR/results.csv with their
// summary (DIR/summary.md) and plot redrawn as rows arrive (docs/experiments.md, "The study
// runner"). The same command continues a stopped study: finished rows are kept, a run stopped
// mid-training resumes from its latest checkpoint, and models, seeds and conditions may be added
// to the configuration in between.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/adversarial.hpp"
#include "cli/command_train.hpp"
#include "cli/errors.hpp"
#include "cli/study_config.hpp"
#include "cli/study_listops.hpp"
#include "cli/study_report.hpp"
#include "cli/training_curves.hpp"

namespace attnlens::cli {

struct StudyArguments {
  std::string config, out;
  std::vector<std::string> models;  // empty: every model of the configuration
  int threads = 0;
};

namespace detail_study {

namespace fs = std::filesystem;

// A study already in DIR must be this one: the keys that decide finished rows (the task, the base
// configuration, the epochs, the attack subset, the corruptions' seed, each kept model's patch)
// must not change; models, seeds and conditions may be added. (A study.json from before ListOps
// has no task: it is a Fashion-MNIST study.)
inline void check_same_study(const nlohmann::json& kept, const nlohmann::json& given,
                             const std::string& out) {
  const auto differ = [&](const std::string& what) {
    throw ArgumentError(detail::concat(
        "--config: the study in '", out, "' has another ", what,
        " (study.json): finished rows would mix two studies; use another --out, or restore the "
        "configuration"));
  };
  if (kept.value("task", "fashion-mnist") != given["task"]) differ("'task'");
  for (const char* key : {"train", "epochs", "attack_images", "condition_seed"})
    if (kept.contains(key) != given.contains(key) ||
        (kept.contains(key) && kept[key] != given[key]))
      differ(detail::concat("'", key, "'"));
  for (const nlohmann::json& old_model : kept.value("models", nlohmann::json::array()))
    for (const nlohmann::json& model : given["models"])
      if (model["name"] == old_model.value("name", "") && model["model"] != old_model["model"])
        differ(detail::concat("model '", model["name"].get<std::string>(), "'"));
}

// The minutes of training of a run so far: the sum of its epochs' training times.
inline double training_seconds(const std::string& run) {
  double seconds = 0;
  for (const EpochMetrics& epoch : read_epoch_metrics(run + "/metrics.jsonl"))
    seconds += epoch.train_seconds;
  return seconds;
}

// Rewrites summary.md and the plot from every row so far; a plot that cannot be drawn is a
// warning (the rows matter more).
inline void write_reports(const StudyConfig& study, const std::string& out) {
  const std::vector<StudyRow> rows = read_study_results(out + "/results.csv");
  detail_train::write_file(out + "/summary.md", study_summary_markdown(study, rows));
  const std::vector<io::LinePlot> panels = study_plot_panels(study, rows);
  if (panels.empty()) return;
  try {
    io::LinePlotOptions options;
    options.width = 560 * static_cast<int>(panels.size());
    options.height = 520;
    io::write_line_plot_png(out + "/" + study_plot_file(study), panels, options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnlens study: warning: cannot draw %s/%s: %s\n", out.c_str(),
                 study_plot_file(study).c_str(), e.what());
  }
}

using AddRow = std::function<void(StudyRow)>;
// Trains (or continues) the run of a model and seed in its directory and adds the rows of its
// missing conditions.
using EvaluateCell = std::function<void(const StudyModel&, std::uint64_t, const std::string&,
                                        const std::vector<const StudyCondition*>&)>;

// Trains (or continues) a Fashion-MNIST run and evaluates it under each missing condition.
inline EvaluateCell vision_cells(const StudyConfig& study, const StudyArguments& args,
                                 const AddRow& add_row) {
  io::FashionMnistOptions data_options;  // pixels in [0, 1]: conditions act before normalizing
  const io::TrainConfig first = study_train_config(study, study.models.front(), 0, args.config);
  if (!first.data_directory.empty()) data_options.directory = first.data_directory;
  auto test = std::make_shared<const ImageDataset<float>>(first_examples(
      io::load_fashion_mnist<float>(io::FashionMnistSplit::test, data_options), first.test_limit));
  auto attacked =
      std::make_shared<const ImageDataset<float>>(first_examples(*test, study.attack_images));
  return [&study, &args, add_row, test, attacked](
             const StudyModel& model, std::uint64_t seed, const std::string& run,
             const std::vector<const StudyCondition*>& missing) {
    io::TrainConfig config = study_train_config(study, model, seed, args.config);
    detail_train::add_dataset_defaults(config);
    const std::string trained = detail::concat(run, "/checkpoints/epoch-", config.epochs);
    if (!fs::exists(trained)) {
      TrainArguments train;
      train.out = run;
      train.threads = args.threads;
      // A run that never finished an epoch has no checkpoint to resume: it starts again.
      train.resume = fs::exists(run + "/latest");
      if (!train.resume) fs::remove_all(run);
      detail_train::train_run<float>(train, config);
    }
    const double train_seconds = training_seconds(run);
    const VisionTransformer<float> vit = io::load_vit_model<float>(trained);
    const PixelClassifier<float> classifier{
        vit, {config.model.mean, config.model.std}, {args.threads}};
    for (const StudyCondition* condition : missing) {
      const ImageDataset<float>& data = condition->attack() ? *attacked : *test;
      const auto start = std::chrono::steady_clock::now();
      const ClassifierEvaluation e =
          evaluate_perturbed(classifier, data, condition->options, config.eval_batch_size);
      add_row({model.name, seed, condition->text, data.size(), e.accuracy, e.loss,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
               train_seconds});
    }
  };
}

// Trains (or continues) a ListOps run, evaluates it once on the test set, and adds the missing
// rows: the whole set ("all") and each length bucket.
inline EvaluateCell listops_cells(const StudyConfig& study, const StudyArguments& args,
                                  const AddRow& add_row) {
  const ListOpsTrainConfig first =
      study_listops_config(study, study.models.front(), 0, args.config);
  // The test set: data set data.seed, the same for every model and seed.
  auto test = std::make_shared<const std::vector<ListOpsExample>>(
      listops_examples(0, first.test_examples, first.data));
  return [&study, &args, add_row, test](const StudyModel& model, std::uint64_t seed,
                                        const std::string& run,
                                        const std::vector<const StudyCondition*>& missing) {
    const ListOpsTrainConfig config = study_listops_config(study, model, seed, args.config);
    const SequenceClassifier<float> classifier = train_listops(run, config, *test, args.threads);
    const double train_seconds = training_seconds(run);
    const auto start = std::chrono::steady_clock::now();
    const SequenceEvaluation e = evaluate_sequence_classifier(
        classifier, *test, listops_evaluation_options(config, args.threads));
    const double eval_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (const StudyCondition* condition : missing) {
      if (!condition->length_bucket()) {
        add_row({model.name, seed, condition->text, e.examples, e.accuracy, e.loss, eval_seconds,
                 train_seconds});
        continue;
      }
      const auto bucket =
          std::find_if(e.buckets.begin(), e.buckets.end(), [&](const LengthBucket& b) {
            return b.min_length == condition->min_length && b.max_length == condition->max_length;
          });
      add_row({model.name, seed, condition->text, bucket->examples, bucket->accuracy(),
               bucket->loss, eval_seconds, train_seconds});
    }
  };
}

inline void run(const StudyArguments& args) {
  // Ctrl-C stops at the next training step or condition, leaving the study to continue.
  detail_train::interrupted = false;
  std::signal(SIGINT, detail_train::on_interrupt);
  const StudyConfig study = load_study_config(args.config);
  std::vector<const StudyModel*> chosen;
  for (const std::string& name : args.models) {
    const auto found = std::find_if(study.models.begin(), study.models.end(),
                                    [&](const StudyModel& m) { return m.name == name; });
    if (found == study.models.end())
      throw ArgumentError(
          detail::concat("--models: '", name, "' is not a model of '", args.config, "'"));
    chosen.push_back(&*found);
  }
  if (args.models.empty())
    for (const StudyModel& model : study.models) chosen.push_back(&model);

  const nlohmann::json given = nlohmann::json::parse(study_config_json(study).dump());
  const std::string kept_path = args.out + "/study.json";
  if (fs::exists(kept_path))
    check_same_study(
        io::parse_json_text(io::detail::read_text_file(kept_path, io::detail::k_max_config_bytes),
                            {kept_path, io::detail::k_max_config_levels}),
        given, args.out);
  fs::create_directories(args.out);
  detail_train::write_file(kept_path, study_config_json(study).dump(2) + "\n");

  const std::string results = args.out + "/results.csv";
  drop_unfinished_row(results);
  std::set<std::tuple<std::string, std::uint64_t, std::string>> finished;
  for (const StudyRow& row : read_study_results(results))
    finished.emplace(row.model, row.seed, row.condition);

  // A finished evaluation's row; after Ctrl-C the study stops there.
  const AddRow add_row = [&](const StudyRow& row) {
    append_study_row(results, row);
    std::printf("  %-24s %6.2f%%  (%ld %s, %.1f s)\n", row.condition.c_str(), 100 * row.accuracy,
                static_cast<long>(row.images),
                study.task == StudyTask::listops ? "expressions" : "images", row.eval_seconds);
    std::fflush(stdout);
    if (detail_train::interrupted) {
      std::printf("interrupted: the finished rows are in %s; run the same command to continue\n",
                  results.c_str());
      std::exit(130);
    }
  };
  const EvaluateCell evaluate_cell = study.task == StudyTask::listops
                                         ? listops_cells(study, args, add_row)
                                         : vision_cells(study, args, add_row);

  const std::size_t cells = chosen.size() * study.seeds.size();
  std::size_t cell = 0;
  // Seed by seed: a study stopped early has every model at its first seeds.
  for (const std::uint64_t seed : study.seeds)
    for (const StudyModel* chosen_model : chosen) {
      const StudyModel& model = *chosen_model;
      ++cell;
      std::vector<const StudyCondition*> missing;
      for (const StudyCondition& c : study.conditions)
        if (!finished.count({model.name, seed, c.text})) missing.push_back(&c);
      if (missing.empty()) continue;
      std::printf("study [%zu/%zu] %s seed %llu\n", cell, cells, model.name.c_str(),
                  static_cast<unsigned long long>(seed));
      std::fflush(stdout);
      evaluate_cell(model, seed, detail::concat(args.out, "/runs/", model.name, "/seed-", seed),
                    missing);
      write_reports(study, args.out);
    }
  write_reports(study, args.out);
  std::printf("study done: %s/results.csv, %s/summary.md\n", args.out.c_str(), args.out.c_str());
}

}  // namespace detail_study

inline void add_study_command(CLI::App& app) {
  auto args = std::make_shared<StudyArguments>();
  CLI::App* cmd = app.add_subcommand(
      "study",
      "Train a list of models over several seeds on one budget and evaluate each under every "
      "condition (clean, corruptions, attacks): results.csv, summary.md, robustness.png "
      "(docs/experiments.md)");
  cmd->add_option("--config", args->config,
                  "STUDY.json: base TRAIN.json, models, seeds, conditions (docs/experiments.md; "
                  "e.g. examples/configs/study_vision.json)")
      ->required();
  cmd->add_option("--out", args->out,
                  "Study directory: study.json, results.csv, summary.md, robustness.png, "
                  "runs/MODEL/seed-S/ (the same command continues a stopped study)")
      ->required();
  cmd->add_option("--models", args->models,
                  "Only these models (names from the configuration, comma-separated); two "
                  "processes with disjoint --models may share --out")
      ->delimiter(',');
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args] { run_reporting_errors("study", [&] { detail_study::run(*args); }); });
}

}  // namespace attnlens::cli
