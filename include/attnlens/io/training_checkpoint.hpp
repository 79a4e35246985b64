// A training run's checkpoint (docs/training.md, "Checkpoints"): a ViT model directory
// (config.json, model.safetensors: what attnlens classify and examples/load_in_pytorch.py read)
// plus optimizer.safetensors (the optimizer's state, io/optimizer_state.hpp) and trainer.json
// (where the run stands: the epoch, the epoch's progress, the best test accuracy so far).
// Resuming from it continues the run exactly.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/io/json_text.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/optimizer_state.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/classifier_training.hpp"

namespace attnlens::io {

inline constexpr const char* k_optimizer_file = "optimizer.safetensors";
inline constexpr const char* k_trainer_file = "trainer.json";

// Where a run stands.
struct TrainingState {
  Index epoch = 0;            // the epoch in progress (progress.next_batch > 0) or to start
  EpochProgress progress;     // of `epoch`
  double best_accuracy = -1;  // the best test accuracy of a finished epoch (-1: none yet)
  Index best_epoch = -1;
};

inline std::string training_state_json(const TrainingState& s) {
  nlohmann::ordered_json json{{"epoch", s.epoch},
                              {"next_batch", s.progress.next_batch},
                              {"loss_sum", s.progress.loss_sum},
                              {"correct", s.progress.correct},
                              {"images", s.progress.images},
                              {"skipped_steps", s.progress.skipped_steps},
                              {"best_accuracy", s.best_accuracy},
                              {"best_epoch", s.best_epoch}};
  return json.dump(2) + "\n";
}

inline TrainingState parse_training_state(const std::string& text, const std::string& where) {
  const detail::ConfigReader json(parse_json_text(text, {where, detail::k_max_config_levels}),
                                  where);
  TrainingState s;
  s.epoch = json.get<Index>("epoch");
  s.progress.next_batch = json.get<Index>("next_batch");
  s.progress.loss_sum = json.get<double>("loss_sum");
  s.progress.correct = json.get<Index>("correct");
  s.progress.images = json.get<Index>("images");
  s.progress.skipped_steps = json.get<Index>("skipped_steps");
  s.best_accuracy = json.get<double>("best_accuracy");
  s.best_epoch = json.get<Index>("best_epoch");
  for (const auto& [key, value] :
       {std::pair{"epoch", s.epoch}, std::pair{"next_batch", s.progress.next_batch},
        std::pair{"correct", s.progress.correct}, std::pair{"images", s.progress.images},
        std::pair{"skipped_steps", s.progress.skipped_steps}})
    if (value < 0) json.fail(key, "an integer >= 0", attnlens::detail::concat(value));
  if (s.progress.correct > s.progress.images)
    json.fail("correct", "at most `images`", attnlens::detail::concat(s.progress.correct));
  json.reject_unknown_keys();
  return s;
}

// Writes a checkpoint into `directory` (created if needed; files replaced): the model's files,
// as write_model(a directory) writes them, the optimizer's state and where the run stands. The
// directory is written under a temporary name and renamed, so an interrupted save leaves the
// previous checkpoint whole.
template <class Optimizer, class WriteModel>
void save_checkpoint_directory(const std::string& directory, WriteModel&& write_model,
                               const Optimizer& optimizer, const TrainingState& state) {
  namespace fs = std::filesystem;
  const std::string staging = directory + ".tmp";
  std::error_code error;
  fs::remove_all(staging, error);
  write_model(staging);
  save_optimizer_state(staging + "/" + k_optimizer_file, optimizer.state());
  const std::string trainer = staging + "/" + k_trainer_file;
  std::ofstream out(trainer, std::ios::binary);
  out << training_state_json(state);
  if (!out.flush()) throw IoError(attnlens::detail::concat("cannot write '", trainer, "'"));
  out.close();
  fs::remove_all(directory, error);
  fs::rename(staging, directory, error);
  if (error)
    throw IoError(attnlens::detail::concat("cannot rename '", staging, "' to '", directory,
                                           "': ", error.message()));
}

// A ViT training run's checkpoint: the model directory (save_vit_model) with the optimizer's state
// and trainer.json.
template <class T, class Optimizer>
void save_training_checkpoint(const std::string& directory, const VitModelConfig& config,
                              const VisionTransformer<T>& model, const Optimizer& optimizer,
                              const TrainingState& state) {
  save_checkpoint_directory(
      directory, [&](const std::string& staging) { save_vit_model(config, model, staging); },
      optimizer, state);
}

// Reads a checkpoint: the model (its config must describe the same model as `config`), the
// optimizer's state, and where the run stands.
template <class T, class Optimizer>
TrainingState load_training_checkpoint(const std::string& directory, const VitModelConfig& config,
                                       VisionTransformer<T>& model, Optimizer& optimizer) {
  const VitModelConfig saved = load_vit_config(directory);
  if (vit_config_json(saved) != vit_config_json(config))
    throw IoError(attnlens::detail::concat(
        directory, "/", k_config_file,
        ": the checkpoint's model is not the one the run's configuration describes"));
  model = load_vit_model<T>(directory);
  load_optimizer_state(directory + "/" + k_optimizer_file, optimizer, model);
  const std::string trainer = directory + "/" + k_trainer_file;
  return parse_training_state(detail::read_text_file(trainer, detail::k_max_config_bytes), trainer);
}

}  // namespace attnlens::io
