// attnlens train: trains a vision transformer on Fashion-MNIST from a TRAIN.json
// (docs/training.md): a progress line per step on a terminal, per-epoch metrics appended to
// DIR/metrics.jsonl and drawn as loss and accuracy curves in DIR/curves.png, a checkpoint per
// epoch under DIR/checkpoints (DIR/latest names the newest), the best model so far in DIR/best,
// and Ctrl-C leaving a checkpoint that --resume continues exactly.
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/train_config.hpp"
#include "attnlens/io/training_checkpoint.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/adamw.hpp"
#include "attnlens/train/classifier_training.hpp"
#include "attnlens/train/sgd.hpp"
#include "cli/errors.hpp"
#include "cli/training_curves.hpp"

namespace attnlens::cli {

struct TrainArguments {
  std::string config, out;
  Index epochs = 0;        // 0: the config's
  std::int64_t seed = -1;  // -1: the config's
  int threads = 0;
  Index stop_after = 0;  // > 0: stop after this many epochs of this invocation
  bool resume = false;
};

namespace detail_train {

inline std::atomic<bool> interrupted{false};
inline void on_interrupt(int) { interrupted = true; }

namespace fs = std::filesystem;

inline std::string duration(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  char text[32];
  std::snprintf(text, sizeof text, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  return text;
}

// Writes `text` to `path` through a temporary file and a rename.
inline void write_file(const std::string& path, const std::string& text) {
  const std::string staging = path + ".tmp";
  std::ofstream out(staging, std::ios::binary);
  out << text;
  if (!out.flush()) throw IoError(detail::concat("cannot write '", staging, "'"));
  out.close();
  std::error_code error;
  fs::rename(staging, path, error);
  if (error) throw IoError(detail::concat("cannot write '", path, "': ", error.message()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(detail::concat("cannot open '", path, "'"));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Redraws DIR/curves.png from every epoch in DIR/metrics.jsonl (a resumed run's too). A picture
// that cannot be drawn is a warning: the run and its checkpoints matter more.
inline void draw_curves(const std::string& out) {
  try {
    write_training_curves(out + "/metrics.jsonl", out + "/curves.png");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnlens train: warning: cannot draw %s/curves.png: %s\n", out.c_str(),
                 e.what());
  }
}

// The data's normalization travels with the model (attnlens classify applies the same), and so
// do the class names: Fashion-MNIST's unless the configuration names them.
inline void add_dataset_defaults(io::TrainConfig& config) {
  if (config.model.mean.empty()) {
    config.model.mean = {io::k_fashion_mnist_mean};
    config.model.std = {io::k_fashion_mnist_std};
  }
  if (config.model.class_names.empty())
    config.model.class_names.assign(io::k_fashion_mnist_class_names.begin(),
                                    io::k_fashion_mnist_class_names.end());
}

// The run's configuration: a new run's TRAIN.json with the command line's overrides, or the
// configuration a resumed run kept in DIR/train.json.
inline io::TrainConfig run_config(const TrainArguments& args) {
  const std::string kept = args.out + "/train.json";
  io::TrainConfig config;
  if (args.resume) {
    if (!fs::exists(kept))
      throw ArgumentError(detail::concat(
          "--resume: '", kept, "' does not exist: there is no run to resume in '", args.out, "'"));
    config = io::load_train_config(kept);
  } else {
    if (args.config.empty())
      throw ArgumentError("--config: a TRAIN.json is needed to start a run (or pass --resume)");
    if (fs::exists(kept))
      throw ArgumentError(detail::concat("--out: '", args.out,
                                         "' already holds a run (train.json): pass --resume to "
                                         "continue it, or choose another directory"));
    config = io::load_train_config(args.config);
  }
  if (args.epochs > 0) config.epochs = args.epochs;
  if (args.seed >= 0) {
    if (args.resume && static_cast<std::uint64_t>(args.seed) != config.seed)
      throw ArgumentError(detail::concat("--seed: the run in '", args.out, "' has seed ",
                                         config.seed, "; a resumed run keeps its seed"));
    config.seed = static_cast<std::uint64_t>(args.seed);
  }
  add_dataset_defaults(config);
  return config;
}

template <class T, class Optimizer>
void train(const TrainArguments& args, const io::TrainConfig& config, Optimizer optimizer) {
  io::FashionMnistOptions data_options;
  if (!config.data_directory.empty()) data_options.directory = config.data_directory;
  data_options.normalization = {config.model.mean, config.model.std};
  const ImageDataset<T> train_data = first_examples(
      io::load_fashion_mnist<T>(io::FashionMnistSplit::train, data_options), config.train_limit);
  const ImageDataset<T> test_data = first_examples(
      io::load_fashion_mnist<T>(io::FashionMnistSplit::test, data_options), config.test_limit);

  Rng rng(config.seed);
  VisionTransformer<T> model(config.model.vit, rng);
  VisionTransformer<T> gradient = zeros_like(model);
  io::TrainingState state;
  const std::string latest = args.out + "/latest";
  if (args.resume) {
    const std::string name = read_file(latest);
    state = io::load_training_checkpoint(args.out + "/checkpoints/" + name, config.model, model,
                                         optimizer);
    std::printf("resuming %s at epoch %ld, batch %ld (step %ld)\n", name.c_str(),
                static_cast<long>(state.epoch + 1), static_cast<long>(state.progress.next_batch),
                static_cast<long>(optimizer.steps()));
  } else {
    fs::create_directories(args.out + "/checkpoints");
    write_file(args.out + "/train.json", io::train_config_json(config));
    std::printf("%ld parameters; %ld training and %ld test images\n",
                static_cast<long>(parameter_count(model)), static_cast<long>(train_data.size()),
                static_cast<long>(test_data.size()));
  }

  ClassifierTrainingOptions options;
  options.batch_size = config.batch_size;
  options.seed = config.seed;
  options.augment.crop_padding = config.crop_padding;
  options.augment.flip_probability = config.flip_probability;
  // Padding is black: 0 before normalization.
  options.augment.fill = -config.model.mean[0] / config.model.std[0];
  options.clip_norm = config.clip_grad_norm;
  options.parallel.threads = args.threads;
  const Index steps_per_epoch = (train_data.size() + config.batch_size - 1) / config.batch_size;
  const auto learning_rate = [&](std::int64_t step) {
    return io::scheduled_learning_rate(config, static_cast<Index>(step), steps_per_epoch);
  };

  const bool terminal = isatty(STDOUT_FILENO) != 0;
  interrupted = false;
  std::signal(SIGINT, on_interrupt);
  const auto save = [&](const std::string& name) {
    io::save_training_checkpoint(args.out + "/checkpoints/" + name, config.model, model, optimizer,
                                 state);
    write_file(latest, name);
  };
  Index epochs_run = 0;
  for (; state.epoch < config.epochs; ++epochs_run) {
    if (args.stop_after > 0 && epochs_run == args.stop_after) {
      std::printf("stopped after %ld epochs: continue with --resume\n",
                  static_cast<long>(epochs_run));
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    const Index first_image = state.progress.images;
    Index reported = -1;
    const auto after_step = [&](const EpochProgress& p) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = static_cast<double>(p.images - first_image) / std::max(seconds, 1e-9);
      const Index percent = p.next_batch * 100 / steps_per_epoch;
      if (terminal || percent / 10 != reported / 10) {
        const double eta =
            static_cast<double>(train_data.size() - std::min(p.images, train_data.size())) / rate;
        constexpr int width = 24;
        const int filled = static_cast<int>(width * p.next_batch / steps_per_epoch);
        std::printf("%sepoch %ld/%ld [%s%s] %3ld%% loss %.4f acc %.2f%% %.0f img/s ETA %s%s",
                    terminal ? "\r" : "", static_cast<long>(state.epoch + 1),
                    static_cast<long>(config.epochs), std::string(filled, '#').c_str(),
                    std::string(width - filled, '.').c_str(), static_cast<long>(percent), p.loss(),
                    100 * p.accuracy(), rate, duration(eta).c_str(), terminal ? "" : "\n");
        std::fflush(stdout);
        reported = percent;
      }
      return !interrupted;
    };
    const bool complete = train_epoch(model, gradient, optimizer, train_data, options, state.epoch,
                                      state.progress, learning_rate, after_step);
    if (terminal) std::printf("\n");
    if (!complete) {
      save("interrupted");
      std::printf(
          "interrupted at epoch %ld, batch %ld: saved %s/checkpoints/interrupted; "
          "continue with --resume\n",
          static_cast<long>(state.epoch + 1), static_cast<long>(state.progress.next_batch),
          args.out.c_str());
      std::exit(130);
    }
    const double train_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const ClassifierEvaluation test =
        evaluate_classifier(model, test_data, config.eval_batch_size, options.parallel);
    nlohmann::ordered_json metrics{
        {"epoch", state.epoch + 1},
        {"step", optimizer.steps()},
        {"lr", learning_rate(optimizer.steps() - 1)},
        {"train_loss", state.progress.loss()},
        {"train_accuracy", state.progress.accuracy()},
        {"test_loss", test.loss},
        {"test_accuracy", test.accuracy},
        {"train_seconds", train_seconds},
        {"images_per_second",
         static_cast<double>(state.progress.images - first_image) / train_seconds},
        {"skipped_steps", state.progress.skipped_steps}};
    std::ofstream(args.out + "/metrics.jsonl", std::ios::app) << metrics.dump() << "\n";
    std::printf("epoch %ld: train loss %.4f acc %.2f%%, test loss %.4f acc %.2f%% (%.0f s)\n",
                static_cast<long>(state.epoch + 1), state.progress.loss(),
                100 * state.progress.accuracy(), test.loss, 100 * test.accuracy, train_seconds);
    const bool best = test.accuracy > state.best_accuracy;
    if (best) {
      state.best_accuracy = test.accuracy;
      state.best_epoch = state.epoch + 1;
    }
    ++state.epoch;
    state.progress = {};
    save(detail::concat("epoch-", state.epoch));
    if (best) io::save_vit_model(config.model, model, args.out + "/best");
    draw_curves(args.out);
  }
  std::printf("done: best test accuracy %.2f%% (epoch %ld); model in %s/best\n",
              100 * state.best_accuracy, static_cast<long>(state.best_epoch), args.out.c_str());
}

// Trains the run `config` describes in args.out, from its latest checkpoint with args.resume.
template <class T>
void train_run(const TrainArguments& args, const io::TrainConfig& config) {
  if (config.optimizer == io::OptimizerType::adamw)
    train<T>(args, config, AdamW<T>(config.adamw));
  else
    train<T>(args, config, Sgd<T>(config.sgd));
}

template <class T>
void run(const TrainArguments& args) {
  train_run<T>(args, run_config(args));
}

}  // namespace detail_train

inline void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArguments>();
  CLI::App* cmd =
      app.add_subcommand("train", "Train a vision transformer on Fashion-MNIST (docs/training.md)");
  cmd->add_option("--config", args->config,
                  "TRAIN.json: model, data, optimizer, schedule, epochs, batch size, seed "
                  "(docs/training.md; e.g. examples/configs/vit_fmnist.json)");
  cmd->add_option(
         "--out", args->out,
         "Run directory: train.json, metrics.jsonl, curves.png, checkpoints/, latest, best/")
      ->required();
  cmd->add_option("--epochs", args->epochs, "Epochs (overrides the config's)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", args->seed, "Seed of initialization, data order and augmentation")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", args->threads, "Threads (0: OMP_NUM_THREADS or the core count)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--stop-after", args->stop_after,
                  "Stop after this many epochs, leaving a checkpoint that --resume continues")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--resume", args->resume,
                "Continue the run in --out from its latest checkpoint (its train.json is used)");
  cmd->callback(
      [args] { run_reporting_errors("train", [&] { detail_train::run<float>(*args); }); });
}

}  // namespace attnlens::cli
