// The training configuration of a ListOps study (docs/experiments.md, "The ListOps task"): the
// sequence classifier (an encoder config.json's keys plus its pooling), the generated data (the
// expressions' lengths and trees, the training and test set sizes, the length buckets, the
// generator's seed) and TRAIN.json's optimization keys (optimizer, schedule, epochs, batch sizes,
// seed, clipping). Every key is checked; an unknown one is an error.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnlens/blocks/sequence_classifier.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/io/json_text.hpp"
#include "attnlens/io/model.hpp"
#include "attnlens/io/train_config.hpp"
#include "attnlens/train/listops.hpp"

namespace attnlens::cli {

struct ListOpsTrainConfig : io::OptimizationConfig {
  io::EncoderModelConfig model;
  SequencePooling pooling = SequencePooling::mean;
  // min_length, max_length, max_depth, max_args; seed: the generator's seed offset (the test
  // set is its data set `seed`, run seed s trains on data set `seed + 1 + s`).
  ListOpsOptions data;
  Index train_examples = 2000, test_examples = 1000;
  std::vector<Index> bucket_edges;  // SequenceEvaluationOptions::bucket_edges
};

inline constexpr Index k_listops_classes = 10;
inline constexpr Index k_max_listops_examples = Index(1) << 24;

// The classifier the configuration describes: ListOps's vocabulary and classes, padding id 0.
inline SequenceClassifierOptions listops_classifier_options(const ListOpsTrainConfig& config) {
  SequenceClassifierOptions options;
  options.vocab_size = k_listops_vocabulary_size;
  options.num_classes = k_listops_classes;
  options.encoder = config.model.encoder;
  options.pooling = config.pooling;
  options.padding_idx = k_listops_padding;
  return options;
}

// The generator of the run's training set: data set data.seed + 1 + the run's seed (the test set
// is data set data.seed, config.data itself).
inline ListOpsOptions listops_train_data(const ListOpsTrainConfig& config) {
  ListOpsOptions data = config.data;
  data.seed = config.data.seed + 1 + config.seed;
  return data;
}

// Parses the configuration's text; `where` prefixes every error message.
inline ListOpsTrainConfig parse_listops_train_config(const std::string& text,
                                                     const std::string& where) {
  using detail::concat;
  const io::detail::ConfigReader config(
      io::parse_json_text(text, {where, io::detail::k_max_config_levels}), where);
  ListOpsTrainConfig out;
  // "model": an encoder config.json's keys ("model_type" may be left out) and "pooling".
  nlohmann::json model = config.get<nlohmann::json>("model");
  if (!model.is_object())
    config.fail("model", "an object (an encoder config.json's keys and pooling)", model.dump());
  if (model.contains("pooling")) {
    const nlohmann::json pooling = model["pooling"];
    if (pooling == "mean")
      out.pooling = SequencePooling::mean;
    else if (pooling == "first")
      out.pooling = SequencePooling::first;
    else
      io::detail::ConfigReader(model, where + ": model")
          .fail("pooling", "\"mean\" or \"first\"", pooling.dump());
    model.erase("pooling");
  }
  if (!model.contains("model_type")) model["model_type"] = io::k_model_type;
  out.model = io::parse_encoder_config(model.dump(), where + ": model");

  const io::detail::ConfigReader data(io::detail::object_or_empty(config, "data"),
                                      where + ": data");
  ListOpsOptions& d = out.data;
  d.min_length = data.get<Index>("min_length", d.min_length);
  d.max_length = data.get<Index>("max_length", d.max_length);
  d.max_depth = data.get<Index>("max_depth", d.max_depth);
  d.max_args = data.get<Index>("max_args", d.max_args);
  try {
    check_listops_options(d);
  } catch (const ArgumentError& e) {
    throw IoError(concat(where, ": data: ", e.what()));
  }
  const auto seed = data.get<std::int64_t>("seed", 0);
  if (seed < 0) data.fail("seed", "an integer >= 0", concat(seed));
  d.seed = static_cast<std::uint64_t>(seed);
  out.train_examples = data.get<Index>("train_examples", out.train_examples);
  out.test_examples = data.get<Index>("test_examples", out.test_examples);
  for (const auto& [key, value] : {std::pair{"train_examples", out.train_examples},
                                   std::pair{"test_examples", out.test_examples}})
    if (value < 1 || value > k_max_listops_examples)
      data.fail(key, concat("an integer in [1, ", k_max_listops_examples, "]"), concat(value));
  out.bucket_edges = {d.min_length, d.max_length};
  if (data.has("bucket_edges")) {
    const nlohmann::json edges = data.get<nlohmann::json>("bucket_edges");
    const std::string expected = concat(
        "at least two increasing integers in [min_length, max_length] = [", d.min_length, ", ",
        d.max_length, "] (bucket k: lengths from edge k to edge k + 1, the last one included)");
    if (!edges.is_array() || edges.size() < 2 || edges.size() > 1000)
      data.fail("bucket_edges", expected, edges.dump().substr(0, 200));
    out.bucket_edges.clear();
    for (const nlohmann::json& edge : edges) {
      if (!edge.is_number_integer() || edge.get<Index>() < d.min_length ||
          edge.get<Index>() > d.max_length ||
          (!out.bucket_edges.empty() && edge.get<Index>() <= out.bucket_edges.back()))
        data.fail("bucket_edges", expected, edges.dump().substr(0, 200));
      out.bucket_edges.push_back(edge.get<Index>());
    }
  }
  data.reject_unknown_keys();

  static_cast<io::OptimizationConfig&>(out) = io::detail::parse_optimization_config(config, where);
  config.reject_unknown_keys();

  // The model's own checks (d_model and nhead, a variant with its position), and a learned
  // table long enough for the longest expression.
  const PositionOptions& position = out.model.encoder.position;
  if (position.type == PositionType::learned && position.max_len < d.max_length)
    throw IoError(concat(where, ": model: position: max_len: expected at least data.max_length (",
                         d.max_length, "), got ", position.max_len));
  try {
    SequenceClassifier<float> check(listops_classifier_options(out));
  } catch (const std::invalid_argument& e) {
    throw IoError(concat(where, ": model: ", e.what()));
  }
  return out;
}

// The configuration as the JSON text parse_listops_train_config reads (a run's train.json).
inline std::string listops_train_config_json(const ListOpsTrainConfig& c) {
  nlohmann::ordered_json json;
  nlohmann::ordered_json model = nlohmann::ordered_json::parse(io::encoder_config_json(c.model));
  model.erase("model_type");
  model["pooling"] = c.pooling == SequencePooling::first ? "first" : "mean";
  json["model"] = model;
  json["data"] = {{"min_length", c.data.min_length},    {"max_length", c.data.max_length},
                  {"max_depth", c.data.max_depth},      {"max_args", c.data.max_args},
                  {"train_examples", c.train_examples}, {"test_examples", c.test_examples},
                  {"bucket_edges", c.bucket_edges},     {"seed", c.data.seed}};
  io::detail::add_optimization_config_json(c, json);
  return json.dump(2) + "\n";
}

}  // namespace attnlens::cli
