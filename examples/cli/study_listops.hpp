// One run of a ListOps study (docs/experiments.md, "The ListOps task"): a sequence classifier
// trained on the run's fixed training set (ListOps data set data.seed + 1 + the run's seed),
// shuffled each epoch from the run's seed, evaluated on the study's test set after each epoch.
// The run's directory keeps train.json (the resolved configuration), metrics.jsonl and
// curves.png as attnlens train writes them, and checkpoint/ (model.safetensors,
// optimizer.safetensors, trainer.json) after each epoch, from which a stopped run resumes.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnlens/core/parameters.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/optimizer_state.hpp"
#include "attnlens/io/training_checkpoint.hpp"
#include "attnlens/train/adamw.hpp"
#include "attnlens/train/data_order.hpp"
#include "attnlens/train/listops.hpp"
#include "attnlens/train/sequence_training.hpp"
#include "attnlens/train/sgd.hpp"
#include "cli/command_train.hpp"
#include "cli/listops_config.hpp"

namespace attnlens::cli {
namespace detail_study {

namespace fs = std::filesystem;

inline constexpr const char* k_listops_checkpoint = "checkpoint";

inline SequenceEvaluationOptions listops_evaluation_options(const ListOpsTrainConfig& config,
                                                            int threads) {
  SequenceEvaluationOptions options;
  options.batch_size = config.eval_batch_size;
  options.bucket_edges = config.bucket_edges;
  options.parallel.threads = threads;
  return options;
}

// Trains the run in directory `run` for config.epochs, continuing from its checkpoint when it
// has one, and returns the trained classifier (at once when the run had finished).
template <class Optimizer>
SequenceClassifier<float> train_listops_run(const std::string& run,
                                            const ListOpsTrainConfig& config,
                                            const std::vector<ListOpsExample>& test, int threads,
                                            Optimizer optimizer) {
  Rng rng(config.seed);
  SequenceClassifier<float> model(listops_classifier_options(config), rng);
  io::TrainingState state;
  const std::string checkpoint = run + "/" + k_listops_checkpoint;
  if (fs::exists(checkpoint)) {
    const std::string weights = checkpoint + "/" + io::k_weights_file;
    io::load_module_weights(io::SafeTensors::load(weights), model, weights);
    io::load_optimizer_state(checkpoint + "/" + io::k_optimizer_file, optimizer, model);
    const std::string trainer = checkpoint + "/" + io::k_trainer_file;
    state = io::parse_training_state(
        io::detail::read_text_file(trainer, io::detail::k_max_config_bytes), trainer);
    if (state.epoch >= config.epochs) return model;
    std::printf("resuming at epoch %ld\n", static_cast<long>(state.epoch + 1));
  } else {
    // A run that never finished an epoch starts again.
    fs::remove_all(run);
    fs::create_directories(run);
    detail_train::write_file(run + "/train.json", listops_train_config_json(config));
    std::printf("%ld parameters; %ld training and %ld test expressions\n",
                static_cast<long>(parameter_count(model)), static_cast<long>(config.train_examples),
                static_cast<long>(test.size()));
  }
  const std::vector<ListOpsExample> train =
      listops_examples(0, config.train_examples, listops_train_data(config));
  SequenceClassifier<float> gradient = zeros_like(model);
  const DataOrder order(config.train_examples,
                        DataOrderOptions{config.batch_size, true, false, config.seed});
  SequenceStepOptions step_options;
  step_options.clip_norm = config.clip_grad_norm;
  step_options.parallel.threads = threads;
  step_options.engine = AttentionEngine::fused;  // O(L) attention memory per head
  const auto learning_rate = [&](std::int64_t step) {
    return io::scheduled_learning_rate(config, static_cast<Index>(step), order.batches());
  };
  std::fflush(stdout);
  for (; state.epoch < config.epochs;) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<Index> epoch_order =
        order.epoch_order(static_cast<std::uint64_t>(state.epoch));
    EpochProgress& progress = state.progress;
    for (Index b = 0; b < order.batches(); ++b) {
      if (detail_train::interrupted) {
        std::printf("interrupted in epoch %ld: run the same command to continue from epoch %ld\n",
                    static_cast<long>(state.epoch + 1), static_cast<long>(state.epoch + 1));
        std::exit(130);
      }
      const ListOpsBatch batch =
          listops_batch(gather_first_axis(train, order.batch(epoch_order, b)));
      const SequenceStep step =
          train_sequence_step(model, gradient, optimizer, batch, step_options, learning_rate);
      const auto examples = static_cast<Index>(batch.labels.size());
      progress.loss_sum += step.loss * static_cast<double>(examples);
      progress.correct += step.correct;
      progress.images += examples;
      progress.skipped_steps += step.stepped ? 0 : 1;
      progress.next_batch = b + 1;
    }
    const double train_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const SequenceEvaluation e =
        evaluate_sequence_classifier(model, test, listops_evaluation_options(config, threads));
    const nlohmann::ordered_json metrics{
        {"epoch", state.epoch + 1},
        {"step", optimizer.steps()},
        {"lr", learning_rate(optimizer.steps() - 1)},
        {"train_loss", progress.loss()},
        {"train_accuracy", progress.accuracy()},
        {"test_loss", e.loss},
        {"test_accuracy", e.accuracy},
        {"train_seconds", train_seconds},
        {"examples_per_second", static_cast<double>(progress.images) / train_seconds},
        {"skipped_steps", progress.skipped_steps}};
    std::ofstream(run + "/metrics.jsonl", std::ios::app) << metrics.dump() << "\n";
    std::printf("  epoch %ld/%ld: train loss %.4f acc %.2f%%, test loss %.4f acc %.2f%% (%.0f s)\n",
                static_cast<long>(state.epoch + 1), static_cast<long>(config.epochs),
                progress.loss(), 100 * progress.accuracy(), e.loss, 100 * e.accuracy,
                train_seconds);
    std::fflush(stdout);
    if (e.accuracy > state.best_accuracy) {
      state.best_accuracy = e.accuracy;
      state.best_epoch = state.epoch + 1;
    }
    ++state.epoch;
    state.progress = {};
    io::save_checkpoint_directory(
        checkpoint,
        [&](const std::string& directory) {
          fs::create_directories(directory);
          io::module_weights(model).save(directory + "/" + io::k_weights_file);
        },
        optimizer, state);
    detail_train::draw_curves(run);
  }
  return model;
}

inline SequenceClassifier<float> train_listops(const std::string& run,
                                               const ListOpsTrainConfig& config,
                                               const std::vector<ListOpsExample>& test,
                                               int threads) {
  if (config.optimizer == io::OptimizerType::adamw)
    return train_listops_run(run, config, test, threads, AdamW<float>(config.adamw));
  return train_listops_run(run, config, test, threads, Sgd<float>(config.sgd));
}

}  // namespace detail_study
}  // namespace attnlens::cli
