// The configuration of a training run, `attnlens train --config TRAIN.json` (docs/training.md,
// "attnlens train"): the model (a ViT config.json's keys), the data and its augmentation, the
// optimizer, the learning-rate schedule, and the run's size and seed. Every key is checked; an
// unknown one is an error, so a typo never passes silently.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/image/augment.hpp"
#include "attnlens/io/json_text.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/train/adamw.hpp"
#include "attnlens/train/schedule.hpp"
#include "attnlens/train/sgd.hpp"

namespace attnlens::io {

enum class OptimizerType { adamw, sgd };
enum class ScheduleType { constant, warmup_cosine, one_cycle };

// The optimization of a training run: the optimizer, the learning-rate schedule and the run's
// size and seed (TRAIN.json's keys but "model" and "data"). Every training configuration shares
// it: TRAIN.json, and a ListOps study's training configuration (docs/experiments.md).
struct OptimizationConfig {
  OptimizerType optimizer = OptimizerType::adamw;
  AdamWOptions adamw;
  SgdOptions sgd;
  ScheduleType schedule = ScheduleType::constant;
  double warmup_epochs = 0;   // warmup_cosine: warm-up length, in epochs (may be fractional)
  double min_lr = 0;          // warmup_cosine: the final learning rate
  OneCycleOptions one_cycle;  // one_cycle: every field but max_lr (the optimizer's lr) and steps
  Index epochs = 10;
  Index batch_size = 128;
  Index eval_batch_size = 500;
  std::uint64_t seed = 0;
  double clip_grad_norm = 0;  // > 0: clip the gradient's global norm
};

struct TrainConfig : OptimizationConfig {
  VitModelConfig model;  // mean and std: the data's normalization (default: the dataset's)
  std::string dataset = "fashion-mnist";
  std::string data_directory;  // empty: the dataset's default place
  Index train_limit = 0;       // > 0: only the first train_limit training images (quick runs)
  Index test_limit = 0;        // > 0: only the first test_limit test images
  Index crop_padding = 0;      // random crop with this padding (0: none)
  double flip_probability = 0;
};

// The learning rate of optimizer step `step` of a run of total_steps steps.
inline double scheduled_learning_rate(const OptimizationConfig& config, Index step,
                                      Index steps_per_epoch) {
  const double lr = config.optimizer == OptimizerType::adamw ? config.adamw.lr : config.sgd.lr;
  const Index total = config.epochs * steps_per_epoch;
  switch (config.schedule) {
    case ScheduleType::constant:
      return lr;
    case ScheduleType::warmup_cosine: {
      WarmupCosineOptions o;
      o.base_lr = lr;
      o.min_lr = config.min_lr;
      o.warmup_steps = std::min<Index>(
          total, static_cast<Index>(std::llround(config.warmup_epochs * steps_per_epoch)));
      o.total_steps = total;
      return warmup_cosine_lr(step, o);
    }
    case ScheduleType::one_cycle: {
      OneCycleOptions o = config.one_cycle;
      o.max_lr = lr;
      o.total_steps = total;
      return one_cycle_lr(std::min(step, total), o);
    }
  }
  return lr;
}

namespace detail {

inline nlohmann::json object_or_empty(const ConfigReader& config, const std::string& key) {
  if (!config.has(key)) return nlohmann::json::object();
  const nlohmann::json value = config.get<nlohmann::json>(key);
  if (!value.is_object()) config.fail(key, "an object", value.dump());
  return value;
}

// TRAIN.json's optimizer, schedule, epochs, batch_size, eval_batch_size, seed and
// clip_grad_norm from `config` (its other keys are the caller's).
inline OptimizationConfig parse_optimization_config(const ConfigReader& config,
                                                    const std::string& where) {
  using attnlens::detail::concat;
  OptimizationConfig out;
  const ConfigReader optimizer(object_or_empty(config, "optimizer"), where + ": optimizer");
  const auto type = optimizer.get<std::string>("type", "adamw");
  try {
    if (type == "adamw") {
      out.optimizer = OptimizerType::adamw;
      AdamWOptions& o = out.adamw;
      o.lr = optimizer.get<double>("lr", o.lr);
      if (optimizer.has("betas")) {
        const nlohmann::json betas = optimizer.get<nlohmann::json>("betas");
        if (!betas.is_array() || betas.size() != 2 || !betas[0].is_number() ||
            !betas[1].is_number())
          optimizer.fail("betas", "[beta1, beta2]", betas.dump());
        o.beta1 = betas[0].get<double>();
        o.beta2 = betas[1].get<double>();
      }
      o.eps = optimizer.get<double>("eps", o.eps);
      o.weight_decay = optimizer.get<double>("weight_decay", o.weight_decay);
      o.amsgrad = optimizer.get<bool>("amsgrad", o.amsgrad);
      if (optimizer.has("no_weight_decay"))
        o.no_weight_decay =
            optimizer.get<nlohmann::json>("no_weight_decay").get<std::vector<std::string>>();
      check_adamw_options(o);
    } else if (type == "sgd") {
      out.optimizer = OptimizerType::sgd;
      SgdOptions& o = out.sgd;
      o.lr = optimizer.get<double>("lr");
      o.momentum = optimizer.get<double>("momentum", o.momentum);
      o.dampening = optimizer.get<double>("dampening", o.dampening);
      o.weight_decay = optimizer.get<double>("weight_decay", o.weight_decay);
      o.nesterov = optimizer.get<bool>("nesterov", o.nesterov);
      if (optimizer.has("no_weight_decay"))
        o.no_weight_decay =
            optimizer.get<nlohmann::json>("no_weight_decay").get<std::vector<std::string>>();
      check_sgd_options(o);
    } else {
      optimizer.fail("type", "\"adamw\" or \"sgd\"", "\"" + type + "\"");
    }
  } catch (const ArgumentError& e) {  // an option out of its domain
    throw IoError(concat(where, ": optimizer: ", e.what()));
  } catch (const nlohmann::json::exception&) {  // no_weight_decay of the wrong type
    optimizer.fail("no_weight_decay", "an array of strings (name patterns)",
                   optimizer.get<nlohmann::json>("no_weight_decay").dump());
  }
  optimizer.reject_unknown_keys();

  const ConfigReader schedule(object_or_empty(config, "schedule"), where + ": schedule");
  const auto kind = schedule.get<std::string>("type", "constant");
  if (kind == "constant") {
    out.schedule = ScheduleType::constant;
  } else if (kind == "warmup_cosine") {
    out.schedule = ScheduleType::warmup_cosine;
    out.warmup_epochs = schedule.get<double>("warmup_epochs", 0.0);
    out.min_lr = schedule.get<double>("min_lr", 0.0);
    if (!(out.warmup_epochs >= 0 && out.warmup_epochs < 1e6))
      schedule.fail("warmup_epochs", "a number >= 0", concat(out.warmup_epochs));
    if (!(out.min_lr >= 0 && std::isfinite(out.min_lr)))
      schedule.fail("min_lr", "a finite number >= 0", concat(out.min_lr));
  } else if (kind == "one_cycle") {
    out.schedule = ScheduleType::one_cycle;
    OneCycleOptions& o = out.one_cycle;
    o.pct_start = schedule.get<double>("pct_start", o.pct_start);
    o.div_factor = schedule.get<double>("div_factor", o.div_factor);
    o.final_div_factor = schedule.get<double>("final_div_factor", o.final_div_factor);
    o.three_phase = schedule.get<bool>("three_phase", o.three_phase);
  } else {
    schedule.fail("type", "\"constant\", \"warmup_cosine\" or \"one_cycle\"", "\"" + kind + "\"");
  }
  schedule.reject_unknown_keys();

  out.epochs = config.get<Index>("epochs", out.epochs);
  out.batch_size = config.get<Index>("batch_size", out.batch_size);
  out.eval_batch_size = config.get<Index>("eval_batch_size", out.eval_batch_size);
  for (const auto& [key, value] :
       {std::pair{"epochs", out.epochs}, std::pair{"batch_size", out.batch_size},
        std::pair{"eval_batch_size", out.eval_batch_size}})
    if (value < 1 || value > (Index(1) << 30)) config.fail(key, "an integer >= 1", concat(value));
  const auto seed = config.get<std::int64_t>("seed", 0);
  if (seed < 0) config.fail("seed", "an integer >= 0", concat(seed));
  out.seed = static_cast<std::uint64_t>(seed);
  out.clip_grad_norm = config.get<double>("clip_grad_norm", 0.0);
  if (!(out.clip_grad_norm >= 0 && std::isfinite(out.clip_grad_norm)))
    config.fail("clip_grad_norm", "a finite number >= 0 (0: no clipping)",
                concat(out.clip_grad_norm));
  if (out.schedule == ScheduleType::one_cycle) {
    // The schedule's own checks, on a run of at least one step per epoch.
    OneCycleOptions o = out.one_cycle;
    o.max_lr = out.optimizer == OptimizerType::adamw ? out.adamw.lr : out.sgd.lr;
    o.total_steps = Index(1) << 20;
    try {
      check_one_cycle_options(o);
    } catch (const ArgumentError& e) {
      throw IoError(concat(where, ": schedule: ", e.what()));
    }
  }
  return out;
}

}  // namespace detail

// Parses TRAIN.json's text; `where` prefixes every error message (the file's path).
inline TrainConfig parse_train_config(const std::string& text, const std::string& where) {
  using attnlens::detail::concat;
  const detail::ConfigReader config(parse_json_text(text, {where, detail::k_max_config_levels}),
                                    where);
  TrainConfig out;
  // "model": a ViT config.json's keys ("model_type" may be left out).
  nlohmann::json model = config.get<nlohmann::json>("model");
  if (!model.is_object())
    config.fail("model", "an object (a ViT config.json's keys)", model.dump());
  if (!model.contains("model_type")) model["model_type"] = k_vit_model_type;
  out.model = parse_vit_config(model.dump(), where + ": model");

  const detail::ConfigReader data(detail::object_or_empty(config, "data"), where + ": data");
  out.dataset = data.get<std::string>("dataset", out.dataset);
  if (out.dataset != "fashion-mnist")
    data.fail("dataset", "\"fashion-mnist\"", "\"" + out.dataset + "\"");
  out.data_directory = data.get<std::string>("directory", "");
  out.train_limit = data.get<Index>("train_limit", 0);
  out.test_limit = data.get<Index>("test_limit", 0);
  for (const auto& [key, value] :
       {std::pair{"train_limit", out.train_limit}, std::pair{"test_limit", out.test_limit}})
    if (value < 0) data.fail(key, "an integer >= 0 (0: every image)", concat(value));
  out.crop_padding = data.get<Index>("crop_padding", 0);
  if (out.crop_padding < 0 || out.crop_padding > 64)
    data.fail("crop_padding", "an integer in [0, 64]", concat(out.crop_padding));
  out.flip_probability = data.get<double>("flip_probability", 0.0);
  if (!(out.flip_probability >= 0 && out.flip_probability <= 1))
    data.fail("flip_probability", "a number in [0, 1]", concat(out.flip_probability));
  data.reject_unknown_keys();

  static_cast<OptimizationConfig&>(out) = detail::parse_optimization_config(config, where);
  config.reject_unknown_keys();
  return out;
}

namespace detail {

// TRAIN.json's optimizer ... clip_grad_norm keys, in its order, added to `json`.
inline void add_optimization_config_json(const OptimizationConfig& c,
                                         nlohmann::ordered_json& json) {
  if (c.optimizer == OptimizerType::adamw) {
    json["optimizer"] = {{"type", "adamw"},
                         {"lr", c.adamw.lr},
                         {"betas", {c.adamw.beta1, c.adamw.beta2}},
                         {"eps", c.adamw.eps},
                         {"weight_decay", c.adamw.weight_decay},
                         {"amsgrad", c.adamw.amsgrad},
                         {"no_weight_decay", c.adamw.no_weight_decay}};
  } else {
    json["optimizer"] = {{"type", "sgd"},
                         {"lr", c.sgd.lr},
                         {"momentum", c.sgd.momentum},
                         {"dampening", c.sgd.dampening},
                         {"weight_decay", c.sgd.weight_decay},
                         {"nesterov", c.sgd.nesterov},
                         {"no_weight_decay", c.sgd.no_weight_decay}};
  }
  switch (c.schedule) {
    case ScheduleType::constant:
      json["schedule"] = {{"type", "constant"}};
      break;
    case ScheduleType::warmup_cosine:
      json["schedule"] = {
          {"type", "warmup_cosine"}, {"warmup_epochs", c.warmup_epochs}, {"min_lr", c.min_lr}};
      break;
    case ScheduleType::one_cycle:
      json["schedule"] = {{"type", "one_cycle"},
                          {"pct_start", c.one_cycle.pct_start},
                          {"div_factor", c.one_cycle.div_factor},
                          {"final_div_factor", c.one_cycle.final_div_factor},
                          {"three_phase", c.one_cycle.three_phase}};
      break;
  }
  json["epochs"] = c.epochs;
  json["batch_size"] = c.batch_size;
  json["eval_batch_size"] = c.eval_batch_size;
  json["seed"] = c.seed;
  json["clip_grad_norm"] = c.clip_grad_norm;
}

}  // namespace detail

// TRAIN.json's text for a config (what attnlens train keeps in its output directory).
inline std::string train_config_json(const TrainConfig& c) {
  nlohmann::ordered_json json;
  nlohmann::ordered_json model = nlohmann::ordered_json::parse(vit_config_json(c.model));
  model.erase("model_type");
  json["model"] = model;
  nlohmann::ordered_json data{{"dataset", c.dataset}};
  if (!c.data_directory.empty()) data["directory"] = c.data_directory;
  if (c.train_limit) data["train_limit"] = c.train_limit;
  if (c.test_limit) data["test_limit"] = c.test_limit;
  data["crop_padding"] = c.crop_padding;
  data["flip_probability"] = c.flip_probability;
  json["data"] = data;
  detail::add_optimization_config_json(c, json);
  return json.dump(2) + "\n";
}

inline TrainConfig load_train_config(const std::string& path) {
  return parse_train_config(detail::read_text_file(path, detail::k_max_config_bytes), path);
}

}  // namespace attnlens::io
