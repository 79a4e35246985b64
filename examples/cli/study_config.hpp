// STUDY.json, the configuration of `attnlens study` (docs/experiments.md, "The study runner"): its
// task (Fashion-MNIST or ListOps), a base training configuration (a TRAIN.json, or a ListOps
// training configuration; inline or by path), the models to compare (each a name and a JSON merge
// patch of the base's "model" object: its attention variant, residual, position encoding), the
// seeds, and for Fashion-MNIST the evaluation conditions (parse_perturbation's text: "clean",
// "noise:0.1", "salt-and-pepper:0.05", "fgsm:2/255", "pgd-10:2/255"); a ListOps study's conditions
// are its length buckets. Every key is checked and every model's configuration is parsed before
// anything runs.
#pragma once

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/io/fashion_mnist.hpp"
#include "attnlens/io/json_text.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/train_config.hpp"
#include "attnlens/train/adversarial.hpp"
#include "attnlens/train/sequence_training.hpp"
#include "cli/listops_config.hpp"

namespace attnlens::cli {

struct StudyModel {
  std::string name;      // [A-Za-z0-9._+-]+: a directory name and a CSV field
  nlohmann::json patch;  // merged into the base's "model" (RFC 7386); {} keeps it
};

enum class StudyTask { fashion_mnist, listops };

struct StudyCondition {
  std::string text;             // as written: the key of results.csv's rows
  PerturbationOptions options;  // Fashion-MNIST
  // ListOps: the test expressions of min_length..max_length tokens ("length:A-B"); both 0 for
  // every one of them ("all").
  Index min_length = 0, max_length = 0;
  bool attack() const {
    return options.type == PerturbationType::fgsm || options.type == PerturbationType::pgd;
  }
  bool length_bucket() const { return max_length > 0; }
};

struct StudyConfig {
  StudyTask task = StudyTask::fashion_mnist;
  nlohmann::json train;  // the base TRAIN.json (ListOps: its training configuration) as an object
  std::vector<StudyModel> models;
  std::vector<std::uint64_t> seeds;
  std::vector<StudyCondition> conditions;
  Index epochs = 0;                  // > 0: overrides the base's epochs
  Index attack_images = 1000;        // attacks run on the first this many test images (0: all)
  std::uint64_t condition_seed = 0;  // the random corruptions' seed, the same for every model
};

namespace detail_study {

inline constexpr std::size_t k_max_study_entries = 1000;  // models, seeds or conditions

inline bool valid_model_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") return false;
  for (const char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '+' ||
          c == '-'))
      return false;
  return true;
}

inline nlohmann::json array_of(const io::detail::ConfigReader& config, const std::string& key,
                               const std::string& what) {
  const nlohmann::json value = config.get<nlohmann::json>(key);
  if (!value.is_array() || value.empty() || value.size() > k_max_study_entries)
    config.fail(key,
                detail::concat("a non-empty array of at most ", k_max_study_entries, " ", what),
                value.dump().substr(0, 200));
  return value;
}

}  // namespace detail_study

namespace detail_study {

// The base configuration with the model's patch, the study's epochs and the seed.
inline std::string run_config_text(const StudyConfig& study, const StudyModel& model,
                                   std::uint64_t seed) {
  nlohmann::json train = study.train;
  nlohmann::json patched = train.value("model", nlohmann::json::object());
  patched.merge_patch(model.patch);
  train["model"] = patched;
  if (study.epochs > 0) train["epochs"] = study.epochs;
  train["seed"] = seed;
  return train.dump();
}

inline std::string model_where(const std::string& where, const StudyModel& model) {
  return detail::concat(where, ": model '", model.name, "'");
}

}  // namespace detail_study

// A Fashion-MNIST study's run: the base configuration with the model's patch, the study's epochs
// and the seed, parsed as a TRAIN.json; errors name the model.
inline io::TrainConfig study_train_config(const StudyConfig& study, const StudyModel& model,
                                          std::uint64_t seed, const std::string& where) {
  return io::parse_train_config(detail_study::run_config_text(study, model, seed),
                                detail_study::model_where(where, model));
}

// A ListOps study's run, likewise.
inline ListOpsTrainConfig study_listops_config(const StudyConfig& study, const StudyModel& model,
                                               std::uint64_t seed, const std::string& where) {
  return parse_listops_train_config(detail_study::run_config_text(study, model, seed),
                                    detail_study::model_where(where, model));
}

// The study as JSON: what DIR/study.json keeps, the base configuration inline.
inline nlohmann::ordered_json study_config_json(const StudyConfig& study) {
  nlohmann::ordered_json models = nlohmann::ordered_json::array();
  for (const StudyModel& m : study.models) models.push_back({{"name", m.name}, {"model", m.patch}});
  nlohmann::ordered_json conditions = nlohmann::ordered_json::array();
  for (const StudyCondition& c : study.conditions) conditions.push_back(c.text);
  nlohmann::ordered_json json{
      {"task", study.task == StudyTask::listops ? "listops" : "fashion-mnist"},
      {"train", study.train},
      {"epochs", study.epochs},
      {"seeds", study.seeds},
      {"models", models},
      {"conditions", conditions}};
  if (study.task == StudyTask::fashion_mnist) {
    json["attack_images"] = study.attack_images;
    json["condition_seed"] = study.condition_seed;
  }
  return json;
}

// Parses STUDY.json's text; `where` names it in errors and `directory` is where a "train" path
// is relative to.
inline StudyConfig parse_study_config(const std::string& text, const std::string& where,
                                      const std::filesystem::path& directory) {
  using detail::concat;
  const io::detail::ConfigReader config(
      io::parse_json_text(text, {where, io::detail::k_max_config_levels}), where);
  StudyConfig out;
  const auto task = config.get<std::string>("task", "fashion-mnist");
  if (task == "listops")
    out.task = StudyTask::listops;
  else if (task != "fashion-mnist")
    config.fail("task", "\"fashion-mnist\" or \"listops\"", "\"" + task + "\"");
  const bool listops = out.task == StudyTask::listops;
  const nlohmann::json train = config.get<nlohmann::json>("train");
  if (train.is_string()) {
    const std::filesystem::path path = directory / train.get<std::string>();
    out.train = io::parse_json_text(
        io::detail::read_text_file(path.string(), io::detail::k_max_config_bytes),
        {path.string(), io::detail::k_max_config_levels});
  } else {
    out.train = train;
  }
  if (!out.train.is_object())
    config.fail("train",
                listops ? "a ListOps training configuration (an object) or the path of one"
                        : "a TRAIN.json object or the path of one",
                train.dump().substr(0, 200));
  // A ListOps study's conditions are its length buckets; it has no attacks nor corruptions.
  for (const char* key : {"conditions", "attack_images", "condition_seed"})
    if (listops && config.has(key))
      throw IoError(concat(where, ": ", key,
                           ": not a key of a ListOps study (its conditions are every test "
                           "expression and each length bucket of the train config's "
                           "data.bucket_edges)"));

  out.epochs = config.get<Index>("epochs", 0);
  if (out.epochs < 0 || out.epochs > 100000)
    config.fail("epochs", "an integer in [0, 100000] (0: the train config's)", concat(out.epochs));
  out.attack_images = config.get<Index>("attack_images", out.attack_images);
  if (out.attack_images < 0)
    config.fail("attack_images", "an integer >= 0 (0: every test image)",
                concat(out.attack_images));
  if (config.has("condition_seed")) {
    const nlohmann::json seed = config.get<nlohmann::json>("condition_seed");
    if (!seed.is_number_unsigned()) config.fail("condition_seed", "an integer >= 0", seed.dump());
    out.condition_seed = seed.get<std::uint64_t>();
  }

  for (const nlohmann::json& seed : detail_study::array_of(config, "seeds", "seeds")) {
    if (!seed.is_number_unsigned()) config.fail("seeds", "integers >= 0", seed.dump());
    out.seeds.push_back(seed.get<std::uint64_t>());
  }
  if (std::set<std::uint64_t>(out.seeds.begin(), out.seeds.end()).size() != out.seeds.size())
    config.fail("seeds", "distinct seeds", config.get<nlohmann::json>("seeds").dump());

  std::set<std::string> names;
  const nlohmann::json models = detail_study::array_of(config, "models", "models");
  for (std::size_t i = 0; i < models.size(); ++i) {
    const io::detail::ConfigReader entry(models[i], concat(where, ": models[", i, "]"));
    StudyModel model;
    model.name = entry.get<std::string>("name");
    if (!detail_study::valid_model_name(model.name))
      entry.fail("name", "1 to 64 of the characters A-Z a-z 0-9 . _ + -", "'" + model.name + "'");
    if (!names.insert(model.name).second)
      entry.fail("name", "a name no other model has", "'" + model.name + "' again");
    model.patch = entry.get<nlohmann::json>("model", nlohmann::json::object());
    if (!model.patch.is_object())
      entry.fail("model", "an object (merged into the train config's model)", model.patch.dump());
    entry.reject_unknown_keys();
    out.models.push_back(std::move(model));
  }

  std::set<std::string> texts;
  const nlohmann::json conditions =
      listops ? nlohmann::json::array()
              : detail_study::array_of(config, "conditions", "conditions");
  for (std::size_t i = 0; i < conditions.size(); ++i) {
    const std::string what = concat(where, ": conditions[", i, "]");
    if (!conditions[i].is_string())
      throw IoError(
          concat(what, ": expected a string such as \"pgd-10:2/255\", got ", conditions[i].dump()));
    StudyCondition condition;
    condition.text = conditions[i].get<std::string>();
    try {
      condition.options = parse_perturbation(condition.text, what, out.condition_seed);
    } catch (const ArgumentError& e) {
      throw IoError(e.what());
    }
    if (!texts.insert(condition.text).second)
      throw IoError(concat(what, ": expected a condition not listed before, got '", condition.text,
                           "' again"));
    out.conditions.push_back(std::move(condition));
  }
  config.reject_unknown_keys();

  // Every model's training configuration, before anything runs.
  if (listops) {
    std::vector<Index> edges;
    for (const StudyModel& model : out.models)
      edges = study_listops_config(out, model, out.seeds.front(), where).bucket_edges;
    // The conditions: the whole test set, then each bucket as evaluate_sequence_classifier cuts
    // them (the data, and so the edges, are the same for every model).
    out.conditions.push_back({"all", {}, 0, 0});
    for (const LengthBucket& b : length_buckets(edges))
      out.conditions.push_back(
          {concat("length:", b.min_length, "-", b.max_length), {}, b.min_length, b.max_length});
    return out;
  }
  for (const StudyModel& model : out.models) {
    const io::TrainConfig train_config = study_train_config(out, model, out.seeds.front(), where);
    const VisionTransformerOptions& vit = train_config.model.vit;
    if (vit.in_chans != 1 || vit.image_height != io::k_fashion_mnist_side ||
        vit.image_width != io::k_fashion_mnist_side ||
        vit.num_classes != io::k_fashion_mnist_classes)
      throw IoError(concat(where, ": model '", model.name,
                           "': expected a Fashion-MNIST classifier (1 x 28 x 28 images, 10 "
                           "classes), got ",
                           vit.in_chans, " x ", vit.image_height, " x ", vit.image_width, ", ",
                           vit.num_classes, " classes"));
  }
  return out;
}

inline StudyConfig load_study_config(const std::string& path) {
  return parse_study_config(io::detail::read_text_file(path, io::detail::k_max_config_bytes), path,
                            std::filesystem::path(path).parent_path());
}

}  // namespace attnlens::cli
